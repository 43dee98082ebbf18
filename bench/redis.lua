-- Redis: keel's client and distributed primitives against redis-benchmark,
-- all against one throwaway redis-server started here.
--   build/keel bench/run.lua redis
local keel = require "keel"

local root = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
package.path = root .. "/spec/support/?.lua;" .. package.path
local redis_server = require "redis_server"

local function rb(port, args)
  local p = io.popen(string.format("redis-benchmark -p %d -q %s 2>/dev/null", port, args))
  local out = p:read("*a")
  p:close()
  -- "INCR: 123456.79 requests per second, p50=..." (the last \r-separated part)
  local v = out:match("INCR: ([%d%.]+) requests per second")
  return tonumber(v)
end

local function timed(fn)
  collectgarbage()
  local t0 = keel.now()
  fn()
  return (keel.now() - t0) / 1000
end

local function tasks(n, fn)
  local ts = {}
  for i = 1, n do ts[i] = keel.spawn(fn, i) end
  for i = 1, n do
    local ok, err = ts[i]:join()
    if not ok then error(err, 0) end
  end
end

return function(report)
  if not redis_server.available then
    print("  redis-server not installed: skipped")
    return
  end
  local server = redis_server.start()
  local ok, err = pcall(function()
    local c = assert(keel.redis.connect(server.url))

    -- INCR from 50 tasks sharing one connection --------------------------------
    local N = 1000000
    local per = N / 50
    tasks(50, function() for _ = 1, per / 10 do c:call("INCR", "warm") end end) -- JIT warm-up
    local secs = timed(function()
      tasks(50, function() for _ = 1, per do c:call("INCR", "bench:incr") end end)
    end)
    local keel_rate = N / secs
    local rb_c50 = rb(server.port, "-c 50 -n 300000 -t incr")
    local rb_p32 = rb(server.port, "-c 50 -n 3000000 -P 32 -t incr")
    report { label = "INCR, 50 tasks, one keel connection", value = keel_rate, unit = "ops/s",
             baseline = rb_c50, baseline_label = "redis-benchmark -c 50", target = ">= 1x" }
    report { label = "INCR, 50 tasks, one keel connection", value = keel_rate, unit = "ops/s",
             baseline = rb_p32, baseline_label = "redis-benchmark -c 50 -P 32", target = ">= 0.5x" }

    -- explicit pipeline: batches of 1000 INCR from one task
    local B, rounds = 1000, 1000
    local cmds = {}
    for i = 1, B do cmds[i] = { "INCR", "bench:pipe" } end
    secs = timed(function() for _ = 1, rounds do assert(c:batch(cmds)) end end)
    report { label = "INCR, client:batch of 1000, one task", value = B * rounds / secs, unit = "ops/s",
             baseline = rb_p32, baseline_label = "redis-benchmark -c 50 -P 32" }

    -- leases: acquire + release, 50 tasks on distinct keys ----------------------
    local leases = require("keel.redis.leases").new { redis = c, ttl_ms = 10000, prefix = "bench:l" }
    local L = 200000
    secs = timed(function()
      tasks(50, function(i)
        local key = "k" .. i
        for _ = 1, L / 50 do
          local lease = leases:acquire(key, "me")
          lease:release()
        end
      end)
    end)
    report { label = "lease acquire+release, 50 tasks", value = L / secs, unit = "pairs/s" }

    -- queue: push from 50 tasks, then 4 consumers pop+ack ----------------------
    local Q = require("keel.redis.queue")
    local q = Q.new { redis = c, prefix = "bench:q", capacity = 10000000, prefetch = 64 }
    local J = 400000
    secs = timed(function()
      tasks(50, function() for _ = 1, J / 50 do assert(q:push("job-payload")) end end)
    end)
    report { label = "queue push (batched XADD), 50 tasks", value = J / secs, unit = "jobs/s",
             baseline = 29000, baseline_label = "BullMQ 6 add", target = ">= 4x" }
    local done = 0
    secs = timed(function()
      tasks(4, function()
        while done < J do
          local m = q:pop { wait_ms = 200 }
          if m then
            q:ack(m)
            done = done + 1
          end
        end
      end)
    end)
    report { label = "queue pop+ack (ack waits), 4 consumer tasks", value = J / secs, unit = "jobs/s",
             baseline = 25000, baseline_label = "BullMQ 6 process", target = ">= 4x" }
    J = J / 2
    timed(function()
      tasks(50, function() for _ = 1, J / 50 do assert(q:push("job-payload")) end end)
    end)
    done = 0
    secs = timed(function()
      tasks(4, function()
        while done < J do
          local m = q:pop { wait_ms = 200 }
          if m then
            q:ack(m, { wait = false })
            done = done + 1
          end
        end
      end)
      q:flush()
    end)
    report { label = "queue pop+ack (ack wait=false), 4 consumers", value = J / secs, unit = "jobs/s",
             baseline = 25000, baseline_label = "BullMQ 6 process", target = ">= 4x" }
    q:close()
    c:close()
  end)
  server:cleanup()
  if not ok then error(err, 0) end
end
