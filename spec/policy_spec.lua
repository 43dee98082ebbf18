-- keel.policy: order and hedging in virtual time (issue 11, "A pipeline").
local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 1 }, fn) end

describe("keel.policy", function()
  it("a timeout cancels each attempt, the retry around it tries again, the breaker counts each attempt", function()
    sim(function()
      local cleaned, n = 0, 0
      local br = keel.breaker { size = 10, min_calls = 10 }
      local p = keel.policy {
        timeout = 100,
        retry = { attempts = 3, backoff = { base_ms = 10, jitter = "none" } },
        breaker = br,
      }
      local t0 = keel.now()
      local v = p:call(function(x)
        n = n + 1
        keel.defer(function() cleaned = cleaned + 1 end)
        if n < 3 then keel.sleep(1000) end
        return x * 2
      end, 21)
      assert.equal(42, v)
      -- 100 (timeout) + 10 + 100 (timeout) + 20 + 0
      assert.equal(230, keel.now() - t0)
      assert.equal(3, cleaned) -- the timed-out attempts' cleanup ran
      local s = br:stats()
      assert.same({ 3, 2 }, { s.window_calls, s.window_failures })
    end)
  end)

  it("an open breaker is a retryable failure for the retry around it; the fallback sees the final error", function()
    sim(function()
      local br = keel.breaker {}
      br:force("forced_open")
      local seen, called = {}, 0
      local p = keel.policy {
        retry = { attempts = 3, backoff = { base_ms = 10, jitter = "none" },
                  on_retry = function(err, attempt) seen[#seen + 1] = err .. attempt end },
        breaker = br,
        fallback = function(err) return "fallback:" .. tostring(err) end,
      }
      local t0 = keel.now()
      assert.equal("fallback:open", p:call(function() called = called + 1 end))
      assert.equal(0, called)
      assert.same({ "open1", "open2" }, seen)
      assert.equal(30, keel.now() - t0)
      -- a raised error reaches the fallback too, after the retries
      local q = keel.policy { retry = { attempts = 2, backoff = { base_ms = 1 } },
                              fallback = function(err) return "got " .. err end }
      assert.equal("got boom", q:call(function() error("boom", 0) end))
      -- without a fallback the caller sees the layer's answer
      local r = keel.policy { breaker = br }
      assert.same({ nil, "open" }, { r:call(function() end) })
    end)
  end)

  it("ratelimit and bulkhead answer inside the retry, in the documented order", function()
    sim(function()
      local rl = keel.ratelimit { rate = 1, per_ms = 100, burst = 1 }
      local trace = {}
      local p = keel.policy {
        retry = { attempts = 3, backoff = { base_ms = 100, jitter = "none" },
                  on_retry = function(err) trace[#trace + 1] = err end },
        ratelimit = rl,
        bulkhead = { max = 1 },
      }
      assert.equal("a", p:call(function() return "a" end))
      local t0 = keel.now()
      assert.equal("b", p:call(function() return "b" end)) -- limited once, then allowed after 100 ms
      assert.same({ "limited" }, trace)
      assert.equal(100, keel.now() - t0)
      assert.equal("keel.policy(retry > ratelimit > bulkhead)", tostring(p))
    end)
  end)

  it("hedge: a second attempt after delay_ms, the first success wins, the loser is cancelled", function()
    sim(function()
      local n, cancelled = 0, 0
      local p = keel.policy { hedge = { delay_ms = 50, max = 2 } }
      local t0 = keel.now()
      local v = p:call(function()
        n = n + 1
        local me = n
        keel.defer(function() if me == 1 then cancelled = cancelled + 1 end end)
        if me == 1 then keel.sleep(500); return "slow" end
        keel.sleep(30)
        return "fast"
      end)
      assert.equal("fast", v)
      assert.equal(80, keel.now() - t0)
      assert.equal(1, cancelled)
      -- a fast success needs no hedge
      n = 0
      assert.equal("quick", p:call(function() n = n + 1; keel.sleep(10); return "quick" end))
      assert.equal(1, n)
    end)
  end)

  it("hedge: a failure starts the next attempt at once; all failing gives the last failure", function()
    sim(function()
      local n = 0
      local p = keel.policy { hedge = { delay_ms = 1000, max = 3 } }
      local t0 = keel.now()
      local v = p:call(function()
        n = n + 1
        keel.sleep(10)
        if n < 3 then return nil, "timeout" end
        return "third"
      end)
      assert.equal("third", v)
      assert.equal(30, keel.now() - t0)
      n = 0
      assert.has_error(function() p:call(function() n = n + 1; error("e" .. n, 0) end) end, "e3")
      assert.same({ nil, "conn: down" }, { keel.policy { hedge = { delay_ms = 0, max = 2 } }:call(function()
        return nil, "conn: down" end) })
    end)
  end)

  it("each hedged attempt has its own timeout", function()
    sim(function()
      local n = 0
      local p = keel.policy { hedge = { delay_ms = 20, max = 2 }, timeout = 100 }
      local t0 = keel.now()
      assert.same({ nil, "timeout" }, { p:call(function() n = n + 1; keel.sleep(1000) end) })
      assert.equal(2, n)
      assert.equal(120, keel.now() - t0) -- the second attempt's timeout ends it
    end)
  end)

  it("rejects bad options and arguments naming them", function()
    sim(function()
      assert.has_error(function() keel.policy { timeout = 0 } end,
        "keel.policy: option 'timeout' must be a number > 0 (ms) (got 0)")
      assert.has_error(function() keel.policy { retry = 5 } end)
      assert.has_error(function() keel.policy { retry = { attempts = 0 } } end,
        "keel.policy (retry): option 'attempts' must be an integer in [1, 1000000000] (got 0)")
      assert.has_error(function() keel.policy { hedge = { max = 2 } } end,
        "keel.policy: option 'hedge.delay_ms' must be a number (got nil)")
      assert.has_error(function() keel.policy { hedge = { delay_ms = 1, max = 1 } } end)
      assert.has_error(function() keel.policy { retries = 1 } end, "keel.policy: unknown option 'retries'")
      assert.has_error(function() keel.policy { bulkhead = { keyed = true } } end)
      local p = keel.policy {}
      assert.has_error(function() p:call(5) end, "policy:call: argument 'fn' must be a function (got 5)")
      assert.has_error(function() p.call() end)
      assert.equal(3, p:call(function(a, b) return a + b end, 1, 2))
    end)
  end)
end)

describe("keel.policy fused path (retry, local breaker, unkeyed bulkhead)", function()
  it("keeps every result, trailing nils included", function()
    sim(function()
      local p = keel.policy { retry = {}, breaker = {}, bulkhead = { max = 2 } }
      assert.equal(5, select("#", p:call(function() return 1, nil, 3, nil, nil end)))
      assert.equal(0, select("#", p:call(function() end)))
      assert.same({ 1, 2, 3, 4 }, { p:call(function(...) return ... end, 1, 2, 3, 4) })
    end)
  end)

  it("a failed first attempt goes on through the layers: recorded, released, retried", function()
    sim(function()
      local br = keel.breaker { size = 10, min_calls = 10 }
      local bh = keel.bulkhead { max = 1 }
      local n = 0
      local p = keel.policy { retry = { attempts = 3, backoff = { base_ms = 5, jitter = "none" } }, breaker = br,
                              bulkhead = bh }
      local t0 = keel.now()
      assert.equal("ok", p:call(function()
        n = n + 1
        assert.equal(1, bh:stats().in_use) -- the attempt holds the permit
        if n == 1 then error("first", 0) end
        if n == 2 then return nil, "timeout" end
        return "ok"
      end))
      assert.equal(15, keel.now() - t0)
      assert.equal(0, bh:stats().in_use)
      local s = br:stats()
      assert.same({ 3, 2 }, { s.window_calls, s.window_failures })
    end)
  end)

  it("without a retry: the error is raised and a failing result returned, both recorded", function()
    sim(function()
      local br = keel.breaker { size = 10, min_calls = 10 }
      local bh = keel.bulkhead { max = 1 }
      local p = keel.policy { breaker = br, bulkhead = bh }
      assert.has_error(function() p:call(function() error("bad", 0) end) end, "bad")
      assert.same({ nil, "conn: gone" }, { p:call(function() return nil, "conn: gone" end) })
      assert.same({ nil, "not found" }, { p:call(function() return nil, "not found" end) })
      local s = br:stats()
      assert.same({ 3, 2 }, { s.window_calls, s.window_failures })
      assert.equal(0, bh:stats().in_use)
      -- a busy bulkhead goes the layered way: refused without a retry
      local permit = bh:acquire()
      assert.same({ nil, "full" }, { p:call(function() return "no" end) })
      permit:release()
      assert.equal("yes", p:call(function() return "yes" end))
    end)
  end)

  it("an ignored error gives the half-open permit back; a cancelled call releases and propagates", function()
    sim(function()
      local br = keel.breaker { size = 10, min_calls = 10, ignore_error = function(e) return e == "skip" end }
      local bh = keel.bulkhead { max = 1 }
      local p = keel.policy { breaker = br, bulkhead = bh }
      assert.has_error(function() p:call(function() error("skip", 0) end) end, "skip")
      assert.equal(0, br:stats().window_calls)
      local t = keel.spawn(function() return p:call(function() keel.sleep(1000) end) end)
      keel.sleep(10)
      assert.equal(1, bh:stats().in_use)
      t:cancel()
      assert.same({ false, "cancelled" }, { t:join() })
      assert.equal(0, bh:stats().in_use)
      assert.equal(0, br:stats().window_calls)
    end)
  end)
end)
