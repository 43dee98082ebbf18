-- FFI declarations for runtime/keel_bulkhead.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_bulkhead keel_bulkhead_t;
typedef struct keel_bulkhead_stats {
    double in_use, waiting, acquired, rejected, abandoned, keys, evicted;
} keel_bulkhead_stats_t;
keel_bulkhead_t *keel_bulkhead_new(int32_t max, int32_t queue, uint32_t max_keys, uint64_t seed);
void keel_bulkhead_free(keel_bulkhead_t *b);
int32_t keel_bulkhead_slot(keel_bulkhead_t *b, const char *key, size_t len);
int keel_bulkhead_acquire(keel_bulkhead_t *b, int32_t slot, int may_wait);
int keel_bulkhead_release(keel_bulkhead_t *b, int32_t slot);
int keel_bulkhead_transfer(keel_bulkhead_t *b, int32_t slot);
int keel_bulkhead_unwait(keel_bulkhead_t *b, int32_t slot);
int32_t keel_bulkhead_in_use(const keel_bulkhead_t *b, int32_t slot);
int32_t keel_bulkhead_waiting(const keel_bulkhead_t *b, int32_t slot);
void keel_bulkhead_stats(const keel_bulkhead_t *b, keel_bulkhead_stats_t *out);
]]

return ffi.C
