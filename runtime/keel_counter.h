#ifndef KEEL_COUNTER_H
#define KEEL_COUNTER_H
#include <stdint.h>
/* A striped counter that any number of threads may add to at once without
 * losing updates. Each shard sits on its own cache line, so threads adding to
 * different shards never contend; reads sum every shard. Sums wrap around in
 * two's complement at the int64 limits (no undefined behaviour). */

typedef struct keel_counter keel_counter_t;

#define KEEL_COUNTER_MAX_SHARDS 1024u

/* shards in [1, KEEL_COUNTER_MAX_SHARDS]; NULL otherwise or out of memory. */
keel_counter_t *keel_counter_new(uint32_t shards);
void keel_counter_free(keel_counter_t *c);
/* shard is taken modulo the shard count: a host thread passes its own index. */
void keel_counter_add(keel_counter_t *c, uint32_t shard, int64_t n);
int64_t keel_counter_value(const keel_counter_t *c);
/* Zeroes every shard and returns what they held; an add racing with reset
 * lands either in the returned total or in the new count, never lost. */
int64_t keel_counter_reset(keel_counter_t *c);
uint32_t keel_counter_shards(const keel_counter_t *c);

#endif
