local keel = require "keel"
local redis_server = require "redis_server"

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".db"
end

local function rm(path)
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end

local function setup(db)
  db:exec("create table if not exists orders(id integer primary key, customer text, total)")
  return keel.outbox { store = db }
end

local function place(db, ob, customer, total)
  return db:tx(function(tx)
    local _, id = tx:exec("insert into orders(customer, total) values (?, ?)", customer, total)
    ob:add(tx, { aggregate_type = "customer", aggregate_id = customer, type = "order_placed",
                 payload = { order = tostring(id), total = total } })
    return id
  end)
end

describe("keel.outbox", function()
  local path, db, ob
  before_each(function()
    path = tmpdb()
    db = assert(keel.store.open(path))
    ob = setup(db)
  end)
  after_each(function()
    db:close()
    rm(path)
  end)

  it("an event exists iff the business write commits", function()
    place(db, ob, "a", 1)
    local ok = pcall(db.tx, db, function(tx)
      tx:exec("insert into orders(customer, total) values ('b', 2)")
      ob:add(tx, { aggregate_type = "customer", aggregate_id = "b", type = "order_placed", payload = {} })
      error("business rule failed")
    end)
    assert.is_false(ok)
    local pending = ob:pending()
    assert.equal(1, #pending)
    assert.equal("a", pending[1].aggregate_id)
    assert.equal(1, db:value("select count(*) from orders"))
  end)

  it("add rejects bad input", function()
    assert.matches("argument 'tx' must be the transaction", select(2, pcall(ob.add, ob, nil, {})))
    local saved
    db:tx(function(tx)
      saved = tx
      assert.matches("field 'aggregate_type' must be a string",
        select(2, pcall(ob.add, ob, tx, { aggregate_id = "x", type = "t" })))
      assert.matches("field 'aggregate_id' must be a string or an integer",
        select(2, pcall(ob.add, ob, tx, { aggregate_type = "x", aggregate_id = 1.5, type = "t" })))
      assert.matches("sparse array",
        select(2, pcall(ob.add, ob, tx,
          { aggregate_type = "x", aggregate_id = 1, type = "t", payload = { 1, nil, 3 } })))
      assert.matches("carry ids as strings",
        select(2, pcall(ob.add, ob, tx,
          { aggregate_type = "x", aggregate_id = 1, type = "t", payload = { id = 2 ^ 53 } })))
    end)
    assert.matches("argument 'tx' must be the transaction", select(2, pcall(ob.add, ob, saved,
      { aggregate_type = "x", aggregate_id = 1, type = "t" })))
    assert.matches("option 'name' must be an SQL identifier",
      select(2, pcall(keel.outbox, { store = db, name = "x; drop table orders" })))
    assert.matches("option 'to' must be", select(2, pcall(ob.relay, ob, { to = 42 })))
  end)

  it("publishes in order per aggregate to a keel.queue, wakes on commit, marks sent", function()
    local q = keel.queue { capacity = 10000 }
    local relay = ob:relay { to = q, poll_ms = 60000 } -- only the commit wake-up can be fast
    for i = 1, 30 do place(db, ob, "c" .. (i % 4), i) end
    local last, seen = {}, {}
    for _ = 1, 30 do
      local m = assert(q:pop { wait_ms = 1000 })
      local e = m.item
      assert.is_string(e.id)
      assert.is_nil(seen[e.id])
      seen[e.id] = true
      local n = tonumber(e.id)
      assert.is_true(n > (last[e.aggregate_id] or 0), "order within " .. e.aggregate_id)
      last[e.aggregate_id] = n
      assert.equal("order_placed", e.type)
      q:ack(m)
    end
    keel.sleep(1)
    assert.equal(0, #ob:pending())
    assert.equal(30, relay:stats().marked)
    relay:stop()
  end)

  it("a failing target is retried with backoff; a poison event blocks its aggregate only (default)", function()
    local got = {}
    local function target(batch)
      for i, e in ipairs(batch) do
        if e.payload.total == 2 then return i - 1, "rejected" end
        got[#got + 1] = e.aggregate_id .. ":" .. e.payload.total
      end
      return true
    end
    place(db, ob, "p", 1); place(db, ob, "p", 2); place(db, ob, "p", 3); place(db, ob, "q", 4)
    local relay = ob:relay { to = target, poll_ms = 5, max_attempts = 3, backoff = { base_ms = 1, cap_ms = 2 },
                             breaker = { min_calls = 1000, size = 1000 } }
    keel.sleep(100)
    relay:stop()
    table.sort(got)
    assert.same({ "p:1", "q:4" }, got) -- p:3 waits behind the poison p:2
    local pending = ob:pending()
    assert.equal(2, #pending)
    assert.is_true(pending[1].attempts >= 3)
    assert.equal("rejected", pending[1].last_error)
    assert.same({}, ob:dead())
  end)

  it("on_poison = 'skip' dead-letters the poison event and goes on", function()
    local got = {}
    place(db, ob, "p", 1); place(db, ob, "p", 2); place(db, ob, "p", 3)
    local relay = ob:relay {
      to = function(batch)
        for i, e in ipairs(batch) do
          if e.payload.total == 2 then return i - 1, "bad payload" end
          got[#got + 1] = e.payload.total
        end
        return true
      end,
      poll_ms = 5, max_attempts = 2, on_poison = "skip", backoff = { base_ms = 1, cap_ms = 1 },
      breaker = { min_calls = 1000, size = 1000 },
    }
    keel.sleep(50)
    relay:stop()
    assert.same({ 1, 3 }, got)
    local dead = ob:dead()
    assert.equal(1, #dead)
    assert.equal("bad payload", dead[1].error)
    assert.equal(0, #ob:pending())
  end)

  it("two relays on one store never publish concurrently (lease)", function()
    local active, max_active, n = 0, 0, 0
    local function target(batch)
      active = active + 1
      if active > max_active then max_active = active end
      keel.sleep(2)
      n = n + #batch
      active = active - 1
      return true
    end
    for i = 1, 20 do place(db, ob, "x" .. i, i) end
    local db2 = assert(keel.store.open(path))
    local ob2 = keel.outbox { store = db2 }
    local r1 = ob:relay { to = target, poll_ms = 5, concurrency = 1, lease_ms = 1000 }
    local r2 = ob2:relay { to = target, poll_ms = 5, concurrency = 1, lease_ms = 1000 }
    keel.sleep(200)
    assert.equal(1, max_active)
    assert.equal(20, n)
    assert.is_true(r1:stats().leased ~= r2:stats().leased)
    r1:stop(); r2:stop()
    db2:close()
  end)

  it("a relay that crashed between publishing and marking republishes (at-least-once)", function()
    place(db, ob, "a", 1)
    local calls = 0
    local relay = ob:relay { to = function() calls = calls + 1 return true end, poll_ms = 5, lease_ms = 1000 }
    keel.sleep(20)
    relay:stop()
    assert.equal(1, calls)
    db:exec("update outbox set sent = null") -- as if the mark had never committed
    relay = ob:relay { to = function() calls = calls + 1 return true end, poll_ms = 5 }
    keel.sleep(20)
    relay:stop()
    assert.equal(2, calls)
  end)

  it("carries a 10 MB payload and binary bytes unchanged", function()
    local bin = {}
    for i = 0, 255 do bin[#bin + 1] = string.char(i) end
    bin = table.concat(bin)
    local big = string.rep("0123456789abcdef", 10 * 65536)
    db:tx(function(tx)
      ob:add(tx, { aggregate_type = "blob", aggregate_id = 1, type = "big", payload = { data = big } })
      ob:add(tx, { aggregate_type = "blob", aggregate_id = 1, type = "bin", payload = { data = bin },
                   headers = { trace = "t-1" } })
    end)
    local q = keel.queue { capacity = 10 }
    local relay = ob:relay { to = q, poll_ms = 5 }
    local m1, m2 = assert(q:pop { wait_ms = 2000 }), assert(q:pop { wait_ms = 2000 })
    relay:stop()
    assert.equal(big, m1.item.payload.data)
    assert.equal(bin, m2.item.payload.data)
    assert.same({ trace = "t-1" }, m2.item.headers)
  end)

  it("a relay whose store is closed ends quietly", function()
    local d = assert(keel.store.open(":memory:"))
    local o = keel.outbox { store = d }
    local relay = o:relay { to = function() return true end, poll_ms = 5 }
    keel.sleep(10)
    d:close()
    keel.sleep(20)
    assert.equal("done", relay.task:status())
  end)

  it("deletes sent events after retain_ms, in bounded batches", function()
    for i = 1, 5 do place(db, ob, "r", i) end
    local relay = ob:relay { to = function() return true end, poll_ms = 5, retain_ms = 0 }
    keel.sleep(30)
    relay:stop()
    assert.equal(0, db:value("select count(*) from outbox"))
  end)

  it("relays to a Redis queue: JSON messages carrying the outbox id", function()
    if not redis_server.available then pending("redis-server not installed") return end
    local server = redis_server.start()
    local c = assert(keel.redis.connect(server.url))
    local q = keel.queue { redis = c, prefix = "ob:spec" }
    local relay = ob:relay { to = q, poll_ms = 5 }
    for i = 1, 10 do place(db, ob, "k" .. (i % 2), i) end
    local last = {}
    for _ = 1, 10 do
      local m = assert(q:pop { wait_ms = 2000 })
      local e = keel.json.decode(m.item)
      assert.is_string(e.id)
      assert.is_true(tonumber(e.id) > (last[e.aggregate_id] or 0))
      last[e.aggregate_id] = tonumber(e.id)
      assert.equal("order_placed", e.type)
      assert.is_string(e.payload.order)
      q:ack(m)
    end
    relay:stop()
    c:close()
    server:stop()
  end)

  it("works under keel.sim: relay and store in virtual time", function()
    local got = keel.sim({ seed = 9 }, function()
      local d = assert(keel.store.open(":memory:"))
      local o = setup(d)
      local out = {}
      local relay = o:relay { to = function(batch)
        for _, e in ipairs(batch) do out[#out + 1] = e.payload.total end
        return true
      end, poll_ms = 1000 }
      place(d, o, "v", 1)
      keel.sleep(10)
      place(d, o, "v", 2)
      keel.sleep(10)
      relay:stop()
      d:close()
      return out
    end)
    assert.same({ 1, 2 }, got)
  end)
end)
