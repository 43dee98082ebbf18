-- Tasks: spawn/join/cancel/status, deferred cleanup, keel.all/any/race/timeout,
-- and argument checking of every task-level function.
local keel = require "keel"
local sched = require "keel.sched"
local proc = require "keelproc"

local sim = function(fn) return keel.sim({ seed = 1 }, fn) end

-- Runs fn with no task running (as a host callback would), returns pcall's results.
local function outside_task(fn)
  local prev = sched.set_world(sched.new_world({ virtual = true }))
  local ok, err = pcall(fn)
  sched.set_world(prev)
  return ok, err
end

-- Calls fn from a Lua frame of this file (not a tail call), so an error
-- raised at the caller's level carries this file's name.
local function errmsg(fn, ...)
  local args = { n = select("#", ...), ... }
  local ok, err = pcall(function() local r = fn(unpack(args, 1, args.n)) return r end)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("keel.spawn / task:join", function()
  it("returns true and every result, nils included", function()
    local t = keel.spawn(function(a, b, c) return a, b, c, nil end, 1, nil, "x")
    local r = { n = select("#", t:join()), t:join() }
    assert.same({ n = 5, true, 1, nil, "x", nil }, r)
  end)

  it("passes arguments, including nil holes", function()
    local t = keel.spawn(function(...) return select("#", ...), ... end, nil, 2, nil)
    local ok, n, a, b, c = t:join()
    assert.is_true(ok)
    assert.same({ 3, nil, 2, nil }, { n, a, b, c })
  end)

  it("a task with no results joins as just true", function()
    local t = keel.spawn(function() end)
    assert.equal(1, select("#", t:join()))
    assert.is_true((t:join()))
  end)

  it("can be joined repeatedly and by many tasks", function()
    local t = keel.spawn(function() keel.sleep(1) return "v" end)
    local joiners = {}
    for i = 1, 5 do
      joiners[i] = keel.spawn(function() local ok, v = t:join() return ok and v end)
    end
    for i = 1, 5 do assert.same({ true, "v" }, { joiners[i]:join() }) end
    assert.same({ true, "v" }, { t:join() })
    assert.same({ true, "v" }, { t:join(0) })
  end)

  it("does not run the task until the spawner waits", function()
    local ran = false
    local t = keel.spawn(function() ran = true end)
    assert.is_false(ran)
    assert.equal("running", t:status())
    t:join()
    assert.is_true(ran)
  end)

  it("returns false and the error with file:line; the traceback is beside it (issue 9.7)", function()
    local t = keel.spawn(function() error("boom") end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("failed", t:status())
    assert.matches("task_spec%.lua:%d+: boom", err)
    assert.matches("stack traceback:", t:traceback())
  end)

  it("keeps a non-string error value as it is", function()
    local e = { code = 42 }
    local t = keel.spawn(function() error(e) end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal(e, err)
  end)

  it("join with a timeout gives false, 'timeout' and leaves the task running", function()
    sim(function()
      local t = keel.spawn(function() keel.sleep(100) return 7 end)
      local t0 = keel.now()
      assert.same({ false, "timeout" }, { t:join(40) })
      assert.equal(40, keel.now() - t0)
      assert.equal("waiting", t:status())
      assert.same({ true, 7 }, { t:join(60) })
      assert.equal(100, keel.now() - t0)
    end)
  end)

  it("join(0) on an unfinished task times out at once", function()
    sim(function()
      local t = keel.spawn(function() keel.sleep(5) end)
      local t0 = keel.now()
      assert.same({ false, "timeout" }, { t:join(0) })
      assert.equal(t0, keel.now())
      t:join()
    end)
  end)

  it("join(math.huge) waits without a timer", function()
    local t = keel.spawn(function() keel.sleep(1) return 1 end)
    assert.same({ true, 1 }, { t:join(math.huge) })
  end)

  it("a task cannot join itself", function()
    local t
    t = keel.spawn(function() return t:join() end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.matches("task:join: a task cannot join itself", err)
  end)

  it("nested spawns and joins propagate errors upwards", function()
    local outer = keel.spawn(function()
      local inner = keel.spawn(function() keel.sleep(1) error("deep") end)
      local ok, err = inner:join()
      assert(not ok)
      error(err, 0)
    end)
    local ok, err = outer:join()
    assert.is_false(ok)
    assert.matches("deep", err)
  end)

  it("keel.current() is the running task", function()
    local t
    t = keel.spawn(function() return keel.current() == t, keel.current():status() end)
    assert.same({ true, true, "running" }, { t:join() })
  end)

  it("tostring names the state", function()
    local t = keel.spawn(function() end)
    t:join()
    assert.equal("keel.task(done)", tostring(t))
  end)
end)

describe("task:status", function()
  it("moves running -> waiting -> done", function()
    local t = keel.spawn(function() keel.sleep(1) end)
    assert.equal("running", t:status())
    keel.sleep(0)
    assert.equal("waiting", t:status())
    t:join()
    assert.equal("done", t:status())
  end)

  it("is failed after an error and cancelled after a cancel", function()
    local a = keel.spawn(function() error("x") end)
    local b = keel.spawn(function() keel.sleep(1000) end)
    a:join()
    keel.sleep(0)
    b:cancel()
    b:join()
    assert.equal("failed", a:status())
    assert.equal("cancelled", b:status())
  end)

  it("a task woken but not yet resumed is running again", function()
    local ch = keel.channel(0)
    local t = keel.spawn(function() return ch:recv() end)
    keel.sleep(0)
    assert.equal("waiting", t:status())
    ch:send(1)
    assert.equal("running", t:status())
    assert.same({ true, 1 }, { t:join() })
  end)
end)

describe("task:cancel", function()
  it("makes the current waiting call fail with 'cancelled'", function()
    local seen
    local t = keel.spawn(function()
      local ok, err = pcall(keel.sleep, 10000)
      seen = { ok, tostring(err) }
      error(err, 0)
    end)
    keel.sleep(0)
    assert.is_true(t:cancel())
    assert.same({ false, "cancelled" }, { t:join() })
    assert.same({ false, "cancelled" }, seen)
    assert.equal("cancelled", t:status())
  end)

  it("a task that swallows the cancel fails again at its next wait", function()
    local second
    local t = keel.spawn(function()
      pcall(keel.sleep, 10000)
      local ok, err = pcall(keel.sleep, 0)
      second = { ok, tostring(err) }
      return "swallowed"
    end)
    keel.sleep(0)
    t:cancel()
    t:join()
    assert.same({ false, "cancelled" }, second)
  end)

  it("cancelling a running task makes its next waiting call fail", function()
    local after_cancel = false
    local t = keel.spawn(function()
      assert(keel.current():cancel())
      after_cancel = true -- keeps running until it waits
      keel.sleep(1)
      error("not reached")
    end)
    assert.same({ false, "cancelled" }, { t:join() })
    assert.is_true(after_cancel)
  end)

  it("cancel before start: the function never runs", function()
    local ran = false
    local cleaned = false
    local t = keel.spawn(function() ran = true; keel.defer(function() cleaned = true end) end)
    assert.is_true(t:cancel())
    assert.same({ false, "cancelled" }, { t:join() })
    assert.is_false(ran)
    assert.is_false(cleaned)
    assert.equal("cancelled", t:status())
  end)

  it("returns false for a task that already ended", function()
    local t = keel.spawn(function() end)
    t:join()
    assert.is_false(t:cancel())
    assert.equal("done", t:status())
    local f = keel.spawn(function() error("x") end)
    f:join()
    assert.is_false(f:cancel())
    assert.equal("failed", f:status())
  end)

  it("runs deferred cleanup, last registered first, and cleanup may wait", function()
    local log = {}
    local t = keel.spawn(function()
      keel.defer(function() log[#log + 1] = "first" end)
      keel.defer(function() keel.sleep(5); log[#log + 1] = "second (waited)" end)
      keel.sleep(10000)
    end)
    keel.sleep(0)
    t:cancel()
    assert.same({ false, "cancelled" }, { t:join() })
    assert.same({ "second (waited)", "first" }, log)
  end)

  it("cancels a task blocked in channel:recv without losing a later value", function()
    local ch = keel.channel(0)
    local a = keel.spawn(function() return ch:recv() end)
    local b = keel.spawn(function() return ch:recv() end)
    keel.sleep(0)
    a:cancel()
    assert.is_true(ch:send("v"))
    assert.same({ false, "cancelled" }, { a:join() })
    assert.same({ true, "v" }, { b:join() })
  end)

  it("cancels a task blocked in a join; the joined task carries on", function()
    local slow = keel.spawn(function() keel.sleep(5) return "slow" end)
    local j = keel.spawn(function() return slow:join() end)
    keel.sleep(0)
    j:cancel()
    assert.same({ false, "cancelled" }, { j:join() })
    assert.same({ true, "slow" }, { slow:join() })
  end)

  it("a cancelled sleeper's timer no longer wakes it", function()
    sim(function()
      local t = keel.spawn(function()
        pcall(keel.sleep, 100)
        -- the cancel flag stays, so wait through a channel-free path:
        return keel.now()
      end)
      keel.sleep(10)
      t:cancel()
      local ok, when = t:join()
      assert.is_true(ok)
      assert.equal(10, when)
    end)
  end)
end)

describe("keel.defer", function()
  it("runs when the task returns, fails, or is cancelled", function()
    local log = {}
    local ok_t = keel.spawn(function() keel.defer(function() log.ok = true end) return 1 end)
    local err_t = keel.spawn(function() keel.defer(function() log.err = true end) error("x") end)
    local can_t = keel.spawn(function() keel.defer(function() log.can = true end) keel.sleep(1e6) end)
    keel.sleep(0)
    can_t:cancel()
    ok_t:join(); err_t:join(); can_t:join()
    assert.same({ ok = true, err = true, can = true }, log)
  end)

  it("runs before joiners see the result", function()
    local released = false
    local t = keel.spawn(function() keel.defer(function() keel.sleep(1) released = true end) end)
    t:join()
    assert.is_true(released)
  end)

  it("an error in cleanup does not change the task's result", function()
    local code, _, err = proc.eval([[
      local keel = require "keel"
      local t = keel.spawn(function() keel.defer(function() error("cleanup broke") end) return 5 end)
      local ok, v = t:join()
      io.write(tostring(ok), " ", tostring(v))
    ]])
    assert.equal(0, code)
    assert.matches("error in deferred cleanup: .*cleanup broke", err)
  end)

  it("rejects a non-function and use outside a task", function()
    assert.matches("keel.defer: argument 'fn' must be a function", errmsg(keel.defer, 1))
    local ok, err = outside_task(function() keel.defer(function() end) end)
    assert.is_false(ok)
    assert.matches("keel.defer: must be called inside a task", err)
  end)
end)

describe("unobserved errors", function()
  it("are printed on stderr with the traceback when nobody joins", function()
    local code, out, err = proc.eval([[
      local keel = require "keel"
      keel.spawn(function() error("lost in a task") end)
      keel.sleep(1)
      io.write("main done")
    ]])
    assert.equal(0, code)
    assert.equal("main done", out)
    assert.matches("task failed and nobody joined it", err)
    assert.matches("%(command line%):2: lost in a task", err)
    assert.matches("stack traceback:", err)
  end)

  it("are not printed when the task is joined, nor for cancelled tasks", function()
    local code, _, err = proc.eval([[
      local keel = require "keel"
      local t = keel.spawn(function() error("seen") end)
      assert(not t:join())
      local c = keel.spawn(function() keel.sleep(1e6) end)
      keel.sleep(0)
      c:cancel()
      keel.sleep(1)
    ]])
    assert.equal(0, code)
    assert.equal("", err)
  end)
end)

describe("waiting outside a task", function()
  it("raises a clear error", function()
    local ok, err = outside_task(function() keel.sleep(1) end)
    assert.is_false(ok)
    assert.matches("keel.sleep: must be called inside a task", err)
    ok, err = outside_task(function() keel.channel(0):recv() end)
    assert.is_false(ok)
    assert.matches("channel:recv: must be called inside a task", err)
    ok, err = outside_task(function() keel.timeout(1, function() end) end)
    assert.is_false(ok)
    assert.matches("keel.timeout: must be called inside a task", err)
    ok, err = outside_task(function() keel.all({ function() end }) end)
    assert.is_false(ok)
    assert.matches("keel.all: must be called inside a task", err)
  end)

  it("join outside a task raises a clear error", function()
    local t = keel.spawn(function() keel.sleep(1) end)
    local ok, err = outside_task(function() t:join() end)
    assert.is_false(ok)
    assert.matches("task:join: must be called inside a task", err)
    t:join()
  end)

  it("a plain coroutine inside a task may not wait", function()
    local co = coroutine.wrap(function() keel.sleep(1) end)
    local ok, err = pcall(co)
    assert.is_false(ok)
    assert.matches("keel.sleep: must be called from the task itself", err)
    keel.sleep(1) -- the task itself is unharmed
  end)

  it("spawning outside a task is fine (host callbacks do it)", function()
    local t
    local prev = sched.world()
    local ok = outside_task(function()
      sched.set_world(prev)
      t = keel.spawn(function() return "ok" end)
    end)
    assert.is_true(ok)
    assert.same({ true, "ok" }, { t:join() })
  end)
end)

describe("keel.all", function()
  it("returns the results in argument order, not finish order", function()
    sim(function()
      local t0 = keel.now()
      local a, b, c = keel.all({
        function() keel.sleep(30) return "a" end,
        function() keel.sleep(10) return "b" end,
        function() keel.sleep(20) return "c" end,
      })
      assert.same({ "a", "b", "c" }, { a, b, c })
      assert.equal(30, keel.now() - t0) -- concurrent: the longest, not the sum
    end)
  end)

  it("keeps nil results in place", function()
    local r = { n = 0 }
    local function pack(...) r = { n = select("#", ...), ... } end
    pack(keel.all({ function() return nil end, function() return 2 end }))
    assert.same({ n = 2, nil, 2 }, r)
  end)

  it("with no functions returns nothing", function()
    assert.equal(0, select("#", keel.all({})))
  end)

  it("raises the first error in time and cancels the rest", function()
    sim(function()
      local cleaned = {}
      local finished = {}
      local ok, err = pcall(keel.all, {
        function() keel.defer(function() cleaned[1] = true end) keel.sleep(100) finished[1] = true end,
        function() keel.sleep(20) error("late error") end,
        function() keel.sleep(10) error("first error") end,
      })
      assert.is_false(ok)
      assert.matches("first error", err)
      assert.not_matches("late error", err)
      keel.sleep(200)
      assert.is_true(cleaned[1])
      assert.is_nil(finished[1])
    end)
  end)

  it("handles thousands of functions, and refuses more than it can return", function()
    local fns = {}
    for i = 1, 7000 do fns[i] = function() keel.sleep(1) return i end end
    local r = { keel.all(fns) }
    assert.equal(7000, #r)
    assert.equal(1234, r[1234])
    local ran = false
    fns[7001] = function() ran = true end
    assert.matches("keel.all: at most 7000 functions %(got 7001%)", errmsg(keel.all, fns))
    keel.sleep(0)
    assert.is_false(ran)
  end)

  it("cancelling the caller cancels every child", function()
    sim(function()
      local done = 0
      local t = keel.spawn(function()
        keel.all({
          function() keel.sleep(50) done = done + 1 end,
          function() keel.sleep(60) done = done + 1 end,
        })
      end)
      keel.sleep(10)
      t:cancel()
      assert.same({ false, "cancelled" }, { t:join() })
      keel.sleep(100)
      assert.equal(0, done)
    end)
  end)
end)

describe("keel.any", function()
  it("returns every result of the first to finish and cancels the losers", function()
    sim(function()
      local loser_cleaned = false
      local t0 = keel.now()
      local a, b = keel.any({
        function() keel.defer(function() loser_cleaned = true end) keel.sleep(50) return "slow" end,
        function() keel.sleep(10) return "fast", 2 end,
      })
      assert.same({ "fast", 2 }, { a, b })
      assert.equal(10, keel.now() - t0)
      keel.sleep(0)
      assert.is_true(loser_cleaned)
      keel.sleep(100) -- nothing else finishes later and nothing complains
    end)
  end)

  -- Issue 9.8 makes keel.any return the first success; "the first to
  -- finish, even a failure" is now keel.race (see spec/all_any_spec.lua).
  it("keel.race raises the error of the first to finish", function()
    sim(function()
      local ok, err = pcall(keel.race, {
        function() keel.sleep(50) return "slow" end,
        function() keel.sleep(10) error("fast failure") end,
      })
      assert.is_false(ok)
      assert.matches("fast failure", err)
    end)
  end)

  it("rejects an empty list", function()
    assert.matches("keel.any: argument 'fns' must not be empty", errmsg(keel.any, {}))
  end)
end)

describe("keel.timeout", function()
  it("returns true and the results when fn finishes in time", function()
    sim(function()
      assert.same({ true, "r", 3 }, { keel.timeout(100, function(x) keel.sleep(99) return "r", x end, 3) })
    end)
  end)

  it("returns nil, 'timeout' at the deadline and cancels the inner work", function()
    sim(function()
      local cleaned, finished = false, false
      local t0 = keel.now()
      local ok, err = keel.timeout(50, function()
        keel.defer(function() cleaned = true end)
        keel.sleep(1000)
        finished = true
      end)
      assert.same({ nil, "timeout" }, { ok, err })
      assert.equal(50, keel.now() - t0)
      keel.sleep(0)
      assert.is_true(cleaned)
      keel.sleep(2000)
      assert.is_false(finished)
    end)
  end)

  it("work needing exactly the deadline times out; one ms less succeeds", function()
    sim(function()
      assert.same({ nil, "timeout" }, { keel.timeout(50, function() keel.sleep(50) return 1 end) })
      assert.same({ true, 1 }, { keel.timeout(50, function() keel.sleep(49) return 1 end) })
    end)
  end)

  it("raises the inner error", function()
    local ok, err = pcall(keel.timeout, 100, function() error("inner boom") end)
    assert.is_false(ok)
    assert.matches("task_spec%.lua:%d+: inner boom", err)
  end)

  it("an inner error value 'timeout' is raised, not mistaken for a timeout", function()
    local ok, err = pcall(keel.timeout, 100, function() error("timeout", 0) end)
    assert.is_false(ok)
    assert.matches("^timeout", err)
  end)

  it("cancelling the caller cancels the inner work", function()
    sim(function()
      local inner_finished = false
      local inner
      local t = keel.spawn(function()
        return keel.timeout(1000, function()
          inner = keel.current()
          keel.sleep(500)
          inner_finished = true
        end)
      end)
      keel.sleep(10)
      t:cancel()
      assert.same({ false, "cancelled" }, { t:join() })
      keel.sleep(1000)
      assert.is_false(inner_finished)
      assert.equal("cancelled", inner:status())
    end)
  end)

  it("timeout 0 times out unless fn finishes without waiting", function()
    sim(function()
      assert.same({ true, 1 }, { keel.timeout(0, function() return 1 end) })
      assert.same({ nil, "timeout" }, { keel.timeout(0, function() keel.sleep(1) end) })
    end)
  end)
end)

describe("keel.on_event", function()
  -- boot.event is what the host's keel_post delivers through.
  local boot = require "keel.boot"

  it("runs the handler as a task with (payload, name)", function()
    local got
    keel.on_event("spec.ping", function(payload, name)
      keel.sleep(1) -- a task: it may wait
      got = { payload, name, keel.current() ~= nil }
    end)
    boot.event("spec.ping", "data\0bytes")
    assert.is_nil(got)
    keel.sleep(5)
    assert.same({ "data\0bytes", "spec.ping", true }, got)
  end)

  it("a later registration replaces the handler; nil removes it", function()
    local log = {}
    keel.on_event("spec.swap", function() log[#log + 1] = "old" end)
    keel.on_event("spec.swap", function() log[#log + 1] = "new" end)
    boot.event("spec.swap", "")
    keel.sleep(0)
    assert.same({ "new" }, log)
    keel.on_event("spec.swap", nil)
    local code, _, err = proc.eval([[
      require("keel.boot").event("nobody.listens", "x")
    ]])
    assert.equal(0, code)
    assert.matches("event 'nobody.listens' has no handler", err)
  end)
end)

describe("bad arguments", function()
  local f = function() end
  local cases = {
    { "keel.spawn: argument 'fn' must be a function", keel.spawn, nil },
    { "keel.spawn: argument 'fn' must be a function", keel.spawn, "x" },
    { "keel.sleep: argument 'ms' must be a number >= 0", keel.sleep, "10" },
    { "keel.sleep: argument 'ms' must be a number >= 0", keel.sleep, -1 },
    { "keel.sleep: argument 'ms' must be a number >= 0", keel.sleep, 0 / 0 },
    { "keel.sleep: argument 'ms' must be a number >= 0", keel.sleep, nil },
    { "keel.after: argument 'ms' must be a number", keel.after, "1", f },
    { "keel.after: argument 'ms' must be a number", keel.after, -5, f },
    { "keel.after: argument 'fn' must be a function", keel.after, 1, nil },
    { "keel.every: argument 'ms' must be a number > 0", keel.every, 0, f },
    { "keel.every: argument 'ms' must be a number", keel.every, 0 / 0, f },
    { "keel.every: argument 'fn' must be a function", keel.every, 10, {} },
    { "keel.timeout: argument 'ms' must be a number", keel.timeout, "1", f },
    { "keel.timeout: argument 'ms' must be a number", keel.timeout, -1, f },
    { "keel.timeout: argument 'fn' must be a function", keel.timeout, 1, 1 },
    { "keel.all: argument 'fns' must be a table", keel.all, nil },
    { "keel.all: fns%[2%] must be a function", keel.all, { f, 2 } },
    { "keel.any: argument 'fns' must be a table", keel.any, "x" },
    { "keel.any: fns%[1%] must be a function", keel.any, { true } },
    { "keel.defer: argument 'fn' must be a function", keel.defer, "x" },
    { "keel.channel: argument 'capacity' must be an integer", keel.channel, "3" },
    { "keel.channel: argument 'capacity' must be an integer >= 0", keel.channel, -1 },
    { "keel.channel: argument 'capacity' must be an integer", keel.channel, 1.5 },
    { "keel.channel: argument 'capacity' must be an integer", keel.channel, math.huge },
    { "keel.random: argument 'm' must be an integer", keel.random, "x" },
    { "keel.random: argument 'n' must be an integer", keel.random, 1, 2.5 },
    { "keel.random: interval is empty", keel.random, 5, 1 },
    { "keel.sim: options must be a table", keel.sim, "x", f },
    { "keel.sim: argument 'fn' must be a function", keel.sim, { seed = 1 } },
    { "keel.sim: option 'seed' must be an integer >= 0", keel.sim, { seed = -1 }, f },
    { "keel.sim: option 'seed' must be an integer", keel.sim, { seed = 1.5 }, f },
    { "keel.sim: option 'seed' must be an integer in %[0, 99999999999999%]", keel.sim, { seed = 2 ^ 60 }, f },
    { "keel.sim: unknown option 'sed'", keel.sim, { sed = 1 }, f },
    { "keel.sim: option 'epoch_ms' must be a number", keel.sim, { epoch_ms = "now" }, f },
    { "keel.on_event: argument 'name' must be a string", keel.on_event, 1, f },
    { "keel.on_event: argument 'fn' must be a function", keel.on_event, "x", 1 },
    { "keel.on_shutdown: argument 'fn' must be a function", keel.on_shutdown, nil },
    { "keel.on_shutdown: option 'deadline_ms' must be a number >= 0", keel.on_shutdown, f, { deadline_ms = -1 } },
    { "keel.on_shutdown: unknown option 'deadline'", keel.on_shutdown, f, { deadline = 1 } },
    { "keel.exit: argument 'code' must be an integer in %[0, 255%]", keel.exit, 256 },
    { "keel.exit: argument 'code' must be an integer in %[0, 255%]", keel.exit, "1" },
    { "keel.exit: argument 'code' must be an integer in %[0, 255%]", keel.exit, -1 },
  }
  for _, c in ipairs(cases) do
    it(c[1]:gsub("%%", "") .. " (" .. tostring(c[3]) .. ")", function()
      local err = errmsg(c[2], select(3, unpack(c, 1, 5)))
      assert.matches(c[1], err)
      -- The error points at the caller (this file), not into keel.
      assert.matches("task_spec%.lua:%d+:", err)
    end)
  end

  it("task methods called with '.' or a bad timeout name the method", function()
    local t = keel.spawn(function() keel.sleep(1) end)
    assert.matches("task:join: call it as a method", errmsg(t.join))
    assert.matches("task:join: call it as a method", errmsg(t.join, {}))
    assert.matches("task:cancel: call it as a method", errmsg(t.cancel, 1))
    assert.matches("task:status: call it as a method", errmsg(t.status))
    assert.matches("task:join: timeout must be a number >= 0", errmsg(t.join, t, "1"))
    assert.matches("task:join: timeout must be a number >= 0", errmsg(t.join, t, -1))
    assert.matches("task:join: timeout must be a number >= 0", errmsg(t.join, t, 0 / 0))
    t:join()
  end)

  it("timer methods called with '.' name the method", function()
    local tm = keel.after(1, function() end)
    assert.matches("timer:stop: call it as a method", errmsg(tm.stop))
    assert.matches("timer:unref: call it as a method", errmsg(tm.unref, 5))
    tm:stop()
  end)

  it("a callable table is accepted as a function", function()
    local callable = setmetatable({}, { __call = function(_, x) return x * 2 end })
    assert.same({ true, 42 }, { keel.spawn(callable, 21):join() })
  end)
end)
