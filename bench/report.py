#!/usr/bin/env python3
"""Helpers for bench/run.sh.

  report.py check <base_url> <nonstream|stream>
      One request (the same body as chat.lua) checked for content: 200, 16 completion tokens,
      and for streams one content event per token, a usage chunk and the [DONE] terminator.
  report.py report <workdir> <latest.json> <tollgate.db>
      Aggregate the raw wrk summaries (median of the repetitions), write latest.json, print
      the Markdown report.
"""

import http.client
import json
import os
import sqlite3
import statistics
import sys
from urllib.parse import urlparse

MAX_TOKENS = 16
# Must stay byte-identical to the bodies in chat.lua.
BODY_NONSTREAM = (
    '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},'
    '{"role":"user","content":"Say hello to the benchmark in a few words."}],'
    '"max_tokens":16}'
)
BODY_STREAM = (
    '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},'
    '{"role":"user","content":"Say hello to the benchmark in a few words."}],'
    '"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}'
)
TARGETS = ["direct", "nginx", "tollgate"]
WORKLOADS = ["nonstream", "stream"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def check(base_url: str, workload: str) -> None:
    u = urlparse(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    body = BODY_STREAM if workload == "stream" else BODY_NONSTREAM
    headers = {"Content-Type": "application/json"}
    if os.environ.get("BENCH_KEY"):
        headers["Authorization"] = "Bearer " + os.environ["BENCH_KEY"]
    conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode()
    print(f"status {resp.status}")
    for k, v in resp.getheaders():
        print(f"{k}: {v}")
    print()
    print(text)
    if resp.status != 200:
        sys.exit(f"expected 200, got {resp.status}")
    if workload == "nonstream":
        v = json.loads(text)
        got = v["usage"]["completion_tokens"]
        if got != MAX_TOKENS:
            sys.exit(f"completion_tokens {got} != {MAX_TOKENS}")
        return
    events = [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        sys.exit("stream does not end with data: [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    content = [
        c for c in chunks
        if c.get("choices") and c["choices"][0].get("delta", {}).get("content")
    ]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    if len(content) != MAX_TOKENS:
        sys.exit(f"{len(content)} content events, expected {MAX_TOKENS}")
    if not usage or usage[-1]["completion_tokens"] != MAX_TOKENS:
        sys.exit(f"usage chunk missing or wrong: {usage}")


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_int(x):
    return "—" if x is None else f"{x:,.0f}"


def fmt_us(x):
    return "—" if x is None else f"{x:,.0f}"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.3f}"


def fmt_signed(x):
    return "—" if x is None else f"{x:+,.0f}"


def report(work: str, out_path: str, db_path: str) -> None:
    runs = [json.loads(line) for line in open(os.path.join(work, "runs.jsonl"))]
    settings = json.load(open(os.path.join(work, "settings.json")))
    machine = json.load(open(os.path.join(work, "machine.json")))
    memory = json.load(open(os.path.join(work, "memory.json")))

    raw = []
    for r in runs:
        w = json.load(open(r["file"]))
        secs = w["duration_us"] / 1e6
        rps = w["requests"] / secs
        rec = dict(r)
        rec.pop("file")
        rec.update(
            requests=w["requests"],
            duration_s=round(secs, 3),
            rps=round(rps, 1),
            errors=w["errors"],
            latency_us=w["latency_us"],
            mock_cpu_us_per_req=round(r["mock_cpu_ticks"] / CLK_TCK * 1e6 / max(w["requests"], 1), 1),
            proxy_cpu_us_per_req=(
                None if r["proxy_cpu_ticks"] is None
                else round(r["proxy_cpu_ticks"] / CLK_TCK * 1e6 / max(w["requests"], 1), 1)
            ),
            proxy_cpu_util=(
                None if r["proxy_cpu_ticks"] is None
                else round(r["proxy_cpu_ticks"] / CLK_TCK / secs, 3)
            ),
        )
        raw.append(rec)
        bad = sum(w["errors"].values())
        if bad:
            sys.exit(f"run {r} had errors: {w['errors']}")
        # Every completed request must have reached the mock (at most `conns` in flight at the end).
        if not (w["requests"] <= r["mock_completed"] <= w["requests"] + r["conns"] + 1):
            sys.exit(f"run {r}: wrk counted {w['requests']} but the mock completed {r['mock_completed']}")

    summary = {}
    for wl in WORKLOADS:
        summary[wl] = {}
        for t in TARGETS:
            def pick(mode, f):
                return med([f(x) for x in raw if x["workload"] == wl and x["target"] == t and x["mode"] == mode])
            summary[wl][t] = {
                "rps": pick("sat", lambda x: x["rps"]),
                "sat_p50_us": pick("sat", lambda x: x["latency_us"]["p50"]),
                "sat_p99_us": pick("sat", lambda x: x["latency_us"]["p99"]),
                "low_rps": pick("low", lambda x: x["rps"]),
                "low_p50_us": pick("low", lambda x: x["latency_us"]["p50"]),
                "low_p99_us": pick("low", lambda x: x["latency_us"]["p99"]),
                "sat_proxy_cpu_util": pick("sat", lambda x: x["proxy_cpu_util"]),
                "sat_proxy_cpu_us_per_req": pick("sat", lambda x: x["proxy_cpu_us_per_req"]),
                "sat_mock_cpu_us_per_req": pick("sat", lambda x: x["mock_cpu_us_per_req"]),
                "rps_runs": [x["rps"] for x in raw if x["workload"] == wl and x["target"] == t and x["mode"] == "sat"],
            }

    ratios = {}
    for wl in WORKLOADS:
        s = summary[wl]
        tg, ng, di = s["tollgate"], s["nginx"], s["direct"]
        ratios[wl] = {
            "tollgate_over_nginx_rps": tg["rps"] / ng["rps"],
            "tollgate_over_direct_rps": tg["rps"] / di["rps"],
            "nginx_over_direct_rps": ng["rps"] / di["rps"],
            "added_low_p50_us_vs_nginx": tg["low_p50_us"] - ng["low_p50_us"],
            "added_low_p99_us_vs_nginx": tg["low_p99_us"] - ng["low_p99_us"],
            "added_low_p50_us_vs_direct": tg["low_p50_us"] - di["low_p50_us"],
            "added_low_p99_us_vs_direct": tg["low_p99_us"] - di["low_p99_us"],
        }

    # Metering evidence: usage events the gateway stored vs requests it served.
    metering = {}
    try:
        c = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        metering["usage_events_in_db"] = c.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0]
        c.close()
    except sqlite3.Error as e:
        metering["usage_events_in_db_error"] = str(e)
    try:
        for line in open(os.path.join(work, "metrics.txt")):
            for name in ("tollgate_usage_events_written", "tollgate_usage_events_dropped"):
                if line.startswith(name) and not line.startswith("#"):
                    metering[name] = metering.get(name, 0) + float(line.rsplit(" ", 1)[1])
    except OSError:
        pass

    mem = {k: {"vmhwm_mib": round(v["vmhwm_kb"] / 1024, 1), "vmrss_mib": round(v["vmrss_kb"] / 1024, 1)}
           for k, v in memory.items()}

    targets_check = {
        "throughput_ge_90pct_of_nginx": {wl: ratios[wl]["tollgate_over_nginx_rps"] >= 0.90 for wl in WORKLOADS},
        "added_p99_below_saturation_lt_1ms_vs_nginx": {
            wl: ratios[wl]["added_low_p99_us_vs_nginx"] < 1000 for wl in WORKLOADS},
        "rss_lt_64mib": mem["tollgate"]["vmhwm_mib"] < 64,
    }

    result = {
        "machine": machine,
        "settings": settings,
        "summary_medians": summary,
        "ratios": ratios,
        "memory": mem,
        "metering": metering,
        "targets": targets_check,
        "runs": raw,
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    st = settings
    print()
    print(f"## tollgate benchmark ({machine['date']})")
    print()
    print(f"Machine: {machine['nproc']} CPUs, {machine['cpu_model']}, kernel {machine['kernel']}; "
          f"wrk {machine['wrk']}, nginx {machine['nginx']}, tollgate {machine['tollgate_rev']}.")
    pin = (f"pinned: mock + wrk on CPU {st['mock_cpus']}/{st['wrk_cpus']}, proxy on CPU {st['proxy_cpus']}"
           if st["pin"] else "not pinned")
    print(f"Settings: median of {st['reps']} runs of {st['duration_s']} s; saturation = wrk -t1 "
          f"-c{st['conns']}, below saturation = wrk -t1 -c{st['low_conns']} (closed loop); tollgate "
          f"threads = {st['threads']}, nginx worker_processes = {st['nginx_workers']}; {pin}.")
    print()
    print("| workload | target | req/s @c%d | p50 @c%d (µs) | p99 @c%d (µs) | p50 @c%d (µs) | p99 @c%d (µs) "
          "| proxy CPU @c%d | proxy CPU µs/req |" % ((st["conns"],) * 3 + (st["low_conns"],) * 2 + (st["conns"],)))
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for wl in WORKLOADS:
        for t in TARGETS:
            s = summary[wl][t]
            util = "—" if s["sat_proxy_cpu_util"] is None else f"{s['sat_proxy_cpu_util'] * 100:.0f}%"
            print(f"| {wl} | {t} | {fmt_int(s['rps'])} | {fmt_us(s['sat_p50_us'])} | {fmt_us(s['sat_p99_us'])} "
                  f"| {fmt_us(s['low_p50_us'])} | {fmt_us(s['low_p99_us'])} | {util} "
                  f"| {fmt_us(s['sat_proxy_cpu_us_per_req'])} |")
    print()
    print("| workload | tollgate/nginx req/s | tollgate/direct req/s | nginx/direct req/s "
          "| added p50 vs nginx (µs) | added p99 vs nginx (µs) | added p50 vs direct (µs) | added p99 vs direct (µs) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for wl in WORKLOADS:
        r = ratios[wl]
        print(f"| {wl} | {fmt_ratio(r['tollgate_over_nginx_rps'])} | {fmt_ratio(r['tollgate_over_direct_rps'])} "
              f"| {fmt_ratio(r['nginx_over_direct_rps'])} | {fmt_signed(r['added_low_p50_us_vs_nginx'])} "
              f"| {fmt_signed(r['added_low_p99_us_vs_nginx'])} | {fmt_signed(r['added_low_p50_us_vs_direct'])} "
              f"| {fmt_signed(r['added_low_p99_us_vs_direct'])} |")
    print()
    print("Added latency is measured below saturation (c%d); req/s at c%d." % (st["low_conns"], st["conns"]))
    print()
    print("| process | peak RSS (VmHWM) | RSS at end |")
    print("|---|--:|--:|")
    for k in ("tollgate", "mock", "nginx_worker", "nginx_master"):
        print(f"| {k} | {mem[k]['vmhwm_mib']} MiB | {mem[k]['vmrss_mib']} MiB |")
    print()
    print("Per-run req/s (saturation): " + "; ".join(
        f"{wl}/{t}: " + ", ".join(f"{x:,.0f}" for x in summary[wl][t]["rps_runs"])
        for wl in WORKLOADS for t in TARGETS))
    print()
    print(f"Metering: {metering}")
    print()
    print("Targets:")
    for wl in WORKLOADS:
        r = ratios[wl]
        ok = targets_check["throughput_ge_90pct_of_nginx"][wl]
        print(f"- {wl}: throughput {r['tollgate_over_nginx_rps'] * 100:.1f}% of nginx (target >= 90%): "
              f"{'PASS' if ok else 'MISS'}")
        ok = targets_check["added_p99_below_saturation_lt_1ms_vs_nginx"][wl]
        print(f"- {wl}: added p99 below saturation {r['added_low_p99_us_vs_nginx']:+.0f} µs vs nginx "
              f"(target < 1000 µs): {'PASS' if ok else 'MISS'}")
    ok = targets_check["rss_lt_64mib"]
    print(f"- tollgate peak RSS {mem['tollgate']['vmhwm_mib']} MiB (target < 64 MiB): {'PASS' if ok else 'MISS'}")
    print()
    print(f"Results: {out_path}")


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
