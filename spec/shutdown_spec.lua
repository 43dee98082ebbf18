-- Serving until a signal, and what happens at shutdown: a registered
-- keel.on_shutdown handler (or, in an embedding host, a keel.on_event
-- handler) is a way for a waiting run to be woken, so such a run waits for
-- the signal instead of ending in "deadlock"; each handler is bounded by
-- its own deadline_ms, is cancelled there, and its keel.defer cleanup runs.
local proc = require "keelproc"

local function ready_script(body)
  return 'local keel = require "keel"\n' .. body .. '\nio.write("ready;") io.stdout:flush()\n'
end

describe("a run with a shutdown handler", function()
  it("keel.sleep(math.huge) waits for SIGTERM, then the handler runs and the exit code is 143", function()
    for _, flags in ipairs({ {}, { "--sim", "1" } }) do
      local code, out, err = proc.signals(ready_script([[
        keel.on_shutdown(function() io.write("cleanup;") end)
      ]]) .. "keel.sleep(math.huge)", { { signal = "TERM" } }, flags)
      assert.equal(143, code, err)
      assert.equal("ready;cleanup;", out)
      assert.equal("", err)
    end
  end)

  it("a recv() on a channel the handler closes waits for the signal, then returns", function()
    local code, out, err = proc.signals(ready_script([[
      local ch = keel.channel()
      keel.on_shutdown(function() io.write("closing;") ch:close() end)
    ]]) .. 'local v, why = ch:recv() io.write("main got ", tostring(v), " ", why, ";")',
      { { signal = "INT" } })
    assert.equal(130, code, err)
    assert.equal("ready;closing;main got nil closed;", out)
  end)

  it("examples/serve.lua serves until SIGTERM and drains on shutdown", function()
    local f = assert(io.open(proc.root .. "/examples/serve.lua"))
    local src = f:read("*a")
    f:close()
    local code, out, err = proc.signals(src, { { signal = "TERM" } })
    assert.equal(143, code, err)
    assert.equal("ready\nhandled first job\nworker drained\n", out)
  end)

  it("still ends by itself with 0 when nothing is left waiting", function()
    local code, out, err = proc.eval([[
      local keel = require "keel"
      keel.on_shutdown(function() io.write("not run") end)
      keel.spawn(function() keel.sleep(5) io.write("done") end)
    ]])
    assert.equal(0, code, err)
    assert.equal("done", out)
  end)

  it("once shutdown has begun, a task nothing can wake no longer keeps the run", function()
    local code, out, err = proc.signals(ready_script([[
      keel.on_shutdown(function() io.write("handler;") end)
    ]]) .. "keel.channel():recv()", { { signal = "TERM" } })
    assert.equal(143, code, err)
    assert.equal("ready;handler;", out)
  end)

  it("in the CLI an on_event handler is no way to be woken (no host posts events): deadlock", function()
    local code, _, err = proc.eval([[
      local keel = require "keel"
      keel.on_event("never", function() end)
      keel.channel():recv()
    ]])
    assert.equal(1, code)
    assert.matches("keel: deadlock: 1 task", err)
  end)
end)

describe("shutdown deadlines", function()
  -- In virtual time (--sim) the deadlines pass at once and keel.now() tells
  -- exactly when each thing happened, counted from the signal.
  local two_handlers = ready_script([[
    local t0
    keel.on_shutdown(function()
      t0 = t0 or keel.now()
      keel.defer(function()
        keel.sleep(5) -- a cleanup may itself wait
        io.write("short cleaned at ", keel.now() - t0, ";")
      end)
      keel.sleep(math.huge)
    end, { deadline_ms = 300 })
    keel.on_shutdown(function()
      t0 = t0 or keel.now()
      keel.sleep(%s)
      io.write("long done at ", keel.now() - t0, ";")
    end)
  ]]) .. "keel.sleep(math.huge)"

  it("a handler is bounded by its own deadline: a finished 5000 ms one does not extend a 300 ms one", function()
    local code, out, err = proc.signals(two_handlers:format("10"), { { signal = "TERM" } }, { "--sim", "1" })
    assert.equal(143, code, err)
    assert.equal("ready;long done at 10;short cleaned at 305;", out)
    assert.matches("keel: shutdown handlers did not finish within 300 ms: handler 1 %(.-:%d+%) cancelled", err)
    assert.not_matches("5000", err)
  end)

  it("the run ends when the last handler ends, each one cut at its own deadline", function()
    local code, out, err = proc.signals(two_handlers:format("1000"), { { signal = "TERM" } }, { "--sim", "1" })
    assert.equal(143, code, err)
    assert.equal("ready;short cleaned at 305;long done at 1000;", out)
  end)

  it("a second signal exits at once and says so, claiming no timeout", function()
    local code, out, err = proc.signals(ready_script([[
      keel.on_shutdown(function() io.write("handler started;") io.stdout:flush() keel.sleep(60000) end)
    ]]) .. "keel.sleep(math.huge)", {
      { signal = "TERM" }, { wait_for = "handler started" }, { signal = "TERM" },
    })
    assert.equal(143, code)
    assert.equal("ready;handler started;", out)
    assert.matches("keel: second signal: exiting at once, without waiting for the shutdown to finish", err)
    assert.not_matches("did not finish", err)
  end)
end)

describe("an embedding host that runs to completion", function()
  local bin = os.getenv("KEEL_BIN") or (proc.root .. "/build/keel")
  local dir = bin:match("^(.*)/[^/]*$") or "."
  local exe

  setup(function()
    local san = dir:match("asan") and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""
    exe = os.tmpname()
    local cmd = string.format(
      "cc -std=c11 -O1 -g -D_GNU_SOURCE %s -I%s/bindings/include $(pkg-config --cflags libuv) "
      .. "%s/spec/c/host_event_wait.c "
      .. "-L%s -lkeel -Wl,-rpath,%s $(pkg-config --libs libuv) -o %s 2>&1",
      san, proc.root, proc.root, dir, dir, exe)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    -- LuaJIT's popen close does not report the exit status: an empty
    -- output file is how a failed compile shows.
    local f = io.open(exe, "rb")
    local size = f and f:seek("end") or 0
    if f then f:close() end
    assert(size > 0, "compile failed: " .. cmd .. "\n" .. out)
  end)

  teardown(function() if exe then os.remove(exe) end end)

  local function host(script, no_events)
    local out = os.tmpname()
    local cmd = string.format("timeout -s KILL 10 %s %s %s %d >%s 2>&1", proc.quote(exe), proc.quote(proc.root),
      proc.quote(script), no_events, out)
    os.execute(cmd)
    local f = io.open(out, "rb")
    local s = f:read("*a")
    f:close()
    os.remove(out)
    return s
  end

  local waits_for_event = [[
    local keel = require "keel"
    local ch = keel.channel(1)
    keel.on_event("go", function(payload) ch:send(payload) end)
    print("main got " .. ch:recv())
  ]]

  it("waits for a posted event when an on_event handler is registered", function()
    local out = host(waits_for_event, 0)
    assert.equal("main got hello\nhost: exit 0\n", out)
  end)

  it("still reports a deadlock without a handler, or when the host says it posts no events", function()
    local out = host('require("keel").channel():recv()', 0)
    assert.matches("keel: deadlock: 1 task", out)
    assert.matches("host: exit 1\n$", out)
    out = host(waits_for_event, 1)
    assert.matches("keel: deadlock: 1 task", out)
    assert.matches("host: exit 1\n$", out)
  end)
end)
