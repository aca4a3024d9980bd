#!/usr/bin/env bash
# CPU profile of tollgate (or the bare Pingora pass-through) under the benchmark's saturation load,
# with the same placement as run.sh: mock + wrk on CPU 0, the proxy on CPU 1.
#
#   RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=/tmp/fp-target \
#     flock /tmp/cargo.lock cargo build --release        # readable stacks
#   BIN=/tmp/fp-target/release/tollgate bench/profile.sh [tollgate|pingora] [nonstream|stream]
#
# MODE=syscalls counts syscalls per request instead of recording a profile.
# Knobs: SECS=10 (perf record time), FREQ=2000 (perf -F), CONNS=32, OUTDIR=bench/results/profile.
# Writes OUTDIR/<target>-<workload>.perf.data and prints the self-time ("flat") and the
# inclusive ("children") top of the profile by symbol. Needs perf (perf_event_paranoid <= 2
# is enough for a process of one's own).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
BIN=${BIN:-$ROOT/target/release/tollgate}
TARGET=${1:-tollgate}
WORKLOAD=${2:-nonstream}
SECS=${SECS:-10}
FREQ=${FREQ:-2000}
CONNS=${CONNS:-32}
OUTDIR=${OUTDIR:-$BENCH_DIR/results/profile}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/tollgate-profile.XXXXXX)

PIDS=()
cleanup() {
  local pid sig=TERM   # the mock (first) stops on TERM; Pingora's fast shutdown is INT
  for pid in "${PIDS[@]}"; do
    kill -"$sig" "$pid" 2>/dev/null || true; sig=INT
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

read -r MOCK_PORT PORT ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
wait_http() { for _ in $(seq 300); do curl -sf -o /dev/null "$@" && return 0; sleep 0.1; done; echo "no answer from $*" >&2; exit 1; }

unset RUST_LOG
taskset -c 0 "$BIN" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats"

export BENCH_KEY=""
if [[ $TARGET == pingora ]]; then
  taskset -c 1 "$BIN" passthrough --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$MOCK_PORT" \
    --threads 1 >"$WORK/proxy.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/v1/models"
else
  export TOLLGATE_ADMIN_TOKEN="profile-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  export BENCH_UPSTREAM_KEY="bench-upstream-secret"
  sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$PORT|g" -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" \
      -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|1|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
      "$BENCH_DIR/tollgate.toml.in" >"$WORK/tollgate.toml"
  taskset -c 1 "$BIN" run --config "$WORK/tollgate.toml" >"$WORK/proxy.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
  adm() { curl -sf -X POST "http://127.0.0.1:$ADMIN_PORT$1" -H "Authorization: Bearer $TOLLGATE_ADMIN_TOKEN" \
            -H 'Content-Type: application/json' -d "$2"; }
  adm /admin/tenants '{"name":"bench"}' >/dev/null
  adm /admin/tenants/bench/topups '{"amount_rmb":"1000000"}' >/dev/null
  BENCH_KEY=$(adm /admin/keys '{"tenant":"bench","name":"bench","default_channel":"bench"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
fi

export BENCH_STREAM=$([[ $WORKLOAD == stream ]] && echo 1 || echo 0) BENCH_OUT=$WORK/wrk.json
# Wait (at most 120 s) for the shared machine to be quiet, as run.sh does.
read -r qcores _ < <(python3 "$BENCH_DIR/report.py" quiet 0.3 120)
echo "machine CPU before the load: $qcores cores" >&2
# 2 s of warm-up, then perf records SECS seconds in the middle of the load.
taskset -c 0 wrk -t1 -c"$CONNS" -d"$((SECS + 4))s" --timeout 5s -s "$BENCH_DIR/chat.lua" \
  "http://127.0.0.1:$PORT" >"$WORK/wrk.txt" 2>&1 &
WRK=$!
sleep 2
if [[ ${MODE:-profile} == syscalls ]]; then
  # Syscalls per request: every syscall tracepoint of the proxy (all its threads) counted over
  # SECS seconds, divided by the requests wrk completed in that window (its rate x SECS).
  perf stat -x, -e 'syscalls:sys_enter_*' -p "$PID" -o "$WORK/stat.csv" -- sleep "$SECS" 2>/dev/null
  wait "$WRK"
  grep -E 'Requests/sec|Non-2xx|Socket errors' "$WORK/wrk.txt" >&2 || true
  RATE=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
  echo "== $TARGET $WORKLOAD: syscalls per request (at $RATE req/s)"
  awk -F, -v n="$(python3 -c "print($RATE * $SECS)")" \
    '$1 ~ /^[0-9]+$/ && $1 > 0 { sub("syscalls:sys_enter_", "", $3); printf "%8.3f %s\n", $1 / n, $3; t += $1 }
     END { printf "%8.3f total\n", t / n }' "$WORK/stat.csv" | sort -rn
  exit 0
fi
DATA=$OUTDIR/$TARGET-$WORKLOAD.perf.data
perf record -q -F "$FREQ" -g -p "$PID" -o "$DATA" -- sleep "$SECS" 2>/dev/null
wait "$WRK"
grep -E 'Requests/sec|Non-2xx|Socket errors' "$WORK/wrk.txt" >&2 || true

echo "== $TARGET $WORKLOAD: self time by symbol (top 40)"
perf report -i "$DATA" --no-children --sort sym --percent-limit 0.7 --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -40
echo "== $TARGET $WORKLOAD: inclusive time by symbol (top 60)"
perf report -i "$DATA" --children --sort sym --percent-limit 2 --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -60
