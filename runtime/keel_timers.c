#include "keel_timers.h"
#include <stdlib.h>
#include <string.h>

/* Timers are grouped in buckets of equal deadline: a FIFO list per distinct
 * deadline, and a min-heap of buckets. Timers armed in one loop turn with the
 * same delay share their deadline (the loop's cached time plus the delay), so
 * a million such timers cost a list append each and a heap of a handful of
 * buckets — the insight behind Node's per-duration lists, kept exact: order
 * is by deadline, then by arming order, whatever the deadlines are. */

typedef struct {
    double deadline;
    int32_t head, tail; /* timer ids */
    int32_t heap_pos;
    int32_t next_free;
} bucket_t;

typedef struct {
    int32_t bucket; /* -1 when the id is free */
    int32_t prev, next;
} slot_t;

struct keel_timers {
    slot_t *slots;
    int32_t slot_cap, slot_free, count;
    bucket_t *buckets;
    int32_t bucket_cap, bucket_free, nbuckets;
    int32_t *heap;    /* bucket indices, min deadline first */
    int32_t *table;   /* open addressing: deadline -> bucket index, -1 empty */
    uint32_t table_mask;
};

keel_timers_t *keel_timers_new(void) {
    keel_timers_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->slot_free = t->bucket_free = -1;
    t->table = malloc(16 * sizeof *t->table);
    if (!t->table) { free(t); return NULL; }
    memset(t->table, 0xff, 16 * sizeof *t->table);
    t->table_mask = 15;
    return t;
}

void keel_timers_free(keel_timers_t *t) {
    if (!t) return;
    free(t->slots);
    free(t->buckets);
    free(t->heap);
    free(t->table);
    free(t);
}

/* Deadline hash table ------------------------------------------------------- */

static uint32_t hash_deadline(double d) {
    uint64_t x;
    if (d == 0) d = 0; /* -0.0 and 0.0 are one deadline */
    memcpy(&x, &d, sizeof x);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

static int32_t table_find(const keel_timers_t *t, double d) {
    for (uint32_t i = hash_deadline(d) & t->table_mask;; i = (i + 1) & t->table_mask) {
        int32_t b = t->table[i];
        if (b < 0) return -1;
        if (t->buckets[b].deadline == d) return b;
    }
}

static void table_put(keel_timers_t *t, int32_t b) {
    uint32_t i = hash_deadline(t->buckets[b].deadline) & t->table_mask;
    while (t->table[i] >= 0) i = (i + 1) & t->table_mask;
    t->table[i] = b;
}

/* Backward-shift deletion keeps linear probing free of tombstones. */
static void table_del(keel_timers_t *t, int32_t b) {
    uint32_t mask = t->table_mask;
    uint32_t i = hash_deadline(t->buckets[b].deadline) & mask;
    while (t->table[i] != b) i = (i + 1) & mask;
    t->table[i] = -1;
    for (uint32_t j = (i + 1) & mask; t->table[j] >= 0; j = (j + 1) & mask) {
        uint32_t home = hash_deadline(t->buckets[t->table[j]].deadline) & mask;
        /* Move j back to the hole at i unless its home lies cyclically in (i, j]. */
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->table[i] = t->table[j];
            t->table[j] = -1;
            i = j;
        }
    }
}

static int table_grow(keel_timers_t *t) {
    uint32_t ncap = (t->table_mask + 1) * 2;
    int32_t *ntable = malloc(ncap * sizeof *ntable);
    if (!ntable) return -1;
    memset(ntable, 0xff, ncap * sizeof *ntable);
    free(t->table);
    t->table = ntable;
    t->table_mask = ncap - 1;
    for (int32_t k = 0; k < t->nbuckets; k++) table_put(t, t->heap[k]);
    return 0;
}

/* Bucket heap --------------------------------------------------------------- */

static inline double bdl(const keel_timers_t *t, int32_t b) { return t->buckets[b].deadline; }

static inline void heap_set(keel_timers_t *t, int32_t i, int32_t b) {
    t->heap[i] = b;
    t->buckets[b].heap_pos = i;
}

static void heap_up(keel_timers_t *t, int32_t i) {
    int32_t b = t->heap[i];
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (bdl(t, t->heap[parent]) <= bdl(t, b)) break;
        heap_set(t, i, t->heap[parent]);
        i = parent;
    }
    heap_set(t, i, b);
}

static void heap_down(keel_timers_t *t, int32_t i) {
    int32_t b = t->heap[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= t->nbuckets) break;
        if (c + 1 < t->nbuckets && bdl(t, t->heap[c + 1]) < bdl(t, t->heap[c])) c++;
        if (bdl(t, t->heap[c]) >= bdl(t, b)) break;
        heap_set(t, i, t->heap[c]);
        i = c;
    }
    heap_set(t, i, b);
}

/* Buckets ------------------------------------------------------------------- */

static int grow_buckets(keel_timers_t *t) {
    if (t->bucket_cap > INT32_MAX / 2) return -1;
    int32_t ncap = t->bucket_cap ? t->bucket_cap * 2 : 16;
    bucket_t *nb = realloc(t->buckets, (size_t)ncap * sizeof *nb);
    if (!nb) return -1;
    t->buckets = nb;
    int32_t *nh = realloc(t->heap, (size_t)ncap * sizeof *nh);
    if (!nh) return -1;
    t->heap = nh;
    for (int32_t b = ncap - 1; b >= t->bucket_cap; b--) {
        nb[b].next_free = t->bucket_free;
        t->bucket_free = b;
    }
    t->bucket_cap = ncap;
    return 0;
}

static int32_t bucket_for(keel_timers_t *t, double deadline) {
    int32_t b = table_find(t, deadline);
    if (b >= 0) return b;
    if ((uint32_t)(t->nbuckets + 1) * 2 > t->table_mask + 1 && table_grow(t) != 0) return -1;
    if (t->bucket_free < 0 && grow_buckets(t) != 0) return -1;
    b = t->bucket_free;
    bucket_t *bk = &t->buckets[b];
    t->bucket_free = bk->next_free;
    bk->deadline = deadline;
    bk->head = bk->tail = -1;
    table_put(t, b);
    heap_set(t, t->nbuckets++, b);
    heap_up(t, t->nbuckets - 1);
    return b;
}

static void drop_bucket(keel_timers_t *t, int32_t b) {
    table_del(t, b);
    int32_t i = t->buckets[b].heap_pos;
    t->nbuckets--;
    if (i != t->nbuckets) {
        heap_set(t, i, t->heap[t->nbuckets]);
        if (i > 0 && bdl(t, t->heap[i]) < bdl(t, t->heap[(i - 1) / 2])) heap_up(t, i);
        else heap_down(t, i);
    }
    t->buckets[b].next_free = t->bucket_free;
    t->bucket_free = b;
}

/* Timers -------------------------------------------------------------------- */

static int grow_slots(keel_timers_t *t) {
    if (t->slot_cap > INT32_MAX / 2) return -1;
    int32_t ncap = t->slot_cap ? t->slot_cap * 2 : 64;
    slot_t *ns = realloc(t->slots, (size_t)ncap * sizeof *ns);
    if (!ns) return -1;
    t->slots = ns;
    for (int32_t id = ncap - 1; id >= t->slot_cap; id--) {
        ns[id].bucket = -1;
        ns[id].next = t->slot_free;
        t->slot_free = id;
    }
    t->slot_cap = ncap;
    return 0;
}

int32_t keel_timers_add(keel_timers_t *t, double deadline_ms) {
    if (deadline_ms != deadline_ms) return -1; /* NaN has no place in an order */
    if (t->slot_free < 0 && grow_slots(t) != 0) return -1;
    int32_t b = bucket_for(t, deadline_ms);
    if (b < 0) return -1;
    int32_t id = t->slot_free;
    slot_t *s = &t->slots[id];
    t->slot_free = s->next;
    bucket_t *bk = &t->buckets[b];
    s->bucket = b;
    s->prev = bk->tail;
    s->next = -1;
    if (bk->tail >= 0) t->slots[bk->tail].next = id; else bk->head = id;
    bk->tail = id;
    t->count++;
    return id;
}

static void unlink_and_free(keel_timers_t *t, int32_t id) {
    slot_t *s = &t->slots[id];
    int32_t b = s->bucket;
    bucket_t *bk = &t->buckets[b];
    if (s->prev >= 0) t->slots[s->prev].next = s->next; else bk->head = s->next;
    if (s->next >= 0) t->slots[s->next].prev = s->prev; else bk->tail = s->prev;
    s->bucket = -1;
    s->next = t->slot_free;
    t->slot_free = id;
    t->count--;
    if (bk->head < 0) drop_bucket(t, b);
}

int keel_timers_cancel(keel_timers_t *t, int32_t id) {
    if (id < 0 || id >= t->slot_cap || t->slots[id].bucket < 0) return -1;
    unlink_and_free(t, id);
    return 0;
}

int32_t keel_timers_pop_expired(keel_timers_t *t, double now_ms) {
    if (t->nbuckets == 0) return -1;
    bucket_t *bk = &t->buckets[t->heap[0]];
    if (bk->deadline > now_ms) return -1;
    int32_t id = bk->head;
    unlink_and_free(t, id);
    return id;
}

double keel_timers_next(const keel_timers_t *t) {
    return t->nbuckets ? t->buckets[t->heap[0]].deadline : -1.0;
}

int32_t keel_timers_count(const keel_timers_t *t) { return t->count; }
