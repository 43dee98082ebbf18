-- Argument validation shared by every public function, so each error names
-- the function and the argument the same way:
--   keel.breaker: option 'size' must be an integer >= 1 (got -1)
local check = {}

local type, tostring, floor, huge = type, tostring, math.floor, math.huge

local function describe(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

local function fail(fname, what, expect, v)
  error(string.format("%s: %s must be %s (got %s)", fname, what, expect, describe(v)), 4)
end

-- what: "argument 'key'" or "option 'ttl_ms'", already phrased by the caller
local function number_in(fname, what, v, default, min, max, integer)
  if v == nil then
    if default ~= nil then return default end
    fail(fname, what, integer and "an integer" or "a number", v)
  end
  local expect = integer and "an integer" or "a number"
  if min and max then expect = string.format("%s in [%s, %s]", expect, tostring(min), tostring(max))
  elseif min then expect = string.format("%s >= %s", expect, tostring(min)) end
  if type(v) ~= "number" or v ~= v then fail(fname, what, expect, v) end
  if integer and (v ~= floor(v) or v == huge or v == -huge) then fail(fname, what, expect, v) end
  if (min and v < min) or (max and v > max) then fail(fname, what, expect, v) end
  return v
end

function check.number(fname, what, v, default, min, max)
  return number_in(fname, what, v, default, min, max, false)
end

function check.integer(fname, what, v, default, min, max)
  return number_in(fname, what, v, default, min, max, true)
end

function check.string(fname, what, v, default)
  if v == nil and default ~= nil then return default end
  if type(v) ~= "string" then fail(fname, what, "a string", v) end
  return v
end

-- A key: strings as they are, numbers converted, so t[1] and t["1"] differ
-- from nothing else a user might expect.
function check.key(fname, what, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" and v == v then return tostring(v) end
  fail(fname, what, "a string or number", v)
end

function check.func(fname, what, v, optional)
  if v == nil and optional then return nil end
  if type(v) ~= "function" then
    local mt = getmetatable(v)
    if not (mt and mt.__call) then fail(fname, what, "a function", v) end
  end
  return v
end

function check.boolean(fname, what, v, default)
  if v == nil and default ~= nil then return default end
  if type(v) ~= "boolean" then fail(fname, what, "a boolean", v) end
  return v
end

function check.oneof(fname, what, v, default, choices)
  if v == nil and default ~= nil then return default end
  for _, c in ipairs(choices) do if v == c then return v end end
  fail(fname, what, "one of " .. table.concat(choices, ", "), v)
end

-- Options tables: nil means {}; anything else must be a table; unknown keys
-- are rejected so a typo ("ttl" for "ttl_ms") is not silently ignored.
function check.opts(fname, v, known)
  if v == nil then return {} end
  if type(v) ~= "table" then
    error(string.format("%s: options must be a table (got %s)", fname, describe(v)), 3)
  end
  if known then
    for k in pairs(v) do
      if not known[k] then
        error(string.format("%s: unknown option '%s'", fname, tostring(k)), 3)
      end
    end
  end
  return v
end

-- For a local primitive: an option only its Redis variant knows (prefix,
-- poll_ms, ...) is refused saying so, instead of "unknown option": the
-- options of keel.x{redis = client, ...} minus redis must not look like typos.
function check.redis_only(fname, v, names)
  if type(v) ~= "table" then return end
  for k in pairs(v) do
    if names[k] then
      error(string.format("%s: option '%s' applies to the Redis backend only (add redis = client)", fname,
        tostring(k)), 3)
    end
  end
end

-- Turns {"a", "b"} into {a = true, b = true} for check.opts.
function check.set(list)
  local s = {}
  for _, k in ipairs(list) do s[k] = true end
  return s
end

-- For methods: catches obj.method() written for obj:method(). depth: how
-- many helper functions stand between the method and this call (0: the
-- method calls check.self itself), so the error points at the user's line.
function check.self(fname, self, mt, depth)
  if getmetatable(self) ~= mt then
    error(string.format("%s: call it as a method (obj:%s(...))", fname, fname:match("[:.]([%w_]+)$") or "method"),
      3 + (depth or 0))
  end
end

return check
