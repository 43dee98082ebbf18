local keel = require "keel"
local redis_server = require "redis_server"

describe("keel.redis client", function()
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
    if c then c:close() end
    server:cleanup()
  end)

  it("converts replies into Lua values", function()
    assert.equal("OK", c:call("SET", "k1", "v1"))
    assert.equal("v1", c:call("GET", "k1"))
    assert.is_nil((c:call("GET", "no-such-key")))
    assert.equal(3, c:call("RPUSH", "list1", "a", 2, "c"))
    assert.same({ "a", "2", "c" }, c:call("LRANGE", "list1", 0, -1))
    assert.same({}, c:call("LRANGE", "empty", 0, -1))
    assert.equal("PONG", c:call("PING"))
    -- a null inside an array is false, so the array keeps its length
    assert.same({ "v1", false }, c:call("MGET", "k1", "no-such-key"))
  end)

  it("returns nil plus the error text on an error reply", function()
    c:call("SET", "str", "x")
    local v, err = c:call("INCR", "str")
    assert.is_nil(v)
    assert.matches("^ERR value is not an integer", err)
    v, err = c:call("NOSUCHCOMMAND")
    assert.is_nil(v)
    assert.matches("^ERR unknown command", err)
  end)

  it("gets every reply to its own task when replies of all kinds arrive together", function()
    local long = string.rep("L", 200000) -- past the glue's record limit: built as a Lua string
    assert.equal("OK", c:call("SET", "mix:long", long))
    assert.equal("OK", c:call("SET", "mix:empty", ""))
    assert.equal("OK", c:call("SET", "mix:neg", -42))
    c:call("DEL", "mix:list")
    local cases = {
      { { "GET", "mix:long" }, long },
      { { "GET", "mix:empty" }, "" },
      { { "GET", "mix:none" }, nil },
      { { "INCRBY", "mix:neg", -1 }, -43 },
      { { "PING" }, "PONG" },
      { { "ECHO", "a\0b\r\n" }, "a\0b\r\n" },
      { { "RPUSH", "mix:list", "x", "y" }, 2 },
      { { "MGET", "mix:empty", "mix:none" }, { "", false } },
      { { "INCR", "mix:long" }, nil, "^ERR value is not an integer" },
      { { "SET", "mix:n", 12.5 }, "OK" },
      { { "INCRBYFLOAT", "mix:f", 1e-3 }, "0.001" },
      { { "INCRBY", "mix:big", 2 ^ 52 }, 2 ^ 52 },
      -- seven arguments and more take the C API path
      { { "RPUSH", "mix:list", 1, 2, 3, 4, 5 }, 7 },
      { { "MSET", "mix:a", 1, "mix:b", 2, "mix:c", 3, "mix:d", 4 }, "OK" },
    }
    for round = 1, 3 do
      local ts = {}
      for i, case in ipairs(cases) do
        ts[i] = keel.spawn(function() return c:call((unpack or table.unpack)(case[1])) end)
      end
      for i, case in ipairs(cases) do
        local ok, v, err = ts[i]:join()
        assert.is_true(ok)
        if case[3] then
          assert.is_nil(v)
          assert.matches(case[3], err)
        elseif round == 1 or (case[1][1] ~= "RPUSH" and case[1][1] ~= "INCRBY" and case[1][1] ~= "INCRBYFLOAT") then
          assert.same(case[2], v, "case " .. i)
          assert.is_nil(err)
        end
      end
    end
    assert.equal("12.5", c:call("GET", "mix:n"))
    assert.equal("4", c:call("GET", "mix:d"))
  end)

  it("sends integer arguments exactly, through every path", function()
    local big = 2 ^ 53 - 1 -- tostring would round it to 15 digits
    assert.equal("OK", c:call("SET", "exact:1", big))
    assert.equal("9007199254740991", c:call("GET", "exact:1"))
    assert.equal("OK", c:call("MSET", "exact:2", -big, "exact:3", 1e15, "exact:4", 0.5, "exact:5", 7))
    assert.same({ "-9007199254740991", "1000000000000000", "0.5", "7" },
      c:call("MGET", "exact:2", "exact:3", "exact:4", "exact:5"))
    local cmd = { "SET", "exact:6", 123456789012345 }
    local res = assert(c:batch({ cmd, { "GET", "exact:6" } }))
    assert.equal("123456789012345", res[2])
    assert.equal(123456789012345, cmd[3]) -- the caller's table is left as it was
    assert.equal("1e+300", (c:call("ECHO", 1e300)))
  end)

  it("lays out the reply records the same on both sides of the FFI", function()
    local ffi = require "ffi"
    require "keel.ffi.redis"
    local core = require "keel.redis.core"
    local l = core.layout()
    assert.equal(l.done_size, ffi.sizeof("keel_redis_done_t"))
    assert.equal(l.done_num, ffi.offsetof("keel_redis_done_t", "num"))
    assert.equal(l.done_off, ffi.offsetof("keel_redis_done_t", "off"))
    assert.equal(l.done_kind, ffi.offsetof("keel_redis_done_t", "kind"))
    assert.equal(l.ring_size, ffi.sizeof("keel_redis_ring_t"))
    assert.equal(l.ring_arena, ffi.offsetof("keel_redis_ring_t", "arena"))
    assert.equal(l.ring_n, ffi.offsetof("keel_redis_ring_t", "n"))
    assert.equal(l.ring_arena_len, ffi.offsetof("keel_redis_ring_t", "arena_len"))
  end)

  it("is binary-safe both ways", function()
    local bin = {}
    for i = 0, 255 do bin[#bin + 1] = string.char(i) end
    bin = table.concat(bin) .. "\0tail"
    assert.equal("OK", c:call("SET", "bin\0key", bin))
    assert.equal(bin, c:call("GET", "bin\0key"))
  end)

  it("handles a large value", function()
    local big = string.rep("\255\0", 4 * 1024 * 1024)
    assert.equal("OK", c:call_timeout(10000, "SET", "big", big))
    assert.equal(big, c:call_timeout(10000, "GET", "big"))
  end)

  it("a value over the server's size limit fails clearly and the client recovers", function()
    local s = redis_server.start()
    local c2 = assert(keel.redis.connect(s.url, { backoff_base_ms = 10, backoff_max_ms = 50 }))
    assert.equal("OK", c2:call("CONFIG", "SET", "proto-max-bulk-len", "1048576"))
    local v, err = c2:call("SET", "too-big", string.rep("x", 2 * 1048576))
    assert.is_nil(v)
    assert.is_string(err)
    assert.matches("[Pp]rotocol error", err)
    local back
    for _ = 1, 100 do
      if c2:call("PING") == "PONG" then back = true break end
      keel.sleep(10)
    end
    assert.is_true(back)
    c2:close()
    s:cleanup()
  end)

  it("pipelines calls from many tasks on one connection", function()
    c:call("DEL", "ctr")
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = keel.spawn(function()
        for _ = 1, 50 do assert(c:call("INCR", "ctr")) end
      end)
    end
    for i = 1, 20 do assert.is_true((tasks[i]:join())) end
    assert.equal("1000", c:call("GET", "ctr"))
  end)

  it("sends an explicit pipeline and returns every reply in order", function()
    local res = assert(c:pipeline(function(p)
      p:call("SET", "p1", "1")
      p:call("INCR", "p1")
      p:call("GET", "nothing-here")
      p:call("HSET", "p1", "f", "v") -- wrong type: an error reply
      p:call("GET", "p1")
    end))
    assert.equal(5, res.n)
    assert.equal("OK", res[1])
    assert.equal(2, res[2])
    assert.is_nil(res[3])
    assert.is_nil(res[4])
    assert.matches("^WRONGTYPE", res.err[4])
    assert.equal("2", res[5])
    local empty = c:pipeline(function() end)
    assert.equal(0, empty.n)
  end)

  it("batches commands short and long, with numbers, and rejects bad ones", function()
    local long = { "RPUSH", "b-list" }
    for i = 1, 40 do long[#long + 1] = "v" .. i end -- longer than the C stack argv
    local res = assert(c:batch {
      { "DEL", "b-list" }, long, { "LRANGE", "b-list", 0, -1 }, { "LINDEX", "b-list", 39.0 },
    })
    assert.equal(4, res.n)
    assert.equal(40, res[2])
    assert.equal(40, #res[3])
    assert.equal("v40", res[4])
    assert.has_error(function() c:batch { { "GET", 0 / 0 } } end)
    assert.has_error(function() c:batch { {} } end, "keel.redis: client:batch: missing command name")
    assert.has_error(function() c:batch { "GET" } end, "keel.redis: client:batch: command 1 must be a table")
  end)

  it("times out a call and keeps the connection usable", function()
    local v, err = c:call_timeout(100, "DEBUG", "SLEEP", "0.5")
    assert.is_nil(v)
    assert.equal("timeout: no reply before the deadline", err)
    -- queued behind the sleep, so it needs a longer deadline
    assert.equal("PONG", c:call_timeout(5000, "PING"))
  end)

  it("call_timeout(0) times out at once; math.huge is the one 'no deadline'", function()
    -- a connection of its own: a BLPOP the client gave up on still blocks
    -- the server's side of the connection
    local c2 = assert(keel.redis.connect(server.url))
    local ok, v, err = keel.timeout(2000, function() return c2:call_timeout(0, "BLPOP", "t0:nothing", "0") end)
    assert.is_true(ok, "call_timeout(0) waited for the reply")
    assert.is_nil(v)
    assert.equal("timeout: no reply before the deadline", err)
    c2:close()
    c2 = assert(keel.redis.connect(server.url))
    local waiter = keel.spawn(function() return c2:call_timeout(math.huge, "BLPOP", "t0:list", "0") end)
    keel.sleep(300) -- far past any default deadline... but math.huge has none
    assert.equal("waiting", waiter:status())
    assert.equal(1, c:call("RPUSH", "t0:list", "x"))
    local _, got = waiter:join()
    assert.same({ "t0:list", "x" }, got)
    assert.has_error(function() c2:call_timeout(-1, "PING") end)
    assert.has_error(function() c2:call_timeout(0 / 0, "PING") end)
    c2:close()
  end)

  it("timeout_ms = math.huge: calls without a deadline", function()
    local c2 = assert(keel.redis.connect(server.url, { timeout_ms = math.huge }))
    local waiter = keel.spawn(function() return c2:call("BLPOP", "huge:list", "0") end)
    keel.sleep(100)
    assert.equal("waiting", waiter:status())
    assert.equal(1, c:call("RPUSH", "huge:list", "y"))
    local _, got = waiter:join()
    assert.same({ "huge:list", "y" }, got)
    c2:close()
  end)

  it("times out each call at its own deadline, whatever the order of their timeouts", function()
    local c2 = assert(keel.redis.connect(server.url, { timeout_ms = 300 }))
    local sleeper = keel.spawn(function() return c:call_timeout(5000, "DEBUG", "SLEEP", "0.8") end)
    keel.sleep(30) -- the server is asleep now: nothing is answered for ~0.8 s
    local calls = {
      function() return c2:call_timeout(2000, "PING") end, -- replies after the sleep
      function() return c2:call("PING") end,                -- 300 ms: earlier than the one before it
      function() return c2:call_timeout(100, "PING") end,   -- earlier still
      function() return c2:call_timeout(3000, "PING") end,  -- later again: replies
    } -- (a third silent deadline would have the connection dropped as hung)
    local ts = {}
    for i, fn in ipairs(calls) do ts[i] = keel.spawn(fn) end
    local got = {}
    for i = 1, #ts do
      local _, v, err = ts[i]:join()
      got[i] = v or err
    end
    assert.same({ "PONG", "timeout: no reply before the deadline", "timeout: no reply before the deadline",
                  "PONG" }, got)
    assert.equal("OK", (sleeper:join() and "OK"))
    assert.equal("PONG", c2:call("PING"))
    assert.equal(2, c2:stats().timeouts)
    c2:close()
  end)

  it("rejects bad arguments with an error naming the function", function()
    assert.has_error(function() c:call() end, "keel.redis: client:call: missing command name")
    assert.has_error(function() c:call("SET", "k", {}) end,
      "keel.redis: client:call: command argument 3 must be a string or a finite number (got table)")
    assert.has_error(function() c:call("SET", "k", 0 / 0) end)
    assert.has_error(function() c:call("SET", "k", nil, "x") end)
    assert.has_error(function() c.call("PING") end, "keel.redis: client:call: call it as a method (client:call(...))")
    assert.has_error(function() c:pipeline(42) end)
    assert.has_error(function() c:pipeline(function(p) p:call({}) end) end)
  end)

  it("runs scripts by SHA and reloads them after SCRIPT FLUSH", function()
    local script = keel.redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    c:call("DEL", "sk")
    assert.equal(2, c:eval(script, 1, "sk", 2))
    assert.is_string(script.sha)
    assert.equal("OK", c:call("SCRIPT", "FLUSH"))
    assert.equal(5, c:eval(script, 1, "sk", 3)) -- NOSCRIPT, loaded again
    local bad = keel.redis.script("return redis.call('NOPE')")
    local v, err = c:eval(bad, 0)
    assert.is_nil(v)
    assert.is_string(err)
  end)

  it("reports stats", function()
    local st = c:stats()
    assert.is_true(st.sent > 0)
    assert.is_true(st.replies > 0)
    assert.equal(0, st.pending)
    assert.equal("ready", (c:state()))
  end)
end)

describe("keel.redis.connect errors", function()
  if not redis_server.available then return end

  it("rejects bad URLs and options", function()
    assert.has_error(function() keel.redis.connect("http://x") end,
      'keel.redis.connect: bad URL "http://x": URL must start with redis://')
    assert.has_error(function() keel.redis.connect("redis://") end)
    assert.has_error(function() keel.redis.connect("redis://h:1/abc") end)
    assert.has_error(function() keel.redis.connect({ port = 70000 }) end,
      "keel.redis.connect: option 'port' must be an integer in [1, 65535] (got 70000)")
    assert.has_error(function() keel.redis.connect({ prot = 1 }) end, "keel.redis.connect: unknown option 'prot'")
    assert.has_error(function() keel.redis.connect(42) end)
    assert.has_error(function() keel.redis.connect({ timeout_ms = -1 }) end)
    -- 0 is not a way to say "no deadline" (math.huge is)
    assert.has_error(function() keel.redis.connect({ timeout_ms = 0 }) end,
      "keel.redis.connect: option 'timeout_ms' must be a number >= 1 (got 0)")
    assert.has_error(function() keel.redis.connect({ connect_timeout_ms = 0 }) end)
    assert.has_error(function() keel.redis.connect({ backoff_base_ms = 0 }) end)
  end)

  it("parses URLs", function()
    local o = keel.redis.parse_url("redis://user:p%40ss@example.com:6380/3")
    assert.same({ username = "user", password = "p@ss", host = "example.com", port = 6380, db = 3 }, o)
    assert.same({ host = "h", password = "pw" }, keel.redis.parse_url("redis://:pw@h"))
  end)

  it("fails fast on a refused connection", function()
    local c, err = keel.redis.connect("redis://127.0.0.1:1")
    assert.is_nil(c)
    assert.equal("conn: connect failed: Connection refused", err)
  end)

  it("fails on an unknown host", function()
    local c, err = keel.redis.connect({ host = "no-such-host.invalid" })
    assert.is_nil(c)
    assert.matches("^conn: connect failed: cannot resolve host: ", err)
  end)

  it("connects by host name: the name resolves off the loop, the first call waits for it", function()
    local s = redis_server.start()
    -- connect's own PING is issued before the name resolves: it waits, formatted, until
    -- there is a connection to send it on
    local c = assert(keel.redis.connect({ host = "localhost", port = s.port }))
    local ts = {}
    for i = 1, 20 do ts[i] = keel.spawn(function() return c:call("INCR", "dns-burst") end) end
    local got = {}
    for i = 1, 20 do
      local ok, v = ts[i]:join()
      assert.is_true(ok)
      got[#got + 1] = v
    end
    table.sort(got)
    for i = 1, 20 do assert.equal(i, got[i]) end
    -- after a restart the client resolves the name again and recovers
    s:restart()
    local v
    for _ = 1, 100 do
      v = c:call("PING")
      if v == "PONG" then break end
      keel.sleep(20)
    end
    assert.equal("PONG", v)
    c:close()
    s:cleanup()
  end)

  it("closes cleanly while the host name is still being resolved", function()
    local s = redis_server.start()
    for _ = 1, 20 do
      local ok, err = keel.timeout(0, keel.redis.connect, { host = "localhost", port = s.port })
      assert.is_nil(ok)
      assert.equal("timeout", err)
    end
    collectgarbage()
    collectgarbage()
    keel.sleep(20)
    local c = assert(keel.redis.connect({ host = "localhost", port = s.port }))
    assert.equal("PONG", c:call("PING"))
    c:close()
    s:cleanup()
  end)

  it("reports a wrong password clearly", function()
    local s = redis_server.start({ password = "sekret" })
    local c, err = keel.redis.connect(string.format("redis://:wrong@127.0.0.1:%d", s.port))
    assert.is_nil(c)
    assert.matches("^conn: auth failed: WRONGPASS", err)
    local c2 = assert(keel.redis.connect(s.url))
    assert.equal("PONG", c2:call("PING"))
    c2:close()
    s:cleanup()
  end)

  it("sends AUTH and SELECT before the calls made while a host name resolves", function()
    local s = redis_server.start({ password = "sekret" })
    local c = assert(keel.redis.connect(string.format("redis://:sekret@localhost:%d/3", s.port)))
    local ts = {}
    for i = 1, 10 do ts[i] = keel.spawn(function() return c:call("INCR", "early") end) end
    for i = 1, 10 do assert.is_true((ts[i]:join())) end
    assert.equal("10", s:cli("-n", "3", "GET", "early"))
    c:close()
    s:cleanup()
  end)

  it("selects the database from the URL", function()
    local s = redis_server.start()
    local c = assert(keel.redis.connect(s.url .. "/2"))
    c:call("SET", "in-db-2", "yes")
    assert.equal("yes", s:cli("-n", "2", "GET", "in-db-2"))
    c:close()
    s:cleanup()
  end)

  it("fails calls after close", function()
    local s = redis_server.start()
    local c = assert(keel.redis.connect(s.url))
    c:close()
    c:close()
    assert.same({ nil, "closed: client closed" }, { c:call("PING") })
    s:cleanup()
  end)

  it("fails in-flight calls with 'closed' when closed under them", function()
    local s = redis_server.start()
    local c = assert(keel.redis.connect(s.url))
    local t = keel.spawn(function() return c:call_timeout(5000, "DEBUG", "SLEEP", "0.3") end)
    keel.sleep(20)
    c:close()
    local ok, v, err = t:join()
    assert.is_true(ok)
    assert.is_nil(v)
    assert.equal("closed: client closed", err)
    s:cleanup()
  end)
end)

describe("keel.redis reconnect", function()
  if not redis_server.available then return end

  it("fails in-flight calls at a loss, fails fast while down, resumes when back", function()
    local s = redis_server.start()
    local c = assert(keel.redis.connect(s.url, { backoff_base_ms = 20, backoff_max_ms = 100 }))
    assert.equal("OK", c:call("SET", "acked", "1"))
    local inflight = keel.spawn(function() return c:call_timeout(5000, "BLPOP", "nothing", "0") end)
    keel.sleep(20)
    s:stop()
    local ok, v, err = inflight:join()
    assert.is_true(ok)
    assert.is_nil(v)
    assert.matches("^conn: ", err)
    local v2, err2 = c:call("PING")
    assert.is_nil(v2)
    assert.matches("^conn: ", err2)
    s:launch() -- same port, empty dataset (no persistence)
    local back
    for _ = 1, 100 do
      if c:call("PING") == "PONG" then back = true break end
      keel.sleep(20)
    end
    assert.is_true(back)
    assert.equal("ready", (c:state()))
    assert.is_true(c:stats().reconnects >= 1)
    assert.equal("OK", c:call("SET", "after", "1"))
    c:close()
    s:cleanup()
  end)
  it("a hung server (SIGSTOP) times out calls and connects; work resumes after SIGCONT", function()
    local s = redis_server.start()
    local c = assert(keel.redis.connect(s.url, { timeout_ms = 100, backoff_base_ms = 10, backoff_max_ms = 50 }))
    os.execute("kill -STOP " .. s.pid)
    local v, err = c:call("PING")
    assert.is_nil(v)
    assert.equal("timeout: no reply before the deadline", err)
    -- a new connection to it: the TCP handshake succeeds, the PING does not
    local c2, err2 = keel.redis.connect(s.url, { timeout_ms = 100 })
    assert.is_nil(c2)
    assert.matches("^timeout: ", err2)
    -- several silent deadlines in a row: the connection is dropped and redialled
    for _ = 1, 3 do c:call("PING") end
    os.execute("kill -CONT " .. s.pid)
    local back
    for _ = 1, 100 do
      if c:call("PING") == "PONG" then back = true break end
      keel.sleep(20)
    end
    assert.is_true(back)
    assert.is_true(c:stats().reconnects >= 1)
    c:close()
    s:cleanup()
  end)
end)
