-- keel.metrics(): named primitives' stats by kind and name, held weakly,
-- and the Prometheus text rendering. Other specs may have registered objects
-- of their own in this process, so every check looks only at names made here.
local keel = require "keel"
local metrics = require "keel.metrics"

local function full_gc()
  collectgarbage("collect")
  collectgarbage("collect")
end

local function names(kind)
  local out = {}
  for name in pairs(keel.metrics()[kind] or {}) do out[name] = true end
  return out
end

-- A stand-in registered the way primitives register, to reach values no
-- primitive reports (infinities, NaN, booleans, fractions).
local function fake(stats)
  return { stats = function() return stats end }
end

-- Splits a Prometheus sample line into metric, { label = value } (unescaped)
-- and the value text; nil if the line is not a well-formed sample.
local function parse_sample(line)
  local metric, rest = line:match("^([%a_:][%w_:]*)(.*)$")
  if not metric then return nil end
  local labels = {}
  if rest:sub(1, 1) == "{" then
    local i = 2
    while true do
      local lname, j = rest:match('^([%a_][%w_]*)="()', i)
      if not lname then return nil end
      local value, k = {}, j
      while true do
        local c = rest:sub(k, k)
        if c == "" or c == "\n" then return nil end
        if c == '"' then break end
        if c == "\\" then
          local e = rest:sub(k + 1, k + 1)
          if e == "n" then value[#value + 1] = "\n"
          elseif e == "\\" or e == '"' then value[#value + 1] = e
          else return nil end
          k = k + 2
        else
          value[#value + 1] = c
          k = k + 1
        end
      end
      labels[lname] = table.concat(value)
      i = k + 1
      local sep = rest:sub(i, i)
      if sep == "}" then i = i + 1; break end
      if sep ~= "," then return nil end
      i = i + 1
    end
    rest = rest:sub(i)
  end
  local value = rest:match("^ (%S+)$")
  if not value then return nil end
  if not (tonumber(value) or value == "+Inf" or value == "-Inf" or value == "NaN") then return nil end
  if value:lower():match("^[%+%-]?inf") or value:lower():match("^[%+%-]?nan") then -- C spellings
    if value ~= "+Inf" and value ~= "-Inf" and value ~= "NaN" then return nil end
  end
  return metric, labels, value
end

-- Checks the whole text and returns { metric = { name = value text } } plus
-- the label sets and the families' types: every sample's family has exactly
-- one # HELP line followed by one # TYPE line, right before its samples.
local function parse_text(text)
  assert.equal("\n", text:sub(-1))
  local families, samples, labelsets = {}, {}, {}
  local current, helped
  for line in text:gmatch("([^\n]*)\n") do
    local typed, kind = line:match("^# TYPE ([%a_:][%w_:]*) (%a+)$")
    local help_of, help = line:match("^# HELP ([%a_:][%w_:]*) (.+)$")
    if help_of then
      assert.is_nil(families[help_of], "# HELP after the family's # TYPE: " .. help_of)
      assert.is_true(#help > 0)
      helped = help_of
    elseif typed then
      assert.is_true(kind == "gauge" or kind == "counter", "type " .. kind)
      assert.equal(typed, helped, "# TYPE without its # HELP line before it: " .. typed)
      assert.is_nil(families[typed], "second # TYPE line for " .. typed)
      families[typed] = kind
      current = typed
    else
      local metric, labels, value = parse_sample(line)
      assert.is_not_nil(metric, "malformed line: " .. line)
      assert.equal(current, metric, "sample outside its family: " .. line)
      assert.is_string(labels.name, "sample without a name label: " .. line)
      samples[metric] = samples[metric] or {}
      samples[metric][labels.name] = value
      labelsets[metric] = labelsets[metric] or {}
      labelsets[metric][labels.name] = labels
    end
  end
  return samples, labelsets, families
end

-- The rules `promtool check metrics` applies (prometheus/client_golang's
-- promlint), checked here because the Debian prometheus package (96 MB)
-- is too heavy to install for promtool alone. Returns the problems found.
local UNIT_ABBREVIATIONS = { "s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d" }
local UNITS = { "amperes", "bytes", "celsius", "grams", "joules", "kelvin", "meters", "metres", "seconds", "volts" }
local UNIT_PREFIXES = { "pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi", "mega",
                        "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi" }
local function promlint(text)
  local problems = {}
  local function problem(m, msg) problems[#problems + 1] = m .. ": " .. msg end
  local samples, labelsets, families = parse_text(text)
  for m, kind in pairs(families) do
    if m:find(":", 1, true) then problem(m, "reserved character ':'") end
    if m:find("%u") then problem(m, "camelCase") end
    local total = m:match("_total$")
    if kind == "counter" and not total then problem(m, "counter metrics should have \"_total\" suffix") end
    if kind ~= "counter" and total then problem(m, "non-counter metrics should not have \"_total\" suffix") end
    if m:find("_" .. kind .. "_", 1, true) or m:match("_" .. kind .. "$") then
      problem(m, "metric name should not include type '" .. kind .. "'")
    end
    for _, a in ipairs(UNIT_ABBREVIATIONS) do
      if m:find("_" .. a .. "_", 1, true) or m:match("_" .. a .. "$") then
        problem(m, "metric names should not contain abbreviated units (" .. a .. ")")
      end
    end
    for _, u in ipairs(UNITS) do
      for _, pre in ipairs(UNIT_PREFIXES) do
        if m:find(pre .. u, 1, true) then
          problem(m, "use base unit \"" .. u .. "\" instead of \"" .. pre .. u .. "\"")
        end
      end
    end
    if m:find("keel_counter_", 1, true) then problem(m, "family named after a metric type") end
    for name, value in pairs(samples[m] or {}) do
      if kind == "counter" and (tonumber(value) or 0) < 0 then problem(m, "negative counter for " .. name) end
      for lname in pairs(labelsets[m][name]) do
        if lname:find("%u") then problem(m, "camelCase label " .. lname) end
      end
    end
  end
  table.sort(problems)
  return problems
end

describe("keel.metrics", function()
  it("reports named primitives' stats grouped by kind and name", function()
    keel.sim({ seed = 7 }, function()
      local c = keel.counter { name = "mspec-counter" }
      c:add(3)
      local b = keel.breaker { name = "mspec-breaker" }
      b:record(false, 5)
      local q = keel.queue { name = "mspec-queue" }
      q:push("a"); q:push("b")
      local rl = keel.ratelimit { rate = 10, name = "mspec-rl" }
      rl:take()
      local bh = keel.bulkhead { name = "mspec-bh" }
      local d = keel.dedup { name = "mspec-dedup" }
      d:seen("x")
      local l = keel.leases { name = "mspec-leases" }
      local r = keel.registry { name = "mspec-registry" }
      local rb = keel.retry_budget { name = "mspec-budget" }

      local snap = keel.metrics()
      assert.same({ value = 3, shards = 1 }, snap.counter["mspec-counter"])
      assert.same(b:stats(), snap.breaker["mspec-breaker"])
      assert.equal("closed", snap.breaker["mspec-breaker"].state)
      assert.equal(1, snap.breaker["mspec-breaker"].failures)
      assert.same(q:stats(), snap.queue["mspec-queue"])
      assert.equal(2, snap.queue["mspec-queue"].ready)
      assert.same(rl:stats(), snap.ratelimit["mspec-rl"])
      assert.equal(1, snap.ratelimit["mspec-rl"].allowed)
      assert.same(bh:stats(), snap.bulkhead["mspec-bh"])
      assert.same(d:stats(), snap.dedup["mspec-dedup"])
      assert.same(l:stats(), snap.leases["mspec-leases"])
      assert.same(r:stats(), snap.registry["mspec-registry"])
      assert.same(rb:stats(), snap.retry_budget["mspec-budget"])

      -- each call takes a fresh snapshot
      c:add(1)
      assert.equal(4, keel.metrics().counter["mspec-counter"].value)
      assert.equal(3, snap.counter["mspec-counter"].value)
    end)
  end)

  it("leaves unnamed primitives out", function()
    local kinds = { "counter", "breaker", "queue", "ratelimit", "bulkhead", "dedup", "leases", "registry",
                    "retry_budget" }
    local before = {}
    for _, k in ipairs(kinds) do before[k] = names(k) end
    local keep = {
      keel.counter(), keel.breaker(), keel.queue(), keel.ratelimit { rate = 1 }, keel.bulkhead(),
      keel.dedup(), keel.leases(), keel.registry(), keel.retry_budget(),
    }
    -- Nothing new appears. (Named objects left by earlier specs may be
    -- collected meanwhile: the registry holds them weakly.)
    for _, k in ipairs(kinds) do
      for name in pairs(names(k)) do assert.is_true(before[k][name], k .. " " .. name) end
    end
    assert.equal(9, #keep)
  end)

  it("holds objects weakly: a dropped primitive disappears after a collection", function()
    local function make()
      keel.counter { name = "mspec-weak" }
      keel.breaker { name = "mspec-weak" }
      keel.queue { name = "mspec-weak" }
      keel.ratelimit { rate = 1, name = "mspec-weak" }
    end
    make()
    local kept = keel.counter { name = "mspec-kept" }
    full_gc()
    local snap = keel.metrics()
    for _, kind in ipairs { "counter", "breaker", "queue", "ratelimit" } do
      assert.is_nil((snap[kind] or {})["mspec-weak"], kind .. " still reported")
    end
    assert.is_table(snap.counter["mspec-kept"])
    assert.not_matches('name="mspec%-weak"', keel.metrics("prometheus"))
    assert.equal(0, kept:value())
  end)

  it("reports the later of two live objects sharing a kind and name, the earlier once it is dropped", function()
    local first = keel.counter { name = "mspec-dup" }
    first:add(1)
    local second = keel.counter { name = "mspec-dup" }
    second:add(2)
    assert.equal(2, keel.metrics().counter["mspec-dup"].value)
    second = nil -- luacheck: ignore
    full_gc()
    assert.equal(1, keel.metrics().counter["mspec-dup"].value)
    assert.equal(1, first:value())
  end)

  it("renders valid Prometheus text", function()
    local c = keel.counter { name = "mspec-prom" }
    c:add(41); c:add()
    local b = keel.breaker { name = "mspec-prom" }
    b:force("forced_open")
    local q = keel.queue { name = "mspec-prom" }
    q:push(1)
    local text = keel.metrics("prometheus")
    assert.is_string(text)
    -- (issue 11 changed the rendering: keel.counter is keel_count_*, counters
    -- are typed counter with _total, a breaker state is one series per state)
    local samples, labelsets, families = parse_text(text)
    assert.equal("42", samples.keel_count_value["mspec-prom"])
    assert.equal("1", samples.keel_count_shards["mspec-prom"])
    assert.equal("1", samples.keel_queue_ready["mspec-prom"])
    assert.equal("10000", samples.keel_queue_capacity["mspec-prom"])
    assert.matches('\nkeel_breaker_state{name="mspec%-prom",state="forced_open"} 1\n', text)
    assert.matches('\nkeel_breaker_state{name="mspec%-prom",state="closed"} 0\n', text)
    assert.matches("\n# TYPE keel_count_value gauge\n", text, 1, true)
    assert.matches("\n# TYPE keel_queue_pushed_total counter\n", text, 1, true)
    assert.equal("counter", families.keel_breaker_calls_total)
    assert.is_table(labelsets.keel_breaker_state)
    -- every field of every stats table is rendered, as a gauge or a _total counter
    for field in pairs(q:stats()) do
      assert.is_string((samples["keel_queue_" .. field] or samples["keel_queue_" .. field .. "_total"])["mspec-prom"],
        field)
    end
    assert.not_nil(b)
  end)

  it("follows Prometheus conventions: HELP, TYPE, _total counters, seconds, one series per state "
     .. "(promtool check metrics rules)", function()
    keel.sim({ seed = 3 }, function()
      local b = keel.breaker { name = "mspec-conv", size = 2, min_calls = 2, open_ms = 5000 }
      b:record(false, 1); b:record(false, 1)
      keel.sleep(1500)
      local keep = {
        b, keel.bulkhead { name = "mspec-conv" }, keel.bulkhead { name = "mspec-conv-k", keyed = true },
        keel.ratelimit { name = "mspec-conv", rate = 5, per_ms = 250 }, keel.counter { name = "mspec-conv" },
        keel.queue { name = "mspec-conv" }, keel.dedup { name = "mspec-conv" }, keel.leases { name = "mspec-conv" },
        keel.registry { name = "mspec-conv" }, keel.retry_budget { name = "mspec-conv" },
      }
      -- the Redis kinds' stats shapes (a stand-in: no server needed)
      metrics.register("redis_breaker", "mspec-conv", fake { state = "half_open", fallback = false, redis_errors = 2,
        probes = 1, calls = 3, fallback_allowed = 0 })
      metrics.register("redis", "mspec-conv", fake { state = "ready", sent = 10, replies = 9, full = 0, pending = 1,
        timeouts = 0 })
      metrics.register("redis_queue", "mspec-conv", fake { pushed = 4, delayed = 1, buffered = 2, capacity = 100 })
      local text = keel.metrics("prometheus")
      assert.same({}, promlint(text))
      assert.matches('keel_redis_breaker_state{name="mspec%-conv",state="half_open"} 1\n', text)
      assert.matches('keel_redis_state{name="mspec%-conv",state="ready"} 1\n', text)
      assert.matches('keel_redis_state{name="mspec%-conv",state="closed"} 0\n', text)
      assert.matches('keel_redis_queue_delayed_total{name="mspec%-conv"} 1\n', text)
      local samples, labelsets, families = parse_text(text)
      -- open_until_ms (a raw clock value) becomes the time left, in seconds
      assert.is_nil(samples.keel_breaker_open_until_ms)
      assert.equal("3.5", samples.keel_breaker_open_remaining_seconds["mspec-conv"])
      assert.equal("0.25", samples.keel_ratelimit_period_seconds["mspec-conv"])
      assert.equal("1", samples.keel_breaker_failure_ratio["mspec-conv"])
      assert.equal("2", samples.keel_breaker_calls_total["mspec-conv"])
      assert.equal("counter", families.keel_queue_pushed_total)
      assert.equal("counter", families.keel_leases_grants_total)
      -- one 0/1 series per breaker state, exactly one of them 1
      local ones = 0
      for line in text:gmatch('keel_breaker_state{name="mspec%-conv",state="[%a_]+"} (%d)\n') do
        ones = ones + tonumber(line)
      end
      assert.equal(1, ones)
      assert.matches('keel_breaker_state{name="mspec%-conv",state="open"} 1\n', text)
      assert.is_table(labelsets)
      -- the checker itself catches what the old rendering did
      assert.same({
        "keel_counter_value: family named after a metric type",
        "keel_queue_pushed: counter metrics should have \"_total\" suffix",
        "keel_x_open_until_ms: metric names should not contain abbreviated units (ms)",
      }, promlint(table.concat({
        "# HELP keel_counter_value v", "# TYPE keel_counter_value gauge", 'keel_counter_value{name="a"} 1',
        "# HELP keel_queue_pushed p", "# TYPE keel_queue_pushed counter", 'keel_queue_pushed{name="a"} 1',
        "# HELP keel_x_open_until_ms u", "# TYPE keel_x_open_until_ms gauge", 'keel_x_open_until_ms{name="a"} 5',
      }, "\n") .. "\n"))
      assert.equal(10, #keep)
    end)
  end)

  it("escapes quotes, backslashes and newlines in label values", function()
    local name = 'a "quoted"\\back\nslash'
    local c = keel.counter { name = name }
    c:add(7)
    local text = keel.metrics("prometheus")
    assert.matches('keel_count_value{name="a \\"quoted\\"\\\\back\\nslash"} 7\n', text, 1, true)
    local samples = parse_text(text)
    assert.equal("7", samples.keel_count_value[name]) -- unescapes back to the name
    local h = metrics
    local obj = fake { phase = 'x"y\\z\nw' }
    h.register("mspec_fake", "esc", obj)
    local _, labelsets = parse_text(keel.metrics("prometheus"))
    assert.equal('x"y\\z\nw', labelsets.keel_mspec_fake_phase.esc.phase)
  end)

  it("writes numbers the way Prometheus reads them", function()
    local obj = fake { inf = math.huge, ninf = -math.huge, nan = 0 / 0, tenth = 0.1, third = 1 / 3,
                       big = 2 ^ 53, neg = -5, on = true, off = false }
    metrics.register("mspec_num", "n", obj)
    local samples = parse_text(keel.metrics("prometheus"))
    assert.equal("+Inf", samples.keel_mspec_num_inf.n)
    assert.equal("-Inf", samples.keel_mspec_num_ninf.n)
    assert.equal("NaN", samples.keel_mspec_num_nan.n)
    assert.equal("0.1", samples.keel_mspec_num_tenth.n)
    assert.equal(1 / 3, tonumber(samples.keel_mspec_num_third.n))
    assert.equal(2 ^ 53, tonumber(samples.keel_mspec_num_big.n))
    assert.equal("-5", samples.keel_mspec_num_neg.n)
    assert.equal("1", samples.keel_mspec_num_on.n)
    assert.equal("0", samples.keel_mspec_num_off.n)
    -- the plain form keeps the values as they are
    assert.equal(math.huge, keel.metrics().mspec_num.n.inf)
  end)

  it("raises an error naming keel.metrics for any other format", function()
    for _, bad in ipairs { "json", "Prometheus", 1, true, {} } do
      local ok, err = pcall(keel.metrics, bad)
      assert.is_false(ok)
      assert.matches("keel.metrics: argument 'format' must be nil or \"prometheus\"", err, 1, true)
    end
    local _, err = pcall(keel.metrics, "json")
    assert.matches('(got "json")', err, 1, true)
  end)
end)
