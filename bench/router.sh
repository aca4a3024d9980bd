#!/usr/bin/env bash
# Cost of one routing decision (src/router, `decide`): p50/p99 microseconds per request over the
# shared labelled prompts (both files), the hand-written chat prompts, the Chinese prompts of
# scripts/router/synth.py and 16 synthetic prompts of 1-8 MB, in a release build. Usage: bench/router.sh [rounds]   (results: bench/README.md, "Complexity router")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-env.sh
rounds=${1:-5}
data=${ROUTER_DATA:-../shared/routing/routellm_labels.jsonl.gz}
many=${ROUTER_MANY:-../shared/routing/many_model_labels.jsonl.gz}
bin=${CARGO_TARGET_DIR:-target}/release/tollgate
cargo build --release --quiet
input=$(mktemp)
trap 'rm -f "$input"' EXIT
python3 - "$data" "$many" scripts/router/chat_prompts.jsonl >"$input" <<'PY'
import gzip, json, sys
sys.path.insert(0, "scripts/router")
import synth
for path in sys.argv[1:3]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            print(json.dumps({"id": r["id"], "model": "auto",
                              "messages": [{"role": "user", "content": r["prompt"]}]}))
with open(sys.argv[3], encoding="utf-8") as f:
    for line in f:
        print(json.dumps(json.loads(line)["request"]))
for r in synth.chinese_set():
    print(json.dumps(r["zh"], ensure_ascii=False))
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "requests: $(wc -l <"$input"), rounds: $rounds, model: conf/router/complexity-v2.json"
"$bin" router bench --model conf/router/complexity-v2.json \
    --rounds "$rounds" --huge 16 <"$input"
