-- The embedding API, exercised through the example host program.
local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or "."
local build = (os.getenv("KEEL_BIN") or (root .. "/build/keel")):match("^(.*)/[^/]*$")

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  return out, tonumber(out:match("exit=(%d+)%s*$"))
end

describe("embedding (examples/embed/host.c)", function()
  -- These tests block the runner for seconds (child processes, compilers).
  -- The world clock is refreshed once per scheduler turn, so a later spec
  -- that starts with a real-time deadline (leases_spec: a 10 s lease, then a
  -- 1 ms wait) would compute it from a time seconds old and see it expire
  -- at once. keel.now() refreshes it.
  teardown(function() require("keel").now() end)
  it("calls Lua functions, runs posted events as tasks, and exits cleanly", function()
    local out, code = run(build .. "/embed-host 7")
    assert.equal(0, code, out)
    assert.matches("host: add%(40, 2%) = 42 %(sum%)", out)
    assert.matches("calling a missing function fails: keel_call: global 'missing' is not a function", out)
    assert.matches("host: second runtime answers independently", out)
    assert.matches("lua handled 7 events, total 280", out)
    -- Events from the producer thread arrive in the order they were posted.
    local last = 0
    for v in out:gmatch("lua: order (%d+) handled") do
      assert.is_true(tonumber(v) > last)
      last = tonumber(v)
    end
    assert.equal(70, last)
  end)

  it("survives a burst of events from another thread", function()
    local out, code = run(build .. "/embed-host 2000")
    assert.equal(0, code, out)
    assert.matches("lua handled 2000 events, total 20010000", out)
  end)
end)

describe("embedding API edges (spec/c/test_embed_api.c)", function()
  teardown(function() require("keel").now() end) -- as above: refresh the clock
  local ctest = dofile(root .. "/spec/c/ctest.lua")
  it("fails cleanly on a raising top level, a finished run, NULL names; frees without running the host's loop "
    .. "and closes a Redis client with a request outstanding", function()
    local ok, out = ctest.run_host("test_embed_api")
    assert.is_true(ok, out)
    assert.matches("all ok", out)
  end)
end)
