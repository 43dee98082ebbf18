/* Concurrent adds from host threads lose nothing: T threads each add 1..N
 * (and a few negatives) to their own shard or to a shared one, while the main
 * thread keeps reading and resetting. Prints "ok ..." lines or "FAIL ...". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "keel_counter.h"

typedef struct {
    keel_counter_t *c;
    uint32_t shard;
    long n;
} job_t;

static void *worker(void *arg) {
    job_t *j = arg;
    for (long i = 0; i < j->n; i++) {
        keel_counter_add(j->c, j->shard, 3);
        keel_counter_add(j->c, j->shard, -1);
    }
    return NULL;
}

static int run(uint32_t shards, int threads, long per_thread, int same_shard, int with_resets) {
    keel_counter_t *c = keel_counter_new(shards);
    if (!c) { printf("FAIL new(%u)\n", shards); return 1; }
    pthread_t tid[64];
    job_t jobs[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){ c, same_shard ? 0u : (uint32_t)t, per_thread };
        if (pthread_create(&tid[t], NULL, worker, &jobs[t])) { printf("FAIL pthread_create\n"); return 1; }
    }
    int64_t taken = 0;
    if (with_resets)
        for (int i = 0; i < 1000; i++) taken += keel_counter_reset(c);
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    int64_t total = taken + keel_counter_value(c);
    int64_t want = (int64_t)threads * per_thread * 2;
    keel_counter_free(c);
    if (total != want) {
        printf("FAIL shards=%u threads=%d same=%d resets=%d got %lld want %lld\n", shards, threads, same_shard,
               with_resets, (long long)total, (long long)want);
        return 1;
    }
    printf("ok shards=%u threads=%d same=%d resets=%d total=%lld\n", shards, threads, same_shard, with_resets,
           (long long)total);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long n = argc > 1 ? atol(argv[1]) : 200000;
    if (keel_counter_new(0) || keel_counter_new(KEEL_COUNTER_MAX_SHARDS + 1)) { printf("FAIL bad shards\n"); return 1; }
    keel_counter_t *c = keel_counter_new(1);
    keel_counter_add(c, 0, INT64_MAX);
    keel_counter_add(c, 7, 1); /* shard taken modulo: wraps to INT64_MIN, defined */
    if (keel_counter_value(c) != INT64_MIN) { printf("FAIL wrap\n"); return 1; }
    keel_counter_free(c);
    printf("ok wrap\n");
    if (run(8, 8, n, 0, 0) || run(8, 8, n, 1, 0) || run(3, 8, n, 0, 1) || run(1, 4, n, 0, 1)) return 1;
    printf("ok all\n");
    return 0;
}
