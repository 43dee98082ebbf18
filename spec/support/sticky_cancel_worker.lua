-- A worker that swallows every error around its waits; SIGTERM's shutdown
-- handler cancels it and joins it (spec/sched_wakeup_spec.lua).
local keel = require "keel"
local swallowed = 0
local worker = keel.spawn(function()
  keel.defer(function()
    io.write("worker cancelled after ", swallowed, " swallowed;worker cleanup ran;") io.stdout:flush()
  end)
  while swallowed < 1e9 do
    if not pcall(keel.sleep, 20) then swallowed = swallowed + 1 end
  end
end)
keel.on_shutdown(function()
  worker:cancel()
  worker:join()
end, { deadline_ms = 3000 })
io.write("ready;") io.stdout:flush()
keel.sleep(60000)
