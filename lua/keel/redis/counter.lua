-- keel.redis.counter: a sharded counter shared by every process. Each add
-- goes to one of `shards` keys picked at random (runtime PRNG), each key its
-- own hash tag so shards spread over a cluster; value() sums them in one
-- pipelined round trip. Same API as keel.counter.
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local Ccore = require "keel.ffi.core"
local common = require "keel.redis.common"

local floor, type, tostring, tonumber = math.floor, type, tostring, tonumber
local LIMIT = 2 ^ 53

local Counter = {}
Counter.__index = Counter

local OPTS = check.set { "redis", "shards", "name", "prefix" }

local M = {}

function M.new(opts)
  local F = "keel.redis.counter"
  opts = check.opts(F, opts, OPTS)
  local self = setmetatable({
    redis = common.client(F, opts.redis),
    shards = check.integer(F, "option 'shards'", opts.shards, 16, 1, 1024),
    name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil,
    prefix = common.prefix(F, opts, "counter"),
    keys = {},
    st = { adds = 0, errors = 0 },
  }, Counter)
  for i = 1, self.shards do self.keys[i] = common.tag(self.prefix, tostring(i - 1)) end
  metrics.register("redis_counter", self.name, self)
  return self
end

-- add([n]) -> true | nil, err (the shard's own value means nothing to a caller)
function Counter:add(n)
  local F = "counter:add"
  common.self(F, self, Counter)
  if n == nil then
    n = 1
  elseif type(n) ~= "number" or n ~= floor(n) or n > LIMIT or n < -LIMIT then
    error("counter:add: argument 'n' must be an integer in [-2^53, 2^53] (got " .. tostring(n) .. ")", 2)
  end
  local i = 1
  if self.shards > 1 then i = 1 + tonumber(Ccore.keel_rand_range(sched.world().rand, 0, self.shards - 1)) end
  local v, err = self.redis:call("INCRBY", self.keys[i], string.format("%d", n))
  if not v then self.st.errors = self.st.errors + 1; return nil, err end
  self.st.adds = self.st.adds + 1
  return true
end

-- Runs cmd on every shard in one round trip and sums the replies.
local function sum_shards(self, cmd)
  local r, err = self.redis:pipeline(function(p)
    for i = 1, self.shards do p:call(cmd, self.keys[i]) end
  end)
  if not r then return nil, err end
  local sum = 0
  for i = 1, self.shards do sum = sum + (tonumber(r[i]) or 0) end
  return sum
end

-- value() -> sum of every shard | nil, err
function Counter:value()
  common.self("counter:value", self, Counter)
  return sum_shards(self, "GET")
end

-- reset() -> the value it held (read and zeroed per shard with GETDEL) | nil, err
function Counter:reset()
  common.self("counter:reset", self, Counter)
  return sum_shards(self, "GETDEL")
end

function Counter:stats()
  common.self("counter:stats", self, Counter)
  return { shards = self.shards, adds = self.st.adds, errors = self.st.errors }
end

function Counter:__tostring() return "keel.redis.counter(" .. self.prefix .. ")" end

M.Counter = Counter
return M
