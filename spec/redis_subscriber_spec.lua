local keel = require "keel"
local redis_server = require "redis_server"

describe("keel.redis.subscriber", function()
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

  it("delivers channel and pattern messages in order, binary-safe, and unsubscribes", function()
    local sub = assert(keel.redis.subscriber(server.url))
    assert.is_true(sub:subscribe("news", "alerts"))
    assert.is_true(sub:psubscribe("jobs.*"))
    local bin = "a\0b\r\n\255"
    assert.equal(1, c:call("PUBLISH", "news", "one"))
    assert.equal(1, c:call("PUBLISH", "jobs.7", bin))
    assert.equal(1, c:call("PUBLISH", "alerts", "two"))
    assert.equal(0, c:call("PUBLISH", "other", "nobody"))
    assert.same({ channel = "news", payload = "one" }, sub:next(1000))
    assert.same({ channel = "jobs.7", payload = bin, pattern = "jobs.*" }, sub:next(1000))
    assert.same({ channel = "alerts", payload = "two" }, sub:next(1000))
    assert.same({ nil, "timeout" }, { sub:next(20) })
    assert.is_true(sub:unsubscribe("news"))
    assert.is_true(sub:punsubscribe("jobs.*"))
    assert.equal(0, c:call("PUBLISH", "news", "gone"))
    assert.equal(1, c:call("PUBLISH", "alerts", "still"))
    assert.equal("still", sub:next(1000).payload)
    local st = sub:stats()
    assert.same({ 1, 0, 4 }, { st.channels, st.patterns, st.messages })
    sub:close()
  end)

  it("keeps at most max_queue messages, dropping the oldest", function()
    local sub = assert(keel.redis.subscriber(server.url, { max_queue = 3 }))
    sub:subscribe("burst")
    for i = 1, 5 do c:call("PUBLISH", "burst", tostring(i)) end
    c:call("PING") -- the publishes are answered in order: every message has been sent
    local got = {}
    for _ = 1, 3 do got[#got + 1] = sub:next(1000).payload end
    assert.same({ "3", "4", "5" }, got)
    assert.equal(2, sub:stats().dropped)
    sub:close()
  end)

  it("hands messages to a handler; a failing handler is reported, not fatal", function()
    local sub = assert(keel.redis.subscriber(server.url))
    local seen = {}
    sub:handler(function(m)
      if m.payload == "bad" then error("handler bug") end
      seen[#seen + 1] = m.payload
    end)
    sub:subscribe("h")
    c:call("PUBLISH", "h", "x")
    c:call("PUBLISH", "h", "bad")
    c:call("PUBLISH", "h", "y")
    for _ = 1, 100 do
      if #seen == 2 then break end
      keel.sleep(5)
    end
    assert.same({ "x", "y" }, seen)
    assert.has_error(function() sub:next(10) end)
    sub:close()
  end)

  it("subscribes again after the server restarts", function()
    local s = redis_server.start()
    local pub = assert(keel.redis.connect(s.url, { backoff_base_ms = 10, backoff_max_ms = 50 }))
    local sub = assert(keel.redis.subscriber(s.url, { backoff_base_ms = 10, backoff_max_ms = 50 }))
    sub:subscribe("r")
    sub:psubscribe("r.*")
    s:restart()
    local n
    for _ = 1, 200 do
      n = pub:call("PUBLISH", "r.1", "back")
      if n == 1 then break end
      keel.sleep(10)
    end
    assert.equal(1, n)
    local m = sub:next(1000)
    assert.same({ "r.1", "back", "r.*" }, { m.channel, m.payload, m.pattern })
    for _ = 1, 100 do
      if pub:call("PUBLISH", "r", "plain") == 1 then break end
      keel.sleep(10)
    end
    assert.equal("plain", sub:next(1000).payload)
    assert.is_true(sub:stats().lost >= 1)
    assert.is_true(sub:stats().resubscribes >= 1)
    sub:close()
    pub:close()
    s:cleanup()
  end)

  it("close ends a waiting next; bad arguments raise", function()
    local sub = assert(keel.redis.subscriber(server.url))
    sub:subscribe("z")
    local t = keel.spawn(function() return sub:next() end)
    keel.sleep(10)
    sub:close()
    assert.same({ true, nil, "closed" }, { t:join() })
    assert.same({ nil, "closed: client closed" }, { sub:subscribe("again") })
    assert.has_error(function() sub:subscribe() end, "sub:subscribe: name at least one channel")
    assert.has_error(function() sub:subscribe({}) end)
    assert.has_error(function() sub:next(-1) end)
    assert.has_error(function() sub.next() end)
    assert.has_error(function() keel.redis.subscriber(server.url, { max_queue = 0 }) end)
    assert.has_error(function() keel.redis.subscriber(server.url, { bogus = 1 }) end)
  end)

  it("a subscriber dropped without close is collected, and its connection closed", function()
    do
      local sub = assert(keel.redis.subscriber(server.url))
      sub:subscribe("dropped")
      assert.equal(1, c:call("PUBSUB", "NUMSUB", "dropped")[2])
    end
    -- its subscription lasts exactly as long as its connection
    for _ = 1, 100 do
      collectgarbage()
      collectgarbage()
      if c:call("PUBSUB", "NUMSUB", "dropped")[2] == 0 then break end
      keel.sleep(10)
    end
    assert.equal(0, c:call("PUBSUB", "NUMSUB", "dropped")[2])
  end)

  it("only a subscriber's connection takes message-shaped replies for messages", function()
    c:call("DEL", "shaped")
    c:call("RPUSH", "shaped", "message", "chan", "payload")
    assert.same({ "message", "chan", "payload" }, c:call("LRANGE", "shaped", 0, -1))
  end)

  it("a flooded subscriber does not starve the loop: a ticker keeps ticking through the flood", function()
    -- the server publishes the whole flood in one script, then writes it
    -- out faster than the subscriber takes it in: its socket stays full
    -- until the last message
    assert.equal("OK", c:call("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0"))
    local sub = assert(keel.redis.subscriber(server.url))
    assert.is_true(sub:subscribe("flood"))
    local n, total = 0, 200000
    local ticks, ticks_at_first, ticks_at_last = 0, nil, nil
    sub:handler(function()
      n = n + 1
      if n == 1 then ticks_at_first = ticks end
      if n == total then ticks_at_last = ticks end
    end)
    local ticker = keel.every(5, function() ticks = ticks + 1 end)
    local flood = "for i = 1, tonumber(ARGV[1]) do redis.call('PUBLISH', KEYS[1], ARGV[2]) end return 1"
    assert.equal(1, c:call_timeout(30000, "EVAL", flood, 1, "flood", total, string.rep("p", 100)))
    for _ = 1, 3000 do
      if n >= total then break end
      keel.sleep(10)
    end
    ticker:stop()
    sub:close()
    assert.equal(total, n)
    -- unbounded reads made the whole flood one or two loop callbacks (1 or 2
    -- ticks inside it); bounded ones let the ticker run all along (30 to 50
    -- times here: 10 is lenient)
    assert.is_true(ticks_at_last - ticks_at_first >= 10,
      string.format("ticks during the flood: %d", ticks_at_last - ticks_at_first))
  end)
end)

describe("keel.redis.leases across processes", function()
  if not redis_server.available then return end

  it("a release in another process wakes a waiter at once (not at its poll or the holder's expiry)", function()
    local s = redis_server.start()
    local c1 = assert(keel.redis.connect(s.url))
    local c2 = assert(keel.redis.connect(s.url))
    local L = require "keel.redis.leases"
    -- two objects on two connections: two processes as far as Redis can tell
    local holder_side = L.new { redis = c1, prefix = "x1", ttl_ms = 60000 }
    local waiter_side = L.new { redis = c2, prefix = "x1", ttl_ms = 60000, poll_ms = 60000 }
    local held = assert(holder_side:acquire("job", "p1"))
    local t = keel.spawn(function() return waiter_side:acquire("job", "p2", { wait_ms = 20000 }) end)
    -- the waiter subscribes, tries again, then waits; poll and expiry are a minute away
    for _ = 1, 200 do
      if waiter_side:stats().waits > 0 then break end
      keel.sleep(5)
    end
    assert.is_true(held:release())
    local ok, lease, err = t:join(10000)
    assert.is_true(ok)
    assert.is_nil(err)
    assert.equal("p2", lease.owner)
    assert.equal(1, waiter_side:stats().notified)
    -- with notify = false nothing subscribes: the wait ends at its poll (here
    -- the end of wait_ms, where it tries once more)
    local quiet = L.new { redis = c2, prefix = "x1", ttl_ms = 60000, poll_ms = 60000, notify = false }
    local t2 = keel.spawn(function() return quiet:acquire("job", "p3", { wait_ms = 300 }) end)
    keel.sleep(50)
    assert.is_true(lease:release())
    local ok2, lease2 = t2:join()
    assert.is_true(ok2)
    assert.equal("p3", lease2.owner)
    assert.equal(0, quiet:stats().notified)
    assert.equal(0, c2:call("PUBSUB", "NUMSUB", "{x1}:released")[2] - 1) -- only waiter_side's subscriber
    holder_side:close()
    waiter_side:close()
    c1:close()
    c2:close()
    s:cleanup()
  end)
end)
