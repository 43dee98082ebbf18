-- keel.counter: a striped counter host threads may add to concurrently (see
-- runtime/keel_counter.h). Lua adds go to shard 0 through the FFI.
local C = require "keel.ffi.counter"
local check = require "keel.check"
local metrics = require "keel.metrics"
local cmem = require "keel.cmem"

local type, floor, tonumber, getmetatable = type, math.floor, tonumber, getmetatable

local LIMIT = 2 ^ 53 -- beyond this a Lua number is no longer an exact integer

local Counter = {}
Counter.__index = Counter

local OPTS = check.set { "shards", "name" }
local REDIS_ONLY = check.set { "prefix" }

local function new(opts)
  local F = "keel.counter"
  check.redis_only(F, opts, REDIS_ONLY)
  opts = check.opts(F, opts, OPTS)
  local shards = check.integer(F, "option 'shards'", opts.shards, 1, 1, 1024)
  local name = opts.name
  if name ~= nil then check.string(F, "option 'name'", name) end
  local c = C.keel_counter_new(shards)
  if c == nil then error(F .. ": out of memory", 2) end
  local self = setmetatable({ handle = cmem.own(c, C.keel_counter_free), name = name, shards = shards }, Counter)
  metrics.register("counter", name, self)
  return self
end

function Counter:add(n)
  if getmetatable(self) ~= Counter then check.self("counter:add", self, Counter) end
  if n == nil then
    n = 1
  elseif type(n) ~= "number" or n ~= floor(n) or n > LIMIT or n < -LIMIT then
    local got = type(n) == "string" and string.format("%q", n) or tostring(n)
    error("counter:add: argument 'n' must be an integer in [-2^53, 2^53] (got " .. got .. ")", 2)
  end
  C.keel_counter_add(self.handle, 0, n)
  return true -- as the Redis counter's add, which can also fail: nil, err
end

function Counter:value()
  check.self("counter:value", self, Counter)
  return tonumber(C.keel_counter_value(self.handle))
end

-- Returns the value it held, so a reporter can read-and-zero in one step.
function Counter:reset()
  check.self("counter:reset", self, Counter)
  return tonumber(C.keel_counter_reset(self.handle))
end

function Counter:stats()
  check.self("counter:stats", self, Counter)
  return { value = tonumber(C.keel_counter_value(self.handle)), shards = self.shards }
end

function Counter:__tostring()
  return string.format("keel.counter(%s: %s)", self.name or "unnamed", tostring(self:value()))
end

return new
