-- FFI declarations for runtime/keel_dedup.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_dedup keel_dedup_t;
keel_dedup_t *keel_dedup_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed);
void keel_dedup_free(keel_dedup_t *d);
int keel_dedup_seen(keel_dedup_t *d, const char *key, size_t len);
int keel_dedup_forget(keel_dedup_t *d, const char *key, size_t len);
uint32_t keel_dedup_size(keel_dedup_t *d);
void keel_dedup_clear(keel_dedup_t *d);
double keel_dedup_hits(const keel_dedup_t *d);
double keel_dedup_marks(const keel_dedup_t *d);
double keel_dedup_evictions(const keel_dedup_t *d);
double keel_dedup_expirations(const keel_dedup_t *d);
double keel_dedup_bytes(const keel_dedup_t *d);
]]

return ffi.C
