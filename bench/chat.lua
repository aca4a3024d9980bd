-- wrk script for tollgate's benchmark (bench/run.sh).
-- Environment:
--   BENCH_STREAM=1   send "stream": true (SSE); otherwise a plain JSON completion
--   BENCH_KEY=...    API key sent as "Authorization: Bearer <key>" (all targets get the same header)
--   BENCH_OUT=path   where done() writes its JSON summary
--   BENCH_DELAY_MS=n each connection waits n ms before sending its next request (a paced,
--                    below-saturation load: c connections give about c*1000/(n + latency) req/s)
-- Every target gets the byte-identical request, so the mock does the same work per request.
-- stream_options.include_usage is set explicitly because the gateway forces it on for metering;
-- with it in the request the mock sends the same usage chunk whether the gateway is there or not.

local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY") or ""

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
if stream then
  wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},'
    .. '{"role":"user","content":"Say hello to the benchmark in a few words."}],'
    .. '"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}'
else
  wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},'
    .. '{"role":"user","content":"Say hello to the benchmark in a few words."}],'
    .. '"max_tokens":16}'
end

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local out = os.getenv("BENCH_OUT")
  if not out then return end
  local e = summary.errors
  -- the whole latency histogram ([value in µs, count] per distinct value), so that run.sh can
  -- pool the short interleaved below-saturation slices into one distribution
  local hist = {}
  for i = 1, #latency do
    local v, c = latency(i)
    hist[#hist + 1] = string.format("[%d,%d]", v, c)
  end
  local f = assert(io.open(out, "w"))
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d},"hist":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), table.concat(hist, ",")))
  f:close()
end
