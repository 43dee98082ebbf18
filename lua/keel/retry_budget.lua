-- keel.retry_budget{ratio, min_per_s, window_ms, name}: caps retries across
-- many keel.retry calls to ratio x calls in the last window_ms plus a floor
-- of min_per_s, so retries cannot multiply the load on a failing dependency
-- (the Finagle / gRPC retry budget). Counts live in 10 buckets of
-- window_ms / 10, so memory is fixed and the window slides in tenths.
local check = require "keel.check"
local sched = require "keel.sched"
local metrics = require "keel.metrics"

local FNAME = "keel.retry_budget"
local OPTS = check.set { "ratio", "min_per_s", "window_ms", "name" }
local NB = 10

local Budget = {}
Budget.__index = Budget

local floor = math.floor

-- Drops buckets older than the window and returns the current one's index.
local function advance(self)
  local b = floor(sched.now() / self.bucket_ms)
  local head = self.head
  if b > head then
    local n = b - head
    if n > NB then n = NB end
    for i = 1, n do
      local k = (head + i) % NB + 1
      self.tcalls = self.tcalls - self.calls[k]
      self.tretries = self.tretries - self.retries[k]
      self.calls[k], self.retries[k] = 0, 0
    end
    self.head = b
  end
  return self.head % NB + 1
end

local function allowance(self)
  return self.ratio * self.tcalls + self.floor - self.tretries
end

-- Records a first attempt (not a retry): each one earns `ratio` retries.
function Budget:deposit()
  check.self("retry_budget:deposit", self, Budget)
  local k = advance(self)
  self.calls[k] = self.calls[k] + 1
  self.tcalls = self.tcalls + 1
  self.total_calls = self.total_calls + 1
end

-- Asks for one retry: true (and counts it) or false when the budget is spent.
function Budget:withdraw()
  check.self("retry_budget:withdraw", self, Budget)
  local k = advance(self)
  if allowance(self) < 1 then
    self.rejected = self.rejected + 1
    return false
  end
  self.retries[k] = self.retries[k] + 1
  self.tretries = self.tretries + 1
  self.total_retries = self.total_retries + 1
  return true
end

function Budget:stats()
  check.self("retry_budget:stats", self, Budget)
  advance(self)
  local avail = allowance(self)
  return {
    calls = self.total_calls, retries = self.total_retries, rejected = self.rejected,
    window_calls = self.tcalls, window_retries = self.tretries,
    available = avail > 0 and floor(avail) or 0,
  }
end

return function(opts)
  opts = check.opts(FNAME, opts, OPTS)
  local ratio = check.number(FNAME, "option 'ratio'", opts.ratio, 0.1, 0, 1000)
  local min_per_s = check.number(FNAME, "option 'min_per_s'", opts.min_per_s, 10, 0, 1e9)
  local window_ms = check.number(FNAME, "option 'window_ms'", opts.window_ms, 10000, 1, 1e12)
  local name = opts.name ~= nil and check.string(FNAME, "option 'name'", opts.name) or nil
  local calls, retries = {}, {}
  for i = 1, NB do calls[i], retries[i] = 0, 0 end
  local self = setmetatable({
    ratio = ratio, floor = min_per_s * window_ms / 1000, bucket_ms = window_ms / NB,
    calls = calls, retries = retries, tcalls = 0, tretries = 0,
    head = floor(sched.now() / (window_ms / NB)),
    total_calls = 0, total_retries = 0, rejected = 0, name = name,
  }, Budget)
  metrics.register("retry_budget", name, self)
  return self
end
