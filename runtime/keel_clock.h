#ifndef KEEL_CLOCK_H
#define KEEL_CLOCK_H
/* The runtime clock. Primitives never read the system clock themselves: they
 * read clock->now_ms, which the loop refreshes once per iteration (and
 * keel.now() refreshes on demand). That makes every primitive work unchanged
 * in virtual time, where the loop moves now_ms itself. */

typedef struct keel_clock {
    double now_ms;        /* monotonic milliseconds, cached */
    double wall_base_ms;  /* epoch ms corresponding to now_ms == 0 in virtual mode */
    int is_virtual;
} keel_clock_t;

void keel_clock_init(keel_clock_t *clock, int is_virtual, double virtual_epoch_ms);
/* Real mode: re-read the monotonic clock. Virtual mode: no-op. Returns now_ms. */
double keel_clock_update(keel_clock_t *clock);
/* Virtual mode only: move time forward (never backwards). Returns 0 or -1. */
int keel_clock_advance_to(keel_clock_t *clock, double t_ms);
/* Epoch milliseconds (virtual mode: derived from virtual time, deterministic). */
double keel_clock_wall(const keel_clock_t *clock);
double keel_clock_now(const keel_clock_t *clock);

#endif
