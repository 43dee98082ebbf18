/* Randomised check of keel_timers against a brute-force model: same pops in
 * the same order (deadline, then arming order), cancels, counts, next. */
#include "keel_timers.h"
#include "keel_rand.h"
#include <stdio.h>
#include <stdlib.h>

#define MAX 4096
typedef struct { int live; double deadline; long seq; } model_t;
static model_t model[1 << 16];
static int failures;
#define CHECK(c, ...) do { if (!(c)) { failures++; if (failures < 10) { printf("FAIL line %d: ", __LINE__); printf(__VA_ARGS__); printf("\n"); } } } while (0)

static int model_pop(double now) {
    int best = -1;
    for (int i = 0; i < (1 << 16); i++) {
        if (!model[i].live || model[i].deadline > now) continue;
        if (best < 0 || model[i].deadline < model[best].deadline ||
            (model[i].deadline == model[best].deadline && model[i].seq < model[best].seq)) best = i;
    }
    return best;
}

int main(int argc, char **argv) {
    int seeds = argc > 1 ? atoi(argv[1]) : 4;
    long checks = 0;
    for (int seed = 1; seed <= seeds; seed++) {
        keel_rand_t r;
        keel_rand_seed(&r, (uint64_t)seed);
        keel_timers_t *t = keel_timers_new();
        long seq = 0;
        int live = 0;
        double now = 0;
        for (int step = 0; step < 20000; step++) {
            int op = (int)keel_rand_range(&r, 0, 9);
            if (op < 5 && live < MAX) {
                /* Few distinct deadlines, so buckets are shared and emptied. */
                double d = now + (double)keel_rand_range(&r, 0, 20) * (keel_rand_range(&r, 0, 3) ? 1.0 : 0.5);
                int32_t id = keel_timers_add(t, d);
                CHECK(id >= 0 && id < (1 << 16) && !model[id].live, "add gave id %d", id);
                model[id] = (model_t){ 1, d, seq++ };
                live++;
            } else if (op < 7) {
                int32_t id = (int32_t)keel_rand_range(&r, -2, 300);
                int expect = id >= 0 && model[id].live ? 0 : -1;
                CHECK(keel_timers_cancel(t, id) == expect, "cancel %d", id);
                if (expect == 0) { model[id].live = 0; live--; }
            } else {
                now += (double)keel_rand_range(&r, 0, 4);
                for (;;) {
                    int want = model_pop(now);
                    int32_t got = keel_timers_pop_expired(t, now);
                    CHECK(got == want, "pop at %g: got %d want %d", now, got, want);
                    checks++;
                    if (got < 0 || got != want) break;
                    model[got].live = 0;
                    live--;
                }
            }
            CHECK(keel_timers_count(t) == live, "count %d vs %d", keel_timers_count(t), live);
            double next = -1;
            for (int i = 0; i < (1 << 16); i++)
                if (model[i].live && (next < 0 || model[i].deadline < next)) next = model[i].deadline;
            CHECK(keel_timers_next(t) == next, "next %g vs %g", keel_timers_next(t), next);
            checks += 2;
        }
        keel_timers_free(t);
        for (int i = 0; i < (1 << 16); i++) model[i].live = 0;
    }
    /* NaN is refused; -0.0 and 0.0 share a bucket in arming order. */
    keel_timers_t *t = keel_timers_new();
    CHECK(keel_timers_add(t, 0.0 / 0.0) == -1, "NaN accepted");
    int32_t a = keel_timers_add(t, 0.0), b = keel_timers_add(t, -0.0);
    CHECK(keel_timers_pop_expired(t, 0) == a && keel_timers_pop_expired(t, 0) == b, "signed zeros out of order");
    keel_timers_free(t);
    printf("%ld checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
