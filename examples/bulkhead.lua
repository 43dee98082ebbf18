-- A keyed bulkhead gives every tenant its own compartment: tenant "noisy"
-- floods the service with slow requests, but it can only ever hold 2 slots
-- (plus 2 queued), so tenant "quiet" is still served at once.
--
--   build/keel examples/bulkhead.lua     (virtual time: instant, same output every run)
local keel = require "keel"

keel.sim({ seed = 1 }, function()
  local bh = keel.bulkhead { keyed = true, max = 2, queue = 2, wait_ms = 100, max_keys = 100 }
  local function slow_request() keel.sleep(300) return "done" end

  local results = {}
  local tasks = {}
  for i = 1, 8 do
    tasks[#tasks + 1] = keel.spawn(function()
      local r, code = bh:run("noisy", slow_request)
      results[#results + 1] = string.format("noisy #%d: %s at t=%dms", i, r or code, keel.now())
    end)
  end
  keel.sleep(1)
  local t0 = keel.now()
  local r = bh:run("quiet", function() keel.sleep(5) return "done" end)
  print(string.format("quiet: %s after %d ms while noisy was saturated", r, keel.now() - t0))
  for _, t in ipairs(tasks) do t:join() end
  table.sort(results)
  for _, line in ipairs(results) do print(line) end
  local s = bh:stats()
  print(string.format("acquired %d, rejected (full) %d, timed out %d", s.acquired, s.rejected, s.timeouts))
end)
