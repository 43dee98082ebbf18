#include "keel_redis.h"
#include "keel_timers.h"
#include <hiredis/async.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLOT_FREE = 0, SLOT_ACTIVE = 1, SLOT_ABANDONED = 2 };

typedef struct {
    uint64_t req_id;
    double sent_ms;
    int32_t timer;     /* keel_timers id, -1 when no deadline */
    int32_t next_free;
    uint8_t state;
} slot_t;

struct keel_redis {
    uv_loop_t *loop;
    keel_clock_t *clock;
    keel_rand_t *rand;
    keel_redis_opts_t o;
    char *host, *password, *username;

    redisAsyncContext *ac;
    int state;
    int handshake_failed;   /* AUTH/SELECT failed: replies on this ac are not trusted */
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
    int handles_open;
    int closing, abandoned, teardown_done;
    int in_cb;              /* inside a hiredis callback of r->ac */
    int in_flush;
    int mask_sigpipe;       /* SIGPIPE is not ignored: writes block it (see write_without_sigpipe) */
    uint32_t ndeliv;        /* on_reply calls since the last on_flush */
    uv_prepare_t flush_prep;

    /* Name resolution runs on libuv's thread pool (hiredis would block the
     * loop in getaddrinfo); commands issued meanwhile wait here, formatted. */
    int resolving;
    uint32_t dns_gen, dns_reqs;
    uv_getaddrinfo_t *dns_req;
    struct early { uint32_t slot; sds cmd; } *early;
    uint32_t nearly, early_cap;

    keel_redis_stats_t st;
};

typedef struct {
    uv_getaddrinfo_t req;
    keel_redis_t *r;
    uint32_t gen;
} resolve_t;


/* ---- libuv adapter ----
 * Our own copy of hiredis' adapters/libuv.h: the 0.14 one ignores a poll
 * callback with a non-zero status, which libuv uses to report a refused or
 * reset socket, so a failed connect would never be noticed. On error we let
 * hiredis try the pending direction(s) so it sees the socket error itself. */

typedef struct {
    redisAsyncContext *context;
    uv_poll_t handle;
    int events;         /* wanted */
    int active;         /* registered with the poll handle */
    int defer_write;    /* a write waits for the prepare-phase flush */
} uv_events_t;

/* hiredis writes with write(): to a socket the server has closed that
 * raises SIGPIPE, which kills a host that did not ignore it (the keel CLI
 * does). Then each write runs with SIGPIPE blocked in this thread, and a
 * SIGPIPE it raised is taken off the pending set before unblocking. Hosts
 * that ignore SIGPIPE pay nothing. */
static int sigpipe_ignored(void) {
    struct sigaction sa;
    return sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN;
}

static void write_without_sigpipe(redisAsyncContext *ac, int mask) {
    if (!mask) {
        redisAsyncHandleWrite(ac);
        return;
    }
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    redisAsyncHandleWrite(ac);
    if (!sigismember(&old, SIGPIPE)) {
        sigset_t pending;
        struct timespec zero = { 0, 0 };
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) sigtimedwait(&pipe_set, NULL, &zero);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
}

static void flush_deliveries(keel_redis_t *r);

static void ev_poll(uv_poll_t *handle, int status, int events) {
    uv_events_t *p = handle->data;
    int ev = status ? p->events : events;
    /* r outlives this call: frees are deferred while callbacks run */
    keel_redis_t *r = p->context ? p->context->data : NULL;
    if (p->context && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
    if (p->context && (ev & UV_WRITABLE)) write_without_sigpipe(p->context, r ? r->mask_sigpipe : 1);
    if (r) flush_deliveries(r);
}

/* uv_poll_start re-registers with epoll even when nothing changed: only
 * call it on a real change of the mask */
static void ev_update(uv_events_t *p) {
    if (p->events == p->active) return;
    p->active = p->events;
    if (p->events) uv_poll_start(&p->handle, p->events, ev_poll);
    else uv_poll_stop(&p->handle);
}

static void flush_cb(uv_prepare_t *h);

/* Writes are flushed once per loop iteration, just before the loop polls,
 * by writing to the socket directly: every command queued during the
 * iteration goes out in one write, without asking epoll about writability
 * (the socket almost always is). Only a partial write (full socket buffer)
 * or a connect in progress waits for UV_WRITABLE. */
static void ev_add_write(void *d) {
    uv_events_t *p = d;
    redisAsyncContext *ac = p->context;
    keel_redis_t *r = ac ? ac->data : NULL;
    if (r && (ac->c.flags & REDIS_CONNECTED) && !r->in_flush && r->ac == ac) {
        p->defer_write = 1;
        if (!uv_is_active((uv_handle_t *)&r->flush_prep)) uv_prepare_start(&r->flush_prep, flush_cb);
        return;
    }
    p->events |= UV_WRITABLE;
    ev_update(p);
}

static void ev_add_read(void *d) { uv_events_t *p = d; p->events |= UV_READABLE; ev_update(p); }
static void ev_del_read(void *d) { uv_events_t *p = d; p->events &= ~UV_READABLE; ev_update(p); }
static void ev_del_write(void *d) {
    uv_events_t *p = d;
    p->defer_write = 0;
    p->events &= ~UV_WRITABLE;
    ev_update(p);
}

static void flush_cb(uv_prepare_t *h) {
    keel_redis_t *r = h->data;
    uv_prepare_stop(h);
    redisAsyncContext *ac = r->ac;
    if (!ac || !ac->ev.data) return;
    uv_events_t *p = ac->ev.data;
    if (!p->defer_write) return;
    p->defer_write = 0;
    r->in_flush = 1;
    write_without_sigpipe(ac, r->mask_sigpipe); /* may free ac on a write error */
    r->in_flush = 0;
    flush_deliveries(r);
}

static void ev_on_close(uv_handle_t *h) { free(h->data); }

static void ev_cleanup(void *d) {
    uv_events_t *p = d;
    p->context = NULL;
    uv_close((uv_handle_t *)&p->handle, ev_on_close);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac->ev.data) return REDIS_ERR;
    uv_events_t *p = calloc(1, sizeof *p);
    if (!p) return REDIS_ERR;
    if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) { free(p); return REDIS_ERR; }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ac->ev.data = p;
    p->handle.data = p;
    p->context = ac;
    return REDIS_OK;
}

static void start_connect(keel_redis_t *r);
static void arm_deadline_timer(keel_redis_t *r);
static void backoff_cb(uv_timer_t *t);

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
    int busy = !r->closing && (r->pending > 0);
    if (r->ac && r->ac->ev.data) {
        uv_events_t *p = r->ac->ev.data;
        /* an idle client, even one reconnecting, never keeps a finished
         * program alive */
        if (busy) uv_ref((uv_handle_t *)&p->handle);
        else uv_unref((uv_handle_t *)&p->handle);
    }
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
    memset(&r->slots[i], 0, sizeof r->slots[i]);
    r->slots[i].timer = -1;
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

static void flush_deliveries(keel_redis_t *r) {
    if (r->ndeliv == 0) return;
    r->ndeliv = 0;
    if (r->abandoned || !r->o.on_flush) return;
    r->in_cb++;
    r->o.on_flush(r->o.ud);
    r->in_cb--;
}

/* Ends a slot's request now (timeout, close) without waiting for its reply;
 * the slot itself stays allocated until hiredis hands it back. */
static void slot_fail(keel_redis_t *r, uint32_t i, int status, const char *err) {
    slot_t *s = &r->slots[i];
    if (s->state != SLOT_ACTIVE) return;
    s->state = SLOT_ABANDONED;
    if (s->timer >= 0) keel_timers_cancel(r->timers, s->timer);
    s->timer = -1;
    deliver(r, s->req_id, NULL, status, err);
}

/* ---- freeing ---- */

static void maybe_free(keel_redis_t *r) {
    if (!r->teardown_done || r->handles_open > 0 || r->ac || r->dns_reqs > 0) return;
    void (*on_free)(void *) = r->o.on_free;
    void *ud = r->o.ud;
    keel_timers_free(r->timers);
    free(r->early);
    free(r->timer_slot);
    free(r->slots);
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

/* ---- hiredis callbacks ---- */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    keel_redis_t *r = ac->data;
    uint32_t i = (uint32_t)((uintptr_t)privdata - 1);
    redisReply *rep = reply;
    slot_t *s = &r->slots[i];
    r->in_cb++;
    if (rep) { r->last_reply_ms = io_now(r); r->stale_timeouts = 0; }
    if (s->state == SLOT_ACTIVE) {
        uint64_t id = s->req_id;
        s->state = SLOT_ABANDONED; /* nothing may fail it twice while we deliver */
        if (s->timer >= 0) keel_timers_cancel(r->timers, s->timer);
        s->timer = -1;
        if (!rep) {
            r->st.conn_errors++;
            char buf[300];
            const char *why = r->last_err[0] ? r->last_err : "connection lost";
            if (r->ac == ac && ac->err && ac->errstr[0] && !r->handshake_failed) {
                snprintf(buf, sizeof buf, "connection lost: %s", ac->errstr);
                why = buf;
            }
            deliver(r, id, NULL, r->closing ? KEEL_REDIS_ECLOSED : KEEL_REDIS_ECONN,
                    r->closing ? "client closed" : why);
        } else if (r->handshake_failed) {
            r->st.conn_errors++;
            deliver(r, id, NULL, KEEL_REDIS_ECONN, r->last_err);
        } else {
            r->st.replies++;
            if (rep->type == REDIS_REPLY_ERROR) r->st.error_replies++;
            deliver(r, id, rep, KEEL_REDIS_OK, NULL);
        }
    }
    slot_release(r, i);
    r->in_cb--;
    update_ref(r);
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

static void on_connect(const redisAsyncContext *ac, int status) {
    keel_redis_t *r = ac->data;
    if (r->ac != ac) return;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this returns and fails its queued commands */
        r->st.connect_failures++;
        set_err(r, "connect failed: ", ac->errstr);
        r->ac = NULL;
        schedule_reconnect(r);
        return;
    }
    r->st.connects++;
    if (r->attempt > 0 || r->st.connects > 1) r->st.reconnects++;
    r->attempt = 0;
    r->stale_timeouts = 0;
    if (!r->handshake_failed) r->state = KEEL_REDIS_S_READY;
    update_ref(r);
    arm_deadline_timer(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    keel_redis_t *r = ac->data;
    if (r->ac != ac) return;
    r->ac = NULL;
    if (status != REDIS_OK && !r->handshake_failed) set_err(r, "connection lost: ", ac->errstr);
    if (r->closing) { maybe_free(r); return; }
    schedule_reconnect(r);
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
    keel_redis_t *r = ac->data;
    redisReply *rep = reply;
    const char *what = privdata; /* "auth" or "select" */
    if (!rep || r->ac != ac) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        char pre[32];
        snprintf(pre, sizeof pre, "%s failed: ", what);
        set_err(r, pre, rep->str);
        r->handshake_failed = 1;
        r->state = KEEL_REDIS_S_BACKOFF;
        /* commands pipelined behind the handshake get their replies read and
         * then failed with this error; the connection is dropped afterwards */
        redisAsyncDisconnect(ac);
    }
}

/* Commands queued while the host name was being resolved: sent once a
 * connection attempt exists, or failed with it. */
static void send_early(keel_redis_t *r, redisAsyncContext *ac) {
    for (uint32_t k = 0; k < r->nearly; k++) {
        struct early *e = &r->early[k];
        if (redisAsyncFormattedCommand(ac, on_reply, (void *)(uintptr_t)(e->slot + 1), e->cmd, sdslen(e->cmd)) != REDIS_OK) {
            slot_fail(r, e->slot, KEEL_REDIS_ECONN, "connection lost");
            slot_release(r, e->slot);
        }
        sdsfree(e->cmd);
    }
    r->nearly = 0;
}

static void fail_early(keel_redis_t *r, int status, const char *why) {
    for (uint32_t k = 0; k < r->nearly; k++) {
        struct early *e = &r->early[k];
        slot_fail(r, e->slot, status, why);
        slot_release(r, e->slot);
        sdsfree(e->cmd);
    }
    r->nearly = 0;
}

static void connect_failed(keel_redis_t *r, const char *prefix, const char *detail) {
    set_err(r, prefix, detail);
    r->st.connect_failures++;
    fail_early(r, KEEL_REDIS_ECONN, r->last_err);
    flush_deliveries(r);
    schedule_reconnect(r);
}

static void connect_to(keel_redis_t *r, const char *ip) {
    redisAsyncContext *ac = redisAsyncConnect(ip, r->o.port);
    if (!ac) {
        connect_failed(r, "connect failed: ", "out of memory");
        return;
    }
    if (ac->err) {
        char why[sizeof ac->errstr];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        connect_failed(r, "connect failed: ", why);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        connect_failed(r, "connect failed: ", "cannot attach to loop");
        return;
    }
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (r->password) {
        if (r->username) {
            const char *argv[3] = { "AUTH", r->username, r->password };
            size_t lens[3] = { 4, r->o.username_len, r->o.password_len };
            redisAsyncCommandArgv(ac, on_handshake, "auth", 3, argv, lens);
        } else {
            const char *argv[2] = { "AUTH", r->password };
            size_t lens[2] = { 4, r->o.password_len };
            redisAsyncCommandArgv(ac, on_handshake, "auth", 2, argv, lens);
        }
    }
    if (r->o.db > 0) {
        char db[16];
        int n = snprintf(db, sizeof db, "%d", r->o.db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, (size_t)n };
        redisAsyncCommandArgv(ac, on_handshake, "select", 2, argv, lens);
    }
    send_early(r, ac);
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
    r->mask_sigpipe = !sigpipe_ignored(); /* the host may change it: asked per connection */
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
    if ((r->ac || r->resolving) && r->state == KEEL_REDIS_S_CONNECTING && (d < 0 || r->connect_deadline < d))
        d = r->connect_deadline;
    return d;
}

static void deadline_cb(uv_timer_t *t);

static void arm_deadline_timer(keel_redis_t *r) {
    if (r->closing) return;
    double d = next_deadline(r);
    if (d < 0) { uv_timer_stop(&r->deadline_timer); return; }
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

static void drop_connection(keel_redis_t *r, const char *why) {
    if (!r->ac) return;
    set_err(r, "", why);
    redisAsyncContext *ac = r->ac;
    if (r->state == KEEL_REDIS_S_CONNECTING && !(ac->c.flags & REDIS_CONNECTED)) {
        /* not connected: hiredis will not call on_disconnect */
        r->ac = NULL;
        r->st.connect_failures++;
        redisAsyncFree(ac);
        schedule_reconnect(r);
    } else {
        redisAsyncFree(ac); /* on_disconnect schedules the reconnect */
    }
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
    if (r->ac && r->state == KEEL_REDIS_S_CONNECTING && now >= r->connect_deadline && !r->in_cb) {
        char msg[96];
        snprintf(msg, sizeof msg, "connect timeout: no connection after %.0f ms", r->o.connect_timeout_ms);
        drop_connection(r, msg);
    }
    int stale = 0;
    int32_t id;
    while ((id = keel_timers_pop_expired(r->timers, now)) >= 0) {
        uint32_t i = r->timer_slot[id];
        slot_t *s = &r->slots[i];
        s->timer = -1;
        if (s->state != SLOT_ACTIVE) continue;
        /* a server that keeps saying nothing since our requests were sent
         * is hung or unreachable: reconnect instead of piling up requests */
        if (r->last_reply_ms < s->sent_ms) stale++;
        r->st.timeouts++;
        slot_fail(r, i, KEEL_REDIS_ETIMEOUT, "no reply before the deadline");
        if (r->closing) { flush_deliveries(r); return; }
    }
    /* one slow command is not a dead server; several silent deadlines are */
    r->stale_timeouts += stale;
    if (r->stale_timeouts >= 3 && r->ac && r->state == KEEL_REDIS_S_READY && !r->in_cb)
        drop_connection(r, "connection dropped: server not responding");
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

static int queue_early(keel_redis_t *r, uint32_t slot, int argc, const char **argv, const size_t *argvlen) {
    if (r->nearly == r->early_cap) {
        uint32_t ncap = r->early_cap ? r->early_cap * 2 : 16;
        struct early *e = realloc(r->early, (size_t)ncap * sizeof *e);
        if (!e) return -1;
        r->early = e;
        r->early_cap = ncap;
    }
    sds cmd = NULL;
    if (redisFormatSdsCommandArgv(&cmd, argc, argv, argvlen) < 0 || !cmd) return -1;
    r->early[r->nearly].slot = slot;
    r->early[r->nearly].cmd = cmd;
    r->nearly++;
    return 0;
}

int keel_redis_command(keel_redis_t *r, uint64_t req_id, int argc, const char **argv,
                       const size_t *argvlen, double timeout_ms) {
    if (!r || r->closing) return KEEL_REDIS_ECLOSED;
    if (argc < 1 || !argv || !argvlen) return KEEL_REDIS_EARG;
    if ((!r->ac && !r->resolving) || r->state == KEEL_REDIS_S_BACKOFF) { r->st.conn_errors++; return KEEL_REDIS_ECONN; }
    int32_t i = slot_alloc(r);
    if (i < 0) { r->st.full++; return KEEL_REDIS_EFULL; }
    slot_t *s = &r->slots[i];
    s->req_id = req_id;
    s->state = SLOT_ACTIVE;
    s->sent_ms = io_now(r);
    if (!r->ac) {
        if (queue_early(r, (uint32_t)i, argc, argv, argvlen) != 0) {
            slot_release(r, (uint32_t)i);
            r->st.full++;
            return KEEL_REDIS_EFULL;
        }
    } else if (redisAsyncCommandArgv(r->ac, on_reply, (void *)(uintptr_t)(i + 1), argc, argv, argvlen) != REDIS_OK) {
        slot_release(r, (uint32_t)i);
        r->st.conn_errors++;
        return KEEL_REDIS_ECONN;
    }
    if (timeout_ms > 0) {
        int32_t tid = keel_timers_add(r->timers, s->sent_ms + timeout_ms);
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
                if (keel_timers_next(r->timers) == s->sent_ms + timeout_ms) arm_deadline_timer(r);
            }
        }
    }
    r->st.sent++;
    if (r->pending == 1) { update_ref(r); arm_deadline_timer(r); }
    return KEEL_REDIS_OK;
}

static void teardown(keel_redis_t *r) {
    if (r->teardown_done) return;
    fail_early(r, KEEL_REDIS_ECLOSED, "client closed");
    if (r->resolving && r->dns_req) uv_cancel((uv_req_t *)r->dns_req);
    r->resolving = 0;
    r->dns_req = NULL;
    for (uint32_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_ACTIVE) slot_fail(r, i, KEEL_REDIS_ECLOSED, "client closed");
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
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        /* a context that never connected gets no on_disconnect; one that did
         * clears r->ac from on_disconnect, so clear it either way */
        redisAsyncFree(ac);
        r->ac = NULL;
    }
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
     * unless we are inside our own hiredis callback */
    if (r->in_cb) uv_timer_start(&r->close_timer, close_cb, 0, 0);
    else teardown(r);
}

int keel_redis_state(const keel_redis_t *r) { return r ? r->state : KEEL_REDIS_S_CLOSED; }

const char *keel_redis_last_error(const keel_redis_t *r) { return r ? r->last_err : ""; }

void keel_redis_get_stats(const keel_redis_t *r, keel_redis_stats_t *out) {
    *out = r->st;
    out->pending = r->pending;
}
