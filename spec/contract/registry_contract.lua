-- keel.registry: the same cases on both backends.
local raises = require("contract.backends").raises

return function(B)
  local function new(opts) return B.new("registry", opts) end

  it("bind/lookup/devices/unbind/heartbeat/size", function()
    B.run(function()
      local r = new { ttl_ms = 60000 }
      assert.is_true(r:bind("d1", "g1"))
      assert.is_true(r:bind("d2", "g1"))
      assert.is_true(r:bind(3, "g2"))
      assert.equal("g1", r:lookup("d1"))
      assert.equal("g2", r:lookup("3"))
      assert.is_nil(r:lookup("nope"))
      assert.same({ "d1", "d2" }, r:devices("g1"))
      assert.same({}, r:devices("unknown"))
      assert.equal(3, r:size())
      -- a bind elsewhere moves the device
      assert.is_true(r:bind("d1", "g2"))
      assert.equal("g2", r:lookup("d1"))
      assert.same({ "d2" }, r:devices("g1"))
      assert.equal(2, r:heartbeat("g2"))
      assert.equal(0, r:heartbeat("unknown"))
      -- unbind with a gateway only if still bound there
      assert.is_false(r:unbind("d1", "g1"))
      assert.is_true(r:unbind("d1", "g2"))
      assert.is_false(r:unbind("d1"))
      assert.equal(2, r:size())
    end)
  end)

  it("refuses a new device at max with nil, 'full'", function()
    B.run(function()
      local r = new { max = 2 }
      assert.is_true(r:bind("a", "g"))
      assert.is_true(r:bind("b", "g"))
      assert.same({ nil, "full" }, { r:bind("c", "g") })
      assert.is_true(r:bind("a", "h")) -- moving is not growing
    end)
  end)

  it("a gateway silent for ttl_ms loses its devices", function()
    B.run(function()
      local r = new { ttl_ms = 300 }
      assert.is_true(r:bind("d", "g"))
      B.wait(400)
      assert.is_nil(r:lookup("d"))
      assert.equal(0, r:heartbeat("g"))
      assert.same({}, r:devices("g"))
    end)
  end)

  it("takes the same options with the same defaults", function()
    B.run(function()
      local r = new { name = "contract-registry" }
      assert.equal(100000, r:stats().max)
      assert.is_true(new({ ttl_ms = 0.5 }):bind("x", "y"))
      assert.is_string(tostring(r))
    end)
  end)

  it("rejects bad options naming the option", function()
    B.run(function()
      raises(function() new { ttl_ms = 0 } end, "registry", "option 'ttl_ms'")
      raises(function() new { ttl_ms = math.huge } end, "registry", "option 'ttl_ms'")
      raises(function() new { max = 0 } end, "registry", "option 'max'")
      raises(function() new { max = 2 ^ 32 } end, "registry", "option 'max'")
      raises(function() new { max = 1.5 } end, "registry", "option 'max'")
      raises(function() new { ttl = 1 } end, "registry", "unknown option 'ttl'")
      -- the Redis variant's own options, without redis = client, say so
      if not B.redis then
        raises(function() new { prefix = 1 } end, "registry", "option 'prefix'",
          "Redis backend only", "redis = client")
      end
    end)
  end)

  it("rejects bad arguments naming the method and argument", function()
    B.run(function()
      local r = new {}
      raises(function() r:bind(nil, "g") end, "registry:bind", "argument 'device'")
      raises(function() r:bind("d", {}) end, "registry:bind", "argument 'gateway'")
      raises(function() r:lookup(true) end, "registry:lookup", "argument 'device'")
      raises(function() r:unbind("d", {}) end, "registry:unbind", "argument 'gateway'")
      raises(function() r:heartbeat(nil) end, "registry:heartbeat", "argument 'gateway'")
      raises(function() r:devices(nil) end, "registry:devices", "argument 'gateway'")
      raises(function() r.size() end, "registry:size", "call it as a method")
    end)
  end)
end
