#include "keel_ratelimit.h"
#include "keel_map.h"
#include <math.h>
#include <stdlib.h>

/* Float slack when comparing times, so that exactly-on-time requests are not
 * refused over rounding in per_ms / rate (e.g. 1000 / 3). */
#define EPS_MS 1e-6

struct keel_ratelimit {
    const keel_clock_t *clock;
    double interval; /* ms per unit */
    double tau;      /* burst * interval: how far TAT may run ahead of now */
    double burst;
    double tat;      /* unkeyed state */
    keel_map_t *map; /* keyed state: one double TAT per key */
    uint32_t max_keys;
    double allowed, limited, evicted, evicted_active;
};

static void on_remove(void *ud, keel_map_t *m, uint32_t slot, int reason) {
    keel_ratelimit_t *rl = ud;
    if (reason != KEEL_MAP_EVICTED) return;
    rl->evicted++;
    const double *tat = keel_map_value(m, slot);
    if (tat && *tat > rl->clock->now_ms + EPS_MS) rl->evicted_active++;
}

/* A key whose bucket is not full yet (TAT ahead of now) carries state an
 * absent key would not: evicting it grants a fresh burst. Evictions spare
 * such keys while a full-bucket key, lossless to drop, can go instead. */
static int keep_key(void *ud, const keel_map_t *m, uint32_t slot) {
    const keel_ratelimit_t *rl = ud;
    const double *tat = keel_map_value(m, slot);
    return tat && *tat > rl->clock->now_ms + EPS_MS;
}

static int finite_pos(double x) { return x == x && x > 0 && x != INFINITY; }

keel_ratelimit_t *keel_ratelimit_new(const keel_clock_t *clock, double rate, double per_ms,
                                     double burst, uint32_t max_keys, uint64_t seed) {
    if (!clock || !finite_pos(rate) || !finite_pos(per_ms) || !finite_pos(burst) || burst < 1)
        return NULL;
    keel_ratelimit_t *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    rl->clock = clock;
    rl->interval = per_ms / rate;
    rl->burst = burst;
    rl->tau = burst * rl->interval;
    if (!finite_pos(rl->interval) || !finite_pos(rl->tau)) { free(rl); return NULL; }
    rl->tat = -INFINITY;
    if (max_keys > 0) {
        rl->map = keel_map_new(max_keys, sizeof(double), KEEL_MAP_EVICT, clock, seed);
        if (!rl->map) { free(rl); return NULL; }
        keel_map_on_remove(rl->map, on_remove, rl);
        keel_map_on_evict(rl->map, keep_key, rl);
        rl->max_keys = max_keys;
    }
    return rl;
}

void keel_ratelimit_free(keel_ratelimit_t *rl) {
    if (!rl) return;
    keel_map_free(rl->map);
    free(rl);
}

static double take(keel_ratelimit_t *rl, double *tat, double n) {
    if (!(n > 0)) return NAN;
    if (n > rl->burst) { rl->limited++; return INFINITY; }
    double now = rl->clock->now_ms;
    double start = *tat > now ? *tat : now;
    double next = start + n * rl->interval;
    double allow_at = next - rl->tau;
    if (allow_at > now + EPS_MS) {
        rl->limited++;
        return allow_at - now;
    }
    *tat = next;
    rl->allowed++;
    return 0;
}

static double reserve(keel_ratelimit_t *rl, double *tat, double n, double max_wait) {
    if (!(n > 0) || n > rl->burst) { rl->limited++; return KEEL_RATELIMIT_NEVER; }
    double now = rl->clock->now_ms;
    double start = *tat > now ? *tat : now;
    double next = start + n * rl->interval;
    double wait = next - rl->tau - now;
    if (wait <= EPS_MS) wait = 0;
    if (!(wait <= max_wait)) { rl->limited++; return KEEL_RATELIMIT_TOO_LONG; }
    *tat = next;
    rl->allowed++;
    return wait;
}

static void refund(keel_ratelimit_t *rl, double *tat, double n) {
    if (!(n > 0) || n > rl->burst) return;
    *tat -= n * rl->interval;
}

static double available(const keel_ratelimit_t *rl, double tat) {
    double now = rl->clock->now_ms;
    if (tat <= now) return rl->burst;
    double a = (rl->tau - (tat - now)) / rl->interval;
    if (a < 0) return 0;
    return floor(a + 1e-9);
}

double keel_ratelimit_take(keel_ratelimit_t *rl, double n) {
    if (rl->map) return NAN;
    return take(rl, &rl->tat, n);
}

double keel_ratelimit_reserve(keel_ratelimit_t *rl, double n, double max_wait_ms) {
    return reserve(rl, &rl->tat, n, max_wait_ms);
}

void keel_ratelimit_refund(keel_ratelimit_t *rl, double n) { refund(rl, &rl->tat, n); }

double keel_ratelimit_available(keel_ratelimit_t *rl) { return available(rl, rl->tat); }

/* A new key starts with a full bucket: TAT in the past. */
static double *key_tat(keel_ratelimit_t *rl, const char *key, size_t len) {
    if (!rl->map || !key || len > KEEL_MAP_MAX_KEY) return NULL;
    int inserted = 0;
    double *tat = keel_map_put(rl->map, key, len, &inserted);
    if (tat && inserted) *tat = -INFINITY;
    return tat;
}

double keel_ratelimit_take_key(keel_ratelimit_t *rl, const char *key, size_t len, double n) {
    if (!(n > 0)) return NAN;
    double *tat = key_tat(rl, key, len);
    return tat ? take(rl, tat, n) : NAN;
}

double keel_ratelimit_reserve_key(keel_ratelimit_t *rl, const char *key, size_t len, double n,
                                  double max_wait_ms) {
    double *tat = key_tat(rl, key, len);
    return tat ? reserve(rl, tat, n, max_wait_ms) : KEEL_RATELIMIT_NEVER;
}

void keel_ratelimit_refund_key(keel_ratelimit_t *rl, const char *key, size_t len, double n) {
    if (!rl->map || !key || len > KEEL_MAP_MAX_KEY) return;
    double *tat = keel_map_peek(rl->map, key, len);
    if (tat) refund(rl, tat, n);
}

double keel_ratelimit_available_key(keel_ratelimit_t *rl, const char *key, size_t len) {
    if (!rl->map || !key || len > KEEL_MAP_MAX_KEY) return NAN;
    double *tat = keel_map_peek(rl->map, key, len);
    return available(rl, tat ? *tat : -INFINITY);
}

void keel_ratelimit_stats(const keel_ratelimit_t *rl, keel_ratelimit_stats_t *out) {
    out->allowed = rl->allowed;
    out->limited = rl->limited;
    out->available = rl->map ? 0 : available(rl, rl->tat);
    out->keys = rl->map ? keel_map_count(rl->map) : 0;
    out->max_keys = rl->max_keys;
    out->evicted = rl->evicted;
    out->evicted_active = rl->evicted_active;
}
