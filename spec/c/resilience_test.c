/* Unit test of the C cores of helper B's primitives (breaker, ratelimit,
 * bulkhead, backoff) in virtual time. Build and run under the sanitizers:
 *   cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -fsanitize=address,undefined \
 *      -Iruntime spec/c/resilience_test.c runtime/keel_breaker.c runtime/keel_ratelimit.c \
 *      runtime/keel_bulkhead.c runtime/keel_backoff.c runtime/keel_map.c runtime/keel_rand.c \
 *      runtime/keel_clock.c -lm -o /tmp/resilience_test && /tmp/resilience_test
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "keel_backoff.h"
#include "keel_breaker.h"
#include "keel_bulkhead.h"
#include "keel_clock.h"
#include "keel_rand.h"
#include "keel_ratelimit.h"

static int checks, failures;
#define CHECK(c) do { checks++; if (!(c)) { printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

#define ST(r) ((r) >> 1)
#define OK(r) ((r) & 1)

static void breaker_count(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    CHECK(!keel_breaker_new(&clock, 0, 0, 1, 50, 100, 100, 1000, 1));
    CHECK(!keel_breaker_new(&clock, 0, 4, 1, 0, 100, 100, 1000, 1));
    CHECK(!keel_breaker_new(&clock, 0, 4, 1, NAN, 100, 100, 1000, 1));
    CHECK(!keel_breaker_new(&clock, 3, 4, 1, 50, 100, 100, 1000, 1)); /* 2 is CONSECUTIVE now */
    CHECK(!keel_breaker_new(&clock, 0, 4, 1, 50, 0, 100, 1000, 1)); /* slow_ms = 0 */
    CHECK(!keel_breaker_new(&clock, 0, 4, 1, 50, 100, 100, 0, 1)); /* open_ms = 0 */
    keel_breaker_t *b = keel_breaker_new(&clock, KEEL_BREAKER_WINDOW_COUNT, 4, 4, 50, 100, 100, 1000, 2);
    CHECK(b);
    /* 3 failures in 3 calls: below min_calls, stays closed */
    for (int i = 0; i < 3; i++) {
        int r = keel_breaker_allow(b);
        CHECK(OK(r) && ST(r) == KEEL_BREAKER_CLOSED);
        CHECK(keel_breaker_record(b, i == 0, 1) == KEEL_BREAKER_CLOSED);
    }
    /* 4th call: 2 failures of 4 = 50% -> open */
    CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_OPEN);
    int r = keel_breaker_allow(b);
    CHECK(!OK(r) && ST(r) == KEEL_BREAKER_OPEN);
    clock.now_ms = 999.999;
    CHECK(keel_breaker_state(b) == KEEL_BREAKER_OPEN);
    clock.now_ms = 1000;
    r = keel_breaker_allow(b);
    CHECK(OK(r) && ST(r) == KEEL_BREAKER_HALF_OPEN);
    r = keel_breaker_allow(b);
    CHECK(OK(r));
    r = keel_breaker_allow(b);
    CHECK(!OK(r) && ST(r) == KEEL_BREAKER_HALF_OPEN);
    CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_HALF_OPEN);
    CHECK(keel_breaker_record(b, 0, 1) == KEEL_BREAKER_OPEN); /* 1/2 failed = 50% */
    keel_breaker_stats_t s;
    keel_breaker_stats(b, &s);
    CHECK(s.consecutive_opens == 2 && s.opened == 2 && s.open_until_ms == 2000);
    CHECK(keel_breaker_set_open_ms(b, 5000) == 0);
    clock.now_ms = 5999;
    CHECK(keel_breaker_state(b) == KEEL_BREAKER_OPEN);
    clock.now_ms = 6000;
    CHECK(keel_breaker_state(b) == KEEL_BREAKER_HALF_OPEN);
    CHECK(keel_breaker_set_open_ms(b, 5) == -1);
    keel_breaker_allow(b);
    keel_breaker_allow(b);
    keel_breaker_record(b, 1, 1);
    CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_CLOSED);
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 0 && s.consecutive_opens == 0);
    /* slow calls alone open it: slow_rate 100 means all slow */
    for (int i = 0; i < 3; i++) CHECK(keel_breaker_record(b, 1, 100) == KEEL_BREAKER_CLOSED);
    CHECK(keel_breaker_record(b, 1, 100) == KEEL_BREAKER_OPEN);
    /* forced states */
    CHECK(keel_breaker_force(b, KEEL_BREAKER_FORCED_OPEN) == KEEL_BREAKER_FORCED_OPEN);
    clock.now_ms = 1e9;
    CHECK(!OK(keel_breaker_allow(b)));
    CHECK(keel_breaker_force(b, KEEL_BREAKER_DISABLED) == KEEL_BREAKER_DISABLED);
    for (int i = 0; i < 10; i++) CHECK(keel_breaker_record(b, 0, 1) == KEEL_BREAKER_DISABLED);
    CHECK(OK(keel_breaker_allow(b)));
    CHECK(keel_breaker_force(b, 99) == -1);
    CHECK(keel_breaker_force(b, KEEL_BREAKER_CLOSED) == KEEL_BREAKER_CLOSED);
    /* ring wrap: old failures fall out */
    keel_breaker_record(b, 0, 1);
    for (int i = 0; i < 100; i++) CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_CLOSED);
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 4 && s.window_failures == 0);
    keel_breaker_free(b);
}

static void breaker_time(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_breaker_t *b = keel_breaker_new(&clock, KEEL_BREAKER_WINDOW_TIME, 3, 4, 50, 1e9, 100, 100, 1);
    CHECK(b);
    keel_breaker_stats_t s;
    keel_breaker_record(b, 0, 1);
    clock.now_ms = 1000;
    keel_breaker_record(b, 0, 1);
    clock.now_ms = 2999;
    keel_breaker_record(b, 1, 1);
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 3 && s.window_failures == 2);
    clock.now_ms = 3000; /* second 0 falls out */
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 2 && s.window_failures == 1);
    CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_CLOSED); /* 1/3 */
    CHECK(keel_breaker_record(b, 0, 1) == KEEL_BREAKER_OPEN);   /* 2/4 */
    clock.now_ms = 100000;
    CHECK(keel_breaker_force(b, KEEL_BREAKER_CLOSED) == KEEL_BREAKER_CLOSED);
    keel_breaker_record(b, 0, 1);
    clock.now_ms = 1e9; /* a jump longer than the window clears it at once */
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 0);
    keel_breaker_free(b);
}

/* sub-second buckets, the consecutive mode and the half-open deadline */
static void breaker_modes(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_breaker_stats_t s;
    keel_breaker_t *b = keel_breaker_new(&clock, KEEL_BREAKER_WINDOW_TIME, 5, 10, 50, 1e9, 100, 100, 1);
    CHECK(b && keel_breaker_set_bucket_ms(b, 100) == 0);
    CHECK(keel_breaker_set_bucket_ms(b, 0) == -1 && keel_breaker_set_bucket_ms(b, NAN) == -1);
    keel_breaker_record(b, 0, 1);
    clock.now_ms = 499;
    keel_breaker_record(b, 0, 1);
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 2);
    clock.now_ms = 500; /* bucket 0 (0..99 ms) falls out */
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 1);
    keel_breaker_free(b);

    b = keel_breaker_new(&clock, KEEL_BREAKER_WINDOW_CONSECUTIVE, 2, 100, 50, 1e9, 100, 100, 2);
    CHECK(b && keel_breaker_set_bucket_ms(b, 100) == -1);
    CHECK(keel_breaker_record(b, 0, 1) == KEEL_BREAKER_CLOSED);
    CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_CLOSED);
    CHECK(keel_breaker_record(b, 0, 1) == KEEL_BREAKER_CLOSED);
    CHECK(keel_breaker_record(b, 0, 1) == KEEL_BREAKER_OPEN);
    CHECK(keel_breaker_set_max_half_open_ms(b, -1) == -1);
    CHECK(keel_breaker_set_max_half_open_ms(b, 300) == 0);
    CHECK(keel_breaker_deadline(b) == clock.now_ms + 100);
    clock.now_ms += 100;
    CHECK((keel_breaker_allow(b) >> 1) == KEEL_BREAKER_HALF_OPEN);
    CHECK(keel_breaker_deadline(b) == clock.now_ms + 300);
    keel_breaker_stats(b, &s);
    CHECK(s.probes_in_flight == 1 && s.half_open_permits == 1);
    clock.now_ms += 300; /* the probe never reported */
    CHECK(keel_breaker_state(b) == KEEL_BREAKER_OPEN);
    keel_breaker_stats(b, &s);
    CHECK(s.window_calls == 0 && s.probes_in_flight == 0);
    CHECK(keel_breaker_record(b, 1, 1) == KEEL_BREAKER_OPEN); /* the late outcome is ignored */
    keel_breaker_free(b);
}

static void ratelimit(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    CHECK(!keel_ratelimit_new(&clock, 0, 1000, 1, 0, 0));
    CHECK(!keel_ratelimit_new(&clock, 10, 1000, 0.5, 0, 0));
    CHECK(!keel_ratelimit_new(&clock, INFINITY, 1000, 1, 0, 0));
    keel_ratelimit_t *rl = keel_ratelimit_new(&clock, 10, 1000, 3, 0, 0);
    CHECK(rl);
    CHECK(keel_ratelimit_available(rl) == 3);
    for (int i = 0; i < 3; i++) CHECK(keel_ratelimit_take(rl, 1) == 0);
    CHECK(keel_ratelimit_take(rl, 1) == 100);
    CHECK(keel_ratelimit_take(rl, 4) == INFINITY);
    CHECK(isnan(keel_ratelimit_take(rl, 0)));
    clock.now_ms = 99.5;
    CHECK(fabs(keel_ratelimit_take(rl, 1) - 0.5) < 1e-9);
    clock.now_ms = 100;
    CHECK(keel_ratelimit_take(rl, 1) == 0);
    CHECK(keel_ratelimit_take(rl, 1) == 100);
    /* reservations queue up FIFO */
    CHECK(keel_ratelimit_reserve(rl, 1, 1000) == 100);
    CHECK(keel_ratelimit_reserve(rl, 2, 1000) == 300);
    CHECK(keel_ratelimit_reserve(rl, 1, 350) == KEEL_RATELIMIT_TOO_LONG);
    CHECK(keel_ratelimit_reserve(rl, 5, 1e9) == KEEL_RATELIMIT_NEVER);
    keel_ratelimit_refund(rl, 2);
    CHECK(keel_ratelimit_reserve(rl, 1, 1000) == 200);
    clock.now_ms = 1e6;
    CHECK(keel_ratelimit_available(rl) == 3);
    keel_ratelimit_stats_t s;
    keel_ratelimit_stats(rl, &s);
    CHECK(s.allowed == 7 && s.available == 3);
    keel_ratelimit_free(rl);

    /* non-integral interval (1000 / 3): the refill is on time exactly */
    clock.now_ms = 0;
    rl = keel_ratelimit_new(&clock, 3, 1000, 3, 0, 0);
    CHECK(keel_ratelimit_take(rl, 3) == 0);
    clock.now_ms = 999.99;
    CHECK(keel_ratelimit_take(rl, 3) > 0);
    clock.now_ms = 1000;
    CHECK(keel_ratelimit_take(rl, 3) == 0);
    clock.now_ms = 1333;
    CHECK(keel_ratelimit_take(rl, 1) > 0);
    clock.now_ms = 1000 + 1000.0 / 3;
    CHECK(keel_ratelimit_take(rl, 1) == 0);
    keel_ratelimit_free(rl);

    clock.now_ms = 0;
    rl = keel_ratelimit_new(&clock, 1, 1000, 1, 2, 7);
    CHECK(isnan(keel_ratelimit_take(rl, 1)));
    CHECK(keel_ratelimit_take_key(rl, "a", 1, 1) == 0);
    CHECK(keel_ratelimit_take_key(rl, "a", 1, 1) == 1000);
    CHECK(keel_ratelimit_take_key(rl, "b", 1, 1) == 0);
    CHECK(keel_ratelimit_available_key(rl, "a", 1) == 0);
    CHECK(keel_ratelimit_take_key(rl, "c", 1, 1) == 0); /* evicts a (still limited) */
    keel_ratelimit_stats(rl, &s);
    CHECK(s.keys == 2 && s.evicted == 1 && s.evicted_active == 1);
    clock.now_ms = 5000;
    CHECK(keel_ratelimit_take_key(rl, "d", 1, 1) == 0); /* evicts b, full again: lossless */
    keel_ratelimit_stats(rl, &s);
    CHECK(s.evicted == 2 && s.evicted_active == 1);
    CHECK(keel_ratelimit_reserve_key(rl, "d", 1, 1, 2000) == 1000);
    keel_ratelimit_refund_key(rl, "d", 1, 1);
    CHECK(keel_ratelimit_available_key(rl, "d", 1) == 0);
    keel_ratelimit_free(rl);
}

static void bulkhead(void) {
    CHECK(!keel_bulkhead_new(0, 0, 0, 0));
    keel_bulkhead_t *b = keel_bulkhead_new(2, 1, 0, 0);
    CHECK(b);
    CHECK(keel_bulkhead_slot(b, "x", 1) == -2);
    CHECK(keel_bulkhead_acquire(b, 0, 1) == KEEL_BULKHEAD_ACQUIRED);
    CHECK(keel_bulkhead_acquire(b, 0, 1) == KEEL_BULKHEAD_ACQUIRED);
    CHECK(keel_bulkhead_acquire(b, 0, 0) == KEEL_BULKHEAD_FULL);
    CHECK(keel_bulkhead_acquire(b, 0, 1) == KEEL_BULKHEAD_QUEUED);
    CHECK(keel_bulkhead_acquire(b, 0, 1) == KEEL_BULKHEAD_FULL);
    CHECK(keel_bulkhead_transfer(b, 0) == 0); /* handed to the waiter */
    CHECK(keel_bulkhead_transfer(b, 0) == -1);
    CHECK(keel_bulkhead_in_use(b, 0) == 2 && keel_bulkhead_waiting(b, 0) == 0);
    CHECK(keel_bulkhead_unwait(b, 0) == -1);
    CHECK(keel_bulkhead_release(b, 0) == 0);
    CHECK(keel_bulkhead_release(b, 0) == 0);
    CHECK(keel_bulkhead_release(b, 0) == -1);
    CHECK(keel_bulkhead_acquire(b, 1, 1) == KEEL_BULKHEAD_FULL);
    keel_bulkhead_free(b);

    b = keel_bulkhead_new(1, 1, 2, 3);
    int32_t a = keel_bulkhead_slot(b, "a", 1), c = keel_bulkhead_slot(b, "b", 1);
    CHECK(a >= 0 && c >= 0 && a != c);
    CHECK(keel_bulkhead_acquire(b, a, 1) == KEEL_BULKHEAD_ACQUIRED);
    CHECK(keel_bulkhead_acquire(b, c, 1) == KEEL_BULKHEAD_ACQUIRED);
    CHECK(keel_bulkhead_slot(b, "c", 1) == -1); /* both busy */
    CHECK(keel_bulkhead_release(b, a) == 0);
    int32_t d = keel_bulkhead_slot(b, "c", 1); /* evicts idle a */
    CHECK(d == a);
    keel_bulkhead_stats_t s;
    keel_bulkhead_stats(b, &s);
    CHECK(s.keys == 2 && s.evicted == 1 && s.in_use == 1 && s.rejected == 1);
    CHECK(keel_bulkhead_slot(b, "b", 1) == c);
    keel_bulkhead_free(b);
}

static void backoff(void) {
    keel_rand_t r;
    keel_rand_seed(&r, 1);
    CHECK(keel_backoff_delay(NULL, KEEL_BACKOFF_NONE, 100, 1000, 2, 1, 0) == 100);
    CHECK(keel_backoff_delay(NULL, KEEL_BACKOFF_NONE, 100, 1000, 2, 4, 0) == 800);
    CHECK(keel_backoff_delay(NULL, KEEL_BACKOFF_NONE, 100, 1000, 2, 5, 0) == 1000);
    CHECK(keel_backoff_delay(NULL, KEEL_BACKOFF_NONE, 100, 1000, 2, 1e9, 0) == 1000);
    CHECK(keel_backoff_delay(NULL, KEEL_BACKOFF_NONE, 0, 30000, 2, 1025, 0) == 0); /* 0 * inf */
    CHECK(keel_backoff_delay(&r, KEEL_BACKOFF_EQUAL, 0, 30000, 2, 1025, 0) == 0);
    CHECK(keel_backoff_delay(NULL, KEEL_BACKOFF_FULL, 100, 1000, 2, 1, 0) == -1);
    CHECK(keel_backoff_delay(&r, 9, 100, 1000, 2, 1, 0) == -1);
    CHECK(keel_backoff_delay(&r, KEEL_BACKOFF_FULL, 100, 50, 2, 1, 0) == -1);
    CHECK(keel_backoff_delay(&r, KEEL_BACKOFF_FULL, 100, 1000, 0.5, 1, 0) == -1);
    CHECK(keel_backoff_delay(&r, KEEL_BACKOFF_FULL, 100, 1000, 2, 0, 0) == -1);
    double prev = 0;
    for (int i = 1; i < 200; i++) {
        double f = keel_backoff_delay(&r, KEEL_BACKOFF_FULL, 100, 1000, 2, i, 0);
        double e = keel_backoff_delay(&r, KEEL_BACKOFF_EQUAL, 100, 1000, 2, i, 0);
        double d = keel_backoff_delay(&r, KEEL_BACKOFF_DECORRELATED, 100, 1000, 2, i, prev);
        double cap = fmin(1000, 100 * pow(2, i - 1));
        CHECK(f >= 0 && f <= cap);
        CHECK(e >= cap / 2 && e <= cap);
        CHECK(d >= 100 && d <= 1000 && d <= (prev > 0 ? prev * 3 : 300) + 1e-9);
        prev = d;
    }
}

int main(void) {
    breaker_count();
    breaker_time();
    breaker_modes();
    ratelimit();
    bulkhead();
    backoff();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
