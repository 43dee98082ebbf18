-- Redis: keel's client and distributed primitives against redis-benchmark,
-- all against one throwaway redis-server started here.
--   build/keel bench/run.lua redis
--
-- Where the client and the server run matters more than anything else on a
-- small VM: a wake-up across cores costs tens of microseconds, so a
-- round-trip-bound load runs up to 3x faster with both on one core, while a
-- deeply pipelined one gains from two. Each figure, keel's and every
-- baseline's alike, is therefore the best of three placements -- the
-- scheduler's choice, both on one core, one core each -- and names the one
-- that won.
local keel = require "keel"

local root = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
package.path = root .. "/spec/support/?.lua;" .. package.path
local redis_server = require "redis_server"
local sh, my_pid = redis_server.sh, redis_server.my_pid

local NCPU = tonumber(sh("nproc 2>/dev/null"):match("%d+")) or 1
local ALL = "0-" .. (NCPU - 1)
local PLACEMENTS = { { name = "any cores", server = ALL, client = ALL } }
if NCPU >= 2 and sh("command -v taskset 2>/dev/null") ~= "" and my_pid() then
  PLACEMENTS[2] = { name = "one core", server = "0", client = "0" }
  PLACEMENTS[3] = { name = "two cores", server = "1", client = "0" }
end

local function place(server, p)
  if #PLACEMENTS == 1 then return end
  os.execute(string.format("taskset -a -pc %s %d >/dev/null 2>&1", p.server, server.pid))
  os.execute(string.format("taskset -a -pc %s %s >/dev/null 2>&1", p.client, my_pid()))
end

-- fn(p) -> rate; returns the best rate and the placement it came from
local function best(server, fn)
  local top, where = nil, nil
  for _, p in ipairs(PLACEMENTS) do
    place(server, p)
    local v = fn(p)
    if v and (not top or v > top) then top, where = v, p.name end
  end
  place(server, PLACEMENTS[1])
  return top, where
end

local function rb(port, p, args)
  local pin = #PLACEMENTS > 1 and ("taskset -c " .. p.client .. " ") or ""
  local out = sh(string.format("%sredis-benchmark -p %d -q %s 2>/dev/null", pin, port, args))
  -- "INCR: 123456.79 requests per second, p50=..." (the last \r-separated part)
  return tonumber(out:match("INCR: ([%d%.]+) requests per second"))
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

local function label(text, where) return string.format("%s [%s]", text, where) end

return function(report)
  if not redis_server.available then
    print("  redis-server not installed: skipped")
    return
  end
  local server = redis_server.start()
  local ok, err = pcall(function()
    local c = assert(keel.redis.connect(server.url))
    local port = server.port

    -- INCR from 50 tasks sharing one connection --------------------------------
    local N = 500000
    tasks(50, function() for _ = 1, 2000 do c:call("INCR", "warm") end end) -- JIT warm-up
    local keel_rate, keel_where = best(server, function()
      local secs = timed(function()
        tasks(50, function() for _ = 1, N / 50 do c:call("INCR", "bench:incr") end end)
      end)
      return N / secs
    end)
    local rb_c50, rb_c50_where = best(server, function(p) return rb(port, p, "-c 50 -n 300000 -t incr") end)
    local rb_p32, rb_p32_where = best(server, function(p) return rb(port, p, "-c 50 -n 3000000 -P 32 -t incr") end)
    local rb_d50, rb_d50_where = best(server, function(p) return rb(port, p, "-c 1 -n 2000000 -P 50 -t incr") end)
    local text = label("INCR, 50 tasks, one keel connection", keel_where)
    report { label = text, value = keel_rate, unit = "ops/s", target = ">= 1x",
             baseline = rb_c50, baseline_label = label("redis-benchmark -c 50", rb_c50_where) }
    report { label = text, value = keel_rate, unit = "ops/s", target = ">= 0.5x",
             baseline = rb_p32, baseline_label = label("redis-benchmark -c 50 -P 32", rb_p32_where) }
    -- the same 50 commands in flight on one connection, from a C client
    report { label = text, value = keel_rate, unit = "ops/s",
             baseline = rb_d50, baseline_label = label("redis-benchmark -c 1 -P 50", rb_d50_where) }

    -- explicit pipeline: batches of 1000 INCR from one task
    local B, rounds = 1000, 500
    local cmds = {}
    for i = 1, B do cmds[i] = { "INCR", "bench:pipe" } end
    local v, where = best(server, function()
      return B * rounds / timed(function() for _ = 1, rounds do assert(c:batch(cmds)) end end)
    end)
    report { label = label("INCR, client:batch of 1000, one task", where), value = v, unit = "ops/s",
             baseline = rb_p32, baseline_label = label("redis-benchmark -c 50 -P 32", rb_p32_where) }

    -- leases: acquire + release, 50 tasks on distinct keys ----------------------
    local leases = require("keel.redis.leases").new { redis = c, ttl_ms = 10000, prefix = "bench:l" }
    local L = 100000
    v, where = best(server, function()
      return L / timed(function()
        tasks(50, function(i)
          local key = "k" .. i
          for _ = 1, L / 50 do
            local lease = leases:acquire(key, "me")
            lease:release()
          end
        end)
      end)
    end)
    report { label = label("lease acquire+release, 50 tasks", where), value = v, unit = "pairs/s" }

    -- queue: push from 50 tasks, then 4 consumers pop+ack ----------------------
    local Q = require("keel.redis.queue")
    local q = Q.new { redis = c, prefix = "bench:q", capacity = 10000000, prefetch = 64 }
    local J = 200000
    local function push_all()
      return J / timed(function()
        tasks(50, function() for _ = 1, J / 50 do assert(q:push("job-payload")) end end)
      end)
    end
    local function consume(ack_opts)
      local done = 0
      local secs = timed(function()
        tasks(4, function()
          while done < J do
            local m = q:pop { wait_ms = 200 }
            if m then
              assert(q:ack(m, ack_opts))
              done = done + 1
            end
          end
        end)
        q:flush()
      end)
      return J / secs
    end
    local pushed, pushed_where = best(server, function()
      local rate = push_all()
      consume { wait = false } -- drain, so every placement starts from an empty stream
      return rate
    end)
    report { label = label("queue push (batched XADD), 50 tasks", pushed_where), value = pushed,
             unit = "jobs/s", baseline = 29000, baseline_label = "BullMQ 6 add", target = ">= 4x" }
    v, where = best(server, function()
      push_all()
      return consume()
    end)
    report { label = label("queue pop+ack (ack waits), 4 consumer tasks", where), value = v,
             unit = "jobs/s", baseline = 25000, baseline_label = "BullMQ 6 process", target = ">= 4x" }
    v, where = best(server, function()
      push_all()
      return consume { wait = false }
    end)
    report { label = label("queue pop+ack (ack wait=false), 4 consumers", where), value = v,
             unit = "jobs/s", baseline = 25000, baseline_label = "BullMQ 6 process", target = ">= 4x" }
    q:close()
    c:close()
  end)
  server:cleanup()
  if not ok then error(err, 0) end
end
