#!/usr/bin/env python3
"""Split a perf profile of tollgate (or the bare Pingora pass-through) into a few buckets.

  perf script -i X.perf.data -F comm,tid,period,ip,sym,dso | bench/profile_split.py [us_per_req]

Every sample goes to the first bucket that matches, in this order:
  by thread:   "BG recorder" (SQLite), "log-flusher", any other thread but the gateway workers;
  kernel:      a sample whose leaf is in the kernel, by syscall (a send on loopback includes the
               peer's TCP receive path, run in our softirq, and its wake-up), page faults or other,
               whoever made the call;
  then by the outermost gateway frame on the stack: the tracing subscriber (the per-request JSON
  log line), then the Gateway hook (`<tollgate::proxy::Gateway as ProxyHttp>::<hook>`);
  the rest:    Pingora's HTTP/1 and tokio in user space (parsing, buffers, scheduling, alloc).
With `us_per_req` (the benchmark's CPU µs per request for the same target and workload) each
share is also shown in µs per request.
"""

import re
import sys
from collections import Counter

HOOK = re.compile(r"Gateway as pingora_proxy::proxy_trait::ProxyHttp>::(\w+)")
SYSCALL = re.compile(r"__(?:x64|do)_sys_(\w+)")
SYSCALL_ALIASES = {
    "sendto": "send (incl. the loopback peer's TCP receive + wake-up)",
    "writev": "send (incl. the loopback peer's TCP receive + wake-up)",
    "write": "send (incl. the loopback peer's TCP receive + wake-up)",
    "recvfrom": "recv", "read": "recv", "readv": "recv",
}
HOOK_NAMES = {
    "request_filter": "gateway request_filter (auth, body read + JSON parse, limits, credit hold)",
    "upstream_peer": "gateway upstream_peer / upstream_request_filter (route, rewrite, headers)",
    "upstream_request_filter": "gateway upstream_peer / upstream_request_filter (route, rewrite, headers)",
    "logging": "gateway logging hook (usage from the response, settlement, metrics)",
    "upstream_response_filter": "gateway response hooks (headers, body capture, SSE meter)",
    "response_filter": "gateway response hooks (headers, body capture, SSE meter)",
    "upstream_response_body_filter": "gateway response hooks (headers, body capture, SSE meter)",
    "response_body_filter": "gateway response hooks (headers, body capture, SSE meter)",
}


def samples(lines):
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head, frames
            head, frames = None, []
        elif line.startswith((" ", "\t")):
            frames.append(line.strip())
        else:
            head, frames = line, []
    if head is not None:
        yield head, frames


def bucket(head, frames):
    # head: "<comm> <tid> <period>"; comm may contain spaces
    comm = head.rsplit(None, 2)[0].strip()
    if comm.startswith("BG recorder"):
        return "recorder thread (charges + usage records, SQLite)"
    if comm.startswith("log-flusher"):
        return "log-flusher thread (writes the buffered log)"
    if not (comm.startswith("tollgate gatew") or comm.startswith("Pingora HTTP")):
        return f"other threads ({comm})" if comm in ("Timer thread",) else "other threads"
    if frames and "kernel" in frames[0].rsplit("(", 1)[-1]:
        for f in frames:
            m = SYSCALL.search(f)
            if m:
                name = SYSCALL_ALIASES.get(m.group(1), m.group(1))
                return f"kernel: {name}"
            if "exc_page_fault" in f:
                return "kernel: page faults"
        return "kernel: other (interrupts, scheduling)"
    # frames are leaf first; look from the root down for the outermost tollgate frame
    for f in reversed(frames):
        if "tracing_subscriber" in f or "tracing_core" in f or "logbuf" in f:
            return "per-request log line (tracing JSON, log buffer)"
    for f in reversed(frames):
        m = HOOK.search(f)
        if m:
            return HOOK_NAMES.get(m.group(1), f"gateway {m.group(1)} hook")
    for f in frames:
        # the Draining wrapper (src/server.rs) is the root of every Pingora stack: not ours
        if "tollgate::" in f and "tollgate::server::Draining" not in f:
            return "other tollgate code"
    return "Pingora HTTP/1 + tokio, user space (parse, buffers, scheduling, alloc)"


def main():
    us = float(sys.argv[1]) if len(sys.argv) > 1 else None
    c = Counter()
    for head, frames in samples(sys.stdin):
        try:
            period = int(head.split()[-1])
        except ValueError:
            period = 1
        c[bucket(head, frames)] += period
    total = sum(c.values()) or 1
    for name, v in c.most_common():
        share = v / total
        extra = f"  {share * us:6.1f} µs/req" if us else ""
        print(f"{share * 100:5.1f}%{extra}  {name}")


if __name__ == "__main__":
    main()
