-- Which outcomes count, half-open deadlines, consecutive and sub-second
-- windows, retry hooks (issue 11, "What users of the peers reach for").
local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 1 }, fn) end

describe("breaker outcomes", function()
  it("counts nil, <transport failure> from Keel's calls as a failure, nil, 'not found' as an answer", function()
    sim(function()
      local b = keel.breaker { size = 4, min_calls = 4, open_ms = 1000 }
      for _ = 1, 4 do
        assert.same({ nil, "not found" }, { b:call(function() return nil, "not found" end) })
      end
      assert.equal(0, b:stats().window_failures)
      for _ = 1, 2 do -- 2 of the last 4 failed: 50%
        assert.same({ nil, "conn: connection lost" }, { b:call(function() return nil, "conn: connection lost" end) })
      end
      assert.equal("open", b:state())
      b = keel.breaker { size = 2, min_calls = 2 }
      b:call(function() return nil, "timeout" end)
      b:call(function() return nil, "LOADING Redis is loading the dataset in memory" end)
      assert.equal("open", b:state())
    end)
  end)

  it("record_result, record_error and ignore_error decide (Resilience4j recordResult/recordExceptions/"
     .. "ignoreExceptions)", function()
    sim(function()
      local b = keel.breaker { size = 2, min_calls = 2, record_result = function(v) return v == "bad" end }
      b:call(function() return nil, "timeout" end) -- not a failure under this predicate
      assert.equal(0, b:stats().window_failures)
      b:call(function() return "bad" end)
      assert.equal(1, b:stats().window_failures)

      b = keel.breaker { size = 2, min_calls = 2, record_result = false }
      b:call(function() return nil, "timeout" end)
      assert.equal(0, b:stats().window_failures)

      -- an error record_error does not record counts as a success
      b = keel.breaker { size = 2, min_calls = 2, record_error = function(e) return e ~= "benign" end }
      assert.has_error(function() b:call(function() error("benign", 0) end) end, "benign")
      local s = b:stats()
      assert.same({ 1, 0 }, { s.window_calls, s.window_failures })

      -- an ignored error is neither: not in the window, and the event says so
      local seen = {}
      b = keel.breaker { size = 2, min_calls = 2, half_open_calls = 1, open_ms = 100,
                         ignore_error = function(e) return e == "skip" end }
      b:on("ignored_error", function(e) seen[#seen + 1] = e end)
      assert.has_error(function() b:call(function() error("skip", 0) end) end, "skip")
      assert.equal(0, b:stats().window_calls)
      assert.same({ "skip" }, seen)
      -- in half_open an ignored probe gives its permit back
      b:force("half_open")
      assert.has_error(function() b:call(function() error("skip", 0) end) end, "skip")
      assert.equal(1, b:stats().half_open_permits)
      assert.equal("ok", b:call(function() return "ok" end))
      assert.equal("closed", b:state())
    end)
  end)
end)

describe("breaker timing", function()
  it("fires OPEN -> HALF_OPEN from a timer at open_ms, with no call", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, open_ms = 250 }
      local log = {}
      b:on_state(function(from, to) log[#log + 1] = { from .. ">" .. to, keel.now() } end)
      local t0 = keel.now()
      b:record(false, 0)
      keel.sleep(1000)
      assert.same({ { "closed>open", t0 }, { "open>half_open", t0 + 250 } }, log)
    end)
  end)

  it("max_wait_half_open_ms reopens a half-open round whose probe never reports "
     .. "(Resilience4j maxWaitDurationInHalfOpenState)", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, open_ms = 100, half_open_calls = 2,
                               max_wait_half_open_ms = 300 }
      local log = {}
      b:on("state", function(from, to) log[#log + 1] = { from .. ">" .. to, keel.now() } end)
      b:record(false, 0)
      keel.sleep(100)
      assert(b:allow()) -- a probe whose outcome never arrives
      b:record(true, 0)
      keel.sleep(1000)
      assert.same({ { "closed>open", 0 }, { "open>half_open", 100 }, { "half_open>open", 400 },
                    { "open>half_open", 500 }, { "half_open>open", 800 }, { "open>half_open", 900 } },
                  { log[1], log[2], log[3], log[4], log[5], log[6] })
      -- without a listener the deadline is applied at the next look
      local q = keel.breaker { size = 1, min_calls = 1, open_ms = 100, half_open_calls = 2,
                               max_wait_half_open_ms = 300 }
      q:record(false, 0)
      keel.sleep(100)
      assert(q:allow())
      keel.sleep(299)
      assert.equal("half_open", q:state())
      keel.sleep(1)
      assert.equal("open", q:state())
      assert.equal(0, q:stats().window_calls) -- judged on the probes recorded: none
      assert.has_error(function() keel.breaker { max_wait_half_open_ms = -1 } end)
    end)
  end)

  it("consecutive mode opens after size failures in a row; a success resets (cockatiel ConsecutiveBreaker)",
    function()
      sim(function()
        local b = keel.breaker { window = "consecutive", size = 3, open_ms = 100, half_open_calls = 1 }
        b:record(false, 0); b:record(false, 0); b:record(true, 0); b:record(false, 0); b:record(false, 0)
        assert.equal("closed", b:state())
        assert.equal(2, b:stats().window_failures)
        b:record(false, 0)
        assert.equal("open", b:state())
        keel.sleep(100)
        assert(b:allow()); b:record(true, 0)
        assert.equal("closed", b:state())
        assert.equal(0, b:stats().window_failures)
      end)
    end)

  it("time windows finer than a second (window_ms/buckets)", function()
    sim(function()
      local b = keel.breaker { window = "time", window_ms = 500, buckets = 5, min_calls = 3, failure_rate = 100 }
      b:record(false, 0)
      b:record(false, 0)
      keel.sleep(500) -- both slid out: a one-second window would still hold them
      b:record(false, 0)
      assert.equal("closed", b:state())
      assert.equal(1, b:stats().window_calls)
      keel.sleep(100)
      b:record(false, 0); b:record(false, 0)
      assert.equal("open", b:state())
      assert.has_error(function() keel.breaker { window = "count", window_ms = 500 } end)
      assert.has_error(function() keel.breaker { window_ms = 500, size = 3 } end)
    end)
  end)
end)

describe("retry outcomes and hooks", function()
  it("retries nil, <transport failure or refusal> by default, returns nil, 'not found' at once (Polly ShouldHandle)",
    function()
      sim(function()
        local n = 0
        local v = keel.retry(function()
          n = n + 1
          if n < 3 then return nil, "timeout" end
          return "ok"
        end, { backoff = { base_ms = 1 } })
        assert.same({ "ok", 3 }, { v, n })
        n = 0
        assert.same({ nil, "not found" }, { keel.retry(function() n = n + 1; return nil, "not found" end) })
        assert.equal(1, n)
        -- retry_on_result decides; false turns result failures off
        n = 0
        assert.same({ "again" }, { keel.retry(function() n = n + 1; return "again" end,
          { retry_on_result = function(v2) return v2 == "again" end, attempts = 2, backoff = { base_ms = 1 } }) })
        assert.equal(2, n)
        n = 0
        keel.retry(function() n = n + 1; return nil, "timeout" end, { retry_on_result = false })
        assert.equal(1, n)
      end)
    end)

  it("on_retry(err, attempt, delay) and a result-aware delay honour a retry-after", function()
    sim(function()
      local calls, seen = 0, {}
      local t0 = keel.now()
      local v = keel.retry(function()
        calls = calls + 1
        if calls == 1 then return nil, "limited", 250 end
        if calls == 2 then error("down", 0) end
        return "done"
      end, {
        backoff = { base_ms = 10, jitter = "none" },
        delay = function(_, _, results) return results and results[3] or nil end,
        on_retry = function(err, attempt, delay) seen[#seen + 1] = { err, attempt, delay } end,
      })
      assert.equal("done", v)
      assert.same({ { "limited", 1, 250 }, { "down", 2, 20 } }, seen)
      assert.equal(270, keel.now() - t0)
    end)
  end)
end)

describe("events: x:on(event, fn)", function()
  it("breaker: success, error, slow, not_permitted", function()
    sim(function()
      local b = keel.breaker { size = 2, min_calls = 2, slow_ms = 50, open_ms = 100 }
      local log = {}
      for _, e in ipairs { "success", "error", "slow", "not_permitted" } do
        b:on(e, function(a) log[#log + 1] = e .. ":" .. tostring(a) end)
      end
      b:call(function() keel.sleep(60) return 1 end)
      pcall(b.call, b, function() error("x", 0) end)
      b:call(function() end)
      b:record(false, 0) -- a late outcome while open is not counted, so not an event
      assert.same({ "success:60", "slow:60", "error:x", "not_permitted:nil" }, log)
      assert.has_error(function() b:on("explode", print) end,
        'breaker:on: argument \'event\' must be one of error, ignored_error, not_permitted, slow, state, success '
        .. '(got "explode")')
      assert.has_error(function() b:on("success", 5) end, "breaker:on: argument 'fn' must be a function (got 5)")
    end)
  end)

  it("retry: retry and give_up; bulkhead: rejected; ratelimit: limited", function()
    sim(function()
      local r = keel.retry.new { attempts = 3, backoff = { base_ms = 5, jitter = "none" } }
      local log = {}
      r:on("retry", function(err, attempt, delay) log[#log + 1] = { "retry", err, attempt, delay } end)
      r:on("give_up", function(err, attempts) log[#log + 1] = { "give_up", err, attempts } end)
      assert.has_error(function() r:call(function(x) error(x, 0) end, "no") end, "no")
      assert.same({ { "retry", "no", 1, 5 }, { "retry", "no", 2, 10 }, { "give_up", "no", 3 } }, log)
      assert.equal("a-b", r:call(function(a, b) return a .. "-" .. b end, "a", "b"))

      local bh = keel.bulkhead { max = 1 }
      local codes = {}
      bh:on("rejected", function(code) codes[#codes + 1] = code end)
      local p = bh:acquire()
      assert.same({ nil, "full" }, { bh:run(function() end) })
      p:release()
      assert.same({ "full" }, codes)

      local rl = keel.ratelimit { rate = 1, per_ms = 1000 }
      local limited = {}
      rl:on("limited", function(after) limited[#limited + 1] = after end)
      assert(rl:take())
      assert.is_nil(rl:take())
      assert.same({ 1000 }, limited)
    end)
  end)

  it("a failing listener is reported, never breaks the call", function()
    sim(function()
      local sched = require "keel.sched"
      local reported, report = {}, sched.report
      sched.report = function(msg) reported[#reported + 1] = msg end
      local b = keel.breaker { name = "x" }
      b:on("success", function() error("listener bug") end)
      local ok, v = pcall(b.call, b, function() return "ok" end)
      sched.report = report
      assert.same({ true, "ok" }, { ok, v })
      assert.equal(1, #reported)
      assert.truthy(reported[1]:find("keel.breaker(x): 'success' listener failed: ", 1, true))
      assert.truthy(reported[1]:find("listener bug", 1, true))
    end)
  end)
end)
