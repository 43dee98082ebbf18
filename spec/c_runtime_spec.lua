-- C-level tests of runtime pieces, compiled against the library under test
-- (with the sanitizers when that is the ASan build).
local ctest = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec") .. "/c/ctest.lua")

describe("runtime C tests", function()
  it("keel_timers matches a brute-force model (order, cancel, count, next)", function()
    local ok, out = ctest.run("test_timers", "4")
    assert.is_true(ok, out)
    assert.matches("%d+ checks, 0 failures", out)
  end)

  it("keel_redis: a peer resetting mid-pipeline ends every command once, SIGPIPE left at default", function()
    local ok, out = ctest.run("test_redis_reset", "", "-I/usr/include/hiredis -luv -lhiredis")
    assert.is_true(ok, out)
    assert.matches("^ok %d+ resets, %d+ commands each ended once", out)
  end)

  it("keel_redis: its own transport against a scripted peer (bytes, split and stray replies, big writes)", function()
    local ok, out = ctest.run("test_redis_proto", "", "-I/usr/include/hiredis -luv -lhiredis")
    assert.is_true(ok, out)
    assert.matches("^ok 9 commands, each ended once", out)
  end)

  it("keel_redis: a hanging resolver is cut off by the connect deadline; close waits for it", function()
    local ok, out = ctest.run("test_redis_dns", "", "-I/usr/include/hiredis -luv -lhiredis")
    assert.is_true(ok, out)
    assert.matches("^ok 5 commands ended by the connect deadline", out)
  end)

  it("breaker, rate limiter, bulkhead and backoff cores pass their C test", function()
    local ok, out = ctest.run("resilience_test")
    assert.is_true(ok, out)
    assert.matches(" 0 failed", out)
  end)
end)
