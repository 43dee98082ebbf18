#include "keel_timers.h"
#include <stdlib.h>

typedef struct {
    double deadline;
    uint64_t seq;
    int32_t pos; /* index in heap, or -1 when free */
    int32_t next_free;
} slot_t;

struct keel_timers {
    int32_t *heap;
    slot_t *slots;
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
    free(t->slots);
    free(t);
}

static int earlier(const keel_timers_t *t, int32_t a, int32_t b) {
    const slot_t *x = &t->slots[a], *y = &t->slots[b];
    return x->deadline < y->deadline || (x->deadline == y->deadline && x->seq < y->seq);
}

static void place(keel_timers_t *t, int32_t pos, int32_t id) {
    t->heap[pos] = id;
    t->slots[id].pos = pos;
}

static void sift_up(keel_timers_t *t, int32_t pos) {
    int32_t id = t->heap[pos];
    while (pos > 0) {
        int32_t parent = (pos - 1) / 2;
        if (!earlier(t, id, t->heap[parent])) break;
        place(t, pos, t->heap[parent]);
        pos = parent;
    }
    place(t, pos, id);
}

static void sift_down(keel_timers_t *t, int32_t pos) {
    int32_t id = t->heap[pos];
    for (;;) {
        int32_t child = 2 * pos + 1;
        if (child >= t->count) break;
        if (child + 1 < t->count && earlier(t, t->heap[child + 1], t->heap[child])) child++;
        if (!earlier(t, t->heap[child], id)) break;
        place(t, pos, t->heap[child]);
        pos = child;
    }
    place(t, pos, id);
}

static int grow(keel_timers_t *t) {
    int32_t ncap = t->cap ? t->cap * 2 : 64;
    if (ncap < t->cap) return -1;
    int32_t *heap = realloc(t->heap, (size_t)ncap * sizeof *heap);
    if (!heap) return -1;
    t->heap = heap;
    slot_t *slots = realloc(t->slots, (size_t)ncap * sizeof *slots);
    if (!slots) return -1;
    t->slots = slots;
    for (int32_t i = ncap - 1; i >= t->cap; i--) {
        slots[i].pos = -1;
        slots[i].next_free = t->free_head;
        t->free_head = i;
    }
    t->cap = ncap;
    return 0;
}

int32_t keel_timers_add(keel_timers_t *t, double deadline_ms) {
    if (t->free_head < 0 && grow(t) != 0) return -1;
    int32_t id = t->free_head;
    slot_t *s = &t->slots[id];
    t->free_head = s->next_free;
    s->deadline = deadline_ms;
    s->seq = t->seq++;
    place(t, t->count++, id);
    sift_up(t, t->count - 1);
    return id;
}

static void remove_at(keel_timers_t *t, int32_t pos) {
    int32_t id = t->heap[pos];
    t->slots[id].pos = -1;
    t->slots[id].next_free = t->free_head;
    t->free_head = id;
    t->count--;
    if (pos == t->count) return;
    place(t, pos, t->heap[t->count]);
    if (pos > 0 && earlier(t, t->heap[pos], t->heap[(pos - 1) / 2])) sift_up(t, pos);
    else sift_down(t, pos);
}

int keel_timers_cancel(keel_timers_t *t, int32_t id) {
    if (id < 0 || id >= t->cap || t->slots[id].pos < 0) return -1;
    remove_at(t, t->slots[id].pos);
    return 0;
}

int32_t keel_timers_pop_expired(keel_timers_t *t, double now_ms) {
    if (t->count == 0) return -1;
    int32_t id = t->heap[0];
    if (t->slots[id].deadline > now_ms) return -1;
    remove_at(t, 0);
    return id;
}

double keel_timers_next(const keel_timers_t *t) {
    return t->count ? t->slots[t->heap[0]].deadline : -1.0;
}

int32_t keel_timers_count(const keel_timers_t *t) { return t->count; }
