#!/usr/bin/env bash
# Peak memory under large uploads (issue 14): N concurrent clients each POST a BYTES-byte chat
# body (Content-Length, no Expect) to one gateway on the mock vendor (answers after DELAY_MS so
# bodies are held together). Reports the gateway's peak RSS (VmHWM), how many calls were served
# (200) and refused (503: the buffered-body budget; or a closed connection for a client that
# was still sending), and the budget in use.
#   bench/uploads.sh target/release/tollgate            # N=200 BYTES=16 MiB
#   N=50 BYTES=4194304 BUDGET=268435456 bench/uploads.sh target/release/tollgate
set -euo pipefail
BIN=${1:?binary}; N=${N:-200}; BYTES=${BYTES:-16777216}; DELAY_MS=${DELAY_MS:-500}
BUDGET=${BUDGET:-268435456}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d)
trap 'kill $TP $MP 2>/dev/null || true; rm -rf "$WORK"' EXIT
read -r MOCK_PORT TG_PORT TG_ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
"$BIN" mock-vendor --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 & MP=$!
export TOLLGATE_ADMIN_TOKEN=t BENCH_UPSTREAM_KEY=bench-upstream-secret
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$TG_PORT|g" -e "s|@ADMIN_PORT@|$TG_ADMIN_PORT|g" \
    -e "s|@MOCK_PORT@|$MOCK_PORT|g" -e "s|@THREADS@|2|g" -e "s|@BREAKER_THRESHOLD@|5|g" \
    "$BENCH_DIR/tollgate.toml.in" >"$WORK/tollgate.toml"
# A body limit that admits the uploads, and the budget under test.
python3 - "$WORK/tollgate.toml" "$BYTES" "$BUDGET" <<'PY'
import re, sys
p, size, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = open(p).read()
limit = max(size + 4096, 1 << 20)
s = re.sub(r"(?m)^max_body_bytes\s*=.*$", "", s)
s = s.replace("[server]\n", f"[server]\nmax_body_bytes = {limit}\nmax_buffered_body_bytes = {max(budget, 2 * limit)}\n", 1)
open(p, "w").write(s)
PY
"$BIN" run --config "$WORK/tollgate.toml" >"$WORK/tg.log" 2>&1 & TP=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$TG_ADMIN_PORT/readyz" && break; sleep 0.1; done
a="http://127.0.0.1:$TG_ADMIN_PORT"; h="Authorization: Bearer t"
curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"bench"}' >/dev/null
curl -sf -X POST "$a/admin/tenants/bench/topups" -H "$h" -d '{"amount_rmb":"1000000"}' >/dev/null
KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" -d '{"tenant":"bench","name":"bench","default_channel":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
curl -sf -X POST "http://127.0.0.1:$MOCK_PORT/_mock/behavior" -d "{\"kind\":\"delay\",\"ms\":$DELAY_MS}" >/dev/null
rss() { awk '/^VmRSS/ {print $2}' /proc/$TP/status; }
echo "start RSS: $(rss) KiB"
python3 - "$TG_PORT" "$KEY" "$N" "$BYTES" <<'PY'
import collections, http.client, json, sys, threading
port, key, n, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
filler = "x " * ((size - 200) // 2)
body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                   "messages": [{"role": "user", "content": filler}]}).encode()
results = collections.Counter()
lock = threading.Lock()
def one():
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", "/v1/chat/completions", body,
                  {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = c.getresponse(); r.read(); out = str(r.status)
    except (BrokenPipeError, ConnectionResetError):
        out = "closed while sending"
    except Exception as e:
        out = type(e).__name__
    with lock:
        results[out] += 1
ts = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print("results:", dict(results))
PY
echo "peak RSS (VmHWM): $(awk '/^VmHWM/ {print $2}' /proc/$TP/status) KiB; now: $(rss) KiB"
curl -s "$a/metrics" | grep -E '^tollgate_(body_budget_refusals_total|buffered_body_bytes) '
echo "budget: $BUDGET bytes ($((BUDGET / 1048576)) MiB), bodies of $((BYTES / 1048576)) MiB, $N clients"
