-- FFI declarations for runtime/keel_ratelimit.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_ratelimit keel_ratelimit_t;
typedef struct keel_ratelimit_stats {
    double allowed, limited, available, keys, max_keys, evicted, evicted_active;
} keel_ratelimit_stats_t;
keel_ratelimit_t *keel_ratelimit_new(const keel_clock_t *clock, double rate, double per_ms,
                                     double burst, uint32_t max_keys, uint64_t seed);
void keel_ratelimit_free(keel_ratelimit_t *rl);
double keel_ratelimit_take(keel_ratelimit_t *rl, double n);
double keel_ratelimit_reserve(keel_ratelimit_t *rl, double n, double max_wait_ms);
void keel_ratelimit_refund(keel_ratelimit_t *rl, double n);
double keel_ratelimit_available(keel_ratelimit_t *rl);
double keel_ratelimit_take_key(keel_ratelimit_t *rl, const char *key, size_t len, double n);
double keel_ratelimit_reserve_key(keel_ratelimit_t *rl, const char *key, size_t len, double n,
                                  double max_wait_ms);
void keel_ratelimit_refund_key(keel_ratelimit_t *rl, const char *key, size_t len, double n);
double keel_ratelimit_available_key(keel_ratelimit_t *rl, const char *key, size_t len);
void keel_ratelimit_stats(const keel_ratelimit_t *rl, keel_ratelimit_stats_t *out);
]]

return ffi.C
