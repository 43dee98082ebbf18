local keel = require "keel"
local redis_server = require "redis_server"

describe("keel.redis.breaker (shared)", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server, c1, c2, B

  setup(function()
    server = redis_server.start()
    c1 = assert(keel.redis.connect(server.url))
    c2 = assert(keel.redis.connect(server.url))
    B = require("keel.redis.breaker")
  end)
  teardown(function()
    c1:close()
    c2:close()
    server:cleanup()
  end)

  local function pair(prefix, extra)
    -- one probe call decides (half_open_calls defaults to 10, as keel.breaker's)
    local o = { min_calls = 10, failure_rate = 50, open_ms = 150, sync_ms = 0, prefix = prefix, half_open_calls = 1 }
    for k, v in pairs(extra or {}) do o[k] = v end
    o.redis = c1
    local a = B.new(o)
    o.redis = c2
    local b = B.new(o)
    return a, b
  end

  local function settle(b) keel.sleep(5); b:refresh() end

  it("opens for the fleet when the combined window crosses the threshold", function()
    local a, b = pair("b1")
    -- 5 failures each: neither alone reaches min_calls = 10
    for _ = 1, 5 do assert(a:allow()); a:record(false) end
    settle(a)
    assert.equal("closed", a:state())
    for _ = 1, 5 do assert(b:allow()); b:record(false) end
    settle(b)
    assert.equal("open", b:state())
    assert.same({ nil, "open" }, { a:allow() })
    assert.equal("open", a:state())
  end)

  it("stays closed below the failure rate", function()
    local a, b = pair("b2")
    for i = 1, 20 do
      a:record(i % 3 ~= 0)
      b:record(true)
    end
    settle(a)
    assert.equal("closed", a:refresh())
  end)

  it("lets exactly one process probe when half-open; success closes for all", function()
    local a, b = pair("b3")
    for _ = 1, 10 do a:record(false) end
    settle(a)
    assert.equal("open", a:refresh())
    keel.sleep(200) -- past open_ms
    assert.equal("half_open", a:refresh())
    local oka, pa = a:allow()
    local okb = b:allow()
    assert.is_true(oka)
    assert.equal("probe", pa)
    assert.is_nil(okb) -- the lease is a's
    assert.is_nil((a:allow())) -- one probe per process too
    a:record(true, 1, pa)
    assert.equal("closed", a:state())
    assert.equal("closed", b:refresh())
    assert.is_true((b:allow()))
  end)

  it("a failed probe re-opens for everyone", function()
    local a, b = pair("b4")
    for _ = 1, 10 do b:record(false) end
    settle(b)
    keel.sleep(200)
    local ok, permit = b:allow()
    assert.is_true(ok)
    b:record(false, 1, permit)
    assert.equal("open", b:state())
    assert.equal("open", a:refresh())
  end)

  it("call() records outcomes and re-raises errors", function()
    local a = pair("b5", { min_calls = 2 })
    assert.equal(42, a:call(function() return 42 end))
    assert.has_error(function() a:call(function() error("boom") end) end, "boom")
    assert.has_error(function() a:call(function() error("boom") end) end, "boom")
    settle(a)
    assert.equal("open", a:refresh())
    assert.same({ nil, "open" }, { a:call(function() return 1 end) })
  end)

  it("notifies state changes", function()
    local a = pair("b6", { min_calls = 1 })
    local seen = {}
    a:on_state(function(from, to) seen[#seen + 1] = from .. ">" .. to end)
    a:record(false)
    settle(a)
    assert.same({ "closed>open" }, seen)
  end)

  it("falls back to the local breaker when Redis is unreachable", function()
    local s = redis_server.start()
    local c = assert(keel.redis.connect(s.url))
    local b = B.new { redis = c, prefix = "b7", min_calls = 3, open_ms = 10000, sync_ms = 0,
                      fallback_ms = 60000 }
    s:stop()
    local ok, permit = b:allow()
    assert.is_true(ok)
    assert.equal("fallback", permit)
    assert.is_true(b:stats().fallback)
    for _ = 1, 3 do
      local ok2, p2 = b:allow()
      if ok2 then b:record(false, 1, p2) end
    end
    assert.same({ nil, "open" }, { b:allow() })
    assert.equal("open", b:state())
    c:close()
    s:cleanup()
  end)

  it("rejects bad options", function()
    assert.has_error(function() B.new { redis = c1, failure_rate = 0 } end)
    assert.has_error(function() B.new { redis = c1, open_ms = -1 } end)
    assert.has_error(function() B.new { redis = c1, local_opts = 3 } end)
    assert.has_error(function() B.new { } end)
    local a = pair("b8")
    assert.has_error(function() a.allow() end)
    assert.has_error(function() a:call(42) end)
  end)
end)
