-- FFI declarations for runtime/keel_registry.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
typedef struct keel_registry keel_registry_t;
keel_registry_t *keel_registry_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed);
void keel_registry_free(keel_registry_t *r);
int keel_registry_bind(keel_registry_t *r, const char *dev, size_t dlen, const char *gw, size_t glen);
const char *keel_registry_lookup(keel_registry_t *r, const char *dev, size_t dlen, size_t *glen);
int keel_registry_unbind(keel_registry_t *r, const char *dev, size_t dlen, const char *gw, size_t glen);
int64_t keel_registry_heartbeat(keel_registry_t *r, const char *gw, size_t glen);
uint32_t keel_registry_first(keel_registry_t *r, const char *gw, size_t glen);
uint32_t keel_registry_next(const keel_registry_t *r, uint32_t dev_slot);
const char *keel_registry_device_key(const keel_registry_t *r, uint32_t dev_slot, size_t *len);
uint32_t keel_registry_size(keel_registry_t *r);
uint32_t keel_registry_gateways(keel_registry_t *r);
double keel_registry_stat(const keel_registry_t *r, int which);
]]

return ffi.C
