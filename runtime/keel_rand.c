#include "keel_rand.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void keel_rand_seed(keel_rand_t *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t keel_rand_next(keel_rand_t *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double keel_rand_double(keel_rand_t *r) {
    return (double)(keel_rand_next(r) >> 11) * 0x1.0p-53;
}

int64_t keel_rand_range(keel_rand_t *r, int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    if (span == 0) return (int64_t)keel_rand_next(r); /* full 64-bit range */
    /* Lemire-style rejection keeps the draw unbiased. */
    uint64_t limit = UINT64_MAX - (UINT64_MAX % span);
    uint64_t x;
    do x = keel_rand_next(r); while (x >= limit);
    return lo + (int64_t)(x % span);
}
