-- examples/outbox.lua runs as a newcomer runs it and survives a restart in
-- which every mark was lost (as after a kill between publish and mark).
local keel = require "keel"
local redis_server = require "redis_server"
local proc = require "keelproc"

describe("examples/outbox.lua", function()
  if not redis_server.available then
    pending("redis-server is not installed")
    return
  end

  it("publishes every order's event and applies each once, across a restart", function()
    local s = redis_server.start()
    local db_path = os.tmpname() .. ".db"
    local function run()
      local code, out, err = proc.run({ proc.root .. "/examples/outbox.lua", db_path },
        { prefix = "KEEL_REDIS_URL=" .. proc.quote(s.url) .. " timeout 60" })
      assert.equal(0, code, err)
      return out
    end
    local out = run()
    assert.matches("published 9 events, 9 orders in the store, 9 applied", out)
    assert.matches("ledger: ada total 180 over 3 orders", out)
    -- as if the relay had died after publishing, before marking: all go out again
    local db = assert(keel.store.open(db_path))
    db:exec("update outbox set sent = null")
    db:close()
    out = run()
    local _, dups = out:gsub("duplicate event", "")
    assert.equal(9, dups)
    assert.matches("published 18 events, 18 orders in the store, 18 applied", out)
    assert.matches("ledger: ada total 360 over 6 orders", out)
    s:cleanup()
    os.remove(db_path); os.remove(db_path .. "-wal"); os.remove(db_path .. "-shm")
  end)
end)
