-- A worker pool on keel.queue: jobs that fail are retried with a delay, a
-- worker that hangs loses its job to another worker when the visibility
-- timeout passes, jobs that keep failing end in the dead-letter queue, and
-- after a "fix" the dead letters are redriven and succeed.
--
--   build/keel examples/queue.lua
--
-- It runs in virtual time (keel.sim), so it finishes at once and prints the
-- same story every run; drop the keel.sim wrapper to run it in real time.
local keel = require "keel"

local function log(fmt, ...)
  print(string.format("[t=%5dms] " .. fmt, keel.now(), ...))
end

keel.sim({ seed = 42 }, function()
  local dead = keel.queue { name = "thumbnails-dead" }
  local jobs = keel.queue {
    name = "thumbnails",
    capacity = 100,
    visibility_ms = 500, -- a job not acked within 500 ms goes to another worker
    max_attempts = 3,    -- the third failure sends it to `dead`
    dead_letter = dead,
  }

  local decoder_fixed = false
  local hung_once = false

  -- The work itself. Errors are plain Lua errors; the worker turns them into nacks.
  local function make_thumbnail(file, attempt)
    keel.sleep(100)
    if file == "photo-04.heic" and not decoder_fixed then error("unsupported format: heic", 0) end
    if file == "photo-07.jpg" and attempt == 1 then error("storage timeout", 0) end
    if file == "photo-09.jpg" and not hung_once then
      hung_once = true
      keel.sleep(2000) -- stuck far past the visibility timeout
    end
  end

  local function worker(n)
    while true do
      local msg = jobs:pop { wait_ms = 3000 }
      if not msg then return end -- nothing for 3 s: the batch is done
      local file = msg.item
      local ok, err = pcall(make_thumbnail, file, msg.attempt)
      if ok then
        if jobs:ack(msg) then
          log("worker %d  done      %-14s (attempt %d)", n, file, msg.attempt)
        else
          log("worker %d  too late  %-14s (attempt %d was redelivered; ack refused)", n, file, msg.attempt)
        end
      else
        -- back off a little more on every attempt
        local _, fate = jobs:nack(msg, { error = err, delay_ms = 200 * msg.attempt })
        log("worker %d  FAILED    %-14s (attempt %d: %s) -> %s", n, file, msg.attempt, err,
          fate == "requeued" and "retry later" or "dead-letter queue")
      end
    end
  end

  for i = 1, 10 do
    jobs:push(string.format(i == 4 and "photo-%02d.heic" or "photo-%02d.jpg", i))
  end
  log("queued 10 jobs, starting 3 workers")
  local pool = {}
  for n = 1, 3 do pool[n] = keel.spawn(worker, n) end
  for n = 1, 3 do pool[n]:join() end

  print()
  log("workers idle. dead-letter queue holds %d job(s):", dead:stats().ready)
  for _, d in ipairs(dead:peek(10)) do
    print(string.format("    %s: %d attempts, first failed at %dms, last at %dms, last error %q (from %s)",
      d.item, d.attempts, d.first_failed, d.last_failed, d.error, d.source))
  end

  print()
  decoder_fixed = true
  log("decoder fixed; redriving dead letters -> %d moved", jobs:redrive())
  for n = 1, 2 do pool[n] = keel.spawn(worker, n) end
  for n = 1, 2 do pool[n]:join() end

  local st = jobs:stats()
  print()
  log("stats: pushed %d, acked %d, nacked %d, expired %d, dead-lettered %d, redriven %d, left in DLQ %d",
    st.pushed, st.acked, st.nacked, st.expired, st.dead_lettered, st.redriven, dead:stats().ready)
end)
