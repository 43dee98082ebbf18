#ifndef KEEL_REGISTRY_H
#define KEEL_REGISTRY_H
#include <stddef.h>
#include <stdint.h>
#include "keel_clock.h"
/* Which gateway (connection server) each device is connected through.
 * Liveness is tracked per gateway, not per device: a heartbeat is one O(1)
 * update however many devices the gateway carries. A gateway is alive while
 * now_ms < last_heartbeat + ttl_ms; binding a device counts as a heartbeat.
 * When a gateway's time runs out all its devices are unbound at once (lazily:
 * the first lookup, bind, heartbeat or size that meets the dead gateway
 * reclaims it, and its devices with it). A gateway exists only while it has
 * devices, so a heartbeat from a gateway with none is a no-op.
 *
 * At most max devices (and so at most max gateways): binding a new device
 * when full fails (expired gateways are reclaimed first; live bindings are
 * never evicted). */

typedef struct keel_registry keel_registry_t;

#define KEEL_REGISTRY_FULL (-1)
#define KEEL_REGISTRY_ERROR (-2)

/* ttl_ms: finite > 0. */
keel_registry_t *keel_registry_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed);
void keel_registry_free(keel_registry_t *r);
/* 1 bound (new device), 2 moved from another gateway, 3 already bound there;
 * KEEL_REGISTRY_FULL or KEEL_REGISTRY_ERROR (key too long, out of memory). */
int keel_registry_bind(keel_registry_t *r, const char *dev, size_t dlen, const char *gw, size_t glen);
/* Gateway key of a live binding (valid until the registry changes), or NULL. */
const char *keel_registry_lookup(keel_registry_t *r, const char *dev, size_t dlen, size_t *glen);
/* gw NULL: unbind whatever the binding is; otherwise only if bound to gw.
 * 1 unbound, 0 not (absent, or owned by another gateway). */
int keel_registry_unbind(keel_registry_t *r, const char *dev, size_t dlen, const char *gw, size_t glen);
/* Devices kept alive, or -1 when the gateway is unknown or already expired. */
int64_t keel_registry_heartbeat(keel_registry_t *r, const char *gw, size_t glen);
/* Walk a live gateway's devices in bind order: first returns a device slot
 * (UINT32_MAX when none), next the one after. Do not modify while walking. */
uint32_t keel_registry_first(keel_registry_t *r, const char *gw, size_t glen);
uint32_t keel_registry_next(const keel_registry_t *r, uint32_t dev_slot);
const char *keel_registry_device_key(const keel_registry_t *r, uint32_t dev_slot, size_t *len);
/* Live devices / gateways (dead gateways reclaimed first). */
uint32_t keel_registry_size(keel_registry_t *r);
uint32_t keel_registry_gateways(keel_registry_t *r);
/* Counters: 0 binds, 1 moves, 2 unbinds, 3 heartbeats, 4 expired gateways,
 * 5 expired devices, 6 full (refused binds), 7 bytes. */
double keel_registry_stat(const keel_registry_t *r, int which);

#endif
