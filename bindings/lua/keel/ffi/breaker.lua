-- FFI declarations for runtime/keel_breaker.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_breaker keel_breaker_t;
typedef struct keel_breaker_stats {
    double state, window_calls, window_failures, window_slow, half_open_permits,
           consecutive_opens, calls, failures, slow, allowed, rejected, opened, open_until_ms,
           probes_in_flight;
} keel_breaker_stats_t;
keel_breaker_t *keel_breaker_new(keel_clock_t *clock, int window_kind, int32_t size,
                                 int32_t min_calls, double failure_rate, double slow_ms,
                                 double slow_rate, double open_ms, int32_t half_open_calls);
void keel_breaker_free(keel_breaker_t *b);
int keel_breaker_allow(keel_breaker_t *b);
int keel_breaker_record(keel_breaker_t *b, int ok, double duration_ms);
int keel_breaker_cancel(keel_breaker_t *b);
int keel_breaker_state(keel_breaker_t *b);
int keel_breaker_force(keel_breaker_t *b, int state);
int keel_breaker_set_open_ms(keel_breaker_t *b, double ms);
int32_t keel_breaker_opens(const keel_breaker_t *b);
int keel_breaker_set_bucket_ms(keel_breaker_t *b, double ms);
int keel_breaker_set_max_half_open_ms(keel_breaker_t *b, double ms);
double keel_breaker_deadline(keel_breaker_t *b);
void keel_breaker_stats(keel_breaker_t *b, keel_breaker_stats_t *out);
]]

return ffi.C
