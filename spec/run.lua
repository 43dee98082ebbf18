-- Runs the busted specs inside keel, so specs are tasks and may wait.
--   build/keel spec/run.lua                  every spec/*_spec.lua
--   build/keel spec/run.lua spec/x_spec.lua  just those files (busted flags pass through)
local keel = require "keel"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local root = here:gsub("/?spec$", "")
if root == "" then root = "." end
package.path = root .. "/spec/support/?.lua;" .. package.path

local args = { ... }
local busted_args = { "--output=" .. root .. "/spec/support/output.lua" }
local has_root = false
for _, a in ipairs(args) do
  busted_args[#busted_args + 1] = a
  if a:sub(1, 1) ~= "-" then has_root = true end
end
if not has_root then
  busted_args[#busted_args + 1] = "--pattern=_spec"
  busted_args[#busted_args + 1] = root .. "/spec"
end
busted_args[0] = "busted"
_G.arg = busted_args

-- busted ends with os.exit; we end through keel instead, after its report.
local real_exit = os.exit
os.exit = function(code) -- luacheck: ignore
  local result = _G.KEEL_SPEC_RESULT
  if result then keel.exit(result.failed > 0 and 1 or 0) end
  keel.exit(code == true and 0 or (code == 0 and 0 or 1))
end

local ok, err = pcall(require("busted.runner"), { standalone = false, output = "plainTerminal" })
os.exit = real_exit -- luacheck: ignore
local result = _G.KEEL_SPEC_RESULT
if not ok and err ~= nil then
  io.stderr:write("spec runner: ", tostring(err), "\n")
  if not result then io.write("0 passed, 1 failed\n") end
  keel.exit(1)
end
if not result then
  io.write("0 passed, 1 failed\n")
  keel.exit(1)
end
keel.exit(result.failed > 0 and 1 or 0)
