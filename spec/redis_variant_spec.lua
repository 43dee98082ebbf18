-- keel.<primitive>{redis = client} builds the Redis-backed version.
local keel = require "keel"
local server = require "redis_server"

describe("redis = client option on the local constructors", function()
  local srv, client
  setup(function()
    srv = server.start()
    client = assert(keel.redis.connect(srv.url))
  end)
  teardown(function()
    if client then client:close() end
    if srv then srv:stop() end
  end)

  it("keel.leases{redis = client} grants fenced leases through Redis", function()
    local leases = keel.leases { redis = client, ttl_ms = 1000, prefix = "variant:leases" }
    local lease = assert(leases:acquire("printer", "w1"))
    local again, err = leases:acquire("printer", "w2")
    assert.is_nil(again)
    assert.equal("held", err)
    assert.is_true(leases:valid("printer", lease.token))
    assert.is_true(leases:release("printer", lease.token))
    -- The key really lives in Redis.
    local other = keel.leases { redis = client, ttl_ms = 1000, prefix = "variant:leases" }
    local l2 = assert(other:acquire("printer", "w2"))
    assert.is_true(l2.token > lease.token)
  end)

  it("keel.dedup{redis = client} remembers keys across objects", function()
    local a = keel.dedup { redis = client, ttl_ms = 10000, prefix = "variant:dedup" }
    local b = keel.dedup { redis = client, ttl_ms = 10000, prefix = "variant:dedup" }
    assert.is_false(a:seen("msg-1"))
    assert.is_true(b:seen("msg-1"))
  end)

  it("keel.counter{redis = client} sums shards in Redis", function()
    local c = keel.counter { redis = client, shards = 4, prefix = "variant:counter" }
    for _ = 1, 10 do c:add(2) end
    assert.equal(20, (c:value()))
  end)

  it("without redis the local primitive is built", function()
    local local_leases = keel.leases { ttl_ms = 1000 }
    assert.truthy(local_leases:acquire("k", "me"))
    assert.has_error(function() keel.leases("nope") end)
  end)
end)
