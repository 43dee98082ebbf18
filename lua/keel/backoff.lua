-- keel.backoff{base_ms, cap_ms, factor, jitter, max_attempts}: exponential
-- delays with jitter, drawn from the current world's PRNG so a seeded
-- simulation replays the same delays.
local C = require "keel.ffi.backoff"
local check = require "keel.check"
local sched = require "keel.sched"

local FNAME = "keel.backoff"
local JITTER = { none = 0, full = 1, equal = 2, decorrelated = 3 }
local OPTS = check.set { "base_ms", "cap_ms", "factor", "jitter", "max_attempts" }

local Backoff = {}
Backoff.__index = Backoff

local function rand()
  local w = sched.world()
  if not w then error(FNAME .. ": no runtime world (is keel running?)", 3) end
  return w.rand
end

-- Delay before retry number `attempt` (1 = after the first failure). prev_ms
-- is the previous delay, used by decorrelated jitter only.
function Backoff:delay(attempt, prev_ms)
  check.self("backoff:delay", self, Backoff)
  check.integer("backoff:delay", "argument 'attempt'", attempt, nil, 1)
  prev_ms = check.number("backoff:delay", "argument 'prev_ms'", prev_ms, 0, 0)
  return C.keel_backoff_delay(rand(), self.jitter_code, self.base_ms, self.cap_ms, self.factor,
                              attempt, prev_ms)
end

-- for delay, attempt in b:delays() do ... end; stops after max_attempts - 1
-- delays when max_attempts is set, otherwise never.
function Backoff:delays()
  check.self("backoff:delays", self, Backoff)
  local attempt, prev = 0, 0
  local last = self.max_attempts and self.max_attempts - 1
  return function()
    attempt = attempt + 1
    if last and attempt > last then return nil end
    prev = C.keel_backoff_delay(rand(), self.jitter_code, self.base_ms, self.cap_ms, self.factor,
                                attempt, prev)
    return prev, attempt
  end
end

function Backoff:__tostring()
  return string.format("keel.backoff(base_ms=%g, cap_ms=%g, factor=%g, jitter=%s)",
                       self.base_ms, self.cap_ms, self.factor, self.jitter)
end

return function(opts)
  opts = check.opts(FNAME, opts, OPTS)
  local base = check.number(FNAME, "option 'base_ms'", opts.base_ms, 100, 0, 1e12)
  local cap = check.number(FNAME, "option 'cap_ms'", opts.cap_ms, math.max(30000, base), base, 1e12)
  local factor = check.number(FNAME, "option 'factor'", opts.factor, 2, 1, 1e6)
  local jitter = check.oneof(FNAME, "option 'jitter'", opts.jitter, "full",
                             { "full", "none", "equal", "decorrelated" })
  local max_attempts
  if opts.max_attempts ~= nil then
    max_attempts = check.integer(FNAME, "option 'max_attempts'", opts.max_attempts, nil, 1, 1e9)
  end
  return setmetatable({
    base_ms = base, cap_ms = cap, factor = factor, jitter = jitter,
    jitter_code = JITTER[jitter], max_attempts = max_attempts,
  }, Backoff)
end
