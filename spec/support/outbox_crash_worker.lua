-- The child of spec/outbox_crash_spec.lua: orders written with their events,
-- a relay to a Redis queue, an idempotent consumer applying them; killed at
-- any moment by the parent. Args: db path, redis url, mode ("run" | "drain").
--   run:   write orders for ever (until SIGKILL)
--   drain: write nothing; exit 0 once every event is applied
local keel = require "keel"
local path, url, mode = ...

local db = assert(keel.store.open(path, { sync = "normal" }))
db:migrate {
  [[create table orders(id integer primary key, agg text not null, seq integer not null, unique(agg, seq));
    create table applied(n integer primary key autoincrement, event_id text not null unique,
                         agg text not null, seq integer not null, order_id text not null);
    create table heads(agg text primary key, seq integer not null)]],
}
local ob = keel.outbox { store = db }
local redis = assert(keel.redis.connect(url))
local q = keel.queue { redis = redis, prefix = "crash", visibility_ms = 300, max_attempts = 100000, prefetch = 8 }
local ic = keel.idempotent { store = db }

-- A stable owner: the restarted relay takes back the lease its killed
-- predecessor held, instead of waiting for it to expire.
ob:relay { to = q, poll_ms = 20, batch = 50, concurrency = 8, owner = "crash-relay", lease_ms = 2000 }

local AGGS = 5

local function writer(w)
  while true do
    local id = db:tx(function(tx)
      local agg = "a" .. keel.random(1, AGGS)
      local seq = (tx:value("select max(seq) from orders where agg = ?", agg) or 0) + 1
      local _, id = tx:exec("insert into orders(agg, seq) values (?, ?)", agg, seq)
      ob:add(tx, { aggregate_type = "agg", aggregate_id = agg, type = "order",
                   payload = { order = tostring(id), seq = seq, writer = w } })
      return id
    end)
    -- db:tx returned: the order is durable (against a kill at sync = "normal")
    io.stdout:write("committed ", id, "\n")
    io.stdout:flush()
    keel.sleep(keel.random(0, 3))
  end
end

local function consumer()
  while true do
    local m = q:pop { wait_ms = 200 }
    if m then
      local e = keel.json.decode(m.item)
      local ok, err = pcall(ic.handle, ic, e.id, function(tx)
        local head = tx:value("select seq from heads where agg = ?", e.aggregate_id) or 0
        -- Applying out of order would break the aggregate; wait for the gap
        -- to be filled by the redelivery of the missing event.
        if e.payload.seq ~= head + 1 then error("gap", 0) end
        tx:exec("insert into applied(event_id, agg, seq, order_id) values (?, ?, ?, ?)",
          e.id, e.aggregate_id, e.payload.seq, e.payload.order)
        tx:exec("insert or replace into heads(agg, seq) values (?, ?)", e.aggregate_id, e.payload.seq)
        return e.payload.seq
      end)
      if ok then q:ack(m) else q:nack(m, { delay_ms = 20, error = tostring(err) }) end
    end
  end
end

for _ = 1, 4 do keel.spawn(consumer) end
if mode == "run" then
  for w = 1, 3 do keel.spawn(writer, w) end
  print("started")
  io.stdout:flush()
else
  local deadline = keel.now() + 15000
  while keel.now() < deadline do
    local events = db:value("select count(*) from outbox")
    local applied = db:value("select count(*) from applied")
    local unsent = db:value("select count(*) from outbox where sent is null")
    if applied == events and unsent == 0 then
      print(string.format("drained %d", events))
      keel.exit(0)
    end
    keel.sleep(20)
  end
  print("drain timed out")
  keel.exit(3)
end
