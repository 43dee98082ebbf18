-- keel.redis.ratelimit: a fleet-wide GCRA rate limiter, one script per take
-- and the server's clock (TIME), so every process shares one budget. Same
-- API as keel.ratelimit:
--   local rl = require("keel.redis.ratelimit").new{ redis = client, rate = 100, per_ms = 1000, burst = 10 }
--   local ok, why, retry_after_ms = rl:take()
--   keyed: new{ ..., keyed = true }; rl:take("tenant-42")
-- State per key is one number (the theoretical arrival time) that expires
-- when the bucket would be full again, so idle keys cost nothing.
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local keyarg = require "keel.keyarg"
local redis = require "keel.redis"
local common = require "keel.redis.common"
local events = require "keel.events"

local huge, type = math.huge, type
local EVENTS = check.set { "limited" }

-- ARGV: interval_ms (per unit), burst, n -> {0} allowed | {1, retry_after_ms} | {2} never
local TAKE = redis.script [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local T, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if n > burst then return {2} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + n * T
local allow_at = new_tat - burst * T
if allow_at > now then return {1, tostring(allow_at - now)} end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {0}
]]

-- ARGV: interval_ms, burst -> units available now, as text (a script's
-- numbers reach the client as integers)
local AVAILABLE = redis.script [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local T, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local a = burst - (tat - now) / T
if a < 0 then a = 0 end
return string.format('%.17g', a)
]]

local Limiter = {}
Limiter.__index = Limiter

local OPTS = check.set { "redis", "rate", "per_ms", "burst", "keyed", "max_keys", "name", "prefix" }

local M = {}

function M.new(opts)
  local F = "keel.redis.ratelimit"
  opts = check.opts(F, opts, OPTS)
  local rate = check.number(F, "option 'rate'", opts.rate, nil, 1e-9, 1e12)
  local per_ms = check.number(F, "option 'per_ms'", opts.per_ms, 1000, 1e-9, 1e12)
  local burst = check.number(F, "option 'burst'", opts.burst, math.max(1, rate), 1, 1e12)
  local keyed = check.boolean(F, "option 'keyed'", opts.keyed, false)
  if opts.max_keys ~= nil then
    if not keyed then error(F .. ": option 'max_keys' needs keyed = true", 2) end
    -- each key's state is one Redis key expiring once its bucket is full
    -- again: there is no table to bound
    error(F .. ": option 'max_keys' cannot be honoured on Redis (each key's state expires by itself once its "
      .. "bucket is full again): leave it out and bound Redis memory with maxmemory", 2)
  end
  local self = setmetatable({
    redis = common.client(F, opts.redis),
    rate = rate, per_ms = per_ms, burst = burst, interval = per_ms / rate,
    keyed = keyed,
    name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil,
    prefix = common.prefix(F, opts, "ratelimit"),
    st = { allowed = 0, limited = 0, errors = 0 }, ev = nil,
  }, Limiter)
  self.label = F .. (self.name and ("(" .. self.name .. ")") or "")
  metrics.register("redis_ratelimit", self.name, self)
  return self
end

local function args(self, F, a, b)
  local key, n
  if self.keyed then key, n = keyarg(F, "argument 'key'", a, 3), b else key, n = "", a end
  if n == nil then n = 1 end
  if type(n) ~= "number" or n ~= n or n <= 0 or n == huge then
    error(string.format("%s: argument 'n' must be a number in [1e-300, 1e+300] (got %s)", F,
      type(n) == "string" and string.format("%q", n) or tostring(n)), 3)
  end
  return key, n
end

local function take(self, key, n)
  local r, err = self.redis:eval(TAKE, 1, common.tag(self.prefix, key), string.format("%.17g", self.interval),
    string.format("%.17g", self.burst), string.format("%.17g", n))
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  if r[1] == 0 then self.st.allowed = self.st.allowed + 1; return true end
  self.st.limited = self.st.limited + 1
  if r[1] == 2 then return nil, "limited", huge end
  return nil, "limited", tonumber(r[2])
end

-- take([key,] [n]) -> true | nil, "limited", retry_after_ms | nil, "conn: ..."
function Limiter:take(a, b)
  local F = "ratelimit:take"
  common.self(F, self, Limiter)
  local key, n = args(self, F, a, b)
  local ok, err, after = take(self, key, n)
  if err == "limited" and self.ev then events.emit(self, self.label, "limited", after, self.keyed and key or nil) end
  return ok, err, after
end

-- on("limited", fn(retry_after_ms, key)): as keel.ratelimit's (doc/ratelimit.md)
function Limiter:on(event, fn)
  common.self("ratelimit:on", self, Limiter)
  return events.on(self, "ratelimit:on", EVENTS, event, fn)
end

-- wait([key,] [n [, timeout_ms]]) -> true | nil, "timeout" | "limited" | "conn: ..."
-- Retries after the advertised delay; under contention from other
-- processes a slot may be taken first, in which case it waits again.
function Limiter:wait(a, b, c)
  local F = "ratelimit:wait"
  common.self(F, self, Limiter)
  local key, n, timeout
  if self.keyed then key, n = args(self, F, a, b); timeout = c else key, n = args(self, F, a); timeout = b end
  -- type(), not ~= nil: an FFI NULL equals nil
  if type(timeout) ~= "nil" and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    check.number(F, "argument 'timeout_ms'", timeout, nil, 0)
  end
  sched.need_task(F, 2)
  local deadline = timeout and sched.now() + timeout
  while true do
    local ok, err, after = take(self, key, n)
    if ok then return true end
    if err ~= "limited" then return nil, err end
    if after == huge or (deadline and sched.now() + after > deadline) then
      if self.ev then
        events.emit(self, self.label, "limited", after == huge and huge or nil, self.keyed and key or nil)
      end
      if after == huge then return nil, "limited" end
      return nil, "timeout"
    end
    sched.sleep(math.max(after, 0.1), F)
  end
end

-- available([key]) -> units that could be taken now (0..burst) | nil, err
function Limiter:available(key)
  local F = "ratelimit:available"
  common.self(F, self, Limiter)
  if self.keyed then key = keyarg(F, "argument 'key'", key) else key = "" end
  local r, err = self.redis:eval(AVAILABLE, 1, common.tag(self.prefix, key), string.format("%.17g", self.interval),
    string.format("%.17g", self.burst))
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  return tonumber(r)
end

function Limiter:stats()
  common.self("ratelimit:stats", self, Limiter)
  return { allowed = self.st.allowed, limited = self.st.limited, errors = self.st.errors,
           rate = self.rate, per_ms = self.per_ms, burst = self.burst }
end

function Limiter:__tostring() return "keel.redis.ratelimit(" .. self.prefix .. ")" end

M.Limiter = Limiter
return M
