-- Every named primitive registers here so keel.metrics() can report it.
-- Objects are the weak keys of the registry: naming a primitive never keeps
-- it alive, and a dropped one disappears at the next collection.
local metrics = {}

local type, pairs, tostring, tonumber = type, pairs, tostring, tonumber
local format, floor, huge = string.format, math.floor, math.huge

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

local function escape_label(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

-- Prometheus' float syntax: +Inf/-Inf/NaN, and the shortest decimal that
-- reads back as the same double.
local function number(v)
  if v ~= v then return "NaN" end
  if v == huge then return "+Inf" end
  if v == -huge then return "-Inf" end
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
  local s = format("%.15g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  return s
end

local function ident(s)
  return (s:gsub("[^%w_]", "_"))
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function prometheus(snap)
  local lines = {}
  for _, kind in ipairs(sorted_keys(snap)) do
    local series = {}
    for name, stats in pairs(snap[kind]) do
      local label = format('name="%s"', escape_label(name))
      for field, v in pairs(stats) do
        if type(field) == "string" then
          local f = ident(field)
          local metric = "keel_" .. ident(kind) .. "_" .. f
          local line
          local tv = type(v)
          if tv == "number" then
            line = format("%s{%s} %s", metric, label, number(v))
          elseif tv == "boolean" then
            line = format("%s{%s} %d", metric, label, v and 1 or 0)
          elseif tv == "string" then
            -- a state-like field: one series whose label carries the value
            line = format('%s{%s,%s="%s"} 1', metric, label, f == "name" and "value" or f, escape_label(v))
          end
          if line then
            series[metric] = series[metric] or {}
            local s = series[metric]
            s[#s + 1] = line
          end
        end
      end
    end
    for _, m in ipairs(sorted_keys(series)) do
      lines[#lines + 1] = "# TYPE " .. m .. " gauge"
      table.sort(series[m])
      for _, l in ipairs(series[m]) do lines[#lines + 1] = l end
    end
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

-- keel.metrics([format]): { kind = { name = stats } }, or Prometheus text.
function metrics.collect(format_)
  if format_ == nil then return snapshot() end
  if format_ == "prometheus" then return prometheus(snapshot()) end
  local got = type(format_) == "string" and format("%q", format_) or tostring(format_)
  -- keel.metrics tail-calls this, so level 2 is its caller
  error("keel.metrics: argument 'format' must be nil or \"prometheus\" (got " .. got .. ")", 2)
end

return metrics
