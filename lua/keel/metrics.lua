-- Every named primitive registers here so keel.metrics() can report it.
-- Objects are the weak keys of the registry: naming a primitive never keeps
-- it alive, and a dropped one disappears at the next collection.
local metrics = {}

local type, tostring, pairs = type, tostring, pairs
local format = string.format

-- The registry lives in the Lua registry, not in this module's upvalues: a
-- module loaded twice (busted reloads modules for each spec file, while the
-- primitives keep the instance they were loaded with) must still see every
-- object. obj -> { kind, name, seq }; seq orders registrations.
local REG_KEY = "keel.metrics.state" -- not a metatable name (luaL_newmetatable shares this table)
local state = debug.getregistry()[REG_KEY]
if not state then
  state = { entries = setmetatable({}, { __mode = "k" }), seq = 0 }
  debug.getregistry()[REG_KEY] = state
end
local entries = state.entries

-- kind: "breaker", "queue", ...; obj must have :stats() returning a flat
-- table (numbers are values; booleans become 1/0; strings become labels).
-- Two live objects of one kind with the same name: the later one is
-- reported (the earlier shows again if the later is dropped first).
function metrics.register(kind, name, obj)
  if name == nil then return end
  state.seq = state.seq + 1
  entries[obj] = { kind = kind, name = name, seq = state.seq }
end

local function snapshot()
  local chosen = {} -- kind -> name -> entry + obj
  for obj, e in pairs(entries) do
    local by_name = chosen[e.kind]
    if not by_name then by_name = {}; chosen[e.kind] = by_name end
    local cur = by_name[e.name]
    if not cur or cur.seq < e.seq then by_name[e.name] = { seq = e.seq, obj = obj } end
  end
  local out = {}
  for kind, by_name in pairs(chosen) do
    local t = {}
    for name, c in pairs(by_name) do t[name] = c.obj:stats() end
    out[kind] = t
  end
  return out
end

-- keel.metrics([format]): { kind = { name = stats } }, or Prometheus text.
function metrics.collect(format_)
  if format_ == nil then return snapshot() end
  if format_ == "prometheus" then
    local sched = require "keel.sched"
    local w = sched.world()
    return require("keel.prometheus").render(snapshot(), w and w.clock.now_ms or nil)
  end
  local got = type(format_) == "string" and format("%q", format_) or tostring(format_)
  -- keel.metrics tail-calls this, so level 2 is its caller
  error("keel.metrics: argument 'format' must be nil or \"prometheus\" (got " .. got .. ")", 2)
end

return metrics
