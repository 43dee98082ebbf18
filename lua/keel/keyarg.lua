-- Key arguments of the keyed primitives (dedup, leases, registry): strings as
-- they are, numbers as tostring(n) (so 1 and "1" name the same key), at most
-- the C map's key limit.
local check = require "keel.check"

local type, error, format = type, error, string.format

local MAX_KEY = 65535

-- level: error level as seen from the function calling keyarg (2 = its caller).
return function(fname, what, key, level)
  if type(key) ~= "string" then key = check.key(fname, what, key) end
  if #key > MAX_KEY then
    error(format("%s: %s must be at most %d bytes (got %d)", fname, what, MAX_KEY, #key), (level or 2) + 1)
  end
  return key
end
