-- keel.idempotent: the Idempotent Consumer. ic:handle(id, fn) runs fn at
-- most once per message id to completion and replays its first result to
-- duplicates. With a keel.store the processed mark and fn's writes commit in
-- one transaction; with Redis it is a key holding the result (weaker: see
-- doc/idempotent.md).
local sched = require "keel.sched"
local check = require "keel.check"
local json = require "keel.json"
local store = require "keel.store"
local metrics = require "keel.metrics"
local keel = require "keel"

local type, tostring, format, setmetatable, getmetatable, pcall, error =
  type, tostring, string.format, setmetatable, getmetatable, pcall, error
local floor = math.floor

local Idem = {}
Idem.__index = Idem

local CLEAN_BATCH = 500 -- marks deleted per transaction when they expire
local PENDING = "\0keel.pending" -- a Redis claim, not a result
local CLAIM_MS = 30000

local function id_arg(F, v)
  local t = type(v)
  if t == "string" and #v > 0 and #v <= 512 then return v end
  if t == "number" and v == floor(v) and v >= -2 ^ 53 and v <= 2 ^ 53 then return format("%d", v) end
  error(format("%s: argument 'message_id' must be a non-empty string (at most 512 bytes) or an integer (got %s)",
    F, t == "string" and format("%q", v) or tostring(v)), 3)
end

local OPTS = check.set { "store", "redis", "ttl_ms", "name", "prefix", "claim_ms" }

local function new(opts)
  local F = "keel.idempotent"
  opts = check.opts(F, opts, OPTS)
  local db, redis = opts.store, opts.redis
  if (db == nil) == (redis == nil) then error(F .. ": give exactly one of options 'store' and 'redis'", 2) end
  local ttl = check.number(F, "option 'ttl_ms'", opts.ttl_ms, 7 * 86400000, 1)
  local name = opts.name
  if name ~= nil then check.string(F, "option 'name'", name) end
  local self = setmetatable({ ttl_ms = ttl, name = name, inflight = {}, last_clean = -math.huge, cleaning = false,
    st = { handled = 0, duplicates = 0, failed = 0, expired = 0 } }, Idem)
  if db ~= nil then
    if not store.is_store(db) then error(F .. ": option 'store' must be a keel.store", 2) end
    local tname = name or "idempotent"
    if not tname:match("^[%a_][%w_]*$") or #tname > 60 then
      error(format("%s: option 'name' must be an SQL identifier when a store is used (got %q)", F, tname), 2)
    end
    sched.need_task(F, 2)
    local ok, code, msg = db:exec(format([[
      create table if not exists %s (id text primary key, result text not null, created integer not null);
      create index if not exists %s_created on %s(created);]], tname, tname, tname))
    if not ok then error(format("%s: cannot create table %s: %s: %s", F, tname, tostring(code), tostring(msg)), 2) end
    self.db = db
    self.sql_get = format("select result from %s where id = ? and created >= ?", tname)
    self.sql_put = format("insert or replace into %s(id, result, created) values (?, ?, ?)", tname)
    self.sql_clean = format("delete from %s where id in (select id from %s where created < ? limit %d)",
      tname, tname, CLEAN_BATCH)
  else
    if type(redis) ~= "table" or type(redis.call) ~= "function" then
      error(F .. ": option 'redis' must be a keel.redis client", 2)
    end
    self.redis = redis
    self.prefix = check.string(F, "option 'prefix'", opts.prefix, "keel:idem:" .. (name or "default") .. ":")
    self.claim_ms = check.number(F, "option 'claim_ms'", opts.claim_ms, CLAIM_MS, 1)
  end
  metrics.register("idempotent", name, self)
  return self
end

local function now_ms() return floor(keel.wall()) end

-- Expired marks go in bounded batches, one transaction each, in a task of
-- their own: never one long delete.
local function maybe_clean(self)
  if self.cleaning then return end
  local now = keel.now()
  if now - self.last_clean < math.min(self.ttl_ms / 10, 60000) then return end
  self.last_clean = now
  self.cleaning = true
  keel.spawn(function()
    local ok, err = pcall(function()
      while true do
        local n = self.db:exec(self.sql_clean, now_ms() - self.ttl_ms)
        if not n or n == 0 then break end
        self.st.expired = self.st.expired + n
        if n < CLEAN_BATCH then break end
        keel.sleep(0)
      end
    end)
    self.cleaning = false
    if not ok and not self.db.closed then sched.report("keel.idempotent: cleanup failed: " .. tostring(err)) end
  end)
end

local function replay(self, stored)
  self.st.duplicates = self.st.duplicates + 1
  local v = json.decode(stored)
  if v == json.null then v = nil end
  return v, "duplicate"
end

local function handle_store(self, id, fn)
  local db = self.db
  maybe_clean(self)
  local dup, result
  local r1, r2, r3 = db:tx(function(tx)
    local stored = tx:value(self.sql_get, id, now_ms() - self.ttl_ms)
    if stored then
      dup = stored
      return
    end
    local res = fn(tx)
    -- the store failed under fn (disk full...): db:tx returns nil, "io"
    if tx.failed_code then return end
    local ok, enc = pcall(json.encode, res == nil and json.null or res)
    if not ok then error("ic:handle: fn's result cannot be stored: " .. enc, 0) end
    local put, code, msg = tx:exec(self.sql_put, id, enc, now_ms())
    if tx.failed_code then return end
    if not put then error(format("ic:handle: cannot store the mark: %s: %s", tostring(code), tostring(msg)), 0) end
    result = res
    return true
  end)
  if dup then return replay(self, dup) end
  if not r1 then return nil, r2, r3 end -- the commit failed: neither the mark nor fn's writes exist
  self.st.handled = self.st.handled + 1
  return result
end

local function handle_redis(self, id, fn)
  local redis, key = self.redis, self.prefix .. id
  while true do
    local got, err = redis:call("SET", key, PENDING, "NX", "PX", floor(self.claim_ms), "GET")
    if err then return nil, "io", err end
    if got == nil then break end -- claimed: this process runs fn
    if got ~= PENDING then return replay(self, got) end
    keel.sleep(math.min(50, self.claim_ms)) -- another worker is running fn
  end
  local ok, res = pcall(fn, nil)
  if not ok then
    redis:call("DEL", key) -- lets a redelivery try again
    error(res, 0)
  end
  local enc_ok, enc = pcall(json.encode, res == nil and json.null or res)
  if not enc_ok then
    redis:call("DEL", key)
    error("ic:handle: fn's result cannot be stored: " .. enc, 2)
  end
  local _, err = redis:call("SET", key, enc, "PX", floor(self.ttl_ms))
  if err then return nil, "io", err end
  self.st.handled = self.st.handled + 1
  return res
end

-- ic:handle(message_id, fn) -> fn's result | first result, "duplicate" |
-- nil, "io", message
function Idem:handle(message_id, fn)
  local F = "ic:handle"
  if getmetatable(self) ~= Idem then check.self(F, self, Idem) end
  local id = id_arg(F, message_id)
  check.func(F, "argument 'fn'", fn)
  sched.need_task(F, 2)
  -- The same id in one process: the second waits for the first's outcome
  -- (a mark not yet committed must not answer "duplicate").
  local inflight = self.inflight
  while inflight[id] do inflight[id]:wait(nil, F) end
  local q = sched.waitqueue()
  inflight[id] = q
  local ok, a, b, c = pcall(self.db and handle_store or handle_redis, self, id, fn)
  inflight[id] = nil
  q:wake_all()
  if not ok then
    self.st.failed = self.st.failed + 1
    error(a, 0)
  end
  if b == nil then return a end
  if b ~= "duplicate" then self.st.failed = self.st.failed + 1 end
  return a, b, c
end

-- Deletes expired marks now, in bounded batches; returns how many.
function Idem:cleanup()
  check.self("ic:cleanup", self, Idem)
  if not self.db then return 0 end -- Redis keys expire by themselves
  local total = 0
  while true do
    local n = self.db:exec(self.sql_clean, now_ms() - self.ttl_ms)
    if not n or n == 0 then break end
    total = total + n
    if n < CLEAN_BATCH then break end
    keel.sleep(0)
  end
  self.st.expired = self.st.expired + total
  return total
end

function Idem:stats()
  check.self("ic:stats", self, Idem)
  local s = {}
  for k, v in pairs(self.st) do s[k] = v end
  s.inflight = 0
  for _ in pairs(self.inflight) do s.inflight = s.inflight + 1 end
  return s
end

return new
