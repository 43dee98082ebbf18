#include "keel_clock.h"
#include <time.h>

static double monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double epoch_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void keel_clock_init(keel_clock_t *clock, int is_virtual, double virtual_epoch_ms) {
    clock->is_virtual = is_virtual;
    if (is_virtual) {
        clock->now_ms = 0.0;
        clock->wall_base_ms = virtual_epoch_ms;
    } else {
        clock->now_ms = monotonic_ms();
        clock->wall_base_ms = 0.0;
    }
}

double keel_clock_update(keel_clock_t *clock) {
    if (!clock->is_virtual) clock->now_ms = monotonic_ms();
    return clock->now_ms;
}

double keel_clock_now(const keel_clock_t *clock) { return clock->now_ms; }

int keel_clock_advance_to(keel_clock_t *clock, double t_ms) {
    if (!clock->is_virtual) return -1;
    if (t_ms > clock->now_ms) clock->now_ms = t_ms;
    return 0;
}

double keel_clock_wall(const keel_clock_t *clock) {
    if (clock->is_virtual) return clock->wall_base_ms + clock->now_ms;
    return epoch_ms();
}
