#include "keel_backoff.h"
#include <math.h>

double keel_backoff_delay(keel_rand_t *rand, int jitter, double base_ms, double cap_ms,
                          double factor, double attempt, double prev_ms) {
    if (!(attempt >= 1) || !(base_ms >= 0) || !(cap_ms >= base_ms) || !(factor >= 1)) return -1;
    if (prev_ms != prev_ms) return -1;
    if (jitter != KEEL_BACKOFF_NONE && !rand) return -1;
    /* pow overflows to inf for large attempts, which the cap then clamps;
     * a zero base must stay zero there (0 * inf is NaN, which would read as
     * "over the cap"). */
    double exp = base_ms > 0 ? base_ms * pow(factor, attempt - 1) : 0;
    if (!(exp <= cap_ms)) exp = cap_ms;
    switch (jitter) {
    case KEEL_BACKOFF_NONE:
        return exp;
    case KEEL_BACKOFF_FULL:
        return keel_rand_double(rand) * exp;
    case KEEL_BACKOFF_EQUAL:
        return exp / 2 + keel_rand_double(rand) * (exp / 2);
    case KEEL_BACKOFF_DECORRELATED: {
        double prev = prev_ms > 0 ? prev_ms : base_ms;
        double hi = prev * 3;
        if (hi > cap_ms) hi = cap_ms;
        if (hi < base_ms) hi = base_ms;
        double d = base_ms + keel_rand_double(rand) * (hi - base_ms);
        return d > cap_ms ? cap_ms : d;
    }
    default:
        return -1;
    }
}
