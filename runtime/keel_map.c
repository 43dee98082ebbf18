#include "keel_map.h"
#include "keel_hash.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NIL KEEL_MAP_NIL
#define INLINE_KEY 16
#define MAX_VALUE (64u * 1024u)
#define MAX_CHUNK_BITS 10
#define EXPIRE_PER_PUT 2
/* The top bit of hdr_t.hash is the "used since it last reached the cold end"
 * mark of second-chance eviction; the low 31 bits are the hash. */
#define REF 0x80000000u
#define HASH_BITS KEEL_HASH_BITS
/* Up to this many entries a hit moves the entry to the new end (exact LRU):
 * the list is cache-resident, so it costs nothing. Beyond it, a hit only
 * marks the entry and eviction gives marked entries a second chance. */
#define EXACT_LRU_MAX 8192

/* 48 bytes; slot links are 32-bit indices rather than pointers to keep the
 * per-entry overhead well under a cache line. */
typedef struct {
    uint32_t prev, next; /* LRU list (MRU at head); free list reuses next */
    uint32_t chain;      /* next slot in the same bucket */
    uint32_t hash;       /* 31-bit hash | REF */
    uint32_t keylen;     /* NIL marks a free slot */
    uint32_t heap;       /* position in the expiry heap, or NIL */
    double expires;
    union { char in[INLINE_KEY]; char *out; } key;
} hdr_t;

struct keel_map {
    const keel_clock_t *clock;
    uint64_t seed;
    uint32_t max, flags, value_size, stride;
    uint32_t count, hwm, free_head, head, tail;
    uint32_t last; /* slot last returned by get/peek/put: makes slot(put()) O(1) */
    uint32_t chunk_bits, nchunks;
    char **chunks;
    uint32_t *buckets, nbuckets;
    uint32_t *heap, heap_len, heap_cap;
    double bytes, evictions, expirations;
    keel_map_hook hook;
    void *hook_ud;
    keel_map_keep_fn keep;
    void *keep_ud;
};

/* ---- slots ---- */

static inline hdr_t *hdr(const keel_map_t *m, uint32_t slot) {
    uint32_t mask = (1u << m->chunk_bits) - 1;
    return (hdr_t *)(m->chunks[slot >> m->chunk_bits] + (size_t)(slot & mask) * m->stride);
}

static inline void *val(hdr_t *h) { return (char *)h + sizeof(hdr_t); }

static inline const char *keyp(const hdr_t *h) {
    return h->keylen <= INLINE_KEY ? h->key.in : h->key.out;
}

static int live_slot(const keel_map_t *m, uint32_t slot) {
    return slot < m->hwm && hdr(m, slot)->keylen != NIL;
}

static int is_dead(const keel_map_t *m, const hdr_t *h) {
    return h->heap != NIL && m->clock->now_ms >= h->expires;
}

/* ---- LRU list ---- */

static void lru_unlink(keel_map_t *m, uint32_t slot, hdr_t *h) {
    if (h->prev != NIL) hdr(m, h->prev)->next = h->next; else m->head = h->next;
    if (h->next != NIL) hdr(m, h->next)->prev = h->prev; else m->tail = h->prev;
    (void)slot;
}

static void lru_push_head(keel_map_t *m, uint32_t slot, hdr_t *h) {
    h->prev = NIL;
    h->next = m->head;
    if (m->head != NIL) hdr(m, m->head)->prev = slot; else m->tail = slot;
    m->head = slot;
}

static void lru_touch(keel_map_t *m, uint32_t slot, hdr_t *h) {
    if (m->head == slot) return;
    lru_unlink(m, slot, h);
    lru_push_head(m, slot, h);
}

/* ---- expiry heap ---- */

static void heap_place(keel_map_t *m, uint32_t pos, uint32_t slot) {
    m->heap[pos] = slot;
    hdr(m, slot)->heap = pos;
}

static void heap_up(keel_map_t *m, uint32_t pos) {
    uint32_t slot = m->heap[pos];
    double e = hdr(m, slot)->expires;
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (hdr(m, m->heap[parent])->expires <= e) break;
        heap_place(m, pos, m->heap[parent]);
        pos = parent;
    }
    heap_place(m, pos, slot);
}

static void heap_down(keel_map_t *m, uint32_t pos) {
    uint32_t slot = m->heap[pos];
    double e = hdr(m, slot)->expires;
    for (;;) {
        uint32_t c = 2 * pos + 1;
        if (c >= m->heap_len) break;
        if (c + 1 < m->heap_len && hdr(m, m->heap[c + 1])->expires < hdr(m, m->heap[c])->expires) c++;
        if (hdr(m, m->heap[c])->expires >= e) break;
        heap_place(m, pos, m->heap[c]);
        pos = c;
    }
    heap_place(m, pos, slot);
}

static void heap_remove(keel_map_t *m, hdr_t *h) {
    uint32_t pos = h->heap;
    h->heap = NIL;
    m->heap_len--;
    if (pos == m->heap_len) return;
    uint32_t moved = m->heap[m->heap_len];
    heap_place(m, pos, moved);
    if (pos > 0 && hdr(m, moved)->expires < hdr(m, m->heap[(pos - 1) / 2])->expires) heap_up(m, pos);
    else heap_down(m, pos);
}

static int heap_reserve(keel_map_t *m) {
    if (m->heap_len < m->heap_cap) return 0;
    uint32_t cap = m->heap_cap ? m->heap_cap * 2 : 16;
    if (cap > m->max) cap = m->max;
    uint32_t *n = realloc(m->heap, (size_t)cap * sizeof *n);
    if (!n) return -1;
    m->bytes += (double)(cap - m->heap_cap) * sizeof *n;
    m->heap = n;
    m->heap_cap = cap;
    return 0;
}

/* ---- buckets ---- */

static int rehash(keel_map_t *m, uint32_t nb) {
    uint32_t *b = malloc((size_t)nb * sizeof *b);
    if (!b) return -1;
    memset(b, 0xff, (size_t)nb * sizeof *b);
    for (uint32_t s = 0; s < m->hwm; s++) {
        hdr_t *h = hdr(m, s);
        if (h->keylen == NIL) continue;
        uint32_t i = h->hash & (nb - 1);
        h->chain = b[i];
        b[i] = s;
    }
    m->bytes += ((double)nb - m->nbuckets) * sizeof *b;
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
    return 0;
}

static void bucket_unlink(keel_map_t *m, uint32_t slot, hdr_t *h) {
    uint32_t *pp = &m->buckets[h->hash & (m->nbuckets - 1)];
    while (*pp != slot) pp = &hdr(m, *pp)->chain;
    *pp = h->chain;
}

static uint32_t lookup(keel_map_t *m, const char *key, size_t len, uint32_t hv) {
    uint32_t s = m->buckets[hv & (m->nbuckets - 1)];
    while (s != NIL) {
        hdr_t *h = hdr(m, s);
        if ((h->hash & HASH_BITS) == hv && h->keylen == len && (len == 0 || memcmp(keyp(h), key, len) == 0))
            return s;
        s = h->chain;
    }
    return NIL;
}

/* ---- removal ---- */

static void remove_slot(keel_map_t *m, uint32_t slot, int reason) {
    hdr_t *h = hdr(m, slot);
    if (m->hook) m->hook(m->hook_ud, m, slot, reason);
    if (reason == KEEL_MAP_EXPIRED) m->expirations++;
    else if (reason == KEEL_MAP_EVICTED) m->evictions++;
    bucket_unlink(m, slot, h);
    lru_unlink(m, slot, h);
    if (h->heap != NIL) heap_remove(m, h);
    if (h->keylen > INLINE_KEY) {
        m->bytes -= h->keylen;
        free(h->key.out);
    }
    h->keylen = NIL;
    h->next = m->free_head;
    m->free_head = slot;
    m->count--;
}

/* ---- public ---- */

keel_map_t *keel_map_new(uint32_t max_entries, uint32_t value_size, uint32_t flags,
                         const keel_clock_t *clock, uint64_t seed) {
    if (max_entries == 0 || max_entries == NIL || value_size > MAX_VALUE) return NULL;
    keel_map_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->clock = clock;
    m->seed = seed;
    m->max = max_entries;
    m->flags = flags;
    m->value_size = value_size;
    m->stride = (uint32_t)((sizeof(hdr_t) + value_size + 7) & ~(size_t)7);
    m->free_head = m->head = m->tail = m->last = NIL;
    uint32_t bits = 0;
    while (bits < MAX_CHUNK_BITS && (1u << bits) < max_entries) bits++;
    m->chunk_bits = bits;
    m->nchunks = (uint32_t)(((uint64_t)max_entries + (1u << bits) - 1) >> bits);
    m->chunks = calloc(m->nchunks, sizeof *m->chunks);
    m->bytes = sizeof *m + (double)m->nchunks * sizeof *m->chunks;
    if (!m->chunks || rehash(m, 8)) {
        keel_map_free(m);
        return NULL;
    }
    return m;
}

void keel_map_free(keel_map_t *m) {
    if (!m) return;
    for (uint32_t s = 0; s < m->hwm; s++) {
        hdr_t *h = hdr(m, s);
        if (h->keylen != NIL && h->keylen > INLINE_KEY) free(h->key.out);
    }
    if (m->chunks)
        for (uint32_t c = 0; c < m->nchunks; c++) free(m->chunks[c]);
    free(m->chunks);
    free(m->buckets);
    free(m->heap);
    free(m);
}

void keel_map_on_remove(keel_map_t *m, keel_map_hook fn, void *ud) {
    m->hook = fn;
    m->hook_ud = ud;
}

void keel_map_on_evict(keel_map_t *m, keel_map_keep_fn fn, void *ud) {
    m->keep = fn;
    m->keep_ud = ud;
}

/* Finds a live entry; a dead one found on the way is reclaimed. */
static uint32_t find_live(keel_map_t *m, const char *key, size_t len) {
    if (len > KEEL_MAP_MAX_KEY) return NIL;
    uint32_t s = lookup(m, key, len, keel_hash31(m->seed, key, len));
    if (s == NIL) return NIL;
    if (is_dead(m, hdr(m, s))) {
        remove_slot(m, s, KEEL_MAP_EXPIRED);
        return NIL;
    }
    m->last = s;
    return s;
}

/* On a big map a hit only marks the entry (its header is already in
 * cache): moving it would touch both list neighbours, two more cache misses. */
static inline void used(keel_map_t *m, uint32_t s, hdr_t *h) {
    if (m->count <= EXACT_LRU_MAX) lru_touch(m, s, h);
    else h->hash |= REF;
}

void *keel_map_get(keel_map_t *m, const char *key, size_t len) {
    uint32_t s = find_live(m, key, len);
    if (s == NIL) return NULL;
    hdr_t *h = hdr(m, s);
    used(m, s, h);
    return val(h);
}

void *keel_map_peek(keel_map_t *m, const char *key, size_t len) {
    uint32_t s = find_live(m, key, len);
    return s == NIL ? NULL : val(hdr(m, s));
}

uint32_t keel_map_find(keel_map_t *m, const char *key, size_t len) {
    return find_live(m, key, len);
}

static uint32_t take_slot(keel_map_t *m) {
    if (m->free_head != NIL) {
        uint32_t s = m->free_head;
        m->free_head = hdr(m, s)->next;
        return s;
    }
    uint32_t s = m->hwm;
    uint32_t c = s >> m->chunk_bits;
    if (!m->chunks[c]) {
        size_t n = (size_t)1 << m->chunk_bits;
        m->chunks[c] = malloc(n * m->stride);
        if (!m->chunks[c]) return NIL;
        m->bytes += (double)n * m->stride;
    }
    m->hwm++;
    return s;
}

void *keel_map_put(keel_map_t *m, const char *key, size_t len, int *inserted) {
    if (inserted) *inserted = 0;
    if (len > KEEL_MAP_MAX_KEY) return NULL;
    uint32_t hv = keel_hash31(m->seed, key, len);
    uint32_t s = lookup(m, key, len, hv);
    if (s != NIL) {
        hdr_t *h = hdr(m, s);
        if (!is_dead(m, h)) {
            used(m, s, h);
            m->last = s;
            return val(h);
        }
        remove_slot(m, s, KEEL_MAP_EXPIRED);
    }
    if (m->heap_len) keel_map_expire(m, EXPIRE_PER_PUT);
    if (m->count >= m->max) {
        if (!(m->flags & KEEL_MAP_EVICT)) return NULL;
        /* second chance: each pass clears marks, and sparing is bounded, so
         * this ends within count + KEEL_MAP_SPARE_MAX steps */
        uint32_t spared = 0;
        for (;;) {
            hdr_t *t = hdr(m, m->tail);
            if (t->hash & REF) {
                t->hash &= HASH_BITS;
            } else if (m->keep && spared < KEEL_MAP_SPARE_MAX && m->count > 1 &&
                       m->keep(m->keep_ud, m, m->tail)) {
                spared++;
            } else {
                break;
            }
            lru_touch(m, m->tail, t);
        }
        remove_slot(m, m->tail, KEEL_MAP_EVICTED);
    }
    int grow = m->count >= m->nbuckets && m->nbuckets < m->max && m->nbuckets < (1u << 31);
    if (grow && rehash(m, m->nbuckets * 2)) return NULL;
    char *out = NULL;
    if (len > INLINE_KEY) {
        out = malloc(len);
        if (!out) return NULL;
    }
    s = take_slot(m);
    if (s == NIL) {
        free(out);
        return NULL;
    }
    hdr_t *h = hdr(m, s);
    h->hash = hv;
    h->keylen = (uint32_t)len;
    h->heap = NIL;
    h->expires = INFINITY;
    if (out) {
        memcpy(out, key, len);
        h->key.out = out;
        m->bytes += (double)len;
    } else if (len) {
        memcpy(h->key.in, key, len);
    }
    uint32_t b = hv & (m->nbuckets - 1);
    h->chain = m->buckets[b];
    m->buckets[b] = s;
    lru_push_head(m, s, h);
    memset(val(h), 0, m->value_size);
    m->count++;
    m->last = s;
    if (inserted) *inserted = 1;
    return val(h);
}

int keel_map_del(keel_map_t *m, const char *key, size_t len) {
    uint32_t s = find_live(m, key, len);
    if (s == NIL) return 0;
    remove_slot(m, s, KEEL_MAP_DELETED);
    return 1;
}

uint32_t keel_map_slot(const keel_map_t *m, const void *value) {
    if (m->last != NIL && live_slot(m, m->last) && val(hdr(m, m->last)) == value) return m->last;
    const char *p = (const char *)value - sizeof(hdr_t);
    size_t span = (size_t)m->stride << m->chunk_bits;
    for (uint32_t c = 0; c < m->nchunks; c++) {
        const char *base = m->chunks[c];
        if (base && p >= base && p < base + span) {
            uint32_t s = (c << m->chunk_bits) + (uint32_t)((size_t)(p - base) / m->stride);
            return live_slot(m, s) ? s : NIL;
        }
    }
    return NIL;
}

void *keel_map_value(const keel_map_t *m, uint32_t slot) {
    return live_slot(m, slot) ? val(hdr(m, slot)) : NULL;
}

const char *keel_map_key(const keel_map_t *m, uint32_t slot, size_t *len) {
    if (!live_slot(m, slot)) {
        if (len) *len = 0;
        return NULL;
    }
    hdr_t *h = hdr(m, slot);
    if (len) *len = h->keylen;
    return keyp(h);
}

int keel_map_del_slot(keel_map_t *m, uint32_t slot) {
    if (!live_slot(m, slot)) return 0;
    remove_slot(m, slot, KEEL_MAP_DELETED);
    return 1;
}

void keel_map_touch(keel_map_t *m, uint32_t slot) {
    if (!live_slot(m, slot)) return;
    hdr_t *h = hdr(m, slot);
    h->hash &= HASH_BITS;
    lru_touch(m, slot, h);
}

int keel_map_set_expiry(keel_map_t *m, uint32_t slot, double expires_ms) {
    if (!live_slot(m, slot)) return -1;
    hdr_t *h = hdr(m, slot);
    if (isnan(expires_ms) || expires_ms == INFINITY) {
        if (h->heap != NIL) heap_remove(m, h);
        h->expires = INFINITY;
        return 0;
    }
    if (!m->clock) return -1;
    if (h->heap == NIL) {
        if (heap_reserve(m)) return -1;
        h->expires = expires_ms;
        m->heap[m->heap_len] = slot;
        h->heap = m->heap_len++;
        heap_up(m, h->heap);
        return 0;
    }
    double old = h->expires;
    h->expires = expires_ms;
    if (expires_ms < old) heap_up(m, h->heap); else heap_down(m, h->heap);
    return 0;
}

double keel_map_expiry(const keel_map_t *m, uint32_t slot) {
    return live_slot(m, slot) ? hdr(m, slot)->expires : INFINITY;
}

uint32_t keel_map_expire(keel_map_t *m, uint32_t max_n) {
    uint32_t n = 0;
    while (n < max_n && m->heap_len && is_dead(m, hdr(m, m->heap[0]))) {
        remove_slot(m, m->heap[0], KEEL_MAP_EXPIRED);
        n++;
    }
    return n;
}

double keel_map_next_expiry(const keel_map_t *m) {
    return m->heap_len ? hdr(m, m->heap[0])->expires : INFINITY;
}

uint32_t keel_map_oldest(const keel_map_t *m) { return m->tail; }

uint32_t keel_map_newer(const keel_map_t *m, uint32_t slot) {
    return live_slot(m, slot) ? hdr(m, slot)->prev : NIL;
}

uint32_t keel_map_count(const keel_map_t *m) { return m->count; }
uint32_t keel_map_max(const keel_map_t *m) { return m->max; }
int keel_map_full(const keel_map_t *m) { return m->count >= m->max; }
double keel_map_bytes(const keel_map_t *m) { return m->bytes; }
double keel_map_evictions(const keel_map_t *m) { return m->evictions; }
double keel_map_expirations(const keel_map_t *m) { return m->expirations; }

void keel_map_clear(keel_map_t *m) {
    while (m->tail != NIL) remove_slot(m, m->tail, KEEL_MAP_DELETED);
}
