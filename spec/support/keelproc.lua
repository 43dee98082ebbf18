-- Runs the keel binary as a child process from a spec and captures what it
-- did: exit code, stdout, stderr. The binary is $KEEL_BIN or <repo>/build/keel.
-- The child runs to completion synchronously (it blocks the parent's loop,
-- which is fine for short children).
local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/support"
M.root = here:gsub("/?spec/support$", "")
if M.root == "" then M.root = "." end
M.bin = os.getenv("KEEL_BIN") or (M.root .. "/build/keel")

function M.quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local tmpname = os.tmpname

-- args: list of argument strings (quoted here). opts.prefix: shell text put
-- before the command (e.g. "cd /tmp &&"). Returns code, stdout, stderr.
function M.run(args, opts)
  opts = opts or {}
  local parts = {}
  for i = 1, #args do parts[i] = M.quote(args[i]) end
  local out, err = tmpname(), tmpname()
  local cmd = string.format("%s %s %s >%s 2>%s", opts.prefix or "", M.quote(opts.bin or M.bin),
    table.concat(parts, " "), out, err)
  local a, b, c = os.execute(cmd)
  -- LuaJIT without 5.2 compat returns the raw wait status.
  local code
  if type(a) == "number" then
    code = a >= 256 and math.floor(a / 256) or a
  else
    code = (b == "exit") and c or 128 + (c or 0)
  end
  local so, se = slurp(out), slurp(err)
  os.remove(out)
  os.remove(err)
  return code, so, se
end

-- Runs `keel -e code`.
function M.eval(code, opts)
  return M.run({ "-e", code }, opts)
end

-- Writes a script to a temp file, runs `keel [flags...] file args...`.
function M.script(src, args, flags)
  local base = tmpname()
  os.remove(base)
  local path = base .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write(src)
  f:close()
  local argv = {}
  for _, a in ipairs(flags or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = path
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local code, so, se = M.run(argv)
  os.remove(path)
  return code, so, se, path
end

return M
