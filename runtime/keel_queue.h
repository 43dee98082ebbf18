#ifndef KEEL_QUEUE_H
#define KEEL_QUEUE_H
#include <stdint.h>
#include "keel_clock.h"
/* A bounded in-memory work queue with visibility timeouts: the bookkeeping
 * half of keel.queue. It keeps only ids and metadata (priority, order,
 * deadlines, delivery attempts); the caller keeps the payloads, indexed by
 * keel_queue_slot(id), which is dense in [0, capacity).
 *
 * Every message is in exactly one of three heaps:
 *   ready     (priority desc, then FIFO)   -- what pop takes
 *   delayed   (ready time asc, then FIFO)  -- not yet visible
 *   in flight (visibility deadline asc)    -- popped, awaiting ack
 * Each slot knows its heap position, so ack/nack/remove are O(log n).
 *
 * Ids are doubles (exact integers < 2^53) so LuaJIT gets them without
 * boxing: id = gen * span + slot, span = the power of two >= capacity. The
 * per-slot generation makes a stale id (acked, dead, reused slot) "unknown"
 * instead of touching whatever message now lives in the slot.
 *
 * Memory: slot and heap arrays grow by doubling up to capacity and never
 * beyond it; push at capacity returns KEEL_QUEUE_FULL. Time is read from the
 * clock given at creation, never from the system. */

typedef struct keel_queue keel_queue_t;

#define KEEL_QUEUE_MAX_CAPACITY (1 << 24)

enum {
    KEEL_QUEUE_FULL = -1,    /* push: ready + delayed + in flight == capacity */
    KEEL_QUEUE_NOMEM = -2,   /* push: growing the arrays failed */
    KEEL_QUEUE_EMPTY = -1,   /* pop / next_expired: nothing */
    KEEL_QUEUE_UNKNOWN = -1  /* ack / nack / extend / remove: no such live delivery */
};

enum { KEEL_QUEUE_REQUEUED = 0, KEEL_QUEUE_EXHAUSTED = 1 };

typedef struct keel_queue_stats {
    double ready, delayed, in_flight;
    double pushed, popped, acked, nacked, expired, exhausted, removed;
} keel_queue_stats_t;

/* capacity in [1, KEEL_QUEUE_MAX_CAPACITY], visibility_ms > 0,
 * max_attempts >= 1. Returns NULL on bad arguments or out of memory. */
keel_queue_t *keel_queue_new(keel_clock_t *clock, int32_t capacity,
                             double visibility_ms, int32_t max_attempts);
void keel_queue_free(keel_queue_t *q);

/* Power of two >= capacity: any id's slot is fmod(id, span), which callers
 * may compute themselves. keel_queue_slot does the same but returns -1 unless
 * id is a live message. */
double keel_queue_span(const keel_queue_t *q);
int32_t keel_queue_slot(const keel_queue_t *q, double id);

/* Adds a message, ready now (delay_ms <= 0) or at now + delay_ms.
 * Returns its id (> 0), KEEL_QUEUE_FULL or KEEL_QUEUE_NOMEM. */
double keel_queue_push(keel_queue_t *q, double priority, double delay_ms);

/* Takes the highest-priority ready message (oldest first among equals),
 * makes it invisible until now + visibility_ms (the queue's default when
 * visibility_ms <= 0) and counts a delivery attempt. Does not look at the
 * delayed heap: call keel_queue_promote first. Returns id or KEEL_QUEUE_EMPTY. */
double keel_queue_pop(keel_queue_t *q, double visibility_ms);

/* Delivery attempts of a live message (1 after its first pop), or -1. */
int32_t keel_queue_attempt(const keel_queue_t *q, double id);

/* Acks the in-flight delivery (id, attempt) and frees the slot.
 * Returns 0 or KEEL_QUEUE_UNKNOWN (not in flight, or a newer delivery). */
int keel_queue_ack(keel_queue_t *q, double id, int32_t attempt);

/* Fails the in-flight delivery (id, attempt). If attempts are left the
 * message goes back to ready (delay_ms <= 0, behind its priority peers) or
 * to delayed, and KEEL_QUEUE_REQUEUED is returned. Otherwise the slot is
 * freed and KEEL_QUEUE_EXHAUSTED is returned so the caller can dead-letter
 * the payload. expired != 0 counts the failure as a visibility expiry
 * instead of a nack. Returns KEEL_QUEUE_UNKNOWN for a stale delivery. */
int keel_queue_nack(keel_queue_t *q, double id, int32_t attempt,
                    double delay_ms, int expired);

/* Pushes the visibility deadline of an in-flight delivery to now + ms.
 * Returns 0 or KEEL_QUEUE_UNKNOWN. */
int keel_queue_extend(keel_queue_t *q, double id, int32_t attempt, double ms);

/* The in-flight message with the earliest deadline if that deadline is
 * <= now (expiry exactly at the deadline), else KEEL_QUEUE_EMPTY. Does not
 * change it: the caller decides via keel_queue_nack(..., expired = 1). */
double keel_queue_next_expired(const keel_queue_t *q);

/* Moves every delayed message whose time is <= now to ready, in time order.
 * Returns how many moved. */
int32_t keel_queue_promote(keel_queue_t *q);

/* Messages that pop would return right now (without promoting). */
int32_t keel_queue_ready_count(const keel_queue_t *q);

/* Earliest delayed-ready time or visibility deadline, or -1 when none. */
double keel_queue_next_deadline(const keel_queue_t *q);

/* Removes a live message wherever it is and frees its slot.
 * Returns 0 or KEEL_QUEUE_UNKNOWN. */
int keel_queue_remove(keel_queue_t *q, double id);

/* Writes up to max ready ids in pop order into out; returns how many, or -1
 * when out of memory.
 * O(n log n) in the ready count: for inspection and redrive, not hot paths. */
int32_t keel_queue_ready_ids(const keel_queue_t *q, double *out, int32_t max);

void keel_queue_stats(const keel_queue_t *q, keel_queue_stats_t *out);

#endif
