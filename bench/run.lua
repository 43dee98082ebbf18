-- make bench: every figure beside a baseline measured in the same run.
--   build/keel bench/run.lua            all suites
--   build/keel bench/run.lua core redis just those (bench/<name>.lua)
local root = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
package.path = root .. "/bench/?.lua;" .. package.path

local suites = { ... }
if #suites == 0 then suites = { "core", "prims_a", "prims_b", "prims_c", "policy", "redis", "store" } end

local function fmt(v)
  if type(v) ~= "number" then return tostring(v) end
  if v >= 1e6 then return string.format("%.2fM", v / 1e6) end
  if v >= 1e4 then return string.format("%.1fk", v / 1e3) end
  if v >= 100 then return string.format("%.0f", v) end
  return string.format("%.2f", v)
end

-- r = {label, value, unit, baseline, baseline_label, target, higher_is_better}
local function report(r)
  local line = string.format("%-46s %10s %-8s", r.label, fmt(r.value), r.unit or "")
  if r.baseline then
    local ratio = r.value / r.baseline
    line = line .. string.format("  %s %s: %s (%.2fx)", "vs", r.baseline_label or "plain LuaJIT",
      fmt(r.baseline), ratio)
  end
  if r.target then line = line .. "  target " .. r.target end
  print(line)
  io.stdout:flush()
end

for _, name in ipairs(suites) do
  local path = root .. "/bench/" .. name .. ".lua"
  local f = io.open(path)
  if f then
    f:close()
    print("== " .. name)
    local ok, err = pcall(function() dofile(path)(report) end)
    if not ok then print("  suite failed: " .. tostring(err)) end
  else
    print("== " .. name .. ": not present, skipped")
  end
end
