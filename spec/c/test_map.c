/* Unit test of runtime/keel_map against a naive model. Prints "ok <n>" per
 * passed check group and "FAIL ..." on the first failure (exit code 1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "keel_map.h"
#include "keel_rand.h"

static int checks;
#define CHECK(c) do { checks++; if (!(c)) { printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); return 1; } } while (0)

static int hook_calls[3];
static void hook(void *ud, keel_map_t *m, uint32_t slot, int reason) {
    (void)ud; (void)m; (void)slot;
    hook_calls[reason]++;
}

static int basics(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_map_t *m = keel_map_new(3, 8, KEEL_MAP_EVICT, &clock, 42);
    CHECK(m);
    keel_map_on_remove(m, hook, NULL);
    int ins;
    long *a = keel_map_put(m, "a", 1, &ins);
    CHECK(a && ins == 1 && *a == 0);
    *a = 7;
    CHECK(keel_map_put(m, "a", 1, &ins) == a && ins == 0 && *a == 7);
    CHECK(keel_map_get(m, "a", 1) == a);
    CHECK(keel_map_get(m, "b", 1) == NULL);
    CHECK(keel_map_put(m, "", 0, &ins) && ins == 1); /* empty key is a key */
    CHECK(keel_map_peek(m, "", 0) != NULL);
    CHECK(keel_map_put(m, "b", 1, &ins) && ins == 1);
    CHECK(keel_map_count(m) == 3 && keel_map_full(m));
    /* "a" was touched before "" and "b" were added: LRU order a, "", b; get("a") makes "" oldest */
    CHECK(keel_map_get(m, "a", 1) == a);
    CHECK(keel_map_put(m, "c", 1, &ins) && ins == 1);
    CHECK(keel_map_peek(m, "", 0) == NULL);
    CHECK(hook_calls[KEEL_MAP_EVICTED] == 1 && keel_map_evictions(m) == 1);
    CHECK(keel_map_slot(m, a) != KEEL_MAP_NIL);
    CHECK(keel_map_value(m, keel_map_slot(m, a)) == a);
    size_t len;
    const char *k = keel_map_key(m, keel_map_slot(m, a), &len);
    CHECK(k && len == 1 && k[0] == 'a');
    CHECK(keel_map_del(m, "a", 1) == 1 && keel_map_del(m, "a", 1) == 0);
    CHECK(hook_calls[KEEL_MAP_DELETED] == 1);
    CHECK(keel_map_count(m) == 2);
    /* long keys go out of line */
    char big[200];
    memset(big, 'x', sizeof big);
    CHECK(keel_map_put(m, big, sizeof big, &ins) && ins == 1);
    CHECK(keel_map_get(m, big, sizeof big) != NULL);
    CHECK(keel_map_get(m, big, sizeof big - 1) == NULL);
    CHECK(keel_map_put(m, big, KEEL_MAP_MAX_KEY + 1, &ins) == NULL);
    keel_map_clear(m);
    CHECK(keel_map_count(m) == 0 && keel_map_oldest(m) == KEEL_MAP_NIL);
    keel_map_free(m);
    /* bad arguments */
    CHECK(keel_map_new(0, 8, 0, NULL, 0) == NULL);
    CHECK(keel_map_new(4, 1u << 20, 0, NULL, 0) == NULL);
    keel_map_free(NULL);
    printf("ok basics\n");
    return 0;
}

static int full_no_evict(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_map_t *m = keel_map_new(2, 0, 0, &clock, 1);
    int ins;
    uint32_t s1 = keel_map_slot(m, keel_map_put(m, "1", 1, &ins));
    CHECK(keel_map_put(m, "2", 1, &ins));
    CHECK(keel_map_put(m, "3", 1, &ins) == NULL && keel_map_full(m));
    CHECK(keel_map_set_expiry(m, s1, 10) == 0);
    CHECK(keel_map_next_expiry(m) == 10);
    keel_clock_advance_to(&clock, 9.999);
    CHECK(keel_map_put(m, "3", 1, &ins) == NULL);
    CHECK(keel_map_peek(m, "1", 1) != NULL);
    keel_clock_advance_to(&clock, 10); /* dead exactly at the deadline */
    CHECK(keel_map_peek(m, "1", 1) == NULL);
    CHECK(keel_map_count(m) == 1 && keel_map_expirations(m) == 1);
    uint32_t s2 = keel_map_find(m, "2", 1);
    CHECK(keel_map_set_expiry(m, s2, 20) == 0);
    CHECK(keel_map_put(m, "3", 1, &ins) && ins);
    CHECK(keel_map_put(m, "4", 1, &ins) == NULL);
    keel_clock_advance_to(&clock, 20);
    CHECK(keel_map_put(m, "4", 1, &ins) && ins); /* expired "2" reclaimed, not evicted */
    CHECK(keel_map_evictions(m) == 0 && keel_map_expirations(m) == 2);
    /* clearing an expiry */
    uint32_t s4 = keel_map_find(m, "4", 1);
    CHECK(keel_map_set_expiry(m, s4, 25) == 0 && keel_map_set_expiry(m, s4, INFINITY) == 0);
    keel_clock_advance_to(&clock, 30);
    CHECK(keel_map_peek(m, "4", 1) != NULL && keel_map_expiry(m, s4) == INFINITY);
    CHECK(keel_map_set_expiry(m, 99, 1) == -1);
    keel_map_free(m);
    /* no clock: expiry refused */
    m = keel_map_new(2, 0, 0, NULL, 1);
    CHECK(keel_map_set_expiry(m, keel_map_slot(m, keel_map_put(m, "x", 1, &ins)), 5) == -1);
    keel_map_free(m);
    printf("ok full_no_evict\n");
    return 0;
}

/* Random operations against a brute-force model with the same semantics. */
#define NK 300
typedef struct { int present; long v; double exp; unsigned long stamp; } model_t;

static int randomized(uint64_t seed, uint32_t max) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    keel_rand_t r;
    keel_rand_seed(&r, seed);
    keel_map_t *m = keel_map_new(max, sizeof(long), KEEL_MAP_EVICT, &clock, seed);
    model_t md[NK];
    memset(md, 0, sizeof md);
    unsigned long stamp = 0;
    char key[40];
    for (int step = 0; step < 60000; step++) {
        int k = (int)keel_rand_range(&r, 0, NK - 1);
        /* long and short keys share the same space */
        int klen = snprintf(key, sizeof key, k % 3 ? "k%d" : "a-much-longer-key-%d-xxxxxx", k);
        double now = clock.now_ms;
        int alive = md[k].present && !(now >= md[k].exp);
        int op = (int)keel_rand_range(&r, 0, 9);
        if (op < 4) { /* get */
            long *v = keel_map_get(m, key, (size_t)klen);
            CHECK((v != NULL) == alive);
            if (!alive) md[k].present = 0;
            if (v) { CHECK(*v == md[k].v); md[k].stamp = ++stamp; }
        } else if (op < 7) { /* put */
            long *v = keel_map_put(m, key, (size_t)klen, NULL);
            CHECK(v);
            if (alive) {
                CHECK(*v == md[k].v);
            } else {
                CHECK(*v == 0);
                /* model: drop the dead, then if full take expired first, else LRU */
                md[k].present = 0;
                int n = 0;
                for (int i = 0; i < NK; i++) if (md[i].present) n++;
                (void)n;
                md[k].present = 1;
                md[k].exp = INFINITY;
                md[k].v = 0;
            }
            *v = keel_rand_range(&r, 1, 1000000);
            md[k].v = *v;
            md[k].stamp = ++stamp;
            if (keel_rand_range(&r, 0, 3) == 0) {
                double e = now + (double)keel_rand_range(&r, 0, 50);
                CHECK(keel_map_set_expiry(m, keel_map_slot(m, v), e) == 0);
                md[k].exp = e;
            }
        } else if (op < 8) { /* del */
            CHECK(keel_map_del(m, key, (size_t)klen) == alive);
            md[k].present = 0;
        } else { /* time passes */
            keel_clock_advance_to(&clock, now + (double)keel_rand_range(&r, 0, 3));
        }
        /* reconcile the model with evictions/expirations the map made:
         * every map entry must be in the model with the same value, and the
         * model may only hold extra entries that the map was allowed to drop */
        if (step % 97 == 0) {
            uint32_t cnt = 0;
            for (uint32_t s = keel_map_oldest(m); s != KEEL_MAP_NIL; s = keel_map_newer(m, s)) cnt++;
            CHECK(cnt == keel_map_count(m));
            CHECK(keel_map_count(m) <= max);
            for (int i = 0; i < NK; i++) {
                klen = snprintf(key, sizeof key, i % 3 ? "k%d" : "a-much-longer-key-%d-xxxxxx", i);
                uint32_t s = keel_map_find(m, key, (size_t)klen);
                int live = md[i].present && !(clock.now_ms >= md[i].exp);
                if (s != KEEL_MAP_NIL) {
                    CHECK(live);
                    CHECK(*(long *)keel_map_value(m, s) == md[i].v);
                    CHECK(keel_map_expiry(m, s) == md[i].exp);
                } else {
                    md[i].present = 0; /* evicted or expired */
                }
            }
        } else if (op >= 4 && op < 7) {
            /* a put may evict or reclaim other entries: resync presence */
            for (int i = 0; i < NK; i++) {
                if (!md[i].present) continue;
                klen = snprintf(key, sizeof key, i % 3 ? "k%d" : "a-much-longer-key-%d-xxxxxx", i);
                if (!keel_map_value(m, keel_map_find(m, key, (size_t)klen))) md[i].present = 0;
            }
        }
        /* heap top is never later than any live entry's expiry */
        double next = keel_map_next_expiry(m);
        for (int i = 0; i < NK && step % 1001 == 0; i++)
            if (md[i].present) CHECK(md[i].exp >= next);
    }
    keel_map_free(m);
    printf("ok randomized seed=%llu max=%u\n", (unsigned long long)seed, max);
    return 0;
}

/* LRU victim is exactly the least recently used live entry. */
static int lru_order(void) {
    keel_map_t *m = keel_map_new(100, 0, KEEL_MAP_EVICT, NULL, 7);
    char key[16];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof key, "%d", i);
        CHECK(keel_map_put(m, key, (size_t)n, NULL));
    }
    for (int i = 0; i < 100; i += 2) { /* touch evens: odds become oldest */
        int n = snprintf(key, sizeof key, "%d", i);
        CHECK(keel_map_get(m, key, (size_t)n));
    }
    for (int i = 100; i < 150; i++) {
        int n = snprintf(key, sizeof key, "%d", i);
        CHECK(keel_map_put(m, key, (size_t)n, NULL));
    }
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof key, "%d", i);
        CHECK((keel_map_peek(m, key, (size_t)n) != NULL) == (i % 2 == 0));
    }
    keel_map_free(m);
    printf("ok lru_order\n");
    return 0;
}

/* Small maps: exact LRU, a hit before a later insert does not protect. Big
 * maps: second chance, a hit since the last pass does. */
static int lru_modes(void) {
    keel_map_t *m = keel_map_new(2, 0, KEEL_MAP_EVICT, NULL, 9);
    CHECK(keel_map_put(m, "a", 1, NULL) && keel_map_put(m, "a", 1, NULL));
    CHECK(keel_map_put(m, "b", 1, NULL) && keel_map_put(m, "c", 1, NULL));
    CHECK(keel_map_peek(m, "a", 1) == NULL && keel_map_peek(m, "b", 1) && keel_map_peek(m, "c", 1));
    keel_map_free(m);
    uint32_t n = 20000;
    m = keel_map_new(n, 0, KEEL_MAP_EVICT, NULL, 9);
    char key[16];
    for (uint32_t i = 0; i < n; i++) {
        int l = snprintf(key, sizeof key, "%u", i);
        CHECK(keel_map_put(m, key, (size_t)l, NULL));
    }
    for (uint32_t i = 0; i < n; i += 3) { /* mark every third */
        int l = snprintf(key, sizeof key, "%u", i);
        CHECK(keel_map_get(m, key, (size_t)l));
    }
    for (uint32_t i = 0; i < n / 2; i++) { /* evict n/2: all unmarked go before any marked */
        int l = snprintf(key, sizeof key, "new%u", i);
        CHECK(keel_map_put(m, key, (size_t)l, NULL));
    }
    for (uint32_t i = 0; i < n; i++) {
        int l = snprintf(key, sizeof key, "%u", i);
        if (i % 3 == 0) CHECK(keel_map_peek(m, key, (size_t)l) != NULL);
    }
    CHECK(keel_map_count(m) == n && keel_map_evictions(m) == n / 2);
    keel_map_free(m);
    printf("ok lru_modes\n");
    return 0;
}

static int big(void) {
    keel_clock_t clock;
    keel_clock_init(&clock, 1, 0);
    uint32_t n = 200000;
    keel_map_t *m = keel_map_new(n, 8, KEEL_MAP_EVICT, &clock, 3);
    char key[32];
    for (uint32_t i = 0; i < n; i++) {
        int l = snprintf(key, sizeof key, "key-%u", i);
        void *v = keel_map_put(m, key, (size_t)l, NULL);
        CHECK(v);
        CHECK(keel_map_set_expiry(m, keel_map_slot(m, v), 1.0 + (double)(i % 1000)) == 0);
    }
    CHECK(keel_map_count(m) == n);
    double per = keel_map_bytes(m) / n;
    CHECK(per <= 128);
    keel_clock_advance_to(&clock, 500);
    CHECK(keel_map_expire(m, UINT32_MAX) == n / 2);
    CHECK(keel_map_next_expiry(m) == 501);
    keel_map_free(m);
    printf("ok big bytes_per_entry=%.1f\n", per);
    return 0;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (basics() || full_no_evict() || lru_order() || lru_modes() || big()) return 1;
    if (randomized(1, 50) || randomized(2, 300) || randomized(3, 7) || randomized(4, 1)) return 1;
    printf("ok all %d checks\n", checks);
    return 0;
}
