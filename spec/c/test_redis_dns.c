/* keel_redis with a resolver that hangs: the connect deadline must end the
 * wait for an address (commands issued meanwhile fail with a connect
 * timeout, nothing hangs), reconnecting must go on, and a client closed
 * while a resolution is still stuck on libuv's thread pool must be freed
 * once it returns. getaddrinfo is replaced in this program (libuv's call
 * binds to it): "slow.test" sleeps, anything else fails.
 * Prints "ok ..." or "FAIL ..." (exit 1). */
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "keel_redis.h"

static volatile int lookups;

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    (void)service;
    (void)hints;
    *res = NULL;
    lookups++;
    if (node && strcmp(node, "slow.test") == 0) usleep(1200 * 1000);
    return EAI_AGAIN;
}

static int ended, timeouts, freed;
static char last_err[256];

static void on_reply(void *ud, uint64_t id, const redisReply *r, int status, const char *err) {
    (void)ud; (void)id; (void)r;
    ended++;
    if (status == KEEL_REDIS_ECONN && err && strstr(err, "connect timeout")) timeouts++;
    snprintf(last_err, sizeof last_err, "%s", err ? err : "");
}

static void on_free(void *ud) { (void)ud; freed++; }

int main(void) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    keel_clock_t clock;
    keel_clock_init(&clock, 0, 0);
    keel_rand_t rnd;
    keel_rand_seed(&rnd, 1);
    keel_redis_opts_t o;
    memset(&o, 0, sizeof o);
    o.host = "slow.test";
    o.port = 6379;
    o.on_reply = on_reply;
    o.on_free = on_free;
    o.connect_timeout_ms = 100;
    o.backoff_base_ms = 1000;
    o.backoff_max_ms = 1000;
    keel_redis_t *r = keel_redis_new(&loop, &clock, &rnd, &o);
    const char *argv[1] = { "PING" };
    size_t lens[1] = { 4 };
    int accepted = 0;
    for (int i = 0; i < 5; i++) accepted += keel_redis_command(r, (uint64_t)i, 1, argv, lens, INFINITY) == KEEL_REDIS_OK;
    /* run the loop until the commands end; give up (and fail) after 3 s */
    uint64_t t0 = uv_hrtime();
    while (ended < accepted && uv_hrtime() - t0 < 3000000000ull) {
        keel_clock_update(&clock);
        uv_run(&loop, UV_RUN_ONCE);
    }
    double waited_ms = (double)(uv_hrtime() - t0) / 1e6;
    int failures = 0;
    if (accepted != 5) { printf("FAIL only %d commands accepted\n", accepted); failures++; }
    if (ended != accepted || timeouts != accepted) {
        printf("FAIL %d of %d commands ended, %d with a connect timeout (last: '%s')\n", ended, accepted, timeouts,
               last_err);
        failures++;
    }
    /* the deadline ended the wait, not the resolver returning */
    if (waited_ms >= 1100) { printf("FAIL the commands waited %.0f ms: the resolver (1200 ms), not the deadline, ended them\n", waited_ms); failures++; }
    if (keel_redis_state(r) != KEEL_REDIS_S_BACKOFF) {
        printf("FAIL state %d after the timeout, not backoff\n", keel_redis_state(r));
        failures++;
    }
    /* close while that resolution is still stuck on the thread pool */
    keel_redis_close(r);
    t0 = uv_hrtime();
    while (!freed && uv_hrtime() - t0 < 3000000000ull) uv_run(&loop, UV_RUN_ONCE);
    if (freed != 1) { printf("FAIL the client was not freed after close (%d)\n", freed); failures++; }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) { printf("FAIL handles left open on the loop\n"); failures++; }
    if (failures) return 1;
    printf("ok %d commands ended by the connect deadline after %.0f ms, %d lookups, freed after close\n",
           accepted, waited_ms, lookups);
    return 0;
}
