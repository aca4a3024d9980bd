#!/usr/bin/env python3
"""Helpers for bench/run.sh.

  report.py check <base_url> <nonstream|stream>
      One request (the same body as chat.lua) checked for content: 200, 16 completion tokens,
      and for streams one content event per token, a usage chunk and the [DONE] terminator.
  report.py snap <mock_pid> <nginx_pid> <pingora_pid> <tollgate_pid> <mock_base_url>
      One JSON line: CPU ticks of the processes (tollgate and the bare Pingora pass-through also
      per thread name), of the whole
      machine, and the mock's completed-request counter. run.sh takes one before and after a run.
  report.py quiet <max_cores> <max_wait_s>
      Wait until the machine's CPU use over 1 s is at most max_cores (or max_wait_s passed);
      prints "<cores> <seconds waited>".
  report.py memory <tollgate_pid> <mock_pid> <nginx_master_pid> <pingora_pid>
      Peak (VmHWM) and current RSS of the processes, as JSON.
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
import time
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
TARGETS = ["direct", "nginx", "pingora", "tollgate"]
PROXIES = ["nginx", "pingora", "tollgate"]
BASELINES = ["pingora", "nginx"]  # the pass-through proxies tollgate is compared with
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


def _stat_ticks(path):
    """utime + stime of /proc/.../stat, in clock ticks."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _proc_ticks(pid, children=False):
    total = _stat_ticks(f"/proc/{pid}/stat")
    if children:
        for task in os.listdir(f"/proc/{pid}/task"):
            for kid in open(f"/proc/{pid}/task/{task}/children").read().split():
                try:
                    total += _stat_ticks(f"/proc/{kid}/stat")
                except OSError:
                    pass
    return total


def _thread_ticks(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out


def snap(mock_pid, nginx_pid, pg_pid, tg_pid, mock_url):
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...; softirq time (most of the loopback
    # network work) is charged to no process, so it is kept apart.
    busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]
    u = urlparse(mock_url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", "/_mock/stats")
    completed = json.loads(c.getresponse().read())["completed"]
    print(json.dumps({
        "mock": _proc_ticks(mock_pid),
        "nginx": _proc_ticks(nginx_pid, children=True),
        "pingora": _proc_ticks(pg_pid),
        "pingora_threads": _thread_ticks(pg_pid),
        "tollgate": _proc_ticks(tg_pid),
        "tollgate_threads": _thread_ticks(tg_pid),
        "machine_busy": busy,
        "machine_irq": cpu[5] + cpu[6],
        "machine_steal": cpu[7],
        "machine_total": sum(cpu[:8]),
        "mock_completed": completed,
    }, separators=(",", ":")))


def memory(tg_pid, mock_pid, nginx_pid, pg_pid):
    def status(pid):
        kv = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
        return {"pid": int(pid), "vmhwm_kb": int(kv["VmHWM"].split()[0]),
                "vmrss_kb": int(kv["VmRSS"].split()[0])}
    workers = [k for t in os.listdir(f"/proc/{nginx_pid}/task")
               for k in open(f"/proc/{nginx_pid}/task/{t}/children").read().split()]
    out = {"tollgate": status(tg_pid), "pingora": status(pg_pid), "mock": status(mock_pid),
           "nginx_master": status(nginx_pid)}
    # the largest worker (there is one per worker_processes)
    out["nginx_worker"] = max((status(w) for w in workers), key=lambda s: s["vmhwm_kb"])
    print(json.dumps(out, indent=1))


def quiet(max_cores, max_wait):
    """Wait until the machine is nearly idle (our own processes are idle between runs), so
    that other jobs on a shared machine disturb the measurements as little as possible."""
    max_cores, max_wait = float(max_cores), float(max_wait)
    start = time.time()
    while True:
        def busy():
            with open("/proc/stat") as f:
                cpu = [int(x) for x in f.readline().split()[1:]]
            return cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]
        b0 = busy()
        time.sleep(1)
        cores = (busy() - b0) / CLK_TCK
        waited = time.time() - start
        if cores <= max_cores or waited >= max_wait:
            print(f"{cores:.2f} {waited:.0f}")
            return


def is_background(thread_name):
    """tollgate's threads other than the gateway service's workers (Pingora names a service's
    runtime threads after the service, "tollgate gateway", cut to 15 characters): the recorder,
    config watcher, key refresher, admin API, log flusher, main thread."""
    return not thread_name.startswith("tollgate gatew")


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


def percentile(hist, p):
    """hist: sorted [value, count] pairs; the smallest value with at least p% of samples at or
    below it."""
    total = sum(c for _, c in hist)
    rank = max(1, -(-p * total // 100))  # ceil
    seen = 0
    for v, c in hist:
        seen += c
        if seen >= rank:
            return v
    return hist[-1][0] if hist else None


def merge_hists(hists):
    acc = {}
    for h in hists:
        for v, c in h:
            acc[v] = acc.get(v, 0) + c
    return sorted(acc.items())


def lat_summary(hist):
    return {"p50": percentile(hist, 50), "p90": percentile(hist, 90), "p99": percentile(hist, 99),
            "p999": percentile(hist, 99.9), "max": hist[-1][0] if hist else None,
            "samples": sum(c for _, c in hist)}


def thread_medians(raw, wl, target):
    recs = [x["threads_cpu_us_per_req"] for x in raw
            if x["workload"] == wl and x["target"] == target]
    names = {k for r in recs for k in r}
    return {k: med([r.get(k) for r in recs]) for k in names}


def report(work: str, out_path: str, db_path: str) -> None:
    runs = [json.loads(line) for line in open(os.path.join(work, "runs.jsonl"))]
    settings = json.load(open(os.path.join(work, "settings.json")))
    machine = json.load(open(os.path.join(work, "machine.json")))
    memory = json.load(open(os.path.join(work, "memory.json")))
    memory_start = json.load(open(os.path.join(work, "memory-start.json")))

    raw = []      # saturation runs, one record each
    slices = []   # below-saturation slices
    for r in runs:
        w = json.load(open(r["file"]))
        if sum(w["errors"].values()):
            sys.exit(f"run {r['file']} had errors: {w['errors']}")
        wrk_user, wrk_sys = (float(x) for x in
                             open(r["file"][:-len(".json")] + ".time").read().split()[-2:])
        secs = w["duration_us"] / 1e6
        n = max(w["requests"], 1)
        base = {k: r[k] for k in ("target", "workload", "mode", "rep", "conns")}
        base.update(requests=w["requests"], duration_s=round(secs, 3),
                    rps=round(w["requests"] / secs, 1), errors=w["errors"],
                    wrk_latency_us=w["latency_us"], machine_cpu_before_cores=r.get("quiet_cores"))
        if r["mode"] == "low":
            base["slice"] = r["slice"]
            base["hist"] = w["hist"]
            slices.append(base)
            continue

        b, a = r["before"], r["after"]
        d = {k: a[k] - b[k] for k in ("mock", "nginx", "pingora", "tollgate", "machine_busy",
                                      "machine_irq", "machine_steal", "mock_completed")}

        def per_req(ticks):
            return None if ticks is None else round(ticks / CLK_TCK * 1e6 / n, 1)

        def thread_ticks(snapshot, pred):
            return sum(v for k, v in snapshot["tollgate_threads"].items() if pred(k))

        # CPU per thread name of the Pingora-based proxy under test (tollgate or bare Pingora)
        tkey = f"{r['target']}_threads"
        threads = ({k: per_req(v - b[tkey].get(k, 0)) for k, v in a[tkey].items()}
                   if r["target"] in ("pingora", "tollgate") else None)

        proxy = {t: d[t] for t in PROXIES}.get(r["target"])

        def cores(ticks):
            return None if ticks is None else round(ticks / CLK_TCK / secs, 3)

        wrk_ticks = (wrk_user + wrk_sys) * CLK_TCK
        ours = d["mock"] + d["nginx"] + d["pingora"] + d["tollgate"] + wrk_ticks
        rec = dict(base)
        rec.update(
            latency_us=w["latency_us"],
            mock_completed=d["mock_completed"],
            proxy_cpu_cores=cores(proxy),
            proxy_cpu_us_per_req=per_req(proxy),
            # tollgate's threads other than the gateway workers: Pingora background services
            # ("BG <name>": the recorder, config watcher, key refresher) and the log flusher
            background_cpu_us_per_req=(
                per_req(thread_ticks(a, is_background) - thread_ticks(b, is_background))
                if r["target"] == "tollgate" else None),
            threads_cpu_us_per_req=threads,
            mock_cpu_cores=cores(d["mock"]),
            mock_cpu_us_per_req=per_req(d["mock"]),
            wrk_cpu_cores=cores(wrk_ticks),
            # interrupt + softirq time (mostly loopback TCP), charged to no process
            irq_cpu_cores=cores(d["machine_irq"]),
            steal_cpu_cores=cores(d["machine_steal"]),
            # CPU spent on anything else: other jobs on this shared machine
            other_cpu_cores=cores(max(d["machine_busy"] - d["machine_irq"] - d["machine_steal"] - ours, 0)),
        )
        raw.append(rec)
        # Every request wrk counted must have been completed by the mock, plus at most the
        # `conns` requests in flight when wrk stopped.
        slack = r["conns"] + 1
        if not (w["requests"] <= d["mock_completed"] <= w["requests"] + slack):
            sys.exit(f"run {r['file']}: wrk counted {w['requests']} but the mock completed "
                     f"{d['mock_completed']}")

    # Below saturation: pool the slices of each (workload, target, rep), then the median of reps;
    # also all reps pooled.
    low = {}
    for wl in WORKLOADS:
        low[wl] = {}
        for t in TARGETS:
            sl = [x for x in slices if x["workload"] == wl and x["target"] == t]
            per_rep = []
            for rep in sorted({x["rep"] for x in sl}):
                rs = [x for x in sl if x["rep"] == rep]
                h = merge_hists([x["hist"] for x in rs])
                summ = lat_summary(h)
                summ["rep"] = rep
                summ["rps"] = round(sum(x["requests"] for x in rs) / sum(x["duration_s"] for x in rs), 1)
                per_rep.append(summ)
            low[wl][t] = {
                "per_rep": per_rep,
                "median_of_reps": {k: med([x[k] for x in per_rep]) for k in
                                   ("p50", "p90", "p99", "p999", "max", "rps")},
                "pooled": lat_summary(merge_hists([x["hist"] for x in sl])),
            }

    summary = {}
    for wl in WORKLOADS:
        summary[wl] = {}
        for t in TARGETS:
            def sel():
                return [x for x in raw if x["workload"] == wl and x["target"] == t]

            def pick(key, sub=None):
                return med([x[key][sub] if sub else x[key] for x in sel()])

            lm = low[wl][t]["median_of_reps"]
            summary[wl][t] = {
                "rps": pick("rps"),
                "sat_p50_us": pick("latency_us", "p50"),
                "sat_p99_us": pick("latency_us", "p99"),
                "low_rps": lm["rps"],
                "low_p50_us": lm["p50"],
                "low_p90_us": lm["p90"],
                "low_p99_us": lm["p99"],
                "low_pooled_p99_us": low[wl][t]["pooled"]["p99"],
                "sat_proxy_cpu_cores": pick("proxy_cpu_cores"),
                "sat_proxy_cpu_us_per_req": pick("proxy_cpu_us_per_req"),
                "sat_background_cpu_us_per_req": pick("background_cpu_us_per_req"),
                "sat_mock_cpu_cores": pick("mock_cpu_cores"),
                "sat_mock_cpu_us_per_req": pick("mock_cpu_us_per_req"),
                "sat_wrk_cpu_cores": pick("wrk_cpu_cores"),
                "sat_irq_cpu_cores": pick("irq_cpu_cores"),
                "sat_other_cpu_cores": pick("other_cpu_cores"),
                "rps_runs": [x["rps"] for x in sel()],
                "low_p99_runs": [x["p99"] for x in low[wl][t]["per_rep"]],
            }

    ratios = {}
    for wl in WORKLOADS:
        s = summary[wl]
        tg, pg, ng, di = s["tollgate"], s["pingora"], s["nginx"], s["direct"]
        ratios[wl] = {
            "tollgate_over_pingora_rps": tg["rps"] / pg["rps"],
            "tollgate_over_nginx_rps": tg["rps"] / ng["rps"],
            "tollgate_over_direct_rps": tg["rps"] / di["rps"],
            "pingora_over_nginx_rps": pg["rps"] / ng["rps"],
            "pingora_over_direct_rps": pg["rps"] / di["rps"],
            "nginx_over_direct_rps": ng["rps"] / di["rps"],
            "tollgate_over_pingora_cpu_per_req": (tg["sat_proxy_cpu_us_per_req"]
                                                  / pg["sat_proxy_cpu_us_per_req"]),
            "tollgate_over_nginx_cpu_per_req": (tg["sat_proxy_cpu_us_per_req"]
                                                / ng["sat_proxy_cpu_us_per_req"]),
        }
        for base in ("pingora", "nginx", "direct"):
            for p in ("p50", "p99"):
                ratios[wl][f"added_low_{p}_us_vs_{base}"] = tg[f"low_{p}_us"] - s[base][f"low_{p}_us"]

    # Metering evidence: usage events the gateway stored vs requests it served.
    metering = {}
    try:
        c = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        metering["usage_events_in_db"] = c.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0]
        metering["usage_events_status_200"] = c.execute(
            "SELECT COUNT(*) FROM usage_events WHERE status = 200").fetchone()[0]
        c.close()
    except sqlite3.Error as e:
        metering["usage_events_in_db_error"] = str(e)
    try:
        for line in open(os.path.join(work, "metrics.txt")):
            for name in ("tollgate_usage_events_written", "tollgate_usage_events_dropped",
                         "tollgate_ledger_entries_written", "tollgate_breaker_opened",
                         "tollgate_stream_errors"):
                if line.startswith(name):
                    metering[name] = metering.get(name, 0) + float(line.rsplit(" ", 1)[1])
    except OSError:
        pass
    # every response wrk received from tollgate (warm-ups included) should have a usage event
    metering["tollgate_responses_all_wrk_runs"] = sum(
        json.load(open(os.path.join(work, "runs", f)))["requests"]
        for f in os.listdir(os.path.join(work, "runs"))
        if f.endswith(".json") and "tollgate-" in f)

    mem = {k: {"vmhwm_mib": round(v["vmhwm_kb"] / 1024, 1), "vmrss_mib": round(v["vmrss_kb"] / 1024, 1),
               "startup_vmrss_mib": round(memory_start[k]["vmrss_kb"] / 1024, 1)}
           for k, v in memory.items()}

    targets_check = {"rss_lt_64mib": mem["tollgate"]["vmhwm_mib"] < 64}
    for base in BASELINES:
        targets_check[f"throughput_ge_90pct_of_{base}"] = {
            wl: ratios[wl][f"tollgate_over_{base}_rps"] >= 0.90 for wl in WORKLOADS}
        targets_check[f"added_p99_below_saturation_lt_1ms_vs_{base}"] = {
            wl: ratios[wl][f"added_low_p99_us_vs_{base}"] < 1000 for wl in WORKLOADS}

    result = {
        "machine": machine,
        "settings": settings,
        "summary_medians": summary,
        "below_saturation": {wl: {t: {k: v for k, v in low[wl][t].items()} for t in TARGETS}
                             for wl in WORKLOADS},
        "ratios": ratios,
        "memory": mem,
        "metering": metering,
        "targets": targets_check,
        "saturation_runs": raw,
        "below_saturation_slices": [{k: v for k, v in x.items() if k != "hist"} for x in slices],
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    st = settings
    c, lc = st["conns"], st["low_conns"]
    print()
    print(f"## tollgate benchmark ({machine['date']})")
    print()
    print(f"Machine: {machine['nproc']} CPUs, {machine['cpu_model']}, kernel {machine['kernel']}; "
          f"wrk {machine['wrk']}, nginx {machine['nginx']}, tollgate {machine['tollgate_rev']}.")
    pin = (f"pinned: mock and wrk on CPU {st['mock_cpus']}, the proxy under test (nginx, bare "
           f"Pingora or tollgate) on CPU {st['proxy_cpus']}" if st["pin"] else "not pinned")
    print(f"Settings: median of {st['reps']} repetitions. Saturation: wrk -t1 -c{c}, {st['duration_s']} s "
          f"per target. Below saturation: wrk -t1 -c{lc} with {st['low_delay_ms']} ms pacing per "
          f"connection, {st['low_slices']} x {st['low_slice_s']} s slices per target, targets "
          f"interleaved, slices pooled. tollgate threads = {st['threads']}, bare Pingora threads = "
          f"{st.get('pingora_threads', st['threads'])}, nginx worker_processes = "
          f"{st['nginx_workers']}; {pin}.")
    print()
    print(f"| workload | target | req/s @c{c} | p50 @c{c} (µs) | p99 @c{c} (µs) "
          f"| paced req/s | paced p50 (µs) | paced p90 (µs) | paced p99 (µs) |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for wl in WORKLOADS:
        for t in TARGETS:
            s = summary[wl][t]
            print(f"| {wl} | {t} | {fmt_int(s['rps'])} | {fmt_us(s['sat_p50_us'])} | {fmt_us(s['sat_p99_us'])} "
                  f"| {fmt_int(s['low_rps'])} | {fmt_us(s['low_p50_us'])} | {fmt_us(s['low_p90_us'])} "
                  f"| {fmt_us(s['low_p99_us'])} |")
    print()
    print(f"| workload | tollgate/pingora req/s | tollgate/nginx req/s | tollgate/direct req/s "
          f"| pingora/nginx req/s | nginx/direct req/s | tollgate/pingora CPU per req "
          f"| tollgate/nginx CPU per req |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for wl in WORKLOADS:
        r = ratios[wl]
        print(f"| {wl} | {fmt_ratio(r['tollgate_over_pingora_rps'])} | {fmt_ratio(r['tollgate_over_nginx_rps'])} "
              f"| {fmt_ratio(r['tollgate_over_direct_rps'])} | {fmt_ratio(r['pingora_over_nginx_rps'])} "
              f"| {fmt_ratio(r['nginx_over_direct_rps'])} | {r['tollgate_over_pingora_cpu_per_req']:.2f}× "
              f"| {r['tollgate_over_nginx_cpu_per_req']:.2f}× |")
    print()
    print("| workload | added p50 vs pingora (µs) | added p99 vs pingora (µs) | added p50 vs nginx (µs) "
          "| added p99 vs nginx (µs) | added p50 vs direct (µs) | added p99 vs direct (µs) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for wl in WORKLOADS:
        r = ratios[wl]
        print(f"| {wl} | " + " | ".join(fmt_signed(r[f"added_low_{p}_us_vs_{b}"])
                                       for b in ("pingora", "nginx", "direct") for p in ("p50", "p99"))
              + " |")
    print()
    print(f"Ratios of req/s at c{c} and of proxy CPU per request (saturation); added latency of "
          f"tollgate below saturation (paced run); medians of reps.")
    print()
    print(f"CPU during the saturation runs (c{c}; medians; cores = CPU-seconds per second):")
    print()
    print("| workload | target | proxy cores | proxy CPU µs/req | of which outside the gateway "
          "workers µs/req | mock cores | mock CPU µs/req | wrk cores | irq+softirq cores | other work (cores) |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")

    def f2(x):
        return "—" if x is None else f"{x:.2f}"

    def f1(x):
        return "—" if x is None else f"{x:.1f}"

    for wl in WORKLOADS:
        for t in TARGETS:
            s = summary[wl][t]
            print(f"| {wl} | {t} | {f2(s['sat_proxy_cpu_cores'])} | {f1(s['sat_proxy_cpu_us_per_req'])} "
                  f"| {f1(s['sat_background_cpu_us_per_req'])} | {f2(s['sat_mock_cpu_cores'])} "
                  f"| {f1(s['sat_mock_cpu_us_per_req'])} | {f2(s['sat_wrk_cpu_cores'])} "
                  f"| {f2(s['sat_irq_cpu_cores'])} | {f2(s['sat_other_cpu_cores'])} |")
    print()
    for t in ("tollgate", "pingora"):
        print(f"{t} CPU by thread (µs/req, saturation, median of reps): " + "; ".join(
            f"{wl}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(
                thread_medians(raw, wl, t).items(), key=lambda kv: -kv[1]) if v >= 0.1)
            for wl in WORKLOADS))
        print()
    print("| process | RSS after startup | peak RSS (VmHWM) | RSS at end |")
    print("|---|--:|--:|--:|")
    for k in ("tollgate", "pingora", "mock", "nginx_worker", "nginx_master"):
        print(f"| {k} | {mem[k]['startup_vmrss_mib']} MiB | {mem[k]['vmhwm_mib']} MiB "
              f"| {mem[k]['vmrss_mib']} MiB |")
    print()
    print("Per-run req/s @c%d: " % c + "; ".join(
        f"{wl}/{t} " + " ".join(f"{x:,.0f}" for x in summary[wl][t]["rps_runs"])
        for wl in WORKLOADS for t in TARGETS))
    print()
    print("Per-rep paced p99 (µs): " + "; ".join(
        f"{wl}/{t} " + " ".join(f"{x:,}" for x in summary[wl][t]["low_p99_runs"])
        for wl in WORKLOADS for t in TARGETS))
    print()
    print("All reps pooled, paced p99 (µs): " + "; ".join(
        f"{wl}/{t} {summary[wl][t]['low_pooled_p99_us']:,}" for wl in WORKLOADS for t in TARGETS))
    print()
    print("Metering: " + ", ".join(f"{k} = {v:,.0f}" for k, v in metering.items()
                                   if isinstance(v, (int, float))))
    print()
    print("Targets:")
    for wl in WORKLOADS:
        r = ratios[wl]
        for base in BASELINES:
            ok = targets_check[f"throughput_ge_90pct_of_{base}"][wl]
            print(f"- {wl}: tollgate throughput = {r[f'tollgate_over_{base}_rps'] * 100:.1f}% of {base} "
                  f"(target >= 90%): {'PASS' if ok else 'MISS'}")
        for base in BASELINES:
            ok = targets_check[f"added_p99_below_saturation_lt_1ms_vs_{base}"][wl]
            print(f"- {wl}: added p99 below saturation = {r[f'added_low_p99_us_vs_{base}']:+.0f} µs vs "
                  f"{base} (target < 1000 µs): {'PASS' if ok else 'MISS'}")
    ev, resp = metering.get("usage_events_in_db"), metering["tollgate_responses_all_wrk_runs"]
    print(f"- metering: {'unknown' if ev is None else format(ev, ',')} usage events stored for "
          f"{resp:,} responses wrk received from tollgate: "
          f"{'OK' if ev is not None and ev >= resp else 'EVENTS MISSING'}")
    ok = targets_check["rss_lt_64mib"]
    print(f"- tollgate peak RSS = {mem['tollgate']['vmhwm_mib']} MiB (target < 64 MiB): "
          f"{'PASS' if ok else 'MISS'}")
    print()
    print(f"Results: {out_path}")


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "quiet":
        quiet(*sys.argv[2:4])
    elif len(sys.argv) >= 2 and sys.argv[1] == "memory":
        memory(*sys.argv[2:6])
    elif len(sys.argv) >= 2 and sys.argv[1] == "snap":
        snap(*sys.argv[2:7])
    elif len(sys.argv) >= 2 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
