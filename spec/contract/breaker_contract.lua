-- keel.breaker: the same cases on both backends, with both windows.
local keel = require "keel"
local raises = require("contract.backends").raises

return function(B)
  local function new(opts) return B.new("breaker", opts) end
  local function boom() error("boom", 0) end

  local function trip(b, n)
    for _ = 1, n do
      local ok, permit = b:allow()
      assert.is_true(ok)
      b:record(false, 1, permit)
    end
  end

  -- Cases share their waits (real time on Redis): breakers that must reach
  -- half-open are built and tripped together, then one wait.
  it("opens at failure_rate after min_calls, refuses with nil, 'open', half-opens after open_ms (both windows)",
    function()
    B.run(function()
      local all, seen = {}, {}
      for _, window in ipairs { "count", "time" } do
        local b = new { window = window, size = 60, min_calls = 4, failure_rate = 50, open_ms = 600,
                        half_open_calls = 1 }
        seen[b] = {}
        b:on_state(function(from, to) table.insert(seen[b], from .. ">" .. to) end)
        all[#all + 1] = b
      end
      for _, b in ipairs(all) do
        assert.equal("closed", b:state())
        b:record(true, 1); b:record(true, 1); b:record(false, 1)
        assert.equal("closed", b:state())
        b:record(false, 1) -- 2 of 4 failed
        assert.equal("open", b:state())
        assert.same({ nil, "open" }, { b:allow() })
        local called = false
        assert.same({ nil, "open" }, { b:call(function() called = true end) })
        assert.is_false(called)
      end
      B.wait(600)
      for _, b in ipairs(all) do
        assert.equal("half_open", b:state())
        local ok, permit = b:allow()
        assert.is_true(ok)
        assert.same({ nil, "open" }, { b:allow() }) -- one permit
        b:record(true, 1, permit)
        assert.equal("closed", b:state())
        assert.is_true((b:allow()))
        assert.same({ "closed>open", "open>half_open", "half_open>closed" }, seen[b])
      end
    end)
  end)

  it("count window: the oldest outcome leaves as a new one comes", function()
    B.run(function()
      local b = new { size = 4, min_calls = 4, failure_rate = 75, open_ms = 60000 }
      local function rec(ok) b:record(ok, 1); return b:state() end
      rec(false); rec(false); rec(true)
      assert.equal("closed", rec(true))  -- F F S S: 50%
      assert.equal("closed", rec(true))  -- F S S S: 25%
      rec(false)
      assert.equal("closed", rec(false)) -- S S F F: 50%
      assert.equal("open", rec(false))   -- S F F F: 75%
    end)
  end)

  it("cancel() gives a half-open permit back; a failed probe opens it again", function()
    B.run(function()
      local b = new { window = "time", size = 60, min_calls = 2, open_ms = 600, half_open_calls = 1 }
      trip(b, 2)
      assert.equal("open", b:state())
      B.wait(600)
      assert.equal("half_open", b:state())
      local ok, permit = b:allow()
      assert.is_true(ok)
      b:cancel(permit)
      ok, permit = b:allow()
      assert.is_true(ok)
      b:record(false, 1, permit)
      assert.equal("open", b:state())
    end)
  end)

  it("open_ms = {base_ms, cap_ms, factor}: consecutive openings last longer", function()
    B.run(function()
      local b = new { size = 10, min_calls = 2, open_ms = { 600, 100000, 10 }, half_open_calls = 1 }
      trip(b, 2)
      assert.equal("open", b:state())
      B.wait(600)
      assert.equal("half_open", b:state())
      local ok, permit = b:allow()
      assert.is_true(ok)
      b:record(false, 1, permit)
      assert.equal("open", b:state())
      B.wait(600)
      assert.equal("open", b:state()) -- the second opening lasts 6 s
      b:force("closed")                -- a close starts the count again
      trip(b, 2)
      B.wait(600)
      assert.equal("half_open", b:state())
    end)
  end)

  it("half_open_calls permits; once all are recorded the rates decide", function()
    B.run(function()
      local b = new { size = 10, min_calls = 2, failure_rate = 50, open_ms = 600, half_open_calls = 3 }
      local d = new { size = 10, min_calls = 1, open_ms = 600 } -- the default is 10 permits, as locally
      trip(b, 2)
      trip(d, 1)
      B.wait(600)
      for _ = 1, 10 do assert.is_true((d:allow())) end
      assert.same({ nil, "open" }, { d:allow() })
      assert.equal("half_open", b:state())
      local permits = {}
      for i = 1, 3 do
        local ok, permit = b:allow()
        assert.is_true(ok)
        permits[i] = permit
      end
      assert.same({ nil, "open" }, { b:allow() })
      b:record(true, 1, permits[1])
      b:record(false, 1, permits[2])
      assert.equal("half_open", b:state()) -- 2 of 3 in
      b:record(false, 1, permits[3])
      assert.equal("open", b:state())      -- 2 of 3 failed >= 50%
      B.wait(600)
      assert.equal("half_open", b:state())
      for _ = 1, 3 do
        local ok, permit = b:allow()
        assert.is_true(ok)
        b:record(true, 1, permit)
      end
      assert.equal("closed", b:state())
    end)
  end)

  it("slow calls open it at slow_rate", function()
    B.run(function()
      local b = new { window = "time", size = 60, min_calls = 2, slow_ms = 100, slow_rate = 50,
                      failure_rate = 100 }
      b:record(true, 150)
      b:record(true, 5)
      assert.equal("open", b:state())
      local fast = new { window = "time", size = 60, min_calls = 2, slow_ms = 100, slow_rate = 100 }
      fast:record(true, 150)
      fast:record(true, 5)
      assert.equal("closed", fast:state()) -- 50% slow < 100%, no failures
    end)
  end)

  it("call() returns fn's results and re-raises its error", function()
    B.run(function()
      local b = new { window = "time", size = 60 }
      assert.same({ 1, 2 }, { b:call(function(x) return x, 2 end, 1) })
      local ok, err = pcall(b.call, b, boom)
      assert.is_false(ok)
      assert.equal("boom", err)
    end)
  end)

  it("force() moves it to any of the five states", function()
    B.run(function()
      local b = new { window = "time", size = 60, open_ms = 60000 }
      assert.equal(b, b:force("open"))
      assert.equal("open", b:state())
      assert.same({ nil, "open" }, { b:allow() })
      b:force("half_open")
      assert.equal("half_open", b:state())
      b:force("closed")
      assert.equal("closed", b:state())
      assert.is_true((b:allow()))
      -- forced_open refuses and disabled allows everything, records nothing, until the next force
      b:force("forced_open")
      assert.equal("forced_open", b:state())
      assert.same({ nil, "open" }, { b:allow() })
      b:force("disabled")
      assert.equal("disabled", b:state())
      for _ = 1, 200 do
        assert.is_true((b:allow()))
        b:record(false, 1)
      end
      assert.equal("disabled", b:state())
      b:force("closed")
      assert.equal("closed", b:state())
      assert.is_true((b:allow()))
    end)
  end)

  it("takes the same options with the same defaults", function()
    B.run(function()
      local b = new { window = "time", size = 20, min_calls = 5, failure_rate = 40, slow_ms = 1000,
                      slow_rate = 80, open_ms = 600, half_open_calls = 1, name = "contract-breaker" }
      assert.equal("closed", b:state())
      assert.is_table(b:stats())
      assert.is_string(tostring(b))
      -- defaults: a count window of 100 calls, min_calls 100, failure_rate 50
      local d = new {}
      trip(d, 49)
      for _ = 1, 50 do d:record(true, 1) end
      assert.equal("closed", d:state()) -- 99 calls
      trip(d, 1)
      assert.equal("open", d:state())   -- 50 of 100
      local t = new { window = "time" } -- the last 100 seconds
      trip(t, 99)
      assert.equal("closed", t:state())
      trip(t, 1)
      assert.equal("open", t:state())
    end)
  end)

  it("counts nil, <transport failure> as a failure; record_error, ignore_error and events as keel.breaker", function()
    B.run(function()
      local b = new { size = 4, min_calls = 4, failure_rate = 50, open_ms = 60000 }
      local events = {}
      b:on("error", function(err) events[#events + 1] = tostring(err) end)
      b:on("success", function() events[#events + 1] = "ok" end)
      b:call(function() return nil, "not found" end)
      b:call(function() return "v" end)
      b:call(function() return nil, "timeout: no reply before the deadline" end)
      assert.equal("closed", b:state())
      b:call(function() return nil, "conn: connection lost" end)
      assert.equal("open", b:state())
      assert.same({ "ok", "ok", "timeout: no reply before the deadline", "conn: connection lost" }, events)
      local c = new { size = 2, min_calls = 2, failure_rate = 50, record_error = function(e) return e ~= "benign" end,
                      ignore_error = function(e) return e == "skip" end }
      for _ = 1, 3 do
        pcall(c.call, c, function() error("benign", 0) end)
        pcall(c.call, c, function() error("skip", 0) end)
      end
      assert.equal("closed", c:state())
      raises(function() b:on("nope", print) end, "breaker:on", "argument 'event'")
    end)
  end)

  it("rejects bad options naming the option", function()
    B.run(function()
      raises(function() new { window = "hour" } end, "breaker", "option 'window'")
      raises(function() new { window = "time", size = 0 } end, "breaker", "option 'size'")
      raises(function() new { min_calls = 0 } end, "breaker", "option 'min_calls'")
      raises(function() new { failure_rate = 0 } end, "breaker", "option 'failure_rate'")
      raises(function() new { failure_rate = 101 } end, "breaker", "option 'failure_rate'")
      raises(function() new { slow_rate = 0 } end, "breaker", "option 'slow_rate'")
      raises(function() new { slow_ms = -1 } end, "breaker", "option 'slow_ms'")
      raises(function() new { open_ms = -1 } end, "breaker", "option 'open_ms'")
      -- Resilience4j CircuitBreakerConfigTest.zeroSlowCallDurationThresholdShouldFail / zeroWaitIntervalShouldFail
      raises(function() new { slow_ms = 0 } end, "breaker", "option 'slow_ms'", "> 0")
      raises(function() new { open_ms = 0 } end, "breaker", "option 'open_ms'", "(0,")
      raises(function() new { open_ms = { 0 } } end, "breaker", "option 'open_ms.base_ms'")
      raises(function() new { half_open_calls = 0 } end, "breaker", "option 'half_open_calls'")
      raises(function() new { name = 5 } end, "breaker", "option 'name'")
      raises(function() new { rate = 5 } end, "breaker", "unknown option 'rate'")
      -- the Redis variant's own options, without redis = client, say so
      if not B.redis then
        raises(function() new { sync_ms = 1 } end, "breaker", "option 'sync_ms'",
          "Redis backend only", "redis = client")
      end
      raises(function() new { size = 1000001 } end, "breaker", "option 'size'")
      raises(function() new { size = 2.5 } end, "breaker", "option 'size'")
      -- the issue's example: "change one option"
      assert.equal("closed", new({ size = 20 }):state())
      assert.equal("closed", new({ window = "count", size = 20, min_calls = 10 }):state())
      if B.redis then
        -- what Redis cannot keep is refused with the way to say it there
        raises(function() new { open_ms = keel.backoff { base_ms = 100, jitter = "full" } } end, "breaker",
          "option 'open_ms'", "{base_ms, cap_ms, factor}")
      else
        assert.equal("closed", new({ open_ms = keel.backoff { base_ms = 100, jitter = "full" } }):state())
      end
      assert.equal("closed", new({ open_ms = { 100, 1000 } }):state())
      assert.equal("closed", new({ open_ms = keel.backoff { base_ms = 100, jitter = "none" } }):state())
      raises(function() new { open_ms = { -1 } } end, "breaker", "option 'open_ms.base_ms'")
      raises(function() new { open_ms = { 100, 50 } } end, "breaker", "option 'open_ms.cap_ms'")
      raises(function() new { open_ms = { 100, 1000, 0.5 } } end, "breaker", "option 'open_ms.factor'")
      raises(function() new { open_ms = "1s" } end, "breaker", "option 'open_ms'")
    end)
  end)

  it("rejects bad arguments naming the method and argument", function()
    B.run(function()
      local b = new { window = "time", size = 60 }
      raises(function() b:record(true, "1") end, "breaker:record", "argument 'duration_ms'")
      raises(function() b:record(true, 0 / 0) end, "breaker:record", "argument 'duration_ms'")
      raises(function() b:call(42) end, "breaker:call", "argument 'fn'")
      raises(function() b:on_state("f") end, "breaker:on_state", "argument 'fn'")
      raises(function() b:force("shut") end, "breaker:force", "argument 'state'")
      raises(function() b.allow() end, "breaker:allow", "call it as a method")
    end)
  end)
end
