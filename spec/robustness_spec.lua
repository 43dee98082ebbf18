-- Crash / undefined behaviour / hang risks reachable from Lua: each case
-- here failed (wrong result, busy loop or endless loop) before its fix.
local keel = require "keel"
local proc = require "keelproc"
local redis_server = require "redis_server"

-- Runs `keel -e code` with a wall-clock cap, and an address-space cap unless
-- under ASan (whose shadow memory needs a huge address space): a regression
-- into an endless loop that allocates must fail the spec, not the machine.
local function run_capped(code)
  local prefix = (os.getenv("ASAN_OPTIONS") and "" or "ulimit -v 2000000; ") .. "timeout -k 2 20"
  return proc.eval(code, { prefix = prefix })
end

describe("breaker time window at any clock value", function()
  -- The window's second was (int64_t)floor(now / 1000): undefined behaviour
  -- once a simulated clock passes 2^63 ms, and in practice a garbage second
  -- that froze the window with stale calls in it.
  it("drops calls that fell out of the window after a huge virtual sleep", function()
    local before, after = keel.sim(function()
      local b = keel.breaker { window = "time", size = 10, min_calls = 100 }
      for _ = 1, 5 do b:record(false) end
      keel.sleep(1e300)
      local w = b:stats().window_calls
      b:record(true)
      return w, b:stats().window_calls
    end)
    assert.equal(0, before)
    assert.equal(1, after)
  end)

  it("works when created at an infinite virtual clock", function()
    local calls = keel.sim(function()
      keel.sleep(1e308); keel.sleep(1e308) -- the clock overflows to +inf
      local b = keel.breaker { window = "time", size = 10, min_calls = 100 }
      for _ = 1, 3 do b:record(false) end
      return b:stats().window_calls
    end)
    assert.equal(3, calls)
  end)
end)

describe("keel.every with an interval below the clock's resolution", function()
  -- now + interval == now re-armed the timer at now, so the loop that fires
  -- due timers popped it again forever (spawning a task each time).
  it("keeps ticking in real time instead of spinning in one pass", function()
    local code, out, err = run_capped([[
      local keel = require "keel"
      local n = 0
      local t = keel.every(1e-300, function() n = n + 1 end)
      keel.sleep(20)
      t:stop()
      print(n > 0 and "ticked" or "never")
    ]])
    assert.equal(0, code, err)
    assert.equal("ticked\n", out)
  end)

  it("keeps ticking once a simulated clock is huge", function()
    local code, out, err = run_capped([[
      local keel = require "keel"
      print(keel.sim(function()
        keel.sleep(2 ^ 60) -- from here on 1 ms is below the clock's resolution
        local n = 0
        local t = keel.every(1, function() n = n + 1 end)
        keel.sleep(1000)
        t:stop()
        return n > 0 and "ticked" or "never"
      end))
    ]])
    assert.equal(0, code, err)
    assert.equal("ticked\n", out)
  end)

  it("stops (rather than erroring) at an infinite simulated clock", function()
    local n = keel.sim(function()
      keel.sleep(1e308); keel.sleep(1e308) -- the clock overflows to +inf
      local count = 0
      keel.every(1, function() count = count + 1 end)
      keel.sleep(5)
      keel.sleep(0)
      return count
    end)
    assert.equal(1, n)
  end)
end)

describe("keel.redis deadlines", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server

  setup(function() server = redis_server.start() end)
  teardown(function() server:cleanup() end)

  -- call_timeout(math.huge) armed the deadline timer with (uint64_t)inf:
  -- undefined behaviour, on x86 a 0 ms timer that libuv ran again and again
  -- in one pass, so the process hung (or, with a newer libuv, spun at full
  -- CPU) for as long as the call waited. In a child process so that a
  -- regression fails the spec instead of hanging the suite.
  it("call_timeout(math.huge) waits without spinning", function()
    local code, out, err = run_capped(string.format([[
      local keel = require "keel"
      local a = assert(keel.redis.connect(%q))
      local b = assert(keel.redis.connect(%q))
      keel.spawn(function()
        keel.sleep(300)
        b:call("RPUSH", "robust:q", "x")
      end)
      local cpu0 = os.clock()
      local v = a:call_timeout(math.huge, "BLPOP", "robust:q", 0)
      local cpu = os.clock() - cpu0
      -- idle in the poller: a few ms of CPU, where a busy loop uses all 300
      print(v[2], cpu < 0.15 and "idle" or ("busy " .. cpu))
      a:close()
      b:close()
    ]], server.url, server.url))
    assert.equal(0, code, err)
    assert.equal("x\tidle\n", out)
  end)

  it("a finite but huge call timeout also waits normally", function()
    local a = assert(keel.redis.connect(server.url))
    assert.equal("PONG", a:call_timeout(1e300, "PING"))
    a:close()
  end)
end)

describe("keel.redis.core argument checks", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server

  setup(function() server = redis_server.start() end)
  teardown(function() server:cleanup() end)

  -- The completion id went through (int64_t) unchecked: NaN or inf was
  -- undefined behaviour, and the command was sent for nobody.
  it("rejects a completion id that is not an exact integer", function()
    local core = require "keel.redis.core"
    local c = assert(keel.redis.connect(server.url))
    for _, bad in ipairs({ 0 / 0, math.huge, -math.huge, -1, 2 ^ 60, 1.5 }) do
      local ok, err = pcall(core.call, c.conn, bad, 0, "PING")
      assert.is_false(ok)
      assert.matches("completion id must be an integer", err)
      ok, err = pcall(core.batch, c.conn, bad, 0, { { "PING" } })
      assert.is_false(ok)
      assert.matches("completion id must be an integer", err)
    end
    assert.equal("PONG", c:call("PING"))
    c:close()
  end)
end)
