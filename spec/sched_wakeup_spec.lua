-- Waking and cancelling parked tasks: a wait's timer belongs to that wait
-- only (issue 9.1), a cancel that races an expiring wait is seen (9.3), and
-- a cancellation cannot be swallowed for ever (9.9).
local keel = require "keel"
local sched = require "keel.sched"
local proc = require "keelproc"

local sim = function(fn, seed) return keel.sim({ seed = seed or 1 }, fn) end

describe("a timed wait woken by a value", function()
  -- A waits with a timeout of 0 (its timer is due in this very instant), S
  -- hands it a value in the same batch, so A's timer fires while A sits in
  -- the ready queue. B, queued before A, then arms a timer that reuses the
  -- freed C id. When A resumes it must not disarm B's timer.
  it("does not cancel another task's timer that reused its timer id (channel recv)", function()
    sim(function()
      local ch = keel.channel(0)
      local got
      local a = keel.spawn(function() got = ch:recv(0) end)
      local b = keel.spawn(function()
        keel.sleep(0)
        keel.sleep(5)
        return "b woke"
      end)
      local s = keel.spawn(function() return ch:send("v", 0) end)
      assert.same({ true, "b woke" }, { b:join() })
      assert.same({ true }, { a:join() })
      assert.same({ true, true }, { s:join() })
      assert.equal("v", got)
      assert.equal(5, keel.now())
    end)
  end)

  it("does not cancel another task's timer that reused its timer id (completion await)", function()
    sim(function()
      local id
      local a = keel.spawn(function()
        id = sched.completion("spec")
        return sched.await(id, 0, "spec")
      end)
      local b = keel.spawn(function()
        keel.sleep(0)
        keel.sleep(5)
        return "b woke"
      end)
      local s = keel.spawn(function() return sched.complete(id, "reply") end)
      assert.same({ true, "b woke" }, { b:join() })
      assert.same({ true, "reply" }, { a:join() })
      assert.same({ true, true }, { s:join() })
    end)
  end)

  it("does not cancel another task's timer when a cancelled sleeper's timer had fired", function()
    -- A's sleep is due at the very instant it starts (a delay below the
    -- clock's resolution), C cancels A in the same batch, A's timer fires
    -- while A is queued with the cancel, B arms a timer on the freed id.
    sim(function()
      keel.sleep(1e6) -- where 1e-12 ms is below the clock's resolution
      local a = keel.spawn(function() keel.sleep(1e-12) end)
      local b = keel.spawn(function()
        keel.sleep(0)
        keel.sleep(5)
        return "b woke"
      end)
      keel.spawn(function() a:cancel() end)
      assert.same({ true, "b woke" }, { b:join() })
      assert.same({ false, "cancelled" }, { a:join() })
    end, 2)
  end)

  it("load: thousands of tasks mixing timed receives, sleeps and sends for a virtual minute all finish", function()
    sim(function()
      local NCH, NTASK, UNTIL = 16, 3000, 60000
      local chans = {}
      for i = 1, NCH do chans[i] = keel.channel(keel.random(0, 2)) end
      local stats = { recv = 0, timeout = 0, sent = 0 }
      local tasks = {}
      for i = 1, NTASK do
        tasks[i] = keel.spawn(function()
          while keel.now() < UNTIL do
            local ch = chans[keel.random(1, NCH)]
            local op = keel.random(1, 4)
            if op == 1 then
              local v, err = ch:recv(keel.random(0, 20))
              if v then stats.recv = stats.recv + 1 else assert(err == "timeout"); stats.timeout = stats.timeout + 1 end
            elseif op == 2 then
              keel.sleep(keel.random(0, 15))
            elseif op == 3 then
              if ch:send(i, keel.random(0, 10)) then stats.sent = stats.sent + 1 end
            else
              ch:send(i, 0)
              keel.sleep(keel.random(1, 3) / 2)
            end
          end
          return i
        end)
      end
      for i = 1, NTASK do
        local ok, v = tasks[i]:join()
        assert.is_true(ok)
        assert.equal(i, v)
      end
      assert.is_true(keel.now() >= UNTIL)
      assert.is_true(stats.recv > 1000 and stats.timeout > 1000 and stats.sent > 1000)
    end, 7)
  end)
end)

describe("task:cancel racing an expiring wait", function()
  it("a sleep that expired in the same turn as a returning-true cancel raises the cancellation", function()
    sim(function()
      local canceller_ok
      -- the canceller's timer is armed first, so at t = 10 it runs before
      -- the sleeper, which is already queued with its timeout
      local victim
      local canceller = keel.spawn(function()
        keel.sleep(10)
        canceller_ok = victim:cancel()
      end)
      victim = keel.spawn(function()
        keel.sleep(10)
        return "slept normally"
      end)
      canceller:join()
      assert.is_true(canceller_ok)
      assert.same({ false, "cancelled" }, { victim:join() })
      assert.equal("cancelled", victim:status())
    end)
  end)

  it("a timed receive that timed out in the same turn as a cancel raises the cancellation", function()
    sim(function()
      local ch = keel.channel(0)
      local victim
      local canceller = keel.spawn(function()
        keel.sleep(10)
        return victim:cancel()
      end)
      victim = keel.spawn(function() return ch:recv(10) end)
      assert.same({ true, true }, { canceller:join() })
      assert.same({ false, "cancelled" }, { victim:join() })
    end)
  end)

  it("keel.retry makes no further attempt when cancelled while its backoff sleep expires", function()
    sim(function()
      local attempts = 0
      local victim
      local canceller = keel.spawn(function()
        keel.sleep(10)
        return victim:cancel()
      end)
      victim = keel.spawn(function()
        return keel.retry(function()
          attempts = attempts + 1
          error("boom", 0)
        end, { attempts = 5, backoff = { base_ms = 10, cap_ms = 10, jitter = "none" } })
      end)
      assert.same({ true, true }, { canceller:join() })
      assert.same({ false, "cancelled" }, { victim:join() })
      assert.equal(1, attempts)
    end)
  end)

  it("a value handed over before the cancel is not lost: the wait returns it, the next wait raises", function()
    sim(function()
      local ch = keel.channel(0)
      local got
      local victim = keel.spawn(function()
        got = ch:recv()
        keel.sleep(1)
        return "not reached"
      end)
      keel.sleep(0)
      assert.is_true(ch:send("v")) -- victim is queued with "v"
      assert.is_true(victim:cancel())
      assert.same({ false, "cancelled" }, { victim:join() })
      assert.equal("v", got)
    end)
  end)
end)

describe("keel.is_cancelled", function()
  it("is true for the cancellation error and false for anything else", function()
    local caught
    local t = keel.spawn(function()
      local ok, err = pcall(keel.sleep, 1e6)
      assert(not ok)
      caught = err
    end)
    keel.sleep(0)
    t:cancel()
    t:join()
    assert.is_true(keel.is_cancelled(caught))
    assert.is_false(keel.is_cancelled("cancelled"))
    assert.is_false(keel.is_cancelled(nil))
    assert.is_false(keel.is_cancelled({}))
    assert.is_false(keel.is_cancelled("timeout"))
  end)
end)

describe("cancellation is sticky", function()
  it("a loop that wraps its waits in pcall ends once cancelled, and its cleanup runs", function()
    sim(function()
      local rounds, cleaned, after_loop = 0, false, false
      local t = keel.spawn(function()
        keel.defer(function() keel.sleep(1); cleaned = true end)
        for _ = 1, 1000 do
          local ok, err = pcall(keel.sleep, 10)
          if not ok then assert(keel.is_cancelled(err)) end
          rounds = rounds + 1
        end
        after_loop = true
      end)
      keel.sleep(25)
      assert.is_true(t:cancel())
      assert.same({ false, "cancelled" }, { t:join() })
      assert.equal("cancelled", t:status())
      assert.is_false(after_loop)
      assert.is_true(rounds < 10)
      assert.is_true(cleaned)
    end)
  end)

  it("a pcall loop around a channel receive ends once cancelled", function()
    sim(function()
      local ch = keel.channel(0)
      local rounds = 0
      local t = keel.spawn(function()
        while rounds < 1000 do
          pcall(ch.recv, ch, 5)
          rounds = rounds + 1
        end
        return "escaped"
      end)
      keel.sleep(12)
      t:cancel()
      assert.same({ false, "cancelled" }, { t:join() })
      assert.is_true(rounds < 10)
    end)
  end)

  it("a cancel from a shutdown handler ends a worker that swallows errors (SIGTERM)", function()
    local script = proc.quote(proc.root .. "/spec/support/sticky_cancel_worker.lua")
    local sh = string.format([[
      out=$(mktemp); %s %s >$out 2>&1 & pid=$!
      i=0; while ! grep -q ready $out && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
      kill -TERM $pid
      ( sleep 10; kill -KILL $pid 2>/dev/null ) & wd=$!
      wait $pid; code=$?
      kill $wd 2>/dev/null
      cat $out; echo "exit=$code"; rm -f $out
    ]], proc.quote(proc.bin), script)
    local p = io.popen("sh -c " .. proc.quote(sh))
    local out = p:read("*a")
    p:close()
    out = out:sub(-300) -- a spinning worker would print without end
    local swallowed = tonumber(out:match("worker cancelled after (%d+) swallowed"))
    assert.is_true(swallowed ~= nil and swallowed < 10)
    assert.matches("worker cleanup ran", out)
    assert.matches("exit=143", out)
  end)

  it("cleanup cancelled again may swallow it and wait: it is never cut short", function()
    sim(function()
      local rounds = 0
      local t = keel.spawn(function()
        keel.defer(function()
          for _ = 1, 4 do
            pcall(keel.sleep, 10)
            rounds = rounds + 1
          end
        end)
        keel.sleep(1e6)
      end)
      keel.sleep(1)
      t:cancel()      -- the body ends, cleanup starts waiting
      keel.sleep(1)
      t:cancel()      -- cancels the cleanup's wait; its later waits raise at once
      assert.same({ false, "cancelled" }, { t:join() })
      assert.equal(4, rounds)
      assert.equal("cancelled", t:status())
    end)
  end)

  it("deferred cleanup of a cancelled task may still wait", function()
    sim(function()
      local log = {}
      local t = keel.spawn(function()
        keel.defer(function()
          keel.sleep(5)
          log[#log + 1] = "cleanup waited"
        end)
        pcall(keel.sleep, 100)
        pcall(keel.sleep, 100)
        keel.sleep(100)
      end)
      keel.sleep(1)
      t:cancel()
      assert.same({ false, "cancelled" }, { t:join() })
      assert.same({ "cleanup waited" }, log)
      assert.equal(6, keel.now())
    end)
  end)
end)
