-- keel.leases: the same cases on both backends.
local keel = require "keel"
local raises = require("contract.backends").raises

return function(B)
  local function new(opts) return B.new("leases", opts) end

  it("acquire/held/holder/valid/renew/release with growing tokens", function()
    B.run(function()
      local ls = new { ttl_ms = 60000 }
      local l = assert(ls:acquire("job", "w1"))
      assert.equal("job", l.key)
      assert.equal("w1", l.owner)
      assert.is_number(l.token)
      assert.same({ nil, "held" }, { ls:acquire("job", "w2") })
      assert.same({ nil, "timeout" }, { ls:acquire("job", "w2", { wait_ms = 0 }) })
      local owner, token = ls:holder("job")
      assert.equal("w1", owner)
      assert.equal(l.token, token)
      assert.is_nil(ls:holder("other"))
      assert.is_true(ls:valid("job", l.token))
      assert.is_false(ls:valid("job", l.token + 1))
      local ok, expires = l:renew(30000)
      assert.is_true(ok)
      assert.is_number(expires)
      assert.same({ nil, "lost" }, { ls:renew("job", l.token + 1) })
      assert.is_true(l:release())
      assert.same({ nil, "lost" }, { l:release() })
      assert.is_false(l:valid())
      local l2 = assert(ls:acquire("job", "w2"))
      assert.is_true(l2.token > l.token)
      assert.is_true(ls:release("job", l2.token))
    end)
  end)

  it("wait_ms: a waiter gets the lease when the holder releases", function()
    B.run(function()
      local ls = new { ttl_ms = 60000 }
      local l = assert(ls:acquire("k", "a"))
      local t = keel.spawn(function() return ls:acquire("k", "b", { wait_ms = 60000 }) end)
      keel.sleep(20)
      assert.is_true(l:release())
      local joined, got = t:join()
      assert.is_true(joined)
      assert.is_table(got)
      assert.equal("b", got.owner)
      assert.is_true(got.token > l.token)
    end)
  end)

  it("a lease not renewed is gone after ttl_ms", function()
    B.run(function()
      local ls = new { ttl_ms = 300 }
      local l = assert(ls:acquire("k", "a"))
      B.wait(400)
      assert.is_false(l:valid())
      assert.same({ nil, "lost" }, { l:renew() })
      local l2 = assert(ls:acquire("k", "b", { ttl_ms = 60000 }))
      assert.is_true(l2.token > l.token)
    end)
  end)

  it("takes the same options: ttl_ms (any finite > 0), name; close()", function()
    B.run(function()
      local ls = new { ttl_ms = 0.5, name = "contract-leases" }
      assert.truthy(ls:acquire("x", "me", { ttl_ms = 60000 }))
      assert.truthy(ls:acquire("y", 7, { ttl_ms = 0.5 }))
      assert.is_table(ls:stats())
      assert.is_string(tostring(ls))
      ls:close()
    end)
  end)

  it("rejects bad options naming the option", function()
    B.run(function()
      raises(function() new { ttl_ms = 0 } end, "leases", "option 'ttl_ms'")
      raises(function() new { ttl_ms = -5 } end, "leases", "option 'ttl_ms'")
      raises(function() new { ttl_ms = math.huge } end, "leases", "option 'ttl_ms'")
      raises(function() new { name = 1 } end, "leases", "option 'name'")
      raises(function() new { ttl = 1 } end, "leases", "unknown option 'ttl'")
      -- the Redis variant's own options, without redis = client, say so
      if not B.redis then
        raises(function() new { poll_ms = 1 } end, "leases", "option 'poll_ms'",
          "Redis backend only", "redis = client")
      end
      if B.redis then
        raises(function() new { max = 10 } end, "leases", "option 'max'", "Redis")
      else
        raises(function() new { max = 0 } end, "leases", "option 'max'")
      end
    end)
  end)

  it("rejects bad arguments naming the method and argument", function()
    B.run(function()
      local ls = new {}
      raises(function() ls:acquire(nil, "o") end, "leases:acquire", "argument 'key'")
      raises(function() ls:acquire("k", nil) end, "leases:acquire", "argument 'owner'")
      raises(function() ls:acquire("k", "o", { ttl_ms = 0 }) end, "leases:acquire", "option 'ttl_ms'")
      raises(function() ls:acquire("k", "o", { wait_ms = -1 }) end, "leases:acquire", "option 'wait_ms'")
      raises(function() ls:acquire("k", "o", { wait = 1 }) end, "leases:acquire", "unknown option 'wait'")
      raises(function() ls:renew("k", "t") end, "leases:renew", "argument 'token'")
      raises(function() ls:renew("k", 1, 0) end, "leases:renew", "argument 'ttl_ms'")
      raises(function() ls:release("k", nil) end, "leases:release", "argument 'token'")
      raises(function() ls:valid({}, 1) end, "leases:valid", "argument 'key'")
      raises(function() ls.holder("k") end, "leases:holder", "call it as a method")
    end)
  end)

  it("has the same methods; count() only where the backend can keep it", function()
    B.run(function()
      local ls = new {}
      for _, m in ipairs { "acquire", "renew", "release", "holder", "valid", "count", "stats", "close" } do
        assert.is_function(ls[m], m)
      end
      if B.redis then
        raises(function() ls:count() end, "leases:count", "Redis", "holder(key)")
      else
        assert.truthy(ls:acquire("a", 1))
        assert.equal(1, ls:count())
      end
    end)
  end)
end
