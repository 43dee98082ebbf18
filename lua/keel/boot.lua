-- The Lua half of a runtime: the host (bindings/keel_rt.c) requires this
-- once per Lua state and drives the world through the functions it returns.
local ffi = require "ffi"
local sched = require "keel.sched"
require "keel.ffi.core"
local cmem = require "keel.cmem"

local boot = {}

-- A task that waits resumes in the middle of a compiled trace, after the
-- yield, and LuaJIT records that continuation as a trace "stitched" to the
-- one that yielded. If such continuations are compiled before the waiting
-- call's function entry has a root trace of its own to link to, each one
-- ends in the next yield and starts a new one: traces pile up by the
-- thousand and a call loop runs at two thirds of its speed. Compiling side
-- traces after 100 exits instead of 10 lets those root traces form first
-- (one run in three was slow before; none in 48 after). Scripts may set
-- their own jit.opt.
if jit and jit.opt then jit.opt.start("hotexit=100") end

-- host_events: the host may post events (keel_post), so a task waiting for
-- an on_event handler to wake it is not a deadlock.
function boot.init(clock_ptr, rand_ptr, seed, host_events, reclaim_ptr)
  cmem.init(reclaim_ptr)
  local w = sched.new_world({
    clock = ffi.cast("keel_clock_t *", clock_ptr),
    rand = ffi.cast("keel_rand_t *", rand_ptr),
    seed = seed,
    host_events = host_events,
  })
  sched.set_world(w)
  boot.world = w
  return w
end

-- Runs the script chunk as the main task; an uncaught error ends the run
-- with exit code 1 after printing "file:line: message" and a traceback.
function boot.start_main(chunk, ...)
  local w = boot.world
  local main = sched.spawn_main(w, chunk, ...)
  main:_watch(function(task)
    if task.state == "failed" then
      sched.report(task:traceback())
      if not w.exit_code then sched.request_exit(w, 1) end
    elseif task.state == "cancelled" and not w.exit_code then
      -- Exit 1 says "error": say which, or the failure is silent.
      sched.report("keel: the main task was cancelled")
      sched.request_exit(w, 1)
    end
  end)
  main.observed = true
  boot.main = main
  return main
end

-- The error of a main task that failed (or was cancelled) already, as a
-- string for keel_error; nil while it runs or after it succeeded.
function boot.main_error()
  local main = boot.main
  if not main then return nil end
  if main.state == "failed" then
    local ok, msg = pcall(tostring, main.err)
    return ok and type(msg) == "string" and msg or "(error object is a " .. type(main.err) .. " value)"
  elseif main.state == "cancelled" then
    return "the main task was cancelled"
  end
  return nil
end

-- Before the state closes: C objects finalized from now on are freed by
-- the host after the close, so user finalizers can still use them.
function boot.close() cmem.closing() end

-- Returns state (see sched.READY...), the next deadline and the exit code.
function boot.tick()
  local w = boot.world
  local state, nxt = sched.tick(w)
  return state, nxt, w.exit_code or 0, w.alive
end

function boot.complete(id, a, b, c) return sched.complete(id, a, b, c) end

function boot.event(name, payload)
  if not sched.deliver_event(boot.world, name, payload) then
    sched.report("keel: event '" .. tostring(name) .. "' has no handler (keel.on_event)")
  end
end

function boot.shutdown(code) sched.shutdown(boot.world, code) end

function boot.exit_code() return boot.world.exit_code end

return boot
