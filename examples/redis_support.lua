-- Shared by the Redis examples: which Redis to use, and how to run this
-- same script as worker processes.
--   KEEL_REDIS_URL=redis://host:port  use that server
--   otherwise a throwaway redis-server is started on a free local port.
local keel = require "keel"

local M = {}

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function my_pid()
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("*l"):match("^(%d+)")
  if f then f:close() end
  return pid
end

-- The keel binary running us, so workers run under the same one.
function M.keel_bin()
  local env = os.getenv("KEEL_BIN")
  if env then return env end
  local pid = my_pid()
  local exe = pid and sh("readlink /proc/" .. pid .. "/exe"):gsub("%s+$", "")
  return (exe and exe ~= "") and exe or "keel"
end

-- Returns url, stop()
function M.server()
  local url = os.getenv("KEEL_REDIS_URL")
  if url then return url, function() end end
  if sh("command -v redis-server") == "" then
    error("set KEEL_REDIS_URL or install redis-server")
  end
  local port = 20000 + (tonumber(my_pid()) or os.time()) % 20000
  local dir = sh("mktemp -d /tmp/keel-example-XXXXXX"):gsub("%s+$", "")
  local pid = tonumber(sh(string.format("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no " ..
    "--dir %s > %s/log 2>&1 & echo $!", port, dir, dir)))
  url = "redis://127.0.0.1:" .. port
  for _ = 1, 100 do
    local c = keel.redis.connect(url)
    if c then c:close() break end
    keel.sleep(20)
  end
  return url, function()
    os.execute("kill " .. pid .. " 2>/dev/null; rm -rf " .. dir)
  end
end

-- Runs `keel <this script> worker <name> <url>` for each name, concurrently,
-- and returns their combined output (lines interleaved as they were written).
function M.run_workers(script, names, url)
  local cmds = {}
  for i, name in ipairs(names) do
    cmds[i] = string.format("%s %s worker %s %s &", M.keel_bin(), script, name, url)
  end
  return sh("(" .. table.concat(cmds, " ") .. " wait) 2>&1")
end

return M
