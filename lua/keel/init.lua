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
  backoff = "keel.backoff", retry = "keel.retry", retry_budget = "keel.retry_budget", policy = "keel.policy",
  dedup = "keel.dedup", registry = "keel.registry", redis = "keel.redis",
  store = "keel.store", json = "keel.json", outbox = "keel.outbox", idempotent = "keel.idempotent",
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

-- Runs each function as a task and waits until `pick` chooses one of them
-- (it is called as each task ends; true stops the wait) or all have ended.
-- Then cancels the rest and waits for them, so their keel.defer cleanups
-- have run when the caller goes on. A caller cancelled meanwhile cancels
-- the tasks and the cancellation propagates. Returns the tasks and the
-- picked one (nil if none was).
local function run_group(fname, fns, pick)
  local n = #fns
  local q = sched.waitqueue()
  local tasks, picked, remaining = {}, nil, n
  local function ended(task)
    remaining = remaining - 1
    if not picked and pick(task) then picked = task end
    q:wake_one()
  end
  for i = 1, n do
    local t = sched.spawn(fns[i])
    t.observed = true -- a failure here is the caller's to raise, not to print
    t:_watch(ended)
    tasks[i] = t
  end
  local ok, err = pcall(function()
    while remaining > 0 and not picked do q:wait(nil, fname) end
  end)
  for i = 1, n do tasks[i]:cancel() end
  if not ok then error(err, 0) end
  for i = 1, n do tasks[i]:join() end
  return tasks, picked
end

local function failed(task) return task.state ~= "done" end
local function settled() return true end
local function succeeded(task) return task.state == "done" end

local function unwrap(ok, ...)
  if ok then return ... end
  error((...), 0)
end

-- Runs every function as a task and waits for them all. Returns the first
-- result of each, in order. The first error (in time) cancels the rest and
-- is raised once their cleanup has run.
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
  local tasks, first_failure = run_group("keel.all", fns, failed)
  if first_failure then error(first_failure.err, 0) end
  local out = {}
  for i = 1, n do
    local _, first_result = sched.results(tasks[i])
    out[i] = first_result
  end
  return unpack(out, 1, n)
end

-- Runs every function as a task; the first to end, success or failure,
-- settles the race (as Promise.race): its results are returned or its error
-- raised, once the others are cancelled and their cleanup has run.
function keel.race(fns)
  check_fns("keel.race", fns)
  if #fns == 0 then error("keel.race: argument 'fns' must not be empty", 2) end
  local _, first = run_group("keel.race", fns, settled)
  return unwrap(sched.results(first))
end

-- The error keel.any raises when every function failed (as JavaScript's
-- AggregateError): err.errors[i] is the error of fns[i], unchanged.
local AnyError = {}
AnyError.__index = AnyError
AnyError.__tostring = function(e) return e.message end

local ANY_LISTED = 5 -- errors quoted in the message; all are in err.errors

local function any_error(tasks)
  local n = #tasks
  local errors = { n = n }
  local parts = {}
  for i = 1, n do
    errors[i] = tasks[i].err
    if i <= ANY_LISTED then parts[i] = string.format("[%d] %s", i, sched.describe(errors[i])) end
  end
  if n > ANY_LISTED then parts[#parts + 1] = string.format("... and %d more", n - ANY_LISTED) end
  local message = string.format("keel.any: all %d functions failed: %s", n, table.concat(parts, "; "))
  return setmetatable({ errors = errors, message = message }, AnyError)
end

-- True when err is the error keel.any raises when every function failed.
function keel.is_any_error(err) return getmetatable(err) == AnyError end

-- Runs every function as a task; returns the results of the first to
-- succeed (as Promise.any), once the others are cancelled and their cleanup
-- has run. Raises an aggregate error (err.errors, err.message) only when
-- every function failed.
function keel.any(fns)
  check_fns("keel.any", fns)
  if #fns == 0 then error("keel.any: argument 'fns' must not be empty", 2) end
  local tasks, winner = run_group("keel.any", fns, succeeded)
  if not winner then error(any_error(tasks), 0) end
  return unwrap(sched.results(winner))
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
  if seed > keel.SEED_MAX then
    error(string.format("keel.sim: option 'seed' must be an integer in [0, %d] (got %.17g)", keel.SEED_MAX, seed), 2)
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

-- Seeds are integers of at most 14 decimal digits everywhere (keel.sim,
-- --sim, keel_options.seed, the random seed of a real-time run): Lua prints
-- numbers with 14 significant digits, so print(keel.seed()) shows the seed
-- exactly and the run can be replayed with it.
keel.SEED_MAX = 99999999999999

function keel.seed() return sched.world().seed end

return keel
