-- busted output: the plain terminal report, then the closing line CI reads:
-- "N passed, N failed" (errors count as failed), plus a process-wide tally
-- spec/run.lua uses for its exit code.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.plainTerminal")(options)
  -- Specs that run child processes block the runner's loop for seconds, and
  -- the runtime's clock is the loop's cached time (as libuv's): a deadline
  -- armed by the next spec's setup would count from a time seconds old and
  -- fire at once. Read the clock afresh before each file, block and test.
  local keel = require "keel"
  local function fresh_clock() keel.now() return nil, true end
  busted.subscribe({ "file", "start" }, fresh_clock)
  busted.subscribe({ "describe", "start" }, fresh_clock)
  busted.subscribe({ "test", "start" }, fresh_clock)
  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    _G.KEEL_SPEC_RESULT = { passed = handler.successesCount, failed = failed, pending = handler.pendingsCount }
    io.write(string.format("\n%d passed, %d failed\n", handler.successesCount, failed))
    io.flush()
    return nil, true
  end)
  return handler
end
