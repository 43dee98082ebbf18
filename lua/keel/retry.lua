-- keel.retry(fn, {backoff, retry_on, retry_on_nil, budget, attempts}):
-- calls fn(attempt) until it succeeds, sleeping the backoff's delays between
-- tries. Only raised errors are failures unless retry_on_nil is set, because
-- `nil, err` is also how many functions report an ordinary "not found".
-- A cancelled task is never retried: the cancellation propagates at once.
local check = require "keel.check"
local sched = require "keel.sched"
local new_backoff = require "keel.backoff"

local FNAME = "keel.retry"
local OPTS = check.set { "backoff", "retry_on", "retry_on_nil", "budget", "attempts" }
local select, pcall, type, error = select, pcall, type, error
local unpack = unpack

local default_backoff

local function get_backoff(b)
  if b == nil then
    default_backoff = default_backoff or new_backoff {}
    return default_backoff
  end
  if type(b) ~= "table" then
    error(FNAME .. ": option 'backoff' must be a keel.backoff or an options table (got " .. tostring(b) .. ")", 3)
  end
  if type(b.delay) == "function" then return b end
  local ok, res = pcall(new_backoff, b)
  if not ok then error(tostring(res):gsub("^keel%.backoff", FNAME .. " (backoff)"), 3) end
  return res
end

local function get_budget(b)
  if b == nil then return nil end
  if type(b) ~= "table" or type(b.withdraw) ~= "function" or type(b.deposit) ~= "function" then
    error(FNAME .. ": option 'budget' must be a keel.retry_budget (got " .. tostring(b) .. ")", 3)
  end
  return b
end

local function pack(...) return { n = select("#", ...), ... } end

return function(fn, opts)
  check.func(FNAME, "argument 'fn'", fn)
  opts = check.opts(FNAME, opts, OPTS)
  local backoff = get_backoff(opts.backoff)
  local retry_on = check.func(FNAME, "option 'retry_on'", opts.retry_on, true)
  local retry_on_nil = check.boolean(FNAME, "option 'retry_on_nil'", opts.retry_on_nil, false)
  local budget = get_budget(opts.budget)
  local attempts = check.integer(FNAME, "option 'attempts'", opts.attempts, backoff.max_attempts or 3, 1, 1e9)
  sched.need_task(FNAME)

  if budget then budget:deposit() end
  local attempt, prev = 1, 0
  while true do
    local r = pack(pcall(fn, attempt))
    local err
    if r[1] then
      if not (retry_on_nil and r[2] == nil) then return unpack(r, 2, r.n) end
      err = r[3]
    else
      err = r[2]
      if err == sched.CANCELLED then error(err, 0) end
    end
    if retry_on and not retry_on(err) then
      if r[1] then return unpack(r, 2, r.n) end
      error(err, 0)
    end
    if attempt >= attempts then
      if r[1] then return unpack(r, 2, r.n) end
      error(err, 0)
    end
    if budget and not budget:withdraw() then return nil, "budget", err end
    prev = backoff:delay(attempt, prev)
    sched.sleep(prev, FNAME)
    attempt = attempt + 1
  end
end
