-- keel.dedup: the same cases on both backends.
local raises = require("contract.backends").raises

return function(B)
  local function new(opts) return B.new("dedup", opts) end

  it("seen() is false once per key, then true; forget() unmarks", function()
    B.run(function()
      local d = new { ttl_ms = 60000 }
      assert.is_false(d:seen("m1"))
      assert.is_true(d:seen("m1"))
      assert.is_false(d:seen(42))
      assert.is_true(d:seen("42")) -- a number and its text are one key
      assert.is_true(d:forget("m1"))
      assert.is_false(d:forget("m1"))
      assert.is_false(d:forget("never"))
      assert.is_false(d:seen("m1"))
    end)
  end)

  it("a mark lasts ttl_ms", function()
    B.run(function()
      local d = new { ttl_ms = 300 }
      assert.is_false(d:seen("k"))
      B.wait(400)
      assert.is_false(d:seen("k"))
    end)
  end)

  it("takes the same options: ttl_ms (any finite > 0), name", function()
    B.run(function()
      local d = new { ttl_ms = 0.5, name = "contract-dedup" }
      assert.is_false(d:seen("x"))
      assert.is_table(d:stats())
      assert.is_string(tostring(d))
    end)
  end)

  it("rejects bad options naming the option", function()
    B.run(function()
      raises(function() new { ttl_ms = 0 } end, "dedup", "option 'ttl_ms'")
      raises(function() new { ttl_ms = -1 } end, "dedup", "option 'ttl_ms'")
      raises(function() new { ttl_ms = "1s" } end, "dedup", "option 'ttl_ms'")
      raises(function() new { ttl_ms = math.huge } end, "dedup", "option 'ttl_ms'")
      raises(function() new { name = 5 } end, "dedup", "option 'name'")
      raises(function() new { ttl = 5 } end, "dedup", "unknown option 'ttl'")
      -- the Redis variant's own options, without redis = client, say so
      if not B.redis then
        raises(function() new { prefix = 1 } end, "dedup", "option 'prefix'",
          "Redis backend only", "redis = client")
      end
    end)
  end)

  it("rejects bad arguments naming the method and argument", function()
    B.run(function()
      local d = new {}
      raises(function() d:seen(nil) end, "dedup:seen", "argument 'key'")
      raises(function() d:seen({}) end, "dedup:seen", "argument 'key'")
      raises(function() d:forget(true) end, "dedup:forget", "argument 'key'")
      raises(function() d.seen("k") end, "dedup:seen", "call it as a method")
    end)
  end)

  it("has the same methods; size/clear/max only where the backend can keep them", function()
    B.run(function()
      local d = new {}
      for _, m in ipairs { "seen", "forget", "size", "clear", "stats" } do
        assert.is_function(d[m], m)
      end
      if B.redis then
        raises(function() d:size() end, "dedup:size", "Redis", "stats()")
        raises(function() d:clear() end, "dedup:clear", "Redis", "forget(key)")
        raises(function() new { max = 10 } end, "dedup", "option 'max'", "ttl_ms")
      else
        local m = new { max = 10 }
        m:seen("a"); m:seen("b")
        assert.equal(2, m:size())
        m:clear()
        assert.equal(0, m:size())
      end
    end)
  end)
end
