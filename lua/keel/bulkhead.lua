-- keel.bulkhead{max, queue, wait_ms, keyed, max_keys, name}: caps concurrent
-- calls; counts live in runtime/keel_bulkhead.c, waiters park here in FIFO
-- wait queues (one per compartment). A freed permit is handed straight to
-- the longest waiter, so newcomers never overtake the queue.
local ffi = require "ffi"
local C = require "keel.ffi.bulkhead"
local check = require "keel.check"
local sched = require "keel.sched"
local metrics = require "keel.metrics"
local cmem = require "keel.cmem"
local events = require "keel.events"

local FNAME = "keel.bulkhead"
local OPTS = check.set { "max", "queue", "wait_ms", "keyed", "max_keys", "name" }
local ACQUIRED, QUEUED = 1, 0
local INT_MAX = 2147483647
local EVENTS = check.set { "rejected" }
local type, pcall, error, getmetatable, setmetatable = type, pcall, error, getmetatable, setmetatable

local Bulkhead = {}
Bulkhead.__index = Bulkhead
local Keyed = setmetatable({}, { __index = Bulkhead })
Keyed.__index = Keyed

local Permit = {}
Permit.__index = Permit

-- Permits held per task, released when the task ends. One deferred function
-- per task (not per permit), so a long-lived task that acquires in a loop
-- does not pile up cleanups.
local held = setmetatable({}, { __mode = "k" })

local function free_slot(self, slot)
  local q = self.queues[slot]
  if q and q:count() > 0 and q:wake_one(true) then
    C.keel_bulkhead_transfer(self.p, slot)
  else
    C.keel_bulkhead_release(self.p, slot)
  end
end

-- true, or nil, code. Parks the task while queued.
local function rejected(self, code)
  if self.ev then events.emit(self, self.label, "rejected", code) end
  return nil, code
end

local function enter(self, slot, wait_ms, fname)
  local p = self.p
  local r = C.keel_bulkhead_acquire(p, slot, wait_ms == 0 and 0 or 1)
  if r == ACQUIRED then return true end
  if r ~= QUEUED then return rejected(self, "full") end
  if not sched.current() then
    C.keel_bulkhead_unwait(p, slot)
    sched.need_task(fname, 3)
  end
  local q = self.queues[slot]
  if not q then
    q = sched.waitqueue()
    self.queues[slot] = q
  end
  local ok, got = pcall(q.wait, q, wait_ms, fname)
  if ok and got then return true end
  C.keel_bulkhead_unwait(p, slot)
  if not ok then error(got, 0) end
  self.timeouts = self.timeouts + 1
  return rejected(self, "timeout")
end

local function slot_of(self, key, fname)
  if type(key) ~= "string" then key = check.key(fname, "argument 'key'", key) end
  local slot = C.keel_bulkhead_slot(self.p, key, #key)
  if slot >= 0 then return slot end
  if slot == -1 then return rejected(self, "full") end
  if slot == -2 then error(fname .. ": argument 'key' must be at most 65535 bytes (got " .. #key .. ")", 3) end
  error(fname .. ": out of memory", 3)
end

local function wait_arg(self, fname, wait_ms)
  if wait_ms == nil then return self.wait_ms end
  check.number(fname, "argument 'wait_ms'", wait_ms, nil, 0)
  if wait_ms == math.huge then return nil end
  return wait_ms
end

-- For keel.policy's fused path: takes a permit of an unkeyed bulkhead only
-- when one is free and nobody waits (no side effect otherwise: the caller
-- then goes the ordinary way); release it with _release().
function Bulkhead:_take_free()
  local p = self.p
  if C.keel_bulkhead_in_use(p, 0) >= self.max or C.keel_bulkhead_waiting(p, 0) > 0 then return false end
  return C.keel_bulkhead_acquire(p, 0, 0) == ACQUIRED
end

function Bulkhead:_release() free_slot(self, 0) end

function Permit:release()
  if getmetatable(self) ~= Permit then check.self("permit:release", self, Permit) end
  if self.released then return false end
  self.released = true
  local mine = self.task and held[self.task]
  if mine then mine[self] = nil end
  free_slot(self.bulkhead, self.slot)
  return true
end

local function release_all(task)
  local mine = held[task]
  if not mine then return end
  held[task] = nil
  for permit in pairs(mine) do permit:release() end
end

local function new_permit(self, slot)
  local task = sched.current()
  local permit = setmetatable({ bulkhead = self, slot = slot, task = task, released = false }, Permit)
  if task then
    local mine = held[task]
    if not mine then
      mine = {}
      held[task] = mine
      sched.defer(function() release_all(task) end)
    end
    mine[permit] = true
  end
  return permit
end

local function leave(self, slot, ok, ...)
  free_slot(self, slot)
  if not ok then error((...), 0) end
  return ...
end

-- fn's results, or nil, "full" / nil, "timeout". fn's error is re-raised
-- after the permit is released.
function Bulkhead:run(fn, ...)
  check.self("bulkhead:run", self, Bulkhead)
  check.func("bulkhead:run", "argument 'fn'", fn)
  local ok, code = enter(self, 0, self.wait_ms, "bulkhead:run")
  if not ok then return nil, code end
  return leave(self, 0, pcall(fn, ...))
end

-- A permit (release it with permit:release(); released anyway when the
-- task ends), or nil, "full" / nil, "timeout".
function Bulkhead:acquire(wait_ms)
  check.self("bulkhead:acquire", self, Bulkhead)
  wait_ms = wait_arg(self, "bulkhead:acquire", wait_ms)
  local ok, code = enter(self, 0, wait_ms, "bulkhead:acquire")
  if not ok then return nil, code end
  return new_permit(self, 0)
end

function Keyed:run(key, fn, ...)
  check.self("bulkhead:run", self, Keyed)
  check.func("bulkhead:run", "argument 'fn'", fn)
  local slot, code = slot_of(self, key, "bulkhead:run")
  if not slot then return nil, code end
  local ok
  ok, code = enter(self, slot, self.wait_ms, "bulkhead:run")
  if not ok then return nil, code end
  return leave(self, slot, pcall(fn, ...))
end

function Keyed:acquire(key, wait_ms)
  check.self("bulkhead:acquire", self, Keyed)
  wait_ms = wait_arg(self, "bulkhead:acquire", wait_ms)
  local slot, code = slot_of(self, key, "bulkhead:acquire")
  if not slot then return nil, code end
  local ok
  ok, code = enter(self, slot, wait_ms, "bulkhead:acquire")
  if not ok then return nil, code end
  return new_permit(self, slot)
end

-- bh:on("rejected", fn(code)): a caller turned away, code "full" (no
-- permit and no room to wait) or "timeout" (waited wait_ms).
function Bulkhead:on(event, fn)
  if getmetatable(self) ~= Bulkhead and getmetatable(self) ~= Keyed then
    check.self("bulkhead:on", self, Bulkhead)
  end
  return events.on(self, "bulkhead:on", EVENTS, event, fn)
end

function Bulkhead:stats()
  if getmetatable(self) ~= Bulkhead and getmetatable(self) ~= Keyed then
    check.self("bulkhead:stats", self, Bulkhead)
  end
  local s = self.sbuf
  C.keel_bulkhead_stats(self.p, s)
  local out = { in_use = s.in_use, waiting = s.waiting, acquired = s.acquired, rejected = s.rejected,
                abandoned = s.abandoned, timeouts = self.timeouts, max = self.max, queue = self.queue }
  if self.keyed then out.keys, out.evicted, out.max_keys = s.keys, s.evicted, self.max_keys end
  return out
end

return function(opts)
  opts = check.opts(FNAME, opts, OPTS)
  local max = check.integer(FNAME, "option 'max'", opts.max, 10, 1, INT_MAX)
  local wait_ms = opts.wait_ms
  if type(wait_ms) ~= "nil" then
    check.number(FNAME, "option 'wait_ms'", wait_ms, nil, 0)
  end
  -- wait_ms > 0 alone makes callers wait, as Resilience4j's maxWaitDuration
  -- does: the queue is then unbounded (every waiter leaves by wait_ms).
  local waits = wait_ms ~= nil and wait_ms > 0
  local queue = check.integer(FNAME, "option 'queue'", opts.queue, waits and INT_MAX or 0, 0, INT_MAX)
  if waits and queue == 0 then
    error(FNAME .. ": option 'wait_ms' needs a queue (queue = 0 refuses every waiter; omit queue or set it > 0)",
      2)
  end
  if wait_ms == math.huge then wait_ms = nil end
  local keyed = check.boolean(FNAME, "option 'keyed'", opts.keyed, false)
  local max_keys = 0
  if keyed then
    max_keys = check.integer(FNAME, "option 'max_keys'", opts.max_keys, 1000, 1, 1e8)
  elseif opts.max_keys ~= nil then
    error(FNAME .. ": option 'max_keys' needs keyed = true", 2)
  end
  local name = opts.name ~= nil and check.string(FNAME, "option 'name'", opts.name) or nil
  local w = sched.world()
  local seed = (keyed and w) and C.keel_rand_next(w.rand) or 0
  local p = C.keel_bulkhead_new(max, queue, max_keys, seed)
  if p == nil then error(FNAME .. ": out of memory", 2) end
  local self = setmetatable({
    p = cmem.own(p, C.keel_bulkhead_free), max = max, queue = queue, wait_ms = wait_ms, keyed = keyed,
    max_keys = keyed and max_keys or nil, queues = {}, timeouts = 0, name = name,
    sbuf = ffi.new("keel_bulkhead_stats_t"), ev = nil, label = FNAME .. (name and ("(" .. name .. ")") or ""),
  }, keyed and Keyed or Bulkhead)
  metrics.register("bulkhead", name, self)
  return self
end
