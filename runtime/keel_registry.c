#include "keel_registry.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "keel_map.h"

#define NIL KEEL_MAP_NIL

typedef struct {
    uint32_t gw;          /* gateway slot */
    uint32_t prev, next;  /* device slots in the gateway's list */
} dev_t_;

typedef struct {
    uint32_t head, tail, ndev;
} gw_t;

struct keel_registry {
    keel_map_t *devs, *gws;
    const keel_clock_t *clock;
    double ttl_ms;
    double binds, moves, unbinds, heartbeats, expired_gws, expired_devs, full;
};

static void unlink_dev(keel_registry_t *r, uint32_t ds, dev_t_ *d) {
    gw_t *g = keel_map_value(r->gws, d->gw);
    if (d->prev != NIL) ((dev_t_ *)keel_map_value(r->devs, d->prev))->next = d->next; else g->head = d->next;
    if (d->next != NIL) ((dev_t_ *)keel_map_value(r->devs, d->next))->prev = d->prev; else g->tail = d->prev;
    g->ndev--;
    d->gw = NIL;
    (void)ds;
}

static void link_dev(keel_registry_t *r, uint32_t gs, uint32_t ds, dev_t_ *d) {
    gw_t *g = keel_map_value(r->gws, gs);
    d->gw = gs;
    d->next = NIL;
    d->prev = g->tail;
    if (g->tail != NIL) ((dev_t_ *)keel_map_value(r->devs, g->tail))->next = ds; else g->head = ds;
    g->tail = ds;
    g->ndev++;
}

/* A gateway leaving the map takes its devices with it. */
static void on_gw_removed(void *ud, keel_map_t *m, uint32_t gs, int reason) {
    keel_registry_t *r = ud;
    gw_t *g = keel_map_value(m, gs);
    if (reason == KEEL_MAP_EXPIRED) {
        r->expired_gws++;
        r->expired_devs += g->ndev;
    }
    uint32_t ds = g->head;
    while (ds != NIL) {
        uint32_t next = ((dev_t_ *)keel_map_value(r->devs, ds))->next;
        keel_map_del_slot(r->devs, ds);
        ds = next;
    }
    g->head = g->tail = NIL;
    g->ndev = 0;
}

keel_registry_t *keel_registry_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed) {
    if (!clock || !(ttl_ms > 0) || !isfinite(ttl_ms)) return NULL;
    keel_registry_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->devs = keel_map_new(max, sizeof(dev_t_), 0, clock, seed);
    r->gws = keel_map_new(max, sizeof(gw_t), 0, clock, seed ^ 0x9e3779b97f4a7c15ull);
    if (!r->devs || !r->gws) {
        keel_registry_free(r);
        return NULL;
    }
    keel_map_on_remove(r->gws, on_gw_removed, r);
    r->clock = clock;
    r->ttl_ms = ttl_ms;
    return r;
}

void keel_registry_free(keel_registry_t *r) {
    if (!r) return;
    keel_map_free(r->gws); /* no hook on free: devices go with their own map */
    keel_map_free(r->devs);
    free(r);
}

/* A device slot whose gateway is alive; a dead gateway met here is reclaimed
 * (with all its devices). keel_map_find on gws does the reclaiming. */
static uint32_t find_dev(keel_registry_t *r, const char *dev, size_t dlen) {
    uint32_t ds = keel_map_find(r->devs, dev, dlen);
    if (ds == NIL) return NIL;
    dev_t_ *d = keel_map_value(r->devs, ds);
    size_t glen;
    const char *gk = keel_map_key(r->gws, d->gw, &glen);
    if (keel_map_find(r->gws, gk, glen) == NIL) return NIL;
    return ds;
}

static void drop_if_empty(keel_registry_t *r, uint32_t gs) {
    gw_t *g = keel_map_value(r->gws, gs);
    if (g && g->ndev == 0) keel_map_del_slot(r->gws, gs);
}

int keel_registry_bind(keel_registry_t *r, const char *dev, size_t dlen, const char *gw, size_t glen) {
    if (dlen > KEEL_MAP_MAX_KEY || glen > KEEL_MAP_MAX_KEY) return KEEL_REGISTRY_ERROR;
    uint32_t ds = find_dev(r, dev, dlen);
    int inserted;
    gw_t *g = keel_map_put(r->gws, gw, glen, &inserted);
    if (!g) {
        if (keel_map_full(r->gws)) { r->full++; return KEEL_REGISTRY_FULL; }
        return KEEL_REGISTRY_ERROR;
    }
    uint32_t gs = keel_map_slot(r->gws, g);
    if (inserted) g->head = g->tail = NIL;
    /* the put may have reclaimed the device's (dead) gateway: look again */
    if (ds != NIL && !keel_map_value(r->devs, ds)) ds = NIL;
    keel_map_set_expiry(r->gws, gs, r->clock->now_ms + r->ttl_ms);
    int rc = 1;
    dev_t_ *d;
    if (ds != NIL) {
        d = keel_map_value(r->devs, ds);
        if (d->gw == gs) return 3;
        uint32_t old = d->gw;
        unlink_dev(r, ds, d);
        drop_if_empty(r, old);
        r->moves++;
        rc = 2;
    } else {
        d = keel_map_put(r->devs, dev, dlen, &inserted);
        if (!d && keel_map_full(r->devs) && keel_map_expire(r->gws, UINT32_MAX) > 0)
            d = keel_map_put(r->devs, dev, dlen, &inserted); /* dead gateways' devices made room */
        if (!d) {
            drop_if_empty(r, gs);
            if (keel_map_full(r->devs)) { r->full++; return KEEL_REGISTRY_FULL; }
            return KEEL_REGISTRY_ERROR;
        }
        ds = keel_map_slot(r->devs, d);
    }
    link_dev(r, gs, ds, d);
    r->binds++;
    return rc;
}

const char *keel_registry_lookup(keel_registry_t *r, const char *dev, size_t dlen, size_t *glen) {
    uint32_t ds = find_dev(r, dev, dlen);
    if (ds == NIL) {
        if (glen) *glen = 0;
        return NULL;
    }
    return keel_map_key(r->gws, ((dev_t_ *)keel_map_value(r->devs, ds))->gw, glen);
}

int keel_registry_unbind(keel_registry_t *r, const char *dev, size_t dlen, const char *gw, size_t glen) {
    uint32_t ds = find_dev(r, dev, dlen);
    if (ds == NIL) return 0;
    dev_t_ *d = keel_map_value(r->devs, ds);
    uint32_t gs = d->gw;
    if (gw) {
        size_t klen;
        const char *k = keel_map_key(r->gws, gs, &klen);
        if (klen != glen || (glen && memcmp(k, gw, glen) != 0)) return 0;
    }
    unlink_dev(r, ds, d);
    keel_map_del_slot(r->devs, ds);
    drop_if_empty(r, gs);
    r->unbinds++;
    return 1;
}

int64_t keel_registry_heartbeat(keel_registry_t *r, const char *gw, size_t glen) {
    uint32_t gs = keel_map_find(r->gws, gw, glen);
    if (gs == NIL) return -1;
    keel_map_set_expiry(r->gws, gs, r->clock->now_ms + r->ttl_ms);
    r->heartbeats++;
    return ((gw_t *)keel_map_value(r->gws, gs))->ndev;
}

uint32_t keel_registry_first(keel_registry_t *r, const char *gw, size_t glen) {
    uint32_t gs = keel_map_find(r->gws, gw, glen);
    return gs == NIL ? NIL : ((gw_t *)keel_map_value(r->gws, gs))->head;
}

uint32_t keel_registry_next(const keel_registry_t *r, uint32_t ds) {
    const dev_t_ *d = keel_map_value(r->devs, ds);
    return d ? d->next : NIL;
}

const char *keel_registry_device_key(const keel_registry_t *r, uint32_t ds, size_t *len) {
    return keel_map_key(r->devs, ds, len);
}

uint32_t keel_registry_size(keel_registry_t *r) {
    keel_map_expire(r->gws, UINT32_MAX);
    return keel_map_count(r->devs);
}

uint32_t keel_registry_gateways(keel_registry_t *r) {
    keel_map_expire(r->gws, UINT32_MAX);
    return keel_map_count(r->gws);
}

double keel_registry_stat(const keel_registry_t *r, int which) {
    switch (which) {
    case 0: return r->binds;
    case 1: return r->moves;
    case 2: return r->unbinds;
    case 3: return r->heartbeats;
    case 4: return r->expired_gws;
    case 5: return r->expired_devs;
    case 6: return r->full;
    case 7: return keel_map_bytes(r->devs) + keel_map_bytes(r->gws) + sizeof *r;
    default: return 0;
    }
}
