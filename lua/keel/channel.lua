-- Bounded channels between tasks. Capacity 0 is a rendezvous: send waits
-- until a receiver takes the value.
local sched = require "keel.sched"
local check = require "keel.check"

local Channel = {}
Channel.__index = Channel

local CLOSED = setmetatable({}, { __tostring = function() return "closed" end })
local TAKEN = {}

local function buffered(self) return self.tail - self.head + 1 end

-- A channel is a userdata proxy: LuaJIT (without 5.2 compatibility) ignores
-- __len on tables, and #ch must work. Its own metatable holds the state.
local function unwrap(fname, ch)
  local mt = type(ch) == "userdata" and getmetatable(ch)
  local st = mt and mt.state
  if not st then
    error(string.format("%s: call it as a method (ch:%s(...))", fname, fname:match("[:.]([%w_]+)$")), 3)
  end
  return st
end

local function len(ch) return buffered(getmetatable(ch).state) end
local function tostr(ch) return "keel.channel(" .. getmetatable(ch).state.cap .. ")" end

local function new(capacity)
  capacity = check.integer("keel.channel", "argument 'capacity'", capacity, 0, 0)
  local st = {
    cap = capacity, buf = {}, head = 1, tail = 0,
    receivers = sched.waitqueue(), senders = sched.waitqueue(),
    closed = false,
  }
  local ch = newproxy(true)
  local mt = getmetatable(ch)
  mt.state, mt.__index, mt.__len, mt.__tostring = st, Channel, len, tostr
  return ch
end

local function shift(self)
  local i = self.head
  local v = self.buf[i]
  self.buf[i] = nil
  if i == self.tail then self.head, self.tail = 1, 0 else self.head = i + 1 end
  return v
end

local function push(self, v)
  local i = self.tail + 1
  self.tail = i
  self.buf[i] = v
end

function Channel:send(v, timeout)
  self = unwrap("channel:send", self)
  if v == nil then error("channel:send: argument 'value' must not be nil", 2) end
  -- Validated up front, not only when the call happens to wait.
  if timeout ~= nil then check.number("channel:send", "argument 'timeout_ms'", timeout, nil, 0) end
  if self.closed then return nil, "closed" end
  if buffered(self) == 0 and self.receivers:wake_one(v) then return true end
  if buffered(self) < self.cap then
    push(self, v)
    return true
  end
  local task = sched.need_task("channel:send")
  task.chan_value = v
  local r, err = self.senders:wait(timeout, "channel:send")
  task.chan_value = nil
  if r == TAKEN then return true end
  if r == CLOSED then return nil, "closed" end
  return nil, err
end

function Channel:recv(timeout)
  self = unwrap("channel:recv", self)
  if timeout ~= nil then check.number("channel:recv", "argument 'timeout_ms'", timeout, nil, 0) end
  if buffered(self) > 0 then
    local v = shift(self)
    -- A parked sender's value takes the freed slot, preserving FIFO order.
    local sender = self.senders:wake_one(TAKEN)
    if sender then push(self, sender.chan_value) end
    return v
  end
  local sender = self.senders:wake_one(TAKEN)
  if sender then return sender.chan_value end
  if self.closed then return nil, "closed" end
  local v, err = self.receivers:wait(timeout, "channel:recv")
  if v == CLOSED then return nil, "closed" end
  if v == nil then return nil, err end
  return v
end

-- Receivers drain what is buffered, then get nil, "closed"; blocked
-- senders get nil, "closed" at once.
function Channel:close()
  self = unwrap("channel:close", self)
  if self.closed then return false end
  self.closed = true
  self.receivers:wake_all(CLOSED)
  self.senders:wake_all(CLOSED)
  return true
end

function Channel:capacity()
  self = unwrap("channel:capacity", self)
  return self.cap
end

function Channel:is_closed() return unwrap("channel:is_closed", self).closed end

return new
