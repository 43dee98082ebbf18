-- keel.ratelimit: the same cases on both backends.
local raises = require("contract.backends").raises

return function(B)
  local function new(opts) return B.new("ratelimit", opts) end

  it("take() allows a burst, then returns nil, 'limited', retry_after_ms", function()
    B.run(function()
      local rl = new { rate = 1, per_ms = 60000, burst = 3 }
      assert.equal(3, rl:available())
      for _ = 1, 3 do assert.is_true(rl:take()) end
      local ok, code, after = rl:take()
      assert.is_nil(ok)
      assert.equal("limited", code)
      assert.is_number(after)
      assert.is_true(after > 0 and after <= 60000)
      assert.is_true(rl:available() < 1)
      -- more than the burst can never be taken
      local ok2, code2, after2 = rl:take(4)
      assert.is_nil(ok2)
      assert.equal("limited", code2)
      assert.equal(math.huge, after2)
    end)
  end)

  it("wait() waits for the next unit; 'timeout' and 'limited' come back at once", function()
    B.run(function()
      local rl = new { rate = 1, per_ms = 1000, burst = 1 }
      assert.is_true(rl:take())
      assert.same({ nil, "timeout" }, { rl:wait(1, 0) })
      assert.same({ nil, "limited" }, { rl:wait(2) })
      assert.is_true(rl:wait(1, 60000))
    end)
  end)

  it("on('limited', fn): refused takes and waits, with the retry-after and the key", function()
    B.run(function()
      local rl = new { rate = 1, per_ms = 60000, burst = 1, keyed = true }
      local seen = {}
      rl:on("limited", function(after, key) seen[#seen + 1] = { after ~= nil and after > 0, key } end)
      assert.is_true(rl:take("k"))
      assert.is_nil(rl:take("k"))
      assert.same({ nil, "timeout" }, { rl:wait("k", 1, 0) })
      assert.same({ nil, "limited" }, { rl:wait("k", 2) })
      assert.same({ { true, "k" }, { false, "k" }, { true, "k" } }, seen)
      raises(function() rl:on("full", print) end, "ratelimit:on", "argument 'event'")
    end)
  end)

  it("keyed = true: each key has its own budget", function()
    B.run(function()
      local o = { rate = 1, per_ms = 60000, burst = 2, keyed = true }
      if not B.redis then o.max_keys = 100 end
      local rl = new(o)
      assert.is_true(rl:take("a"))
      assert.is_true(rl:take("a"))
      assert.equal("limited", select(2, rl:take("a")))
      assert.is_true(rl:take("b"))
      assert.is_true(rl:take(7, 1))
      assert.is_true(math.abs(rl:available(7) - 1) < 0.01)
      assert.same({ nil, "timeout" }, { rl:wait("a", 1, 0) })
    end)
  end)

  it("takes the same options with the same defaults", function()
    B.run(function()
      local rl = new { rate = 5, name = "contract-rl" }
      local s = rl:stats()
      assert.equal(5, s.rate)
      assert.equal(1000, s.per_ms)
      assert.equal(5, s.burst)
      assert.equal(1, new({ rate = 0.5 }):stats().burst)
      assert.equal(1e-9, new({ rate = 1, per_ms = 1e-9 }):stats().per_ms)
      assert.is_string(tostring(rl))
    end)
  end)

  it("rejects bad options naming the option", function()
    B.run(function()
      raises(function() new {} end, "ratelimit", "option 'rate'")
      raises(function() new { rate = 0 } end, "ratelimit", "option 'rate'")
      raises(function() new { rate = 1, per_ms = 0 } end, "ratelimit", "option 'per_ms'")
      raises(function() new { rate = 1, per_ms = 1e13 } end, "ratelimit", "option 'per_ms'")
      raises(function() new { rate = 1, burst = 0.5 } end, "ratelimit", "option 'burst'")
      raises(function() new { rate = 1, keyed = "yes" } end, "ratelimit", "option 'keyed'")
      raises(function() new { rate = 1, max_keys = 10 } end, "ratelimit", "option 'max_keys'", "keyed = true")
      raises(function() new { rate = 1, burts = 2 } end, "ratelimit", "unknown option 'burts'")
      -- the Redis variant's own options, without redis = client, say so
      if not B.redis then
        raises(function() new { rate = 1, prefix = 1 } end, "ratelimit", "option 'prefix'",
          "Redis backend only", "redis = client")
      end
      if B.redis then
        raises(function() new { rate = 1, keyed = true, max_keys = 10 } end, "ratelimit", "option 'max_keys'",
          "Redis")
      end
    end)
  end)

  it("rejects bad arguments naming the method and argument", function()
    B.run(function()
      local rl = new { rate = 1 }
      raises(function() rl:take(0) end, "ratelimit:take", "argument 'n'")
      raises(function() rl:take(-1) end, "ratelimit:take", "argument 'n'")
      raises(function() rl:take("1") end, "ratelimit:take", "argument 'n'")
      raises(function() rl:wait(1, -1) end, "ratelimit:wait", "argument 'timeout_ms'")
      raises(function() rl.take() end, "ratelimit:take", "call it as a method")
      local k = new { rate = 1, keyed = true }
      raises(function() k:take(nil) end, "ratelimit:take", "argument 'key'")
      raises(function() k:take({}) end, "ratelimit:take", "argument 'key'")
      raises(function() k:wait("a", 0) end, "ratelimit:wait", "argument 'n'")
      raises(function() k:available(nil) end, "ratelimit:available", "argument 'key'")
    end)
  end)
end
