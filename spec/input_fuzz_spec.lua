-- Random method calls with random junk arguments on every primitive and on
-- the task API: each call works or raises a string error; nothing crashes,
-- hangs or corrupts the object (it still works afterwards).
local keel = require "keel"
local ffi = require "ffi"

local junk = {
  false, true, 0, -1, 1, 2, 1.5, 0 / 0, math.huge, -math.huge, 2 ^ 53, -2 ^ 63, 1e300, 1e-300,
  "", "k", "key-1", string.rep("x", 5000), {}, { 1, 2 }, { wait_ms = 1 }, { ttl_ms = -1 },
  { delay_ms = 0 / 0 }, { priority = 1e300 }, function() end, coroutine.create(function() end),
  ffi.new("int[1]"), ffi.cast("void *", 0), "nil",
}

local function pick()
  local v = junk[keel.random(1, #junk)]
  if v == "nil" then return nil end
  return v
end

local function methods_of(obj)
  local names = {}
  local mt = getmetatable(obj)
  local index = mt and mt.__index
  if type(index) == "table" then
    for k, v in pairs(index) do
      if type(v) == "function" and k:sub(1, 1) ~= "_" then names[#names + 1] = k end
    end
  end
  table.sort(names)
  return names
end

local function fuzz(obj, rounds)
  local names = methods_of(obj)
  assert.is_true(#names > 0, "no methods found")
  for _ = 1, rounds do
    local name = names[keel.random(1, #names)]
    local a, b, c = pick(), pick(), pick()
    local use_dot = keel.random(1, 10) == 1
    local ok, err = pcall(keel.timeout, 20, function()
      if use_dot then return obj[name](a, b, c) end
      return obj[name](obj, a, b, c)
    end)
    if not ok then
      assert.is_string(err, "non-string error from " .. name .. ": " .. tostring(err))
    end
  end
end

describe("junk input fuzzing", function()
  local seeds = { 1, 2, 3 }

  for _, seed in ipairs(seeds) do
    it("counter, leases, dedup, registry, queue survive random junk calls (seed " .. seed .. ")", function()
      keel.sim({ seed = seed }, function()
        local counter = keel.counter { shards = 4 }
        local leases = keel.leases { ttl_ms = 100, max = 50 }
        local dedup = keel.dedup { max = 50, ttl_ms = 100 }
        local registry = keel.registry { ttl_ms = 100, max = 50 }
        local dlq = keel.queue { capacity = 20 }
        local queue = keel.queue { capacity = 20, visibility_ms = 50, max_attempts = 2, dead_letter = dlq }
        for _, obj in ipairs({ counter, leases, dedup, registry, queue, dlq }) do fuzz(obj, 400) end
        -- Still working afterwards.
        counter:reset()
        counter:add(3)
        assert.equal(3, counter:value())
        keel.sleep(200) -- every lease and dedup entry expires
        local lease = assert(leases:acquire("after", "me"))
        assert.is_true(leases:valid("after", lease.token))
        assert.is_false(dedup:seen("after-fuzz"))
        registry:bind("dev-after", "gw-after")
        assert.equal("gw-after", registry:lookup("dev-after"))
        keel.sleep(1000) -- let in-flight messages expire into the DLQ or back
        local drained = 0
        while queue:pop() do drained = drained + 1 end
        assert.truthy(queue:push("after"))
        local msg = assert(queue:pop())
        assert.equal("after", msg.item)
        assert.is_true(queue:ack(msg))
      end)
    end)
  end

  it("channels and tasks survive random junk calls", function()
    keel.sim({ seed = 7 }, function()
      local ch = keel.channel(2)
      fuzz(ch, 300)
      local t = keel.spawn(function() keel.sleep(5) return 1 end)
      fuzz(t, 200)
      local tm = keel.after(10, function() end)
      fuzz(tm, 50)
      for _ = 1, 200 do
        -- (not keel.every: a valid one keeps the simulated world ticking for ever, by design)
        local fname = ({ "spawn", "sleep", "timeout", "after", "random", "all", "any", "channel" })[keel.random(1, 8)]
        local a, b = pick(), pick()
        local ok, err = pcall(keel.timeout, 20, function() return keel[fname](a, b) end)
        if not ok then assert.is_string(err) end
      end
      keel.sleep(100)
      local ch2 = keel.channel(1)
      assert.is_true(ch2:send("ok"))
      assert.equal("ok", ch2:recv())
    end)
  end)
end)
