-- keel.redis.breaker: a circuit breaker shared by a fleet (opt-in). Outcomes
-- from every process land in one window in Redis (the fleet's last `size`
-- calls, or its last `size` seconds); when the combined window crosses the
-- threshold the breaker opens for everyone. After
-- open_ms it is half-open: half_open_calls permits are handed out to the
-- whole fleet, and once their outcomes are in the same rates decide, as in
-- keel.breaker: close or re-open, for all.
-- If Redis cannot be reached, each process falls back to a local
-- keel.breaker until Redis answers again.
--
--   local b = require("keel.redis.breaker").new{ redis = client, name = "payments" }
--   local ok, err = b:call(fn, ...)      -- or b:allow() ... b:record(ok, ms)
--
-- Keys (one hash tag): {p}:w window buckets or count-window totals (hash),
-- {p}:ring the count window's outcomes, {p}:open (PX open_ms), {p}:half (set
-- while not closed; holds the count of consecutive openings), {p}:probe (the
-- half-open round's permits and outcomes), {p}:forced (a forced_open or
-- disabled state).
-- Outcomes are sent coalesced: at most one script in flight per breaker per
-- process, carrying every outcome recorded meanwhile; each reply carries the
-- fleet state, and allow() re-reads it when older than sync_ms.
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local redis = require "keel.redis"
local common = require "keel.redis.common"
local events = require "keel.events"
local outcome = require "keel.outcome"

local type, error, tostring, pcall, xpcall = type, error, tostring, pcall, xpcall
local traceback = debug.traceback

-- state codes: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled
-- (the last two set by force() in {p}:forced, until another force())
local STATE = [[
local function state()
  local forced = redis.call('GET', KEYS[6])
  if forced then return {tonumber(forced), 0} end
  local p = redis.call('PTTL', KEYS[2])
  if p > 0 then return {1, p} end
  if redis.call('EXISTS', KEYS[3]) == 1 then return {2, 0} end
  return {0, 0}
end
]]

-- Opens the breaker: the open period is the backoff's n-th delay for the
-- n-th consecutive opening (as keel.breaker with open_ms = {base, cap,
-- factor}; a plain number is base = cap). The half key holds n: it exists
-- from the first opening until the breaker closes.
-- spec: "base,cap,factor" -> the period in ms
local OPEN = [[
local function open(spec)
  local base, cap, factor = string.match(spec, '^([^,]+),([^,]+),([^,]+)$')
  base, cap, factor = tonumber(base), tonumber(cap), tonumber(factor)
  local n = redis.call('INCR', KEYS[3])
  local ms = base * factor ^ (n - 1)
  if not (ms <= cap) then ms = cap end
  ms = math.max(1, math.ceil(ms))
  redis.call('SET', KEYS[2], '1', 'PX', ms)
  return ms
end
]]

-- KEYS: w, open, half ; ARGV: calls, fails, window_ms, buckets, min_calls, rate, open spec, slows, slow_rate
-- Bucket fields: c<n> calls, f<n> failures, s<n> slow calls (as keel.breaker:
-- a slow call counts toward slow_rate whether it succeeded or not).
local RECORD = redis.script(STATE .. OPEN .. [[
local s = state()
if s[1] ~= 0 or tonumber(ARGV[1]) == 0 then return s end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win, nb = tonumber(ARGV[3]), tonumber(ARGV[4])
local b = math.floor(now / (win / nb))
redis.call('HINCRBY', KEYS[1], 'c' .. b, ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'f' .. b, ARGV[2]) end
if tonumber(ARGV[8]) > 0 then redis.call('HINCRBY', KEYS[1], 's' .. b, ARGV[8]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(win * 2))
local all = redis.call('HGETALL', KEYS[1])
local calls, fails, slows = 0, 0, 0
for i = 1, #all, 2 do
  local kind, bucket = string.sub(all[i], 1, 1), tonumber(string.sub(all[i], 2))
  if bucket <= b - nb then
    redis.call('HDEL', KEYS[1], all[i])
  elseif kind == 'c' then calls = calls + tonumber(all[i + 1])
  elseif kind == 's' then slows = slows + tonumber(all[i + 1])
  else fails = fails + tonumber(all[i + 1]) end
end
if calls >= tonumber(ARGV[5]) and (fails * 100 >= tonumber(ARGV[6]) * calls
                                   or slows * 100 >= tonumber(ARGV[9]) * calls) then
  local ms = open(ARGV[7])
  redis.call('DEL', KEYS[1], KEYS[5])
  return {1, ms, 1}
end
return {0, 0}
]])

-- The count window: the fleet's last `size` outcomes in the order they
-- reached Redis (each process's batch in its own order), a ring of one byte
-- per call in {p}:ring ('0' ok, '1' failed, '2' slow, '3' slow and failed)
-- with its position and running totals in {p}:w. An idle window is
-- forgotten after a day (IDLE_MS), so abandoned breakers do not stay.
-- KEYS: w, open, half, probe, ring ; ARGV: outcomes, size, min_calls, rate, open spec, slow_rate, idle_ms
local RECORD_COUNT = redis.script(STATE .. OPEN .. [[
local s = state()
local out = ARGV[1]
if s[1] ~= 0 or #out == 0 then return s end
local size = tonumber(ARGV[2])
local w = redis.call('HMGET', KEYS[1], 'pos', 'n', 'f', 's')
local pos, n, nf, ns = tonumber(w[1] or '0'), tonumber(w[2] or '0'), tonumber(w[3] or '0'), tonumber(w[4] or '0')
for i = 1, #out do
  local c = string.byte(out, i) - 48
  if n >= size then
    local old = string.byte(redis.call('GETRANGE', KEYS[5], pos, pos)) - 48
    if old % 2 == 1 then nf = nf - 1 end
    if old >= 2 then ns = ns - 1 end
  else
    n = n + 1
  end
  redis.call('SETRANGE', KEYS[5], pos, string.sub(out, i, i))
  if c % 2 == 1 then nf = nf + 1 end
  if c >= 2 then ns = ns + 1 end
  pos = (pos + 1) % size
end
local min_calls = math.min(tonumber(ARGV[3]), size)
if n >= min_calls and (nf * 100 >= tonumber(ARGV[4]) * n or ns * 100 >= tonumber(ARGV[6]) * n) then
  local ms = open(ARGV[5])
  redis.call('DEL', KEYS[1], KEYS[5])
  return {1, ms, 1}
end
redis.call('HSET', KEYS[1], 'pos', pos, 'n', n, 'f', nf, 's', ns)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[5], ARGV[7])
return {0, 0}
]])

-- Every script gets the same KEYS: w, open, half, probe, ring, forced
local READ = redis.script(STATE .. [[ return state() ]])

-- The half-open round: {p}:probe is a hash of permits issued (i), outcomes
-- recorded (r), failed (f) and slow (s). Once half_open_calls outcomes are
-- in, the rates decide, as in keel.breaker: reopen or close. The hash
-- expires probe_ttl_ms after the last permit, so permits of a crashed
-- process cannot hold the round forever: a new round starts.
-- ARGV: half_open_calls, probe_ttl_ms -> {state, pttl, got_permit}
local PROBE = redis.script(STATE .. [[
local s = state()
if s[1] ~= 2 then return s end
if tonumber(redis.call('HGET', KEYS[4], 'i') or '0') >= tonumber(ARGV[1]) then return {2, 0, 0} end
redis.call('HINCRBY', KEYS[4], 'i', 1)
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return {2, 0, 1}
]])

-- ARGV: failed (0/1), slow (0/1), half_open_calls, failure_rate, slow_rate, open spec
local SETTLE = redis.script(STATE .. OPEN .. [[
local s = state()
if s[1] ~= 2 or redis.call('EXISTS', KEYS[4]) == 0 then return s end
local r = redis.call('HINCRBY', KEYS[4], 'r', 1)
local f = redis.call('HINCRBY', KEYS[4], 'f', ARGV[1])
local sl = redis.call('HINCRBY', KEYS[4], 's', ARGV[2])
if r < tonumber(ARGV[3]) then return {2, 0} end
redis.call('DEL', KEYS[4])
if f * 100 >= tonumber(ARGV[4]) * r or sl * 100 >= tonumber(ARGV[5]) * r then return {1, open(ARGV[6])} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[1], KEYS[5])
return {0, 0}
]])

-- a permit given back without an outcome (a cancelled probe call)
local UNPROBE = redis.script(STATE .. [[
local s = state()
if s[1] == 2 and tonumber(redis.call('HGET', KEYS[4], 'i') or '0') > 0 then
  redis.call('HINCRBY', KEYS[4], 'i', -1)
end
return s
]])

-- ARGV: state code, open spec: b:force(state) for the fleet
local FORCE = redis.script(OPEN .. [[
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
if ARGV[1] == '3' or ARGV[1] == '4' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('SET', KEYS[6], ARGV[1])
  return {tonumber(ARGV[1]), 0}
end
if ARGV[1] == '0' then
  redis.call('DEL', KEYS[2], KEYS[3])
  return {0, 0}
end
if ARGV[1] == '1' then return {1, open(ARGV[2])} end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SET', KEYS[3], '0') end
return {2, 0}
]])

local NAMES = { [0] = "closed", "open", "half_open", "forced_open", "disabled" }
local CODES = { closed = 0, open = 1, half_open = 2, forced_open = 3, disabled = 4 }
local DISABLED = 4

local Breaker = {}
Breaker.__index = Breaker

local OPTS = check.set { "redis", "name", "prefix", "window", "size", "window_ms", "buckets", "min_calls",
  "failure_rate", "slow_ms", "slow_rate", "open_ms", "half_open_calls", "probe_ttl_ms", "sync_ms", "fallback_ms",
  "local_opts", "record_error", "ignore_error", "record_result", "max_wait_half_open_ms" }
local EVENTS = check.set { "state", "success", "error", "ignored_error", "not_permitted", "slow" }

local M = {}

local function self_check(fname, self) common.self(fname, self, Breaker, 1) end

-- keel.breaker's window options: window = "count" (default; the fleet's
-- last `size` calls) or "time" (the last `size` seconds, one bucket a
-- second up to 1000 buckets, or window_ms/buckets, the Redis-only spelling,
-- which also selects a time window). -> kind, size, window_ms, buckets
local function window_option(F, opts)
  local window, size = opts.window, opts.size
  if window ~= nil and window ~= "count" and window ~= "time" then
    error(string.format("%s: option 'window' must be one of count, time (got %s)", F,
      type(window) == "string" and string.format("%q", window) or tostring(window)), 3)
  end
  if size ~= nil and (type(size) ~= "number" or size ~= math.floor(size) or size < 1 or size > 1000000) then
    error(string.format("%s: option 'size' must be an integer in [1, 1000000] (got %s)", F, tostring(size)), 3)
  end
  local spans = opts.window_ms ~= nil or opts.buckets ~= nil
  if window == nil then window = spans and "time" or "count" end
  if spans and window == "count" then
    error(F .. ": options 'window_ms'/'buckets' shape a time window: use window = \"time\" with them", 3)
  end
  if spans and size ~= nil then
    error(F .. ": give either size (seconds) or window_ms/buckets, not both", 3)
  end
  if window == "count" then return "count", size or 100 end
  if spans then return "time", nil, opts.window_ms, opts.buckets end
  size = size or 100
  return "time", size, size * 1000, math.min(size, 1000)
end

-- open_ms as keel.breaker takes it: a number, {base_ms, cap_ms, factor}
-- (also positional) or a keel.backoff without jitter; the scripts compute
-- the n-th period from the fleet's count of consecutive openings. A
-- jittered keel.backoff would draw per process: refused. -> "base,cap,factor"
local function open_option(F, v)
  if v == nil then v = 60000 end
  local base, cap, factor
  if type(v) == "number" then
    if v ~= v or v <= 0 or v > 1e12 then
      error(string.format("%s: option 'open_ms' must be a number in (0, 1e12] (got %s)", F, tostring(v)), 3)
    end
    base, cap, factor = v, v, 1
  elseif type(v) == "table" and type(v.delay) == "function" then
    if v.jitter ~= "none" then
      error(string.format("%s: option 'open_ms' cannot be a keel.backoff with jitter on Redis (each process "
        .. "would draw its own period): use {base_ms, cap_ms, factor} (or jitter = \"none\")", F), 3)
    end
    base, cap, factor = v.base_ms, v.cap_ms, v.factor
  elseif type(v) == "table" then
    base, cap, factor = v.base_ms or v[1], v.cap_ms or v[2], v.factor or v[3]
    if type(base) ~= "number" or base ~= base or base <= 0 or base > 1e12 then
      error(string.format("%s: option 'open_ms.base_ms' must be a number in (0, 1e12] (got %s)", F,
        tostring(base)), 3)
    end
    if cap == nil then cap = math.max(base, 60000) end
    if type(cap) ~= "number" or not (cap >= base and cap <= 1e12) then
      error(string.format("%s: option 'open_ms.cap_ms' must be a number in [%s, 1e12] (got %s)", F,
        tostring(base), tostring(cap)), 3)
    end
    if factor == nil then factor = 2 end
    if type(factor) ~= "number" or not (factor >= 1 and factor <= 1e6) then
      error(string.format("%s: option 'open_ms.factor' must be a number in [1, 1e6] (got %s)", F,
        tostring(factor)), 3)
    end
  else
    error(string.format("%s: option 'open_ms' must be a number > 0, a keel.backoff or {base_ms, cap_ms, factor} "
      .. "(got %s)", F, tostring(v)), 3)
  end
  return string.format("%.17g,%.17g,%.17g", base, cap, factor), v
end

function M.new(opts)
  local F = "keel.redis.breaker"
  opts = check.opts(F, opts, OPTS)
  -- what the fleet's scripts cannot keep, refused with the way to say it
  if opts.window == "consecutive" then
    error(F .. ": option 'window' cannot be \"consecutive\" on Redis (the fleet shares one window): use "
      .. "window = \"count\" with size = N, min_calls = N, failure_rate = 100", 2)
  end
  if opts.max_wait_half_open_ms ~= nil then
    error(F .. ": option 'max_wait_half_open_ms' is not supported on Redis: use probe_ttl_ms (a probe whose "
      .. "outcome never arrives frees its permit after it)", 2)
  end
  local window, size, window_ms, buckets = window_option(F, opts)
  local slow_rate = check.number(F, "option 'slow_rate'", opts.slow_rate, 100, 0, 100)
  if slow_rate == 0 then check.number(F, "option 'slow_rate'", 0, nil, 1e-9, 100) end
  local half_open_calls = check.integer(F, "option 'half_open_calls'", opts.half_open_calls, 10, 1, 2 ^ 31 - 1)
  local open_spec, open_ms = open_option(F, opts.open_ms)
  local record_result = outcome.failed_result
  if opts.record_result == false then record_result = nil
  elseif opts.record_result ~= nil then
    record_result = check.func(F, "option 'record_result'", opts.record_result)
  end
  -- slow_ms = 0 would make every call slow (rejected as keel.breaker does)
  if opts.slow_ms == 0 then error(F .. ": option 'slow_ms' must be a number > 0 (got 0)", 2) end
  local prefix = common.prefix(F, opts, "breaker")
  local base = "{" .. prefix .. "}"
  local self = setmetatable({
    redis = common.client(F, opts.redis),
    name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil,
    keys = { base .. ":w", base .. ":open", base .. ":half", base .. ":probe", base .. ":ring",
             base .. ":forced" },
    window = window, size = size,
    window_ms = window == "time" and check.number(F, "option 'window_ms'", window_ms, 10000, 1, 1e12) or nil,
    buckets = window == "time" and check.integer(F, "option 'buckets'", buckets, 10, 1, 1000) or nil,
    min_calls = check.integer(F, "option 'min_calls'", opts.min_calls, 100, 1, 2 ^ 31 - 1),
    failure_rate = check.number(F, "option 'failure_rate'", opts.failure_rate, 50, 1e-9, 100),
    slow_ms = check.number(F, "option 'slow_ms'", opts.slow_ms, 60000, 0, math.huge),
    slow_rate = slow_rate,
    open_ms = open_ms, open_spec = open_spec, half_open_calls = half_open_calls,
    probe_ttl_ms = math.ceil(check.number(F, "option 'probe_ttl_ms'", opts.probe_ttl_ms, 10000, 1, 1e12)),
    sync_ms = check.number(F, "option 'sync_ms'", opts.sync_ms, 100, 0, 1e12),
    fallback_ms = check.number(F, "option 'fallback_ms'", opts.fallback_ms, 1000, 0, 1e12),
    st = 0, fresh_until = -math.huge, refreshing = false,
    pc = 0, pf = 0, ps = 0, pend = {}, np = 0, flusher = nil,
    probes_out = 0, fallback_until = -math.huge, last_error = nil,
    callbacks = {}, ev = nil, recording_err = nil,
    label = F .. (opts.name and ("(" .. tostring(opts.name) .. ")") or ""),
    record_error = check.func(F, "option 'record_error'", opts.record_error, true),
    ignore_error = check.func(F, "option 'ignore_error'", opts.ignore_error, true),
    record_result = record_result,
    s = { allowed = 0, rejected = 0, calls = 0, failures = 0, slow = 0, probes = 0, opened = 0, redis_errors = 0,
          fallback_allowed = 0 },
  }, Breaker)
  local lo = opts.local_opts
  if lo ~= nil and type(lo) ~= "table" then
    error(F .. ": option 'local_opts' must be a table of keel.breaker options (got " .. tostring(lo) .. ")", 2)
  end
  lo = lo or { window = window,
               size = size or math.max(1, math.min(1000000, math.ceil(self.window_ms / 1000))),
               min_calls = self.min_calls, failure_rate = self.failure_rate, slow_ms = self.slow_ms,
               slow_rate = self.slow_rate, open_ms = self.open_ms, half_open_calls = half_open_calls }
  self.fallback = require("keel.breaker")(lo)
  metrics.register("redis_breaker", self.name, self)
  return self
end

local function set_state(self, code, pttl)
  local from = self.st
  self.st = code
  local now = sched.now()
  local ttl = self.sync_ms
  if code == 1 and pttl and pttl > 0 and pttl < ttl then ttl = pttl end
  self.fresh_until = now + ttl
  if from ~= code then
    if code == 1 then self.s.opened = self.s.opened + 1 end
    for _, fn in ipairs(self.callbacks) do
      local ok, err = xpcall(fn, traceback, NAMES[from], NAMES[code])
      if not ok then sched.report("keel.redis.breaker: on_state callback failed: " .. tostring(err)) end
    end
  end
end

local function redis_failed(self, err)
  self.s.redis_errors = self.s.redis_errors + 1
  self.last_error = err
  self.fallback_until = sched.now() + self.fallback_ms
end

local function in_fallback(self) return sched.now() < self.fallback_until end

local function run(self, script, ...)
  local k = self.keys
  local r, err = self.redis:eval(script, 6, k[1], k[2], k[3], k[4], k[5], k[6], ...)
  if not r then redis_failed(self, err); return nil end
  set_state(self, r[1], r[2])
  return r
end

-- Sends the outcomes recorded so far (from the flusher task, or inline from
-- state() so that it answers after them).
local OUTCOME = { [0] = "0", "1", "2", "3" } -- bit 0: failed, bit 1: slow
local IDLE_MS = 86400000

local function send_outcomes(self)
  while self.np > 0 do
    -- only the last `size` outcomes can still be in the window
    local pend, n = self.pend, self.np
    self.pend, self.np = {}, 0
    run(self, RECORD_COUNT, table.concat(pend, "", n > self.size and n - self.size + 1 or 1, n), self.size,
      self.min_calls, self.failure_rate, self.open_spec, self.slow_rate, IDLE_MS)
  end
  while self.pc > 0 do
    local calls, fails, slows = self.pc, self.pf, self.ps
    self.pc, self.pf, self.ps = 0, 0, 0
    run(self, RECORD, calls, fails, self.window_ms, self.buckets, self.min_calls, self.failure_rate, self.open_spec,
      slows, self.slow_rate)
  end
end

local function flush(self)
  send_outcomes(self)
  self.flusher = nil
end

-- allow() -> true | nil, "open"
function Breaker:allow()
  self_check("breaker:allow", self)
  if in_fallback(self) then
    local ok, err = self.fallback:allow()
    if ok then self.s.fallback_allowed = self.s.fallback_allowed + 1; return true, "fallback" end
    self.s.rejected = self.s.rejected + 1
    return nil, err
  end
  local now = sched.now()
  if now >= self.fresh_until and not self.refreshing then
    self.refreshing = true
    local ok, e = pcall(run, self, READ)
    self.refreshing = false
    if not ok then error(e, 0) end -- cancelled
    if in_fallback(self) then return self:allow() end
  end
  local st = self.st
  if st == 0 or st == DISABLED then
    self.s.allowed = self.s.allowed + 1
    return true
  end
  if st == 2 then
    local r = run(self, PROBE, self.half_open_calls, self.probe_ttl_ms)
    if r and r[3] == 1 then
      self.probes_out = self.probes_out + 1
      self.s.probes = self.s.probes + 1
      self.s.allowed = self.s.allowed + 1
      return true, "probe"
    end
    if not r then return self:allow() end
    if self.st == 0 then -- closed meanwhile by another process's probes
      self.s.allowed = self.s.allowed + 1
      return true
    end
  end
  self.s.rejected = self.s.rejected + 1
  if self.ev then events.emit(self, self.label, "not_permitted") end
  return nil, "open"
end

-- record(ok [, duration_ms], [permit]): permit is allow()'s second value
-- ("probe" or "fallback"), so the outcome goes where the permit came from.
function Breaker:record(ok, duration_ms, permit)
  self_check("breaker:record", self)
  if duration_ms ~= nil then check.number("breaker:record", "argument 'duration_ms'", duration_ms) end
  local slow = duration_ms ~= nil and duration_ms >= self.slow_ms
  self.s.calls = self.s.calls + 1
  if not ok then self.s.failures = self.s.failures + 1 end
  if slow then self.s.slow = self.s.slow + 1 end
  if self.ev then
    if ok then events.emit(self, self.label, "success", duration_ms or 0)
    else events.emit(self, self.label, "error", self.recording_err, duration_ms or 0) end
    if slow then events.emit(self, self.label, "slow", duration_ms) end
  end
  if permit == "fallback" then
    self.fallback:record(ok, duration_ms)
    return
  end
  if permit == "probe" then
    if self.probes_out > 0 then self.probes_out = self.probes_out - 1 end
    run(self, SETTLE, ok and 0 or 1, slow and 1 or 0, self.half_open_calls, self.failure_rate, self.slow_rate,
      self.open_spec)
    return
  end
  if self.window == "count" then
    local n = self.np + 1
    self.np = n
    self.pend[n] = OUTCOME[(ok and 0 or 1) + (slow and 2 or 0)]
  else
    self.pc = self.pc + 1
    if not ok then self.pf = self.pf + 1 end
    if slow then self.ps = self.ps + 1 end
  end
  if not self.flusher then self.flusher = sched.spawn(flush, self) end
end

-- call(fn, ...) -> fn's results | nil, "open"; an error in fn is recorded
-- as a failure and re-raised.
function Breaker:call(fn, ...)
  self_check("breaker:call", self)
  check.func("breaker:call", "argument 'fn'", fn)
  local ok, permit = self:allow()
  if not ok then return nil, permit end
  local t0 = sched.now()
  local function finish(success, ...)
    local err = ...
    if not success and err == sched.CANCELLED then
      if permit == "probe" or permit == "fallback" then pcall(self.cancel, self, permit) end
      error(err, 0)
    end
    -- the same outcome rules as keel.breaker:call
    local raised, good = not success, success
    if raised then
      if self.ignore_error and self.ignore_error(err) then
        if permit == "probe" or permit == "fallback" then self:cancel(permit) end
        if self.ev then events.emit(self, self.label, "ignored_error", err) end
        error(err, 0)
      end
      if self.record_error and not self.record_error(err) then good = true end
    elseif self.record_result and self.record_result(...) then
      good = false
      err = select(2, ...)
    end
    self.recording_err = not good and err or nil
    self:record(good, sched.now() - t0, permit)
    self.recording_err = nil
    if raised then error(err, 0) end
    return ...
  end
  return finish(pcall(fn, ...))
end

-- cancel([permit]): an allow() permit given back without an outcome; a
-- probe's lease is freed so another call (any process's) can probe.
function Breaker:cancel(permit)
  self_check("breaker:cancel", self)
  if permit == "fallback" then return self.fallback:cancel() end
  if permit == "probe" or (permit == nil and self.probes_out > 0) then
    if self.probes_out > 0 then self.probes_out = self.probes_out - 1 end
    run(self, UNPROBE)
  end
end

-- state() -> "closed" | "open" | "half_open": the fleet's, after this
-- process's outcomes recorded so far, re-read when older than sync_ms (so
-- open -> half_open is noticed as keel.breaker notices it); the local
-- breaker's while Redis is unreachable. Outside a task: as last seen.
function Breaker:state()
  self_check("breaker:state", self)
  if not in_fallback(self) and sched.current() and not self.refreshing then
    self.refreshing = true
    local ok, e = pcall(function()
      send_outcomes(self)
      if sched.now() >= self.fresh_until and not in_fallback(self) then run(self, READ) end
    end)
    self.refreshing = false
    if not ok then error(e, 0) end -- cancelled
  end
  if in_fallback(self) then return self.fallback:state() end
  return NAMES[self.st]
end

-- force(state) -> b | nil, err, for the whole fleet: "closed", "open" (a
-- normal open period), "half_open" (fresh permits), or "forced_open" /
-- "disabled", which stay until the next force() (disabled allows every
-- call and records nothing).
function Breaker:force(state)
  self_check("breaker:force", self)
  local code = CODES[state]
  if not code then check.oneof("breaker:force", "argument 'state'", state, nil,
    { "closed", "open", "half_open", "forced_open", "disabled" }) end
  self.pc, self.pf, self.ps, self.pend, self.np = 0, 0, 0, {}, 0
  self.probes_out = 0
  if not run(self, FORCE, code, self.open_spec) then return nil, self.last_error end
  return self
end

-- Re-reads the fleet state now.
function Breaker:refresh()
  self_check("breaker:refresh", self)
  if not run(self, READ) then return nil, self.last_error end
  return NAMES[self.st]
end

function Breaker:on_state(fn)
  self_check("breaker:on_state", self)
  check.func("breaker:on_state", "argument 'fn'", fn)
  self.callbacks[#self.callbacks + 1] = fn
  return self
end

-- on(event, fn): the events of keel.breaker (doc/breaker.md); "state" is
-- on_state.
function Breaker:on(event, fn)
  self_check("breaker:on", self)
  if event == "state" then
    check.func("breaker:on", "argument 'fn'", fn)
    self.callbacks[#self.callbacks + 1] = fn
    return self
  end
  return events.on(self, "breaker:on", EVENTS, event, fn)
end

function Breaker:stats()
  self_check("breaker:stats", self)
  local s = { state = self:state(), fallback = in_fallback(self) }
  for k, v in pairs(self.s) do s[k] = v end
  return s
end

function Breaker:__tostring() return "keel.redis.breaker(" .. self.keys[1] .. ", " .. NAMES[self.st] .. ")" end

M.Breaker = Breaker
return M
