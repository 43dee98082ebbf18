-- Counter, leases, dedup: ns/op and bytes per entry, each beside the same
-- semantics written with plain LuaJIT tables.
--   build/keel bench/run.lua prims_a     (through the suite runner)
--   build/keel bench/prims_a.lua         (standalone)
local keel = require "keel"

local clock = os.clock

local function ns_per_op(n, fn)
  collectgarbage()
  local t0 = clock()
  fn(n)
  return (clock() - t0) * 1e9 / n
end

-- Best of a few runs: the first one also pays for trace compilation.
local function best(n, fn, runs)
  local b = math.huge
  for _ = 1, runs or 3 do b = math.min(b, ns_per_op(n, fn)) end
  return b
end

local function lua_kib() return collectgarbage("count") end

local function run(report)
  -- counter add ---------------------------------------------------------------
  local N = 20000000
  local c = keel.counter()
  local v = best(N, function(n) for _ = 1, n do c:add(1) end end)
  local plain = { n = 0 }
  local b = best(N, function(n) for _ = 1, n do plain.n = plain.n + 1 end end)
  report { label = "counter:add", value = v, unit = "ns/op", baseline = b,
    baseline_label = "table field +1 (not thread-safe)", target = "<= 10 ns" }

  -- lease acquire + release ---------------------------------------------------
  local K = 1000
  local keys = {}
  for i = 1, K do keys[i] = "job-" .. i end
  local L = keel.leases { ttl_ms = 10000, max = K }
  N = 2000000
  v = best(N, function(n)
    for i = 1, n do
      local k = keys[i % K + 1]
      local l = L:acquire(k, "w")
      L:release(k, l.token)
    end
  end)
  -- plain version: same checks (held? expired?), fencing tokens, owner
  local held, next_token = {}, 1
  local function lacquire(k, owner, ttl)
    local now = keel.now()
    local e = held[k]
    if e and e.expires > now then return nil, "held" end
    local l = { key = k, owner = owner, token = next_token, expires = now + ttl }
    next_token = next_token + 1
    held[k] = l
    return l
  end
  local function lrelease(k, token)
    local e = held[k]
    if not e or e.token ~= token or e.expires <= keel.now() then return nil, "lost" end
    held[k] = nil
    return true
  end
  b = best(N, function(n)
    for i = 1, n do
      local k = keys[i % K + 1]
      local l = lacquire(k, "w", 10000)
      lrelease(k, l.token)
    end
  end)
  report { label = "leases acquire+release", value = v, unit = "ns/op", baseline = b,
    baseline_label = "plain table leases", target = "<= 150 ns" }

  -- bytes per lease: 100k live leases
  local M = 100000
  local lkeys = {}
  for i = 1, M do lkeys[i] = "lease-key-" .. i end
  local L2 = keel.leases { ttl_ms = 1e9, max = M }
  for i = 1, M do L2:acquire(lkeys[i], "w") end
  v = L2:stats().bytes / M
  collectgarbage()
  local kib0 = lua_kib()
  do
    local plain_held = {}
    for i = 1, M do plain_held[lkeys[i]] = { owner = "w", token = i, expires = 1e9 } end
    collectgarbage()
    b = (lua_kib() - kib0) * 1024 / M
    if plain_held[lkeys[1]] == nil then b = 0 end -- keep it alive until measured
  end
  report { label = "bytes per lease (100k, beyond key)", value = v, unit = "B", baseline = b,
    baseline_label = "plain table of records (" .. #lkeys .. " keys)", target = "<= 128 B" }
  L2 = nil -- luacheck: ignore

  -- dedup over 1M keys ----------------------------------------------------------
  -- The baseline has the same semantics in plain Lua: bounded, LRU, ttl.
  local function plain_dedup(max, ttl)
    local map, n = {}, 0
    local head = {}
    head.prev, head.next = head, head -- sentinel: head.next newest, head.prev oldest
    local function unlink(e) e.prev.next = e.next; e.next.prev = e.prev end
    local function push(e) e.next = head.next; e.prev = head; head.next.prev = e; head.next = e end
    return function(k)
      local now = keel.now()
      local e = map[k]
      if e then
        if e.exp > now then unlink(e); push(e); return true end
        unlink(e); map[k] = nil; n = n - 1
      end
      if n >= max then
        local old = head.prev
        unlink(old); map[old.k] = nil; n = n - 1
      end
      e = { k = k, exp = ttl and now + ttl or math.huge }
      push(e); map[k] = e; n = n + 1
      return false
    end
  end

  M = 1000000
  local dkeys, fresh = {}, {}
  for i = 1, M do dkeys[i] = "msg-" .. i; fresh[i] = "new-" .. i end
  local D = keel.dedup { max = M }
  collectgarbage()
  local t0 = clock()
  for i = 1, M do D:seen(dkeys[i]) end
  local fill = (clock() - t0) * 1e9 / M
  -- lookups in a scattered order, so each one misses the CPU caches like real traffic
  local order = {}
  local r = 1
  for i = 1, M do r = (r * 16807) % 2147483647; order[i] = dkeys[r % M + 1] end
  v = best(M, function(n) for i = 1, n do D:seen(order[i]) end end)

  collectgarbage()
  local kib1 = lua_kib()
  local P = plain_dedup(M)
  t0 = clock()
  for i = 1, M do P(dkeys[i]) end
  local plain_fill = (clock() - t0) * 1e9 / M
  collectgarbage()
  local plain_bytes = (lua_kib() - kib1) * 1024 / M
  b = best(M, function(n) for i = 1, n do P(order[i]) end end)
  report { label = "dedup:seen, hit, 1M keys resident", value = v, unit = "ns/op", baseline = b,
    baseline_label = "plain Lua LRU+ttl set", target = "<= 150 ns" }
  report { label = "dedup:seen, new key, filling to 1M", value = fill, unit = "ns/op", baseline = plain_fill,
    baseline_label = "plain Lua LRU+ttl set", target = "<= 150 ns" }
  v = best(M, function(n) for i = 1, n do D:seen(fresh[i]) end end, 1)
  b = best(M, function(n) for i = 1, n do P(fresh[i]) end end, 1)
  report { label = "dedup:seen, new key at 1M (evicts)", value = v, unit = "ns/op", baseline = b,
    baseline_label = "plain Lua LRU+ttl set", target = "<= 150 ns" }
  report { label = "bytes per dedup entry (1M, beyond key)", value = D:stats().bytes / M, unit = "B",
    baseline = plain_bytes, baseline_label = "plain Lua LRU+ttl set", target = "<= 128 B" }
  -- the same over 100k keys: the working set fits the caches far better
  M = 100000
  local D2 = keel.dedup { max = M }
  for i = 1, M do D2:seen(dkeys[i]) end
  local P2 = plain_dedup(M)
  for i = 1, M do P2(dkeys[i]) end
  local order2 = {}
  for i = 1, M do r = (r * 16807) % 2147483647; order2[i] = dkeys[r % M + 1] end
  v = best(M, function(n) for i = 1, n do D2:seen(order2[i]) end end)
  b = best(M, function(n) for i = 1, n do P2(order2[i]) end end)
  report { label = "dedup:seen, hit, 100k keys resident", value = v, unit = "ns/op", baseline = b,
    baseline_label = "plain Lua LRU+ttl set", target = "<= 150 ns" }
end

if arg and arg[0] and arg[0]:match("prims_a%.lua$") then
  run(function(r)
    print(string.format("%-42s %10.1f %-6s  vs %s: %.1f  target %s", r.label, r.value, r.unit or "",
      r.baseline_label or "plain LuaJIT", r.baseline or 0, r.target or "-"))
  end)
end

return run
