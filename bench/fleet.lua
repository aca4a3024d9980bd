-- wrk script for bench/fleet.sh: bench/chat.lua's request and report, with wrk's threads spread
-- over the fleet's nodes (FLEET_PORTS=p1,p2,...: thread i is aimed at node i mod N), so that
-- one wrk run loads every node the same.
dofile(os.getenv("BENCH_DIR") .. "/chat.lua")

local ports = {}
for p in string.gmatch(os.getenv("FLEET_PORTS") or "", "%d+") do
  ports[#ports + 1] = p
end
local started = 0

function setup(thread)
  started = started + 1
  local port = ports[(started - 1) % #ports + 1]
  thread.addr = wrk.lookup("127.0.0.1", port)[1]
end
