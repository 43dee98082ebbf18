-- Error values travel unchanged from a task to whoever waits for it (join,
-- keel.timeout, keel.all, keel.race, keel.retry); the traceback is kept beside
-- the error (task:traceback()), and an error object that cannot even be
-- printed neither hides a failure nor brings the runtime down.
local keel = require "keel"
local proc = require "keelproc"

local sim = function(fn) return keel.sim({ seed = 1 }, fn) end

local function raiser(v, level)
  return function() keel.sleep(1) error(v, level) end
end

describe("error values", function()
  it("task:join returns a string error exactly as raised, even with level 0", function()
    sim(function()
      local t = keel.spawn(raiser("x", 0))
      assert.same({ false, "x" }, { t:join() })
    end)
  end)

  it("a positioned string error keeps its position and gains nothing", function()
    sim(function()
      local t = keel.spawn(function() error("boom") end)
      local ok, err = t:join()
      assert.is_false(ok)
      assert.matches("^[^\n]*errors_spec%.lua:%d+: boom$", err)
    end)
  end)

  it("keel.timeout, keel.all and keel.race raise the error exactly as raised", function()
    sim(function()
      assert.same({ false, "x" }, { pcall(keel.timeout, 100, raiser("x", 0)) })
      assert.same({ false, "x" }, { pcall(keel.all, { raiser("x", 0), function() keel.sleep(5) end }) })
      assert.same({ false, "x" }, { pcall(keel.race, { raiser("x", 0), function() keel.sleep(5) end }) })
    end)
  end)

  it("keel.timeout raises a task's own \"timeout\" error rather than mistake it for its deadline", function()
    sim(function()
      assert.same({ false, "timeout" }, { pcall(keel.timeout, 100, raiser("timeout", 0)) })
    end)
  end)

  it("table, number, boolean and nil errors keep their identity through join, keel.timeout and keel.all", function()
    sim(function()
      local e = { code = 42 }
      for _, v in ipairs({ e, 7, false }) do
        -- (level 0: Lua itself prefixes a position to a number raised at level 1)
        assert.same({ false, v }, { keel.spawn(raiser(v, 0)):join() })
        local ok, err = pcall(keel.timeout, 100, raiser(v, 0))
        assert.is_false(ok)
        assert.equal(v, err)
        ok, err = pcall(keel.all, { raiser(v, 0) })
        assert.is_false(ok)
        assert.equal(v, err)
      end
      local t = keel.spawn(raiser(nil))
      local r = { n = select("#", t:join()), t:join() }
      assert.same({ n = 2, false, nil }, r)
      assert.equal("failed", t:status())
    end)
  end)

  it("keel.retry's retry_on sees the raised string unchanged across tasks", function()
    sim(function()
      local seen = {}
      local n = 0
      local r = keel.retry(function()
        n = n + 1
        local ok, err = keel.spawn(function() if n < 3 then error("busy", 0) end return "ok" end):join()
        if not ok then error(err, 0) end
        return err
      end, {
        attempts = 5,
        backoff = { base_ms = 1, cap_ms = 1, jitter = "none" },
        retry_on = function(e) seen[#seen + 1] = e return e == "busy" end,
      })
      assert.equal("ok", r)
      assert.same({ "busy", "busy" }, seen)
      local ok, err = pcall(keel.retry, function() return keel.timeout(100, raiser("busy", 0)) end, {
        attempts = 2, backoff = { base_ms = 1, cap_ms = 1, jitter = "none" },
        retry_on = function(e) return e == "busy" end,
      })
      assert.is_false(ok)
      assert.equal("busy", err)
    end)
  end)
end)

describe("task:traceback()", function()
  it("holds the failed task's message and stack traceback", function()
    sim(function()
      local function deep() error("down here") end
      local t = keel.spawn(function() deep() end)
      t:join()
      local tb = t:traceback()
      assert.matches("errors_spec%.lua:%d+: down here", tb)
      assert.matches("stack traceback:", tb)
      assert.matches("in function 'deep'", tb)
      -- the scheduler's own frames are cut off
      assert.not_matches("sched%.lua", tb)
    end)
  end)

  it("describes a non-string error and is nil for a task that did not fail", function()
    sim(function()
      local t = keel.spawn(raiser({}))
      t:join()
      assert.matches("error object is a table value", t:traceback())
      local ok = keel.spawn(function() return 1 end)
      ok:join()
      assert.is_nil(ok:traceback())
      local c = keel.spawn(function() keel.sleep(100) end)
      keel.sleep(1)
      c:cancel()
      c:join()
      assert.is_nil(c:traceback())
      assert.matches("task:traceback: call it as a method", select(2, pcall(ok.traceback, 1)))
    end)
  end)
end)

describe("an error object whose __tostring raises", function()
  local bad = 'setmetatable({}, { __tostring = function() error("no string for you") end })'

  it("in the main task still exits 1 and says what failed", function()
    local code, _, err = proc.eval("error(" .. bad .. ")")
    assert.equal(1, code)
    assert.matches("error object is a table value", err)
  end)

  it("in an unjoined task is reported and the runtime goes on", function()
    local code, out, err = proc.eval([[
      local keel = require "keel"
      keel.spawn(function() error(]] .. bad .. [[) end)
      keel.sleep(1)
      keel.sleep(1)
      io.write("main done")
    ]])
    assert.equal(0, code)
    assert.equal("main done", out)
    assert.matches("task failed and nobody joined it", err)
    assert.matches("error object is a table value", err)
    assert.not_matches("internal scheduler error", err)
  end)

  it("raised from a deferred cleanup is reported, not fatal", function()
    local code, out, err = proc.eval([[
      local keel = require "keel"
      local t = keel.spawn(function() keel.defer(function() error(]] .. bad .. [[) end) end)
      t:join()
      io.write("main done")
    ]])
    assert.equal(0, code)
    assert.equal("main done", out)
    assert.matches("error in deferred cleanup", err)
  end)
end)
