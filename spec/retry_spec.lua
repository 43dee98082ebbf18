local keel = require "keel"

describe("keel.retry", function()
  it("retries raised errors with the backoff's delays, then returns fn's results", function()
    keel.sim({ seed = 1 }, function()
      local calls = {}
      local a, b = keel.retry(function(attempt)
        calls[#calls + 1] = keel.now()
        if attempt < 3 then error("flaky") end
        return "ok", attempt
      end, { backoff = { base_ms = 10, jitter = "none" }, attempts = 5 })
      assert.same({ "ok", 3 }, { a, b })
      assert.same({ 0, 10, 30 }, calls)
    end)
  end)

  it("raises the last error once attempts are exhausted", function()
    keel.sim({ seed = 1 }, function()
      local n = 0
      local ok, err = pcall(keel.retry, function() n = n + 1; error({ n = n }) end,
                            { attempts = 3, backoff = { base_ms = 1 } })
      assert.is_false(ok)
      assert.same({ n = 3 }, err)
      assert.equal(3, n)
    end)
  end)

  it("takes attempts from the backoff's max_attempts", function()
    keel.sim({ seed = 1 }, function()
      local n = 0
      pcall(keel.retry, function() n = n + 1; error("x") end,
            { backoff = keel.backoff { base_ms = 1, max_attempts = 5 } })
      assert.equal(5, n)
    end)
  end)

  it("does not retry errors retry_on rejects", function()
    keel.sim({ seed = 1 }, function()
      local n = 0
      local ok, err = pcall(keel.retry, function() n = n + 1; error("fatal: bad request", 0) end,
                            { retry_on = function(e) return not tostring(e):match("^fatal") end })
      assert.is_false(ok)
      assert.equal("fatal: bad request", err)
      assert.equal(1, n)
    end)
  end)

  it("treats nil, err as success unless retry_on_nil", function()
    keel.sim({ seed = 1 }, function()
      local n = 0
      local function f() n = n + 1; return nil, "not found" end
      assert.same({ nil, "not found" }, { keel.retry(f) })
      assert.equal(1, n)
      n = 0
      assert.same({ nil, "not found" }, { keel.retry(f, { retry_on_nil = true, attempts = 4,
                                                          backoff = { base_ms = 1 } }) })
      assert.equal(4, n)
      n = 0
      local r = keel.retry(function() n = n + 1; if n < 2 then return nil, "busy" end; return "yes" end,
                           { retry_on_nil = true, backoff = { base_ms = 1 } })
      assert.equal("yes", r)
    end)
  end)

  it("never retries a cancelled task", function()
    keel.sim({ seed = 1 }, function()
      local n = 0
      local t = keel.spawn(function()
        keel.retry(function() n = n + 1; keel.sleep(100) end, { attempts = 10 })
      end)
      keel.sleep(10)
      t:cancel()
      t:join()
      assert.equal("cancelled", t:status())
      assert.equal(1, n)
    end)
  end)

  it("rejects bad options", function()
    keel.sim({ seed = 1 }, function()
      local f = function() end
      assert.has_error(function() keel.retry(nil) end)
      assert.has_error(function() keel.retry(f, 5) end)
      assert.has_error(function() keel.retry(f, { attempts = 0 }) end)
      assert.has_error(function() keel.retry(f, { attempts = 1.5 }) end)
      assert.has_error(function() keel.retry(f, { backoff = 5 }) end)
      assert.has_error(function() keel.retry(f, { backoff = { base_ms = -1 } }) end)
      assert.has_error(function() keel.retry(f, { retry_on = 1 }) end)
      assert.has_error(function() keel.retry(f, { retry_on_nil = 1 }) end)
      assert.has_error(function() keel.retry(f, { budget = {} }) end)
      assert.has_error(function() keel.retry(f, { tries = 3 }) end)
    end)
  end)
end)

describe("keel.retry_budget", function()
  it("allows retries up to ratio x calls plus the floor, per window", function()
    keel.sim({ seed = 1 }, function()
      local budget = keel.retry_budget { ratio = 0.1, min_per_s = 0, window_ms = 1000 }
      for _ = 1, 20 do budget:deposit() end
      assert.is_true(budget:withdraw())
      assert.is_true(budget:withdraw())
      assert.is_false(budget:withdraw())
      local s = budget:stats()
      assert.equal(20, s.calls)
      assert.equal(2, s.retries)
      assert.equal(1, s.rejected)
      keel.sleep(1000) -- the window slid past: nothing earned, nothing spent
      assert.is_false(budget:withdraw())
      assert.equal(0, budget:stats().window_calls)
    end)
  end)

  it("has a floor of min_per_s", function()
    keel.sim({ seed = 1 }, function()
      local budget = keel.retry_budget { ratio = 0, min_per_s = 2, window_ms = 2000 }
      for _ = 1, 4 do assert.is_true(budget:withdraw()) end
      assert.is_false(budget:withdraw())
    end)
  end)

  it("stops keel.retry with nil, 'budget' during an outage", function()
    keel.sim({ seed = 1 }, function()
      local budget = keel.retry_budget { ratio = 0.5, min_per_s = 0 }
      local attempts = 0
      local results = {}
      for i = 1, 10 do
        results[i] = { keel.retry(function() attempts = attempts + 1; error("down", 0) end,
                                  { budget = budget, attempts = 3, backoff = { base_ms = 1 } }) }
      end
      -- 10 calls earn 5 retries in total, not 20
      assert.equal(15, attempts)
      assert.same({ nil, "budget", "down" }, results[10])
    end)
  end)

  it("rejects bad options", function()
    for _, o in ipairs({ { ratio = -1 }, { min_per_s = -1 }, { window_ms = 0 }, { ratio = 0 / 0 }, { x = 1 } }) do
      assert.has_error(function() keel.retry_budget(o) end)
    end
    local b = keel.retry_budget { name = "spec-budget" }
    assert.has_error(function() b.withdraw() end)
    assert.is_table(require("keel.metrics").collect().retry_budget["spec-budget"])
  end)
end)
