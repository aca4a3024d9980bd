#!/usr/bin/env bash
# tollgate benchmark: direct mock vs nginx pass-through vs bare Pingora pass-through vs tollgate,
# non-streaming and streaming.
#
#   bench/run.sh                 # full run (3 repetitions, about 11 minutes)
#   REPS=1 DURATION=3 bench/run.sh   # quick smoke run
#
# Knobs (environment):
#   REPS=3          repetitions of every measurement; the report gives the median
#   DURATION=10     seconds per saturation measurement
#   WARMUP=2        seconds of warm-up load before each (target, workload) block
#   CONNS=32        connections for the saturation run (wrk -t1 -c$CONNS)
#   LOW_CONNS=4 LOW_DELAY_MS=4   below-saturation load: 4 connections, each waiting 4 ms after a
#                   response before its next request (~1,000 req/s offered in all)
#   LOW_SLICES=5 LOW_SLICE_SECS=2   ... run as 5 slices of 2 s per target, targets interleaved
#   THREADS=1       tollgate and bare-Pingora worker threads; nginx gets as many worker processes
#   PIN=1           pin with taskset (mock + wrk on CPU 0, each proxy on CPU 1); PIN=0 leaves it to the OS
#   MOCK_CPUS=0 PROXY_CPUS=1 WRK_CPUS=0   the CPU lists used when PIN=1
#   BREAKER_THRESHOLD=5   tollgate's breaker threshold (its default; 1000000 for builds before
#                   30f18a4, where wrk's hang-ups at the end of a run tripped it, see README)
#   QUIET_MAX=0.3 QUIET_WAIT=120   before each block wait (at most QUIET_WAIT s) until the machine
#                   uses at most QUIET_MAX cores (other jobs on a shared machine); 0 0 disables
#   TOLLGATE_RUST_LOG=     RUST_LOG for tollgate (default: unset, i.e. the gateway's own default)
#   OUT=bench/results/latest.json  WORK=bench/results/work   where results and raw files go
#   KEEP_DB=0       1 keeps the gateway's SQLite file in WORK (else removed after the report)
#   BUILD=1         run `flock /tmp/cargo.lock cargo build --release` first (no-op when up to date)
#   BIN=target/release/tollgate   the binary measured (it also provides the mock and the bare
#                   Pingora pass-through, `tollgate mock-vendor` / `tollgate passthrough`)
#   TOLLGATE_REV=   what to record as the measured revision; default: the repository's HEAD, with
#                   "+uncommitted-src" when src/ differs from it (set it when BIN was built elsewhere)
#
# Writes bench/results/latest.json (plus per-run raw files under bench/results/work/) and prints
# a Markdown report. Exits non-zero if any request failed (socket error or non-2xx status).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
BIN=${BIN:-$ROOT/target/release/tollgate}
RESULTS=$BENCH_DIR/results
WORK=${WORK:-$RESULTS/work}          # raw files of this run (wiped at start)
OUT=${OUT:-$RESULTS/latest.json}     # the machine-readable results

REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
LOW_CONNS=${LOW_CONNS:-4}
LOW_DELAY_MS=${LOW_DELAY_MS:-4}
LOW_SLICES=${LOW_SLICES:-5}
LOW_SLICE_SECS=${LOW_SLICE_SECS:-2}
THREADS=${THREADS:-1}
PIN=${PIN:-1}
MOCK_CPUS=${MOCK_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-1}
WRK_CPUS=${WRK_CPUS:-0}
BUILD=${BUILD:-1}
BREAKER_THRESHOLD=${BREAKER_THRESHOLD:-5}
QUIET_MAX=${QUIET_MAX:-0.3}
QUIET_WAIT=${QUIET_WAIT:-120}

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }

for tool in wrk nginx curl python3 taskset; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y wrk nginx-light)"
done

if [[ $BUILD != 0 ]]; then
  log "building release binary (flock /tmp/cargo.lock cargo build --release)"
  (cd "$ROOT" && flock /tmp/cargo.lock cargo build --release --quiet) || die "release build failed"
fi
[[ -x $BIN ]] || die "no binary at $BIN"
# What was measured: the commit, whether src/ had uncommitted changes at build time, the binary.
if [[ -n ${TOLLGATE_REV:-} ]]; then
  REV=$TOLLGATE_REV
else
  REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REV="$REV+uncommitted-src"
fi
BIN_SHA=$(sha256sum "$BIN" | cut -c1-12)

# pin <cpus> cmd... : exec cmd (pinned to <cpus> when PIN=1). Always call it in a subshell, i.e.
# `pin ... &` or `( pin ... )`: the exec then replaces that subshell, so $! is the command's own pid.
pin() {
  local cpus=$1; shift
  if [[ $PIN != 0 ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# ------------------------------------------------------------------ processes and cleanup
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -0 "$pid" 2>/dev/null || continue
    kill -INT "$pid" 2>/dev/null || true     # pingora: fast shutdown; nginx: fast shutdown
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc != 0 ]]; then log "failed (exit $rc); logs and raw results are in $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# WORK is wiped, so refuse a non-empty directory that an earlier run did not create.
if [[ -d $WORK && -n $(ls -A "$WORK") && ! -e $WORK/.bench-work ]]; then
  die "WORK=$WORK is not empty and was not made by run.sh; not wiping it"
fi
rm -rf "$WORK"
mkdir -p "$WORK/runs" "$WORK/nginx-tmp"
touch "$WORK/.bench-work"
WORK=$(cd "$WORK" && pwd)   # absolute: nginx and the generated config need it

# Five free loopback ports, chosen by the kernel.
read -r MOCK_PORT NGINX_PORT PG_PORT TG_PORT TG_ADMIN_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

wait_http() { # wait_http <url> <what> [curl args...]
  local url=$1 what=$2; shift 2
  for _ in $(seq 300); do
    if curl -sf -o /dev/null "$@" "$url"; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up ($url); see $WORK/*.log"
}

# The gateway's own default log filter (info: one JSON line per request) unless asked otherwise.
if [[ -n ${TOLLGATE_RUST_LOG:-} ]]; then export RUST_LOG=$TOLLGATE_RUST_LOG; else unset RUST_LOG; fi

# Mock vendor (tokio multi-thread runtime: one worker per CPU it may run on).
pin "$MOCK_CPUS" "$BIN" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!; PIDS+=("$MOCK_PID")
wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats" "mock vendor"

# nginx pass-through.
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$NGINX_PORT|g" -e "s|@MOCK_PORT@|$MOCK_PORT|g" \
    -e "s|@NGINX_WORKERS@|$THREADS|g" "$BENCH_DIR/nginx.conf.in" >"$WORK/nginx.conf"
pin "$PROXY_CPUS" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
  >"$WORK/nginx.log" 2>&1 &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
wait_http "http://127.0.0.1:$NGINX_PORT/v1/models" "nginx"

# Bare Pingora pass-through (`tollgate passthrough`, src/passthrough.rs): the same Pingora, HTTP/1
# handling and upstream connection pool as the gateway, none of the gateway's work.
pin "$PROXY_CPUS" "$BIN" passthrough --listen "127.0.0.1:$PG_PORT" --upstream "127.0.0.1:$MOCK_PORT" \
  --threads "$THREADS" >"$WORK/pingora.log" 2>&1 &
PG_PID=$!; PIDS+=("$PG_PID")
wait_http "http://127.0.0.1:$PG_PORT/v1/models" "bare Pingora pass-through"

# tollgate, with a random operator token; the upstream key is what the gateway sends the mock.
export TOLLGATE_ADMIN_TOKEN="bench-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export BENCH_UPSTREAM_KEY="bench-upstream-secret"
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
    -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|$THREADS|g" \
    -e "s|@BREAKER_THRESHOLD@|$BREAKER_THRESHOLD|g" \
    "$BENCH_DIR/tollgate.toml.in" >"$WORK/tollgate.toml"
"$BIN" check-config "$WORK/tollgate.toml" >/dev/null || die "generated config is invalid"
pin "$PROXY_CPUS" "$BIN" run --config "$WORK/tollgate.toml" >"$WORK/tollgate.log" 2>&1 &
TG_PID=$!; PIDS+=("$TG_PID")
wait_http "http://127.0.0.1:$TG_ADMIN_PORT/readyz" "tollgate admin API"

admin_post() { # admin_post <path> <json> -> response body; fails on non-2xx
  curl -sf -X POST "http://127.0.0.1:$TG_ADMIN_PORT$1" \
    -H "Authorization: Bearer $TOLLGATE_ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$2" \
    || die "admin POST $1 failed"
}
admin_post /admin/tenants '{"name":"bench"}' >/dev/null
admin_post /admin/tenants/bench/topups '{"amount_rmb":"1000000"}' >/dev/null  # billing is on: give the tenant credit
API_KEY=$(admin_post /admin/keys '{"tenant":"bench","name":"bench","default_channel":"bench"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
[[ -n $API_KEY ]] || die "no API key returned by the admin API"
export BENCH_KEY=$API_KEY
python3 "$BENCH_DIR/report.py" memory "$TG_PID" "$MOCK_PID" "$NGINX_PID" "$PG_PID" >"$WORK/memory-start.json"
log "mock :$MOCK_PORT (pid $MOCK_PID)  nginx :$NGINX_PORT (pid $NGINX_PID)  pingora :$PG_PORT (pid $PG_PID)  tollgate :$TG_PORT admin :$TG_ADMIN_PORT (pid $TG_PID)"

declare -A PORT=([direct]=$MOCK_PORT [nginx]=$NGINX_PORT [pingora]=$PG_PORT [tollgate]=$TG_PORT)
TARGETS=(direct nginx pingora tollgate)
WORKLOADS=(nonstream stream)

# ------------------------------------------------------------------ sanity checks
# One request of each kind through each target, checked for content (status, usage, one SSE event
# per token, [DONE]), and an unauthenticated request that tollgate must refuse.
for target in "${TARGETS[@]}"; do
  for workload in "${WORKLOADS[@]}"; do
    out=$WORK/sanity-$target-$workload.txt
    BENCH_STREAM=$([[ $workload == stream ]] && echo 1 || echo 0) \
      python3 "$BENCH_DIR/report.py" check "http://127.0.0.1:${PORT[$target]}" "$workload" \
      >"$out" 2>&1 || { cat "$out" >&2; die "sanity check failed: $target $workload"; }
  done
done
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$TG_PORT/v1/chat/completions" \
  -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[]}')
[[ $code == 401 ]] || die "tollgate accepted a request without a key (status $code): auth is not on"
log "sanity checks passed (content of both workloads on all targets; tollgate refuses a missing key)"

# ------------------------------------------------------------------ measurement
# snap: CPU ticks of the mock, nginx (master + workers), the bare Pingora pass-through, tollgate
# (total and per thread name),
# the whole machine (/proc/stat), and the mock's completed-request counter, as one JSON line.
snap() {
  python3 "$BENCH_DIR/report.py" snap "$MOCK_PID" "$NGINX_PID" "$PG_PID" "$TG_PID" "http://127.0.0.1:$MOCK_PORT"
}

# run_wrk <target> <workload> <conns> <seconds> <outfile.json> <delay_ms>
run_wrk() {
  local target=$1 workload=$2 conns=$3 secs=$4 out=$5 delay=$6
  (
    export BENCH_STREAM=$([[ $workload == stream ]] && echo 1 || echo 0) BENCH_OUT=$out
    export BENCH_DELAY_MS=$delay
    pin "$WRK_CPUS" /usr/bin/time -f '%U %S' -o "${out%.json}.time" \
      wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s --latency \
      -s "$BENCH_DIR/chat.lua" "http://127.0.0.1:${PORT[$target]}" >"${out%.json}.txt" 2>&1
  ) || die "wrk failed: $(cat "${out%.json}.txt")"
  [[ -s $out ]] || die "wrk wrote no summary for $target $workload c$conns"
  if grep -q 'Non-2xx' "${out%.json}.txt"; then
    cat "${out%.json}.txt" >&2
    die "$target $workload c$conns: non-2xx responses (see above)"
  fi
  if grep -q 'Socket errors' "${out%.json}.txt"; then
    cat "${out%.json}.txt" >&2
    die "$target $workload c$conns: socket errors (see above)"
  fi
}

RUNS=$WORK/runs.jsonl
: >"$RUNS"
START=$(date +%s)
total=$((REPS * ${#WORKLOADS[@]} * (${#TARGETS[@]} + 1)))
n=0
# Repetitions are the outer loop so that a slow phase of the (shared) machine hits every target.
for rep in $(seq "$REPS"); do
  for workload in "${WORKLOADS[@]}"; do
    # Saturation: one DURATION-long run per target, CPU use recorded around it.
    for target in "${TARGETS[@]}"; do
      n=$((n + 1))
      read -r qcores qwait < <(python3 "$BENCH_DIR/report.py" quiet "$QUIET_MAX" "$QUIET_WAIT")
      log "[$n/$total] rep $rep  $workload  $target  c$CONNS  (machine CPU before: $qcores cores, waited ${qwait}s)"
      run_wrk "$target" "$workload" "$CONNS" "$WARMUP" "$WORK/runs/warmup-$target-$workload-$rep.json" 0
      out=$WORK/runs/$target-$workload-sat-$rep.json
      before=$(snap)
      run_wrk "$target" "$workload" "$CONNS" "$DURATION" "$out" 0
      after=$(snap)
      printf '{"target":"%s","workload":"%s","mode":"sat","rep":%d,"conns":%d,"file":"%s","quiet_cores":%s,"before":%s,"after":%s}\n' \
        "$target" "$workload" "$rep" "$CONNS" "$out" "$qcores" "$before" "$after" >>"$RUNS"
    done
    # Below saturation: a paced load (LOW_CONNS connections, LOW_DELAY_MS between a response and
    # the next request), in LOW_SLICES short slices per target, the targets interleaved, so that
    # a burst of other work on the machine lands on every target alike. Slices are pooled.
    n=$((n + 1))
    read -r qcores qwait < <(python3 "$BENCH_DIR/report.py" quiet "$QUIET_MAX" "$QUIET_WAIT")
    log "[$n/$total] rep $rep  $workload  below saturation: c$LOW_CONNS, ${LOW_DELAY_MS} ms pacing, $LOW_SLICES x ${LOW_SLICE_SECS}s per target, interleaved"
    for slice in $(seq "$LOW_SLICES"); do
      for target in "${TARGETS[@]}"; do
        out=$WORK/runs/$target-$workload-low-$rep-$slice.json
        run_wrk "$target" "$workload" "$LOW_CONNS" "$LOW_SLICE_SECS" "$out" "$LOW_DELAY_MS"
        printf '{"target":"%s","workload":"%s","mode":"low","rep":%d,"slice":%d,"conns":%d,"file":"%s","quiet_cores":%s}\n' \
          "$target" "$workload" "$rep" "$slice" "$LOW_CONNS" "$out" "$qcores" >>"$RUNS"
      done
    done
  done
done
log "measurements done in $(($(date +%s) - START)) s"

# ------------------------------------------------------------------ memory, metering, report
sleep 1 # let the recorder flush its last batch
python3 "$BENCH_DIR/report.py" memory "$TG_PID" "$MOCK_PID" "$NGINX_PID" "$PG_PID" >"$WORK/memory.json"
curl -sf "http://127.0.0.1:$TG_ADMIN_PORT/metrics" >"$WORK/metrics.txt" || die "no /metrics"

{
  echo "{"
  echo "\"nproc\": $(nproc),"
  echo "\"cpu_model\": \"$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)\","
  echo "\"kernel\": \"$(uname -r)\","
  echo "\"wrk\": \"$(wrk -v 2>&1 | head -n1 | awk '{print $2}')\","
  echo "\"nginx\": \"$(nginx -v 2>&1 | sed 's|.*nginx/||')\","
  echo "\"tollgate_rev\": \"$REV\","
  echo "\"tollgate_binary_sha256\": \"$BIN_SHA\","
  echo "\"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "\"loadavg_after\": \"$(cut -d' ' -f1-3 /proc/loadavg)\""
  echo "}"
} >"$WORK/machine.json"

cat >"$WORK/settings.json" <<EOF
{"reps": $REPS, "duration_s": $DURATION, "warmup_s": $WARMUP, "conns": $CONNS,
 "low_conns": $LOW_CONNS, "low_delay_ms": $LOW_DELAY_MS, "low_slices": $LOW_SLICES,
 "low_slice_s": $LOW_SLICE_SECS, "threads": $THREADS, "nginx_workers": $THREADS,
 "pingora_threads": $THREADS, "pin": $PIN,
 "mock_cpus": "$MOCK_CPUS", "proxy_cpus": "$PROXY_CPUS", "wrk_cpus": "$WRK_CPUS",
 "breaker_threshold": $BREAKER_THRESHOLD, "quiet_max": $QUIET_MAX, "quiet_wait": $QUIET_WAIT, "rust_log": "${RUST_LOG:-}"}
EOF

python3 "$BENCH_DIR/report.py" report "$WORK" "$OUT" "$WORK/tollgate.db"

# The usage database and the gateway's per-request log reach hundreds of MB in a full run.
if [[ ${KEEP_DB:-0} == 0 ]]; then
  rm -f "$WORK"/tollgate.db "$WORK"/tollgate.db-wal "$WORK"/tollgate.db-shm
  gzip -f "$WORK/tollgate.log"
fi
