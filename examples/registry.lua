-- keel.registry: route messages to devices through the gateway they are
-- connected to. Gateways heartbeat; a gateway that goes silent loses all its
-- devices after ttl_ms.
local keel = require "keel"

keel.sim({ seed = 1 }, function()
  local reg = keel.registry { ttl_ms = 3000, name = "devices" }

  reg:bind("thermostat-1", "gw-east")
  reg:bind("camera-7", "gw-east")
  reg:bind("lock-3", "gw-west")
  print("thermostat-1 is reached through", reg:lookup("thermostat-1"))
  print("gw-east carries", table.concat(reg:devices("gw-east"), ", "))

  reg:bind("camera-7", "gw-west") -- the camera reconnects elsewhere
  print("camera-7 moved to", reg:lookup("camera-7"))
  print("late disconnect from gw-east unbinds camera-7?", reg:unbind("camera-7", "gw-east"))

  -- gw-west keeps heart-beating; gw-east crashes silently
  for _ = 1, 4 do
    keel.sleep(1000)
    reg:heartbeat("gw-west")
  end
  print(("t=%d  thermostat-1 -> %s (gw-east went silent)"):format(keel.now(), tostring(reg:lookup("thermostat-1"))))
  print(("t=%d  lock-3 -> %s, camera-7 -> %s"):format(keel.now(), reg:lookup("lock-3"), reg:lookup("camera-7")))
  local s = reg:stats()
  print(("stats: devices=%d gateways=%d moves=%d expired_devices=%d"):format(
    s.devices, s.gateways, s.moves, s.expired_devices))
end)
