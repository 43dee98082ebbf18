#ifndef KEEL_RT_H
#define KEEL_RT_H
/* Internal glue API between the runtime object and the Lua C-API modules in
 * bindings/ (redis glue, scheduler glue). Not part of the public embedding
 * header. */
#include <stdint.h>
#include <uv.h>
#include <lua.h>
#include "keel_clock.h"
#include "keel_rand.h"

typedef struct keel_runtime keel_runtime;

/* The runtime that owns this Lua state (or any of its coroutines). */
keel_runtime *keel_rt_from_lua(lua_State *L);
uv_loop_t *keel_rt_loop(keel_runtime *rt);
keel_clock_t *keel_rt_clock(keel_runtime *rt);
keel_rand_t *keel_rt_rand(keel_runtime *rt);
/* The main Lua state. Loop callbacks may use it freely: no Lua code runs
 * while libuv is dispatching callbacks. */
lua_State *keel_rt_state(keel_runtime *rt);

/* Delivers the top nvals values on keel_rt_state(rt)'s stack to the task
 * waiting on completion id (from sched.completion() in Lua), popping them.
 * A completion whose waiter already gave up (timeout, cancel) is dropped.
 * Returns 0, or -1 if delivering raised a Lua error (reported on stderr). */
int keel_rt_complete(keel_runtime *rt, int64_t id, int nvals);

/* Runs a scheduler tick soon: for glue that woke tasks through its own Lua
 * call instead of keel_rt_complete. */
void keel_rt_schedule(keel_runtime *rt);

/* Runs fn(ud) when the runtime is freed, after its Lua state has closed,
 * unless removed before: for C objects that outlive their Lua handle (a
 * closed Redis client waiting for its deferred teardown). Returns the
 * registration for keel_rt_remove_closer, or NULL when out of memory. */
typedef struct keel_closer keel_closer;
keel_closer *keel_rt_add_closer(keel_runtime *rt, void (*fn)(void *ud), void *ud);
void keel_rt_remove_closer(keel_runtime *rt, keel_closer *c);

#endif
