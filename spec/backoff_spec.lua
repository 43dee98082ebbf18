local keel = require "keel"

local function collect(b, n)
  local out = {}
  for d in b:delays() do
    out[#out + 1] = d
    if n and #out >= n then break end
  end
  return out
end

describe("keel.backoff", function()
  it("grows exponentially up to the cap without jitter", function()
    local b = keel.backoff { base_ms = 100, cap_ms = 1000, factor = 2, jitter = "none" }
    assert.same({ 100, 200, 400, 800, 1000, 1000 }, collect(b, 6))
    assert.equal(400, b:delay(3))
    assert.equal(1000, b:delay(1e6))
  end)

  it("stops after max_attempts - 1 delays", function()
    local b = keel.backoff { jitter = "none", max_attempts = 4 }
    assert.same({ 100, 200, 400 }, collect(b))
    assert.same({}, collect(keel.backoff { max_attempts = 1 }))
  end)

  it("keeps each jitter within its range", function()
    keel.sim({ seed = 1 }, function()
      local full = keel.backoff { base_ms = 100, cap_ms = 800, jitter = "full" }
      local equal = keel.backoff { base_ms = 100, cap_ms = 800, jitter = "equal" }
      local decor = keel.backoff { base_ms = 100, cap_ms = 800, jitter = "decorrelated" }
      for attempt = 1, 50 do
        local cap = math.min(800, 100 * 2 ^ (attempt - 1))
        local f, e = full:delay(attempt), equal:delay(attempt)
        assert.is_true(f >= 0 and f <= cap)
        assert.is_true(e >= cap / 2 and e <= cap)
      end
      local prev = 100
      for d in decor:delays() do
        assert.is_true(d >= 100 and d <= math.min(800, prev * 3))
        prev = d
        if keel.random() < 0.02 then break end
      end
    end)
  end)

  it("draws jitter from the world's PRNG: same seed, same delays", function()
    local function run(seed)
      return keel.sim({ seed = seed }, function()
        return collect(keel.backoff { jitter = "full" }, 8), collect(keel.backoff { jitter = "decorrelated" }, 8)
      end)
    end
    local a1, b1 = run(42)
    local a2, b2 = run(42)
    local a3 = run(43)
    assert.same(a1, a2)
    assert.same(b1, b2)
    assert.are_not.same(a1, a3)
  end)

  it("rejects bad options and arguments", function()
    local bad = {
      { { base_ms = -1 }, "option 'base_ms'" }, { { base_ms = 0 / 0 }, "option 'base_ms'" },
      { { base_ms = 100, cap_ms = 50 }, "option 'cap_ms'" }, { { factor = 0.5 }, "option 'factor'" },
      { { jitter = "some" }, "option 'jitter'" }, { { max_attempts = 0 }, "option 'max_attempts'" },
      { { max_attempts = 2.5 }, "option 'max_attempts'" }, { { nope = 1 }, "unknown option" },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(keel.backoff, c[1])
      assert.is_false(ok)
      assert.matches("keel.backoff: " .. c[2], err, 1, true)
    end
    local b = keel.backoff {}
    assert.has_error(function() b:delay(0) end)
    assert.has_error(function() b:delay(1.5) end)
    assert.has_error(function() b:delay("1") end)
    assert.has_error(function() b:delay(1, -5) end)
    assert.has_error(function() b.delay(1) end)
    assert.has_error(function() b.delays() end)
  end)
end)
