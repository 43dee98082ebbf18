local keel = require "keel"
local proc = require "keelproc"
local ctest = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec") .. "/c/ctest.lua")

local function sim(fn, seed) return keel.sim({ seed = seed or 1 }, fn) end

local function drain(q)
  local out = {}
  while true do
    local m = q:pop()
    if not m then break end
    out[#out + 1] = m.item
    q:ack(m)
  end
  return out
end

describe("keel.queue", function()
  describe("basics", function()
    it("push, pop, ack", function()
      sim(function()
        local q = keel.queue()
        local id = q:push("job")
        assert.is_number(id)
        local m = q:pop()
        assert.same({ id, "job", 1 }, { m.id, m.item, m.attempt })
        assert.is_true(q:ack(m))
        assert.same({ nil, "empty" }, { q:pop() })
        local st = q:stats()
        assert.same({ 0, 0, 0, 1, 1, 1 }, { st.ready, st.in_flight, st.delayed, st.pushed, st.popped, st.acked })
      end)
    end)

    it("items may be any non-nil value", function()
      sim(function()
        local q = keel.queue()
        local t, f = {}, function() end
        for _, v in ipairs { t, f, false, 0, "", 1.5 } do q:push(v) end
        local got = drain(q)
        assert.equal(t, got[1]); assert.equal(f, got[2])
        assert.same({ false, 0, "", 1.5 }, { got[3], got[4], got[5], got[6] })
      end)
    end)

    it("ids are unique even when slots are reused", function()
      sim(function()
        local q = keel.queue { capacity = 1 }
        local seen = {}
        for _ = 1, 100 do
          local id = q:push(1)
          assert.is_nil(seen[id])
          seen[id] = true
          q:ack(q:pop())
        end
      end)
    end)

    it("keeps a popped message valid after later pops", function()
      sim(function()
        local q = keel.queue()
        q:push("a"); q:push("b")
        local a = q:pop()
        local b = q:pop()
        assert.equal("a", a.item); assert.equal("b", b.item)
        assert.is_true(q:ack(a)); assert.is_true(q:ack(b))
      end)
    end)
  end)

  describe("ordering", function()
    it("pops higher priority first, FIFO among equal priorities", function()
      sim(function()
        local q = keel.queue()
        q:push("low1", { priority = -1 })
        q:push("a")
        q:push("high", { priority = 10 })
        q:push("b")
        q:push("mid", { priority = 2.5 })
        q:push("low2", { priority = -1 })
        q:push("c")
        assert.same({ "high", "mid", "a", "b", "c", "low1", "low2" }, drain(q))
      end)
    end)

    it("a nacked message goes behind its priority peers", function()
      sim(function()
        local q = keel.queue()
        q:push("a"); q:push("b")
        q:nack(q:pop())
        assert.same({ "b", "a" }, drain(q))
      end)
    end)
  end)

  describe("delay", function()
    it("hides a delayed message until exactly its time", function()
      sim(function()
        local q = keel.queue()
        q:push("later", { delay_ms = 100 })
        q:push("now", { delay_ms = 0 })
        assert.equal("now", q:pop().item)
        keel.sleep(99.5)
        assert.same({ nil, "empty" }, { q:pop() })
        assert.equal(1, q:stats().delayed)
        keel.sleep(0.5)
        local m = q:pop()
        assert.equal("later", m.item)
        assert.equal(100, keel.now())
      end)
    end)

    it("releases delayed messages in time order, then FIFO", function()
      sim(function()
        local q = keel.queue()
        q:push("c", { delay_ms = 30 })
        q:push("a", { delay_ms = 10 })
        q:push("b1", { delay_ms = 20 })
        q:push("b2", { delay_ms = 20 })
        keel.sleep(50)
        assert.same({ "a", "b1", "b2", "c" }, drain(q))
      end)
    end)

    it("a released message takes its priority place", function()
      sim(function()
        local q = keel.queue()
        q:push("x")
        q:push("urgent", { delay_ms = 5, priority = 1 })
        keel.sleep(5)
        assert.same({ "urgent", "x" }, drain(q))
      end)
    end)
  end)

  describe("visibility", function()
    it("redelivers an unacked message exactly at visibility_ms with attempt + 1", function()
      sim(function()
        local q = keel.queue { visibility_ms = 1000 }
        q:push("job")
        local m1 = q:pop()
        keel.sleep(999)
        assert.same({ nil, "empty" }, { q:pop() })
        keel.sleep(1)
        local m2 = q:pop()
        assert.equal(m1.id, m2.id)
        assert.equal(2, m2.attempt)
        assert.equal(1, q:stats().expired)
        -- the first consumer is too late now
        assert.same({ nil, "unknown" }, { q:ack(m1) })
        assert.same({ nil, "unknown" }, { q:nack(m1) })
        assert.is_true(q:ack(m2))
      end)
    end)

    it("ack just before the deadline wins", function()
      sim(function()
        local q = keel.queue { visibility_ms = 50 }
        q:push(1)
        local m = q:pop()
        keel.sleep(49.999)
        assert.is_true(q:ack(m))
        keel.sleep(100)
        assert.same({ nil, "empty" }, { q:pop() })
        assert.equal(0, q:stats().expired)
      end)
    end)

    it("ack after expiry (not yet redelivered) is unknown", function()
      sim(function()
        local q = keel.queue { visibility_ms = 10 }
        q:push(1)
        local m = q:pop()
        keel.sleep(10)
        assert.same({ nil, "unknown" }, { q:ack(m) })
        assert.equal(1, q:stats().ready)
      end)
    end)

    it("expiry happens with nobody calling the queue, waking a waiting popper", function()
      sim(function()
        local q = keel.queue { visibility_ms = 100 }
        q:push("job")
        q:pop() -- lost consumer
        local got, at
        local t = keel.spawn(function()
          local m = q:pop { wait_ms = math.huge }
          got, at = m, keel.now()
        end)
        t:join()
        assert.equal("job", got.item)
        assert.equal(2, got.attempt)
        assert.equal(100, at)
      end)
    end)

    it("extend keeps a delivery invisible longer", function()
      sim(function()
        local q = keel.queue { visibility_ms = 10 }
        q:push(1)
        local m = q:pop()
        keel.sleep(5)
        assert.is_true(q:extend(m, 100))
        keel.sleep(50)
        assert.same({ nil, "empty" }, { q:pop() })
        keel.sleep(55)
        assert.equal(2, q:pop().attempt)
        assert.same({ nil, "unknown" }, { q:extend(m, 10) })
      end)
    end)
  end)

  describe("ack and nack", function()
    it("double ack and ack of a foreign message are unknown", function()
      sim(function()
        local q, other = keel.queue(), keel.queue()
        q:push(1); other:push(2)
        local m, o = q:pop(), other:pop()
        assert.is_true(q:ack(m))
        assert.same({ nil, "unknown" }, { q:ack(m) })
        assert.same({ nil, "unknown" }, { q:ack(o) })
        assert.same({ nil, "unknown" }, { q:nack(m) })
        assert.same({ nil, "unknown" }, { q:ack({ id = 12345, attempt = 1 }) })
        assert.same({ nil, "unknown" }, { q:ack({ id = 0 / 0, attempt = 0 / 0 }) })
        assert.same({ nil, "unknown" }, { q:ack({ id = -1, attempt = 1e300 }) })
        assert.is_true(other:ack(o))
      end)
    end)

    it("nack redelivers with attempt + 1, immediately or after delay_ms", function()
      sim(function()
        local q = keel.queue()
        q:push("j")
        local ok, what = q:nack(q:pop())
        assert.same({ true, "requeued" }, { ok, what })
        local m = q:pop()
        assert.equal(2, m.attempt)
        q:nack(m, { delay_ms = 20 })
        assert.equal(1, q:stats().delayed)
        keel.sleep(19)
        assert.is_nil(q:pop())
        keel.sleep(1)
        assert.equal(3, q:pop().attempt)
        assert.equal(2, q:stats().nacked)
      end)
    end)
  end)

  describe("dead letters", function()
    it("moves a message to the DLQ after max_attempts with its history", function()
      sim(function()
        local dlq = keel.queue { name = "dlq" }
        local q = keel.queue { name = "jobs", max_attempts = 3, visibility_ms = 100, dead_letter = dlq }
        q:push({ n = 7 })
        keel.sleep(5)
        q:nack(q:pop(), { error = "e1" })   -- t=5
        keel.sleep(10)
        q:pop()                             -- t=15, expires at 115
        keel.sleep(100)
        local ok, where = q:nack(q:pop(), { error = "final" }) -- t=115
        assert.same({ true, "dead" }, { ok, where })
        local d = dlq:pop()
        assert.equal(7, d.item.n)
        assert.same({ "final", 3, 5, 115, "jobs" },
          { d.error, d.attempts, d.first_failed, d.last_failed, d.source })
        assert.equal(1, d.attempt)
        local st = q:stats()
        assert.same({ 1, 1, 0, 1, 2 }, { st.dead, st.dead_lettered, st.dropped, st.expired, st.nacked })
        assert.same({ 0, 0, 0 }, { st.ready, st.in_flight, st.delayed })
      end)
    end)

    it("expiry on the last attempt dead-letters with error 'visibility timeout'", function()
      sim(function()
        local dlq = keel.queue()
        local q = keel.queue { max_attempts = 1, visibility_ms = 30, dead_letter = dlq }
        q:push("x")
        q:pop()
        keel.sleep(30)
        local d = dlq:pop()
        assert.same({ "x", "visibility timeout", 1, 30, 30 },
          { d.item, d.error, d.attempts, d.first_failed, d.last_failed })
      end)
    end)

    it("wakes a popper waiting on the DLQ", function()
      sim(function()
        local dlq = keel.queue()
        local q = keel.queue { max_attempts = 1, dead_letter = dlq }
        local t = keel.spawn(function() return dlq:pop { wait_ms = 1000 } end)
        keel.sleep(1)
        q:push("x")
        q:nack(q:pop(), { error = "bad" })
        local _, d = t:join()
        assert.same({ "x", "bad" }, { d.item, d.error })
      end)
    end)

    it("drops (and counts) when there is no DLQ or the DLQ is full", function()
      sim(function()
        local q = keel.queue { max_attempts = 1 }
        q:push(1)
        assert.same({ true, "dropped" }, { q:nack(q:pop()) })
        local dlq = keel.queue { capacity = 1 }
        local q2 = keel.queue { max_attempts = 1, dead_letter = dlq }
        q2:push(1); q2:push(2)
        assert.same({ true, "dead" }, { q2:nack(q2:pop()) })
        assert.same({ true, "dropped" }, { q2:nack(q2:pop()) })
        assert.same({ 1, 1 }, { q:stats().dropped, q2:stats().dropped })
        assert.equal(2, q2:stats().dead)
      end)
    end)

    it("source:redrive() brings its dead letters back with fresh attempts", function()
      sim(function()
        local dlq = keel.queue()
        local a = keel.queue { max_attempts = 1, dead_letter = dlq }
        local b = keel.queue { max_attempts = 1, dead_letter = dlq }
        for i = 1, 3 do a:push("a" .. i) end
        b:push("b1")
        for _ = 1, 3 do a:nack(a:pop()) end
        b:nack(b:pop())
        assert.equal(4, dlq:stats().ready)
        assert.equal(2, a:redrive(2))
        assert.equal(2, dlq:stats().ready)
        local m = a:pop()
        assert.same({ "a1", 1 }, { m.item, m.attempt })
        assert.is_nil(m.error)
        a:ack(m)
        assert.equal(1, a:redrive())
        assert.same({ "a2", "a3" }, drain(a))
        -- b's letter is untouched
        assert.equal(1, dlq:stats().ready)
        assert.equal(3, a:stats().redriven)
        assert.equal(0, a:redrive())
      end)
    end)

    it("dlq:redrive() returns every letter to its own source", function()
      sim(function()
        local dlq = keel.queue()
        local a = keel.queue { max_attempts = 1, dead_letter = dlq }
        local b = keel.queue { max_attempts = 1, dead_letter = dlq }
        a:push("a"); b:push("b")
        a:nack(a:pop()); b:nack(b:pop())
        dlq:push("stray") -- not a dead letter: stays
        assert.equal(2, dlq:redrive())
        assert.same({ "a" }, drain(a))
        assert.same({ "b" }, drain(b))
        assert.same({ "stray" }, drain(dlq))
      end)
    end)

    it("redrive leaves letters whose source is full", function()
      sim(function()
        local dlq = keel.queue()
        local q = keel.queue { capacity = 2, max_attempts = 1, dead_letter = dlq }
        q:push(1); q:push(2)
        q:nack(q:pop()); q:nack(q:pop())
        q:push(3)
        local moved, why = q:redrive()
        assert.same({ 1, "full" }, { moved, why })
        assert.equal(1, dlq:stats().ready)
      end)
    end)

    it("peek lists dead letters without taking them", function()
      sim(function()
        local dlq = keel.queue()
        local q = keel.queue { max_attempts = 1, dead_letter = dlq, name = "src" }
        q:push("x"); q:push("y")
        q:nack(q:pop(), { error = "e" }); q:nack(q:pop(), { error = "f" })
        local list = dlq:peek(10)
        assert.equal(2, #list)
        assert.same({ "x", "e", "src" }, { list[1].item, list[1].error, list[1].source })
        assert.same({ "y", "f" }, { list[2].item, list[2].error })
        assert.equal(1, #dlq:peek())
        assert.same({}, dlq:peek(0))
        assert.equal(2, dlq:stats().ready)
      end)
    end)
  end)

  describe("dedup", function()
    it("rejects a key present ready, delayed or in flight; frees it on ack", function()
      sim(function()
        local q = keel.queue()
        assert.is_number(q:push(1, { dedup_key = "k" }))
        assert.same({ nil, "duplicate" }, { q:push(2, { dedup_key = "k" }) })
        q:push(3, { dedup_key = "d", delay_ms = 10 })
        assert.same({ nil, "duplicate" }, { q:push(4, { dedup_key = "d" }) })
        local m = q:pop()
        assert.same({ nil, "duplicate" }, { q:push(5, { dedup_key = "k" }) })
        q:ack(m)
        assert.is_number(q:push(6, { dedup_key = "k" }))
        -- numbers and their string form are the same key
        q:push(7, { dedup_key = 42 })
        assert.same({ nil, "duplicate" }, { q:push(8, { dedup_key = "42" }) })
        assert.equal(4, q:stats().duplicates)
      end)
    end)

    it("frees the key when the message is dead-lettered, restores it on redrive", function()
      sim(function()
        local dlq = keel.queue()
        local q = keel.queue { max_attempts = 1, dead_letter = dlq }
        q:push("a", { dedup_key = "k" })
        q:nack(q:pop())
        local id = q:push("b", { dedup_key = "k" })
        assert.is_number(id)
        assert.same({ 0, "duplicate" }, { q:redrive() })
        q:ack(q:pop())
        assert.equal(1, q:redrive())
        assert.same({ nil, "duplicate" }, { q:push("c", { dedup_key = "k" }) })
      end)
    end)
  end)

  describe("capacity", function()
    it("accepts exactly capacity messages, counting in-flight and delayed", function()
      sim(function()
        local q = keel.queue { capacity = 3 }
        q:push(1); q:push(2, { delay_ms = 5 }); q:push(3)
        assert.same({ nil, "full" }, { q:push(4) })
        local m = q:pop()
        assert.same({ nil, "full" }, { q:push(4) })
        q:ack(m)
        assert.is_number(q:push(4))
        assert.same({ nil, "full" }, { q:push(5) })
        assert.equal(3, q:stats().full)
      end)
    end)

    it("capacity 1 works", function()
      sim(function()
        local q = keel.queue { capacity = 1 }
        q:push("a")
        assert.same({ nil, "full" }, { q:push("b") })
        assert.same({ "a" }, drain(q))
      end)
    end)
  end)

  describe("waiting", function()
    it("wakes waiting poppers FIFO as messages arrive", function()
      sim(function()
        local q = keel.queue()
        local order = {}
        local tasks = {}
        for i = 1, 3 do
          tasks[i] = keel.spawn(function()
            local m = q:pop { wait_ms = 1000 }
            order[#order + 1] = i .. ":" .. m.item
            q:ack(m)
          end)
          keel.sleep(1)
        end
        assert.equal(3, q:stats().waiting)
        q:push("x"); q:push("y"); q:push("z")
        for i = 1, 3 do tasks[i]:join() end
        assert.same({ "1:x", "2:y", "3:z" }, order)
      end)
    end)

    it("times out with nil, 'timeout' after exactly wait_ms", function()
      sim(function()
        local q = keel.queue()
        local m, err = q:pop { wait_ms = 250 }
        assert.same({ nil, "timeout" }, { m, err })
        assert.equal(250, keel.now())
        assert.equal(0, q:stats().waiting)
        assert.same({ nil, "empty" }, { q:pop { wait_ms = 0 } })
      end)
    end)

    it("receives a delayed message when it becomes ready", function()
      sim(function()
        local q = keel.queue()
        q:push("d", { delay_ms = 40 })
        local m = q:pop { wait_ms = 100 }
        assert.equal("d", m.item)
        assert.equal(40, keel.now())
      end)
    end)

    it("gets a message that becomes ready exactly at the wait deadline", function()
      sim(function()
        local q = keel.queue()
        q:push("d", { delay_ms = 40 })
        local m = q:pop { wait_ms = 40 }
        assert.equal("d", m and m.item)
      end)
    end)

    it("a cancelled waiter does not swallow a message", function()
      sim(function()
        local q = keel.queue()
        local t = keel.spawn(function() return q:pop { wait_ms = 1000 } end)
        keel.sleep(1)
        t:cancel()
        q:push("x")
        keel.sleep(1)
        assert.equal("x", q:pop().item)
      end)
    end)
  end)

  describe("lifetime", function()
    it("in-flight and delayed messages do not keep a sim alive", function()
      local r = keel.sim({ seed = 1 }, function()
        local q = keel.queue { visibility_ms = 1e9 }
        q:push(1); q:push(2, { delay_ms = 1e9 })
        q:pop()
        return "ended"
      end)
      assert.equal("ended", r)
    end)

    it("a popper waiting forever on an empty queue is a deadlock in a sim", function()
      local ok, err = pcall(keel.sim, { seed = 1 }, function()
        local q = keel.queue()
        q:pop { wait_ms = math.huge }
      end)
      assert.is_false(ok)
      assert.matches("deadlock", err)
    end)

    it("waiters that timed out are skipped; the rest still get messages in order", function()
      sim(function()
        local q = keel.queue()
        local got = {}
        local short = keel.spawn(function() return q:pop { wait_ms = 5 } end)
        local long = keel.spawn(function()
          local m = q:pop { wait_ms = 100 }
          got[#got + 1] = m.item
        end)
        keel.sleep(10)
        assert.same({ true, nil, "timeout" }, { short:join() })
        q:push("x")
        long:join()
        assert.same({ "x" }, got)
        assert.equal(0, q:stats().waiting)
      end)
    end)

    it("expiry redelivery goes to a popper already waiting on the queue", function()
      sim(function()
        local q = keel.queue { visibility_ms = 30, max_attempts = 2 }
        q:push("j")
        local first = q:pop()
        local m = q:pop { wait_ms = 1000 }
        assert.same({ first.id, 2, 30 }, { m.id, m.attempt, keel.now() })
      end)
    end)
  end)

  describe("stats and metrics", function()
    it("reports a flat table of numbers and registers when named", function()
      sim(function()
        local q = keel.queue { name = "spec-q", capacity = 5 }
        q:push(1)
        local st = q:stats()
        for k, v in pairs(st) do assert.is_number(v, k) end
        for _, k in ipairs { "ready", "delayed", "in_flight", "dead", "pushed", "acked", "nacked",
                             "expired", "dropped", "redriven", "duplicates", "full", "waiting", "capacity" } do
          assert.is_number(st[k], k)
        end
        local snap = require("keel.metrics").collect()
        assert.equal(1, snap.queue["spec-q"].ready)
      end)
    end)
  end)

  describe("bad input", function()
    it("rejects bad constructor options", function()
      sim(function()
        local function bad(opts, pat)
          local ok, err = pcall(keel.queue, opts)
          assert.is_false(ok)
          assert.matches(pat, err, 1, true)
        end
        bad(5, "keel.queue: options must be a table")
        bad({ capacity = 0 }, "option 'capacity'")
        bad({ capacity = 1.5 }, "option 'capacity'")
        bad({ capacity = 2 ^ 40 }, "option 'capacity'")
        bad({ capacity = 0 / 0 }, "option 'capacity'")
        bad({ capacity = "10" }, "option 'capacity'")
        bad({ visibility_ms = 0 }, "option 'visibility_ms'")
        bad({ visibility_ms = -1 }, "option 'visibility_ms'")
        bad({ visibility_ms = math.huge }, "option 'visibility_ms'")
        bad({ visibility_ms = 0 / 0 }, "option 'visibility_ms'")
        bad({ max_attempts = 0 }, "option 'max_attempts'")
        bad({ max_attempts = math.huge }, "option 'max_attempts'")
        bad({ dead_letter = {} }, "option 'dead_letter'")
        bad({ name = 5 }, "option 'name'")
        bad({ capcity = 5 }, "unknown option 'capcity'")
      end)
    end)

    it("rejects bad method arguments", function()
      sim(function()
        local q = keel.queue()
        local function bad(fn, pat)
          local ok, err = pcall(fn)
          assert.is_false(ok)
          assert.matches(pat, err, 1, true)
        end
        bad(function() q:push(nil) end, "keel.queue:push: argument 'item'")
        bad(function() q:push(1, 5) end, "options must be a table")
        bad(function() q:push(1, { delay_ms = -1 }) end, "option 'delay_ms'")
        bad(function() q:push(1, { delay_ms = 0 / 0 }) end, "option 'delay_ms'")
        bad(function() q:push(1, { priority = "hi" }) end, "option 'priority'")
        bad(function() q:push(1, { priority = 0 / 0 }) end, "option 'priority'")
        bad(function() q:push(1, { priority = false }) end, "option 'priority'")
        bad(function() q:push(1, { delay_ms = false }) end, "option 'delay_ms'")
        bad(function() q:push(1, { priority = 1, delay_ms = 2, dedup_key = "k", x = 1 }) end, "unknown option 'x'")
        bad(function() q:pop { wait_ms = 0 / 0 } end, "option 'wait_ms'")
        bad(function() q:pop { wait_ms = 1, x = 1 } end, "unknown option 'x'")
        bad(function() q:push(1, { dedup_key = {} }) end, "option 'dedup_key'")
        bad(function() q:push(1, { dedup_key = 0 / 0 }) end, "option 'dedup_key'")
        bad(function() q:push(1, { delay = 5 }) end, "unknown option 'delay'")
        bad(function() q:pop(5) end, "options must be a table")
        bad(function() q:pop { wait_ms = -1 } end, "option 'wait_ms'")
        bad(function() q:pop { wait_ms = "x" } end, "option 'wait_ms'")
        bad(function() q:ack() end, "keel.queue:ack: argument 'msg'")
        bad(function() q:ack("m") end, "argument 'msg'")
        bad(function() q:ack({}) end, "argument 'msg'")
        bad(function() q:nack(nil) end, "keel.queue:nack: argument 'msg'")
        q:push(1)
        local m = q:pop()
        bad(function() q:nack(m, { delay_ms = -5 }) end, "option 'delay_ms'")
        bad(function() q:nack(m, { retry = 1 }) end, "unknown option 'retry'")
        bad(function() q:extend(m, -1) end, "argument 'ms'")
        bad(function() q:extend(m) end, "argument 'ms'")
        bad(function() q:peek(-1) end, "argument 'n'")
        bad(function() q:peek(1.5) end, "argument 'n'")
        bad(function() q:redrive(-1) end, "argument 'n'")
        bad(function() q:redrive("all") end, "argument 'n'")
        -- method called with '.'
        bad(function() q.push(1) end, "call it as a method")
        bad(function() q.pop() end, "call it as a method")
        bad(function() q.ack(m) end, "call it as a method")
        bad(function() q.stats() end, "call it as a method")
        -- the message survives all of that
        assert.is_true(q:ack(m))
      end)
    end)

    it("survives mutated messages and extreme values", function()
      sim(function()
        local q = keel.queue { capacity = 2, visibility_ms = 10 }
        q:push("a", { delay_ms = 1e300, priority = math.huge })
        q:push("b", { priority = -math.huge })
        local m = q:pop()
        assert.equal("b", m.item)
        local orig = m.attempt
        for _, v in ipairs { 0 / 0, math.huge, -1, 2 ^ 31, 1.5, 0 } do
          m.attempt = v
          assert.same({ nil, "unknown" }, { q:ack(m) })
        end
        m.attempt = orig
        assert.is_true(q:extend(m, math.huge))
        assert.is_true(q:ack(m))
      end)
    end)
  end)

  describe("real time", function()
    it("redelivers after the visibility timeout on the real clock", function()
      local q = keel.queue { visibility_ms = 20 }
      q:push("r")
      local first = q:pop()
      local m = q:pop { wait_ms = 5000 }
      assert.same({ "r", 2 }, { m.item, m.attempt })
      assert.same({ nil, "unknown" }, { q:ack(first) })
      assert.is_true(q:ack(m))
    end)

    it("a program with deliveries in flight still exits when its tasks are done", function()
      local code, out = proc.run({ "-e", [[
        local keel = require "keel"
        local q = keel.queue { visibility_ms = 1e7 }
        q:push(1, { delay_ms = 1e7 }); q:push(2)
        q:pop()
        print("end")
      ]] }, { prefix = "timeout 20" })
      assert.same({ 0, "end\n" }, { code, out })
    end)

    it("a popper waiting for a redelivery keeps the program alive until it comes", function()
      local code, out = proc.run({ "-e", [[
        local keel = require "keel"
        local q = keel.queue { visibility_ms = 30 }
        q:push("x")
        q:pop()
        local m = q:pop { wait_ms = math.huge }
        print(m.item, m.attempt)
      ]] }, { prefix = "timeout 20" })
      assert.same({ 0, "x\t2\n" }, { code, out })
    end)
  end)

  describe("example", function()
    it("examples/queue.lua tells its story: retry, redelivery, DLQ, redrive", function()
      local code, out = proc.run({ proc.root .. "/examples/queue.lua" }, { prefix = "timeout 20" })
      assert.equal(0, code)
      assert.matches("too late  photo%-09", out)
      assert.matches("photo%-04.heic: 3 attempts", out)
      assert.matches("redriving dead letters %-> 1 moved", out)
      assert.matches("acked 10, nacked 4, expired 1, dead%-lettered 1, redriven 1, left in DLQ 0", out)
    end)
  end)

  describe("C core", function()
    it("matches a brute-force model over random operation sequences", function()
      local ok, out = ctest.run("queue_test")
      assert.is_true(ok, out)
      assert.matches("queue_test: ok", out)
    end)
  end)

  describe("determinism", function()
    local function run(seed)
      return keel.sim({ seed = seed }, function()
        local dlq = keel.queue()
        local q = keel.queue { visibility_ms = 50, max_attempts = 3, dead_letter = dlq }
        local log = {}
        local workers = {}
        for w = 1, 4 do
          workers[w] = keel.spawn(function()
            while true do
              local m = q:pop { wait_ms = 500 }
              if not m then return end
              keel.sleep((m.item % 7) * 3)
              local r = (m.item * 31 + m.attempt * 17 + w) % 10
              if r < 6 then q:ack(m)
              elseif r < 8 then q:nack(m, { delay_ms = r })
              end -- else: lose it, let visibility expire
              log[#log + 1] = string.format("%g w%d %d#%d r%d", keel.now(), w, m.item, m.attempt, r)
            end
          end)
        end
        for i = 1, 40 do
          q:push(i, { priority = i % 3, delay_ms = (i % 5) * 4 })
          keel.sleep(2)
        end
        for w = 1, 4 do workers[w]:join() end
        local st = q:stats()
        log[#log + 1] = string.format("acked=%d dead=%d expired=%d dlq=%d",
          st.acked, st.dead, st.expired, dlq:stats().ready)
        return table.concat(log, "\n")
      end)
    end

    it("replays identically in virtual time", function()
      local a, b = run(7), run(7)
      assert.equal(a, b)
      assert.matches("dead=%d+", a)
      -- every message is accounted for
      local acked, dead = a:match("acked=(%d+) dead=(%d+)")
      assert.equal(40, tonumber(acked) + tonumber(dead))
    end)
  end)
end)
