-- keel.registry: which gateway each device is connected through, with
-- per-gateway heartbeats (runtime/keel_registry.h).
local ffi = require "ffi"
local C = require "keel.ffi.registry"
local Ccore = require "keel.ffi.core"
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local keyarg = require "keel.keyarg"
local cmem = require "keel.cmem"

local tostring, getmetatable, error, tonumber = tostring, getmetatable, error, tonumber
local fstring = ffi.string

local NIL = 0xffffffff

local Registry = {}
Registry.__index = Registry

local OPTS = check.set { "ttl_ms", "max", "name" }
local REDIS_ONLY = check.set { "prefix" }

local function new(opts)
  local F = "keel.registry"
  check.redis_only(F, opts, REDIS_ONLY)
  opts = check.opts(F, opts, OPTS)
  local ttl = opts.ttl_ms
  if ttl == nil then
    ttl = 30000
  elseif type(ttl) ~= "number" or ttl ~= ttl or ttl <= 0 or ttl == math.huge then
    error(string.format("%s: option 'ttl_ms' must be a finite number > 0 (got %s)", F,
      type(ttl) == "string" and string.format("%q", ttl) or tostring(ttl)), 2)
  end
  local max = check.integer(F, "option 'max'", opts.max, 100000, 1, 2 ^ 32 - 2)
  local name = opts.name
  if name ~= nil then check.string(F, "option 'name'", name) end
  local w = sched.world()
  local r = C.keel_registry_new(max, ttl, w.clock, Ccore.keel_rand_next(w.rand))
  if r == nil then error(F .. ": out of memory", 2) end
  local bytes = C.keel_registry_stat(r, 7)
  local self = setmetatable({
    handle = cmem.own(r, C.keel_registry_free, bytes), cbytes = bytes, unsynced = 0,
    clock = w.clock, name = name, ttl_ms = ttl, max = max,
    len = ffi.new("size_t[1]"),
  }, Registry)
  metrics.register("registry", name, self)
  return self
end

local function self_check(fname, self)
  if getmetatable(self) ~= Registry then check.self(fname, self, Registry, 1) end
end

-- bind(device, gateway) -> true | nil, "full". Moves the device if it was
-- bound elsewhere; counts as a heartbeat of gateway.
function Registry:bind(device, gateway)
  local F = "registry:bind"
  self_check(F, self)
  device = keyarg(F, "argument 'device'", device)
  gateway = keyarg(F, "argument 'gateway'", gateway)
  local rc = C.keel_registry_bind(self.handle, device, #device, gateway, #gateway)
  if rc > 0 then
    -- now and then, charge what the tables grew (keel.cmem)
    local n = self.unsynced + 1
    if n >= cmem.SYNC_EVERY then
      n = 0
      cmem.sync(self, C.keel_registry_stat(self.handle, 7))
    end
    self.unsynced = n
    return true
  end
  if rc == -1 then return nil, "full" end
  error(F .. ": out of memory", 2)
end

-- lookup(device) -> gateway | nil
function Registry:lookup(device)
  local F = "registry:lookup"
  self_check(F, self)
  device = keyarg(F, "argument 'device'", device)
  local p = C.keel_registry_lookup(self.handle, device, #device, self.len)
  if p == nil then return nil end
  return fstring(p, self.len[0])
end

-- unbind(device [, gateway]) -> boolean; with gateway, only if still bound there.
function Registry:unbind(device, gateway)
  local F = "registry:unbind"
  self_check(F, self)
  device = keyarg(F, "argument 'device'", device)
  if gateway == nil then
    return C.keel_registry_unbind(self.handle, device, #device, nil, 0) == 1
  end
  gateway = keyarg(F, "argument 'gateway'", gateway)
  return C.keel_registry_unbind(self.handle, device, #device, gateway, #gateway) == 1
end

-- heartbeat(gateway) -> number of devices kept alive (0: unknown or expired).
function Registry:heartbeat(gateway)
  local F = "registry:heartbeat"
  self_check(F, self)
  gateway = keyarg(F, "argument 'gateway'", gateway)
  local n = tonumber(C.keel_registry_heartbeat(self.handle, gateway, #gateway))
  return n < 0 and 0 or n
end

-- devices(gateway) -> array of device names, in bind order.
function Registry:devices(gateway)
  local F = "registry:devices"
  self_check(F, self)
  gateway = keyarg(F, "argument 'gateway'", gateway)
  local h, len = self.handle, self.len
  local out, n = {}, 0
  local s = C.keel_registry_first(h, gateway, #gateway)
  while s ~= NIL do
    n = n + 1
    out[n] = fstring(C.keel_registry_device_key(h, s, len), len[0])
    s = C.keel_registry_next(h, s)
  end
  return out
end

function Registry:size()
  self_check("registry:size", self)
  return C.keel_registry_size(self.handle)
end

function Registry:stats()
  self_check("registry:stats", self)
  local h = self.handle
  return {
    devices = C.keel_registry_size(h), gateways = C.keel_registry_gateways(h), max = self.max,
    binds = C.keel_registry_stat(h, 0), moves = C.keel_registry_stat(h, 1),
    unbinds = C.keel_registry_stat(h, 2), heartbeats = C.keel_registry_stat(h, 3),
    expired_gateways = C.keel_registry_stat(h, 4), expired_devices = C.keel_registry_stat(h, 5),
    refused_full = C.keel_registry_stat(h, 6), bytes = C.keel_registry_stat(h, 7),
  }
end

function Registry:__tostring()
  return string.format("keel.registry(%s: %d devices)", self.name or "unnamed", self:size())
end

return new
