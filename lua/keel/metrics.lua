-- Every named primitive registers here so keel.metrics() can report it.
-- The registry holds its objects weakly: naming a primitive never keeps it alive.
local metrics = {}

local registry = setmetatable({}, { __mode = "v" })
local kinds = {}

-- kind: "breaker", "queue", ...; obj must have :stats() returning a flat
-- table of numbers (strings and booleans are reported as labels/gauges).
function metrics.register(kind, name, obj)
  if name == nil then return end
  local id = kind .. ":" .. name
  registry[id] = obj
  kinds[id] = { kind = kind, name = name }
end

local function snapshot()
  local out = {}
  for id, obj in pairs(registry) do
    local k = kinds[id]
    out[k.kind] = out[k.kind] or {}
    out[k.kind][k.name] = obj:stats()
  end
  return out
end

local function escape_label(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function prometheus(snap)
  local lines = {}
  local kind_names = {}
  for kind in pairs(snap) do kind_names[#kind_names + 1] = kind end
  table.sort(kind_names)
  for _, kind in ipairs(kind_names) do
    local by_name = snap[kind]
    local series = {}
    for name, stats in pairs(by_name) do
      for field, v in pairs(stats) do
        local metric = "keel_" .. kind .. "_" .. field
        series[metric] = series[metric] or {}
        local labels = string.format('name="%s"', escape_label(name))
        if type(v) == "number" then
          table.insert(series[metric], string.format("%s{%s} %.17g", metric, labels, v))
        elseif type(v) == "boolean" then
          table.insert(series[metric], string.format("%s{%s} %d", metric, labels, v and 1 or 0))
        elseif type(v) == "string" then
          table.insert(series[metric], string.format('%s{%s,%s="%s"} 1', metric, labels, field, escape_label(v)))
        end
      end
    end
    local metric_names = {}
    for m in pairs(series) do metric_names[#metric_names + 1] = m end
    table.sort(metric_names)
    for _, m in ipairs(metric_names) do
      lines[#lines + 1] = "# TYPE " .. m .. " gauge"
      table.sort(series[m])
      for _, l in ipairs(series[m]) do lines[#lines + 1] = l end
    end
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

function metrics.collect(format)
  local snap = snapshot()
  if format == nil then return snap end
  if format == "prometheus" then return prometheus(snap) end
  error(string.format("keel.metrics: argument 'format' must be nil or \"prometheus\" (got %s)", tostring(format)), 2)
end

return metrics
