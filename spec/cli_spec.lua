-- The keel command line, run as a child process ($KEEL_BIN or build/keel).
local proc = require "keelproc"

local q = proc.quote

local function write_tmp(src)
  local base = os.tmpname()
  os.remove(base)
  local path = base .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write(src)
  f:close()
  return path
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- Starts `keel script` in the background, waits until its stdout contains
-- `ready`, then runs each step of plan: { signal = "TERM" } or
-- { wait_for = "text" } (polls stdout). Returns exit code, stdout, stderr.
-- A watchdog SIGKILLs the child after 10 s so a hang cannot stall the suite
-- (not `timeout`: it would stand between us and the child's signals).
local function with_signals(src, plan)
  local script = write_tmp(src)
  local out, err = os.tmpname(), os.tmpname()
  local sh = {
    string.format("%s %s >%s 2>%s & pid=$!", q(proc.bin), q(script), out, err),
    "( sleep 10 & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s; kill -KILL $pid 2>/dev/null ) & wd=$!",
  }
  local function wait_for(text)
    sh[#sh + 1] = string.format(
      "i=0; while ! grep -q %s %s && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done", q(text), out)
  end
  wait_for("ready")
  for _, step in ipairs(plan) do
    if step.signal then sh[#sh + 1] = "kill -" .. step.signal .. " $pid" end
    if step.wait_for then wait_for(step.wait_for) end
    if step.pause then sh[#sh + 1] = "sleep " .. step.pause end
  end
  local status = os.tmpname()
  sh[#sh + 1] = "wait $pid; echo $? >" .. status
  sh[#sh + 1] = "kill $wd 2>/dev/null; wait $wd 2>/dev/null"
  os.execute("sh -c " .. q(table.concat(sh, "\n")))
  local code = tonumber(slurp(status):match("%d+"))
  local so, se = slurp(out), slurp(err)
  os.remove(out); os.remove(err); os.remove(status); os.remove(script)
  return code, so, se
end

describe("keel CLI", function()
  describe("exit codes", function()
    it("0 when the script succeeds", function()
      local code, out, err = proc.script('io.write("hello")')
      assert.equal(0, code)
      assert.equal("hello", out)
      assert.equal("", err)
    end)

    it("1 on an uncaught error, printed as file:line: message plus a traceback", function()
      local code, out, err, path = proc.script('local x = 1\nerror("it broke")\n')
      assert.equal(1, code)
      assert.equal("", out)
      assert.is_truthy(err:find(path .. ":2: it broke", 1, true))
      assert.matches("stack traceback:", err)
    end)

    it("1 on an error inside a function, with the frames in the traceback", function()
      local code, _, err, path = proc.script('local function f() error("deep") end\nlocal function g() f() end\ng()\n')
      assert.equal(1, code)
      assert.is_truthy(err:find(path .. ":1: deep", 1, true))
      assert.is_truthy(err:find(path .. ":2: in function", 1, true))
    end)

    it("1 on a non-string error object, described", function()
      local code, _, err = proc.eval("error({})")
      assert.equal(1, code)
      assert.matches("error object is a table value", err)
    end)

    it("1 on a syntax error, naming the file and line", function()
      local code, _, err, path = proc.script("local x = \n\n)")
      assert.equal(1, code)
      assert.is_truthy(err:find(path .. ":3:", 1, true))
    end)

    it("2 for an unknown flag, saying which", function()
      local code, out, err = proc.run({ "--bogus" })
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("unknown option '%-%-bogus'", err)
      assert.matches("usage: keel", err)
    end)

    it("2 for a missing script file, saying which", function()
      local code, _, err = proc.run({ "/nonexistent/dir/nope.lua" })
      assert.equal(2, code)
      assert.matches("cannot read script '/nonexistent/dir/nope.lua'", err)
    end)

    it("2 for a directory given as the script", function()
      local code, _, err = proc.run({ "/tmp" })
      assert.equal(2, code)
      assert.matches("script '/tmp' is a directory", err)
    end)

    it("1 when the main task fails, even with other tasks still alive", function()
      local code, out, err = proc.eval([[
        local keel = require "keel"
        keel.spawn(function() keel.sleep(60000) io.write("never") end)
        keel.sleep(1)
        error("main died")
      ]])
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("%(command line%):4: main died", err)
    end)

    it("1 with a message when the main task is cancelled", function()
      local code, _, err = proc.eval([[
        local keel = require "keel"
        local main = keel.current()
        keel.spawn(function() main:cancel() end)
        keel.sleep(60000)
      ]])
      assert.equal(1, code)
      assert.matches("keel: the main task was cancelled", err)
    end)

    it("2 when no script is given", function()
      local code, _, err = proc.run({})
      assert.equal(2, code)
      assert.matches("no script given", err)
    end)

    it("2 for -e or --sim without their argument, or a bad seed", function()
      local code, _, err = proc.run({ "-e" })
      assert.equal(2, code)
      assert.matches("%-e needs an argument", err)
      code, _, err = proc.run({ "--sim" })
      assert.equal(2, code)
      assert.matches("%-%-sim needs a SEED", err)
      for _, bad in ipairs({ "-1", "abc", "1.5", "" }) do
        code, _, err = proc.run({ "--sim", bad, "-e", "" })
        assert.equal(2, code)
        assert.matches("SEED must be a non%-negative integer", err)
      end
    end)
  end)

  describe("arguments", function()
    it("sets arg as lua does: arg[0] the script, arg[1..n] its arguments, ... too", function()
      local code, out, _, path = proc.script([[
        io.write(arg[0], "|", #arg, "|", table.concat(arg, ","), "|", select("#", ...), "|", table.concat({ ... }, ","))
      ]], { "a", "b c", "-v", "" })
      assert.equal(0, code)
      assert.equal(path .. "|4|a,b c,-v,|4|a,b c,-v,", out)
    end)

    it("'--' ends keel's own options", function()
      local path = write_tmp('io.write(#arg, arg[1] or "")')
      local code, out = proc.run({ "--", path, "x" })
      os.remove(path)
      assert.equal(0, code)
      assert.equal("1x", out)
    end)

    it("-e runs the code as the main task", function()
      local code, out = proc.eval('local keel = require "keel"; keel.sleep(1); '
        .. 'io.write(tostring(keel.current() ~= nil))')
      assert.equal(0, code)
      assert.equal("true", out)
    end)

    it("-e sets arg and ... from the arguments after CODE, as for a file (arg[0] is \"(command line)\")", function()
      local code, out, err = proc.run({ "-e", 'io.write(arg[0], "|", #arg, "|", table.concat(arg, ","), "|", '
        .. 'select("#", ...), "|", table.concat({ ... }, ","))', "a", "b c", "-v", "" })
      assert.equal(0, code, err)
      assert.equal("(command line)|4|a,b c,-v,|4|a,b c,-v,", out)
    end)

    it("-e reports errors as (command line):line", function()
      local code, _, err = proc.eval('\nerror("from e")')
      assert.equal(1, code)
      assert.matches("%(command line%):2: from e", err)
    end)

    it("-v and --version print the version", function()
      for _, flag in ipairs({ "-v", "--version" }) do
        local code, out = proc.run({ flag })
        assert.equal(0, code)
        assert.matches("^keel %d+%.%d+%.%d+\n$", out)
      end
    end)

    it("-h and --help print the usage on stdout", function()
      for _, flag in ipairs({ "-h", "--help" }) do
        local code, out, err = proc.run({ flag })
        assert.equal(0, code)
        assert.equal("", err)
        assert.matches("usage: keel", out)
        assert.matches("%-%-sim SEED", out)
      end
    end)
  end)

  describe("running", function()
    it("waits for every task still alive after the main chunk returns", function()
      local code, out = proc.eval([[
        local keel = require "keel"
        keel.spawn(function() keel.sleep(20) io.write("late task") end)
        io.write("main returns;")
      ]])
      assert.equal(0, code)
      assert.equal("main returns;late task", out)
    end)

    it("keel.exit(code) ends at once, abandoning live tasks", function()
      local code, out = proc.eval([[
        local keel = require "keel"
        keel.spawn(function() keel.sleep(10000) io.write("never") end)
        io.write("before;")
        keel.exit(3)
        io.write("after")
      ]])
      assert.equal(3, code)
      assert.equal("before;", out)
    end)

    it("keel.exit from another task, and keel.exit() means 0", function()
      local code = proc.eval([[
        local keel = require "keel"
        keel.spawn(function() keel.sleep(5) keel.exit(7) end)
        keel.sleep(10000)
      ]])
      assert.equal(7, code)
      code = proc.eval('require("keel").exit() error("not reached")')
      assert.equal(0, code)
    end)

    it("an unref'd timer does not keep the process alive; a referenced one does", function()
      local code, out = proc.run({ "--sim", "1", "-e", [[
        local keel = require "keel"
        keel.every(5, function() io.write("x") end):unref()
        keel.after(12, function() io.write("|done") end)
      ]] })
      assert.equal(0, code)
      assert.equal("xx|done", out)
    end)

    it("detects a deadlock and exits 1 with a message", function()
      local code, _, err = proc.eval('require("keel").channel(0):recv()')
      assert.equal(1, code)
      assert.matches("keel: deadlock: 1 task%(s%) are waiting and nothing can wake them", err)
    end)

    it("a task that only an unref'd timer could wake is a deadlock, in real and virtual time", function()
      local src = [[
        local keel = require "keel"
        local ch = keel.channel(0)
        keel.every(5, function() end):unref()
        ch:recv()
      ]]
      for _, flags in ipairs({ {}, { "--sim", "3" } }) do
        local argv = {}
        for _, f in ipairs(flags) do argv[#argv + 1] = f end
        argv[#argv + 1] = "-e"
        argv[#argv + 1] = src
        local code, _, err = proc.run(argv, { prefix = "timeout -s KILL 5" })
        assert.equal(1, code)
        assert.matches("keel: deadlock: 1 task", err)
      end
    end)

    it("a deadlock among helper tasks after main returned is detected too", function()
      local code, _, err = proc.eval([[
        local keel = require "keel"
        local ch = keel.channel(0)
        keel.spawn(function() ch:recv() end)
        keel.spawn(function() ch:recv() end)
      ]])
      assert.equal(1, code)
      assert.matches("keel: deadlock: 2 task%(s%)", err)
    end)
  end)

  describe("--sim SEED", function()
    local src = [[
      local keel = require "keel"
      local out = { tostring(keel.is_sim()), keel.seed(), keel.now() }
      local ch = keel.channel(1)
      for i = 1, 5 do
        keel.spawn(function()
          keel.sleep(keel.random(1, 3600 * 1000))
          ch:send(i .. "@" .. keel.now())
        end)
      end
      for _ = 1, 5 do out[#out + 1] = ch:recv() end
      out[#out + 1] = keel.random()
      out[#out + 1] = keel.wall()
      io.write(table.concat(out, " "))
    ]]

    it("runs in virtual time, and the same seed gives the same output", function()
      local c1, a = proc.script(src, nil, { "--sim", "17" })
      local c2, b = proc.script(src, nil, { "--sim", "17" })
      assert.equal(0, c1)
      assert.equal(0, c2)
      assert.matches("^true 17 0 ", a)
      assert.equal(a, b)
    end)

    it("another seed gives other output", function()
      local _, a = proc.script(src, nil, { "--sim", "17" })
      local _, b = proc.script(src, nil, { "--sim", "18" })
      assert.are_not.equal(a, b)
    end)

    it("a real-time run's seed, printed by print(keel.seed()), replays the run with --sim", function()
      local replay = 'local keel = require "keel"; print(keel.seed()); print(keel.random(), keel.random(1, 1e9))'
      local code, out, err = proc.run({ "-e", replay })
      assert.equal(0, code, err)
      local seed = out:match("^(%S+)\n")
      assert.matches("^%d+$", seed)
      local code2, out2, err2 = proc.run({ "--sim", seed, "-e", replay })
      assert.equal(0, code2, err2)
      assert.equal(out, out2)
    end)

    it("one seed range everywhere: 0..99999999999999 for --sim and keel.sim, and nothing above", function()
      local code, out, err = proc.run({ "--sim", "99999999999999", "-e",
        'local keel = require "keel"; print(keel.seed(), keel.sim({ seed = 99999999999999 }, keel.seed))' })
      assert.equal(0, code, err)
      assert.equal("99999999999999\t99999999999999\n", out)
      local _
      code, _, err = proc.run({ "--sim", "100000000000000", "-e", "" })
      assert.equal(2, code)
      assert.matches("SEED must be a non%-negative integer of at most 14 digits", err)
      code, _, err = proc.run({ "--sim", "18446744073709551615", "-e", "" })
      assert.equal(2, code)
      assert.matches("SEED must be a non%-negative integer of at most 14 digits", err)
      code, out, err = proc.run({ "-e", 'local keel = require "keel"; '
        .. 'io.write(tostring(select(2, pcall(keel.sim, { seed = 1e14 }, keel.seed))))' })
      assert.equal(0, code, err)
      assert.matches("keel.sim: option 'seed' must be an integer in %[0, 99999999999999%]", out)
    end)

    it("detects a deadlock in virtual time", function()
      local code, _, err = proc.run({ "--sim", "1", "-e",
        'local k = require "keel"; k.sleep(1e6); k.channel(0):recv()' })
      assert.equal(1, code)
      assert.matches("deadlock", err)
    end)
  end)

  describe("finalizers at exit", function()
    -- LuaJIT runs every cdata finalizer (Keel's C objects) before the
    -- userdata finalizers when the state closes: a user's __gc that pushes
    -- to a queue or arms a timer must still find them (ASan build: no
    -- heap-use-after-free).
    it("a userdata or cdata __gc may use a queue and keel.after while the process exits", function()
      local code, out, err = proc.run({ "-e", [[
        local ffi = require "ffi"
        local keel = require "keel"
        local q = keel.queue()
        local d = keel.dedup()
        local u = newproxy(true)
        getmetatable(u).__gc = function()
          q:push("from userdata")
          keel.after(1000, function() end)
          d:seen("u")
          io.write("userdata: ", tostring(q:stats().ready), " ", tostring(d:seen("u")), "\n")
        end
        _G.keep_u = u
        _G.keep_c = ffi.gc(ffi.new("int[1]"), function()
          q:push("from cdata")
          keel.after(1000, function() end)
          d:seen("c")
          io.write("cdata: ", tostring(d:seen("c")), "\n")
        end)
        for i = 1, 100 do q:push(i) end
      ]] })
      assert.equal(0, code, err)
      assert.matches("userdata: 10%d true", out)
      assert.matches("cdata: true", out)
    end)
  end)

  describe("signals", function()
    local function handler_script(deadline_ms, handler_body)
      return string.format([[
        local keel = require "keel"
        keel.on_shutdown(function()
          io.write("handler started;") io.stdout:flush()
          %s
          io.write("handler done;") io.stdout:flush()
        end%s)
        io.write("ready;") io.stdout:flush()
        keel.sleep(60000)
        io.write("main not cancelled")
      ]], handler_body, deadline_ms and (", { deadline_ms = " .. deadline_ms .. " }") or "")
    end

    it("SIGTERM runs the on_shutdown handlers as tasks, then exits 143", function()
      local code, out = with_signals(handler_script(nil, "keel.sleep(30)"), { { signal = "TERM" } })
      assert.equal(143, code)
      assert.equal("ready;handler started;handler done;", out)
    end)

    it("SIGINT exits 130 after the handlers", function()
      local code, out = with_signals(handler_script(nil, "keel.sleep(1)"), { { signal = "INT" } })
      assert.equal(130, code)
      assert.equal("ready;handler started;handler done;", out)
    end)

    it("every handler runs", function()
      local code, out = with_signals([[
        local keel = require "keel"
        keel.on_shutdown(function() keel.sleep(5) io.write("a;") end)
        keel.on_shutdown(function() io.write("b;") end)
        io.write("ready;") io.stdout:flush()
        keel.sleep(60000)
      ]], { { signal = "TERM" } })
      assert.equal(143, code)
      assert.matches("b;", out)
      assert.matches("a;", out)
    end)

    it("without handlers the signal exits at once, flushing buffered output", function()
      local code, out = with_signals(
        'io.write("ready") io.stdout:flush() io.write(";buffered") require("keel").sleep(60000)',
        { { signal = "TERM" } })
      assert.equal(143, code)
      assert.equal("ready;buffered", out)
    end)

    it("a handler past its deadline is abandoned and reported", function()
      local code, out, err = with_signals(handler_script(100, "keel.sleep(60000)"), { { signal = "TERM" } })
      assert.equal(143, code)
      assert.equal("ready;handler started;", out)
      assert.matches("shutdown handlers did not finish within 100 ms", err)
    end)

    it("a failing handler is reported and the exit code stays", function()
      local code, _, err = with_signals(handler_script(nil, 'error("handler broke")'), { { signal = "INT" } })
      assert.equal(130, code)
      assert.matches("shutdown handler failed: .*handler broke", err)
    end)

    it("a second signal ends a script that never yields to the loop", function()
      local code, out = with_signals('io.write("ready") io.stdout:flush() while true do end',
        -- (apart: two identical signals sent at once may merge into one)
        { { signal = "TERM" }, { pause = 0.2 }, { signal = "TERM" } })
      assert.equal(143, code)
      assert.equal("ready", out)
    end)

    it("a second signal exits at once, without waiting for the handlers", function()
      local code, out = with_signals(handler_script(nil, "keel.sleep(60000)"), {
        { signal = "TERM" }, { wait_for = "handler started" }, { signal = "TERM" },
      })
      assert.equal(143, code)
      assert.equal("ready;handler started;", out)
    end)
  end)
end)
