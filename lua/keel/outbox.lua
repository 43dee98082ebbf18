-- keel.outbox: the Transactional Outbox on keel.store. An event is a row
-- written in the same transaction as the business change; a relay task
-- publishes committed rows in order per aggregate, at least once, and marks
-- them sent. See doc/outbox.md.
local sched = require "keel.sched"
local check = require "keel.check"
local json = require "keel.json"
local store = require "keel.store"
local metrics = require "keel.metrics"
local keel = require "keel"

local type, tostring, format, pairs, ipairs, setmetatable, getmetatable, pcall =
  type, tostring, string.format, pairs, ipairs, setmetatable, getmetatable, pcall
local concat = table.concat

local Outbox = {}
Outbox.__index = Outbox
local Relay = {}
Relay.__index = Relay

local SEP = "\31" -- between aggregate type and id in an aggregate key
local CLEAN_BATCH = 1000 -- rows deleted per retention pass

local function ident(F, what, v)
  check.string(F, what, v)
  if not v:match("^[%a_][%w_]*$") or #v > 60 then
    error(format("%s: %s must be an SQL identifier ([A-Za-z_][A-Za-z0-9_]*, at most 60) (got %q)", F, what, v), 3)
  end
  return v
end

local OPTS = check.set { "store", "name" }

local function new(opts)
  local F = "keel.outbox"
  opts = check.opts(F, opts, OPTS)
  local db = opts.store
  if not store.is_store(db) then
    error(F .. ": option 'store' must be a keel.store (got " .. tostring(db) .. ")", 2)
  end
  local name = opts.name == nil and "outbox" or ident(F, "option 'name'", opts.name)
  sched.need_task(F, 2)
  -- Debezium's outbox router layout (id, aggregate_type, aggregate_id,
  -- type, payload, headers, created), plus the relay's bookkeeping.
  local ok, code, msg = db:tx(function(tx)
    tx:exec(format([[
      create table if not exists %s (
        id integer primary key autoincrement,
        aggregate_type text not null,
        aggregate_id text not null,
        type text not null,
        payload text not null,
        headers text,
        created integer not null,
        sent integer,
        attempts integer not null default 0,
        last_error text);
      create index if not exists %s_unsent on %s(id) where sent is null;
      create index if not exists %s_sent on %s(sent) where sent is not null;
      create table if not exists %s_dead (
        id integer primary key, aggregate_type text, aggregate_id text, type text,
        payload text, headers text, created integer, attempts integer, error text, dead_at integer);
      create table if not exists %s_lease (
        id integer primary key check (id = 1), owner text not null, expires integer not null);
    ]], name, name, name, name, name, name, name))
    return true
  end)
  if not ok then error(format("%s: cannot create the outbox tables: %s: %s", F, tostring(code), tostring(msg)), 2) end
  local self = setmetatable({ db = db, name = name, dirty = false, relays = {} }, Outbox)
  self.sql_add = format("insert into %s(aggregate_type, aggregate_id, type, payload, headers, created) "
    .. "values (?, ?, ?, ?, ?, ?)", name)
  db:_on_commit(function()
    if self.dirty then
      self.dirty = false
      for r in pairs(self.relays) do r.wq:wake_all() end
    end
  end)
  return self
end

local function id_string(F, what, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" and v == math.floor(v) and v >= -2 ^ 53 and v <= 2 ^ 53 then return format("%d", v) end
  error(format("%s: %s must be a string or an integer (got %s)", F, what, tostring(v)), 3)
end

-- ob:add(tx, {aggregate_type, aggregate_id, type, payload [, headers]}) -> id
function Outbox:add(tx, evt)
  local F = "outbox:add"
  check.self(F, self, Outbox)
  if not store.is_tx(tx) or not tx.live then
    error(F .. ": argument 'tx' must be the transaction of a running db:tx (got " .. tostring(tx) .. ")", 2)
  end
  if tx.db ~= self.db then error(F .. ": the transaction belongs to another store", 2) end
  if type(evt) ~= "table" then error(F .. ": argument 'evt' must be a table (got " .. type(evt) .. ")", 2) end
  local atype = check.string(F, "field 'aggregate_type'", evt.aggregate_type)
  local aid = id_string(F, "field 'aggregate_id'", evt.aggregate_id)
  local etype = check.string(F, "field 'type'", evt.type)
  local ok, payload = pcall(json.encode, evt.payload)
  if not ok then error(F .. ": field 'payload': " .. tostring(payload):gsub("^.-keel%.json%.encode: ", ""), 2) end
  local headers
  if evt.headers ~= nil then
    if type(evt.headers) ~= "table" then error(F .. ": field 'headers' must be a table", 2) end
    ok, headers = pcall(json.encode, evt.headers)
    if not ok then error(F .. ": field 'headers': " .. tostring(headers):gsub("^.-keel%.json%.encode: ", ""), 2) end
  end
  local _, rowid = tx:exec(self.sql_add, atype, aid, etype, payload, headers, math.floor(keel.wall()))
  if rowid == nil then error(F .. ": the insert failed (the transaction failed)", 2) end
  self.dirty = true
  return rowid
end

-- Pending events, oldest first (for tools and tests).
function Outbox:pending(n)
  check.self("outbox:pending", self, Outbox)
  n = check.integer("outbox:pending", "argument 'n'", n, 100, 1)
  return self.db:query(format("select id, aggregate_type, aggregate_id, type, payload, headers, created, attempts, "
    .. "last_error from %s where sent is null order by id limit ?", self.name), n)
end

function Outbox:dead(n)
  check.self("outbox:dead", self, Outbox)
  n = check.integer("outbox:dead", "argument 'n'", n, 100, 1)
  return self.db:query(format("select * from %s_dead order by id limit ?", self.name), n)
end

-- Relay -------------------------------------------------------------------------

-- The message for a Redis queue: the event as JSON, payload and headers
-- spliced in as stored (no decode/encode round), the id a string.
local function event_json(e)
  return format('{"id":"%d","aggregate_type":%s,"aggregate_id":%s,"type":%s,"created":%d,"headers":%s,"payload":%s}',
    e.id, json.encode(e.aggregate_type), json.encode(e.aggregate_id), json.encode(e.type), e.created,
    e.headers or "null", e.payload)
end

local function event_table(e)
  return {
    id = format("%d", e.id), aggregate_type = e.aggregate_type, aggregate_id = e.aggregate_id, type = e.type,
    created = e.created, payload = json.decode(e.payload), headers = e.headers and json.decode(e.headers) or nil,
  }
end

-- By class, not by method names: the local queue has the same methods
-- (the backends share one contract), but only Redis takes strings alone.
local function is_redis_queue(q)
  local rq = package.loaded["keel.redis.queue"]
  return rq ~= nil and getmetatable(q) == rq.Queue
end

local ROPTS = check.set { "to", "batch", "poll_ms", "concurrency", "retain_ms", "max_attempts", "on_poison",
  "lease_ms", "backoff", "breaker", "owner", "name" }

function Outbox:relay(opts)
  local F = "outbox:relay"
  check.self(F, self, Outbox)
  opts = check.opts(F, opts, ROPTS)
  local to = opts.to
  local kind
  if type(to) == "function" or (getmetatable(to) and getmetatable(to).__call and not to.push) then
    kind = "function"
  elseif type(to) == "table" and type(to.push) == "function" then
    kind = is_redis_queue(to) and "redis" or "queue"
  else
    error(F .. ": option 'to' must be a keel.queue, a Redis keel.queue or a function(batch) (got "
      .. tostring(to) .. ")", 2)
  end
  local r = setmetatable({
    ob = self, db = self.db, to = to, kind = kind,
    batch = check.integer(F, "option 'batch'", opts.batch, 100, 1, 100000),
    poll_ms = check.number(F, "option 'poll_ms'", opts.poll_ms, 1000, 0),
    concurrency = check.integer(F, "option 'concurrency'", opts.concurrency, 16, 1, 10000),
    retain_ms = check.number(F, "option 'retain_ms'", opts.retain_ms, 86400000, 0),
    max_attempts = check.integer(F, "option 'max_attempts'", opts.max_attempts, 10, 1),
    on_poison = check.oneof(F, "option 'on_poison'", opts.on_poison, "block", { "block", "skip" }),
    lease_ms = check.number(F, "option 'lease_ms'", opts.lease_ms, 10000, 1),
    owner = opts.owner ~= nil and check.string(F, "option 'owner'", opts.owner)
      or format("relay-%d-%d", keel.random(1, 2 ^ 31), keel.random(1, 2 ^ 31)),
    name = opts.name,
    wq = sched.waitqueue(), stopped = false, blocked = {}, leased = false, lease_until = 0,
    st = { published = 0, marked = 0, dead = 0, batches = 0, failures = 0, deleted = 0, lease_lost = 0 },
  }, Relay)
  if opts.name ~= nil then check.string(F, "option 'name'", opts.name) end
  local b = opts.backoff
  if b == nil or (type(b) == "table" and getmetatable(b) == nil) then
    r.backoff = keel.backoff(b or { base_ms = 50, cap_ms = 5000 })
  elseif type(b) == "table" and b.delay then
    r.backoff = b
  else
    error(F .. ": option 'backoff' must be a keel.backoff or its options", 2)
  end
  local br = opts.breaker
  if br == nil or (type(br) == "table" and getmetatable(br) == nil) then
    r.breaker = keel.breaker(br or { window = "count", size = 20, min_calls = 10, failure_rate = 50, open_ms = 1000 })
  elseif type(br) == "table" and br.allow then
    r.breaker = br
  else
    error(F .. ": option 'breaker' must be a keel.breaker or its options", 2)
  end
  local n = self.name
  r.sql_lease = format("insert into %s_lease(id, owner, expires) values (1, ?, ?) on conflict(id) do update "
    .. "set owner = excluded.owner, expires = excluded.expires where owner = excluded.owner or expires < ?", n)
  r.sql_release = format("update %s_lease set expires = 0 where owner = ?", n)
  r.sql_batch = format("select id, aggregate_type, aggregate_id, type, payload, headers, created from %s "
    .. "where sent is null and (aggregate_type || char(31) || aggregate_id) not in (select value from json_each(?)) "
    .. "order by id limit ?", n)
  r.sql_mark = format("update %s set sent = ? where id in (select value from json_each(?))", n)
  r.sql_mark_delete = format("delete from %s where id in (select value from json_each(?))", n)
  r.sql_fail = format("update %s set attempts = attempts + ?, last_error = ? where id = ?", n)
  r.sql_dead = format("insert or replace into %s_dead select id, aggregate_type, aggregate_id, type, payload, headers, "
    .. "created, attempts, ?, ? from %s where id = ?", n, n)
  r.sql_drop = format("delete from %s where id = ?", n)
  r.sql_clean = format("delete from %s where id in (select id from %s where sent is not null and sent < ? limit %d)",
    n, n, CLEAN_BATCH)
  self.relays[r] = true
  metrics.register("outbox_relay", opts.name, r)
  r.task = keel.spawn(function() r:_run() end)
  return r
end

local function wall() return math.floor(keel.wall()) end

-- Takes or renews the lease: true while this relay may publish.
function Relay:_lease()
  local now = wall()
  -- Renewed once half of it is gone, not at every pass: a commit saved.
  if self.leased and now < self.lease_until - self.lease_ms / 2 then return true end
  local changes = self.db:exec(self.sql_lease, self.owner, now + self.lease_ms, now)
  local had = self.leased
  self.leased = changes == 1
  if self.leased then self.lease_until = now + self.lease_ms end
  if had and not self.leased then self.st.lease_lost = self.st.lease_lost + 1 end
  return self.leased
end

-- Publishes one event; true, or nil and the error.
function Relay:_publish_one(e)
  local kind, to = self.kind, self.to
  local ok, res, err
  if kind == "redis" then
    ok, res, err = pcall(to.push, to, event_json(e))
  elseif kind == "queue" then
    ok, res, err = pcall(to.push, to, event_table(e))
  end
  if not ok then return nil, tostring(res) end
  if not res then return nil, tostring(err or "rejected") end
  return true
end

-- Publishes lane[i..] through the function target: fn(batch) returns true
-- (all published), a count n (the first n were), or nil, err.
function Relay:_publish_fn(lane, i)
  local batch = {}
  for j = i, #lane do batch[#batch + 1] = event_table(lane[j]) end
  local ok, res, err = pcall(self.to, batch)
  if not ok then return 0, tostring(res) end
  if res == true then return #batch end
  if type(res) == "number" and res == math.floor(res) and res >= 0 then
    if res >= #batch then return #batch end
    return res, tostring(err or "partially published")
  end
  return 0, tostring(err or "rejected")
end

-- Publishes a lane (one aggregate's events, in order), each event retried
-- with backoff behind the breaker.
function Relay:_lane(lane, out)
  local i, attempts = 1, 0
  while i <= #lane do
    local e = lane[i]
    local permit = self.breaker:allow()
    local done, err = 0, "breaker open"
    if permit then
      local t0 = keel.now()
      if self.kind == "function" then
        done, err = self:_publish_fn(lane, i)
      else
        local ok
        ok, err = self:_publish_one(e)
        done = ok and 1 or 0
      end
      self.breaker:record(done > 0, keel.now() - t0)
    end
    for j = i, i + done - 1 do out.sent[#out.sent + 1] = lane[j].id end
    self.st.published = self.st.published + done
    i = i + done
    if done > 0 then attempts = 0 end
    if i <= #lane and (done == 0 or err) then
      e = lane[i]
      self.st.failures = self.st.failures + 1
      if permit then attempts = attempts + 1 end -- an open breaker is not the event's fault
      if attempts >= self.max_attempts then
        out.failed[#out.failed + 1] = { id = e.id, attempts = attempts, err = err }
        if self.on_poison == "skip" then
          out.dead[#out.dead + 1] = { id = e.id, err = err }
          i, attempts = i + 1, 0
        else
          -- "block": order is the promise; the aggregate waits, the others go on
          self.blocked[e.aggregate_type .. SEP .. e.aggregate_id] = keel.now() + self.backoff:delay(self.max_attempts)
          return
        end
      else
        keel.sleep(self.backoff:delay(math.max(attempts, 1)))
        if self.stopped then return end
      end
    end
  end
end

local function blocked_json(self)
  local now, list = keel.now(), {}
  for k, until_ms in pairs(self.blocked) do
    if until_ms <= now then self.blocked[k] = nil else list[#list + 1] = k end
  end
  if #list == 0 then return "[]" end
  return json.encode(list)
end

-- One pass: lease, read a batch, publish it lane by lane, mark. Returns the
-- number of events read.
function Relay:_pass()
  if not self:_lease() then return 0, "lease" end
  local rows = self.db:query(self.sql_batch, blocked_json(self), self.batch)
  if #rows == 0 then return 0 end
  self.st.batches = self.st.batches + 1
  local lanes, by_key = {}, {}
  for _, e in ipairs(rows) do
    local k = e.aggregate_type .. SEP .. e.aggregate_id
    local lane = by_key[k]
    if not lane then
      lane = {}
      by_key[k] = lane
      lanes[#lanes + 1] = lane
    end
    lane[#lane + 1] = e
  end
  local out = { sent = {}, failed = {}, dead = {} }
  local nworkers = math.min(self.concurrency, #lanes)
  if nworkers == 1 then
    self:_lane(lanes[1], out)
  else
    local next_lane = 0
    local workers = {}
    for w = 1, nworkers do
      workers[w] = keel.spawn(function()
        while not self.stopped do
          next_lane = next_lane + 1
          local lane = lanes[next_lane]
          if not lane then return end
          self:_lane(lane, out)
        end
      end)
    end
    local ok, err = pcall(function() for w = 1, nworkers do workers[w]:join() end end)
    if not ok then
      for w = 1, nworkers do workers[w]:cancel() end
      error(err, 0)
    end
  end
  self:_mark(out)
  return #rows
end

function Relay:_mark(out)
  local db = self.db
  local now = wall()
  local ok, code, msg = db:tx(function(tx)
    if #out.sent > 0 then
      local ids = "[" .. concat(out.sent, ",") .. "]"
      if self.retain_ms == 0 then tx:exec(self.sql_mark_delete, ids) else tx:exec(self.sql_mark, now, ids) end
    end
    for _, f in ipairs(out.failed) do tx:exec(self.sql_fail, f.attempts, f.err, f.id) end
    for _, d in ipairs(out.dead) do
      tx:exec(self.sql_dead, d.err, now, d.id)
      tx:exec(self.sql_drop, d.id)
    end
    return true
  end)
  if not ok then
    -- Published but not marked: they go out again (at-least-once).
    self.st.mark_failures = (self.st.mark_failures or 0) + 1
    self.last_error = tostring(code) .. ": " .. tostring(msg)
    return
  end
  self.st.marked = self.st.marked + #out.sent
  self.st.dead = self.st.dead + #out.dead
end

function Relay:_clean()
  if self.retain_ms == 0 then return end
  local n = self.db:exec(self.sql_clean, wall() - self.retain_ms)
  if n then self.st.deleted = self.st.deleted + n end
end

function Relay:_run()
  local last_clean = -math.huge
  -- A closed store ends the relay quietly (its owner is shutting down).
  while not self.stopped and not self.db.closed do
    local n, why = self:_pass()
    if n < self.batch then
      if keel.now() - last_clean >= math.min(self.poll_ms * 10, 10000) then
        self:_clean()
        last_clean = keel.now()
      end
      if self.stopped or self.db.closed then break end
      if why == "lease" then
        self.wq:wait(math.max(self.poll_ms, self.lease_ms / 4), "outbox relay")
      elseif n == 0 then
        self.wq:wait(self.poll_ms, "outbox relay")
      end
    end
  end
end

-- Stops the relay (after its current publish) and gives the lease back.
function Relay:stop()
  check.self("relay:stop", self, Relay)
  if self.stopped then return false end
  self.stopped = true
  self.ob.relays[self] = nil
  self.wq:wake_all()
  local task = self.task
  if task ~= sched.current() then
    task:cancel()
    task:join()
  end
  if not self.db.closed then self.db:exec(self.sql_release, self.owner) end
  return true
end

-- Runs one pass now and returns how many events it read (for tests and
-- tools; the relay task does the same on its own).
function Relay:stats()
  check.self("relay:stats", self, Relay)
  local s = {}
  for k, v in pairs(self.st) do s[k] = v end
  s.leased = self.leased
  local nb = 0
  for _ in pairs(self.blocked) do nb = nb + 1 end
  s.blocked = nb
  return s
end

return new
