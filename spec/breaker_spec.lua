local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 1 }, fn) end
local function fail() error("boom") end
local function succeed() return "ok" end

describe("keel.breaker", function()
  it("opens at the failure rate once min_calls is reached", function()
    sim(function()
      local b = keel.breaker { size = 4, min_calls = 4, failure_rate = 50, open_ms = 1000 }
      assert.equal("closed", b:state())
      assert.has_error(function() b:call(fail) end, nil)
      assert.equal("ok", b:call(succeed))
      assert.has_error(function() b:call(fail) end)
      assert.equal("closed", b:state())
      assert.equal("ok", b:call(succeed)) -- 2 of 4 failed = 50%
      assert.equal("open", b:state())
      local v, code = b:call(succeed)
      assert.is_nil(v)
      assert.equal("open", code)
      assert.same({ nil, "open" }, { b:allow() })
    end)
  end)

  it("returns fn's results and re-raises its error value", function()
    sim(function()
      local b = keel.breaker {}
      local a, c, d = b:call(function(x, y) return x, y, nil end, 1, 2)
      assert.same({ 1, 2 }, { a, c })
      assert.is_nil(d)
      local err = {}
      local ok, got = pcall(b.call, b, function() error(err) end)
      assert.is_false(ok)
      assert.equal(err, got)
    end)
  end)

  it("goes half_open exactly at open_ms and closes on good probes", function()
    sim(function()
      local b = keel.breaker { size = 2, min_calls = 2, open_ms = 500, half_open_calls = 2 }
      b:record(false, 1); b:record(false, 1)
      assert.equal("open", b:state())
      keel.sleep(499.5)
      assert.equal("open", b:state())
      keel.sleep(0.5)
      assert.equal("half_open", b:state())
      assert.is_true(b:allow())
      assert.is_true(b:allow())
      assert.same({ nil, "open" }, { b:allow() }) -- exactly half_open_calls permits
      b:record(true, 1)
      assert.equal("half_open", b:state())
      b:record(true, 1)
      assert.equal("closed", b:state())
      assert.equal(0, b:stats().window_calls)
    end)
  end)

  it("reopens when half_open probes fail", function()
    sim(function()
      local b = keel.breaker { size = 2, min_calls = 2, open_ms = 100, half_open_calls = 1 }
      b:record(false); b:record(false)
      keel.sleep(100)
      assert.is_true(b:allow())
      b:record(false)
      assert.equal("open", b:state())
      assert.equal(2, b:stats().opened)
    end)
  end)

  it("opens on slow calls", function()
    sim(function()
      local b = keel.breaker { size = 2, min_calls = 2, slow_ms = 100, slow_rate = 100 }
      b:record(true, 99); b:record(true, 100)
      assert.equal("closed", b:state())
      b:record(true, 150)
      assert.equal("open", b:state())
      local s = b:stats()
      assert.equal(2, s.window_slow)
    end)
  end)

  it("measures call durations on the world clock", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, slow_ms = 50 }
      b:call(function() keel.sleep(49) end)
      assert.equal("closed", b:state())
      b:call(function() keel.sleep(50) end)
      assert.equal("open", b:state())
    end)
  end)

  it("time windows forget seconds that slid out", function()
    sim(function()
      local b = keel.breaker { window = "time", size = 2, min_calls = 3, failure_rate = 50 }
      b:record(false); b:record(false)
      keel.sleep(2000)
      b:record(false) -- the first two are out of the window
      assert.equal("closed", b:state())
      assert.equal(1, b:stats().window_calls)
      b:record(true); b:record(false)
      assert.equal("open", b:state())
    end)
  end)

  it("open_ms may grow with a backoff table", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, open_ms = { base_ms = 100, cap_ms = 250, factor = 2 },
                               half_open_calls = 1 }
      local opened_for = {}
      for _ = 1, 3 do
        b:record(false)
        local t0 = keel.now()
        while b:state() == "open" do keel.sleep(1) end
        opened_for[#opened_for + 1] = keel.now() - t0
        b:allow()
      end
      assert.same({ 100, 200, 250 }, opened_for)
      b:record(true)
      assert.equal("closed", b:state())
      assert.equal(0, b:stats().consecutive_opens)
    end)
  end)

  it("open_ms accepts a keel.backoff", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1,
                               open_ms = keel.backoff { base_ms = 10, jitter = "none", factor = 3 } }
      b:record(false)
      assert.equal(keel.now() + 10, b:stats().open_until_ms)
    end)
  end)

  it("force moves to any state; closed resets the window", function()
    sim(function()
      local b = keel.breaker { size = 4, min_calls = 4, open_ms = 10 }
      b:force("forced_open")
      keel.sleep(1000)
      assert.equal("forced_open", b:state())
      assert.same({ nil, "open" }, { b:allow() })
      b:force("disabled")
      for _ = 1, 10 do b:record(false) end
      assert.equal("disabled", b:state())
      assert.is_true(b:allow())
      b:force("closed")
      b:record(false); b:record(false); b:record(false)
      b:force("closed")
      b:record(false)
      assert.equal("closed", b:state())
      b:force("open")
      assert.equal("open", b:state())
      keel.sleep(10)
      assert.equal("half_open", b:state())
      b:force("half_open")
      assert.equal(10, b:stats().half_open_permits)
    end)
  end)

  it("fires on_state callbacks after each transition, in order", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, open_ms = 10, half_open_calls = 1 }
      local seen = {}
      b:on_state(function(from, to)
        seen[#seen + 1] = from .. ">" .. to
        assert.equal(to, b:state()) -- the transition is complete
      end)
      b:record(false)
      keel.sleep(10)
      b:allow()
      b:record(true)
      b:force("forced_open")
      b:force("closed")
      assert.same({ "closed>open", "open>half_open", "half_open>closed", "closed>forced_open",
                    "forced_open>closed" }, seen)
    end)
  end)

  it("survives failing and re-entrant callbacks", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, open_ms = 10 }
      local seen = {}
      b:on_state(function() error("callback bug") end)
      b:on_state(function(from, to)
        seen[#seen + 1] = from .. ">" .. to
        if to == "open" then b:force("closed") end -- re-entrant
      end)
      b:record(false)
      assert.same({ "closed>open", "open>closed" }, seen)
      assert.equal("closed", b:state())
      assert.equal("ok", b:call(succeed))
    end)
  end)

  it("gives a cancelled call's half_open permit back", function()
    sim(function()
      local b = keel.breaker { size = 1, min_calls = 1, open_ms = 10, half_open_calls = 1 }
      b:record(false)
      keel.sleep(10)
      local t = keel.spawn(function() b:call(function() keel.sleep(1000) end) end)
      keel.sleep(1)
      assert.equal(0, b:stats().half_open_permits)
      t:cancel()
      keel.sleep(1)
      assert.equal(1, b:stats().half_open_permits)
      assert.equal("ok", b:call(succeed))
      assert.equal("closed", b:state())
    end)
  end)

  it("counts in stats and registers when named", function()
    sim(function()
      local b = keel.breaker { name = "spec-breaker", size = 2, min_calls = 2 }
      b:call(succeed)
      pcall(b.call, b, fail)
      local s = b:stats()
      assert.equal(2, s.calls)
      assert.equal(1, s.failures)
      assert.equal(50, s.failure_rate)
      assert.equal("open", s.state)
      assert.equal(2, s.allowed)
      b:allow()
      assert.equal(1, b:stats().rejected)
      assert.is_table(require("keel.metrics").collect().breaker["spec-breaker"])
    end)
  end)

  it("replays the same transitions for the same seed", function()
    local function run(seed)
      return keel.sim({ seed = seed }, function()
        local b = keel.breaker { window = "time", size = 5, min_calls = 5, open_ms = { 200, 2000 },
                                 half_open_calls = 3, slow_ms = 80, slow_rate = 60 }
        local log = {}
        b:on_state(function(from, to) log[#log + 1] = string.format("%d:%s>%s", keel.now(), from, to) end)
        for _ = 1, 400 do
          pcall(b.call, b, function()
            keel.sleep(keel.random(1, 100))
            if keel.random() < 0.4 then error("flaky") end
          end)
          keel.sleep(keel.random(0, 20))
        end
        return table.concat(log, " ")
      end)
    end
    local a = run(11)
    assert.truthy(a:match("open"))
    assert.equal(a, run(11))
    assert.are_not.equal(a, run(12))
  end)

  it("rejects bad options naming the option", function()
    local bad = {
      { { size = 0 }, "option 'size'" }, { { size = 1.5 }, "option 'size'" },
      { { size = 1e7 }, "option 'size'" }, { { min_calls = -1 }, "option 'min_calls'" },
      { { failure_rate = 0 }, "option 'failure_rate'" }, { { failure_rate = 101 }, "option 'failure_rate'" },
      { { failure_rate = 0 / 0 }, "option 'failure_rate'" }, { { slow_ms = -1 }, "option 'slow_ms'" },
      { { slow_rate = "x" }, "option 'slow_rate'" }, { { open_ms = -5 }, "option 'open_ms'" },
      { { open_ms = "x" }, "option 'open_ms'" }, { { half_open_calls = 0 }, "option 'half_open_calls'" },
      { { window = "sliding" }, "option 'window'" }, { { name = 5 }, "option 'name'" },
      { { bogus = 1 }, "unknown option 'bogus'" }, { { open_ms = { base_ms = -1 } }, "option 'open_ms.base_ms'" },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(keel.breaker, c[1])
      assert.is_false(ok)
      assert.matches("keel.breaker: " .. c[2], err, 1, true)
    end
    assert.has_error(function() keel.breaker(5) end, nil)
  end)

  it("rejects bad arguments and method calls with a dot", function()
    local b = keel.breaker {}
    assert.has_error(function() b.allow() end)
    assert.has_error(function() b.record(5) end)
    assert.has_error(function() b:record(true, "slow") end)
    assert.has_error(function() b:record(true, 0 / 0) end)
    assert.has_error(function() b:force("ajar") end)
    assert.has_error(function() b:force(nil) end)
    assert.has_error(function() b:call(nil) end)
    assert.has_error(function() b:on_state(42) end)
    assert.has_error(function() b.state({}) end)
    local ok, err = pcall(b.allow, {})
    assert.is_false(ok)
    assert.matches("method", err)
  end)
end)
