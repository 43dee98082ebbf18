-- Bounded channels between tasks. Capacity 0 is a rendezvous: send waits
-- until a receiver takes the value.
local sched = require "keel.sched"
local check = require "keel.check"

local Channel = {}
Channel.__index = Channel

local CLOSED = setmetatable({}, { __tostring = function() return "closed" end })
local TAKEN = {}

local function new(capacity)
  capacity = check.integer("keel.channel", "argument 'capacity'", capacity, 0, 0)
  return setmetatable({
    cap = capacity, buf = {}, head = 1, tail = 0,
    receivers = sched.waitqueue(), senders = sched.waitqueue(),
    closed = false,
  }, Channel)
end

local function buffered(self) return self.tail - self.head + 1 end

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
  check.self("channel:send", self, Channel)
  if v == nil then error("channel:send: argument 'value' must not be nil", 2) end
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
  check.self("channel:recv", self, Channel)
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
  check.self("channel:close", self, Channel)
  if self.closed then return false end
  self.closed = true
  self.receivers:wake_all(CLOSED)
  self.senders:wake_all(CLOSED)
  return true
end

function Channel:capacity()
  check.self("channel:capacity", self, Channel)
  return self.cap
end

function Channel:is_closed() return self.closed end

Channel.__len = buffered

return new
