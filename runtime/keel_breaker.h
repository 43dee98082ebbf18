#ifndef KEEL_BREAKER_H
#define KEEL_BREAKER_H
#include <stdint.h>
#include "keel_clock.h"
/* Circuit breaker with a sliding window of outcomes (Resilience4j model).
 * The window is either the last `size` calls (a ring of outcomes) or the
 * last `size` seconds (a ring of one-second buckets); both keep running
 * totals so allow/record are O(1) and never allocate. Memory is fixed at
 * creation (size entries), so nothing grows with traffic.
 *
 * Every call that may change the state returns the state it leaves the
 * breaker in, so the binding can notice a transition without another call:
 * at most one transition happens per call. */

enum {
    KEEL_BREAKER_CLOSED = 0,
    KEEL_BREAKER_OPEN = 1,
    KEEL_BREAKER_HALF_OPEN = 2,
    KEEL_BREAKER_FORCED_OPEN = 3,
    KEEL_BREAKER_DISABLED = 4
};
/* COUNT: the last `size` calls; TIME: the last `size` buckets of bucket_ms
 * (1000 unless set); CONSECUTIVE: opens after `size` failures (or slow
 * calls) in a row, a success resets the run (min_calls does not apply). */
enum { KEEL_BREAKER_WINDOW_COUNT = 0, KEEL_BREAKER_WINDOW_TIME = 1, KEEL_BREAKER_WINDOW_CONSECUTIVE = 2 };

/* Largest window: 1e6 calls or 1e6 seconds (bounded memory). */
#define KEEL_BREAKER_MAX_SIZE 1000000

typedef struct keel_breaker keel_breaker_t;

typedef struct keel_breaker_stats {
    double state;
    double window_calls;      /* the deciding sample: closed, the sliding window;
                               * half_open, the probes recorded; open, the
                               * sample that opened it (window or probes) */
    double window_failures;
    double window_slow;
    double half_open_permits; /* permits still to hand out in half_open */
    double consecutive_opens; /* openings since the breaker last closed */
    double calls;             /* recorded outcomes, all time */
    double failures;
    double slow;
    double allowed;
    double rejected;
    double opened;            /* transitions into OPEN */
    double open_until_ms;     /* when OPEN ends (clock ms), 0 otherwise */
    double probes_in_flight;  /* half_open permits out without an outcome */
} keel_breaker_stats_t;

/* Returns NULL when an argument is out of range (size/min_calls/half_open_calls
 * < 1, size > KEEL_BREAKER_MAX_SIZE, rates outside (0,100], slow_ms or
 * open_ms <= 0, NaN) or out of memory. failure_rate and slow_rate are percentages: the
 * breaker opens when a rate is >= its threshold once window_calls >= min_calls
 * (min_calls is capped at size for count windows). */
keel_breaker_t *keel_breaker_new(keel_clock_t *clock, int window_kind, int32_t size,
                                 int32_t min_calls, double failure_rate, double slow_ms,
                                 double slow_rate, double open_ms, int32_t half_open_calls);
void keel_breaker_free(keel_breaker_t *b);

/* Returns (state << 1) | allowed. OPEN turns HALF_OPEN here once open_ms has
 * passed; HALF_OPEN hands out exactly half_open_calls permits. */
int keel_breaker_allow(keel_breaker_t *b);
/* Records one outcome; ok != 0 is a success, a duration >= slow_ms is slow.
 * Ignored in OPEN, FORCED_OPEN and DISABLED. Returns the state. */
int keel_breaker_record(keel_breaker_t *b, int ok, double duration_ms);
/* Gives back a permit from allow() whose call ended without an outcome
 * (cancelled): in HALF_OPEN the permit can be handed out again. Returns the
 * state. */
int keel_breaker_cancel(keel_breaker_t *b);
/* Current state, applying a due OPEN -> HALF_OPEN transition. */
int keel_breaker_state(keel_breaker_t *b);
/* Moves to any state. CLOSED and DISABLED reset the window; OPEN starts a
 * normal open period; HALF_OPEN hands out fresh permits. Returns the state,
 * or -1 for an unknown state. */
int keel_breaker_force(keel_breaker_t *b, int state);
/* Changes the length of the current open period (used for growing open
 * periods): the breaker stays OPEN until opened_at + ms. No-op unless OPEN.
 * Returns 0, or -1 when not OPEN or ms is negative/NaN. */
int keel_breaker_set_open_ms(keel_breaker_t *b, double ms);
/* Openings since the breaker last closed (1 during the first open period). */
int32_t keel_breaker_opens(const keel_breaker_t *b);
/* Time windows: the width of one bucket (default 1000 ms, so `size`
 * seconds), for windows finer than a second. Resets the window. Returns 0,
 * or -1 for a non-time window or ms outside (0, 1e12]. */
int keel_breaker_set_bucket_ms(keel_breaker_t *b, double ms);
/* The longest a HALF_OPEN round may wait for its probes' outcomes before it
 * reopens, judged on those recorded (0, the default: no limit). Returns 0,
 * or -1 for ms outside [0, 1e12]. */
int keel_breaker_set_max_half_open_ms(keel_breaker_t *b, double ms);
/* When the current state ends by itself (clock ms): OPEN's open_until,
 * HALF_OPEN's deadline; +inf otherwise (or with no half-open limit). */
double keel_breaker_deadline(keel_breaker_t *b);
/* Not const: a time window first drops the buckets that have passed. */
void keel_breaker_stats(keel_breaker_t *b, keel_breaker_stats_t *out);

#endif
