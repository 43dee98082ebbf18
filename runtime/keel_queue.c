#include "keel_queue.h"
#include <math.h>
#include <stdlib.h>

enum { ST_FREE = 0, ST_READY, ST_DELAYED, ST_INFLIGHT };
enum { H_READY = 0, H_DELAYED, H_INFLIGHT, H_COUNT };

/* Ids must stay exact in a double; the generation wraps below this. */
#define ID_LIMIT 9007199254740992.0 /* 2^53 */

typedef struct {
    double priority;
    double deadline; /* delayed: ready time; in flight: visibility deadline */
    uint64_t seq;    /* fresh on every state change: FIFO among equals */
    uint64_t gen;
    int32_t pos;     /* index in the heap of its state; next free slot when free */
    int32_t attempt;
    uint8_t state;
} slot_t;

typedef struct {
    int32_t *items;
    int32_t count;
} heap_t;

struct keel_queue {
    keel_clock_t *clock;
    slot_t *slots;
    heap_t heaps[H_COUNT];
    int32_t capacity, allocated, used, free_head, max_attempts;
    double visibility_ms, span, max_gen;
    uint64_t seq;
    double pushed, popped, acked, nacked, expired, exhausted, removed;
};

/* ---- heaps ------------------------------------------------------------ */

/* Ready: higher priority first, then older. Others: earlier deadline first,
 * then older, so equal deadlines resolve in a reproducible order. */
static int before(const keel_queue_t *q, int h, int32_t a, int32_t b) {
    const slot_t *x = &q->slots[a], *y = &q->slots[b];
    if (h == H_READY) {
        if (x->priority != y->priority) return x->priority > y->priority;
    } else if (x->deadline != y->deadline) {
        return x->deadline < y->deadline;
    }
    return x->seq < y->seq;
}

static void place(keel_queue_t *q, heap_t *hp, int32_t pos, int32_t s) {
    hp->items[pos] = s;
    q->slots[s].pos = pos;
}

static void sift_up(keel_queue_t *q, int h, int32_t pos) {
    heap_t *hp = &q->heaps[h];
    int32_t s = hp->items[pos];
    while (pos > 0) {
        int32_t parent = (pos - 1) / 2;
        if (!before(q, h, s, hp->items[parent])) break;
        place(q, hp, pos, hp->items[parent]);
        pos = parent;
    }
    place(q, hp, pos, s);
}

static void sift_down(keel_queue_t *q, int h, int32_t pos) {
    heap_t *hp = &q->heaps[h];
    int32_t s = hp->items[pos];
    for (;;) {
        int32_t child = 2 * pos + 1;
        if (child >= hp->count) break;
        if (child + 1 < hp->count && before(q, h, hp->items[child + 1], hp->items[child])) child++;
        if (!before(q, h, hp->items[child], s)) break;
        place(q, hp, pos, hp->items[child]);
        pos = child;
    }
    place(q, hp, pos, s);
}

static void heap_insert(keel_queue_t *q, int h, int32_t s) {
    heap_t *hp = &q->heaps[h];
    int32_t pos = hp->count++;
    place(q, hp, pos, s);
    sift_up(q, h, pos);
}

static void heap_delete(keel_queue_t *q, int h, int32_t s) {
    heap_t *hp = &q->heaps[h];
    int32_t pos = q->slots[s].pos;
    int32_t last = hp->items[--hp->count];
    if (pos == hp->count) return;
    place(q, hp, pos, last);
    if (pos > 0 && before(q, h, last, hp->items[(pos - 1) / 2])) sift_up(q, h, pos);
    else sift_down(q, h, pos);
}

static int heap_of(uint8_t state) {
    return state == ST_READY ? H_READY : state == ST_DELAYED ? H_DELAYED : H_INFLIGHT;
}

/* ---- slots ------------------------------------------------------------ */

static double id_of(const keel_queue_t *q, int32_t s) {
    return (double)q->slots[s].gen * q->span + (double)s;
}

/* Returns the slot of a live message with this id, or -1. Rejects anything
 * that is not an exact id (NaN, negative, fractional, huge) before indexing. */
static int32_t lookup(const keel_queue_t *q, double id) {
    if (!(id >= 0.0 && id < ID_LIMIT) || id != floor(id)) return -1;
    double g = floor(id / q->span);
    double s = id - g * q->span;
    if (s >= (double)q->allocated) return -1;
    int32_t slot = (int32_t)s;
    const slot_t *x = &q->slots[slot];
    if (x->state == ST_FREE || (double)x->gen != g) return -1;
    return slot;
}

static int grow(keel_queue_t *q) {
    int64_t ncap = q->allocated ? (int64_t)q->allocated * 2 : 16;
    if (ncap > q->capacity) ncap = q->capacity;
    if (ncap <= q->allocated) return -1;
    slot_t *slots = realloc(q->slots, (size_t)ncap * sizeof *slots);
    if (!slots) return -1;
    q->slots = slots;
    for (int h = 0; h < H_COUNT; h++) {
        int32_t *items = realloc(q->heaps[h].items, (size_t)ncap * sizeof *items);
        if (!items) return -1;
        q->heaps[h].items = items;
    }
    /* Push new slots so the lowest index is reused first: keeps the
     * caller's payload array dense. */
    for (int32_t i = (int32_t)ncap - 1; i >= q->allocated; i--) {
        slots[i].state = ST_FREE;
        slots[i].gen = 0;
        slots[i].pos = q->free_head;
        q->free_head = i;
    }
    q->allocated = (int32_t)ncap;
    return 0;
}

static void free_slot(keel_queue_t *q, int32_t s) {
    slot_t *x = &q->slots[s];
    x->state = ST_FREE;
    x->pos = q->free_head;
    q->free_head = s;
    q->used--;
}

/* Moves a message into a state's heap with a fresh FIFO sequence. */
static void enter(keel_queue_t *q, int32_t s, uint8_t state, double deadline) {
    slot_t *x = &q->slots[s];
    x->state = state;
    x->deadline = deadline;
    x->seq = q->seq++;
    heap_insert(q, heap_of(state), s);
}

static void leave(keel_queue_t *q, int32_t s) {
    heap_delete(q, heap_of(q->slots[s].state), s);
}

/* ---- API -------------------------------------------------------------- */

keel_queue_t *keel_queue_new(keel_clock_t *clock, int32_t capacity,
                             double visibility_ms, int32_t max_attempts) {
    if (!clock || capacity < 1 || capacity > KEEL_QUEUE_MAX_CAPACITY) return NULL;
    if (!(visibility_ms > 0.0) || isinf(visibility_ms) || max_attempts < 1) return NULL;
    keel_queue_t *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->clock = clock;
    q->capacity = capacity;
    q->visibility_ms = visibility_ms;
    q->max_attempts = max_attempts;
    q->free_head = -1;
    q->span = 1.0;
    while (q->span < (double)capacity) q->span *= 2.0;
    q->max_gen = floor(ID_LIMIT / q->span) - 1.0;
    return q;
}

void keel_queue_free(keel_queue_t *q) {
    if (!q) return;
    for (int h = 0; h < H_COUNT; h++) free(q->heaps[h].items);
    free(q->slots);
    free(q);
}

double keel_queue_span(const keel_queue_t *q) { return q->span; }

int32_t keel_queue_slot(const keel_queue_t *q, double id) { return lookup(q, id); }

/* Non-finite or non-positive delays mean "now"; a finite delay beyond the
 * representable range is clamped rather than overflowing the deadline. */
static double due_at(const keel_queue_t *q, double delay_ms) {
    if (!(delay_ms > 0.0)) return -1.0;
    if (delay_ms > 1e15) delay_ms = 1e15;
    return q->clock->now_ms + delay_ms;
}

double keel_queue_push(keel_queue_t *q, double priority, double delay_ms) {
    if (q->used >= q->capacity) return KEEL_QUEUE_FULL;
    if (q->free_head < 0 && grow(q) != 0) return KEEL_QUEUE_NOMEM;
    int32_t s = q->free_head;
    slot_t *x = &q->slots[s];
    q->free_head = x->pos;
    q->used++;
    /* Generations start at 1 so no id is 0, and wrap well before ids lose
     * exactness; a wrapped id can only alias one ~2^(53-log2 span) reuses old. */
    x->gen = (double)x->gen >= q->max_gen ? 1 : x->gen + 1;
    x->priority = priority == priority ? priority : 0.0;
    x->attempt = 0;
    double due = due_at(q, delay_ms);
    if (due < 0.0) enter(q, s, ST_READY, 0.0);
    else enter(q, s, ST_DELAYED, due);
    q->pushed++;
    return id_of(q, s);
}

double keel_queue_pop(keel_queue_t *q, double visibility_ms) {
    heap_t *hp = &q->heaps[H_READY];
    if (hp->count == 0) return KEEL_QUEUE_EMPTY;
    int32_t s = hp->items[0];
    heap_delete(q, H_READY, s);
    if (!(visibility_ms > 0.0)) visibility_ms = q->visibility_ms;
    if (visibility_ms > 1e15) visibility_ms = 1e15;
    enter(q, s, ST_INFLIGHT, q->clock->now_ms + visibility_ms);
    q->slots[s].attempt++;
    q->popped++;
    return id_of(q, s);
}

int32_t keel_queue_attempt(const keel_queue_t *q, double id) {
    int32_t s = lookup(q, id);
    return s < 0 ? -1 : q->slots[s].attempt;
}

static int32_t lookup_delivery(const keel_queue_t *q, double id, int32_t attempt) {
    int32_t s = lookup(q, id);
    if (s < 0) return -1;
    const slot_t *x = &q->slots[s];
    if (x->state != ST_INFLIGHT || x->attempt != attempt) return -1;
    return s;
}

int keel_queue_ack(keel_queue_t *q, double id, int32_t attempt) {
    int32_t s = lookup_delivery(q, id, attempt);
    if (s < 0) return KEEL_QUEUE_UNKNOWN;
    heap_delete(q, H_INFLIGHT, s);
    free_slot(q, s);
    q->acked++;
    return 0;
}

int keel_queue_nack(keel_queue_t *q, double id, int32_t attempt,
                    double delay_ms, int expired) {
    int32_t s = lookup_delivery(q, id, attempt);
    if (s < 0) return KEEL_QUEUE_UNKNOWN;
    heap_delete(q, H_INFLIGHT, s);
    if (expired) q->expired++;
    else q->nacked++;
    if (q->slots[s].attempt >= q->max_attempts) {
        free_slot(q, s);
        q->exhausted++;
        return KEEL_QUEUE_EXHAUSTED;
    }
    double due = due_at(q, delay_ms);
    if (due < 0.0) enter(q, s, ST_READY, 0.0);
    else enter(q, s, ST_DELAYED, due);
    return KEEL_QUEUE_REQUEUED;
}

int keel_queue_extend(keel_queue_t *q, double id, int32_t attempt, double ms) {
    int32_t s = lookup_delivery(q, id, attempt);
    if (s < 0) return KEEL_QUEUE_UNKNOWN;
    if (!(ms > 0.0)) ms = 0.0;
    if (ms > 1e15) ms = 1e15;
    heap_delete(q, H_INFLIGHT, s);
    enter(q, s, ST_INFLIGHT, q->clock->now_ms + ms);
    return 0;
}

double keel_queue_next_expired(const keel_queue_t *q) {
    const heap_t *hp = &q->heaps[H_INFLIGHT];
    if (hp->count == 0) return KEEL_QUEUE_EMPTY;
    int32_t s = hp->items[0];
    if (q->slots[s].deadline > q->clock->now_ms) return KEEL_QUEUE_EMPTY;
    return id_of(q, s);
}

int32_t keel_queue_promote(keel_queue_t *q) {
    heap_t *hp = &q->heaps[H_DELAYED];
    int32_t n = 0;
    while (hp->count > 0) {
        int32_t s = hp->items[0];
        if (q->slots[s].deadline > q->clock->now_ms) break;
        heap_delete(q, H_DELAYED, s);
        enter(q, s, ST_READY, 0.0);
        n++;
    }
    return n;
}

int32_t keel_queue_ready_count(const keel_queue_t *q) { return q->heaps[H_READY].count; }

double keel_queue_next_deadline(const keel_queue_t *q) {
    double t = -1.0;
    const heap_t *d = &q->heaps[H_DELAYED], *f = &q->heaps[H_INFLIGHT];
    if (d->count > 0) t = q->slots[d->items[0]].deadline;
    if (f->count > 0) {
        double u = q->slots[f->items[0]].deadline;
        if (t < 0.0 || u < t) t = u;
    }
    return t;
}

int keel_queue_remove(keel_queue_t *q, double id) {
    int32_t s = lookup(q, id);
    if (s < 0) return KEEL_QUEUE_UNKNOWN;
    leave(q, s);
    free_slot(q, s);
    q->removed++;
    return 0;
}

/* Best-first walk of the ready heap with a frontier heap of heap positions:
 * O(max log max) without copying or disturbing the real heap. */
static int fr_before(const keel_queue_t *q, const int32_t *fr, int32_t a, int32_t b) {
    const int32_t *items = q->heaps[H_READY].items;
    return before(q, H_READY, items[fr[a]], items[fr[b]]);
}

static void fr_swap(int32_t *fr, int32_t a, int32_t b) {
    int32_t t = fr[a];
    fr[a] = fr[b];
    fr[b] = t;
}

static void fr_push(const keel_queue_t *q, int32_t *fr, int32_t *nf, int32_t pos) {
    int32_t i = (*nf)++;
    fr[i] = pos;
    while (i > 0 && fr_before(q, fr, i, (i - 1) / 2)) {
        fr_swap(fr, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void fr_pop(const keel_queue_t *q, int32_t *fr, int32_t *nf) {
    fr[0] = fr[--(*nf)];
    int32_t i = 0;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= *nf) break;
        if (c + 1 < *nf && fr_before(q, fr, c + 1, c)) c++;
        if (!fr_before(q, fr, c, i)) break;
        fr_swap(fr, i, c);
        i = c;
    }
}

int32_t keel_queue_ready_ids(const keel_queue_t *q, double *out, int32_t max) {
    const heap_t *hp = &q->heaps[H_READY];
    if (!out || max <= 0 || hp->count == 0) return 0;
    if (max > hp->count) max = hp->count;
    /* each step takes one position and adds at most two */
    int32_t *fr = malloc(((size_t)max + 2) * sizeof *fr);
    if (!fr) return -1;
    int32_t nf = 0, n = 0;
    fr_push(q, fr, &nf, 0);
    while (n < max && nf > 0) {
        int32_t pos = fr[0];
        out[n++] = id_of(q, hp->items[pos]);
        fr_pop(q, fr, &nf);
        if (2 * pos + 1 < hp->count) fr_push(q, fr, &nf, 2 * pos + 1);
        if (2 * pos + 2 < hp->count) fr_push(q, fr, &nf, 2 * pos + 2);
    }
    free(fr);
    return n;
}

void keel_queue_stats(const keel_queue_t *q, keel_queue_stats_t *out) {
    out->ready = q->heaps[H_READY].count;
    out->delayed = q->heaps[H_DELAYED].count;
    out->in_flight = q->heaps[H_INFLIGHT].count;
    out->pushed = q->pushed;
    out->popped = q->popped;
    out->acked = q->acked;
    out->nacked = q->nacked;
    out->expired = q->expired;
    out->exhausted = q->exhausted;
    out->removed = q->removed;
}
