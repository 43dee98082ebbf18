-- Lease-based assignment across processes: two worker processes share a
-- list of jobs through Redis. Before working on a job a worker takes the
-- job's lease; whoever holds it does the job, the other skips it. Every job
-- is done by exactly one worker, and the output shows who claimed what.
--   build/keel examples/redis_leases.lua        (starts its own redis-server)
--   KEEL_REDIS_URL=redis://127.0.0.1:6379 build/keel examples/redis_leases.lua
local keel = require "keel"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local support = require "redis_support"

local JOBS = 12

local function worker(name, url)
  io.stdout:setvbuf("line")
  local r = assert(keel.redis.connect(url))
  local leases = require("keel.redis.leases").new { redis = r, ttl_ms = 5000, prefix = "example:jobs" }
  for j = 1, JOBS do
    local job = "job-" .. j
    if not r:call("HGET", "example:done", job) then
      local lease = leases:acquire(job, name) -- no wait: held means someone else has it
      if lease then
        -- re-check under the lease: it may have been finished just before
        if not r:call("HGET", "example:done", job) then
          print(string.format("%s claimed %-6s (lease token %d)", name, job, lease.token))
          keel.sleep(20 + (j * 7) % 30) -- the work
          -- the fenced write: only the live lease may record the result
          if lease:valid() then r:call("HSETNX", "example:done", job, name) end
        end
        lease:release()
      end
    end
  end
  r:close()
end

if arg[1] == "worker" then
  worker(arg[2], arg[3])
  return
end

local url, stop = support.server()
local r = assert(keel.redis.connect(url))
r:call("DEL", "example:done")
print("two workers race for " .. JOBS .. " jobs:")
io.write(support.run_workers(arg[0], { "worker-A", "worker-B" }, url))
local done = r:call("HGETALL", "example:done")
local by = {}
for i = 1, #done, 2 do by[done[i + 1]] = (by[done[i + 1]] or 0) + 1 end
print(string.format("done: %d of %d jobs, each exactly once (worker-A %d, worker-B %d)",
  #done / 2, JOBS, by["worker-A"] or 0, by["worker-B"] or 0))
r:close()
stop()
