#include "keel_reclaim.h"
#include <stdlib.h>

typedef struct {
    keel_free_fn fn;
    void *p;
} pending_free;

struct keel_reclaim {
    pending_free *items;
    size_t n, cap;
};

keel_reclaim_t *keel_reclaim_new(void) { return calloc(1, sizeof(keel_reclaim_t)); }

int keel_reclaim_add(keel_reclaim_t *q, keel_free_fn fn, void *p) {
    if (!fn) return 0;
    if (!q) { fn(p); return -1; }
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        pending_free *items = realloc(q->items, cap * sizeof *items);
        if (!items) { fn(p); return -1; }
        q->items = items;
        q->cap = cap;
    }
    q->items[q->n].fn = fn;
    q->items[q->n].p = p;
    q->n++;
    return 0;
}

void keel_reclaim_run(keel_reclaim_t *q) {
    if (!q) return;
    for (size_t i = 0; i < q->n; i++) q->items[i].fn(q->items[i].p);
    q->n = 0;
}

void keel_reclaim_free(keel_reclaim_t *q) {
    if (!q) return;
    keel_reclaim_run(q);
    free(q->items);
    free(q);
}
