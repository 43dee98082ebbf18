-- keel.redis: an asynchronous Redis client on the runtime loop, and the
-- distributed primitives built on it (keel.redis.leases, .queue, ...).
--
--   local r = assert(keel.redis.connect("redis://127.0.0.1:6379/0"))
--   r:call("SET", "k", "v")          --> "OK"
--   r:call("GET", "missing")         --> nil
--   r:call("INCR", "k")              --> nil, "ERR value is not an integer ..."
--
-- Failures that are not Redis error replies come back as nil, "<code>: detail"
-- with code one of: conn, timeout, closed, full.
local ffi = require "ffi"
local core = require "keel.redis.core"
local C = require "keel.ffi.redis"
local sched = require "keel.sched"
local check = require "keel.check"
local metrics = require "keel.metrics"

local type, select, tostring, tonumber, setmetatable, getmetatable =
  type, select, tostring, tonumber, setmetatable, getmetatable
local ffi_string, ffi_cast = ffi.string, ffi.cast
local huge, floor, format = math.huge, math.floor, string.format
local unpack = unpack or table.unpack
local core_call, core_batch, core_ready = core.call, core.batch, core.ready
local completion, await, complete = sched.completion, sched.await, sched.complete

local redis = {}

local Client = { __name = "keel.redis.client" }
Client.__index = Client
redis.Client = Client

local CONNECT_OPTS = check.set {
  "host", "port", "password", "username", "db", "timeout_ms", "connect_timeout_ms",
  "backoff_base_ms", "backoff_max_ms", "max_pending", "name",
}

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- redis://[[user]:password@]host[:port][/db]
local function parse_url(url)
  local rest = url:match("^redis://(.*)$")
  if not rest then return nil, "URL must start with redis://" end
  local o = {}
  local auth, hostpart = rest:match("^(.*)@([^@]*)$")
  if auth then
    local user, pass = auth:match("^([^:]*):(.*)$")
    if user then
      if user ~= "" then o.username = unescape(user) end
      o.password = unescape(pass)
    else
      o.password = unescape(auth)
    end
    rest = hostpart
  end
  local hp, path = rest:match("^([^/]*)(.*)$")
  local host, port
  if hp:sub(1, 1) == "[" then
    host, port = hp:match("^%[([^%]]+)%]:?(%d*)$")
  else
    host, port = hp:match("^([^:]*):?(%d*)$")
  end
  if not host or host == "" then return nil, "missing host" end
  o.host = host
  if port and port ~= "" then o.port = tonumber(port) end
  if path ~= "" and path ~= "/" then
    local db = path:match("^/(%d+)$")
    if not db then return nil, "bad database path '" .. path .. "'" end
    o.db = tonumber(db)
  end
  return o
end
redis.parse_url = parse_url

local RING = ffi.typeof("keel_redis_ring_t *")
local HANDLE = ffi.typeof("keel_redis_t *")
local DONE_NUM, DONE_STR, DONE_NIL = 0, 1, 2

-- A connection's drain: hands a burst of replies to their tasks (called
-- from the C glue at the end of each socket read). First the simple
-- replies the glue recorded in C, read here through the FFI, then the
-- Lua-built ones, as id, value, error triples in the inbox.
local function new_drain(on_push)
  local ring -- the connection's reply records, cast once (a cast is not compiled)
  return function(inbox, n, ringp)
    if not ring then ring = ffi_cast(RING, ringp) end
    local m = ring.n
    if m > 0 then
      local items, arena = ring.items, ring.arena
      for i = 0, m - 1 do
        local e = items[i]
        local kind = e.kind
        if kind == DONE_NUM then
          complete(e.id, e.num)
        elseif kind == DONE_STR then
          complete(e.id, ffi_string(arena + e.off, e.len))
        elseif kind == DONE_NIL then
          complete(e.id, nil)
        else
          complete(e.id, nil, ffi_string(arena + e.off, e.len))
        end
      end
    end
    for i = 1, n, 3 do
      local id = inbox[i]
      if id == false then
        if on_push then
          local ok, err = pcall(on_push, inbox[i + 1])
          if not ok then sched.report("keel.redis: a subscriber's message handler failed: " .. tostring(err)) end
        end
      else
        complete(id, inbox[i + 1], inbox[i + 2])
      end
      inbox[i], inbox[i + 1], inbox[i + 2] = nil, nil, nil
    end
  end
end

local FN = "keel.redis.connect"

local function normalize(arg, extra, F)
  F = F or FN
  local o
  if type(arg) == "string" then
    local parsed, err = parse_url(arg)
    if not parsed then
      error(string.format("%s: bad URL %q: %s", F, arg, err), 3)
    end
    o = parsed
    if extra ~= nil then
      check.opts(F, extra, CONNECT_OPTS)
      for k, v in pairs(extra) do o[k] = v end
    end
  elseif type(arg) == "table" or arg == nil then
    o = check.opts(F, arg, CONNECT_OPTS)
  else
    error(string.format("%s: argument must be a URL string or an options table (got %s)", F, tostring(arg)), 3)
  end
  return {
    host = check.string(F, "option 'host'", o.host, "127.0.0.1"),
    port = check.integer(F, "option 'port'", o.port, 6379, 1, 65535),
    password = o.password ~= nil and check.string(F, "option 'password'", o.password) or nil,
    username = o.username ~= nil and check.string(F, "option 'username'", o.username) or nil,
    db = check.integer(F, "option 'db'", o.db, 0, 0, 1000000),
    -- 0 is refused rather than meaning "none": math.huge is that
    timeout_ms = check.number(F, "option 'timeout_ms'", o.timeout_ms, 5000, 1),
    connect_timeout_ms = check.number(F, "option 'connect_timeout_ms'", o.connect_timeout_ms,
      type(o.timeout_ms) == "number" and math.min(o.timeout_ms, 1e9) or 2000, 1, 1e9),
    backoff_base_ms = check.number(F, "option 'backoff_base_ms'", o.backoff_base_ms, 50, 1, 1e7),
    backoff_max_ms = check.number(F, "option 'backoff_max_ms'", o.backoff_max_ms, 2000, 1, 1e8),
    max_pending = check.integer(F, "option 'max_pending'", o.max_pending, 65536, 1, 1e7),
    name = o.name ~= nil and check.string(F, "option 'name'", o.name) or nil,
  }
end

-- Opens a client from normalized options; on_push (for subscribers) gets
-- each published message's array, or false when the connection was lost.
local function open(o, fname, on_push)
  if o.host:find("%z") then error(fname .. ": option 'host' must not contain NUL bytes", 3) end
  local conn, err = core.new(o.host, o.port, o.password, o.username, o.db, o.connect_timeout_ms,
    o.backoff_base_ms, o.backoff_max_ms, o.max_pending, new_drain(on_push))
  if not conn then return nil, err end
  local c = setmetatable({ conn = conn, handle = ffi_cast(HANDLE, core.handle(conn)), timeout_ms = o.timeout_ms,
                           opts = o, name = o.name, scripts = {} }, Client)
  local pong, perr = c:call("PING")
  if pong ~= "PONG" then
    core.close(conn)
    c.conn, c.handle = nil, nil
    return nil, perr or ("conn: unexpected reply to PING: " .. tostring(pong))
  end
  if on_push then core.push_mode(conn, true) end
  return c
end

-- connect(url | opts [, opts]) -> client | nil, "conn: detail"
-- Waits for the first connection (and AUTH/SELECT) so a wrong address or
-- password is reported here; later losses are handled by reconnecting.
function redis.connect(arg, extra)
  local o = normalize(arg, extra)
  sched.need_task(FN, 2)
  local c, err = open(o, FN)
  if not c then return nil, err end
  if o.name then metrics.register("redis", o.name, c) end
  return c
end

-- For keel.redis.subscriber: a client of its own in push mode.
function redis.open_subscriber(fname, arg, extra, on_push)
  local o = normalize(arg, extra, fname)
  sched.need_task(fname, 3)
  return open(o, fname, on_push)
end

local function bad_self(fname, self)
  if getmetatable(self) ~= Client then
    error(string.format("%s: call it as a method (client:%s(...))", fname, fname:match("[:.]([%w_]+)$")), 3)
  end
end

local function check_args(level, fname, n, ...)
  if n == 0 then error(fname .. ": missing command name", level) end
  local all = n > 8 and { ... } -- select(i, ...) per argument would be quadratic
  for i = 1, n do
    local v
    if all then v = all[i] else v = select(i, ...) end
    local t = type(v)
    if t ~= "string" and (t ~= "number" or v ~= v or v == math.huge or v == -math.huge) then
      error(string.format("%s: command argument %d must be a string or a finite number (got %s)",
        fname, i, t == "number" and tostring(v) or t), level)
    end
  end
end

local function send_error(handle, rc)
  if rc == 2 then
    local e = ffi_string(C.keel_redis_last_error(handle))
    return "conn: " .. (e ~= "" and e or "not connected")
  elseif rc == 3 then return "closed: client closed"
  elseif rc == 4 then return "full: too many outstanding requests"
  end
  return "error: bad arguments"
end

-- A number as sent: integers exactly (tostring would round past 14
-- digits: 2^52 became "4.5035996273705e+15", which INCRBY rejects), other
-- numbers as tostring shows them.
local function num_string(v)
  if v == floor(v) and v >= -9.2e18 and v <= 9.2e18 then return format("%d", v) end
  return tostring(v)
end

-- A command argument as the string sent.
local function arg_string(fname, i, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" and v == v and v ~= huge and v ~= -huge then return num_string(v) end
  error(string.format("%s: command argument %d must be a string or a finite number (got %s)",
    fname, i, t == "number" and tostring(v) or t), 4)
end

local function len(s) return s and #s or 0 end

-- Commands of up to 6 arguments (nearly all) go out through one FFI call
-- with the arguments unpacked, which the JIT compiles; longer ones through
-- the C API.
local function send_short(self, timeout, fname, n, a1, a2, a3, a4, a5, a6)
  a1 = arg_string(fname, 1, a1)
  if n >= 2 then
    a2 = arg_string(fname, 2, a2)
    if n >= 3 then
      a3 = arg_string(fname, 3, a3)
      if n >= 4 then
        a4 = arg_string(fname, 4, a4)
        if n >= 5 then
          a5 = arg_string(fname, 5, a5)
          if n >= 6 then a6 = arg_string(fname, 6, a6) end
        end
      end
    end
  end
  local handle = self.handle
  if not handle then return nil, "closed: client closed" end
  local id = completion(fname)
  local rc = C.keel_redis_send(handle, id * 2, timeout or huge, n, a1, #a1, a2, len(a2), a3, len(a3),
    a4, len(a4), a5, len(a5), a6, len(a6))
  if rc ~= 0 then
    complete(id) -- drops the completion; we are running, so nothing is woken
    return nil, send_error(handle, rc)
  end
  local v, e = await(id, nil, fname)
  return v, e
end

local function send(self, timeout, fname, ...)
  local n = select("#", ...)
  if n == 0 then error(fname .. ": missing command name", 3) end
  if n <= 6 then
    local a1, a2, a3, a4, a5, a6 = ...
    return send_short(self, timeout, fname, n, a1, a2, a3, a4, a5, a6)
  end
  check_args(4, fname, n, ...)
  local conn = self.conn
  if not conn then return nil, "closed: client closed" end
  local args = { ... }
  for i = 1, n do
    if type(args[i]) == "number" then args[i] = num_string(args[i]) end
  end
  local id = completion(fname)
  local ok, err = core_call(conn, id, timeout, unpack(args, 1, n))
  if not ok then
    complete(id)
    return nil, err
  end
  local v, e = await(id, nil, fname)
  return v, e
end

-- call(cmd, args...) -> value | nil, err
function Client:call(...)
  if getmetatable(self) ~= Client then bad_self("keel.redis: client:call", self) end
  return send(self, self.timeout_ms, "keel.redis: client:call", ...)
end

-- call_timeout(ms, cmd, args...): a per-call deadline (e.g. for blocking
-- commands, which need more than the default).
function Client:call_timeout(ms, ...)
  bad_self("keel.redis: client:call_timeout", self)
  check.number("keel.redis: client:call_timeout", "argument 'ms'", ms, nil, 0)
  return send(self, ms, "keel.redis: client:call_timeout", ...)
end

local Pipe = {}
Pipe.__index = Pipe

function Pipe:call(...)
  if getmetatable(self) ~= Pipe then error("keel.redis: p:call: call it as a method (p:call(...))", 2) end
  check_args(3, "keel.redis: p:call", select("#", ...), ...)
  local n = self.n + 1
  self.n = n
  self.cmds[n] = { ... }
  return n
end

-- pipeline(function(p) p:call(...) ... end) -> results | nil, err
-- results[i] is the i-th reply (nil for null), results.n the count and
-- results.err[i] the error text when reply i was an error reply.
function Client:pipeline(fn)
  bad_self("keel.redis: client:pipeline", self)
  check.func("keel.redis: client:pipeline", "argument 'fn'", fn)
  local p = setmetatable({ cmds = {}, n = 0 }, Pipe)
  fn(p)
  if p.n == 0 then return { n = 0, err = {} } end
  return self:batch(p.cmds)
end

-- batch({ {cmd, args...}, ... }) -> results | nil, err (see pipeline)
function Client:batch(cmds)
  local fname = "keel.redis: client:batch"
  bad_self(fname, self)
  if type(cmds) ~= "table" then error(fname .. ": argument 'cmds' must be a table", 2) end
  local n = #cmds
  if n == 0 then return { n = 0, err = {} } end
  local out = cmds -- a copy once a command holds numbers: the caller's tables stay as given
  for i = 1, n do
    local c = cmds[i]
    if type(c) ~= "table" then error(string.format("%s: command %d must be a table", fname, i), 2) end
    local m = #c
    if m == 0 then error(fname .. ": missing command name", 2) end
    for j = 1, m do
      if type(c[j]) ~= "string" then -- numbers: full check, then their text
        check_args(3, fname, m, unpack(c))
        local copy = {}
        for k = 1, m do
          local v = c[k]
          copy[k] = type(v) == "number" and num_string(v) or v
        end
        if out == cmds then out = { unpack(cmds, 1, n) } end
        out[i] = copy
        break
      end
    end
  end
  cmds = out
  local conn = self.conn
  if not conn then return nil, "closed: client closed" end
  local ok, err = core_ready(conn)
  if not ok then return nil, err end
  local id = completion(fname)
  ok, err = core_batch(conn, id, self.timeout_ms, cmds)
  if not ok then
    complete(id)
    return nil, err
  end
  local v, e = await(id, nil, fname)
  return v, e
end

-- Runs a server-side script by SHA, loading it on NOSCRIPT. script is a
-- table { src = "..." } shared by every client (the sha is cached in it).
function Client:eval(script, nkeys, ...)
  local F = "keel.redis: client:eval"
  if getmetatable(self) ~= Client then bad_self(F, self) end
  if type(script) ~= "table" or type(script.src) ~= "string" then
    error(F .. ": argument 'script' must come from keel.redis.script(src) (got " .. tostring(script) .. ")", 2)
  end
  check.integer(F, "argument 'nkeys'", nkeys, nil, 0, select("#", ...))
  local sha = script.sha
  if sha then
    local v, err = send(self, self.timeout_ms, "keel.redis: client:eval", "EVALSHA", sha, nkeys, ...)
    if v ~= nil or not err or not err:find("^NOSCRIPT") then return v, err end
  end
  local loaded, err = send(self, self.timeout_ms, "keel.redis: client:eval", "SCRIPT", "LOAD", script.src)
  if not loaded then return nil, err end
  script.sha = loaded
  return send(self, self.timeout_ms, "keel.redis: client:eval", "EVALSHA", loaded, nkeys, ...)
end

-- The options this client was opened with, for another connection to the
-- same server (a blocking reader, a subscriber); without its metrics name.
function Client:connect_opts()
  bad_self("keel.redis: client:connect_opts", self)
  local o = {}
  for k, v in pairs(self.opts) do o[k] = v end
  o.name = nil
  return o
end

function Client:close()
  bad_self("keel.redis: client:close", self)
  if self.conn then
    core.close(self.conn)
    self.conn, self.handle = nil, nil
  end
end

-- "connecting" | "ready" | "reconnecting" | "closed", last error
function Client:state()
  bad_self("keel.redis: client:state", self)
  if not self.conn then return "closed", "" end
  return core.state(self.conn)
end

function Client:stats()
  bad_self("keel.redis: client:stats", self)
  if not self.conn then return { pending = 0, closed = 1 } end
  return core.stats(self.conn)
end

-- Scripts and helpers for the distributed primitives.
redis.script = function(src)
  check.string("keel.redis.script", "argument 'src'", src)
  return { src = src }
end

local lazy = { leases = true, queue = true, dedup = true, ratelimit = true, registry = true,
               counter = true, breaker = true }

-- subscriber(url | opts [, opts]) -> subscriber | nil, "conn: ..." (see keel/redis/subscriber.lua)
function redis.subscriber(arg, extra)
  return require("keel.redis.subscriber").new(arg, extra)
end
return setmetatable(redis, {
  __index = function(t, k)
    if lazy[k] then
      local m = require("keel.redis." .. k)
      rawset(t, k, m)
      return m
    end
  end,
})
