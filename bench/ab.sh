#!/usr/bin/env bash
# Before/after in one run: two tollgate binaries on the same config, the same mock and the same
# load, repetitions interleaved, so that a change's cost on the common call is read as a ratio
# measured minutes apart on the same noisy machine (the 2% rule of a feature's cost).
#
#   A=/tmp/tollgate-before B=target/release/tollgate bench/ab.sh
#   REPS=5 DURATION=10 STREAM=0 A=... B=... bench/ab.sh
#   B_STORE_URL=postgres://...   B's record in PostgreSQL (A on SQLite): bench/pg.sh sets it
#   A_STORE_URL=postgres://...   A's record in PostgreSQL too (bench/pg.sh with A_ON_PG=1)
#   A_THREADS=1 B_THREADS=2 PROXY_CPUS=0,1   worker threads per binary, and the gateway's CPUs
#                                (scaling: the same binary with 1 and 2 threads on both cores)
#
# Each binary serves chat completions (non-streamed, and streamed with STREAM=1) at saturation
# (wrk -t1 -c32) pinned to CPU 1 with one worker thread (mock and wrk on CPU 0), billing on in
# embedded mode (the default), a fresh SQLite file per start. CPU time of the gateway per
# request is read from /proc. Reports medians and the B/A ratios; B/A CPU above 1.02 fails the
# 2% budget. Both binaries also provide the mock (`tollgate mock-vendor`); A's is used.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
A=${A:?A=<binary before>}
B=${B:?B=<binary after>}
REPS=${REPS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
STREAM=${STREAM:-0}
WORK=${WORK:-$BENCH_DIR/results/ab-work}

log() { printf '[ab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[ab] FATAL: %s\n' "$*" >&2; exit 1; }
for tool in wrk curl python3 taskset; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y wrk)"
done

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -rf "$WORK"; mkdir -p "$WORK"
read -r MOCK_PORT TG_PORT TG_ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

wait_http() {
  for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  die "$2 did not come up ($1)"
}

taskset -c 0 "$A" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats" "mock vendor"
export TOLLGATE_ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM"
export BENCH_UPSTREAM_KEY="bench-upstream-secret"

start() {
  local name=$1 bin=$2 dir=$WORK/$1 threads=1
  [[ $name == A ]] && threads=${A_THREADS:-1}
  [[ $name == B ]] && threads=${B_THREADS:-1}
  rm -rf "$dir"; mkdir -p "$dir"
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
      -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|$threads|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
      "$BENCH_DIR/tollgate.toml.in" >"$dir/tollgate.toml"
  # B_STORE_URL (A_STORE_URL): B (A) keeps its record in that PostgreSQL (bench/pg.sh) instead
  # of SQLite.
  local store_url=""
  [[ $name == A ]] && store_url=${A_STORE_URL:-}
  [[ $name == B ]] && store_url=${B_STORE_URL:-}
  if [[ -n $store_url ]]; then
    sed -i "s|^sqlite_path = .*|&\nurl = \"$store_url\"|" "$dir/tollgate.toml"
  fi
  taskset -c "${PROXY_CPUS:-1}" "$bin" run --config "$dir/tollgate.toml" >>"$dir/tollgate.log" 2>&1 &
  TG_PID=$!
  wait_http "http://127.0.0.1:$TG_ADMIN_PORT/readyz" "tollgate ($name)"
  local a="http://127.0.0.1:$TG_ADMIN_PORT" h="Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"
  curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"bench"}' >/dev/null 2>&1 || true
  curl -sf -X POST "$a/admin/tenants/bench/topups" -H "$h" -d '{"amount_rmb":"1000000"}' >/dev/null
  BENCH_KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" \
    -d '{"tenant":"bench","name":"bench","default_channel":"bench"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  export BENCH_KEY
}

stop() {
  # uncollected must stay 0 (issue 12)
  curl -s "http://127.0.0.1:$TG_ADMIN_PORT/metrics" | awk '/^tollgate_uncollected_nanocredits_total/ {print $2}' \
    >"$WORK/$1-uncollected.txt" || true
  kill -TERM "$TG_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$TG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$TG_PID" 2>/dev/null || true
  wait "$TG_PID" 2>/dev/null || true
}

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
NAMES=(A B)
for rep in $(seq "$REPS"); do
  for k in 0 1; do
    name=${NAMES[$(( (k + rep) % 2 ))]}
    bin=$A; [[ $name == B ]] && bin=$B
    start "$name" "$bin"
    BENCH_STREAM=$STREAM BENCH_OUT=$WORK/warm.json taskset -c 0 \
      wrk -t1 -c"$CONNS" -d2s -s "$BENCH_DIR/chat.lua" "http://127.0.0.1:$TG_PORT" >/dev/null 2>&1
    ticks0=$(cpu_ticks "$TG_PID")
    out=$WORK/$name-$rep.json
    BENCH_STREAM=$STREAM BENCH_OUT=$out taskset -c 0 \
      wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/chat.lua" \
      "http://127.0.0.1:$TG_PORT" >"${out%.json}.txt" 2>&1
    ticks1=$(cpu_ticks "$TG_PID")
    grep -q 'Non-2xx\|Socket errors' "${out%.json}.txt" && { cat "${out%.json}.txt"; die "$name: errors"; }
    python3 - "$out" "$name" "$rep" $((ticks1 - ticks0)) "$(getconf CLK_TCK)" >>"$RESULTS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
rps = r["requests"] / (r["duration_us"] / 1e6)
cpu_us = int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / r["requests"]
print(json.dumps({"bin": sys.argv[2], "rep": int(sys.argv[3]), "rps": rps,
                  "requests": r["requests"], "p50_us": r["latency_us"]["p50"],
                  "p99_us": r["latency_us"]["p99"], "cpu_us_per_req": cpu_us}))
EOF
    log "$name rep $rep: $(tail -1 "$RESULTS")"
    stop "$name"
  done
done

python3 - "$RESULTS" "$A" "$B" "$STREAM" "$WORK" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda b, k: statistics.median(r[k] for r in rows if r["bin"] == b)
def unc(b):
    try:
        return open(f"{sys.argv[5]}/{b}-uncollected.txt").read().strip() or "-"
    except OSError:
        return "-"
print(f"streamed: {sys.argv[4] == '1'}; A = {sys.argv[2]}, B = {sys.argv[3]}")
print("| binary | req/s (median) | CPU µs/request (median) | p50 µs | p99 µs | uncollected (last start) |")
print("|---|---|---|---|---|---|")
for b in ("A", "B"):
    print(f"| {b} | {med(b, 'rps'):,.0f} | {med(b, 'cpu_us_per_req'):.2f} | {med(b, 'p50_us'):.0f} | {med(b, 'p99_us'):.0f} | {unc(b)} |")
print(f"\nB/A: throughput {med('B', 'rps') / med('A', 'rps'):.3f}, CPU per request {med('B', 'cpu_us_per_req') / med('A', 'cpu_us_per_req'):.3f}")
EOF
