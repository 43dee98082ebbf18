/* The runtime object: one Lua state, one world, driven by libuv.
 *
 * The Lua scheduler (lua/keel/sched.lua) does the work in "ticks"; this file
 * decides when a tick runs: an idle handle while tasks are runnable (so the
 * loop polls I/O without blocking between batches), a timer for the next
 * deadline, an async handle for events posted from other threads, and
 * directly after I/O completions. */
#include "keel.h"
#include "keel_rt.h"
#include "keel_reclaim.h"
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <limits.h>
#include <dlfcn.h>

enum { ST_WAITING = 0, ST_READY = 1, ST_DONE = 2, ST_STUCK = 3, ST_EXIT = 4, ST_PARKED = 5 };

/* The runtime's own loop handles live apart from it: on a host-owned loop
 * keel_free must not run the host's loop (its callbacks would fire in the
 * middle of the free), so the handles finish closing whenever the host runs
 * its loop next, and free this block themselves. */
typedef struct rt_handles {
    uv_idle_t idle;
    uv_timer_t timer;
    uv_async_t async;
    int open;
} rt_handles;

struct keel_closer {
    struct keel_closer *prev, *next;
    void (*fn)(void *ud);
    void *ud;
};

typedef struct event_node {
    struct event_node *next;
    size_t name_len, payload_len;
    char data[]; /* name '\0' payload */
} event_node;

struct keel_runtime {
    uv_loop_t *loop;
    uv_loop_t owned_loop;
    int owns_loop;
    lua_State *L;
    keel_clock_t clock;
    keel_rand_t rand;
    uint64_t seed;
    int boot_ref; /* the table returned by keel.boot */
    rt_handles *h;
    pthread_mutex_t events_lock;
    event_node *events_head, *events_tail;
    int closing;       /* keel_free has begun: keel_post refuses (under events_lock) */
    int posts_closed;  /* the run has ended: keel_post refuses (under events_lock) */
    keel_reclaim_t *reclaim; /* C objects finalized while the Lua state closes */
    keel_closer closers;     /* list head: run by keel_free after the Lua state closed */
    int running, finished, exit_code, run_to_completion;
    int in_tick;
    char error[1024];
    char *call_buf;
};

static const char RT_KEY = 'k';

/* Lua C-API modules compiled into the runtime, made available to require. */
int luaopen_keel_redis_core(lua_State *L);
static const luaL_Reg builtin_modules[] = {
    { "keel.redis.core", luaopen_keel_redis_core },
    { NULL, NULL },
};

static void register_builtins(lua_State *L) {
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (const luaL_Reg *m = builtin_modules; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 2);
}

const char *keel_version(void) { return "0.1.0"; }

static void set_error(keel_runtime *rt, const char *msg) {
    snprintf(rt->error, sizeof rt->error, "%s", msg ? msg : "unknown error");
}

const char *keel_error(const keel_runtime *rt) { return rt ? rt->error : "no runtime"; }

keel_runtime *keel_rt_from_lua(lua_State *L) {
    lua_pushlightuserdata(L, (void *)&RT_KEY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    keel_runtime *rt = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return rt;
}

uv_loop_t *keel_rt_loop(keel_runtime *rt) { return rt->loop; }
uv_loop_t *keel_loop(keel_runtime *rt) { return rt->loop; }
keel_clock_t *keel_rt_clock(keel_runtime *rt) { return &rt->clock; }
keel_rand_t *keel_rt_rand(keel_runtime *rt) { return &rt->rand; }
lua_State *keel_rt_state(keel_runtime *rt) { return rt->L; }
int keel_done(const keel_runtime *rt) { return rt->finished; }
int keel_exit_code(const keel_runtime *rt) { return rt->exit_code; }

/* Pushes boot[name]. */
static void push_boot_fn(keel_runtime *rt, const char *name) {
    lua_rawgeti(rt->L, LUA_REGISTRYINDEX, rt->boot_ref);
    lua_getfield(rt->L, -1, name);
    lua_remove(rt->L, -2);
}

static int traceback_handler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* pcall with a traceback; on error reports on stderr and returns -1. */
static int call_lua(keel_runtime *rt, int nargs, int nresults) {
    lua_State *L = rt->L;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (rc != 0) {
        set_error(rt, lua_tostring(L, -1));
        fprintf(stderr, "keel: %s\n", rt->error);
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

static void finish(keel_runtime *rt, int code) {
    rt->finished = 1;
    rt->exit_code = code;
    /* an event posted from now on would never run: refuse it */
    pthread_mutex_lock(&rt->events_lock);
    rt->posts_closed = 1;
    pthread_mutex_unlock(&rt->events_lock);
    uv_idle_stop(&rt->h->idle);
    uv_timer_stop(&rt->h->timer);
    if (rt->running) uv_stop(rt->loop);
}

static void tick(keel_runtime *rt);

static void on_idle(uv_idle_t *h) { tick(h->data); }
static void on_timer(uv_timer_t *h) { tick(h->data); }

/* Something made a task runnable outside a tick: run one soon. */
static void schedule(keel_runtime *rt) {
    if (!rt->finished && !rt->in_tick && !rt->closing) uv_idle_start(&rt->h->idle, on_idle);
}

static void tick(keel_runtime *rt) {
    if (rt->finished || rt->in_tick) return;
    lua_State *L = rt->L;
    rt->in_tick = 1;
    push_boot_fn(rt, "tick");
    int rc = call_lua(rt, 0, 4);
    rt->in_tick = 0;
    if (rc != 0) { finish(rt, 1); return; }
    int state = (int)lua_tointeger(L, -4);
    double next = lua_tonumber(L, -3);
    int code = (int)lua_tointeger(L, -2);
    int alive = (int)lua_tointeger(L, -1);
    lua_pop(L, 4);
    /* PARKED: tasks wait for a signal (keel_shutdown) or a posted event. The
     * events handle, unref'd in a run-to-completion run, then keeps the loop
     * polling for them instead of letting it run dry into "deadlock". */
    if (rt->run_to_completion) {
        if (state == ST_PARKED) uv_ref((uv_handle_t *)&rt->h->async);
        else uv_unref((uv_handle_t *)&rt->h->async);
    }
    switch (state) {
    case ST_READY:
        uv_idle_start(&rt->h->idle, on_idle);
        break;
    case ST_WAITING:
        uv_idle_stop(&rt->h->idle);
        if (next >= 0) {
            double now = keel_clock_update(&rt->clock);
            double wait = rt->clock.is_virtual ? 1.0 : ceil(next - now);
            if (wait < 0) wait = 0;
            if (wait > (double)UINT32_MAX) wait = (double)UINT32_MAX;
            uv_timer_start(&rt->h->timer, on_timer, (uint64_t)wait, 0);
        } else {
            uv_timer_stop(&rt->h->timer);
        }
        break;
    case ST_EXIT:
        finish(rt, code);
        break;
    case ST_DONE:
        uv_idle_stop(&rt->h->idle);
        uv_timer_stop(&rt->h->timer);
        if (rt->run_to_completion) finish(rt, code);
        break;
    case ST_PARKED:
        uv_idle_stop(&rt->h->idle);
        uv_timer_stop(&rt->h->timer);
        break;
    case ST_STUCK:
        uv_idle_stop(&rt->h->idle);
        uv_timer_stop(&rt->h->timer);
        if (rt->run_to_completion) {
            fprintf(stderr, "keel: deadlock: %d task(s) are waiting and nothing can wake them\n", alive);
            finish(rt, 1);
        }
        break;
    default:
        finish(rt, 1);
    }
}

void keel_rt_schedule(keel_runtime *rt) { schedule(rt); }

int keel_rt_complete(keel_runtime *rt, int64_t id, int nvals) {
    lua_State *L = rt->L;
    push_boot_fn(rt, "complete");
    lua_pushnumber(L, (lua_Number)id);
    /* Move fn and id below the values already on the stack. */
    lua_insert(L, -2 - nvals);
    lua_insert(L, -2 - nvals);
    int rc = call_lua(rt, 1 + nvals, 0);
    schedule(rt);
    return rc;
}

/* Events from other threads ------------------------------------------------ */

static void on_async(uv_async_t *h) {
    keel_runtime *rt = h->data;
    pthread_mutex_lock(&rt->events_lock);
    event_node *n = rt->events_head;
    rt->events_head = rt->events_tail = NULL;
    pthread_mutex_unlock(&rt->events_lock);
    while (n) {
        event_node *next = n->next;
        if (!rt->finished) {
            push_boot_fn(rt, "event");
            lua_pushlstring(rt->L, n->data, n->name_len);
            lua_pushlstring(rt->L, n->data + n->name_len + 1, n->payload_len);
            call_lua(rt, 2, 0);
        }
        free(n);
        n = next;
    }
    schedule(rt);
}

int keel_post(keel_runtime *rt, const char *name, const char *payload, size_t len) {
    if (!rt || !name) return -1;
    if (!payload) len = 0;
    size_t name_len = strlen(name);
    event_node *n = malloc(sizeof *n + name_len + 1 + len + 1);
    if (!n) return -1;
    n->next = NULL;
    n->name_len = name_len;
    n->payload_len = len;
    memcpy(n->data, name, name_len + 1);
    if (len) memcpy(n->data + name_len + 1, payload, len);
    n->data[name_len + 1 + len] = '\0';
    pthread_mutex_lock(&rt->events_lock);
    if (rt->closing || rt->posts_closed) {
        pthread_mutex_unlock(&rt->events_lock);
        free(n);
        return -1;
    }
    if (rt->events_tail) rt->events_tail->next = n; else rt->events_head = n;
    rt->events_tail = n;
    int rc = uv_async_send(&rt->h->async);
    pthread_mutex_unlock(&rt->events_lock);
    return rc == 0 ? 0 : -1;
}

/* Finding the Lua modules --------------------------------------------------- */

static int file_exists(const char *path) { return access(path, R_OK) == 0; }

/* Probes <dir><candidate>/lua/keel/init.lua for the usual layouts. */
static int probe_lua_root(const char *dir, char *out, size_t size) {
    char probe[PATH_MAX + 64];
    const char *candidates[] = { "/../share/keel", "/..", "/../.." };
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++) {
        snprintf(probe, sizeof probe, "%s%s/lua/keel/init.lua", dir, candidates[i]);
        if (file_exists(probe)) {
            snprintf(out, size, "%s%s", dir, candidates[i]);
            return 0;
        }
    }
    return -1;
}

/* Installed layout: <prefix>/bin/keel or <prefix>/lib/libkeel.so, with
 * <prefix>/share/keel/lua/keel/init.lua. Build tree: <src>/build/keel +
 * <src>/lua/keel/init.lua. The executable's directory is tried first, then
 * that of the object holding this code (libkeel.so for a shared host). */
static int find_lua_root(char *out, size_t size) {
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n > 0) {
        path[n] = '\0';
        char *slash = strrchr(path, '/');
        if (slash) {
            *slash = '\0';
            if (probe_lua_root(path, out, size) == 0) return 0;
        }
    }
    Dl_info info;
    if (dladdr((void *)find_lua_root, &info) && info.dli_fname && realpath(info.dli_fname, path)) {
        char *slash = strrchr(path, '/');
        if (slash) {
            *slash = '\0';
            if (probe_lua_root(path, out, size) == 0) return 0;
        }
    }
    return -1;
}

static int setup_paths(keel_runtime *rt, const char *root) {
    lua_State *L = rt->L;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    const char *old = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/bindings/lua/?.lua;%s", root, root, root,
                    old ? old : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    return 0;
}

/* Never 0 (which asks for a random seed) and never above KEEL_SEED_MAX. */
static uint64_t random_seed(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    x ^= x >> 33; /* mix the high bits in before the modulo */
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return 1 + x % KEEL_SEED_MAX;
}

keel_runtime *keel_new(const keel_options *opts) {
    keel_options defaults = { 0 };
    if (!opts) opts = &defaults;
    if (opts->seed > KEEL_SEED_MAX) {
        fprintf(stderr, "keel: seed %llu is out of range (0..%llu)\n", (unsigned long long)opts->seed, KEEL_SEED_MAX);
        return NULL;
    }
    keel_runtime *rt = calloc(1, sizeof *rt);
    if (!rt) return NULL;
    rt->boot_ref = LUA_NOREF;
    if (opts->loop) {
        rt->loop = opts->loop;
    } else {
        if (uv_loop_init(&rt->owned_loop) != 0) { free(rt); return NULL; }
        rt->loop = &rt->owned_loop;
        rt->owns_loop = 1;
    }
    rt->run_to_completion = opts->run_to_completion;
    rt->seed = opts->seed ? opts->seed : (opts->sim ? 0 : random_seed());
    keel_clock_init(&rt->clock, opts->sim ? 1 : 0, 1.7e12);
    keel_rand_seed(&rt->rand, rt->seed);
    pthread_mutex_init(&rt->events_lock, NULL);

    rt->h = calloc(1, sizeof *rt->h);
    rt->reclaim = keel_reclaim_new();
    if (!rt->h || !rt->reclaim) {
        free(rt->h);
        keel_reclaim_free(rt->reclaim);
        pthread_mutex_destroy(&rt->events_lock);
        if (rt->owns_loop) uv_loop_close(rt->loop);
        free(rt);
        return NULL;
    }
    rt->closers.next = rt->closers.prev = &rt->closers;
    uv_idle_init(rt->loop, &rt->h->idle);
    rt->h->idle.data = rt;
    uv_timer_init(rt->loop, &rt->h->timer);
    rt->h->timer.data = rt;
    uv_async_init(rt->loop, &rt->h->async, on_async);
    rt->h->async.data = rt;
    rt->h->open = 3;
    /* A host may post events at any time, so the async handle keeps its loop
     * alive; a run-to-completion run (the CLI) has no poster to wait for. */
    if (rt->run_to_completion) uv_unref((uv_handle_t *)&rt->h->async);

    rt->L = luaL_newstate();
    if (!rt->L) { keel_free(rt); return NULL; }
    lua_State *L = rt->L;
    luaL_openlibs(L);
    lua_pushlightuserdata(L, (void *)&RT_KEY);
    lua_pushlightuserdata(L, rt);
    lua_rawset(L, LUA_REGISTRYINDEX);

    char root[PATH_MAX];
    if (opts->lua_root) snprintf(root, sizeof root, "%s", opts->lua_root);
    else if (find_lua_root(root, sizeof root) != 0) {
        fprintf(stderr, "keel: cannot find the Lua modules (lua/keel/init.lua) next to the executable or libkeel; "
                        "set keel_options.lua_root (pkg-config --variable=luaroot keel)\n");
        keel_free(rt);
        return NULL;
    }
    setup_paths(rt, root);
    register_builtins(L);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "keel.boot");
    if (call_lua(rt, 1, 1) != 0) { keel_free(rt); return NULL; }
    rt->boot_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    push_boot_fn(rt, "init");
    lua_pushlightuserdata(L, &rt->clock);
    lua_pushlightuserdata(L, &rt->rand);
    lua_pushnumber(L, (lua_Number)rt->seed);
    lua_pushboolean(L, !opts->no_events);
    lua_pushlightuserdata(L, rt->reclaim);
    if (call_lua(rt, 5, 0) != 0) { keel_free(rt); return NULL; }
    return rt;
}

/* Runs the chunk on the stack as the main task, with argv as its `...`.
 * Returns 0, or -1 when its top level raised (or ended the run). */
static int start_main(keel_runtime *rt, int argc, char **argv) {
    lua_State *L = rt->L;
    if (!lua_checkstack(L, argc + 8)) { lua_pop(L, 1); set_error(rt, "too many arguments"); return -1; }
    for (int i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
    push_boot_fn(rt, "start_main");
    lua_insert(L, -2 - argc);
    if (call_lua(rt, 1 + argc, 0) != 0) { finish(rt, 1); return -1; }
    /* Run the script's top level now (up to its first wait), so a host can
     * call the functions it defines right after loading it. */
    tick(rt);
    schedule(rt);
    push_boot_fn(rt, "main_error");
    if (call_lua(rt, 0, 1) != 0) return -1;
    const char *err = lua_tostring(L, -1);
    if (err) set_error(rt, err);
    lua_pop(L, 1);
    if (err) return -1;
    /* keel.exit() at the top level: the script ran, and the run is over */
    return 0;
}

/* Shared checks of the load functions; returns 0 when a chunk may start. */
static int check_load(keel_runtime *rt, const char *fname, const void *what, int argc, char **argv) {
    if (!rt) return -1;
    if (!what) { snprintf(rt->error, sizeof rt->error, "%s: NULL script", fname); return -1; }
    if (argc < 0 || (argc > 0 && !argv)) { snprintf(rt->error, sizeof rt->error, "%s: bad argc/argv", fname); return -1; }
    for (int i = 0; i < argc; i++)
        if (!argv[i]) { snprintf(rt->error, sizeof rt->error, "%s: argv[%d] is NULL", fname, i); return -1; }
    if (rt->finished) {
        snprintf(rt->error, sizeof rt->error, "%s: the run has ended (exit code %d): nothing more can run", fname,
                 rt->exit_code);
        return -1;
    }
    return 0;
}

/* Sets the global `arg` as lua does: arg[0] = name, arg[1..argc] = argv. */
static void set_arg(lua_State *L, const char *name, int argc, char **argv) {
    lua_createtable(L, argc, 1);
    lua_pushstring(L, name);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
}

int keel_load_file(keel_runtime *rt, const char *path, int argc, char **argv) {
    if (check_load(rt, "keel_load_file", path, argc, argv) != 0) return -1;
    lua_State *L = rt->L;
    if (luaL_loadfile(L, path) != 0) {
        set_error(rt, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    set_arg(L, path, argc, argv);
    return start_main(rt, argc, argv);
}

int keel_load_string_args(keel_runtime *rt, const char *code, const char *chunkname, int argc, char **argv) {
    if (check_load(rt, "keel_load_string", code, argc, argv) != 0) return -1;
    lua_State *L = rt->L;
    if (!chunkname) chunkname = "=(keel)";
    if (luaL_loadbuffer(L, code, strlen(code), chunkname) != 0) {
        set_error(rt, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    if (argc > 0 || argv) set_arg(L, chunkname[0] == '=' || chunkname[0] == '@' ? chunkname + 1 : chunkname, argc, argv);
    return start_main(rt, argc, argv);
}

int keel_load_string(keel_runtime *rt, const char *code, const char *chunkname) {
    return keel_load_string_args(rt, code, chunkname, 0, NULL);
}

int keel_require(keel_runtime *rt, const char *module) {
    if (!rt) return -1;
    if (!module) { set_error(rt, "keel_require: NULL module name"); return -1; }
    lua_State *L = rt->L;
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    if (call_lua(rt, 1, 1) != 0) return -1;
    char global[256];
    snprintf(global, sizeof global, "%s", module);
    for (char *p = global; *p; p++) if (*p == '.') *p = '_';
    lua_setglobal(L, global);
    return 0;
}

int keel_call(keel_runtime *rt, const char *fn, const keel_value *args, int nargs,
              keel_value *results, int max_results) {
    if (!rt) return -1;
    lua_State *L = rt->L;
    if (!fn) { set_error(rt, "keel_call: NULL function name"); return -1; }
    if (nargs < 0 || max_results < 0 || (nargs > 0 && !args) || (max_results > 0 && !results)) {
        set_error(rt, "keel_call: bad arguments");
        return -1;
    }
    int top = lua_gettop(L);
    lua_getglobal(L, fn);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        snprintf(rt->error, sizeof rt->error, "keel_call: global '%s' is not a function", fn);
        return -1;
    }
    if (!lua_checkstack(L, nargs + 8)) { lua_settop(L, top); set_error(rt, "keel_call: too many arguments"); return -1; }
    for (int i = 0; i < nargs; i++) {
        switch (args[i].type) {
        case KEEL_BOOLEAN: lua_pushboolean(L, args[i].number != 0); break;
        case KEEL_NUMBER: lua_pushnumber(L, args[i].number); break;
        case KEEL_STRING: lua_pushlstring(L, args[i].string ? args[i].string : "", args[i].string ? args[i].len : 0); break;
        default: lua_pushnil(L);
        }
    }
    if (call_lua(rt, nargs, LUA_MULTRET) != 0) { lua_settop(L, top); return -1; }
    int n = lua_gettop(L) - top;
    if (n > max_results) n = max_results;
    /* Copy strings out so they outlive the Lua values. */
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        if (lua_type(L, top + 1 + i) == LUA_TSTRING) { size_t len; lua_tolstring(L, top + 1 + i, &len); bytes += len + 1; }
    }
    free(rt->call_buf);
    rt->call_buf = bytes ? malloc(bytes) : NULL;
    if (bytes && !rt->call_buf) { lua_settop(L, top); set_error(rt, "keel_call: out of memory"); return -1; }
    char *p = rt->call_buf;
    for (int i = 0; i < n; i++) {
        int idx = top + 1 + i;
        keel_value *v = &results[i];
        memset(v, 0, sizeof *v);
        switch (lua_type(L, idx)) {
        case LUA_TBOOLEAN: v->type = KEEL_BOOLEAN; v->number = lua_toboolean(L, idx); break;
        case LUA_TNUMBER: v->type = KEEL_NUMBER; v->number = lua_tonumber(L, idx); break;
        case LUA_TSTRING: {
            size_t len;
            const char *s = lua_tolstring(L, idx, &len);
            memcpy(p, s, len);
            p[len] = '\0';
            v->type = KEEL_STRING;
            v->string = p;
            v->len = len;
            p += len + 1;
            break;
        }
        default: v->type = KEEL_NIL;
        }
    }
    lua_settop(L, top);
    schedule(rt); /* the call may have spawned tasks */
    return n;
}

int keel_run(keel_runtime *rt) {
    if (rt->finished) return rt->exit_code;
    rt->running = 1;
    schedule(rt);
    while (!rt->finished) {
        uv_run(rt->loop, UV_RUN_DEFAULT);
        if (rt->finished) break;
        /* The loop ran dry without the scripts finishing: one more tick
         * settles whether anything can still happen. */
        tick(rt);
        if (!rt->finished && !uv_loop_alive(rt->loop)) {
            if (rt->run_to_completion) fprintf(stderr, "keel: deadlock: tasks are waiting and nothing can wake them\n");
            finish(rt, rt->run_to_completion ? 1 : rt->exit_code);
        }
    }
    rt->running = 0;
    return rt->exit_code;
}

void keel_stop(keel_runtime *rt, int code) { finish(rt, code); }

void keel_shutdown(keel_runtime *rt, int exit_code) {
    if (rt->finished) return;
    push_boot_fn(rt, "shutdown");
    lua_pushinteger(rt->L, exit_code);
    if (call_lua(rt, 1, 0) != 0) finish(rt, exit_code);
    schedule(rt);
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void on_handle_closed(uv_handle_t *h) {
    rt_handles *hs = h->data;
    if (--hs->open == 0) free(hs);
}

keel_closer *keel_rt_add_closer(keel_runtime *rt, void (*fn)(void *ud), void *ud) {
    keel_closer *c = malloc(sizeof *c);
    if (!c) return NULL;
    c->fn = fn;
    c->ud = ud;
    c->next = rt->closers.next;
    c->prev = &rt->closers;
    c->next->prev = c;
    rt->closers.next = c;
    return c;
}

void keel_rt_remove_closer(keel_runtime *rt, keel_closer *c) {
    (void)rt;
    if (!c) return;
    c->prev->next = c->next;
    c->next->prev = c->prev;
    free(c);
}

void keel_free(keel_runtime *rt) {
    if (!rt) return;
    pthread_mutex_lock(&rt->events_lock);
    rt->closing = 1;
    pthread_mutex_unlock(&rt->events_lock);
    if (rt->L) {
        /* From here the finalizers of Keel's C objects defer their frees to
         * rt->reclaim, so user finalizers that still use them (q:push,
         * keel.after in a __gc) find them alive. */
        if (rt->boot_ref != LUA_NOREF) {
            push_boot_fn(rt, "close");
            call_lua(rt, 0, 0);
        }
        /* Modules holding handles (redis) close them from their __gc. */
        lua_close(rt->L);
        rt->L = NULL;
    }
    keel_reclaim_free(rt->reclaim);
    /* C objects that outlived their Lua handle (a closed Redis client whose
     * deferred teardown has not fired) are released now: no Lua state is
     * left to hear from them. */
    while (rt->closers.next != &rt->closers) {
        keel_closer *c = rt->closers.next;
        c->prev->next = c->next;
        c->next->prev = c->prev;
        c->fn(c->ud);
        free(c);
    }
    rt_handles *hs = rt->h;
    hs->idle.data = hs->timer.data = hs->async.data = hs;
    uv_close((uv_handle_t *)&hs->idle, on_handle_closed);
    uv_close((uv_handle_t *)&hs->timer, on_handle_closed);
    uv_close((uv_handle_t *)&hs->async, on_handle_closed);
    if (rt->owns_loop) {
        /* anything still open is closed, and every close callback (ours,
         * the redis clients' teardown) runs before the loop is closed */
        uv_walk(rt->loop, close_walk, NULL);
        uv_run(rt->loop, UV_RUN_DEFAULT);
        uv_loop_close(rt->loop);
    }
    /* A host-owned loop is not run here: the host's own callbacks must not
     * fire inside keel_free. Our handles finish closing (and free their
     * block) the next time the host runs its loop. */
    event_node *n = rt->events_head;
    while (n) { event_node *next = n->next; free(n); n = next; }
    pthread_mutex_destroy(&rt->events_lock);
    free(rt->call_buf);
    free(rt);
}
