-- keel.redis.queue: an at-least-once work queue on Redis Streams with a
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
--        visibility_ms (XAUTOCLAIM) and dead-letters those handed out
--        max_attempts times; in between XREADGROUP reads new ones, ahead
--        of need, into the consumer's buffer; when there is nothing, a
--        blocking XREADGROUP on a dedicated connection waits (bounded so
--        reclaims keep running). A buffered message is handed to the caller
--        only through the hand-out script (one per turn for every pop of the
--        turn): it checks the message is still pending for this consumer and
--        not handed out since it was buffered, counts the attempt in the
--        level's attempts hash and restarts its idle clock. So attempts count
--        hand-outs, not reads (a crash does not burn what sat in a buffer),
--        and a message acknowledged or taken over elsewhere is never handed
--        out of a buffer.
--        The attempts hash holds, per pending message, "n" while its n-th
--        hand-out is live, "w<n>" after n hand-outs while it waits in a
--        buffer (reclaimed, or nacked); none for a new one.
-- ack  = a script: XACK only while this delivery is the live one (pending
--        for this consumer, idle under visibility_ms, attempts hash at this
--        attempt), so a late ack is "unknown" and an acknowledged message can
--        never be delivered again (it leaves the pending list and is behind
--        the group's last-delivered id). Entries are dropped later, off the
--        caller's path, by XTRIM MINID once no group reading the stream needs
--        them.
-- Dead-lettering is XADD to the dead-letter stream and then XACK: a crash in
-- between duplicates a message, never loses it (and inside one script the
-- two steps are atomic anyway).
-- priority: each priority level the queue declares (option `priorities`)
-- is a stream of its own, level 0 the plain one; consumers read the levels
-- highest first, FIFO within a level.
-- dedup_key: a hash maps each taken key to its message; the key is taken
-- at push (refused with "duplicate" while taken) and freed in the same
-- script that acknowledges or dead-letters the message.
-- Items are strings (numbers are converted): serialise tables yourself.
local check = require "keel.check"
local metrics = require "keel.metrics"
local sched = require "keel.sched"
local redis = require "keel.redis"
local common = require "keel.redis.common"
local queue_levels = require "keel.queue_levels"
local Ccore = require "keel.ffi.core"

local type, tostring, setmetatable, error, tonumber = type, tostring, setmetatable, error, tonumber
local huge, min, floor = math.huge, math.min, math.floor
local unpack = unpack or table.unpack
local ACK_BATCH = 1000
local TRIM_DELAY_MS = 2
local PROMOTE_MS = 250
local TRIM_SLACK = 10000

-- Shared by the push scripts (KEYS[1] the target stream, KEYS[2] the
-- delayed set, KEYS[3..] every level's stream): the streams also hold
-- acknowledged entries not trimmed yet, so near capacity what counts is what
-- is outstanding: pending plus not yet delivered (the lag), for the group
-- furthest behind when several groups read a stream, plus delayed messages.
-- Returns that count and how many acknowledged entries the target stream
-- still holds; its MAXLEN is capacity plus those, so it can never trim an
-- outstanding message.
local OUTSTANDING = [=[
local function outstanding(cap, adding)
  local held = redis.call('ZCARD', KEYS[2])
  local lens, total = {}, 0
  for i = 3, #KEYS do
    lens[i] = redis.call('XLEN', KEYS[i])
    total = total + lens[i]
  end
  if total + held + adding <= cap or total == 0 then return total + held, 0 end
  local n, target_acked = 0, 0
  for i = 3, #KEYS do
    local len, out = lens[i], lens[i]
    if len > 0 then
      local worst
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
        local f = {}
        for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
        if type(f.pending) == 'number' and type(f.lag) == 'number' then
          if worst ~= false then worst = math.max(worst or 0, f.pending + f.lag) end
        else
          worst = false -- unknown lag: count the whole stream
        end
      end
      if worst then out = math.min(len, worst) end
    end
    n = n + out
    if KEYS[i] == KEYS[1] then target_acked = len - out end
  end
  return n + held, target_acked
end
]=]

-- KEYS: target stream, delayed set, level streams...; ARGV: capacity,
-- items... -> { id | false (full), ... }
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

-- KEYS: target stream, delayed set, level streams..., dedup hash (last);
-- ARGV: capacity, item, key -> id | 0 (full) | -1 (duplicate)
local PUSH_KEYED = redis.script([=[
local dedup = table.remove(KEYS)
]=] .. OUTSTANDING .. [=[
if redis.call('HEXISTS', dedup, ARGV[3]) == 1 then return -1 end
local cap = tonumber(ARGV[1])
local n, acked = outstanding(cap, 1)
if n >= cap then return 0 end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', cap + acked, '*', 'd', ARGV[2], 'k', ARGV[3])
redis.call('HSET', dedup, ARGV[3], id)
return id
]=])

-- KEYS: level-0 stream, delayed set, level streams..., then delayed items,
-- sequence, delayed keys, delayed priorities, dedup hash (the last five);
-- ARGV: capacity, delay_ms, item, key or '', level
-- -> n | 0 (full) | -1 (duplicate). The due time is on the server's clock,
-- the same for every process; the pop script moves due messages into their
-- level's stream.
local PUSH_DELAYED = redis.script([=[
local dedup = table.remove(KEYS)
local dprio = table.remove(KEYS)
local dkeys = table.remove(KEYS)
local seq = table.remove(KEYS)
local items = table.remove(KEYS)
]=] .. OUTSTANDING .. [=[
local key = ARGV[4]
if key ~= '' and redis.call('HEXISTS', dedup, key) == 1 then return -1 end
local cap = tonumber(ARGV[1])
local n = outstanding(cap, 1)
if n >= cap then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('INCR', seq)
redis.call('HSET', items, id, ARGV[3])
if key ~= '' then
  redis.call('HSET', dkeys, id, key)
  redis.call('HSET', dedup, key, 'd' .. id)
end
if ARGV[5] ~= '0' then redis.call('HSET', dprio, id, ARGV[5]) end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
return id
]=])

-- Frees a message's dedup key if the message still holds it.
local RELEASE = [=[
local function release(dedup, key, id)
  if key and key ~= '' and redis.call('HGET', dedup, key) == id then redis.call('HDEL', dedup, key) end
end
]=]

-- The hand-outs a pending message has had, from its attempts hash entry.
local HANDED = [=[
local function handed(v)
  if not v then return 0 end
  return tonumber(string.match(v, '^w?(%d+)$')) or 0
end
]=]

-- KEYS: dead stream, delayed set, delayed items, delayed keys, delayed
-- priorities, dedup hash, then the level streams, highest priority first,
-- then their attempts hashes in the same order
-- ARGV: group, consumer, visibility_ms, max_attempts, count, reclaim(0/1),
--       then the levels, as KEYS
-- -> { {id, item, attempt, dedup key | false, level index}..., dead-lettered
--      count, ms until the next delayed message is due or -1 }
-- (attempt: the one a hand-out would make; the hand-out script decides)
local POP = redis.script(RELEASE .. HANDED .. [[
local out, dead = {}, 0
local nlev = (#KEYS - 6) / 2
local count = tonumber(ARGV[5])
local function level_index(level)
  local zero = 1
  for i = 1, nlev do
    if ARGV[6 + i] == level then return i end
    if ARGV[6 + i] == '0' then zero = i end
  end
  return zero -- a level this consumer does not know: the plain stream
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  local item = redis.call('HGET', KEYS[3], id)
  local key = redis.call('HGET', KEYS[4], id)
  local stream = KEYS[6 + level_index(redis.call('HGET', KEYS[5], id) or '0')]
  if item then
    if key then
      local sid = redis.call('XADD', stream, '*', 'd', item, 'k', key)
      if redis.call('HGET', KEYS[6], key) == 'd' .. id then redis.call('HSET', KEYS[6], key, sid) end
    else
      redis.call('XADD', stream, '*', 'd', item)
    end
  end
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[2], id)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next_in = nxt[2] and math.max(0, tonumber(nxt[2]) - now) or -1
local function field(f, name)
  if not f then return nil end
  for i = 1, #f, 2 do if f[i] == name then return f[i + 1] end end
end
local function reclaim()
  for li = 1, nlev do
    local stream, level, att = KEYS[6 + li], ARGV[6 + li], KEYS[6 + nlev + li]
    local c = redis.call('XAUTOCLAIM', stream, ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', count)
    for _, e in ipairs(c[2]) do
      local id, item, key = e[1], field(e[2], 'd'), field(e[2], 'k')
      local n = handed(redis.call('HGET', att, id))
      if item == nil then
        redis.call('XACK', stream, ARGV[1], id)
        redis.call('HDEL', att, id)
      elseif n >= tonumber(ARGV[4]) then
        local letter = {'d', item, 'id', id, 'attempts', n, 'error', 'visibility timeout'}
        if key then letter[#letter + 1] = 'k'; letter[#letter + 1] = key end
        if level ~= '0' then letter[#letter + 1] = 'p'; letter[#letter + 1] = level end
        redis.call('XADD', KEYS[1], '*', unpack(letter))
        redis.call('XACK', stream, ARGV[1], id)
        redis.call('HDEL', att, id)
        release(KEYS[6], key, id)
        dead = dead + 1
      else
        -- the expired delivery is over: its late ack finds 'w', not its attempt
        redis.call('HSET', att, id, 'w' .. n)
        out[#out + 1] = {id, item, n + 1, key or false, li}
      end
    end
  end
end
local reclaimed = false
if ARGV[6] == '1' then reclaim(); reclaimed = true end
-- the first level with new messages only: a lower level's read now would sit
-- in the consumer's buffer ahead of higher ones arriving meanwhile
if #out == 0 then
  for li = 1, nlev do
    local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS', KEYS[6 + li], '>')
    if r then
      for _, e in ipairs(r[1][2]) do
        out[#out + 1] = {e[1], field(e[2], 'd') or '', 1, field(e[2], 'k') or false, li}
      end
    end
    if #out > 0 then break end
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

-- live(stream, att, group, consumer, id, attempt, visibility_ms): whether
-- that delivery is still the live one: pending for this consumer, its idle
-- clock (restarted at hand-out and by extend) under visibility_ms, and not
-- reclaimed, nacked or handed out again since (the attempts hash still at
-- this attempt).
local LIVE = [=[
local function live(stream, att, group, consumer, id, attempt, vis)
  local p = redis.call('XPENDING', stream, group, id, id, 1)[1]
  if not p or p[2] ~= consumer or tonumber(p[3]) >= tonumber(vis) then return false end
  return redis.call('HGET', att, id) == attempt
end
]=]

-- KEYS: stream, dead stream, dedup hash, attempts hash
-- ARGV: group, consumer, id, idle, attempt, max_attempts, item, error, key or '', level, visibility_ms
-- -> 0 unknown, 1 requeued, 2 dead
local NACK = redis.script(RELEASE .. LIVE .. [[
if not live(KEYS[1], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[11]) then return 0 end
if tonumber(ARGV[5]) >= tonumber(ARGV[6]) then
  local letter = {'d', ARGV[7], 'id', ARGV[3], 'attempts', ARGV[5], 'error', ARGV[8]}
  if ARGV[9] ~= '' then letter[#letter + 1] = 'k'; letter[#letter + 1] = ARGV[9] end
  if ARGV[10] ~= '0' then letter[#letter + 1] = 'p'; letter[#letter + 1] = ARGV[10] end
  redis.call('XADD', KEYS[2], '*', unpack(letter))
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HDEL', KEYS[4], ARGV[3])
  release(KEYS[3], ARGV[9], ARGV[3])
  return 2
end
-- over: a late ack of this delivery is unknown; a reclaim brings it back
redis.call('HSET', KEYS[4], ARGV[3], 'w' .. ARGV[5])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
]])

-- KEYS: stream, dedup hash, attempts hash; ARGV: group, consumer,
-- visibility_ms, then id, attempt, key or '' per message -> { 1 | 0 per
-- message } (1: acknowledged; its key is free again)
local ACK = redis.script(RELEASE .. LIVE .. [[
local out = {}
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if live(KEYS[1], KEYS[3], ARGV[1], ARGV[2], id, ARGV[i + 1], ARGV[3])
      and redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    redis.call('HDEL', KEYS[3], id)
    release(KEYS[2], ARGV[i + 2], id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
]])

-- KEYS: stream, attempts hash; ARGV: group, consumer, id, idle, attempt,
-- visibility_ms -> 1 | 0 (not the live delivery)
local EXTEND = redis.script(LIVE .. [[
if not live(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
]])

-- KEYS: stream, attempts hash; ARGV: group, consumer, id... -> { attempt |
-- 0 per id }: hands buffered messages to user code. 0: no longer this
-- consumer's (acknowledged, dead-lettered, reclaimed elsewhere) or already
-- handed out from another copy. Otherwise the attempt is counted and the
-- idle clock restarted, so visibility_ms runs from the hand-out.
local HAND_OUT = redis.script(HANDED .. [[
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  local v = redis.call('HGET', KEYS[2], id)
  if not p or p[2] ~= ARGV[2] or (v and string.sub(v, 1, 1) ~= 'w') then
    out[#out + 1] = 0
  else
    local n = handed(v) + 1
    redis.call('HSET', KEYS[2], id, n)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', 0, 'JUSTID')
    out[#out + 1] = n
  end
end
return out
]])

-- KEYS: dead stream, dedup hash, level streams (as POP); ARGV: n, start
-- ('-' or '(' .. id), levels... -> { moved, scanned, last scanned id }.
-- A letter goes back to its level's stream (the plain one for a level this
-- queue does not declare); one whose dedup key is taken again stays.
local REDRIVE = redis.script [[
local nlev = #KEYS - 2
local function stream_of(level)
  local zero = KEYS[3]
  for i = 1, nlev do
    if ARGV[2 + i] == level then return KEYS[2 + i] end
    if ARGV[2 + i] == '0' then zero = KEYS[2 + i] end
  end
  return zero
end
local r = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[1])
local moved = 0
for _, e in ipairs(r) do
  local f, item, key, level = e[2], '', nil, '0'
  for i = 1, #f, 2 do
    local name, v = f[i], f[i + 1]
    if name == 'd' then item = v elseif name == 'k' then key = v elseif name == 'p' then level = v end
  end
  local stream = stream_of(level)
  if not key then
    redis.call('XADD', stream, '*', 'd', item)
    redis.call('XDEL', KEYS[1], e[1])
    moved = moved + 1
  elseif redis.call('HEXISTS', KEYS[2], key) == 0 then
    local id = redis.call('XADD', stream, '*', 'd', item, 'k', key)
    redis.call('HSET', KEYS[2], key, id)
    redis.call('XDEL', KEYS[1], e[1])
    moved = moved + 1
  end
end
return { moved, #r, r[#r] and r[#r][1] or '' }
]]

-- KEYS: the level streams, highest first; ARGV: group, n -> { {id, item,
-- key | false, level index}... }: up to n entries not yet delivered to the
-- group, in the order pops take them.
local PEEK = redis.script [=[
local out, n = {}, tonumber(ARGV[2])
for li = 1, #KEYS do
  if #out >= n then break end
  local last = '0-0'
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[li])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f.name == ARGV[1] then last = f['last-delivered-id'] end
  end
  for _, e in ipairs(redis.call('XRANGE', KEYS[li], '(' .. last, '+', 'COUNT', n - #out)) do
    local item, key = '', false
    for i = 1, #e[2], 2 do
      if e[2][i] == 'd' then item = e[2][i + 1] elseif e[2][i] == 'k' then key = e[2][i + 1] end
    end
    out[#out + 1] = {e[1], item, key, li}
  end
end
return out
]=]

local Queue = {}
Queue.__index = Queue

local NEW_OPTS = check.set { "redis", "name", "prefix", "group", "consumer", "capacity", "visibility_ms",
  "max_attempts", "prefetch", "max_blockers", "block_ms", "priorities", "dead_letter" }
local PUSH_OPTS = check.set { "delay_ms", "priority", "dedup_key" }
local POP_OPTS = check.set { "wait_ms" }
local ACK_OPTS = check.set { "wait" }
local NACK_OPTS = check.set { "delay_ms", "error" }

local function self_check(fname, self) common.self(fname, self, Queue, 1) end

local function default_consumer()
  local pid = "?"
  local f = io.open("/proc/self/stat")
  if f then pid = (f:read("*l") or ""):match("^(%d+)") or "?"; f:close() end
  local w = sched.world()
  return string.format("%s-%08x", pid, tonumber(Ccore.keel_rand_next(w.rand) % 0x100000000))
end

-- The declared priority levels, highest first; 0 is always one of them.
local function parse_levels(F, list)
  return queue_levels.parse(F, list, 3) or { 0 }
end

local M = {}

function M.new(opts)
  local F = "keel.redis.queue"
  opts = check.opts(F, opts, NEW_OPTS)
  if opts.dead_letter ~= nil then
    -- the local queue's dead_letter is another queue object; here dead
    -- letters always go to the queue's own dead stream, in the same script
    -- as the XACK, so nothing is lost between two queues
    error(F .. ": option 'dead_letter' is not available on Redis: dead letters stay in the queue's own "
      .. "dead-letter stream ({prefix}:dead); read them with q:dead(n) and move them back with q:redrive(n)", 2)
  end
  local client = common.client(F, opts.redis)
  local name = opts.name ~= nil and check.string(F, "option 'name'", opts.name) or nil
  local prefix = common.prefix(F, opts, "queue")
  local vis = opts.visibility_ms -- as keel.queue's: any number in (0, 1e15], whole ms here
  if vis == nil then vis = 30000 end
  if type(vis) ~= "number" or not (vis > 0 and vis <= 1e15) then
    error(string.format("%s: option 'visibility_ms' must be a number in (0, 1e15] (got %s)", F, tostring(vis)), 2)
  end
  local levels = parse_levels(F, opts.priorities)
  local base = "{" .. prefix .. "}:s"
  local self = setmetatable({
    redis = client, name = name,
    stream = base, dead_stream = "{" .. prefix .. "}:dead",
    delayed = "{" .. prefix .. "}:delayed", delayed_items = "{" .. prefix .. "}:delayed:items",
    seq = "{" .. prefix .. "}:seq", dedup = "{" .. prefix .. "}:dedup",
    delayed_keys = "{" .. prefix .. "}:delayed:keys", delayed_prio = "{" .. prefix .. "}:delayed:prio",
    levels = levels, streams = {}, level_ix = {}, stream_ix = {}, level_args = {},
    group = check.string(F, "option 'group'", opts.group, "keel"),
    consumer = opts.consumer ~= nil and check.string(F, "option 'consumer'", opts.consumer) or default_consumer(),
    capacity = check.integer(F, "option 'capacity'", opts.capacity, 10000, 1, 2 ^ 53),
    visibility_ms = math.ceil(vis),
    max_attempts = check.integer(F, "option 'max_attempts'", opts.max_attempts, 5, 1, 2147483647),
    prefetch = check.integer(F, "option 'prefetch'", opts.prefetch, 16, 1, 10000),
    max_blockers = check.integer(F, "option 'max_blockers'", opts.max_blockers, 4, 0, 1000),
    block_ms = check.number(F, "option 'block_ms'", opts.block_ms, min(1000, math.max(1, floor(vis / 2))), 1, 1e9),
    -- per level (index into levels): buffered messages and their ids, acks
    -- queued with {wait = false} (id, attempt, key triples), acknowledged
    -- entries not trimmed yet, the open push and hand-out batches, the
    -- attempts hash
    bufs = {}, held = {}, nbuf = 0, acks = {}, untrimmed = {}, pbatch = {},
    batches = { hand = {}, ack = {} }, atts = {},
    blockers = {}, nblockers = 0, blocker_wait = sched.waitqueue(),
    group_ready = false, next_reclaim = -huge, promote_at = -huge,
    trim_slack = TRIM_SLACK, flusher = nil, flushed = sched.waitqueue(),
    st = { pushed = 0, popped = 0, acked = 0, nacked = 0, dead_lettered = 0, reclaimed = 0, full = 0,
           redriven = 0, errors = 0, ack_errors = 0, trimmed = 0, delayed = 0, duplicates = 0,
           late_acks = 0, superseded = 0 },
  }, Queue)
  for i, level in ipairs(levels) do
    local stream = level == 0 and base or string.format("%s:%d", base, level)
    self.streams[i], self.level_ix[level], self.stream_ix[stream] = stream, i, i
    self.level_args[i] = string.format("%d", level)
    self.bufs[i], self.held[i] = { h = 1, t = 0 }, {}
    self.acks[i], self.untrimmed[i] = {}, 0
    self.atts[i] = stream .. ":att:" .. self.group -- each group counts its own attempts
  end
  self.zero_ix = self.level_ix[0]
  self.single = #levels == 1
  -- script keys: a push's (after its target stream), a pop's, a redrive's
  self.push_tail = { self.delayed, unpack(self.streams) }
  self.pop_keys = { self.dead_stream, self.delayed, self.delayed_items, self.delayed_keys, self.delayed_prio,
                    self.dedup, unpack(self.streams) }
  for i = 1, #self.atts do self.pop_keys[#self.pop_keys + 1] = self.atts[i] end
  metrics.register("redis_queue", name, self)
  return self
end

-- { a..., b... } (for script keys followed by arguments)
local function join(a, ...)
  local out = { unpack(a) }
  local n = #out
  for i = 1, select("#", ...) do out[n + i] = select(i, ...) end
  return out
end

local function ensure_group(self)
  if self.group_ready then return true end
  for _, stream in ipairs(self.streams) do
    local ok, err = self.redis:call("XGROUP", "CREATE", stream, self.group, "0", "MKSTREAM")
    if not ok and not (err and err:find("^BUSYGROUP")) then return nil, err end
  end
  self.group_ready = true
  return true
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

local function send_pushes(self, li, b)
  if self.pbatch[li] == b then self.pbatch[li] = nil end
  local args = join({ self.streams[li] }, unpack(self.push_tail))
  local nkeys = #args
  args[nkeys + 1] = self.capacity
  for i, item in ipairs(b.items) do args[nkeys + 1 + i] = item end
  b.r, b.err = self.redis:eval(PUSH_MANY, nkeys, unpack(args))
  b.done = true
  b.q:wake_all()
end

-- A single-push script's answer (0 full, -1 duplicate, else the id) as
-- push returns it, counted.
local function push_result(self, id, err)
  if err then
    self.st.errors = self.st.errors + 1
    return nil, err
  elseif id == 0 then
    self.st.full = self.st.full + 1
    return nil, "full"
  elseif id == -1 then
    self.st.duplicates = self.st.duplicates + 1
    return nil, "duplicate"
  end
  self.st.pushed = self.st.pushed + 1
  return id
end

local function level_arg(F, self, priority)
  if priority == nil or priority == 0 then return self.zero_ix end
  local li = type(priority) == "number" and self.level_ix[priority]
  if not li then
    error(string.format("%s: option 'priority' must be one of the queue's priorities (option 'priorities'; got %s)",
      F, tostring(priority)), 3)
  end
  return li
end

-- push(item [, {priority, delay_ms, dedup_key}]) -> id | nil, "full" |
-- nil, "duplicate" | nil, "conn: ..."
-- id is the stream id, or "d<n>" for a delayed message (it gets a stream
-- id when it is due). A push whose task is cancelled while waiting may
-- still be enqueued.
function Queue:push(item, opts)
  local F = "keel.redis.queue:push"
  self_check(F, self)
  item = item_arg(F, item)
  local delay, key, li = 0, nil, self.zero_ix
  if opts ~= nil then
    check.opts(F, opts, PUSH_OPTS)
    li = level_arg(F, self, opts.priority)
    delay = check.number(F, "option 'delay_ms'", opts.delay_ms, 0, 0, 1e15)
    if opts.dedup_key ~= nil then
      key = check.key(F, "option 'dedup_key'", opts.dedup_key)
      key = type(key) == "number" and string.format("%.17g", key) or key
    end
  end
  sched.need_task(F, 2)
  if delay > 0 then
    local args = join({ self.stream }, unpack(self.push_tail))
    local nkeys = #args + 5
    args = join(args, self.delayed_items, self.seq, self.delayed_keys, self.delayed_prio, self.dedup,
      self.capacity, floor(delay + 0.5), item, key or "", self.level_args[li])
    local id, err = push_result(self, self.redis:eval(PUSH_DELAYED, nkeys, unpack(args)))
    if not id then return nil, err end
    self.st.delayed = self.st.delayed + 1
    -- ready within PROMOTE_MS of its due time, or sooner for this process
    local due = sched.now() + delay
    if due < self.promote_at then self.promote_at = due end
    return "d" .. id
  end
  if key then
    local args = join({ self.streams[li] }, unpack(self.push_tail))
    local nkeys = #args + 1
    args = join(args, self.dedup, self.capacity, item, key)
    return push_result(self, self.redis:eval(PUSH_KEYED, nkeys, unpack(args)))
  end
  local b = self.pbatch[li]
  if not b then
    b = { items = {}, q = sched.waitqueue() }
    self.pbatch[li] = b
    sched.spawn(send_pushes, self, li, b)
  end
  local i = #b.items + 1
  b.items[i] = item
  if i >= PUSH_BATCH then self.pbatch[li] = nil end
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

local function add(self, li, id, item, attempt, now, key)
  -- a reclaim may return a message this consumer still holds unhanded (read
  -- and buffered longer than visibility_ms): one copy is enough
  if self.held[li][id] then return end
  self.held[li][id] = true
  local b = self.bufs[li]
  local t = b.t + 1
  b.t = t
  b[t] = { id = id, item = item, attempt = attempt, queue = self, delivered = now, dedup_key = key or nil,
           level = li, priority = self.levels[li] }
  self.nbuf = self.nbuf + 1
end

-- Entries from the pop script: { id, item, attempt, key | false, level index }
local function buffer(self, list, count)
  self.more = #list >= count
  local now = sched.now()
  for _, e in ipairs(list) do
    add(self, e[5], e[1], e[2], e[3], now, e[4])
    if e[3] > 1 then self.st.reclaimed = self.st.reclaimed + 1 end
  end
end

-- Entries of an XREADGROUP ">" reply for level li: first deliveries.
local function buffer_read(self, entries, count, li)
  if count then self.more = #entries >= count end
  local now = sched.now()
  for _, e in ipairs(entries) do
    local f, item, key = e[2], "", nil
    if f then
      for i = 1, #f, 2 do
        if f[i] == "d" then item = f[i + 1] elseif f[i] == "k" then key = f[i + 1] end
      end
    end
    add(self, li, e[1], item, 1, now, key)
  end
end

local fetch, start_flusher

local function read_ahead(self, count)
  fetch(self, count) -- a failure is counted in stats; the next pop that finds nothing sees it
  self.fetching = false
end

-- The next buffered message, highest level first (not handed out yet).
local function take(self)
  local bufs = self.bufs
  for li = 1, #bufs do
    local b = bufs[li]
    if b.h <= b.t then
      local h = b.h
      local msg = b[h]
      b[h] = nil
      b.h = h + 1
      self.nbuf = self.nbuf - 1
      self.held[li][msg.id] = nil
      -- half the batch is gone and the last read was full: top the buffer
      -- up to prefetch now, so consumers do not wait a round trip for it
      local held = self.nbuf
      if self.more and not self.fetching and held < floor(self.prefetch / 2) then
        self.fetching = true
        self.more = false
        sched.spawn(read_ahead, self, self.prefetch - held)
      end
      return msg
    end
    b.h, b.t = 1, 0
  end
  return nil
end

-- Hand-outs and acks that wait, made by any tasks during one scheduler
-- turn, go out in one script call per level and kind: one round trip and
-- one script run for many messages.
local BATCH_MAX = 500

local function send_batch(self, kind, li, b)
  local open = self.batches[kind]
  if open[li] == b then open[li] = nil end
  if kind == "hand" then
    b.r, b.err = self.redis:eval(HAND_OUT, 2, self.streams[li], self.atts[li], self.group, self.consumer,
      unpack(b.args))
  else
    b.r, b.err = self.redis:eval(ACK, 3, self.streams[li], self.dedup, self.atts[li], self.group, self.consumer,
      self.visibility_ms, unpack(b.args))
  end
  b.done = true
  b.q:wake_all()
end

-- Adds one message's script arguments to the turn's batch and waits for
-- its answer -> the script's entry for it | nil, err
local function batched(self, kind, li, F, ...)
  local open = self.batches[kind]
  local b = open[li]
  if not b then
    b = { args = {}, n = 0, q = sched.waitqueue() }
    open[li] = b
    sched.spawn(send_batch, self, kind, li, b)
  end
  local i = b.n + 1
  b.n = i
  local args = b.args
  for k = 1, select("#", ...) do args[#args + 1] = select(k, ...) end
  if i >= BATCH_MAX then open[li] = nil end
  if not b.done then b.q:wait(nil, F) end
  if not b.r then return nil, b.err end
  return b.r[i]
end

-- The next buffered message handed to user code -> msg | nil (buffer
-- empty) | nil, err. A message whose hand-out failed stays pending for this
-- consumer and comes back through a reclaim after visibility_ms.
local function next_msg(self)
  while true do
    local msg = take(self)
    if not msg then return nil end
    local n, err = batched(self, "hand", msg.level, "keel.redis.queue:pop", msg.id)
    if not n then
      self.st.errors = self.st.errors + 1
      return nil, err
    end
    if n > 0 then
      msg.attempt, msg.delivered = n, sched.now()
      self.st.popped = self.st.popped + 1
      return msg
    end
    self.st.superseded = self.st.superseded + 1
  end
end

local function mark_untrimmed(self)
  for li = 1, #self.streams do self.untrimmed[li] = self.untrimmed[li] + 1 end
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
  if not reclaim and now < self.promote_at and self.single then
    -- between reclaim passes new messages come straight from XREADGROUP:
    -- the script costs the server more than the read itself (with several
    -- levels the script reads them in order in one round trip)
    local r = self.redis:call("XREADGROUP", "GROUP", self.group, self.consumer,
      "COUNT", count, "STREAMS", self.stream, ">")
    if type(r) == "table" and r[1] and #r[1][2] > 0 then
      buffer_read(self, r[1][2], count, 1)
      return true
    end
  end
  local args = join(self.pop_keys, self.group, self.consumer, self.visibility_ms, self.max_attempts, count,
    reclaim and "1" or "0", unpack(self.level_args))
  local r
  r, err = retry_nogroup(self, function()
    return self.redis:eval(POP, #self.pop_keys, unpack(args))
  end)
  if not r then self.st.errors = self.st.errors + 1; return nil, err end
  if reclaim then
    -- entries a crashed consumer acknowledged but never saw trimmed
    mark_untrimmed(self)
    start_flusher(self)
  end
  self.st.dead_lettered = self.st.dead_lettered + r[2]
  -- the script also moved due delayed messages into the streams: run it
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
  local c = redis.connect(self.redis:connect_opts())
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
  local cmd = { "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.prefetch, "BLOCK", floor(ms),
                "STREAMS", unpack(self.streams) }
  for _ = 1, #self.streams do cmd[#cmd + 1] = ">" end
  local ok, r = pcall(c.call_timeout, c, ms + 2000, unpack(cmd))
  if not ok then c:close(); self.nblockers = self.nblockers - 1; error(r, 0) end -- cancelled
  put_blocker(self, c)
  if type(r) == "table" and r[1] then
    -- one reply per stream that had entries; every one is ours now
    for i, s in ipairs(r) do
      local li = self.stream_ix[s[1]]
      if li then buffer_read(self, s[2], i == 1 and self.prefetch or nil, li) end
    end
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
  local msg, err = next_msg(self)
  if msg or err then return msg, err end
  local deadline = sched.now() + wait_ms
  while true do
    local ok
    ok, err = fetch(self)
    if not ok then return nil, err end
    msg, err = next_msg(self)
    if msg or err then return msg, err end
    local left = deadline - sched.now()
    if left <= 0 then return nil, wait_ms > 0 and "timeout" or "empty" end
    block(self, min(left, self.block_ms))
    msg, err = next_msg(self)
    if msg or err then return msg, err end
  end
end

local function msg_arg(F, self, msg)
  if type(msg) ~= "table" or type(msg.id) ~= "string" or type(msg.attempt) ~= "number" then
    error(string.format("%s: argument 'msg' must be a message returned by pop (got %s)", F, tostring(msg)), 3)
  end
  return msg.queue == self and self.streams[msg.level] ~= nil
end

-- Up to ACK_BATCH entries (n per entry) from list lists[li]; the rest stays.
local function take_batch(lists, li, n)
  local ids = lists[li]
  local cut = ACK_BATCH * n
  if #ids > cut then
    local rest = {}
    for i = cut + 1, #ids do rest[#rest + 1] = ids[i]; ids[i] = nil end
    lists[li] = rest
  else
    lists[li] = {}
  end
  return ids
end

local function acks_queued(self)
  for li = 1, #self.streams do
    if #self.acks[li] > 0 then return true end
  end
  return false
end

local function untrimmed_total(self)
  local n = 0
  for li = 1, #self.streams do n = n + self.untrimmed[li] end
  return n
end

-- Sends the acks queued by ack(msg, {wait = false}), all those queued
-- meanwhile in one XACK per stream and round trip, then trims what was
-- acknowledged.
local function flush_acks(self)
  while acks_queued(self) or untrimmed_total(self) > 0 do
    for li, stream in ipairs(self.streams) do
      if #self.acks[li] > 0 then
        local triples = take_batch(self.acks, li, 3) -- id, attempt, key, ...
        local r, err = self.redis:eval(ACK, 3, stream, self.dedup, self.atts[li], self.group, self.consumer,
          self.visibility_ms, unpack(triples))
        if r then
          local n = 0
          for _, v in ipairs(r) do n = n + v end
          self.st.acked = self.st.acked + n
          self.st.late_acks = self.st.late_acks + #r - n
          self.untrimmed[li] = self.untrimmed[li] + n
        else
          -- not acknowledged: these come back through a reclaim (at-least-once)
          self.st.ack_errors = self.st.ack_errors + #triples / 3
          self.st.errors = self.st.errors + 1
          self.last_ack_error = err
        end
      end
    end
    -- trimming waits a moment, so one call covers many acks
    local un = untrimmed_total(self)
    if not acks_queued(self) and un > 0 and un < ACK_BATCH and not self.flush_now then
      sched.sleep(TRIM_DELAY_MS, "keel.redis.queue:flush")
    end
    if not acks_queued(self) then
      for li, stream in ipairs(self.streams) do
        if self.untrimmed[li] > 0 then
          self.untrimmed[li] = 0
          local n = self.redis:eval(TRIM, 1, stream, self.group, self.trim_slack)
          if n then self.st.trimmed = self.st.trimmed + n else self.st.errors = self.st.errors + 1 end
        end
      end
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
  local key, li = msg.dedup_key or "", msg.level
  if not wait then
    local a = self.acks[li]
    local n = #a
    a[n + 1], a[n + 2], a[n + 3] = msg.id, msg.attempt, key
    if not self.flusher then start_flusher(self)
    elseif #a > 100 * ACK_BATCH then self:flush() end -- bounded: the producer waits
    return true
  end
  -- the acks of one turn share one script call; each gets its own 1 or 0.
  -- The entry is trimmed later by the flusher, off the caller's path:
  -- acknowledged, it can no longer be delivered (it is out of the pending
  -- list and behind the group's last-delivered id).
  sched.need_task(F, 2)
  local r, err = batched(self, "ack", li, F, msg.id, msg.attempt, key)
  if not r then
    self.st.errors = self.st.errors + 1
    return nil, err
  end
  if r ~= 1 then
    self.st.late_acks = self.st.late_acks + 1
    return nil, "unknown"
  end
  self.st.acked = self.st.acked + 1
  self.untrimmed[li] = self.untrimmed[li] + 1
  start_flusher(self)
  return true
end

-- Waits until every ack queued with {wait = false} has been sent.
function Queue:flush()
  self_check("keel.redis.queue:flush", self)
  while self.flusher or acks_queued(self) or untrimmed_total(self) > 0 do
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
  local r, err = self.redis:eval(NACK, 4, self.streams[msg.level], self.dead_stream, self.dedup,
    self.atts[msg.level], self.group, self.consumer, msg.id, idle, msg.attempt, self.max_attempts, msg.item, why,
    msg.dedup_key or "", self.level_args[msg.level], self.visibility_ms)
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
  local r, err = self.redis:eval(EXTEND, 2, self.streams[msg.level], self.atts[msg.level], self.group,
    self.consumer, msg.id, idle, msg.attempt, self.visibility_ms)
  if not r then return nil, err end
  if r == 0 then return nil, "unknown" end
  msg.delivered = sched.now() - idle
  return true
end

-- redrive([n]) -> moved: dead letters back onto the queue (each to its
-- priority level), oldest first, with fresh attempts. A letter whose dedup
-- key has been taken again stays in the dead-letter stream.
function Queue:redrive(n)
  local F = "keel.redis.queue:redrive"
  self_check(F, self)
  n = check.number(F, "argument 'n'", n, huge, 0)
  local moved, start = 0, "-"
  local keys = join({ self.dead_stream, self.dedup }, unpack(self.streams))
  while moved < n do
    local batch = min(n - moved, 100)
    local r, err = self.redis:eval(REDRIVE, #keys, unpack(join(keys, batch, start, unpack(self.level_args))))
    if not r then return nil, err end
    moved = moved + r[1]
    if r[2] < batch then break end
    start = "(" .. r[3]
  end
  self.st.redriven = self.st.redriven + moved
  return moved
end

-- peek([n = 1]) -> up to n messages not yet delivered, in pop order,
-- unchanged: { id, item, attempt = 0, priority, dedup_key } (not deliveries: they cannot
-- be acked). Messages waiting for redelivery (nacked, or idle past
-- visibility) and delayed ones are not shown.
function Queue:peek(n)
  local F = "keel.redis.queue:peek"
  self_check(F, self)
  n = check.integer(F, "argument 'n'", n, 1, 0, 1e6)
  if n == 0 then return {} end
  local ok, err = ensure_group(self)
  if not ok then return nil, err end
  local args = join(self.streams, self.group, n)
  local r
  r, err = self.redis:eval(PEEK, #self.streams, unpack(args))
  if not r then return nil, err end
  local out = {}
  for i, e in ipairs(r) do
    out[i] = { id = e[1], item = e[2], attempt = 0, dedup_key = e[3] or nil, priority = self.levels[e[4]] }
  end
  return out
end

-- dead([n]) -> list of { id, item, attempts, error, source_id, dedup_key,
-- priority } (oldest first)
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
                      dedup_key = d.k, priority = tonumber(d.p) or 0 }
  end
  return out
end

-- info() -> { length, pending, ready, dead, delayed } from Redis, summed
-- over the priority levels | nil, err
function Queue:info()
  self_check("keel.redis.queue:info", self)
  local ok, err = ensure_group(self)
  if not ok then return nil, err end
  -- length is then what the streams hold once every acknowledged entry
  -- that can be trimmed is
  self:flush()
  for _, stream in ipairs(self.streams) do
    local t = self.redis:eval(TRIM, 1, stream, self.group, self.trim_slack)
    if t then self.st.trimmed = self.st.trimmed + t end
  end
  local r
  r, err = self.redis:pipeline(function(p)
    p:call("XLEN", self.dead_stream)
    p:call("ZCARD", self.delayed)
    for _, stream in ipairs(self.streams) do
      p:call("XLEN", stream)
      p:call("XPENDING", stream, self.group)
      p:call("XINFO", "GROUPS", stream)
    end
  end)
  if not r then return nil, err end
  local info = { length = 0, pending = 0, ready = 0, dead = r[1], delayed = r[2] or 0 }
  for li = 1, #self.streams do
    local len, pend, groups = r[3 * li] or 0, r[3 * li + 1], r[3 * li + 2]
    pend = type(pend) == "table" and pend[1] or 0
    local ready = len - pend
    for _, g in ipairs(type(groups) == "table" and groups or {}) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if f.name == self.group and type(f.lag) == "number" then ready = f.lag end
    end
    info.length, info.pending, info.ready = info.length + len, info.pending + pend, info.ready + ready
  end
  return info
end

function Queue:stats()
  self_check("keel.redis.queue:stats", self)
  local s = { buffered = self.nbuf, blockers = self.nblockers, capacity = self.capacity }
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
