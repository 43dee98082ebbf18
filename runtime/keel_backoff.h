#ifndef KEEL_BACKOFF_H
#define KEEL_BACKOFF_H
#include "keel_rand.h"
/* Exponential backoff delays with jitter (the AWS "Exponential Backoff And
 * Jitter" variants). A pure function of its arguments and the PRNG, so a
 * seeded world replays the same delays. */

enum {
    KEEL_BACKOFF_NONE = 0,        /* base * factor^(attempt-1), capped */
    KEEL_BACKOFF_FULL = 1,        /* uniform in [0, capped exponential] */
    KEEL_BACKOFF_EQUAL = 2,       /* half the exponential + uniform of the other half */
    KEEL_BACKOFF_DECORRELATED = 3 /* uniform in [base, prev * 3], capped */
};

/* Delay in ms before retry number `attempt` (1 = after the first failure).
 * prev_ms is the previous delay (decorrelated jitter only; <= 0 means base).
 * rand may be NULL for KEEL_BACKOFF_NONE. Returns -1 on bad arguments
 * (attempt < 1, base < 0, cap < base, factor < 1, NaN, unknown jitter,
 * missing rand). The result is always within [0, cap_ms]. */
double keel_backoff_delay(keel_rand_t *rand, int jitter, double base_ms, double cap_ms,
                          double factor, double attempt, double prev_ms);

#endif
