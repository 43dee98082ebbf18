-- FFI declarations for runtime/keel_backoff.h.
local ffi = require "ffi"
require "keel.ffi.core"

ffi.cdef [[
double keel_backoff_delay(keel_rand_t *rand, int jitter, double base_ms, double cap_ms,
                          double factor, double attempt, double prev_ms);
]]

return ffi.C
