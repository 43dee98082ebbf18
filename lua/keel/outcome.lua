-- Which outcomes count as failures, shared by keel.breaker, keel.retry and
-- keel.policy. A returned `nil, err` is a failure by default only when err
-- starts with one of the codes Keel's own calls use for "the dependency did
-- not answer" (a transport failure), never for an answer such as
-- nil, "not found" or nil, "empty". Raised errors are failures unless a
-- predicate says otherwise.
local outcome = {}

local type, match, select, unpack = type, string.match, select, unpack

-- The dependency did not answer: Keel's client codes ("conn: ...",
-- "timeout: ...", "closed: ...") and the Redis error replies that mean the
-- server could not serve the command right now.
outcome.FAILURE = {
  conn = true, timeout = true, closed = true,
  LOADING = true, BUSY = true, MASTERDOWN = true, READONLY = true, TRYAGAIN = true, CLUSTERDOWN = true,
}
-- Worth another try besides those: a refusal that passes (an open breaker,
-- a full bulkhead or client queue, a rate limit).
outcome.RETRYABLE = { open = true, full = true, limited = true }
for k in pairs(outcome.FAILURE) do outcome.RETRYABLE[k] = true end

local FAILURE, RETRYABLE = outcome.FAILURE, outcome.RETRYABLE

local function code(err)
  if type(err) ~= "string" then return nil end
  return match(err, "^[%a_]+")
end
outcome.code = code

-- keel.breaker's default record_result: fn returned nil, <failure code>.
function outcome.failed_result(v, err)
  return v == nil and FAILURE[code(err)] == true
end

-- keel.retry's default retry_on_result: nil, <failure or refusal code>.
function outcome.retryable_result(v, err)
  return v == nil and RETRYABLE[code(err)] == true
end

-- One call's results held without a table when there are at most three
-- (the common case), so the JIT keeps them in registers:
-- local ok, n, r1, r2, r3, rest = capture(pcall(fn, ...)).
function outcome.capture(ok, ...)
  local n = select("#", ...)
  if n <= 3 then return ok, n, ... end
  return ok, n, nil, nil, nil, { ... }
end

-- ... and given back as they were.
function outcome.results(n, r1, r2, r3, rest)
  if n == 1 then return r1 end
  if n == 0 then return end
  if n == 2 then return r1, r2 end
  if n == 3 then return r1, r2, r3 end
  return unpack(rest, 1, n)
end

return outcome
