#include "keel_redis.h"
#include "keel_timers.h"
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The connection is our own: a non-blocking socket on a uv_poll handle,
 * commands formatted straight into one output buffer, replies parsed by
 * hiredis' reader (its only part we use) and matched to requests through a
 * FIFO of slot indices. hiredis' async layer allocated a callback record,
 * formatted through sds and compared every command name against the
 * pub/sub commands; at hundreds of thousands of calls a second that was a
 * third of the client's time. */

enum { SLOT_FREE = 0, SLOT_ACTIVE = 1, SLOT_ABANDONED = 2 };

/* FIFO entries are slot indices, or these for the connection's handshake */
#define FIFO_AUTH   0xFFFFFFFEu
#define FIFO_SELECT 0xFFFFFFFDu

#define READ_CHUNK 65536
/* Bytes one poll callback may take in before it returns to the loop. A
 * socket that never runs dry (a flooded subscriber) would otherwise keep
 * the loop in one callback: no timer, deadline or other socket in the
 * meantime. The poll stays armed and is level-triggered, so the rest is
 * read on the next iteration, after the due timers. It also bounds the
 * replies handed to the caller per callback (each takes bytes). */
#define READ_BUDGET READ_CHUNK
#define OUT_KEEP   (256 * 1024) /* an emptied output buffer bigger than this is given back */

/* Deadlines: most requests carry the connection's usual timeout, so their
 * deadlines rise in send order, the order of the FIFO. Such a request keeps
 * its deadline in its slot (timer = TIMER_FIFO) and the FIFO is its queue:
 * the earliest is the first one still waiting, found by a cursor that only
 * moves forward. A request whose deadline is earlier than one already in
 * the FIFO (a shorter call_timeout) goes to the timer heap instead. */
#define TIMER_FIFO (-2)

typedef struct {
    uint64_t req_id;
    double sent_ms;
    double deadline;   /* TIMER_FIFO requests */
    int32_t timer;     /* keel_timers id, TIMER_FIFO, or -1 when no deadline */
    int32_t next_free;
    uint8_t state;
    uint8_t instant;   /* deadline at send time: its expiry says nothing about the server */
} slot_t;

struct keel_redis {
    uv_loop_t *loop;
    keel_clock_t *clock;
    keel_rand_t *rand;
    keel_redis_opts_t o;
    char *host, *password, *username;

    int fd;                 /* -1: no connection (attempt) */
    int connected;          /* the TCP connect has completed */
    uv_poll_t *poll;        /* watches fd; freed from its close callback */
    int poll_events;        /* what poll is registered for */
    redisReader *reader;
    char *inbuf;            /* READ_CHUNK bytes */

    char *out;              /* formatted commands not yet written */
    size_t out_pos, out_len, out_cap;
    uint32_t *fifo;         /* requests in send order, awaiting replies */
    uint32_t fhead, flen, fcap;
    uint32_t fcur;          /* FIFO entries before this one hold no TIMER_FIFO deadline still to watch */
    double fifo_last_deadline; /* of the newest TIMER_FIFO request */
    double armed_at;        /* when deadline_timer fires (INFINITY: not armed) */

    int state;
    int handshake_failed;   /* AUTH/SELECT failed: last_err says why */
    int attempt;            /* consecutive failed connects, for backoff */
    double connect_deadline;
    double last_reply_ms;
    int stale_timeouts;     /* consecutive timeouts with the server silent */
    char last_err[256];

    slot_t *slots;
    uint32_t nslots, cap, pending, free_head;
    keel_timers_t *timers;
    uint32_t *timer_slot;   /* timer id -> slot index */
    uint32_t timer_slot_cap;

    uv_timer_t deadline_timer, backoff_timer, close_timer;
    uv_prepare_t flush_prep;
    int handles_open;       /* including a closing poll handle */
    int closing, abandoned, teardown_done;
    int push_mode;          /* pub/sub: message arrays go to on_push */
    int in_cb;              /* inside a callback to the user, or processing a read */
    uint32_t ndeliv;        /* on_reply calls since the last on_flush */

    /* Name resolution runs on libuv's thread pool (getaddrinfo would block
     * the loop); commands issued meanwhile wait in the output buffer. */
    int resolving;
    uint32_t dns_gen, dns_reqs;
    uv_getaddrinfo_t *dns_req;

    keel_redis_stats_t st;
};

typedef struct {
    uv_getaddrinfo_t req;
    keel_redis_t *r;
    uint32_t gen;
} resolve_t;

static void start_connect(keel_redis_t *r);
static void arm_deadline_timer(keel_redis_t *r);
static void backoff_cb(uv_timer_t *t);
static void lose_connection(keel_redis_t *r, const char *prefix, const char *detail);

/* Deadlines of network waits. Real mode: the runtime clock. Virtual mode
 * (--sim): virtual time stands still while a task waits for a reply (the
 * scheduler does not jump past pending I/O), so a deadline on it would never
 * pass and a dead server would hang the run; waiting on a socket is real,
 * so there we use the loop's own real-time stamp (cached by libuv, no
 * system call of ours). */
static double io_now(const keel_redis_t *r) {
    return r->clock->is_virtual ? (double)uv_now(r->loop) : r->clock->now_ms;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static void set_err(keel_redis_t *r, const char *prefix, const char *detail) {
    snprintf(r->last_err, sizeof r->last_err, "%s%s", prefix, detail ? detail : "");
}

/* ---- handle references: keep the loop alive only while someone waits ---- */

static void update_ref(keel_redis_t *r) {
    if (!r->poll) return;
    /* an idle client, even one reconnecting, never keeps a finished
     * program alive */
    if (!r->closing && r->pending > 0) uv_ref((uv_handle_t *)r->poll);
    else uv_unref((uv_handle_t *)r->poll);
}

/* ---- request slots ---- */

static int32_t slot_alloc(keel_redis_t *r) {
    if (r->pending >= r->o.max_pending) return -1;
    if (r->free_head == UINT32_MAX) {
        if (r->nslots == r->cap) {
            uint32_t ncap = r->cap ? r->cap * 2 : 256;
            if (ncap > r->o.max_pending) ncap = r->o.max_pending;
            slot_t *s = realloc(r->slots, (size_t)ncap * sizeof *s);
            if (!s) return -1;
            r->slots = s;
            r->cap = ncap;
        }
        r->slots[r->nslots].next_free = (int32_t)UINT32_MAX;
        r->free_head = r->nslots++;
    }
    uint32_t i = r->free_head;
    r->free_head = (uint32_t)r->slots[i].next_free;
    r->pending++;
    slot_t *s = &r->slots[i];
    s->timer = -1;
    s->state = SLOT_FREE;
    return (int32_t)i;
}

static void slot_release(keel_redis_t *r, uint32_t i) {
    slot_t *s = &r->slots[i];
    if (s->timer >= 0) keel_timers_cancel(r->timers, s->timer);
    s->timer = -1;
    s->state = SLOT_FREE;
    s->next_free = (int32_t)r->free_head;
    r->free_head = i;
    r->pending--;
}

static void deliver(keel_redis_t *r, uint64_t id, const redisReply *rep, int status, const char *err) {
    if (r->abandoned || !r->o.on_reply) return;
    /* the callee may run a finalizer that abandons r: keep r alive */
    r->in_cb++;
    r->ndeliv++;
    r->o.on_reply(r->o.ud, id, rep, status, err);
    r->in_cb--;
}

static void deliver_push(keel_redis_t *r, const redisReply *rep) {
    if (r->abandoned || !r->o.on_push) return;
    r->in_cb++;
    r->ndeliv++;
    r->o.on_push(r->o.ud, rep);
    r->in_cb--;
}

/* A published message (RESP2 has no push type: in subscribed mode it is an
 * array led by its kind). Only asked in push mode, where no other command
 * may run, so an ordinary reply cannot look like one. */
static int is_push(const redisReply *rep) {
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3) return 0;
    const redisReply *k = rep->element[0];
    if (k->type != REDIS_REPLY_STRING && k->type != REDIS_REPLY_STATUS) return 0;
    if (k->len == 7 && memcmp(k->str, "message", 7) == 0) return rep->elements == 3;
    if (k->len == 8 && memcmp(k->str, "pmessage", 8) == 0) return rep->elements == 4;
    if (k->len == 8 && memcmp(k->str, "smessage", 8) == 0) return rep->elements == 3;
    return 0;
}

static void flush_deliveries(keel_redis_t *r) {
    if (r->ndeliv == 0) return;
    r->ndeliv = 0;
    if (r->abandoned || !r->o.on_flush) return;
    r->in_cb++;
    r->o.on_flush(r->o.ud);
    r->in_cb--;
}

/* Ends a slot's request now (timeout, loss, close) without waiting for its
 * reply; a slot whose command went out stays allocated until its reply
 * arrives or the connection ends. */
static void slot_fail(keel_redis_t *r, uint32_t i, int status, const char *err) {
    slot_t *s = &r->slots[i];
    if (s->state != SLOT_ACTIVE) return;
    s->state = SLOT_ABANDONED;
    if (s->timer >= 0) keel_timers_cancel(r->timers, s->timer);
    s->timer = -1;
    deliver(r, s->req_id, NULL, status, err);
}

/* ---- the request FIFO ---- */

static int fifo_reserve(keel_redis_t *r, uint32_t extra) {
    if (r->flen + extra <= r->fcap) return 0;
    uint32_t ncap = r->fcap ? r->fcap : 64;
    while (ncap < r->flen + extra) ncap *= 2;
    uint32_t *f = malloc((size_t)ncap * sizeof *f);
    if (!f) return -1;
    for (uint32_t k = 0; k < r->flen; k++) f[k] = r->fifo[(r->fhead + k) & (r->fcap - 1)];
    free(r->fifo);
    r->fifo = f;
    r->fcap = ncap;
    r->fhead = 0;
    return 0;
}

static void fifo_push(keel_redis_t *r, uint32_t e) { /* after fifo_reserve */
    r->fifo[(r->fhead + r->flen) & (r->fcap - 1)] = e;
    r->flen++;
}

static void fifo_push_front(keel_redis_t *r, uint32_t e) { /* after fifo_reserve */
    r->fhead = (r->fhead - 1) & (r->fcap - 1);
    r->fifo[r->fhead] = e;
    r->flen++;
}

static uint32_t fifo_pop(keel_redis_t *r) {
    uint32_t e = r->fifo[r->fhead];
    r->fhead = (r->fhead + 1) & (r->fcap - 1);
    r->flen--;
    if (r->fcur > 0) r->fcur--;
    if (r->flen == 0) r->fifo_last_deadline = -INFINITY;
    return e;
}

/* The first FIFO request still waiting on a TIMER_FIFO deadline, or NULL;
 * moves the cursor past everything before it. */
static slot_t *fifo_deadline_head(keel_redis_t *r) {
    while (r->fcur < r->flen) {
        uint32_t e = r->fifo[(r->fhead + r->fcur) & (r->fcap - 1)];
        if (e != FIFO_AUTH && e != FIFO_SELECT) {
            slot_t *s = &r->slots[e];
            if (s->state == SLOT_ACTIVE && s->timer == TIMER_FIFO) return s;
        }
        r->fcur++;
    }
    return NULL;
}

/* Ends every request of a connection that is gone. Commands issued from
 * inside a failure callback find no connection (ECONN) and never join the
 * FIFO, so a bounded drain is enough. */
static void fail_fifo(keel_redis_t *r, int status, const char *why) {
    for (uint32_t n = r->flen; n > 0 && r->flen > 0; n--) {
        uint32_t e = fifo_pop(r);
        if (e == FIFO_AUTH || e == FIFO_SELECT) continue;
        if (r->slots[e].state == SLOT_ACTIVE && status == KEEL_REDIS_ECONN) r->st.conn_errors++;
        slot_fail(r, e, status, why);
        slot_release(r, e);
    }
    r->out_pos = r->out_len = 0;
}

/* ---- formatting (RESP2 multi-bulk) ---- */

static size_t digits(size_t v) {
    size_t n = 1;
    while (v >= 10) { v /= 10; n++; }
    return n;
}

static char *put_uint(char *p, size_t v, size_t nd) {
    char *end = p + nd;
    do { *--end = (char)('0' + v % 10); v /= 10; } while (v);
    return p + nd;
}

static int out_reserve(keel_redis_t *r, size_t need) {
    if (r->out_len + need <= r->out_cap) return 0;
    if (r->out_pos > 0) { /* written bytes at the front: reclaim them first */
        memmove(r->out, r->out + r->out_pos, r->out_len - r->out_pos);
        r->out_len -= r->out_pos;
        r->out_pos = 0;
        if (r->out_len + need <= r->out_cap) return 0;
    }
    size_t ncap = r->out_cap ? r->out_cap : 16384;
    while (ncap < r->out_len + need) {
        if (ncap > SIZE_MAX / 2) return -1;
        ncap *= 2;
    }
    char *o = realloc(r->out, ncap);
    if (!o) return -1;
    r->out = o;
    r->out_cap = ncap;
    return 0;
}

static int append_command(keel_redis_t *r, int argc, const char **argv, const size_t *lens) {
    size_t need = 1 + digits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        if (lens[i] > SIZE_MAX / 2 - need) return -1;
        need += 1 + digits(lens[i]) + 2 + lens[i] + 2;
    }
    if (out_reserve(r, need) != 0) return -1;
    char *p = r->out + r->out_len;
    *p++ = '*';
    p = put_uint(p, (size_t)argc, digits((size_t)argc));
    *p++ = '\r'; *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t len = lens[i];
        *p++ = '$';
        p = put_uint(p, len, digits(len));
        *p++ = '\r'; *p++ = '\n';
        if (len) memcpy(p, argv[i], len);
        p += len;
        *p++ = '\r'; *p++ = '\n';
    }
    r->out_len = (size_t)(p - r->out);
    return 0;
}

/* ---- freeing ---- */

static void maybe_free(keel_redis_t *r) {
    if (!r->teardown_done || r->handles_open > 0 || r->dns_reqs > 0) return;
    void (*on_free)(void *) = r->o.on_free;
    void *ud = r->o.ud;
    keel_timers_free(r->timers);
    free(r->timer_slot);
    free(r->slots);
    free(r->fifo);
    free(r->out);
    free(r->inbuf);
    free(r->host);
    free(r->password);
    free(r->username);
    free(r);
    if (on_free) on_free(ud);
}

static void on_handle_closed(uv_handle_t *h) {
    keel_redis_t *r = h->data;
    r->handles_open--;
    maybe_free(r);
}

static void on_poll_closed(uv_handle_t *h) {
    keel_redis_t *r = h->data;
    free(h);
    r->handles_open--;
    maybe_free(r);
}

/* ---- the socket ---- */

static void on_poll(uv_poll_t *h, int status, int events);

static void set_poll(keel_redis_t *r, int events) {
    if (!r->poll || r->poll_events == events) return;
    r->poll_events = events;
    uv_poll_start(r->poll, events, on_poll);
}

static void close_socket(keel_redis_t *r) {
    /* the poll handle goes first: libuv must stop watching fd before it is closed */
    if (r->poll) {
        uv_close((uv_handle_t *)r->poll, on_poll_closed);
        r->poll = NULL;
    }
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
    if (r->reader) redisReaderFree(r->reader);
    r->reader = NULL;
    r->connected = 0;
    r->poll_events = 0;
}

static void schedule_reconnect(keel_redis_t *r) {
    if (r->closing) return;
    r->state = KEEL_REDIS_S_BACKOFF;
    double cap = r->o.backoff_max_ms;
    double d = r->o.backoff_base_ms;
    for (int k = 0; k < r->attempt && d < cap; k++) d *= 2;
    if (d > cap) d = cap;
    /* "equal jitter": half fixed so retries never collapse to zero delay,
     * half random so a fleet does not reconnect in lockstep */
    d = d / 2 + keel_rand_double(r->rand) * d / 2;
    r->attempt++;
    uv_timer_start(&r->backoff_timer, backoff_cb, (uint64_t)(d < 1 ? 1 : d), 0);
}

static void backoff_cb(uv_timer_t *t) {
    keel_redis_t *r = t->data;
    if (r->closing || r->state != KEEL_REDIS_S_BACKOFF) return;
    start_connect(r);
}

/* The connection (or the attempt at one) is gone: every request on it
 * fails, and a new one is dialled after a backoff. prefix+detail become
 * last_err unless a failed handshake already said what went wrong. */
static void lose_connection(keel_redis_t *r, const char *prefix, const char *detail) {
    int was_connected = r->connected;
    if (detail && !r->handshake_failed) set_err(r, prefix, detail);
    close_socket(r);
    if (!was_connected) r->st.connect_failures++;
    if (was_connected && r->push_mode) deliver_push(r, NULL); /* the subscriptions went with it */
    if (r->closing) {
        fail_fifo(r, KEEL_REDIS_ECLOSED, "client closed");
        flush_deliveries(r);
        return;
    }
    /* commands issued from the failure callbacks fail fast */
    r->state = KEEL_REDIS_S_BACKOFF;
    fail_fifo(r, KEEL_REDIS_ECONN, r->last_err[0] ? r->last_err : "connection lost");
    flush_deliveries(r);
    schedule_reconnect(r);
}

/* No socket could even be made (resolution failed or timed out, no memory). */
static void connect_failed(keel_redis_t *r, const char *prefix, const char *detail) {
    set_err(r, prefix, detail);
    r->st.connect_failures++;
    r->state = KEEL_REDIS_S_BACKOFF;
    fail_fifo(r, KEEL_REDIS_ECONN, r->last_err);
    flush_deliveries(r);
    schedule_reconnect(r);
}

static void flush_out(keel_redis_t *r);

/* Returns 0 when the connection went away while reading. */
static int process_replies(keel_redis_t *r) {
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
            char why[sizeof r->reader->errstr];
            snprintf(why, sizeof why, "%s", r->reader->errstr);
            lose_connection(r, "connection lost: ", why);
            return 0;
        }
        if (!reply) return 1;
        redisReply *rep = reply;
        if (r->push_mode && is_push(rep)) {
            r->last_reply_ms = io_now(r);
            r->stale_timeouts = 0;
            deliver_push(r, rep);
            freeReplyObject(rep);
            continue;
        }
        if (r->flen == 0) {
            freeReplyObject(rep);
            lose_connection(r, "connection lost: ", "Protocol error: a reply to no request");
            return 0;
        }
        r->last_reply_ms = io_now(r);
        r->stale_timeouts = 0;
        uint32_t e = fifo_pop(r);
        if (e == FIFO_AUTH || e == FIFO_SELECT) {
            if (rep->type == REDIS_REPLY_ERROR) {
                set_err(r, e == FIFO_AUTH ? "auth failed: " : "select failed: ", rep->str);
                r->handshake_failed = 1;
                freeReplyObject(rep);
                lose_connection(r, "", NULL); /* last_err already says why */
                return 0;
            }
            freeReplyObject(rep);
            continue;
        }
        slot_t *s = &r->slots[e];
        if (s->state == SLOT_ACTIVE) {
            uint64_t id = s->req_id;
            s->state = SLOT_ABANDONED; /* nothing may fail it twice while we deliver */
            if (s->timer >= 0) keel_timers_cancel(r->timers, s->timer);
            s->timer = -1;
            r->st.replies++;
            if (rep->type == REDIS_REPLY_ERROR) r->st.error_replies++;
            deliver(r, id, rep, KEEL_REDIS_OK, NULL);
        }
        slot_release(r, e);
        freeReplyObject(rep);
    }
}

/* Reads and hands over replies until the socket is drained or budget
 * bytes have been read. */
static void read_replies(keel_redis_t *r, size_t budget) {
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(r->fd, r->inbuf, READ_CHUNK, 0);
        if (n > 0) {
            if (redisReaderFeed(r->reader, r->inbuf, (size_t)n) != REDIS_OK) {
                lose_connection(r, "connection lost: ", "out of memory");
                return;
            }
            if (!process_replies(r)) return;
            if (n < READ_CHUNK) return; /* drained: spare the recv that would say EAGAIN */
            got += (size_t)n;
            if (got >= budget) return;
            continue;
        }
        if (n == 0) {
            lose_connection(r, "connection lost: ", "Server closed the connection");
            return;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) lose_connection(r, "connection lost: ", strerror(errno));
        return;
    }
}

/* MSG_NOSIGNAL: a write to a connection the server closed is an EPIPE
 * error here, never a SIGPIPE that kills a host which did not ignore it. */
static void flush_out(keel_redis_t *r) {
    while (r->out_pos < r->out_len) {
        ssize_t n = send(r->fd, r->out + r->out_pos, r->out_len - r->out_pos, MSG_NOSIGNAL);
        if (n > 0) { r->out_pos += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
            set_poll(r, UV_READABLE | UV_WRITABLE);
            return;
        }
        int err = errno;
        /* the server may have answered (and closed) before we finished: its
         * last replies, often the reason it closed, still count (all of
         * them: the connection goes right after) */
        read_replies(r, SIZE_MAX);
        if (r->fd >= 0) lose_connection(r, "connection lost: ", strerror(err));
        return;
    }
    r->out_pos = r->out_len = 0;
    if (r->out_cap > OUT_KEEP) { /* one huge command must not pin its buffer */
        free(r->out);
        r->out = NULL;
        r->out_cap = 0;
    }
    set_poll(r, UV_READABLE);
}

static void on_connected(keel_redis_t *r) {
    r->connected = 1;
    r->st.connects++;
    if (r->attempt > 0 || r->st.connects > 1) r->st.reconnects++;
    r->attempt = 0;
    r->stale_timeouts = 0;
    if (!r->handshake_failed) r->state = KEEL_REDIS_S_READY;
    flush_out(r); /* the handshake and whatever was issued while connecting */
    update_ref(r);
    arm_deadline_timer(r);
}

static int socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
}

static void on_poll(uv_poll_t *h, int status, int events) {
    keel_redis_t *r = h->data;
    r->in_cb++;
    if (!r->connected) {
        int err = socket_error(r->fd);
        if (err) lose_connection(r, "connect failed: ", strerror(err));
        else if (status < 0) lose_connection(r, "connect failed: ", uv_strerror(status));
        else if (events & UV_WRITABLE) on_connected(r);
    } else {
        /* on an error libuv stops the handle and reports no events: read
         * what arrived before it, then take the socket's own error */
        if (status < 0 || (events & UV_READABLE)) read_replies(r, READ_BUDGET);
        if (r->poll == h && status < 0) {
            int err = socket_error(r->fd);
            lose_connection(r, "connection lost: ", err ? strerror(err) : uv_strerror(status));
        } else if (r->poll == h && (events & UV_WRITABLE)) {
            flush_out(r);
        }
    }
    r->in_cb--;
    flush_deliveries(r);
}

/* Writes go out once per loop iteration, just before the loop polls: every
 * command queued during the iteration leaves in one send, without asking
 * epoll about writability (the socket almost always is). Only a partial
 * write (full socket buffer) waits for UV_WRITABLE. */
static void flush_cb(uv_prepare_t *h) {
    keel_redis_t *r = h->data;
    uv_prepare_stop(h);
    if (!r->connected || r->out_pos == r->out_len || (r->poll_events & UV_WRITABLE)) return;
    r->in_cb++;
    flush_out(r);
    r->in_cb--;
    flush_deliveries(r);
}

/* The AUTH and SELECT of a new connection go before the commands issued
 * while it was being set up, and their FIFO markers before theirs. */
static int add_handshake(keel_redis_t *r) {
    size_t qlen = r->out_len - r->out_pos;
    char *queued = NULL;
    if (qlen) {
        queued = malloc(qlen);
        if (!queued) return -1;
        memcpy(queued, r->out + r->out_pos, qlen);
    }
    r->out_pos = r->out_len = 0;
    int rc = fifo_reserve(r, 2);
    if (rc == 0 && r->password) {
        const char *argv[3] = { "AUTH", r->username, r->password };
        size_t lens[3] = { 4, r->o.username_len, r->o.password_len };
        if (r->username) rc = append_command(r, 3, argv, lens);
        else {
            argv[1] = r->password;
            lens[1] = r->o.password_len;
            rc = append_command(r, 2, argv, lens);
        }
    }
    if (rc == 0 && r->o.db > 0) {
        char db[16];
        int n = snprintf(db, sizeof db, "%d", r->o.db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, (size_t)n };
        rc = append_command(r, 2, argv, lens);
    }
    if (rc == 0 && qlen) {
        rc = out_reserve(r, qlen);
        if (rc == 0) {
            memcpy(r->out + r->out_len, queued, qlen);
            r->out_len += qlen;
        }
    }
    free(queued);
    if (rc != 0) return -1;
    if (r->o.db > 0) fifo_push_front(r, FIFO_SELECT);
    if (r->password) fifo_push_front(r, FIFO_AUTH);
    return 0;
}

static void connect_to(keel_redis_t *r, const char *ip) {
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)(void *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)(void *)&ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)r->o.port);
        sl = sizeof *v4;
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)r->o.port);
        sl = sizeof *v6;
    } else {
        connect_failed(r, "connect failed: bad address ", ip);
        return;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_failed(r, "connect failed: ", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* interrupted, a non-blocking connect goes on in the background, like
     * EINPROGRESS: calling connect again would only say EALREADY */
    int rc = connect(fd, (struct sockaddr *)&ss, sl);
    if (rc < 0 && errno != EINPROGRESS && errno != EINTR) {
        int err = errno;
        close(fd);
        connect_failed(r, "connect failed: ", strerror(err));
        return;
    }
    uv_poll_t *p = malloc(sizeof *p);
    redisReader *reader = redisReaderCreate();
    if (!r->inbuf) r->inbuf = malloc(READ_CHUNK);
    if (!p || !reader || !r->inbuf || uv_poll_init_socket(r->loop, p, fd) != 0) {
        free(p);
        if (reader) redisReaderFree(reader);
        close(fd);
        connect_failed(r, "connect failed: ", "out of memory");
        return;
    }
    p->data = r;
    r->handles_open++;
    r->poll = p;
    r->fd = fd;
    r->reader = reader;
    r->connected = 0;
    r->poll_events = 0;
    if (add_handshake(r) != 0) {
        lose_connection(r, "connect failed: ", "out of memory");
        return;
    }
    if (rc == 0) {
        set_poll(r, UV_READABLE);
        on_connected(r);
    } else {
        set_poll(r, UV_WRITABLE);
    }
    update_ref(r);
    arm_deadline_timer(r);
}

static int is_ip_literal(const char *host) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    resolve_t *q = (resolve_t *)req;
    keel_redis_t *r = q->r;
    uint32_t gen = q->gen;
    free(q);
    r->dns_reqs--;
    if (r->closing || !r->resolving || gen != r->dns_gen) {
        /* closed, or given up on at the connect deadline */
        if (res) uv_freeaddrinfo(res);
        maybe_free(r);
        return;
    }
    r->resolving = 0;
    r->dns_req = NULL;
    /* IPv4 first, as hiredis does */
    char ip[INET6_ADDRSTRLEN] = "";
    for (int pass = 0; pass < 2 && !ip[0]; pass++) {
        for (struct addrinfo *ai = res; ai && !ip[0]; ai = ai->ai_next) {
            if (pass == 0 && ai->ai_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr, ip, sizeof ip);
            else if (pass == 1 && ai->ai_family == AF_INET6)
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr, ip, sizeof ip);
        }
    }
    if (res) uv_freeaddrinfo(res);
    if (!ip[0]) {
        connect_failed(r, "connect failed: cannot resolve host: ", status ? uv_strerror(status) : "no address");
        return;
    }
    connect_to(r, ip);
}

static void start_connect(keel_redis_t *r) {
    r->state = KEEL_REDIS_S_CONNECTING;
    r->handshake_failed = 0;
    r->connect_deadline = io_now(r) + r->o.connect_timeout_ms;
    if (is_ip_literal(r->host)) {
        connect_to(r, r->host);
        return;
    }
    resolve_t *q = calloc(1, sizeof *q);
    if (!q) {
        connect_failed(r, "connect failed: ", "out of memory");
        return;
    }
    q->r = r;
    q->gen = ++r->dns_gen;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(r->loop, &q->req, on_resolved, r->host, NULL, &hints);
    if (rc != 0) {
        free(q);
        connect_failed(r, "connect failed: cannot resolve host: ", uv_strerror(rc));
        return;
    }
    r->dns_reqs++;
    r->resolving = 1;
    r->dns_req = &q->req;
    arm_deadline_timer(r);
}

/* ---- deadlines ---- */

static double next_deadline(keel_redis_t *r) {
    double d = keel_timers_next(r->timers);
    slot_t *f = fifo_deadline_head(r);
    if (f && (d < 0 || f->deadline < d)) d = f->deadline;
    if ((r->fd >= 0 || r->resolving) && r->state == KEEL_REDIS_S_CONNECTING && (d < 0 || r->connect_deadline < d))
        d = r->connect_deadline;
    return d;
}

static void deadline_cb(uv_timer_t *t);

static void arm_deadline_timer(keel_redis_t *r) {
    if (r->closing) return;
    double d = next_deadline(r);
    if (d < 0) {
        uv_timer_stop(&r->deadline_timer);
        r->armed_at = INFINITY;
        return;
    }
    r->armed_at = d;
    double wait = d - io_now(r);
    if (wait < 1) wait = 1;
    /* a far (or infinite: call_timeout(math.huge)) deadline must not reach
     * the uint64_t conversion, which is undefined there; firing early
     * just re-arms */
    if (wait > 4294967295.0) wait = 4294967295.0;
    uv_timer_start(&r->deadline_timer, deadline_cb, (uint64_t)(wait + 0.999), 0);
    uv_unref((uv_handle_t *)&r->deadline_timer);
    if (r->pending > 0) uv_ref((uv_handle_t *)&r->deadline_timer);
}

static void deadline_cb(uv_timer_t *t) {
    keel_redis_t *r = t->data;
    if (r->closing) return;
    /* the loop refreshes the clock per tick; a busy or blocked tick must not
     * hide that our deadline has passed */
    if (!r->clock->is_virtual) keel_clock_update(r->clock);
    double now = io_now(r);
    if (r->resolving && now >= r->connect_deadline && !r->in_cb) {
        /* the thread pool may be stuck on a slow resolver: give up on this
         * request (its callback will find it abandoned) and retry later */
        r->resolving = 0;
        if (r->dns_req) uv_cancel((uv_req_t *)r->dns_req);
        r->dns_req = NULL;
        char msg[96];
        snprintf(msg, sizeof msg, "no address for the host after %.0f ms", r->o.connect_timeout_ms);
        connect_failed(r, "connect timeout: ", msg);
    }
    if (r->fd >= 0 && r->state == KEEL_REDIS_S_CONNECTING && now >= r->connect_deadline && !r->in_cb) {
        char msg[96];
        snprintf(msg, sizeof msg, "connect timeout: no connection after %.0f ms", r->o.connect_timeout_ms);
        lose_connection(r, "", msg);
    }
    r->armed_at = INFINITY;
    int stale = 0;
    int32_t id;
    while ((id = keel_timers_pop_expired(r->timers, now)) >= 0) {
        uint32_t i = r->timer_slot[id];
        slot_t *s = &r->slots[i];
        s->timer = -1;
        if (s->state != SLOT_ACTIVE) continue;
        /* a server that keeps saying nothing since our requests were sent
         * is hung or unreachable: reconnect instead of piling up requests */
        if (r->last_reply_ms < s->sent_ms && !s->instant) stale++;
        r->st.timeouts++;
        slot_fail(r, i, KEEL_REDIS_ETIMEOUT, "no reply before the deadline");
        if (r->closing) { flush_deliveries(r); return; }
    }
    slot_t *f;
    while ((f = fifo_deadline_head(r)) && f->deadline <= now) {
        if (r->last_reply_ms < f->sent_ms && !f->instant) stale++;
        r->st.timeouts++;
        slot_fail(r, (uint32_t)(f - r->slots), KEEL_REDIS_ETIMEOUT, "no reply before the deadline");
        if (r->closing) { flush_deliveries(r); return; }
    }
    /* one slow command is not a dead server; several silent deadlines are */
    r->stale_timeouts += stale;
    if (r->stale_timeouts >= 3 && r->fd >= 0 && r->state == KEEL_REDIS_S_READY && !r->in_cb)
        lose_connection(r, "", "connection dropped: server not responding");
    arm_deadline_timer(r);
    update_ref(r);
    flush_deliveries(r);
}

/* ---- public ---- */

keel_redis_t *keel_redis_new(uv_loop_t *loop, keel_clock_t *clock, keel_rand_t *rand,
                             const keel_redis_opts_t *opts) {
    if (!loop || !clock || !rand || !opts || !opts->on_reply) return NULL;
    keel_redis_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->loop = loop;
    r->clock = clock;
    r->rand = rand;
    r->o = *opts;
    r->fd = -1;
    r->fifo_last_deadline = -INFINITY;
    r->armed_at = INFINITY;
    if (r->o.port <= 0) r->o.port = 6379;
    if (r->o.connect_timeout_ms <= 0) r->o.connect_timeout_ms = 2000;
    if (r->o.backoff_base_ms <= 0) r->o.backoff_base_ms = 50;
    if (r->o.backoff_max_ms < r->o.backoff_base_ms) r->o.backoff_max_ms = r->o.backoff_base_ms < 2000 ? 2000 : r->o.backoff_base_ms;
    if (r->o.max_pending == 0) r->o.max_pending = 65536;
    const char *host = r->o.host ? r->o.host : "127.0.0.1";
    r->host = dup_n(host, strlen(host));
    if (opts->password) r->password = dup_n(opts->password, opts->password_len);
    if (opts->username) r->username = dup_n(opts->username, opts->username_len);
    r->timers = keel_timers_new();
    r->free_head = UINT32_MAX;
    r->last_reply_ms = -1e300;
    if (!r->host || !r->timers || (opts->password && !r->password) || (opts->username && !r->username)) {
        keel_timers_free(r->timers);
        free(r->host);
        free(r->password);
        free(r->username);
        free(r);
        return NULL;
    }
    r->o.host = r->host;
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->backoff_timer);
    uv_timer_init(loop, &r->close_timer);
    uv_prepare_init(loop, &r->flush_prep);
    uv_unref((uv_handle_t *)&r->flush_prep);
    r->deadline_timer.data = r->backoff_timer.data = r->close_timer.data = r->flush_prep.data = r;
    uv_unref((uv_handle_t *)&r->backoff_timer);
    uv_unref((uv_handle_t *)&r->deadline_timer);
    r->handles_open = 4;
    start_connect(r);
    return r;
}

int keel_redis_command(keel_redis_t *r, uint64_t req_id, int argc, const char **argv,
                       const size_t *argvlen, double timeout_ms) {
    if (!r || r->closing) return KEEL_REDIS_ECLOSED;
    if (argc < 1 || !argv || !argvlen || timeout_ms != timeout_ms) return KEEL_REDIS_EARG;
    if ((r->fd < 0 && !r->resolving) || r->state == KEEL_REDIS_S_BACKOFF) { r->st.conn_errors++; return KEEL_REDIS_ECONN; }
    int32_t i = slot_alloc(r);
    if (i < 0) { r->st.full++; return KEEL_REDIS_EFULL; }
    if (fifo_reserve(r, 1) != 0 || append_command(r, argc, argv, argvlen) != 0) {
        slot_release(r, (uint32_t)i); /* out of memory */
        r->st.full++;
        return KEEL_REDIS_EFULL;
    }
    fifo_push(r, (uint32_t)i);
    slot_t *s = &r->slots[i];
    s->req_id = req_id;
    s->state = SLOT_ACTIVE;
    s->sent_ms = io_now(r);
    if (r->connected && !(r->poll_events & UV_WRITABLE) && !uv_is_active((uv_handle_t *)&r->flush_prep))
        uv_prepare_start(&r->flush_prep, flush_cb);
    s->timer = -1;
    /* only +infinity means "no deadline": 0 (or less) is one already due,
     * failed from the loop's next deadline check */
    int has_deadline = !(isinf(timeout_ms) && timeout_ms > 0);
    s->instant = timeout_ms <= 0;
    double deadline = s->sent_ms + (timeout_ms > 0 ? timeout_ms : 0);
    if (has_deadline && deadline >= r->fifo_last_deadline) {
        s->timer = TIMER_FIFO;
        s->deadline = deadline;
        r->fifo_last_deadline = deadline;
        if (deadline < r->armed_at) arm_deadline_timer(r);
    } else if (has_deadline) {
        int32_t tid = keel_timers_add(r->timers, deadline);
        if (tid >= 0) {
            if ((uint32_t)tid >= r->timer_slot_cap) {
                uint32_t ncap = r->timer_slot_cap ? r->timer_slot_cap * 2 : 256;
                while (ncap <= (uint32_t)tid) ncap *= 2;
                uint32_t *ts = realloc(r->timer_slot, (size_t)ncap * sizeof *ts);
                if (!ts) { keel_timers_cancel(r->timers, tid); tid = -1; }
                else { r->timer_slot = ts; r->timer_slot_cap = ncap; }
            }
            if (tid >= 0) {
                r->timer_slot[tid] = (uint32_t)i;
                s->timer = tid;
                if (deadline < r->armed_at) arm_deadline_timer(r);
            }
        }
    }
    r->st.sent++;
    if (r->pending == 1) { update_ref(r); arm_deadline_timer(r); }
    return KEEL_REDIS_OK;
}

int keel_redis_send(keel_redis_t *r, uint64_t req_id, double timeout_ms, int argc,
                    const char *a0, size_t l0, const char *a1, size_t l1, const char *a2, size_t l2,
                    const char *a3, size_t l3, const char *a4, size_t l4, const char *a5, size_t l5) {
    if (argc < 1 || argc > 6) return KEEL_REDIS_EARG;
    const char *argv[6] = { a0, a1, a2, a3, a4, a5 };
    size_t lens[6] = { l0, l1, l2, l3, l4, l5 };
    for (int i = 0; i < argc; i++)
        if (!argv[i] && lens[i]) return KEEL_REDIS_EARG;
    return keel_redis_command(r, req_id, argc, argv, lens, timeout_ms);
}

static void teardown(keel_redis_t *r) {
    if (r->teardown_done) return;
    if (r->resolving && r->dns_req) uv_cancel((uv_req_t *)r->dns_req);
    r->resolving = 0;
    r->dns_req = NULL;
    close_socket(r);
    fail_fifo(r, KEEL_REDIS_ECLOSED, "client closed");
    flush_deliveries(r);
    r->abandoned = 1;
    r->teardown_done = 1;
    uv_timer_stop(&r->deadline_timer);
    uv_timer_stop(&r->backoff_timer);
    uv_timer_stop(&r->close_timer);
    uv_close((uv_handle_t *)&r->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->backoff_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->close_timer, on_handle_closed);
    uv_prepare_stop(&r->flush_prep);
    uv_close((uv_handle_t *)&r->flush_prep, on_handle_closed);
    maybe_free(r);
}

static void close_cb(uv_timer_t *t) { teardown(t->data); }

void keel_redis_close(keel_redis_t *r) {
    if (!r || r->closing) return;
    r->closing = 1;
    r->state = KEEL_REDIS_S_CLOSED;
    /* With nothing outstanding no callback can fire: tear down now, so a
     * client closed just before the program ends is still freed. Otherwise
     * from the loop, not here: the caller may be inside one of our
     * callbacks, and the waiters must be told from a loop callback. */
    if (r->pending == 0 && r->in_cb == 0) teardown(r);
    else uv_timer_start(&r->close_timer, close_cb, 0, 0);
}

void keel_redis_abandon(keel_redis_t *r) {
    if (!r) return;
    r->abandoned = 1;
    r->closing = 1;
    r->state = KEEL_REDIS_S_CLOSED;
    /* finalizers may run while the loop is being torn down: close now
     * unless we are inside one of our own callbacks */
    if (r->in_cb) uv_timer_start(&r->close_timer, close_cb, 0, 0);
    else teardown(r);
}

void keel_redis_set_push_mode(keel_redis_t *r, int on) {
    if (r) r->push_mode = on ? 1 : 0;
}

int keel_redis_state(const keel_redis_t *r) { return r ? r->state : KEEL_REDIS_S_CLOSED; }

const char *keel_redis_last_error(const keel_redis_t *r) { return r ? r->last_err : ""; }

void keel_redis_get_stats(const keel_redis_t *r, keel_redis_stats_t *out) {
    *out = r->st;
    out->pending = r->pending;
}
