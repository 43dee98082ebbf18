#ifndef KEEL_HASH_H
#define KEEL_HASH_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
/* Seeded 31-bit string hash shared by the hash tables (keel_map, keel_dedup):
 * wyhash's multiply-fold. The per-table seed (from keel_rand) keeps keys
 * chosen by an adversary from colliding on purpose; 31 bits leave callers the
 * top bit of a uint32 for a flag.
 * Keys up to 16 bytes are read as fixed-size overlapping words rather than a
 * variable-length copy of the tail: that copy (a byte-wise store read back as
 * one word) stalls store forwarding and cost ~80 ns per cold lookup, because
 * it kept the CPU from running ahead to the next key's cache misses. */

#define KEEL_HASH_BITS 0x7fffffffu

static inline uint64_t keel_hash_fold(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t keel_hash_r8(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t keel_hash_r4(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t keel_hash31(uint64_t seed, const char *p, size_t len) {
    const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull;
    uint64_t h = seed ^ (len * k0), a, b;
    if (len <= 16) {
        if (len >= 4) {
            size_t q = (len >> 3) << 2; /* 4..7: both words overlap; 8..16: they cover it */
            a = (keel_hash_r4(p) << 32) | keel_hash_r4(p + q);
            b = (keel_hash_r4(p + len - 4) << 32) | keel_hash_r4(p + len - 4 - q);
        } else if (len) {
            a = ((uint64_t)(unsigned char)p[0] << 16) | ((uint64_t)(unsigned char)p[len >> 1] << 8) |
                (unsigned char)p[len - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        size_t n = len;
        while (n > 16) {
            h = keel_hash_fold(keel_hash_r8(p) ^ k1, keel_hash_r8(p + 8) ^ h);
            p += 16;
            n -= 16;
        }
        a = keel_hash_r8(p + n - 16); /* the last 16 bytes, overlapping what went before */
        b = keel_hash_r8(p + n - 8);
    }
    h = keel_hash_fold(a ^ k1, b ^ h);
    h = keel_hash_fold(h ^ k0, k1);
    return (uint32_t)(h ^ (h >> 32)) & KEEL_HASH_BITS;
}

#endif
