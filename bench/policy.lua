-- keel.policy overhead on the success path: ns per call through retry +
-- breaker + bulkhead (+ timeout), beside the bare call and beside the same
-- layers composed by hand in plain Lua (cockatiel/Polly style: each layer
-- a closure around the next), which is the baseline.
-- Returns function(report); run alone with build/keel bench/run.lua policy
local keel = require "keel"

local N = 1000000
local N_TIMEOUT = 100000 -- a timeout runs each attempt in its own task

local measure = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench") .. "/timing.lua").ns_per_op

local function work(x) return x + 1 end

-- The baseline: the same primitives, composed by hand.
local function by_hand(with_timeout)
  local r = keel.retry.new { attempts = 3 }
  local b = keel.breaker {}
  local bh = keel.bulkhead { max = 100 }
  local inner = function(fn, ...) return fn(...) end
  if with_timeout then
    inner = function(fn, ...)
      local ok, v = keel.timeout(1000, fn, ...)
      if ok then return v end
      return nil, "timeout"
    end
  end
  local bulk = function(fn, ...) return bh:run(inner, fn, ...) end
  local brk = function(fn, ...) return b:call(bulk, fn, ...) end
  return function(fn, ...) return r:call(brk, fn, ...) end
end

return function(report)
  local bare = measure(N, function(n) local s = 0; for i = 1, n do s = s + work(i) end; return s end)

  local p = keel.policy { retry = { attempts = 3 }, breaker = {}, bulkhead = { max = 100 } }
  local pol = measure(N, function(n) for i = 1, n do p:call(work, i) end end)
  local hand = by_hand(false)
  local hand_ns = measure(N, function(n) for i = 1, n do hand(work, i) end end)
  report { label = "policy:call retry+breaker+bulkhead", value = pol, unit = "ns/op", baseline = hand_ns,
           baseline_label = "by hand", target = "<= bare + 100 ns (bare " .. string.format("%.1f", bare) .. " ns)" }

  local pt = keel.policy { retry = { attempts = 3 }, breaker = {}, bulkhead = { max = 100 }, timeout = 1000 }
  local pol_t = measure(N_TIMEOUT, function(n) for i = 1, n do pt:call(work, i) end end)
  local hand_t = by_hand(true)
  local hand_t_ns = measure(N_TIMEOUT, function(n) for i = 1, n do hand_t(work, i) end end)
  report { label = "policy:call retry+breaker+bulkhead+timeout", value = pol_t, unit = "ns/op",
           baseline = hand_t_ns, baseline_label = "by hand", target = "<= bare + 100 ns" }
end
