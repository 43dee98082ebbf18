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
 * eviction, expiry and rehash read.
 *
 * Removal shifts the rest of the probe chain back (no tombstones), so chains
 * stay as short as the live load makes them and no purging rehash is ever
 * needed; each slot knows its ring entry so a shifted slot can update it. */

#define INLINE_KEY 16
#define MAX_KEY 65535u
#define REF 0x80000000u /* hit since it last left the ring head (second chance) */
#define MIN_SLOTS 16u
#define MAX_SLOTS 0x80000000u /* ring entries are uint32 positions */
#define DEAD UINT32_MAX       /* ring entry of a forgotten key */
#define PREFETCH 16
#define LOAD 0.4

enum { EMPTY = 0, LIVE = 1 };

typedef struct {
    uint32_t hash; /* 31-bit hash | REF */
    uint16_t len;
    uint16_t state;
    uint32_t ridx; /* this key's ring entry */
    uint32_t moved; /* scratch for rehash: the slot's position in the new table */
    union { char in[INLINE_KEY]; char *out; } key;
} slot_t;

_Static_assert(sizeof(slot_t) == 32, "two slots per cache line");

struct keel_dedup {
    slot_t *tab;
    void *tab_raw;   /* tab is tab_raw rounded up to a cache line */
    uint32_t n;      /* slots; the ring has as many entries */
    uint32_t cap;    /* the table never grows past this many slots */
    uint32_t *ring;  /* slot positions (DEAD for forgotten keys), oldest mark at head */
    double *rexp;    /* with ttl: each ring entry's expiry (marks are in time order) */
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

/* Tables of 2 MB and more are mapped and prefaulted in one call: a rehash
 * writes nearly every page of the new table, and taking those faults one 4 KB
 * page at a time was about half the cost of growing. Huge pages
 * (MADV_HUGEPAGE) were tried: hits gained nothing measurable and fills
 * became erratic whenever the kernel had to compact memory for them. A
 * kernel without MADV_POPULATE_WRITE just faults lazily. */
#define BIG_TABLE ((size_t)2 << 20)

static void *tab_alloc(size_t bytes) {
    if (bytes < BIG_TABLE) return calloc(bytes + 64, 1);
    void *p = mmap(NULL, bytes + 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_POPULATE_WRITE
    madvise(p, bytes + 64, MADV_POPULATE_WRITE);
#endif
    return p;
}

static void tab_free(void *raw, uint32_t slots) {
    size_t bytes = (size_t)slots * sizeof(slot_t);
    if (bytes < BIG_TABLE) free(raw);
    else if (raw) munmap(raw, bytes + 64);
}

typedef struct {
    void *raw;
    slot_t *tab;
    uint32_t *ring;
    double *rexp;
} arrays_t;

static int alloc_arrays(uint32_t slots, int with_exp, arrays_t *a) {
    a->raw = tab_alloc((size_t)slots * sizeof(slot_t));
    a->ring = malloc((size_t)slots * sizeof(uint32_t));
    a->rexp = with_exp ? malloc((size_t)slots * sizeof(double)) : NULL;
    if (!a->raw || !a->ring || (with_exp && !a->rexp)) {
        tab_free(a->raw, slots);
        free(a->ring);
        free(a->rexp);
        return -1;
    }
    a->tab = (slot_t *)(((uintptr_t)a->raw + 63) & ~(uintptr_t)63);
    return 0;
}

static void install(keel_dedup_t *d, const arrays_t *a, uint32_t slots) {
    tab_free(d->tab_raw, d->n);
    free(d->ring);
    free(d->rexp);
    d->tab_raw = a->raw;
    d->tab = a->tab;
    d->ring = a->ring;
    d->rexp = a->rexp;
    d->n = slots;
}

static void drop_key(keel_dedup_t *d, slot_t *s) {
    if (s->len > INLINE_KEY) {
        free(s->key.out);
        d->key_bytes -= s->len;
    }
}

/* Empties slot i and shifts back every later slot of the probe chain that
 * may move there (its home is not between i and it), fixing their ring
 * entries (Knuth's algorithm R). */
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
        d->ring[t[i].ridx] = i;
        i = j;
    }
    t[i].state = EMPTY;
}

static inline uint32_t ring_at(const keel_dedup_t *d, uint32_t k) {
    uint32_t r = d->head + k;
    return r >= d->n ? r - d->n : r;
}

static uint32_t ring_pop(keel_dedup_t *d) {
    uint32_t idx = d->head;
    d->head = next(d->head, d->n);
    d->count--;
    /* the slots of a victim a few evictions ahead, and the line after
     * them, which the shift back reads */
    if (d->count > PREFETCH) {
        uint32_t p = d->ring[ring_at(d, PREFETCH)];
        if (p != DEAD) {
            __builtin_prefetch(&d->tab[p]);
            __builtin_prefetch(&d->tab[p + 2 < d->n ? p + 2 : 0]);
        }
    }
    return idx;
}

/* Drops forgotten keys' entries, in place and in order (the write index
 * never passes the read index): needed when they fill the ring (count never
 * exceeds the slots otherwise, live < slots). */
static void compact_ring(keel_dedup_t *d) {
    uint32_t cnt = 0, w = d->head;
    for (uint32_t k = 0; k < d->count; k++) {
        uint32_t idx = ring_at(d, k);
        uint32_t p = d->ring[idx];
        if (p == DEAD) continue;
        d->ring[w] = p;
        if (d->rexp) d->rexp[w] = d->rexp[idx];
        d->tab[p].ridx = w;
        w = next(w, d->n);
        cnt++;
    }
    d->count = cnt;
    d->dead = 0;
}

static uint32_t ring_push(keel_dedup_t *d, uint32_t pos) {
    if (d->count == d->n) compact_ring(d);
    uint32_t idx = ring_at(d, d->count);
    d->ring[idx] = pos;
    d->count++;
    return idx;
}

static void drop_live(keel_dedup_t *d, uint32_t pos) {
    drop_key(d, &d->tab[pos]);
    d->live--;
    remove_at(d, pos);
}

/* Every key expires at mark + ttl and marks enter the ring in time order, so
 * the ring is in expiry order: popping expired heads is amortised O(1). */
static void expire(keel_dedup_t *d) {
    double now = d->clock->now_ms;
    while (d->count) {
        uint32_t idx = d->head;
        uint32_t pos = d->ring[idx];
        if (pos == DEAD) {
            ring_pop(d);
            d->dead--;
            continue;
        }
        if (!(now >= d->rexp[idx])) break;
        ring_pop(d);
        drop_live(d, pos);
        d->expirations++;
    }
}

/* Rebuilds table and ring at a new size. Pass 1 walks the old table in
 * order, so both tables are read and written nearly sequentially, and notes
 * each key's new position in its old slot; pass 2 walks the old ring
 * (prefetching ahead) to write the new ring in the same order, dropping
 * forgotten keys' entries. */
static int grow(keel_dedup_t *d, uint32_t nn) {
    arrays_t a;
    if (alloc_arrays(nn, d->ttl_ms > 0, &a) != 0) return -1;
    slot_t *old = d->tab, *nt = a.tab;
    for (uint32_t i = 0; i < d->n; i++) {
        slot_t *s = &old[i];
        if (s->state != LIVE) continue;
        uint32_t j = home(s->hash, nn);
        while (nt[j].state != EMPTY) j = next(j, nn);
        nt[j] = *s;
        s->moved = j;
    }
    uint32_t cnt = 0;
    for (uint32_t k = 0; k < d->count; k++) {
        if (k + PREFETCH < d->count) {
            uint32_t p = d->ring[ring_at(d, k + PREFETCH)];
            if (p != DEAD) __builtin_prefetch(&old[p]);
        }
        uint32_t idx = ring_at(d, k);
        uint32_t p = d->ring[idx];
        if (p == DEAD) continue;
        uint32_t np = old[p].moved;
        a.ring[cnt] = np;
        if (a.rexp) a.rexp[cnt] = d->rexp[idx];
        nt[np].ridx = cnt;
        cnt++;
    }
    install(d, &a, nn);
    d->head = 0;
    d->count = cnt;
    d->dead = 0;
    return 0;
}

keel_dedup_t *keel_dedup_new(uint32_t max, double ttl_ms, const keel_clock_t *clock, uint64_t seed) {
    if (!clock || max == 0 || max == UINT32_MAX) return NULL;
    keel_dedup_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->ttl_ms = (isnan(ttl_ms) || ttl_ms <= 0 || ttl_ms == INFINITY) ? 0 : ttl_ms;
    arrays_t a;
    if (alloc_arrays(MIN_SLOTS, d->ttl_ms > 0, &a) != 0) {
        free(d);
        return NULL;
    }
    install(d, &a, MIN_SLOTS);
    d->cap = cap_for(max);
    if (d->cap < MIN_SLOTS) d->cap = MIN_SLOTS;
    d->max = max;
    d->clock = clock;
    d->seed = seed;
    return d;
}

static void drop_all_keys(keel_dedup_t *d) {
    for (uint32_t i = 0; i < d->n; i++)
        if (d->tab[i].state == LIVE) drop_key(d, &d->tab[i]);
}

void keel_dedup_free(keel_dedup_t *d) {
    if (!d) return;
    drop_all_keys(d);
    tab_free(d->tab_raw, d->n);
    free(d->ring);
    free(d->rexp);
    free(d);
}

/* The slot holding key, or the EMPTY slot ending its probe chain. */
static uint32_t find(const keel_dedup_t *d, const char *key, size_t len, uint32_t h) {
    const slot_t *t = d->tab;
    uint32_t n = d->n, i = home(h, n);
    for (;;) {
        const slot_t *s = &t[i];
        if (s->state == EMPTY) return i;
        if ((s->hash & KEEL_HASH_BITS) == h && s->len == len && (len == 0 || memcmp(key_of(s), key, len) == 0))
            return i;
        i = next(i, n);
    }
}

static uint32_t free_slot(const keel_dedup_t *d, uint32_t h) {
    uint32_t n = d->n, i = home(h, n);
    while (d->tab[i].state != EMPTY) i = next(i, n);
    return i;
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
        uint32_t nn = d->n >= d->cap / 4 ? d->cap : d->n * 4;
        /* out of memory: carry on in the table we have while it has room */
        (void)grow(d, nn);
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
    uint32_t idx = ring_push(d, pos);
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
        uint32_t pos = d->ring[idx];
        if (pos == DEAD) {
            d->dead--;
            continue;
        }
        slot_t *s = &d->tab[pos];
        if (d->ttl_ms == 0 && (s->hash & REF)) {
            s->hash &= ~REF;
            uint32_t newest = d->ring[tail];
            d->ring[tail] = pos;
            s->ridx = tail;
            tail = ring_push(d, newest);
            d->tab[newest].ridx = tail;
            continue;
        }
        drop_live(d, pos);
        d->evictions++;
        return;
    }
}

static inline void settle(keel_dedup_t *d) {
    if (d->owed) settle_owed(d);
}

int keel_dedup_seen(keel_dedup_t *d, const char *key, size_t len) {
    if (len > MAX_KEY) return -1;
    uint32_t h = keel_hash31(d->seed, key, len);
    __builtin_prefetch(&d->tab[home(h, d->n)]);
    settle(d);
    if (d->ttl_ms > 0) expire(d);
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
    settle(d);
    if (d->ttl_ms > 0) expire(d);
    uint32_t pos = find(d, key, len, keel_hash31(d->seed, key, len));
    slot_t *s = &d->tab[pos];
    if (s->state != LIVE) return 0;
    d->ring[s->ridx] = DEAD;
    d->dead++;
    drop_live(d, pos);
    return 1;
}

uint32_t keel_dedup_size(keel_dedup_t *d) {
    settle(d);
    if (d->ttl_ms > 0) expire(d);
    return d->live;
}

void keel_dedup_clear(keel_dedup_t *d) {
    /* counted as the eviction and expirations they are */
    settle(d);
    if (d->ttl_ms > 0) expire(d);
    drop_all_keys(d);
    arrays_t a;
    if (alloc_arrays(MIN_SLOTS, d->ttl_ms > 0, &a) == 0) {
        install(d, &a, MIN_SLOTS);
    } else {
        memset(d->tab, 0, (size_t)d->n * sizeof(slot_t));
    }
    d->head = d->count = d->live = d->dead = 0;
}

double keel_dedup_hits(const keel_dedup_t *d) { return d->hits; }
double keel_dedup_marks(const keel_dedup_t *d) { return d->marks; }
double keel_dedup_evictions(const keel_dedup_t *d) { return d->evictions + d->owed; }
double keel_dedup_expirations(const keel_dedup_t *d) { return d->expirations; }

double keel_dedup_bytes(const keel_dedup_t *d) {
    double per_slot = sizeof(slot_t) + sizeof(uint32_t) + (d->rexp ? sizeof(double) : 0);
    return sizeof *d + (double)d->n * per_slot + 64 + d->key_bytes;
}
