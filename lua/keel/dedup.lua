-- keel.dedup: "have I processed this message already?" for idempotent
-- consumers, bounded by max keys (second-chance eviction over mark order) and
-- an optional TTL (runtime/keel_dedup.h).
local C = require "keel.ffi.dedup"
local Ccore = require "keel.ffi.core"
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local cmem = require "keel.cmem"

local tostring, getmetatable, error = tostring, getmetatable, error

local Dedup = {}
Dedup.__index = Dedup

local OPTS = check.set { "ttl_ms", "max", "name" }
local REDIS_ONLY = check.set { "prefix" }

local function new(opts)
  local F = "keel.dedup"
  check.redis_only(F, opts, REDIS_ONLY)
  opts = check.opts(F, opts, OPTS)
  local max = check.integer(F, "option 'max'", opts.max, 100000, 1, 2 ^ 32 - 2)
  local ttl = opts.ttl_ms
  if ttl ~= nil then
    check.number(F, "option 'ttl_ms'", ttl, nil, 0)
    if ttl <= 0 or ttl == math.huge then
      error(string.format("%s: option 'ttl_ms' must be a finite number > 0 or nil (got %s)", F, tostring(ttl)), 2)
    end
  end
  local name = opts.name
  if name ~= nil then check.string(F, "option 'name'", name) end
  local w = sched.world()
  local d = C.keel_dedup_new(max, ttl or 0, w.clock, Ccore.keel_rand_next(w.rand))
  if d == nil then error(F .. ": out of memory", 2) end
  local bytes = C.keel_dedup_bytes(d)
  local self = setmetatable({
    handle = cmem.own(d, C.keel_dedup_free, bytes), cbytes = bytes, unsynced = 0,
    clock = w.clock, name = name, max = max, ttl_ms = ttl,
  }, Dedup)
  metrics.register("dedup", name, self)
  return self
end

local keyarg = require "keel.keyarg"

-- a tail call: keyarg's caller is the method itself (level 2)
local function key_of(fname, key) return keyarg(fname, "argument 'key'", key, 2) end

function Dedup:seen(key)
  if getmetatable(self) ~= Dedup then check.self("dedup:seen", self, Dedup) end
  key = key_of("dedup:seen", key)
  local r = C.keel_dedup_seen(self.handle, key, #key)
  if r < 0 then error("dedup:seen: out of memory", 2) end
  if r == 0 then
    -- a new mark: now and then, charge what the table grew (keel.cmem)
    local n = self.unsynced + 1
    if n >= cmem.SYNC_EVERY then
      n = 0
      cmem.sync(self, C.keel_dedup_bytes(self.handle))
    end
    self.unsynced = n
  end
  return r == 1
end

function Dedup:forget(key)
  check.self("dedup:forget", self, Dedup)
  key = key_of("dedup:forget", key)
  return C.keel_dedup_forget(self.handle, key, #key) == 1
end

function Dedup:size()
  check.self("dedup:size", self, Dedup)
  return C.keel_dedup_size(self.handle)
end

function Dedup:clear()
  check.self("dedup:clear", self, Dedup)
  C.keel_dedup_clear(self.handle)
end

function Dedup:stats()
  check.self("dedup:stats", self, Dedup)
  local h = self.handle
  return {
    size = C.keel_dedup_size(h), max = self.max,
    marks = C.keel_dedup_marks(h), hits = C.keel_dedup_hits(h),
    evictions = C.keel_dedup_evictions(h), expirations = C.keel_dedup_expirations(h),
    bytes = C.keel_dedup_bytes(h),
  }
end

function Dedup:__tostring()
  return string.format("keel.dedup(%s: %d/%d)", self.name or "unnamed", self:size(), self.max)
end

return new
