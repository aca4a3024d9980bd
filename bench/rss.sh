#!/usr/bin/env bash
# Peak memory of the gateway under the benchmark's saturation load, one workload after another,
# with the usage recorder's lag sampled every 2 s (for bisecting memory regressions).
#
#   BIN=target/release/tollgate ORDER="0 1" bench/rss.sh     # 0 = non-streamed, 1 = streamed
#
# Mock and wrk on CPU 0, the gateway on CPU 1 with one worker (as bench/run.sh), wrk -t1 -c32,
# 10 s per workload. Prints VmHWM/VmRSS (kB) at start and after each workload.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$(dirname "$BENCH_DIR")/target/release/tollgate}
W=$(mktemp -d /tmp/tollgate-rss.XXXXXX)
read -r MP TP TA < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
taskset -c 0 "$BIN" mock-vendor --listen "127.0.0.1:$MP" >"$W/mock.log" 2>&1 & MPID=$!
export TOLLGATE_ADMIN_TOKEN="rss-$RANDOM$RANDOM" BENCH_UPSTREAM_KEY=up
sed -e "s|@DIR@|$W|g" -e "s|@PORT@|$TP|g" -e "s|@ADMIN_PORT@|$TA|g" -e "s|@MOCK_PORT@|$MP|g" \
    -e "s|@THREADS@|1|g" -e "s|@BREAKER_THRESHOLD@|5|g" "$BENCH_DIR/tollgate.toml.in" >"$W/tg.toml"
taskset -c 1 "$BIN" run --config "$W/tg.toml" >"$W/tg.log" 2>&1 & TPID=$!
trap 'kill -INT $TPID 2>/dev/null; kill -TERM $MPID 2>/dev/null; sleep 1; kill -9 $TPID $MPID 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$TA/readyz" && break; sleep 0.1; done
a="http://127.0.0.1:$TA"; h="Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"
curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"b"}' >/dev/null
curl -sf -X POST "$a/admin/tenants/b/topups" -H "$h" -d '{"amount_rmb":"100000"}' >/dev/null
BENCH_KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" -d '{"tenant":"b","name":"b","default_channel":"bench"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export BENCH_KEY
mem() { awk '/VmHWM|VmRSS/ {printf "%s %s ", $1, $2}' "/proc/$TPID/status"; }
echo "start: $(mem)"
for s in ${ORDER:-0 1}; do
  (for k in 1 2 3 4; do
     sleep 2
     written=$(curl -s "$a/metrics" | awk '/^tollgate_usage_events_written_total/ {print $2}')
     served=$(curl -s "http://127.0.0.1:$MP/_mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["completed"])')
     echo "  t=$((k * 2))s usage events written=$written, vendor calls=$served, $(mem)"
   done) & SAMPLER=$!
  BENCH_STREAM=$s taskset -c 0 wrk -t1 -c32 -d10s -s "$BENCH_DIR/chat.lua" "http://127.0.0.1:$TP" >/dev/null
  wait "$SAMPLER"
  echo "after $([[ $s == 1 ]] && echo streamed || echo non-streamed): $(mem)"
done
