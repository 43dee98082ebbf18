-- Compiles and runs a C test program under spec/c/ against the library built
-- beside the keel binary under test (KEEL_BIN, default build/keel), with the
-- same sanitizers when that is the ASan build. Returns ok, output.
local ctest = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/c"
local root = here:gsub("/?spec/c$", "")
if root == "" then root = "." end

-- libs: extra compiler/linker flags (e.g. for libuv and hiredis)
function ctest.run(name, args, libs)
  local bin = os.getenv("KEEL_BIN") or (root .. "/build/keel")
  local dir = bin:match("^(.*)/[^/]*$") or "."
  local san = dir:match("asan") and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""
  local exe = os.tmpname()
  local cmd = string.format(
    "cc -std=c11 -O1 -g -D_GNU_SOURCE %s -I%s/runtime %s/spec/c/%s.c %s/libkeel.a %s -lpthread -lm -o %s 2>&1",
    san, root, root, name, dir, libs or "", exe)
  local p = io.popen(cmd)
  local out = p:read("*a")
  local ok = p:close()
  if not ok then
    os.remove(exe)
    return false, "compile failed: " .. cmd .. "\n" .. out
  end
  p = io.popen(exe .. " " .. (args or "") .. " 2>&1")
  out = p:read("*a")
  ok = p:close()
  os.remove(exe)
  return ok and true or false, out
end

-- Builds an embedding host (keel.h) linked as an outside program would:
-- every archive member kept (the FFI looks symbols up at run time) and the
-- symbols exported; runs it with the Lua root as its first argument.
function ctest.run_host(name, args)
  local bin = os.getenv("KEEL_BIN") or (root .. "/build/keel")
  local dir = bin:match("^(.*)/[^/]*$") or "."
  local san = dir:match("asan") and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""
  local exe = os.tmpname()
  local cmd = string.format(
    "cc -std=c11 -O1 -g %s -I%s/bindings/include $(pkg-config --cflags libuv) %s/spec/c/%s.c -rdynamic "
      .. "-Wl,--whole-archive %s/libkeel.a -Wl,--no-whole-archive "
      .. "$(pkg-config --libs luajit libuv hiredis) -lsqlite3 -lpthread -lm -ldl -o %s 2>&1; echo \"rc=$?\"",
    san, root, root, name, dir, exe)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  if not out:match("rc=0%s*$") then
    os.remove(exe)
    return false, "compile failed: " .. cmd .. "\n" .. out
  end
  p = io.popen(exe .. " " .. root .. " " .. (args or "") .. " 2>&1; echo \"rc=$?\"")
  out = p:read("*a")
  p:close()
  os.remove(exe)
  return out:match("rc=0%s*$") ~= nil, out
end

return ctest
