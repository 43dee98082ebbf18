local keel = require "keel"
describe("tasks", function()
  it("spawn and join", function()
    local t = keel.spawn(function(a, b) keel.sleep(1) return a + b end, 1, 2)
    local ok, v = t:join()
    assert.is_true(ok)
    assert.equal(3, v)
  end)
end)
