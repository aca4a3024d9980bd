#!/usr/bin/env bash
# Resident memory around a burst of paced streams (issue 14): 2 worker threads, the mock sending
# a chunk every 20 ms, wrk -c${C:-32} with BENCH_DELAY_MS=${DELAY:-50} for 15 s, then 10 s idle.
# Then 3 s of streamed calls to a vendor that reports no usage (each counted with o200k by the
# gateway), then 10 s idle. Prints VmHWM (peak), VmRSS and its anonymous and file-backed parts at
# each step, and the calls' usage sources.
#   BIN=target/release/tollgate bench/rss_streams.sh
set -euo pipefail
BENCH_DIR=/work/main/bench
BIN=${BIN:-/work/main/target/release/tollgate}
W=$(mktemp -d /tmp/tollgate-rss.XXXXXX)
read -r MP TP TA < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
"$BIN" mock-vendor --listen "127.0.0.1:$MP" >"$W/mock.log" 2>&1 & MPID=$!
export TOLLGATE_ADMIN_TOKEN="rss-$RANDOM$RANDOM" BENCH_UPSTREAM_KEY=up
sed -e "s|@DIR@|$W|g" -e "s|@PORT@|$TP|g" -e "s|@ADMIN_PORT@|$TA|g" -e "s|@MOCK_PORT@|$MP|g" \
    -e "s|@THREADS@|2|g" -e "s|@BREAKER_THRESHOLD@|5|g" "$BENCH_DIR/tollgate.toml.in" >"$W/tg.toml"
"$BIN" run --config "$W/tg.toml" >"$W/tg.log" 2>&1 & TPID=$!
trap 'kill -INT $TPID 2>/dev/null; kill -TERM $MPID 2>/dev/null; sleep 1; kill -9 $TPID $MPID 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$TA/readyz" && break; sleep 0.1; done
a="http://127.0.0.1:$TA"; h="Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"
curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"b"}' >/dev/null
curl -sf -X POST "$a/admin/tenants/b/topups" -H "$h" -d '{"amount_rmb":"100000"}' >/dev/null
BENCH_KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" -d '{"tenant":"b","name":"b","default_channel":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export BENCH_KEY
curl -sf -X POST "http://127.0.0.1:$MP/_mock/behavior" -d '{"kind":"slow_chunks","ms":20}' >/dev/null
mem() { awk '/VmHWM|VmRSS|RssAnon|RssFile/ {printf "%s %s ", $1, $2}' "/proc/$TPID/status"; }
echo "start: $(mem)"
BENCH_STREAM=1 BENCH_DELAY_MS=${DELAY:-50} wrk -t1 -c${C:-32} -d15s -s "$BENCH_DIR/chat.lua" "http://127.0.0.1:$TP" | grep -E "Requests/sec"
echo "after streams: $(mem)"
# Then a vendor that reports no usage: every call of this phase is counted by the gateway
# itself (the o200k tokenizer), whatever wrk's timing did to the streams above.
curl -sf -X POST "http://127.0.0.1:$MP/_mock/behavior" -d '{"kind":"no_usage"}' >/dev/null
BENCH_STREAM=1 BENCH_DELAY_MS=${DELAY:-50} wrk -t1 -c8 -d3s -s "$BENCH_DIR/chat.lua" "http://127.0.0.1:$TP" | grep -E "Requests/sec"
echo "after 3 s of calls counted locally: $(mem)"
sleep 10
echo "10 s idle: $(mem)"
if [ -n "${SMAPS:-}" ]; then
  # Resident memory by mapping (largest first): which file or anonymous region holds the RSS.
  awk '/^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6) " " $2} /^Rss:/ {rss[name] += $2}
       END {for (n in rss) if (rss[n] >= 256) printf "%8d kB  %s\n", rss[n], n}' "/proc/$TPID/smaps" | sort -rn | head -20
fi
echo "usage sources: $(grep -o '"usage_source":"[a-z_]*"' $W/tg.log | sort | uniq -c | tr '\n' ' ')"
grep -o '"error":"[a-z_]*"' $W/tg.log | sort | uniq -c | head -5
