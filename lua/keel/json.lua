-- keel.json: lua-cjson (Debian's lua-cjson 2.1.0) with the settings the
-- patterns need, and an error at the caller's line for what JSON cannot
-- carry faithfully. See doc/store.md ("JSON").
local cjson = require("cjson").new() -- a private instance: settings do not leak

local type, pcall, error, pairs, next = type, pcall, error, pairs, next

-- Holes in an array are an error, not a run of nulls or an object.
cjson.encode_sparse_array(false, 1, 0)
-- NaN and infinities have no JSON spelling.
cjson.encode_invalid_numbers(false)
cjson.decode_invalid_numbers(false)
-- cjson keeps 14 significant digits (its maximum): integers above 1e14
-- do not round-trip, so ids travel as strings.
cjson.encode_number_precision(14)
-- A reference cycle shows as nesting deeper than this.
cjson.encode_max_depth(200)
cjson.decode_max_depth(200)

local json = { null = cjson.null }

local format, tonumber = string.format, tonumber

-- An integer cjson would write as a different one (more than 14
-- significant digits): an id would change in transit. Fractions are only
-- rounded to 14 digits, as documented.
local function lossy(x)
  return x == math.floor(x) and x ~= 1 / 0 and x ~= -1 / 0 and tonumber(format("%.14g", x)) ~= x
end

-- cjson would silently round them: refuse them here.
local function check_numbers(v, depth)
  if depth > 200 then return nil end
  for k, x in pairs(v) do
    local t = type(x)
    if t == "number" then
      if lossy(x) then
        return "number " .. format("%.17g", x) .. " at key " .. tostring(k)
          .. " is an integer beyond 14 significant digits (carry ids as strings)"
      end
    elseif t == "table" then
      local err = check_numbers(x, depth + 1)
      if err then return err end
    end
  end
  return nil
end

function json.encode(v)
  if type(v) == "table" then
    local bad = check_numbers(v, 1)
    if bad then error("keel.json.encode: " .. bad, 2) end
  elseif type(v) == "number" and lossy(v) then
    error("keel.json.encode: an integer beyond 14 significant digits (carry ids as strings)", 2)
  end
  local ok, s = pcall(cjson.encode, v)
  if not ok then
    if s:find("excessive nesting") then s = s .. " (a reference cycle?)" end
    error("keel.json.encode: " .. s, 2)
  end
  return s
end

function json.decode(s)
  if type(s) ~= "string" then
    error("keel.json.decode: argument 's' must be a string (got " .. type(s) .. ")", 2)
  end
  local ok, v = pcall(cjson.decode, s)
  if not ok then error("keel.json.decode: " .. v, 2) end
  return v
end

-- true when t is a table that encodes as an empty object ("{}"), which
-- decodes to an empty table: an empty array does not round-trip as one.
function json.is_empty(t) return type(t) == "table" and next(t) == nil end

return json
