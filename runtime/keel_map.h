#ifndef KEEL_MAP_H
#define KEEL_MAP_H
#include <stddef.h>
#include <stdint.h>
#include "keel_clock.h"
/* A bounded string-keyed hash map with LRU-approximating eviction and
 * optional per-entry expiry, the shared storage of the keyed primitives (leases, dedup,
 * registry, keyed bulkheads and rate limiters).
 *
 * Each entry owns value_size bytes of POD (zeroed on insert) and a stable
 * slot number in [0, max_entries): callers may keep per-entry side data in
 * an array indexed by slot. Entries live in fixed-size slab chunks, so a
 * value pointer stays valid until that entry is removed.
 *
 * Expiry: an entry with an expiry time E is dead from the moment
 * clock->now_ms >= E. Dead entries are never returned by get/peek/put (a dead
 * entry found by a lookup is removed on the spot) and are reclaimed from an
 * expiry heap before any live entry is evicted, plus a couple per put so the
 * map never sits on many of them.
 *
 * At max_entries: put reclaims one expired entry if there is one; otherwise
 * with KEEL_MAP_EVICT it evicts the least recently used entry, and without
 * it returns NULL (the map is full; keel_map_full() tells it from OOM).
 *
 * "Least recently used" is exact while the map holds up to 8192 entries (a
 * hit moves the entry to the new end of the list). Beyond that it is
 * second-chance (CLOCK) LRU, so that a hit touches only its own entry: a hit
 * just marks the entry; eviction takes the oldest entry but gives a marked
 * one a second chance (unmark, move to the new end). An entry used since it
 * last reached the cold end is never evicted before one that was not. */

typedef struct keel_map keel_map_t;

#define KEEL_MAP_NIL UINT32_MAX
#define KEEL_MAP_MAX_KEY 65535u

enum { KEEL_MAP_EVICT = 1 };

/* Why an entry leaves the map, passed to the on_remove hook. */
enum { KEEL_MAP_DELETED = 0, KEEL_MAP_EXPIRED = 1, KEEL_MAP_EVICTED = 2 };

/* Called just before an entry is removed; it may read the entry but must not
 * modify this map (other maps are fine). */
typedef void (*keel_map_hook)(void *ud, keel_map_t *m, uint32_t slot, int reason);

/* clock may be NULL when no entry will ever get an expiry. seed keys the hash
 * so that keys chosen by an attacker cannot force long chains. Returns NULL
 * on bad arguments (max_entries 0, value_size > 64 KiB) or out of memory. */
keel_map_t *keel_map_new(uint32_t max_entries, uint32_t value_size, uint32_t flags,
                         const keel_clock_t *clock, uint64_t seed);
void keel_map_free(keel_map_t *m);
void keel_map_on_remove(keel_map_t *m, keel_map_hook fn, void *ud);

/* Optional, for KEEL_MAP_EVICT: asked about each eviction candidate; a
 * non-zero answer ("its state is still worth keeping") spares it like a
 * second chance. At most KEEL_MAP_SPARE_MAX candidates are spared per
 * eviction, so a map of entries all worth keeping still evicts, in LRU
 * order. It may read the entry but must not modify the map. */
#define KEEL_MAP_SPARE_MAX 16
typedef int (*keel_map_keep_fn)(void *ud, const keel_map_t *m, uint32_t slot);
void keel_map_on_evict(keel_map_t *m, keel_map_keep_fn fn, void *ud);

/* Live entry's value, marked as used (see LRU above); NULL when absent or expired. */
void *keel_map_get(keel_map_t *m, const char *key, size_t len);
/* Same without touching LRU order. */
void *keel_map_peek(keel_map_t *m, const char *key, size_t len);
/* Get-or-insert (an existing entry is marked as used). *inserted (may be NULL) is 1 when
 * the entry is new (value zeroed, no expiry). NULL: full (see above), key
 * longer than KEEL_MAP_MAX_KEY, or out of memory. */
void *keel_map_put(keel_map_t *m, const char *key, size_t len, int *inserted);
/* Returns 1 when a live entry was removed, 0 otherwise. */
int keel_map_del(keel_map_t *m, const char *key, size_t len);

/* Slot access. value/slot convert both ways; functions taking a slot ignore
 * free slots (return NULL / 0 / KEEL_MAP_NIL). keel_map_slot is O(1) for the
 * value the last get/peek/put/find returned, O(chunks) otherwise. */
uint32_t keel_map_slot(const keel_map_t *m, const void *value);
uint32_t keel_map_find(keel_map_t *m, const char *key, size_t len); /* peek, as slot */
void *keel_map_value(const keel_map_t *m, uint32_t slot);
const char *keel_map_key(const keel_map_t *m, uint32_t slot, size_t *len);
int keel_map_del_slot(keel_map_t *m, uint32_t slot);
void keel_map_touch(keel_map_t *m, uint32_t slot); /* move to the newest end now */

/* expires_ms: absolute time on the map's clock; INFINITY (or NaN) clears it.
 * Returns 0, or -1 for a free slot / no clock / out of memory. */
int keel_map_set_expiry(keel_map_t *m, uint32_t slot, double expires_ms);
/* INFINITY when the entry has no expiry or the slot is free. */
double keel_map_expiry(const keel_map_t *m, uint32_t slot);
/* Removes up to max_n entries whose expiry has passed; returns how many. */
uint32_t keel_map_expire(keel_map_t *m, uint32_t max_n);
/* Earliest expiry among entries (INFINITY when none). */
double keel_map_next_expiry(const keel_map_t *m);

/* Walk in list order, oldest (next eviction candidate) first. */
uint32_t keel_map_oldest(const keel_map_t *m);
uint32_t keel_map_newer(const keel_map_t *m, uint32_t slot);

uint32_t keel_map_count(const keel_map_t *m);  /* includes not yet reclaimed dead entries */
uint32_t keel_map_max(const keel_map_t *m);
int keel_map_full(const keel_map_t *m);
/* Bytes the map has allocated (slabs, index, heap, out-of-line keys). */
double keel_map_bytes(const keel_map_t *m);
double keel_map_evictions(const keel_map_t *m);
double keel_map_expirations(const keel_map_t *m);
/* Drops every entry (hook called with KEEL_MAP_DELETED); keeps memory. */
void keel_map_clear(keel_map_t *m);

#endif
