-- Starts a throwaway redis-server on a free loopback port, with no
-- persistence, for specs:
--   local server = require("redis_server").start()   -- inside a task
--   server.url, server.port
--   server:stop(); server:restart()
-- Every server started is stopped at exit (by its pid) if a spec forgets.
local keel = require "keel"

local M = {}
local Server = {}
Server.__index = Server

local started = {}

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end
M.sh = sh

M.available = sh("command -v redis-server 2>/dev/null") ~= ""

local function port_busy(port)
  -- /dev/tcp is a bash feature (sh may be dash)
  local probe = "bash -c '(exec 3<>/dev/tcp/127.0.0.1/%d) 2>/dev/null && echo busy'"
  return sh(string.format(probe, port)):find("busy") ~= nil
end

local function my_pid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local pid = (f:read("*l") or ""):match("^(%d+)")
  f:close()
  return pid
end
M.my_pid = my_pid

local function pick_port(after)
  -- derive from our pid so parallel runs rarely collide, then probe
  local pid = tonumber(sh("echo $PPID")) or os.time()
  for i = after or 0, 200 do
    local port = 20000 + (pid * 7 + i * 101) % 30000
    if not port_busy(port) then return port, i end
  end
  error("redis_server: no free port found")
end

function Server:launch()
  local dir = self.dir
  local cmd = string.format(
    "redis-server --port %d --bind 127.0.0.1 --save '' --daemonize no --enable-debug-command yes " ..
    "--dir %s %s > %s/log 2>&1 & echo $!", self.port, dir, self.extra or "", dir)
  self.pid = tonumber(sh(cmd))
  started[self] = true
  -- a watchdog stops the server if this process dies without cleaning up
  -- (killed, crashed), so no orphan servers pile up
  local me = my_pid()
  if me and self.pid then
    os.execute(string.format("(while kill -0 %s && kill -0 %d; do sleep 1; done; kill -9 %d) " ..
      ">/dev/null 2>&1 &", me, self.pid, self.pid))
  end
  for _ = 1, 200 do
    -- the probe can race with another server still letting go of the port:
    -- an auto-picked port is then swapped for the next free one
    local st = os.execute("kill -0 " .. self.pid .. " 2>/dev/null")
    if self.port_index and st ~= 0 and st ~= true
        and sh("cat " .. dir .. "/log"):find("Address already in use") and self.port_index < 200 then
      started[self] = nil
      self.port, self.port_index = pick_port(self.port_index + 1)
      return self:launch()
    end
    local pong = sh(string.format("redis-cli -p %d %s ping 2>/dev/null", self.port,
      self.password and ("-a " .. self.password .. " --no-auth-warning") or ""))
    if pong:find("PONG") then
      -- make sure the PONG came from our server, not from another on the port
      local alive = os.execute("kill -0 " .. self.pid .. " 2>/dev/null")
      if alive ~= 0 and alive ~= true then
        error("redis_server: redis-server exited: " .. sh("cat " .. dir .. "/log"))
      end
      return self
    end
    keel.sleep(20)
  end
  error("redis_server: redis-server did not start on port " .. self.port .. ": " .. sh("cat " .. dir .. "/log"))
end

-- opts: { password = "...", persist = true }
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({}, Server)
  self.dir = sh("mktemp -d /tmp/keel-redis-XXXXXX"):gsub("%s+$", "")
  if opts.port then self.port = opts.port else self.port, self.port_index = pick_port() end
  self.password = opts.password
  -- persist: an append-only file fsynced on every write, so whatever Redis
  -- acknowledged survives a SIGKILL and restart (for restart specs)
  self.extra = opts.persist and "--appendonly yes --appendfsync always" or "--appendonly no"
  if opts.password then self.extra = self.extra .. " --requirepass " .. opts.password end
  self:launch()
  local auth = opts.password and (":" .. opts.password .. "@") or ""
  self.url = string.format("redis://%s127.0.0.1:%d", auth, self.port)
  return self
end

-- SIGKILL: the server vanishes without closing connections gracefully.
function Server:stop()
  if self.pid then
    -- wait until it is gone or a zombie (its reaper may be slow)
    os.execute(string.format("kill -9 %d 2>/dev/null; while [ -e /proc/%d ] && " ..
      "! grep -q ') Z' /proc/%d/stat 2>/dev/null; do sleep 0.01; done", self.pid, self.pid, self.pid))
    self.pid = nil
  end
  started[self] = nil
end

function Server:restart()
  self:stop()
  return self:launch()
end

function Server:cli(...)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = "'" .. tostring(a):gsub("'", "'\\''") .. "'" end
  return (sh(string.format("redis-cli -p %d %s %s 2>&1", self.port,
    self.password and ("-a " .. self.password .. " --no-auth-warning") or "", table.concat(args, " ")))
    :gsub("%s+$", ""))
end

function Server:cleanup()
  self:stop()
  if self.dir and self.dir:match("^/tmp/keel%-redis%-") then os.execute("rm -rf " .. self.dir) end
end

-- A sentinel whose finalizer stops leftover servers when the state closes.
if newproxy then
  M._proxy = newproxy(true)
  getmetatable(M._proxy).__gc = function()
    for s in pairs(started) do if s.pid then os.execute("kill -9 " .. s.pid .. " 2>/dev/null") end end
  end
end

return M
