-- Takes one message and then hangs, to be SIGKILLed mid-message:
--   keel redis_queue_worker.lua <url> <prefix> <visibility_ms> <outfile>
local keel = require "keel"
local url, prefix, vis, outfile = arg[1], arg[2], tonumber(arg[3]), arg[4]
local c = assert(keel.redis.connect(url))
local q = require("keel.redis.queue").new { redis = c, prefix = prefix, visibility_ms = vis, prefetch = 1 }
local msg = assert(q:pop { wait_ms = 10000 })
local out = assert(io.open(outfile, "w"))
out:write(string.format("GOT %s %s %d\n", msg.id, msg.item, msg.attempt))
out:close()
keel.sleep(1e9)
