local keel = require "keel"
local redis_server = require "redis_server"

describe("keel.idempotent", function()
  local db, ic
  before_each(function()
    db = assert(keel.store.open(":memory:"))
    db:exec("create table applied(msg text primary key, amount)")
    ic = keel.idempotent { store = db, ttl_ms = 60000 }
  end)
  after_each(function() db:close() end)

  local function apply(id, amount)
    return ic:handle(id, function(tx)
      tx:exec("insert into applied(msg, amount) values (?, ?)", id, amount)
      return { applied = amount }
    end)
  end

  it("runs fn once; a duplicate gets the first result replayed and 'duplicate'", function()
    local r, second = apply("m1", 10)
    assert.same({ applied = 10 }, r)
    assert.is_nil(second)
    local r2, dup = apply("m1", 99)
    assert.same({ applied = 10 }, r2)
    assert.equal("duplicate", dup)
    assert.equal(10, db:value("select sum(amount) from applied"))
    assert.equal(1, ic:stats().duplicates)
  end)

  it("the mark and fn's writes commit together: an error leaves neither, and a retry runs fn", function()
    local ok, err = pcall(ic.handle, ic, "m2", function(tx)
      tx:exec("insert into applied(msg, amount) values ('m2', 1)")
      error("handler failed")
    end)
    assert.is_false(ok)
    assert.matches("handler failed", err)
    assert.equal(0, db:value("select count(*) from applied"))
    assert.same({ applied = 5 }, apply("m2", 5))
  end)

  it("concurrent handling of one id in one process runs fn once; the others wait for its result", function()
    local runs = 0
    local ts = {}
    for i = 1, 5 do
      ts[i] = keel.spawn(function()
        return ic:handle(7, function(tx)
          runs = runs + 1
          tx:exec("insert into applied(msg, amount) values ('7', ?)", i)
          return i
        end)
      end)
    end
    local dups = 0
    for i = 1, 5 do
      local ok, r, d = ts[i]:join()
      assert.is_true(ok)
      assert.equal(1, r)
      if d == "duplicate" then dups = dups + 1 end
    end
    assert.equal(1, runs)
    assert.equal(4, dups)
  end)

  it("a failed commit (disk full) stores no mark: the next delivery runs fn again", function()
    db:tx(function(tx) tx:value("PRAGMA max_page_count = " .. tx:value("PRAGMA page_count")) end)
    local r, code = ic:handle("big", function(tx)
      return tx:exec("insert into applied(msg, amount) values ('big', ?)", string.rep("x", 100000))
    end)
    assert.is_nil(r)
    assert.equal("io", code)
    db:tx(function(tx) tx:value("PRAGMA max_page_count = 1000000") end)
    assert.same({ applied = 1 }, apply("big", 1))
  end)

  it("marks expire after ttl_ms and are deleted in bounded batches", function()
    keel.sim({ seed = 2 }, function()
      local d = assert(keel.store.open(":memory:"))
      local i2 = keel.idempotent { store = d, ttl_ms = 1000 }
      for i = 1, 1200 do i2:handle("k" .. i, function() return i end) end
      assert.equal(1, select(1, i2:handle("k1", function() return "again" end)))
      keel.sleep(1001)
      assert.equal(1200, i2:cleanup())
      assert.equal("again", i2:handle("k1", function() return "again" end))
      d:close()
    end)
  end)

  it("rejects bad input", function()
    assert.matches("argument 'message_id' must be", select(2, pcall(ic.handle, ic, "", function() end)))
    assert.matches("argument 'message_id' must be", select(2, pcall(ic.handle, ic, 1.5, function() end)))
    assert.matches("argument 'message_id' must be", select(2, pcall(ic.handle, ic, {}, function() end)))
    assert.matches("argument 'fn' must be a function", select(2, pcall(ic.handle, ic, "x")))
    assert.matches("exactly one of", select(2, pcall(keel.idempotent, {})))
    assert.matches("SQL identifier", select(2, pcall(keel.idempotent, { store = db, name = "a b" })))
    assert.matches("cannot be stored", select(2, pcall(ic.handle, ic, "nan", function() return 0 / 0 end)))
    assert.equal(0, db:value("select count(*) from idempotent where id = 'nan'"))
  end)

  it("Redis-backed: a key holds the result; duplicates and concurrent calls replay it", function()
    if not redis_server.available then pending("redis-server not installed") return end
    local server = redis_server.start()
    local c = assert(keel.redis.connect(server.url))
    local ric = keel.idempotent { redis = c, ttl_ms = 60000, name = "spec" }
    local runs = 0
    local ts = {}
    for i = 1, 3 do
      ts[i] = keel.spawn(function() return ric:handle("r1", function() runs = runs + 1 return { n = i } end) end)
    end
    for i = 1, 3 do assert.same({ n = 1 }, select(2, ts[i]:join())) end
    assert.equal(1, runs)
    -- another process (another client) sees the same result
    local c2 = assert(keel.redis.connect(server.url))
    local other = keel.idempotent { redis = c2, ttl_ms = 60000, name = "spec" }
    local r, d = other:handle("r1", function() error("must not run") end)
    assert.same({ n = 1 }, r)
    assert.equal("duplicate", d)
    -- an error frees the key for a retry
    assert.has_error(function() ric:handle("r2", function() error("fail") end) end)
    assert.equal("ok", ric:handle("r2", function() return "ok" end))
    local ttl = c:call("PTTL", "keel:idem:spec:r1")
    assert.is_true(ttl > 0 and ttl <= 60000)
    c:close(); c2:close()
    server:stop()
  end)
end)
