-- The Redis examples run as a newcomer runs them, against a throwaway server
-- (KEEL_REDIS_URL), and tell the story they promise.
local redis_server = require "redis_server"
local proc = require "keelproc"

describe("Redis examples", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end

  local function run(name)
    local s = redis_server.start()
    local code, out, err = proc.run({ proc.root .. "/examples/" .. name },
      { prefix = "KEEL_REDIS_URL=" .. proc.quote(s.url) .. " timeout 60" })
    s:cleanup()
    assert.equal(0, code, err)
    return out
  end

  it("redis_leases.lua: two worker processes claim every job exactly once", function()
    local out = run("redis_leases.lua")
    assert.matches("done: 12 of 12 jobs, each exactly once", out)
    local claimed = {}
    for job in out:gmatch("claimed (job%-%d+)") do
      assert.is_nil(claimed[job], job .. " claimed twice")
      claimed[job] = true
    end
  end)

  it("redis_ratelimit.lua: three processes share one budget", function()
    local out = run("redis_ratelimit.lua")
    local total, most = out:match("fleet total: (%d+) calls in 2 s %(limit 20/s %+ burst 5 = at most (%d+)%)")
    assert.is_not_nil(total, out)
    assert.is_true(tonumber(total) <= tonumber(most))
    assert.is_true(tonumber(total) >= 20) -- the budget was used, not starved
  end)

  it("redis_queue.lua: priority first, a duplicate refused, a poison job dead-lettered", function()
    local out = run("redis_queue.lua")
    assert.matches("pushing refund%-42 again:%s+nil%s+duplicate", out)
    -- (which line comes first is up to two processes racing: the order itself
    -- is spec/redis_queue_spec.lua's business)
    assert.matches("did refund%-42%s+%(priority 10%)", out)
    local done = 0
    for _ in out:gmatch("did report%-%d") do done = done + 1 end
    assert.equal(4, done)
    assert.matches("dead letter: corrupt%-invoice after 2 attempts %(cannot parse%)", out)
    assert.matches("left: 0 ready, 0 pending, 1 dead", out)
  end)
end)
