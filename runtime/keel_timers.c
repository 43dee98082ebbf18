#include "keel_timers.h"
#include <stdlib.h>

/* A 4-ary heap whose entries carry their own deadline and sequence number:
 * sifting compares neighbouring memory instead of chasing ids, which matters
 * at a million armed timers. pos[id] tracks each id's place for cancel. */
typedef struct {
    double deadline;
    uint64_t seq;
    int32_t id;
} entry_t;

struct keel_timers {
    entry_t *heap;
    int32_t *pos;       /* id -> heap index, or -1 when free */
    int32_t *next_free; /* free list of ids */
    int32_t count, cap, free_head;
    uint64_t seq;
};

keel_timers_t *keel_timers_new(void) {
    keel_timers_t *t = calloc(1, sizeof *t);
    if (t) t->free_head = -1;
    return t;
}

void keel_timers_free(keel_timers_t *t) {
    if (!t) return;
    free(t->heap);
    free(t->pos);
    free(t->next_free);
    free(t);
}

static inline int earlier(const entry_t *a, const entry_t *b) {
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static inline void place(keel_timers_t *t, int32_t i, entry_t e) {
    t->heap[i] = e;
    t->pos[e.id] = i;
}

static void sift_up(keel_timers_t *t, int32_t i) {
    entry_t e = t->heap[i];
    while (i > 0) {
        int32_t parent = (i - 1) / 4;
        if (!earlier(&e, &t->heap[parent])) break;
        place(t, i, t->heap[parent]);
        i = parent;
    }
    place(t, i, e);
}

static void sift_down(keel_timers_t *t, int32_t i) {
    entry_t e = t->heap[i];
    for (;;) {
        int32_t first = 4 * i + 1;
        if (first >= t->count) break;
        int32_t last = first + 4 < t->count ? first + 4 : t->count;
        int32_t best = first;
        for (int32_t c = first + 1; c < last; c++)
            if (earlier(&t->heap[c], &t->heap[best])) best = c;
        if (!earlier(&t->heap[best], &e)) break;
        place(t, i, t->heap[best]);
        i = best;
    }
    place(t, i, e);
}

static int grow(keel_timers_t *t) {
    if (t->cap > INT32_MAX / 2) return -1;
    int32_t ncap = t->cap ? t->cap * 2 : 64;
    entry_t *heap = realloc(t->heap, (size_t)ncap * sizeof *heap);
    if (!heap) return -1;
    t->heap = heap;
    int32_t *pos = realloc(t->pos, (size_t)ncap * sizeof *pos);
    if (!pos) return -1;
    t->pos = pos;
    int32_t *nf = realloc(t->next_free, (size_t)ncap * sizeof *nf);
    if (!nf) return -1;
    t->next_free = nf;
    for (int32_t id = ncap - 1; id >= t->cap; id--) {
        pos[id] = -1;
        nf[id] = t->free_head;
        t->free_head = id;
    }
    t->cap = ncap;
    return 0;
}

int32_t keel_timers_add(keel_timers_t *t, double deadline_ms) {
    if (t->free_head < 0 && grow(t) != 0) return -1;
    int32_t id = t->free_head;
    t->free_head = t->next_free[id];
    entry_t e = { deadline_ms, t->seq++, id };
    place(t, t->count++, e);
    sift_up(t, t->count - 1);
    return id;
}

static void release_id(keel_timers_t *t, int32_t id) {
    t->pos[id] = -1;
    t->next_free[id] = t->free_head;
    t->free_head = id;
}

static void remove_at(keel_timers_t *t, int32_t i) {
    release_id(t, t->heap[i].id);
    t->count--;
    if (i == t->count) return;
    place(t, i, t->heap[t->count]);
    if (i > 0 && earlier(&t->heap[i], &t->heap[(i - 1) / 4])) sift_up(t, i);
    else sift_down(t, i);
}

int keel_timers_cancel(keel_timers_t *t, int32_t id) {
    if (id < 0 || id >= t->cap || t->pos[id] < 0) return -1;
    remove_at(t, t->pos[id]);
    return 0;
}

int32_t keel_timers_pop_expired(keel_timers_t *t, double now_ms) {
    if (t->count == 0 || t->heap[0].deadline > now_ms) return -1;
    int32_t id = t->heap[0].id;
    remove_at(t, 0);
    return id;
}

double keel_timers_next(const keel_timers_t *t) {
    return t->count ? t->heap[0].deadline : -1.0;
}

int32_t keel_timers_count(const keel_timers_t *t) { return t->count; }
