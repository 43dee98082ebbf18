-- One listener shape for every resilience primitive: x:on(event, fn).
-- Objects keep `ev = nil` until the first listener, so emitting costs one
-- field test when nobody listens. A listener that raises is reported on
-- stderr and never breaks the call that emitted the event.
local sched = require "keel.sched"

local events = {}

local xpcall, traceback, tostring, type, error = xpcall, debug.traceback, tostring, type, error

-- known: { event = true }; fname: "breaker:on" for error messages. Methods
-- tail-call this (`return events.on(...)`), so level 2 is their caller.
function events.on(self, fname, known, name, fn)
  if type(name) ~= "string" or not known[name] then
    local names = {}
    for k in pairs(known) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("%s: argument 'event' must be one of %s (got %s)", fname, table.concat(names, ", "),
      type(name) == "string" and string.format("%q", name) or tostring(name)), 2)
  end
  if type(fn) ~= "function" and not (getmetatable(fn) and getmetatable(fn).__call) then
    error(string.format("%s: argument 'fn' must be a function (got %s)", fname, tostring(fn)), 2)
  end
  local ev = self.ev
  if not ev then
    ev = {}
    self.ev = ev
  end
  local list = ev[name]
  if not list then
    list = {}
    ev[name] = list
  end
  list[#list + 1] = fn
  return self
end

-- Calls every listener of `name` with the arguments; callers test self.ev
-- first so the common case (no listener) costs nothing more.
function events.emit(self, label, name, ...)
  local list = self.ev and self.ev[name]
  if not list then return end
  for i = 1, #list do
    local ok, err = xpcall(list[i], traceback, ...)
    if not ok then
      sched.report(string.format("%s: '%s' listener failed: %s", label, name, tostring(err)))
    end
  end
end

return events
