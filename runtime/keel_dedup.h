#ifndef KEEL_DEDUP_H
#define KEEL_DEDUP_H
#include <stddef.h>
#include <stdint.h>
#include "keel_clock.h"
/* A bounded "have I seen this key?" set for idempotent consumers. A key is
 * remembered for ttl_ms from the moment it was first marked (a hit does not
 * extend it) and forgotten exactly when clock->now_ms reaches mark + ttl_ms.
 * At max keys one key is forgotten to make room, so a very old duplicate may
 * pass as new: size max for the duplicate window you need.
 *  - without ttl: second chance over insertion order. The oldest mark goes
 *    unless it was hit since it last reached the old end; then it is moved
 *    to the new end and the next oldest is tried. Not exact LRU.
 *  - with ttl: expired keys are reclaimed first, then the oldest mark (the
 *    key that would expire soonest) goes, whether or not it was hit.
 * Memory: one 32-byte slot plus a 4-byte ring entry (and with ttl an
 * 8-byte expiry) per table slot. The table grows 4x from 16 slots while
 * under 0.4 load and tops out at max / 0.4 slots: at max, 90 bytes per key
 * (110 with ttl). Growth is incremental (the old table's keys move over a
 * few per call, so no call stalls on a rehash). Removal shifts probe chains
 * back (no tombstones), so a full table never needs a purging rehash. Keys
 * over 16 bytes are stored out of line (counted in bytes). Below a
 * twentieth of the slots live it shrinks to a quarter, the same way. */

typedef struct keel_dedup keel_dedup_t;

/* ttl_ms <= 0, NaN or INFINITY: keys never expire (second chance only). NULL on bad max
 * (0 or UINT32_MAX) or out of memory. */
keel_dedup_t *keel_dedup_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed);
void keel_dedup_free(keel_dedup_t *d);
/* 1: remembered (a duplicate); 0: new, now marked; -1: key too long or out
 * of memory (nothing marked). */
int keel_dedup_seen(keel_dedup_t *d, const char *key, size_t len);
/* 1 when the key was remembered. */
int keel_dedup_forget(keel_dedup_t *d, const char *key, size_t len);
/* Live keys (expired ones are reclaimed first). */
uint32_t keel_dedup_size(keel_dedup_t *d);
void keel_dedup_clear(keel_dedup_t *d);
double keel_dedup_hits(const keel_dedup_t *d);
double keel_dedup_marks(const keel_dedup_t *d);
double keel_dedup_evictions(const keel_dedup_t *d);
double keel_dedup_expirations(const keel_dedup_t *d);
double keel_dedup_bytes(const keel_dedup_t *d);

#endif
