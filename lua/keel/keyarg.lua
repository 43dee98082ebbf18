-- Key arguments of the keyed primitives (dedup, leases, registry): strings as
-- they are, numbers as tostring(n) (so 1 and "1" name the same key), at most
-- the C map's key limit.

local type, error, format, tostring = type, error, string.format, tostring

local MAX_KEY = 65535

-- level: error level as seen from the function calling keyarg (2 = its caller).
return function(fname, what, key, level)
  if type(key) ~= "string" then
    if type(key) ~= "number" or key ~= key then
      error(format("%s: %s must be a string or number (got %s)", fname, what, tostring(key)), (level or 2) + 1)
    end
    key = tostring(key)
  end
  if #key > MAX_KEY then
    error(format("%s: %s must be at most %d bytes (got %d)", fname, what, MAX_KEY, #key), (level or 2) + 1)
  end
  return key
end
