-- wrk script for bench/translate.sh: one streamed call per request, in the caller's protocol.
--   BENCH_CALLER=openai|anthropic   /v1/chat/completions (Bearer) or /v1/messages (x-api-key)
--   BENCH_MODEL=...                 the gateway model (which upstream protocol serves it)
--   BENCH_KEY=...                   the gateway API key
local caller = os.getenv("BENCH_CALLER") or "openai"
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local key = os.getenv("BENCH_KEY") or ""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if caller == "anthropic" then
  wrk.path = "/v1/messages"
  wrk.headers["x-api-key"] = key
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.body = '{"model":"' .. model .. '","system":"You are a terse assistant.",'
    .. '"messages":[{"role":"user","content":"Say hello to the benchmark in a few words."}],'
    .. '"max_tokens":16,"stream":true}'
else
  wrk.path = "/v1/chat/completions"
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are a terse assistant."},'
    .. '{"role":"user","content":"Say hello to the benchmark in a few words."}],'
    .. '"max_tokens":16,"stream":true}'
end
