-- The task scheduler: worlds, tasks (pooled coroutines), wait queues and
-- timers. A world is one clock + timer heap + PRNG + ready queue. The runtime
-- has one real world; keel.sim runs a function in a fresh virtual one.
--
-- Waiting always follows one protocol: a task parks with a fresh generation
-- number, and whoever wakes it must quote that generation. A stale waker (a
-- timer from an earlier wait, a second producer) is simply ignored, so no
-- wait can be resumed twice or by the wrong event.
local ffi = require "ffi"
local C = require "keel.ffi.core"

local cocreate, coresume, yield = coroutine.create, coroutine.resume, coroutine.yield
local select, type, tostring, setmetatable, error, xpcall, next =
  select, type, tostring, setmetatable, error, xpcall, next
local traceback = debug.traceback
local huge = math.huge
local unpack = unpack or table.unpack

local sched = {}

-- Markers passed to a parked task's resume instead of wake values.
local TIMEOUT = setmetatable({}, { __tostring = function() return "timeout" end })
local CANCEL = setmetatable({}, { __tostring = function() return "cancelled" end })
local DONE = {}
-- Yielded by a cancelled task that waits again after swallowing the
-- cancellation: the scheduler drops that coroutine and ends the task.
local ABANDON = {}
-- The error value a cancelled task unwinds with; join reports "cancelled".
local CANCELLED = setmetatable({}, { __tostring = function() return "cancelled" end })
sched.CANCELLED = CANCELLED

local W -- the current world

local Task = {}
Task.__index = Task

-- World ----------------------------------------------------------------------

local World = {}
World.__index = World

local POOL_MAX = 4096
local TICK_BUDGET = 8192 -- resumes per tick before I/O gets a turn

local function new_world(opts)
  local w = setmetatable({
    ready = {}, nready = 0, spare = {},
    slot_obj = {}, slot_gen = {},
    pool = {}, npool = 0,
    alive = 0, pending = 0, unrefd = 0,
    current = nil, main = nil,
    unobserved = {},
    events = {}, shutdown_handlers = {},
    exit_code = nil,
  }, World)
  if opts.clock then
    w.clock, w.rand = opts.clock, opts.rand
  else
    w.clock = ffi.new("keel_clock_t")
    w.rand = ffi.new("keel_rand_t")
    C.keel_clock_init(w.clock, opts.virtual and 1 or 0, opts.epoch_ms or 1.7e12)
    C.keel_rand_seed(w.rand, opts.seed or 0)
  end
  w.virtual = w.clock.is_virtual ~= 0
  w.seed = opts.seed
  w.host_events = opts.host_events or false
  w.timers = require("keel.cmem").own(C.keel_timers_new(), C.keel_timers_free)
  if w.timers == nil then error("keel: out of memory creating the timer heap") end
  return w
end
sched.new_world = new_world

function sched.world() return W end
function sched.set_world(w) local old = W; W = w; return old end

function sched.current() return W and W.current end

function sched.now()
  local clock = W.clock
  return C.keel_clock_update(clock)
end

local function push_ready(w, task)
  local n = w.nready + 1
  w.nready = n
  w.ready[n] = task
end

-- Timers ---------------------------------------------------------------------
-- Slots map a C timer id to what it wakes: a parked task (slot_gen holds
-- the generation it waits in) or a timer object (slot_gen is false).
-- A C id is reused as soon as its timer fires, so an id alone is no handle:
-- a wait that ends by a value after its timer already fired would cancel
-- whoever armed that id next. The handle is (id, owner, generation), and
-- only its owner in that generation can cancel the slot.

local function arm(w, deadline, obj, gen)
  local id = C.keel_timers_add(w.timers, deadline)
  if id < 0 then error("keel: out of memory arming a timer", 3) end
  w.slot_obj[id], w.slot_gen[id] = obj, gen
  return id
end

local function disarm(w, id, obj, gen)
  local objs, gens = w.slot_obj, w.slot_gen
  if objs[id] == obj and gens[id] == gen and C.keel_timers_cancel(w.timers, id) == 0 then
    objs[id], gens[id] = nil, nil
  end
end

-- Waking ---------------------------------------------------------------------

local function wake(task, gen, a, b, c)
  if task.state ~= "waiting" or task.gen ~= gen then return false end
  task.state = "running"
  task.v1, task.v2, task.v3 = a, b, c
  push_ready(task.world, task)
  return true
end
sched.wake = wake

-- Parks the current task; returns the wake values. The caller has already
-- bumped task.gen and registered the waker(s).
local function park(task)
  task.state = "waiting"
  return yield()
end

-- Cancellation is sticky: every wait of a cancelled task raises it. A task
-- that swallows it (pcall around its waits) and waits again would otherwise
-- spin for ever without yielding, freezing the whole runtime, SIGTERM
-- included; so after SWALLOW_MAX swallowed raises its next wait ends it:
-- the coroutine is dropped and the task finishes "cancelled", keel.defer
-- cleanups run. Cleanup itself (task.cleaning) may always catch and wait.
-- task.cancelled: false/nil, or the number of raises so far (0 is truthy).
local SWALLOW_MAX = 2

local function raise_cancelled(task)
  local n = task.cancelled
  if n >= SWALLOW_MAX and not task.cleaning then
    yield(ABANDON) -- never resumed
  end
  task.cancelled = n + 1
  error(CANCELLED, 0)
end

local function need_task(fname, level)
  local task = W and W.current
  if not task then
    error((fname or "keel") .. ": must be called inside a task (use keel.spawn)", (level or 2) + 1)
  end
  -- A yield from a plain coroutine inside the task would park the task while
  -- it keeps running, and the later wake-up would resume the wrong coroutine.
  if task.nested then
    error((fname or "keel") .. ": must be called from the task itself, not from a coroutine it created",
      (level or 2) + 1)
  end
  -- keel.store's db:tx holds the write lock while fn runs: fn must not park.
  if task.in_tx then
    error((fname or "keel") .. ": must not wait inside a transaction", (level or 2) + 1)
  end
  if task.cancelled then raise_cancelled(task) end
  return task
end
sched.need_task = need_task

-- need_task must know whether the task is running a coroutine of its own.
-- Asking coroutine.running() on every wait would do, but it is a C call at
-- the deepest point of every parked stack and makes each one grow to twice
-- its size; instead the task counts the coroutines it is inside, through
-- these replacements of coroutine.resume and coroutine.wrap.
local raw_resume = coroutine.resume

local function leave_nested(task, depth, ...)
  task.nested = depth > 0 and depth or nil
  return ...
end

local function nested_resume(co, ...)
  local task = W and W.current
  if not task then return raw_resume(co, ...) end
  local depth = task.nested or 0
  task.nested = depth + 1
  return leave_nested(task, depth, raw_resume(co, ...))
end

local function unwrap(ok, ...)
  if not ok then error((...), 0) end
  return ...
end

coroutine.resume = nested_resume -- luacheck: ignore 122
coroutine.wrap = function(fn) -- luacheck: ignore 122
  local co = cocreate(fn)
  return function(...) return unwrap(nested_resume(co, ...)) end
end

local function check_timeout(fname, timeout)
  if timeout == nil then return nil end
  if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
    error(string.format("%s: timeout must be a number >= 0 (got %s)", fname or "keel", tostring(timeout)), 4)
  end
  if timeout == math.huge then return nil end
  return timeout
end

-- Wait queues ------------------------------------------------------------------

local WaitQueue = {}
WaitQueue.__index = WaitQueue

function sched.waitqueue()
  return setmetatable({ t = {}, g = {}, head = 1, tail = 0, n = 0 }, WaitQueue)
end

-- Removed entries become nil, never false: a queue that never empties (three
-- consumers on one channel) must not accumulate dead slots.
local function wq_remove(q, i, task)
  if q.t[i] == task then
    q.t[i], q.g[i] = nil, nil
    q.n = q.n - 1
    if q.n == 0 then
      -- Reset so indices never creep upwards across idle periods.
      for j = q.head, q.tail do q.t[j] = nil; q.g[j] = nil end
      q.head, q.tail = 1, 0
    end
  end
end

function WaitQueue:wait(timeout, fname)
  local task = need_task(fname, 2)
  timeout = check_timeout(fname, timeout)
  local w = task.world
  local gen = task.gen + 1
  task.gen = gen
  local i = self.tail + 1
  self.tail = i
  self.t[i], self.g[i] = task, gen
  self.n = self.n + 1
  local tid
  if timeout then tid = arm(w, C.keel_clock_update(w.clock) + timeout, task, gen) end
  local a, b, c = park(task)
  if tid and a ~= TIMEOUT then disarm(w, tid, task, gen) end
  if a == TIMEOUT then
    wq_remove(self, i, task)
    -- a cancel that landed after the timeout queued us still counts
    if task.cancelled then raise_cancelled(task) end
    return nil, "timeout"
  elseif a == CANCEL then
    wq_remove(self, i, task)
    raise_cancelled(task)
  end
  -- A value was handed over before a cancel landed: it is ours (a channel
  -- send already counted it as delivered); the next wait raises.
  return a, b, c
end

-- Returns the woken task, or nil when nobody was waiting.
function WaitQueue:wake_one(a, b, c)
  local t, g = self.t, self.g
  for i = self.head, self.tail do
    local task, gen = t[i], g[i]
    t[i], g[i] = nil, nil
    self.head = i + 1
    if task then
      local n = self.n - 1
      self.n = n
      if n == 0 then
        for j = i + 1, self.tail do t[j] = nil; g[j] = nil end
        self.head, self.tail = 1, 0
        if wake(task, gen, a, b, c) then return task end
        return nil
      end
      if wake(task, gen, a, b, c) then return task end
    end
  end
  return nil
end

function WaitQueue:wake_all(a, b, c)
  local woken = 0
  while self.n > 0 do
    if self:wake_one(a, b, c) then woken = woken + 1 end
  end
  return woken
end

function WaitQueue:count() return self.n end

-- Sleeping -------------------------------------------------------------------

function sched.sleep(ms, fname)
  fname = fname or "keel.sleep"
  if type(ms) ~= "number" or ms ~= ms or ms < 0 then
    error(string.format("%s: argument 'ms' must be a number >= 0 (got %s)", fname, tostring(ms)), 2)
  end
  local task = need_task(fname, 2)
  local w = task.world
  local gen = task.gen + 1
  task.gen = gen
  if ms == 0 then
    -- Yield to every other runnable task, then continue.
    push_ready(w, task)
    task.state = "running"
    yield()
    if task.cancelled then raise_cancelled(task) end
    return
  end
  -- Sleeping for ever arms no timer: a virtual clock must not jump to
  -- infinity, and only cancellation ends such a sleep.
  local tid = ms ~= huge and arm(w, C.keel_clock_update(w.clock) + ms, task, gen)
  local a = park(task)
  -- Woken by the cancel, or by the expiry with a cancel landing before we
  -- ran: either way cancel() returned true, so the sleep raises.
  if task.cancelled then
    if tid and a == CANCEL then disarm(w, tid, task, gen) end
    raise_cancelled(task)
  end
end

-- Completions from C ------------------------------------------------------------
-- A C operation (a Redis reply, ...) is matched to its waiter by an integer id.
-- Ids are slot + SLOT_SPAN * seq: slots are reused (so the tables stay
-- arrays: ever-new keys would churn a hash part at every call), and seq,
-- bumped at each reuse, makes a late completion of an abandoned wait (a
-- reply after its timeout) miss the slot's next user. seq wraps after 2^32
-- reuses of one slot; ids stay below 2^53, exact in a double.

local SLOT_SPAN = 2097152 -- 2^21 waits outstanding at once, across worlds
local SEQ_WRAP = 4294967296
local comp_task, comp_gen, comp_seq = {}, {}, {} -- slot -> waiter, its generation, seq
local free_slots, nfree, nslots = {}, 0, 0

function sched.completion(fname)
  local task = need_task(fname, 2)
  local slot
  if nfree > 0 then
    slot = free_slots[nfree]
    free_slots[nfree] = nil
    nfree = nfree - 1
  else
    if nslots >= SLOT_SPAN - 1 then error((fname or "keel") .. ": too many outstanding completions", 2) end
    nslots = nslots + 1
    slot = nslots
    comp_seq[slot] = 0
  end
  local gen = task.gen + 1
  task.gen = gen
  comp_task[slot], comp_gen[slot] = task, gen
  task.world.pending = task.world.pending + 1
  return comp_seq[slot] * SLOT_SPAN + slot
end

-- The slot of a live id, or nil.
local function live_slot(id)
  if type(id) ~= "number" then return nil end
  local slot = id % SLOT_SPAN
  if comp_task[slot] and comp_seq[slot] * SLOT_SPAN + slot == id then return slot end
  return nil
end

local function release_slot(slot)
  local task = comp_task[slot]
  comp_task[slot], comp_gen[slot] = false, false
  local seq = comp_seq[slot] + 1
  comp_seq[slot] = seq < SEQ_WRAP and seq or 0
  nfree = nfree + 1
  free_slots[nfree] = slot
  task.world.pending = task.world.pending - 1
  return task
end

function sched.await(id, timeout, fname)
  local slot = live_slot(id)
  local task = slot and comp_task[slot]
  if not task or task ~= W.current then error((fname or "keel") .. ": bad completion id", 2) end
  timeout = check_timeout(fname, timeout)
  local w = task.world
  local gen = comp_gen[slot]
  local tid
  if timeout then tid = arm(w, C.keel_clock_update(w.clock) + timeout, task, gen) end
  local a, b, c = park(task)
  if tid and a ~= TIMEOUT then disarm(w, tid, task, gen) end
  -- woken by complete, the slot is already released; by a timeout or a
  -- cancel, it is still ours
  if live_slot(id) then release_slot(slot) end
  if a == TIMEOUT then
    if task.cancelled then raise_cancelled(task) end
    return nil, "timeout"
  end
  if a == CANCEL then raise_cancelled(task) end
  return a, b, c
end

-- Called from C (keel_rt_complete) with the completion's values.
function sched.complete(id, a, b, c)
  local slot = live_slot(id)
  if not slot then return false end
  local gen = comp_gen[slot]
  local task = release_slot(slot)
  return wake(task, gen, a, b, c)
end

-- Tasks ------------------------------------------------------------------------

-- A printable form of any error value. It never raises: an error object's
-- __tostring may itself fail, and the report of a failure must not become a
-- second one.
local function describe(e)
  local t = type(e)
  if t == "string" then return e end
  if t == "number" then return tostring(e) end
  local ok, s = pcall(tostring, e)
  if not ok then
    return "(error object is a " .. t .. " value; its __tostring raised: "
      .. (type(s) == "string" and s or type(s)) .. ")"
  end
  if type(s) ~= "string" then return "(error object is a " .. t .. " value)" end
  local mt = getmetatable(e)
  if type(mt) == "table" and rawget(mt, "__tostring") then return s end
  return "(error object is a " .. t .. " value: " .. s .. ")"
end
sched.describe = describe

-- The message and stack of an error, without the scheduler's own frames:
-- the trace ends where the task (or the deferred function) began.
local function trace_of(e, level)
  local tb = traceback(describe(e), level + 1)
  local cut = tb:find("\n\t%[C%]: in function 'xpcall'")
  return cut and tb:sub(1, cut - 1) or tb
end

-- The task's error travels unchanged (any Lua value: a caller may compare
-- it, match it, or retry on it); its traceback is kept beside it, for
-- task:traceback() and for the report of a failure nobody joined.
local function on_error(e)
  if e ~= CANCELLED then
    local task = W and W.current
    if task then task.tb = trace_of(e, 2) end
  end
  return e
end

local function report(msg)
  io.stderr:write(msg, "\n")
  io.stderr:flush()
end
sched.report = report

local function defer_error(e) return trace_of(e, 2) end

local function run_defers(task)
  local defers = task.defers
  if not defers then return end
  task.defers = nil
  task.cancelled = false -- cleanup may itself wait (release a remote lease)
  task.cleaning = true
  for i = #defers, 1, -1 do
    local ok, err = xpcall(defers[i], defer_error)
    if not ok then report("keel: error in deferred cleanup: " .. err) end
  end
end

local ONE = {}
-- Results: none, one (kept in r1, no table: the common case stays
-- allocation-free) or several (packed in res).
local function finish(task, ok, ...)
  local w = task.world
  if task.defers then run_defers(task) end
  w.alive = w.alive - 1
  if ok then
    task.state = "done"
    local n = select("#", ...)
    if n == 1 then task.xs, task.x1 = ONE, ...
    elseif n > 1 then task.xs = { n = n, ... }
    else task.xs = false end
  else
    local err = ...
    if err == CANCELLED then
      task.state = "cancelled"
      task.err = "cancelled"
    else
      task.state = "failed"
      task.err = err
      if not task.observed and not task.joiners and task ~= w.main then
        w.unobserved[#w.unobserved + 1] = task
      end
    end
  end
  local joiners = task.joiners
  if joiners then joiners:wake_all() end
  local watchers = task.watchers
  if watchers then
    for i = 1, #watchers do watchers[i](task) end
  end
end

local function body(task)
  while true do
    local args = task.xs
    if task.cancelled then
      finish(task, false, CANCELLED) -- cancelled before it ever ran
    elseif args == false then
      finish(task, xpcall(task.fn, on_error))
    elseif args ~= true then
      finish(task, xpcall(task.fn, on_error, unpack(args, 1, args.n)))
    else
      finish(task, xpcall(task.fn, on_error, task.x1))
    end
    task = yield(DONE)
  end
end

local function step(w, task)
  w.current = task
  local co = task.co
  local ok, m
  if co then
    local a, b, c = task.v1, task.v2, task.v3
    task.v1, task.v2, task.v3 = nil, nil, nil
    ok, m = coresume(co, a, b, c)
  else
    local np = w.npool
    if np > 0 then
      co = w.pool[np]
      w.pool[np] = nil
      w.npool = np - 1
    else
      co = cocreate(body)
    end
    task.co = co
    ok, m = coresume(co, task)
  end
  w.current = nil
  if m == ABANDON and ok then
    -- Run the task again from a fresh coroutine: body sees it cancelled and
    -- finishes it (cleanups included); the swallowing stack is dropped.
    task.co = false
    push_ready(w, task)
  elseif m == DONE and ok then
    task.co = nil
    if w.npool < POOL_MAX then
      local np = w.npool + 1
      w.pool[np] = co
      w.npool = np
    end
  elseif not ok then
    -- Only the scheduler's own code can fail outside the task's xpcall.
    report("keel: internal scheduler error: " .. describe(m))
    if task.state ~= "done" and task.state ~= "failed" then
      task.state = "failed"
      task.err = m
      w.alive = w.alive - 1
    end
  end
end

-- A task's fields are laid out once, here, so the common life of a task
-- (spawn, park, wake, finish with one result) never grows its table:
--   xs, x1  arguments before the task runs (xs = false: none, true: one in
--           x1, or a packed table), its results after it ends (false: none,
--           ONE: one in x1, or a packed table)
--   v1..v3  values handed over by the wake that resumes it
local function spawn_in(w, fn, n, ...)
  local task = setmetatable({ fn = fn, world = w, gen = 0, state = "running", co = false, xs = false }, Task)
  if n == 1 then
    task.xs, task.x1 = true, ...
  elseif n > 1 then
    task.xs = { n = n, ... }
  end
  w.alive = w.alive + 1
  push_ready(w, task)
  return task
end

function sched.spawn(fn, ...)
  if type(fn) ~= "function" then
    local mt = getmetatable(fn)
    if not (mt and mt.__call) then
      error("keel.spawn: argument 'fn' must be a function (got " .. type(fn) .. ")", 2)
    end
  end
  if not W then error("keel.spawn: no runtime world (is keel running?)", 2) end
  return spawn_in(W, fn, select("#", ...), ...)
end

function sched.spawn_main(w, fn, ...)
  local task = spawn_in(w, fn, select("#", ...), ...)
  w.main = task
  return task
end

local function is_task(t) return getmetatable(t) == Task end
sched.is_task = is_task

function Task:status()
  if not is_task(self) then error("task:status: call it as a method (task:status())", 2) end
  return self.state
end

local function results(task)
  local state = task.state
  if state == "done" then
    local res = task.xs
    if res == ONE then return true, task.x1 end
    if res then return true, unpack(res, 1, res.n) end
    return true
  end
  return false, task.err
end
sched.results = results

-- The failed task's error message and stack traceback (a string), or nil
-- when the task did not fail.
function Task:traceback()
  if not is_task(self) then error("task:traceback: call it as a method (task:traceback())", 2) end
  if self.state ~= "failed" then return nil end
  return self.tb or describe(self.err)
end

function Task:join(timeout)
  if not is_task(self) then error("task:join: call it as a method (task:join())", 2) end
  local state = self.state
  -- A joined failure is reported to the joiner, not on stderr. (Marking a
  -- successful task would only grow its table.)
  if state ~= "done" then self.observed = true end
  if (state == "done" or state == "failed" or state == "cancelled") and timeout == nil then
    return results(self) -- nothing to wait for
  end
  local me = need_task("task:join", 2)
  if me == self then error("task:join: a task cannot join itself", 2) end
  timeout = check_timeout("task:join", timeout)
  if self.state ~= "done" and self.state ~= "failed" and self.state ~= "cancelled" then
    self.joiners = self.joiners or sched.waitqueue()
    local ok, err = self.joiners:wait(timeout, "task:join")
    -- A task that ended at the very instant of the timeout (and ran before
    -- us) counts as finished: its result is there, report it.
    if ok == nil and err == "timeout" and self.state ~= "done" and self.state ~= "failed"
      and self.state ~= "cancelled" then
      return false, "timeout"
    end
  end
  return results(self)
end

function Task:cancel()
  if not is_task(self) then error("task:cancel: call it as a method (task:cancel())", 2) end
  local s = self.state
  if s == "done" or s == "failed" or s == "cancelled" then return false end
  if not self.cancelled then self.cancelled = 0 end
  if self.state == "waiting" then wake(self, self.gen, CANCEL) end
  return true
end

-- Runs fn when the task ends, however it ends.
function Task:_watch(fn)
  self.watchers = self.watchers or {}
  self.watchers[#self.watchers + 1] = fn
end

function Task:__tostring()
  return "keel.task(" .. self.state .. ")"
end

function sched.defer(fn, fname)
  fname = fname or "keel.defer"
  if type(fn) ~= "function" then
    error(fname .. ": argument 'fn' must be a function (got " .. type(fn) .. ")", 2)
  end
  local task = W and W.current
  if not task then error(fname .. ": must be called inside a task", 2) end
  task.defers = task.defers or {}
  task.defers[#task.defers + 1] = fn
end

-- Timer objects (keel.after / keel.every) ----------------------------------------

local Timer = {}
Timer.__index = Timer

-- A timer's fields: id (armed C id, or false); set only once needed, so a
-- million one-shot timers stay small tables: last (the task of its latest
-- body), fired / skipped (counts), stopped, overlap (keel.every starts a
-- body even while the previous one runs).
function sched.after(ms, fn, interval, overlap)
  local w = W
  -- Relative to the loop's cached time, as libuv and Node do: arming a
  -- million timers costs no clock reads.
  local deadline = w.clock.now_ms + ms
  local t = setmetatable({ fn = fn, world = w, interval = interval or false, deadline = deadline, id = false },
    Timer)
  if overlap then t.overlap = true end
  t.id = arm(w, deadline, t, false)
  return t
end

-- A fired timer's body is a task queued behind others; stop() may run
-- first, in the same turn. The body checks the timer as it starts, so once
-- stop() has returned no callback begins.
local function timer_body(t)
  if t.stopped then return end
  t.fired = (t.fired or 0) + 1
  t.fn()
end

local function never_started(task) return task and task.co == false end

function Timer:stop()
  if getmetatable(self) ~= Timer then error("timer:stop: call it as a method (timer:stop())", 2) end
  if self.stopped then return false end
  self.stopped = true
  local pending = never_started(self.last) or false
  if self.id then
    disarm(self.world, self.id, self, false)
    self.id = false
    if self.unrefd then self.world.unrefd = self.world.unrefd - 1 end
    pending = true
  end
  return pending
end

local function body_running(task)
  local s = task and task.state
  return s == "running" or s == "waiting"
end

function Timer:stats()
  if getmetatable(self) ~= Timer then error("timer:stats: call it as a method (timer:stats())", 2) end
  return { fired = self.fired or 0, skipped = self.skipped or 0, armed = self.id ~= false,
    running = body_running(self.last) and not never_started(self.last), stopped = self.stopped or false }
end

-- An unreferenced timer does not keep the process alive on its own.
function Timer:unref()
  if getmetatable(self) ~= Timer then error("timer:unref: call it as a method (timer:unref())", 2) end
  if not self.unrefd and self.id then
    self.unrefd = true
    self.world.unrefd = self.world.unrefd + 1
  end
  return self
end

local function fire_timer(w, t)
  t.id = false
  if t.interval then
    local now = w.clock.now_ms
    local next_deadline = t.deadline + t.interval
    if next_deadline <= now then
      -- Late (the loop was busy): drop the missed ticks but stay on the
      -- t0 + k*interval grid, so one stall does not shift every later tick.
      next_deadline = t.deadline + (math.floor((now - t.deadline) / t.interval) + 1) * t.interval
      if next_deadline <= now then next_deadline = next_deadline + t.interval end
      -- An interval below the clock's resolution at now (1e-12 ms, or any
      -- interval once a simulated clock is huge) adds nothing: re-armed at
      -- now it would fire again in this same pass, forever. Step to the next
      -- representable time instead; at an infinite clock nothing is later.
      if next_deadline <= now then next_deadline = now + now * 2 ^ -52 end
    end
    t.deadline = next_deadline
    if next_deadline > now then
      t.id = arm(w, next_deadline, t, false)
    elseif t.unrefd then
      w.unrefd = w.unrefd - 1
    end
  elseif t.unrefd then
    w.unrefd = w.unrefd - 1
  end
  if not t.overlap and body_running(t.last) then
    t.skipped = (t.skipped or 0) + 1
  else
    t.last = spawn_in(w, timer_body, 1, t)
  end
end

local function fire_expired(w)
  local timers, now = w.timers, w.clock.now_ms
  local objs, gens = w.slot_obj, w.slot_gen
  while true do
    local id = C.keel_timers_pop_expired(timers, now)
    if id < 0 then return end
    local obj, gen = objs[id], gens[id]
    objs[id], gens[id] = nil, nil
    if gen then
      wake(obj, gen, TIMEOUT)
    elseif obj then
      fire_timer(w, obj)
    end
  end
end

-- The loop -----------------------------------------------------------------------

local function report_unobserved(w)
  local list = w.unobserved
  if #list == 0 then return end
  w.unobserved = {}
  for i = 1, #list do
    local task = list[i]
    if not task.observed then
      report("keel: task failed and nobody joined it: " .. (task.tb or describe(task.err)))
    end
  end
end

-- Due timers fire between batches, but the clock is only re-read every few
-- hundred resumes: a tight sleep(0) loop should not pay a clock read per
-- round trip.
local REFRESH_EVERY = 256

local function run_ready(w, budget)
  local done, since_refresh = 0, 0
  while w.nready > 0 and done < budget and not w.exit_code do
    local run, n = w.ready, w.nready
    w.ready, w.nready = w.spare, 0
    for i = 1, n do
      local task = run[i]
      run[i] = nil
      step(w, task)
      if w.exit_code then
        -- keel.exit: drop the rest of this batch.
        for j = i + 1, n do run[j] = nil end
        break
      end
    end
    w.spare = run
    done = done + n
    since_refresh = since_refresh + n
    if since_refresh >= REFRESH_EVERY then
      since_refresh = 0
      C.keel_clock_update(w.clock)
    end
    fire_expired(w)
  end
end

-- States returned to the host after a tick. PARKED: tasks wait and only
-- something from outside can wake them (a signal for a shutdown handler, a
-- host's event for an on_event handler), so the host waits for it; STUCK:
-- nothing at all can.
sched.READY, sched.WAITING, sched.DONE, sched.STUCK, sched.EXIT, sched.PARKED = 1, 0, 2, 3, 4, 5

-- A registered shutdown handler is a way to be woken until shutdown begins
-- ("serve until SIGTERM" is a task waiting for ever), and so is an on_event
-- handler in a host that can post events.
local function wakeable_from_outside(w)
  if not w.shutting_down and #w.shutdown_handlers > 0 then return true end
  return w.host_events and next(w.events) ~= nil
end

-- One turn: fire due timers, run runnable tasks (bounded), and in virtual
-- time jump the clock whenever nothing else can happen first. Returns the
-- state and the next timer deadline (ms, or -1).
function sched.tick(w)
  local prev = W
  W = w
  local clock, timers = w.clock, w.timers
  C.keel_clock_update(clock)
  fire_expired(w)
  local budget = TICK_BUDGET -- virtual-time jumps per tick
  while true do
    run_ready(w, TICK_BUDGET)
    if w.virtual and w.nready == 0 and w.pending == 0 and not w.exit_code then
      local nxt = C.keel_timers_next(timers)
      if nxt < 0 then break end
      -- Only unref'd timers left: like real time, the world is done (no task
      -- alive) or stuck (tasks wait, and unref'd timers do not count as a
      -- way to wake them). Jumping on would tick an unref'd keel.every forever.
      if C.keel_timers_count(timers) - w.unrefd <= 0 then break end
      -- Out of budget: stop before jumping, so the host sees the world with
      -- nothing runnable (a keel.sim whose tasks are done can end there).
      if budget <= 0 then break end
      C.keel_clock_advance_to(clock, nxt)
      fire_expired(w)
      budget = budget - 1
    else
      break
    end
  end
  report_unobserved(w)
  W = prev
  local nxt = C.keel_timers_next(timers)
  if w.exit_code then return sched.EXIT, nxt end
  if w.nready > 0 then return sched.READY, nxt end
  local armed = C.keel_timers_count(timers) - w.unrefd
  if w.alive == 0 and armed <= 0 then return sched.DONE, nxt end
  if armed <= 0 and w.pending == 0 then
    return wakeable_from_outside(w) and sched.PARKED or sched.STUCK, nxt
  end
  return sched.WAITING, nxt
end

function sched.request_exit(w, code)
  w.exit_code = code
end

-- Runs fn as the main task of world w until it and everything it spawned is
-- done, entirely inside the caller (used by keel.sim). Returns fn's results or
-- raises its error.
function sched.run_nested(w, fn, ...)
  local main = sched.spawn_main(w, fn, ...)
  main.observed = true
  while true do
    local state = sched.tick(w)
    if state == sched.DONE then break end
    -- As a real run exits when its main task fails, so does a simulation:
    -- waiting for "everything it spawned" would never end while a
    -- keel.every is armed. The rest of the world is abandoned.
    if main.state == "failed" or main.state == "cancelled" then break end
    if state == sched.EXIT then
      -- keel.exit inside a simulation cannot end the process from here, and
      -- the main task never finished: say so rather than raise nothing.
      error(string.format("keel.sim: keel.exit(%d) called inside the simulated world", w.exit_code), 0)
    end
    -- (No signal or host event reaches a simulated world.)
    if state == sched.STUCK or state == sched.PARKED then
      local n = w.alive
      -- The stranded tasks stay parked (their cleanup does not run): the world is abandoned.
      error(string.format("keel.sim: deadlock: %d task(s) wait forever with no timer to wake them", n), 0)
    end
    if state == sched.WAITING and w.pending > 0 then
      error("keel.sim: a task waits on real I/O inside a simulated world", 0)
    end
  end
  if main.state == "done" then return select(2, results(main)) end
  error(main.err, 0)
end

sched.TIMEOUT, sched.CANCEL = TIMEOUT, CANCEL
sched.Task = Task

-- Events from the host (keel.on_event) and shutdown (keel.on_shutdown) --------

function sched.on_event(w, name, fn) w.events[name] = fn end

function sched.deliver_event(w, name, payload)
  local fn = w.events[name]
  if not fn then return false end
  spawn_in(w, fn, 2, payload, name)
  return true
end

function sched.add_shutdown(w, fn, deadline_ms)
  -- (a callable table has no source line)
  local info = type(fn) == "function" and debug.getinfo(fn, "S")
  local where = info and (info.short_src .. ":" .. info.linedefined) or describe(fn)
  local handlers = w.shutdown_handlers
  handlers[#handlers + 1] = { fn = fn, deadline = deadline_ms, where = where, n = #handlers + 1 }
end

local function earliest_deadline(a, b)
  if a.deadline ~= b.deadline then return a.deadline < b.deadline end
  return a.n < b.n
end

local function ended(task)
  local s = task.state
  return s == "done" or s == "failed" or s == "cancelled"
end

-- Runs the shutdown handlers as tasks, all at once, and exits with code
-- once each has ended or been cut at its own deadline. A handler past its
-- deadline is cancelled and its keel.defer cleanups run (bounded by the
-- same deadline again) before the exit: what it held is released.
function sched.shutdown(w, code)
  if w.shutting_down then return end
  w.shutting_down = true
  local handlers = w.shutdown_handlers
  if #handlers == 0 then w.exit_code = code; return end
  spawn_in(w, function()
    local start = C.keel_clock_update(w.clock)
    local order = {}
    for i = 1, #handlers do
      local h = handlers[i]
      local task = spawn_in(w, h.fn, 0)
      task.observed = true -- reported here, with which handler it was
      order[i] = { task = task, deadline = h.deadline, where = h.where, n = h.n }
    end
    -- Earliest deadline first, every wait measured from the start: each
    -- handler is cut exactly at its own deadline, whatever the others do.
    table.sort(order, earliest_deadline)
    for i = 1, #order do
      local e, task = order[i], order[i].task
      local left = start + e.deadline - C.keel_clock_update(w.clock)
      task:join(left > 0 and left or 0)
      if not ended(task) then
        report(string.format("keel: shutdown handlers did not finish within %g ms: handler %d (%s) cancelled",
          e.deadline, e.n, e.where))
        task:cancel()
        task:join(e.deadline)
        if not ended(task) then
          report(string.format("keel: shutdown handler %d (%s): its cleanup did not finish within %g ms either",
            e.n, e.where, e.deadline))
        end
      elseif task.state == "failed" then
        report("keel: shutdown handler failed: " .. task:traceback())
      elseif task.state == "cancelled" then
        report(string.format("keel: shutdown handler %d (%s) was cancelled", e.n, e.where))
      end
    end
    w.exit_code = code
  end, 0)
end


return sched
