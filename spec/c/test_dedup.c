/* Test of runtime/keel_dedup against a naive model: an ordered list of the
 * remembered keys (oldest mark first) with the documented rules applied
 * literally. Randomized seen/forget/size/clear/clock moves over small max so
 * evictions, backward shifts, dead ring entries, ring compaction and growth all happen, with and without
 * ttl, over short, long (> 16 bytes) and binary keys. Prints "ok ..." per
 * group, "ok all" at the end, "FAIL ..." on the first failure (exit 1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "keel_dedup.h"

static int checks;
#define CHECK(c) do { checks++; if (!(c)) { printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); return 1; } } while (0)
#define CHECKF(c, ...) do { checks++; if (!(c)) { printf("FAIL %s:%d %s: ", __FILE__, __LINE__, #c); \
    printf(__VA_ARGS__); printf("\n"); return 1; } } while (0)

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(uint32_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* Key number i in one of three shapes: short text, long text, binary with NULs. */
static size_t make_key(int i, char *buf) {
    switch (i % 3) {
    case 0: return (size_t)sprintf(buf, "k%d", i);
    case 1: return (size_t)sprintf(buf, "a-long-key-over-sixteen-bytes-%d", i);
    default:
        buf[0] = 0;
        buf[1] = (char)(i & 0xff);
        buf[2] = 0;
        buf[3] = (char)((i >> 8) & 0xff);
        buf[4] = 0;
        return 5;
    }
}

typedef struct { int key; double exp; int ref; } entry_t;
typedef struct {
    entry_t *e;
    int n, max;
    double ttl;
    double hits, marks, evictions, expirations;
} model_t;

static int m_find(const model_t *m, int key) {
    for (int i = 0; i < m->n; i++)
        if (m->e[i].key == key) return i;
    return -1;
}

static void m_remove(model_t *m, int i) {
    memmove(&m->e[i], &m->e[i + 1], (size_t)(m->n - i - 1) * sizeof *m->e);
    m->n--;
}

static void m_expire(model_t *m, double now) {
    if (m->ttl <= 0) return;
    while (m->n && now >= m->e[0].exp) {
        m_remove(m, 0);
        m->expirations++;
    }
}

static int m_seen(model_t *m, int key, double now) {
    m_expire(m, now);
    int i = m_find(m, key);
    if (i >= 0) {
        if (m->ttl <= 0) m->e[i].ref = 1;
        m->hits++;
        return 1;
    }
    if (m->n >= m->max) {
        for (;;) {
            entry_t head = m->e[0];
            m_remove(m, 0);
            if (m->ttl <= 0 && head.ref) {
                head.ref = 0;
                m->e[m->n++] = head;
                continue;
            }
            m->evictions++;
            break;
        }
    }
    m->e[m->n++] = (entry_t){ key, m->ttl > 0 ? now + m->ttl : INFINITY, 0 };
    m->marks++;
    return 0;
}

static int m_forget(model_t *m, int key, double now) {
    m_expire(m, now);
    int i = m_find(m, key);
    if (i < 0) return 0;
    m_remove(m, i);
    return 1;
}

/* The implementation's table size at max keys (0.4 load, even, >= 16). */
static uint32_t cap_slots(uint32_t max) {
    uint32_t n = (uint32_t)ceil(max / 0.4) + 1;
    n = (n + 1) & ~1u;
    return n < 16 ? 16 : n;
}

static double long_bytes(const model_t *m) {
    double b = 0;
    char buf[64];
    for (int i = 0; i < m->n; i++) {
        size_t len = make_key(m->e[i].key, buf);
        if (len > 16) b += (double)len;
    }
    return b;
}

static int same_counters(keel_dedup_t *d, const model_t *m) {
    CHECKF(keel_dedup_size(d) == (uint32_t)m->n, "size %u model %d", keel_dedup_size(d), m->n);
    CHECK(keel_dedup_hits(d) == m->hits);
    CHECK(keel_dedup_marks(d) == m->marks);
    CHECKF(keel_dedup_evictions(d) == m->evictions, "evictions %g model %g", keel_dedup_evictions(d), m->evictions);
    CHECK(keel_dedup_expirations(d) == m->expirations);
    double table = keel_dedup_bytes(d) - long_bytes(m);
    double per_slot = m->ttl > 0 ? 44 : 36; /* slot + ring entry (+ its expiry) */
    /* while growing, the old table is there too: at most the size before the last growth */
    uint32_t cap = cap_slots((uint32_t)m->max), old_max = 0;
    for (uint32_t n = 16; n < cap; n = n >= cap / 4 ? cap : n * 4) old_max = n;
    CHECKF(table >= 16 * per_slot && table <= per_slot * cap + 32.0 * old_max + 512, "bytes %g", table);
    return 0;
}

static int run_model(uint32_t max, double ttl, int ops, int universe) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_dedup_t *d = keel_dedup_new(max, ttl, &clock, rng);
    CHECK(d);
    model_t m = { calloc(max + 1, sizeof(entry_t)), 0, (int)max, ttl, 0, 0, 0, 0 };
    char buf[64];
    int recent = 0;
    for (int op = 0; op < ops; op++) {
        int r = (int)rnd(100), key = (int)rnd((uint32_t)universe);
        if (r < 15 && m.n) key = recent; /* re-mark or forget what was just marked */
        size_t len = make_key(key, buf);
        if (r < 55) {
            int got = keel_dedup_seen(d, buf, len), want = m_seen(&m, key, clock.now_ms);
            CHECKF(got == want, "op %d seen(%d) = %d, model %d (max %u ttl %g)", op, key, got, want, max, ttl);
            recent = key;
        } else if (r < 80) {
            int got = keel_dedup_forget(d, buf, len), want = m_forget(&m, key, clock.now_ms);
            CHECKF(got == want, "op %d forget(%d) = %d, model %d (max %u ttl %g)", op, key, got, want, max, ttl);
        } else if (r < 92) {
            /* sometimes exactly onto a deadline, which must already count as expired */
            double to = clock.now_ms + (ttl > 0 ? rnd(3) == 0 && m.n ? m.e[0].exp - clock.now_ms
                                                                     : rnd((uint32_t)ttl / 2 + 1)
                                                : rnd(100));
            CHECK(keel_clock_advance_to(&clock, to) == 0);
        } else if (r < 99) {
            m_expire(&m, clock.now_ms);
            if (same_counters(d, &m)) return 1;
        } else if (rnd(10) == 0) {
            keel_dedup_clear(d);
            m.n = 0;
        }
        m_expire(&m, clock.now_ms);
        /* not after every op: size() settles an eviction an insert at max
         * left owed, and seen/forget must settle it the same way */
        if (rnd(4) == 0)
            CHECKF(keel_dedup_size(d) == (uint32_t)m.n, "op %d size %u model %d", op, keel_dedup_size(d), m.n);
    }
    m_expire(&m, clock.now_ms);
    if (same_counters(d, &m)) return 1;
    /* every key the model holds is still there, in the model's eviction order */
    for (int i = 0; i < m.n; i++) {
        size_t len = make_key(m.e[i].key, buf);
        CHECK(keel_dedup_forget(d, buf, len) == 1);
    }
    CHECK(keel_dedup_size(d) == 0);
    keel_dedup_free(d);
    free(m.e);
    return 0;
}

static int models(void) {
    static const uint32_t maxes[] = { 1, 2, 3, 5, 8, 11, 17, 40, 100, 300 };
    for (size_t i = 0; i < sizeof maxes / sizeof *maxes; i++) {
        uint32_t max = maxes[i];
        int universe = (int)(max * 3 + 4);
        if (run_model(max, 0, 20000, universe)) return 1;
        if (run_model(max, 50, 20000, universe)) return 1;
        if (run_model(max, 1, 5000, universe)) return 1;
        if (run_model(max, 0, 5000, (int)max + 1)) return 1; /* mostly hits: second chance at work */
    }
    printf("ok model\n");
    return 0;
}

/* Forgetting and re-marking one key leaves a dead mark-order entry each
 * time; they must be reclaimed (by compacting the ring) without growth. */
static int churn(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_dedup_t *d = keel_dedup_new(1000, 0, &clock, 7);
    CHECK(d);
    double start = keel_dedup_bytes(d);
    for (int i = 0; i < 100000; i++) {
        CHECK(keel_dedup_seen(d, "again", 5) == 0);
        CHECK(keel_dedup_seen(d, "again", 5) == 1);
        CHECK(keel_dedup_forget(d, "again", 5) == 1);
    }
    CHECK(keel_dedup_size(d) == 0);
    CHECK(keel_dedup_bytes(d) == start); /* never grew past the 16-slot start */
    keel_dedup_free(d);
    printf("ok churn\n");
    return 0;
}

/* Full at max, the table plus ring stays within 128 bytes per key for any max. */
static int memory(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    char buf[32];
    static const uint32_t maxes[] = { 16, 19, 20, 39, 40, 1000, 1229, 1230, 4915, 4916, 9830, 9831, 20000, 100000 };
    for (size_t i = 0; i < sizeof maxes / sizeof *maxes; i++) {
        uint32_t max = maxes[i];
        keel_dedup_t *d = keel_dedup_new(max, 0, &clock, i);
        CHECK(d);
        for (uint32_t k = 0; k < 2 * max; k++) CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "m%u", k)) == 0);
        CHECK(keel_dedup_size(d) == max);
        CHECKF(keel_dedup_bytes(d) / max <= 128, "max %u: %g bytes per key", max, keel_dedup_bytes(d) / max);
        /* the newest max keys survived (no hits, so second chance is plain FIFO) */
        for (uint32_t k = max; k < 2 * max; k++) CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "m%u", k)) == 1);
        keel_dedup_free(d);
    }
    printf("ok memory\n");
    return 0;
}

/* Big enough that tables and the ring are mapped: growth moves keys over
 * a chunk per call while keys arrive and expire, new tables are prefaulted
 * and old ones unmapped piecemeal, and ring pages behind the head are
 * released and reused. Keys come 10 per virtual ms with a 30 s ttl (so
 * ttl expires them before max is reached), then, once all of those have
 * expired, 1000 per ms (so max evicts); size and membership are exact at
 * every check. */
static int big(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    const uint32_t max = 250000;
    const double ttl = 30000;
    char buf[32];
    /* right after a growth starts, most keys are still in the old table:
     * forgetting some leaves marks on the others' probe paths there, which
     * lookups must step over */
    keel_dedup_t *d = keel_dedup_new(max, 0, &clock, 10);
    CHECK(d);
    const uint32_t grown = 104858; /* past 0.4 of 262144 slots: the growth to 625000 starts */
    for (uint32_t i = 0; i <= grown; i++) CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "g%u", i)) == 0);
    for (uint32_t i = 0; i < grown; i += 7) CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "g%u", i)) == 1);
    for (uint32_t i = 0; i <= grown; i++)
        CHECKF(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "g%u", i)) == (i % 7 != 0 || i == grown), "g%u", i);
    keel_dedup_free(d);
    d = keel_dedup_new(max, ttl, &clock, 11);
    CHECK(d);
    uint32_t k = 0;
    for (int phase = 0; phase < 2; phase++) {
        uint32_t per_ms = phase == 0 ? 10 : 1000, total = phase == 0 ? 1200000 : 1500000;
        uint32_t first = k;
        if (phase == 1) { /* every phase-0 key expires first */
            CHECK(keel_clock_advance_to(&clock, clock.now_ms + ttl) == 0);
            CHECK(keel_dedup_size(d) == 0);
        }
        for (uint32_t i = 0; i < total; i++, k++) {
            if (i % per_ms == 0) CHECK(keel_clock_advance_to(&clock, clock.now_ms + 1) == 0);
            CHECKF(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "b%u", k)) == 0, "key %u", k);
            if (i % 9973 != 0 || i == 0) continue;
            /* live: the keys marked in the last ttl ms of this phase, at most max */
            double in_window = floor((ttl - 1) * per_ms) + (double)(i % per_ms) + 1;
            uint32_t want = (uint32_t)fmin(fmin(in_window, (double)(k - first + 1)), (double)max);
            CHECKF(keel_dedup_size(d) == want, "phase %d key %u: size %u, want %u", phase, k,
                   keel_dedup_size(d), want);
            /* the newest is there, the one just older than the live ones is not */
            CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "b%u", k)) == 1);
            CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "b%u", k)) == 0);
            if (k + 1 > want) CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "b%u", k - want)) == 0);
            /* keys across the live ones are found, wherever a growth has them */
            for (uint32_t j = 1; j < want; j += want / 64 + 1)
                CHECKF(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "b%u", k - j)) == 1, "key %u at %u", k - j, k);
        }
    }
    /* forgetting as many as arrive fills the ring with forgotten entries
     * until it compacts; pages behind its head must not be released while
     * live entries wrap round into them */
    keel_clock_init(&clock, 1, 0);
    keel_dedup_free(d);
    d = keel_dedup_new(max, 0, &clock, 12);
    CHECK(d);
    for (k = 0; k < max; k++) CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "c%u", k)) == 0);
    for (uint32_t i = 0; i < 2000000; i++, k++) {
        CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "c%u", k)) == 0); /* evicts c(k - max) */
        for (int x = 0; x < 3; x++) { /* three forgotten entries per live one */
            CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "x%u.%d", i, x)) == 0);
            CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "x%u.%d", i, x)) == 1);
        }
        if (i % 99991 == 0) {
            /* only c keys are live: the newest of them, as many as size says */
            uint32_t live = keel_dedup_size(d);
            CHECK(live + 1 >= max && live <= max);
            for (uint32_t j = 0; j < live; j += 997)
                CHECKF(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "c%u", k - j)) == 1, "c%u at %u", k - j, k);
            CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "c%u", k - live)) == 0);
            for (uint32_t j = 0; j < live; j += 997)
                CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "c%u", k - j)) == 0);
        }
    }
    /* once most keys are gone the table shrinks, step by step, and keeps the rest */
    keel_dedup_free(d);
    d = keel_dedup_new(max, 0, &clock, 13);
    CHECK(d);
    for (k = 0; k < max; k++) CHECK(keel_dedup_seen(d, buf, (size_t)sprintf(buf, "s%u", k)) == 0);
    double full = keel_dedup_bytes(d);
    for (k = 100; k < max; k++) CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "s%u", k)) == 1);
    for (int round = 0; round < 200000; round++) CHECK(keel_dedup_size(d) == 100);
    CHECKF(keel_dedup_bytes(d) < full / 100, "bytes %g after shrinking, %g full", keel_dedup_bytes(d), full);
    for (k = 0; k < max; k++) CHECK(keel_dedup_forget(d, buf, (size_t)sprintf(buf, "s%u", k)) == (k < 100));
    keel_dedup_free(d);
    printf("ok big\n");
    return 0;
}

static int edges(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    CHECK(keel_dedup_new(0, 0, &clock, 1) == NULL);
    CHECK(keel_dedup_new(UINT32_MAX, 0, &clock, 1) == NULL);
    CHECK(keel_dedup_new(5, 0, NULL, 1) == NULL);
    keel_dedup_t *d = keel_dedup_new(5, NAN, &clock, 1);
    CHECK(d);
    CHECK(keel_dedup_seen(d, NULL, 0) == 0); /* the empty key */
    CHECK(keel_dedup_seen(d, "", 0) == 1);
    static char big[65536];
    memset(big, 'x', sizeof big);
    CHECK(keel_dedup_seen(d, big, 65536) == -1);
    CHECK(keel_dedup_forget(d, big, 65536) == 0);
    CHECK(keel_dedup_seen(d, big, 65535) == 0);
    CHECK(keel_dedup_seen(d, big, 65535) == 1);
    CHECK(keel_dedup_seen(d, big, 65534) == 0);
    CHECK(keel_dedup_size(d) == 3);
    CHECK(keel_clock_advance_to(&clock, 1e12) == 0);
    CHECK(keel_dedup_size(d) == 3); /* NaN ttl: never expires */
    keel_dedup_clear(d);
    CHECK(keel_dedup_size(d) == 0 && keel_dedup_seen(d, big, 65535) == 0);
    keel_dedup_free(d);
    keel_dedup_free(NULL);
    printf("ok edges\n");
    return 0;
}

int main(void) {
    if (edges() || churn() || memory() || big() || models()) return 1;
    printf("ok all (%d checks)\n", checks);
    return 0;
}
