-- keel.redis.queue: an at-least-once work queue on a Redis Stream with a
-- consumer group, shared by every process. Same API as keel.queue:
--   local q = require("keel.redis.queue").new{ redis = client, name = "jobs" }
--   q:push("payload")
--   local msg = q:pop{ wait_ms = 1000 }   -- msg.id, msg.item, msg.attempt
--   q:ack(msg)                            -- or q:nack(msg)
--
-- push = XADD (refused with "full" at capacity; MAXLEN as a hard bound),
--        pushes of one scheduler turn batched into one script. With
--        delay_ms the message waits in a sorted set by due time (server
--        clock) until a pop script moves it into the stream.
-- pop  = every visibility_ms / 4 one script reclaims messages idle past
--        visibility_ms (XAUTOCLAIM) and dead-letters those delivered more
--        than max_attempts times; in between XREADGROUP reads new ones, ahead
--        of need; when there is nothing, a blocking XREADGROUP on a dedicated
--        connection waits (bounded so reclaims keep running).
-- ack  = XACK, so an acknowledged message can never be delivered again (it
--        leaves the pending list and is behind the group's last-delivered
--        id). Entries are dropped later, off the caller's path, by XTRIM
--        MINID once no group reading the stream needs them.
-- Dead-lettering is XADD to the dead-letter stream and then XACK: a crash in
-- between duplicates a message, never loses it (and inside one script the
-- two steps are atomic anyway).
-- dedup_key: a hash maps each taken key to its message; the key is taken
-- at push (refused with "duplicate" while taken) and freed in the same
-- script that acknowledges or dead-letters the message.
-- Items are strings (numbers are converted): serialise tables yourself.
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local redis = require "keel.redis"
local common = require "keel.redis.common"
local Ccore = require "keel.ffi.core"

local type, tostring, setmetatable, error, tonumber = type, tostring, setmetatable, error, tonumber
local huge, min, floor = math.huge, math.min, math.floor
local unpack = unpack or table.unpack
local ACK_BATCH = 1000
local TRIM_DELAY_MS = 2
local PROMOTE_MS = 250
local TRIM_SLACK = 10000

-- Shared by the push scripts (KEYS[1] the stream, KEYS[2] the delayed set):
-- the stream also holds acknowledged entries not trimmed yet, so near
-- capacity what counts is what is outstanding: pending plus not yet
-- delivered (the lag), for the group furthest behind when several groups
-- read the stream, plus delayed messages. Returns that count and how many
-- acknowledged entries the stream still holds; MAXLEN is capacity plus
-- those, so it can never trim an outstanding message.
local OUTSTANDING = [=[
local function outstanding(cap, adding)
  local len = redis.call('XLEN', KEYS[1])
  local held = redis.call('ZCARD', KEYS[2])
  local n = len
  if len + held + adding > cap and len > 0 then
    local worst
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if type(f.pending) == 'number' and type(f.lag) == 'number' then
        if worst ~= false then worst = math.max(worst or 0, f.pending + f.lag) end
      else
        worst = false -- unknown lag: count the whole stream
      end
    end
    if worst then n = math.min(len, worst) end
  end
  return n + held, len - n
end
]=]

-- ARGV: capacity, items... -> { id | false (full), ... }
local PUSH_MANY = redis.script(OUTSTANDING .. [=[
local cap = tonumber(ARGV[1])
local n, acked = outstanding(cap, #ARGV - 1)
local out = {}
for i = 2, #ARGV do
  if n >= cap then
    out[i - 1] = false
  else
    out[i - 1] = redis.call('XADD', KEYS[1], 'MAXLEN', cap + acked, '*', 'd', ARGV[i])
    n = n + 1
  end
end
return out
]=])

-- KEYS: stream, delayed set, dedup hash; ARGV: capacity, item, key
-- -> id | 0 (full) | 1 (duplicate)
local PUSH_KEYED = redis.script(OUTSTANDING .. [=[
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return 1 end
local cap = tonumber(ARGV[1])
local n, acked = outstanding(cap, 1)
if n >= cap then return 0 end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', cap + acked, '*', 'd', ARGV[2], 'k', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], id)
return id
]=])

-- KEYS: stream, delayed set, delayed items, sequence, delayed keys, dedup
-- hash; ARGV: capacity, delay_ms, item, key or '' -> n | 0 (full) |
-- -1 (duplicate). The due time is on the server's clock, the same for
-- every process; the pop script moves due messages into the stream.
local PUSH_DELAYED = redis.script(OUTSTANDING .. [=[
local key = ARGV[4]
if key ~= '' and redis.call('HEXISTS', KEYS[6], key) == 1 then return -1 end
local cap = tonumber(ARGV[1])
local n = outstanding(cap, 1)
if n >= cap then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[3], id, ARGV[3])
if key ~= '' then
  redis.call('HSET', KEYS[5], id, key)
  redis.call('HSET', KEYS[6], key, 'd' .. id)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
return id
]=])

-- Frees a message's dedup key (KEYS[dedup]) if the message still holds it.
local RELEASE = [=[
local function release(dedup, key, id)
  if key and key ~= '' and redis.call('HGET', dedup, key) == id then redis.call('HDEL', dedup, key) end
end
]=]

-- KEYS: stream, dead stream, delayed set, delayed items, delayed keys, dedup hash
-- ARGV: group, consumer, visibility_ms, max_attempts, count, reclaim(0/1)
-- -> { {id, item, attempt, dedup key | false}..., dead-lettered count,
--      ms until the next delayed message is due or -1 }
local POP = redis.script(RELEASE .. [[
local out, dead = {}, 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)) do
  local item = redis.call('HGET', KEYS[4], id)
  local key = redis.call('HGET', KEYS[5], id)
  if item then
    if key then
      local sid = redis.call('XADD', KEYS[1], '*', 'd', item, 'k', key)
      if redis.call('HGET', KEYS[6], key) == 'd' .. id then redis.call('HSET', KEYS[6], key, sid) end
    else
      redis.call('XADD', KEYS[1], '*', 'd', item)
    end
  end
  redis.call('HDEL', KEYS[4], id)
  if key then redis.call('HDEL', KEYS[5], id) end
  redis.call('ZREM', KEYS[3], id)
end
local nxt = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local next_in = nxt[2] and math.max(0, tonumber(nxt[2]) - now) or -1
local function field(f, name)
  if not f then return nil end
  for i = 1, #f, 2 do if f[i] == name then return f[i + 1] end end
end
local function reclaim()
  local c = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[5])
  for _, e in ipairs(c[2]) do
    local id, item, key = e[1], field(e[2], 'd'), field(e[2], 'k')
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local n = (p[1] and p[1][4]) or 1
    if item == nil then
      redis.call('XACK', KEYS[1], ARGV[1], id)
    elseif n > tonumber(ARGV[4]) then
      if key then
        redis.call('XADD', KEYS[2], '*', 'd', item, 'id', id, 'attempts', n - 1, 'error', 'visibility timeout',
          'k', key)
      else
        redis.call('XADD', KEYS[2], '*', 'd', item, 'id', id, 'attempts', n - 1, 'error', 'visibility timeout')
      end
      redis.call('XACK', KEYS[1], ARGV[1], id)
      release(KEYS[6], key, id)
      dead = dead + 1
    else
      out[#out + 1] = {id, item, n, key or false}
    end
  end
end
local reclaimed = false
if ARGV[6] == '1' then reclaim(); reclaimed = true end
if #out == 0 then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[5], 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], field(e[2], 'd') or '', 1, field(e[2], 'k') or false} end
  end
end
if #out == 0 and not reclaimed then reclaim() end
return {out, dead, next_in}
]])

-- ARGV: group, slack -> trimmed count. Acknowledged entries are not deleted one by
-- one (XDEL walks the entry's node: several times the cost of the XACK).
-- Every group still needs its oldest pending entry and everything after it,
-- or with nothing pending everything after its last delivered one; XTRIM
-- MINID drops whatever no group needs, whole nodes at a time. Entries
-- acknowledged ahead of an older pending one (a slow or dead consumer's)
-- stay until it is acknowledged or dead-lettered; with a single group,
-- past `slack` of them they are deleted in bounded steps.
local TRIM = redis.script [=[
local group, slack = ARGV[1], tonumber(ARGV[2])
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  if not ms or #ms > 15 or #seq > 15 then return nil end
  return tonumber(ms), tonumber(seq)
end
local before = redis.call('XLEN', KEYS[1])
local minms, minseq, info, oldest
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local first = redis.call('XPENDING', KEYS[1], f.name)[2]
  local ms, seq
  if first then
    ms, seq = parse(first)
  else
    ms, seq = parse(f['last-delivered-id'])
    if ms then seq = seq + 1 end
  end
  if not ms then return 0 end -- an id we cannot reason about: trim nothing
  if not minms or ms < minms or (ms == minms and seq < minseq) then minms, minseq = ms, seq end
  if f.name == group then info, oldest = f, first end
end
if not minms then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', minms, minseq))
local lag = info and info.lag
if #groups == 1 and oldest and type(lag) == 'number' then
  local len = redis.call('XLEN', KEYS[1])
  if len - info.pending - lag > slack then
    local last = info['last-delivered-id']
    local span = redis.call('XRANGE', KEYS[1], oldest, last, 'COUNT', 1000)
    local pending = {}
    for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, oldest, last, 1000)) do pending[p[1]] = true end
    local del = {}
    for _, e in ipairs(span) do
      if not pending[e[1]] then del[#del + 1] = e[1] end
    end
    -- (the first 1000 pending ids cover every pending one among the first
    -- 1000 entries)
    if #del > 0 then redis.call('XDEL', KEYS[1], unpack(del)) end
  end
end
return before - redis.call('XLEN', KEYS[1])
]=]

-- KEYS: stream, dead stream, dedup hash
-- ARGV: group, consumer, id, idle, attempt, max_attempts, item, error, key or ''
-- -> 0 unknown, 1 requeued, 2 dead
local NACK = redis.script(RELEASE .. [[
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] then return 0 end
if tonumber(ARGV[5]) >= tonumber(ARGV[6]) then
  if ARGV[9] ~= '' then
    redis.call('XADD', KEYS[2], '*', 'd', ARGV[7], 'id', ARGV[3], 'attempts', ARGV[5], 'error', ARGV[8], 'k', ARGV[9])
  else
    redis.call('XADD', KEYS[2], '*', 'd', ARGV[7], 'id', ARGV[3], 'attempts', ARGV[5], 'error', ARGV[8])
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  release(KEYS[3], ARGV[9], ARGV[3])
  return 2
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
]])

-- KEYS: stream, dedup hash; ARGV: group, id, key, id, key, ... -> acked count
-- (an acknowledged message's key is free again)
local ACK_KEYED = redis.script(RELEASE .. [[
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    n = n + 1
    release(KEYS[2], ARGV[i + 1], ARGV[i])
  end
end
return n
]])

-- ARGV: group, consumer, id, idle -> 1 | 0 (not pending)
local EXTEND = redis.script [[
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
]]

-- KEYS: stream, dead stream, dedup hash; ARGV: n, start ('-' or '(' .. id)
-- -> { moved, scanned, last scanned id }. A letter whose dedup key is taken
-- again stays in the dead stream.
local REDRIVE = redis.script [[
local r = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[1])
local moved = 0
for _, e in ipairs(r) do
  local f, item, key = e[2], '', nil
  for i = 1, #f, 2 do
    if f[i] == 'd' then item = f[i + 1] elseif f[i] == 'k' then key = f[i + 1] end
  end
  if not key then
    redis.call('XADD', KEYS[1], '*', 'd', item)
    redis.call('XDEL', KEYS[2], e[1])
    moved = moved + 1
  elseif redis.call('HEXISTS', KEYS[3], key) == 0 then
    local id = redis.call('XADD', KEYS[1], '*', 'd', item, 'k', key)
    redis.call('HSET', KEYS[3], key, id)
    redis.call('XDEL', KEYS[2], e[1])
    moved = moved + 1
  end
end
return { moved, #r, r[#r] and r[#r][1] or '' }
]]

local Queue = {}
Queue.__index = Queue

local NEW_OPTS = check.set { "redis", "name", "prefix", "group", "consumer", "capacity", "visibility_ms",
  "max_attempts", "prefetch", "max_blockers", "block_ms" }
local PUSH_OPTS = check.set { "delay_ms", "priority", "dedup_key" }
local POP_OPTS = check.set { "wait_ms" }
local ACK_OPTS = check.set { "wait" }
local NACK_OPTS = check.set { "delay_ms", "error" }

local function self_check(fname, self) common.self(fname, self, Queue) end

local function default_consumer()
  local pid = "?"
  local f = io.open("/proc/self/stat")
  if f then pid = (f:read("*l") or ""):match("^(%d+)") or "?"; f:close() end
  local w = sched.world()
  return string.format("%s-%08x", pid, tonumber(Ccore.keel_rand_next(w.rand) % 0x100000000))
end

local M = {}

function M.new(opts)
  local F = "keel.redis.queue"
  opts = check.opts(F, opts, NEW_OPTS)
  local client = common.client(F, opts.redis)
  local name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil
  local prefix = common.prefix(F, opts, "queue")
  local vis = check.number(F, "option 'visibility_ms'", opts.visibility_ms, 30000, 1, 1e12)
  local self = setmetatable({
    redis = client, name = name,
    stream = "{" .. prefix .. "}:s", dead_stream = "{" .. prefix .. "}:dead",
    delayed = "{" .. prefix .. "}:delayed", delayed_items = "{" .. prefix .. "}:delayed:items",
    seq = "{" .. prefix .. "}:seq", dedup = "{" .. prefix .. "}:dedup",
    delayed_keys = "{" .. prefix .. "}:delayed:keys",
    group = check.string(F, "option 'group'", opts.group, "keel"),
    consumer = opts.consumer ~= nil and check.string(F, "option 'consumer'", opts.consumer) or default_consumer(),
    capacity = check.integer(F, "option 'capacity'", opts.capacity, 1000000, 1, 2 ^ 53),
    visibility_ms = floor(vis),
    max_attempts = check.integer(F, "option 'max_attempts'", opts.max_attempts, 5, 1, 1e9),
    prefetch = check.integer(F, "option 'prefetch'", opts.prefetch, 16, 1, 10000),
    max_blockers = check.integer(F, "option 'max_blockers'", opts.max_blockers, 4, 0, 1000),
    block_ms = check.number(F, "option 'block_ms'", opts.block_ms, min(1000, math.max(1, floor(vis / 2))), 1, 1e9),
    buf = {}, bhead = 1, btail = 0,
    blockers = {}, nblockers = 0, blocker_wait = sched.waitqueue(),
    group_ready = false, next_reclaim = -huge, promote_at = -huge,
    acks = {}, kacks = {}, untrimmed = 0, trim_slack = TRIM_SLACK, nacks_pending = 0, flusher = nil,
    flushed = sched.waitqueue(),
    st = { pushed = 0, popped = 0, acked = 0, nacked = 0, dead_lettered = 0, reclaimed = 0, full = 0,
           redriven = 0, errors = 0, ack_errors = 0, trimmed = 0, delayed = 0, duplicates = 0 },
  }, Queue)
  metrics.register("redis_queue", name, self)
  return self
end

local function ensure_group(self)
  if self.group_ready then return true end
  local ok, err = self.redis:call("XGROUP", "CREATE", self.stream, self.group, "0", "MKSTREAM")
  if ok or (err and err:find("^BUSYGROUP")) then
    self.group_ready = true
    return true
  end
  return nil, err
end

-- A Redis restarted without persistence forgets the group: recreate it.
local function retry_nogroup(self, fn)
  local v, err = fn()
  if v == nil and err and err:find("NOGROUP") then
    self.group_ready = false
    local ok, gerr = ensure_group(self)
    if not ok then return nil, gerr end
    v, err = fn()
  end
  return v, err
end

local function item_arg(F, item)
  local t = type(item)
  if t == "string" then return item end
  if t == "number" and item == item then return tostring(item) end
  error(F .. ": argument 'item' must be a string or number (got " .. tostring(item) .. ")", 3)
end

-- Pushes made by any tasks during one scheduler turn (and while the
-- previous batch is on the wire) go out in one script: one round trip and
-- one script call for many XADDs.
local PUSH_BATCH = 500

local function send_pushes(self, b)
  if self.pbatch == b then self.pbatch = nil end
  b.r, b.err = self.redis:eval(PUSH_MANY, 2, self.stream, self.delayed, self.capacity, unpack(b.items))
  b.done = true
  b.q:wake_all()
end

-- push(item [, {delay_ms, dedup_key}]) -> id | nil, "full" | nil, "duplicate"
-- | nil, "conn: ..."
-- id is the stream id, or "d<n>" for a delayed message (it gets a stream
-- id when it is due). A push whose task is cancelled while waiting may
-- still be enqueued.
function Queue:push(item, opts)
  local F = "keel.redis.queue:push"
  self_check(F, self)
  item = item_arg(F, item)
  local delay, key = 0, nil
  if opts ~= nil then
    check.opts(F, opts, PUSH_OPTS)
    if opts.priority ~= nil then
      error(F .. ": option priority is not supported by the Redis queue", 2)
    end
    delay = check.number(F, "option 'delay_ms'", opts.delay_ms, 0, 0, 1e15)
    if opts.dedup_key ~= nil then
      key = check.key(F, "option 'dedup_key'", opts.dedup_key)
      key = type(key) == "number" and string.format("%.17g", key) or key
    end
  end
  sched.need_task(F, 2)
  if delay > 0 then
    local id, err = self.redis:eval(PUSH_DELAYED, 6, self.stream, self.delayed, self.delayed_items, self.seq,
      self.delayed_keys, self.dedup, self.capacity, floor(delay + 0.5), item, key or "")
    if err then
      self.st.errors = self.st.errors + 1
      return nil, err
    end
    if id == 0 then
      self.st.full = self.st.full + 1
      return nil, "full"
    elseif id == -1 then
      self.st.duplicates = self.st.duplicates + 1
      return nil, "duplicate"
    end
    self.st.pushed = self.st.pushed + 1
    self.st.delayed = self.st.delayed + 1
    -- ready within PROMOTE_MS of its due time, or sooner for this process
    local due = sched.now() + delay
    if due < self.promote_at then self.promote_at = due end
    return "d" .. id
  end
  if key then
    local id, err = self.redis:eval(PUSH_KEYED, 3, self.stream, self.delayed, self.dedup, self.capacity, item, key)
    if err then
      self.st.errors = self.st.errors + 1
      return nil, err
    end
    if id == 0 then
      self.st.full = self.st.full + 1
      return nil, "full"
    elseif id == 1 then
      self.st.duplicates = self.st.duplicates + 1
      return nil, "duplicate"
    end
    self.st.pushed = self.st.pushed + 1
    return id
  end
  local b = self.pbatch
  if not b then
    b = { items = {}, q = sched.waitqueue() }
    self.pbatch = b
    sched.spawn(send_pushes, self, b)
  end
  local i = #b.items + 1
  b.items[i] = item
  if i >= PUSH_BATCH then self.pbatch = nil end
  if not b.done then b.q:wait(nil, F) end
  if not b.r then
    self.st.errors = self.st.errors + 1
    return nil, b.err
  end
  local id = b.r[i]
  if not id then
    self.st.full = self.st.full + 1
    return nil, "full"
  end
  self.st.pushed = self.st.pushed + 1
  return id
end

local function new_msg(self, id, item, attempt, now, key)
  return { id = id, item = item, attempt = attempt, queue = self, delivered = now, dedup_key = key or nil }
end

local function buffer(self, list, count)
  self.more = #list >= count
  local now = sched.now()
  for _, e in ipairs(list) do
    local t = self.btail + 1
    self.btail = t
    self.buf[t] = new_msg(self, e[1], e[2], e[3], now, e[4])
    if e[3] > 1 then self.st.reclaimed = self.st.reclaimed + 1 end
  end
end

-- Entries of an XREADGROUP ">" reply: first deliveries.
local function buffer_read(self, entries, count)
  self.more = #entries >= count
  local now = sched.now()
  for _, e in ipairs(entries) do
    local f, item, key = e[2], "", nil
    if f then
      for i = 1, #f, 2 do
        if f[i] == "d" then item = f[i + 1] elseif f[i] == "k" then key = f[i + 1] end
      end
    end
    local t = self.btail + 1
    self.btail = t
    self.buf[t] = new_msg(self, e[1], item, 1, now, key)
  end
end

local fetch, start_flusher

local function read_ahead(self, count)
  fetch(self, count) -- a failure is counted in stats; the next pop that finds nothing sees it
  self.fetching = false
end

local function take(self)
  while self.bhead <= self.btail do
    local h = self.bhead
    local msg = self.buf[h]
    self.buf[h] = nil
    self.bhead = h + 1
    -- held here past visibility: another consumer may have it by now; it
    -- stays pending in Redis and comes back through a reclaim
    if sched.now() - msg.delivered < self.visibility_ms then
      self.st.popped = self.st.popped + 1
      -- half the batch is gone and the last read was full: top the buffer
      -- up to prefetch now, so consumers do not wait a round trip for it
      local held = self.btail - self.bhead + 1
      if self.more and not self.fetching and held < floor(self.prefetch / 2) then
        self.fetching = true
        self.more = false
        sched.spawn(read_ahead, self, self.prefetch - held)
      end
      return msg
    end
  end
  self.bhead, self.btail = 1, 0
  return nil
end

function fetch(self, count)
  count = count or self.prefetch
  local ok, err = ensure_group(self)
  if not ok then return nil, err end
  local now = sched.now()
  local reclaim = now >= self.next_reclaim
  if reclaim then
    self.next_reclaim = now + math.max(10, self.visibility_ms / 4)
  end
  if not reclaim and now < self.promote_at then
    -- between reclaim passes new messages come straight from XREADGROUP:
    -- the script costs the server more than the read itself
    local r = self.redis:call("XREADGROUP", "GROUP", self.group, self.consumer,
      "COUNT", count, "STREAMS", self.stream, ">")
    if type(r) == "table" and r[1] and #r[1][2] > 0 then
      buffer_read(self, r[1][2], count)
      return true
    end
  end
  local r
  r, err = retry_nogroup(self, function()
    return self.redis:eval(POP, 6, self.stream, self.dead_stream, self.delayed, self.delayed_items,
      self.delayed_keys, self.dedup, self.group, self.consumer,
      self.visibility_ms, self.max_attempts, count, reclaim and "1" or "0")
  end)
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  if reclaim then
    -- entries a crashed consumer acknowledged but never saw trimmed
    self.untrimmed = self.untrimmed + 1
    start_flusher(self)
  end
  self.st.dead_lettered = self.st.dead_lettered + r[2]
  -- the script also moved due delayed messages into the stream: run it
  -- again when the next one is due, and at least every PROMOTE_MS for
  -- delayed messages other processes push meanwhile
  self.promote_at = sched.now() + (r[3] >= 0 and min(r[3], PROMOTE_MS) or PROMOTE_MS)
  buffer(self, r[1], count)
  return true
end

local function get_blocker(self)
  local n = #self.blockers
  if n > 0 then
    local c = self.blockers[n]
    self.blockers[n] = nil
    return c
  end
  if self.nblockers >= self.max_blockers then return nil end
  self.nblockers = self.nblockers + 1
  local o = {}
  for k, v in pairs(self.redis.opts) do o[k] = v end
  o.name = nil
  local c = redis.connect(o)
  if not c then self.nblockers = self.nblockers - 1 end
  return c
end

local function put_blocker(self, c)
  if c:state() == "closed" then self.nblockers = self.nblockers - 1; return end
  self.blockers[#self.blockers + 1] = c
end

-- Waits for new messages with a blocking XREADGROUP on a dedicated
-- connection (or a short sleep when every blocker is busy).
local function block(self, ms)
  ms = math.max(1, min(ms, self.promote_at - sched.now()))
  local c = get_blocker(self)
  if not c then
    sched.sleep(min(ms, 10), "keel.redis.queue:pop")
    return
  end
  local ok, r = pcall(c.call_timeout, c, ms + 2000, "XREADGROUP", "GROUP", self.group, self.consumer,
    "COUNT", self.prefetch, "BLOCK", floor(ms), "STREAMS", self.stream, ">")
  if not ok then c:close(); self.nblockers = self.nblockers - 1; error(r, 0) end -- cancelled
  put_blocker(self, c)
  if type(r) == "table" and r[1] then
    buffer_read(self, r[1][2], self.prefetch)
  elseif r == nil then
    -- nil is both "nothing arrived" and a failure; a failure was already
    -- visible to the caller's next fetch, so pause briefly instead of spinning
    local st = c:state()
    if st ~= "ready" then sched.sleep(min(ms, 50), "keel.redis.queue:pop") end
  end
end

-- pop([{wait_ms}]) -> msg | nil, "empty" | "timeout" | "conn: ..."
function Queue:pop(opts)
  local F = "keel.redis.queue:pop"
  self_check(F, self)
  local wait_ms = 0
  if opts ~= nil then
    check.opts(F, opts, POP_OPTS)
    wait_ms = check.number(F, "option 'wait_ms'", opts.wait_ms, 0, 0)
  end
  local msg = take(self)
  if msg then return msg end
  local deadline = sched.now() + wait_ms
  while true do
    local ok, err = fetch(self)
    if not ok then return nil, err end
    msg = take(self)
    if msg then return msg end
    local left = deadline - sched.now()
    if left <= 0 then return nil, wait_ms > 0 and "timeout" or "empty" end
    block(self, min(left, self.block_ms))
    msg = take(self)
    if msg then return msg end
  end
end

local function msg_arg(F, self, msg)
  if type(msg) ~= "table" or type(msg.id) ~= "string" or type(msg.attempt) ~= "number" then
    error(string.format("%s: argument 'msg' must be a message returned by pop (got %s)", F, tostring(msg)), 3)
  end
  return msg.queue == self
end

local function take_batch(self, field)
  local ids = self[field]
  if #ids > ACK_BATCH then
    local rest = {}
    for i = ACK_BATCH + 1, #ids do rest[#rest + 1] = ids[i]; ids[i] = nil end
    self[field] = rest
  else
    self[field] = {}
  end
  return ids
end

-- Sends the acks queued by ack(msg, {wait = false}), all those queued
-- meanwhile in one XACK per round trip, then trims what was acknowledged.
local function flush_acks(self)
  while #self.acks > 0 or #self.kacks > 0 or self.untrimmed > 0 do
    if #self.kacks > 0 then
      local pairs_ = take_batch(self, "kacks") -- id, key, id, key, ...
      local n, err = self.redis:eval(ACK_KEYED, 2, self.stream, self.dedup, self.group, unpack(pairs_))
      if n then
        self.st.acked = self.st.acked + n
        self.untrimmed = self.untrimmed + n
      else
        self.st.ack_errors = self.st.ack_errors + #pairs_ / 2
        self.st.errors = self.st.errors + 1
        self.last_ack_error = err
      end
    end
    if #self.acks > 0 then
      local ids = take_batch(self, "acks")
      local n, err = self.redis:call("XACK", self.stream, self.group, unpack(ids))
      if n then
        self.st.acked = self.st.acked + n
        self.untrimmed = self.untrimmed + n
      else
        -- not acknowledged: these come back through a reclaim (at-least-once)
        self.st.ack_errors = self.st.ack_errors + #ids
        self.st.errors = self.st.errors + 1
        self.last_ack_error = err
      end
    end
    -- trimming waits a moment, so one call covers many acks
    if #self.acks == 0 and #self.kacks == 0 and self.untrimmed > 0 and self.untrimmed < ACK_BATCH
      and not self.flush_now then
      sched.sleep(TRIM_DELAY_MS, "keel.redis.queue:flush")
    end
    if #self.acks == 0 and #self.kacks == 0 and self.untrimmed > 0 then
      self.untrimmed = 0
      local n = self.redis:eval(TRIM, 1, self.stream, self.group, self.trim_slack)
      if n then self.st.trimmed = self.st.trimmed + n else self.st.errors = self.st.errors + 1 end
    end
  end
  self.flusher = nil
  self.flush_now = false
  self.flushed:wake_all()
end

function start_flusher(self)
  if not self.flusher then self.flusher = sched.spawn(flush_acks, self) end
end

-- ack(msg [, {wait = false}]) -> true | nil, "unknown" | nil, "conn: ..."
-- With wait = false the ack is queued and sent with others in one round
-- trip; true then means "queued": if it cannot be delivered the message is
-- redelivered later (stats().ack_errors counts those). The default waits
-- for Redis, and an acknowledged message is then never delivered again.
function Queue:ack(msg, opts)
  local F = "keel.redis.queue:ack"
  self_check(F, self)
  local wait = true
  if opts ~= nil then
    check.opts(F, opts, ACK_OPTS)
    wait = check.boolean(F, "option 'wait'", opts.wait, true)
  end
  if not msg_arg(F, self, msg) then return nil, "unknown" end
  local key = msg.dedup_key
  if not wait then
    local a
    if key then
      a = self.kacks
      a[#a + 1] = msg.id
      a[#a + 1] = key
    else
      a = self.acks
      a[#a + 1] = msg.id
    end
    if not self.flusher then start_flusher(self)
    elseif #a > 100 * ACK_BATCH then self:flush() end -- bounded: the producer waits
    return true
  end
  -- one XACK per ack: its 1 or 0 is this ack's answer, and the acks of one
  -- turn share a write through the client's automatic pipelining. The entry
  -- is trimmed later by the flusher, off the caller's path: acknowledged, it
  -- can no longer be delivered (it is out of the pending list and behind the
  -- group's last-delivered id).
  sched.need_task(F, 2)
  local n, err
  if key then
    n, err = self.redis:eval(ACK_KEYED, 2, self.stream, self.dedup, self.group, msg.id, key)
  else
    n, err = self.redis:call("XACK", self.stream, self.group, msg.id)
  end
  if not n then
    self.st.errors = self.st.errors + 1
    return nil, err
  end
  if n ~= 1 then return nil, "unknown" end
  self.st.acked = self.st.acked + 1
  self.untrimmed = self.untrimmed + 1
  start_flusher(self)
  return true
end

-- Waits until every ack queued with {wait = false} has been sent.
function Queue:flush()
  self_check("keel.redis.queue:flush", self)
  while self.flusher or #self.acks > 0 or #self.kacks > 0 or self.untrimmed > 0 do
    self.flush_now = true
    start_flusher(self)
    self.flushed:wait(nil, "keel.redis.queue:flush")
  end
  return true
end

-- nack(msg [, {delay_ms, error}]) -> true, "requeued" | "dead" | nil, "unknown"
-- A requeued message is redelivered (to any consumer) after delay_ms,
-- at most visibility_ms.
function Queue:nack(msg, opts)
  local F = "keel.redis.queue:nack"
  self_check(F, self)
  local mine = msg_arg(F, self, msg)
  local delay, why = 0, "nack"
  if opts ~= nil then
    check.opts(F, opts, NACK_OPTS)
    delay = check.number(F, "option 'delay_ms'", opts.delay_ms, 0, 0)
    if opts.error ~= nil then why = tostring(opts.error) end
  end
  if not mine then return nil, "unknown" end
  local idle = floor(math.max(0, self.visibility_ms - delay))
  local r, err = self.redis:eval(NACK, 3, self.stream, self.dead_stream, self.dedup, self.group, self.consumer,
    msg.id, idle, msg.attempt, self.max_attempts, msg.item, why, msg.dedup_key or "")
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  if r == 0 then return nil, "unknown" end
  self.st.nacked = self.st.nacked + 1
  -- a requeued message comes back through a reclaim: look soon
  self.next_reclaim = math.min(self.next_reclaim, sched.now() + delay)
  if r == 2 then
    self.st.dead_lettered = self.st.dead_lettered + 1
    return true, "dead"
  end
  return true, "requeued"
end

-- extend(msg, ms) -> true | nil, "unknown": invisible for ms more (at most
-- visibility_ms, the stream's idle clock being the only timer).
function Queue:extend(msg, ms)
  local F = "keel.redis.queue:extend"
  self_check(F, self)
  local mine = msg_arg(F, self, msg)
  ms = check.number(F, "argument 'ms'", ms, nil, 0)
  if not mine then return nil, "unknown" end
  local idle = floor(math.max(0, self.visibility_ms - ms))
  local r, err = self.redis:eval(EXTEND, 1, self.stream, self.group, self.consumer, msg.id, idle)
  if not r then return nil, err end
  if r == 0 then return nil, "unknown" end
  msg.delivered = sched.now() - idle
  return true
end

-- redrive([n]) -> moved: dead letters back onto the queue, oldest first,
-- with fresh attempts. A letter whose dedup key has been taken again stays
-- in the dead-letter stream.
function Queue:redrive(n)
  local F = "keel.redis.queue:redrive"
  self_check(F, self)
  n = check.number(F, "argument 'n'", n, huge, 0)
  local moved, start = 0, "-"
  while moved < n do
    local batch = min(n - moved, 100)
    local r, err = self.redis:eval(REDRIVE, 3, self.stream, self.dead_stream, self.dedup, batch, start)
    if not r then return nil, err end
    moved = moved + r[1]
    if r[2] < batch then break end
    start = "(" .. r[3]
  end
  self.st.redriven = self.st.redriven + moved
  return moved
end

-- dead([n]) -> list of { id, item, attempts, error, source_id, dedup_key } (oldest first)
function Queue:dead(n)
  local F = "keel.redis.queue:dead"
  self_check(F, self)
  n = check.integer(F, "argument 'n'", n, 100, 1, 1e6)
  local r, err = self.redis:call("XRANGE", self.dead_stream, "-", "+", "COUNT", n)
  if not r then return nil, err end
  local out = {}
  for _, e in ipairs(r) do
    local f, d = e[2], { id = e[1] }
    for i = 1, #f, 2 do d[f[i]] = f[i + 1] end
    out[#out + 1] = { id = e[1], item = d.d, attempts = tonumber(d.attempts), error = d.error, source_id = d.id,
                      dedup_key = d.k }
  end
  return out
end

-- info() -> { length, pending, dead } from Redis | nil, err
function Queue:info()
  self_check("keel.redis.queue:info", self)
  local ok, err = ensure_group(self)
  if not ok then return nil, err end
  -- length is then what the stream holds once every acknowledged entry
  -- that can be trimmed is
  self:flush()
  local t = self.redis:eval(TRIM, 1, self.stream, self.group, self.trim_slack)
  if t then self.st.trimmed = self.st.trimmed + t end
  local r
  r, err = self.redis:pipeline(function(p)
    p:call("XLEN", self.stream)
    p:call("XPENDING", self.stream, self.group)
    p:call("XLEN", self.dead_stream)
    p:call("XINFO", "GROUPS", self.stream)
    p:call("ZCARD", self.delayed)
  end)
  if not r then return nil, err end
  local pend = type(r[2]) == "table" and r[2][1] or 0
  local ready = (r[1] or 0) - pend
  for _, g in ipairs(type(r[4]) == "table" and r[4] or {}) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f.name == self.group and type(f.lag) == "number" then ready = f.lag end
  end
  return { length = r[1], pending = pend, ready = ready, dead = r[3], delayed = r[5] or 0 }
end

function Queue:stats()
  self_check("keel.redis.queue:stats", self)
  local s = { buffered = self.btail - self.bhead + 1, blockers = self.nblockers }
  for k, v in pairs(self.st) do s[k] = v end
  return s
end

-- Closes the dedicated blocking connections (the shared client stays open).
function Queue:close()
  self_check("keel.redis.queue:close", self)
  self:flush()
  for _, c in ipairs(self.blockers) do c:close() end
  self.blockers = {}
  self.nblockers = 0
end

function Queue:__tostring()
  return "keel.redis.queue(" .. self.stream .. ")"
end

M.Queue = Queue
return M
