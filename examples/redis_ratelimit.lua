-- A fleet-wide rate limit: three processes call the same "API" as fast as
-- they can, but share one budget of 20 calls/s (burst 5) through Redis, so
-- together they stay under it however many processes there are.
--   build/keel examples/redis_ratelimit.lua     (starts its own redis-server)
local keel = require "keel"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local support = require "redis_support"

local RATE, BURST, SECONDS = 20, 5, 2

local function worker(name, url)
  local r = assert(keel.redis.connect(url))
  local limit = require("keel.redis.ratelimit").new {
    redis = r, rate = RATE, per_ms = 1000, burst = BURST, prefix = "example:api" }
  local calls = 0
  local t_end = keel.now() + SECONDS * 1000
  while keel.now() < t_end do
    local ok = limit:wait(1, t_end - keel.now()) -- sleeps for its turn
    if ok then calls = calls + 1 end
  end
  print(string.format("%s made %d calls in %d s", name, calls, SECONDS))
  r:close()
end

if arg[1] == "worker" then
  worker(arg[2], arg[3])
  return
end

local url, stop = support.server()
local out = support.run_workers(arg[0], { "proc-1", "proc-2", "proc-3" }, url)
io.write(out)
local total = 0
for n in out:gmatch("made (%d+) calls") do total = total + tonumber(n) end
print(string.format("fleet total: %d calls in %d s (limit %d/s + burst %d = at most %d)",
  total, SECONDS, RATE, BURST, RATE * SECONDS + BURST))
stop()
