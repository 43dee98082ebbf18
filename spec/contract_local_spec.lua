-- The contract cases (spec/contract/*_contract.lua) on the local backend.
-- spec/contract_redis_spec.lua runs the same cases on Redis.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
package.path = here .. "/?.lua;" .. package.path
require("contract.backends").run_all(require("contract.backends").local_backend())
