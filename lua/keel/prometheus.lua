-- keel.metrics("prometheus"): the stats tables rendered the way Prometheus
-- and promtool expect them: a # HELP and a # TYPE line per family, counters
-- typed counter with a _total suffix, times in seconds (fields in ms are
-- converted, a deadline on the clock becomes the time left), percentages
-- as ratios, and a state as one 0/1 series per possible state (as
-- Micrometer renders a breaker).
local prometheus = {}

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local format, floor, huge, max = string.format, math.floor, math.huge, math.max

-- All-time counts, by field name (the same name means the same in every
-- kind). Any other number is a gauge.
local COUNTERS = {}
for _, f in ipairs {
  "calls", "failures", "slow", "allowed", "rejected", "opened", "acquired", "abandoned", "timeouts", "evicted",
  "evicted_active", "limited", "grants", "expirations", "lost", "refused_full", "refused_held", "releases",
  "renewals", "evictions", "hits", "marks", "acked", "dead_lettered", "dropped", "duplicates", "expired", "nacked",
  "popped", "pushed", "redriven", "binds", "expired_devices", "expired_gateways", "heartbeats", "moves", "unbinds",
  "retries", "probes", "redis_errors", "fallback_allowed", "sent", "replies", "error_replies", "conn_errors",
  "connects", "reconnects", "connect_failures", "errors", "adds", "checks", "trimmed", "ack_errors", "late_acks",
  "superseded", "full", "dead", "reclaimed",
} do COUNTERS[f] = true end

-- A field whose name means a count in one kind and a level in another:
-- true is a counter, false a gauge, for that kind only.
local KIND_GAUGES = { redis_queue = { delayed = true } }

-- String fields with a known set of values: one 0/1 series per value.
local BREAKER_STATES = { "closed", "open", "half_open", "forced_open", "disabled" }
local STATES = {
  breaker = { state = BREAKER_STATES }, redis_breaker = { state = BREAKER_STATES },
  redis = { state = { "connecting", "ready", "reconnecting", "closed" } },
}

-- Kinds renamed in metric names: keel_counter_* would read as a metric type.
local FAMILY = { counter = "count", redis_counter = "redis_count" }

local HELP = {
  state = "1 for the current state, 0 for the others",
  calls = "outcomes recorded", failures = "outcomes recorded as failures",
  slow = "outcomes at or over slow_ms", allowed = "calls permitted", rejected = "calls refused",
  opened = "transitions into open", window_calls = "calls in the deciding window",
  window_failures = "failures in the deciding window", window_slow = "slow calls in the deciding window",
  failure_ratio = "failures / calls in the deciding window", slow_ratio = "slow / calls in the deciding window",
  half_open_permits = "half-open permits left to hand out",
  probes_in_flight = "half-open permits out without an outcome",
  consecutive_opens = "openings since the breaker last closed",
  open_remaining_seconds = "time left until the open state ends (0 when not open)",
  in_use = "permits out", waiting = "callers waiting", acquired = "permits granted",
  abandoned = "waiters that left (timeout or cancel)", timeouts = "waiters that timed out", max = "configured maximum",
  queue = "configured queue length", keys = "keys held", max_keys = "configured maximum of keys",
  evicted = "idle keys evicted for room", limited = "requests refused by the limit", rate = "units per period",
  period_seconds = "the rate's period", burst = "configured burst", available = "units available now",
  value = "current value", shards = "shards",
}

local function escape_label(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function escape_help(s)
  return (s:gsub("\\", "\\\\"):gsub("\n", "\\n"))
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
prometheus.number = number

local function ident(s)
  return (tostring(s):gsub("[^%w_]", "_"))
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- One stats field -> metric suffix, type, value (nil: not rendered), help.
local function convert(kind, field, v, now)
  local f = ident(field)
  local base = f:match("^(.-)_until_ms$")
  if base and type(v) == "number" then
    -- a deadline on the runtime clock: only the time left means anything
    local left = now and v > 0 and max(0, v - now) / 1000 or 0
    return base .. "_remaining_seconds", "gauge", left
  end
  if f == "per_ms" then return "period_seconds", "gauge", v / 1000 end
  base = f:match("^(.-)_ms$")
  if base and type(v) == "number" then return base .. "_seconds", "gauge", v / 1000 end
  if (kind == "breaker" or kind == "redis_breaker") and (f == "failure_rate" or f == "slow_rate") then
    return f:gsub("_rate$", "_ratio"), "gauge", v / 100
  end
  local kg = KIND_GAUGES[kind]
  local counter = COUNTERS[f]
  if kg and kg[f] ~= nil then counter = kg[f] end
  if counter and type(v) == "number" then return f .. "_total", "counter", v end
  return f, "gauge", v
end

-- snap: { kind = { name = stats } }; now: the runtime clock (ms) or nil.
function prometheus.render(snap, now)
  local lines = {}
  for _, kind in ipairs(sorted_keys(snap)) do
    local prefix = "keel_" .. ident(FAMILY[kind] or kind) .. "_"
    local families = {} -- metric -> { type, help, samples }
    local function add(metric, mtype, help, line)
      local fam = families[metric]
      if not fam then
        fam = { type = mtype, help = help, samples = {} }
        families[metric] = fam
      end
      fam.samples[#fam.samples + 1] = line
    end
    local states = STATES[kind] or {}
    for name, stats in pairs(snap[kind]) do
      local label = format('name="%s"', escape_label(name))
      for field, v in pairs(stats) do
        if type(field) == "string" then
          local tv = type(v)
          local suffix, mtype, value = convert(kind, field, v, now)
          local metric = prefix .. suffix
          local help = HELP[suffix:gsub("_total$", "")] or format("keel.%s stats field '%s'", kind, field)
          if tv == "number" then
            add(metric, mtype, help, format("%s{%s} %s", metric, label, number(value)))
          elseif tv == "boolean" then
            add(metric, "gauge", help, format("%s{%s} %d", metric, label, v and 1 or 0))
          elseif tv == "string" then
            local f = ident(field)
            local lname = f == "name" and "value" or f
            local known = states[field]
            if known then
              for _, s in ipairs(known) do
                add(metric, "gauge", help, format('%s{%s,%s="%s"} %d', metric, label, lname, s, s == v and 1 or 0))
              end
            else
              -- an open-ended string: one info-style series carrying it
              add(metric, "gauge", help, format('%s{%s,%s="%s"} 1', metric, label, lname, escape_label(v)))
            end
          end
        end
      end
    end
    for _, m in ipairs(sorted_keys(families)) do
      local fam = families[m]
      lines[#lines + 1] = "# HELP " .. m .. " " .. escape_help(fam.help)
      lines[#lines + 1] = "# TYPE " .. m .. " " .. fam.type
      table.sort(fam.samples)
      for _, l in ipairs(fam.samples) do lines[#lines + 1] = l end
    end
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

return prometheus
