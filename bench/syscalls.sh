#!/usr/bin/env bash
# System calls per request of a tollgate binary (strace -f -c attached while N sequential
# non-streamed chat calls run; one worker thread, billing on, embedded mode):
#   N=3000 bench/syscalls.sh target/release/tollgate
set -euo pipefail
BIN=$1; N=${N:-3000}; BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d /tmp/tollgate-sys.XXXXXX)
read -r MOCK_PORT TG_PORT TG_ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
$BIN mock-vendor --listen "127.0.0.1:$MOCK_PORT" >$WORK/mock.log 2>&1 & MP=$!
export TOLLGATE_ADMIN_TOKEN=t BENCH_UPSTREAM_KEY=bench-upstream-secret
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
      -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|1|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
      "$BENCH_DIR/tollgate.toml.in" >"$WORK/tollgate.toml"
$BIN run --config $WORK/tollgate.toml >$WORK/tg.log 2>&1 & TP=$!
trap 'kill -INT $TP 2>/dev/null; kill $MP 2>/dev/null; sleep 1; rm -rf "$WORK"' EXIT
for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$TG_ADMIN_PORT/readyz && break; sleep 0.1; done
source "$BENCH_DIR/sequential.sh"
python3 $WORK/load.py 300
# Page faults and CPU first (no tracer attached), then the system calls (strace slows the calls).
stat() { awk '{print $10, $14 + $15}' /proc/$TP/stat; }
read -r f0 c0 < <(stat)
python3 $WORK/load.py $N
read -r f1 c1 < <(stat)
echo "$(basename $BIN): minor page faults per request $(( (f1 - f0) * 100 / N ))/100, CPU $(( (c1 - c0) * 10000 / N )) us/request (clock ticks)"
strace -f -c -o $WORK/strace.txt -p $TP & SP=$!
sleep 1
python3 $WORK/load.py $N
kill -INT $SP; wait $SP 2>/dev/null || true
echo "$(basename $BIN): system calls per request ($N requests; calls / N, busiest first)"
awk -v n=$N '$1 ~ /^[0-9.]+$/ && NF >= 5 { c = $4; name = $NF; if (c / n >= 0.01) printf "  %-16s %.2f\n", name, c / n }' $WORK/strace.txt
