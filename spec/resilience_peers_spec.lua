-- Cases ported from the peers' test suites (issue 11, "Correctness against
-- the peers"). Each test names the peer test it mirrors.
local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 1 }, fn) end

describe("resilience against the peers", function()
  -- Resilience4j RetryConfigTest.zeroWaitInterval: a zero base delay gives
  -- zero delays, at any attempt and with any jitter.
  it("backoff base_ms = 0 stays 0 at any attempt (Resilience4j RetryConfigTest.zeroWaitInterval)", function()
    sim(function()
      for _, jitter in ipairs { "none", "full", "equal", "decorrelated" } do
        local b = keel.backoff { base_ms = 0, jitter = jitter }
        for _, n in ipairs { 1, 2, 1024, 1025, 5000, 1e9 } do
          assert.equal(0, b:delay(n), jitter .. " attempt " .. n)
        end
      end
      -- large attempts keep the documented formula: min(cap, base * factor^(n-1))
      local b = keel.backoff { base_ms = 1, cap_ms = 5000, jitter = "none" }
      assert.equal(5000, b:delay(1025))
      assert.equal(1, b:delay(1))
    end)
  end)

  -- Resilience4j CircuitBreakerStateMachineTest: in HALF_OPEN the metrics
  -- are those of the half-open sample; after it reopens the breaker they
  -- still show that sample, not the closed window that opened it first.
  it("stats show the half-open sample that reopened the breaker (Resilience4j CircuitBreakerStateMachine metrics)",
    function()
      sim(function()
        local b = keel.breaker { size = 5, min_calls = 5, failure_rate = 50, open_ms = 100, half_open_calls = 5 }
        for i = 1, 5 do b:record(i > 3, 0) end -- 3 of 5 failed: 60%
        assert.equal("open", b:state())
        assert.equal(60, b:stats().failure_rate)
        keel.sleep(100)
        assert.equal("half_open", b:state())
        local s = b:stats()
        assert.equal(0, s.window_calls)
        for _ = 1, 3 do assert(b:allow()); b:record(true, 0) end
        s = b:stats()
        assert.equal(3, s.window_calls)
        assert.equal(0, s.window_failures)
        assert.equal(0, s.failure_rate)
        assert.equal(2, s.half_open_permits)
        assert.equal(0, s.probes_in_flight)
        assert(b:allow())
        assert.equal(1, b:stats().probes_in_flight)
        b:record(false, 0)
        assert(b:allow())
        b:record(false, 0) -- 2 of 5 probes failed: 40% < 50%, closes
        assert.equal("closed", b:state())
        for i = 1, 5 do b:record(i > 3, 0) end
        keel.sleep(100)
        for i = 1, 5 do assert(b:allow()); b:record(i <= 3, 0) end -- probes: 3 ok, 2 failed... closes
        assert.equal("closed", b:state())
        for i = 1, 5 do b:record(i > 3, 0) end
        keel.sleep(100)
        for i = 1, 5 do assert(b:allow()); b:record(i <= 2, 0) end -- 3 of 5 probes failed: reopens
        assert.equal("open", b:state())
        s = b:stats()
        assert.equal(5, s.window_calls)
        assert.equal(3, s.window_failures)
        assert.equal(60, s.failure_rate)
        assert.equal(0, s.probes_in_flight)
      end)
      sim(function()
        -- three good probes of four, then a failing one, reopen at 25%: the
        -- stats show the 4-probe sample, not the 60% closed window
        local b = keel.breaker { size = 5, min_calls = 5, failure_rate = 25, open_ms = 100, half_open_calls = 4 }
        for i = 1, 5 do b:record(i > 3, 0) end
        keel.sleep(100)
        for i = 1, 4 do assert(b:allow()); b:record(i <= 3, 0) end
        assert.equal("open", b:state())
        local s = b:stats()
        assert.equal(4, s.window_calls)
        assert.equal(25, s.failure_rate)
      end)
    end)

  it("rejects slow_ms = 0 and open_ms = 0 (Resilience4j CircuitBreakerConfigTest."
     .. "zeroSlowCallDurationThresholdShouldFail, zeroWaitIntervalShouldFail)", function()
    sim(function()
      assert.has_error(function() keel.breaker { slow_ms = 0 } end,
        "keel.breaker: option 'slow_ms' must be a number > 0 (got 0)")
      assert.has_error(function() keel.breaker { open_ms = 0 } end,
        "keel.breaker: option 'open_ms' must be a number in (0, 1000000000000] (got 0)")
      assert.has_error(function() keel.breaker { open_ms = { base_ms = 0 } } end,
        "keel.breaker: option 'open_ms.base_ms' must be a number in (0, 1000000000000] (got 0)")
      -- the smallest positive values still work
      keel.breaker { slow_ms = 1e-3, open_ms = 1e-3 }
    end)
  end)

  -- Resilience4j SemaphoreBulkheadTest: with maxWaitDuration set, a caller
  -- that finds the bulkhead full waits up to that long for a permit.
  it("bulkhead wait_ms alone makes callers wait (Resilience4j SemaphoreBulkhead maxWaitDuration)", function()
    sim(function()
      local bh = keel.bulkhead { max = 1, wait_ms = 100 }
      local release
      keel.spawn(function() bh:run(function() keel.sleep(50) end) end)
      local t = keel.spawn(function()
        local t0 = keel.now()
        local v = bh:run(function() return "ran" end)
        release = keel.now() - t0
        return v
      end)
      assert.same({ true, "ran" }, { t:join() })
      assert.equal(50, release)
      -- and gives up at wait_ms
      keel.spawn(function() bh:run(function() keel.sleep(500) end) end)
      keel.sleep(0)
      local t0 = keel.now()
      assert.same({ nil, "timeout" }, { bh:run(function() end) })
      assert.equal(100, keel.now() - t0)
      assert.is_true(bh:stats().queue > 0)
    end)
  end)

  it("bulkhead refuses queue = 0 with wait_ms > 0 (a contradiction)", function()
    sim(function()
      assert.has_error(function() keel.bulkhead { max = 1, queue = 0, wait_ms = 100 } end,
        "keel.bulkhead: option 'wait_ms' needs a queue (queue = 0 refuses every waiter; omit queue or set it > 0)")
      keel.bulkhead { max = 1, queue = 0, wait_ms = 0 }
    end)
  end)
end)
