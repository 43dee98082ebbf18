-- C memory the collector cannot see (lua/keel/cmem.lua): objects dropped
-- without being used again must be reclaimed even when the Lua heap stays
-- small and never grows on its own. Runs in a child process, whose resident
-- memory (/proc/self/statm) is its own.
local proc = require "keelproc"

local SCRIPT = [[
local keel = require "keel"
local function rss_mib()
  local f = assert(io.open("/proc/self/statm"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("^%S+%s+(%S+)")) * 4096 / 2 ^ 20
end
-- the keys are built once: the loop below allocates nothing in Lua, so the
-- Lua heap alone would never start a collection
local keys = {}
for k = 1, 100000 do keys[k] = "key:" .. k end
local kind, rounds = arg[1], tonumber(arg[2])
collectgarbage()
local base, peak = rss_mib(), 0
for _ = 1, rounds do
  if kind == "dedup" then
    local d = keel.dedup({ max = 100000 })
    for k = 1, 100000 do d:seen(keys[k]) end
  elseif kind == "registry" then
    local r = keel.registry({ max = 100000 })
    for k = 1, 100000 do r:bind(keys[k], "gw") end
  else
    local l = keel.leases({ max = 100000 })
    for k = 1, 100000 do l:acquire(keys[k], 1) end
  end
  peak = math.max(peak, rss_mib())
end
io.write(string.format("%.1f", peak - base))
]]

-- ASan keeps freed blocks in a quarantine (256 MiB by default), which would
-- count as resident here.
local PREFIX = "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4"

describe("C memory of dropped objects", function()
  -- These tests block the runner for seconds (child processes, compilers).
  -- The world clock is refreshed once per scheduler turn, so a later spec
  -- that starts with a real-time deadline (leases_spec: a 10 s lease, then a
  -- 1 ms wait) would compute it from a time seconds old and see it expire
  -- at once. keel.now() refreshes it.
  teardown(function() require("keel").now() end)
  for _, kind in ipairs({ "dedup", "registry", "leases" }) do
    it("is reclaimed for 30 dropped " .. kind .. " objects of 100k keys on a small Lua heap", function()
      -- each object holds about 7 MiB of C memory: 200 MiB if none were freed
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write(SCRIPT)
      f:close()
      local code, out, err = proc.run({ path, kind, "30" }, { prefix = PREFIX })
      os.remove(path)
      assert.equal(0, code, err)
      local grown = tonumber(out)
      assert.is_number(grown, out)
      assert.is_true(grown < 60, "resident memory grew by " .. out .. " MiB")
    end)
  end
end)
