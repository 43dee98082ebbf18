-- The Transactional Outbox and the Idempotent Consumer, end to end:
-- orders are written with their events in one transaction, a relay
-- publishes the events to a Redis stream (a keel.queue), and a consumer
-- applies them to a ledger exactly once.
--
--   build/keel examples/outbox.lua [db-path]
--
-- Kill it at any moment (kill -9) and run it again with the same db-path
-- and the same Redis (KEEL_REDIS_URL; a throwaway server is started when it
-- is unset, and that one does not survive the run): committed orders are
-- published (again, if the mark was lost) and applied once; the ledger
-- never counts an order twice.
local keel = require "keel"
local root = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "examples"
package.path = root .. "/?.lua;" .. package.path
local support = require "redis_support"

local path = arg and arg[1] or "/tmp/keel-outbox-example.db"
local url, stop_server = support.server()
local client = assert(keel.redis.connect(url))

local db = assert(keel.store.open(path))
db:migrate {
  "create table orders(id integer primary key, customer text not null, total integer not null)",
  "create table ledger(customer text primary key, total integer not null, orders integer not null)",
}
local ob = keel.outbox { store = db }
local ic = keel.idempotent { store = db }
local q = keel.queue { redis = client, prefix = "example:orders", visibility_ms = 2000 }

-- Business write and event in one transaction: both or neither.
local function place_order(customer, total)
  return db:tx(function(tx)
    local _, id = tx:exec("insert into orders(customer, total) values (?, ?)", customer, total)
    ob:add(tx, { aggregate_type = "customer", aggregate_id = customer, type = "order_placed",
                 payload = { order = tostring(id), customer = customer, total = total } })
    return id
  end)
end

-- Applies one event; a duplicate delivery replays the first result.
local function apply(evt)
  return ic:handle(evt.id, function(tx)
    tx:exec([[insert into ledger(customer, total, orders) values (?, ?, 1)
              on conflict(customer) do update set total = total + excluded.total, orders = orders + 1]],
      evt.payload.customer, evt.payload.total)
    return { order = evt.payload.order }
  end)
end

local relay = ob:relay { to = q, poll_ms = 100 }

local customers = { "ada", "grace", "linus" }
for i = 1, 9 do
  local id = place_order(customers[i % 3 + 1], i * 10)
  print(string.format("placed order %d for %s (%d)", id, customers[i % 3 + 1], i * 10))
end

-- Consume until every committed event has been applied.
local want = db:value("select count(*) from orders")
while db:value("select count(*) from idempotent") < want do
  local m = q:pop { wait_ms = 1000 }
  if m then
    local evt = keel.json.decode(m.item)
    local r, dup = apply(evt)
    print(string.format("%s event %s (order %s)", dup and "duplicate" or "applied", evt.id, r.order))
    q:ack(m)
  end
end

for _, row in ipairs(db:query("select customer, total, orders from ledger order by customer")) do
  print(string.format("ledger: %s total %d over %d orders", row.customer, row.total, row.orders))
end
local st = relay:stats()
print(string.format("published %d events, %d orders in the store, %d applied", st.published, want,
  db:value("select count(*) from idempotent")))
relay:stop()
db:close()
client:close()
stop_server()
