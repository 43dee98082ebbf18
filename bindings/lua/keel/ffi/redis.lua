-- FFI declarations for runtime/keel_redis.h (the calls a client makes per
-- command) and for the reply records of bindings/keel_redis_lua.c, which
-- core.layout() reports so a spec can compare the two.
local ffi = require "ffi"

ffi.cdef [[
typedef struct keel_redis keel_redis_t;
int keel_redis_send(keel_redis_t *r, uint64_t req_id, double timeout_ms, int argc,
                    const char *a0, size_t l0, const char *a1, size_t l1, const char *a2, size_t l2,
                    const char *a3, size_t l3, const char *a4, size_t l4, const char *a5, size_t l5);
const char *keel_redis_last_error(const keel_redis_t *r);

typedef struct {
    double id;
    double num;
    uint32_t off, len;
    int32_t kind;
    int32_t pad;
} keel_redis_done_t;

typedef struct {
    keel_redis_done_t *items;
    char *arena;
    uint32_t n, cap;
    uint32_t arena_len, arena_cap;
} keel_redis_ring_t;
]]

return ffi.C
