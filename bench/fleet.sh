#!/usr/bin/env bash
# A fleet: N gateway nodes in cluster mode (one Redis for credit) serving one load, with the
# record in PostgreSQL (B: what nodes on several hosts use) or in one SQLite file shared by the
# nodes (A: a fleet on one host, the store as before issue 15), against the same load on one
# node in embedded mode (E: SQLite, no Redis; as many worker threads as the fleet has), on the
# same CPUs; repetitions interleaved. Reports, per mode, the throughput, latency, the gateway
# CPU per call (all nodes), the CPU per call of PostgreSQL's and Redis's servers, and the ratios
# B/E (issue 15's target: throughput >= 0.95) and B/A.
#
#   N=2 REPS=3 DURATION=8 bench/fleet.sh                 # this 2-core machine: nodes on CPU 1
#   N=3 NODE_CPUS=2-7 AUX_CPUS=0-1 bench/fleet.sh        # a bigger machine: give the nodes
#                                                        # their own cores, the rest elsewhere
#   BENCH_DELAY_MS=3 bench/fleet.sh                      # paced (each connection waits 3 ms)
#
# Each node has its own directory (charge log, pid, upgrade socket); the load is wrk with one
# thread per node (bench/fleet.lua aims each at one node), CONNS connections in all. PostgreSQL,
# Redis, the mock vendor and wrk run on AUX_CPUS. On two cores the servers share CPU 0 with the
# load generator: read the CPU per call as the cost, the throughput as what this machine
# allowed (bench/README.md).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export BENCH_DIR
BIN=${BIN:-$BENCH_DIR/../target/release/tollgate}
N=${N:-2}
REPS=${REPS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
NODE_CPUS=${NODE_CPUS:-1}
AUX_CPUS=${AUX_CPUS:-0}
for tool in wrk redis-server redis-cli curl python3 taskset psql; do
  command -v "$tool" >/dev/null || { echo "fleet.sh: $tool not found" >&2; exit 1; }
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
W=$(mktemp -d /tmp/tollgate-fleet.XXXXXX)
chmod 755 "$W"
log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

NODE_PIDS=()
AUX_PIDS=()
cleanup() {
  for p in "${NODE_PIDS[@]}" "${AUX_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" stop -m fast -D "$W/pg/data" >/dev/null 2>&1 || true
  sleep 0.5
  for p in "${NODE_PIDS[@]}" "${AUX_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}${PERF:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

# PostgreSQL (Debian's package; as the `postgres` user when run as root), on a free port.
mkdir -p "$W/pg"
[ "$(id -u)" = 0 ] && chown postgres "$W/pg"
PG_PORT=$(free_port)
as_pg "$PGBIN/initdb" -U tollgate --auth=trust -E UTF8 --no-sync -D "$W/pg/data" >/dev/null
as_pg taskset -c "$AUX_CPUS" "$PGBIN/postgres" -D "$W/pg/data" -p "$PG_PORT" -k "$W/pg" \
  -c listen_addresses=127.0.0.1 -c shared_buffers=128MB >"$W/pg/pg.log" 2>&1 &
for _ in $(seq 100); do "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U tollgate >/dev/null 2>&1 && break; sleep 0.2; done
REDIS_PORT=$(free_port)
taskset -c "$AUX_CPUS" redis-server --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$W" >"$W/redis.log" 2>&1 &
AUX_PIDS+=($!)
MOCK_PORT=$(free_port)
taskset -c "$AUX_CPUS" "$BIN" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$W/mock.log" 2>&1 &
AUX_PIDS+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$MOCK_PORT/_mock/stats" && break; sleep 0.1; done
export TOLLGATE_ADMIN_TOKEN="fleet-$RANDOM$RANDOM" BENCH_UPSTREAM_KEY=up

# CPU ticks of every process whose command is `name` (exited children included via cutime).
ticks_of() {
  python3 - "$1" <<'EOF'
import os, sys
total = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    if comm.startswith(sys.argv[1]):
        f = stat[stat.rindex(")") + 2:].split()
        total += sum(int(x) for x in f[11:15])
print(total)
EOF
}
node_ticks() {
  local t=0 p
  for p in "${NODE_PIDS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

# start MODE REP: N nodes on a fresh record (SQLite file shared by the nodes, or a fresh
# PostgreSQL database) and an empty Redis; tenant `bench` topped up, a key every node knows.
PORTS=()
start() {
  local mode=$1 rep=$2 i store nodes=$N threads=$THREADS
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  [[ $mode == E ]] && { nodes=1; threads=$((THREADS * N)); }
  if [[ $mode == B ]]; then
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U tollgate "fleet$rep"
    store="url = \"postgres://tollgate@127.0.0.1:$PG_PORT/fleet$rep\""
  else
    mkdir -p "$W/shared-$rep"
  fi
  NODE_PIDS=(); PORTS=(); ADMINS=()
  for i in $(seq "$nodes"); do
    local dir=$W/$mode-$rep-n$i port admin
    mkdir -p "$dir"
    port=$(free_port); admin=$(free_port)
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@ADMIN_PORT@|$admin|g" \
        -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|$threads|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
        "$BENCH_DIR/tollgate.toml.in" >"$dir/tollgate.toml"
    if [[ $mode == A ]]; then
      # One SQLite file for every node (its charge logs side by side, one per process).
      sed -i "s|^sqlite_path = .*|sqlite_path = \"$W/shared-$rep/tollgate.db\"|" "$dir/tollgate.toml"
    elif [[ $mode == B ]]; then
      sed -i "s|^sqlite_path = .*|&\n$store|" "$dir/tollgate.toml"
    fi
    if [[ $mode != E ]]; then
      printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s"\nnode_id = "n%s"\n' "$REDIS_PORT" "$i" >>"$dir/tollgate.toml"
    fi
    taskset -c "$NODE_CPUS" "$BIN" run --config "$dir/tollgate.toml" >"$dir/tollgate.log" 2>&1 &
    NODE_PIDS+=($!); PORTS+=("$port"); ADMINS+=("$admin")
    for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && break; sleep 0.05; done
  done
  local a="http://127.0.0.1:${ADMINS[0]}" h="Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"
  curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"bench"}' >/dev/null
  curl -sf -X POST "$a/admin/tenants/bench/topups" -H "$h" -d '{"amount_rmb":"1000000"}' >/dev/null
  BENCH_KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" \
    -d '{"tenant":"bench","name":"bench","default_channel":"bench"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  export BENCH_KEY
  for port in "${PORTS[@]}"; do
    for _ in $(seq 200); do
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
        -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
        -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":4}')
      [[ $code == 200 ]] && break
      sleep 0.05
    done
  done
}

stop_nodes() {
  local p
  for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  NODE_PIDS=()
}

RESULTS=$W/results.jsonl
: >"$RESULTS"
HZ=$(getconf CLK_TCK)
read -ra MODE_LIST <<<"${MODES:-E A B}"
for rep in $(seq "$REPS"); do
  for k in $(seq 0 $((${#MODE_LIST[@]} - 1))); do
    mode=${MODE_LIST[$(( (k + rep) % ${#MODE_LIST[@]} ))]}
    start "$mode" "$rep"
    FLEET_PORTS=$(IFS=,; echo "${PORTS[*]}") taskset -c "$AUX_CPUS" \
      wrk -t"$N" -c"$CONNS" -d2s -s "$BENCH_DIR/fleet.lua" "http://127.0.0.1:${PORTS[0]}" >/dev/null 2>&1
    n0=$(node_ticks); p0=$(ticks_of postgres); r0=$(ticks_of redis-server)
    out=$W/$mode-$rep.json
    if [[ -n ${PERF:-} && $rep == 1 ]]; then
      # PERF=1: where the nodes' CPU goes (first repetition of each mode), by symbol.
      perf record -q -e cpu-clock -F 1999 -p "$(IFS=,; echo "${NODE_PIDS[*]}")" -o "$W/$mode.perf" \
        -- sleep $((DURATION - 1)) >/dev/null 2>&1 &
      PERF_PID=$!
    fi
    FLEET_PORTS=$(IFS=,; echo "${PORTS[*]}") BENCH_OUT=$out taskset -c "$AUX_CPUS" \
      wrk -t"$N" -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/fleet.lua" \
      "http://127.0.0.1:${PORTS[0]}" >"${out%.json}.txt" 2>&1
    n1=$(node_ticks); p1=$(ticks_of postgres); r1=$(ticks_of redis-server)
    if [[ -n ${PERF:-} && $rep == 1 ]]; then
      wait "$PERF_PID" || true
      perf report -i "$W/$mode.perf" --no-children --sort sym --percent-limit 0.4 --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -60 >"$W/$mode.perf.txt" || true
      log "$mode: profile by symbol in $W/$mode.perf.txt"
    fi
    if grep -q 'Non-2xx\|Socket errors' "${out%.json}.txt"; then
      cat "${out%.json}.txt" >&2
      log "$mode rep $rep: errors (see above)"
    fi
    python3 - "$out" "$mode" "$rep" $((n1 - n0)) $((p1 - p0)) $((r1 - r0)) "$HZ" >>"$RESULTS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["requests"]
hz = int(sys.argv[7])
us = lambda ticks: int(ticks) / hz * 1e6 / n
print(json.dumps({"mode": sys.argv[2], "rep": int(sys.argv[3]),
                  "rps": n / (r["duration_us"] / 1e6), "requests": n,
                  "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
                  "nodes_cpu_us": us(sys.argv[4]), "pg_cpu_us": us(sys.argv[5]),
                  "redis_cpu_us": us(sys.argv[6])}))
EOF
    log "$mode rep $rep: $(tail -1 "$RESULTS")"
    stop_nodes
  done
done

python3 - "$RESULTS" "$N" "$THREADS" "${BENCH_DELAY_MS:-0}" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda m, k: statistics.median(r[k] for r in rows if r["mode"] == m)
modes = [m for m in "EAB" if any(r["mode"] == m for r in rows)]
print(f"{sys.argv[2]} nodes x {sys.argv[3]} worker thread(s), delay {sys.argv[4]} ms; "
      "E = one embedded node (SQLite, no Redis), A = the fleet on one shared SQLite file, "
      "B = the fleet on PostgreSQL (A and B: credit in Redis)")
print("| mode | req/s (median) | p50 µs | p99 µs | nodes CPU µs/call | PostgreSQL µs/call | Redis µs/call |")
print("|---|---|---|---|---|---|---|")
for m in modes:
    print(f"| {m} | {med(m, 'rps'):,.0f} | {med(m, 'p50_us'):.0f} | {med(m, 'p99_us'):.0f} | "
          f"{med(m, 'nodes_cpu_us'):.2f} | {med(m, 'pg_cpu_us'):.2f} | {med(m, 'redis_cpu_us'):.2f} |")
for x, y in (("B", "E"), ("B", "A"), ("A", "E")):
    if x in modes and y in modes:
        print(f"{x}/{y}: throughput {med(x, 'rps') / med(y, 'rps'):.3f}, "
              f"nodes' CPU per call {med(x, 'nodes_cpu_us') / med(y, 'nodes_cpu_us'):.3f}")
EOF
