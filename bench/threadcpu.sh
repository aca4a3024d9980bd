#!/usr/bin/env bash
# CPU per request of each thread of a tollgate binary, user and system time apart, under wrk
# saturation (c32, 8 s; the gateway alone on CPU 1, one worker thread):
#   bench/threadcpu.sh target/release/tollgate
set -euo pipefail
BIN=$1; BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d /tmp/tgtc.XXXXXX)
read -r MOCK_PORT TG_PORT TG_ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
taskset -c 0 $BIN mock-vendor --listen "127.0.0.1:$MOCK_PORT" >$WORK/mock.log 2>&1 & MP=$!
export TOLLGATE_ADMIN_TOKEN=t BENCH_UPSTREAM_KEY=bench-upstream-secret
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
      -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|1|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
      "$BENCH_DIR/tollgate.toml.in" >"$WORK/tollgate.toml"
taskset -c 1 $BIN run --config $WORK/tollgate.toml >$WORK/tg.log 2>&1 & TP=$!
trap 'kill -INT $TP 2>/dev/null; kill $MP 2>/dev/null; sleep 1; rm -rf "$WORK"' EXIT
for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$TG_ADMIN_PORT/readyz && break; sleep 0.1; done
source "$BENCH_DIR/sequential.sh"
export BENCH_KEY=$KEY
taskset -c 0 wrk -t1 -c32 -d3s -s $BENCH_DIR/chat.lua http://127.0.0.1:$TG_PORT >/dev/null
snap() { for t in /proc/$TP/task/*; do echo "$(cat $t/comm | tr ' ' _) $(sed 's/.*) //' $t/stat | awk '{print $12, $13}')"; done | awk '{u[$1]+=$2; s[$1]+=$3} END {for (k in u) print k, u[k], s[k]}' | sort; }
snap > $WORK/s0
out=$(taskset -c 0 wrk -t1 -c32 -d8s -s $BENCH_DIR/chat.lua http://127.0.0.1:$TG_PORT)
snap > $WORK/s1
n=$(echo "$out" | awk '/requests in/ {print $1}')
echo "$(basename $BIN): $n requests"
join $WORK/s0 $WORK/s1 | awk -v n=$n '{du=($4-$2)*10000/n; ds=($5-$3)*10000/n; if (du+ds > 0.3) printf "  %-18s user %6.2f  sys %6.2f us/req\n", $1, du, ds}'
