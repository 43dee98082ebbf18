/* The keel command: the first host of the embedding API (keel.h). */
#include "keel.h"
#include <uv.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: keel [options] [script.lua [args...]]\n"
    "  -e CODE        run CODE as the main task; the arguments after it are its\n"
    "                 arg[1..n] and ... (arg[0] is \"(command line)\")\n"
    "  --sim SEED     virtual time: the clock jumps to the next deadline whenever\n"
    "                 nothing is runnable; SEED (0..99999999999999, what\n"
    "                 keel.seed() printed) replays every random choice\n"
    "  -v, --version  print the version\n"
    "  -h, --help     print this help\n"
    "exit codes: 0 success, 1 uncaught error, 2 usage error, 130/143 on SIGINT/SIGTERM\n";

static int usage_error(const char *fmt, const char *what) {
    fprintf(stderr, "keel: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\n%s", USAGE);
    return 2;
}

/* Signals are handled with a plain sigaction handler rather than libuv's
 * signal watchers: those only run when the loop polls, so a script stuck in
 * a long computation could not be interrupted at all. The handler does only
 * async-signal-safe things: the first signal wakes the loop (uv_async_send
 * is async-signal-safe) to run the graceful shutdown; a second one exits at
 * once, whatever the loop is doing. This state is the program's, not the
 * library's: a signal handler has nowhere else to find it. */
static uv_async_t *volatile shutdown_async;
static volatile sig_atomic_t signals_seen, first_signal;

static void on_signal(int signum) {
    if (signals_seen++ > 0) {
        static const char msg[] = "keel: second signal: exiting at once, without waiting for the shutdown to finish\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(128 + signum);
    }
    first_signal = signum;
    uv_async_t *a = shutdown_async;
    if (a) uv_async_send(a);
}

static void on_shutdown_async(uv_async_t *h) {
    keel_shutdown(h->data, 128 + first_signal);
}

static void catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* a peer that closes a socket we are writing to (a Redis server going
     * away mid-pipeline) must be an EPIPE error for the connection to
     * handle, not a signal that kills the program */
    signal(SIGPIPE, SIG_IGN);
}

static int parse_seed(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > KEEL_SEED_MAX) return -1;
    *out = (uint64_t)v;
    return 0;
}

int main(int argc, char **argv) {
    const char *code = NULL, *script = NULL;
    int sim = 0;
    uint64_t seed = 0;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(USAGE, stdout);
            return 0;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            printf("keel %s\n", keel_version());
            return 0;
        } else if (strcmp(a, "-e") == 0) {
            if (++i >= argc) return usage_error("%s needs an argument", "-e");
            code = argv[i];
        } else if (strcmp(a, "--sim") == 0) {
            if (++i >= argc) return usage_error("%s needs a SEED argument", "--sim");
            if (parse_seed(argv[i], &seed) != 0) return usage_error("--sim: SEED must be a non-negative integer of at most 14 digits "
                                                                          "(0..99999999999999, got '%s')", argv[i]);
            sim = 1;
        } else if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s'", a);
        } else {
            break;
        }
    }
    if (!code) {
        if (i >= argc) return usage_error("%s", "no script given");
        script = argv[i++];
        if (access(script, R_OK) != 0) return usage_error("cannot read script '%s'", script);
        struct stat sb;
        if (stat(script, &sb) == 0 && S_ISDIR(sb.st_mode)) return usage_error("script '%s' is a directory", script);
    }

    keel_options opts = { .sim = sim, .seed = seed, .run_to_completion = 1, .no_events = 1 };
    keel_runtime *rt = keel_new(&opts);
    if (!rt) return 1;

    /* Signals are caught before the script loads: loading runs its top level
     * up to the first wait, and a signal meanwhile must not kill the process
     * with the default action (losing buffered output and the handlers). */
    static uv_async_t async;
    uv_async_init(keel_loop(rt), &async, on_shutdown_async);
    async.data = rt;
    uv_unref((uv_handle_t *)&async);
    shutdown_async = &async;
    catch_signals();
    /* A signal that arrived before the loop could hear it is not lost. */
    if (signals_seen) uv_async_send(&async);

    int rc = code ? keel_load_string_args(rt, code, "=(command line)", argc - i, argv + i)
                  : keel_load_file(rt, script, argc - i, argv + i);
    if (rc != 0) {
        /* a top level that raised ended the run and was reported already */
        int exit_code = keel_done(rt) ? keel_exit_code(rt) : 1;
        if (!keel_done(rt)) fprintf(stderr, "keel: %s\n", keel_error(rt));
        shutdown_async = NULL;
        uv_close((uv_handle_t *)&async, NULL);
        fflush(stdout);
        keel_free(rt);
        return exit_code ? exit_code : 1;
    }

    int exit_code = keel_run(rt);
    shutdown_async = NULL;
    uv_close((uv_handle_t *)&async, NULL);
    fflush(stdout);
    keel_free(rt);
    return exit_code;
}
