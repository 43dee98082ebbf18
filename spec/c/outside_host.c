/* A host built outside the source tree from an installed Keel, with nothing
 * but keel.h and `pkg-config --cflags --libs keel` (or keel-static), under
 * plain -std=c11. Its script uses primitives that only the FFI references
 * (keel.counter, keel.dedup, timers), so an archive linked without all its
 * members fails here. Usage: outside_host [LUA_ROOT]. */
#include "keel.h"
#include <stdio.h>

int main(int argc, char **argv) {
    keel_runtime *rt = keel_new(&(keel_options){ .lua_root = argc > 1 ? argv[1] : NULL, .run_to_completion = 1 });
    if (!rt) return 1;
    const char *script =
        "local keel = require 'keel'\n"
        "local c = keel.counter()\n"
        "local d = keel.dedup()\n"
        "keel.sleep(1)\n"
        "c:add(41); c:add(1)\n"
        "print('outside host: ' .. c:value() .. ' ' .. tostring(d:seen('a')) .. ' ' .. tostring(d:seen('a')))\n";
    if (keel_load_string(rt, script, "=outside") != 0) {
        fprintf(stderr, "outside host: %s\n", keel_error(rt));
        keel_free(rt);
        return 1;
    }
    int code = keel_run(rt);
    keel_free(rt);
    return code;
}
