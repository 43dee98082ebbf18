-- keel.ratelimit{rate, per_ms, burst, keyed, max_keys, name}: GCRA rate
-- limiter over runtime/keel_ratelimit.c. take() is one FFI call; wait()
-- reserves the earliest slot and sleeps until it, so waiters are served in
-- the order they asked (no thundering herd of retries).
local ffi = require "ffi"
local C = require "keel.ffi.ratelimit"
local check = require "keel.check"
local sched = require "keel.sched"
local metrics = require "keel.metrics"
local cmem = require "keel.cmem"
local events = require "keel.events"

local FNAME = "keel.ratelimit"
local OPTS = check.set { "rate", "per_ms", "burst", "keyed", "max_keys", "name" }
local REDIS_ONLY = check.set { "prefix" }
local EVENTS = check.set { "limited" }
local NEVER, TOO_LONG = -2, -1
local huge = math.huge
local type, pcall, error, getmetatable, tostring = type, pcall, error, getmetatable, tostring

local Limiter = {}
Limiter.__index = Limiter
local Keyed = {}
Keyed.__index = Keyed

local function describe(v) return type(v) == "string" and string.format("%q", v) or tostring(v) end

-- called through units() from a method: level 4 is the method's caller
local function bad_n(fname, n)
  error(string.format("%s: argument 'n' must be a number in [1e-300, 1e+300] (got %s)", fname, describe(n)), 4)
end

local function units(fname, n)
  if n == nil then return 1 end
  if type(n) ~= "number" or n ~= n or n <= 0 or n == huge then bad_n(fname, n) end
  return n
end

local function keyof(fname, key)
  if type(key) == "string" then return key end
  return check.key(fname, "argument 'key'", key)
end

-- true, or nil, "limited", retry_after_ms (math.huge when n > burst: never).
function Limiter:take(n)
  if getmetatable(self) ~= Limiter then check.self("ratelimit:take", self, Limiter) end
  if n ~= 1 then n = units("ratelimit:take", n) end
  local r = C.keel_ratelimit_take(self.p, n)
  if r == 0 then return true end
  if self.ev then events.emit(self, self.label, "limited", r, nil) end
  return nil, "limited", r
end

local function wait(self, fname, key, n, timeout)
  -- type(), not ~= nil: an FFI NULL equals nil
  if type(timeout) ~= "nil" and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    -- level 2: the methods tail-call wait, so its caller is theirs
    error(string.format("%s: argument 'timeout_ms' must be a number >= 0 (got %s)", fname, describe(timeout)), 2)
  end
  sched.need_task(fname, 3)
  local p = self.p
  local w
  if key then w = C.keel_ratelimit_reserve_key(p, key, #key, n, timeout or huge)
  else w = C.keel_ratelimit_reserve(p, n, timeout or huge) end
  if w == NEVER or w == TOO_LONG then
    if self.ev then events.emit(self, self.label, "limited", w == NEVER and huge or nil, key) end
    if w == NEVER then return nil, "limited" end
    return nil, "timeout"
  end
  if w > 0 then
    local ok, err = pcall(sched.sleep, w, fname)
    if not ok then
      if key then C.keel_ratelimit_refund_key(p, key, #key, n) else C.keel_ratelimit_refund(p, n) end
      error(err, 0)
    end
  end
  return true
end

-- Parks until n units are available: true; nil, "timeout" at once when the
-- wait would exceed timeout_ms; nil, "limited" at once when n > burst.
function Limiter:wait(n, timeout_ms)
  check.self("ratelimit:wait", self, Limiter)
  return wait(self, "ratelimit:wait", nil, units("ratelimit:wait", n), timeout_ms)
end

function Limiter:available()
  check.self("ratelimit:available", self, Limiter)
  return C.keel_ratelimit_available(self.p)
end

function Keyed:take(key, n)
  if getmetatable(self) ~= Keyed then check.self("ratelimit:take", self, Keyed) end
  key = keyof("ratelimit:take", key)
  if n ~= 1 then n = units("ratelimit:take", n) end
  local r = C.keel_ratelimit_take_key(self.p, key, #key, n)
  if r == 0 then return true end
  if r ~= r then error("ratelimit:take: argument 'key' must be at most 65535 bytes (got " .. #key .. ")", 2) end
  if self.ev then events.emit(self, self.label, "limited", r, key) end
  return nil, "limited", r
end

function Keyed:wait(key, n, timeout_ms)
  check.self("ratelimit:wait", self, Keyed)
  key = keyof("ratelimit:wait", key)
  return wait(self, "ratelimit:wait", key, units("ratelimit:wait", n), timeout_ms)
end

function Keyed:available(key)
  check.self("ratelimit:available", self, Keyed)
  key = keyof("ratelimit:available", key)
  return C.keel_ratelimit_available_key(self.p, key, #key)
end

local function stats(self)
  local s = self.sbuf
  C.keel_ratelimit_stats(self.p, s)
  local out = { allowed = s.allowed, limited = s.limited, rate = self.rate, per_ms = self.per_ms,
                burst = self.burst }
  if self.keyed then
    out.keys, out.max_keys, out.evicted, out.evicted_active = s.keys, s.max_keys, s.evicted, s.evicted_active
  else
    out.available = s.available
  end
  return out
end

function Limiter:stats() check.self("ratelimit:stats", self, Limiter); return stats(self) end

-- rl:on("limited", fn(retry_after_ms, key)): a take() refused, or a wait()
-- that would exceed its timeout (retry_after_ms nil) or can never be served
-- (math.huge). key is nil for an unkeyed limiter.
local function on(self, event, fn)
  return events.on(self, "ratelimit:on", EVENTS, event, fn)
end
function Limiter:on(event, fn) check.self("ratelimit:on", self, Limiter); return on(self, event, fn) end
function Keyed:on(event, fn) check.self("ratelimit:on", self, Keyed); return on(self, event, fn) end
function Keyed:stats() check.self("ratelimit:stats", self, Keyed); return stats(self) end

return function(opts)
  check.redis_only(FNAME, opts, REDIS_ONLY)
  opts = check.opts(FNAME, opts, OPTS)
  local rate = check.number(FNAME, "option 'rate'", opts.rate, nil, 1e-9, 1e12)
  local per_ms = check.number(FNAME, "option 'per_ms'", opts.per_ms, 1000, 1e-9, 1e12)
  local burst = check.number(FNAME, "option 'burst'", opts.burst, math.max(1, rate), 1, 1e12)
  local keyed = check.boolean(FNAME, "option 'keyed'", opts.keyed, false)
  local max_keys = 0
  if keyed then
    max_keys = check.integer(FNAME, "option 'max_keys'", opts.max_keys, 10000, 1, 1e8)
  elseif opts.max_keys ~= nil then
    error(FNAME .. ": option 'max_keys' needs keyed = true", 2)
  end
  local name = opts.name ~= nil and check.string(FNAME, "option 'name'", opts.name) or nil
  local w = sched.world()
  if not w then error(FNAME .. ": no runtime world (is keel running?)", 2) end
  local seed = keyed and C.keel_rand_next(w.rand) or 0
  local p = C.keel_ratelimit_new(w.clock, rate, per_ms, burst, max_keys, seed)
  if p == nil then error(FNAME .. ": out of memory", 2) end
  local self = setmetatable({
    p = cmem.own(p, C.keel_ratelimit_free), clock = w.clock, keyed = keyed, name = name,
    rate = rate, per_ms = per_ms, burst = burst, sbuf = ffi.new("keel_ratelimit_stats_t"),
    ev = nil, label = FNAME .. (name and ("(" .. name .. ")") or ""),
  }, keyed and Keyed or Limiter)
  metrics.register("ratelimit", name, self)
  return self
end
