-- keel.after / keel.every timer objects: stop() is final (issue 9.2), a
-- repeating timer skips a tick while its previous body runs unless asked to
-- overlap (9.4), and the timer reports what it did (tm:stats()).
local keel = require "keel"

local sim = function(fn) return keel.sim({ seed = 5 }, fn) end

describe("timer:stop()", function()
  -- At t = 10 the stopper (its sleep armed first) runs before the tick's
  -- body, which is already queued as a task in that same turn.
  it("no keel.every callback starts after stop() returns, even one queued in the same turn", function()
    sim(function()
      local calls, stopped_ret = 0, nil
      local tm
      local stopper = keel.spawn(function()
        keel.sleep(10)
        stopped_ret = tm:stop()
      end)
      keel.sleep(0) -- the stopper arms its sleep before the timer is armed
      tm = keel.every(10, function() calls = calls + 1 end)
      keel.defer(function() tm:stop() end)
      stopper:join()
      keel.sleep(50)
      assert.equal(0, calls)
      assert.is_true(stopped_ret)
      assert.is_false(tm:stop())
      assert.equal(0, tm:stats().fired)
    end)
  end)

  it("no keel.after callback starts after stop() returns, even one queued in the same turn", function()
    sim(function()
      local calls, stopped_ret = 0, nil
      local tm
      local stopper = keel.spawn(function()
        keel.sleep(10)
        stopped_ret = tm:stop()
      end)
      keel.sleep(0) -- the stopper arms its sleep before the timer is armed
      tm = keel.after(10, function() calls = calls + 1 end)
      stopper:join()
      keel.sleep(50)
      assert.equal(0, calls)
      assert.is_true(stopped_ret)
    end)
  end)

  it("returns false once the callback has started, and stop() from inside the callback ends a keel.every", function()
    sim(function()
      local calls = 0
      local tm
      tm = keel.every(5, function()
        calls = calls + 1
        if calls == 3 then assert(tm:stop()) end
      end)
      keel.defer(function() tm:stop() end)
      keel.sleep(100)
      assert.equal(3, calls)
      assert.is_false(tm:stop())
      local once = keel.after(1, function() end)
      keel.sleep(5)
      assert.is_false(once:stop())
      assert.equal(1, once:stats().fired)
    end)
  end)
end)

describe("keel.every overlap", function()
  it("by default skips a tick while the previous body still runs, and counts it", function()
    sim(function()
      local running, max_running, started = 0, 0, 0
      local tm = keel.every(1, function()
        started = started + 1
        running = running + 1
        if running > max_running then max_running = running end
        keel.sleep(3.5)
        running = running - 1
      end)
      keel.defer(function() tm:stop() end) -- a failed assertion must not leave it ticking
      keel.sleep(2000.5)
      tm:stop()
      assert.equal(1, max_running)
      local st = tm:stats()
      assert.equal(started, st.fired)
      -- a body spans ticks t..t+3.5: it runs at t = 1, 5, 9, ... and the
      -- three ticks in between are skipped
      assert.equal(500, st.fired)
      assert.equal(1500, st.skipped)
      keel.sleep(10)
      assert.equal(0, running)
    end)
  end)

  it("{overlap = true} starts a body on every tick", function()
    sim(function()
      local running, max_running = 0, 0
      local tm = keel.every(1, function()
        running = running + 1
        if running > max_running then max_running = running end
        keel.sleep(3.5)
        running = running - 1
      end, { overlap = true })
      keel.defer(function() tm:stop() end)
      keel.sleep(100.5)
      tm:stop()
      assert.equal(4, max_running)
      assert.same({ fired = 100, skipped = 0, armed = false, running = true, stopped = true },
        tm:stats())
      keel.sleep(10)
      assert.equal(0, running)
    end)
  end)

  it("a failed body does not stop the ticks", function()
    sim(function()
      local calls = 0
      local tm = keel.every(10, function()
        calls = calls + 1
        error("tick broke")
      end)
      keel.defer(function() tm:stop() end)
      keel.sleep(35)
      tm:stop()
      assert.equal(3, calls)
      assert.equal(0, tm:stats().skipped)
    end)
  end)

  it("rejects bad options", function()
    local ok, err = pcall(keel.every, 10, function() end, { overlap = "yes" })
    assert.is_false(ok)
    assert.matches("keel.every: option 'overlap' must be a boolean", err)
    ok, err = pcall(keel.every, 10, function() end, { overlapp = true })
    assert.is_false(ok)
    assert.matches("keel.every: unknown option 'overlapp'", err)
    ok, err = pcall(keel.every, 10, function() end, 5)
    assert.is_false(ok)
    assert.matches("keel.every: options must be a table", err)
  end)

  it("stats() reports a fresh timer", function()
    sim(function()
      local tm = keel.every(10, function() end)
      keel.defer(function() tm:stop() end)
      assert.same({ fired = 0, skipped = 0, armed = true, running = false, stopped = false }, tm:stats())
      tm:stop()
      local ok, err = pcall(tm.stats)
      assert.is_false(ok)
      assert.matches("timer:stats: call it as a method", err)
    end)
  end)
end)
