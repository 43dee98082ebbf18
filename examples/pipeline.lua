-- A producer/consumer pipeline with a deadline.
--
-- One producer emits 40 orders into a bounded channel (backpressure: it waits
-- when 8 are queued). Three workers take orders and "charge" them, each charge
-- taking 10-60 ms. A progress reporter ticks every 100 ms. The whole run has a
-- 400 ms deadline: whatever is not done by then is cancelled, and the summary
-- says what finished and what was cut off.
--
--   build/keel examples/pipeline.lua          real time
--   build/keel --sim 42 examples/pipeline.lua virtual time: instant, same output every run
local keel = require "keel"

local ORDERS, WORKERS, DEADLINE_MS = 40, 3, 400
local orders = keel.channel(8)
local charged, by_worker = 0, {}
local started = keel.now()

local function ms() return string.format("%4.0f ms", keel.now() - started) end

local function producer()
  for id = 1, ORDERS do
    orders:send({ id = id, amount = keel.random(5, 500) })
  end
  orders:close() -- workers drain what is queued, then stop
  print(ms() .. "  producer: all " .. ORDERS .. " orders queued")
end

local function worker(name)
  by_worker[name] = 0
  while true do
    local order = orders:recv()
    if not order then return end -- channel closed and drained
    keel.sleep(keel.random(10, 60)) -- the charge call
    charged = charged + 1
    by_worker[name] = by_worker[name] + 1
  end
end

local finished = false
local progress = keel.every(100, function()
  if finished then return end
  print(string.format("%s  progress: %d/%d charged, %d waiting in the channel", ms(), charged, ORDERS, #orders))
end)

local ok = keel.timeout(DEADLINE_MS, function()
  local tasks = { keel.spawn(producer) }
  for w = 1, WORKERS do tasks[#tasks + 1] = keel.spawn(worker, "worker-" .. w) end
  -- Cancel the crew if the deadline cancels us.
  keel.defer(function() for _, t in ipairs(tasks) do t:cancel() end end)
  for _, t in ipairs(tasks) do assert(t:join()) end
end)
finished = true
progress:stop()

print(string.rep("-", 60))
print(ok and "finished before the deadline" or ("deadline of " .. DEADLINE_MS .. " ms hit: the rest was cancelled"))
for w = 1, WORKERS do
  local name = "worker-" .. w
  print(string.format("  %s charged %d orders", name, by_worker[name] or 0))
end
print(string.format("  %d of %d orders charged in %s", charged, ORDERS, ms()))
