/* The embedding API's edges (keel.h): a top level that raises, loads after
 * the run ended, posts after the run ended, NULL names, keel_free on a
 * host-owned loop, and a closed Redis client with a request outstanding when
 * the runtime is freed. Usage: test_embed_api LUA_ROOT. Prints "ok ..." per
 * check, or "FAIL ..." and exits 1. */
#define _GNU_SOURCE /* for <uv.h> and mkstemp */
#include "keel.h"
#include <uv.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *lua_root;
static int failed;

#define CHECK(cond, ...) do { \
    if (cond) { printf("ok "); printf(__VA_ARGS__); printf("\n"); } \
    else { failed = 1; printf("FAIL "); printf(__VA_ARGS__); printf(" (line %d)\n", __LINE__); } \
} while (0)

static keel_runtime *new_rt(uv_loop_t *loop) {
    keel_runtime *rt = keel_new(&(keel_options){ .loop = loop, .lua_root = lua_root, .sim = 1, .seed = 1 });
    if (!rt) { printf("FAIL keel_new\n"); exit(1); }
    return rt;
}

static void top_level_error(void) {
    keel_runtime *rt = new_rt(NULL);
    int rc = keel_load_string(rt, "error('top level boom')", "=script");
    CHECK(rc == -1, "keel_load_string returns -1 when the top level raises (got %d)", rc);
    CHECK(strstr(keel_error(rt), "top level boom") != NULL, "keel_error names the error (got '%s')", keel_error(rt));
    keel_free(rt);

    rt = new_rt(NULL);
    char path[] = "/tmp/keel-embed-XXXXXX";
    int fd = mkstemp(path);
    const char *src = "local x = nil\nreturn x.field\n";
    if (fd < 0 || write(fd, src, strlen(src)) != (ssize_t)strlen(src)) { printf("FAIL tmp file\n"); exit(1); }
    close(fd);
    rc = keel_load_file(rt, path, 0, NULL);
    unlink(path);
    CHECK(rc == -1, "keel_load_file returns -1 when the top level raises (got %d)", rc);
    CHECK(strstr(keel_error(rt), "attempt to index") != NULL, "keel_error names the file's error (got '%s')", keel_error(rt));
    keel_free(rt);
}

static void after_the_run(void) {
    keel_runtime *rt = new_rt(NULL);
    int rc = keel_load_string(rt, "require('keel').exit(3)", "=first");
    CHECK(rc == 0, "a top level that ends the run with keel.exit loads (got %d: %s)", rc, keel_error(rt));
    CHECK(keel_done(rt) && keel_exit_code(rt) == 3, "the run ended with code 3");
    rc = keel_load_string(rt, "ran = true", "=second");
    CHECK(rc == -1 && strstr(keel_error(rt), "ended"), "a load after the run ended fails (got %d: '%s')", rc,
          keel_error(rt));
    rc = keel_post(rt, "tick", "x", 1);
    CHECK(rc == -1, "keel_post after the run ended returns -1 (got %d)", rc);
    keel_free(rt);
}

static void null_arguments(void) {
    keel_runtime *rt = new_rt(NULL);
    keel_value out[1];
    int rc = keel_call(rt, NULL, NULL, 0, out, 1);
    CHECK(rc == -1 && strstr(keel_error(rt), "NULL"), "keel_call with a NULL name fails (got %d: '%s')", rc,
          keel_error(rt));
    rc = keel_load_string(rt, NULL, "=x");
    CHECK(rc == -1 && strstr(keel_error(rt), "NULL"), "keel_load_string with NULL code fails (got %d)", rc);
    rc = keel_load_file(rt, NULL, 0, NULL);
    CHECK(rc == -1 && strstr(keel_error(rt), "NULL"), "keel_load_file with a NULL path fails (got %d)", rc);
    rc = keel_require(rt, NULL);
    CHECK(rc == -1 && strstr(keel_error(rt), "NULL"), "keel_require with NULL fails (got %d)", rc);
    rc = keel_call(rt, "print", NULL, 0, NULL, 1);
    CHECK(rc == -1, "keel_call with NULL results and max_results 1 fails (got %d)", rc);
    CHECK(keel_load_string(NULL, "x = 1", NULL) == -1 && keel_call(NULL, "f", NULL, 0, NULL, 0) == -1,
          "a NULL runtime fails");
    keel_free(rt);
}

static int host_callbacks;
static void on_host_idle(uv_idle_t *h) { (void)h; host_callbacks++; }

static void free_on_host_loop(void) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_idle_t idle;
    uv_idle_init(&loop, &idle);
    uv_idle_start(&idle, on_host_idle);
    keel_runtime *rt = new_rt(&loop);
    keel_load_string(rt, "function f() return 1 end", "=host");
    host_callbacks = 0;
    keel_free(rt);
    CHECK(host_callbacks == 0, "keel_free on a host-owned loop runs none of the host's callbacks (ran %d)",
          host_callbacks);
    uv_close((uv_handle_t *)&idle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    CHECK(rc == 0, "after one more run of the host's loop, it closes (got %s)", rc ? uv_strerror(rc) : "0");
}

/* A Redis stand-in: answers the first command (the client's PING) and then
 * reads without answering, so the next request stays outstanding. */
static void *fake_redis(void *arg) {
    int ls = *(int *)arg;
    int c = accept(ls, NULL, NULL);
    if (c < 0) return NULL;
    /* a client that is never closed must not hang the test */
    struct timeval tv = { 2, 0 };
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    int answered = 0;
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) {
        if (!answered) {
            answered = 1;
            if (write(c, "+PONG\r\n", 7) != 7) break;
        }
    }
    close(c);
    return NULL;
}

static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

static void redis_closed_with_request_outstanding(void) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (void *)&a, sizeof a) || listen(ls, 4) || getsockname(ls, (void *)&a, &al)) {
        printf("FAIL cannot listen\n");
        exit(1);
    }
    pthread_t th;
    pthread_create(&th, NULL, fake_redis, &ls);
    int before = open_fds();

    keel_runtime *rt = keel_new(&(keel_options){ .lua_root = lua_root });
    char script[1024];
    snprintf(script, sizeof script,
             "local keel = require 'keel'\n"
             "local c = assert(keel.redis.connect{ host = '127.0.0.1', port = %d })\n"
             "keel.spawn(function() c:call('GET', 'k') end)\n"
             "function close_client() c:close() end\n"
             "keel.sleep(1)\n"
             "keel.exit(0)\n",
             (int)ntohs(a.sin_port));
    int rc = keel_load_string(rt, script, "=redis");
    if (rc == 0) rc = keel_run(rt);
    CHECK(rc == 0, "the script connected and sent a request (%d: %s)", rc, keel_error(rt));
    keel_value out[1];
    rc = keel_call(rt, "close_client", NULL, 0, out, 1);
    CHECK(rc == 0, "the client closed with the request outstanding (%d: %s)", rc, keel_error(rt));
    keel_free(rt); /* before the client's deferred teardown could fire */
    pthread_join(th, NULL); /* the stand-in hangs up once the client's socket closes */
    int after = open_fds();
    CHECK(after == before, "keel_free closed the client's socket (%d fds before, %d after)", before, after);
    close(ls);
}

int main(int argc, char **argv) {
    if (argc < 2) { printf("FAIL usage: test_embed_api LUA_ROOT\n"); return 1; }
    lua_root = argv[1];
    top_level_error();
    after_the_run();
    null_arguments();
    free_on_host_loop();
    redis_closed_with_request_outstanding();
    printf(failed ? "FAIL\n" : "all ok\n");
    return failed;
}
