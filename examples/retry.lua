-- keel.retry with exponential backoff and jitter: a call that fails twice and
-- then succeeds, the delays each jitter mode would use, and a retry budget
-- stopping retries when everything fails.
--
--   build/keel examples/retry.lua        (virtual time: instant, same output every run)
local keel = require "keel"

keel.sim({ seed = 1 }, function()
  local t0 = keel.now()
  local result = keel.retry(function(attempt)
    print(string.format("  attempt %d at t=%d ms", attempt, keel.now() - t0))
    if attempt < 3 then error("timeout talking to db", 0) end
    return "row 42"
  end, { backoff = { base_ms = 100, cap_ms = 2000, jitter = "equal" }, attempts = 5 })
  print("result: " .. result)

  print("delays per jitter mode (base 100 ms, factor 2, cap 2000 ms):")
  for _, jitter in ipairs({ "none", "full", "equal", "decorrelated" }) do
    local b = keel.backoff { base_ms = 100, cap_ms = 2000, jitter = jitter, max_attempts = 7 }
    local ds = {}
    for d in b:delays() do ds[#ds + 1] = string.format("%4d", d) end
    print(string.format("  %-12s %s", jitter, table.concat(ds, " ")))
  end

  print("an outage, with a retry budget (10% of calls, no floor):")
  local budget = keel.retry_budget { ratio = 0.1, min_per_s = 0 }
  local tries = 0
  for _ = 1, 50 do
    keel.retry(function() tries = tries + 1; error("down", 0) end,
               { budget = budget, attempts = 4, backoff = { base_ms = 1 } })
  end
  print(string.format("  50 calls made %d attempts (without a budget: 200)", tries))
end)
