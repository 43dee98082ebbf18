local keel = require "keel"
local ctest = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec") .. "/c/ctest.lua")

describe("keel.dedup", function()
  it("returns false the first time and true while remembered", function()
    local d = keel.dedup { max = 10 }
    assert.is_false(d:seen("a"))
    assert.is_true(d:seen("a"))
    assert.is_true(d:seen("a"))
    assert.is_false(d:seen("b"))
    assert.equal(2, d:size())
  end)

  it("treats the empty string, binary keys and numbers as keys", function()
    local d = keel.dedup()
    assert.is_false(d:seen(""))
    assert.is_true(d:seen(""))
    assert.is_false(d:seen("a\0b"))
    assert.is_false(d:seen("a\0c"))
    assert.is_false(d:seen(1))
    assert.is_true(d:seen("1")) -- numbers are keyed by tostring
    local long = string.rep("x", 65535)
    assert.is_false(d:seen(long))
    assert.is_true(d:seen(long))
  end)

  it("forget makes a key new again", function()
    local d = keel.dedup()
    d:seen("a")
    assert.is_true(d:forget("a"))
    assert.is_false(d:forget("a"))
    assert.is_false(d:forget("never"))
    assert.is_false(d:seen("a"))
    assert.equal(1, d:size())
    d:clear()
    assert.equal(0, d:size())
    assert.is_false(d:seen("a"))
  end)

  it("at max evicts the oldest mark unless it was seen since it last reached the old end", function()
    local d = keel.dedup { max = 3 }
    d:seen("a"); d:seen("b"); d:seen("c")
    assert.is_true(d:seen("a")) -- a gets a second chance; b is the oldest unseen mark
    assert.is_false(d:seen("d")) -- evicts b; a goes round behind c (order c, a, d)
    assert.equal(3, d:size())
    assert.is_false(d:forget("b"))
    assert.is_true(d:seen("a")) -- seen again since it went round: another second chance
    assert.is_false(d:seen("e")) -- c (unseen since marked) goes, not a
    assert.is_false(d:forget("c"))
    assert.is_false(d:seen("f")) -- a goes round once more; d, unseen since marked, goes
    assert.is_false(d:forget("d"))
    assert.is_true(d:forget("a")); assert.is_true(d:forget("e")); assert.is_true(d:forget("f"))
    assert.equal(3, d:stats().evictions)
  end)

  it("a key seen after every new mark is never evicted", function()
    local d = keel.dedup { max = 4 }
    d:seen("hot")
    for i = 1, 100 do
      assert.is_false(d:seen("cold" .. i))
      assert.is_true(d:seen("hot"))
    end
    assert.equal(4, d:size())
    assert.equal(97, d:stats().evictions)
  end)

  it("with ttl_ms evicts at max the oldest mark, hit or not", function()
    keel.sim(function()
      local d = keel.dedup { max = 3, ttl_ms = 1000 }
      d:seen("a"); keel.sleep(1); d:seen("b"); keel.sleep(1); d:seen("c")
      assert.is_true(d:seen("a")) -- a hit does not save the soonest-expiring key
      assert.is_false(d:seen("d"))
      assert.is_false(d:forget("a"))
      assert.is_false(d:seen("e")) -- then b
      assert.is_false(d:forget("b"))
      assert.is_true(d:forget("c")); assert.is_true(d:forget("d")); assert.is_true(d:forget("e"))
      assert.equal(2, d:stats().evictions)
      assert.equal(0, d:stats().expirations)
    end)
  end)

  it("size() is exact under ttl_ms, deadline by deadline", function()
    keel.sim(function()
      local d = keel.dedup { ttl_ms = 10 }
      for i = 1, 5 do d:seen("k" .. i); keel.sleep(1) end -- marked at t = 0..4
      assert.equal(5, d:size()) -- t = 5
      d:forget("k3")
      assert.equal(4, d:size())
      keel.sleep(4.5)
      assert.equal(4, d:size())
      keel.sleep(0.5) -- t = 10: k1's deadline
      assert.equal(3, d:size())
      keel.sleep(1) -- k2
      assert.equal(2, d:size())
      keel.sleep(1) -- k3 was forgotten already: nothing more goes
      assert.equal(2, d:size())
      keel.sleep(1)
      assert.equal(1, d:size())
      keel.sleep(1)
      assert.equal(0, d:size())
      assert.equal(4, d:stats().expirations)
    end)
  end)

  it("forgetting and re-marking a key over and over stays within bounds", function()
    local d = keel.dedup { max = 100 }
    d:seen("other")
    local bytes = d:stats().bytes
    for _ = 1, 20000 do
      assert.is_false(d:seen("again"))
      assert.is_true(d:seen("again"))
      assert.is_true(d:forget("again"))
    end
    assert.equal(1, d:size())
    assert.is_true(d:seen("other"))
    assert.equal(bytes, d:stats().bytes)
    assert.equal(0, d:stats().evictions)
  end)

  it("tells apart long keys and binary keys that share a prefix", function()
    local d = keel.dedup { max = 1000 }
    local long = string.rep("p", 40)
    local keys = { long .. "1", long .. "2", long, long .. "\0", "\0", "\0\0", "a\0b\0c", "a\0b\0d",
      string.rep("\0", 17), string.rep("\0", 16), string.rep("q", 16), string.rep("q", 17) }
    for _, k in ipairs(keys) do assert.is_false(d:seen(k)) end
    for _, k in ipairs(keys) do assert.is_true(d:seen(k)) end
    assert.equal(#keys, d:size())
    local s = d:stats().bytes
    assert.is_true(d:forget(long .. "1"))
    assert.is_true(d:stats().bytes < s) -- a long key's out-of-line copy is released with it
    assert.is_false(d:seen(long .. "1"))
    assert.equal(#keys, d:size())
  end)

  it("keeps membership and mark order across growth and rehashes", function()
    local n = 3000
    local d = keel.dedup { max = n }
    for i = 1, n do assert.is_false(d:seen("k" .. i)) end -- grows from 16 slots on the way
    for _ = 1, 2 do -- odd keys are forgotten (their slots shift their chains back, their
      -- mark-order entries go dead) and come back as the newest marks
      for i = 1, n, 2 do assert.is_true(d:forget("k" .. i)) end
      for i = 1, n, 2 do assert.is_false(d:seen("k" .. i)) end
    end
    -- 1000 new keys evict the 1000 oldest marks: even keys 2..2000 (no hits since marked)
    for i = 1, 1000 do assert.is_false(d:seen("new" .. i)) end
    assert.equal(n, d:size())
    for i = 2002, n, 2 do assert.is_true(d:seen("k" .. i)) end
    for i = 1, n, 2 do assert.is_true(d:seen("k" .. i)) end
    for i = 1, 1000 do assert.is_true(d:seen("new" .. i)) end
    for i = 2, 2000, 2 do assert.is_false(d:forget("k" .. i)) end
    assert.equal(1000, d:stats().evictions)
  end)

  it("max = 1 remembers exactly the last key", function()
    local d = keel.dedup { max = 1 }
    assert.is_false(d:seen("a"))
    assert.is_true(d:seen("a"))
    assert.is_false(d:seen("b"))
    assert.is_false(d:seen("a"))
  end)

  it("forgets a key exactly ttl_ms after it was first marked", function()
    keel.sim({ seed = 1 }, function()
      local d = keel.dedup { ttl_ms = 100 }
      assert.is_false(d:seen("a")) -- t = 0
      keel.sleep(60)
      assert.is_true(d:seen("a")) -- a hit does not extend the ttl
      assert.is_false(d:seen("b")) -- t = 60
      keel.sleep(39.999)
      assert.is_true(d:seen("a"))
      assert.equal(2, d:size())
      keel.sleep(0.001) -- t = 100: a is forgotten at exactly its deadline
      assert.equal(1, d:size())
      assert.is_false(d:seen("a"))
      keel.sleep(60) -- t = 160: b gone, a (marked again at 100) remembered
      assert.is_false(d:seen("b"))
      assert.is_true(d:seen("a"))
      assert.is_true(d:stats().expirations >= 2)
    end)
  end)

  it("without ttl_ms keys never expire", function()
    keel.sim(function()
      local d = keel.dedup { max = 5 }
      d:seen("a")
      keel.sleep(1e9)
      assert.is_true(d:seen("a"))
    end)
  end)

  it("reclaims expired keys before evicting live ones", function()
    keel.sim(function()
      local d = keel.dedup { max = 2, ttl_ms = 10 }
      d:seen("old")
      keel.sleep(5)
      d:seen("live")
      keel.sleep(5) -- old expires now
      assert.is_false(d:seen("new"))
      assert.is_true(d:seen("live"))
      assert.equal(0, d:stats().evictions)
    end)
  end)

  it("passes the C model test (spec/c/test_dedup.c)", function()
    local ok, out = ctest.run("test_dedup")
    assert.is_true(ok, out)
    assert.matches("ok all", out)
  end)

  it("keeps memory bounded at max and under 128 bytes per entry beyond the key", function()
    local d = keel.dedup { max = 20000 }
    for i = 1, 50000 do d:seen("k" .. i) end
    local s = d:stats()
    assert.equal(20000, s.size)
    assert.equal(30000, s.evictions)
    assert.equal(50000, s.marks)
    assert.is_true(s.bytes / 20000 <= 128, "bytes per entry " .. s.bytes / 20000)
  end)

  it("is deterministic under keel.sim", function()
    local function run()
      local res
      keel.sim({ seed = 7 }, function()
        local d = keel.dedup { max = 50, ttl_ms = 30 }
        local out = {}
        local r = 0
        for i = 1, 500 do
          r = (r * 1103515245 + 12345) % 2147483648
          out[i] = d:seen("k" .. (r % 80)) and 1 or 0
          if i % 10 == 0 then keel.sleep(3) end
        end
        res = { table.concat(out), d:size() }
      end)
      return res[1], res[2]
    end
    local a, n1 = run()
    local b, n2 = run()
    assert.equal(500, #a)
    assert.equal(a, b)
    assert.equal(n1, n2)
  end)

  it("has stats and registers when named", function()
    local d = keel.dedup { name = "spec_dedup", max = 4, ttl_ms = 1000 }
    d:seen("x"); d:seen("x")
    local s = d:stats()
    assert.equal(1, s.size); assert.equal(4, s.max); assert.equal(1, s.marks); assert.equal(1, s.hits)
    assert.equal(0, s.evictions); assert.equal(0, s.expirations)
    assert.is_true(s.bytes > 0)
    assert.equal(1, keel.metrics().dedup.spec_dedup.hits)
    assert.matches("spec_dedup", tostring(d))
  end)

  it("rejects bad options", function()
    local function err(opts) local ok, e = pcall(keel.dedup, opts); assert.is_false(ok); return e end
    assert.matches("keel.dedup: option 'max' must be an integer", err { max = 0 })
    assert.matches("option 'max'", err { max = -1 })
    assert.matches("option 'max'", err { max = 1.5 })
    assert.matches("option 'max'", err { max = 0 / 0 })
    assert.matches("option 'max'", err { max = math.huge })
    assert.matches("option 'max'", err { max = 2 ^ 32 })
    assert.matches("option 'ttl_ms'", err { ttl_ms = 0 })
    assert.matches("option 'ttl_ms'", err { ttl_ms = -5 })
    assert.matches("option 'ttl_ms'", err { ttl_ms = 0 / 0 })
    assert.matches("option 'ttl_ms'", err { ttl_ms = math.huge })
    assert.matches("option 'ttl_ms'", err { ttl_ms = "10" })
    assert.matches("option 'name'", err { name = {} })
    assert.matches("unknown option 'ttl'", err { ttl = 10 })
    assert.matches("options must be a table", err "x")
  end)

  it("rejects bad keys and dot calls", function()
    local d = keel.dedup()
    for _, m in ipairs { "seen", "forget" } do
      for _, bad in ipairs { true, {}, 0 / 0, function() end } do
        local ok, e = pcall(d[m], d, bad)
        assert.is_false(ok)
        assert.matches("dedup:" .. m .. ": argument 'key' must be a string or number", e)
      end
      local ok, e = pcall(d[m], d)
      assert.is_false(ok)
      assert.matches("argument 'key'", e)
      ok, e = pcall(d[m], d, string.rep("x", 65536))
      assert.is_false(ok)
      assert.matches("at most 65535 bytes", e)
      ok, e = pcall(d[m], "k")
      assert.is_false(ok)
      assert.matches("call it as a method", e)
    end
    for _, m in ipairs { "size", "clear", "stats" } do
      local ok, e = pcall(d[m])
      assert.is_false(ok)
      assert.matches("call it as a method", e)
    end
    assert.equal(0, d:size())
  end)
end)
