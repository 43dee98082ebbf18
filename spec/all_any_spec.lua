-- keel.all / keel.race / keel.any: each returns or raises only once the
-- tasks it cancelled have run their keel.defer cleanups; keel.race settles
-- on the first task to end, keel.any on the first to succeed (as
-- Promise.race / Promise.any), raising an aggregate error only if all fail.
local keel = require "keel"

local sim = function(fn) return keel.sim({ seed = 1 }, fn) end

-- A function that registers a cleanup which itself waits, then sleeps
-- long: it only ends by being cancelled.
local function slow_with_cleanup(cleaned, key)
  return function()
    keel.defer(function() keel.sleep(5) cleaned[key] = true end)
    keel.sleep(1e6)
  end
end

describe("keel.all", function()
  it("raises the first error only after the cancelled siblings' cleanup ran", function()
    sim(function()
      local cleaned = {}
      local ok, err = pcall(keel.all, {
        slow_with_cleanup(cleaned, 1),
        function() keel.sleep(10) error("first error", 0) end,
        slow_with_cleanup(cleaned, 3),
      })
      assert.is_false(ok)
      assert.equal("first error", err)
      assert.same({ [1] = true, [3] = true }, cleaned)
    end)
  end)
end)

describe("keel.race", function()
  it("returns every result of the first to end, after the losers' cleanup ran", function()
    sim(function()
      local cleaned = {}
      local t0 = keel.now()
      local a, b = keel.race({
        slow_with_cleanup(cleaned, 1),
        function() keel.sleep(10) return "fast", 2 end,
      })
      assert.same({ "fast", 2 }, { a, b })
      assert.equal(15, keel.now() - t0) -- 10 for the winner, 5 for the loser's cleanup
      assert.is_true(cleaned[1])
    end)
  end)

  it("raises the error of the first to end, even when a later one would succeed", function()
    sim(function()
      local cleaned = {}
      local e = { code = 1 }
      local ok, err = pcall(keel.race, {
        function() keel.defer(function() cleaned[1] = true end) keel.sleep(50) return "slow" end,
        function() keel.sleep(10) error(e) end,
      })
      assert.is_false(ok)
      assert.equal(e, err)
      assert.is_true(cleaned[1])
    end)
  end)

  it("rejects an empty list and a non-table", function()
    sim(function()
      assert.matches("keel.race: argument 'fns' must not be empty", select(2, pcall(keel.race, {})))
      assert.matches("keel.race: argument 'fns' must be a table", select(2, pcall(keel.race, 1)))
      assert.matches("keel.race: fns%[2%] must be a function", select(2, pcall(keel.race, { print, 1 })))
    end)
  end)
end)

describe("keel.any", function()
  it("returns the first success, not the first to end, and cleans the losers up first", function()
    sim(function()
      local cleaned = {}
      local t0 = keel.now()
      local a, b = keel.any({
        function() keel.sleep(5) error("fast failure") end,
        function() keel.sleep(20) return "ok", 2 end,
        slow_with_cleanup(cleaned, 3),
      })
      assert.same({ "ok", 2 }, { a, b })
      assert.equal(25, keel.now() - t0)
      assert.is_true(cleaned[3])
    end)
  end)

  it("raises an aggregate of every error, in argument order, only when all fail", function()
    sim(function()
      local e = { code = 3 }
      local ok, err = pcall(keel.any, {
        function() keel.sleep(30) error("one", 0) end,
        function() keel.sleep(10) error("two", 0) end,
        function() keel.sleep(20) error(e) end,
      })
      assert.is_false(ok)
      assert.is_true(keel.is_any_error(err))
      assert.same({ n = 3, "one", "two", e }, err.errors)
      assert.equal(e, err.errors[3])
      local msg = tostring(err)
      assert.equal(msg, err.message)
      assert.matches("^keel%.any: all 3 functions failed", msg)
      assert.matches("%[1%] one; %[2%] two; %[3%] %(error object is a table value", msg)
      assert.is_false(keel.is_any_error("one"))
    end)
  end)

  it("the aggregate prints even when an error object cannot, and quotes a bounded number", function()
    sim(function()
      local bad = setmetatable({}, { __tostring = function() error("no") end })
      local fns = {}
      for i = 1, 40 do fns[i] = function() error(i == 1 and bad or ("e" .. i), 0) end end
      local ok, err = pcall(keel.any, fns)
      assert.is_false(ok)
      local msg = tostring(err)
      assert.matches("all 40 functions failed: %[1%] %(error object is a table value; its __tostring raised", msg)
      assert.matches("%.%.%. and 35 more$", msg)
      assert.equal(40, #err.errors)
      assert.equal("e40", err.errors[40])
    end)
  end)

  it("the failures it swallowed or aggregated are not printed as unjoined", function()
    local proc = require "keelproc"
    local code, out, err = proc.eval([[
      local keel = require "keel"
      io.write(keel.any({ function() error("quiet") end, function() keel.sleep(1) return "won" end }), ";")
      local ok, e = pcall(keel.any, { function() error("a") end, function() error("b") end })
      io.write(tostring(ok), ";", #e.errors)
      keel.sleep(1)
    ]])
    assert.equal(0, code)
    assert.equal("won;false;2", out)
    assert.equal("", err)
  end)

  it("cancelling the caller cancels every child", function()
    sim(function()
      local done = 0
      local t = keel.spawn(function()
        keel.any({
          function() keel.sleep(50) done = done + 1 end,
          function() keel.sleep(60) done = done + 1 end,
        })
      end)
      keel.sleep(10)
      t:cancel()
      assert.same({ false, "cancelled" }, { t:join() })
      keel.sleep(100)
      assert.equal(0, done)
    end)
  end)
end)
