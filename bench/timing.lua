-- Shared by the micro-benchmarks: ns per operation of a loop that never
-- waits, best of three runs (the first warms the JIT and the allocator).
-- Process CPU time, so other jobs on a shared machine distort it less.
local timing = {}

function timing.ns_per_op(n, fn)
  local best = math.huge
  for _ = 1, 3 do
    collectgarbage()
    local t0 = os.clock()
    fn(n)
    local dt = (os.clock() - t0) * 1e9 / n
    if dt < best then best = dt end
  end
  return best
end

return timing
