/* keel_redis' own transport against a scripted peer: the exact bytes of
 * formatted commands (binary arguments included), replies split across
 * reads, nested arrays, a reply nobody asked for, a protocol error, a peer
 * closing with commands in flight, a command bigger than the socket buffer,
 * and close with a command outstanding. Every command must end exactly
 * once. Prints "ok ..." or "FAIL ..." (exit 1). */
#include <math.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include "keel_redis.h"

typedef struct {
    int ended, status, type;
    long long integer;
    size_t elements;
    int nested_nil;     /* element[1] is an array whose first element is nil */
    char str[64];
    char err[256];
} result_t;

static result_t res[16];
static int failures, freed;
static uv_loop_t loop;
static keel_clock_t clock_;

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL line %d: ", __LINE__); printf(__VA_ARGS__); printf("\n"); failures++; } } while (0)

static void on_reply(void *ud, uint64_t id, const redisReply *r, int status, const char *err) {
    (void)ud;
    result_t *x = &res[id];
    x->ended++;
    x->status = status;
    if (err) snprintf(x->err, sizeof x->err, "%s", err);
    if (!r) return;
    x->type = r->type;
    x->integer = r->integer;
    x->elements = r->elements;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR)
        snprintf(x->str, sizeof x->str, "%.*s", (int)r->len, r->str);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_ARRAY &&
        r->element[1]->elements == 1 && r->element[1]->element[0]->type == REDIS_REPLY_NIL)
        x->nested_nil = 1;
}

static void on_free(void *ud) { (void)ud; freed++; }

static void spin(int ms) {
    for (int i = 0; i < ms; i++) {
        keel_clock_update(&clock_);
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

static int accept_peer(int ls) {
    for (int i = 0; i < 2000; i++) {
        int c = accept(ls, NULL, NULL);
        if (c >= 0) {
            fcntl(c, F_SETFL, O_NONBLOCK);
            return c;
        }
        spin(1);
    }
    return -1;
}

/* Reads exactly n bytes from the peer socket, running the client meanwhile. */
static int peer_read(int fd, char *buf, size_t n) {
    size_t got = 0;
    for (int i = 0; i < 5000 && got < n; i++) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k > 0) { got += (size_t)k; continue; }
        if (k == 0) return -1;
        spin(1);
    }
    return got == n ? 0 : -1;
}

static void peer_write(int fd, const char *s, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t k = write(fd, s + off, n - off);
        if (k > 0) off += (size_t)k;
        else spin(1);
    }
}

static int send_cmd(keel_redis_t *r, uint64_t id, int argc, const char **argv, const size_t *lens) {
    return keel_redis_command(r, id, argc, argv, lens, INFINITY);
}

int main(void) {
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
    fcntl(ls, F_SETFL, O_NONBLOCK);
    uv_loop_init(&loop);
    keel_clock_init(&clock_, 0, 0);
    keel_rand_t rnd;
    keel_rand_seed(&rnd, 1);
    keel_redis_opts_t o;
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1";
    o.port = ntohs(a.sin_port);
    o.on_reply = on_reply;
    o.on_free = on_free;
    o.connect_timeout_ms = 2000;
    o.backoff_base_ms = 1;
    o.backoff_max_ms = 2;
    keel_redis_t *r = keel_redis_new(&loop, &clock_, &rnd, &o);
    uv_timer_t keepalive; /* the client's handles never keep a loop alive */
    uv_timer_init(&loop, &keepalive);
    uv_timer_start(&keepalive, (uv_timer_cb)uv_timer_stop, 1000000, 0);
    int accepted = 0;

    /* 1. exact bytes, binary arguments; a reply split across reads */
    int p = accept_peer(ls);
    CHECK(p >= 0, "no connection");
    const char *get[2] = { "GET", "k" };
    size_t getl[2] = { 3, 1 };
    const char *set[3] = { "SET", "k", "a\r\n\0b" };
    size_t setl[3] = { 3, 1, 5 };
    accepted += send_cmd(r, 1, 2, get, getl) == KEEL_REDIS_OK;
    accepted += send_cmd(r, 2, 3, set, setl) == KEEL_REDIS_OK;
    static const char want[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\n\0b\r\n";
    char buf[128];
    CHECK(peer_read(p, buf, sizeof want - 1) == 0 && memcmp(buf, want, sizeof want - 1) == 0, "command bytes differ");
    peer_write(p, "$5\r\nhel", 7);
    spin(5);
    CHECK(res[1].ended == 0, "a half reply ended the call");
    peer_write(p, "lo\r\n+OK\r\n", 9);
    spin(5);
    CHECK(res[1].ended == 1 && res[1].status == KEEL_REDIS_OK && strcmp(res[1].str, "hello") == 0,
          "split reply: ended %d '%s'", res[1].ended, res[1].str);
    CHECK(res[2].ended == 1 && res[2].type == REDIS_REPLY_STATUS && strcmp(res[2].str, "OK") == 0, "status reply");

    /* 2. nested arrays with a nil inside */
    const char *lr[1] = { "LRANGE" };
    size_t lrl[1] = { 6 };
    accepted += send_cmd(r, 3, 1, lr, lrl) == KEEL_REDIS_OK;
    CHECK(peer_read(p, buf, 16) == 0, "LRANGE not sent");
    peer_write(p, "*2\r\n:1\r\n*1\r\n$-1\r\n", 17);
    spin(5);
    CHECK(res[3].ended == 1 && res[3].type == REDIS_REPLY_ARRAY && res[3].nested_nil, "nested array");

    /* 3. a reply to no request: the stream is out of step, so the connection goes */
    const char *ping[1] = { "PING" };
    size_t pingl[1] = { 4 };
    accepted += send_cmd(r, 4, 1, ping, pingl) == KEEL_REDIS_OK;
    CHECK(peer_read(p, buf, 14) == 0, "PING not sent");
    peer_write(p, "+PONG\r\n+EXTRA\r\n", 15);
    spin(3);
    CHECK(res[4].ended == 1 && strcmp(res[4].str, "PONG") == 0, "PONG before the extra reply");
    CHECK(strstr(keel_redis_last_error(r), "a reply to no request") != NULL, "last error '%s'", keel_redis_last_error(r));
    close(p);

    /* 4. garbage where a reply should be: the call fails with a protocol error */
    p = accept_peer(ls);
    CHECK(p >= 0, "no reconnection");
    spin(5);
    accepted += send_cmd(r, 5, 2, get, getl) == KEEL_REDIS_OK;
    CHECK(peer_read(p, buf, 20) == 0, "GET not sent after reconnect");
    peer_write(p, "?bad\r\n", 6);
    spin(3);
    CHECK(res[5].ended == 1 && res[5].status == KEEL_REDIS_ECONN && strstr(res[5].err, "Protocol error"),
          "garbage: status %d '%s'", res[5].status, res[5].err);
    close(p);

    /* 5. the peer closes with two commands in flight */
    p = accept_peer(ls);
    CHECK(p >= 0, "no reconnection");
    spin(5);
    accepted += send_cmd(r, 6, 2, get, getl) == KEEL_REDIS_OK;
    accepted += send_cmd(r, 7, 2, get, getl) == KEEL_REDIS_OK;
    CHECK(peer_read(p, buf, 40) == 0, "GETs not sent");
    close(p);
    spin(5);
    for (int i = 6; i <= 7; i++)
        CHECK(res[i].ended == 1 && res[i].status == KEEL_REDIS_ECONN &&
              strstr(res[i].err, "Server closed the connection"), "close in flight: %d '%s'", res[i].status, res[i].err);

    /* 6. a command bigger than the socket buffers goes out in pieces */
    p = accept_peer(ls);
    CHECK(p >= 0, "no reconnection");
    spin(5);
    size_t big_n = 8u << 20;
    char *big = malloc(big_n);
    memset(big, 'x', big_n);
    const char *bset[3] = { "SET", "b", big };
    size_t bsetl[3] = { 3, 1, big_n };
    accepted += send_cmd(r, 8, 3, bset, bsetl) == KEEL_REDIS_OK;
    size_t head = strlen("*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$8388608\r\n");
    char *in = malloc(head + big_n + 2);
    CHECK(peer_read(p, in, head + big_n + 2) == 0 && memcmp(in + head, big, big_n) == 0 &&
          memcmp(in + head + big_n, "\r\n", 2) == 0, "big command mangled");
    peer_write(p, "+OK\r\n", 5);
    spin(5);
    CHECK(res[8].ended == 1 && res[8].status == KEEL_REDIS_OK, "big command reply");
    free(big);
    free(in);

    /* 7. close with a command outstanding */
    accepted += send_cmd(r, 9, 1, ping, pingl) == KEEL_REDIS_OK;
    spin(2);
    keel_redis_close(r);
    uv_close((uv_handle_t *)&keepalive, NULL);
    spin(5);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(res[9].ended == 1 && res[9].status == KEEL_REDIS_ECLOSED, "close: %d '%s'", res[9].status, res[9].err);
    CHECK(freed == 1, "client not freed (%d)", freed);
    close(p);
    close(ls);
    uv_loop_close(&loop);

    int ended = 0;
    for (int i = 0; i < 16; i++) {
        CHECK(res[i].ended <= 1, "command %d ended %d times", i, res[i].ended);
        ended += res[i].ended;
    }
    CHECK(accepted == 9 && ended == 9, "%d accepted, %d ended", accepted, ended);
    if (failures) return 1;
    printf("ok %d commands, each ended once\n", accepted);
    return 0;
}
