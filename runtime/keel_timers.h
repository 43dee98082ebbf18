#ifndef KEEL_TIMERS_H
#define KEEL_TIMERS_H
#include <stdint.h>
/* A min-heap of deadlines addressed by small integer ids, so a timer can be
 * cancelled in O(log n) instead of lingering until it fires. Equal deadlines
 * fire in insertion order, which keeps virtual-time runs deterministic. */

typedef struct keel_timers keel_timers_t;

keel_timers_t *keel_timers_new(void);
void keel_timers_free(keel_timers_t *t);
/* Returns a timer id >= 0, or -1 when out of memory. */
int32_t keel_timers_add(keel_timers_t *t, double deadline_ms);
/* Returns 0, or -1 when id is not an armed timer. */
int keel_timers_cancel(keel_timers_t *t, int32_t id);
/* Pops the earliest timer whose deadline <= now_ms; returns its id or -1. */
int32_t keel_timers_pop_expired(keel_timers_t *t, double now_ms);
/* Earliest deadline, or -1 when empty. */
double keel_timers_next(const keel_timers_t *t);
int32_t keel_timers_count(const keel_timers_t *t);

#endif
