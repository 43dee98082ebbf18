-- Serve until SIGTERM: the whole program. The shutdown handler is a way to
-- wake the run, so the main task may simply wait for ever.
--   build/keel examples/serve.lua     (then Ctrl-C, or kill -TERM <pid>)
local keel = require "keel"

local jobs = keel.channel(16)

keel.spawn(function() -- the service: handles jobs until the channel closes
  for job in function() return jobs:recv() end do print("handled " .. job) end
  print("worker drained")
end)

keel.on_shutdown(function()
  jobs:close() -- no new jobs; the worker finishes what is queued
end)

jobs:send("first job")
print("ready")
io.stdout:flush()
keel.sleep(math.huge) -- until SIGINT/SIGTERM
