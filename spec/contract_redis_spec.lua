-- The contract cases (spec/contract/*_contract.lua) on the Redis backend,
-- through keel.<primitive>{redis = client, ...}: the local options plus one.
local keel = require "keel"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
package.path = here .. "/?.lua;" .. package.path
local redis_server = require "redis_server"
local backends = require "contract.backends"

describe("contract (redis)", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end
  local server, client
  setup(function()
    server = redis_server.start()
    client = assert(keel.redis.connect(server.url))
  end)
  teardown(function()
    if client then client:close() end
    if server then server:cleanup() end
  end)
  backends.run_all(backends.redis_backend(function() return client end))
end)
