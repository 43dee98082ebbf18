local keel = require "keel"
local redis_server = require "redis_server"

describe("keel.redis primitives", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server, c

  setup(function()
    server = redis_server.start()
    c = assert(keel.redis.connect(server.url))
  end)
  teardown(function()
    c:close()
    server:cleanup()
  end)

  describe("dedup", function()
    it("answers false once per key, then true until the ttl passes", function()
      local d = require("keel.redis.dedup").new { redis = c, ttl_ms = 80, prefix = "d1" }
      assert.is_false(d:seen("m1"))
      assert.is_true(d:seen("m1"))
      assert.is_false(d:seen("m2"))
      assert.is_false(d:seen(42))
      assert.is_true(d:seen("42")) -- numbers and their strings are the same key
      keel.sleep(150)
      assert.is_false(d:seen("m1"))
      assert.is_true(d:forget("m1"))
      assert.is_false(d:forget("m1"))
      assert.is_false(d:seen("m1"))
      local st = d:stats()
      assert.equal(2, st.duplicates)
    end)

    it("is shared by two clients", function()
      local c2 = assert(keel.redis.connect(server.url))
      local a = require("keel.redis.dedup").new { redis = c, prefix = "d2" }
      local b = require("keel.redis.dedup").new { redis = c2, prefix = "d2" }
      assert.is_false(a:seen("x"))
      assert.is_true(b:seen("x"))
      c2:close()
    end)

    it("rejects bad arguments", function()
      assert.has_error(function() require("keel.redis.dedup").new { redis = c, ttl_ms = 0 } end)
      local d = require("keel.redis.dedup").new { redis = c }
      assert.has_error(function() d:seen(nil) end)
      assert.has_error(function() d:seen({}) end)
      assert.has_error(function() d.seen("x") end)
    end)
  end)

  describe("ratelimit", function()
    local R = function(o) o.redis = c; return require("keel.redis.ratelimit").new(o) end

    it("allows a burst, then limits with a retry hint", function()
      local rl = R { rate = 10, per_ms = 1000, burst = 3, prefix = "r1" }
      for _ = 1, 3 do assert.is_true(rl:take()) end
      local ok, why, after = rl:take()
      assert.is_nil(ok)
      assert.equal("limited", why)
      assert.is_true(after > 0 and after <= 100, tostring(after))
      keel.sleep(after + 5)
      assert.is_true(rl:take())
    end)

    it("never allows more than burst in one take", function()
      local rl = R { rate = 10, burst = 3, prefix = "r2" }
      assert.same({ nil, "limited", math.huge }, { rl:take(4) })
      assert.same({ nil, "limited" }, { rl:wait(4) })
    end)

    it("keys are independent", function()
      local rl = R { rate = 1, per_ms = 60000, burst = 1, keyed = true, prefix = "r3" }
      assert.is_true(rl:take("a"))
      assert.is_true(rl:take("b"))
      assert.is_nil(rl:take("a"))
      assert.has_error(function() rl:take(nil) end)
    end)

    it("wait() sleeps until allowed, or times out", function()
      local rl = R { rate = 20, per_ms = 1000, burst = 1, prefix = "r4" }
      assert.is_true(rl:wait())
      assert.is_true(rl:wait(1, 1000))
      assert.is_true(rl:take() == nil)
      assert.same({ nil, "timeout" }, { rl:wait(1, 1) })
    end)

    it("is one budget for two clients", function()
      local c2 = assert(keel.redis.connect(server.url))
      local a = R { rate = 1, per_ms = 60000, burst = 2, prefix = "r5" }
      local b = require("keel.redis.ratelimit").new { redis = c2, rate = 1, per_ms = 60000, burst = 2, prefix = "r5" }
      assert.is_true(a:take())
      assert.is_true(b:take())
      assert.is_nil(a:take())
      assert.is_nil(b:take())
      c2:close()
    end)

    it("rejects bad options", function()
      assert.has_error(function() R { rate = 0 } end)
      assert.has_error(function() R { rate = 1, burst = 0 } end)
      assert.has_error(function() R {} end)
      local rl = R { rate = 1 }
      assert.has_error(function() rl:take(-1) end)
      assert.has_error(function() rl:take(0 / 0) end)
    end)
  end)

  describe("sharded counter", function()
    it("spreads adds over shard keys and sums them", function()
      local ctr = require("keel.redis.counter").new { redis = c, shards = 8, prefix = "c1" }
      local tasks = {}
      for t = 1, 10 do
        tasks[t] = keel.spawn(function() for _ = 1, 100 do assert(ctr:add()) end end)
      end
      for t = 1, 10 do tasks[t]:join() end
      assert(ctr:add(5))
      assert(ctr:add(-5))
      assert.equal(1000, ctr:value())
      local used = 0
      for i = 0, 7 do
        if c:call("GET", "{c1:" .. i .. "}") then used = used + 1 end
      end
      assert.is_true(used >= 6, "only " .. used .. " shards used")
      assert.equal(1000, ctr:reset())
      assert.equal(0, ctr:value())
    end)

    it("rejects bad arguments", function()
      assert.has_error(function() require("keel.redis.counter").new { redis = c, shards = 0 } end)
      local ctr = require("keel.redis.counter").new { redis = c, prefix = "c2" }
      assert.has_error(function() ctr:add(1.5) end)
      assert.has_error(function() ctr:add("1") end)
    end)
  end)

  describe("registry", function()
    local function R(o) o.redis = c; return require("keel.redis.registry").new(o) end

    it("binds, moves, looks up, unbinds", function()
      local reg = R { ttl_ms = 5000, prefix = "g1" }
      assert.is_true(reg:bind("phone", "gw-a"))
      assert.equal("gw-a", reg:lookup("phone"))
      assert.is_true(reg:bind("tablet", "gw-a"))
      assert.same({ "phone", "tablet" }, reg:devices("gw-a"))
      assert.is_true(reg:bind("phone", "gw-b"))
      assert.equal("gw-b", reg:lookup("phone"))
      assert.same({ "tablet" }, reg:devices("gw-a"))
      assert.is_false(reg:unbind("phone", "gw-a")) -- not bound there any more
      assert.is_true(reg:unbind("phone", "gw-b"))
      assert.is_nil(reg:lookup("phone"))
      assert.equal(1, reg:size())
      assert.equal(1, reg:stats().moves)
    end)

    it("drops the devices of a gateway that stops heartbeating", function()
      local reg = R { ttl_ms = 60, prefix = "g2" }
      reg:bind("d1", "gw")
      reg:bind("d2", "gw")
      keel.sleep(40)
      assert.equal(2, reg:heartbeat("gw"))
      keel.sleep(40)
      assert.equal("gw", reg:lookup("d1")) -- kept alive by the heartbeat
      keel.sleep(100)
      assert.is_nil(reg:lookup("d1"))
      assert.same({}, reg:devices("gw"))
      assert.equal(0, reg:heartbeat("gw"))
      assert.is_nil(reg:lookup("d2"))
      assert.equal(0, reg:size())
    end)

    it("refuses new devices at max", function()
      local reg = R { max = 2, prefix = "g3" }
      assert.is_true(reg:bind("a", "g"))
      assert.is_true(reg:bind("b", "g"))
      assert.same({ nil, "full" }, { reg:bind("c", "g") })
      assert.is_true(reg:bind("a", "h")) -- moving an existing device is fine
    end)

    it("rejects bad arguments", function()
      local reg = R { prefix = "g4" }
      assert.has_error(function() reg:bind(nil, "g") end)
      assert.has_error(function() reg:bind("d", {}) end)
      assert.has_error(function() R { ttl_ms = -1 } end)
    end)
  end)
end)
