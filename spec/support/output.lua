-- busted output: the plain terminal report, then the closing line CI reads:
-- "N passed, N failed" (errors count as failed), plus a process-wide tally
-- spec/run.lua uses for its exit code.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.plainTerminal")(options)
  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    _G.KEEL_SPEC_RESULT = { passed = handler.successesCount, failed = failed, pending = handler.pendingsCount }
    io.write(string.format("\n%d passed, %d failed\n", handler.successesCount, failed))
    io.flush()
    return nil, true
  end)
  return handler
end
