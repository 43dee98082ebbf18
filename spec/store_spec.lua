local keel = require "keel"
local keelproc = require "keelproc"

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".db"
end

local function rm(path)
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- Runs src in a child keel with a shell prefix (ulimit, another user).
local function child(src, prefix)
  local path = os.tmpname() .. ".lua"
  write_file(path, src)
  local code, out, err = keelproc.run({ path }, { prefix = prefix })
  os.remove(path)
  return code, out, err
end

describe("keel.store", function()
  local path, db
  before_each(function()
    path = tmpdb()
    db = assert(keel.store.open(path))
    db:migrate { "create table t(id integer primary key, v, w)" }
  end)
  after_each(function()
    db:close()
    rm(path)
  end)

  describe("open", function()
    it("rejects bad arguments naming the function and the argument", function()
      assert.has_error(function() keel.store.open(42) end,
        "keel.store.open: argument 'path' must be a string (got 42)")
      assert.has_error(function() keel.store.open(":memory:", { sync = "always" }) end,
        'keel.store.open: option \'sync\' must be one of normal, full, off (got "always")')
      assert.has_error(function() keel.store.open(":memory:", { synk = "full" }) end,
        "keel.store.open: unknown option 'synk'")
      assert.has_error(function() keel.store.open(":memory:", { busy_timeout_ms = -1 }) end)
    end)

    it("sets WAL and the synchronous mode explicitly (Debian defaults WAL to FULL)", function()
      for mode, level in pairs { normal = 1, full = 2, off = 0 } do
        local p = tmpdb()
        local d = assert(keel.store.open(p, { sync = mode }))
        assert.equal("wal", d:value("PRAGMA journal_mode"))
        -- the writer's setting: read it through a transaction
        assert.equal(level, d:tx(function(tx) return tx:value("PRAGMA synchronous") end))
        d:close()
        rm(p)
      end
    end)

    it("returns nil, 'corrupt' for a file that is not a database", function()
      local p = tmpdb()
      write_file(p, string.rep("this is not a database file\n", 300))
      local d, code, msg = keel.store.open(p)
      assert.is_nil(d)
      assert.equal("corrupt", code)
      assert.matches("not a database", msg)
      rm(p)
    end)

    it("returns nil, 'cantopen' for a path in a missing directory", function()
      local d, code = keel.store.open("/nonexistent-dir-keel/x.db")
      assert.is_nil(d)
      assert.equal("cantopen", code)
    end)

    it("returns nil, 'readonly' for a database the process may not write", function()
      db:exec("insert into t(v) values ('x')")
      local d, code = keel.store.open("file:" .. path .. "?mode=ro")
      assert.is_nil(d)
      assert.equal("readonly", code)
    end)

    it("a read-only file (another user's) fails at open, not at the first commit", function()
      if keelproc.run({ "-e", "" }, { prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups" }) ~= 0 then
        pending("setpriv cannot drop privileges here")
        return
      end
      db:exec("insert into t(v) values ('x')")
      os.execute("chmod 644 " .. path .. " " .. path .. "-wal " .. path .. "-shm 2>/dev/null")
      local code, out = child(string.format([[
        local keel = require "keel"
        local d, code = keel.store.open(%q)
        print(d, code)
      ]], path), "setpriv --reuid=65534 --regid=65534 --clear-groups")
      assert.equal(0, code)
      assert.equal("nil\treadonly\n", out)
    end)
  end)

  describe("statements", function()
    it("exec returns changes and the last rowid; query, row and value read", function()
      local n, rowid = db:exec("insert into t(v, w) values (?, ?)", "a", 1)
      assert.equal(1, n)
      assert.equal(1, rowid)
      db:exec("insert into t(v, w) values (?, ?)", "b", 2)
      assert.same({ { id = 1, v = "a", w = 1 }, { id = 2, v = "b", w = 2 } }, db:query("select * from t order by id"))
      assert.same({ id = 2, v = "b", w = 2 }, db:row("select * from t where v = ?", "b"))
      assert.is_nil(db:row("select * from t where v = ?", "zzz"))
      assert.equal(2, db:value("select count(*) from t"))
      assert.is_nil(db:value("select v from t where id = 99"))
      assert.same({}, db:query("select * from t where id > 99"))
      assert.equal(2, db:exec("update t set w = w + 1"))
    end)

    it("binds nil, booleans, integers to 2^53 as INTEGER, other numbers as REAL", function()
      local vals = { 0, -1, 2 ^ 53, -(2 ^ 53), 1.5, 2 ^ 53 + 2, 1e300, -1 / 0 }
      for i, v in ipairs(vals) do db:exec("insert into t(id, v) values (?, ?)", i, v) end
      local types = {}
      for i, r in ipairs(db:query("select typeof(v) as ty, v from t order by id")) do
        types[i] = r.ty
        assert.equal(vals[i], r.v)
      end
      assert.same({ "integer", "integer", "integer", "integer", "real", "real", "real", "real" }, types)
      db:exec("insert into t(id, v, w) values (?, ?, ?)", 100, true, false)
      assert.same({ id = 100, v = 1, w = 0 }, db:row("select * from t where id = 100"))
      db:exec("insert into t(id, v, w) values (?, ?, ?)", 101, nil, nil)
      assert.same({ id = 101 }, db:row("select * from t where id = 101"))
    end)

    it("strings are binary-safe: UTF-8 as TEXT, anything else (NUL, bad bytes) as BLOB", function()
      local bin = {}
      for i = 0, 255 do bin[#bin + 1] = string.char(i) end
      bin = table.concat(bin)
      db:exec("insert into t(id, v) values (1, ?)", "héllo ✓")
      db:exec("insert into t(id, v) values (2, ?)", "a\0b")
      db:exec("insert into t(id, v) values (3, ?)", bin)
      db:exec("insert into t(id, v) values (4, ?)", "")
      assert.same({ "text", "blob", "blob", "text" }, (function()
        local out = {}
        for i, r in ipairs(db:query("select typeof(v) as ty from t order by id")) do out[i] = r.ty end
        return out
      end)())
      assert.equal("héllo ✓", db:value("select v from t where id = 1"))
      assert.equal("a\0b", db:value("select v from t where id = 2"))
      assert.equal(bin, db:value("select v from t where id = 3"))
      assert.equal("", db:value("select v from t where id = 4"))
    end)

    it("SQL injection through a parameter is just data", function()
      local evil = "x'); drop table t; --"
      db:exec("insert into t(v) values (?)", evil)
      assert.equal(evil, db:value("select v from t where v = ?", evil))
      assert.equal(1, db:value("select count(*) from t"))
    end)

    it("stores and reads back a 10 MB payload unchanged", function()
      local parts = {}
      for i = 1, 10 * 1024 do parts[i] = string.char(i % 256) .. string.rep("z", 1023) end
      local big = table.concat(parts)
      assert.equal(10 * 1024 * 1024, #big)
      db:exec("insert into t(id, v) values (1, ?)", big)
      assert.equal(big, db:value("select v from t where id = 1"))
    end)

    it("raises on SQL errors with SQLite's message and the SQL, at the caller's line", function()
      local ok, err = pcall(function() db:query("select * from nowhere") end)
      assert.is_false(ok)
      assert.matches("store_spec.lua:%d+: db:query: no such table: nowhere %(SQL: select %* from nowhere%)", err)
      ok, err = pcall(function() db:tx(function(tx) tx:exec("inser into t values (1)") end) end)
      assert.is_false(ok)
      assert.matches("tx:exec: near \"inser\": syntax error", err)
    end)

    it("raises on wrong argument types and counts", function()
      assert.has_error(function() db:exec(42) end, "db:exec: argument 'sql' must be a string (got number)")
      assert.has_error(function() db:value("select ?", {}) end)
      assert.matches("cannot bind a table", select(2, pcall(db.value, db, "select ?", {})))
      assert.matches("cannot bind a function", select(2, pcall(db.value, db, "select ?", print)))
      assert.matches("parameter #1 is NaN", select(2, pcall(db.value, db, "select ?", 0 / 0)))
      assert.matches("2 parameter%(s%) expected, 1 given", select(2, pcall(db.value, db, "select ?, ?", 1)))
      assert.matches("1 parameter%(s%) expected, 2 given", select(2, pcall(db.value, db, "select ?", 1, 2)))
      assert.matches("call it as a method", select(2, pcall(db.exec, "select 1")))
    end)

    it("a constraint violation is an expected outcome: nil, 'constraint', message", function()
      db:exec("insert into t(id, v) values (1, 'a')")
      local r, code, msg = db:exec("insert into t(id, v) values (1, 'b')")
      assert.is_nil(r)
      assert.equal("constraint", code)
      assert.matches("UNIQUE constraint failed: t.id", msg)
      assert.equal("a", db:value("select v from t where id = 1"))
    end)

    it("keeps working past the statement cache's bound", function()
      for i = 1, 600 do
        assert.equal(i, db:value("select ? + 0 * " .. i, i))
      end
      assert.equal(7, db:value("select 7"))
    end)

    it("runs a script of several statements when no parameters are given", function()
      db:exec("insert into t(id) values (1); insert into t(id) values (2); -- done")
      assert.equal(2, db:value("select count(*) from t"))
      assert.matches("one statement per call", select(2, pcall(db.exec, db, "select ?; select 1", 1)))
    end)
  end)

  describe("tx", function()
    it("commits fn's writes and returns its results once durable", function()
      local a, b = db:tx(function(tx)
        tx:exec("insert into t(id, v) values (1, 'x')")
        return "r1", tx:value("select v from t where id = 1")
      end)
      assert.equal("r1", a)
      assert.equal("x", b)
      assert.equal(1, db:value("select count(*) from t"))
    end)

    it("an error in fn rolls back only that transaction and is re-raised", function()
      local others = {}
      for i = 1, 5 do
        others[i] = keel.spawn(function()
          return db:tx(function(tx) tx:exec("insert into t(id) values (?)", i) return i end)
        end)
      end
      local bad = keel.spawn(function()
        return db:tx(function(tx)
          tx:exec("insert into t(id) values (100)")
          error("boom")
        end)
      end)
      for i = 1, 5 do assert.same({ true, i }, { others[i]:join() }) end
      local ok, err = bad:join()
      assert.is_false(ok)
      assert.matches("boom", err)
      assert.equal(5, db:value("select count(*) from t"))
      assert.is_nil(db:value("select id from t where id = 100"))
    end)

    it("a waiting call inside fn raises 'must not wait inside a transaction' and rolls back", function()
      local ch = keel.channel()
      local cases = {
        function() keel.sleep(0) end,
        function() keel.sleep(5) end,
        function() ch:recv() end,
        function() db:tx(function() end) end,
        function() keel.timeout(10, function() end) end,
      }
      for i, wait in ipairs(cases) do
        local ok, err = pcall(db.tx, db, function(tx)
          tx:exec("insert into t(id) values (?)", i)
          wait()
        end)
        assert.is_false(ok)
        assert.matches("must not wait inside a transaction", err)
      end
      assert.equal(0, db:value("select count(*) from t"))
      -- the task can wait again afterwards
      keel.sleep(0)
    end)

    it("refuses transaction control inside fn (it would end the whole group)", function()
      for _, sql in ipairs { "COMMIT", "  rollback", "-- c\nBEGIN", "/* x */ savepoint a", "release a", "end",
                             "insert into t(id) values (5); commit" } do
        local ok, err = pcall(db.tx, db, function(tx)
          tx:exec("insert into t(id) values (1)")
          tx:exec(sql)
        end)
        assert.is_false(ok, sql)
        assert.matches("transaction control is db:tx's business", err)
      end
      assert.equal(0, db:value("select count(*) from t"))
      assert.matches("transaction control", select(2, pcall(db.exec, db, "commit")))
      -- a word merely starting like one is fine
      db:exec("create table endings(x)")
    end)

    it("the tx object is dead once fn returns", function()
      local saved
      db:tx(function(tx) saved = tx end)
      assert.matches("the transaction has ended", select(2, pcall(saved.exec, saved, "select 1")))
    end)

    it("group commit: transactions of one turn share one COMMIT", function()
      local before = db:stats().group_commits
      local ts = {}
      for i = 1, 50 do
        ts[i] = keel.spawn(function()
          return db:tx(function(tx) return tx:exec("insert into t(id, v) values (?, ?)", i, string.rep("x", 200)) end)
        end)
      end
      for i = 1, 50 do assert.same({ true, 1, i }, { ts[i]:join() }) end
      local st = db:stats()
      assert.equal(before + 1, st.group_commits)
      assert.equal(50, db:value("select count(*) from t"))
    end)

    it("a constraint failure in one transaction leaves the group's others committed", function()
      db:exec("insert into t(id) values (1)")
      local ts = {}
      for i = 1, 4 do
        ts[i] = keel.spawn(function()
          return db:tx(function(tx)
            tx:exec("insert into t(id, v) values (?, 'new')", i + 10)
            local r, code = tx:exec("insert into t(id) values (?)", i == 2 and 1 or i + 20)
            if not r then error(code) end
            return true
          end)
        end)
      end
      local ok = {}
      for i = 1, 4 do ok[i] = (ts[i]:join()) end
      assert.same({ true, false, true, true }, ok)
      assert.is_nil(db:value("select id from t where id = 12"))
      assert.equal(3, db:value("select count(*) from t where v = 'new'"))
    end)

    it("reads outside a transaction never see a commit in flight", function()
      local seen
      local writer = keel.spawn(function()
        return db:tx(function(tx) tx:exec("insert into t(id) values (1)") end)
      end)
      local reader = keel.spawn(function() seen = db:value("select count(*) from t") end)
      writer:join()
      reader:join()
      assert.equal(0, seen)
      assert.equal(1, db:value("select count(*) from t"))
    end)

    it("disk full (tiny max_page_count): nil, 'io' and nothing half-written", function()
      local big = string.rep("y", 4000)
      db:tx(function(tx) tx:value("PRAGMA max_page_count = " .. tx:value("PRAGMA page_count") + 3) end)
      local r, code, msg = db:tx(function(tx)
        for i = 1, 20 do tx:exec("insert into t(id, v) values (?, ?)", i, big) end
        return "never"
      end)
      assert.is_nil(r)
      assert.equal("io", code)
      assert.matches("full", msg)
      assert.equal(0, db:value("select count(*) from t"))
      -- and the store goes on
      assert.equal(1, db:exec("insert into t(id, v) values (1, 'small')"))
    end)

    it("a failed COMMIT (file size limit) gives every task of the group nil, 'io'", function()
      local p = tmpdb()
      local code, out, err = child(string.format([[
        local keel = require "keel"
        local db = assert(keel.store.open(%q))
        db:migrate { "create table t(id integer primary key, v blob)" }
        local ts = {}
        for i = 1, 10 do
          ts[i] = keel.spawn(function()
            return db:tx(function(tx) return tx:exec("insert into t(v) values (?)", string.rep("\1\255", 10000)) end)
          end)
        end
        for i = 1, 10 do print(select(2, ts[i]:join())) end
        print("count", db:value("select count(*) from t"))
        print("after", db:exec("insert into t(v) values ('small')"))
      ]], p), "ulimit -f 100; trap '' XFSZ;")
      rm(p)
      assert.equal(0, code, err)
      local _, nio = out:gsub("nil\tio\t", "")
      assert.equal(10, nio)
      assert.matches("count\t0\n", out)
      assert.matches("after\t1\t1", out)
    end)

    it("another process's write lock: nil, 'busy' (busy_timeout_ms = 0 never sleeps on the loop)", function()
      local other = assert(keel.store.open(path))
      local mine = keel.spawn(function()
        return db:tx(function(tx) tx:exec("insert into t(id) values (1)") return "mine" end)
      end)
      local theirs = keel.spawn(function()
        return other:tx(function(tx) tx:exec("insert into t(id) values (2)") return "theirs" end)
      end)
      assert.same({ true, "mine" }, { mine:join() })
      local ok, r, code = theirs:join()
      assert.is_true(ok)
      assert.is_nil(r)
      assert.equal("busy", code)
      assert.equal("theirs", other:tx(function(tx) tx:exec("insert into t(id) values (2)") return "theirs" end))
      other:close()
    end)

    it("opening while another store's commit is pending is not 'busy'", function()
      local t = keel.spawn(function()
        return db:tx(function(tx) tx:exec("insert into t(id) values (1)") return "ok" end)
      end)
      -- runs right after t, in the same batch: t's group is open, its commit pending
      local opener = keel.spawn(function() return keel.store.open(path) end)
      local _, other, code = opener:join()
      assert.is_not_nil(other, code)
      assert.same({ true, "ok" }, { t:join() })
      other:close()
    end)

    it("requires a task and a function", function()
      assert.has_error(function() db:tx(42) end, "db:tx: argument 'fn' must be a function (got 42)")
    end)
  end)

  describe("migrate", function()
    it("applies steps above user_version, each in its own transaction, idempotent on re-run", function()
      local steps = {
        "create table t(id integer primary key, v, w)",
        "create table u(id integer primary key); insert into u values (1)",
        function(tx) tx:exec("insert into u values (2)") end,
      }
      local v, applied = db:migrate(steps)
      assert.equal(3, v)
      assert.equal(2, applied)
      v, applied = db:migrate(steps)
      assert.equal(3, v)
      assert.equal(0, applied)
      assert.equal(2, db:value("select count(*) from u"))
    end)

    it("a failing step rolls back that step only and raises", function()
      local ok, err = pcall(db.migrate, db,
        { "create table t(id integer primary key, v, w)", "create table v(x); garbage" })
      assert.is_false(ok)
      assert.matches("syntax error", err)
      assert.equal(1, db:version())
      assert.is_nil(db:value("select name from sqlite_master where name = 'v'"))
    end)

    it("rejects bad steps", function()
      assert.has_error(function() db:migrate("x") end)
      assert.has_error(function() db:migrate { [2] = "x" } end)
      assert.has_error(function() db:migrate { 42 } end)
    end)
  end)

  describe("stats, metrics and close", function()
    it("stats count transactions and group commits; keel.metrics reports a named store", function()
      local d = assert(keel.store.open(":memory:", { name = "spec-store" }))
      d:exec("create table x(a)")
      for _ = 1, 3 do d:exec("insert into x values (1)") end
      local st = d:stats()
      assert.equal(4, st.transactions)
      assert.equal(4, st.group_commits)
      assert.equal(1, st.avg_group)
      assert.is_true(st.bytes > 0)
      assert.is_true(st.commit_ms_p99 >= st.commit_ms_p50)
      assert.equal(4, keel.metrics().store["spec-store"].transactions)
      assert.truthy(keel.metrics("prometheus"):find('keel_store_transactions{name="spec-store"} 4', 1, true))
      d:close()
    end)

    it("close waits for the commit in flight; later calls raise", function()
      local t = keel.spawn(function()
        return db:tx(function(tx) tx:exec("insert into t(id) values (7)") return "ok" end)
      end)
      keel.sleep(0) -- t has run fn and waits for the commit
      assert.is_true(db:close())
      assert.same({ true, "ok" }, { t:join() })
      assert.is_false(db:close())
      assert.has_error(function() db:value("select 1") end, "db:value: the store is closed")
      db = assert(keel.store.open(path))
      assert.equal(7, db:value("select id from t"))
    end)
  end)

  describe("checkpoints", function()
    it("run on the checkpoint thread, never inside COMMIT, and keep the WAL bounded", function()
      local p = tmpdb()
      local d = assert(keel.store.open(p, { checkpoint_pages = 8 }))
      d:exec("create table big(v)")
      assert.equal(0, d:tx(function(tx) return tx:value("PRAGMA wal_autocheckpoint") end))
      for i = 1, 200 do d:exec("insert into big values (?)", string.rep(string.char(65 + i % 26), 4000)) end
      local done = false
      for _ = 1, 400 do
        if d:stats().checkpoints > 0 then done = true break end
        keel.sleep(5)
      end
      assert.is_true(done, "no checkpoint ran")
      assert.equal(200, d:value("select count(*) from big"))
      d:close()
      -- the data made it into the database file itself
      local again = assert(keel.store.open(p, { checkpoint = "inline" }))
      assert.equal(200, again:value("select count(*) from big"))
      assert.equal(0, again:stats().checkpoints)
      assert.equal(1000, again:tx(function(tx) return tx:value("PRAGMA wal_autocheckpoint") end))
      again:close()
      rm(p)
    end)
  end)

  describe("virtual time", function()
    it("works under keel --sim: a file store, group commit and an outbox relay", function()
      local p = tmpdb()
      local code, out, err = keelproc.script(string.format([[
        local keel = require "keel"
        local db = assert(keel.store.open(%q))
        db:exec("create table t(id integer primary key, v)")
        local ob = keel.outbox { store = db }
        local got = {}
        local relay = ob:relay { to = function(batch)
          for _, e in ipairs(batch) do got[#got + 1] = e.payload.v end
          return true
        end }
        local t0 = keel.now()
        local ts = {}
        for i = 1, 10 do
          ts[i] = keel.spawn(function()
            return db:tx(function(tx)
              tx:exec("insert into t(v) values (?)", i)
              ob:add(tx, { aggregate_type = "t", aggregate_id = "one", type = "x", payload = { v = i } })
            end)
          end)
        end
        for i = 1, 10 do ts[i]:join() end
        local committed_at = keel.now() - t0
        keel.sleep(50)
        relay:stop()
        print(keel.is_sim(), committed_at, db:value("select count(*) from t"), table.concat(got, ","))
        db:close()
      ]], p), {}, { "--sim", "7" })
      rm(p)
      assert.equal(0, code, err)
      assert.equal("true\t0\t10\t1,2,3,4,5,6,7,8,9,10\n", out)
    end)

    it("works unchanged under keel.sim: commits complete at the same virtual instant", function()
      local t0, t1, n = keel.sim({ seed = 3 }, function()
        local d = assert(keel.store.open(":memory:"))
        d:exec("create table x(a)")
        local start = keel.now()
        local ts = {}
        for i = 1, 20 do ts[i] = keel.spawn(function() return d:exec("insert into x values (?)", i) end) end
        for i = 1, 20 do ts[i]:join() end
        keel.sleep(1000)
        local count = d:value("select count(*) from x")
        d:close()
        return start, keel.now(), count
      end)
      assert.equal(1000, t1 - t0)
      assert.equal(20, n)
    end)
  end)
end)
