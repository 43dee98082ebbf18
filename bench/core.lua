-- Foundation figures: tasks, yields, timers, memory per parked task.
local keel = require "keel"

local function statm_rss_kib()
  local f = io.open("/proc/self/statm")
  if not f then return 0 end
  local _, rss = f:read("*n", "*n")
  f:close()
  return rss * 4
end

local function measure(fn)
  collectgarbage()
  local t0 = keel.now()
  fn()
  return keel.now() - t0
end

local function node_available()
  local p = io.popen("node --version 2>/dev/null")
  local v = p and p:read("*l")
  if p then p:close() end
  return v and v:match("^v%d") and v
end

return function(report)
  local N = 1000000

  -- Memory per parked task: 100k tasks waiting on one channel.
  local P = 100000
  collectgarbage()
  collectgarbage()
  local rss0, lua0 = statm_rss_kib(), collectgarbage("count")
  local ch = keel.channel(0)
  local parked = {}
  local function receive() return ch:recv() end
  for i = 1, P do parked[i] = keel.spawn(receive) end
  keel.sleep(0)
  collectgarbage()
  local rss1, lua1 = statm_rss_kib(), collectgarbage("count")
  report { label = "memory per parked task (100k, RSS delta)", value = (rss1 - rss0) * 1024 / P, unit = "bytes",
    baseline = (lua1 - lua0) * 1024 / P, baseline_label = "Lua heap delta", target = "<= 1024 bytes" }
  ch:close()
  for i = 1, P do parked[i]:join() end


  -- Tasks spawned and joined.
  local ms = measure(function()
    local batch = 10000
    local tasks = {}
    local function work(i) return i end
    for _ = 1, N / batch do
      for i = 1, batch do tasks[i] = keel.spawn(work, i) end
      for i = 1, batch do tasks[i]:join() end
    end
  end)
  local base = measure(function()
    local function work(i) return i end
    for i = 1, N do
      local co = coroutine.create(work)
      coroutine.resume(co, i)
    end
  end)
  report { label = "tasks spawned+joined (1M)", value = N / ms * 1000, unit = "tasks/s",
    baseline = N / base * 1000, baseline_label = "raw coroutine create+resume", target = ">= 1M/s" }

  -- sleep(0) round trips: 4 tasks yielding to each other.
  local Y = 2000000
  ms = measure(function()
    local per = Y / 4
    local tasks = {}
    for t = 1, 4 do tasks[t] = keel.spawn(function() for _ = 1, per do keel.sleep(0) end end) end
    for t = 1, 4 do tasks[t]:join() end
  end)
  base = measure(function()
    local co = coroutine.wrap(function() while true do coroutine.yield() end end)
    for _ = 1, Y do co() end
  end)
  report { label = "sleep(0) round trips (2M)", value = Y / ms * 1000, unit = "yields/s",
    baseline = Y / base * 1000, baseline_label = "raw coroutine yield+resume", target = ">= 2M/s" }

  -- 1M timers armed and fired; delays 1..10 ms.
  local fired = 0
  ms = measure(function()
    local done = keel.channel(1)
    for i = 1, N do
      keel.after(i % 10 + 1, function()
        fired = fired + 1
        if fired == N then done:send(true) end
      end)
    end
    done:recv()
  end)
  local node_ms
  local node = node_available()
  if node then
    local script = os.tmpname()
    local f = io.open(script, "w")
    f:write([[
      const N = 1000000; let fired = 0; const t0 = process.hrtime.bigint();
      for (let i = 1; i <= N; i++) setTimeout(() => { if (++fired === N)
        console.log(Number(process.hrtime.bigint() - t0) / 1e6); }, i % 10 + 1);
    ]])
    f:close()
    local p = io.popen("node " .. script)
    node_ms = tonumber(p:read("*l"))
    p:close()
    os.remove(script)
  end
  report { label = "1M timers armed+fired (wall)", value = ms, unit = "ms",
    baseline = node_ms, baseline_label = "node " .. tostring(node), target = "<= 1000 ms and < node" }

end
