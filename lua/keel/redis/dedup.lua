-- keel.redis.dedup: "have I processed this message already?" across
-- processes: SET {prefix:key} 1 NX PX ttl. Same API as keel.dedup:
--   local d = require("keel.redis.dedup").new{ redis = client, ttl_ms = 3600000 }
--   if not d:seen(msg_id) then process(msg) end
-- seen() answers false exactly once per key per ttl window, for the whole
-- fleet. On a Redis failure it returns nil, err: the caller decides whether
-- to process (risking a duplicate) or to retry later.
local check = require "keel.check"
local metrics = require "keel.metrics"
local keyarg = require "keel.keyarg"
local common = require "keel.redis.common"

local Dedup = {}
Dedup.__index = Dedup

local OPTS = check.set { "redis", "ttl_ms", "max", "name", "prefix" }

local M = {}

-- ttl_ms bounds Redis memory (default one day: a mark without expiry would
-- stay forever); "max" cannot be honoured (nothing counts one prefix's keys)
-- and is refused with the alternative.
function M.new(opts)
  local F = "keel.redis.dedup"
  opts = check.opts(F, opts, OPTS)
  if opts.max ~= nil then
    error(F .. ": option 'max' cannot be honoured on Redis (marks are keys of their own): bound them in time "
      .. "with ttl_ms and Redis memory with maxmemory", 2)
  end
  local ttl = opts.ttl_ms
  if type(ttl) ~= "nil" and (type(ttl) ~= "number" or not (ttl > 0 and ttl <= 1e15)) then
    error(string.format("%s: option 'ttl_ms' must be a finite number > 0 (at most 1e15) or nil (got %s)", F,
      type(ttl) == "string" and string.format("%q", ttl) or tostring(ttl)), 2)
  end
  local self = setmetatable({
    redis = common.client(F, opts.redis),
    ttl_ms = math.ceil(ttl or 86400000), -- PX takes whole milliseconds
    name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil,
    prefix = common.prefix(F, opts, "dedup"),
    st = { checks = 0, duplicates = 0, errors = 0 },
  }, Dedup)
  metrics.register("redis_dedup", self.name, self)
  return self
end

-- seen(key) -> false (first time: marked now) | true | nil, err
function Dedup:seen(key)
  local F = "dedup:seen"
  common.self(F, self, Dedup)
  key = keyarg(F, "argument 'key'", key)
  local r, err = self.redis:call("SET", common.tag(self.prefix, key), "1", "NX", "PX", self.ttl_ms)
  if err then self.st.errors = self.st.errors + 1; return nil, err end
  self.st.checks = self.st.checks + 1
  if r == nil then self.st.duplicates = self.st.duplicates + 1; return true end
  return false
end

-- forget(key) -> boolean (whether it was marked) | nil, err
function Dedup:forget(key)
  local F = "dedup:forget"
  common.self(F, self, Dedup)
  key = keyarg(F, "argument 'key'", key)
  local r, err = self.redis:call("DEL", common.tag(self.prefix, key))
  if err then return nil, err end
  return r == 1
end

-- size()/clear() would need every key of the prefix (spread over the
-- cluster's slots): refused with the alternatives.
function Dedup:size()
  common.self("dedup:size", self, Dedup)
  error("dedup:size: not available on Redis (marks are keys spread over the cluster): "
    .. "stats() counts this object's checks and duplicates", 2)
end

function Dedup:clear()
  common.self("dedup:clear", self, Dedup)
  error("dedup:clear: not available on Redis (marks are keys spread over the cluster): "
    .. "forget(key) unmarks one key; marks end by themselves after ttl_ms", 2)
end

function Dedup:stats()
  common.self("dedup:stats", self, Dedup)
  return { checks = self.st.checks, duplicates = self.st.duplicates, errors = self.st.errors, ttl_ms = self.ttl_ms }
end

function Dedup:__tostring() return "keel.redis.dedup(" .. self.prefix .. ")" end

M.Dedup = Dedup
return M
