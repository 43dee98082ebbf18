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

local function slurp_rm(path)
  local s = slurp(path)
  os.remove(path)
  return s
end

-- Starts `keel [flags...] script` in the background, waits until its stdout
-- contains "ready", then runs each step of plan: { signal = "TERM" },
-- { wait_for = "text" } (polls stdout) or { pause = seconds }. Returns exit
-- code, stdout, stderr. A watchdog SIGKILLs the child after 10 s so a hang
-- cannot stall the suite (not `timeout`: it would stand between us and the
-- child's signals); a killed child exits 137.
function M.signals(src, plan, flags)
  local base = tmpname()
  os.remove(base)
  local script = base .. ".lua"
  local f = assert(io.open(script, "wb"))
  f:write(src)
  f:close()
  local out, err, status = tmpname(), tmpname(), tmpname()
  local argv = {}
  for _, a in ipairs(flags or {}) do argv[#argv + 1] = M.quote(a) end
  argv[#argv + 1] = M.quote(script)
  local sh = {
    string.format("%s %s >%s 2>%s & pid=$!", M.quote(M.bin), table.concat(argv, " "), out, err),
    "( sleep 10 & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s; kill -KILL $pid 2>/dev/null ) & wd=$!",
  }
  local function wait_for(text)
    sh[#sh + 1] = string.format(
      "i=0; while ! grep -q %s %s && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done", M.quote(text), out)
  end
  wait_for("ready")
  for _, step in ipairs(plan) do
    if step.signal then sh[#sh + 1] = "kill -" .. step.signal .. " $pid" end
    if step.wait_for then wait_for(step.wait_for) end
    if step.pause then sh[#sh + 1] = "sleep " .. step.pause end
  end
  sh[#sh + 1] = "wait $pid; echo $? >" .. status
  sh[#sh + 1] = "kill $wd 2>/dev/null; wait $wd 2>/dev/null"
  os.execute("sh -c " .. M.quote(table.concat(sh, "\n")))
  local code = tonumber(slurp_rm(status):match("%d+"))
  os.remove(script)
  return code, slurp_rm(out), slurp_rm(err)
end

return M
