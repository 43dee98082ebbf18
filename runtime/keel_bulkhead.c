#include "keel_bulkhead.h"
#include "keel_map.h"
#include <stdlib.h>

typedef struct {
    int32_t in_use, waiting;
} comp_t;

struct keel_bulkhead {
    int32_t max, queue;
    comp_t single;   /* unkeyed state */
    keel_map_t *map; /* keyed: comp_t per key */
    int64_t in_use, waiting;
    double acquired, rejected, abandoned, evicted;
};

keel_bulkhead_t *keel_bulkhead_new(int32_t max, int32_t queue, uint32_t max_keys, uint64_t seed) {
    if (max < 1 || queue < 0) return NULL;
    keel_bulkhead_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->max = max;
    b->queue = queue;
    if (max_keys > 0) {
        /* No KEEL_MAP_EVICT: the map must never drop a busy compartment. */
        b->map = keel_map_new(max_keys, sizeof(comp_t), 0, NULL, seed);
        if (!b->map) { free(b); return NULL; }
    }
    return b;
}

void keel_bulkhead_free(keel_bulkhead_t *b) {
    if (!b) return;
    keel_map_free(b->map);
    free(b);
}

static comp_t *comp(const keel_bulkhead_t *b, int32_t slot) {
    if (!b->map) return slot == 0 ? (comp_t *)&b->single : NULL;
    if (slot < 0) return NULL;
    return keel_map_value(b->map, (uint32_t)slot);
}

/* Walks from the least recently used end; O(busy compartments) at worst, and
 * only when a new key meets a full map. */
static int evict_idle(keel_bulkhead_t *b) {
    for (uint32_t s = keel_map_oldest(b->map); s != KEEL_MAP_NIL; s = keel_map_newer(b->map, s)) {
        const comp_t *c = keel_map_value(b->map, s);
        if (c && c->in_use == 0 && c->waiting == 0) {
            keel_map_del_slot(b->map, s);
            b->evicted++;
            return 1;
        }
    }
    return 0;
}

int32_t keel_bulkhead_slot(keel_bulkhead_t *b, const char *key, size_t len) {
    if (!b->map || !key || len > KEEL_MAP_MAX_KEY) return -2;
    comp_t *c = keel_map_put(b->map, key, len, NULL);
    if (!c) {
        if (!keel_map_full(b->map)) return -3;
        if (!evict_idle(b)) { b->rejected++; return -1; }
        c = keel_map_put(b->map, key, len, NULL);
        if (!c) return -3;
    }
    return (int32_t)keel_map_slot(b->map, c);
}

int keel_bulkhead_acquire(keel_bulkhead_t *b, int32_t slot, int may_wait) {
    comp_t *c = comp(b, slot);
    if (!c) return KEEL_BULKHEAD_FULL;
    if (c->in_use < b->max) {
        c->in_use++;
        b->in_use++;
        b->acquired++;
        return KEEL_BULKHEAD_ACQUIRED;
    }
    if (may_wait && c->waiting < b->queue) {
        c->waiting++;
        b->waiting++;
        return KEEL_BULKHEAD_QUEUED;
    }
    b->rejected++;
    return KEEL_BULKHEAD_FULL;
}

int keel_bulkhead_release(keel_bulkhead_t *b, int32_t slot) {
    comp_t *c = comp(b, slot);
    if (!c || c->in_use < 1) return -1;
    c->in_use--;
    b->in_use--;
    return 0;
}

int keel_bulkhead_transfer(keel_bulkhead_t *b, int32_t slot) {
    comp_t *c = comp(b, slot);
    if (!c || c->in_use < 1 || c->waiting < 1) return -1;
    c->waiting--;
    b->waiting--;
    b->acquired++;
    return 0;
}

int keel_bulkhead_unwait(keel_bulkhead_t *b, int32_t slot) {
    comp_t *c = comp(b, slot);
    if (!c || c->waiting < 1) return -1;
    c->waiting--;
    b->waiting--;
    b->abandoned++;
    return 0;
}

int32_t keel_bulkhead_in_use(const keel_bulkhead_t *b, int32_t slot) {
    const comp_t *c = comp(b, slot);
    return c ? c->in_use : 0;
}

int32_t keel_bulkhead_waiting(const keel_bulkhead_t *b, int32_t slot) {
    const comp_t *c = comp(b, slot);
    return c ? c->waiting : 0;
}

void keel_bulkhead_stats(const keel_bulkhead_t *b, keel_bulkhead_stats_t *out) {
    out->in_use = (double)b->in_use;
    out->waiting = (double)b->waiting;
    out->acquired = b->acquired;
    out->rejected = b->rejected;
    out->abandoned = b->abandoned;
    out->keys = b->map ? keel_map_count(b->map) : 0;
    out->evicted = b->evicted;
}
