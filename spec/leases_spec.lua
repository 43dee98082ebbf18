local keel = require "keel"

local function sim(fn) return keel.sim({ seed = 3 }, fn) end

describe("keel.leases", function()
  it("grants a lease with key, owner, token, expires; refuses others with 'held'", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100 }
      local a = L:acquire("job", "w1")
      assert.equal("job", a.key)
      assert.equal("w1", a.owner)
      assert.equal(1, a.token)
      assert.equal(keel.now() + 100, a.expires)
      local l, err = L:acquire("job", "w2")
      assert.is_nil(l)
      assert.equal("held", err)
      -- the same owner too: a lease is not re-entrant
      assert.same({ nil, "held" }, { L:acquire("job", "w1") })
      local owner, token, expires = L:holder("job")
      assert.equal("w1", owner)
      assert.equal(a.token, token)
      assert.equal(a.expires, expires)
      assert.is_true(L:valid("job", a.token))
      assert.is_false(L:valid("job", a.token + 1))
      assert.is_nil(L:holder("other"))
      assert.is_false(L:valid("other", a.token))
    end)
  end)

  it("tokens strictly increase across grants, keys, releases and expiries", function()
    sim(function()
      local L = keel.leases { ttl_ms = 10 }
      local last = 0
      for i = 1, 20 do
        local l = assert(L:acquire("k" .. (i % 3), "o"))
        assert.is_true(l.token > last)
        last = l.token
        if i % 2 == 0 then assert.is_true(L:release(l.key, l.token)) else keel.sleep(10) end
      end
    end)
  end)

  it("expires exactly at 'expires'", function()
    sim(function()
      local L = keel.leases { ttl_ms = 50 }
      local a = L:acquire("k", "w1")
      keel.sleep(49.999)
      assert.is_true(L:valid("k", a.token))
      assert.same({ nil, "held" }, { L:acquire("k", "w2") })
      keel.sleep(0.001)
      assert.equal(a.expires, keel.now())
      assert.is_false(L:valid("k", a.token))
      assert.is_nil(L:holder("k"))
      assert.same({ nil, "lost" }, { L:renew("k", a.token) })
      assert.same({ nil, "lost" }, { L:release("k", a.token) })
      local b = L:acquire("k", "w2")
      assert.is_true(b.token > a.token)
      assert.equal(1, L:stats().expirations)
    end)
  end)

  it("renew extends from now, with the default or a given ttl", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100 }
      local a = L:acquire("k", "w")
      keel.sleep(60)
      local ok, e = L:renew("k", a.token)
      assert.is_true(ok)
      assert.equal(160, e)
      keel.sleep(90)
      assert.is_true(L:valid("k", a.token))
      ok, e = L:renew("k", a.token, 5)
      assert.is_true(ok)
      assert.equal(155, e)
      keel.sleep(5)
      assert.is_false(L:valid("k", a.token))
      -- lease methods
      local b = L:acquire("k", "w", { ttl_ms = 20 })
      assert.equal(keel.now() + 20, b.expires)
      keel.sleep(10)
      assert.is_true(b:renew())
      assert.equal(keel.now() + 100, b.expires)
      assert.is_true(b:valid())
      assert.is_true(b:release())
      assert.is_false(b:valid())
      assert.same({ nil, "lost" }, { b:release() })
      assert.matches("keel.lease%(k by w", tostring(b))
    end)
  end)

  it("release and renew with a stale or wrong token report 'lost' and change nothing", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100 }
      local a = L:acquire("k", "w1")
      assert.same({ nil, "lost" }, { L:release("k", a.token + 1) })
      assert.same({ nil, "lost" }, { L:renew("k", a.token - 1) })
      assert.same({ nil, "lost" }, { L:release("nokey", a.token) })
      assert.is_true(L:valid("k", a.token))
      assert.is_true(L:release("k", a.token))
      local b = L:acquire("k", "w2")
      assert.same({ nil, "lost" }, { L:release("k", a.token) }) -- old holder cannot free the new lease
      assert.is_true(L:valid("k", b.token))
      assert.equal(4, L:stats().lost)
    end)
  end)

  it("release hands the lease to the longest waiter first", function()
    sim(function()
      local L = keel.leases { ttl_ms = 1000 }
      local a = L:acquire("k", "first")
      local order = {}
      for i = 1, 3 do
        keel.spawn(function()
          local l = assert(L:acquire("k", "w" .. i, { wait_ms = 5000 }))
          order[#order + 1] = l.owner .. "@" .. keel.now()
          keel.sleep(1)
          l:release()
        end)
        keel.sleep(1) -- arrival order w1, w2, w3
      end
      assert.equal(3, L:stats().waiting)
      -- a newcomer does not overtake the queue
      assert.same({ nil, "held" }, { L:acquire("k", "late") })
      L:release("k", a.token)
      keel.sleep(10)
      assert.same({ "w1@3", "w2@4", "w3@5" }, order)
      assert.equal(0, L:stats().waiting)
    end)
  end)

  it("expiry wakes a waiter even if nobody calls anything", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100 }
      L:acquire("k", "crashed")
      local got, at
      keel.spawn(function()
        got = L:acquire("k", "next", { wait_ms = 1000 })
        at = keel.now()
      end)
      keel.sleep(500)
      assert.equal("next", got.owner)
      assert.equal(100, at)
      assert.equal(200, got.expires)
    end)
  end)

  it("a renewed lease keeps waiters waiting until it really expires", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100 }
      local a = L:acquire("k", "w1")
      local at
      keel.spawn(function()
        assert(L:acquire("k", "w2", { wait_ms = 1000 }))
        at = keel.now()
      end)
      keel.sleep(90)
      L:renew("k", a.token) -- now expires at 190
      keel.sleep(300)
      assert.equal(190, at)
    end)
  end)

  it("waiting gives up with 'timeout' after wait_ms; wait_ms = 0 does not park", function()
    sim(function()
      local L = keel.leases { ttl_ms = 1000 }
      local a = L:acquire("k", "w1")
      local t0 = keel.now()
      assert.same({ nil, "timeout" }, { L:acquire("k", "w2", { wait_ms = 30 }) })
      assert.equal(t0 + 30, keel.now())
      assert.same({ nil, "timeout" }, { L:acquire("k", "w2", { wait_ms = 0 }) })
      assert.equal(t0 + 30, keel.now())
      assert.equal(0, L:stats().waiting)
      -- the timed-out waiter is skipped: the next live waiter gets the lease
      local got
      keel.spawn(function() got = L:acquire("k", "w3", { wait_ms = 500 }) end)
      keel.sleep(1)
      L:release("k", a.token)
      keel.sleep(1)
      assert.equal("w3", got.owner)
    end)
  end)

  it("a waiter whose wait ends exactly at the expiry either gets the lease or times out, never leaks it", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100 }
      L:acquire("k", "old")
      local l, err = L:acquire("k", "w", { wait_ms = 100 })
      assert.equal(100, keel.now())
      if l then
        assert.equal("w", (L:holder("k")))
        assert.is_true(l:valid())
      else
        assert.equal("timeout", err)
        assert.is_nil(L:holder("k"))
      end
      keel.sleep(1)
      assert.equal(0, L:stats().waiting)
    end)
  end)

  it("waiters that give up on a key held forever do not pile up", function()
    sim(function()
      local L = keel.leases { ttl_ms = 30 }
      local a = L:acquire("k", "holder")
      keel.spawn(function()
        for _ = 1, 200 do keel.sleep(10); a:renew() end
      end)
      for _ = 1, 150 do
        assert.same({ nil, "timeout" }, { L:acquire("k", "w", { wait_ms = 7 }) })
      end
      local list = L.waiters.k -- white-box: dead records are compacted away
      assert.is_true(list == nil or list.tail - list.head + 1 <= 40)
      assert.equal(0, L:stats().waiting)
      assert.equal("holder", (L:holder("k")))
    end)
  end)

  it("a cancelled waiter is skipped", function()
    sim(function()
      local L = keel.leases { ttl_ms = 1000 }
      local a = L:acquire("k", "w1")
      local t = keel.spawn(function() return L:acquire("k", "cancelled", { wait_ms = 500 }) end)
      local got
      keel.spawn(function() got = L:acquire("k", "w3", { wait_ms = 500 }) end)
      keel.sleep(1)
      t:cancel()
      keel.sleep(1)
      L:release("k", a.token)
      keel.sleep(1)
      assert.equal("w3", got.owner)
      assert.equal("w3", (L:holder("k")))
    end)
  end)

  it("at max keys refuses new keys with 'full', reclaiming expired leases first", function()
    sim(function()
      local L = keel.leases { ttl_ms = 100, max = 2 }
      assert(L:acquire("a", 1))
      keel.sleep(50)
      assert(L:acquire("b", 2))
      assert.same({ nil, "full" }, { L:acquire("c", 3) })
      assert.same({ nil, "full" }, { L:acquire("c", 3, { wait_ms = 10 }) })
      assert.same({ nil, "held" }, { L:acquire("a", 3) }) -- an existing key is not 'full'
      keel.sleep(50) -- "a" expires
      local c = L:acquire("c", 3)
      assert.equal(3, c.owner)
      assert.equal(2, L:count())
      assert.equal(2, L:stats().refused_full)
    end)
  end)

  it("owners may be any value; numeric keys are strings", function()
    sim(function()
      local L = keel.leases()
      local owner = { id = 7 }
      local l = L:acquire(42, owner)
      assert.equal("42", l.key)
      assert.equal(owner, (L:holder("42")))
      assert.same({ nil, "held" }, { L:acquire("42", false) })
    end)
  end)

  it("matches a plain Lua model over random operations", function()
    sim(function()
      local L = keel.leases { ttl_ms = 20, max = 8 }
      local held, next_token = {}, 1
      local function live(k) local h = held[k]; return h and keel.now() < h.exp and h or nil end
      local function nlive() local n = 0; for k in pairs(held) do if live(k) then n = n + 1 end end; return n end
      local r = 777
      local function rnd(n) r = (r * 16807) % 2147483647; return r % n end
      local tokens = {}
      for step = 1, 8000 do
        local k = "k" .. rnd(12)
        local op = rnd(6)
        local ctx = "step " .. step
        if op == 0 then
          local ttl = rnd(3) == 0 and 1 + rnd(40) or nil
          local l, err = L:acquire(k, "o" .. step, ttl and { ttl_ms = ttl } or nil)
          if live(k) then
            assert.same({ nil, "held" }, { l, err }, ctx)
          elseif nlive() >= 8 then
            assert.same({ nil, "full" }, { l, err }, ctx)
          else
            assert.is_table(l, ctx)
            assert.equal(next_token, l.token, ctx)
            assert.equal(keel.now() + (ttl or 20), l.expires, ctx)
            held[k] = { owner = "o" .. step, token = next_token, exp = l.expires }
            tokens[#tokens + 1] = next_token
            next_token = next_token + 1
          end
        else
          local h = live(k)
          -- a token that may be current, stale or never issued
          local t = rnd(3) > 0 and h and h.token or (#tokens > 0 and tokens[rnd(#tokens) + 1] or 1)
          local ok = h ~= nil and h.token == t
          if op == 1 then
            local ttl = rnd(2) == 0 and 1 + rnd(30) or nil
            local a, b = L:renew(k, t, ttl)
            if ok then
              assert.is_true(a, ctx)
              h.exp = keel.now() + (ttl or 20)
              assert.equal(h.exp, b, ctx)
            else
              assert.same({ nil, "lost" }, { a, b }, ctx)
            end
          elseif op == 2 then
            local a, b = L:release(k, t)
            if ok then assert.is_true(a, ctx); held[k] = nil else assert.same({ nil, "lost" }, { a, b }, ctx) end
          elseif op == 3 then
            local owner, token, exp = L:holder(k)
            if h then assert.same({ h.owner, h.token, h.exp }, { owner, token, exp }, ctx)
            else assert.is_nil(owner, ctx) end
          elseif op == 4 then
            assert.equal(ok, L:valid(k, t), ctx)
          else
            assert.equal(nlive(), L:count(), ctx)
          end
        end
        if rnd(3) == 0 then keel.sleep(rnd(6)) end
      end
      local st = L:stats()
      assert.is_true(st.expirations > 50 and st.refused_full > 0 and st.lost > 50,
        string.format("exercised expiry %d / full %d / lost %d", st.expirations, st.refused_full, st.lost))
    end)
  end)

  it("is deterministic under keel.sim", function()
    local function run()
      local out
      keel.sim({ seed = 11 }, function()
        local L = keel.leases { ttl_ms = 30, max = 5 }
        local log = {}
        for w = 1, 6 do
          keel.spawn(function()
            for _ = 1, 5 do
              local l, err = L:acquire("k" .. (w % 3), "w" .. w, { wait_ms = 40 })
              log[#log + 1] = string.format("%d:%s:%s@%g", w, l and l.token or "-", err or "", keel.now())
              if l then keel.sleep(w * 7); l:release() else keel.sleep(3) end
            end
          end)
        end
        keel.sleep(10000)
        out = table.concat(log, " ")
      end)
      return out
    end
    local a = run()
    assert.is_true(#a > 100)
    assert.equal(a, run())
  end)

  it("has stats and registers when named", function()
    sim(function()
      local L = keel.leases { name = "spec_leases", ttl_ms = 10, max = 3 }
      local a = L:acquire("k", "w")
      L:acquire("k", "x")
      L:renew("k", a.token)
      L:release("k", a.token)
      local s = L:stats()
      assert.equal(0, s.held); assert.equal(3, s.max); assert.equal(0, s.waiting)
      assert.equal(1, s.grants); assert.equal(1, s.renewals); assert.equal(1, s.releases)
      assert.equal(1, s.refused_held); assert.equal(0, s.refused_full); assert.equal(0, s.lost)
      assert.is_true(s.bytes > 0)
      assert.equal(1, keel.metrics().leases.spec_leases.grants)
      assert.matches("spec_leases", tostring(L))
    end)
  end)

  it("rejects bad options", function()
    local function err(opts) local ok, e = pcall(keel.leases, opts); assert.is_false(ok); return e end
    assert.matches("keel.leases: option 'ttl_ms' must be a finite number > 0 %(got 0%)", err { ttl_ms = 0 })
    for _, bad in ipairs { -1, 0 / 0, math.huge, "5", true } do
      assert.matches("option 'ttl_ms'", err { ttl_ms = bad })
    end
    for _, bad in ipairs { 0, -1, 1.5, 0 / 0, math.huge, 2 ^ 32, "5" } do
      assert.matches("option 'max'", err { max = bad })
    end
    assert.matches("option 'name'", err { name = 1 })
    assert.matches("unknown option 'ttl'", err { ttl = 1 })
    assert.matches("options must be a table", err(true))
  end)

  it("rejects bad arguments to every method", function()
    sim(function()
      local L = keel.leases()
      local function err(fn, ...) local ok, e = pcall(fn, ...); assert.is_false(ok); return e end
      local bad_keys = { n = 5, nil, true, {}, 0 / 0, string.rep("x", 65536) }
      for i = 1, bad_keys.n do
        local bad = bad_keys[i]
        assert.matches("leases:acquire: argument 'key'", err(L.acquire, L, bad, "o"))
        assert.matches("leases:renew: argument 'key'", err(L.renew, L, bad, 1))
        assert.matches("leases:release: argument 'key'", err(L.release, L, bad, 1))
        assert.matches("leases:holder: argument 'key'", err(L.holder, L, bad))
        assert.matches("leases:valid: argument 'key'", err(L.valid, L, bad, 1))
      end
      assert.matches("argument 'owner' must not be nil", err(L.acquire, L, "k"))
      assert.matches("argument 'owner' must not be nil or NaN", err(L.acquire, L, "k", 0 / 0))
      assert.matches("options must be a table", err(L.acquire, L, "k", "o", 5))
      assert.matches("unknown option 'wait'", err(L.acquire, L, "k", "o", { wait = 5 }))
      assert.matches("option 'ttl_ms'", err(L.acquire, L, "k", "o", { ttl_ms = -1 }))
      assert.matches("option 'ttl_ms'", err(L.acquire, L, "k", "o", { ttl_ms = 0 / 0 }))
      assert.matches("option 'wait_ms'", err(L.acquire, L, "k", "o", { wait_ms = -1 }))
      assert.matches("option 'wait_ms'", err(L.acquire, L, "k", "o", { wait_ms = "1" }))
      local bad_tokens = { n = 4, nil, "1", 0 / 0, {} }
      for i = 1, bad_tokens.n do
        local bad = bad_tokens[i]
        assert.matches("leases:renew: argument 'token' must be a number", err(L.renew, L, "k", bad))
        assert.matches("leases:release: argument 'token' must be a number", err(L.release, L, "k", bad))
        assert.matches("leases:valid: argument 'token' must be a number", err(L.valid, L, "k", bad))
      end
      assert.matches("argument 'ttl_ms'", err(L.renew, L, "k", 1, 0))
      assert.matches("argument 'ttl_ms'", err(L.renew, L, "k", 1, math.huge))
      for _, m in ipairs { "acquire", "renew", "release", "holder", "valid", "count", "stats" } do
        assert.matches("call it as a method", err(L[m], "k", 1))
      end
      assert.equal(0, L:count())
      assert.equal(0, L:stats().grants)
    end)
  end)

  -- In virtual time: in real time a grant's ttl counted from a stale loop
  -- time (see below) could end before the waiter's 1 ms.
  it("works from spawned tasks and joins cleanly", function()
    sim(function()
      local L = keel.leases()
      local ok = L:acquire("k", "a")
      assert.truthy(ok)
      local t = keel.spawn(function() return L:acquire("k", "b", { wait_ms = 1 }) end)
      local _, l, e = t:join()
      assert.is_nil(l)
      assert.equal("timeout", e)
    end)
  end)

  -- The loop's cached time is refreshed between tasks; a task that computes
  -- longer than the ttl before acquiring must still get the full ttl, or a
  -- waiter's timer (armed on a fresh clock reading) finds the lease expired
  -- and takes it (seen once under ASan with the default 10 s ttl).
  it("counts a grant's ttl from the time of the grant, not from a stale loop time", function()
    local L = keel.leases { ttl_ms = 50 }
    local cpu0 = os.clock()
    while os.clock() - cpu0 < 0.08 do end -- busy, no yield: the cached time goes stale
    local lease = assert(L:acquire("k", "a"))
    local t = keel.spawn(function() return L:acquire("k", "b", { wait_ms = 1 }) end)
    local _, l, e = t:join()
    assert.is_nil(l)
    assert.equal("timeout", e)
    assert.is_true(lease:valid())
    assert.is_true(lease:release())
  end)
end)
