-- FFI declarations for runtime/keel_leases.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_leases keel_leases_t;
keel_leases_t *keel_leases_new(uint32_t max, const keel_clock_t *clock, uint64_t seed);
void keel_leases_free(keel_leases_t *l);
double keel_leases_acquire(keel_leases_t *l, const char *key, size_t len, double ttl_ms);
double keel_leases_renew(keel_leases_t *l, const char *key, size_t len, double token, double ttl_ms);
int keel_leases_release(keel_leases_t *l, const char *key, size_t len, double token);
double keel_leases_holder(keel_leases_t *l, const char *key, size_t len);
int keel_leases_valid(keel_leases_t *l, const char *key, size_t len, double token);
uint32_t keel_leases_last_slot(const keel_leases_t *l);
double keel_leases_expires(const keel_leases_t *l, uint32_t slot);
uint32_t keel_leases_count(keel_leases_t *l);
double keel_leases_stat(const keel_leases_t *l, int which);
]]

return ffi.C
