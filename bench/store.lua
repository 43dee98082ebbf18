-- keel.store, keel.outbox, keel.idempotent against baselines in the same run:
--   build/keel bench/run.lua store      (make bench builds build/store-baseline)
local keel = require "keel"

local root = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
package.path = root .. "/spec/support/?.lua;" .. package.path
local redis_server = require "redis_server"
local sh = redis_server.sh

local SECONDS = 2
local ROW = string.rep("x", 200)

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".db"
end

local function rm(path) os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm") end

local function baseline(sync, batch)
  local bin = root .. "/build/store-baseline"
  local f = io.open(bin)
  if not f then return nil end
  f:close()
  local p = tmpdb()
  local v = tonumber(sh(string.format("%s %s %s %g %d", bin, p, sync, SECONDS, batch)))
  rm(p)
  return v
end

-- 50 tasks, each: one transaction inserting a ~200-byte row and updating one row.
local function group_commit(sync, checkpoint)
  local p = tmpdb()
  local db = assert(keel.store.open(p, { sync = sync, checkpoint = checkpoint }))
  db:exec("create table t(id integer primary key, v text); create table u(id integer primary key, n integer);"
    .. "insert into u values (1, 0)")
  local stop = false
  local n = 0
  local function worker()
    while not stop do
      db:tx(function(tx)
        tx:exec("insert into t(v) values (?)", ROW)
        tx:exec("update u set n = n + 1 where id = 1")
      end)
      n = n + 1
    end
  end
  local ts = {}
  for i = 1, 50 do ts[i] = keel.spawn(worker) end
  local t0 = keel.now()
  keel.sleep(SECONDS * 1000)
  stop = true
  for i = 1, 50 do ts[i]:join() end
  local dt = (keel.now() - t0) / 1000
  local st = db:stats()
  db:close()
  rm(p)
  return n / dt, st
end

return function(report)
  for _, sync in ipairs { "full", "normal" } do
    local rate, st = group_commit(sync)
    local one = baseline(sync, 1)
    local batched = baseline(sync, 100)
    report { label = "store tx/s, 50 tasks, group commit, sync=" .. sync, value = rate, unit = "tx/s",
             baseline = one, baseline_label = "C, one tx each", target = sync == "full" and ">= 10x" or nil }
    report { label = "  same, against C batching 100 per tx", value = rate, unit = "tx/s",
             baseline = batched, baseline_label = "C, 100 per tx", target = sync == "full" and ">= 0.70x" or nil }
    report { label = "  avg group size, sync=" .. sync, value = st.avg_group, unit = "tx" }
    report { label = "  loop blocked per group commit p50, sync=" .. sync, value = st.commit_ms_p50, unit = "ms" }
    report { label = "  loop blocked per group commit p99, sync=" .. sync, value = st.commit_ms_p99, unit = "ms",
             target = sync == "normal" and "<= 2 ms" or nil }
    report { label = "  loop blocked per group commit max, sync=" .. sync, value = st.commit_ms_max, unit = "ms" }
  end

  -- the same with SQLite's own checkpoints, run inside COMMIT on the loop
  do
    local rate, st = group_commit("normal", "inline")
    report { label = "store tx/s, sync=normal, inline checkpoints", value = rate, unit = "tx/s" }
    report { label = "  loop blocked per group commit p99, inline", value = st.commit_ms_p99, unit = "ms" }
    report { label = "  loop blocked per group commit max, inline", value = st.commit_ms_max, unit = "ms" }
  end

  -- idempotent handle overhead: the same write with and without ic:handle
  do
    local db = assert(keel.store.open(":memory:"))
    db:exec("create table a(id text primary key, v)")
    local ic = keel.idempotent { store = db }
    local N = 20000
    local function run(fn)
      local t0 = keel.now()
      local ts = {}
      for w = 1, 50 do
        ts[w] = keel.spawn(function()
          for i = w, N, 50 do fn(i) end
        end)
      end
      for w = 1, 50 do ts[w]:join() end
      return (keel.now() - t0) * 1e3 / N
    end
    local plain = run(function(i)
      db:tx(function(tx) tx:exec("insert into a(id, v) values (?, ?)", "p" .. i, i) end)
    end)
    local handled = run(function(i)
      ic:handle("m" .. i, function(tx) tx:exec("insert into a(id, v) values (?, ?)", "h" .. i, i) return i end)
    end)
    report { label = "idempotent handle, per message (:memory:)", value = handled, unit = "us",
             baseline = plain, baseline_label = "db:tx alone" }
    report { label = "  overhead per message", value = handled - plain, unit = "us" }
    db:close()
  end

  -- outbox end to end into a Redis queue
  if not redis_server.available then
    print("  redis-server not installed: outbox skipped")
    return
  end
  local server = redis_server.start()
  local ok, err = pcall(function()
    local c = assert(keel.redis.connect(server.url))
    local N = 50000
    local p = tmpdb()
    local db = assert(keel.store.open(p))
    local ob = keel.outbox { store = db }
    local payload = { order = "12345", customer = "c-42", total = 99.5, lines = { "a", "b", "c" } }
    local per_tx = 100
    local ts = {}
    for w = 1, N / per_tx do
      ts[w] = keel.spawn(function()
        db:tx(function(tx)
          for i = 1, per_tx do
            ob:add(tx, { aggregate_type = "order", aggregate_id = (w * per_tx + i) % 500, type = "placed",
                         payload = payload })
          end
        end)
      end)
    end
    for w = 1, #ts do ts[w]:join() end
    local q = keel.queue { redis = c, prefix = "bench:outbox", capacity = 10000000 }
    local t0 = keel.now()
    local relay = ob:relay { to = q, batch = 2000, concurrency = 500, poll_ms = 5, retain_ms = 0 }
    -- (not a count(*) of the table: scanning 50k rows every 5 ms would be the bench)
    while relay:stats().marked < N do keel.sleep(5) end
    local rate = N / ((keel.now() - t0) / 1000)
    relay:stop()
    -- baseline: the same messages pushed straight into the queue from 500 tasks
    local q2 = keel.queue { redis = c, prefix = "bench:plain", capacity = 10000000 }
    local msg = string.format('{"id":"%d","aggregate_type":"order","aggregate_id":"1","type":"placed",'
      .. '"created":0,"headers":null,"payload":%s}', 1, keel.json.encode(payload))
    t0 = keel.now()
    local pushers = {}
    for w = 1, 500 do
      pushers[w] = keel.spawn(function() for _ = w, N, 500 do assert(q2:push(msg)) end end)
    end
    for w = 1, 500 do pushers[w]:join() end
    local plain = N / ((keel.now() - t0) / 1000)
    report { label = "outbox end-to-end into a Redis queue", value = rate, unit = "ev/s", baseline = plain,
             baseline_label = "plain pushes", target = ">= 50k/s" }
    db:close()
    rm(p)
    c:close()
  end)
  server:cleanup()
  if not ok then error(err, 0) end
end
