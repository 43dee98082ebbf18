-- The `priorities` option of keel.queue, local and Redis alike: the levels a
-- push may name. The Redis queue keeps a stream per level; the local one
-- checks pushes against the same list, so a queue moved from one backend to
-- the other accepts exactly the same pushes.
local type, tostring, error, format, floor = type, tostring, error, string.format, math.floor

local MAX_LEVELS = 16 -- 0 and at most 15 declared ones

local M = { MAX_LEVELS = MAX_LEVELS }

-- levels, highest first (0 always one of them); nil when list is nil.
-- level: error level as seen from the caller of parse (2 = the constructor's caller).
function M.parse(F, list, level)
  if list == nil then return nil end
  level = (level or 2) + 1
  if type(list) ~= "table" then
    error(format("%s: option 'priorities' must be a list of integers (got %s)", F, tostring(list)), level)
  end
  local levels, seen = {}, { [0] = true }
  for i, p in ipairs(list) do
    if type(p) ~= "number" or p ~= floor(p) or p < -1e9 or p > 1e9 then
      error(format("%s: option 'priorities' entry %d must be an integer in [-1000000000, 1000000000] (got %s)",
        F, i, type(p) == "string" and format("%q", p) or tostring(p)), level)
    end
    if not seen[p] then
      seen[p] = true
      levels[#levels + 1] = p
    end
  end
  levels[#levels + 1] = 0
  if #levels > MAX_LEVELS then
    error(format("%s: option 'priorities' may name at most %d levels", F, MAX_LEVELS - 1), level)
  end
  table.sort(levels, function(a, b) return a > b end)
  return levels
end

return M
