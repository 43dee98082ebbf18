#include "keel_dedup.h"
#include <math.h>
#include <stdlib.h>
#include "keel_map.h"

struct keel_dedup {
    keel_map_t *map;
    const keel_clock_t *clock;
    double ttl_ms; /* 0 when keys never expire */
    double hits, marks;
};

keel_dedup_t *keel_dedup_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed) {
    if (!clock) return NULL;
    keel_dedup_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->map = keel_map_new(max, 0, KEEL_MAP_EVICT, clock, seed);
    if (!d->map) {
        free(d);
        return NULL;
    }
    d->clock = clock;
    d->ttl_ms = (isnan(ttl_ms) || ttl_ms <= 0 || ttl_ms == INFINITY) ? 0 : ttl_ms;
    return d;
}

void keel_dedup_free(keel_dedup_t *d) {
    if (!d) return;
    keel_map_free(d->map);
    free(d);
}

int keel_dedup_seen(keel_dedup_t *d, const char *key, size_t len) {
    int inserted;
    void *v = keel_map_put(d->map, key, len, &inserted);
    if (!v) return -1;
    if (!inserted) {
        d->hits++;
        return 1;
    }
    d->marks++;
    if (d->ttl_ms > 0 &&
        keel_map_set_expiry(d->map, keel_map_slot(d->map, v), d->clock->now_ms + d->ttl_ms) != 0) {
        /* could not arm the expiry: do not keep a key that would never age out */
        keel_map_del(d->map, key, len);
        d->marks--;
        return -1;
    }
    return 0;
}

int keel_dedup_forget(keel_dedup_t *d, const char *key, size_t len) {
    return keel_map_del(d->map, key, len);
}

uint32_t keel_dedup_size(keel_dedup_t *d) {
    keel_map_expire(d->map, UINT32_MAX);
    return keel_map_count(d->map);
}

void keel_dedup_clear(keel_dedup_t *d) { keel_map_clear(d->map); }
double keel_dedup_hits(const keel_dedup_t *d) { return d->hits; }
double keel_dedup_marks(const keel_dedup_t *d) { return d->marks; }
double keel_dedup_evictions(const keel_dedup_t *d) { return keel_map_evictions(d->map); }
double keel_dedup_expirations(const keel_dedup_t *d) { return keel_map_expirations(d->map); }
double keel_dedup_bytes(const keel_dedup_t *d) { return keel_map_bytes(d->map) + sizeof *d; }
