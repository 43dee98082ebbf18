-- The scheduler's internal API that primitives build on: wait queues,
-- completions (C callbacks), sched.defer/after.
local keel = require "keel"
local sched = require "keel.sched"

local sim = function(fn) return keel.sim({ seed = 3 }, fn) end

describe("sched.waitqueue", function()
  it("wakes the longest waiter first with the given values", function()
    local q = sched.waitqueue()
    local got = {}
    for i = 1, 3 do
      keel.spawn(function() local a, b = q:wait(nil, "spec") got[#got + 1] = i .. ":" .. a .. b end)
    end
    keel.sleep(0)
    assert.equal(3, q:count())
    assert.is_truthy(q:wake_one("x", "y"))
    assert.equal(2, q:count())
    assert.equal(2, q:wake_all("p", "q"))
    assert.equal(0, q:count())
    assert.is_nil(q:wake_one("nobody"))
    keel.sleep(0)
    assert.same({ "1:xy", "2:pq", "3:pq" }, got)
  end)

  it("a timed-out waiter leaves the queue and is skipped by wake_one", function()
    sim(function()
      local q = sched.waitqueue()
      local a = keel.spawn(function() return q:wait(5, "spec") end)
      local b = keel.spawn(function() return q:wait(nil, "spec") end)
      keel.sleep(10)
      assert.same({ true, nil, "timeout" }, { a:join() })
      assert.equal(1, q:count())
      assert.equal(b, q:wake_one("for b"))
      assert.same({ true, "for b" }, { b:join() })
    end)
  end)

  it("a waiter whose timeout already fired is not woken twice", function()
    sim(function()
      local q = sched.waitqueue()
      local t = keel.spawn(function() return q:wait(5, "spec") end)
      keel.sleep(5) -- the timeout fires at this same instant; t has not run yet
      q:wake_one("late") -- the entry is still queued but t is no longer parked
      assert.same({ true, nil, "timeout" }, { t:join() })
      assert.equal(0, q:count())
    end)
  end)

  it("a cancelled waiter leaves the queue", function()
    local q = sched.waitqueue()
    local t = keel.spawn(function() return q:wait(nil, "spec") end)
    keel.sleep(0)
    t:cancel()
    assert.same({ false, "cancelled" }, { t:join() })
    assert.equal(0, q:count())
    assert.is_nil(q:wake_one())
  end)

  it("wait names the caller outside a task and checks the timeout", function()
    local q = sched.waitqueue()
    local prev = sched.set_world(sched.new_world({ virtual = true }))
    local ok, err = pcall(q.wait, q, nil, "my.prim:get")
    sched.set_world(prev)
    assert.is_false(ok)
    assert.matches("my.prim:get: must be called inside a task", err)
    ok, err = pcall(q.wait, q, -1, "my.prim:get")
    assert.is_false(ok)
    assert.matches("my.prim:get: timeout must be a number >= 0", err)
    assert.equal(0, q:count())
  end)
end)

describe("sched completions", function()
  it("await returns the values given to complete", function()
    local id
    local t = keel.spawn(function()
      id = sched.completion("spec.io")
      return sched.await(id, nil, "spec.io")
    end)
    keel.sleep(0)
    assert.equal("waiting", t:status())
    assert.is_true(sched.complete(id, "reply", 2))
    assert.same({ true, "reply", 2 }, { t:join() })
    assert.is_false(sched.complete(id, "again")) -- an id completes once
  end)

  it("await times out, and a late completion is ignored", function()
    local id
    local t = keel.spawn(function()
      id = sched.completion("spec.io")
      return sched.await(id, 1, "spec.io")
    end)
    assert.same({ true, nil, "timeout" }, { t:join() })
    assert.is_false(sched.complete(id, "too late"))
  end)

  it("a cancelled await fails with 'cancelled' and releases the id", function()
    local id
    local cleaned = false
    local t = keel.spawn(function()
      keel.defer(function() cleaned = true end)
      id = sched.completion("spec.io")
      return sched.await(id, nil, "spec.io")
    end)
    keel.sleep(0)
    t:cancel()
    assert.same({ false, "cancelled" }, { t:join() })
    assert.is_true(cleaned)
    assert.is_false(sched.complete(id, "nobody waits"))
  end)

  it("a reused slot does not take the late completion of its previous wait", function()
    local first
    local t1 = keel.spawn(function()
      first = sched.completion("spec.io")
      return sched.await(first, 1, "spec.io")
    end)
    assert.same({ true, nil, "timeout" }, { t1:join() })
    -- the next waits reuse the freed slot under a new id
    local second
    local t2 = keel.spawn(function()
      second = sched.completion("spec.io")
      return sched.await(second, nil, "spec.io")
    end)
    keel.sleep(0)
    assert.are_not.equal(first, second)
    assert.equal(first % 2097152, second % 2097152) -- same slot
    assert.is_false(sched.complete(first, "stale"))
    assert.equal("waiting", t2:status())
    assert.is_true(sched.complete(second, "fresh"))
    assert.same({ true, "fresh" }, { t2:join() })
    -- ids that were never issued, or are not numbers, wake nobody
    assert.is_false(sched.complete(second + 2097152 * 5, "forged"))
    assert.is_false(sched.complete("1", "forged"))
    assert.is_false(sched.complete(0.5, "forged"))
  end)

  it("many outstanding completions each get their own reply", function()
    local ids, ts = {}, {}
    for i = 1, 300 do
      ts[i] = keel.spawn(function()
        ids[i] = sched.completion("spec.io")
        return sched.await(ids[i], nil, "spec.io")
      end)
    end
    keel.sleep(0)
    for i = 300, 1, -1 do assert.is_true(sched.complete(ids[i], i)) end
    for i = 1, 300 do assert.same({ true, i }, { ts[i]:join() }) end
  end)

  it("completion outside a task and await of a foreign id are clear errors", function()
    local prev = sched.set_world(sched.new_world({ virtual = true }))
    local ok, err = pcall(sched.completion, "spec.io")
    sched.set_world(prev)
    assert.is_false(ok)
    assert.matches("spec.io: must be called inside a task", err)
    ok, err = pcall(sched.await, 987654321, nil, "spec.io")
    assert.is_false(ok)
    assert.matches("spec.io: bad completion id", err)
  end)
end)

describe("sched.after / sched.defer", function()
  it("sched.after runs fn as a task; stop prevents it", function()
    sim(function()
      local log = {}
      sched.after(10, function() log[#log + 1] = keel.now() end)
      local h = sched.after(20, function() log[#log + 1] = "stopped" end)
      assert.is_true(h:stop())
      keel.sleep(30)
      assert.same({ 10 }, log)
    end)
  end)

  it("sched.defer runs cleanup however the task ends", function()
    local log = {}
    local t = keel.spawn(function()
      sched.defer(function() log[#log + 1] = "released" end, "spec.permit")
      error("work failed")
    end)
    assert.is_false((t:join()))
    assert.same({ "released" }, log)
    local ok, err = pcall(sched.defer, 42, "spec.permit")
    assert.is_false(ok)
    assert.matches("spec.permit: argument 'fn' must be a function", err)
  end)
end)
