#ifndef KEEL_H
#define KEEL_H
/* Keel embedding API: run Keel scripts inside a C program.
 *
 *   keel_runtime *rt = keel_new(&(keel_options){ .loop = my_loop });
 *   keel_load_file(rt, "app.lua", 0, NULL);   // runs as the main task
 *   keel_post(rt, "tick", "42", 2);           // from any thread
 *   keel_run(rt);                             // or drive my_loop yourself
 *   keel_free(rt);
 *   uv_run(my_loop, UV_RUN_DEFAULT);          // host loop: the runtime's handles close
 *
 * Link with `pkg-config --cflags --libs keel` (libkeel.so) or
 * `pkg-config --static --cflags --libs keel-static` (libkeel.a, whole).
 *
 * No global state: each runtime has its own Lua state, clock, PRNG and
 * handles, so several runtimes work independently in one process. Except for
 * keel_post, a runtime is used from the thread that runs its loop. */
#include <stddef.h>
#include <stdint.h>

/* The libuv loop type, declared rather than included: <uv.h> needs POSIX
 * feature macros (_GNU_SOURCE or _POSIX_C_SOURCE) that a host compiling with
 * plain -std=c11 has not set. A host that drives the loop includes <uv.h>
 * itself; C11 allows the same typedef twice. */
struct uv_loop_s;
typedef struct uv_loop_s uv_loop_t;

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_runtime keel_runtime;

/* Seeds have at most 14 decimal digits, so that Lua's print shows them
 * exactly (keel.seed()) and a run can be replayed with keel --sim SEED. */
#define KEEL_SEED_MAX 99999999999999ULL

typedef struct keel_options {
    uv_loop_t *loop;      /* NULL: the runtime creates and owns a loop */
    int sim;              /* non-zero: virtual time (as keel --sim) */
    uint64_t seed;        /* PRNG seed, 0..KEEL_SEED_MAX (keel_new fails above); 0 in
                             real time picks a random one, which keel.seed() reports */
    const char *lua_root; /* directory holding lua/keel; NULL: found from the executable */
    int run_to_completion; /* non-zero (the CLI): the run ends with code 0 once every
                              task has finished and no timer is armed, and with code 1
                              when tasks wait and nothing can wake them. A registered
                              keel.on_shutdown handler can wake them (the run waits
                              for keel_shutdown), and so can a keel.on_event handler
                              unless no_events is set. Zero (default for hosts): the
                              runtime stays up for keel_call/keel_post until
                              keel.exit() or keel_stop(). */
    int no_events;        /* non-zero: this host never calls keel_post (the CLI), so a
                             keel.on_event handler is no way to wake a waiting run */
} keel_options;

enum { KEEL_NIL = 0, KEEL_BOOLEAN, KEEL_NUMBER, KEEL_STRING };

typedef struct keel_value {
    int type;
    double number;       /* KEEL_NUMBER, and KEEL_BOOLEAN (0 or 1) */
    const char *string;  /* KEEL_STRING: bytes, not necessarily NUL-free */
    size_t len;
} keel_value;

/* NULL on failure (out of memory, Lua modules not found: message on stderr). */
keel_runtime *keel_new(const keel_options *opts);
/* Closes the Lua state (its finalizers may still use Keel objects: their C
 * memory is freed after the state), tears down Redis clients, and closes the
 * runtime's handles. Safe on NULL. It never runs a host-owned loop (the
 * host's callbacks must not fire inside it): the handles finish closing on
 * the host's next uv_run, which must come before uv_loop_close. */
void keel_free(keel_runtime *rt);

/* The last error message of a failed call, or "". */
const char *keel_error(const keel_runtime *rt);

/* Loads a script and starts it as the main task (with `arg` set as lua does:
 * arg[0] = path, arg[1..argc] = argv), running its top level up to its first
 * wait. Returns 0, or -1 with keel_error set when: an argument is NULL, the
 * run has already ended, the chunk does not compile, or its top level raised
 * (the error is also printed on stderr and the run ends with code 1). */
int keel_load_file(keel_runtime *rt, const char *path, int argc, char **argv);
int keel_load_string(keel_runtime *rt, const char *code, const char *chunkname);
/* keel_load_string with `arg` set (arg[0] = chunkname without its leading
 * '=' or '@', arg[1..argc] = argv) and argv as the chunk's `...`. */
int keel_load_string_args(keel_runtime *rt, const char *code, const char *chunkname, int argc, char **argv);
/* require(module) and store the result in the global of the same name (dots
 * become underscores). Returns 0 or -1 (keel_error set). */
int keel_require(keel_runtime *rt, const char *module);

/* Calls the global function `fn` synchronously with the given arguments.
 * Returns the number of results written to `results` (at most max_results),
 * or -1 with keel_error set (fn NULL or not a function, bad counts, NULL
 * arrays, a raised error). Result strings stay valid until the next
 * keel_call. */
int keel_call(keel_runtime *rt, const char *fn, const keel_value *args, int nargs,
              keel_value *results, int max_results);

/* Thread-safe: queues an event for the handler registered with
 * keel.on_event(name, fn); fn runs as a task with (payload, name).
 * Returns 0, or -1 when name is NULL, out of memory, the run has ended or the
 * runtime is being freed; it does not set keel_error (that belongs to the
 * loop's thread). Events accepted before the run ended but not delivered
 * yet are dropped. */
int keel_post(keel_runtime *rt, const char *name, const char *payload, size_t len);

/* Runs the loop until the run ends (see run_to_completion), keel.exit() or
 * keel_stop(). Returns the exit code. With a host-owned loop the host may
 * instead run the loop itself and poll keel_done. */
int keel_run(keel_runtime *rt);
int keel_done(const keel_runtime *rt);
int keel_exit_code(const keel_runtime *rt);
/* Ends the run with this exit code at the next loop turn. */
void keel_stop(keel_runtime *rt, int code);
/* Starts graceful shutdown: keel.on_shutdown handlers run as tasks within
 * their deadline, then the run ends with exit_code. */
void keel_shutdown(keel_runtime *rt, int exit_code);

uv_loop_t *keel_loop(keel_runtime *rt);
const char *keel_version(void);

#ifdef __cplusplus
}
#endif
#endif
