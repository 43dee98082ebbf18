-- The public module: local keel = require "keel"
local sched = require "keel.sched"
local check = require "keel.check"
local C = require "keel.ffi.core"

local select, type = select, type
local unpack = unpack or table.unpack

local keel = { version = "0.1.0" }

-- Primitives and patterns load on first use, so a script pays only for what
-- it touches.
local lazy = {
  counter = "keel.counter", leases = "keel.leases", queue = "keel.queue",
  breaker = "keel.breaker", bulkhead = "keel.bulkhead", ratelimit = "keel.ratelimit",
  backoff = "keel.backoff", retry = "keel.retry", retry_budget = "keel.retry_budget",
  dedup = "keel.dedup", registry = "keel.registry", redis = "keel.redis",
}

-- These constructors also build the Redis-backed version, with the same
-- API, when given `redis = client`: a script moves from one process to a
-- fleet by changing one option.
local has_redis_variant = {
  leases = true, queue = true, dedup = true, ratelimit = true, registry = true, counter = true, breaker = true,
}

local function with_redis_variant(kind, local_ctor)
  return function(opts, ...)
    if type(opts) == "table" and opts.redis ~= nil then
      return require("keel.redis." .. kind).new(opts, ...)
    end
    return local_ctor(opts, ...)
  end
end

setmetatable(keel, {
  __index = function(t, k)
    local mod = lazy[k]
    if not mod then return nil end
    local v = require(mod)
    if has_redis_variant[k] then v = with_redis_variant(k, v) end
    rawset(t, k, v)
    return v
  end,
})

keel.channel = require "keel.channel"

function keel.spawn(fn, ...) return sched.spawn(fn, ...) end

function keel.sleep(ms) return sched.sleep(ms, "keel.sleep") end

function keel.now() return C.keel_clock_update(sched.world().clock) end

function keel.wall() return C.keel_clock_wall(sched.world().clock) end

function keel.current() return sched.current() end

function keel.defer(fn) return sched.defer(fn, "keel.defer") end

-- For code that catches errors around waits: a cancellation must be
-- re-raised (error(err, 0)), not handled.
function keel.is_cancelled(err) return err == sched.CANCELLED end

-- check.* raise at the level of their caller's caller: call them straight
-- from the public function so the error points at the user's line.
function keel.after(ms, fn)
  check.number("keel.after", "argument 'ms'", ms, nil, 0)
  check.func("keel.after", "argument 'fn'", fn)
  return sched.after(ms, fn, nil)
end

local EVERY_OPTS = check.set { "overlap" }

function keel.every(ms, fn, opts)
  check.number("keel.every", "argument 'ms'", ms, nil, 0)
  check.func("keel.every", "argument 'fn'", fn)
  if ms <= 0 then error("keel.every: argument 'ms' must be a number > 0 (got " .. tostring(ms) .. ")", 2) end
  opts = check.opts("keel.every", opts, EVERY_OPTS)
  local overlap = check.boolean("keel.every", "option 'overlap'", opts.overlap, false)
  return sched.after(ms, fn, ms, overlap)
end

-- Runs fn in its own task; on timeout that task is cancelled (its deferred
-- cleanup runs) and nil, "timeout" is returned. An error in fn is raised here.
function keel.timeout(ms, fn, ...)
  check.number("keel.timeout", "argument 'ms'", ms, nil, 0)
  check.func("keel.timeout", "argument 'fn'", fn)
  sched.need_task("keel.timeout")
  local child = sched.spawn(fn, ...)
  local function finish(ok, ...)
    if ok then return true, ... end
    local err = ...
    if err == "timeout" and child:status() ~= "failed" then
      -- Return only once the inner work's cleanup (keel.defer) has run, so
      -- whatever it held is released when the caller goes on.
      child:cancel()
      child:join()
      return nil, "timeout"
    end
    error(err, 0)
  end
  -- If the caller itself is cancelled while waiting, the inner work goes too.
  local function joined(ok, ...)
    if not ok then
      child:cancel()
      error(..., 0)
    end
    return ...
  end
  return finish(joined(pcall(child.join, child, ms)))
end

local function check_fns(fname, fns)
  if type(fns) ~= "table" then
    error(fname .. ": argument 'fns' must be a table of functions (got " .. type(fns) .. ")", 3)
  end
  for i = 1, #fns do
    local f = fns[i]
    if type(f) ~= "function" and not (getmetatable(f) and getmetatable(f).__call) then
      error(string.format("%s: fns[%d] must be a function (got %s)", fname, i, tostring(f)), 3)
    end
  end
  sched.need_task(fname, 3)
end

-- Runs every function as a task and waits for them all. Returns the first
-- result of each, in order. The first error (in time) cancels the rest and
-- is raised.
-- Results come back as multiple values, which Lua caps (unpack stops below
-- 8000): refuse up front rather than run everything and lose the results.
local ALL_MAX = 7000

function keel.all(fns)
  check_fns("keel.all", fns)
  local n = #fns
  if n == 0 then return end
  if n > ALL_MAX then
    error(string.format("keel.all: at most %d functions (got %d): results are returned as values", ALL_MAX, n), 2)
  end
  local q = sched.waitqueue()
  local tasks, failed = {}, nil
  local remaining = n
  for i = 1, n do
    local t = sched.spawn(fns[i])
    t.observed = true
    t:_watch(function(task)
      remaining = remaining - 1
      if task.state ~= "done" and not failed then failed = task end
      q:wake_one()
    end)
    tasks[i] = t
  end
  local ok, err = pcall(function()
    while remaining > 0 and not failed do q:wait(nil, "keel.all") end
  end)
  if not ok or failed then
    for i = 1, n do tasks[i]:cancel() end
    if not ok then error(err, 0) end
    error(failed.err, 0)
  end
  local out = {}
  for i = 1, n do
    local _, first_result = sched.results(tasks[i])
    out[i] = first_result
  end
  return unpack(out, 1, n)
end

-- Runs every function as a task; returns the results of the first to finish
-- (raising its error if it failed) and cancels the others.
function keel.any(fns)
  check_fns("keel.any", fns)
  local n = #fns
  if n == 0 then error("keel.any: argument 'fns' must not be empty", 2) end
  local q = sched.waitqueue()
  local tasks, first = {}, nil
  for i = 1, n do
    local t = sched.spawn(fns[i])
    t.observed = true
    t:_watch(function(task)
      if not first then first = task end
      q:wake_one()
    end)
    tasks[i] = t
  end
  local ok, err = pcall(function()
    while not first do q:wait(nil, "keel.any") end
  end)
  for i = 1, n do if tasks[i] ~= first then tasks[i]:cancel() end end
  if not ok then error(err, 0) end
  -- The losers' cleanup has run by the time the winner's results return.
  for i = 1, n do if tasks[i] ~= first then tasks[i]:join() end end
  local function unwrap(succeeded, ...)
    if succeeded then return ... end
    error((...), 0)
  end
  return unwrap(sched.results(first))
end

function keel.random(m, n)
  local rand = sched.world().rand
  if m == nil then return C.keel_rand_double(rand) end
  check.integer("keel.random", "argument 'm'", m)
  if n == nil then m, n = 1, m end
  check.integer("keel.random", "argument 'n'", n)
  -- Beyond 2^53 doubles are not exact integers and n - m could overflow int64.
  if m < -2 ^ 53 or n > 2 ^ 53 then
    error(string.format("keel.random: arguments must lie in [-2^53, 2^53] (got %.17g, %.17g)", m, n), 2)
  end
  if m > n then error("keel.random: interval is empty (m > n)", 2) end
  return tonumber(C.keel_rand_range(rand, m, n))
end

-- Runs fn(...) as the main task of a fresh virtual-time world and returns its
-- results. Accepts keel.sim({seed = N}, fn, ...) and keel.sim{seed = N, fn}.
function keel.sim(opts, fn, ...)
  if type(opts) == "function" then return keel.sim({}, opts, fn, ...) end
  opts = check.opts("keel.sim", opts)
  for k in pairs(opts) do
    if k ~= "seed" and k ~= "epoch_ms" and k ~= 1 then
      error(string.format("keel.sim: unknown option '%s'", tostring(k)), 2)
    end
  end
  if fn == nil then fn = opts[1] end
  check.func("keel.sim", "argument 'fn'", fn)
  local seed = check.integer("keel.sim", "option 'seed'", opts.seed, 1, 0)
  if seed > 2 ^ 53 then
    error(string.format("keel.sim: option 'seed' must be an integer in [0, 2^53] (got %.17g)", seed), 2)
  end
  check.number("keel.sim", "option 'epoch_ms'", opts.epoch_ms, 0)
  local w = sched.new_world({ virtual = true, seed = seed, epoch_ms = opts.epoch_ms })
  local prev = sched.set_world(w)
  local r = { n = 0 }
  local function pack(...) r = { n = select("#", ...), ... } end
  pack(pcall(sched.run_nested, w, fn, ...))
  sched.set_world(prev)
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

function keel.on_event(name, fn)
  check.string("keel.on_event", "argument 'name'", name)
  check.func("keel.on_event", "argument 'fn'", fn, true)
  sched.on_event(sched.world(), name, fn)
end

function keel.on_shutdown(fn, opts)
  check.func("keel.on_shutdown", "argument 'fn'", fn)
  opts = check.opts("keel.on_shutdown", opts, check.set { "deadline_ms" })
  local deadline = check.number("keel.on_shutdown", "option 'deadline_ms'", opts.deadline_ms, 5000, 0)
  sched.add_shutdown(sched.world(), fn, deadline)
end

-- Ends the process (or the embedding's run) with code once the current
-- task yields; tasks still alive are abandoned.
function keel.exit(code)
  code = check.integer("keel.exit", "argument 'code'", code, 0, 0, 255)
  local w = sched.world()
  sched.request_exit(w, code)
  if sched.current() then
    coroutine.yield() -- never resumed: the loop stops
  end
end

function keel.metrics(format) return require("keel.metrics").collect(format) end

function keel.is_sim() return sched.world().virtual end

function keel.seed() return sched.world().seed end

return keel
