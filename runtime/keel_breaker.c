#include "keel_breaker.h"
#include <math.h>
#include <stdlib.h>

#define F_FAIL 1u
#define F_SLOW 2u

typedef struct {
    int64_t sec;
    int64_t calls, failures, slow;
} bucket_t;

struct keel_breaker {
    keel_clock_t *clock;
    int kind, state;
    int32_t size, min_calls, half_open_calls;
    double failure_rate, slow_ms, slow_rate, open_ms;
    double bucket_ms;        /* time window: width of one bucket */
    double max_half_open_ms; /* 0: HALF_OPEN waits for every probe */
    double half_open_until;
    int64_t consecutive;     /* consecutive window: failures in a row */

    /* running totals over the window */
    int64_t calls, failures, slow;
    uint8_t *ring;      /* count window: one outcome per call */
    int32_t head, filled;
    bucket_t *buckets;  /* time window: one bucket per bucket_ms */
    int64_t head_sec;

    int32_t ho_issued, ho_recorded, ho_failures, ho_slow;
    /* the sample that decided the last opening (the window, or the
     * half-open probes), reported while OPEN as Resilience4j does */
    int64_t open_calls, open_failures, open_slow;
    double opened_at, open_until;
    int32_t consecutive_opens;

    double t_calls, t_failures, t_slow, t_allowed, t_rejected, t_opened;
};

static int bad(double x) { return x != x; }

/* The clock's bucket number as an integer. Converting a double outside int64_t is
 * undefined behaviour, and a virtual clock can be slept to any value (even
 * inf): clamp to +-2^53 s, where doubles stop being exact anyway, so the
 * window arithmetic below can never overflow either. */
static int64_t bucket_of(const keel_breaker_t *b, double now_ms) {
    double s = floor(now_ms / b->bucket_ms);
    if (!(s < 9007199254740992.0)) return s != s ? 0 : INT64_C(9007199254740992);
    if (s < -9007199254740992.0) return -INT64_C(9007199254740992);
    return (int64_t)s;
}

keel_breaker_t *keel_breaker_new(keel_clock_t *clock, int window_kind, int32_t size,
                                 int32_t min_calls, double failure_rate, double slow_ms,
                                 double slow_rate, double open_ms, int32_t half_open_calls) {
    if (!clock) return NULL;
    if (window_kind != KEEL_BREAKER_WINDOW_COUNT && window_kind != KEEL_BREAKER_WINDOW_TIME &&
        window_kind != KEEL_BREAKER_WINDOW_CONSECUTIVE)
        return NULL;
    if (size < 1 || size > KEEL_BREAKER_MAX_SIZE || min_calls < 1 || half_open_calls < 1) return NULL;
    /* A 0% threshold would trip on success alone, so rates live in (0, 100]. */
    if (bad(failure_rate) || failure_rate <= 0 || failure_rate > 100) return NULL;
    if (bad(slow_rate) || slow_rate <= 0 || slow_rate > 100) return NULL;
    /* slow_ms = 0 makes every call slow; open_ms = 0 an open state that
     * never refuses anything (Resilience4j rejects both too). */
    if (bad(slow_ms) || slow_ms <= 0 || bad(open_ms) || open_ms <= 0) return NULL;

    keel_breaker_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->clock = clock;
    b->kind = window_kind;
    b->size = size;
    b->min_calls = (window_kind == KEEL_BREAKER_WINDOW_COUNT && min_calls > size) ? size : min_calls;
    b->half_open_calls = half_open_calls;
    b->failure_rate = failure_rate;
    b->slow_ms = slow_ms;
    b->slow_rate = slow_rate;
    b->open_ms = open_ms;
    b->bucket_ms = 1000;
    if (window_kind == KEEL_BREAKER_WINDOW_CONSECUTIVE) {
        b->min_calls = 1;
    } else if (window_kind == KEEL_BREAKER_WINDOW_COUNT) {
        b->ring = calloc((size_t)size, 1);
        if (!b->ring) { free(b); return NULL; }
    } else {
        b->buckets = calloc((size_t)size, sizeof *b->buckets);
        if (!b->buckets) { free(b); return NULL; }
        b->head_sec = bucket_of(b, clock->now_ms);
    }
    b->state = KEEL_BREAKER_CLOSED;
    return b;
}

void keel_breaker_free(keel_breaker_t *b) {
    if (!b) return;
    free(b->ring);
    free(b->buckets);
    free(b);
}

static void reset_window(keel_breaker_t *b) {
    b->calls = b->failures = b->slow = 0;
    b->consecutive = 0;
    if (b->ring) {
        for (int32_t i = 0; i < b->size; i++) b->ring[i] = 0;
        b->head = b->filled = 0;
    } else if (b->buckets) {
        for (int32_t i = 0; i < b->size; i++) b->buckets[i] = (bucket_t){0, 0, 0, 0};
        b->head_sec = bucket_of(b, b->clock->now_ms);
    }
}

static int32_t bucket_index(const keel_breaker_t *b, int64_t sec) {
    int64_t i = sec % b->size;
    return (int32_t)(i < 0 ? i + b->size : i);
}

/* Drops the buckets that fell out of the window; amortised O(1) since each
 * bucket is cleared at most once per bucket_ms of clock time. */
static void advance(keel_breaker_t *b) {
    double now = b->clock->now_ms;
    if (bad(now)) return;
    int64_t sec = bucket_of(b, now);
    if (sec <= b->head_sec) return; /* a clock that steps back records into the newest bucket */
    if (sec - b->head_sec >= b->size) {
        for (int32_t i = 0; i < b->size; i++) b->buckets[i] = (bucket_t){0, 0, 0, 0};
        b->calls = b->failures = b->slow = 0;
    } else {
        for (int64_t s = b->head_sec + 1; s <= sec; s++) {
            bucket_t *k = &b->buckets[bucket_index(b, s)];
            b->calls -= k->calls;
            b->failures -= k->failures;
            b->slow -= k->slow;
            *k = (bucket_t){s, 0, 0, 0};
        }
    }
    b->head_sec = sec;
}

static int tripped(const keel_breaker_t *b, int64_t calls, int64_t failures, int64_t slow) {
    return (double)failures * 100.0 >= b->failure_rate * (double)calls ||
           (double)slow * 100.0 >= b->slow_rate * (double)calls;
}

static void to_open(keel_breaker_t *b, int64_t calls, int64_t failures, int64_t slow) {
    b->open_calls = calls;
    b->open_failures = failures;
    b->open_slow = slow;
    b->state = KEEL_BREAKER_OPEN;
    b->opened_at = b->clock->now_ms;
    b->open_until = b->opened_at + b->open_ms;
    b->consecutive_opens++;
    b->t_opened++;
}

static void to_half_open(keel_breaker_t *b) {
    b->state = KEEL_BREAKER_HALF_OPEN;
    b->half_open_until = b->max_half_open_ms > 0 ? b->clock->now_ms + b->max_half_open_ms : INFINITY;
    b->ho_issued = b->ho_recorded = b->ho_failures = b->ho_slow = 0;
}

static void to_closed(keel_breaker_t *b) {
    b->state = KEEL_BREAKER_CLOSED;
    b->consecutive_opens = 0;
    reset_window(b);
}

/* A half-open round whose probes never all report back reopens at its
 * deadline (Resilience4j maxWaitDurationInHalfOpenState), judged on the
 * probes recorded so far. */
static void check_open_expiry(keel_breaker_t *b) {
    if (b->state == KEEL_BREAKER_OPEN && b->clock->now_ms >= b->open_until) to_half_open(b);
    else if (b->state == KEEL_BREAKER_HALF_OPEN && b->clock->now_ms >= b->half_open_until)
        to_open(b, b->ho_recorded, b->ho_failures, b->ho_slow);
}

int keel_breaker_state(keel_breaker_t *b) {
    check_open_expiry(b);
    return b->state;
}

int keel_breaker_allow(keel_breaker_t *b) {
    int ok;
    check_open_expiry(b);
    switch (b->state) {
    case KEEL_BREAKER_CLOSED:
    case KEEL_BREAKER_DISABLED:
        ok = 1;
        break;
    case KEEL_BREAKER_HALF_OPEN:
        ok = b->ho_issued < b->half_open_calls;
        if (ok) b->ho_issued++;
        break;
    default:
        ok = 0;
    }
    if (ok) b->t_allowed++;
    else b->t_rejected++;
    return (b->state << 1) | ok;
}

int keel_breaker_record(keel_breaker_t *b, int ok, double duration_ms) {
    if (b->state != KEEL_BREAKER_CLOSED && b->state != KEEL_BREAKER_HALF_OPEN) return b->state;
    unsigned f = (ok ? 0u : F_FAIL) | (duration_ms >= b->slow_ms ? F_SLOW : 0u);
    b->t_calls++;
    if (f & F_FAIL) b->t_failures++;
    if (f & F_SLOW) b->t_slow++;

    if (b->state == KEEL_BREAKER_HALF_OPEN) {
        b->ho_recorded++;
        b->ho_failures += (f & F_FAIL) != 0;
        b->ho_slow += (f & F_SLOW) != 0;
        if (b->ho_recorded >= b->half_open_calls) {
            if (tripped(b, b->ho_recorded, b->ho_failures, b->ho_slow))
                to_open(b, b->ho_recorded, b->ho_failures, b->ho_slow);
            else to_closed(b);
        }
        return b->state;
    }

    if (b->kind == KEEL_BREAKER_WINDOW_CONSECUTIVE) {
        /* a success ends the run; the window is the run itself */
        if (f) b->consecutive++;
        else b->consecutive = 0;
        b->calls = b->failures = b->consecutive;
        b->slow = 0;
        if (b->consecutive >= b->size) to_open(b, b->calls, b->failures, b->slow);
        return b->state;
    }
    if (b->ring) {
        uint8_t old = b->ring[b->head];
        if (b->filled == b->size) {
            b->calls--;
            b->failures -= (old & F_FAIL) != 0;
            b->slow -= (old & F_SLOW) != 0;
        } else {
            b->filled++;
        }
        b->ring[b->head] = (uint8_t)f;
        b->head = b->head + 1 == b->size ? 0 : b->head + 1;
    } else {
        advance(b);
        bucket_t *k = &b->buckets[bucket_index(b, b->head_sec)];
        k->calls++;
        k->failures += (f & F_FAIL) != 0;
        k->slow += (f & F_SLOW) != 0;
    }
    b->calls++;
    b->failures += (f & F_FAIL) != 0;
    b->slow += (f & F_SLOW) != 0;
    if (b->calls >= b->min_calls && tripped(b, b->calls, b->failures, b->slow))
        to_open(b, b->calls, b->failures, b->slow);
    return b->state;
}

int keel_breaker_cancel(keel_breaker_t *b) {
    if (b->state == KEEL_BREAKER_HALF_OPEN && b->ho_issued > b->ho_recorded) b->ho_issued--;
    return b->state;
}

int keel_breaker_force(keel_breaker_t *b, int state) {
    switch (state) {
    case KEEL_BREAKER_CLOSED: to_closed(b); break;
    case KEEL_BREAKER_OPEN:
        if (b->state == KEEL_BREAKER_HALF_OPEN) to_open(b, b->ho_recorded, b->ho_failures, b->ho_slow);
        else to_open(b, b->calls, b->failures, b->slow);
        break;
    case KEEL_BREAKER_HALF_OPEN: to_half_open(b); break;
    case KEEL_BREAKER_FORCED_OPEN: b->state = state; break;
    case KEEL_BREAKER_DISABLED: reset_window(b); b->state = state; break;
    default: return -1;
    }
    return b->state;
}

int keel_breaker_set_open_ms(keel_breaker_t *b, double ms) {
    if (b->state != KEEL_BREAKER_OPEN || bad(ms) || ms < 0) return -1;
    b->open_until = b->opened_at + ms;
    return 0;
}

int32_t keel_breaker_opens(const keel_breaker_t *b) { return b->consecutive_opens; }

int keel_breaker_set_bucket_ms(keel_breaker_t *b, double ms) {
    if (!b->buckets || bad(ms) || !(ms > 0) || ms > 1e12) return -1;
    b->bucket_ms = ms;
    reset_window(b);
    return 0;
}

int keel_breaker_set_max_half_open_ms(keel_breaker_t *b, double ms) {
    if (bad(ms) || ms < 0 || ms > 1e12) return -1;
    b->max_half_open_ms = ms;
    if (b->state == KEEL_BREAKER_HALF_OPEN)
        b->half_open_until = ms > 0 ? b->clock->now_ms + ms : INFINITY;
    return 0;
}

double keel_breaker_deadline(keel_breaker_t *b) {
    if (b->state == KEEL_BREAKER_OPEN) return b->open_until;
    if (b->state == KEEL_BREAKER_HALF_OPEN) return b->half_open_until;
    return INFINITY;
}

void keel_breaker_stats(keel_breaker_t *b, keel_breaker_stats_t *out) {
    if (b->buckets) advance(b);
    check_open_expiry(b);
    out->state = b->state;
    /* The window that decides the next transition (closed: the sliding
     * window; half_open: the probes recorded so far), or while open the
     * one that decided the last. */
    int64_t calls = b->calls, failures = b->failures, slow = b->slow;
    if (b->state == KEEL_BREAKER_HALF_OPEN) {
        calls = b->ho_recorded;
        failures = b->ho_failures;
        slow = b->ho_slow;
    } else if (b->state == KEEL_BREAKER_OPEN) {
        calls = b->open_calls;
        failures = b->open_failures;
        slow = b->open_slow;
    }
    out->window_calls = (double)calls;
    out->window_failures = (double)failures;
    out->window_slow = (double)slow;
    int ho = b->state == KEEL_BREAKER_HALF_OPEN;
    out->half_open_permits = ho ? b->half_open_calls - b->ho_issued : 0;
    out->probes_in_flight = ho ? b->ho_issued - b->ho_recorded : 0;
    out->consecutive_opens = b->consecutive_opens;
    out->calls = b->t_calls;
    out->failures = b->t_failures;
    out->slow = b->t_slow;
    out->allowed = b->t_allowed;
    out->rejected = b->t_rejected;
    out->opened = b->t_opened;
    out->open_until_ms = b->state == KEEL_BREAKER_OPEN ? b->open_until : 0;
}
