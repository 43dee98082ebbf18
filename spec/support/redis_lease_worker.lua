-- One contender in the multi-process lease spec:
--   keel redis_lease_worker.lua <url> <worker-id> <rounds> <outfile>
-- Each round: acquire the lease, then write through a fenced store (a Redis
-- script that accepts a write only with a token >= the highest it has seen).
-- Every 5th round the holder stalls past its TTL before writing, like a
-- paused process; the store must then refuse it and valid() must say false.
local keel = require "keel"
local url, me, rounds, outfile = arg[1], arg[2], tonumber(arg[3]), arg[4]
local out = assert(io.open(outfile, "w"))
out:setvbuf("line")

local c = assert(keel.redis.connect(url))
local leases = require("keel.redis.leases").new { redis = c, ttl_ms = 150, poll_ms = 5 }
local FENCED_WRITE = keel.redis.script [[
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(ARGV[1])
if t < top then return 0 end
redis.call('SET', KEYS[1], t)
redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
return 1
]]

for round = 1, rounds do
  local lease = assert(leases:acquire("shared", me, { wait_ms = 10000 }))
  -- occupancy: more than one non-stalled holder at once is a violation
  local inside = c:call("INCR", "{t}:inside")
  if inside ~= 1 then out:write("VIOLATION inside=", tostring(inside), "\n") end
  local stall = round % 5 == 0
  if stall then
    c:call("DECR", "{t}:inside")
    keel.sleep(250) -- past the 150 ms TTL: someone else takes over
    -- wait (bounded) until a newer holder has written: from then on the
    -- store must refuse us; if nobody comes (the others are done) say so
    local alone = true
    for _ = 1, 300 do
      if tonumber(c:call("GET", "{t}:top") or "0") > lease.token then alone = false break end
      keel.sleep(10)
    end
    local ok = c:eval(FENCED_WRITE, 2, "{t}:top", "{t}:log", lease.token, me)
    local valid = lease:valid()
    out:write(string.format("STALLED token=%d accepted=%d valid=%s alone=%s\n", lease.token, ok,
      tostring(valid), tostring(alone)))
    local rel, err = lease:release()
    out:write(string.format("STALE_RELEASE %s %s\n", tostring(rel), tostring(err)))
  else
    local ok = c:eval(FENCED_WRITE, 2, "{t}:top", "{t}:log", lease.token, me)
    out:write(string.format("WROTE token=%d accepted=%d valid=%s\n", lease.token, ok, tostring(lease:valid())))
    keel.sleep(2)
    c:call("DECR", "{t}:inside")
    assert(lease:release())
  end
end
out:write("DONE\n")
out:close()
c:close()
