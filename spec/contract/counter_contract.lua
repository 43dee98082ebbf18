-- keel.counter: the same cases on both backends.
local raises = require("contract.backends").raises

return function(B)
  local function new(opts) return B.new("counter", opts) end

  it("add() counts, value() sums, reset() returns the total and zeroes", function()
    B.run(function()
      local c = new { shards = 4 }
      assert.equal(0, c:value())
      assert.is_true(c:add())
      assert.is_true(c:add(5))
      assert.is_true(c:add(-2))
      for _ = 1, 10 do c:add(1) end
      assert.equal(14, c:value())
      assert.equal(14, c:reset())
      assert.equal(0, c:value())
      assert.equal(0, c:reset())
    end)
  end)

  it("takes the same options: shards (1..1024), name", function()
    B.run(function()
      local c = new { shards = 1, name = "contract-counter" }
      c:add(2 ^ 53)
      assert.equal(2 ^ 53, c:value())
      assert.equal(1, c:stats().shards)
      assert.is_string(tostring(c))
      assert.equal(1024, new({ shards = 1024 }):stats().shards)
    end)
  end)

  it("rejects bad options naming the option", function()
    B.run(function()
      raises(function() new { shards = 0 } end, "counter", "option 'shards'")
      raises(function() new { shards = 1025 } end, "counter", "option 'shards'")
      raises(function() new { shards = 1.5 } end, "counter", "option 'shards'")
      raises(function() new { name = {} } end, "counter", "option 'name'")
      raises(function() new { shard = 2 } end, "counter", "unknown option 'shard'")
      -- the Redis variant's own options, without redis = client, say so
      if not B.redis then
        raises(function() new { prefix = 1 } end, "counter", "option 'prefix'",
          "Redis backend only", "redis = client")
      end
      raises(function() B.new("counter", 5) end, "counter", "options must be a table")
    end)
  end)

  it("rejects bad arguments naming the method and argument", function()
    B.run(function()
      local c = new {}
      raises(function() c:add(1.5) end, "counter:add", "argument 'n'", "1.5")
      raises(function() c:add("2") end, "counter:add", "argument 'n'")
      raises(function() c:add(2 ^ 54) end, "counter:add", "argument 'n'")
      raises(function() c:add(0 / 0) end, "counter:add", "argument 'n'")
      raises(function() c.add(1) end, "counter:add", "call it as a method")
      raises(function() c.value() end, "counter:value", "call it as a method")
    end)
  end)
end
