-- Breaker and rate limiter micro-benchmarks: ns per operation through the
-- Lua API, beside the same semantics written in plain LuaJIT (the baseline).
-- Returns function(report); run alone with build/keel bench/run.lua prims_b
local keel = require "keel"

local N = 2000000

-- Found beside this file, whether run through bench/run.lua or alone.
local measure = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench") .. "/timing.lua").ns_per_op

-- Baseline breaker: closed state only matters for the hot path, but it keeps
-- the same count ring with running totals and the same threshold check.
local function lua_breaker(size, min_calls, rate, slow_ms)
  local ring, head, filled = {}, 0, 0
  for i = 0, size - 1 do ring[i] = 0 end
  local calls, fails, slows, state = 0, 0, 0, 0
  local b = {}
  function b.allow() return state ~= 1 end
  function b.record(ok, dur)
    local f = (ok and 0 or 1) + (dur >= slow_ms and 2 or 0)
    if filled == size then
      local old = ring[head]
      calls = calls - 1
      if old % 2 == 1 then fails = fails - 1 end
      if old >= 2 then slows = slows - 1 end
    else
      filled = filled + 1
    end
    ring[head] = f
    head = head + 1
    if head == size then head = 0 end
    calls = calls + 1
    if f % 2 == 1 then fails = fails + 1 end
    if f >= 2 then slows = slows + 1 end
    if calls >= min_calls and (fails * 100 >= rate * calls or slows * 100 >= 100 * calls) then state = 1 end
  end
  return b
end

-- Baseline GCRA on a cached clock table, like the C one reads clock->now_ms.
local function lua_gcra(clock, rate, per_ms, burst)
  local interval = per_ms / rate
  local tau = burst * interval
  local tat = -math.huge
  return function(n)
    local now = clock.now_ms
    local start = tat > now and tat or now
    local nxt = start + n * interval
    local allow_at = nxt - tau
    if allow_at > now + 1e-6 then return nil, "limited", allow_at - now end
    tat = nxt
    return true
  end
end

return function(report)
  local b = keel.breaker { size = 100, min_calls = 100 }
  local keel_ns = measure(N, function(n)
    for i = 1, n do
      if b:allow() then b:record(i % 1000 ~= 0, 1) end
    end
  end)
  local lb = lua_breaker(100, 100, 50, 60000)
  local base_ns = measure(N, function(n)
    for i = 1, n do
      if lb.allow() then lb.record(i % 1000 ~= 0, 1) end
    end
  end)
  assert(b:state() == "closed")
  report { label = "breaker allow+record (closed, count window)", value = keel_ns, unit = "ns/op",
           baseline = base_ns, target = "<= 30 ns" }

  -- A limiter that always allows measures the allowed path; one that
  -- always refuses measures the refused path.
  local sched = require "keel.sched"
  local clock = sched.world().clock
  local open_rl = keel.ratelimit { rate = 1e12, burst = 1e12 }
  keel_ns = measure(N, function(n) for _ = 1, n do open_rl:take() end end)
  local open_lua = lua_gcra(clock, 1e12, 1000, 1e12)
  base_ns = measure(N, function(n) for _ = 1, n do open_lua(1) end end)
  report { label = "ratelimit take (allowed)", value = keel_ns, unit = "ns/op", baseline = base_ns,
           target = "<= 30 ns" }

  local shut = keel.ratelimit { rate = 1, per_ms = 1e9 }
  shut:take()
  keel_ns = measure(N, function(n) for _ = 1, n do shut:take() end end)
  local shut_lua = lua_gcra(clock, 1, 1e9, 1)
  shut_lua(1)
  base_ns = measure(N, function(n) for _ = 1, n do shut_lua(1) end end)
  report { label = "ratelimit take (limited)", value = keel_ns, unit = "ns/op", baseline = base_ns,
           target = "<= 30 ns" }

  local keyed = keel.ratelimit { keyed = true, rate = 1e12, burst = 1e12, max_keys = 1024 }
  local keys = {}
  for i = 1, 1000 do keys[i] = "tenant-" .. i end
  keel_ns = measure(N, function(n) for i = 1, n do keyed:take(keys[i % 1000 + 1]) end end)
  local per_key = {}
  for i = 1, 1000 do per_key[keys[i]] = lua_gcra(clock, 1e12, 1000, 1e12) end
  base_ns = measure(N, function(n) for i = 1, n do per_key[keys[i % 1000 + 1]](1) end end)
  report { label = "ratelimit keyed take (1000 keys)", value = keel_ns, unit = "ns/op", baseline = base_ns,
           baseline_label = "Lua table of closures" }
end
