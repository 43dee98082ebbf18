#ifndef KEEL_RATELIMIT_H
#define KEEL_RATELIMIT_H
#include <stddef.h>
#include <stdint.h>
#include "keel_clock.h"
/* Rate limiter using GCRA (the generic cell rate algorithm): `rate` units per
 * `per_ms`, with up to `burst` units at once. The whole state of one bucket
 * is a single "theoretical arrival time" (TAT), so a take is a handful of
 * float operations and a keyed limiter stores 8 bytes per key.
 *
 * Keyed limiters keep one TAT per key in a bounded keel_map (max_keys
 * entries, LRU eviction). A key whose TAT is not in the future has a full
 * bucket, which is exactly what an absent key gets, so evicting it loses
 * nothing; evicting a key that was still limited grants it a fresh burst and
 * is counted in stats as evicted_active. */

typedef struct keel_ratelimit keel_ratelimit_t;

typedef struct keel_ratelimit_stats {
    double allowed;        /* takes/reservations that succeeded */
    double limited;        /* takes/reservations refused */
    double available;      /* units that could be taken now (unkeyed only) */
    double keys;           /* keys in the map (keyed only) */
    double max_keys;
    double evicted;        /* keys evicted for room */
    double evicted_active; /* ... of which were still limited */
} keel_ratelimit_stats_t;

#define KEEL_RATELIMIT_NEVER (-2.0)
#define KEEL_RATELIMIT_TOO_LONG (-1.0)

/* rate, per_ms and burst must be finite and > 0 (burst >= 1). max_keys == 0
 * makes an unkeyed limiter; otherwise a keyed one with that many keys at
 * most (seed keys the map's hash). NULL on bad arguments or out of memory. */
keel_ratelimit_t *keel_ratelimit_new(const keel_clock_t *clock, double rate, double per_ms,
                                     double burst, uint32_t max_keys, uint64_t seed);
void keel_ratelimit_free(keel_ratelimit_t *rl);

/* Takes n units now. Returns 0 when allowed; otherwise the milliseconds until
 * n units will be available (> 0), INFINITY when n > burst (never), NAN for
 * n <= 0 / NaN. Nothing is consumed when refused. */
double keel_ratelimit_take(keel_ratelimit_t *rl, double n);
/* Reserves n units at the earliest time they are available, if that is at
 * most max_wait_ms from now. Returns the wait (>= 0) the caller must sleep
 * before using them; KEEL_RATELIMIT_TOO_LONG (nothing reserved) when the wait
 * would exceed max_wait_ms; KEEL_RATELIMIT_NEVER when n > burst or n <= 0.
 * Reservations are served in the order they are made (FIFO). */
double keel_ratelimit_reserve(keel_ratelimit_t *rl, double n, double max_wait_ms);
/* Gives back a reservation that will not be used (its waiter gave up). */
void keel_ratelimit_refund(keel_ratelimit_t *rl, double n);
/* Units available now (0..burst). */
double keel_ratelimit_available(keel_ratelimit_t *rl);

/* Keyed versions of the above; key is len bytes (len <= KEEL_MAP_MAX_KEY,
 * longer keys return NAN / KEEL_RATELIMIT_NEVER). Calling the unkeyed
 * functions on a keyed limiter, or these on an unkeyed one, returns NAN /
 * KEEL_RATELIMIT_NEVER. */
double keel_ratelimit_take_key(keel_ratelimit_t *rl, const char *key, size_t len, double n);
double keel_ratelimit_reserve_key(keel_ratelimit_t *rl, const char *key, size_t len, double n,
                                  double max_wait_ms);
void keel_ratelimit_refund_key(keel_ratelimit_t *rl, const char *key, size_t len, double n);
double keel_ratelimit_available_key(keel_ratelimit_t *rl, const char *key, size_t len);

void keel_ratelimit_stats(const keel_ratelimit_t *rl, keel_ratelimit_stats_t *out);

#endif
