#!/usr/bin/env bash
# The same binary with its record in SQLite (A) and in PostgreSQL (B), in one interleaved run
# (bench/ab.sh): what keeping the record in PostgreSQL costs the gateway's common call, and how
# many statements a call costs PostgreSQL. Starts its own PostgreSQL (Debian's package; as the
# `postgres` user when run as root) on a free port, pinned with the mock and wrk to CPU 0.
#
#   BIN=target/release/tollgate REPS=5 DURATION=8 bench/pg.sh
#   A=old B=new A_ON_PG=1 bench/pg.sh        two builds, both on PostgreSQL
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$BENCH_DIR/../target/release/tollgate}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
W=$(mktemp -d /tmp/tollgate-pgbench.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$W"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -U tollgate --auth=trust -E UTF8 --no-sync -D "$W/data" >/dev/null
as_pg taskset -c 0 "$PGBIN/postgres" -D "$W/data" -p "$PORT" -k "$W" -c listen_addresses=127.0.0.1 \
  -c shared_buffers=128MB >"$W/pg.log" 2>&1 &
trap 'as_pg "$PGBIN/pg_ctl" stop -m fast -D "$W/data" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
for _ in $(seq 100); do "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PORT" -U tollgate >/dev/null 2>&1 && break; sleep 0.2; done
"$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U tollgate bench
URL="postgres://tollgate@127.0.0.1:$PORT/bench"
# A_ON_PG=1: A keeps its record in PostgreSQL too (its own database: two versions of the schema
# side by side), to compare two builds on PostgreSQL (A=old B=new).
if [[ -n ${A_ON_PG:-} ]]; then
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U tollgate bench_a
  export A_STORE_URL="postgres://tollgate@127.0.0.1:$PORT/bench_a"
fi
stat() { psql -qtA "$URL" -c "SELECT xact_commit, tup_inserted FROM pg_stat_database WHERE datname = 'bench'"; }
before=$(stat 2>/dev/null || echo "0|0")
A=${A:-$BIN} B=${B:-$BIN} B_STORE_URL=$URL "$BENCH_DIR/ab.sh"
after=$(stat)
calls=$(psql -qtA "$URL" -c "SELECT COUNT(*) FROM usage_events")
echo "PostgreSQL: $calls usage records; commits $(( ${after%|*} - ${before%|*} )), rows inserted $(( ${after#*|} - ${before#*|} ))"
python3 -c "c=$calls; x=${after%|*}-${before%|*}; print(f'transactions per call: {x/c:.4f}')"
