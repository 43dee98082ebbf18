/* keel_redis against a peer that resets the connection mid-pipeline (43
 * times, with big commands half written): every command accepted must end
 * with exactly one on_reply, and reconnecting must go on working. It runs
 * with SIGPIPE at its default disposition, as an embedding host may leave
 * it, so a write path that raised SIGPIPE would kill it (keel_redis writes
 * with MSG_NOSIGNAL). Prints "ok ..." or "FAIL ..." (exit 1). */
#include <math.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include "keel_redis.h"

static int replies, failures;

static void on_reply(void *ud, uint64_t id, const redisReply *r, int status, const char *err) {
    (void)ud; (void)id; (void)r; (void)err;
    if (status == KEEL_REDIS_OK) replies++;
    else failures++;
}

int main(void) {
    signal(SIGPIPE, SIG_DFL); /* the spec runner ignores it, and children inherit that */
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (void *)&a, sizeof a) || listen(ls, 16) || getsockname(ls, (void *)&a, &al)) {
        printf("FAIL cannot listen\n");
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    keel_clock_t clock;
    keel_clock_init(&clock, 0, 0);
    keel_rand_t rnd;
    keel_rand_seed(&rnd, 1);
    keel_redis_opts_t o;
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1";
    o.port = ntohs(a.sin_port);
    o.on_reply = on_reply;
    o.connect_timeout_ms = 1000;
    o.backoff_base_ms = 1;
    o.backoff_max_ms = 2;
    keel_redis_t *r = keel_redis_new(&loop, &clock, &rnd, &o);
    /* the client's own timers never keep a loop alive (the runtime's do):
     * this one lets UV_RUN_NOWAIT run its reconnect backoff */
    uv_timer_t keepalive;
    uv_timer_init(&loop, &keepalive);
    uv_timer_start(&keepalive, (uv_timer_cb)uv_timer_stop, 1000000, 0);
    static char big[60000];
    memset(big, 'x', sizeof big);
    const char *argv[3] = { "SET", "k", big };
    size_t lens[3] = { 3, 1, sizeof big };
    int accepted = 0, resets = 0;
    for (int round = 0; round < 300; round++) {
        for (int i = 0; i < 4; i++)
            if (keel_redis_command(r, (uint64_t)round, 3, argv, lens, INFINITY) == KEEL_REDIS_OK) accepted++;
        keel_clock_update(&clock);
        uv_run(&loop, UV_RUN_NOWAIT);
        /* every few rounds take the pending connection and drop it with data
         * unread, which makes the kernel answer with a reset */
        if (round % 7 == 3) {
            struct timeval tv = { 0, 20000 };
            setsockopt(ls, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            int c = accept(ls, NULL, NULL);
            if (c >= 0) {
                usleep(2000);
                close(c);
                resets++;
            }
        }
        usleep(500);
    }
    keel_redis_close(r);
    uv_close((uv_handle_t *)&keepalive, NULL);
    for (int i = 0; i < 200 && replies + failures < accepted; i++) {
        keel_clock_update(&clock);
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    close(ls);
    if (resets == 0 || accepted == 0) {
        printf("FAIL nothing happened: %d resets, %d commands\n", resets, accepted);
        return 1;
    }
    if (replies + failures != accepted) {
        printf("FAIL %d commands accepted, %d ended (%d replies, %d failures)\n", accepted, replies + failures,
               replies, failures);
        return 1;
    }
    printf("ok %d resets, %d commands each ended once (%d failed)\n", resets, accepted, failures);
    return 0;
}
