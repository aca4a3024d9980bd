#!/usr/bin/env bash
# User-space instructions per request of a tollgate binary (callgrind, deterministic):
#   N=1500 bench/callgrind.sh target/release/tollgate   # prints the total and the three busiest threads
#   STORE_URL=postgres://... N=1500 bench/callgrind.sh BIN   # the record in PostgreSQL
set -euo pipefail
BIN=$1; N=${N:-1500}; BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${WORK:-$BENCH_DIR/results/callgrind-$(basename "$BIN")}; rm -rf "$WORK"; mkdir -p "$WORK"
read -r MOCK_PORT TG_PORT TG_ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
$BIN mock-vendor --listen "127.0.0.1:$MOCK_PORT" >$WORK/mock.log 2>&1 & MP=$!
for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$MOCK_PORT/_mock/stats && break; sleep 0.1; done
export TOLLGATE_ADMIN_TOKEN=t BENCH_UPSTREAM_KEY=bench-upstream-secret
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
      -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|1|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
      "$BENCH_DIR/tollgate.toml.in" >"$WORK/tollgate.toml"
# STORE_URL=postgres://...: the record in that PostgreSQL (an empty database) instead of SQLite.
if [[ -n ${STORE_URL:-} ]]; then
  sed -i "s|^sqlite_path = .*|&\nurl = \"$STORE_URL\"|" "$WORK/tollgate.toml"
fi
valgrind --tool=callgrind --separate-threads=yes --instr-atstart=no --callgrind-out-file=$WORK/cg.out $BIN run --config $WORK/tollgate.toml >$WORK/tg.log 2>&1 & TP=$!
for i in $(seq 600); do curl -sf -o /dev/null http://127.0.0.1:$TG_ADMIN_PORT/readyz && break; sleep 0.2; done
source "$BENCH_DIR/sequential.sh"
python3 $WORK/load.py 300
sleep 1
callgrind_control -i on $TP >/dev/null
python3 $WORK/load.py $N
sleep 0.5


sleep 1
kill -INT $TP; wait $TP 2>/dev/null || true; kill $MP
total=$(grep -E "Collected :" $WORK/tg.log | tail -1 | tr -d , | awk "{print \$NF}")
echo "$(basename $BIN): $((total / N)) instructions per request ($N requests)"
# per thread: the thread with the most instructions is the gateway worker
for f in $WORK/cg.out*; do echo "$(grep -E '^totals:' $f | awk '{print $2}') $f"; done | sort -n | tail -3 | while read t f; do echo "  thread total $((t / N)) per request  $(basename $f)"; done
