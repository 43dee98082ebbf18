-- The FFI declarations in bindings/lua/keel/ffi/ repeat the C prototypes of
-- runtime/*.h (LuaJIT's ffi.cdef cannot read a header). This keeps the two
-- copies honest: every function declared for the FFI must match its header's
-- prototype exactly (modulo whitespace, comments and parameter names), so a
-- changed C signature cannot leave a stale FFI declaration behind.
local root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

local function strip_comments(s)
  s = s:gsub("/%*.-%*/", " "):gsub("//[^\n]*", " ")
  -- preprocessor lines (with continuations) are not declarations
  s = ("\n" .. s):gsub("\n%s*#[^\n]*\\\n[^\n]*", "\n"):gsub("\n%s*#[^\n]*", "\n")
  return s
end

-- name -> normalized prototype: types only, single spaces.
local function prototypes(src)
  local out = {}
  src = strip_comments(src)
  for decl in src:gmatch("[%w_][%w_%s%*]-[%s%*]keel_[%w_]+%s*%b()%s*;") do
    local name = decl:match("(keel_[%w_]+)%s*%(")
    local ret = decl:match("^(.-)keel_[%w_]+%s*%(")
    local params = decl:match("%((.*)%)")
    local types = {}
    for p in (params .. ","):gmatch("%s*(.-)%s*,") do
      -- drop the parameter name: the last identifier, unless it is the type itself
      local t = p:gsub("%s+", " ")
      local without = t:gsub("([%s%*])([%w_]+)$", function(sep) return sep == "*" and "*" or "" end)
      if t:find("[%s%*][%w_]+$") and not t:match("^%s*[%w_]+%s*$") then t = without end
      types[#types + 1] = (t:gsub("%s*%*%s*", "*"):gsub("^%s+", ""):gsub("%s+$", ""))
    end
    ret = ret:gsub("%s+", " "):gsub("%s*%*%s*", "*"):gsub("^%s+", ""):gsub("%s+$", "")
    out[name] = ret .. "(" .. table.concat(types, ",") .. ")"
  end
  return out
end

describe("FFI declarations", function()
  local headers = {}
  local p = io.popen("ls " .. root .. "/runtime/*.h")
  for path in p:lines() do
    for name, proto in pairs(prototypes(read(path))) do headers[name] = { proto = proto, file = path } end
  end
  p:close()

  local files = {}
  p = io.popen("ls " .. root .. "/bindings/lua/keel/ffi/*.lua")
  for path in p:lines() do files[#files + 1] = path end
  p:close()

  it("finds the headers and the FFI modules", function()
    assert.is_true(#files >= 10)
    assert.truthy(headers.keel_timers_add)
  end)

  for _, path in ipairs(files) do
    it("match runtime/*.h in " .. path:match("[^/]+$"), function()
      local cdefs = {}
      for block in read(path):gmatch("ffi%.cdef%s*%[(=*)%[(.-)%]%1%]") do cdefs[#cdefs + 1] = block end
      for block in read(path):gmatch("ffi%.cdef%s*%[%[(.-)%]%]") do cdefs[#cdefs + 1] = block end
      local checked = 0
      for _, block in ipairs(cdefs) do
        for name, proto in pairs(prototypes(block)) do
          local h = headers[name]
          assert.is_table(h, name .. " is declared for the FFI but in no runtime header")
          assert.equal(h.proto, proto, name .. " differs from " .. h.file)
          checked = checked + 1
        end
      end
      assert.is_true(checked > 0, "no declarations found in " .. path)
    end)
  end
end)
