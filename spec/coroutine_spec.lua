-- Plain coroutines inside tasks keep working; only waiting from them is refused.
local keel = require "keel"

describe("plain coroutines inside a task", function()
  it("resume and wrap pass values both ways and report errors as Lua does", function()
    local co = coroutine.create(function(a)
      local b = coroutine.yield(a + 1)
      return b * 2
    end)
    assert.same({ true, 2 }, { coroutine.resume(co, 1) })
    assert.same({ true, 10 }, { coroutine.resume(co, 5) })
    assert.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) })
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    assert.same({ 1, 2, 3 }, { gen(), gen(), gen() })
    local bad = coroutine.wrap(function() error("boom", 0) end)
    assert.has_error(function() bad() end, "boom")
  end)

  it("a waiting call from a nested coroutine is refused, and the task may wait again after", function()
    local inner = coroutine.wrap(function() return pcall(keel.sleep, 1) end)
    local ok, err = inner()
    assert.is_false(ok)
    assert.matches("not from a coroutine it created", err)
    keel.sleep(1) -- back in the task itself: allowed
    -- Nesting two deep and unwinding by error leaves the count balanced.
    local outer = coroutine.wrap(function()
      local deeper = coroutine.wrap(function() error("deep", 0) end)
      return pcall(deeper)
    end)
    assert.is_false((outer()))
    keel.sleep(1)
  end)

  it("outside any task, coroutine.resume behaves as plain Lua", function()
    local results = keel.sim({ seed = 1 }, function()
      local co = coroutine.create(function() return 7 end)
      return select(2, coroutine.resume(co))
    end)
    assert.equal(7, results)
  end)
end)

describe("cancellation cleanup ordering", function()
  it("keel.timeout returns after the inner task's deferred cleanup has run", function()
    local cleaned = false
    local ok, err = keel.timeout(10, function()
      keel.defer(function() keel.sleep(5); cleaned = true end)
      keel.sleep(1000)
    end)
    assert.is_nil(ok)
    assert.equal("timeout", err)
    assert.is_true(cleaned)
  end)

  it("keel.any returns after the losers' deferred cleanup has run", function()
    local cleaned = 0
    local winner = keel.any {
      function() keel.sleep(1) return "fast" end,
      function() keel.defer(function() cleaned = cleaned + 1 end) keel.sleep(1000) end,
      function() keel.defer(function() keel.sleep(2); cleaned = cleaned + 1 end) keel.sleep(1000) end,
    }
    assert.equal("fast", winner)
    assert.equal(2, cleaned)
  end)
end)

describe("sleeping for ever", function()
  it("keel.sleep(math.huge) arms no timer: only cancel ends it, and a simulation reports the deadlock", function()
    local ok, err = pcall(keel.sim, { seed = 1 }, function() keel.sleep(math.huge) end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
    local t = keel.spawn(function() keel.sleep(math.huge) end)
    keel.sleep(1)
    assert.equal("waiting", t:status())
    t:cancel()
    assert.same({ false, "cancelled" }, { t:join() })
  end)
end)
