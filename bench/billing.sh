#!/usr/bin/env bash
# What billing costs on the request path, and how many Redis operations cluster mode makes.
#
#   bench/billing.sh                      # 3 repetitions x 10 s per mode, about 3 minutes
#   REPS=1 DURATION=3 bench/billing.sh    # smoke run
#
# One mock vendor, one redis-server (both pinned to CPU 0 with wrk), and tollgate (pinned to
# CPU 1, one worker thread) started in turn in three modes on the same config:
#   off       [billing] enabled = false: auth, metering and usage records, no credit held
#   embedded  the default: holds and settlements in process, journal in SQLite
#   cluster   [cluster] on the local redis: balances leased from Redis, charges flushed in batches
# Each mode serves non-streamed chat completions at saturation (wrk -t1 -c32), repetitions
# interleaved across modes (order rotated every repetition); CPU time of the gateway process per
# request is read from /proc; the report gives medians, the ratio to `off`, and for cluster mode
# the Redis commands executed per request (INFO commandstats, all commands, scripts included).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
BIN=${BIN:-$ROOT/target/release/tollgate}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WORK=${WORK:-$BENCH_DIR/results/billing-work}
BUILD=${BUILD:-1}

log() { printf '[billing %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[billing] FATAL: %s\n' "$*" >&2; exit 1; }
for tool in wrk redis-server redis-cli curl python3 taskset; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y wrk redis-server)"
done
if [[ $BUILD != 0 ]]; then
  (cd "$ROOT" && flock /tmp/cargo.lock cargo build --release --quiet) || die "release build failed"
fi

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -rf "$WORK"; mkdir -p "$WORK"
read -r MOCK_PORT REDIS_PORT TG_PORT TG_ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

wait_http() {
  for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  die "$2 did not come up ($1)"
}

taskset -c 0 "$BIN" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats" "mock vendor"
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

export TOLLGATE_ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM"
export BENCH_UPSTREAM_KEY="bench-upstream-secret"

# start_mode <mode>: a fresh gateway (own SQLite file) in that mode; sets TG_PID and BENCH_KEY.
start_mode() {
  local mode=$1 dir=$WORK/$1
  mkdir -p "$dir"
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
      -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|1|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
      "$BENCH_DIR/tollgate.toml.in" >"$dir/tollgate.toml"
  case $mode in
    off) printf '\n[billing]\nenabled = false\n' >>"$dir/tollgate.toml" ;;
    cluster) printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s/"\nnode_id = "bench"\nkey_prefix = "bench%s:"\n' \
               "$REDIS_PORT" "$RANDOM" >>"$dir/tollgate.toml" ;;
  esac
  taskset -c 1 "$BIN" run --config "$dir/tollgate.toml" >>"$dir/tollgate.log" 2>&1 &
  TG_PID=$!
  wait_http "http://127.0.0.1:$TG_ADMIN_PORT/readyz" "tollgate ($mode)"
  local a="http://127.0.0.1:$TG_ADMIN_PORT" h="Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"
  curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"bench"}' >/dev/null 2>&1 || true
  curl -sf -X POST "$a/admin/tenants/bench/topups" -H "$h" -d '{"amount_rmb":"1000000"}' >/dev/null
  BENCH_KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" \
    -d '{"tenant":"bench","name":"bench","default_channel":"bench"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  export BENCH_KEY
}

stop_mode() {
  kill -INT "$TG_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$TG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$TG_PID" 2>/dev/null || true
  wait "$TG_PID" 2>/dev/null || true
}

redis_cmds() {
  redis-cli -p "$REDIS_PORT" info stats | tr -d '\r' | awk -F: '/^total_commands_processed/ {print $2}'
}

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
MODES=(off embedded cluster)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for rep in $(seq "$REPS"); do
  # rotate the order every repetition, so no mode always runs first or last
  for k in 0 1 2; do
    mode=${MODES[$(( (k + rep) % 3 ))]}
    start_mode "$mode"
    # warm-up (also leases the first allowance in cluster mode)
    BENCH_STREAM=0 BENCH_OUT=$WORK/warm.json taskset -c 0 \
      wrk -t1 -c"$CONNS" -d2s -s "$BENCH_DIR/chat.lua" "http://127.0.0.1:$TG_PORT" >/dev/null 2>&1
    before=$(redis_cmds)
    ticks0=$(cpu_ticks "$TG_PID")
    out=$WORK/$mode-$rep.json
    BENCH_STREAM=0 BENCH_OUT=$out taskset -c 0 \
      wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/chat.lua" \
      "http://127.0.0.1:$TG_PORT" >"${out%.json}.txt" 2>&1
    after=$(redis_cmds)
    ticks1=$(cpu_ticks "$TG_PID")
    grep -q 'Non-2xx\|Socket errors' "${out%.json}.txt" && { cat "${out%.json}.txt"; die "$mode: errors"; }
    python3 - "$out" "$mode" "$rep" $((after - before)) $((ticks1 - ticks0)) "$(getconf CLK_TCK)" >>"$RESULTS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
rps = r["requests"] / (r["duration_us"] / 1e6)
cpu_us = int(sys.argv[5]) / int(sys.argv[6]) * 1e6 / r["requests"]
print(json.dumps({"mode": sys.argv[2], "rep": int(sys.argv[3]), "rps": rps,
                  "requests": r["requests"], "p50_us": r["latency_us"]["p50"],
                  "p99_us": r["latency_us"]["p99"], "redis_cmds": int(sys.argv[4]),
                  "cpu_us_per_req": cpu_us}))
EOF
    log "$mode rep $rep: $(tail -1 "$RESULTS")"
    stop_mode
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda m, k: statistics.median(r[k] for r in rows if r["mode"] == m)
base = med("off", "rps")
cbase = med("off", "cpu_us_per_req")
print("| mode | req/s (median) | vs billing off | CPU µs/request | vs billing off | p50 µs | p99 µs | Redis commands / request |")
print("|---|---|---|---|---|---|---|---|")
for m in ("off", "embedded", "cluster"):
    per = statistics.median(r["redis_cmds"] / r["requests"] for r in rows if r["mode"] == m)
    cpu = med(m, "cpu_us_per_req")
    print(f"| {m} | {med(m, 'rps'):,.0f} | {med(m, 'rps') / base:.3f} | {cpu:.1f} | {cpu / cbase:.3f} | "
          f"{med(m, 'p50_us'):.0f} | {med(m, 'p99_us'):.0f} | {per:.4f} |")
EOF
