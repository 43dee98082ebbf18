-- C memory the Lua collector cannot see.
--
-- Keel's primitives keep their data in C; a dropped object is freed by its
-- finalizer, which runs only when a collection finds it. LuaJIT paces its
-- collector by the Lua heap alone, so a program with a small Lua heap that
-- drops large C objects never starts a collection and its resident memory
-- grows without bound. Constructors and growth therefore charge their C
-- bytes here, and the collector is stepped as if Lua had allocated them (as
-- Node's AdjustAmountOfExternalAllocatedMemory does for V8): dropped objects
-- are reclaimed at the pace C memory grows.
--
-- The same finalizers must not free while the Lua state closes: LuaJIT runs
-- every cdata finalizer before the userdata finalizers, and a user's __gc
-- may still push to a queue or arm a timer. The runtime (keel_rt.c) calls
-- cmem.closing() first; from then on frees go to its reclaim list
-- (runtime/keel_reclaim.h), run once the state is gone.
local ffi = require "ffi"
local C = require "keel.ffi.core"

local cmem = {}

local reclaim = nil -- keel_reclaim_t * of the runtime owning this state
local closing = false
local debt = 0
-- One collector step per MiB of C growth: small enough that a loop of
-- dropped objects is reclaimed within a few objects, large enough that a
-- growing live object costs one step per MiB, not one per insert.
local STEP_BYTES = 1024 * 1024

-- Growing objects check their size once per this many inserts.
cmem.SYNC_EVERY = 1024

function cmem.init(reclaim_ptr)
  reclaim = reclaim_ptr ~= nil and ffi.cast("keel_reclaim_t *", reclaim_ptr) or nil
end

function cmem.closing() closing = true end

-- Charges bytes of C memory just allocated.
function cmem.charge(bytes)
  if bytes > 0 then
    debt = debt + bytes
    -- no collector steps while the state closes: lua_close runs the finalizers
    if debt >= STEP_BYTES and not closing then
      local kb = math.floor(debt / 1024)
      debt = 0
      collectgarbage("step", kb)
    end
  end
end

-- Charges an object's growth: bytes is its C size now; obj.cbytes what was
-- charged for it so far.
function cmem.sync(obj, bytes)
  local grown = bytes - (obj.cbytes or 0)
  if grown > 0 then
    obj.cbytes = bytes
    cmem.charge(grown)
  end
end

-- One finalizer per free function, not one closure per object.
local finalizers = {}

local function finalizer(free)
  local fin = finalizers[free]
  if not fin then
    local fn = ffi.cast("keel_free_fn", free)
    fin = function(p)
      if closing and reclaim then C.keel_reclaim_add(reclaim, fn, p) else fn(p) end
    end
    finalizers[free] = fin
  end
  return fin
end

-- Returns p, freed with free(p) once unreachable; charges bytes (its C size).
function cmem.own(p, free, bytes)
  if bytes then cmem.charge(bytes) end
  return ffi.gc(p, finalizer(free))
end

return cmem
