-- FFI declarations for runtime/keel_queue.h (see that header for semantics).
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_queue keel_queue_t;
typedef struct keel_queue_stats {
    double ready, delayed, in_flight;
    double pushed, popped, acked, nacked, expired, exhausted, removed;
} keel_queue_stats_t;
keel_queue_t *keel_queue_new(keel_clock_t *clock, int32_t capacity,
                             double visibility_ms, int32_t max_attempts);
void keel_queue_free(keel_queue_t *q);
double keel_queue_span(const keel_queue_t *q);
int32_t keel_queue_slot(const keel_queue_t *q, double id);
double keel_queue_push(keel_queue_t *q, double priority, double delay_ms);
double keel_queue_pop(keel_queue_t *q, double visibility_ms);
int32_t keel_queue_attempt(const keel_queue_t *q, double id);
int keel_queue_ack(keel_queue_t *q, double id, int32_t attempt);
int keel_queue_nack(keel_queue_t *q, double id, int32_t attempt, double delay_ms, int expired);
int keel_queue_extend(keel_queue_t *q, double id, int32_t attempt, double ms);
double keel_queue_next_expired(const keel_queue_t *q);
int32_t keel_queue_promote(keel_queue_t *q);
int32_t keel_queue_ready_count(const keel_queue_t *q);
double keel_queue_next_deadline(const keel_queue_t *q);
int keel_queue_remove(keel_queue_t *q, double id);
int32_t keel_queue_ready_ids(const keel_queue_t *q, double *out, int32_t max);
void keel_queue_stats(const keel_queue_t *q, keel_queue_stats_t *out);
]]

return ffi.C
