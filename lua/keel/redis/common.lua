-- Shared bits of the Redis-backed primitives: option checks, key naming and
-- result plumbing. Every key of one operation is built from the same
-- "{prefix:key}" hash tag, so each script touches a single cluster slot.
local check = require "keel.check"

local common = {}

local type, tostring, getmetatable, error, format, rawget = type, tostring, getmetatable, error, string.format, rawget

-- By name, not identity: a module reloaded (e.g. by busted's insulation)
-- has a fresh metatable, and its clients are just as good.
function common.client(fname, v)
  local mt = getmetatable(v)
  if type(mt) ~= "table" or rawget(mt, "__name") ~= "keel.redis.client" then
    error(format("%s: option 'redis' must be a client from keel.redis.connect (got %s)", fname, tostring(v)), 3)
  end
  return v
end

-- prefix: option or "keel:<kind>:<name or 'default'>"; braces are not
-- allowed in it because they would change the hash tag.
function common.prefix(fname, opts, kind)
  local p = opts.prefix
  if p == nil then p = "keel:" .. kind .. ":" .. (opts.name or "default") end
  check.string(fname, "option 'prefix'", p)
  if p:find("[{}]") then error(format("%s: option 'prefix' must not contain '{' or '}' (got %q)", fname, p), 3) end
  return p
end

-- "{prefix:key}" -- the tag; callers append ":suffix" for each key.
function common.tag(prefix, key)
  return "{" .. prefix .. ":" .. key .. "}"
end

-- A Redis failure (not an error reply of our own script) is passed through
-- as nil, "conn: ..." / "timeout: ..."; an error reply from a script is a bug
-- or a wrong-type key, reported the same way with its text.
function common.fail(err) return nil, err end

-- depth: helper functions between the method and this call (see check.self)
function common.self(fname, self, mt, depth)
  if getmetatable(self) ~= mt then check.self(fname, self, mt, 1 + (depth or 0)) end
end

return common
