-- A work queue shared by two worker processes through Redis Streams: urgent
-- jobs overtake normal ones, a job pushed twice under one dedup key is
-- queued once, and a job that keeps failing ends up in the dead-letter
-- stream instead of looping for ever.
--   build/keel examples/redis_queue.lua     (starts its own redis-server)
local keel = require "keel"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local support = require "redis_support"

local function queue(r)
  return keel.queue { redis = r, prefix = "example:jobs", priorities = { 10 }, max_attempts = 2,
                      visibility_ms = 2000, prefetch = 1 } -- one at a time: strict priority order
end

local function worker(name, url)
  io.stdout:setvbuf("line") -- lines in the order they happen, across both workers
  local r = assert(keel.redis.connect(url))
  local q = queue(r)
  while true do
    local msg = q:pop { wait_ms = 500 }
    if not msg then break end -- nothing for half a second: the work is done
    if msg.item == "corrupt-invoice" then
      q:nack(msg, { error = "cannot parse" })
    else
      print(string.format("%s did %-16s (priority %d)", name, msg.item, msg.priority))
      q:ack(msg)
    end
    keel.sleep(20) -- the "work"
  end
  q:close()
  r:close()
end

if arg[1] == "worker" then
  worker(arg[2], arg[3])
  return
end

local url, stop = support.server()
local r = assert(keel.redis.connect(url))
local q = queue(r)
for i = 1, 4 do assert(q:push("report-" .. i)) end
assert(q:push("corrupt-invoice"))
assert(q:push("refund-42", { priority = 10, dedup_key = "refund-42" }))
print("pushing refund-42 again:", q:push("refund-42", { priority = 10, dedup_key = "refund-42" }))
io.write(support.run_workers(arg[0], { "worker-A", "worker-B" }, url))
for _, d in ipairs(q:dead()) do
  print(string.format("dead letter: %s after %d attempts (%s)", d.item, d.attempts, d.error))
end
local info = q:info()
print(string.format("left: %d ready, %d pending, %d dead", info.ready, info.pending, info.dead))
q:close()
r:close()
stop()
