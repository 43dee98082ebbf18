-- The two backends the contract cases run against. A case sees:
--   B.name       "local" | "redis"
--   B.redis      true on the Redis backend
--   B.new(kind, opts)   keel[kind](opts), plus redis = client and a fresh
--                       prefix on Redis: exactly "change one option"
--   B.run(fn)    runs a case: in virtual time (keel.sim) locally, as is on Redis
--   B.wait(ms)   lets at least ms pass: virtual locally; real time on
--                Redis (plus a margin for the server's clock granularity).
--                A stall only makes it longer, so cases assert after it only
--                what holds however late they look (expired, half-open);
--                what must hold before an expiry gets 600 ms or more for a
--                few round trips, which a loaded machine does not stall through
local keel = require "keel"

local M = {}

function M.local_backend()
  return {
    name = "local", redis = false,
    new = function(kind, opts) return keel[kind](opts) end,
    run = function(fn) return keel.sim({ seed = 11 }, fn) end,
    wait = function(ms) keel.sleep(ms) end,
  }
end

local runs = 0

-- client() returns the connected client (made in the spec's setup).
function M.redis_backend(client)
  return {
    name = "redis", redis = true,
    new = function(kind, opts)
      if type(opts) ~= "table" then return keel[kind](opts) end
      local o = {}
      for k, v in pairs(opts or {}) do o[k] = v end
      o.redis = client()
      runs = runs + 1
      if o.prefix == nil then o.prefix = string.format("contract:%s:%d", kind, runs) end
      return keel[kind](o)
    end,
    run = function(fn) return fn() end,
    wait = function(ms) keel.sleep(ms + 200) end,
  }
end

-- Asserts that fn raises an error whose text has every plain substring in
-- `parts` and points at the caller's line in a contract file (not at the
-- library).
function M.raises(fn, ...)
  local ok, err = pcall(fn)
  assert(not ok, "expected an error")
  err = tostring(err)
  for i = 1, select("#", ...) do
    local part = select(i, ...)
    if not err:find(part, 1, true) then
      error(string.format("error %q does not mention %q", err, part), 2)
    end
  end
  if not err:find("_contract.lua:%d+:") then
    error(string.format("error %q is not reported at the caller's line", err), 2)
  end
  return err
end

-- Runs every contract file against one backend, from a spec file: the
-- cases are loaded into that file's environment (busted's describe, it,
-- assert live there, not in _G).
M.primitives = { "dedup", "counter", "ratelimit", "registry", "leases", "queue", "breaker" }

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/contract"

function M.run_all(B)
  local env = getfenv(2)
  for _, prim in ipairs(M.primitives) do
    local chunk = assert(loadfile(dir .. "/" .. prim .. "_contract.lua"))
    setfenv(chunk, env)
    local cases = chunk()
    env.describe(prim .. " (" .. B.name .. ")", function() cases(B) end)
  end
end

return M
