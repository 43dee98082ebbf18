-- keel.policy{timeout, retry, breaker, ratelimit, bulkhead, hedge, fallback}:
-- one object that runs a call through the resilience primitives in a fixed
-- order (Polly's ResiliencePipeline, Resilience4j's Decorators), outermost
-- first:
--
--   fallback > retry > breaker > ratelimit > bulkhead > hedge > timeout > fn
--
-- so an open breaker, a full bulkhead or a rate limit is a retryable
-- failure for the retry around them, every attempt (and every hedged
-- attempt) has its own timeout, which cancels it, and the fallback sees the
-- final error. The layers are closures built once, here; a call allocates
-- only what its layers need.
local check = require "keel.check"
local sched = require "keel.sched"
local outcome = require "keel.outcome"

local FNAME = "keel.policy"
local OPTS = check.set { "timeout", "retry", "breaker", "bulkhead", "ratelimit", "fallback", "hedge", "name" }
local HEDGE_OPTS = check.set { "delay_ms", "max" }
local ORDER = { "fallback", "retry", "breaker", "ratelimit", "bulkhead", "hedge", "timeout" }

local type, error, pcall, select, unpack, tostring, getmetatable =
  type, error, pcall, select, unpack, tostring, getmetatable
local retryable_result = outcome.retryable_result
local capture, results = outcome.capture, outcome.results
local CLOSED = 0

local Policy = {}
Policy.__index = Policy

local function describe(v) return type(v) == "string" and string.format("%q", v) or tostring(v) end

local function bad(what, expect, v)
  error(string.format("%s: option '%s' must be %s (got %s)", FNAME, what, expect, describe(v)), 4)
end

-- An object of the primitive (anything with the method) or its options.
local function part(opts, key, method, ctor)
  local v = opts[key]
  if v == nil then return nil end
  if type(v) ~= "table" then bad(key, "a keel." .. key .. " or a table of its options", v) end
  if type(v[method]) == "function" then return v end
  local ok, obj = pcall(ctor, v)
  if not ok then
    local msg = tostring(obj):gsub("^[^\n]-:%d+: ", ""):gsub("^keel%.[%w_.]+", FNAME .. " (" .. key .. ")")
    error(msg, 3)
  end
  return obj
end

local function pack(...) return { n = select("#", ...), ... } end

-- keel.timeout answers true, results... | nil, "timeout"
local function untimed(ok, ...)
  if ok then return ... end
  return nil, "timeout"
end

-- Hedging: start an attempt; if it has not succeeded after delay_ms (or
-- failed sooner), start another, up to max in flight; the first success
-- wins, the others are cancelled (their keel.defer cleanups run before this
-- returns). With every attempt failed, the last failure is the answer.
local function hedged(inner, delay_ms, max, fn, ...)
  local args = pack(...)
  local q = sched.waitqueue()
  local tasks, winner, last, ended = {}, nil, nil, 0
  local function finished(task)
    ended = ended + 1
    local failed = task.state ~= "done"
    if not failed then
      local _, v, err = sched.results(task)
      failed = retryable_result(v, err)
    end
    if failed then last = task
    elseif not winner then winner = task end
    q:wake_one()
  end
  local function start()
    local t = sched.spawn(function() return inner(fn, unpack(args, 1, args.n)) end)
    t.observed = true -- its failure is this call's answer, not an unobserved error
    t:_watch(finished)
    tasks[#tasks + 1] = t
  end
  local ok, err = pcall(function()
    start()
    while not winner do
      if #tasks < max then
        if ended == #tasks then
          start() -- every attempt so far failed: the next goes at once
        else
          q:wait(delay_ms, "policy:call")
          -- the delay passed, or an attempt failed: hedge
          if not winner and #tasks < max then start() end
        end
      elseif ended < #tasks then
        q:wait(nil, "policy:call")
      else
        break -- max attempts, all failed
      end
    end
  end)
  for i = 1, #tasks do tasks[i]:cancel() end
  if not ok then error(err, 0) end
  for i = 1, #tasks do tasks[i]:join() end
  local t = winner or last
  local fine, first = sched.results(t)
  if not fine then error(first, 0) end
  return select(2, sched.results(t))
end

local function with_fallback(fallback, ok, ...)
  if not ok then
    local err = ...
    if err == sched.CANCELLED then error(err, 0) end
    return fallback(err)
  end
  if retryable_result(...) then return fallback((select(2, ...))) end
  return ...
end

local function call_fn(fn, ...) return fn(...) end

-- The common pipeline (retry, a local breaker, an unkeyed local bulkhead;
-- no timeout, hedge or rate limit) fused into one function with one pcall:
-- when the breaker is closed and a permit is free, the first attempt runs
-- here and a success returns at once; anything else (an open breaker, a
-- busy bulkhead, a failed first attempt) goes on through the layers, so
-- the semantics are the layers' own. Checks that decide the way have no
-- side effects.
local function fused(p, layered, below_retry)
  local r, br, bh = p.retry, p.breaker, p.bulkhead
  local settle = br and br._settle
  local now, need_task = sched.now, sched.need_task
  local again = r and r._again
  local rr = r and r.retry_on_result
  return function(fn, ...)
    if br and br.st ~= CLOSED then return layered(fn, ...) end
    if r then need_task("policy:call", 2) end
    if bh and not bh:_take_free() then return layered(fn, ...) end
    if r and r.budget then r.budget:deposit() end
    if br then br:allow() end -- closed: always a permit
    local t0 = br and now()
    local ok, n, r1, r2, r3, rest = capture(pcall(fn, ...))
    if bh then bh:_release() end
    if br then settle(br, now() - t0, ok, results(n, r1, r2, r3, rest)) end
    if ok then
      if not (rr and rr(results(n, r1, r2, r3, rest))) then return results(n, r1, r2, r3, rest) end
    elseif not r then
      error(r1, 0)
    end
    if not r then return results(n, r1, r2, r3, rest) end
    return again(r, "policy:call", below_retry, pack(fn, ...), ok, n, r1, r2, r3, rest)
  end
end

local function can_fuse(p)
  if p.timeout or p.hedge or p.ratelimit then return false end
  if not (p.retry or p.breaker or p.bulkhead) then return false end
  if p.retry and not p.retry._again then return false end
  if p.breaker and not p.breaker._settle then return false end -- the Redis breaker
  if p.bulkhead and not p.bulkhead._take_free then return false end
  return true
end

-- Builds the layers innermost first; each is function(fn, ...).
local function build(p)
  local step = call_fn
  if p.timeout then
    local ms, keel_timeout = p.timeout, require("keel").timeout
    step = function(fn, ...) return untimed(keel_timeout(ms, fn, ...)) end
  end
  if p.hedge then
    local inner, delay_ms, max = step, p.hedge.delay_ms, p.hedge.max
    step = function(fn, ...) return hedged(inner, delay_ms, max, fn, ...) end
  end
  if p.bulkhead then
    local inner, bh = step, p.bulkhead
    step = function(fn, ...) return bh:run(inner, fn, ...) end
  end
  if p.ratelimit then
    local inner, rl = step, p.ratelimit
    step = function(fn, ...)
      local ok, code, after = rl:take()
      if not ok then return nil, code, after end
      return inner(fn, ...)
    end
  end
  if p.breaker then
    local inner, br = step, p.breaker
    step = function(fn, ...) return br:call(inner, fn, ...) end
  end
  local below_retry = step
  if p.retry then
    local inner, r = step, p.retry
    step = function(fn, ...) return r:call(inner, fn, ...) end
  end
  if can_fuse(p) then step = fused(p, step, below_retry) end
  if p.fallback then
    local inner, fb = step, p.fallback
    step = function(fn, ...) return with_fallback(fb, pcall(inner, fn, ...)) end
  end
  return step
end

-- policy:call(fn, ...) -> fn's results, or what a layer answers instead:
-- nil, "open" | "full" | "limited" | "timeout" | "budget" (with no retry or
-- fallback to absorb it), or the fallback's results.
function Policy:call(fn, ...)
  if getmetatable(self) ~= Policy then check.self("policy:call", self, Policy) end
  if type(fn) ~= "function" then check.func("policy:call", "argument 'fn'", fn) end
  return self.run(fn, ...)
end

function Policy:__tostring()
  local parts = {}
  for _, k in ipairs(ORDER) do if self[k] then parts[#parts + 1] = k end end
  return "keel.policy(" .. (self.name and (self.name .. ": ") or "") .. table.concat(parts, " > ") .. ")"
end

return function(opts)
  if opts == nil then error(FNAME .. ": options must be a table (got nil)", 2) end
  opts = check.opts(FNAME, opts, OPTS)
  local p = setmetatable({ name = opts.name ~= nil and check.string(FNAME, "option 'name'", opts.name) or nil },
    Policy)
  if opts.timeout ~= nil then
    local ms = opts.timeout
    -- written so that NaN fails too
    if type(ms) ~= "number" or not (ms > 0) then bad("timeout", "a number > 0 (ms)", ms) end -- luacheck: ignore
    p.timeout = ms
  end
  if opts.hedge ~= nil then
    local h = opts.hedge
    if type(h) ~= "table" then bad("hedge", "a table {delay_ms, max}", h) end
    check.opts(FNAME .. " (hedge)", h, HEDGE_OPTS)
    local delay_ms = check.number(FNAME, "option 'hedge.delay_ms'", h.delay_ms, nil, 0, 1e12)
    local max = check.integer(FNAME, "option 'hedge.max'", h.max, 2, 2, 100)
    p.hedge = { delay_ms = delay_ms, max = max }
  end
  p.retry = part(opts, "retry", "call", require("keel.retry").new)
  p.breaker = part(opts, "breaker", "call", require("keel").breaker)
  p.bulkhead = part(opts, "bulkhead", "run", require("keel.bulkhead"))
  p.ratelimit = part(opts, "ratelimit", "take", require("keel").ratelimit)
  p.fallback = check.func(FNAME, "option 'fallback'", opts.fallback, true)
  if p.bulkhead and p.bulkhead.keyed then bad("bulkhead", "an unkeyed keel.bulkhead", p.bulkhead) end
  if p.ratelimit and p.ratelimit.keyed then bad("ratelimit", "an unkeyed keel.ratelimit", p.ratelimit) end
  p.run = build(p)
  return p
end
