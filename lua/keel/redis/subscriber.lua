-- keel.redis.subscriber: Redis pub/sub on a connection of its own.
--   local sub = assert(keel.redis.subscriber("redis://127.0.0.1:6379"))
--   sub:subscribe("events")
--   local m = sub:next(1000)       -- { channel, payload [, pattern] } | nil, "timeout"
--
-- In subscribed mode a connection may only (un)subscribe and PING, and
-- published messages arrive without a request, so a subscriber never
-- shares its connection with commands. Each channel is (un)subscribed by a
-- command of its own, so every confirmation answers its own request. When
-- the connection is lost the subscriptions go with it: the subscriber
-- subscribes again once the connection is back (messages published
-- meanwhile are lost — that is pub/sub).
local check = require "keel.check"
local sched = require "keel.sched"
local redis = require "keel.redis"

local type, tostring, setmetatable, error, select = type, tostring, setmetatable, error, select
local min = math.min

local Subscriber = {}
Subscriber.__index = Subscriber

local M = { Subscriber = Subscriber }

local FN = "keel.redis.subscriber"
local RESUB_MIN_MS, RESUB_MAX_MS = 10, 1000

local function self_check(fname, self)
  if getmetatable(self) ~= Subscriber then
    error(string.format("%s: call it as a method (sub:%s(...))", fname, fname:match("[:.]([%w_]+)$")), 3)
  end
end

local function enqueue(self, m)
  local t = self.qt + 1
  self.qt = t
  self.q[t] = m
  if t - self.qh + 1 > self.max_queue then -- the oldest goes: a slow reader must not grow us without bound
    self.q[self.qh] = nil
    self.qh = self.qh + 1
    self.st.dropped = self.st.dropped + 1
  end
  self.waiters:wake_one()
end

local resubscribe

local function on_push(self, msg)
  if msg == false then
    self.st.lost = self.st.lost + 1
    if not self.resub and not self.closed then
      self.resub = true
      self.resub_ms = RESUB_MIN_MS
      sched.after(0, function() resubscribe(self) end):unref()
    end
    return
  end
  local kind = msg[1]
  local m
  if kind == "pmessage" then
    m = { pattern = msg[2], channel = msg[3], payload = msg[4] }
  else
    m = { channel = msg[2], payload = msg[3] }
  end
  self.st.messages = self.st.messages + 1
  local h = self.on_message
  if h then
    h(m) -- runs where replies are delivered: it must not wait
  else
    enqueue(self, m)
  end
end

-- After a loss: subscribe to everything again, retrying with backoff on
-- unreferenced timers (a dead server must not keep a finished program alive).
function resubscribe(self)
  if self.closed then self.resub = false; return end
  local ok = true
  for ch in pairs(self.channels) do
    if not self.client:call("SUBSCRIBE", ch) then ok = false; break end
  end
  if ok then
    for pat in pairs(self.patterns) do
      if not self.client:call("PSUBSCRIBE", pat) then ok = false; break end
    end
  end
  if ok then
    self.resub = false
    self.st.resubscribes = self.st.resubscribes + 1
    return
  end
  self.resub_ms = min(self.resub_ms * 2, RESUB_MAX_MS)
  sched.after(self.resub_ms, function() resubscribe(self) end):unref()
end

-- new(url | opts [, opts]): the connect options of keel.redis.connect plus
-- max_queue (messages kept for next(), default 10000; past it the oldest
-- is dropped and counted).
function M.new(arg, extra)
  local max_queue = 10000
  local function strip(t)
    if type(t) ~= "table" or t.max_queue == nil then return t end
    max_queue = check.integer(FN, "option 'max_queue'", t.max_queue, nil, 1, 1e9)
    local c = {}
    for k, v in pairs(t) do if k ~= "max_queue" then c[k] = v end end
    return c
  end
  arg, extra = strip(arg), strip(extra)
  local self = setmetatable({
    channels = {}, patterns = {}, q = {}, qh = 1, qt = 0, max_queue = max_queue,
    waiters = sched.waitqueue(), on_message = false, closed = false, resub = false,
    st = { messages = 0, dropped = 0, lost = 0, resubscribes = 0 },
  }, Subscriber)
  -- The connection's drain is a GC root (the C glue holds it), so it must
  -- not hold the subscriber: a subscriber dropped without close() is then
  -- collected, and its connection with it.
  local weak = setmetatable({ self }, { __mode = "v" })
  local c, err = redis.open_subscriber(FN, arg, extra, function(msg)
    local sub = weak[1]
    if sub then on_push(sub, msg) end
  end)
  if not c then return nil, err end
  self.client = c
  return self
end

local function names(fname, ...)
  local n = select("#", ...)
  if n == 0 then error(fname .. ": name at least one channel", 3) end
  local out = {}
  for i = 1, n do
    local v = select(i, ...)
    local t = type(v)
    if t == "number" and v == v then
      v = tostring(v)
    elseif t ~= "string" then
      error(string.format("%s: argument %d must be a string (got %s)", fname, i, t), 3)
    end
    out[i] = v
  end
  return out
end

local function each(self, fname, cmd, set, add, ...)
  self_check(fname, self)
  local list = names(fname, ...)
  if self.closed then return nil, "closed: client closed" end
  for _, name in ipairs(list) do
    -- remembered first: a loss before the confirmation still resubscribes it
    if add then set[name] = true else set[name] = nil end
    local r, err = self.client:call(cmd, name)
    if r == nil then return nil, err end
  end
  return true
end

-- subscribe(channel, ...) -> true | nil, err
function Subscriber:subscribe(...)
  return each(self, "sub:subscribe", "SUBSCRIBE", self.channels, true, ...)
end

-- psubscribe(pattern, ...) -> true | nil, err
function Subscriber:psubscribe(...)
  return each(self, "sub:psubscribe", "PSUBSCRIBE", self.patterns, true, ...)
end

-- unsubscribe(channel, ...) -> true | nil, err
function Subscriber:unsubscribe(...)
  return each(self, "sub:unsubscribe", "UNSUBSCRIBE", self.channels, false, ...)
end

-- punsubscribe(pattern, ...) -> true | nil, err
function Subscriber:punsubscribe(...)
  return each(self, "sub:punsubscribe", "PUNSUBSCRIBE", self.patterns, false, ...)
end

-- next([timeout_ms]) -> { channel, payload [, pattern] } | nil, "timeout" | nil, "closed"
-- Without a timeout it waits until a message arrives or the subscriber is
-- closed (or the task is cancelled).
function Subscriber:next(timeout_ms)
  local F = "sub:next"
  self_check(F, self)
  if timeout_ms ~= nil then timeout_ms = check.number(F, "argument 'timeout_ms'", timeout_ms, nil, 0) end
  if self.on_message then error(F .. ": this subscriber hands its messages to a handler", 2) end
  local deadline = timeout_ms and sched.now() + timeout_ms
  while true do
    local h = self.qh
    if h <= self.qt then
      local m = self.q[h]
      self.q[h] = nil
      self.qh = h + 1
      if self.qh > self.qt then self.qh, self.qt = 1, 0 end
      return m
    end
    if self.closed then return nil, "closed" end
    local left = deadline and deadline - sched.now()
    if left and left <= 0 then return nil, "timeout" end
    local _, err = self.waiters:wait(left, F)
    if err == "timeout" then return nil, "timeout" end
  end
end

-- handler(fn): every message goes to fn(msg) as it arrives, instead of the
-- queue next() reads. fn runs where replies are delivered: it must not wait
-- (wake a task instead); its errors are reported and dropped.
function Subscriber:handler(fn)
  self_check("sub:handler", self)
  if fn ~= nil then check.func("sub:handler", "argument 'fn'", fn) end
  self.on_message = fn or false
end

function Subscriber:stats()
  self_check("sub:stats", self)
  local s = { queued = self.qt - self.qh + 1 }
  for k, v in pairs(self.st) do s[k] = v end
  local n, p = 0, 0
  for _ in pairs(self.channels) do n = n + 1 end
  for _ in pairs(self.patterns) do p = p + 1 end
  s.channels, s.patterns = n, p
  return s
end

function Subscriber:close()
  self_check("sub:close", self)
  if self.closed then return end
  self.closed = true
  self.client:close()
  self.waiters:wake_all()
end

function Subscriber.__tostring()
  return "keel.redis.subscriber"
end

return M
