#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::openai::{count_tokens, prompt_text, reply_pieces, FILLER};
use super::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    /// De-chunked body.
    body: Vec<u8>,
    /// Raw chunk payloads as framed by the server (chunked responses only).
    frames: Vec<Vec<u8>>,
    /// False when the connection ended before the body was complete.
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(h: &MockHandle) -> Client {
        Client {
            stream: TcpStream::connect(h.addr()).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Reads more; returns false on EOF.
    async fn fill(&mut self) -> bool {
        let mut tmp = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut tmp))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn read_response(&mut self) -> Resp {
        let (status, headers, used) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).to_string(),
                        )
                    })
                    .collect();
                break (r.code.unwrap(), headers, n);
            }
            assert!(self.fill().await, "EOF before response head");
        };
        self.buf.drain(..used);
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            frames: Vec::new(),
            complete: true,
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let (consumed, size) = loop {
                    if let Ok(httparse::Status::Complete(v)) = httparse::parse_chunk_size(&self.buf)
                    {
                        break v;
                    }
                    if !self.fill().await {
                        resp.complete = false;
                        return resp;
                    }
                };
                let size = size as usize;
                while self.buf.len() < consumed + size + 2 {
                    if !self.fill().await {
                        resp.complete = false;
                        return resp;
                    }
                }
                self.buf.drain(..consumed);
                let data: Vec<u8> = self.buf.drain(..size + 2).take(size).collect();
                if size == 0 {
                    return resp;
                }
                resp.body.extend_from_slice(&data);
                resp.frames.push(data);
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                if !self.fill().await {
                    resp.complete = false;
                    resp.body = std::mem::take(&mut self.buf);
                    return resp;
                }
            }
            resp.body = self.buf.drain(..len).collect();
        }
        resp
    }

    async fn request(&mut self, raw: &[u8]) -> Resp {
        self.send(raw).await;
        self.read_response().await
    }

    /// True when the server has closed the connection (EOF with no further bytes).
    async fn is_closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

fn post(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn chat(body: &Value) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        body.to_string().as_bytes(),
        "Authorization: Bearer sk-test\r\n",
    )
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: mock\r\n\r\n").into_bytes()
}

async fn start() -> MockHandle {
    MockVendor::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn one_shot(h: &MockHandle, raw: &[u8]) -> Resp {
    let mut c = Client::connect(h).await;
    c.request(raw).await
}

/// Splits an SSE body into the `data:` payloads, asserting the exact framing.
fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line"
    );
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|ev| {
            ev.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {ev:?}"))
                .to_string()
        })
        .collect()
}

fn o200k(s: &str) -> u64 {
    crate::protocol::tokens::o200k().count(s) as u64
}

fn msgs() -> Value {
    json!([
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Hello there, "}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "how are you?"}]},
    ])
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[test]
fn filler_words_are_single_tokens_and_replies_have_exact_length() {
    for w in FILLER {
        assert_eq!(o200k(w), 1, "{w:?}");
    }
    let users = [
        "",
        "Hello there, how are you?",
        "   trailing spaces   ",
        "ünïcödé only ☃☃☃ and emoji 🎉 mixed with text",
        "12345678901234567890123456789012345678901234567890",
        "a\"quote\\backslash\n\nnewlines\ttabs",
        "!!!???...,,,;;;",
    ];
    for user in users {
        for n in (1..=60).chain([100, 257, 4096]) {
            let pieces = reply_pieces(user, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(o200k(&pieces.concat()) as usize, n, "user={user:?} n={n}");
        }
    }
    let text = reply_pieces("What is the capital of France?", 24).concat();
    assert!(
        text.starts_with("This is a mock reply to: What is the capital of France?"),
        "{text}"
    );
}

#[test]
fn prompt_rule_and_large_text_rule() {
    let m = msgs();
    let text = prompt_text(m.as_array().unwrap());
    assert_eq!(text, "You are a terse assistant.Hello there, how are you?");
    assert_eq!(count_tokens(&text), o200k(&text));
    let big = "a".repeat(EXACT_COUNT_LIMIT + 3);
    assert_eq!(
        count_tokens(&big),
        (EXACT_COUNT_LIMIT as u64 + 3).div_ceil(4)
    );
}

// ---------------------------------------------------------------------------------------------
// Chat, non-stream

#[tokio::test]
async fn non_stream_round_trip_with_exact_usage() {
    let h = start().await;
    h.set_cached_tokens(5);
    let expected_prompt = o200k("You are a terse assistant.Hello there, how are you?");
    let r = one_shot(&h, &chat(&json!({"model": "gpt-x", "messages": msgs()}))).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-x");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("This is a mock reply to: Hello there, how are you?"));
    assert_eq!(o200k(content), 24);
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], expected_prompt);
    assert_eq!(u["completion_tokens"], 24);
    assert_eq!(u["total_tokens"], expected_prompt + 24);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 0);

    // max_completion_tokens wins over max_tokens and gives finish_reason "length".
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "max_tokens": 99, "max_completion_tokens": 7})),
    )
    .await;
    let v = r.json();
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        o200k(v["choices"][0]["message"]["content"].as_str().unwrap()),
        7
    );

    let s = h.stats();
    assert_eq!(s.requests, 2);
    assert_eq!(s.chat_requests, 2);
    assert_eq!(s.completed, 2);
    assert_eq!(s.prompt_tokens, 2 * expected_prompt);
    assert_eq!(s.completion_tokens, 31);
    assert_eq!(s.cached_tokens, 10);
    assert_eq!(s.last_request_body.unwrap()["max_completion_tokens"], 7);
    assert!(s
        .last_request_headers
        .contains(&("authorization".to_string(), "Bearer sk-test".to_string())));
}

#[tokio::test]
async fn invalid_requests_get_openai_400() {
    let h = start().await;
    for body in [
        &b"{not json"[..],
        br#"{"messages":[{"role":"user","content":"x"}]}"#,
        br#"{"model":"m"}"#,
        br#"{"model":"m","messages":[]}"#,
    ] {
        let r = one_shot(&h, &post("/v1/chat/completions", body, "")).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        let v = r.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].is_string());
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["code"].is_null());
    }
    assert_eq!(h.stats().completed, 0);
}

#[tokio::test]
async fn no_usage_behavior_omits_usage() {
    let h = start().await;
    h.push_behavior(Behavior::NoUsage);
    let v = one_shot(&h, &chat(&json!({"model": "m", "messages": msgs()})))
        .await
        .json();
    assert!(v.get("usage").is_none());
    h.push_behavior(Behavior::NoUsage);
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    let events = sse_events(&r.text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(c["usage"].is_null());
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(h.stats().completed, 2);
    assert_eq!(h.stats().completion_tokens, 48);
}

// ---------------------------------------------------------------------------------------------
// Chat, stream

/// Parses and checks a text stream; returns (content, parsed chunks excluding [DONE]).
/// `n_tokens` given explicitly via max_tokens means finish_reason "length", 24 means "stop".
fn check_text_stream(r: &Resp, include_usage: bool, n_tokens: usize) -> (String, Vec<Value>) {
    let finish = if n_tokens == 24 { "stop" } else { "length" };
    assert_eq!(r.status, 200);
    assert!(r.complete, "stream must end with the chunked terminator");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&r.text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let expected = 1 + n_tokens + 1 + usize::from(include_usage);
    assert_eq!(chunks.len(), expected);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
        assert_eq!(c["id"], chunks[0]["id"]);
        assert!(c["created"].is_u64());
        assert_eq!(c["model"], "m");
        assert_eq!(c.get("usage").is_some(), include_usage);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let mut content = String::new();
    for c in &chunks[1..=n_tokens] {
        let piece = c["choices"][0]["delta"]["content"].as_str().unwrap();
        assert_eq!(o200k(piece), 1, "one token per chunk: {piece:?}");
        assert!(c["choices"][0]["finish_reason"].is_null());
        content.push_str(piece);
    }
    let fin = &chunks[n_tokens + 1];
    assert_eq!(fin["choices"][0]["delta"], json!({}));
    assert_eq!(fin["choices"][0]["finish_reason"], finish);
    if include_usage {
        for c in &chunks[..=n_tokens + 1] {
            assert!(c["usage"].is_null());
        }
    }
    assert_eq!(o200k(&content) as usize, n_tokens);
    (content, chunks)
}

#[tokio::test]
async fn stream_without_usage() {
    let h = start().await;
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "stream": true})),
    )
    .await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let (content, _) = check_text_stream(&r, false, 24);
    assert!(content.starts_with("This is a mock reply to: Hello there"));
    let s = h.stats();
    assert_eq!((s.completed, s.completion_tokens), (1, 24));
}

#[tokio::test]
async fn stream_with_usage() {
    let h = start().await;
    let prompt = o200k("You are a terse assistant.Hello there, how are you?");
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    let (_, chunks) = check_text_stream(&r, true, 24);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], prompt);
    assert_eq!(last["usage"]["completion_tokens"], 24);
    assert_eq!(last["usage"]["total_tokens"], prompt + 24);
    // include_usage false explicitly: no usage anywhere.
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "stream": true, "max_tokens": 3, "stream_options": {"include_usage": false}})),
    )
    .await;
    check_text_stream(&r, false, 3);
}

#[tokio::test]
async fn tool_call_streaming_and_non_stream() {
    let h = start().await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other"}}
    ]);
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "stream": true, "tools": tools,
            "messages": [{"role": "user", "content": "What's the Weather in Paris?"}]})),
    )
    .await;
    assert!(r.complete);
    let events = sse_events(&r.text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    let call = &first["tool_calls"][0];
    assert_eq!(call["index"], 0);
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "");
    let frags: Vec<&str> = chunks[1..chunks.len() - 1]
        .iter()
        .map(|c| {
            let tc = &c["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(tc["index"], 0);
            assert!(tc.get("id").is_none());
            tc["function"]["arguments"].as_str().unwrap()
        })
        .collect();
    assert!(frags.len() >= 3, "arguments split across chunks: {frags:?}");
    assert_eq!(frags.concat(), r#"{"location":"Paris"}"#);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(h.stats().completion_tokens, frags.len() as u64);

    // Non-stream with tool_choice naming a function.
    let v = one_shot(
        &h,
        &chat(&json!({"model": "m", "tools": tools, "tool_choice": {"type": "function", "function": {"name": "other"}},
            "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
    .json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(msg["content"].is_null());
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "other");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        r#"{"location":"Paris"}"#
    );
    // tool_choice "none" and no trigger word: plain text.
    for choice in [json!("none"), json!("auto")] {
        let v = one_shot(
            &h,
            &chat(&json!({"model": "m", "tools": tools, "tool_choice": choice,
                "messages": [{"role": "user", "content": if choice == "none" {"weather?"} else {"hi"}}]})),
        )
        .await
        .json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"]["content"].is_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviours

#[tokio::test]
async fn status_behavior_with_retry_after_keeps_connection() {
    let h = start().await;
    h.set_behavior(Behavior::Status {
        code: 429,
        retry_after: Some(7),
    });
    let mut c = Client::connect(&h).await;
    let r = c
        .request(&chat(&json!({"model": "m", "messages": msgs()})))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());
    // Default persists; without retry_after there is no header.
    h.set_behavior(Behavior::Status {
        code: 503,
        retry_after: None,
    });
    let r = c
        .request(&chat(&json!({"model": "m", "messages": msgs()})))
        .await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_none());
    assert_eq!(r.json()["error"]["type"], "server_error");
    let s = h.stats();
    assert_eq!((s.requests, s.completed, s.prompt_tokens), (2, 0, 0));
}

#[tokio::test]
async fn close_immediately_reads_then_closes() {
    let h = start().await;
    h.push_behavior(Behavior::CloseImmediately);
    let mut c = Client::connect(&h).await;
    c.send(&chat(&json!({"model": "m", "messages": msgs()})))
        .await;
    assert!(c.is_closed().await, "no byte must be answered");
    let s = h.stats();
    assert_eq!((s.requests, s.chat_requests, s.completed), (1, 1, 0));
    assert!(s.last_request_body.is_some(), "request was read");
}

#[tokio::test]
async fn cut_stream_after_n_chunks() {
    let h = start().await;
    h.push_behavior(Behavior::CutStreamAfter { chunks: 3 });
    let prompt = o200k("You are a terse assistant.Hello there, how are you?");
    let mut c = Client::connect(&h).await;
    let r = c
        .request(&chat(&json!({"model": "m", "messages": msgs(), "stream": true, "stream_options": {"include_usage": true}})))
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "no chunked terminator");
    let body = r.text();
    assert!(!body.contains("[DONE]"));
    let events = sse_events(&body);
    assert_eq!(events.len(), 4, "role chunk + 3 content chunks");
    for e in &events[1..] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v["choices"][0]["delta"]["content"].is_string());
    }
    let s = h.stats();
    assert_eq!(s.completion_tokens, 3);
    assert_eq!(s.prompt_tokens, prompt);
    assert_eq!(s.completed, 0);

    // Non-stream: truncated body then close.
    h.push_behavior(Behavior::CutStreamAfter { chunks: 3 });
    let r = one_shot(&h, &chat(&json!({"model": "m", "messages": msgs()}))).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
}

#[tokio::test]
async fn push_behavior_is_one_shot_fifo() {
    let h = start().await;
    h.push_behavior(Behavior::Status {
        code: 500,
        retry_after: None,
    });
    h.push_behavior(Behavior::Status {
        code: 502,
        retry_after: None,
    });
    let mut c = Client::connect(&h).await;
    let req = chat(&json!({"model": "m", "messages": msgs()}));
    assert_eq!(c.request(&req).await.status, 500);
    assert_eq!(c.request(&req).await.status, 502);
    assert_eq!(c.request(&req).await.status, 200);
    assert_eq!(c.request(&req).await.status, 200);
}

#[tokio::test]
async fn delay_and_slow_chunks() {
    let h = start().await;
    h.push_behavior(Behavior::Delay { ms: 150 });
    let t = std::time::Instant::now();
    let r = one_shot(&h, &chat(&json!({"model": "m", "messages": msgs()}))).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    h.push_behavior(Behavior::SlowChunks { ms: 20 });
    let t = std::time::Instant::now();
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "stream": true, "max_tokens": 4})),
    )
    .await;
    // role + 4 content + finish + [DONE] = 7 events, 6 pauses.
    assert!(t.elapsed() >= Duration::from_millis(120));
    check_text_stream(&r, false, 4);
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

#[tokio::test]
async fn keep_alive_two_requests_then_connection_close() {
    let h = start().await;
    let mut c = Client::connect(&h).await;
    let r1 = c
        .request(&chat(&json!({"model": "m", "messages": msgs()})))
        .await;
    assert_eq!(r1.header("connection"), Some("keep-alive"));
    let r2 = c
        .request(&chat(
            &json!({"model": "m", "messages": msgs(), "stream": true}),
        ))
        .await;
    assert_eq!((r1.status, r2.status), (200, 200));
    check_text_stream(&r2, false, 24);
    let r3 = c
        .request(&post(
            "/v1/chat/completions",
            json!({"model": "m", "messages": msgs()})
                .to_string()
                .as_bytes(),
            "Connection: close\r\n",
        ))
        .await;
    assert_eq!(r3.status, 200);
    assert_eq!(r3.header("connection"), Some("close"));
    assert!(c.is_closed().await);
    assert_eq!(h.stats().completed, 3);
}

#[tokio::test]
async fn chunked_request_body_is_decoded() {
    let h = start().await;
    let body = json!({"model": "chunky", "messages": msgs()}).to_string();
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: yes\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut c = Client::connect(&h).await;
    // Send in small pieces to exercise partial parsing.
    for piece in raw.as_bytes().chunks(7) {
        c.send(piece).await;
        tokio::task::yield_now().await;
    }
    let r = c.read_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "chunky");
    let expected: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h.stats().last_request_body, Some(expected));
    // Connection still usable after the trailer.
    let r = c
        .request(&chat(&json!({"model": "m", "messages": msgs()})))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn expect_100_continue() {
    let h = start().await;
    let body = json!({"model": "m", "messages": msgs()}).to_string();
    let mut c = Client::connect(&h).await;
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    while c.buf.len() < interim.len() {
        assert!(c.fill().await);
    }
    assert_eq!(&c.buf[..interim.len()], interim);
    c.buf.drain(..interim.len());
    c.send(body.as_bytes()).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "chat.completion");
}

#[tokio::test]
async fn body_of_32_mib_is_accepted_and_over_64_mib_rejected() {
    let h = start().await;
    let filler = "lorem ipsum ".repeat((32 << 20) / 12);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": filler}]}).to_string();
    assert!(body.len() >= 32 << 20);
    let r = one_shot(&h, &post("/v1/chat/completions", body.as_bytes(), "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["usage"]["prompt_tokens"],
        (filler.len() as u64).div_ceil(4)
    );

    let mut c = Client::connect(&h).await;
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nContent-Length: 67108865\r\n\r\n")
        .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 413);
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn fragmented_writes_reassemble_to_valid_sse() {
    let h = start().await;
    h.set_fragmented_writes(true);
    let r = one_shot(
        &h,
        &chat(&json!({"model": "m", "messages": msgs(), "stream": true, "max_tokens": 6, "stream_options": {"include_usage": true}})),
    )
    .await;
    // Every event was split into 3 HTTP chunks, none of which is a whole event.
    let events = 1 + 6 + 1 + 1 + 1;
    assert_eq!(r.frames.len(), events * 3);
    assert!(r
        .frames
        .iter()
        .all(|f| !f.starts_with(b"data: ") || !f.ends_with(b"\n\n")));
    assert!(r.frames.iter().any(|f| f == b"da"));
    assert!(r.frames.iter().any(|f| f == b"\n"));
    let (_, chunks) = check_text_stream(&r, true, 6);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);

    // Non-stream body also arrives intact.
    let r = one_shot(&h, &chat(&json!({"model": "m", "messages": msgs()}))).await;
    assert_eq!(r.json()["usage"]["completion_tokens"], 24);
}

#[tokio::test]
async fn garbage_gets_400_and_close() {
    let h = start().await;
    let mut c = Client::connect(&h).await;
    let r = c.request(b"\x00\x01GARBAGE \xff\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(c.is_closed().await);
    // Bad chunk size.
    let mut c = Client::connect(&h).await;
    let r = c
        .request(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    assert_eq!(r.status, 400);
    assert!(c.is_closed().await);
    // The server is still alive.
    assert_eq!(one_shot(&h, &get("/v1/models")).await.status, 200);
}

#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let h = start().await;
    let r = one_shot(&h, &get("/v1/nope")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = one_shot(&h, &get("/v1/chat/completions")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(h.stats().requests, 2);
    assert_eq!(h.stats().chat_requests, 0);
    // Absolute-form target and query string are reduced to the path.
    let r = one_shot(
        &h,
        b"GET http://mock/v1/models?limit=1 HTTP/1.1\r\nHost: mock\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
}

#[tokio::test]
async fn required_key() {
    let h = start().await;
    h.require_key(Some("sk-right-key-123".into()));
    h.push_behavior(Behavior::Status {
        code: 500,
        retry_after: None,
    });
    let body = json!({"model": "m", "messages": msgs()}).to_string();
    for auth in ["", "Authorization: Bearer sk-wrong-key-999\r\n"] {
        let r = one_shot(&h, &post("/v1/chat/completions", body.as_bytes(), auth)).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    let ok = "Authorization: Bearer sk-right-key-123\r\n";
    // The pushed behaviour was not consumed by the 401s.
    let r = one_shot(&h, &post("/v1/chat/completions", body.as_bytes(), ok)).await;
    assert_eq!(r.status, 500);
    let r = one_shot(&h, &post("/v1/chat/completions", body.as_bytes(), ok)).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn embeddings_usage_and_vectors() {
    let h = start().await;
    let req = json!({"model": "text-embedding-3-small", "input": ["hello world", "foo bar baz", "hello world"]});
    let r = one_shot(&h, &post("/v1/embeddings", req.to_string().as_bytes(), "")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    let n = o200k("hello world") * 2 + o200k("foo bar baz");
    assert_eq!(v["usage"], json!({"prompt_tokens": n, "total_tokens": n}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
    }
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    let req = json!({"model": "e", "input": [[1, 2, 3], [4]], "encoding_format": "base64", "dimensions": 4});
    let v = one_shot(&h, &post("/v1/embeddings", req.to_string().as_bytes(), ""))
        .await
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 24); // 16 bytes

    let s = h.stats();
    assert_eq!(s.embedding_requests, 2);
    assert_eq!(s.prompt_tokens, n + 4);
    assert_eq!(s.completed, 2);
    let r = one_shot(&h, &post("/v1/embeddings", br#"{"model":"e"}"#, "")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn models_and_control_plane() {
    let h = start().await;
    h.set_models(vec!["gpt-4o".into(), "mock-small".into()]);
    let v = one_shot(&h, &get("/v1/models")).await.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-small", "mock-large", "gpt-4o"]);
    assert_eq!(one_shot(&h, &get("/v1/models/gpt-4o")).await.status, 200);
    assert_eq!(one_shot(&h, &get("/v1/models/nope")).await.status, 404);

    let mut c = Client::connect(&h).await;
    let push = post(
        "/_mock/push",
        br#"{"kind":"status","code":418,"retry_after":3}"#,
        "",
    );
    assert_eq!(c.request(&push).await.status, 200);
    let req = chat(&json!({"model": "m", "messages": msgs()}));
    let r = c.request(&req).await;
    assert_eq!((r.status, r.header("retry-after")), (418, Some("3")));
    let set = post("/_mock/behavior", br#"{"kind":"no_usage"}"#, "");
    assert_eq!(c.request(&set).await.status, 200);
    assert!(c.request(&req).await.json().get("usage").is_none());
    let bad = post("/_mock/behavior", br#"{"kind":"nope"}"#, "");
    assert_eq!(c.request(&bad).await.status, 400);

    let stats: MockStats =
        serde_json::from_value(c.request(&get("/_mock/stats")).await.json()).unwrap();
    assert_eq!(stats, h.stats());
    assert_eq!(stats.requests, 5, "control requests are not counted");
    assert_eq!(stats.completed, 1);

    assert_eq!(c.request(&post("/_mock/reset", b"", "")).await.status, 200);
    assert_eq!(h.stats(), MockStats::default());
    let r = c.request(&req).await;
    assert!(r.json().get("usage").is_some(), "reset restores Normal");
}

#[tokio::test]
async fn shutdown_closes_listener_and_connections() {
    let h = start().await;
    let mut c = Client::connect(&h).await;
    assert_eq!(c.request(&get("/v1/models")).await.status, 200);
    h.shutdown();
    h.wait_shutdown().await;
    assert!(c.is_closed().await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(h.addr()).await.is_err());
}

#[test]
fn behavior_json_shape() {
    let b: Behavior = serde_json::from_str(r#"{"kind":"cut_stream_after","chunks":2}"#).unwrap();
    assert_eq!(b, Behavior::CutStreamAfter { chunks: 2 });
    assert_eq!(
        serde_json::to_value(Behavior::Delay { ms: 5 }).unwrap(),
        json!({"kind": "delay", "ms": 5})
    );
}

// ---------------------------------------------------------------------------------------------
// Anthropic and Gemini sides

fn messages_req(body: &Value, key: &str) -> Vec<u8> {
    post(
        "/v1/messages",
        body.to_string().as_bytes(),
        &format!("x-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n"),
    )
}

fn gemini_req(model: &str, stream: bool, body: &Value, key: &str) -> Vec<u8> {
    let path = if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse&key={key}")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    };
    post(
        &path,
        body.to_string().as_bytes(),
        &format!("x-goog-api-key: {key}\r\n"),
    )
}

/// Runs a streamed body through the gateway's own reader and returns its view.
fn read_stream(
    d: crate::protocol::Dialect,
    body: &[u8],
) -> crate::protocol::translate::StreamTranslator {
    use crate::protocol::translate::{Names, StreamTranslator};
    let mut t = StreamTranslator::new(
        d,
        d,
        Names {
            id: "x".into(),
            model: "m".into(),
            created: 0,
            ..Default::default()
        },
        false,
    );
    let mut out = bytes::BytesMut::new();
    t.on_chunk(body, &mut out);
    t.finish(&mut out);
    assert_eq!(&out[..], body, "pass-through must be byte-exact");
    t
}

#[tokio::test]
async fn anthropic_messages_json_stream_tools_and_usage() {
    let h = start().await;
    h.require_key(Some("ak".into()));
    h.set_cached_tokens(2);
    h.set_cache_write_tokens(1);
    let body = json!({"model": "claude-x", "max_tokens": 5, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]});
    let r = one_shot(&h, &messages_req(&body, "ak")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let prompt = o200k("Be brief.Hello there");
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["input_tokens"], prompt - 3);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 1);
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert!(v["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("This is a mock reply"));
    let s = h.stats();
    assert_eq!(
        (
            s.messages_requests,
            s.prompt_tokens,
            s.cached_tokens,
            s.cache_write_tokens,
            s.completion_tokens
        ),
        (1, prompt, 2, 1, 5)
    );

    // Streamed, with thinking and a tool call.
    let body = json!({"model": "claude-x", "max_tokens": 100, "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "weather in Paris?"}]});
    h.set_fragmented_writes(true);
    let r = one_shot(&h, &messages_req(&body, "ak")).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.contains("event: ping\n"));
    assert!(text.contains("\"signature_delta\""));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    let t = read_stream(crate::protocol::Dialect::Anthropic, &r.body);
    assert!(t.saw_done());
    assert_eq!(t.stop(), Some(crate::protocol::translate::Stop::ToolUse));
    let u = t.usage().unwrap();
    assert_eq!(u.completion_tokens, 4 + 5, "thinking + tool arguments");
    let s = h.stats();
    assert_eq!(s.completion_tokens, 5 + 9);
    assert!(t.produced_text().contains("{\"location\":\"Paris\"}"));

    // Errors in Anthropic's shape, 529 overloaded, and auth.
    h.push_behavior(Behavior::Status {
        code: 529,
        retry_after: None,
    });
    let r = one_shot(&h, &messages_req(&body, "ak")).await;
    assert_eq!(r.status, 529);
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let r = one_shot(&h, &messages_req(&body, "wrong")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = one_shot(&h, &post("/v1/messages", b"{}", "x-api-key: ak\r\n")).await;
    assert_eq!(r.status, 400, "anthropic-version is required");
}

#[tokio::test]
async fn anthropic_cut_stream_records_what_was_sent() {
    let h = start().await;
    h.push_behavior(Behavior::CutStreamAfter { chunks: 3 });
    let body = json!({"model": "c", "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": "Hello"}]});
    let r = one_shot(&h, &messages_req(&body, "k")).await;
    assert!(!r.text().contains("message_stop"));
    assert_eq!(r.text().matches("text_delta").count(), 3);
    assert_eq!(h.stats().completion_tokens, 3);
    assert_eq!(h.stats().completed, 0);
}

#[tokio::test]
async fn gemini_generate_and_stream_with_usage_calls_and_thoughts() {
    let h = start().await;
    h.require_key(Some("gk".into()));
    h.set_cached_tokens(1);
    let body = json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
        "generationConfig": {"maxOutputTokens": 6, "thinkingConfig": {"thinkingBudget": 100, "includeThoughts": true}}});
    let r = one_shot(&h, &gemini_req("gemini-x", false, &body, "gk")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let prompt = o200k("Be brief.Hello there");
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["thought"], true);
    assert_eq!(v["usageMetadata"]["promptTokenCount"], prompt);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 6);
    assert_eq!(v["usageMetadata"]["thoughtsTokenCount"], 4);
    assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], 1);
    let s = h.stats();
    assert_eq!(
        (
            s.gemini_requests,
            s.prompt_tokens,
            s.completion_tokens,
            s.reasoning_tokens,
            s.cached_tokens
        ),
        (1, prompt, 10, 4, 1)
    );

    let r = one_shot(&h, &gemini_req("gemini-x", true, &body, "gk")).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\r\n\r\n"));
    let t = read_stream(crate::protocol::Dialect::Gemini, &r.body);
    assert!(t.saw_done());
    assert_eq!(t.usage().unwrap().completion_tokens, 10);
    assert_eq!(t.usage().unwrap().reasoning_tokens, 4);

    let call = json!({"contents": [{"role": "user", "parts": [{"text": "weather in Paris?"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]});
    h.set_fragmented_writes(true);
    let r = one_shot(&h, &gemini_req("gemini-x", true, &call, "gk")).await;
    let t = read_stream(crate::protocol::Dialect::Gemini, &r.body);
    assert_eq!(t.stop(), Some(crate::protocol::translate::Stop::ToolUse));
    assert_eq!(t.usage().unwrap().completion_tokens, 5);

    h.push_behavior(Behavior::Status {
        code: 429,
        retry_after: Some(2),
    });
    let r = one_shot(&h, &gemini_req("gemini-x", false, &call, "gk")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    let r = one_shot(&h, &gemini_req("gemini-x", false, &call, "bad")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
}
