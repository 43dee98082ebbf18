local keel = require "keel"

describe("keel.json", function()
  it("round-trips tables, strings and numbers up to 14 significant digits", function()
    local v = { id = "9007199254740993", list = { 1, 2.5, "x", true }, nested = { a = { b = "ü" } },
      n = 99999999999999 }
    assert.same(v, keel.json.decode(keel.json.encode(v)))
  end)

  it("refuses what JSON (or cjson) cannot carry, at the caller's line", function()
    local function err(v) return select(2, pcall(function() local s = keel.json.encode(v); return s end)) end
    assert.matches("json_spec.lua:%d+: keel.json.encode: .*excessively sparse array", err { 1, nil, 3 })
    assert.matches("must not be NaN or Inf", err { x = 0 / 0 })
    assert.matches("must not be NaN or Inf", err { x = math.huge })
    local cyc = {}
    cyc.self = cyc
    assert.matches("a reference cycle%?", err(cyc))
    assert.matches("carry ids as strings", err { id = 2 ^ 53 })
    assert.matches("carry ids as strings", err(1e14 + 1))
    assert.matches("keel.json.encode", err { f = print })
    assert.matches("keel.json.decode: ", select(2, pcall(keel.json.decode, "{bad")))
    assert.matches("argument 's' must be a string", select(2, pcall(keel.json.decode, 42)))
  end)

  it("null decodes to keel.json.null; an empty table encodes as an object", function()
    assert.equal(keel.json.null, keel.json.decode('{"a":null}').a)
    assert.equal("{}", keel.json.encode({}))
  end)

  it("its settings do not leak into a plain require 'cjson'", function()
    local cjson = require "cjson"
    assert.equal('[1,null,3]', cjson.encode { 1, nil, 3 })
  end)
end)
