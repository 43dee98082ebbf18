local keel = require "keel"
local redis_server = require "redis_server"

local function keel_bin() return os.getenv("KEEL_BIN") or "build/keel" end

describe("keel.redis.queue", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server, c, Q

  setup(function()
    server = redis_server.start()
    c = assert(keel.redis.connect(server.url))
    Q = require("keel.redis.queue")
  end)
  teardown(function()
    c:close()
    server:cleanup()
  end)

  it("pushes, pops in order, acks", function()
    local q = Q.new { redis = c, prefix = "q1" }
    for i = 1, 5 do assert(q:push("job" .. i)) end
    for i = 1, 5 do
      local m = assert(q:pop())
      assert.equal("job" .. i, m.item)
      assert.equal(1, m.attempt)
      assert.is_true(q:ack(m))
      assert.same({ nil, "unknown" }, { q:ack(m) })
    end
    assert.same({ nil, "empty" }, { q:pop() })
    local info = q:info()
    assert.equal(0, info.length)
    assert.equal(0, info.pending)
    q:close()
  end)

  it("is binary-safe", function()
    local q = Q.new { redis = c, prefix = "q2" }
    local item = "a\0b\255" .. string.rep("x", 100000)
    assert(q:push(item))
    local m = assert(q:pop())
    assert.equal(item, m.item)
    q:ack(m)
  end)

  it("waits for a push with wait_ms, and times out", function()
    local q = Q.new { redis = c, prefix = "q3", visibility_ms = 5000 }
    local t = keel.spawn(function() return q:pop { wait_ms = 3000 } end)
    keel.sleep(50)
    assert(q:push("late"))
    local ok, m = t:join()
    assert.is_true(ok)
    assert.equal("late", m.item)
    q:ack(m)
    assert.same({ nil, "timeout" }, { q:pop { wait_ms = 50 } })
    q:close()
  end)

  it("refuses pushes at capacity", function()
    local q = Q.new { redis = c, prefix = "q4", capacity = 2 }
    assert(q:push("a"))
    assert(q:push("b"))
    assert.same({ nil, "full" }, { q:push("c") })
    assert.is_true(q:ack(assert(q:pop())))
    assert(q:push("c"))
  end)

  it("redelivers after visibility, dead-letters after max_attempts, redrives", function()
    local q = Q.new { redis = c, prefix = "q5", visibility_ms = 40, max_attempts = 3, prefetch = 1 }
    assert(q:push("flaky"))
    for attempt = 1, 3 do
      local m = assert(q:pop { wait_ms = 2000 })
      assert.equal("flaky", m.item)
      assert.equal(attempt, m.attempt)
      -- neither acked nor nacked: the visibility timeout brings it back
    end
    assert.same({ nil, "timeout" }, { q:pop { wait_ms = 200 } })
    local dead = q:dead()
    assert.equal(1, #dead)
    assert.equal("flaky", dead[1].item)
    assert.equal(3, dead[1].attempts)
    assert.equal("visibility timeout", dead[1].error)
    assert.is_true(q:stats().dead_lettered >= 1)
    assert.equal(1, q:redrive())
    assert.equal(0, #q:dead())
    local m = assert(q:pop { wait_ms = 1000 })
    assert.equal("flaky", m.item)
    assert.equal(1, m.attempt)
    q:ack(m)
    q:close()
  end)

  -- A consumer crashes by dropping its client with nothing acknowledged;
  -- each has a connection of its own, as separate processes would.
  local function new_consumer(prefix, name, opts)
    local cc = assert(keel.redis.connect(server.url))
    local o = { redis = cc, prefix = prefix, consumer = name }
    for k, v in pairs(opts) do o[k] = v end
    return Q.new(o), cc
  end

  it("only messages handed to user code count as attempts: crashes do not burn the prefetched ones", function()
    local opts = { visibility_ms = 150, max_attempts = 3, prefetch = 10 }
    local q = Q.new { redis = c, prefix = "qprefetch" }
    for i = 1, 10 do assert(q:push("job" .. i)) end
    for crash = 1, 3 do
      -- every message is past its visibility when the next consumer starts:
      -- its first reclaim takes all ten, in order
      if crash > 1 then keel.sleep(350) end
      local qc, cc = new_consumer("qprefetch", "crasher" .. crash, opts)
      local m = assert(qc:pop { wait_ms = 3000 })
      assert.equal("job1", m.item) -- the poison job, first every time
      assert.equal(crash, m.attempt)
      assert.equal(9, qc:stats().buffered) -- the rest sat in its buffer, unseen
      cc:close() -- crash mid-job
    end
    keel.sleep(350)
    local survivor, sc = new_consumer("qprefetch", "survivor", opts)
    local seen = {}
    while true do
      local m = survivor:pop { wait_ms = 400 }
      if not m then break end
      seen[#seen + 1] = m.item .. "#" .. m.attempt
      assert.is_true(survivor:ack(m))
    end
    table.sort(seen)
    assert.same({ "job10#1", "job2#1", "job3#1", "job4#1", "job5#1", "job6#1", "job7#1", "job8#1", "job9#1" },
      seen)
    local dead = q:dead()
    assert.equal(1, #dead)
    assert.equal("job1", dead[1].item)
    assert.equal(3, dead[1].attempts)
    local info = q:info()
    assert.equal(0, info.pending)
    assert.equal(0, info.length)
    survivor:close()
    sc:close()
  end)

  it("a late ack, nack or extend of an expired delivery is 'unknown'; the live one goes on", function()
    local opts = { visibility_ms = 250, max_attempts = 5, prefetch = 2 }
    local q1, c1 = new_consumer("qlate", "slow", opts)
    local q2, c2 = new_consumer("qlate", "fast", opts)
    assert(q1:push("m1"))
    assert(q1:push("m2"))
    local m1 = assert(q1:pop())
    local m2 = assert(q1:pop())
    assert.same({ "m1", "m2" }, { m1.item, m2.item })
    keel.sleep(350) -- consumer 1 is slower than visibility_ms
    -- consumer 2's reclaim takes both: m1 handed out, m2 in its buffer
    local r1 = assert(q2:pop { wait_ms = 2000 })
    assert.equal("m1", r1.item)
    assert.equal(2, r1.attempt)
    assert.equal(1, q2:stats().buffered)
    assert.same({ nil, "unknown" }, { q1:ack(m2) })
    assert.same({ nil, "unknown" }, { q1:ack(m1) })
    assert.same({ nil, "unknown" }, { q1:nack(m1) })
    assert.same({ nil, "unknown" }, { q1:extend(m2, 50) })
    -- m2 is still live, for consumer 2
    local r2 = assert(q2:pop())
    assert.equal("m2", r2.item)
    assert.equal(2, r2.attempt)
    assert.is_true(q2:ack(r1))
    -- expired but not yet taken by anyone: still late, as with keel.queue
    keel.sleep(350)
    assert.same({ nil, "unknown" }, { q2:ack(r2) })
    local r3 = assert(q1:pop { wait_ms = 2000 })
    assert.equal("m2", r3.item)
    assert.equal(3, r3.attempt)
    assert.is_true(q1:ack(r3, { wait = false }))
    assert.is_true(q1:flush())
    assert.same({ nil, "timeout" }, { q2:pop { wait_ms = 400 } })
    assert.same({ nil, "timeout" }, { q1:pop { wait_ms = 400 } })
    local info = q1:info()
    assert.equal(0, info.pending)
    assert.equal(0, #q1:dead())
    q1:close(); q2:close(); c1:close(); c2:close()
  end)

  it("a message acknowledged while another consumer holds it in its buffer is never handed out", function()
    -- consumer 2 reclaims a message into its buffer; the live delivery it
    -- superseded cannot ack any more, and consumer 2's own ack ends it; a
    -- batched late ack ({wait = false}) is not applied either
    local opts = { visibility_ms = 250, max_attempts = 5, prefetch = 3 }
    local q1, c1 = new_consumer("qlateb", "one", opts)
    local q2, c2 = new_consumer("qlateb", "two", opts)
    for i = 1, 3 do assert(q1:push("n" .. i)) end
    local a = { assert(q1:pop()), assert(q1:pop()), assert(q1:pop()) }
    keel.sleep(350)
    local b1 = assert(q2:pop { wait_ms = 2000 })
    assert.equal("n1", b1.item)
    for i = 1, 3 do assert.is_true(q1:ack(a[i], { wait = false })) end -- queued: "true" means queued
    assert.is_true(q1:flush())
    local got = { b1.item }
    for _ = 1, 2 do
      local m = assert(q2:pop())
      got[#got + 1] = m.item
      assert.is_true(q2:ack(m))
    end
    -- acks waited for in one turn share a script call, each with its own answer
    local stale = {}
    for k, v in pairs(b1) do stale[k] = v end
    stale.attempt = b1.attempt + 1
    local ts = { keel.spawn(function() return q2:ack(stale) end), keel.spawn(function() return q2:ack(b1) end) }
    assert.same({ true, nil, "unknown" }, { ts[1]:join() })
    assert.same({ true, true }, { ts[2]:join() })
    assert.same({ "n1", "n2", "n3" }, got)
    assert.equal(3, q1:stats().late_acks)
    assert.same({ nil, "timeout" }, { q2:pop { wait_ms = 400 } })
    assert.same({ nil, "timeout" }, { q1:pop { wait_ms = 400 } })
    q1:close(); q2:close(); c1:close(); c2:close()
  end)

  it("nack requeues, and dead-letters on the last attempt", function()
    local q = Q.new { redis = c, prefix = "q6", visibility_ms = 5000, max_attempts = 2, prefetch = 1 }
    assert(q:push("x"))
    local m = assert(q:pop())
    assert.same({ true, "requeued" }, { q:nack(m, { error = "boom" }) })
    local m2 = assert(q:pop { wait_ms = 1000 })
    assert.equal(2, m2.attempt)
    assert.same({ true, "dead" }, { q:nack(m2, { error = "boom again" }) })
    local dead = q:dead()
    assert.equal("boom again", dead[1].error)
    assert.equal(m.id, dead[1].source_id)
    assert.same({ nil, "unknown" }, { q:nack(m2) })
    q:close()
  end)

  it("ack {wait = false} queues acks; flush sends them; nothing acknowledged comes back", function()
    local q = Q.new { redis = c, prefix = "q11", visibility_ms = 100, prefetch = 4 }
    for i = 1, 10 do assert(q:push("w" .. i)) end
    for i = 1, 10 do
      local m = assert(q:pop())
      assert.equal("w" .. i, m.item)
      assert.is_true(q:ack(m, { wait = false }))
    end
    assert.is_true(q:flush())
    assert.equal(10, q:stats().acked)
    assert.same({ nil, "timeout" }, { q:pop { wait_ms = 300 } }) -- past visibility: nothing comes back
    local info = q:info()
    assert.equal(0, info.length)
    assert.equal(0, info.pending)
    q:close()
  end)

  it("trims acknowledged entries; a stuck pending one holds back only those after it", function()
    local q = Q.new { redis = c, prefix = "q12", prefetch = 1 }
    for i = 1, 10 do assert(q:push("t" .. i)) end
    local stuck = assert(q:pop())
    for i = 2, 10 do
      local m = assert(q:pop())
      assert.equal("t" .. i, m.item)
      assert.is_true(q:ack(m))
    end
    local info = q:info()
    assert.equal(1, info.pending)
    assert.equal(0, info.ready)
    assert.equal(10, info.length) -- t2..t10 are acknowledged but sit after t1
    q.trim_slack = 3               -- past the slack they are deleted one by one
    info = q:info()
    assert.equal(1, info.length)
    assert.is_true(q:ack(stuck))
    assert.equal(0, q:info().length)
    assert.is_true(q:stats().trimmed >= 10)
    q:close()
  end)

  it("capacity counts outstanding messages, not acknowledged ones awaiting trimming", function()
    local q = Q.new { redis = c, prefix = "q13", capacity = 3, prefetch = 1 }
    for i = 1, 3 do assert(q:push(i)) end
    local stuck = assert(q:pop())
    assert.is_true(q:ack(assert(q:pop())))
    assert.is_true(q:ack(assert(q:pop())))
    q:flush()
    assert.equal(3, c:call("XLEN", q.stream)) -- both acknowledged entries are still there
    assert(q:push(4))
    assert(q:push(5))
    assert.same({ nil, "full" }, { q:push(6) })
    local info = q:info()
    assert.equal(1, info.pending)
    assert.equal(2, info.ready)
    -- nothing outstanding was trimmed to make room
    assert.equal(5, c:call("XLEN", q.stream))
    assert.is_true(q:ack(stuck))
    assert.equal("4", assert(q:pop()).item)
    q:close()
  end)

  it("trims entries acknowledged by a consumer that never trimmed them", function()
    local q = Q.new { redis = c, prefix = "q14", prefetch = 1 }
    for i = 1, 3 do assert(q:push(i)) end
    for _ = 1, 3 do
      local m = assert(q:pop())
      assert.equal(1, c:call("XACK", q.stream, q.group, m.id)) -- as if acked by a process that then died
    end
    -- (the first pop's reclaim pass may already have trimmed some: it looks
    -- for exactly such entries, a few ms later)
    assert.equal(0, q:info().length)
    q:close()
  end)

  it("two groups count attempts each on their own: one group's delivery does not hide the message from the other",
    function()
    local a = Q.new { redis = c, prefix = "qgroups", group = "billing", prefetch = 2, max_attempts = 2 }
    local b = Q.new { redis = c, prefix = "qgroups", group = "audit", prefetch = 2, max_attempts = 2 }
    assert(b:info())
    assert(a:push("m1"))
    local ma = assert(a:pop())
    local mb = assert(b:pop()) -- while billing's delivery is live
    assert.same({ "m1", 1, "m1", 1 }, { ma.item, ma.attempt, mb.item, mb.attempt })
    assert.same({ true, "requeued" }, { a:nack(ma) })
    ma = assert(a:pop { wait_ms = 2000 })
    assert.equal(2, ma.attempt)
    assert.is_true(b:ack(mb))
    assert.is_true(a:ack(ma))
    assert.equal(0, a:info().pending)
    assert.equal(0, b:info().pending)
    a:close()
    b:close()
  end)

  it("two groups on one stream each get every message; trimming waits for both", function()
    local a = Q.new { redis = c, prefix = "q15", group = "billing", prefetch = 2 }
    local b = Q.new { redis = c, prefix = "q15", group = "audit", prefetch = 2 }
    assert(b:info()) -- creates the second group before anything is pushed
    for i = 1, 6 do assert(a:push("m" .. i)) end
    for i = 1, 6 do
      local m = assert(a:pop())
      assert.equal("m" .. i, m.item)
      assert.is_true(a:ack(m))
    end
    assert.equal(6, a:info().length) -- audit has read none of them
    for _ = 1, 3 do assert.is_true(b:ack(assert(b:pop()))) end
    assert.equal(3, b:info().length)
    for i = 4, 6 do
      local m = assert(b:pop())
      assert.equal("m" .. i, m.item)
      assert.is_true(b:ack(m))
    end
    assert.equal(0, a:info().length)
    a:close()
    b:close()
  end)

  it("delays a message until delay_ms has passed, in due order", function()
    local q = Q.new { redis = c, prefix = "q16", prefetch = 4 }
    local late = assert(q:push("late", { delay_ms = 1500 }))
    assert.matches("^d%d+$", late)
    assert(q:push("soon", { delay_ms = 600 }))
    assert(q:push("now"))
    assert.equal(2, q:info().delayed)
    local first = assert(q:pop())
    assert.equal("now", first.item)
    assert.is_true(q:ack(first))
    assert.same({ nil, "timeout" }, { q:pop { wait_ms = 100 } }) -- neither is due yet
    local m = assert(q:pop { wait_ms = 5000 })
    assert.equal("soon", m.item)
    assert.equal(1, m.attempt)
    assert.is_true(q:ack(m))
    m = assert(q:pop { wait_ms = 5000 })
    assert.equal("late", m.item)
    assert.is_true(q:ack(m))
    local info = q:info()
    assert.equal(0, info.delayed)
    assert.equal(0, info.length)
    assert.equal(2, q:stats().delayed)
    q:close()
  end)

  it("a delayed message pushed by another process reaches a consumer that never pushed", function()
    local producer = Q.new { redis = c, prefix = "q18" }
    local consumer = Q.new { redis = c, prefix = "q18" } -- its own state: it only learns by polling
    assert.same({ nil, "empty" }, { consumer:pop() })
    assert(producer:push("later", { delay_ms = 400 }))
    local m = assert(consumer:pop { wait_ms = 5000 })
    assert.equal("later", m.item)
    assert.is_true(consumer:ack(m))
    producer:close()
    consumer:close()
  end)

  it("counts delayed messages against capacity; delay_ms = 0 is an ordinary push", function()
    local q = Q.new { redis = c, prefix = "q17", capacity = 2 }
    assert(q:push("a", { delay_ms = 60000 }))
    assert.matches("^%d+%-%d+$", assert(q:push("b", { delay_ms = 0 })))
    assert.same({ nil, "full" }, { q:push("c", { delay_ms = 10 }) })
    assert.same({ nil, "full" }, { q:push("c") })
    assert.has_error(function() q:push("x", { delay_ms = -1 }) end)
    assert.has_error(function() q:push("x", { delay_ms = 0 / 0 }) end)
    assert.has_error(function() q:push("x", { priority = 1 }) end)
    q:close()
  end)

  it("dedup_key: taken from push until ack, across processes' queue objects", function()
    local q = Q.new { redis = c, prefix = "q20" }
    local other = Q.new { redis = c, prefix = "q20" } -- another process's view of the same queue
    assert(q:push("a", { dedup_key = "order-1" }))
    assert.same({ nil, "duplicate" }, { other:push("a again", { dedup_key = "order-1" }) })
    assert(q:push("b", { dedup_key = 42 }))
    assert.same({ nil, "duplicate" }, { q:push("b again", { dedup_key = 42 }) })
    assert(q:push("plain"))
    local m = assert(q:pop())
    assert.equal("a", m.item)
    assert.equal("order-1", m.dedup_key)
    -- popped but not acknowledged: still taken
    assert.same({ nil, "duplicate" }, { q:push("x", { dedup_key = "order-1" }) })
    assert.is_true(q:ack(m))
    assert(other:push("a2", { dedup_key = "order-1" }))
    local m2 = assert(q:pop())
    assert.equal("42", m2.dedup_key)
    assert.is_true(q:ack(m2, { wait = false }))
    q:flush()
    assert(q:push("b2", { dedup_key = 42 }))
    local m3 = assert(q:pop())
    assert.equal("plain", m3.item)
    assert.is_nil(m3.dedup_key)
    assert.is_true(q:ack(m3))
    assert.equal(2, q:stats().duplicates)
    assert.has_error(function() q:push("x", { dedup_key = {} }) end)
    assert.has_error(function() q:push("x", { priority = 1 }) end)
    q:close()
    other:close()
  end)

  it("dedup_key: dead-lettering frees the key, redrive takes it again or leaves the letter", function()
    local q = Q.new { redis = c, prefix = "q21", max_attempts = 1, visibility_ms = 200 }
    assert(q:push("j1", { dedup_key = "k1" }))
    assert(q:push("j2", { dedup_key = "k2" }))
    local m1 = assert(q:pop())
    assert.same({ true, "dead" }, { q:nack(m1, { error = "boom" }) })
    -- k2's message times out instead: the reclaim dead-letters it
    local m2 = assert(q:pop())
    assert.equal("k2", m2.dedup_key)
    keel.sleep(300)
    assert.same({ nil, "empty" }, { q:pop() })
    local dead = q:dead()
    assert.equal(2, #dead)
    assert.equal("k1", dead[1].dedup_key)
    assert.equal("k2", dead[2].dedup_key)
    -- both keys are free; k1 is taken again before the redrive
    assert(q:push("new k1", { dedup_key = "k1" }))
    assert.equal(1, q:redrive())
    assert.equal(1, #q:dead())
    assert.equal("k1", q:dead()[1].dedup_key)
    assert.same({ nil, "duplicate" }, { q:push("x", { dedup_key = "k2" }) })
    local got = {}
    for _ = 1, 2 do
      local m = assert(q:pop())
      got[m.item] = m.dedup_key
      assert.is_true(q:ack(m))
    end
    assert.same({ ["new k1"] = "k1", j2 = "k2" }, got)
    -- with k1 free again the letter goes back too
    assert.equal(1, q:redrive())
    assert.equal(0, #q:dead())
    local m = assert(q:pop())
    assert.same({ "j1", "k1" }, { m.item, m.dedup_key })
    assert.is_true(q:ack(m))
    q:close()
  end)

  it("dedup_key with delay_ms: taken while delayed, kept when it becomes ready", function()
    local q = Q.new { redis = c, prefix = "q22" }
    assert.matches("^d%d+$", assert(q:push("later", { delay_ms = 100, dedup_key = "once" })))
    assert.same({ nil, "duplicate" }, { q:push("now", { dedup_key = "once" }) })
    assert.same({ nil, "duplicate" }, { q:push("later2", { delay_ms = 50, dedup_key = "once" }) })
    local m = assert(q:pop { wait_ms = 3000 })
    assert.same({ "later", "once" }, { m.item, m.dedup_key })
    assert.same({ nil, "duplicate" }, { q:push("now", { dedup_key = "once" }) })
    assert.is_true(q:ack(m))
    assert(q:push("now", { dedup_key = "once" }))
    q:close()
  end)

  it("priorities: higher levels pop first, FIFO within a level, every path keeps the level", function()
    local q = Q.new { redis = c, prefix = "q23", priorities = { 10, -5 } }
    assert(q:push("low1", { priority = -5 }))
    assert(q:push("mid1"))
    assert(q:push("high1", { priority = 10 }))
    assert(q:push("mid2", { priority = 0 }))
    assert(q:push("high2", { priority = 10 }))
    assert(q:push("low2", { priority = -5 }))
    local order = {}
    for _ = 1, 6 do
      local m = assert(q:pop())
      order[#order + 1] = m.item .. "@" .. m.priority
      assert.is_true(q:ack(m, { wait = false }))
    end
    assert.same({ "high1@10", "high2@10", "mid1@0", "mid2@0", "low1@-5", "low2@-5" }, order)
    q:flush()
    local info = q:info()
    assert.same({ 0, 0, 0 }, { info.length, info.pending, info.ready })
    -- a level the queue does not declare is a bad argument
    assert.has_error(function() q:push("x", { priority = 3 }) end)
    assert.has_error(function() q:push("x", { priority = "10" }) end)
    assert.has_error(function() Q.new { redis = c, priorities = { 1.5 } } end)
    assert.has_error(function() Q.new { redis = c, priorities = 3 } end)
    q:close()
  end)

  it("priorities: a waiting consumer gets any level; delayed, dead and redriven messages keep theirs", function()
    local q = Q.new { redis = c, prefix = "q24", priorities = { 5 }, max_attempts = 1, visibility_ms = 200 }
    local got
    local t = keel.spawn(function() got = assert(q:pop { wait_ms = 3000 }) end)
    keel.sleep(30)
    assert(q:push("urgent", { priority = 5 }))
    assert(t:join())
    assert.same({ "urgent", 5 }, { got.item, got.priority })
    assert.is_true(q:ack(got))
    -- delayed at level 5: once due it overtakes what waits at level 0
    assert(q:push("later-urgent", { priority = 5, delay_ms = 80 }))
    assert(q:push("normal"))
    keel.sleep(150)
    local m = assert(q:pop())
    assert.same({ "later-urgent", 5 }, { m.item, m.priority })
    -- nacked out of attempts: dead, with its level; a redrive puts it back there
    assert.same({ true, "dead" }, { q:nack(m) })
    assert.equal(5, q:dead()[1].priority)
    assert.equal(1, q:redrive())
    m = assert(q:pop())
    assert.same({ "later-urgent", 5, 1 }, { m.item, m.priority, m.attempt })
    -- left unacknowledged past visibility at level 5: the reclaim dead-letters it
    keel.sleep(300)
    local n = assert(q:pop())
    assert.equal("normal", n.item)
    assert.is_true(q:ack(n))
    local dead = q:dead()
    assert.equal(1, #dead)
    assert.same({ "later-urgent", 5, "visibility timeout" }, { dead[1].item, dead[1].priority, dead[1].error })
    q:close()
  end)

  it("priorities: capacity counts every level", function()
    local q = Q.new { redis = c, prefix = "q25", priorities = { 1 }, capacity = 3 }
    assert(q:push("a"))
    assert(q:push("b", { priority = 1 }))
    assert(q:push("c", { priority = 1, dedup_key = "c" }))
    assert.same({ nil, "full" }, { q:push("d") })
    assert.same({ nil, "full" }, { q:push("d", { priority = 1 }) })
    assert.same({ nil, "full" }, { q:push("d", { priority = 1, delay_ms = 10 }) })
    local m = assert(q:pop())
    assert.same({ "b", 1 }, { m.item, m.priority })
    assert.is_true(q:ack(m))
    q:flush()
    assert(q:push("d"))
    q:close()
  end)

  it("peek shows what pops would take next, in order, without taking it", function()
    local q = Q.new { redis = c, prefix = "q26", priorities = { 3 } }
    assert.same({}, q:peek())
    assert(q:push("n1"))
    assert(q:push("u1", { priority = 3, dedup_key = "u" }))
    assert(q:push("n2"))
    local p = q:peek(10)
    assert.equal(3, #p)
    assert.same({ "u1", 3, "u" }, { p[1].item, p[1].priority, p[1].dedup_key })
    assert.same({ "n1", 0 }, { p[2].item, p[2].priority })
    assert.same({ "n2", 0 }, { p[3].item, p[3].priority })
    assert.equal(1, #q:peek())
    assert.same({ nil, "unknown" }, { q:ack(p[1]) }) -- not a delivery
    local m = assert(q:pop())
    assert.equal(p[1].id, m.id)
    -- delivered (even if unacknowledged) is no longer ahead of the pops
    assert.same({ "n1", "n2" }, { q:peek(5)[1].item, q:peek(5)[2].item })
    assert.is_true(q:ack(m))
    assert.has_error(function() q:peek(-1) end)
    q:close()
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() Q.new { redis = c, visibility_ms = 0 } end)
    assert.has_error(function() Q.new { redis = c, bogus = 1 } end)
    local q = Q.new { redis = c, prefix = "q7" }
    assert.has_error(function() q:push(nil) end)
    assert.has_error(function() q:push({}) end)
    assert.has_error(function() q:pop { wait_ms = -1 } end)
    assert.has_error(function() q:ack("nope") end)
    assert.has_error(function() q.pop() end)
  end)

  it("at-least-once across a SIGKILLed consumer; acked messages never reappear", function()
    local prefix = "q8"
    local q = Q.new { redis = c, prefix = prefix, visibility_ms = 300, max_attempts = 2, prefetch = 1 }
    for i = 1, 5 do assert(q:push("m" .. i)) end
    -- we take and ack m1..m2 first
    for i = 1, 2 do
      local m = assert(q:pop())
      assert.equal("m" .. i, m.item)
      assert.is_true(q:ack(m))
    end
    local dir = io.popen("mktemp -d /tmp/keel-queue-XXXXXX"):read("*l")
    local pid = tonumber(io.popen(string.format(
      "%s spec/support/redis_queue_worker.lua %s %s 300 %s/got > %s/err 2>&1 & echo $!",
      keel_bin(), server.url, prefix, dir, dir)):read("*l"))
    local got
    for _ = 1, 300 do
      local f = io.open(dir .. "/got")
      if f then got = f:read("*a"); f:close() end
      if got and got ~= "" then break end
      keel.sleep(20)
    end
    assert.matches("^GOT %S+ m3 1", got)
    os.execute("kill -9 " .. pid)
    -- the worker's message comes back after visibility, as attempt 2
    local seen = {}
    local redelivered
    for _ = 1, 3 do
      local m = assert(q:pop { wait_ms = 2000 })
      seen[#seen + 1] = m.item
      if m.item == "m3" then
        assert.equal(2, m.attempt)
        redelivered = m -- do not ack: it will be dead-lettered
      else
        assert.is_true(q:ack(m))
      end
    end
    assert.truthy(redelivered)
    table.sort(seen)
    assert.same({ "m3", "m4", "m5" }, seen)
    -- past max_attempts it goes to the dead-letter stream, and nothing
    -- acknowledged ever shows up again
    local m, err = q:pop { wait_ms = 800 }
    assert.is_nil(m)
    assert.equal("timeout", err)
    local dead = q:dead()
    assert.equal(1, #dead)
    assert.equal("m3", dead[1].item)
    assert.equal(2, dead[1].attempts)
    local info = q:info()
    assert.equal(0, info.length)
    assert.equal(0, info.pending)
    os.execute("rm -rf " .. dir)
    q:close()
  end)

  it("Redis killed and restarted mid-run: fails fast, reconnects, loses nothing acknowledged", function()
    local s = redis_server.start { persist = true }
    local c2 = assert(keel.redis.connect(s.url, { backoff_base_ms = 10, backoff_max_ms = 50, timeout_ms = 2000 }))
    local q = Q.new { redis = c2, prefix = "q10", visibility_ms = 300, prefetch = 4 }
    local pushed, acked, consumed = {}, {}, {}
    local failures = 0
    local producing = true
    local producer = keel.spawn(function()
      for i = 1, 300 do
        local id = q:push("job" .. i)
        if id then pushed[#pushed + 1] = "job" .. i else failures = failures + 1 end
        keel.sleep(1)
      end
      producing = false
    end)
    local consumer = keel.spawn(function()
      local idle = 0
      while producing or idle < 5 do
        local m, err = q:pop { wait_ms = 200 }
        if m then
          idle = 0
          assert.is_nil(acked[m.item], m.item .. " came back after its ack") -- never redelivered once acked
          consumed[m.item] = true
          if q:ack(m) then acked[m.item] = true end
        else
          if err ~= "timeout" then failures = failures + 1; keel.sleep(10) end
          if not producing then idle = idle + 1 end
        end
      end
    end)
    keel.sleep(100)
    s:restart() -- SIGKILL and start again on the same port and data
    assert.is_true((producer:join()))
    assert.is_true((consumer:join()))
    assert.is_true(failures > 0) -- the outage was seen as errors, not hangs
    assert.is_true(c2:stats().reconnects >= 1)
    -- every job Redis acknowledged (an id came back) was delivered
    for _, item in ipairs(pushed) do assert.is_true(consumed[item], item .. " lost") end
    local info = q:info()
    assert.equal(0, info.pending)
    q:close()
    c2:close()
    s:cleanup()
  end)

  it("survives a Redis restart: errors while down, resumes after", function()
    local s = redis_server.start()
    local c2 = assert(keel.redis.connect(s.url, { backoff_base_ms = 10, backoff_max_ms = 50 }))
    local q = Q.new { redis = c2, prefix = "q9", visibility_ms = 1000 }
    assert(q:push("before"))
    local m = assert(q:pop())
    assert.is_true(q:ack(m))
    s:stop()
    local _, err = q:push("during")
    assert.matches("^conn: ", err)
    s:launch()
    local ok
    for _ = 1, 100 do
      if q:push("after") then ok = true break end
      keel.sleep(20)
    end
    assert.is_true(ok)
    -- the restarted server has no group: the queue recreates it
    local m2 = assert(q:pop { wait_ms = 1000 })
    assert.equal("after", m2.item)
    assert.is_true(q:ack(m2))
    q:close()
    c2:close()
    s:cleanup()
  end)
end)
