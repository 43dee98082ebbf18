-- A flaky dependency behind the three resilience patterns together:
--   bulkhead: at most 4 calls in flight (2 more may wait 50 ms), so a slow
--             dependency cannot tie up every task;
--   retry:    transient errors retried with full-jitter backoff, within a
--             retry budget so retries cannot multiply load during an outage;
--   breaker:  once half the recent calls fail, stop calling for a while and
--             fail fast, then probe with a few calls before closing again.
--
--   build/keel examples/resilient_call.lua
--
-- The dependency works, then goes down from t=2s to t=6s, then recovers.
-- Runs in virtual time (keel.sim), so it finishes at once and prints the same
-- story every run.
local keel = require "keel"

local function log(fmt, ...)
  print(string.format("[t=%5dms] " .. fmt, keel.now(), ...))
end

keel.sim({ seed = 7 }, function()
  -- The "remote service": 20-40 ms per call, 5% transient errors when up,
  -- every call fails (after a 100 ms hang) while it is down.
  local function remote(req)
    local t = keel.now()
    if t >= 2000 and t < 6000 then
      keel.sleep(100)
      error("connection refused", 0)
    end
    keel.sleep(keel.random(20, 40))
    if keel.random() < 0.05 then error("503 transient", 0) end
    return "reply to " .. req
  end

  local breaker = keel.breaker {
    name = "inventory", window = "count", size = 20, min_calls = 10, failure_rate = 50,
    open_ms = { base_ms = 1000, cap_ms = 2000, factor = 2 }, -- each reopening waits longer
    half_open_calls = 3,
  }
  breaker:on_state(function(from, to) log("breaker %s -> %s", from, to) end)
  local bulkhead = keel.bulkhead { name = "inventory", max = 4, queue = 2, wait_ms = 50 }
  local budget = keel.retry_budget { ratio = 0.2, min_per_s = 2 }
  local backoff = keel.backoff { base_ms = 20, cap_ms = 200, jitter = "full" }

  -- The "open" refusal must not be retried: the breaker is saying "don't".
  local OPEN = {}
  local function call(req)
    return keel.retry(function()
      local r, code = bulkhead:run(function()
        local v, why = breaker:call(remote, req)
        if v == nil and why == "open" then error(OPEN, 0) end
        return v
      end)
      if r == nil then error("bulkhead " .. code, 0) end -- full / timeout: retryable
      return r
    end, {
      backoff = backoff, attempts = 3, budget = budget,
      retry_on = function(err) return err ~= OPEN end,
    })
  end

  local outcomes = {}
  local function count(what) outcomes[what] = (outcomes[what] or 0) + 1 end

  -- 8 clients, each sending a request every 50 ms for 10 s.
  local clients = {}
  for c = 1, 8 do
    clients[c] = keel.spawn(function()
      for i = 1, 200 do
        local ok, r, code = pcall(call, ("c%d-%d"):format(c, i))
        if ok and r then count("ok")
        elseif ok then count("gave up: retry " .. tostring(code))
        elseif r == OPEN then count("failed fast: breaker open")
        else count("failed: " .. tostring(r)) end
        keel.sleep(50)
      end
    end)
  end
  for _, t in ipairs(clients) do t:join() end

  print()
  print("outcomes after 10 s (1600 requests):")
  local keys = {}
  for k in pairs(outcomes) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do print(string.format("  %-32s %5d", k, outcomes[k])) end
  local bs, rs = breaker:stats(), budget:stats()
  print(string.format("breaker: %d calls reached the service, %d rejected while open, opened %d times",
    bs.calls, bs.rejected, bs.opened))
  print(string.format("retry budget: %d retries granted, %d refused", rs.retries, rs.rejected))
  print(string.format("bulkhead: %d rejected (full), %d timed out waiting",
    bulkhead:stats().rejected, bulkhead:stats().timeouts))
end)
