-- keel.store: a durable, transactional store on SQLite (WAL), called through
-- the LuaJIT FFI. See doc/store.md.
--
-- Two connections per file: a writer, which holds at most one SQLite
-- transaction per loop turn (group commit), and a read-only reader, which
-- sees the last committed state and so never waits for, nor sees, a commit
-- in flight. ":memory:" has only the writer (a second connection would see
-- another database).
--
-- Group commit: db:tx runs fn inside a SAVEPOINT of the writer's open
-- transaction (BEGIN IMMEDIATE at the first tx of the turn), releases it and
-- parks the task. A committer task, spawned with the first tx of the turn,
-- runs after every task of that batch: one COMMIT, then every task wakes.
local ffi = require "ffi"
local C = require "keel.ffi.sqlite"
local core = require "keel.ffi.core"
local sched = require "keel.sched"
local check = require "keel.check"
local metrics = require "keel.metrics"

local type, select, tostring, tonumber, setmetatable, getmetatable, error, pcall, rawget =
  type, select, tostring, tonumber, setmetatable, getmetatable, error, pcall, rawget
local floor, format = math.floor, string.format
local yield = coroutine.yield
local unpack = unpack or table.unpack

local SQLITE_OK, SQLITE_ROW, SQLITE_DONE = 0, 100, 101
local SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB = 1, 2, 3, 4
local OPEN_READONLY, OPEN_READWRITE, OPEN_CREATE = 0x1, 0x2, 0x4
local OPEN_URI, OPEN_NOMUTEX = 0x40, 0x8000

-- Primary result codes a caller can expect from the environment, and the
-- code keel.store returns for each. Anything else is a bug in the SQL or
-- its use, and raises.
local EXPECTED = {
  [5] = "busy", [6] = "busy",          -- BUSY, LOCKED: another connection holds the lock
  [7] = "io",                          -- NOMEM
  [8] = "readonly",                    -- READONLY
  [10] = "io", [13] = "io",            -- IOERR, FULL
  [11] = "corrupt", [26] = "corrupt",  -- CORRUPT, NOTADB
  [14] = "cantopen",                   -- CANTOPEN
  [19] = "constraint",                 -- CONSTRAINT
}

local INT_LIMIT = 2 ^ 53
local CACHE_MAX = 256 -- prepared statements kept per connection

local store = {}

local Store = { __keel_store = true }
Store.__index = Store
local Tx = { __keel_tx = true }
Tx.__index = Tx

-- By marker, not metatable identity: a module loaded twice (busted reloads
-- modules per spec file) must still recognise the other copy's objects.
function store.is_store(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__keel_store") == true
end

function store.is_tx(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__keel_tx") == true
end

-- A real monotonic clock for the loop-stall figures, even inside keel.sim.
local real_clock = ffi.new("keel_clock_t")
core.keel_clock_init(real_clock, 0, 0)
local function real_ms() return core.keel_clock_update(real_clock) end

-- Connections -------------------------------------------------------------------

local stmt_box = ffi.new("sqlite3_stmt *[1]")
local tail_box = ffi.new("const char *[1]")
local conn_box = ffi.new("sqlite3 *[1]")

local function errmsg(conn)
  return ffi.string(C.sqlite3_errmsg(conn))
end

local function open_conn(path, flags)
  local rc = C.sqlite3_open_v2(path, conn_box, flags + OPEN_NOMUTEX + OPEN_URI, nil)
  local conn = conn_box[0]
  if rc ~= SQLITE_OK then
    local msg = conn ~= nil and errmsg(conn) or ffi.string(C.sqlite3_errstr(rc))
    if conn ~= nil then C.sqlite3_close_v2(conn) end
    return nil, EXPECTED[rc % 256] or "cantopen", msg
  end
  C.sqlite3_extended_result_codes(conn, 1)
  return { conn = ffi.gc(conn, C.sqlite3_close_v2), cache = {}, ncached = 0 }
end

local function close_conn(c)
  for _, e in pairs(c.cache) do
    C.sqlite3_finalize(ffi.gc(e.stmt, nil))
  end
  c.cache, c.ncached = {}, 0
  C.sqlite3_close_v2(ffi.gc(c.conn, nil))
  c.conn = nil
end

-- Statements --------------------------------------------------------------------
-- Results of the internal calls: true, a, b on success; false, code, message
-- for an expected outcome; raise(message) for anything else. The public
-- functions turn those into return values or an error at the caller's line.

local function sql_error(conn, rc, sql)
  local msg = conn and errmsg(conn) or ffi.string(C.sqlite3_errstr(rc))
  return format("%s (SQL: %s)", msg, sql)
end

-- BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, END: a transaction is db:tx's
-- business; one of these inside fn would commit or end the whole group.
local CONTROL = { begin = true, commit = true, ["end"] = true, rollback = true, savepoint = true, release = true }

local function leading_keyword(sql)
  local i = 1
  while true do
    local j = sql:match("^%s*()", i)
    if sql:sub(j, j + 1) == "--" then
      i = (sql:find("\n", j, true) or #sql) + 1
    elseif sql:sub(j, j + 1) == "/*" then
      local k = sql:find("*/", j + 2, true)
      if not k then return "" end
      i = k + 2
    else
      return (sql:match("^(%a+)", j) or ""):lower()
    end
  end
end

local function prepare(c, sql, allow_tail)
  local e = c.cache[sql]
  if e then
    if e.control and c.user_tx then
      error({ store_error = "transaction control is db:tx's business, not allowed inside it (SQL: " .. sql .. ")" })
    end
    return e
  end
  local rc = C.sqlite3_prepare_v2(c.conn, sql, #sql, stmt_box, tail_box)
  if rc ~= SQLITE_OK then
    local code = EXPECTED[rc % 256]
    if code and code ~= "constraint" then return nil, code, errmsg(c.conn) end
    error({ store_error = sql_error(c.conn, rc, sql) })
  end
  local stmt = stmt_box[0]
  local rest = ffi.string(tail_box[0])
  if stmt == nil then -- only whitespace or comments
    return { stmt = false, nparams = 0, rest = false }
  end
  stmt = ffi.gc(stmt, C.sqlite3_finalize)
  e = { stmt = stmt, nparams = C.sqlite3_bind_parameter_count(stmt),
        readonly = C.sqlite3_stmt_readonly(stmt) ~= 0, names = false, ncol = -1,
        control = CONTROL[leading_keyword(sql)] or false }
  if e.control and c.user_tx then
    C.sqlite3_finalize(ffi.gc(stmt, nil))
    error({ store_error = "transaction control is db:tx's business, not allowed inside it (SQL: " .. sql .. ")" })
  end
  if rest:find("%S") then
    if not allow_tail then
      C.sqlite3_finalize(ffi.gc(stmt, nil))
      error({ store_error = "one statement per call when parameters are given (SQL: " .. sql .. ")" })
    end
    e.rest = rest -- a script: run once, not cached
    return e
  end
  if c.ncached >= CACHE_MAX then
    for _, old in pairs(c.cache) do C.sqlite3_finalize(ffi.gc(old.stmt, nil)) end
    c.cache, c.ncached = {}, 0
  end
  c.cache[sql] = e
  c.ncached = c.ncached + 1
  return e
end

local function bind_all(stmt, sql, n, ...)
  for i = 1, n do
    local v = select(i, ...)
    local t = type(v)
    local rc
    if v == nil then
      rc = C.sqlite3_bind_null(stmt, i)
    elseif t == "number" then
      if v ~= v then
        error({ store_error = format("parameter #%d is NaN, which SQL cannot store (SQL: %s)", i, sql) })
      end
      if v == floor(v) and v >= -INT_LIMIT and v <= INT_LIMIT then
        rc = C.sqlite3_bind_int64(stmt, i, v)
      else
        rc = C.sqlite3_bind_double(stmt, i, v)
      end
    elseif t == "string" then
      local len = #v
      if len > 0x7fffffff then
        error({ store_error = format("parameter #%d is longer than 2 GiB (SQL: %s)", i, sql) })
      end
      -- The string is anchored by this call's arguments until the statement
      -- is reset, so SQLite may read it in place (SQLITE_STATIC).
      if C.keel_utf8_valid(v, len) ~= 0 then
        rc = C.sqlite3_bind_text(stmt, i, v, len, nil)
      else
        rc = C.sqlite3_bind_blob(stmt, i, v, len, nil)
      end
    elseif t == "boolean" then
      rc = C.sqlite3_bind_int64(stmt, i, v and 1 or 0)
    else
      error({ store_error = format("parameter #%d: cannot bind a %s (nil, boolean, number or string) (SQL: %s)",
        i, t, sql) })
    end
    if rc ~= SQLITE_OK then
      error({ store_error = format("parameter #%d: %s (SQL: %s)", i, ffi.string(C.sqlite3_errstr(rc)), sql) })
    end
  end
end

local function column_value(stmt, i)
  local ct = C.sqlite3_column_type(stmt, i)
  if ct == SQLITE_INTEGER then
    return tonumber(C.sqlite3_column_int64(stmt, i))
  elseif ct == SQLITE_FLOAT then
    return C.sqlite3_column_double(stmt, i)
  elseif ct == SQLITE_TEXT then
    local p = C.sqlite3_column_text(stmt, i)
    return ffi.string(p, C.sqlite3_column_bytes(stmt, i))
  elseif ct == SQLITE_BLOB then
    local p = C.sqlite3_column_blob(stmt, i)
    local n = C.sqlite3_column_bytes(stmt, i)
    if n == 0 then return "" end
    return ffi.string(p, n)
  end
  return nil
end

local function column_names(e)
  local stmt = e.stmt
  local ncol = C.sqlite3_column_count(stmt)
  if ncol ~= e.ncol then
    local names = {}
    for i = 0, ncol - 1 do names[i + 1] = ffi.string(C.sqlite3_column_name(stmt, i)) end
    e.names, e.ncol = names, ncol
  end
  return e.names, ncol
end

local function read_row(stmt, names, ncol)
  local row = {}
  for i = 0, ncol - 1 do row[names[i + 1]] = column_value(stmt, i) end
  return row
end

-- mode: "exec" -> changes, rowid; "query" -> rows; "row" -> row; "value" -> value
local function step_stmt(c, e, sql, mode)
  local stmt = e.stmt
  local rc = C.sqlite3_step(stmt)
  local a, b
  if mode == "query" then
    local rows, n = {}, 0
    local names, ncol = column_names(e)
    while rc == SQLITE_ROW do
      n = n + 1
      rows[n] = read_row(stmt, names, ncol)
      rc = C.sqlite3_step(stmt)
    end
    a = rows
  elseif mode == "row" then
    if rc == SQLITE_ROW then
      local names, ncol = column_names(e)
      a = read_row(stmt, names, ncol)
    end
    while rc == SQLITE_ROW do rc = C.sqlite3_step(stmt) end
  elseif mode == "value" then
    if rc == SQLITE_ROW then a = column_value(stmt, 0) end
    while rc == SQLITE_ROW do rc = C.sqlite3_step(stmt) end
  else
    while rc == SQLITE_ROW do rc = C.sqlite3_step(stmt) end
    if rc == SQLITE_DONE then
      a, b = C.sqlite3_changes(c.conn), tonumber(C.sqlite3_last_insert_rowid(c.conn))
    end
  end
  C.sqlite3_reset(stmt)
  if rc ~= SQLITE_DONE then
    local code = EXPECTED[rc % 256]
    local msg = errmsg(c.conn)
    if code then return false, code, msg end
    error({ store_error = sql_error(c.conn, rc, sql) })
  end
  return true, a, b
end

local function run(c, sql, mode, n, ...)
  local e, code, msg = prepare(c, sql, n == 0)
  if not e then return false, code, msg end
  if e.rest then
    -- A script of several statements (no parameters): each runs in turn;
    -- the result is the last one's.
    local ok, a, b = true, 0, nil
    while e do
      local rest = e.rest
      if e.stmt then
        ok, a, b = step_stmt(c, e, sql, mode)
        if rest then C.sqlite3_finalize(ffi.gc(e.stmt, nil)) end -- not cached
        if not ok then return false, a, b end
      end
      if not rest or not rest:find("%S") then break end
      e, code, msg = prepare(c, rest, true)
      if not e then return false, code, msg end
    end
    return ok, a, b
  end
  if not e.stmt then
    if mode == "query" then return true, {} end
    if mode == "exec" then return true, 0, tonumber(C.sqlite3_last_insert_rowid(c.conn)) end
    return true, nil
  end
  if e.nparams ~= n then
    error({ store_error = format("%d parameter(s) expected, %d given (SQL: %s)", e.nparams, n, sql) })
  end
  if n > 0 then
    local ok, err = pcall(bind_all, e.stmt, sql, n, ...)
    if not ok then
      C.sqlite3_reset(e.stmt)
      error(err)
    end
  end
  return step_stmt(c, e, sql, mode)
end

-- Turns an internal failure into an error at the public caller's line.
local function rethrow(fname, err, level)
  if type(err) == "table" and err.store_error then
    error(fname .. ": " .. err.store_error, level + 1)
  end
  error(err, 0)
end

-- Runs one statement on connection c from public function fname.
local function call(fname, c, sql, mode, ...)
  local ok, s, a, b = pcall(run, c, sql, mode, select("#", ...), ...)
  if not ok then rethrow(fname, s, 3) end
  if not s then return nil, a, b end
  if mode == "exec" then return a, b end
  return a
end

-- Transactions -------------------------------------------------------------------

local function sql_of(sql) return sql end

-- Exactly the values a public call returns: nil, code, message on failure;
-- changes, rowid for exec; one value otherwise.
local function results(mode, r1, r2, r3)
  if r1 == nil then
    if r2 ~= nil then return nil, r2, r3 end
    return nil
  end
  if mode == "exec" then return r1, r2 end
  return r1
end

local function check_sql(fname, sql)
  if type(sql) ~= "string" then
    error(format("%s: argument 'sql' must be a string (got %s)", fname, type(sql)), 3)
  end
end

local abort_group

-- One statement of transaction tx. SQLite rolls a whole transaction back
-- on some failures (disk full, I/O errors, OR ROLLBACK): the group is lost
-- then, and the tx must run nothing more, or its later statements would
-- autocommit one by one.
local function tx_run(tx, fname, level, mode, ...)
  local db = tx.db
  if tx.lost then return nil, tx.failed_code, tx.failed_msg end
  local ok, s, a, b = pcall(run, db.w, sql_of(...), mode, select("#", ...) - 1, select(2, ...))
  if not ok then rethrow(fname, s, level + 1) end
  if not s and a ~= "constraint" then tx.failed_code, tx.failed_msg = a, b end
  if C.sqlite3_get_autocommit(db.w.conn) ~= 0 then
    tx.lost = true
    tx.failed_code = "io"
    tx.failed_msg = tx.failed_msg or (s and "the transaction was ended by its own SQL" or b)
    abort_group(db, tx.failed_msg)
    if s then return nil, "io", tx.failed_msg end
  end
  if not s then return nil, a, b end
  if mode == "exec" then return a, b end
  return a
end

local function tx_method(fname, mode)
  return function(self, sql, ...)
    if getmetatable(self) ~= Tx then check.self(fname, self, Tx) end
    check_sql(fname, sql)
    if not self.live then error(fname .. ": the transaction has ended (use tx only inside db:tx's function)", 2) end
    -- not a tail call: error levels count this frame
    return results(mode, tx_run(self, fname, 2, mode, sql, ...))
  end
end

Tx.exec = tx_method("tx:exec", "exec")
Tx.query = tx_method("tx:query", "query")
Tx.row = tx_method("tx:row", "row")
Tx.value = tx_method("tx:value", "value")

local function raw(db, sql)
  local ok, s, code, msg = pcall(run, db.w, sql, "exec", 0)
  if not ok then
    local e = s
    return false, "io", type(e) == "table" and e.store_error or tostring(e)
  end
  return s, code, msg
end

local function percentile(ring, n, p)
  if n == 0 then return 0 end
  local sorted = {}
  for i = 1, n do sorted[i] = ring[i] end
  table.sort(sorted)
  return sorted[math.max(1, math.ceil(n * p))]
end

local RING = 1024

-- Commits the open group and wakes its tasks.
local function commit_group(db, group)
  if db.group ~= group then return end
  db.group = nil
  local t0 = real_ms()
  local ok, code, msg = raw(db, "COMMIT")
  if not ok then
    if C.sqlite3_get_autocommit(db.w.conn) == 0 then raw(db, "ROLLBACK") end
    code = "io"
  end
  local dt = real_ms() - t0
  local st = db.st
  st.commits = st.commits + 1
  st.grouped = st.grouped + #group
  st.ring_i = st.ring_i % RING + 1
  st.ring[st.ring_i] = dt
  if st.ring_n < RING then st.ring_n = st.ring_n + 1 end
  if not ok then st.commit_failures = st.commit_failures + 1 end
  for i = 1, #group do
    local e = group[i]
    e.done, e.ok, e.code, e.msg = true, ok, code, msg
    sched.wake(e.task, e.gen)
  end
  local hooks = db.on_commit
  if ok and hooks then
    for i = 1, #hooks do hooks[i](db) end
  end
end

-- Every task of a group whose SQLite transaction SQLite itself rolled back
-- (it does on some I/O errors) learns it now.
function abort_group(db, msg)
  local group = db.group
  db.group = nil
  if not group then return end
  db.st.commit_failures = db.st.commit_failures + 1
  for i = 1, #group do
    local e = group[i]
    e.done, e.ok, e.code, e.msg = true, false, "io", msg
    sched.wake(e.task, e.gen)
  end
end

local function unpack_results(r)
  return unpack(r, 2, r.n)
end

function Store:tx(fn)
  if getmetatable(self) ~= Store then check.self("db:tx", self, Store) end
  check.func("db:tx", "argument 'fn'", fn)
  if self.closed then error("db:tx: the store is closed", 2) end
  local task = sched.need_task("db:tx", 2)
  local w = self.w
  if not self.group then
    local ok, code, msg = raw(self, "BEGIN IMMEDIATE")
    if not ok then
      self.st.failures = self.st.failures + 1
      return nil, code == "busy" and "busy" or "io", msg
    end
    local group = {}
    self.group = group
    sched.spawn(commit_group, self, group)
  end
  local group = self.group
  local ok, _, msg = raw(self, "SAVEPOINT keel_tx")
  if not ok then
    if C.sqlite3_get_autocommit(w.conn) ~= 0 then abort_group(self, msg) end
    self.st.failures = self.st.failures + 1
    return nil, "io", msg
  end
  local tx = setmetatable({ db = self, live = true }, Tx)
  task.in_tx = true
  w.user_tx = true
  local r = { n = 0 }
  local function pack(...) r = { n = select("#", ...), ... } end
  pack(pcall(fn, tx))
  w.user_tx = false
  task.in_tx = nil
  tx.live = false
  local failed_code = tx.failed_code
  if not r[1] or failed_code then
    if C.sqlite3_get_autocommit(w.conn) ~= 0 then
      -- SQLite rolled the whole transaction back: the group is lost too.
      abort_group(self, tx.failed_msg or "transaction rolled back by SQLite")
    else
      raw(self, "ROLLBACK TO keel_tx")
      raw(self, "RELEASE keel_tx")
    end
    self.st.failures = self.st.failures + 1
    if not r[1] then error(r[2], 0) end
    return nil, failed_code, tx.failed_msg
  end
  ok, _, msg = raw(self, "RELEASE keel_tx")
  if not ok then
    if C.sqlite3_get_autocommit(w.conn) ~= 0 then abort_group(self, msg) end
    self.st.failures = self.st.failures + 1
    return nil, "io", msg
  end
  self.st.transactions = self.st.transactions + 1
  if self.group ~= group then -- the group was lost meanwhile
    return nil, "io", "transaction rolled back by SQLite"
  end
  local entry = { task = task, gen = 0, done = false }
  group[#group + 1] = entry
  -- The commit is not cancellable: the task learns its outcome, and a
  -- cancellation takes effect at its next wait.
  while not entry.done do
    local gen = task.gen + 1
    task.gen = gen
    entry.gen = gen
    task.state = "waiting"
    yield()
  end
  if not entry.ok then return nil, entry.code, entry.msg end
  return unpack_results(r)
end

-- Outside db:tx: reads go to the reader connection (the last committed
-- state); a statement that writes runs as a transaction of its own.
local function outer(fname, mode)
  return function(self, sql, ...)
    if getmetatable(self) ~= Store then check.self(fname, self, Store) end
    check_sql(fname, sql)
    if self.closed then error(fname .. ": the store is closed", 2) end
    local r = self.r
    if r ~= self.w or not self.group then
      local e = r.cache[sql]
      if not e then
        local ok, pe = pcall(prepare, r, sql, select("#", ...) == 0)
        if not ok then rethrow(fname, pe, 2) end
        e = pe
      end
      if e and e.control then
        error(fname .. ": transaction control is db:tx's business (use db:tx) (SQL: " .. sql .. ")", 2)
      end
      if e and (e.readonly or not e.stmt) and not e.rest then
        return results(mode, call(fname, r, sql, mode, ...))
      end
    end
    local n, args = select("#", ...), { ... }
    -- the caller is 5 frames up: fn, pcall, Store.tx, this method
    return results(mode, self:tx(function(tx)
      local a, b, c = tx_run(tx, fname, 5, mode, sql, unpack(args, 1, n))
      return a, b, c
    end))
  end
end

Store.exec = outer("db:exec", "exec")
Store.query = outer("db:query", "query")
Store.row = outer("db:row", "row")
Store.value = outer("db:value", "value")

-- Migrations: steps[i] is SQL (one or more statements) or fn(tx); each step
-- above PRAGMA user_version runs in its own transaction with the version bump.
function Store:migrate(steps)
  check.self("db:migrate", self, Store)
  if type(steps) ~= "table" then
    error("db:migrate: argument 'steps' must be a table of SQL strings or functions (got " .. type(steps) .. ")", 2)
  end
  local n = #steps
  for k, s in pairs(steps) do
    if type(k) ~= "number" or k ~= floor(k) or k < 1 or k > n then
      error("db:migrate: steps must be a list numbered from 1 without holes (got key " .. tostring(k) .. ")", 2)
    end
    if type(s) ~= "string" and type(s) ~= "function" then
      error(format("db:migrate: step %d must be SQL or a function (got %s)", k, type(s)), 2)
    end
  end
  local applied = 0
  for i = 1, n do
    local ok, code, msg = self:tx(function(tx)
      local v = tx:value("PRAGMA user_version")
      if v >= i then return true end
      local step = steps[i]
      if type(step) == "string" then
        local r, c2, m2 = tx:exec(step)
        if r == nil then error(format("db:migrate: step %d failed: %s: %s", i, c2, m2), 0) end
      else
        step(tx)
      end
      tx:exec("PRAGMA user_version = " .. i)
      applied = applied + 1
      return true
    end)
    if not ok then return nil, code, msg end
  end
  return self:value("PRAGMA user_version"), applied
end

function Store:version()
  check.self("db:version", self, Store)
  return self:value("PRAGMA user_version")
end

function Store:stats()
  check.self("db:stats", self, Store)
  local st = self.st
  local bytes = 0
  if not self.closed then
    -- from the writer: also right for ":memory:" while a group is open
    bytes = (call("db:stats", self.w, "PRAGMA page_count", "value") or 0)
      * (call("db:stats", self.w, "PRAGMA page_size", "value") or 0)
  end
  return {
    transactions = st.transactions,
    failures = st.failures,
    group_commits = st.commits,
    commit_failures = st.commit_failures,
    avg_group = st.commits > 0 and st.grouped / st.commits or 0,
    commit_ms_p50 = percentile(st.ring, st.ring_n, 0.5),
    commit_ms_p99 = percentile(st.ring, st.ring_n, 0.99),
    commit_ms_max = percentile(st.ring, st.ring_n, 1),
    bytes = bytes,
    sync = self.sync,
    checkpoints = self.ckpt and tonumber(C.keel_ckpt_count(self.ckpt)) or 0,
  }
end

-- Called after every successful group commit (the outbox relay wakes on it).
function Store:_on_commit(fn)
  local hooks = self.on_commit or {}
  hooks[#hooks + 1] = fn
  self.on_commit = hooks
end

function Store:close()
  check.self("db:close", self, Store)
  if self.closed then return false end
  local task = sched.current()
  if task and task.in_tx then error("db:close: must not close the store inside a transaction", 2) end
  if self.group then commit_group(self, self.group) end -- the commit in flight completes first
  self.closed = true
  if self.ckpt then
    C.keel_ckpt_stop(ffi.gc(self.ckpt, nil)) -- waits for a checkpoint in progress
    self.ckpt = nil
  end
  if self.r ~= self.w then close_conn(self.r) end
  close_conn(self.w)
  return true
end

function Store:__tostring()
  return format("keel.store(%s%s)", self.path, self.closed and ", closed" or "")
end

-- Opening ------------------------------------------------------------------------

local OPTS = check.set { "sync", "busy_timeout_ms", "name", "checkpoint_pages", "checkpoint" }
local SYNC = { normal = "NORMAL", full = "FULL", off = "OFF" }

local function setup(c, sql)
  local ok, s, code, msg = pcall(run, c, sql, "value", 0)
  if not ok then return nil, "io", type(s) == "table" and s.store_error or tostring(s) end
  if not s then return nil, code, msg end
  return code -- the value
end

function store.open(path, opts)
  local F = "keel.store.open"
  check.string(F, "argument 'path'", path)
  opts = check.opts(F, opts, OPTS)
  local sync = check.oneof(F, "option 'sync'", opts.sync, "normal", { "normal", "full", "off" })
  local busy = check.integer(F, "option 'busy_timeout_ms'", opts.busy_timeout_ms, 0, 0, 2 ^ 31 - 1)
  local ckpt = check.integer(F, "option 'checkpoint_pages'", opts.checkpoint_pages, 1000, 0, 2 ^ 31 - 1)
  local ckpt_mode = check.oneof(F, "option 'checkpoint'", opts.checkpoint, "thread", { "thread", "inline" })
  if opts.name ~= nil then check.string(F, "option 'name'", opts.name) end
  if path == "" then error(F .. ": argument 'path' must not be empty (use \":memory:\")", 2) end
  local memory = path == ":memory:"
  local w, code, msg = open_conn(path, OPEN_READWRITE + OPEN_CREATE)
  if not w then return nil, code, msg end
  C.sqlite3_busy_timeout(w.conn, busy)
  local function fail(c2, m2)
    close_conn(w)
    return nil, c2, m2
  end
  -- The first read of the file tells a database from anything else.
  local mode
  mode, code, msg = setup(w, "PRAGMA journal_mode = WAL")
  if not mode then return fail(code, msg) end
  if not memory and mode ~= "wal" then
    return fail("io", "cannot switch to WAL (journal_mode is " .. tostring(mode) .. ")")
  end
  -- Debian builds SQLite with WAL synchronous = FULL: always set it.
  local _
  _, code, msg = setup(w, "PRAGMA synchronous = " .. SYNC[sync])
  if code then return fail(code, msg) end
  -- With the checkpoint thread no COMMIT checkpoints inline (that is what
  -- made the loop's tail: see doc/store.md, "Checkpoints").
  local threaded = ckpt_mode == "thread" and not memory and ckpt > 0
  _, code, msg = setup(w, "PRAGMA wal_autocheckpoint = " .. (threaded and 0 or ckpt))
  if code then return fail(code, msg) end
  -- A read-only file opens (SQLite falls back to reading): say so now
  -- rather than at the first commit.
  if C.sqlite3_db_readonly(w.conn, "main") == 1 then
    return fail("readonly", "the database is read-only for this process: " .. path)
  end
  local r = w
  if not memory then
    r, code, msg = open_conn(path, OPEN_READONLY)
    if not r then return fail(code, msg) end
    C.sqlite3_busy_timeout(r.conn, busy)
  end
  local ckpt_thread
  if threaded then
    local errbuf = ffi.new("char[256]")
    local c = C.keel_ckpt_start(path, ckpt, errbuf, 256)
    if c == nil then
      if r ~= w then close_conn(r) end
      return fail("io", "checkpoint thread: " .. ffi.string(errbuf))
    end
    ckpt_thread = ffi.gc(c, C.keel_ckpt_stop)
    C.keel_ckpt_attach(ckpt_thread, w.conn)
  end
  local self = setmetatable({
    ckpt = ckpt_thread,
    path = path, name = opts.name, sync = sync, w = w, r = r, group = nil, closed = false,
    st = { transactions = 0, failures = 0, commits = 0, grouped = 0, commit_failures = 0,
           ring = {}, ring_i = 0, ring_n = 0 },
  }, Store)
  metrics.register("store", opts.name, self)
  return self
end

store.Store = Store
store.Tx = Tx
return store
