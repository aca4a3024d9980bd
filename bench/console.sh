#!/usr/bin/env bash
# Console page times for a big tenant (issue 16): a demo database with CALLS calls of history in
# the last 30 days (default 1,000,000), then every console page fetched ROUNDS times (default 20)
# by a signed-in tenant admin; prints each page's median and p95 time as curl measures it on
# loopback (server time plus a local round trip), the operator's pages too. Usage:
# [TZ_MIN=480] bench/console.sh [CALLS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-1000000}
ROUNDS=${2:-20}
BIN=${TOLLGATE_BIN:-target/release/tollgate}
[ -x "$BIN" ] || { . scripts/build-env.sh; cargo build --release; }
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
start=$(date +%s)
"$BIN" demo --db "$dir/demo.db" --history-calls "$CALLS" > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    grep -q "^Console: " "$dir/log" 2>/dev/null && break
    sleep 1
done
url=$(sed -n 's/^Console: \(http[^ ]*\)\/console.*/\1/p' "$dir/log")
[ -n "$url" ] || { cat "$dir/log"; exit 1; }
for _ in $(seq 1 60); do curl -sf -o /dev/null "$url/healthz" && break; sleep 0.5; done
echo "seeded $CALLS calls and started in $(( $(date +%s) - start )) s; console at $url"
curl -s -c "$dir/cj" -o /dev/null -d "tenant=demo&email=admin@demo.example&password=demo-password" "$url/console/login"
token=$(sed -n 's/.*operator: .*with the token \([^ ]*\).*/\1/p' "$dir/log")
curl -s -c "$dir/op" -o /dev/null --data-urlencode "operator_token=$token" "$url/console/login/operator"
# The viewer's zone (minutes east of UTC, the cookie the console's script sets): day series
# then start at the viewer's midnight and are read from the hourly roll-ups.
TZ_MIN=${TZ_MIN:-480}
for jar in "$dir/cj" "$dir/op"; do printf '127.0.0.1\tFALSE\t/console\tFALSE\t0\ttg_tz\t%s\n' "$TZ_MIN" >> "$jar"; done
printf "%-34s %10s %10s\n" page median_ms p95_ms
recent=$(date -u -d '2 days ago' +%F)
time_pages() {
    local jar=$1; shift
    for p in "$@"; do
        times=()
        for _ in $(seq 1 "$ROUNDS"); do
            t=$(curl -s -b "$jar" -o /dev/null -w "%{http_code} %{time_total}" "$url/console$p")
            [ "${t%% *}" = 200 ] || { echo "page $p answered ${t%% *}"; exit 1; }
            times+=("${t##* }")
        done
        printf "%s\n" "${times[@]}" | sort -n | awk -v p="/console$p" '{a[NR]=$1*1000} END {printf "%-34s %10.1f %10.1f\n", p, a[int((NR+1)/2)], a[int(NR*0.95+0.5)]}'
    done
}
t=/t/1
time_pages "$dir/cj" "$t" $t/members $t/departments $t/keys $t/usage "$t/usage?group_by=user" \
    "$t/usage?granularity=hour" $t/records "$t/records?from=$recent" $t/topup $t/redeem $t/alerts \
    $t/audit $t/security $t/prices $t/routing $t/usage.csv $t/records.csv /account
time_pages "$dir/op" /op/tenants /op/codes /op/promos /op/orders /op/health /op/audit
