-- keel.leases: time-bounded exclusive ownership of keys with fencing tokens
-- (runtime/keel_leases.h holds the leases; this file adds owners and waiting).
--
-- Waiting: each waiter parks on its own wait queue, listed per key in arrival
-- order. When a lease is released, or found expired by the per-key timer that
-- exists only while someone waits, the lease is granted directly to the
-- longest waiter still waiting, so a newcomer cannot overtake the queue.
local C = require "keel.ffi.leases"
local Ccore = require "keel.ffi.core"
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local keyarg = require "keel.keyarg"
local cmem = require "keel.cmem"

local type, tostring, getmetatable, setmetatable, error = type, tostring, getmetatable, setmetatable, error
local huge = math.huge

local Leases = {}
Leases.__index = Leases

local Lease = {}
Lease.__index = Lease

local OPTS = check.set { "ttl_ms", "max", "name" }
local REDIS_ONLY = check.set { "prefix", "poll_ms", "notify" }
local ACQ_OPTS = check.set { "ttl_ms", "wait_ms" }

local function ttl_arg(fname, what, v, default)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v <= 0 or v == huge then
    error(string.format("%s: %s must be a finite number > 0 (got %s)", fname, what,
      type(v) == "string" and string.format("%q", v) or tostring(v)), 3)
  end
  return v
end

local function new(opts)
  local F = "keel.leases"
  check.redis_only(F, opts, REDIS_ONLY)
  opts = check.opts(F, opts, OPTS)
  local ttl = ttl_arg(F, "option 'ttl_ms'", opts.ttl_ms, 10000)
  local max = check.integer(F, "option 'max'", opts.max, 100000, 1, 2 ^ 32 - 2)
  local name = opts.name
  if name ~= nil then check.string(F, "option 'name'", name) end
  local w = sched.world()
  local l = C.keel_leases_new(max, w.clock, Ccore.keel_rand_next(w.rand))
  if l == nil then error(F .. ": out of memory", 2) end
  local bytes = C.keel_leases_stat(l, 7)
  local self = setmetatable({
    handle = cmem.own(l, C.keel_leases_free, bytes), cbytes = bytes, unsynced = 0,
    clock = w.clock, name = name, ttl_ms = ttl, max = max,
    owners = {},  -- owner per C slot (slot + 1), so owners need no C storage
    waiters = {}, -- key -> { head, tail, [i] = rec }
    timers = {},  -- key -> { handle, at }: only for keys with waiters
    nwaiting = 0,
  }, Leases)
  metrics.register("leases", name, self)
  return self
end

local function self_check(fname, self)
  if getmetatable(self) ~= Leases then check.self(fname, self, Leases, 1) end
end

local function grant(self, key, owner, token)
  local slot = C.keel_leases_last_slot(self.handle)
  self.owners[slot + 1] = owner
  return setmetatable({
    key = key, owner = owner, token = token, expires = C.keel_leases_expires(self.handle, slot), leases = self,
  }, Lease)
end

local arm_timer

-- The key is (or may be) free: give it to the longest live waiter.
local function handoff(self, key)
  local list = self.waiters[key]
  if not list then return end
  local h = self.handle
  Ccore.keel_clock_update(self.clock) -- a grant's ttl starts now (see acquire)
  local stalled = false
  while list.head <= list.tail do
    local i = list.head
    local rec = list[i]
    if not rec.dead and rec.q:count() > 0 then
      local token = C.keel_leases_acquire(h, key, #key, rec.ttl)
      -- still held: rec keeps its place; no room for the key (full of other
      -- live leases): waiters keep waiting until their wait_ms runs out
      if token <= 0 then stalled = token < 0; break end
      list[i] = nil
      list.head = i + 1
      rec.dead = true
      self.nwaiting = self.nwaiting - 1
      if rec.q:wake_one(grant(self, key, rec.owner, token)) then break end
      -- it gave up at this very moment: the next waiter gets the lease
      C.keel_leases_release(h, key, #key, token)
    else
      list[i] = nil
      list.head = i + 1
    end
  end
  if list.head > list.tail or stalled then
    if not stalled then self.waiters[key] = nil end
    local t = self.timers[key]
    if t then t.handle:stop(); self.timers[key] = nil end
  else
    arm_timer(self, key)
  end
end

-- Wakes at the holder's expiry so waiters are served even if nobody calls in.
arm_timer = function(self, key)
  local h = self.handle
  if C.keel_leases_holder(h, key, #key) == 0 then return handoff(self, key) end
  local at = C.keel_leases_expires(h, C.keel_leases_last_slot(h))
  local t = self.timers[key]
  if t then
    if t.at == at then return end
    t.handle:stop()
  end
  t = { at = at }
  self.timers[key] = t
  local now = Ccore.keel_clock_update(self.clock)
  t.handle = sched.after(at > now and at - now or 0, function()
    if self.timers[key] ~= t then return end
    self.timers[key] = nil
    if self.waiters[key] then arm_timer(self, key) end
  end)
end

-- Waiters that gave up stay listed until handoff passes them; compact a
-- list once they dominate so a key held forever cannot pile them up.
local function push_waiter(self, key, rec)
  local list = self.waiters[key]
  if not list then
    list = { head = 1, tail = 0, dead = 0 }
    self.waiters[key] = list
  elseif list.dead > 16 and list.dead * 2 > list.tail - list.head + 1 then
    local j = 0
    local fresh = { head = 1, tail = 0, dead = 0 }
    for i = list.head, list.tail do
      local r = list[i]
      if r and not r.dead then j = j + 1; fresh[j] = r end
    end
    fresh.tail = j
    list = fresh
    self.waiters[key] = list
  end
  list.tail = list.tail + 1
  list[list.tail] = rec
  self.nwaiting = self.nwaiting + 1
  return list
end

local function wait_for(self, F, key, owner, ttl, wait_ms)
  sched.need_task(F, 3)
  local rec = { q = sched.waitqueue(), owner = owner, ttl = ttl }
  push_waiter(self, key, rec)
  arm_timer(self, key)
  local ok, lease, err = pcall(rec.q.wait, rec.q, wait_ms, F)
  if not rec.dead then
    rec.dead = true
    self.nwaiting = self.nwaiting - 1
    local list = self.waiters[key]
    if list then list.dead = list.dead + 1 end
  end
  if not ok then error(lease, 0) end -- cancellation unwinds on
  if lease then return lease end
  return nil, err
end

-- acquire(key, owner [, {ttl_ms, wait_ms}]) -> lease | nil, "held" | "timeout" | "full"
function Leases:acquire(key, owner, opts)
  local F = "leases:acquire"
  self_check(F, self)
  key = keyarg(F, "argument 'key'", key)
  if owner == nil or owner ~= owner then
    error(F .. ": argument 'owner' must not be nil or NaN (got " .. tostring(owner) .. ")", 2)
  end
  local ttl, wait_ms = self.ttl_ms, nil
  if opts ~= nil then
    opts = check.opts(F, opts, ACQ_OPTS)
    ttl = ttl_arg(F, "option 'ttl_ms'", opts.ttl_ms, ttl)
    if opts.wait_ms ~= nil then wait_ms = check.number(F, "option 'wait_ms'", opts.wait_ms, nil, 0) end
  end
  -- The loop's cached time is as old as the current run of tasks: a task
  -- that computed for longer than the ttl would be granted a lease that
  -- expires on the next clock reading (a waiter's timer then takes it).
  Ccore.keel_clock_update(self.clock)
  -- queued waiters go first
  if self.waiters[key] then handoff(self, key) end
  local h = self.handle
  local token = self.waiters[key] and 0 or C.keel_leases_acquire(h, key, #key, ttl)
  if token > 0 then
    -- now and then, charge what the table grew (keel.cmem)
    local n = self.unsynced + 1
    if n >= cmem.SYNC_EVERY then
      n = 0
      cmem.sync(self, C.keel_leases_stat(h, 7))
    end
    self.unsynced = n
    return grant(self, key, owner, token)
  end
  if token == -1 then return nil, "full" end
  if token < 0 then error(F .. ": out of memory", 2) end
  if wait_ms == nil then return nil, "held" end
  if wait_ms == 0 then return nil, "timeout" end
  return wait_for(self, F, key, owner, ttl, wait_ms)
end

local function token_arg(fname, token)
  if type(token) ~= "number" or token ~= token then
    error(string.format("%s: argument 'token' must be a number (got %s)", fname,
      type(token) == "string" and string.format("%q", token) or tostring(token)), 3)
  end
  return token
end

-- renew(key, token [, ttl_ms]) -> true, expires | nil, "lost"
function Leases:renew(key, token, ttl_ms)
  local F = "leases:renew"
  self_check(F, self)
  key = keyarg(F, "argument 'key'", key)
  token = token_arg(F, token)
  local ttl = ttl_arg(F, "argument 'ttl_ms'", ttl_ms, self.ttl_ms)
  Ccore.keel_clock_update(self.clock) -- the new ttl starts now, as in acquire
  local e = C.keel_leases_renew(self.handle, key, #key, token, ttl)
  if e == 0 then return nil, "lost" end
  return true, e
end

-- release(key, token) -> true | nil, "lost"
function Leases:release(key, token)
  local F = "leases:release"
  self_check(F, self)
  key = keyarg(F, "argument 'key'", key)
  token = token_arg(F, token)
  local h = self.handle
  if C.keel_leases_holder(h, key, #key) == token then
    self.owners[C.keel_leases_last_slot(h) + 1] = nil
  end
  if C.keel_leases_release(h, key, #key, token) == 0 then return nil, "lost" end
  if self.waiters[key] then handoff(self, key) end
  return true
end

-- holder(key) -> owner, token, expires | nil
function Leases:holder(key)
  local F = "leases:holder"
  self_check(F, self)
  key = keyarg(F, "argument 'key'", key)
  local h = self.handle
  local token = C.keel_leases_holder(h, key, #key)
  if token == 0 then return nil end
  local slot = C.keel_leases_last_slot(h)
  return self.owners[slot + 1], token, C.keel_leases_expires(h, slot)
end

-- valid(key, token) -> boolean: the fencing check.
function Leases:valid(key, token)
  local F = "leases:valid"
  self_check(F, self)
  key = keyarg(F, "argument 'key'", key)
  token = token_arg(F, token)
  return C.keel_leases_valid(self.handle, key, #key, token) == 1
end

function Leases:count()
  self_check("leases:count", self)
  return C.keel_leases_count(self.handle)
end

function Leases:stats()
  self_check("leases:stats", self)
  local h = self.handle
  return {
    held = C.keel_leases_count(h), max = self.max, waiting = self.nwaiting,
    grants = C.keel_leases_stat(h, 0), renewals = C.keel_leases_stat(h, 1),
    releases = C.keel_leases_stat(h, 2), expirations = C.keel_leases_stat(h, 3),
    refused_held = C.keel_leases_stat(h, 4), refused_full = C.keel_leases_stat(h, 5),
    lost = C.keel_leases_stat(h, 6), bytes = C.keel_leases_stat(h, 7),
  }
end

-- The Redis leases' close() ends its release subscription; a local leases
-- object holds nothing to close (same method names on both backends).
function Leases:close()
  self_check("leases:close", self)
end

function Leases:__tostring()
  return string.format("keel.leases(%s: %d/%d)", self.name or "unnamed", self:count(), self.max)
end

-- Lease conveniences: lease:renew([ttl_ms]) keeps lease.expires current.
function Lease:renew(ttl_ms)
  if getmetatable(self) ~= Lease then check.self("lease:renew", self, Lease) end
  local ok, e = self.leases:renew(self.key, self.token, ttl_ms)
  if ok then self.expires = e end
  return ok, e
end

function Lease:release()
  if getmetatable(self) ~= Lease then check.self("lease:release", self, Lease) end
  return self.leases:release(self.key, self.token)
end

function Lease:valid()
  if getmetatable(self) ~= Lease then check.self("lease:valid", self, Lease) end
  return self.leases:valid(self.key, self.token)
end

function Lease:__tostring()
  return string.format("keel.lease(%s by %s, token %d)", self.key, tostring(self.owner), self.token)
end

return new
