-- Every constructor and method of breaker, bulkhead, ratelimit, backoff,
-- retry and retry_budget fed junk: each call either works or raises an error
-- that names the function. Nothing may crash the process.
local keel = require "keel"
local ffi = require "ffi"

local junk = {
  false, true, 0, -1, 1.5, 0 / 0, math.huge, -math.huge, 2 ^ 53, -2 ^ 63, 1e300, "", "x",
  string.rep("k", 70000), {}, { 1, 2 }, function() end, coroutine.create(function() end),
  ffi.new("int[1]"), ffi.cast("void *", 0),
}
junk[#junk + 1] = "nil" -- placeholder replaced below so ipairs covers nil too
local N = #junk

local function each(fn)
  for i = 1, N do
    local v = junk[i]
    if v == "nil" then v = nil end
    fn(v)
  end
end

local function named(err)
  if type(err) ~= "string" then return false end
  return err:match("keel%.") or err:match("%a+:%a+") ~= nil
end

-- In a child task with a deadline: some junk is valid and waits for ever
-- (acquire(math.huge) on a full bulkhead); the child's end releases permits.
local function try(f, ...)
  local ok, err = pcall(keel.timeout, 50, f, ...)
  if not ok then assert(named(err), "unnamed error: " .. tostring(err)) end
end

describe("resilience primitives on bad input", function()
  it("constructors reject every junk option value with a named error", function()
    keel.sim({ seed = 1 }, function()
      local ctors = {
        breaker = { keel.breaker, { "window", "size", "min_calls", "failure_rate", "slow_ms", "slow_rate",
                                    "open_ms", "half_open_calls", "name" } },
        bulkhead = { keel.bulkhead, { "max", "queue", "wait_ms", "keyed", "max_keys", "name" } },
        ratelimit = { keel.ratelimit, { "rate", "per_ms", "burst", "keyed", "max_keys", "name" } },
        backoff = { keel.backoff, { "base_ms", "cap_ms", "factor", "jitter", "max_attempts" } },
        retry_budget = { keel.retry_budget, { "ratio", "min_per_s", "window_ms", "name" } },
      }
      for _, c in pairs(ctors) do
        local ctor, opts = c[1], c[2]
        each(function(v) try(ctor, v) end)
        for _, opt in ipairs(opts) do
          each(function(v)
            local o = { [opt] = v }
            if ctor == keel.ratelimit and opt ~= "rate" then o.rate = 1 end
            if opt == "max_keys" then o.keyed = true end
            try(ctor, o)
          end)
        end
      end
    end)
  end)

  it("methods survive junk arguments and junk self", function()
    keel.sim({ seed = 1 }, function()
      local objs = {
        keel.breaker { size = 2, min_calls = 2, open_ms = 1 },
        keel.bulkhead { max = 1, queue = 1, wait_ms = 1 },
        keel.bulkhead { keyed = true, max = 1, queue = 1, wait_ms = 1, max_keys = 2 },
        keel.ratelimit { rate = 1, per_ms = 1 },
        keel.ratelimit { keyed = true, rate = 1, per_ms = 1, max_keys = 2 },
        keel.backoff {},
        keel.retry_budget {},
      }
      local methods = { "allow", "record", "cancel", "call", "state", "force", "on_state", "stats", "run",
                        "acquire", "take", "wait", "available", "delay", "delays", "deposit", "withdraw" }
      for _, o in ipairs(objs) do
        for _, m in ipairs(methods) do
          local f = o[m]
          if type(f) == "function" then
            each(function(v)
              try(f, o, v)
              try(f, o, "k", v)
              try(f, o, v, v)
              try(f, v)          -- o.method(v): called with '.'
              try(f, v, v)
            end)
          end
        end
      end
    end)
  end)

  it("keel.retry survives junk", function()
    keel.sim({ seed = 1 }, function()
      each(function(v)
        try(keel.retry, v)
        try(keel.retry, function() return 1 end, v)
        for _, opt in ipairs({ "backoff", "retry_on", "retry_on_nil", "budget", "attempts" }) do
          try(keel.retry, function() return 1 end, { [opt] = v })
        end
      end)
    end)
  end)
end)
