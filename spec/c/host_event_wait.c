/* An embedding host in run-to-completion mode whose script waits for an
 * event: the host posts it from a timer callback some time after the run
 * has nothing left to do but wait.
 * usage: host_event_wait LUA_ROOT SCRIPT NO_EVENTS(0|1) */
#include "keel.h"
#include <uv.h>
#include <stdio.h>
#include <stdlib.h>

static void post_go(uv_timer_t *t) {
    if (keel_post(t->data, "go", "hello", 5) != 0) fprintf(stderr, "host: post failed\n");
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    keel_runtime *rt = keel_new(&(keel_options){
        .run_to_completion = 1, .lua_root = argv[1], .no_events = atoi(argv[3]) });
    if (!rt) return 3;
    if (keel_load_string(rt, argv[2], "=host-script") != 0) {
        fprintf(stderr, "host: %s\n", keel_error(rt));
        keel_free(rt);
        return 4;
    }
    uv_timer_t timer;
    uv_timer_init(keel_loop(rt), &timer);
    timer.data = rt;
    uv_timer_start(&timer, post_go, 20, 0);
    uv_unref((uv_handle_t *)&timer); /* only the runtime may keep the loop alive */
    int code = keel_run(rt);
    printf("host: exit %d\n", code);
    fflush(stdout);
    keel_free(rt); /* closes every handle of its own loop, the timer included */
    return 0;
}
