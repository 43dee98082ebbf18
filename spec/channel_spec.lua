-- keel.channel: buffered and rendezvous channels, timeouts, close, #ch.
local keel = require "keel"
local sched = require "keel.sched"

local sim = function(fn) return keel.sim({ seed = 7 }, fn) end

local function errmsg(fn, ...)
  local args = { n = select("#", ...), ... }
  local ok, err = pcall(function() local r = fn(unpack(args, 1, args.n)) return r end)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("keel.channel", function()
  it("defaults to capacity 0 and reports capacity() and #ch", function()
    local ch = keel.channel()
    assert.equal(0, ch:capacity())
    assert.equal(0, #ch)
    local b = keel.channel(3)
    assert.equal(3, b:capacity())
    assert.equal("keel.channel(3)", tostring(b))
  end)

  describe("buffered", function()
    it("accepts up to capacity without waiting, FIFO, #ch counts", function()
      local ch = keel.channel(3)
      assert.is_true(ch:send("a"))
      assert.is_true(ch:send(false)) -- false is a value, only nil is refused
      assert.is_true(ch:send(3))
      assert.equal(3, #ch)
      assert.equal("a", ch:recv())
      assert.equal(2, #ch)
      assert.equal(false, ch:recv())
      assert.equal(3, ch:recv())
      assert.equal(0, #ch)
    end)

    it("send waits while full and the waiting value keeps its FIFO place", function()
      sim(function()
        local ch = keel.channel(2)
        ch:send(1)
        ch:send(2)
        local sent_at
        local s = keel.spawn(function() assert(ch:send(3)) sent_at = keel.now() end)
        keel.sleep(10)
        assert.is_nil(sent_at) -- still waiting: full
        assert.equal("waiting", s:status())
        assert.equal(2, #ch)
        assert.equal(1, ch:recv())
        assert.equal(2, #ch) -- the waiting sender's value moved in
        keel.sleep(0)
        assert.equal(10, sent_at)
        assert.equal(2, ch:recv())
        assert.equal(3, ch:recv())
      end)
    end)

    it("blocked senders are served in arrival order", function()
      local ch = keel.channel(1)
      ch:send(0)
      for i = 1, 5 do keel.spawn(function() ch:send(i) end) end
      keel.sleep(0)
      local got = {}
      for i = 1, 6 do got[i] = ch:recv() end
      assert.same({ 0, 1, 2, 3, 4, 5 }, got)
    end)

    it("send with a timeout gives nil, 'timeout' when still full, value not delivered", function()
      sim(function()
        local ch = keel.channel(1)
        ch:send("kept")
        local t0 = keel.now()
        assert.same({ nil, "timeout" }, { ch:send("dropped", 25) })
        assert.equal(25, keel.now() - t0)
        assert.equal(1, #ch)
        assert.equal("kept", ch:recv())
        assert.same({ nil, "timeout" }, { ch:recv(0) })
      end)
    end)

    it("a send that fits succeeds even with timeout 0", function()
      local ch = keel.channel(1)
      assert.is_true(ch:send(1, 0))
      assert.same({ nil, "timeout" }, { ch:send(2, 0) })
    end)
  end)

  describe("unbuffered (capacity 0)", function()
    it("is a rendezvous: send waits until a receiver takes the value", function()
      sim(function()
        local ch = keel.channel(0)
        local sent_at
        keel.spawn(function() assert(ch:send("x")) sent_at = keel.now() end)
        keel.sleep(30)
        assert.is_nil(sent_at)
        assert.equal(0, #ch)
        assert.equal("x", ch:recv())
        keel.sleep(0)
        assert.equal(30, sent_at)
      end)
    end)

    it("send to a waiting receiver returns at once", function()
      local ch = keel.channel(0)
      local r = keel.spawn(function() return ch:recv() end)
      keel.sleep(0)
      assert.is_true(ch:send(42, 0))
      assert.same({ true, 42 }, { r:join() })
    end)

    it("send times out when nobody receives, and the value is gone", function()
      sim(function()
        local ch = keel.channel(0)
        assert.same({ nil, "timeout" }, { ch:send("v", 10) })
        assert.same({ nil, "timeout" }, { ch:recv(10) })
      end)
    end)

    it("a cancelled sender's value is never delivered", function()
      sim(function()
        local ch = keel.channel(0)
        local s = keel.spawn(function() ch:send("ghost") end)
        keel.sleep(1)
        s:cancel()
        assert.same({ false, "cancelled" }, { s:join() })
        assert.same({ nil, "timeout" }, { ch:recv(5) })
      end)
    end)

    it("pairs many senders and receivers one to one", function()
      local ch = keel.channel(0)
      local receivers = {}
      for i = 1, 10 do receivers[i] = keel.spawn(function() return ch:recv() end) end
      for i = 1, 10 do keel.spawn(function() ch:send(i) end) end
      local got = {}
      for i = 1, 10 do
        local ok, v = receivers[i]:join()
        assert.is_true(ok)
        got[#got + 1] = v
      end
      table.sort(got)
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, got)
    end)
  end)

  describe("recv", function()
    it("times out after exactly the given virtual time", function()
      sim(function()
        local ch = keel.channel(1)
        local t0 = keel.now()
        assert.same({ nil, "timeout" }, { ch:recv(40) })
        assert.equal(40, keel.now() - t0)
        assert.same({ nil, "timeout" }, { ch:recv(0) })
        assert.equal(40, keel.now() - t0)
      end)
    end)

    it("a value arriving before the timeout is returned", function()
      sim(function()
        local ch = keel.channel(0)
        keel.after(15, function() ch:send("late but in time") end)
        local t0 = keel.now()
        assert.equal("late but in time", ch:recv(20))
        assert.equal(15, keel.now() - t0)
      end)
    end)

    it("a receiver that timed out does not swallow a later value", function()
      sim(function()
        local ch = keel.channel(0)
        local a = keel.spawn(function() return ch:recv(5) end)
        local b = keel.spawn(function() return ch:recv() end)
        keel.sleep(10)
        assert.same({ true, nil, "timeout" }, { a:join() })
        ch:send("for b")
        assert.same({ true, "for b" }, { b:join() })
      end)
    end)

    it("waiting receivers are served in arrival order", function()
      local ch = keel.channel(0)
      local order = {}
      for i = 1, 4 do keel.spawn(function() local v = ch:recv() order[#order + 1] = i .. v end) end
      keel.sleep(0)
      for _, v in ipairs({ "a", "b", "c", "d" }) do ch:send(v) end
      keel.sleep(0)
      assert.same({ "1a", "2b", "3c", "4d" }, order)
    end)
  end)

  describe("close", function()
    it("lets receivers drain the buffer, then gives nil, 'closed'", function()
      local ch = keel.channel(3)
      ch:send(1)
      ch:send(2)
      assert.is_true(ch:close())
      assert.is_true(ch:is_closed())
      assert.is_false(ch:close()) -- second close is a no-op
      assert.same({ nil, "closed" }, { ch:send(3) })
      assert.equal(1, ch:recv())
      assert.equal(2, ch:recv())
      assert.same({ nil, "closed" }, { ch:recv() })
      assert.same({ nil, "closed" }, { ch:recv(0) })
    end)

    it("wakes every blocked receiver with nil, 'closed'", function()
      local ch = keel.channel(0)
      local rs = {}
      for i = 1, 3 do rs[i] = keel.spawn(function() return ch:recv() end) end
      keel.sleep(0)
      ch:close()
      for i = 1, 3 do assert.same({ true, nil, "closed" }, { rs[i]:join() }) end
    end)

    it("gives blocked senders nil, 'closed' and drops their values", function()
      local ch = keel.channel(1)
      ch:send("in buffer")
      local s = keel.spawn(function() return ch:send("blocked") end)
      local u = keel.channel(0)
      local su = keel.spawn(function() return u:send("blocked too") end)
      keel.sleep(0)
      ch:close()
      u:close()
      assert.same({ true, nil, "closed" }, { s:join() })
      assert.same({ true, nil, "closed" }, { su:join() })
      assert.equal("in buffer", ch:recv())
      assert.same({ nil, "closed" }, { ch:recv() })
      assert.same({ nil, "closed" }, { u:recv() })
    end)
  end)

  describe("many producers and consumers", function()
    local function run(Cn, cap, seed)
      keel.sim({ seed = seed }, function()
        local ch = keel.channel(cap)
        local P, N = 8, 200
        local producers = {}
        for p = 1, P do
          producers[p] = keel.spawn(function()
            for i = 1, N do
              assert(ch:send({ p = p, i = i }))
              if keel.random() < 0.3 then keel.sleep(keel.random(0, 3)) end
            end
          end)
        end
        local seen, last = {}, {}
        local consumers = {}
        for c = 1, Cn do
          consumers[c] = keel.spawn(function()
            local count = 0
            while true do
              local v, err = ch:recv()
              if v == nil then assert(err == "closed") return count end
              local key = v.p * 100000 + v.i
              assert(not seen[key], "duplicate")
              seen[key] = true
              -- With one consumer, each producer's values arrive in send
              -- order. (With several, a value handed to a parked receiver is
              -- observed only when it runs, so observation order may differ.)
              if Cn == 1 then assert(v.i > (last[v.p] or 0), "out of order") end
              last[v.p] = v.i
              count = count + 1
              if keel.random() < 0.3 then keel.sleep(keel.random(0, 3)) end
            end
          end)
        end
        for p = 1, P do assert(producers[p]:join()) end
        ch:close()
        local total = 0
        for c = 1, Cn do
          local ok, n = consumers[c]:join()
          assert.is_true(ok, tostring(n))
          total = total + n
        end
        assert.equal(P * N, total)
        assert.equal(0, #ch)
      end)
    end

    it("deliver every value exactly once (5 consumers, buffered and rendezvous)", function()
      run(5, 3, 1)
      run(5, 0, 2)
    end)

    it("keep each producer's values in send order for a single consumer", function()
      run(1, 3, 3)
      run(1, 0, 4)
    end)

    it("memory stays bounded when the receiver queue never empties", function()
      local ch = keel.channel(0)
      local stop = false
      for _ = 1, 3 do
        keel.spawn(function()
          while not stop do ch:recv(1000) end
        end)
      end
      keel.sleep(0)
      for i = 1, 20000 do ch:send(i); keel.sleep(0) end
      -- White-box: the receivers' wait queue holds only live entries (three
      -- parked consumers at most), not one dead slot per value ever sent.
      local q = getmetatable(ch).state.receivers
      local slots = 0
      for _ in pairs(q.t) do slots = slots + 1 end
      for _ in pairs(q.g) do slots = slots + 1 end
      stop = true
      ch:close()
      assert.is_true(slots <= 6, slots .. " slots held")
    end)
  end)

  describe("bad input", function()
    it("refuses nil values", function()
      local ch = keel.channel(1)
      assert.matches("channel:send: argument 'value' must not be nil", errmsg(ch.send, ch, nil))
      assert.equal(0, #ch)
    end)

    it("names the method when called with '.'", function()
      local ch = keel.channel(1)
      assert.matches("channel:send: call it as a method", errmsg(ch.send, 1))
      assert.matches("channel:recv: call it as a method", errmsg(ch.recv))
      assert.matches("channel:close: call it as a method", errmsg(ch.close, {}))
      assert.matches("channel:capacity: call it as a method", errmsg(ch.capacity, "x"))
      assert.matches("channel:is_closed: call it as a method", errmsg(ch.is_closed))
    end)

    it("rejects bad timeouts even when the call would not wait", function()
      local ch = keel.channel(2)
      ch:send(1)
      for _, bad in ipairs({ -1, "5", 0 / 0, {}, true }) do
        assert.matches("channel:send: argument 'timeout_ms' must be a number >= 0", errmsg(ch.send, ch, 1, bad))
        assert.matches("channel:recv: argument 'timeout_ms' must be a number >= 0", errmsg(ch.recv, ch, bad))
      end
      assert.equal(1, #ch)
      assert.equal(1, ch:recv(math.huge))
    end)

    it("rejects bad capacities", function()
      for _, bad in ipairs({ -1, 1.5, "2", {}, 0 / 0, math.huge, true }) do
        assert.matches("keel.channel: argument 'capacity' must be an integer", errmsg(keel.channel, bad))
      end
    end)

    it("waiting outside a task is a clear error; non-waiting calls work", function()
      local ch = keel.channel(1)
      local prev = sched.set_world(sched.new_world({ virtual = true }))
      local ok1 = pcall(ch.send, ch, 1) -- fits: no wait needed
      local ok2, err2 = pcall(ch.send, ch, 2) -- full: would wait
      local v = ch:recv()
      local ok3, err3 = pcall(ch.recv, ch)
      sched.set_world(prev)
      assert.is_true(ok1)
      assert.is_false(ok2)
      assert.matches("channel:send: must be called inside a task", err2)
      assert.equal(1, v)
      assert.is_false(ok3)
      assert.matches("channel:recv: must be called inside a task", err3)
    end)
  end)
end)
