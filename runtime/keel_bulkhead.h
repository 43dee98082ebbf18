#ifndef KEEL_BULKHEAD_H
#define KEEL_BULKHEAD_H
#include <stddef.h>
#include <stdint.h>
/* Bulkhead: at most `max` holders of a permit at once and at most `queue`
 * waiters behind them. The C side only counts; the binding parks waiters
 * (FIFO). A released permit goes straight to the longest waiter
 * (transfer()), so newcomers never overtake the queue.
 *
 * Keyed bulkheads have one compartment (max/queue each) per key in a bounded
 * keel_map of max_keys entries. Only idle compartments (no permit out, no
 * waiter) are evicted, least recently used first; when every compartment is
 * busy a new key is refused (KEEL_BULKHEAD_FULL). A compartment is addressed
 * by its slot in [0, max_keys), stable while it is busy. */

typedef struct keel_bulkhead keel_bulkhead_t;

enum { KEEL_BULKHEAD_QUEUED = 0, KEEL_BULKHEAD_ACQUIRED = 1, KEEL_BULKHEAD_FULL = -1 };

typedef struct keel_bulkhead_stats {
    double in_use;   /* permits out (all compartments) */
    double waiting;  /* waiters (all compartments) */
    double acquired; /* permits granted, directly or after waiting */
    double rejected; /* refused: queue full, or no compartment for a new key */
    double abandoned;/* waiters that left (timeout, cancel) */
    double keys;     /* compartments (keyed only) */
    double evicted;  /* idle compartments evicted for room */
} keel_bulkhead_stats_t;

/* max >= 1, queue >= 0; max_keys == 0 for an unkeyed bulkhead. NULL on bad
 * arguments or out of memory. */
keel_bulkhead_t *keel_bulkhead_new(int32_t max, int32_t queue, uint32_t max_keys, uint64_t seed);
void keel_bulkhead_free(keel_bulkhead_t *b);

/* Keyed: the slot of key's compartment, creating it (evicting an idle one if
 * needed). -1: every compartment is busy; -2: key too long or unkeyed
 * bulkhead; -3: out of memory. Unkeyed bulkheads use slot 0. */
int32_t keel_bulkhead_slot(keel_bulkhead_t *b, const char *key, size_t len);

/* KEEL_BULKHEAD_ACQUIRED: the caller holds a permit. KEEL_BULKHEAD_QUEUED:
 * no permit free but room in the queue; the caller is counted as a waiter
 * and must either receive a handed-over permit or call unwait(). Pass
 * may_wait = 0 to never queue. KEEL_BULKHEAD_FULL: refused. */
int keel_bulkhead_acquire(keel_bulkhead_t *b, int32_t slot, int may_wait);
/* Frees a permit. Returns 0, or -1 when the slot has no permit out. The
 * binding first tries to wake a waiter and, if one woke, calls transfer()
 * instead: the decision rests on the binding's wait queue, which knows about
 * waiters that timed out but have not yet run their unwait(). */
int keel_bulkhead_release(keel_bulkhead_t *b, int32_t slot);
/* Hands a permit to a waiter that was woken: the waiter count drops and the
 * permit stays out. Returns 0, or -1 without a permit out or a waiter. */
int keel_bulkhead_transfer(keel_bulkhead_t *b, int32_t slot);
/* A counted waiter gave up. Returns 0, or -1 when the slot has no waiter. */
int keel_bulkhead_unwait(keel_bulkhead_t *b, int32_t slot);
int32_t keel_bulkhead_in_use(const keel_bulkhead_t *b, int32_t slot);
int32_t keel_bulkhead_waiting(const keel_bulkhead_t *b, int32_t slot);
void keel_bulkhead_stats(const keel_bulkhead_t *b, keel_bulkhead_stats_t *out);

#endif
