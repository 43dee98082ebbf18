-- keel.breaker{...}: circuit breaker over runtime/keel_breaker.c. allow and
-- record are one FFI call each; the C side returns the state it leaves the
-- breaker in, so transitions are noticed here without another call, and
-- on_state callbacks run after the transition is complete.
local ffi = require "ffi"
local bit = require "bit"
local C = require "keel.ffi.breaker"
local check = require "keel.check"
local sched = require "keel.sched"
local metrics = require "keel.metrics"
local new_backoff = require "keel.backoff"
local cmem = require "keel.cmem"
local events = require "keel.events"
local outcome = require "keel.outcome"

local FNAME = "keel.breaker"
local OPTS = check.set { "window", "size", "window_ms", "buckets", "min_calls", "failure_rate", "slow_ms",
                         "slow_rate", "open_ms", "half_open_calls", "max_wait_half_open_ms", "record_error",
                         "ignore_error", "record_result", "name" }
local REDIS_ONLY = check.set { "prefix", "probe_ttl_ms", "sync_ms", "fallback_ms", "local_opts" }
local EVENTS = check.set { "state", "success", "error", "ignored_error", "not_permitted", "slow" }
local WINDOWS = { count = 0, time = 1, consecutive = 2 }
local NAMES = { [0] = "closed", "open", "half_open", "forced_open", "disabled" }
local CODES = { closed = 0, open = 1, half_open = 2, forced_open = 3, disabled = 4 }
local CLOSED, OPEN, HALF_OPEN = 0, 1, 2
local INT_MAX = 2147483647
-- also the nominal period handed to C when a backoff sets each period
local DEFAULT_OPEN_MS = 60000

local band, rshift = bit.band, bit.rshift
local type, pcall, xpcall, error, getmetatable, tostring = type, pcall, xpcall, error, getmetatable, tostring
local traceback = debug.traceback

local Breaker = {}
Breaker.__index = Breaker

local function self_check(fname, self)
  if getmetatable(self) ~= Breaker then check.self(fname, self, Breaker, 1) end
end

-- Fires callbacks for queued transitions in order. A callback that triggers
-- another transition (re-entrant use) only queues it; the outer loop fires it
-- next, so every callback sees transitions in the order they happened.
local function drain(self)
  if self.firing then return end
  self.firing = true
  local pending = self.pending
  local i = 1
  while i < pending.n do
    local from, to = pending[i], pending[i + 1]
    i = i + 2
    local cbs = self.callbacks
    for k = 1, #cbs do
      local ok, err = xpcall(cbs[k], traceback, from, to)
      if not ok then
        sched.report(string.format("%s%s: on_state callback failed (%s -> %s): %s", FNAME,
          self.name and ("(" .. self.name .. ")") or "", from, to, tostring(err)))
      end
    end
  end
  for k = 1, pending.n do pending[k] = nil end
  pending.n = 0
  self.firing = false
end

-- With a state listener, the transitions that happen by themselves (OPEN
-- -> HALF_OPEN at open_ms, HALF_OPEN -> OPEN at max_wait_half_open_ms)
-- fire at their deadline from a timer, not at the next call. Unreferenced:
-- a breaker waiting to half-open does not keep the process alive.
local function arm(self)
  local t = self.timer
  if t then t:stop(); self.timer = nil end
  local w = sched.world()
  if not w or w.clock ~= self.clock then return end
  local deadline = C.keel_breaker_deadline(self.p)
  if deadline == math.huge then return end
  local wait = deadline - w.clock.now_ms
  if wait < 0 then wait = 0 end
  self.timer = sched.after(wait, function()
    self.timer = nil
    self:state()
  end):unref()
end

local function moved(self, to)
  local from = self.st
  self.st = to
  if to == OPEN and self.open_backoff then
    local ms = self.open_backoff:delay(C.keel_breaker_opens(self.p))
    C.keel_breaker_set_open_ms(self.p, ms)
  end
  if (to == OPEN or to == HALF_OPEN or self.timer) and self.callbacks[1] then arm(self) end
  if from ~= to and self.callbacks[1] then
    local pending = self.pending
    local n = pending.n
    pending[n + 1], pending[n + 2] = NAMES[from], NAMES[to]
    pending.n = n + 2
    drain(self)
  end
end

-- true, or nil, "open". A permit from allow() must be followed by record()
-- (or cancel() when the call ended without an outcome).
function Breaker:allow()
  self_check("breaker:allow", self)
  local r = C.keel_breaker_allow(self.p)
  local st = rshift(r, 1)
  if st ~= self.st then moved(self, st) end
  if band(r, 1) == 1 then return true end
  if self.ev then events.emit(self, self.label, "not_permitted") end
  return nil, "open"
end

local function record(self, ok, duration_ms, err)
  local before = self.st
  local st = C.keel_breaker_record(self.p, ok and 1 or 0, duration_ms)
  -- only outcomes the breaker counted (closed, half_open) are events
  if self.ev and (before == CLOSED or before == HALF_OPEN) then
    local label = self.label
    if ok then events.emit(self, label, "success", duration_ms)
    else events.emit(self, label, "error", err, duration_ms) end
    if duration_ms >= self.slow_ms then events.emit(self, label, "slow", duration_ms) end
  end
  if st ~= self.st then moved(self, st) end
end

function Breaker:record(ok, duration_ms)
  self_check("breaker:record", self)
  if duration_ms == nil then duration_ms = 0
  elseif type(duration_ms) ~= "number" or duration_ms ~= duration_ms then
    check.number("breaker:record", "argument 'duration_ms'", duration_ms)
  end
  record(self, ok, duration_ms, nil)
end

function Breaker:cancel()
  self_check("breaker:cancel", self)
  C.keel_breaker_cancel(self.p)
end

-- Records the outcome of a call allow() admitted, as call() judges it,
-- without raising: ok false with the error, or true with fn's results. A
-- cancellation or an ignored error gives the permit back instead. Shared
-- with keel.policy's fused path.
local function settle(self, duration_ms, ok, ...)
  if not ok then
    local err = ...
    if err == sched.CANCELLED then
      C.keel_breaker_cancel(self.p)
      return
    end
    local ignore = self.ignore_error
    if ignore and ignore(err) then
      C.keel_breaker_cancel(self.p)
      if self.ev then events.emit(self, self.label, "ignored_error", err) end
      return
    end
    local rec = self.record_error
    -- an error the predicate does not record counts as a success (Resilience4j)
    record(self, not (rec == nil or rec(err)), duration_ms, err)
    return
  end
  local rr = self.record_result
  if rr and rr(...) then
    local _, err = ...
    record(self, false, duration_ms, err)
  else
    record(self, true, duration_ms, nil)
  end
end
Breaker._settle = settle

local function finish(self, t0, ok, ...)
  settle(self, sched.now() - t0, ok, ...)
  if not ok then error((...), 0) end
  return ...
end

-- fn's results; a raised error is recorded (record_error / ignore_error
-- decide how) and re-raised; a result record_result calls a failure
-- (default: nil, <transport failure code>) is recorded and returned as is;
-- nil, "open" when the breaker refuses the call.
function Breaker:call(fn, ...)
  self_check("breaker:call", self)
  check.func("breaker:call", "argument 'fn'", fn)
  local ok = self:allow()
  if not ok then return nil, "open" end
  return finish(self, sched.now(), pcall(fn, ...))
end

function Breaker:state()
  self_check("breaker:state", self)
  local st = C.keel_breaker_state(self.p)
  if st ~= self.st then moved(self, st) end
  return NAMES[st]
end

function Breaker:force(state)
  self_check("breaker:force", self)
  local code = CODES[state]
  if not code then check.oneof("breaker:force", "argument 'state'", state, nil,
    { "closed", "open", "half_open", "forced_open", "disabled" }) end
  local from = self.st
  local to = C.keel_breaker_force(self.p, code)
  if to == OPEN or to ~= from then
    self.st = from -- so moved() reports the real origin
    moved(self, to)
  end
  return self
end

local function add_state_listener(self, fn)
  local cbs = self.callbacks
  cbs[#cbs + 1] = fn
  -- a breaker already open gets its deadline timer now
  if self.st == OPEN or self.st == HALF_OPEN then arm(self) end
  return self
end

function Breaker:on_state(fn)
  self_check("breaker:on_state", self)
  check.func("breaker:on_state", "argument 'fn'", fn)
  return add_state_listener(self, fn)
end

-- b:on(event, fn): "state" (from, to) is on_state; "success"
-- (duration_ms), "error" (err, duration_ms; err is nil when recorded by
-- record()), "ignored_error" (err), "not_permitted" (), "slow" (duration_ms).
function Breaker:on(event, fn)
  self_check("breaker:on", self)
  if event == "state" then
    check.func("breaker:on", "argument 'fn'", fn)
    return add_state_listener(self, fn)
  end
  return events.on(self, "breaker:on", EVENTS, event, fn)
end

function Breaker:stats()
  self_check("breaker:stats", self)
  local s = self.sbuf
  C.keel_breaker_stats(self.p, s)
  local st = tonumber(s.state)
  if st ~= self.st then moved(self, st) end
  local calls = s.window_calls
  return {
    state = NAMES[st], window_calls = calls, window_failures = s.window_failures,
    window_slow = s.window_slow,
    failure_rate = calls > 0 and s.window_failures * 100 / calls or 0,
    slow_rate = calls > 0 and s.window_slow * 100 / calls or 0,
    half_open_permits = s.half_open_permits, consecutive_opens = s.consecutive_opens,
    calls = s.calls, failures = s.failures, slow = s.slow, allowed = s.allowed,
    rejected = s.rejected, opened = s.opened, open_until_ms = s.open_until_ms,
    probes_in_flight = s.probes_in_flight,
  }
end

function Breaker:__tostring()
  return "keel.breaker(" .. (self.name or "") .. ", " .. NAMES[self.st] .. ")"
end

-- Checks raise at level 3: the constructor's caller (open_option is one
-- call below the constructor).
local function in_range(what, v, min, max, open_min)
  local ok = type(v) == "number" and v <= max
  if ok then
    if open_min then ok = v > min else ok = v >= min end
  end
  if not ok then
    error(string.format("%s: option '%s' must be a number in %s%s, %s] (got %s)", FNAME, what,
      open_min and "(" or "[", tostring(min), tostring(max),
      type(v) == "string" and string.format("%q", v) or tostring(v)), 4)
  end
  return v
end

local function open_option(v)
  if v == nil then return DEFAULT_OPEN_MS end
  if type(v) == "number" then
    local ms = in_range("open_ms", v, 0, 1e12, true) -- not a tail call: in_range counts this frame
    return ms
  end
  if type(v) == "table" then
    if type(v.delay) == "function" then return nil, v end
    local base = in_range("open_ms.base_ms", v.base_ms or v[1], 0, 1e12, true)
    local cap = v.cap_ms or v[2]
    if cap == nil then cap = math.max(base, 60000) end
    local factor = v.factor or v[3]
    if factor == nil then factor = 2 end
    local b = new_backoff {
      base_ms = base, cap_ms = in_range("open_ms.cap_ms", cap, base, 1e12),
      factor = in_range("open_ms.factor", factor, 1, 1e6), jitter = "none",
    }
    return nil, b
  end
  error(FNAME .. ": option 'open_ms' must be a number > 0, a keel.backoff or {base_ms, cap_ms, factor} (got "
        .. tostring(v) .. ")", 3)
end

return function(opts)
  check.redis_only(FNAME, opts, REDIS_ONLY)
  opts = check.opts(FNAME, opts, OPTS)
  local spans = opts.window_ms ~= nil or opts.buckets ~= nil
  local window = check.oneof(FNAME, "option 'window'", opts.window, spans and "time" or "count",
    { "count", "time", "consecutive" })
  local size, bucket_ms
  if spans then
    -- window_ms/buckets: a time window of any length, finer than a second
    -- if need be (the Redis variant's spelling)
    if window ~= "time" then
      error(FNAME .. ": options 'window_ms'/'buckets' shape a time window: use window = \"time\" with them", 2)
    end
    if opts.size ~= nil then error(FNAME .. ": give either size (seconds) or window_ms/buckets, not both", 2) end
    local window_ms = check.number(FNAME, "option 'window_ms'", opts.window_ms, 10000, 1, 1e12)
    size = check.integer(FNAME, "option 'buckets'", opts.buckets, 10, 1, 1000000)
    bucket_ms = window_ms / size
  else
    size = check.integer(FNAME, "option 'size'", opts.size, window == "consecutive" and 5 or 100, 1, 1000000)
  end
  local min_calls = check.integer(FNAME, "option 'min_calls'", opts.min_calls, 100, 1, INT_MAX)
  local failure_rate = check.number(FNAME, "option 'failure_rate'", opts.failure_rate, 50, 0, 100)
  local slow_ms = check.number(FNAME, "option 'slow_ms'", opts.slow_ms, 60000, 0, math.huge)
  if slow_ms == 0 then error(FNAME .. ": option 'slow_ms' must be a number > 0 (got 0)", 2) end
  local slow_rate = check.number(FNAME, "option 'slow_rate'", opts.slow_rate, 100, 0, 100)
  if failure_rate == 0 then check.number(FNAME, "option 'failure_rate'", 0, nil, 1e-9, 100) end
  if slow_rate == 0 then check.number(FNAME, "option 'slow_rate'", 0, nil, 1e-9, 100) end
  local open_ms, open_backoff = open_option(opts.open_ms)
  local half_open_calls = check.integer(FNAME, "option 'half_open_calls'", opts.half_open_calls, 10, 1, INT_MAX)
  local max_half_open = check.number(FNAME, "option 'max_wait_half_open_ms'", opts.max_wait_half_open_ms, 0, 0,
    1e12)
  local record_error = check.func(FNAME, "option 'record_error'", opts.record_error, true)
  local ignore_error = check.func(FNAME, "option 'ignore_error'", opts.ignore_error, true)
  local record_result = outcome.failed_result
  if opts.record_result == false then record_result = nil
  elseif opts.record_result ~= nil then
    record_result = check.func(FNAME, "option 'record_result'", opts.record_result)
  end
  local name = opts.name ~= nil and check.string(FNAME, "option 'name'", opts.name) or nil
  local w = sched.world()
  if not w then error(FNAME .. ": no runtime world (is keel running?)", 2) end
  local p = C.keel_breaker_new(w.clock, WINDOWS[window], size, min_calls, failure_rate,
                               slow_ms, slow_rate, open_ms or DEFAULT_OPEN_MS, half_open_calls)
  if p == nil then error(FNAME .. ": out of memory", 2) end
  if bucket_ms then C.keel_breaker_set_bucket_ms(p, bucket_ms) end
  C.keel_breaker_set_max_half_open_ms(p, max_half_open)
  local self = setmetatable({
    p = cmem.own(p, C.keel_breaker_free), clock = w.clock, st = 0, name = name,
    callbacks = {}, pending = { n = 0 }, firing = false, open_backoff = open_backoff,
    sbuf = ffi.new("keel_breaker_stats_t"), slow_ms = slow_ms, ev = nil, timer = nil,
    record_error = record_error, ignore_error = ignore_error, record_result = record_result,
    label = FNAME .. (name and ("(" .. name .. ")") or ""),
  }, Breaker)
  metrics.register("breaker", name, self)
  return self
end
