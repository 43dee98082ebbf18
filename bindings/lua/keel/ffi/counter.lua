-- FFI declarations for runtime/keel_counter.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_counter keel_counter_t;
keel_counter_t *keel_counter_new(uint32_t shards);
void keel_counter_free(keel_counter_t *c);
void keel_counter_add(keel_counter_t *c, uint32_t shard, int64_t n);
int64_t keel_counter_value(const keel_counter_t *c);
int64_t keel_counter_reset(keel_counter_t *c);
uint32_t keel_counter_shards(const keel_counter_t *c);
]]

return ffi.C
