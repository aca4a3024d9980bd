#!/usr/bin/env bash
# Cost of protocol translation on a streamed response, as a ratio against pass-through.
#
#   bench/translate.sh                       # 3 repetitions x 4 targets x 5 s
#   REPS=1 DURATION=2 bench/translate.sh     # smoke run
#
# One gateway, one mock vendor (both `tollgate` subcommands of BIN), two models on one channel:
# `gpt-4o-mini` served by an OpenAI-protocol upstream, `claude-mock` by an Anthropic-protocol
# upstream (the same mock process). Four targets, all streamed, 16 output tokens each:
#   openai->openai        pass-through (the existing metered hot path), the baseline
#   anthropic->anthropic  pass-through metered by the Anthropic reader (no re-serialisation)
#   anthropic->openai     Anthropic caller, OpenAI upstream: request and stream translated
#   openai->anthropic     OpenAI caller, Anthropic upstream: request and stream translated
# Measured per target: requests/s at CONNS connections (wrk -t1) and the gateway's CPU time per
# request (utime+stime from /proc over the run / requests), median of REPS runs.
#
# Knobs: BIN (default target/release/tollgate; build it first), REPS=3, DURATION=5, CONNS=8.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
BIN=${BIN:-$ROOT/target/release/tollgate}
REPS=${REPS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-8}
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(port); GW_PORT=$(port); ADMIN_PORT=$(port)

"$BIN" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/tollgate.toml" <<CFG
[server]
listen = "127.0.0.1:$GW_PORT"
threads = 1
log_format = "json"
graceful_shutdown_seconds = 1
upgrade_sock = "$WORK/upgrade.sock"
pid_file = "$WORK/tollgate.pid"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_env = "TOLLGATE_ADMIN_TOKEN"
[store]
sqlite_path = "$WORK/tollgate.db"
[[models]]
name = "gpt-4o-mini"
price = { currency = "USD", input = "0.15", cached_input = "0.075", output = "0.60" }
[[models]]
name = "claude-mock"
price = { currency = "USD", input = "3", cached_input = "0.3", cache_write = "3.75", output = "15" }
[[channels]]
name = "bench"
multiplier = "7.2"
  [[channels.upstreams]]
  name = "openai"
  base_url = "http://127.0.0.1:$MOCK_PORT/v1"
  api_key_env = "BENCH_UPSTREAM_KEY"
  models = ["gpt-4o-mini"]
  [[channels.upstreams]]
  name = "anthropic"
  protocol = "anthropic"
  base_url = "http://127.0.0.1:$MOCK_PORT/v1"
  api_key_env = "BENCH_UPSTREAM_KEY"
  models = ["claude-mock"]
CFG
TOLLGATE_ADMIN_TOKEN=bench BENCH_UPSTREAM_KEY=k "$BIN" run --config "$WORK/tollgate.toml" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 200); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
admin() { curl -sf "http://127.0.0.1:$ADMIN_PORT$1" -H "Authorization: Bearer bench" -d "$2"; }
admin /admin/tenants '{"name":"bench"}' >/dev/null
admin /admin/tenants/bench/topups '{"amount_rmb":"100000000"}' >/dev/null
KEY=$(admin /admin/keys '{"tenant":"bench","name":"bench","default_channel":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

cpu_ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
TICK=$(getconf CLK_TCK)
run() { # caller model -> "rps cpu_us_per_request"
  local out t0 t1 n rps
  t0=$(cpu_ticks)
  out=$(BENCH_CALLER=$1 BENCH_MODEL=$2 BENCH_KEY=$KEY wrk -t1 -c"$CONNS" -d"${DURATION}s" \
    -s "$BENCH_DIR/translate.lua" "http://127.0.0.1:$GW_PORT")
  t1=$(cpu_ticks)
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "errors in $1 -> $2:" >&2; echo "$out" >&2; exit 1; fi
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  python3 -c "print($rps, ($t1 - $t0) * 1e6 / $TICK / $n)"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

TARGETS=("openai gpt-4o-mini openai->openai" "anthropic claude-mock anthropic->anthropic"
         "anthropic gpt-4o-mini anthropic->openai" "openai claude-mock openai->anthropic")
# Warm-up (connection pools, tokenizer tables) for every target.
for t in "${TARGETS[@]}"; do set -- $t; DURATION=1 run "$1" "$2" >/dev/null; done
declare -A RPS CPU
for rep in $(seq "$REPS"); do
  for t in "${TARGETS[@]}"; do   # interleaved, so a noisy neighbour hurts every target alike
    set -- $t
    read -r r c < <(run "$1" "$2")
    RPS[$3]="${RPS[$3]:-} $r"; CPU[$3]="${CPU[$3]:-} $c"
  done
done
echo "| target | req/s (median) | gateway CPU us/request (median) | CPU ratio vs openai->openai |"
echo "|---|---|---|---|"
base=$(median ${CPU["openai->openai"]})
for t in "${TARGETS[@]}"; do
  set -- $t
  r=$(median ${RPS[$3]}); c=$(median ${CPU[$3]})
  printf '| %s | %.0f | %.1f | %.2f |\n' "$3" "$r" "$c" "$(python3 -c "print($c / $base)")"
done
echo
echo "BIN=$BIN ($(sha256sum "$BIN" | cut -c1-12)), rev $(git -C "$ROOT" rev-parse --short HEAD), REPS=$REPS DURATION=$DURATION CONNS=$CONNS, $(nproc) CPUs, $(date -u +%FT%TZ)"
