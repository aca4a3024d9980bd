#!/usr/bin/env python3
"""Reproduce: clients that hang up before the response header eject a healthy upstream.

Starts the mock vendor and tollgate (default breaker: 5 consecutive failures, 30 s open) on free
loopback ports, creates a key through the admin API, then:
  1. makes the mock answer the next N requests after a 300 ms delay (POST /_mock/push),
  2. sends N requests through the gateway and hangs up each after 50 ms (the client is gone,
     the upstream is healthy and still working on the answer),
  3. sends one normal request.
Expected: 200 (the upstream is healthy; only the clients went away). Exit status 0 then.
Observed before 30f18a4 (exit status 1): 503 no_upstream_available for the next 30 s. The gateway logs each hang-up as
"Fail to proxy: Downstream ConnectionClosed ... retry: true", records it as a 502 with an upstream
failure, and after 5 of them opens the circuit breaker of the (healthy) upstream.

  python3 bench/repro_client_disconnect.py [N]      (N defaults to 6; needs target/release/tollgate)
"""
import http.client, json, os, secrets, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tollgate")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 6
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hello"}]})


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def req(port, method, path, body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def wait(port, path):
    for _ in range(300):
        try:
            if req(port, "GET", path, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"port {port} did not come up")


def main():
    mock_port, gw_port, admin_port = free_ports(3)
    tmp = tempfile.mkdtemp(prefix="tollgate-repro-")
    template = open(os.path.join(ROOT, "bench", "tollgate.toml.in")).read()
    conf = (template.replace("@DIR@", tmp).replace("@PORT@", str(gw_port))
            .replace("@ADMIN_PORT@", str(admin_port)).replace("@MOCK_PORT@", str(mock_port))
            .replace("@THREADS@", "1").replace("@BREAKER_THRESHOLD@", "5"))  # 5 = default
    open(os.path.join(tmp, "tollgate.toml"), "w").write(conf)
    env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=secrets.token_hex(16), BENCH_UPSTREAM_KEY="k")
    procs = []
    try:
        procs.append(subprocess.Popen([BIN, "mock-vendor", "--listen", f"127.0.0.1:{mock_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(mock_port, "/_mock/stats")
        log = open(os.path.join(tmp, "tollgate.log"), "w")
        procs.append(subprocess.Popen([BIN, "run", "--config", os.path.join(tmp, "tollgate.toml")],
                                      env=env, stdout=subprocess.DEVNULL, stderr=log))
        wait(admin_port, "/readyz")
        auth = {"Authorization": "Bearer " + env["TOLLGATE_ADMIN_TOKEN"], "Content-Type": "application/json"}
        req(admin_port, "POST", "/admin/tenants", json.dumps({"name": "t"}), auth)
        # billing: give the tenant credit (404 on builds without billing, which is fine)
        req(admin_port, "POST", "/admin/tenants/t/topups", json.dumps({"amount_rmb": "1000"}), auth)
        _, k = req(admin_port, "POST", "/admin/keys",
                   json.dumps({"tenant": "t", "name": "k", "default_channel": "bench"}), auth)
        key = json.loads(k)["key"]
        hdr = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}

        status, _ = req(gw_port, "POST", "/v1/chat/completions", BODY, hdr)
        print(f"before: normal request -> {status}")
        for _ in range(N):
            req(mock_port, "POST", "/_mock/push", json.dumps({"kind": "delay", "ms": 300}))
        before = json.loads(req(mock_port, "GET", "/_mock/stats")[1])["chat_requests"]
        for i in range(N):  # one at a time: each is a separate client that gives up after 50 ms
            try:
                req(gw_port, "POST", "/v1/chat/completions", BODY, hdr, timeout=0.05)
            except (socket.timeout, TimeoutError):
                pass
        time.sleep(1.5)
        after = json.loads(req(mock_port, "GET", "/_mock/stats")[1])["chat_requests"]
        print(f"{N} clients hung up before the header; the mock received {after - before} chat requests for them")
        m = req(admin_port, "GET", "/metrics")[1].decode()
        print("metrics: " + "; ".join(l for l in m.splitlines()
                                      if l.startswith(("tollgate_breaker_opened", "tollgate_upstream_attempts"))))
        status, data = req(gw_port, "POST", "/v1/chat/completions", BODY, hdr)
        print(f"after: normal request -> {status} {data.decode()[:160]}")
        log.flush()
        lines = [l for l in open(os.path.join(tmp, "tollgate.log"))
                 if "circuit breaker" in l or "Downstream ConnectionClosed" in l]
        print(f"gateway log ({len(lines)} relevant lines):")
        for l in lines[:8]:
            print("  " + l.strip()[:260])
        sys.exit(0 if status == 200 else 1)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
