-- keel.leases: one worker at a time owns a job; if it dies, its lease runs
-- out and the next waiting worker takes over. Tokens fence off the old owner.
local keel = require "keel"

keel.sim({ seed = 1 }, function() -- virtual time, so the output is always the same
  local leases = keel.leases { ttl_ms = 1000, name = "jobs" }
  local storage_token = 0 -- the "database" accepts writes only with a newer token

  local function write(who, lease)
    if lease.token < storage_token then
      print(("t=%4d  %s: write REJECTED, token %d is stale"):format(keel.now(), who, lease.token))
      return
    end
    storage_token = lease.token
    print(("t=%4d  %s: write accepted with token %d"):format(keel.now(), who, lease.token))
  end

  keel.spawn(function() -- worker A takes the job, then stalls for 3 s without renewing
    local lease = leases:acquire("nightly-report", "A")
    print(("t=%4d  A acquired the lease (token %d)"):format(keel.now(), lease.token))
    write("A", lease)
    keel.sleep(3000)
    print(("t=%4d  A wakes up; lease still valid? %s"):format(keel.now(), tostring(lease:valid())))
    write("A", lease)
  end)

  keel.spawn(function() -- worker B waits for the job
    keel.sleep(10)
    print(("t=%4d  B asks for the lease: %s"):format(keel.now(), select(2, leases:acquire("nightly-report", "B"))))
    local lease = leases:acquire("nightly-report", "B", { wait_ms = 5000 })
    print(("t=%4d  B got the lease after A's expired (token %d)"):format(keel.now(), lease.token))
    write("B", lease)
    keel.sleep(500)
    lease:renew()
    print(("t=%4d  B renewed until t=%d, then releases"):format(keel.now(), lease.expires))
    lease:release()
  end)

  keel.sleep(4000)
  print("holder now:", leases:holder("nightly-report"))
end)
