#include "keel_counter.h"
#include <stdatomic.h>
#include <stdlib.h>

#define LINE 64

typedef struct {
    _Atomic int64_t v;
    char pad[LINE - sizeof(_Atomic int64_t)];
} shard_t;

struct keel_counter {
    shard_t *shards;
    uint32_t n;
};

keel_counter_t *keel_counter_new(uint32_t shards) {
    if (shards == 0 || shards > KEEL_COUNTER_MAX_SHARDS) return NULL;
    keel_counter_t *c = malloc(sizeof *c);
    if (!c) return NULL;
    c->shards = aligned_alloc(LINE, (size_t)shards * sizeof(shard_t));
    if (!c->shards) {
        free(c);
        return NULL;
    }
    for (uint32_t i = 0; i < shards; i++) atomic_init(&c->shards[i].v, 0);
    c->n = shards;
    return c;
}

void keel_counter_free(keel_counter_t *c) {
    if (!c) return;
    free(c->shards);
    free(c);
}

void keel_counter_add(keel_counter_t *c, uint32_t shard, int64_t n) {
    /* relaxed: the count needs atomicity, not ordering with other memory */
    atomic_fetch_add_explicit(&c->shards[shard % c->n].v, n, memory_order_relaxed);
}

int64_t keel_counter_value(const keel_counter_t *c) {
    uint64_t sum = 0; /* unsigned so that wrap-around is defined */
    for (uint32_t i = 0; i < c->n; i++)
        sum += (uint64_t)atomic_load_explicit(&c->shards[i].v, memory_order_relaxed);
    return (int64_t)sum;
}

int64_t keel_counter_reset(keel_counter_t *c) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < c->n; i++)
        sum += (uint64_t)atomic_exchange_explicit(&c->shards[i].v, 0, memory_order_relaxed);
    return (int64_t)sum;
}

uint32_t keel_counter_shards(const keel_counter_t *c) { return c->n; }
