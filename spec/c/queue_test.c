/* Randomised model test for runtime/keel_queue.c: every operation is mirrored
 * on a brute-force array model and the results compared. spec/queue_spec.lua
 * runs it (via spec/c/ctest.lua); by hand:
 *   cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -fsanitize=address,undefined \
 *      -Iruntime spec/c/queue_test.c runtime/keel_queue.c runtime/keel_rand.c \
 *      runtime/keel_clock.c -lm -o /tmp/queue_test && /tmp/queue_test
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "keel_clock.h"
#include "keel_queue.h"
#include "keel_rand.h"

#define CAP 64
enum { M_READY = 1, M_DELAYED, M_INFLIGHT };

typedef struct {
    double id, prio, deadline;
    long order;
    int state, attempt;
} mmsg;

static mmsg model[CAP];
static int nmodel;
static long order_ctr;
static int failures;

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

static int find(double id) {
    for (int i = 0; i < nmodel; i++) if (model[i].id == id) return i;
    return -1;
}

static void drop(int i) { model[i] = model[--nmodel]; }

static int best_ready(void) {
    int b = -1;
    for (int i = 0; i < nmodel; i++) {
        if (model[i].state != M_READY) continue;
        if (b < 0 || model[i].prio > model[b].prio ||
            (model[i].prio == model[b].prio && model[i].order < model[b].order)) b = i;
    }
    return b;
}

static int earliest(int state) {
    int b = -1;
    for (int i = 0; i < nmodel; i++) {
        if (model[i].state != state) continue;
        if (b < 0 || model[i].deadline < model[b].deadline ||
            (model[i].deadline == model[b].deadline && model[i].order < model[b].order)) b = i;
    }
    return b;
}

static void model_promote(keel_clock_t *c) {
    for (;;) {
        int i = earliest(M_DELAYED);
        if (i < 0 || model[i].deadline > c->now_ms) return;
        model[i].state = M_READY;
        model[i].order = order_ctr++;
    }
}

static void requeue(int i, double now, double delay) {
    model[i].order = order_ctr++;
    if (delay > 0) { model[i].state = M_DELAYED; model[i].deadline = now + delay; }
    else model[i].state = M_READY;
}

static void basic(void) {
    keel_clock_t c;
    keel_clock_init(&c, 1, 0);
    CHECK(keel_queue_new(&c, 0, 10, 1) == NULL);
    CHECK(keel_queue_new(&c, 1, 0, 1) == NULL);
    CHECK(keel_queue_new(&c, 1, NAN, 1) == NULL);
    CHECK(keel_queue_new(&c, 1, INFINITY, 1) == NULL);
    CHECK(keel_queue_new(&c, 1, 10, 0) == NULL);
    CHECK(keel_queue_new(NULL, 1, 10, 1) == NULL);
    keel_queue_t *q = keel_queue_new(&c, 3, 100, 2);
    if (!q) { failures++; fprintf(stderr, "keel_queue_new failed\n"); return; }
    CHECK(keel_queue_span(q) == 4.0);
    double a = keel_queue_push(q, 0, 0), b = keel_queue_push(q, 5, 0), d = keel_queue_push(q, 0, 10);
    CHECK(a > 0 && b > 0 && d > 0);
    CHECK(keel_queue_push(q, 0, 0) == KEEL_QUEUE_FULL);
    CHECK(keel_queue_pop(q, 0) == b);
    CHECK(keel_queue_pop(q, 0) == a);
    CHECK(keel_queue_pop(q, 0) == KEEL_QUEUE_EMPTY);
    CHECK(keel_queue_next_deadline(q) == 10.0);
    keel_clock_advance_to(&c, 10);
    CHECK(keel_queue_promote(q) == 1);
    CHECK(keel_queue_pop(q, 0) == d);
    CHECK(keel_queue_ack(q, a, 2) == KEEL_QUEUE_UNKNOWN);
    CHECK(keel_queue_ack(q, a, 1) == 0);
    CHECK(keel_queue_ack(q, a, 1) == KEEL_QUEUE_UNKNOWN);
    /* slot reuse gives a new id; the old id stays unknown */
    double e = keel_queue_push(q, 0, 0);
    CHECK(e != a && keel_queue_slot(q, e) == (int32_t)fmod(a, keel_queue_span(q)));
    CHECK(keel_queue_slot(q, a) == -1);
    CHECK(keel_queue_attempt(q, a) == -1 && keel_queue_attempt(q, e) == 0);
    /* garbage ids */
    double bad[] = {NAN, INFINITY, -INFINITY, -1, 0.5, 1e300, 9007199254740992.0, 0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(keel_queue_ack(q, bad[i], 1) == KEEL_QUEUE_UNKNOWN);
        CHECK(keel_queue_nack(q, bad[i], 1, 0, 0) == KEEL_QUEUE_UNKNOWN);
        CHECK(keel_queue_remove(q, bad[i]) == KEEL_QUEUE_UNKNOWN);
        CHECK(keel_queue_slot(q, bad[i]) == -1);
    }
    /* visibility expiry exactly at the deadline; exhaustion after 2 attempts */
    CHECK(keel_queue_next_expired(q) == KEEL_QUEUE_EMPTY);
    keel_clock_advance_to(&c, 100);
    CHECK(keel_queue_next_expired(q) == b);
    CHECK(keel_queue_nack(q, b, 1, 0, 1) == KEEL_QUEUE_REQUEUED);
    CHECK(keel_queue_pop(q, 0) == b && keel_queue_attempt(q, b) == 2);
    CHECK(keel_queue_nack(q, b, 2, 0, 0) == KEEL_QUEUE_EXHAUSTED);
    CHECK(keel_queue_attempt(q, b) == -1);
    keel_queue_stats_t st;
    keel_queue_stats(q, &st);
    CHECK(st.expired == 1 && st.nacked == 1 && st.exhausted == 1 && st.acked == 1);
    /* huge / non-finite delays do not overflow */
    CHECK(keel_queue_push(q, NAN, INFINITY) > 0);
    CHECK(keel_queue_push(q, -INFINITY, 1e308) == KEEL_QUEUE_FULL || 1);
    keel_queue_free(q);
    keel_queue_free(NULL);
}

static void randomised(uint64_t seed) {
    keel_clock_t c;
    keel_clock_init(&c, 1, 0);
    keel_rand_t r;
    keel_rand_seed(&r, seed);
    int max_attempts = (int)keel_rand_range(&r, 1, 4);
    keel_queue_t *q = keel_queue_new(&c, CAP, 50, max_attempts);
    if (!q) { failures++; fprintf(stderr, "keel_queue_new failed\n"); return; }
    nmodel = 0;
    double ids[CAP + 1];
    for (int step = 0; step < 20000; step++) {
        int op = (int)keel_rand_range(&r, 0, 9);
        if (op <= 2) {
            double prio = (double)keel_rand_range(&r, 0, 3);
            double delay = keel_rand_range(&r, 0, 3) == 0 ? (double)keel_rand_range(&r, 1, 40) : 0;
            double id = keel_queue_push(q, prio, delay);
            if (nmodel == CAP) { CHECK(id == KEEL_QUEUE_FULL); continue; }
            CHECK(id > 0 && find(id) < 0);
            mmsg m = {id, prio, 0, 0, 0, 0};
            model[nmodel++] = m;
            requeue(nmodel - 1, c.now_ms, delay);
        } else if (op <= 4) {
            int i = best_ready();
            double id = keel_queue_pop(q, 0);
            if (i < 0) { CHECK(id == KEEL_QUEUE_EMPTY); continue; }
            CHECK(id == model[i].id);
            model[i].state = M_INFLIGHT;
            model[i].attempt++;
            model[i].deadline = c.now_ms + 50;
            model[i].order = order_ctr++;
            CHECK(keel_queue_attempt(q, id) == model[i].attempt);
        } else if (op == 5 || op == 6) {
            if (nmodel == 0) continue;
            int i = (int)keel_rand_range(&r, 0, nmodel - 1);
            int att = model[i].attempt - (int)keel_rand_range(&r, 0, 1);
            int inflight = model[i].state == M_INFLIGHT && att == model[i].attempt;
            if (op == 5) {
                int rc = keel_queue_ack(q, model[i].id, att);
                CHECK(rc == (inflight ? 0 : KEEL_QUEUE_UNKNOWN));
                if (inflight) drop(i);
            } else {
                double delay = keel_rand_range(&r, 0, 1) ? 0 : 7;
                int rc = keel_queue_nack(q, model[i].id, att, delay, 0);
                if (!inflight) { CHECK(rc == KEEL_QUEUE_UNKNOWN); continue; }
                if (model[i].attempt >= max_attempts) { CHECK(rc == KEEL_QUEUE_EXHAUSTED); drop(i); }
                else { CHECK(rc == KEEL_QUEUE_REQUEUED); requeue(i, c.now_ms, delay); }
            }
        } else if (op == 7) {
            keel_clock_advance_to(&c, c.now_ms + (double)keel_rand_range(&r, 0, 15));
            int n = keel_queue_promote(q), before = 0;
            for (int i = 0; i < nmodel; i++) before += model[i].state == M_DELAYED;
            model_promote(&c);
            int after = 0;
            for (int i = 0; i < nmodel; i++) after += model[i].state == M_DELAYED;
            CHECK(n == before - after);
            for (;;) {
                double id = keel_queue_next_expired(q);
                int i = earliest(M_INFLIGHT);
                if (i < 0 || model[i].deadline > c.now_ms) { CHECK(id == KEEL_QUEUE_EMPTY); break; }
                CHECK(id == model[i].id);
                int rc = keel_queue_nack(q, id, model[i].attempt, 0, 1);
                if (model[i].attempt >= max_attempts) { CHECK(rc == KEEL_QUEUE_EXHAUSTED); drop(i); }
                else { CHECK(rc == KEEL_QUEUE_REQUEUED); requeue(i, c.now_ms, 0); }
            }
        } else if (op == 8) {
            if (nmodel == 0 || keel_rand_range(&r, 0, 3) != 0) continue;
            int i = (int)keel_rand_range(&r, 0, nmodel - 1);
            CHECK(keel_queue_remove(q, model[i].id) == 0);
            CHECK(keel_queue_remove(q, model[i].id) == KEEL_QUEUE_UNKNOWN);
            drop(i);
        } else {
            /* ready_ids must list ready messages in pop order */
            int n = keel_queue_ready_ids(q, ids, CAP + 1), k = 0;
            mmsg saved[CAP];
            int ns = nmodel;
            for (int i = 0; i < nmodel; i++) saved[i] = model[i];
            for (;;) {
                int i = best_ready();
                if (i < 0) break;
                CHECK(k < n && ids[k] == model[i].id);
                k++;
                model[i].state = 0;
            }
            CHECK(k == n);
            for (int i = 0; i < ns; i++) model[i] = saved[i];
        }
        keel_queue_stats_t st;
        keel_queue_stats(q, &st);
        int rd = 0, dl = 0, fl = 0;
        for (int i = 0; i < nmodel; i++) {
            rd += model[i].state == M_READY;
            dl += model[i].state == M_DELAYED;
            fl += model[i].state == M_INFLIGHT;
        }
        CHECK(st.ready == rd && st.delayed == dl && st.in_flight == fl);
        double nd = keel_queue_next_deadline(q);
        int a = earliest(M_DELAYED), b = earliest(M_INFLIGHT);
        double want = -1;
        if (a >= 0) want = model[a].deadline;
        if (b >= 0 && (want < 0 || model[b].deadline < want)) want = model[b].deadline;
        CHECK(nd == want);
        if (failures) { fprintf(stderr, "seed %llu step %d op %d\n", (unsigned long long)seed, step, op); break; }
    }
    keel_queue_free(q);
}

int main(void) {
    basic();
    for (uint64_t seed = 1; seed <= 40 && !failures; seed++) randomised(seed);
    printf(failures ? "queue_test: %d FAILED\n" : "queue_test: ok\n", failures);
    return failures ? 1 : 0;
}
