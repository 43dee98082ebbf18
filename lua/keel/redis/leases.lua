-- keel.redis.leases: leases with fencing tokens shared by every process on
-- one Redis. Same API as keel.leases:
--   local leases = require("keel.redis.leases").new{ redis = client, ttl_ms = 5000 }
--   local lease, err = leases:acquire("printer", "worker-1", { wait_ms = 1000 })
--
-- Per key: "{prefix:key}:l" is a hash {token, owner} expiring with the lease
-- (server clock, PEXPIRE); "{prefix:key}:f" is the fencing counter, never
-- expiring, so tokens for a key only ever grow. Renew and release only
-- succeed with the current token; valid(key, token) is the storage side's
-- fencing check.
-- Waiting: a release publishes the key on "{prefix}:released"; each leases
-- object that has waited subscribes to it (a connection of its own), and a
-- message wakes this process's longest waiter for that key at once. Polling
-- (poll_ms, and the holder's expiry) stays as the fallback for messages lost
-- with a connection and for holders that die without releasing.
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local keyarg = require "keel.keyarg"
local redis = require "keel.redis"
local common = require "keel.redis.common"

local type, tostring, setmetatable, error, tonumber = type, tostring, setmetatable, error, tonumber
local huge, min = math.huge, math.min

local ACQUIRE = redis.script [[
local cur = redis.call('HGET', KEYS[1], 'token')
if cur then return {0, redis.call('PTTL', KEYS[1]), cur} end
local t = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'token', t, 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {t, tonumber(ARGV[2])}
]]

local RENEW = redis.script [[
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
]]

-- ARGV: token, channel, key
local RELEASE = redis.script [[
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
]]

local HOLDER = redis.script [[
local v = redis.call('HMGET', KEYS[1], 'token', 'owner')
if not v[1] then return false end
return {v[1], v[2], redis.call('PTTL', KEYS[1])}
]]

local Leases = {}
Leases.__index = Leases
local Lease = {}
Lease.__index = Lease

local OPTS = check.set { "redis", "ttl_ms", "prefix", "name", "poll_ms", "max", "notify" }
local RESUBSCRIBE_AFTER_MS = 5000 -- after a failed attempt to subscribe
local ACQ_OPTS = check.set { "ttl_ms", "wait_ms" }

local function ttl_arg(fname, what, v, default)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v <= 0 or v == huge then
    error(string.format("%s: %s must be a finite number > 0 (got %s)", fname, what,
      type(v) == "string" and string.format("%q", v) or tostring(v)), 3)
  end
  return math.ceil(v) -- PEXPIRE takes whole milliseconds
end

local M = {}

function M.new(opts)
  local F = "keel.redis.leases"
  opts = check.opts(F, opts, OPTS)
  if opts.max ~= nil then
    error(F .. ": option 'max' cannot be honoured on Redis (leases are keys that expire after ttl_ms; "
      .. "bound Redis memory with maxmemory): leave it out", 2)
  end
  local self = setmetatable({
    redis = common.client(F, opts.redis),
    ttl_ms = ttl_arg(F, "option 'ttl_ms'", opts.ttl_ms, 10000),
    poll_ms = check.number(F, "option 'poll_ms'", opts.poll_ms, 50, 1, 60000),
    name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil,
    prefix = common.prefix(F, opts, "leases"),
    notify = check.boolean(F, "option 'notify'", opts.notify, true),
    st = { grants = 0, renewals = 0, releases = 0, refused_held = 0, lost = 0, errors = 0, waits = 0,
           notified = 0 },
    waiting = {}, -- key -> wait queue of this process's tasks waiting for it
    sub = nil, sub_state = "none", sub_retry_at = -huge,
  }, Leases)
  self.channel = "{" .. self.prefix .. "}:released"
  metrics.register("redis_leases", self.name, self)
  return self
end

local function owner_arg(F, owner)
  local t = type(owner)
  if t == "string" then return owner end
  if t == "number" and owner == owner then return tostring(owner) end
  if t == "boolean" then return tostring(owner) end
  error(F .. ": argument 'owner' must be a string or number (got " .. tostring(owner) .. ")", 3)
end

local function token_arg(fname, token)
  if type(token) ~= "number" or token ~= token or token ~= math.floor(token) or token == huge or token == -huge then
    error(string.format("%s: argument 'token' must be an integer (got %s)", fname,
      type(token) == "string" and string.format("%q", token) or tostring(token)), 3)
  end
  return token
end

local function fmt_token(t) return string.format("%d", t) end

local function wake_waiter(self, key)
  local q = self.waiting[key]
  if q and q:wake_one() then self.st.notified = self.st.notified + 1 end
end

-- Subscribes this object to its release channel, once. Returns true when it
-- has just done so: a release published before the subscription took
-- effect was missed, so the caller tries again at once.
local function subscribe(self)
  if not self.notify or self.sub_state == "ready" or self.sub_state == "connecting" then return false end
  if sched.now() < self.sub_retry_at then return false end
  self.sub_state = "connecting"
  local sub = redis.subscriber(self.redis:connect_opts())
  local ok = sub and sub:subscribe(self.channel)
  if not ok then
    if sub then sub:close() end
    self.sub_state = "none"
    self.sub_retry_at = sched.now() + RESUBSCRIBE_AFTER_MS
    return false
  end
  sub:handler(function(m) wake_waiter(self, m.payload) end)
  self.sub, self.sub_state = sub, "ready"
  return true
end

local function grant(self, key, owner, token, ttl)
  self.st.grants = self.st.grants + 1
  return setmetatable({ key = key, owner = owner, token = token,
                        expires = sched.now() + ttl, leases = self }, Lease)
end

-- acquire(key, owner [, {ttl_ms, wait_ms}]) -> lease | nil, "held" | "timeout" | "conn: ..."
-- A waiter is woken by a release in any process (through the release
-- channel, or directly for a release through this object), and otherwise
-- tries again at the holder's expiry or after poll_ms, whichever comes first.
function Leases:acquire(key, owner, opts)
  local F = "leases:acquire"
  common.self(F, self, Leases)
  key = keyarg(F, "argument 'key'", key)
  owner = owner_arg(F, owner)
  local ttl, wait_ms = self.ttl_ms, nil
  if opts ~= nil then
    opts = check.opts(F, opts, ACQ_OPTS)
    ttl = ttl_arg(F, "option 'ttl_ms'", opts.ttl_ms, ttl)
    if opts.wait_ms ~= nil then wait_ms = check.number(F, "option 'wait_ms'", opts.wait_ms, nil, 0) end
  end
  local tag = common.tag(self.prefix, key)
  local lkey, fkey = tag .. ":l", tag .. ":f"
  local deadline = wait_ms and sched.now() + wait_ms
  while true do
    local r, err = self.redis:eval(ACQUIRE, 2, lkey, fkey, owner, ttl)
    if not r then self.st.errors = self.st.errors + 1; return nil, err end
    if r[1] > 0 then return grant(self, key, owner, r[1], r[2]) end
    self.st.refused_held = self.st.refused_held + 1
    if wait_ms == nil then return nil, "held" end
    local left = deadline - sched.now()
    if left <= 0 then return nil, "timeout" end
    local pttl = r[2]
    if pttl < 1 then pttl = 1 end
    if not subscribe(self) then
      self.st.waits = self.st.waits + 1
      local q = self.waiting[key]
      if not q then
        q = sched.waitqueue()
        self.waiting[key] = q
      end
      local ok, e = pcall(q.wait, q, min(left, pttl, self.poll_ms), F)
      if q:count() == 0 and self.waiting[key] == q then self.waiting[key] = nil end
      if not ok then error(e, 0) end -- cancelled
    end
  end
end

-- renew(key, token [, ttl_ms]) -> true, expires | nil, "lost" | nil, "conn: ..."
function Leases:renew(key, token, ttl_ms)
  local F = "leases:renew"
  common.self(F, self, Leases)
  key = keyarg(F, "argument 'key'", key)
  token = token_arg(F, token)
  local ttl = ttl_arg(F, "argument 'ttl_ms'", ttl_ms, self.ttl_ms)
  local r, err = self.redis:eval(RENEW, 1, common.tag(self.prefix, key) .. ":l", fmt_token(token), ttl)
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  if r == 0 then self.st.lost = self.st.lost + 1; return nil, "lost" end
  self.st.renewals = self.st.renewals + 1
  return true, sched.now() + ttl
end

-- release(key, token) -> true | nil, "lost" | nil, "conn: ..."
function Leases:release(key, token)
  local F = "leases:release"
  common.self(F, self, Leases)
  key = keyarg(F, "argument 'key'", key)
  token = token_arg(F, token)
  local r, err = self.redis:eval(RELEASE, 1, common.tag(self.prefix, key) .. ":l", fmt_token(token),
    self.channel, key)
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  if r == 0 then self.st.lost = self.st.lost + 1; return nil, "lost" end
  self.st.releases = self.st.releases + 1
  -- ours are woken now; with a subscription the published message would
  -- wake one more a round trip later, which then finds the lease held again
  local q = self.waiting[key]
  if q then q:wake_one() end
  return true
end

-- holder(key) -> owner, token, expires | nil  (nil, "conn: ..." on failure)
function Leases:holder(key)
  local F = "leases:holder"
  common.self(F, self, Leases)
  key = keyarg(F, "argument 'key'", key)
  local r, err = self.redis:eval(HOLDER, 1, common.tag(self.prefix, key) .. ":l")
  if r == nil then return nil, err end
  if not r then return nil end
  return r[2], tonumber(r[1]), sched.now() + r[3]
end

-- valid(key, token) -> boolean: true only while token is the live lease.
-- When Redis cannot be asked, the answer is false (fail closed) plus the error.
function Leases:valid(key, token)
  local F = "leases:valid"
  common.self(F, self, Leases)
  key = keyarg(F, "argument 'key'", key)
  token = token_arg(F, token)
  local v, err = self.redis:call("HGET", common.tag(self.prefix, key) .. ":l", "token")
  if err then return false, err end
  return v == fmt_token(token)
end

-- count() needs every key of the prefix: not kept on Redis (the keys are
-- spread over the cluster's slots).
function Leases:count()
  common.self("leases:count", self, Leases)
  error("leases:count: not available on Redis (the leases are keys spread over the cluster): "
    .. "ask leases:holder(key) for the keys you care about", 2)
end

function Leases:stats()
  common.self("leases:stats", self, Leases)
  local s = {}
  for k, v in pairs(self.st) do s[k] = v end
  return s
end

-- Closes the release-channel subscription, if any (the shared client stays open).
function Leases:close()
  common.self("leases:close", self, Leases)
  if self.sub then self.sub:close() end
  self.sub, self.sub_state = nil, "none"
end

function Leases:__tostring()
  return string.format("keel.redis.leases(%s)", self.prefix)
end

function Lease:renew(ttl_ms)
  common.self("lease:renew", self, Lease)
  local ok, e = self.leases:renew(self.key, self.token, ttl_ms)
  if ok then self.expires = e end
  return ok, e
end

function Lease:release()
  common.self("lease:release", self, Lease)
  return self.leases:release(self.key, self.token)
end

function Lease:valid()
  common.self("lease:valid", self, Lease)
  return self.leases:valid(self.key, self.token)
end

function Lease:__tostring()
  return string.format("keel.lease(%s by %s, token %d)", self.key, tostring(self.owner), self.token)
end

M.Leases = Leases
return M
