-- keel.counter: count events from many tasks (and, through the C API, from
-- host threads) without locks.
local keel = require "keel"

local requests = keel.counter { name = "requests", shards = 4 }

local workers = {}
for w = 1, 4 do
  workers[w] = keel.spawn(function()
    for _ = 1, 250 do
      requests:add()
      keel.sleep(0) -- let the other workers interleave
    end
  end)
end
for _, t in ipairs(workers) do t:join() end

print("requests served:", requests:value())         -- 1000
requests:add(-10)
print("after a correction of -10:", requests:value()) -- 990
print("reset returned", requests:reset(), "and the counter is now", requests:value())
print("metrics:", keel.metrics("prometheus"):match("\nkeel_counter_value{[^\n]*"):sub(2))
