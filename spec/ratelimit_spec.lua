local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 3 }, fn) end

describe("keel.ratelimit", function()
  it("allows a burst, then refills at the rate exactly", function()
    sim(function()
      local rl = keel.ratelimit { rate = 10, per_ms = 1000, burst = 3 }
      assert.is_true(rl:take())
      assert.is_true(rl:take())
      assert.is_true(rl:take())
      local ok, code, retry = rl:take()
      assert.is_nil(ok)
      assert.equal("limited", code)
      assert.equal(100, retry)
      keel.sleep(99.999)
      assert.is_nil((rl:take()))
      keel.sleep(0.001)
      assert.is_true(rl:take())
      assert.is_nil((rl:take()))
      keel.sleep(300)
      assert.equal(3, rl:available())
      assert.is_true(rl:take(3))
    end)
  end)

  it("is exact for intervals that are not whole milliseconds", function()
    sim(function()
      local rl = keel.ratelimit { rate = 3, per_ms = 1000, burst = 3 }
      assert.is_true(rl:take(3))
      keel.sleep(1000)
      assert.is_true(rl:take(3))
      keel.sleep(1000 / 3)
      assert.is_true(rl:take(1))
    end)
  end)

  it("defaults burst to rate, and n > burst is never allowed", function()
    sim(function()
      local rl = keel.ratelimit { rate = 5 }
      assert.equal(5, rl:stats().burst)
      assert.is_true(rl:take(5))
      local ok, code, retry = rl:take(6)
      assert.is_nil(ok)
      assert.equal("limited", code)
      assert.equal(math.huge, retry)
      assert.same({ nil, "limited" }, { rl:wait(6) })
    end)
  end)

  it("wait parks until the units are there, FIFO", function()
    sim(function()
      local rl = keel.ratelimit { rate = 1, per_ms = 100, burst = 1 }
      assert.is_true(rl:take())
      local order = {}
      local tasks = {}
      for i = 1, 3 do
        tasks[i] = keel.spawn(function()
          assert.is_true(rl:wait())
          order[#order + 1] = { i, keel.now() }
        end)
      end
      for i = 1, 3 do tasks[i]:join() end
      local t0 = order[1][2] - 100
      assert.same({ { 1, t0 + 100 }, { 2, t0 + 200 }, { 3, t0 + 300 } }, order)
    end)
  end)

  it("wait gives up at once when the wait would exceed timeout_ms", function()
    sim(function()
      local rl = keel.ratelimit { rate = 1, per_ms = 100, burst = 1 }
      rl:take()
      local t0 = keel.now()
      assert.same({ nil, "timeout" }, { rl:wait(1, 99) })
      assert.equal(t0, keel.now())
      assert.is_true(rl:wait(1, 100))
      assert.equal(t0 + 100, keel.now())
    end)
  end)

  it("a cancelled waiter gives its reservation back", function()
    sim(function()
      local rl = keel.ratelimit { rate = 1, per_ms = 100, burst = 1 }
      rl:take()
      local t = keel.spawn(function() rl:wait() end)
      keel.sleep(10)
      t:cancel()
      keel.sleep(0)
      keel.sleep(90)
      assert.is_true(rl:take())
    end)
  end)

  it("keyed limiters keep one bucket per key", function()
    sim(function()
      local rl = keel.ratelimit { keyed = true, rate = 1, per_ms = 1000, burst = 2, max_keys = 2 }
      assert.is_true(rl:take("a", 2))
      assert.is_nil((rl:take("a")))
      assert.is_true(rl:take("b"))
      assert.is_true(rl:take(42)) -- numbers are keys too; evicts "a" (still limited)
      local s = rl:stats()
      assert.equal(2, s.keys)
      assert.equal(1, s.evicted)
      assert.equal(1, s.evicted_active)
      assert.equal(1, rl:available("b"))
      keel.sleep(1000)
      assert.is_true(rl:wait("b", 2, 0))
      assert.same({ nil, "timeout" }, { rl:wait("b", 1, 999) })
      assert.is_true(rl:wait("b", 1))
      assert.equal(2000, keel.now())
    end)
  end)

  it("evicting a key with a full bucket loses nothing", function()
    sim(function()
      local rl = keel.ratelimit { keyed = true, rate = 1, per_ms = 10, burst = 1, max_keys = 1 }
      rl:take("a")
      keel.sleep(10)
      rl:take("b")
      local s = rl:stats()
      assert.equal(1, s.evicted)
      assert.equal(0, s.evicted_active)
    end)
  end)

  it("evictions spare keys that are still limited while a full-bucket key can go", function()
    sim(function()
      local rl = keel.ratelimit { keyed = true, rate = 1, per_ms = 1000, burst = 2, max_keys = 2 }
      assert.is_true(rl:take("hot", 2)) -- its bucket is full again at 2000
      assert.is_true(rl:take("idle")) -- full again at 1000, and the more recently used
      keel.sleep(1000)
      assert.is_true(rl:take("new")) -- LRU alone would drop "hot" and its debt
      local s = rl:stats()
      assert.same({ 1, 0 }, { s.evicted, s.evicted_active })
      assert.equal(1, rl:available("hot")) -- 2 had it been dropped
      -- when every key is limited one still has to go
      assert.is_true(rl:take("newer"))
      s = rl:stats()
      assert.same({ 2, 1 }, { s.evicted, s.evicted_active })
    end)
  end)

  it("is deterministic under virtual time", function()
    local function run()
      return keel.sim({ seed = 9 }, function()
        local rl = keel.ratelimit { rate = 7, per_ms = 1000 }
        local n = 0
        for _ = 1, 500 do
          if rl:take() then n = n + 1 end
          keel.sleep(keel.random(1, 50))
        end
        return n, rl:stats().limited
      end)
    end
    local a, b = run()
    local c, d = run()
    assert.equal(a, c)
    assert.equal(b, d)
  end)

  it("counts and registers when named", function()
    sim(function()
      local rl = keel.ratelimit { rate = 1, name = "spec-rl" }
      rl:take(); rl:take()
      local s = rl:stats()
      assert.equal(1, s.allowed)
      assert.equal(1, s.limited)
      assert.equal(0, s.available)
      assert.is_table(require("keel.metrics").collect().ratelimit["spec-rl"])
    end)
  end)

  it("rejects bad options and arguments", function()
    local bad = {
      { {}, "option 'rate'" }, { { rate = 0 }, "option 'rate'" }, { { rate = -1 }, "option 'rate'" },
      { { rate = 0 / 0 }, "option 'rate'" }, { { rate = math.huge }, "option 'rate'" },
      { { rate = 1, per_ms = 0 }, "option 'per_ms'" }, { { rate = 1, burst = 0.5 }, "option 'burst'" },
      { { rate = 1, keyed = "yes" }, "option 'keyed'" }, { { rate = 1, max_keys = 5 }, "option 'max_keys'" },
      { { rate = 1, keyed = true, max_keys = 0 }, "option 'max_keys'" }, { { rate = 1, x = 1 }, "unknown option" },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(keel.ratelimit, c[1])
      assert.is_false(ok)
      assert.matches("keel.ratelimit: " .. c[2], err, 1, true)
    end
    sim(function()
      local rl = keel.ratelimit { rate = 1 }
      for _, n in ipairs({ 0, -1, 0 / 0, math.huge, "1", true }) do
        assert.has_error(function() rl:take(n) end)
        assert.has_error(function() rl:wait(n) end)
      end
      assert.has_error(function() rl:wait(1, -1) end)
      assert.has_error(function() rl.take() end)
      assert.has_error(function() rl.take(5) end)
      local k = keel.ratelimit { rate = 1, keyed = true }
      assert.has_error(function() k:take(nil) end)
      assert.has_error(function() k:take({}) end)
      assert.has_error(function() k:take(0 / 0) end)
      assert.has_error(function() k:take(string.rep("x", 70000)) end)
      assert.has_error(function() k.take("a") end)
      assert.has_error(function() rl.take(k) end)
    end)
  end)
end)
