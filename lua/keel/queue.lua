-- keel.queue: a bounded work queue with priorities, delays, visibility
-- timeouts, delivery attempts and a dead-letter queue.
--
-- C (runtime/keel_queue.c) keeps ids, order, deadlines and attempts; this
-- file keeps the items, indexed by the message's slot (dense, so they live in
-- the array part of a table), plus the rare-path metadata: dedup keys,
-- failure history, dead-letter details.
local ffi = require "ffi"
local C = require "keel.ffi.queue"
local sched = require "keel.sched"
local check = require "keel.check"
local metrics = require "keel.metrics"
local cmem = require "keel.cmem"
local queue_levels = require "keel.queue_levels"

local type, error, getmetatable, setmetatable, tostring, pcall, next =
  type, error, getmetatable, setmetatable, tostring, pcall, next
local floor, huge, max = math.floor, math.huge, math.max

local Queue = {}
Queue.__index = Queue

local NEW_OPTS = check.set { "capacity", "visibility_ms", "max_attempts", "dead_letter", "name", "priorities" }
-- options of the Redis queue that configure its connection and delivery
-- machinery; here they would mean nothing
local REDIS_ONLY = check.set { "prefix", "group", "consumer", "prefetch", "max_blockers", "block_ms" }
local PUSH_OPTS = check.set { "delay_ms", "priority", "dedup_key" }
local POP_OPTS = check.set { "wait_ms" }
local ACK_OPTS = check.set { "wait" }
local NACK_OPTS = check.set { "delay_ms", "error" }

-- Longest delay/visibility honoured (~31700 years); the C core clamps the same way.
local MAX_MS = 1e15

local EXPIRED_ERROR = "visibility timeout"
local NACK_ERROR = "nack"

-- Timers ---------------------------------------------------------------------
-- One world timer at the earliest delayed-ready time or visibility deadline.
-- It is unreferenced (does not keep the program alive) unless a popper is
-- waiting, since only then is someone depending on what it will release.

local function set_timer(self, t, referenced)
  if self.timer then self.timer:stop() end
  local g = self.tgen + 1
  self.tgen = g
  local function fire()
    if self.tgen == g then self.timer, self.timer_at = nil, huge end
    self:_service()
  end
  local prev = sched.set_world(self.world)
  local ok, tm = pcall(sched.after, max(0, t - C.keel_clock_update(self.clock)), fire)
  sched.set_world(prev)
  if not ok then error(tm, 0) end
  referenced = referenced or self.waiters:count() > 0
  if not referenced then tm:unref() end
  self.timer, self.timer_at, self.timer_ref = tm, t, referenced
end

local function arm_at(self, t)
  if t < self.timer_at then set_timer(self, t, false) end
end

-- Messages -------------------------------------------------------------------

local function slot_of(self, id) return id % self.span + 1 end

local function add_meta(msg, m)
  msg.error, msg.attempts, msg.first_failed, msg.last_failed, msg.source =
    m.error, m.attempts, m.first_failed, m.last_failed, m.source
end

-- A delivery was just popped: its visibility deadline may be the earliest.
local function watch_deadline(self)
  local deadline = self.clock.now_ms + self.visibility_ms
  if deadline < self.timer_at then set_timer(self, deadline, false) end
end

-- The message table for a delivery just popped (one constructor: LuaJIT
-- builds it from a template without rehashing).
local function new_msg(self, id)
  local s = slot_of(self, id)
  local msg = { id = id, item = self.items[s], attempt = C.keel_queue_attempt(self.q, id), queue = self }
  local m = self.meta[s]
  if m then add_meta(msg, m) end
  watch_deadline(self)
  return msg
end

-- Same, into the table a waiting popper was already woken with.
local function fill(self, msg, id)
  local s = slot_of(self, id)
  msg.id, msg.item, msg.attempt, msg.queue = id, self.items[s], C.keel_queue_attempt(self.q, id), self
  local m = self.meta[s]
  if m then add_meta(msg, m) end
  watch_deadline(self)
end

-- Forgets everything Lua holds for a slot whose message left the queue.
local function release(self, s)
  self.items[s] = nil
  local key = self.keys[s]
  if key ~= nil then
    self.keys[s] = nil
    self.index[key] = nil
  end
  self.meta[s] = nil
  self.fails[s] = nil
end

local function record_failure(self, s, err)
  local now = self.clock.now_ms
  local f = self.fails[s]
  if f then
    f.last, f.error = now, err
  else
    self.fails[s] = { first = now, last = now, error = err }
  end
end

-- Hands ready messages to waiting poppers, longest waiter first. The waiter
-- is woken with an empty message table that is filled right after, so a
-- message is never taken for a waiter that cannot receive it.
local function handoff(self)
  local w, q = self.waiters, self.q
  while w:count() > 0 and C.keel_queue_ready_count(q) > 0 do
    local msg = {}
    if not w:wake_one(msg) then break end
    fill(self, msg, C.keel_queue_pop(q, 0))
  end
end

-- Internal push, arguments already checked. Returns id or nil, code.
-- meta (dead-letter details) is attached before any waiter is handed the message.
local function push(self, item, priority, delay, key, meta)
  if key ~= nil and self.index[key] ~= nil then
    self.duplicates = self.duplicates + 1
    return nil, "duplicate"
  end
  local id = C.keel_queue_push(self.q, priority, delay)
  if id < 0 then
    if id == -1 then
      self.rejected = self.rejected + 1
      return nil, "full"
    end
    error("keel.queue:push: out of memory", 3)
  end
  local s = slot_of(self, id)
  self.items[s] = item
  if key ~= nil then
    self.keys[s] = key
    self.index[key] = id
  end
  if meta ~= nil then self.meta[s] = meta end
  if delay > 0 then
    arm_at(self, self.clock.now_ms + delay)
  elseif self.waiters:count() > 0 then
    handoff(self)
  end
  return id
end

-- A message out of attempts: to the dead-letter queue, or dropped.
local function bury(self, s, attempts)
  local item, key, f = self.items[s], self.keys[s], self.fails[s]
  release(self, s)
  self.ndead = self.ndead + 1
  local dlq = self.dead_letter
  if dlq then
    local id = push(dlq, item, 0, 0, nil, {
      error = f and f.error, attempts = attempts,
      first_failed = f and f.first, last_failed = f and f.last,
      source = self.name, origin = self, dedup_key = key,
    })
    if id then
      self.dead_lettered = self.dead_lettered + 1
      return "dead"
    end
  end
  self.dropped = self.dropped + 1
  return "dropped"
end

-- Promotes due delayed messages, expires due deliveries, feeds waiters and
-- re-arms the timer. Runs from the timer and from pop when the timer is late.
function Queue:_service()
  local q = self.q
  C.keel_queue_promote(q)
  while true do
    local id = C.keel_queue_next_expired(q)
    if id < 0 then break end
    local attempt = C.keel_queue_attempt(q, id)
    local s = slot_of(self, id)
    record_failure(self, s, EXPIRED_ERROR)
    if C.keel_queue_nack(q, id, attempt, 0, 1) == 1 then bury(self, s, attempt) end
  end
  if self.waiters:count() > 0 then handoff(self) end
  local nd = C.keel_queue_next_deadline(q)
  if nd >= 0 and (self.timer == nil or nd < self.timer_at) then set_timer(self, nd, false) end
end

-- Public API -----------------------------------------------------------------

-- True when every key of opts is in known (no allocation, JIT-compiled).
local function known_keys(opts, known)
  local k = next(opts)
  while k ~= nil do
    if not known[k] then return false end
    k = next(opts, k)
  end
  return true
end

local function check_msg(fname, msg)
  if type(msg) ~= "table" or type(msg.id) ~= "number" or type(msg.attempt) ~= "number" then
    error(string.format("%s: argument 'msg' must be a message returned by pop (got %s)", fname, tostring(msg)), 3)
  end
  local a = msg.attempt
  -- a mutated attempt cannot be a live delivery; keep it out of int32_t
  if not (a >= 1 and a < 2147483648 and a == floor(a)) then return nil end
  return msg.id, a
end

function Queue:push(item, opts)
  check.self("keel.queue:push", self, Queue)
  if item == nil then error("keel.queue:push: argument 'item' must not be nil", 2) end
  if opts == nil then return push(self, item, 0, 0, nil) end
  local delay, priority, key
  if type(opts) == "table" and known_keys(opts, PUSH_OPTS) then
    delay, priority, key = opts.delay_ms, opts.priority, opts.dedup_key
    if delay == nil then delay = 0 end
    if priority == nil then priority = 0 end
  end
  -- anything unusual (or wrong) takes the full checks, which raise
  if not (type(delay) == "number" and delay >= 0 and type(priority) == "number" and priority == priority
          and (key == nil or type(key) == "string")) then
    local F = "keel.queue:push"
    check.opts(F, opts, PUSH_OPTS)
    delay = check.number(F, "option 'delay_ms'", opts.delay_ms, 0, 0)
    priority = check.number(F, "option 'priority'", opts.priority, 0)
    key = opts.dedup_key
    if key ~= nil then key = check.key(F, "option 'dedup_key'", key) end
  end
  if delay > MAX_MS then delay = MAX_MS end
  if self.levels and not self.levels[priority] then
    error(string.format("keel.queue:push: option 'priority' must be one of the queue's priorities "
      .. "(option 'priorities'; got %s)", tostring(priority)), 2)
  end
  return push(self, item, priority, delay, key)
end

function Queue:pop(opts)
  check.self("keel.queue:pop", self, Queue)
  local wait_ms = 0
  if opts ~= nil then
    -- fast path for the usual {wait_ms = n}; anything else gets the full check
    local w = type(opts) == "table" and opts.wait_ms
    if type(w) == "number" and w >= 0 and known_keys(opts, POP_OPTS) then
      wait_ms = w
    else
      check.opts("keel.queue:pop", opts, POP_OPTS)
      wait_ms = check.number("keel.queue:pop", "option 'wait_ms'", opts.wait_ms, 0, 0)
    end
  end
  if self.clock.now_ms >= self.timer_at then self:_service() end
  local id = C.keel_queue_pop(self.q, 0)
  if id >= 0 then return new_msg(self, id) end
  if wait_ms <= 0 then return nil, "empty" end
  -- the timer may now release what this popper waits for: let it hold the world open
  if self.timer and not self.timer_ref then set_timer(self, self.timer_at, true) end
  local msg = self.waiters:wait(wait_ms < huge and wait_ms or nil, "keel.queue:pop")
  if msg then return msg end
  -- a message due exactly at the wait deadline still counts
  if self.clock.now_ms >= self.timer_at then self:_service() end
  id = C.keel_queue_pop(self.q, 0)
  if id >= 0 then return new_msg(self, id) end
  return nil, "timeout"
end

-- ack(msg [, {wait}]): wait is the Redis queue's (queue the ack and return);
-- a local ack is immediate either way.
function Queue:ack(msg, opts)
  check.self("keel.queue:ack", self, Queue)
  local id, attempt = check_msg("keel.queue:ack", msg)
  if opts ~= nil then
    check.opts("keel.queue:ack", opts, ACK_OPTS)
    check.boolean("keel.queue:ack", "option 'wait'", opts.wait, true)
  end
  if not id or msg.queue ~= self or C.keel_queue_ack(self.q, id, attempt) ~= 0 then
    return nil, "unknown"
  end
  release(self, slot_of(self, id))
  return true
end

-- Returns true, "requeued" | "dead" (moved to the dead-letter queue) |
-- "dropped" (out of attempts, no room or no dead-letter queue).
function Queue:nack(msg, opts)
  local F = "keel.queue:nack"
  check.self(F, self, Queue)
  local id, attempt = check_msg(F, msg)
  local delay, err = 0, NACK_ERROR
  if opts ~= nil then
    check.opts(F, opts, NACK_OPTS)
    delay = check.number(F, "option 'delay_ms'", opts.delay_ms, 0, 0)
    if delay > MAX_MS then delay = MAX_MS end
    if opts.error ~= nil then err = opts.error end
  end
  if not id or msg.queue ~= self then return nil, "unknown" end
  local rc = C.keel_queue_nack(self.q, id, attempt, delay, 0)
  if rc < 0 then return nil, "unknown" end
  local s = slot_of(self, id)
  record_failure(self, s, err)
  if rc == 1 then return true, bury(self, s, attempt) end
  if delay > 0 then
    arm_at(self, self.clock.now_ms + delay)
  elseif self.waiters:count() > 0 then
    handoff(self)
  end
  return true, "requeued"
end

-- Keeps a delivery invisible for ms more (from now), for long jobs.
function Queue:extend(msg, ms)
  local F = "keel.queue:extend"
  check.self(F, self, Queue)
  local id, attempt = check_msg(F, msg)
  ms = check.number(F, "argument 'ms'", ms, nil, 0)
  if ms > MAX_MS then ms = MAX_MS end
  if not id or msg.queue ~= self or C.keel_queue_extend(self.q, id, attempt, ms) ~= 0 then
    return nil, "unknown"
  end
  arm_at(self, self.clock.now_ms + ms)
  return true
end

-- Ready messages in pop order, without taking them.
local function ready_ids(self, n)
  local avail = C.keel_queue_ready_count(self.q)
  if n > avail then n = avail end
  if n <= 0 then return nil, 0 end
  local buf = ffi.new("double[?]", n)
  local got = C.keel_queue_ready_ids(self.q, buf, n)
  if got < 0 then error("keel.queue: out of memory", 3) end
  return buf, got
end

function Queue:peek(n)
  check.self("keel.queue:peek", self, Queue)
  n = check.integer("keel.queue:peek", "argument 'n'", n, 1, 0)
  local out = {}
  local buf, got = ready_ids(self, n)
  for i = 0, got - 1 do
    local id = buf[i]
    local s = slot_of(self, id)
    local msg = { id = id, item = self.items[s], attempt = C.keel_queue_attempt(self.q, id) }
    local m = self.meta[s]
    if m then add_meta(msg, m) end
    out[#out + 1] = msg
  end
  return out
end

-- Moves up to n ready dead letters out of `from` back to the queue each came
-- from (only those from `origin` when given), oldest first, with fresh
-- attempts. A letter its origin refuses (full, duplicate key) stays put.
local function redrive(from, n, origin)
  local buf, got = ready_ids(from, C.keel_queue_ready_count(from.q))
  local moved, refused = 0, nil
  for i = 0, got - 1 do
    if moved >= n then break end
    local id = buf[i]
    local s = slot_of(from, id)
    local m = from.meta[s]
    if m and m.origin and (origin == nil or m.origin == origin) then
      local ok, err = push(m.origin, from.items[s], 0, 0, m.dedup_key)
      if ok then
        C.keel_queue_remove(from.q, id)
        release(from, s)
        moved = moved + 1
        m.origin.redriven = m.origin.redriven + 1
      else
        refused = refused or err
      end
    end
  end
  return moved, refused
end

-- On a queue with a dead_letter option: brings its own dead letters back.
-- On any other queue: sends the dead letters it holds back to their sources.
-- Returns how many moved, plus "full"/"duplicate" when some could not move.
function Queue:redrive(n)
  check.self("keel.queue:redrive", self, Queue)
  n = check.number("keel.queue:redrive", "argument 'n'", n, huge, 0)
  if self.dead_letter then return redrive(self.dead_letter, n, self) end
  return redrive(self, n, nil)
end

function Queue:stats()
  check.self("keel.queue:stats", self, Queue)
  local st = ffi.new("keel_queue_stats_t")
  C.keel_queue_stats(self.q, st)
  return {
    capacity = self.capacity,
    ready = st.ready, delayed = st.delayed, in_flight = st.in_flight,
    waiting = self.waiters:count(),
    pushed = st.pushed, popped = st.popped, acked = st.acked,
    nacked = st.nacked, expired = st.expired,
    dead = self.ndead, dead_lettered = self.dead_lettered, dropped = self.dropped,
    redriven = self.redriven, duplicates = self.duplicates, full = self.rejected,
  }
end

-- dead([n = 100]) -> this queue's dead letters waiting in its dead_letter
-- queue, oldest first, in the Redis queue's shape ({id, item, attempts,
-- error, dedup_key, priority}); {} without a dead_letter queue (they were
-- dropped). They stay where they are: redrive() moves them back.
function Queue:dead(n)
  local F = "keel.queue:dead"
  check.self(F, self, Queue)
  n = check.integer(F, "argument 'n'", n, 100, 1, 1e6)
  local out, dlq = {}, self.dead_letter
  if not dlq then return out end
  local buf, got = ready_ids(dlq, C.keel_queue_ready_count(dlq.q))
  for i = 0, got - 1 do
    if #out >= n then break end
    local id = buf[i]
    local s = slot_of(dlq, id)
    local m = dlq.meta[s]
    if m and m.origin == self then
      out[#out + 1] = { id = id, item = dlq.items[s], attempts = m.attempts, error = m.error,
                        dedup_key = m.dedup_key, priority = 0 }
    end
  end
  return out
end

-- info() -> {length, pending, ready, dead, delayed}, as the Redis queue's:
-- length = pending (delivered, not acked) + ready; dead = letters waiting in
-- the dead_letter queue (0 without one).
function Queue:info()
  check.self("keel.queue:info", self, Queue)
  local st = ffi.new("keel_queue_stats_t")
  C.keel_queue_stats(self.q, st)
  local dlq = self.dead_letter
  return {
    length = st.ready + st.in_flight, pending = st.in_flight, ready = st.ready, delayed = st.delayed,
    dead = dlq and C.keel_queue_ready_count(dlq.q) or 0,
  }
end

-- The Redis queue's flush() waits for acks queued with {wait = false} and
-- close() releases its connections; a local queue has neither, so both
-- return at once (same method names on both backends).
function Queue:flush()
  check.self("keel.queue:flush", self, Queue)
  return true
end

function Queue:close()
  check.self("keel.queue:close", self, Queue)
end

function Queue:__tostring()
  return "keel.queue(" .. (self.name or "?") .. ")"
end

return function(opts)
  local F = "keel.queue"
  check.redis_only(F, opts, REDIS_ONLY)
  opts = check.opts(F, opts, NEW_OPTS)
  local levels = queue_levels.parse(F, opts.priorities)
  local level_set
  if levels then
    level_set = {}
    for _, l in ipairs(levels) do level_set[l] = true end
  end
  local capacity = check.integer(F, "option 'capacity'", opts.capacity, 10000, 1, 16777216)
  local vis = opts.visibility_ms
  if vis == nil then vis = 30000 end
  if type(vis) ~= "number" or not (vis > 0 and vis <= MAX_MS) then
    error(string.format("%s: option 'visibility_ms' must be a number in (0, 1e15] (got %s)", F, tostring(vis)), 2)
  end
  local max_attempts = check.integer(F, "option 'max_attempts'", opts.max_attempts, 5, 1, 2147483647)
  local dlq = opts.dead_letter
  if dlq ~= nil and getmetatable(dlq) ~= Queue then
    error(string.format("%s: option 'dead_letter' must be a keel.queue (got %s)", F, tostring(dlq)), 2)
  end
  local name = opts.name
  if name ~= nil then name = check.string(F, "option 'name'", name) end
  local w = sched.world()
  if not w then error("keel.queue: no runtime world (is keel running?)", 2) end
  local q = C.keel_queue_new(w.clock, capacity, vis, max_attempts)
  if q == nil then error("keel.queue: out of memory", 2) end
  local self = setmetatable({
    q = cmem.own(q, C.keel_queue_free), span = C.keel_queue_span(q),
    world = w, clock = w.clock,
    capacity = capacity, visibility_ms = vis, max_attempts = max_attempts,
    dead_letter = dlq, name = name, levels = level_set,
    items = {}, keys = {}, index = {}, meta = {}, fails = {},
    waiters = sched.waitqueue(),
    timer = nil, timer_at = huge, timer_ref = false, tgen = 0,
    ndead = 0, dead_lettered = 0, dropped = 0, redriven = 0, duplicates = 0, rejected = 0,
  }, Queue)
  metrics.register("queue", name, self)
  return self
end
