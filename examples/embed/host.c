/* A tiny host program embedding Keel on its own libuv loop.
 *
 * The host owns the loop, loads a script, calls a Lua function by name, and
 * a second thread posts events that Lua handles as tasks. Build: `make`
 * produces build/embed-host. Run: build/embed-host [N]  (N events, default 5) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* <uv.h> needs POSIX declarations (keel.h alone does not) */
#endif
#include "keel.h"
#include <uv.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static const char *SCRIPT =
    "local keel = require 'keel'\n"
    "local received, total = 0, 0\n"
    "function add(a, b) return a + b, 'sum' end\n"
    "function stats() return received, total end\n"
    "keel.on_event('order', function(payload)\n"
    "  keel.sleep(1)  -- handlers are tasks: they may wait\n"
    "  received = received + 1\n"
    "  total = total + tonumber(payload)\n"
    "  print(string.format('lua: order %s handled (%d so far)', payload, received))\n"
    "end)\n"
    "keel.on_event('done', function(expected)\n"
    "  while received < tonumber(expected) do keel.sleep(1) end\n"
    "  print('lua: all orders handled, exiting'); keel.exit(0)\n"
    "end)\n";

typedef struct {
    keel_runtime *rt;
    int events;
} producer_args;

static void *producer(void *p) {
    producer_args *a = p;
    char buf[32];
    for (int i = 1; i <= a->events; i++) {
        int n = snprintf(buf, sizeof buf, "%d", i * 10);
        if (keel_post(a->rt, "order", buf, (size_t)n) != 0) fprintf(stderr, "host: post failed\n");
    }
    int n = snprintf(buf, sizeof buf, "%d", a->events);
    keel_post(a->rt, "done", buf, (size_t)n);
    return NULL;
}

int main(int argc, char **argv) {
    int events = argc > 1 ? atoi(argv[1]) : 5;
    uv_loop_t loop;
    uv_loop_init(&loop);

    keel_runtime *rt = keel_new(&(keel_options){ .loop = &loop });
    if (!rt) return 1;
    if (keel_load_string(rt, SCRIPT, "=host-script") != 0) {
        fprintf(stderr, "host: %s\n", keel_error(rt));
        return 1;
    }

    keel_value args[2] = { { .type = KEEL_NUMBER, .number = 40 }, { .type = KEEL_NUMBER, .number = 2 } };
    keel_value out[2];
    int n = keel_call(rt, "add", args, 2, out, 2);
    if (n == 2) printf("host: add(40, 2) = %g (%.*s)\n", out[0].number, (int)out[1].len, out[1].string);
    else fprintf(stderr, "host: call failed: %s\n", keel_error(rt));
    if (keel_call(rt, "missing", NULL, 0, out, 1) < 0) printf("host: calling a missing function fails: %s\n", keel_error(rt));

    /* A second runtime in the same process is independent. */
    keel_runtime *other = keel_new(NULL);
    keel_load_string(other, "function who() return 'second runtime' end", "=other");
    if (keel_call(other, "who", NULL, 0, out, 1) == 1) printf("host: %.*s answers independently\n", (int)out[0].len, out[0].string);
    keel_free(other);

    pthread_t th;
    producer_args pa = { rt, events };
    pthread_create(&th, NULL, producer, &pa);
    /* The host drives its own loop; keel_run would do the same. */
    while (!keel_done(rt)) uv_run(&loop, UV_RUN_ONCE);
    pthread_join(th, NULL);

    n = keel_call(rt, "stats", NULL, 0, out, 2);
    if (n == 2) printf("host: lua handled %.0f events, total %.0f\n", out[0].number, out[1].number);
    int code = keel_exit_code(rt);
    keel_free(rt);
    /* keel_free does not run the host's loop; the runtime's handles finish
     * closing on its next run */
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    printf("host: exit code %d\n", code);
    return code;
}
