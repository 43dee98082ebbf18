-- A circuit breaker in front of a dependency that fails for a while: the
-- breaker opens once half the recent calls fail, refuses calls while open,
-- lets 2 probe calls through after open_ms and closes when they succeed.
--
--   build/keel examples/breaker.lua      (virtual time: instant, same output every run)
local keel = require "keel"

keel.sim({ seed = 1 }, function()
  local healthy = true
  local function dependency()
    keel.sleep(10)
    if not healthy then error("dependency down", 0) end
    return "ok"
  end

  local b = keel.breaker { size = 10, min_calls = 4, failure_rate = 50, open_ms = 500, half_open_calls = 2 }
  b:on_state(function(from, to)
    print(string.format("[t=%4dms] state %s -> %s", keel.now(), from, to))
  end)

  for i = 1, 40 do
    if i == 5 then healthy = false; print(string.format("[t=%4dms] dependency goes down", keel.now())) end
    if i == 20 then healthy = true; print(string.format("[t=%4dms] dependency is back", keel.now())) end
    local ok, r, code = pcall(b.call, b, dependency)
    local what = (ok and r) and "ok" or (ok and code) or ("error: " .. tostring(r))
    if i % 4 == 0 or not (ok and r) then
      print(string.format("[t=%4dms] call %2d: %s", keel.now(), i, what))
    end
    keel.sleep(40)
  end
  local s = b:stats()
  print(string.format("calls made %d, failed %d, refused while open %d", s.calls, s.failures, s.rejected))
end)
