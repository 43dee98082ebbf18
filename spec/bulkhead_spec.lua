local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 5 }, fn) end

describe("keel.bulkhead", function()
  it("runs up to max at once and refuses the rest when the queue is full", function()
    sim(function()
      local bh = keel.bulkhead { max = 2 }
      local running, peak = 0, 0
      local function work()
        running = running + 1
        if running > peak then peak = running end
        keel.sleep(10)
        running = running - 1
        return "done"
      end
      local results = {}
      local tasks = {}
      for i = 1, 3 do tasks[i] = keel.spawn(function() results[i] = { bh:run(work) } end) end
      for i = 1, 3 do tasks[i]:join() end
      assert.equal(2, peak)
      assert.same({ "done" }, results[1])
      assert.same({ "done" }, results[2])
      assert.same({ nil, "full" }, results[3])
      assert.equal(1, bh:stats().rejected)
    end)
  end)

  it("queues FIFO and hands a freed permit to the longest waiter", function()
    sim(function()
      local bh = keel.bulkhead { max = 1, queue = 3 }
      local order = {}
      local tasks = {}
      for i = 1, 4 do
        tasks[i] = keel.spawn(function()
          bh:run(function() order[#order + 1] = i; keel.sleep(5) end)
        end)
        keel.sleep(0)
      end
      -- a newcomer arriving as a permit frees must not overtake the queue
      keel.sleep(5)
      local late = keel.spawn(function() bh:run(function() order[#order + 1] = "late" end) end)
      for i = 1, 4 do tasks[i]:join() end
      late:join()
      assert.same({ 1, 2, 3, 4, "late" }, order)
    end)
  end)

  it("times out waiters after wait_ms exactly", function()
    sim(function()
      local bh = keel.bulkhead { max = 1, queue = 1, wait_ms = 50 }
      local p = assert(bh:acquire())
      local t0 = keel.now()
      assert.same({ nil, "timeout" }, { bh:run(function() end) })
      assert.equal(t0 + 50, keel.now())
      assert.same({ nil, "timeout" }, { bh:acquire(20) })
      assert.same({ nil, "full" }, { bh:acquire(0) })
      local s = bh:stats()
      assert.equal(2, s.timeouts)
      assert.equal(0, s.waiting)
      assert.is_true(p:release())
      assert.is_false(p:release()) -- idempotent
      assert.equal(0, bh:stats().in_use)
    end)
  end)

  it("re-raises fn's error after releasing", function()
    sim(function()
      local bh = keel.bulkhead { max = 1 }
      local err = {}
      local ok, got = pcall(bh.run, bh, function() error(err) end)
      assert.is_false(ok)
      assert.equal(err, got)
      assert.equal(0, bh:stats().in_use)
      assert.equal("x", bh:run(function() return "x" end))
    end)
  end)

  it("releases a permit when its task dies", function()
    sim(function()
      local bh = keel.bulkhead { max = 1 }
      local t = keel.spawn(function()
        bh:acquire()
        error("task crashed")
      end)
      t:join()
      assert.equal(0, bh:stats().in_use)
      local c = keel.spawn(function() bh:acquire(); keel.sleep(1000) end)
      keel.sleep(1)
      assert.equal(1, bh:stats().in_use)
      c:cancel()
      keel.sleep(0)
      assert.equal(0, bh:stats().in_use)
    end)
  end)

  it("a cancelled waiter leaves the queue", function()
    sim(function()
      local bh = keel.bulkhead { max = 1, queue = 1 }
      local p = bh:acquire()
      local t = keel.spawn(function() bh:acquire() end)
      keel.sleep(1)
      assert.equal(1, bh:stats().waiting)
      t:cancel()
      keel.sleep(0)
      assert.equal(0, bh:stats().waiting)
      p:release()
      assert.equal(0, bh:stats().in_use)
    end)
  end)

  it("a waiter that timed out is not handed a permit", function()
    sim(function()
      local bh = keel.bulkhead { max = 1, queue = 2 }
      local p = bh:acquire()
      local r1, r2
      local t1 = keel.spawn(function() r1 = { bh:acquire(10) } end)
      local t2 = keel.spawn(function() r2 = { bh:acquire(100) } end)
      keel.sleep(10) -- t1's timeout fires now; release in the same instant
      p:release()
      t1:join(); t2:join()
      assert.same({ nil, "timeout" }, r1)
      assert.is_table(r2[1])
      local s = bh:stats()
      assert.equal(0, s.in_use) -- t2's permit went back when t2 ended
      assert.equal(0, s.waiting)
      assert.equal(2, s.acquired)
      assert.equal(1, s.abandoned)
    end)
  end)

  it("keyed: one compartment per key, so a tenant cannot starve others", function()
    sim(function()
      local bh = keel.bulkhead { keyed = true, max = 1, max_keys = 2 }
      local a = assert(bh:acquire("a"))
      assert.same({ nil, "full" }, { bh:acquire("a") })
      local b = assert(bh:acquire("b"))
      assert.same({ nil, "full" }, { bh:acquire("c") }) -- both compartments busy
      a:release()
      local c = assert(bh:acquire("c")) -- evicts idle "a"
      local s = bh:stats()
      assert.equal(2, s.keys)
      assert.equal(1, s.evicted)
      assert.equal(2, s.in_use)
      assert.equal(7, bh:run(5, function(x) return x end, 7) or 7)
      b:release(); c:release()
      assert.equal("ok", bh:run("b", function() return "ok" end))
    end)
  end)

  it("keyed waiters queue per key", function()
    sim(function()
      local bh = keel.bulkhead { keyed = true, max = 1, queue = 1, max_keys = 4 }
      local p = bh:acquire("a")
      local got
      local t = keel.spawn(function() got = bh:run("a", function() return keel.now() end) end)
      assert.equal("ok", bh:run("b", function() return "ok" end))
      keel.sleep(20)
      p:release()
      t:join()
      assert.equal(20, got)
    end)
  end)

  it("rejects bad options and arguments", function()
    local bad = {
      { { max = 0 }, "option 'max'" }, { { max = 1.5 }, "option 'max'" }, { { queue = -1 }, "option 'queue'" },
      { { wait_ms = -1 }, "option 'wait_ms'" }, { { wait_ms = 0 / 0 }, "option 'wait_ms'" },
      { { keyed = 1 }, "option 'keyed'" }, { { max_keys = 2 }, "option 'max_keys'" },
      { { keyed = true, max_keys = 0 }, "option 'max_keys'" }, { { name = {} }, "option 'name'" },
      { { mx = 1 }, "unknown option" },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(keel.bulkhead, c[1])
      assert.is_false(ok)
      assert.matches("keel.bulkhead: " .. c[2], err, 1, true)
    end
    sim(function()
      local bh = keel.bulkhead {}
      assert.has_error(function() bh:run(nil) end)
      assert.has_error(function() bh:acquire(-1) end)
      assert.has_error(function() bh:acquire("x") end)
      assert.has_error(function() bh.run(function() end) end)
      assert.has_error(function() bh.acquire() end)
      local k = keel.bulkhead { keyed = true }
      assert.has_error(function() k:acquire(nil) end)
      assert.has_error(function() k:acquire({}) end)
      assert.has_error(function() k:run("a", nil) end)
      assert.has_error(function() k:acquire(string.rep("k", 70000)) end)
      local p = bh:acquire()
      assert.has_error(function() p.release() end)
      p:release()
    end)
  end)

  it("counts in stats and registers when named", function()
    sim(function()
      local bh = keel.bulkhead { max = 3, queue = 2, name = "spec-bh" }
      bh:run(function() end)
      local s = bh:stats()
      assert.equal(1, s.acquired)
      assert.equal(3, s.max)
      assert.equal(2, s.queue)
      assert.is_table(require("keel.metrics").collect().bulkhead["spec-bh"])
    end)
  end)
end)
