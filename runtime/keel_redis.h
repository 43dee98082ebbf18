#ifndef KEEL_REDIS_H
#define KEEL_REDIS_H
/* An asynchronous Redis connection on a libuv loop: our own non-blocking
 * socket and RESP formatting, with hiredis' reply reader (read.h) for
 * parsing. Knows nothing of Lua: every request carries a caller-chosen 64-bit id
 * and ends with exactly one call of on_reply, whatever happens (reply,
 * timeout, connection loss, close).
 *
 * - Pipelining: commands issued during one loop iteration are written
 *   together, in one send just before the loop polls.
 * - Timeouts: connect and per-request deadlines are read from the runtime
 *   clock (clock->now_ms); a uv timer only re-checks them.
 * - Reconnect: after a loss, exponential backoff with jitter drawn from the
 *   runtime PRNG. While waiting to reconnect, commands fail at once with
 *   KEEL_REDIS_ECONN instead of queueing behind a dead server.
 * - Limits: at most max_pending requests may be outstanding (including
 *   requests that timed out but whose reply has not arrived yet); past that
 *   keel_redis_command returns KEEL_REDIS_EFULL and on_reply is not called. */
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <hiredis/hiredis.h>
#include "keel_clock.h"
#include "keel_rand.h"

enum {
    KEEL_REDIS_OK = 0,       /* r is the reply (may be an error reply) */
    KEEL_REDIS_ETIMEOUT = 1, /* no reply before the deadline */
    KEEL_REDIS_ECONN = 2,    /* connection failed or lost */
    KEEL_REDIS_ECLOSED = 3,  /* client closed */
    KEEL_REDIS_EFULL = 4,    /* too many outstanding requests */
    KEEL_REDIS_EARG = 5      /* invalid arguments */
};

enum {
    KEEL_REDIS_S_CONNECTING = 0,
    KEEL_REDIS_S_READY = 1,
    KEEL_REDIS_S_BACKOFF = 2,
    KEEL_REDIS_S_CLOSED = 3
};

typedef struct keel_redis keel_redis_t;

/* r is valid only during the call. err is a NUL-terminated detail for
 * status != KEEL_REDIS_OK (e.g. "Connection refused"). */
typedef void (*keel_redis_reply_fn)(void *ud, uint64_t req_id, const redisReply *r,
                                    int status, const char *err);

typedef struct keel_redis_opts {
    const char *host;             /* IP, or a name resolved with uv_getaddrinfo at each connect; default "127.0.0.1" */
    int port;                     /* default 6379 */
    const char *password;         /* NULL: no AUTH */
    size_t password_len;
    const char *username;         /* NULL: AUTH <password> (Redis 6 ACL: AUTH user pass) */
    size_t username_len;
    int db;                       /* SELECT db when > 0 */
    double connect_timeout_ms;    /* default 2000 */
    double backoff_base_ms;       /* default 50 */
    double backoff_max_ms;        /* default 2000 */
    uint32_t max_pending;         /* default 65536 */
    keel_redis_reply_fn on_reply;
    void (*on_free)(void *ud);    /* called once when the client memory is gone */
    /* optional: called after a burst of on_reply calls (the end of a socket
     * read, a deadline check, a close), so the caller can hand many replies
     * over at once */
    void (*on_flush)(void *ud);
    /* optional, for pub/sub: in push mode (keel_redis_set_push_mode) a
     * "message", "pmessage" or "smessage" array is handed here instead of
     * answering a request; r == NULL says the connection was lost, and with
     * it every subscription */
    void (*on_push)(void *ud, const redisReply *r);
    void *ud;
} keel_redis_opts_t;

/* Starts connecting at once. Returns NULL on bad options or out of memory. */
keel_redis_t *keel_redis_new(uv_loop_t *loop, keel_clock_t *clock, keel_rand_t *rand,
                             const keel_redis_opts_t *opts);

/* Queues one command. timeout_ms: INFINITY for no deadline; <= 0 is a
 * deadline already due (the request fails with KEEL_REDIS_ETIMEOUT from the
 * loop's next deadline check, never inside this call); NaN is
 * KEEL_REDIS_EARG. Returns KEEL_REDIS_OK
 * (on_reply will be called exactly once, never from inside this call) or an
 * error code (on_reply will not be called for req_id); errbuf receives a
 * detail when non-NULL. */
int keel_redis_command(keel_redis_t *r, uint64_t req_id, int argc, const char **argv,
                       const size_t *argvlen, double timeout_ms);

/* keel_redis_command with up to 6 arguments passed one by one (unused ones
 * NULL, 0): scalar arguments only, so LuaJIT's FFI can call it from
 * compiled code. argc outside 1..6 returns KEEL_REDIS_EARG. */
int keel_redis_send(keel_redis_t *r, uint64_t req_id, double timeout_ms, int argc,
                    const char *a0, size_t l0, const char *a1, size_t l1, const char *a2, size_t l2,
                    const char *a3, size_t l3, const char *a4, size_t l4, const char *a5, size_t l5);

/* Fails every outstanding request with KEEL_REDIS_ECLOSED (from the loop,
 * not inside this call), disconnects and frees the client once its handles
 * are closed. Safe inside on_reply. Further calls on r are invalid. */
void keel_redis_close(keel_redis_t *r);

/* Like close, but on_reply is not called again: for finalizers that run when
 * the caller's state is going away. */
void keel_redis_abandon(keel_redis_t *r);

/* Push mode, for a connection that (P|S)SUBSCRIBEs: published messages
 * arrive without a request. Subscribe and unsubscribe one channel per
 * command, so each confirmation answers its own request. */
void keel_redis_set_push_mode(keel_redis_t *r, int on);

int keel_redis_state(const keel_redis_t *r);
const char *keel_redis_last_error(const keel_redis_t *r);

typedef struct keel_redis_stats {
    uint64_t sent, replies, error_replies, timeouts, conn_errors, full;
    uint64_t connects, reconnects, connect_failures;
    uint32_t pending;
} keel_redis_stats_t;
void keel_redis_get_stats(const keel_redis_t *r, keel_redis_stats_t *out);

#endif
