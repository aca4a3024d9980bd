#!/usr/bin/env bash
# Cost of one routing decision (src/router, `decide`): p50/p99 microseconds per request over the
# shared labelled prompts, the hand-written chat prompts and 16 synthetic prompts of 1-8 MB, in a
# release build. Usage: bench/router.sh [rounds]   (results: bench/README.md, "Complexity router")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-env.sh
rounds=${1:-5}
data=${ROUTER_DATA:-../shared/routing/routellm_labels.jsonl.gz}
cargo build --release --quiet
input=$(mktemp)
trap 'rm -f "$input"' EXIT
python3 - "$data" scripts/router/chat_prompts.jsonl >"$input" <<'PY'
import gzip, json, sys
with gzip.open(sys.argv[1], "rt", encoding="utf-8") as f:
    for line in f:
        r = json.loads(line)
        print(json.dumps({"id": r["id"], "model": "auto",
                          "messages": [{"role": "user", "content": r["prompt"]}]}))
with open(sys.argv[2], encoding="utf-8") as f:
    for line in f:
        print(json.dumps(json.loads(line)["request"]))
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "requests: $(wc -l <"$input"), rounds: $rounds, model: conf/router/complexity-v2.json"
target/release/tollgate router bench --model conf/router/complexity-v2.json \
    --rounds "$rounds" --huge 16 <"$input"
