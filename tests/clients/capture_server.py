#!/usr/bin/env python3
"""Capture server: a fake LLM upstream that records what real clients send.

It logs every request (method, path, query, headers with secrets redacted, JSON body) as one
JSON file per request, and answers with a minimal but valid response in the protocol asked
for, so that a client proceeds to its follow-up calls and finishes:

  POST /v1/messages                 Anthropic Messages (SSE when "stream": true)
  POST /v1/messages/count_tokens    {"input_tokens": N}
  POST /v1/responses                OpenAI Responses (SSE typed events when "stream": true)
  POST /v1/chat/completions         OpenAI Chat Completions (SSE chunks when "stream": true)
  GET  /v1/models[/ID]              a model list / one model
  any request with "Upgrade:"       (a WebSocket attempt) logged, answered --upgrade-status (426)
  CONNECT host:port                 logged (a client that honours HTTPS_PROXY shows here the
                                    other hosts it tries), then refused with 403; with --mitm DIR
                                    the tunnel is accepted and TLS is terminated with a certificate
                                    from a CA made in DIR (trust DIR/ca.pem in the client, e.g.
                                    NODE_EXTRA_CA_CERTS / SSL_CERT_FILE), so the requests inside
                                    are logged too (path "https://host/..."), each answered 404
  anything else                     logged, answered 404 with a JSON error

The `/v1` prefix is optional (a base URL without it works too).

Tool calls: when the request offers a tool whose name is in CAPTURE_CALL_TOOLS (comma list,
default "get_weather") and the conversation holds no tool result yet, the answer is a call of
that tool with arguments CAPTURE_TOOL_ARGS (JSON, default {"location": "Paris"}), or, for a
Responses "custom" tool, with input CAPTURE_TOOL_INPUT (text; default: the arguments' JSON);
once a tool result is present, it answers with the canned text (CAPTURE_REPLY, default
"Hello from the capture server.").

Usage:
  capture_server.py [--port 0] [--host 127.0.0.1] [--dir DIR] [--prefix NAME]
                    [--models ID,ID] [--mitm CADIR] [--upgrade-status 426] [-v]
It prints "LISTENING <port>" on stdout once it accepts connections (port 0 = any free port),
and writes DIR/<prefix>-<n>.json for the n-th request (n from 1).
"""
import argparse
import base64
import gzip
import itertools
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REPLY = os.environ.get("CAPTURE_REPLY", "Hello from the capture server.")
CALL_TOOLS = {t for t in os.environ.get("CAPTURE_CALL_TOOLS", "get_weather").split(",") if t}
TOOL_ARGS = json.loads(os.environ.get("CAPTURE_TOOL_ARGS") or '{"location": "Paris"}')
TOOL_INPUT = os.environ.get("CAPTURE_TOOL_INPUT")  # free-form input for a Responses custom tool
SECRET_HEADERS = {
    "authorization", "x-api-key", "api-key", "openai-api-key", "cookie", "set-cookie",
    "proxy-authorization", "x-goog-api-key", "chatgpt-account-id",
}

_counter = itertools.count(1)
_lock = threading.Lock()


def redact(name, value):
    if name.lower() not in SECRET_HEADERS:
        return value
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic"):
        return f"{scheme} <redacted:{len(rest)} chars>"
    return f"<redacted:{len(value)} chars>"


def rid(prefix):
    return prefix + uuid.uuid4().hex[:24]


def count_tokens(body):
    """A rough, deterministic token estimate: 1 per 4 bytes of the JSON request."""
    return max(1, len(json.dumps(body)) // 4)


# ---------------------------------------------------------------- tool decision helpers

def iter_tools(tools, namespace=None):
    """Yields (kind, name, namespace) for each tool, descending into Responses namespaces."""
    for t in tools or []:
        if not isinstance(t, dict):
            continue
        if t.get("type") == "namespace":
            yield from iter_tools(t.get("tools"), t.get("name"))
        elif t.get("name"):
            yield t.get("type") or "function", t["name"], namespace
        elif isinstance(t.get("function"), dict) and t["function"].get("name"):
            yield "function", t["function"]["name"], namespace


def offered_tools(body):
    tools = list(iter_tools(body.get("tools")))
    inp = body.get("input")
    if isinstance(inp, list):  # Codex "responses lite": tools ride in an additional_tools item
        for it in inp:
            if isinstance(it, dict) and it.get("type") == "additional_tools":
                tools += iter_tools(it.get("tools"))
    return tools


def tool_to_call(body, has_tool_result):
    """The (kind, name, namespace) of the tool to call now, or None to answer with text."""
    if has_tool_result:
        return None
    for tool in offered_tools(body):
        if tool[1] in CALL_TOOLS:
            return tool
    return None


def anthropic_has_tool_result(body):
    for m in body.get("messages") or []:
        c = m.get("content")
        if isinstance(c, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in c):
            return True
    return False


def responses_has_tool_result(body):
    inp = body.get("input")
    if isinstance(inp, list):
        for it in inp:
            if isinstance(it, dict) and it.get("type") in (
                "function_call_output", "custom_tool_call_output", "local_shell_call_output",
            ):
                return True
    return bool(body.get("previous_response_id"))


def chat_has_tool_result(body):
    return any(m.get("role") == "tool" for m in body.get("messages") or [])


# ---------------------------------------------------------------- Anthropic Messages

def anthropic_message(body):
    model = body.get("model", "unknown")
    tool = tool_to_call(body, anthropic_has_tool_result(body))
    if tool:
        content = [{"type": "tool_use", "id": rid("toolu_"), "name": tool[1], "input": TOOL_ARGS}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": REPLY}]
        stop = "end_turn"
    return {
        "id": rid("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": count_tokens(body),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 8,
        },
    }


def anthropic_events(msg):
    start = dict(msg, content=[], stop_reason=None)
    start["usage"] = dict(msg["usage"], output_tokens=1)
    yield "message_start", {"type": "message_start", "message": start}
    for i, block in enumerate(msg["content"]):
        if block["type"] == "text":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": {"type": "text", "text": ""}}
            yield "ping", {"type": "ping"}
            text = block["text"]
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "text_delta", "text": piece}}
        else:
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": dict(block, input={})}
            yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": json.dumps(block["input"])}}
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                            "usage": {"output_tokens": msg["usage"]["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


# ---------------------------------------------------------------- OpenAI Responses

def responses_object(body, status, output, usage):
    return {
        "id": body["_resp_id"],
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", "unknown"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def responses_output(body):
    tool = tool_to_call(body, responses_has_tool_result(body))
    if tool:
        kind, name, namespace = tool
        if kind == "custom":
            item = {"id": rid("ctc_"), "type": "custom_tool_call", "status": "completed",
                    "call_id": rid("call_"), "name": name,
                    "input": TOOL_INPUT if TOOL_INPUT is not None else json.dumps(TOOL_ARGS)}
        else:
            item = {"id": rid("fc_"), "type": "function_call", "status": "completed",
                    "arguments": json.dumps(TOOL_ARGS), "call_id": rid("call_"), "name": name}
        if namespace:
            item["namespace"] = namespace
        return [item]
    return [{"id": rid("msg_"), "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": REPLY, "annotations": [], "logprobs": []}]}]


def responses_usage(body):
    n = count_tokens(body)
    return {"input_tokens": n, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": n + 8}


def responses_events(body):
    output = responses_output(body)
    seq = itertools.count(0)

    def ev(kind, **fields):
        return kind, dict({"type": kind, "sequence_number": next(seq)}, **fields)

    yield ev("response.created", response=responses_object(body, "in_progress", [], None))
    yield ev("response.in_progress", response=responses_object(body, "in_progress", [], None))
    for oi, item in enumerate(output):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield ev("response.output_item.added", output_index=oi,
                     item=dict(item, status="in_progress", content=[]))
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield ev("response.content_part.added", item_id=item["id"], output_index=oi,
                     content_index=0, part=empty)
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                yield ev("response.output_text.delta", item_id=item["id"], output_index=oi,
                         content_index=0, delta=piece, logprobs=[])
            yield ev("response.output_text.done", item_id=item["id"], output_index=oi,
                     content_index=0, text=text, logprobs=[])
            yield ev("response.content_part.done", item_id=item["id"], output_index=oi,
                     content_index=0, part=item["content"][0])
        elif item["type"] == "custom_tool_call":
            yield ev("response.output_item.added", output_index=oi,
                     item=dict(item, status="in_progress", input=""))
            yield ev("response.custom_tool_call_input.delta", item_id=item["id"],
                     output_index=oi, delta=item["input"])
            yield ev("response.custom_tool_call_input.done", item_id=item["id"],
                     output_index=oi, input=item["input"])
        else:
            yield ev("response.output_item.added", output_index=oi,
                     item=dict(item, status="in_progress", arguments=""))
            yield ev("response.function_call_arguments.delta", item_id=item["id"],
                     output_index=oi, delta=item["arguments"])
            yield ev("response.function_call_arguments.done", item_id=item["id"],
                     output_index=oi, name=item["name"], arguments=item["arguments"])
        yield ev("response.output_item.done", output_index=oi, item=item)
    yield ev("response.completed",
             response=responses_object(body, "completed", output, responses_usage(body)))


# ---------------------------------------------------------------- OpenAI Chat Completions

def chat_message(body):
    tool = tool_to_call(body, chat_has_tool_result(body))
    if tool:
        msg = {"role": "assistant", "content": None, "tool_calls": [{
            "id": rid("call_"), "type": "function",
            "function": {"name": tool[1], "arguments": json.dumps(TOOL_ARGS)}}]}
        return msg, "tool_calls"
    return {"role": "assistant", "content": REPLY}, "stop"


def chat_completion(body):
    msg, finish = chat_message(body)
    n = count_tokens(body)
    return {"id": rid("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "unknown"),
            "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": n, "completion_tokens": 8, "total_tokens": n + 8}}


def chat_chunks(body):
    full = chat_completion(body)
    msg = full["choices"][0]["message"]
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
            "model": full["model"]}

    def chunk(delta, finish=None, usage=None):
        c = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": None}])
        if usage is not None:
            c["choices"] = []
            c["usage"] = usage
        return c

    yield chunk({"role": "assistant", "content": ""})
    if msg.get("tool_calls"):
        tc = msg["tool_calls"][0]
        yield chunk({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                     "function": {"name": tc["function"]["name"], "arguments": ""}}]})
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": tc["function"]["arguments"]}}]})
    else:
        yield chunk({"content": msg["content"]})
    yield chunk({}, full["choices"][0]["finish_reason"])
    if (body.get("stream_options") or {}).get("include_usage"):
        yield chunk(None, usage=full["usage"])


# ---------------------------------------------------------------- optional TLS interception

class Mitm:
    """A throwaway CA (made with the openssl CLI) and per-host leaf certificates."""

    def __init__(self, d):
        self.dir = d
        self.lock = threading.Lock()
        self.contexts = {}
        os.makedirs(d, exist_ok=True)
        self.ca = os.path.join(d, "ca.pem")
        self.ca_key = os.path.join(d, "ca.key")
        if not os.path.exists(self.ca):
            self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                          "-subj", "/CN=capture-server test CA", "-keyout", self.ca_key,
                          "-out", self.ca, "-addext", "basicConstraints=critical,CA:TRUE",
                          "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    @staticmethod
    def _openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def context(self, host):
        with self.lock:
            if host in self.contexts:
                return self.contexts[host]
            base = os.path.join(self.dir, host.replace("*", "_"))
            ext = base + ".ext"
            with open(ext, "w") as f:
                f.write(f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n")
            self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
                          "-keyout", base + ".key", "-out", base + ".csr")
            self._openssl("x509", "-req", "-in", base + ".csr", "-CA", self.ca, "-CAkey",
                          self.ca_key, "-CAcreateserial", "-days", "30", "-extfile", ext,
                          "-out", base + ".pem")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(base + ".pem", base + ".key")
            ctx.set_alpn_protocols(["http/1.1"])
            self.contexts[host] = ctx
            return ctx


# ---------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "capture/1"
    tunnel_host = None  # set on the handler of requests inside an intercepted CONNECT

    def log_message(self, fmt, *args):  # quiet; the JSON files are the log
        if self.server.verbose:
            sys.stderr.write("capture: " + (fmt % args) + "\n")

    # -- request body
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        enc = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if enc == "gzip":
                data = gzip.decompress(data)
            elif enc == "deflate":
                data = zlib.decompress(data)
            elif enc == "zstd":
                try:
                    import zstandard  # optional
                    data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
                except ImportError:
                    pass
        except Exception:
            pass
        return data

    def record(self, raw):
        n = next(_counter)
        url = urlsplit(self.path)
        entry = {
            "seq": n,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "method": self.command,
            "path": self.path if self.command == "CONNECT" else
                    (f"https://{self.tunnel_host}" if self.tunnel_host else "") + url.path,
            "query": {k: v if len(v) > 1 else v[0] for k, v in parse_qs(url.query).items()},
            "headers": {k: redact(k, v) for k, v in self.headers.items()},
        }
        body = None
        if raw:
            try:
                body = json.loads(raw)
                entry["body"] = body
            except ValueError:
                try:
                    entry["body_text"] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    entry["body_base64"] = base64.b64encode(raw).decode()
        name = os.path.join(self.server.dir, f"{self.server.prefix}-{n}.json")
        with _lock, open(name, "w") as f:
            json.dump(entry, f, indent=2, ensure_ascii=False)
            f.write("\n")
        if self.server.verbose:
            sys.stderr.write(f"capture: #{n} {self.command} {self.path}\n")
        return body if isinstance(body, dict) else {}

    # -- responses
    def send_json(self, status, obj, extra=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_sse(self, events, extra=None, done=False):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

        def chunk(s):
            b = s.encode()
            self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
            self.wfile.flush()

        for name, obj in events:
            chunk((f"event: {name}\n" if name else "") + f"data: {json.dumps(obj)}\n\n")
        if done:
            chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def route(self):
        url = urlsplit(self.path)
        p = url.path.rstrip("/")
        if p.startswith("/v1/") or p == "/v1":
            p = p[3:]
        return p

    def do_CONNECT(self):
        self.record(b"")
        self.close_connection = True
        if not self.server.mitm:
            self.send_json(403, {"error": "capture server: no outside connections"})
            return
        host = self.path.rsplit(":", 1)[0]
        self.send_response(200, "Connection Established")
        self.end_headers()
        self.wfile.flush()
        try:
            tls = self.server.mitm.context(host).wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as e:
            if self.server.verbose:
                sys.stderr.write(f"capture: TLS with client for {host} failed: {e}\n")
            return
        handler = type("TunnelHandler", (Handler,), {"tunnel_host": host})
        try:
            handler(tls, self.client_address, self.server)
        except (ssl.SSLError, OSError):
            pass

    def outside(self):
        """A request that went to another host through an intercepted tunnel: logged, 404."""
        if not self.tunnel_host:
            return False
        self.send_json(404, {"error": "capture server: not the real " + self.tunnel_host})
        return True

    def do_HEAD(self):
        self.record(b"")
        if not self.outside():
            self.send_json(200, {})

    def do_GET(self):
        self.record(b"")
        if self.outside():
            return
        if self.headers.get("Upgrade"):
            self.send_json(self.server.upgrade_status, {"error": {
                "type": "invalid_request_error", "message": "capture server: no websocket here"}})
            return
        p = self.route()
        if p == "/models":
            now = int(time.time())
            models = self.server.models
            self.send_json(200, {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": now, "owned_by": "capture",
                          "type": "model", "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                         for m in models],
                "has_more": False, "first_id": models[0], "last_id": models[-1]})
        elif p.startswith("/models/"):
            m = p[len("/models/"):]
            self.send_json(200, {"id": m, "object": "model", "created": int(time.time()),
                                 "owned_by": "capture", "type": "model", "display_name": m,
                                 "created_at": "2025-01-01T00:00:00Z"})
        elif p in ("", "/health", "/healthz"):
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(404, {"error": {"type": "not_found_error", "message": f"no route {p}"}})

    def do_DELETE(self):
        self.record(self.read_body())
        self.send_json(404, {"error": {"type": "not_found_error", "message": "not here"}})

    do_PUT = do_PATCH = do_DELETE

    def do_POST(self):
        raw = self.read_body()
        body = self.record(raw)
        if self.outside():
            return
        p = self.route()
        if self.headers.get("Upgrade"):
            self.send_json(self.server.upgrade_status, {"error": {
                "type": "invalid_request_error", "message": "capture server: no websocket here"}})
            return
        if p == "/messages":
            msg = anthropic_message(body)
            extra = {"request-id": rid("req_")}
            if body.get("stream"):
                self.send_sse(anthropic_events(msg), extra)
            else:
                self.send_json(200, msg, extra)
        elif p == "/messages/count_tokens":
            self.send_json(200, {"input_tokens": count_tokens(body)})
        elif p == "/responses":
            body["_resp_id"] = rid("resp_")
            extra = {"x-request-id": rid("req_")}
            if body.get("stream"):
                self.send_sse(responses_events(body), extra)
            else:
                out = responses_output(body)
                self.send_json(200, responses_object(body, "completed", out, responses_usage(body)), extra)
        elif p == "/chat/completions":
            if body.get("stream"):
                self.send_sse(((None, c) for c in chat_chunks(body)), done=True)
            else:
                self.send_json(200, chat_completion(body))
        else:
            self.send_json(404, {"error": {"type": "not_found_error", "message": f"no route {p}"}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dir", default="captures")
    ap.add_argument("--prefix", default="req")
    ap.add_argument("--models", default="capture-model",
                    help="comma list of model ids for GET /v1/models")
    ap.add_argument("--mitm", metavar="CADIR",
                    help="intercept CONNECT tunnels with a CA kept in CADIR (see above)")
    ap.add_argument("--upgrade-status", type=int, default=426,
                    help="HTTP status for a WebSocket upgrade request (Codex tries one first "
                         "with its built-in openai provider)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    srv.dir, srv.prefix, srv.verbose = a.dir, a.prefix, a.verbose
    srv.models = [m for m in a.models.split(",") if m]
    srv.mitm = Mitm(a.mitm) if a.mitm else None
    srv.upgrade_status = a.upgrade_status
    print(f"LISTENING {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
