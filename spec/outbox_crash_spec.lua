-- The crash test of issue 12: a child keel process writes orders with their
-- outbox events, relays them to a Redis queue and applies them through an
-- idempotent consumer (spec/support/outbox_crash_worker.lua). It is
-- SIGKILLed at seeded random moments and restarted; a final run drains.
-- Then the invariants are checked on the database.
local keel = require "keel"
local redis_server = require "redis_server"
local keelproc = require "keelproc"

local SEEDS, KILLS = tonumber(os.getenv("KEEL_CRASH_SEEDS")) or 20, 3
local worker = keelproc.root .. "/spec/support/outbox_crash_worker.lua"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- A small LCG of our own: the kill moments depend on the seed only.
local function lcg(seed)
  local x = seed * 2654435761 % 4294967296
  return function(lo, hi)
    x = (x * 1103515245 + 12345) % 2147483648
    return lo + x % (hi - lo + 1)
  end
end

local function start(path, url, mode, log)
  return tonumber(sh(string.format("%s %s %s %s %s >%s 2>&1 & echo $!", keelproc.quote(keelproc.bin),
    keelproc.quote(worker), keelproc.quote(path), keelproc.quote(url), mode, log)))
end

local function wait_for(pred, ms)
  local deadline = keel.now() + ms
  while keel.now() < deadline do
    if pred() then return true end
    keel.sleep(5)
  end
  return false
end

local function gone(pid)
  local st = os.execute(string.format("[ -e /proc/%d ] && ! grep -q ') Z' /proc/%d/stat", pid, pid))
  return st ~= 0 and st ~= true -- LuaJIT returns the status, Lua 5.2+ true
end

local function check_invariants(path)
  local db = assert(keel.store.open(path))
  local function v(sql) return db:value(sql) end
  local r = {
    orders = v("select count(*) from orders"),
    events = v("select count(*) from outbox"),
    applied = v("select count(*) from applied"),
    marks = v("select count(*) from idempotent"),
    unsent = v("select count(*) from outbox where sent is not null") - v("select count(*) from outbox"),
    -- every committed order has exactly one event, and every event its order
    orders_without_one_event = v([[select count(*) from orders o where (select count(*) from outbox e
      where json_extract(e.payload, '$.order') = cast(o.id as text)) <> 1]]),
    events_without_order = v([[select count(*) from outbox e where not exists (select 1 from orders o
      where cast(o.id as text) = json_extract(e.payload, '$.order'))]]),
    -- every event applied exactly once (applied.event_id is unique)
    events_not_applied = v([[select count(*) from outbox e where not exists
      (select 1 from applied a where a.event_id = cast(e.id as text))]]),
    applied_without_event = v([[select count(*) from applied a where not exists
      (select 1 from outbox e where cast(e.id as text) = a.event_id)]]),
    -- per-aggregate order: the k-th event applied for an aggregate has seq k
    out_of_order = v([[select count(*) from applied a where seq <>
      (select count(*) from applied b where b.agg = a.agg and b.n <= a.n)]]),
    -- no gap and no phantom in the business rows (a write is all or nothing)
    seq_gaps = v("select count(*) from (select agg from orders group by agg having count(*) <> max(seq))"),
  }
  db:close()
  return r
end

describe("outbox + idempotent consumer under SIGKILL", function()
  if not redis_server.available then
    it("needs redis-server", function() pending("redis-server not installed") end)
    return
  end
  local server
  setup(function() server = redis_server.start() end)
  teardown(function() server:cleanup() end)

  for seed = 1, SEEDS do
    it("seed " .. seed .. ": every invariant holds after " .. KILLS .. " kills and a drain", function()
      server:cli("FLUSHALL")
      local rand = lcg(seed)
      local base = os.tmpname()
      local path, log = base .. ".db", base .. ".log"
      local acknowledged = {}
      for _ = 1, KILLS do
        local pid = start(path, server.url, "run", log)
        assert.is_true(wait_for(function() return slurp(log):find("started") ~= nil end, 10000),
          "worker did not start: " .. slurp(log))
        keel.sleep(rand(10, 250))
        os.execute("kill -9 " .. pid)
        assert.is_true(wait_for(function() return gone(pid) end, 5000))
        for id in slurp(log):gmatch("committed (%d+)") do acknowledged[#acknowledged + 1] = tonumber(id) end
      end
      local pid = start(path, server.url, "drain", log)
      assert.is_true(wait_for(function() return gone(pid) end, 20000), "drain did not end")
      local out = slurp(log)
      assert.matches("drained %d+", out)
      local r = check_invariants(path)
      -- every commit the worker was told about survived its kill
      local db = assert(keel.store.open(path))
      local lost = 0
      for _, id in ipairs(acknowledged) do
        if not db:value("select id from orders where id = ?", id) then lost = lost + 1 end
      end
      db:close()
      os.remove(base); os.remove(log)
      os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
      assert.is_true(#acknowledged > 0)
      assert.equal(0, lost)
      assert.is_true(r.orders > 0)
      assert.equal(r.orders, r.events)
      assert.equal(r.events, r.applied)
      assert.equal(r.applied, r.marks)
      assert.same({ 0, 0, 0, 0, 0, 0, 0 }, { r.unsent, r.orders_without_one_event, r.events_without_order,
        r.events_not_applied, r.applied_without_event, r.out_of_order, r.seq_gaps })
    end)
  end
end)
