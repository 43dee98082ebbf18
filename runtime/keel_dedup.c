#include "keel_dedup.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "keel_hash.h"

/* Its own table rather than keel_map: a hit must touch one slot (one cache
 * line) and nothing else, because at a million keys every line touched is a
 * DRAM miss. Open addressing with linear probing over 32-byte slots; the
 * insertion order lives in a separate ring of slot positions that only
 * eviction, expiry and rehash read. */

#define INLINE_KEY 16
#define MAX_KEY 65535u
#define REF 0x80000000u /* hit since it last left the ring head (second chance) */
#define MIN_SLOTS 16u
#define MAX_SLOTS 0x80000000u /* ring positions are uint32 */
#define PREFETCH 16

enum { EMPTY = 0, LIVE, PENDING, TOMB };

/* PENDING: forgotten, but its ring entry still exists, so the slot may not be
 * reused until the ring head reaches it (or a rehash drops it). TOMB: free
 * for inserts but still part of probe chains. */
typedef struct {
    uint32_t hash; /* 31-bit hash | REF */
    uint16_t len;
    uint16_t state;
    double expires;
    union { char in[INLINE_KEY]; char *out; } key;
} slot_t;

_Static_assert(sizeof(slot_t) == 32, "two slots per cache line");

struct keel_dedup {
    slot_t *tab;
    void *tab_raw;  /* tab is tab_raw rounded up to a cache line */
    uint32_t *ring; /* positions of LIVE and PENDING slots, oldest mark at head */
    uint32_t mask;  /* slots - 1; the ring has as many entries as the table */
    uint32_t cap;   /* largest table max live keys need */
    uint32_t head, count;
    uint32_t live, pending, tombs;
    uint32_t max;
    const keel_clock_t *clock;
    double ttl_ms; /* 0: keys never expire */
    uint64_t seed;
    double hits, marks, evictions, expirations, key_bytes;
};

/* Rehash before occupied slots (LIVE + PENDING + TOMB) exceed 0.7 of the table. */
static uint32_t load_limit(uint32_t slots) { return (uint32_t)((uint64_t)slots * 7 / 10); }

/* The table never grows past the first power of two holding max live keys at
 * <= 0.6 load: at full that is 0.3..0.6 load, i.e. 36/0.3 = 120 bytes of slot
 * and ring per key at worst. */
static uint32_t cap_for(uint32_t max) {
    uint32_t n = MIN_SLOTS;
    while (n < MAX_SLOTS && (double)max > 0.6 * n) n *= 2;
    return n;
}

static const char *key_of(const slot_t *s) { return s->len <= INLINE_KEY ? s->key.in : s->key.out; }

/* Tables of 2 MB and more are mapped and prefaulted in one call: a rehash
 * writes nearly every page of the new table, and taking those faults one 4 KB
 * page at a time was about half the cost of growing (~90 of ~190 ns per
 * insert while filling to 1M keys; prefaulted, ~55). Huge pages
 * (MADV_HUGEPAGE) were tried: hits gained nothing measurable and fills
 * became erratic (163..246 ns) whenever the kernel had to compact memory
 * for them. A kernel without MADV_POPULATE_WRITE just faults lazily. */
#define BIG_TABLE ((size_t)2 << 20)

static void *tab_alloc(size_t bytes) {
    if (bytes < BIG_TABLE) return calloc(bytes + 64, 1);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_POPULATE_WRITE
    madvise(p, bytes, MADV_POPULATE_WRITE);
#endif
    return p;
}

static void tab_free(void *raw, uint32_t slots) {
    size_t bytes = (size_t)slots * sizeof(slot_t);
    if (bytes < BIG_TABLE) free(raw);
    else if (raw) munmap(raw, bytes);
}

static int alloc_table(uint32_t slots, void **raw, slot_t **tab, uint32_t **ring) {
    *raw = tab_alloc((size_t)slots * sizeof(slot_t));
    *ring = malloc((size_t)slots * sizeof(uint32_t));
    if (!*raw || !*ring) {
        tab_free(*raw, slots);
        free(*ring);
        return -1;
    }
    *tab = (slot_t *)(((uintptr_t)*raw + 63) & ~(uintptr_t)63);
    return 0;
}

/* A freed slot followed by an EMPTY one ends every probe chain through it, so
 * it (and the tombstones just before it) can become EMPTY instead. With
 * that and inserts reusing tombstones, ~40% of evictions at 1M keys leave
 * one, so a purging rehash comes about every million new keys. */
static void bury(keel_dedup_t *d, uint32_t pos) {
    slot_t *t = d->tab;
    uint32_t m = d->mask;
    if (t[(pos + 1) & m].state != EMPTY) {
        t[pos].state = TOMB;
        d->tombs++;
        return;
    }
    t[pos].state = EMPTY;
    for (uint32_t p = (pos - 1) & m; t[p].state == TOMB; p = (p - 1) & m) {
        t[p].state = EMPTY;
        d->tombs--;
    }
}

static void drop_key(keel_dedup_t *d, slot_t *s) {
    if (s->len > INLINE_KEY) {
        free(s->key.out);
        d->key_bytes -= s->len;
    }
}

static uint32_t ring_pop(keel_dedup_t *d) {
    uint32_t pos = d->ring[d->head];
    d->head = (d->head + 1) & d->mask;
    d->count--;
    if (d->count > PREFETCH) __builtin_prefetch(&d->tab[d->ring[(d->head + PREFETCH) & d->mask] & d->mask]);
    return pos;
}

static void ring_push(keel_dedup_t *d, uint32_t pos) {
    d->ring[(d->head + d->count) & d->mask] = pos;
    d->count++;
}

static void drop_live(keel_dedup_t *d, uint32_t pos) {
    drop_key(d, &d->tab[pos]);
    d->live--;
    bury(d, pos);
}

/* Every key expires at mark + ttl and marks enter the ring in time order, so
 * the ring is in expiry order: popping expired heads is amortised O(1). */
static void expire(keel_dedup_t *d) {
    double now = d->clock->now_ms;
    while (d->count) {
        uint32_t pos = d->ring[d->head];
        slot_t *s = &d->tab[pos];
        if (s->state == PENDING) {
            ring_pop(d);
            d->pending--;
            bury(d, pos);
            continue;
        }
        if (!(now >= s->expires)) break;
        ring_pop(d);
        drop_live(d, pos);
        d->expirations++;
    }
}

/* At max: CLOCK over the ring without ttl (a key hit since it last reached
 * the head goes round once more); with ttl the head, the key that would
 * expire soonest (requeueing would break the ring's expiry order). Ends
 * within one pass because each requeue clears a REF bit. */
static void evict_one(keel_dedup_t *d) {
    while (d->count) {
        uint32_t pos = ring_pop(d);
        slot_t *s = &d->tab[pos];
        if (s->state == PENDING) {
            d->pending--;
            bury(d, pos);
            continue;
        }
        if (d->ttl_ms == 0 && (s->hash & REF)) {
            s->hash &= ~REF;
            ring_push(d, pos);
            continue;
        }
        drop_live(d, pos);
        d->evictions++;
        return;
    }
}

/* Rebuilds table and ring together. Pass 1 walks the old table in order, so
 * both tables are read and written nearly sequentially, and leaves each moved
 * key's new position in its old slot; pass 2 walks the old ring (prefetching
 * ahead) to write the new ring in the same order. PENDING and TOMB drop out. */
static int rehash(keel_dedup_t *d) {
    uint32_t n = d->mask + 1, nn = n;
    if ((uint64_t)d->live * 20 > (uint64_t)n * 7 && n < d->cap) nn = n * 2;
    void *raw;
    slot_t *nt;
    uint32_t *nring;
    if (alloc_table(nn, &raw, &nt, &nring) != 0) {
        if (nn == n || alloc_table(nn = n, &raw, &nt, &nring) != 0) return -1;
    }
    slot_t *old = d->tab;
    uint32_t nm = nn - 1;
    for (uint32_t i = 0; i < n; i++) {
        slot_t *s = &old[i];
        if (s->state != LIVE) continue;
        uint32_t j = s->hash & KEEL_HASH_BITS & nm;
        while (nt[j].state != EMPTY) j = (j + 1) & nm;
        nt[j] = *s;
        s->hash = j;
    }
    uint32_t cnt = 0, m = d->mask;
    for (uint32_t k = 0; k < d->count; k++) {
        if (k + PREFETCH < d->count) __builtin_prefetch(&old[d->ring[(d->head + k + PREFETCH) & m] & m]);
        slot_t *s = &old[d->ring[(d->head + k) & m]];
        if (s->state == LIVE) nring[cnt++] = s->hash;
    }
    tab_free(d->tab_raw, d->mask + 1);
    free(d->ring);
    d->tab_raw = raw;
    d->tab = nt;
    d->ring = nring;
    d->mask = nm;
    d->head = 0;
    d->count = cnt;
    d->pending = d->tombs = 0;
    return 0;
}

keel_dedup_t *keel_dedup_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed) {
    if (!clock || max == 0 || max == UINT32_MAX) return NULL;
    keel_dedup_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    if (alloc_table(MIN_SLOTS, &d->tab_raw, &d->tab, &d->ring) != 0) {
        free(d);
        return NULL;
    }
    d->mask = MIN_SLOTS - 1;
    d->cap = cap_for(max);
    d->max = max;
    d->clock = clock;
    d->seed = seed;
    d->ttl_ms = (isnan(ttl_ms) || ttl_ms <= 0 || ttl_ms == INFINITY) ? 0 : ttl_ms;
    return d;
}

static void drop_all_keys(keel_dedup_t *d) {
    for (uint32_t i = 0; i <= d->mask; i++)
        if (d->tab[i].state == LIVE) drop_key(d, &d->tab[i]);
}

void keel_dedup_free(keel_dedup_t *d) {
    if (!d) return;
    drop_all_keys(d);
    tab_free(d->tab_raw, d->mask + 1);
    free(d->ring);
    free(d);
}

/* The slot holding key as LIVE, or the EMPTY slot ending its probe chain. */
static uint32_t find(const keel_dedup_t *d, const char *key, size_t len, uint32_t h) {
    const slot_t *t = d->tab;
    uint32_t m = d->mask, i = h & m;
    for (;;) {
        const slot_t *s = &t[i];
        if (s->state == EMPTY) return i;
        if ((s->hash & KEEL_HASH_BITS) == h && s->len == len && s->state == LIVE &&
            (len == 0 || memcmp(key_of(s), key, len) == 0))
            return i;
        i = (i + 1) & m;
    }
}

/* First reusable (TOMB or EMPTY) slot on the probe chain of an absent key. */
static uint32_t free_slot(const keel_dedup_t *d, uint32_t h) {
    uint32_t m = d->mask, i = h & m;
    while (d->tab[i].state == LIVE || d->tab[i].state == PENDING) i = (i + 1) & m;
    return i;
}

static int insert(keel_dedup_t *d, const char *key, size_t len, uint32_t h) {
    char *out = NULL;
    if (len > INLINE_KEY) {
        out = malloc(len);
        if (!out) return -1;
        memcpy(out, key, len);
    }
    if (d->live >= d->max) evict_one(d);
    uint32_t pos = free_slot(d, h);
    if (d->tab[pos].state == EMPTY) {
        uint32_t slots = d->mask + 1;
        if (d->live + d->pending + d->tombs + 1 > load_limit(slots) &&
            (d->pending + d->tombs > 0 || slots < d->cap)) {
            if (rehash(d) == 0) pos = free_slot(d, h);
        }
        /* rehash impossible (out of memory, or max beyond what 2^31 slots
         * hold at 0.7): carry on while an EMPTY slot still ends every chain */
        if (d->live + d->pending + d->tombs + 2 > d->mask + 1 && d->tab[pos].state == EMPTY) {
            free(out);
            return -1;
        }
    }
    slot_t *s = &d->tab[pos];
    if (s->state == TOMB) d->tombs--;
    s->hash = h;
    s->len = (uint16_t)len;
    s->state = LIVE;
    s->expires = d->ttl_ms > 0 ? d->clock->now_ms + d->ttl_ms : INFINITY;
    if (out) {
        s->key.out = out;
        d->key_bytes += len;
    } else if (len) {
        memcpy(s->key.in, key, len);
    }
    ring_push(d, pos);
    d->live++;
    d->marks++;
    return 0;
}

int keel_dedup_seen(keel_dedup_t *d, const char *key, size_t len) {
    if (len > MAX_KEY) return -1;
    if (d->ttl_ms > 0) expire(d);
    uint32_t h = keel_hash31(d->seed, key, len);
    slot_t *s = &d->tab[find(d, key, len, h)];
    if (s->state == LIVE) {
        /* conditional: a clean line need not be written back */
        if (!(s->hash & REF) && d->ttl_ms == 0) s->hash |= REF;
        d->hits++;
        return 1;
    }
    return insert(d, key, len, h);
}

int keel_dedup_forget(keel_dedup_t *d, const char *key, size_t len) {
    if (len > MAX_KEY) return 0;
    if (d->ttl_ms > 0) expire(d);
    slot_t *s = &d->tab[find(d, key, len, keel_hash31(d->seed, key, len))];
    if (s->state != LIVE) return 0;
    drop_key(d, s);
    s->state = PENDING;
    d->live--;
    d->pending++;
    return 1;
}

uint32_t keel_dedup_size(keel_dedup_t *d) {
    if (d->ttl_ms > 0) expire(d);
    return d->live;
}

void keel_dedup_clear(keel_dedup_t *d) {
    drop_all_keys(d);
    void *raw;
    slot_t *t;
    uint32_t *ring;
    if (alloc_table(MIN_SLOTS, &raw, &t, &ring) == 0) {
        tab_free(d->tab_raw, d->mask + 1);
        free(d->ring);
        d->tab_raw = raw;
        d->tab = t;
        d->ring = ring;
        d->mask = MIN_SLOTS - 1;
    } else {
        memset(d->tab, 0, ((size_t)d->mask + 1) * sizeof(slot_t));
    }
    d->head = d->count = d->live = d->pending = d->tombs = 0;
}

double keel_dedup_hits(const keel_dedup_t *d) { return d->hits; }
double keel_dedup_marks(const keel_dedup_t *d) { return d->marks; }
double keel_dedup_evictions(const keel_dedup_t *d) { return d->evictions; }
double keel_dedup_expirations(const keel_dedup_t *d) { return d->expirations; }

double keel_dedup_bytes(const keel_dedup_t *d) {
    double slots = (double)d->mask + 1;
    return sizeof *d + slots * (sizeof(slot_t) + sizeof(uint32_t)) + 64 + d->key_bytes;
}
