-- keel.redis.registry: which gateway each device is connected through,
-- shared by every process. Same API as keel.registry:
--   local reg = require("keel.redis.registry").new{ redis = client, ttl_ms = 30000 }
--   reg:bind("phone-1", "gw-a")   -- on connect (counts as gw-a's heartbeat)
--   reg:heartbeat("gw-a")         -- every few seconds from each gateway
--   reg:lookup("phone-1")         -- "gw-a" while gw-a keeps heartbeating
--
-- Keys (one hash tag per registry, so each script is one slot; use several
-- prefixes to spread a very large registry):
--   {p}:d        hash device -> gateway
--   {p}:g:<gw>   "alive" marker expiring ttl_ms after the last heartbeat
--   {p}:m:<gw>   zset of the gateway's devices, scored by bind order
--   {p}:seq      bind order counter
-- A gateway that stops heartbeating takes its devices with it: lookup sees
-- the dead marker and cleans up lazily; heartbeat of a dead gateway
-- returns 0 after dropping its stale devices.
local check = require "keel.check"
local metrics = require "keel.metrics"
local keyarg = require "keel.keyarg"
local redis = require "keel.redis"
local common = require "keel.redis.common"

-- KEYS: d, g:new, m:new, seq ; ARGV: device, gateway, ttl, max, tagbase
local BIND = redis.script [[
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
if old and old ~= ARGV[2] then redis.call('ZREM', ARGV[5] .. ':m:' .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3] * 4)
if old and old ~= ARGV[2] then return 2 end
return 1
]]

-- KEYS: d ; ARGV: device, tagbase -> gateway | false
local LOOKUP = redis.script [[
local gw = redis.call('HGET', KEYS[1], ARGV[1])
if not gw then return false end
if redis.call('EXISTS', ARGV[2] .. ':g:' .. gw) == 1 then return gw end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[2] .. ':m:' .. gw, ARGV[1])
return false
]]

-- KEYS: d ; ARGV: device, gateway or '', tagbase -> 1 | 0
local UNBIND = redis.script [[
local gw = redis.call('HGET', KEYS[1], ARGV[1])
if not gw or (ARGV[2] ~= '' and gw ~= ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[3] .. ':m:' .. gw, ARGV[1])
return 1
]]

-- KEYS: d, g, m ; ARGV: gateway, ttl -> devices kept alive
local HEARTBEAT = redis.script [[
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[2] * 4)
  return redis.call('ZCARD', KEYS[3])
end
local devs = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, d in ipairs(devs) do
  if redis.call('HGET', KEYS[1], d) == ARGV[1] then redis.call('HDEL', KEYS[1], d) end
end
redis.call('DEL', KEYS[3])
return 0
]]

-- KEYS: g, m -> devices (bind order) or empty when the gateway is dead
local DEVICES = redis.script [[
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
return redis.call('ZRANGE', KEYS[2], 0, -1)
]]

local Registry = {}
Registry.__index = Registry

local OPTS = check.set { "redis", "ttl_ms", "max", "name", "prefix" }

local M = {}

-- As keel.registry's: any finite number > 0 (default 30 s), whole ms for PEXPIRE.
local function ttl_option(F, v)
  if v == nil then return 30000 end
  if type(v) ~= "number" or not (v > 0 and v <= 1e12) then
    error(string.format("%s: option 'ttl_ms' must be a finite number > 0 (at most 1e12) (got %s)", F,
      type(v) == "string" and string.format("%q", v) or tostring(v)), 3)
  end
  return math.ceil(v)
end

function M.new(opts)
  local F = "keel.redis.registry"
  opts = check.opts(F, opts, OPTS)
  local prefix = common.prefix(F, opts, "registry")
  local base = "{" .. prefix .. "}"
  local self = setmetatable({
    redis = common.client(F, opts.redis),
    ttl_ms = ttl_option(F, opts.ttl_ms),
    max = check.integer(F, "option 'max'", opts.max, 100000, 1, 2 ^ 32 - 2),
    name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil,
    base = base, dkey = base .. ":d", seq = base .. ":seq",
    st = { binds = 0, moves = 0, unbinds = 0, heartbeats = 0, refused_full = 0, errors = 0 },
  }, Registry)
  metrics.register("redis_registry", self.name, self)
  return self
end

local function fail(self, err) self.st.errors = self.st.errors + 1; return nil, err end

-- bind(device, gateway) -> true | nil, "full" | nil, err
function Registry:bind(device, gateway)
  local F = "registry:bind"
  common.self(F, self, Registry)
  device = keyarg(F, "argument 'device'", device)
  gateway = keyarg(F, "argument 'gateway'", gateway)
  local b = self.base
  local r, err = self.redis:eval(BIND, 4, self.dkey, b .. ":g:" .. gateway, b .. ":m:" .. gateway, self.seq,
    device, gateway, self.ttl_ms, self.max, b)
  if not r then return fail(self, err) end
  if r == 0 then self.st.refused_full = self.st.refused_full + 1; return nil, "full" end
  self.st.binds = self.st.binds + 1
  if r == 2 then self.st.moves = self.st.moves + 1 end
  return true
end

-- lookup(device) -> gateway | nil (nil, err on failure)
function Registry:lookup(device)
  local F = "registry:lookup"
  common.self(F, self, Registry)
  device = keyarg(F, "argument 'device'", device)
  local r, err = self.redis:eval(LOOKUP, 1, self.dkey, device, self.base)
  if err then return fail(self, err) end
  return r
end

-- unbind(device [, gateway]) -> boolean | nil, err
function Registry:unbind(device, gateway)
  local F = "registry:unbind"
  common.self(F, self, Registry)
  device = keyarg(F, "argument 'device'", device)
  if gateway ~= nil then gateway = keyarg(F, "argument 'gateway'", gateway) end
  local r, err = self.redis:eval(UNBIND, 1, self.dkey, device, gateway or "", self.base)
  if not r then return fail(self, err) end
  if r == 1 then self.st.unbinds = self.st.unbinds + 1 end
  return r == 1
end

-- heartbeat(gateway) -> devices kept alive (0: unknown or expired) | nil, err
function Registry:heartbeat(gateway)
  local F = "registry:heartbeat"
  common.self(F, self, Registry)
  gateway = keyarg(F, "argument 'gateway'", gateway)
  local b = self.base
  local r, err = self.redis:eval(HEARTBEAT, 3, self.dkey, b .. ":g:" .. gateway, b .. ":m:" .. gateway,
    gateway, self.ttl_ms)
  if not r then return fail(self, err) end
  self.st.heartbeats = self.st.heartbeats + 1
  return r
end

-- devices(gateway) -> array of device names in bind order | nil, err
function Registry:devices(gateway)
  local F = "registry:devices"
  common.self(F, self, Registry)
  gateway = keyarg(F, "argument 'gateway'", gateway)
  local b = self.base
  local r, err = self.redis:eval(DEVICES, 2, b .. ":g:" .. gateway, b .. ":m:" .. gateway)
  if not r then return fail(self, err) end
  return r
end

-- size() -> bound devices (including ones of gateways not yet noticed dead)
function Registry:size()
  common.self("registry:size", self, Registry)
  local r, err = self.redis:call("HLEN", self.dkey)
  if not r then return fail(self, err) end
  return r
end

function Registry:stats()
  common.self("registry:stats", self, Registry)
  local s = { max = self.max, ttl_ms = self.ttl_ms }
  for k, v in pairs(self.st) do s[k] = v end
  return s
end

function Registry:__tostring() return "keel.redis.registry(" .. self.base .. ")" end

M.Registry = Registry
return M
