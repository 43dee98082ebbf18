-- keel.queue micro-benchmarks: ns per message through the Lua API, beside
-- the same work done on a plain LuaJIT table queue (ring buffer + in-flight
-- map). Returns function(report); run standalone with
--   build/keel bench/prims_c.lua
local keel = require "keel"

local N = 1000000

-- Found beside this file, whether run through bench/run.lua or alone.
local measure = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench") .. "/timing.lua").ns_per_op

-- Baseline: FIFO ring + in-flight table, with the same message table per pop.
local function table_queue()
  local items, head, tail = {}, 1, 0
  local inflight, next_id = {}, 0
  local self = {}
  function self.push(item)
    tail = tail + 1
    items[tail] = item
  end
  function self.pop()
    if head > tail then return nil end
    local item = items[head]
    items[head] = nil
    head = head + 1
    next_id = next_id + 1
    inflight[next_id] = item
    return { id = next_id, item = item, attempt = 1 }
  end
  function self.ack(m)
    if inflight[m.id] == nil then return nil end
    inflight[m.id] = nil
    return true
  end
  return self
end

-- Baseline with priorities: binary heap of {prio, seq, item}.
local function table_pqueue()
  local heap, n, seq = {}, 0, 0
  local self = {}
  local function before(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] < b[2]) end
  function self.push(item, prio)
    seq = seq + 1
    n = n + 1
    local e, i = { prio, seq, item }, n
    while i > 1 do
      local p = math.floor(i / 2)
      if not before(e, heap[p]) then break end
      heap[i] = heap[p]
      i = p
    end
    heap[i] = e
  end
  function self.pop()
    if n == 0 then return nil end
    local top, last = heap[1], heap[n]
    heap[n] = nil
    n = n - 1
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n and before(heap[c + 1], heap[c]) then c = c + 1 end
      if not before(heap[c], last) then break end
      heap[i] = heap[c]
      i = c
    end
    if n > 0 then heap[i] = last end
    return top[3]
  end
  return self
end

-- A worker pool: one producer task, 4 consumer tasks parked in pop with
-- wait_ms, so every message goes through hand-off and a task switch.
-- make() returns put(x), get() -> job or nil to stop, done(job).
local function pool_run(n, make)
  local put, get, done = make()
  local workers = {}
  for w = 1, 4 do
    workers[w] = keel.spawn(function()
      while true do
        local job = get()
        if job == nil then return end
        done(job)
      end
    end)
  end
  for i = 1, n do
    put(i)
    if i % 256 == 0 then keel.sleep(0) end -- let the consumers run
  end
  for _ = 1, 4 do put(false) end
  for w = 1, 4 do workers[w]:join() end
end

local function pool_bench(report)
  local M = 200000
  local WAIT = { wait_ms = math.huge }
  local v = measure(M, function(n)
    pool_run(n, function()
      local q = keel.queue { capacity = 100000 }
      return function(x) q:push(x) end,
        function()
          local m = q:pop(WAIT)
          if m.item == false then q:ack(m) return nil end
          return m
        end,
        function(m) q:ack(m) end
    end)
  end)
  local base = measure(M, function(n)
    pool_run(n, function()
      local ch = keel.channel(100000)
      return function(x) ch:send(x) end,
        function() local x = ch:recv() if x == false then return nil end return x end,
        function() end
    end)
  end)
  report { label = "queue jobs via 4 waiting worker tasks", value = v, unit = "ns/job", baseline = base,
           baseline_label = "keel.channel (no ack)", target = "<= 1000 ns" }
end

local function run(report)
  keel.sim({ seed = 1 }, function() end) -- loads the scheduler paths once
  local label = "queue push+pop+ack (1 in flight)"
  local q = keel.queue { capacity = 100000 }
  local v = measure(N, function(n)
    for i = 1, n do
      q:push(i)
      q:ack(q:pop())
    end
  end)
  local b = table_queue()
  local base = measure(N, function(n)
    for i = 1, n do
      b.push(i)
      b.ack(b.pop())
    end
  end)
  report { label = label, value = v, unit = "ns/op", baseline = base,
           baseline_label = "LuaJIT table FIFO", target = "<= 150 ns" }

  local K = 1000
  v = measure(N, function(n)
    for _ = 1, n / K do
      for i = 1, K do q:push(i) end
      for _ = 1, K do q:ack(q:pop()) end
    end
  end)
  base = measure(N, function(n)
    for _ = 1, n / K do
      for i = 1, K do b.push(i) end
      for _ = 1, K do b.ack(b.pop()) end
    end
  end)
  report { label = "queue push+pop+ack (batches of 1000)", value = v, unit = "ns/op",
           baseline = base, baseline_label = "LuaJIT table FIFO", target = "<= 150 ns" }

  -- 10000 queued at 8 priority levels: the heaps' log n shows here.
  local D = 10000
  local pq = keel.queue { capacity = D + 1 }
  local p = table_pqueue()
  for i = 1, D do pq:push(i, { priority = i % 8 }); p.push(i, i % 8) end
  local popts = {}
  for i = 0, 7 do popts[i] = { priority = i } end
  v = measure(N, function(n)
    for i = 1, n do
      pq:push(i, popts[i % 8])
      pq:ack(pq:pop())
    end
  end)
  base = measure(N, function(n)
    for i = 1, n do
      p.push(i, i % 8)
      p.pop()
    end
  end)
  report { label = "queue push(priority)+pop+ack at depth 10000", value = v, unit = "ns/op",
           baseline = base, baseline_label = "LuaJIT binary heap", target = "<= 300 ns" }
  pool_bench(report)
end

-- Standalone: build/keel bench/prims_c.lua
if type(arg) == "table" and type(arg[0]) == "string" and arg[0]:match("prims_c%.lua$") then
  run(function(r)
    print(string.format("%-46s %8.1f %s  (%s: %.1f; target %s)",
      r.label, r.value, r.unit, r.baseline_label, r.baseline, r.target))
  end)
end

return run
