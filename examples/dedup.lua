-- keel.dedup: an idempotent consumer. Messages may be delivered more than
-- once; each one is processed exactly once while it is remembered.
local keel = require "keel"

keel.sim({ seed = 1 }, function() -- virtual time: the ten minutes pass instantly
  local seen = keel.dedup { ttl_ms = 10 * 60 * 1000, max = 100000, name = "orders" }

  local deliveries = { "order-1", "order-2", "order-1", "order-3", "order-2", "order-1" }
  local processed = 0
  for _, id in ipairs(deliveries) do
    if seen:seen(id) then
      print(id, "duplicate, skipped")
    else
      processed = processed + 1
      print(id, "processed")
    end
  end
  print(("%d deliveries, %d processed, %d remembered"):format(#deliveries, processed, seen:size()))

  keel.sleep(10 * 60 * 1000) -- ten minutes later every id is forgotten
  print("after the ttl, order-1 is new again:", not seen:seen("order-1"))
  local s = seen:stats()
  print(("stats: marks=%d hits=%d expirations=%d"):format(s.marks, s.hits, s.expirations))
end)
