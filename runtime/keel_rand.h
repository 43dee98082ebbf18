#ifndef KEEL_RAND_H
#define KEEL_RAND_H
#include <stdint.h>
/* The runtime's seeded PRNG (xoshiro256**). Every random choice the runtime
 * makes draws from one of these, so a seed replays a run exactly. */

typedef struct keel_rand {
    uint64_t s[4];
} keel_rand_t;

void keel_rand_seed(keel_rand_t *r, uint64_t seed);
uint64_t keel_rand_next(keel_rand_t *r);
/* Uniform in [0, 1). */
double keel_rand_double(keel_rand_t *r);
/* Uniform integer in [lo, hi]; returns lo when hi <= lo. */
int64_t keel_rand_range(keel_rand_t *r, int64_t lo, int64_t hi);

#endif
