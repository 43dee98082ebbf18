/* Lua glue for runtime/keel_redis: the module "keel.redis.core".
 * Replies are converted inside the reply callback (so no redisReply
 * outlives it) and handed to the waiting tasks once per socket read (see
 * on_flush). Simple replies to single calls (integer, status, string, nil,
 * error) are recorded in a plain C array that lua/keel/redis.lua reads
 * through the FFI, with no Lua API call per reply; arrays and batch replies
 * are built as Lua values. Request ids: a single call uses
 * (completion id << 1); a pipeline batch uses (batch pointer | 1), its
 * replies arriving in order. */
#include <lua.h>
#include <lauxlib.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "keel_rt.h"
#include "keel_redis.h"

#define CONN_MT "keel.redis.conn"
#define MAX_ARGS 1048576

/* The layout is repeated in lua/keel/redis.lua's ffi.cdef; core.layout()
 * reports this side's, and a spec compares the two. */
enum { DONE_NUM = 0, DONE_STR = 1, DONE_NIL = 2, DONE_ERR = 3 };
typedef struct {
    double id;
    double num;            /* DONE_NUM */
    uint32_t off, len;     /* DONE_STR, DONE_ERR: bytes in the arena */
    int32_t kind;
    int32_t pad;
} keel_redis_done_t;

typedef struct {
    keel_redis_done_t *items;
    char *arena;
    uint32_t n, cap;
    uint32_t arena_len, arena_cap;
} keel_redis_ring_t;

#define FAST_MAX_STR 65536 /* longer strings are built as Lua strings directly */
#define FAST_MAX_ARENA (1u << 30) /* past this within one read burst, the Lua API path (no uint32 overflow) */

typedef struct {
    keel_redis_t *r;     /* NULL once closed */
    keel_runtime *rt;
    int dead;            /* the Lua side is gone: drop replies */
    keel_redis_t *closing_r; /* after close(): the client until on_free */
    keel_closer *closer;     /* abandons closing_r if the runtime is freed first */
    /* Replies wait in the inbox (id, value, error triples) until the end of
     * the read that produced them; then one Lua call hands them all to
     * their tasks instead of one protected call per reply. */
    int inbox_ref, drain_ref;
    int inbox_n;
    keel_redis_ring_t ring;
} glue_t;

typedef struct {
    glue_t *g;
    int64_t id;
    int ref;             /* registry ref of the results table */
    int n, next;
    int failed;
    char err[300];
} batch_t;

static const char *status_code(int status) {
    switch (status) {
    case KEEL_REDIS_ETIMEOUT: return "timeout";
    case KEEL_REDIS_ECONN: return "conn";
    case KEEL_REDIS_ECLOSED: return "closed";
    case KEEL_REDIS_EFULL: return "full";
    default: return "error";
    }
}

static void push_reply(lua_State *L, const redisReply *r, int nested) {
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_NIL:
        /* inside an array nil would punch a hole; false keeps # and ipairs */
        if (nested) lua_pushboolean(L, 0); else lua_pushnil(L);
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str, r->len);
        lua_setfield(L, -2, "err");
        break;
    case REDIS_REPLY_ARRAY: {
        lua_createtable(L, (int)(r->elements > 1u << 24 ? 1u << 24 : r->elements), 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i], 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    }
    default:
        lua_pushnil(L);
    }
}

static void push_failure(lua_State *L, int status, const char *err) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", status_code(status), err ? err : "");
}

/* Moves the top two values (value, error) into the inbox under id; id < 0
 * files them under false, for a published message (see deliver_push). */
static void inbox_put(glue_t *g, lua_State *L, int64_t id) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->inbox_ref);
    int n = g->inbox_n;
    if (id < 0) lua_pushboolean(L, 0);
    else lua_pushnumber(L, (lua_Number)id);
    lua_rawseti(L, -2, n + 1);
    lua_insert(L, -3);          /* inbox value err */
    lua_rawseti(L, -3, n + 3);
    lua_rawseti(L, -2, n + 2);
    lua_pop(L, 1);
    g->inbox_n = n + 3;
}

static void on_flush(void *ud) {
    glue_t *g = ud;
    if (g->dead || (g->inbox_n == 0 && g->ring.n == 0)) return;
    lua_State *L = keel_rt_state(g->rt);
    int n = g->inbox_n;
    g->inbox_n = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->drain_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->inbox_ref);
    lua_pushinteger(L, n);
    lua_pushlightuserdata(L, &g->ring);
    if (lua_pcall(L, 3, 0, 0) != 0) {
        fprintf(stderr, "keel.redis: delivering replies failed: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    g->ring.n = 0;
    g->ring.arena_len = 0;
    keel_rt_schedule(g->rt);
}

/* Records a simple reply for the FFI drain; 0 when it must take the Lua
 * API path (an array, a long string, no memory). */
static int fast_put(glue_t *g, uint64_t id, const redisReply *rep) {
    keel_redis_ring_t *q = &g->ring;
    int kind;
    switch (rep->type) {
    case REDIS_REPLY_INTEGER: kind = DONE_NUM; break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS: kind = DONE_STR; break;
    case REDIS_REPLY_NIL: kind = DONE_NIL; break;
    case REDIS_REPLY_ERROR: kind = DONE_ERR; break;
    default: return 0;
    }
    if (q->n == q->cap) {
        uint32_t ncap = q->cap ? q->cap * 2 : 64;
        keel_redis_done_t *it = realloc(q->items, (size_t)ncap * sizeof *it);
        if (!it) return 0;
        q->items = it;
        q->cap = ncap;
    }
    keel_redis_done_t *e = &q->items[q->n];
    e->id = (double)id;
    e->kind = kind;
    e->num = 0;
    e->off = e->len = 0;
    if (kind == DONE_NUM) {
        e->num = (double)rep->integer;
    } else if (kind != DONE_NIL) {
        if (rep->len > FAST_MAX_STR || q->arena_len > FAST_MAX_ARENA - FAST_MAX_STR) return 0;
        uint32_t len = (uint32_t)rep->len;
        if (q->arena_len + len > q->arena_cap) {
            uint32_t ncap = q->arena_cap ? q->arena_cap : 4096;
            while (ncap < q->arena_len + len) ncap *= 2;
            char *a = realloc(q->arena, ncap);
            if (!a) return 0;
            q->arena = a;
            q->arena_cap = ncap;
        }
        if (len) memcpy(q->arena + q->arena_len, rep->str, len);
        e->off = q->arena_len;
        e->len = len;
        q->arena_len += len;
    }
    q->n++;
    return 1;
}

static void on_batch_reply(batch_t *b, lua_State *L, const redisReply *rep, int status, const char *err) {
    int i = ++b->next;
    if (!b->failed) {
        if (status != KEEL_REDIS_OK) {
            b->failed = 1;
            snprintf(b->err, sizeof b->err, "%s: %s", status_code(status), err ? err : "");
        } else {
            lua_rawgeti(L, LUA_REGISTRYINDEX, b->ref);
            if (rep->type == REDIS_REPLY_ERROR) {
                lua_getfield(L, -1, "err");
                lua_pushlstring(L, rep->str, rep->len);
                lua_rawseti(L, -2, i);
                lua_pop(L, 1);
            } else if (rep->type != REDIS_REPLY_NIL) {
                push_reply(L, rep, 0);
                lua_rawseti(L, -2, i);
            }
            lua_pop(L, 1);
        }
    }
    if (b->next < b->n) return;
    if (b->failed) {
        lua_pushnil(L);
        lua_pushstring(L, b->err);
    } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, b->ref);
        lua_pushnil(L);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, b->ref);
    inbox_put(b->g, L, b->id);
    free(b);
}

typedef struct {
    glue_t *g;
    uint64_t req_id;
    const redisReply *rep;
    int status;
    const char *err;
} reply_ctx;

static int deliver_reply(lua_State *L) {
    reply_ctx *c = lua_touserdata(L, 1);
    lua_pop(L, 1);
    if (c->req_id & 1) {
        on_batch_reply((batch_t *)(uintptr_t)(c->req_id & ~(uint64_t)1), L, c->rep, c->status, c->err);
        return 0;
    }
    if (c->status != KEEL_REDIS_OK) {
        push_failure(L, c->status, c->err);
    } else if (c->rep->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, c->rep->str, c->rep->len);
    } else {
        push_reply(L, c->rep, 0);
        lua_pushnil(L);
    }
    inbox_put(c->g, L, (int64_t)(c->req_id >> 1));
    return 0;
}

/* Building the Lua value of a big reply can run out of memory; in a
 * protected call that costs this reply (its caller times out), not the
 * process (an unprotected Lua error aborts it). */
static void on_reply(void *ud, uint64_t req_id, const redisReply *rep, int status, const char *err) {
    glue_t *g = ud;
    if (g->dead) {
        if (req_id & 1) {
            batch_t *b = (batch_t *)(uintptr_t)(req_id & ~(uint64_t)1);
            if (++b->next >= b->n) free(b);
        }
        return;
    }
    if (!(req_id & 1) && status == KEEL_REDIS_OK && fast_put(g, req_id >> 1, rep)) return;
    lua_State *L = keel_rt_state(g->rt);
    reply_ctx c = { g, req_id, rep, status, err };
    if (lua_cpcall(L, deliver_reply, &c) != 0) {
        fprintf(stderr, "keel.redis: dropping a reply: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

typedef struct {
    glue_t *g;
    const redisReply *rep;
} push_ctx;

/* A published message as its array (false for "subscriptions lost"),
 * handed to the connection's drain with the replies of the same read. */
static int deliver_push(lua_State *L) {
    push_ctx *c = lua_touserdata(L, 1);
    lua_pop(L, 1);
    if (c->rep) push_reply(L, c->rep, 0);
    else lua_pushboolean(L, 0);
    lua_pushnil(L);
    inbox_put(c->g, L, -1);
    return 0;
}

static void on_push(void *ud, const redisReply *rep) {
    glue_t *g = ud;
    if (g->dead) return;
    lua_State *L = keel_rt_state(g->rt);
    push_ctx c = { g, rep };
    if (lua_cpcall(L, deliver_push, &c) != 0) {
        fprintf(stderr, "keel.redis: dropping a published message: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

static void on_free(void *ud) {
    glue_t *g = ud;
    if (g->closer) keel_rt_remove_closer(g->rt, g->closer);
    if (!g->dead) {
        lua_State *L = keel_rt_state(g->rt);
        luaL_unref(L, LUA_REGISTRYINDEX, g->inbox_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, g->drain_ref);
    }
    free(g->ring.items);
    free(g->ring.arena);
    free(g);
}

static glue_t *check_conn(lua_State *L, int idx) {
    glue_t **p = luaL_checkudata(L, idx, CONN_MT);
    return *p;
}

/* new(host, port, password|nil, username|nil, db, connect_timeout_ms,
 *     backoff_base_ms, backoff_max_ms, max_pending, drain) -> conn | nil, err
 * drain(inbox, n, ring) completes every reply recorded in ring (a
 * keel_redis_ring_t *, as light userdata), then inbox[i] with inbox[i+1],
 * inbox[i+2] for i = 1, 4, ... < n (inbox[i] false: a published message),
 * and clears the inbox. */
static int l_new(lua_State *L) {
    keel_runtime *rt = keel_rt_from_lua(L);
    if (!rt) return luaL_error(L, "keel.redis: no runtime");
    keel_redis_opts_t o;
    memset(&o, 0, sizeof o);
    o.host = luaL_checkstring(L, 1);
    o.port = (int)luaL_checkinteger(L, 2);
    if (!lua_isnil(L, 3)) o.password = luaL_checklstring(L, 3, &o.password_len);
    if (!lua_isnil(L, 4)) o.username = luaL_checklstring(L, 4, &o.username_len);
    o.db = (int)luaL_optinteger(L, 5, 0);
    o.connect_timeout_ms = luaL_optnumber(L, 6, 2000);
    o.backoff_base_ms = luaL_optnumber(L, 7, 50);
    o.backoff_max_ms = luaL_optnumber(L, 8, 2000);
    o.max_pending = (uint32_t)luaL_optinteger(L, 9, 65536);
    luaL_checktype(L, 10, LUA_TFUNCTION);
    o.on_reply = on_reply;
    o.on_free = on_free;
    o.on_flush = on_flush;
    o.on_push = on_push;
    glue_t *g = calloc(1, sizeof *g);
    if (!g) return luaL_error(L, "keel.redis: out of memory");
    g->rt = rt;
    lua_pushvalue(L, 10);
    g->drain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 64, 0);
    g->inbox_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    o.ud = g;
    glue_t **p = lua_newuserdata(L, sizeof *p);
    *p = NULL;
    luaL_getmetatable(L, CONN_MT);
    lua_setmetatable(L, -2);
    g->r = keel_redis_new(keel_rt_loop(rt), keel_rt_clock(rt), keel_rt_rand(rt), &o);
    if (!g->r) {
        luaL_unref(L, LUA_REGISTRYINDEX, g->inbox_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, g->drain_ref);
        free(g);
        lua_pushnil(L);
        lua_pushliteral(L, "keel.redis: cannot create client (out of memory)");
        return 2;
    }
    *p = g;
    return 1;
}

static int l_gc(lua_State *L) {
    glue_t **p = luaL_checkudata(L, 1, CONN_MT);
    glue_t *g = *p;
    if (g && g->r) {
        g->dead = 1;
        keel_redis_abandon(g->r); /* frees g through on_free */
        g->r = NULL;
    }
    *p = NULL;
    return 0;
}

/* The runtime is being freed before a closed client's deferred teardown
 * fired: tear it down now, telling no one (the Lua state is gone). */
static void abandon_closed(void *ud) {
    glue_t *g = ud;
    g->closer = NULL;
    g->dead = 1;
    keel_redis_abandon(g->closing_r); /* frees g through on_free */
}

static int l_close(lua_State *L) {
    glue_t **p = luaL_checkudata(L, 1, CONN_MT);
    glue_t *g = *p;
    /* g now belongs to the C client until on_free: it still receives the
     * "closed" failures of outstanding requests */
    *p = NULL;
    if (g && g->r) {
        g->closing_r = g->r;
        g->closer = keel_rt_add_closer(g->rt, abandon_closed, g);
        keel_redis_close(g->r);
        g->r = NULL;
    }
    return 0;
}

/* ready(conn) -> true | nil, err: whether a command can be queued now */
static int l_ready(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    if (!g || !g->r) { push_failure(L, KEEL_REDIS_ECLOSED, "client closed"); return 2; }
    int st = keel_redis_state(g->r);
    if (st == KEEL_REDIS_S_BACKOFF) {
        const char *e = keel_redis_last_error(g->r);
        push_failure(L, KEEL_REDIS_ECONN, e[0] ? e : "not connected");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int fill_args(lua_State *L, int first, int last, const char **argv, size_t *lens) {
    for (int i = first; i <= last; i++) {
        int t = lua_type(L, i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_error(L, "keel.redis: command argument %d must be a string or number (got %s)",
                              i - first + 1, lua_typename(L, t));
        argv[i - first] = lua_tolstring(L, i, &lens[i - first]);
    }
    return 0;
}

/* A completion id from Lua; converting NaN, inf or a huge number to
 * int64_t would be undefined behaviour (the module is reachable through
 * require, not only through keel.redis). */
static int64_t check_id(lua_State *L, int idx) {
    lua_Number n = luaL_checknumber(L, idx);
    luaL_argcheck(L, n >= 0 && n < 9007199254740992.0 && n == floor(n), idx,
                  "completion id must be an integer in [0, 2^53)");
    return (int64_t)n;
}

static int push_send_error(lua_State *L, glue_t *g, int rc) {
    const char *e = rc == KEEL_REDIS_ECONN ? keel_redis_last_error(g->r)
                  : rc == KEEL_REDIS_EFULL ? "too many outstanding requests"
                  : rc == KEEL_REDIS_ECLOSED ? "client closed" : "bad arguments";
    push_failure(L, rc, e[0] ? e : "not connected");
    return 2;
}

/* call(conn, id, timeout_ms, cmd, args...) -> true | nil, err */
static int l_call(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    if (!g || !g->r) { push_failure(L, KEEL_REDIS_ECLOSED, "client closed"); return 2; }
    int64_t id = check_id(L, 2);
    double timeout = luaL_optnumber(L, 3, HUGE_VAL);
    int top = lua_gettop(L);
    int argc = top - 3;
    if (argc < 1) return luaL_error(L, "keel.redis: call needs a command name");
    if (argc > MAX_ARGS) return luaL_error(L, "keel.redis: too many command arguments (%d)", argc);
    const char *sargv[16];
    size_t slens[16];
    const char **argv = sargv;
    size_t *lens = slens;
    if (argc > 16) {
        argv = lua_newuserdata(L, (size_t)argc * sizeof *argv);
        lens = lua_newuserdata(L, (size_t)argc * sizeof *lens);
    }
    fill_args(L, 4, top, argv, lens);
    int rc = keel_redis_command(g->r, (uint64_t)id << 1, argc, argv, lens, timeout);
    if (rc != KEEL_REDIS_OK) return push_send_error(L, g, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* batch(conn, id, timeout_ms, cmds) -> true | nil, err
 * cmds is a list of argument lists; the completion gets (results, nil) with
 * results = { [i] = value, n = count, err = { [i] = "ERR ..." } }, or
 * (nil, "code: detail") when any command failed at the connection level. */
static int l_batch(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    if (!g || !g->r) { push_failure(L, KEEL_REDIS_ECLOSED, "client closed"); return 2; }
    int64_t id = check_id(L, 2);
    double timeout = luaL_optnumber(L, 3, HUGE_VAL);
    luaL_checktype(L, 4, LUA_TTABLE);
    int n = (int)lua_objlen(L, 4);
    if (n == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "empty");
        return 2;
    }
    batch_t *b = calloc(1, sizeof *b);
    if (!b) return luaL_error(L, "keel.redis: out of memory");
    b->g = g;
    b->id = id;
    b->n = n;
    lua_createtable(L, n, 2);
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    lua_newtable(L);
    lua_setfield(L, -2, "err");
    b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    int sent = 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 4, i);
        int base = lua_gettop(L);
        int argc = (int)lua_objlen(L, base);
        if (lua_type(L, base) != LUA_TTABLE || argc < 1 || argc > MAX_ARGS) {
            lua_pop(L, 1);
            continue; /* validated in Lua; never reached */
        }
        /* most commands are short: their argv lives on the C stack, and
         * only long ones leave garbage behind */
        const char *sargv[16];
        size_t slens[16];
        const char **argv = sargv;
        size_t *lens = slens;
        if (argc > 16) {
            argv = lua_newuserdata(L, (size_t)argc * sizeof *argv);
            lens = lua_newuserdata(L, (size_t)argc * sizeof *lens);
        }
        int extra = argc > 16 ? 2 : 0;
        for (int k = 1; k <= argc; k++) lua_rawgeti(L, base, k);
        fill_args(L, base + 1 + extra, base + extra + argc, argv, lens);
        int rc = keel_redis_command(g->r, (uint64_t)(uintptr_t)b | 1u, argc, argv, lens, timeout);
        lua_settop(L, base - 1);
        if (rc != KEEL_REDIS_OK) {
            if (sent == 0) {
                luaL_unref(L, LUA_REGISTRYINDEX, b->ref);
                free(b);
                return push_send_error(L, g, rc);
            }
            /* the sent ones will still report; fail the rest right here */
            b->n = sent;
            b->failed = 1;
            snprintf(b->err, sizeof b->err, "%s: %s", status_code(rc),
                     rc == KEEL_REDIS_EFULL ? "too many outstanding requests" : keel_redis_last_error(g->r));
            break;
        }
        sent++;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* push_mode(conn, on): see keel_redis_set_push_mode */
static int l_push_mode(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    if (g && g->r) keel_redis_set_push_mode(g->r, lua_toboolean(L, 2));
    return 0;
}

/* handle(conn) -> light userdata keel_redis_t * for the FFI calls, or nil
 * once closed. The Lua side drops it when it closes the connection. */
static int l_handle(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    if (!g || !g->r) lua_pushnil(L);
    else lua_pushlightuserdata(L, g->r);
    return 1;
}

/* layout() -> sizes and offsets of the structs the FFI side reads */
static int l_layout(lua_State *L) {
    lua_createtable(L, 0, 8);
#define F(name, v) lua_pushinteger(L, (lua_Integer)(v)); lua_setfield(L, -2, name)
    F("done_size", sizeof(keel_redis_done_t));
    F("done_num", offsetof(keel_redis_done_t, num));
    F("done_off", offsetof(keel_redis_done_t, off));
    F("done_kind", offsetof(keel_redis_done_t, kind));
    F("ring_size", sizeof(keel_redis_ring_t));
    F("ring_arena", offsetof(keel_redis_ring_t, arena));
    F("ring_n", offsetof(keel_redis_ring_t, n));
    F("ring_arena_len", offsetof(keel_redis_ring_t, arena_len));
#undef F
    return 1;
}

static int l_state(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    static const char *names[] = { "connecting", "ready", "reconnecting", "closed" };
    int st = (g && g->r) ? keel_redis_state(g->r) : KEEL_REDIS_S_CLOSED;
    lua_pushstring(L, names[st & 3]);
    lua_pushstring(L, (g && g->r) ? keel_redis_last_error(g->r) : "");
    return 2;
}

static int l_stats(lua_State *L) {
    glue_t *g = check_conn(L, 1);
    keel_redis_stats_t s;
    memset(&s, 0, sizeof s);
    if (g && g->r) keel_redis_get_stats(g->r, &s);
    lua_createtable(L, 0, 10);
#define F(name) lua_pushnumber(L, (lua_Number)s.name); lua_setfield(L, -2, #name)
    F(sent); F(replies); F(error_replies); F(timeouts); F(conn_errors); F(full);
    F(connects); F(reconnects); F(connect_failures); F(pending);
#undef F
    return 1;
}

int luaopen_keel_redis_core(lua_State *L) {
    if (luaL_newmetatable(L, CONN_MT)) {
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "keel.redis.conn");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        { "new", l_new }, { "close", l_close }, { "ready", l_ready }, { "call", l_call },
        { "batch", l_batch }, { "state", l_state }, { "stats", l_stats },
        { "handle", l_handle }, { "layout", l_layout }, { "push_mode", l_push_mode }, { NULL, NULL }
    };
    lua_createtable(L, 0, 8);
    luaL_register(L, NULL, fns);
    return 1;
}
