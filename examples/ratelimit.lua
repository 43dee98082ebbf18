-- Rate limiting an API client to 5 requests per second with a burst of 2:
-- take() answers at once (with how long to wait when limited); wait() parks
-- the task until its turn, in arrival order.
--
--   build/keel examples/ratelimit.lua    (virtual time: instant, same output every run)
local keel = require "keel"

keel.sim({ seed = 1 }, function()
  local rl = keel.ratelimit { rate = 5, per_ms = 1000, burst = 2 }

  print("take() four times at once:")
  for i = 1, 4 do
    local ok, code, retry_after = rl:take()
    print(string.format("  #%d %s", i, ok and "allowed" or (code .. ", retry after " .. retry_after .. " ms")))
  end

  print("three tasks call wait():")
  local tasks = {}
  for i = 1, 3 do
    tasks[i] = keel.spawn(function()
      rl:wait()
      print(string.format("  task %d goes at t=%d ms", i, keel.now()))
    end)
  end
  for _, t in ipairs(tasks) do t:join() end

  print("per-user limits with keyed = true:")
  local per_user = keel.ratelimit { keyed = true, rate = 1, per_ms = 1000, burst = 1, max_keys = 10000 }
  for _, user in ipairs({ "ann", "bob", "ann", "bob", "cy" }) do
    print(string.format("  %-3s -> %s", user, per_user:take(user) and "allowed" or "limited"))
  end
end)
