-- keel.retry(fn, opts): calls fn(attempt) until it succeeds, sleeping the
-- backoff's delays between tries. keel.retry.new(opts) builds the same as
-- an object: r:call(fn, ...) calls fn(...) (what keel.policy composes) and
-- r:on(event, fn) listens.
-- Which outcomes are failures: every raised error (retry_on narrows it);
-- a returned `nil, err` only when retry_on_result says so, by default when
-- err is a Keel transport failure or refusal code (keel.outcome), because
-- `nil, err` is also how many functions report an ordinary "not found".
-- A cancelled task is never retried: the cancellation propagates at once.
local check = require "keel.check"
local sched = require "keel.sched"
local new_backoff = require "keel.backoff"
local events = require "keel.events"
local outcome = require "keel.outcome"

local FNAME = "keel.retry"
local OPTS = check.set { "backoff", "retry_on", "retry_on_nil", "retry_on_result", "budget", "attempts",
                         "on_retry", "delay", "name" }
local EVENTS = check.set { "retry", "give_up" }
local select, pcall, type, error, tostring, getmetatable = select, pcall, type, error, tostring, getmetatable
local unpack = unpack

local default_backoff

local function get_backoff(b, fname)
  if b == nil then
    default_backoff = default_backoff or new_backoff {}
    return default_backoff
  end
  if type(b) ~= "table" then
    error(fname .. ": option 'backoff' must be a keel.backoff or an options table (got " .. tostring(b) .. ")", 4)
  end
  if type(b.delay) == "function" then return b end
  local ok, res = pcall(new_backoff, b)
  if not ok then error(tostring(res):gsub("^keel%.backoff", fname .. " (backoff)"), 4) end
  return res
end

local function get_budget(b, fname)
  if b == nil then return nil end
  if type(b) ~= "table" or type(b.withdraw) ~= "function" or type(b.deposit) ~= "function" then
    error(fname .. ": option 'budget' must be a keel.retry_budget (got " .. tostring(b) .. ")", 4)
  end
  return b
end

local Retry = {}
Retry.__index = Retry

-- Options checked once (level 3: the caller of keel.retry / keel.retry.new).
local function configure(fname, opts)
  opts = check.opts(fname, opts, OPTS)
  local backoff = get_backoff(opts.backoff, fname)
  local retry_on_nil = check.boolean(fname, "option 'retry_on_nil'", opts.retry_on_nil, false)
  local retry_on_result = outcome.retryable_result
  if retry_on_nil then
    retry_on_result = function(v) return v == nil end
  end
  if opts.retry_on_result == false then retry_on_result = nil
  elseif opts.retry_on_result ~= nil then
    if retry_on_nil then error(fname .. ": give either retry_on_nil or retry_on_result, not both", 3) end
    retry_on_result = check.func(fname, "option 'retry_on_result'", opts.retry_on_result)
  end
  return setmetatable({
    backoff = backoff,
    retry_on = check.func(fname, "option 'retry_on'", opts.retry_on, true),
    retry_on_nil = retry_on_nil,
    retry_on_result = retry_on_result,
    budget = get_budget(opts.budget, fname),
    attempts = check.integer(fname, "option 'attempts'", opts.attempts, backoff.max_attempts or 3, 1, 1e9),
    on_retry = check.func(fname, "option 'on_retry'", opts.on_retry, true),
    delay_fn = check.func(fname, "option 'delay'", opts.delay, true),
    name = opts.name ~= nil and check.string(fname, "option 'name'", opts.name) or nil,
    ev = nil,
  }, Retry)
end

local function pack(...) return { n = select("#", ...), ... } end

-- The next delay: delay(attempt, err, results) when given and it answers
-- a number (a server's retry-after), else the backoff's.
local function next_delay(self, attempt, prev, err, r)
  local f = self.delay_fn
  if f then
    local ms = f(attempt, err, r)
    if ms ~= nil then
      if type(ms) ~= "number" or ms ~= ms or ms < 0 then
        error(FNAME .. ": option 'delay' must return nil or a number >= 0 (got " .. tostring(ms) .. ")", 0)
      end
      return ms
    end
  end
  return self.backoff:delay(attempt, prev)
end

local function give_up(self, err, attempt)
  if self.ev then events.emit(self, FNAME, "give_up", err, attempt) end
end

local capture, results = outcome.capture, outcome.results

-- The tries after a failed first one. args: the caller's arguments
-- (packed), nil when fn takes the attempt number (keel.retry).
local function again(self, fname, fn, args, ok, n, r1, r2, r3, rest)
  local budget, retry_on, retry_on_result = self.budget, self.retry_on, self.retry_on_result
  local attempt, prev = 1, 0
  while true do
    local err
    if ok then
      if not (retry_on_result and retry_on_result(results(n, r1, r2, r3, rest))) then
        return results(n, r1, r2, r3, rest)
      end
      err = r2
    else
      err = r1
      if err == sched.CANCELLED then error(err, 0) end
    end
    if (retry_on and not retry_on(err)) or attempt >= self.attempts then
      give_up(self, err, attempt)
      if ok then return results(n, r1, r2, r3, rest) end
      error(err, 0)
    end
    if budget and not budget:withdraw() then
      give_up(self, err, attempt)
      return nil, "budget", err
    end
    prev = next_delay(self, attempt, prev, err, ok and { n = n, results(n, r1, r2, r3, rest) } or nil)
    if self.on_retry then self.on_retry(err, attempt, prev) end
    if self.ev then events.emit(self, FNAME, "retry", err, attempt, prev) end
    sched.sleep(prev, fname)
    attempt = attempt + 1
    if args then ok, n, r1, r2, r3, rest = capture(pcall(fn, unpack(args, 1, args.n)))
    else ok, n, r1, r2, r3, rest = capture(pcall(fn, attempt)) end
  end
end

-- with_attempt: keel.retry passes fn the attempt number; r:call passes the
-- caller's arguments. The first try returns a success straight away (no
-- table, no loop: the JIT compiles it into the caller's trace); only a
-- failure packs the arguments for the tries after it.
local function run(self, fname, fn, with_attempt, ...)
  sched.need_task(fname, 4)
  if self.budget then self.budget:deposit() end
  local ok, n, r1, r2, r3, rest
  if with_attempt then ok, n, r1, r2, r3, rest = capture(pcall(fn, 1))
  else ok, n, r1, r2, r3, rest = capture(pcall(fn, ...)) end
  if ok then
    local rr = self.retry_on_result
    if not (rr and rr(results(n, r1, r2, r3, rest))) then return results(n, r1, r2, r3, rest) end
  end
  return again(self, fname, fn, not with_attempt and pack(...) or nil, ok, n, r1, r2, r3, rest)
end

-- For keel.policy's fused path: the tries after a first one it made itself.
Retry._again = again

function Retry:call(fn, ...)
  if getmetatable(self) ~= Retry then check.self("retry:call", self, Retry) end
  check.func("retry:call", "argument 'fn'", fn)
  return run(self, "retry:call", fn, false, ...)
end

-- r:on("retry", fn(err, attempt, delay_ms)) before each sleep;
-- r:on("give_up", fn(err, attempts)) when the last failure is final
-- (attempts spent, retry_on said no, or the budget refused).
function Retry:on(event, fn)
  if getmetatable(self) ~= Retry then check.self("retry:on", self, Retry) end
  return events.on(self, "retry:on", EVENTS, event, fn)
end

function Retry:__tostring()
  return "keel.retry(" .. (self.name or "") .. ", attempts=" .. self.attempts .. ")"
end

local M = {}

function M.new(opts)
  return configure(FNAME .. ".new", opts)
end

return setmetatable(M, {
  __call = function(_, fn, opts)
    check.func(FNAME, "argument 'fn'", fn)
    -- configure's errors blame the line that called it: re-raise them at
    -- keel.retry's caller instead of this file
    local ok, self = pcall(configure, FNAME, opts)
    if not ok then error((tostring(self):gsub("^[^\n]-:%d+: ", "")), 2) end
    return run(self, FNAME, fn, true)
  end,
})
