-- `make install` into a temporary prefix, then a host built outside the
-- source tree the documented way (pkg-config keel / keel-static) runs.
local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or "."
local bin = os.getenv("KEEL_BIN") or (root .. "/build/keel")
local build = bin:match("^(.*)/[^/]*$")

local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

describe("an installed Keel", function()
  -- These tests block the runner for seconds (child processes, compilers).
  -- The world clock is refreshed once per scheduler turn, so a later spec
  -- that starts with a real-time deadline (leases_spec: a 10 s lease, then a
  -- 1 ms wait) would compute it from a time seconds old and see it expire
  -- at once. keel.now() refreshes it (teardown below).
  local prefix, pc
  local san = build:match("asan") and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""

  setup(function()
    prefix = os.tmpname()
    os.remove(prefix)
    pc = "PKG_CONFIG_PATH=" .. prefix .. "/lib/pkgconfig"
    -- install copies the build under test (-o all: never rebuilds it)
    local code, out = sh(string.format("make -s -o all -C %s install BUILD=%s PREFIX=%s", root, build, prefix))
    assert.equal(0, code, out)
  end)

  teardown(function()
    if prefix then os.execute("rm -rf '" .. prefix .. "'") end
    require("keel").now()
  end)

  local function build_host(pkg, static)
    local exe = prefix .. "/host-" .. pkg
    local code, out = sh(string.format(
      "cc -std=c11 -Wall -Wextra -Werror %s %s/spec/c/outside_host.c -o %s $(%s pkg-config %s --cflags --libs %s)",
      san, root, exe, pc, static and "--static" or "", pkg))
    assert.equal(0, code, out)
    return exe
  end

  it("installs keel.pc and keel-static.pc", function()
    local code, out = sh(pc .. " pkg-config --modversion keel keel-static")
    assert.equal(0, code, out)
    code, out = sh(pc .. " pkg-config --variable=luaroot keel")
    assert.equal(0, code, out)
    assert.matches(prefix .. "/share/keel", out, 1, true)
  end)

  it("builds and runs a host linked with libkeel.so (pkg-config --cflags --libs keel)", function()
    local exe = build_host("keel")
    -- no lua_root: the Lua modules are found next to libkeel.so
    local code, out = sh(exe)
    assert.equal(0, code, out)
    assert.matches("outside host: 42 false true", out)
    out = select(2, sh("ldd " .. exe))
    assert.matches("libkeel%.so", out)
  end)

  it("builds and runs a host linked with libkeel.a (pkg-config --static --cflags --libs keel-static)", function()
    local exe = build_host("keel-static", true)
    local code, out = sh(string.format("%s \"$(%s pkg-config --variable=luaroot keel-static)\"", exe, pc))
    assert.equal(0, code, out)
    assert.matches("outside host: 42 false true", out)
    out = select(2, sh("ldd " .. exe))
    assert.is_nil(out:match("libkeel"), out)
  end)
end)
