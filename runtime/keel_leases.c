#include "keel_leases.h"
#include <math.h>
#include <stdlib.h>
#include "keel_map.h"

typedef struct {
    double token;
} lease_t;

struct keel_leases {
    keel_map_t *map;
    const keel_clock_t *clock;
    double next_token;
    uint32_t last_slot;
    double grants, renewals, releases, held, full, lost;
};

keel_leases_t *keel_leases_new(uint32_t max, const keel_clock_t *clock, uint64_t seed) {
    if (!clock) return NULL;
    keel_leases_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->map = keel_map_new(max, sizeof(lease_t), 0, clock, seed);
    if (!l->map) {
        free(l);
        return NULL;
    }
    l->clock = clock;
    l->next_token = 1;
    l->last_slot = KEEL_MAP_NIL;
    return l;
}

void keel_leases_free(keel_leases_t *l) {
    if (!l) return;
    keel_map_free(l->map);
    free(l);
}

static int good_ttl(double ttl_ms) { return ttl_ms > 0 && isfinite(ttl_ms); }

double keel_leases_acquire(keel_leases_t *l, const char *key, size_t len, double ttl_ms) {
    if (!good_ttl(ttl_ms)) return KEEL_LEASE_ERROR;
    int inserted;
    lease_t *v = keel_map_put(l->map, key, len, &inserted);
    if (!v) {
        if (len <= KEEL_MAP_MAX_KEY && keel_map_full(l->map)) {
            l->full++;
            return KEEL_LEASE_FULL;
        }
        return KEEL_LEASE_ERROR;
    }
    uint32_t slot = keel_map_slot(l->map, v);
    l->last_slot = slot;
    if (!inserted) {
        l->held++;
        return KEEL_LEASE_HELD;
    }
    if (keel_map_set_expiry(l->map, slot, l->clock->now_ms + ttl_ms) != 0) {
        keel_map_del_slot(l->map, slot);
        return KEEL_LEASE_ERROR;
    }
    v->token = l->next_token++;
    l->grants++;
    return v->token;
}

/* The live lease on key if token still owns it. */
static uint32_t owned(keel_leases_t *l, const char *key, size_t len, double token) {
    uint32_t slot = keel_map_find(l->map, key, len);
    if (slot == KEEL_MAP_NIL) return slot;
    const lease_t *v = keel_map_value(l->map, slot);
    return v->token == token ? slot : KEEL_MAP_NIL;
}

double keel_leases_renew(keel_leases_t *l, const char *key, size_t len, double token, double ttl_ms) {
    if (!good_ttl(ttl_ms)) return 0;
    uint32_t slot = owned(l, key, len, token);
    if (slot == KEEL_MAP_NIL) {
        l->lost++;
        return 0;
    }
    double e = l->clock->now_ms + ttl_ms;
    if (keel_map_set_expiry(l->map, slot, e) != 0) return 0;
    l->renewals++;
    return e;
}

int keel_leases_release(keel_leases_t *l, const char *key, size_t len, double token) {
    uint32_t slot = owned(l, key, len, token);
    if (slot == KEEL_MAP_NIL) {
        l->lost++;
        return 0;
    }
    keel_map_del_slot(l->map, slot);
    l->releases++;
    return 1;
}

double keel_leases_holder(keel_leases_t *l, const char *key, size_t len) {
    uint32_t slot = keel_map_find(l->map, key, len);
    l->last_slot = slot;
    if (slot == KEEL_MAP_NIL) return 0;
    return ((const lease_t *)keel_map_value(l->map, slot))->token;
}

int keel_leases_valid(keel_leases_t *l, const char *key, size_t len, double token) {
    return owned(l, key, len, token) != KEEL_MAP_NIL;
}

uint32_t keel_leases_last_slot(const keel_leases_t *l) { return l->last_slot; }

double keel_leases_expires(const keel_leases_t *l, uint32_t slot) {
    return keel_map_expiry(l->map, slot);
}

uint32_t keel_leases_count(keel_leases_t *l) {
    keel_map_expire(l->map, UINT32_MAX);
    return keel_map_count(l->map);
}

double keel_leases_stat(const keel_leases_t *l, int which) {
    switch (which) {
    case 0: return l->grants;
    case 1: return l->renewals;
    case 2: return l->releases;
    case 3: return keel_map_expirations(l->map);
    case 4: return l->held;
    case 5: return l->full;
    case 6: return l->lost;
    case 7: return keel_map_bytes(l->map) + sizeof *l;
    default: return 0;
    }
}
