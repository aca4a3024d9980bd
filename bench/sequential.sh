# Sourced by bench/callgrind.sh and bench/syscalls.sh: on the gateway whose admin API answers at
# $TG_ADMIN_PORT (operator token `t`), a tenant with credit and an API key, and
# $WORK/load.py N: N sequential non-streamed chat calls on port $TG_PORT with that key.
a="http://127.0.0.1:$TG_ADMIN_PORT"; h="Authorization: Bearer t"
curl -sf -X POST "$a/admin/tenants" -H "$h" -d '{"name":"bench"}' >/dev/null
curl -sf -X POST "$a/admin/tenants/bench/topups" -H "$h" -d '{"amount_rmb":"1000000"}' >/dev/null
KEY=$(curl -sf -X POST "$a/admin/keys" -H "$h" -d '{"tenant":"bench","name":"bench","default_channel":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
cat > $WORK/load.py <<PY
import http.client, json, sys
n=int(sys.argv[1]); c=http.client.HTTPConnection("127.0.0.1", $TG_PORT)
body=json.dumps({"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello in one short sentence."}]})
for i in range(n):
    c.request("POST","/v1/chat/completions",body,{"Authorization":"Bearer $KEY","Content-Type":"application/json"})
    r=c.getresponse(); r.read(); assert r.status==200, r.status
PY
