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
 * eviction, expiry and growth read.
 *
 * Removal shifts the rest of the probe chain back (no tombstones), so chains
 * stay as short as the live load makes them and no purging rehash is ever
 * needed; each slot knows its ring entry so a shifted slot can update it.
 *
 * Growth is incremental: the old table stays beside the new one and every
 * call moves a few of its slots over, so no call pays for rehashing a
 * million keys (that was a stall of tens of ms). Meanwhile lookups try the
 * new table, then the old one; the old one only loses keys (moved, forgotten,
 * evicted), each leaving a MOVED mark so its probe chains stay intact. A
 * ring entry says which table its position is in by one bit, compared with
 * d->gen, which flips at each growth: every entry written before it then
 * points into the old table without being touched. The ring has its final
 * size from the start, so growing never moves it; when it is large it is
 * mapped lazily and the pages behind its head are given back. */

#define INLINE_KEY 16
#define MAX_KEY 65535u
#define REF 0x80000000u /* hit since it last left the ring head (second chance) */
#define MIN_SLOTS 16u
#define MAX_SLOTS 0x7ffffff0u /* positions fit in 31 bits, below POS_MASK */
#define TAG 0x80000000u       /* ring entry: the table generation bit */
#define POS_MASK 0x7fffffffu
#define DEAD UINT32_MAX       /* ring entry of a forgotten key */
#define PREFETCH 16
#define LOAD 0.4
#define MIGRATE_STEP 32       /* old slots moved per call: done before the new table fills */
#define RING_CHUNK 16384u     /* ring entries given back at a time (64 KiB of them) */

enum { EMPTY = 0, LIVE = 1, MOVED = 2 };

typedef struct {
    uint32_t hash; /* 31-bit hash | REF */
    uint16_t len;
    uint16_t state;
    uint32_t ridx; /* this key's ring entry */
    uint32_t pad;
    union { char in[INLINE_KEY]; char *out; } key;
} slot_t;

_Static_assert(sizeof(slot_t) == 32, "two slots per cache line");

struct keel_dedup {
    slot_t *tab;
    void *tab_raw;   /* tab is tab_raw rounded up to a cache line */
    uint32_t n;      /* slots */
    uint32_t cap;    /* the table never grows past this many slots */
    slot_t *old;     /* while growing: the previous table, being emptied */
    void *old_raw;
    uint32_t old_n, mig; /* its size, and the next of its slots to move */
    uint32_t gen;    /* TAG bit of ring entries that point into tab */
    uint32_t *ring;  /* entries: position | table bit, or DEAD; oldest mark at head */
    double *rexp;    /* with ttl: each ring entry's expiry (marks are in time order) */
    uint32_t rcap;   /* ring entries (fixed) */
    int ring_mapped; /* ring and rexp are lazily mapped: pages behind the head go back */
    size_t pop_done, pop_total; /* bytes of a new big table prefaulted, of all */
    char *trash;     /* a big old table being unmapped a chunk per call */
    size_t trash_len;
    int busy;        /* growth work pending (see chores) */
    uint32_t shrink_below; /* live keys under which the table shrinks */
    uint32_t head, count;
    uint32_t live, dead;
    uint32_t max;
    int owed;      /* an eviction the last insert left to the next call */
    const keel_clock_t *clock;
    double ttl_ms; /* 0: keys never expire */
    uint64_t seed;
    double hits, marks, evictions, expirations, key_bytes;
};

/* Enough slots for max keys at LOAD, rounded to whole cache lines; not a
 * power of two, so at full the load is LOAD for any max (a power of two
 * could leave it at half that, and bytes per key at twice). */
static uint32_t cap_for(uint32_t max) {
    double want = ceil((double)max / LOAD) + 1;
    if (want > MAX_SLOTS) return MAX_SLOTS;
    uint32_t n = (uint32_t)want;
    n = (n + 1) & ~1u;
    return n < MIN_SLOTS ? MIN_SLOTS : n;
}

/* Maps the 31-bit hash onto [0, n) without a division. */
static inline uint32_t home(uint32_t h, uint32_t n) {
    return (uint32_t)(((uint64_t)(h & KEEL_HASH_BITS) * n) >> 31);
}

static inline uint32_t next(uint32_t i, uint32_t n) { return i + 1 == n ? 0 : i + 1; }

static const char *key_of(const slot_t *s) { return s->len <= INLINE_KEY ? s->key.in : s->key.out; }

/* Arrays of 2 MB and more are mapped. A new big table is prefaulted a
 * chunk per call (MADV_POPULATE_WRITE): taking its faults one 4 KB page at a
 * time as keys land on them cost a fifth of the fill, and prefaulting it all
 * at once was a stall of 25 ms at 1M keys. A kernel without
 * MADV_POPULATE_WRITE just faults lazily. */
#define BIG_TABLE ((size_t)2 << 20)
#define POPULATE_CHUNK ((size_t)256 << 10)
#define UNMAP_CHUNK ((size_t)1 << 20) /* unmapping a 32 MB table at once took 2 ms */

static void *big_alloc(size_t bytes) {
    if (bytes < BIG_TABLE) return calloc(bytes + 64, 1);
    void *p = mmap(NULL, bytes + 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void big_free(void *raw, size_t bytes) {
    if (bytes < BIG_TABLE) free(raw);
    else if (raw) munmap(raw, bytes + 64);
}

static slot_t *aligned(void *raw) { return (slot_t *)(((uintptr_t)raw + 63) & ~(uintptr_t)63); }

static void drop_key(keel_dedup_t *d, slot_t *s) {
    if (s->len > INLINE_KEY) {
        free(s->key.out);
        d->key_bytes -= s->len;
    }
}

/* ---- ring entries ---- */

static inline int entry_old(const keel_dedup_t *d, uint32_t e) { return d->old && (e & TAG) != d->gen; }

static inline slot_t *entry_slot(const keel_dedup_t *d, uint32_t e) {
    return entry_old(d, e) ? &d->old[e & POS_MASK] : &d->tab[e & POS_MASK];
}

static inline uint32_t ring_at(const keel_dedup_t *d, uint32_t k) {
    uint32_t r = d->head + k;
    return r >= d->rcap ? r - d->rcap : r;
}

/* Empties slot i of the current table and shifts back every later slot of
 * the probe chain that may move there (its home is not between i and it),
 * fixing their ring entries (Knuth's algorithm R). */
static void remove_at(keel_dedup_t *d, uint32_t i) {
    slot_t *t = d->tab;
    uint32_t n = d->n, j = i;
    for (;;) {
        j = next(j, n);
        if (t[j].state == EMPTY) break;
        uint32_t h = home(t[j].hash, n);
        /* distance home..j shorter than i..j: i is not on j's path */
        if ((j >= h ? j - h : j + n - h) < (j >= i ? j - i : j + n - i)) continue;
        t[i] = t[j];
        d->ring[t[i].ridx] = i | d->gen;
        i = j;
    }
    t[i].state = EMPTY;
}

/* Ring pages the head has left hold nothing: give them back, so a set that
 * churns through a large ring does not keep all of it resident. Called as
 * the head enters a new chunk; the chunk just left is released unless the
 * live entries wrap round into it. */
__attribute__((noinline, cold)) static void release_behind(keel_dedup_t *d) {
    uint32_t start = d->head ? d->head - RING_CHUNK : (d->rcap - 1) / RING_CHUNK * RING_CHUNK;
    uint32_t len = d->head ? RING_CHUNK : d->rcap - start;
    uint32_t ahead = start >= d->head ? start - d->head : start + d->rcap - d->head;
    if (d->count > ahead) return;
    madvise(&d->ring[start], (size_t)len * sizeof *d->ring, MADV_DONTNEED);
    if (d->rexp) madvise(&d->rexp[start], (size_t)len * sizeof *d->rexp, MADV_DONTNEED);
}

static inline __attribute__((always_inline)) uint32_t ring_pop(keel_dedup_t *d) {
    uint32_t idx = d->head;
    d->head = next(d->head, d->rcap);
    d->count--;
    if (__builtin_expect(d->head % RING_CHUNK == 0, 0) && d->ring_mapped) release_behind(d);
    /* the slots of a victim a few evictions ahead, and the line after
     * them, which the shift back reads */
    if (d->count > PREFETCH) {
        uint32_t e = d->ring[ring_at(d, PREFETCH)];
        if (e != DEAD && !entry_old(d, e)) {
            uint32_t p = e & POS_MASK;
            __builtin_prefetch(&d->tab[p]);
            __builtin_prefetch(&d->tab[p + 2 < d->n ? p + 2 : 0]);
        }
    }
    return idx;
}

/* Drops forgotten keys' entries, in place and in order (the write index
 * never passes the read index): needed when they fill the ring. */
static void compact_ring(keel_dedup_t *d) {
    uint32_t cnt = 0, w = d->head;
    for (uint32_t k = 0; k < d->count; k++) {
        uint32_t idx = ring_at(d, k);
        uint32_t e = d->ring[idx];
        if (e == DEAD) continue;
        d->ring[w] = e;
        if (d->rexp) d->rexp[w] = d->rexp[idx];
        entry_slot(d, e)->ridx = w;
        w = next(w, d->rcap);
        cnt++;
    }
    d->count = cnt;
    d->dead = 0;
}

/* Gives back every chunk of a mapped ring that holds no entry in use. */
static void release_unused(keel_dedup_t *d) {
    if (!d->ring_mapped) return;
    uint64_t used_from = d->head, used_to = (uint64_t)d->head + d->count; /* may pass rcap: wraps */
    for (uint32_t start = 0; start < d->rcap; start += RING_CHUNK) {
        uint32_t len = d->rcap - start < RING_CHUNK ? d->rcap - start : RING_CHUNK;
        uint64_t a = start, b = (uint64_t)start + len;
        int in_use = (a < used_to && b > used_from) || (a + d->rcap < used_to && b + d->rcap > used_from);
        if (in_use) continue;
        madvise(&d->ring[start], (size_t)len * sizeof *d->ring, MADV_DONTNEED);
        if (d->rexp) madvise(&d->rexp[start], (size_t)len * sizeof *d->rexp, MADV_DONTNEED);
    }
}

static inline __attribute__((always_inline)) uint32_t ring_push(keel_dedup_t *d, uint32_t e) {
    if (d->count == d->rcap) compact_ring(d);
    uint32_t idx = ring_at(d, d->count);
    d->ring[idx] = e;
    d->count++;
    return idx;
}

/* Removes the live key of ring entry e from whichever table holds it. */
static void drop_live(keel_dedup_t *d, uint32_t e) {
    slot_t *s = entry_slot(d, e);
    drop_key(d, s);
    d->live--;
    if (entry_old(d, e)) s->state = MOVED;
    else remove_at(d, e & POS_MASK);
}

/* Every key expires at mark + ttl and marks enter the ring in time order, so
 * the ring is in expiry order: popping expired heads is amortised O(1). */
static void expire(keel_dedup_t *d) {
    double now = d->clock->now_ms;
    while (d->count) {
        uint32_t idx = d->head;
        uint32_t e = d->ring[idx];
        if (e == DEAD) {
            ring_pop(d);
            d->dead--;
            continue;
        }
        if (!(now >= d->rexp[idx])) break;
        ring_pop(d);
        drop_live(d, e);
        d->expirations++;
    }
}

/* ---- growth ---- */

static uint32_t free_slot(const keel_dedup_t *d, uint32_t h) {
    uint32_t n = d->n, i = home(h, n);
    while (d->tab[i].state != EMPTY) i = next(i, n);
    return i;
}

static void unmap_step(keel_dedup_t *d, size_t most) {
    size_t len = d->trash_len < most ? d->trash_len : most;
    munmap(d->trash, len);
    d->trash += len;
    d->trash_len -= len;
}

static void end_growth(keel_dedup_t *d) {
    size_t bytes = (size_t)d->old_n * sizeof(slot_t);
    if (bytes < BIG_TABLE) {
        free(d->old_raw);
    } else {
        if (d->trash_len) unmap_step(d, SIZE_MAX);
        d->trash = d->old_raw;
        d->trash_len = bytes + 64;
        d->busy = 1;
    }
    d->old = NULL;
    d->old_raw = NULL;
    d->old_n = d->mig = 0;
}

/* Moves up to steps slots of the old table into the current one. */
static void migrate(keel_dedup_t *d, uint32_t steps) {
    slot_t *old = d->old;
    uint32_t end = d->old_n - d->mig > steps ? d->mig + steps : d->old_n;
    for (uint32_t i = d->mig; i < end; i++) {
        slot_t *s = &old[i];
        if (s->state != LIVE) continue;
        uint32_t j = free_slot(d, s->hash);
        d->tab[j] = *s;
        d->ring[s->ridx] = j | d->gen;
        s->state = MOVED;
    }
    d->mig = end;
    if (end == d->old_n) end_growth(d);
}

/* Below this many live keys the table shrinks to a quarter: a twentieth of
 * the slots, so the smaller table starts at 0.2 load, half way to growing. */
static uint32_t shrink_below(uint32_t n) { return n > MIN_SLOTS ? n / 20 : 0; }

/* Starts moving to a table of nn slots, larger or smaller: the current
 * table becomes the old one. Out of memory: carry on in the table we have
 * while it has room. */
static void resize(keel_dedup_t *d, uint32_t nn) {
    if (d->old) migrate(d, UINT32_MAX); /* the last growth is not done yet: finish it */
    size_t bytes = (size_t)nn * sizeof(slot_t);
    void *raw = big_alloc(bytes);
    if (!raw) return;
    d->pop_done = 0;
    d->pop_total = bytes >= BIG_TABLE ? bytes + 64 : 0;
    d->old = d->tab;
    d->old_raw = d->tab_raw;
    d->old_n = d->n;
    d->mig = 0;
    d->tab_raw = raw;
    d->tab = aligned(raw);
    d->n = nn;
    d->gen ^= TAG;
    d->busy = 1;
    d->shrink_below = shrink_below(nn);
}

/* ---- lifetime ---- */

keel_dedup_t *keel_dedup_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed) {
    if (!clock || max == 0 || max == UINT32_MAX) return NULL;
    keel_dedup_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->ttl_ms = (isnan(ttl_ms) || ttl_ms <= 0 || ttl_ms == INFINITY) ? 0 : ttl_ms;
    d->cap = cap_for(max);
    d->max = max;
    d->clock = clock;
    d->seed = seed;
    /* the ring holds an entry per mark, live or forgotten: as many as the
     * largest table has slots, so compaction stays rare */
    d->rcap = d->cap;
    size_t rbytes = (size_t)d->rcap * sizeof *d->ring;
    d->ring_mapped = rbytes >= BIG_TABLE; /* big_alloc maps it: page-aligned */
    d->ring = big_alloc(rbytes);
    d->rexp = d->ttl_ms > 0 ? big_alloc((size_t)d->rcap * sizeof *d->rexp) : NULL;
    d->tab_raw = big_alloc((size_t)MIN_SLOTS * sizeof(slot_t));
    if (!d->ring || (d->ttl_ms > 0 && !d->rexp) || !d->tab_raw) {
        big_free(d->ring, rbytes);
        big_free(d->rexp, (size_t)d->rcap * sizeof *d->rexp);
        big_free(d->tab_raw, (size_t)MIN_SLOTS * sizeof(slot_t));
        free(d);
        return NULL;
    }
    d->tab = aligned(d->tab_raw);
    d->n = MIN_SLOTS;
    return d;
}

static void drop_all_keys(keel_dedup_t *d) {
    for (uint32_t i = 0; i < d->n; i++)
        if (d->tab[i].state == LIVE) drop_key(d, &d->tab[i]);
    for (uint32_t i = 0; d->old && i < d->old_n; i++)
        if (d->old[i].state == LIVE) drop_key(d, &d->old[i]);
}

void keel_dedup_free(keel_dedup_t *d) {
    if (!d) return;
    drop_all_keys(d);
    if (d->old) end_growth(d);
    if (d->trash_len) unmap_step(d, SIZE_MAX);
    big_free(d->tab_raw, (size_t)d->n * sizeof(slot_t));
    big_free(d->ring, (size_t)d->rcap * sizeof *d->ring);
    big_free(d->rexp, (size_t)d->rcap * sizeof *d->rexp);
    free(d);
}

/* ---- lookups ---- */

#define NOT_FOUND UINT32_MAX

static inline int matches(const slot_t *s, const char *key, size_t len, uint32_t h) {
    return (s->hash & KEEL_HASH_BITS) == h && s->len == len && (len == 0 || memcmp(key_of(s), key, len) == 0);
}

/* The slot holding key in the current table, or the EMPTY slot ending its
 * probe chain. */
static inline __attribute__((always_inline)) uint32_t find(const keel_dedup_t *d, const char *key, size_t len, uint32_t h) {
    const slot_t *t = d->tab;
    uint32_t n = d->n, i = home(h, n);
    for (;;) {
        const slot_t *s = &t[i];
        if (s->state == EMPTY) return i;
        if (matches(s, key, len, h)) return i;
        i = next(i, n);
    }
}

/* The old table's live slot holding key, or NOT_FOUND (MOVED slots keep the
 * chains going). */
static uint32_t find_old(const keel_dedup_t *d, const char *key, size_t len, uint32_t h) {
    const slot_t *t = d->old;
    uint32_t n = d->old_n, i = home(h, n);
    for (;;) {
        const slot_t *s = &t[i];
        if (s->state == EMPTY) return NOT_FOUND;
        if (s->state == LIVE && matches(s, key, len, h)) return i;
        i = next(i, n);
    }
}

/* The live slot holding key, and its ring entry in *entry; NULL when absent. */
static inline __attribute__((always_inline)) slot_t *lookup(const keel_dedup_t *d, const char *key, size_t len, uint32_t h, uint32_t *entry) {
    uint32_t i = find(d, key, len, h);
    if (d->tab[i].state == LIVE) {
        *entry = i | d->gen;
        return &d->tab[i];
    }
    if (d->old) {
        uint32_t j = find_old(d, key, len, h);
        if (j != NOT_FOUND) {
            *entry = j | (d->gen ^ TAG);
            return &d->old[j];
        }
    }
    return NULL;
}

static int insert(keel_dedup_t *d, const char *key, size_t len, uint32_t h) {
    char *out = NULL;
    if (len > INLINE_KEY) {
        out = malloc(len);
        if (!out) return -1;
        memcpy(out, key, len);
    }
    if ((double)d->live + 1 > LOAD * d->n && d->n < d->cap) {
        /* by 4, not 2: on the way to a million keys that moves a third
         * fewer keys (each a cache miss in the new table) */
        resize(d, d->n >= d->cap / 4 ? d->cap : d->n * 4);
    }
    /* an EMPTY slot must always end every probe chain */
    if (d->live + 2 > d->n) {
        free(out);
        return -1;
    }
    uint32_t pos = free_slot(d, h);
    slot_t *s = &d->tab[pos];
    s->hash = h;
    s->len = (uint16_t)len;
    s->state = LIVE;
    if (out) {
        s->key.out = out;
        d->key_bytes += len;
    } else if (len) {
        memcpy(s->key.in, key, len);
    }
    uint32_t idx = ring_push(d, pos | d->gen);
    s->ridx = idx;
    if (d->rexp) d->rexp[idx] = d->clock->now_ms + d->ttl_ms;
    d->live++;
    d->marks++;
    d->owed = d->live > d->max;
    return 0;
}

/* An insert at max leaves its eviction to the start of the next call, which
 * does it while that call's own slot is on its way from memory: the same
 * key goes at the same point of the sequence (every call settles first),
 * but the work overlaps a cache miss instead of adding to one. */
/* The eviction an insert at max owes. Without ttl, CLOCK over the ring (a
 * key hit since it last reached the head goes round once more); with ttl
 * the head, the key that would expire soonest (requeueing would break the
 * ring's expiry order). Ends within one pass because each requeue clears a
 * REF bit. The victim is chosen as if the inserted key were not marked yet:
 * its entry stays at the ring's tail and requeued keys go just before it; it
 * cannot be the victim, since when an eviction is owed another live key
 * exists (live = max + 1 >= 2). */
static void settle_owed(keel_dedup_t *d) {
    d->owed = 0;
    uint32_t tail = ring_at(d, d->count - 1);
    for (;;) {
        uint32_t idx = ring_pop(d);
        uint32_t e = d->ring[idx];
        if (e == DEAD) {
            d->dead--;
            continue;
        }
        slot_t *s = entry_slot(d, e);
        if (d->ttl_ms == 0 && (s->hash & REF)) {
            s->hash &= ~REF;
            uint32_t newest = d->ring[tail];
            d->ring[tail] = e;
            s->ridx = tail;
            tail = ring_push(d, newest);
            entry_slot(d, newest)->ridx = tail;
            continue;
        }
        drop_live(d, e);
        d->evictions++;
        return;
    }
}

static void populate_step(keel_dedup_t *d) {
    size_t len = d->pop_total - d->pop_done;
    if (len > POPULATE_CHUNK) len = POPULATE_CHUNK;
#ifdef MADV_POPULATE_WRITE
    madvise((char *)d->tab_raw + d->pop_done, len, MADV_POPULATE_WRITE);
#endif
    d->pop_done += len;
}

/* Most keys have gone: a table a quarter the size, and, when forgotten
 * keys' entries fill most of the ring, the ring compacted once (a
 * sequential pass, ~1 ms per million entries) and its unused pages given
 * back. */
static void shrink(keel_dedup_t *d) {
    uint32_t nn = (d->n / 4 + 1) & ~1u;
    resize(d, nn < MIN_SLOTS ? MIN_SLOTS : nn);
    if (d->dead > d->live) {
        compact_ring(d);
        release_unused(d);
    }
}

/* A step of each piece of growth work still going: prefaulting the new
 * table, moving the old one's keys, unmapping it. */
static void chores(keel_dedup_t *d) {
    if (d->pop_done < d->pop_total) populate_step(d);
    if (d->old) migrate(d, MIGRATE_STEP);
    if (d->trash_len) unmap_step(d, UNMAP_CHUNK);
    d->busy = d->pop_done < d->pop_total || d->old || d->trash_len;
}

/* What every call does first: the eviction owed, expiry, growth work, and
 * a shrink once most keys have gone (expired, forgotten). */
static inline void settle(keel_dedup_t *d) {
    if (d->owed) settle_owed(d);
    if (d->ttl_ms > 0) expire(d);
    if (d->busy) chores(d);
    if (d->live < d->shrink_below && !d->old) shrink(d);
}

int keel_dedup_seen(keel_dedup_t *d, const char *key, size_t len) {
    if (len > MAX_KEY) return -1;
    uint32_t h = keel_hash31(d->seed, key, len);
    __builtin_prefetch(&d->tab[home(h, d->n)]);
    settle(d);
    uint32_t e;
    slot_t *s = lookup(d, key, len, h, &e);
    if (s) {
        /* conditional: a clean line need not be written back */
        if (!(s->hash & REF) && d->ttl_ms == 0) s->hash |= REF;
        d->hits++;
        return 1;
    }
    return insert(d, key, len, h);
}

int keel_dedup_forget(keel_dedup_t *d, const char *key, size_t len) {
    if (len > MAX_KEY) return 0;
    settle(d);
    uint32_t e;
    slot_t *s = lookup(d, key, len, keel_hash31(d->seed, key, len), &e);
    if (!s) return 0;
    d->ring[s->ridx] = DEAD;
    d->dead++;
    drop_live(d, e);
    return 1;
}

uint32_t keel_dedup_size(keel_dedup_t *d) {
    settle(d);
    return d->live;
}

void keel_dedup_clear(keel_dedup_t *d) {
    /* counted as the eviction and expirations they are */
    settle(d);
    drop_all_keys(d);
    if (d->old) end_growth(d);
    void *raw = big_alloc((size_t)MIN_SLOTS * sizeof(slot_t));
    if (raw) {
        big_free(d->tab_raw, (size_t)d->n * sizeof(slot_t));
        d->tab_raw = raw;
        d->tab = aligned(raw);
        d->n = MIN_SLOTS;
        d->shrink_below = 0;
        d->pop_done = d->pop_total = 0;
        d->busy = d->trash_len != 0;
    } else {
        memset(d->tab, 0, (size_t)d->n * sizeof(slot_t));
    }
    if (d->ring_mapped) {
        madvise(d->ring, (size_t)d->rcap * sizeof *d->ring, MADV_DONTNEED);
        if (d->rexp) madvise(d->rexp, (size_t)d->rcap * sizeof *d->rexp, MADV_DONTNEED);
    }
    d->head = d->count = d->live = d->dead = 0;
}

double keel_dedup_hits(const keel_dedup_t *d) { return d->hits; }
double keel_dedup_marks(const keel_dedup_t *d) { return d->marks; }
double keel_dedup_evictions(const keel_dedup_t *d) { return d->evictions + d->owed; }
double keel_dedup_expirations(const keel_dedup_t *d) { return d->expirations; }

/* The tables, plus the ring as far as it is in use (a mapped ring's pages
 * come and go with it), plus keys stored out of line. */
double keel_dedup_bytes(const keel_dedup_t *d) {
    double per_entry = sizeof(uint32_t) + (d->rexp ? sizeof(double) : 0);
    double ring = d->ring_mapped ? (double)(d->count < d->n ? d->n : d->count) : (double)d->rcap;
    return sizeof *d + ((double)d->n + d->old_n) * sizeof(slot_t) + (double)d->trash_len + ring * per_entry + 64 +
           d->key_bytes;
}
