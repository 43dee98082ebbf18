local keel = require "keel"
local redis_server = require "redis_server"

local function keel_bin()
  return os.getenv("KEEL_BIN") or "build/keel"
end

describe("keel.redis.leases", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server, c, L

  setup(function()
    server = redis_server.start()
    c = assert(keel.redis.connect(server.url))
    L = require("keel.redis.leases")
  end)
  teardown(function()
    c:close()
    server:cleanup()
  end)

  it("grants, refuses while held, releases", function()
    local leases = L.new { redis = c, ttl_ms = 5000, prefix = "t1" }
    local a = assert(leases:acquire("k", "alice"))
    assert.equal("alice", a.owner)
    assert.is_true(a.token >= 1)
    assert.same({ nil, "held" }, { leases:acquire("k", "bob") })
    local owner, token = leases:holder("k")
    assert.equal("alice", owner)
    assert.equal(a.token, token)
    assert.is_true(a:valid())
    assert.is_true(a:release())
    assert.is_false(a:valid())
    assert.same({ nil, "lost" }, { a:release() })
    assert.is_nil(leases:holder("k"))
    local b = assert(leases:acquire("k", "bob"))
    assert.is_true(b.token > a.token)
  end)

  it("tokens strictly increase per key, also across expiry", function()
    local leases = L.new { redis = c, ttl_ms = 30, prefix = "t2" }
    local last = 0
    for _ = 1, 5 do
      local l = assert(leases:acquire("k", "me"))
      assert.is_true(l.token > last)
      last = l.token
      keel.sleep(50) -- let it expire instead of releasing
    end
  end)

  it("renews and releases only with the current token", function()
    local leases = L.new { redis = c, ttl_ms = 100, prefix = "t3" }
    local a = assert(leases:acquire("k", "a"))
    assert.same({ nil, "lost" }, { leases:renew("k", a.token + 1) })
    assert.same({ nil, "lost" }, { leases:release("k", a.token + 1) })
    assert.is_true((a:renew(1000)))
    keel.sleep(200) -- longer than the original ttl: still held thanks to renew
    assert.is_true(a:valid())
    assert.same({ nil, "held" }, { leases:acquire("k", "b") })
  end)

  it("fences an expired holder", function()
    local leases = L.new { redis = c, ttl_ms = 40, prefix = "t4" }
    local a = assert(leases:acquire("k", "a"))
    keel.sleep(80)
    local b = assert(leases:acquire("k", "b"))
    assert.is_false(a:valid())
    assert.is_true(b:valid())
    assert.same({ nil, "lost" }, { a:renew() })
    assert.same({ nil, "lost" }, { a:release() })
    assert.is_true(b:valid())
  end)

  it("waits for a release with wait_ms, and times out", function()
    local leases = L.new { redis = c, ttl_ms = 5000, prefix = "t5", poll_ms = 5 }
    local a = assert(leases:acquire("k", "a"))
    local waiter = keel.spawn(function() return leases:acquire("k", "b", { wait_ms = 2000 }) end)
    keel.sleep(30)
    a:release()
    local ok, lease = waiter:join()
    assert.is_true(ok)
    assert.equal("b", lease.owner)
    assert.same({ nil, "timeout" }, { leases:acquire("k", "c", { wait_ms = 30 }) })
    assert.same({ nil, "held" }, { leases:acquire("k", "c", { wait_ms = nil }) })
  end)

  it("a release here wakes the longest local waiter at once, not at its next poll", function()
    -- with a one-minute poll and lease, only the local wake-up can hand it over
    local leases = L.new { redis = c, ttl_ms = 60000, prefix = "t5b", poll_ms = 60000 }
    local a = assert(leases:acquire("k", "a"))
    local order = {}
    local function wait_for(name)
      return keel.spawn(function()
        local lease = assert(leases:acquire("k", name, { wait_ms = 120000 }))
        order[#order + 1] = name
        keel.sleep(5)
        lease:release()
      end)
    end
    local b = wait_for("b")
    keel.sleep(10)
    local d = wait_for("d")
    keel.sleep(10)
    a:release()
    assert.same({ true }, { keel.timeout(5000, function() b:join(); d:join() end) })
    assert.same({ "b", "d" }, order) -- the longest waiter first
    assert.is_nil(next(leases.waiting)) -- no wait queue left behind
  end)

  it("keys with braces or binary bytes stay in one hash slot", function()
    local leases = L.new { redis = c, prefix = "t6" }
    local l = assert(leases:acquire("a{b}\0c", "x"))
    assert.is_true(l:valid())
    assert.is_true(l:release())
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() L.new {} end)
    assert.has_error(function() L.new { redis = {} } end)
    assert.has_error(function() L.new { redis = c, ttl_ms = 0 } end)
    assert.has_error(function() L.new { redis = c, prefix = "a{b" } end)
    local leases = L.new { redis = c, prefix = "t7" }
    assert.has_error(function() leases:acquire(nil, "x") end)
    assert.has_error(function() leases:acquire("k", nil) end)
    assert.has_error(function() leases:acquire("k", "x", { wait = 1 }) end)
    assert.has_error(function() leases:renew("k", "1") end)
    assert.has_error(function() leases:release("k", 0 / 0) end)
    assert.has_error(function() leases.acquire("k", "x") end)
  end)

  it("reports Redis being down as an error, not as held", function()
    local s = redis_server.start()
    local c2 = assert(keel.redis.connect(s.url))
    local leases = L.new { redis = c2, prefix = "t8" }
    s:stop()
    local l, err = leases:acquire("k", "x")
    assert.is_nil(l)
    assert.matches("^conn: ", err)
    local v, verr = leases:valid("k", 1)
    assert.is_false(v)
    assert.matches("^conn: ", verr)
    c2:close()
    s:cleanup()
  end)

  it("4 processes contending: one valid holder at a time, stalled holders fenced", function()
    local dir = io.popen("mktemp -d /tmp/keel-leases-XXXXXX"):read("*l")
    local rounds = 25
    for i = 1, 4 do
      os.execute(string.format("%s spec/support/redis_lease_worker.lua %s w%d %d %s/out%d > %s/err%d 2>&1 &",
        keel_bin(), server.url, i, rounds, dir, i, dir, i))
    end
    local outs = {}
    for _ = 1, 600 do
      local done = 0
      for i = 1, 4 do
        local f = io.open(dir .. "/out" .. i)
        if f then
          outs[i] = f:read("*a")
          f:close()
          if outs[i]:find("DONE") then done = done + 1 end
        end
      end
      if done == 4 then break end
      keel.sleep(100)
    end
    local wrote, stalled, fenced = 0, 0, 0
    for i = 1, 4 do
      local o = outs[i] or ""
      local e = io.open(dir .. "/err" .. i):read("*a")
      assert.matches("DONE", o, 1, true, "worker " .. i .. " did not finish: " .. e)
      assert.is_nil(o:find("VIOLATION"), o)
      for acc, valid in o:gmatch("WROTE token=%d+ accepted=(%d) valid=(%a+)") do
        assert.equal("1", acc)
        assert.equal("true", valid)
        wrote = wrote + 1
      end
      for acc, valid, alone in o:gmatch("STALLED token=%d+ accepted=(%d) valid=(%a+) alone=(%a+)") do
        stalled = stalled + 1
        assert.equal("false", valid) -- it expired, so it is no longer valid
        if alone == "false" then
          assert.equal("0", acc) -- a newer holder wrote: the store refuses the old token
        end
        if acc == "0" then fenced = fenced + 1 end
      end
      for rel, err in o:gmatch("STALE_RELEASE (%a+) (%a+)") do
        assert.equal("nil", rel)
        assert.equal("lost", err)
      end
    end
    assert.equal(4 * rounds, wrote + stalled)
    assert.equal(4 * 5, stalled)
    assert.is_true(fenced >= 1)
    -- the store's log holds only accepted writes, tokens strictly increasing
    local log = c:call("LRANGE", "{t}:log", 0, -1)
    assert.equal(wrote + stalled - fenced, #log)
    local last = 0
    for _, entry in ipairs(log) do
      local t = tonumber(entry:match("^(%d+)"))
      assert.is_true(t > last, "token " .. t .. " after " .. last)
      last = t
    end
    os.execute("rm -rf " .. dir)
  end)
end)
