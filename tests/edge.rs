#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Edge hardening (issue 14): upstreams that answer but refuse, vendor errors that quote the
//! gateway's key, and client fields echoed without bound. Real gateway, mock vendors.

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate::mock::Behavior;

/// A gateway on one mock upstream `m`, with `server_extra` in its `[server]` section.
async fn on_one_mock(server_extra: &str) -> (tollgate::mock::MockHandle, Gateway) {
    let m = mock().await;
    let gw = Gateway::start_with_server_extra(&[Up::mock("m", &m)], "", "", server_extra).await;
    (m, gw)
}

/// The same greeting from an Anthropic caller (`/v1/messages`).
async fn anthropic_hello(gw: &Gateway) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.key)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

fn hello() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn an_upstream_that_refuses_the_gateways_key_is_failed_over_and_ejected() {
    let bad = mock().await;
    let good = mock().await;
    // The vendor account behind `bad` no longer takes the gateway's key: 401 on every call.
    bad.require_key(Some("a-key-the-gateway-does-not-have".into()));
    // `bad` draws nearly all traffic while it looks healthy (it answers fast).
    let heavy = Up {
        weight: 100,
        ..Up::mock("bad", &bad)
    };
    let gw = Gateway::start(&[heavy, Up::mock("good", &good)], "", "").await;
    for i in 0..20 {
        let r = gw.chat(hello()).send().await.unwrap();
        assert_eq!(r.status(), 200, "call {i}: {}", r.text().await.unwrap());
    }
    assert_eq!(good.stats().completed, 20);
    // The refusals count against the upstream: its breaker opened, so it stopped drawing
    // traffic long before 20 calls (the default threshold is a handful of failures).
    let metrics = gw.metrics().await;
    let refused = metric_value(
        &metrics,
        "tollgate_upstream_attempts_total{outcome=\"upstream_refused\",upstream=\"main/bad\"}",
    );
    assert!(
        (1.0..20.0).contains(&refused),
        "refused attempts: {refused}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_breaker_opened_total{upstream=\"main/bad\"}"
        ),
        1.0
    );
    // An operator-facing error is logged (log lines are written in batches: poll).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.log().contains("upstream refused the call") {
        assert!(
            std::time::Instant::now() < deadline,
            "no operator-facing error logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // With no other upstream, the caller gets a 502 in its own shape, never the vendor's
    // words about the gateway's key.
    let only = mock().await;
    only.require_key(Some("a-key-the-gateway-does-not-have".into()));
    let gw = Gateway::start(&[Up::mock("only", &only)], "", "").await;
    let r = gw.chat(hello()).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    assert!(
        !text.contains("Incorrect API key") && !text.contains("****"),
        "{text}"
    );
    let r = anthropic_hello(&gw).await;
    // The refusal opened the breaker at once: the next call finds no upstream in rotation.
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "Anthropic's shape: {v}");
}

#[tokio::test]
async fn a_model_unknown_at_the_vendor_fails_over_to_an_upstream_that_has_it() {
    let wrong = mock().await;
    let right = mock().await;
    // `wrong` answers 404 model_not_found (e.g. a stale model_map): the upstream's fault.
    wrong.set_behavior(Behavior::StatusBody {
        code: 404,
        body: r#"{"error":{"message":"The model `mock-small` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#.into(),
    });
    let gw = Gateway::start(
        &[Up::mock("wrong", &wrong), Up::mock("right", &right)],
        "",
        "",
    )
    .await;
    for _ in 0..6 {
        let r = gw.chat(hello()).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(right.stats().completed, 6);
}

#[tokio::test]
async fn vendor_errors_reach_the_caller_without_the_gateways_key() {
    let (m, gw) = on_one_mock("").await;
    // A caller's fault (400) is passed on, with its code, but what looks like a key is not.
    let body = r#"{"error":{"message":"Request too large for key sk-proj-****Qz7X (org-1). Retry with key sk-abcdefghijklmnop.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    m.set_behavior(Behavior::StatusBody {
        code: 400,
        body: body.into(),
    });
    let r = gw.chat(hello()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{text}");
    assert_eq!(v["error"]["param"], "messages");
    assert!(!text.contains("Qz7X") && !text.contains("sk-abc"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    // Translated for an Anthropic caller: same.
    let r = anthropic_hello(&gw).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("Qz7X") && text.contains("[redacted]"),
        "{text}"
    );
}

#[tokio::test]
async fn client_fields_are_echoed_and_logged_only_in_part() {
    let (_m, gw) = on_one_mock("").await;
    let huge = "m".repeat(1 << 20);
    let r = gw
        .chat(json!({"model": huge, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.len() < 1024, "the 404 body is {} bytes", text.len());
    let long_path = format!("/v1/{}", "p".repeat(4000));
    let r = gw
        .client
        .get(gw.url(&long_path))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().len() < 1024);
    // The log lines of both stay small too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = gw.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"message\":\"request\""))
            .collect();
        if lines.len() >= 2 {
            for l in lines {
                assert!(l.len() < 2048, "a log line of {} bytes", l.len());
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no request log lines");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let evs = gw.usage_events(2).await;
    for e in &evs {
        assert!(e.to_string().len() < 2048, "{}", e.to_string().len());
    }
}

#[tokio::test]
async fn wrong_admin_tokens_are_throttled_per_address_logged_and_counted() {
    let (_m, gw) = on_one_mock("").await;
    let get = |token: &str| {
        gw.client
            .get(gw.admin_url("/admin/tenants"))
            .bearer_auth(token)
            .send()
    };
    // A member of the gateway's tenant with a user token (random: never guessed).
    let user = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "ann@acme.example", "role": "member"}),
        )
        .await;
    let user_token = user["token"].as_str().unwrap().to_string();
    // Wrong passwords (another kind of credential, and another account) never lock out the
    // operator's token nor a colleague's sign-in.
    let sign_in = |email: &str, password: &str| {
        gw.client
            .post(gw.admin_url("/admin/sessions"))
            .json(&json!({"tenant": "acme", "email": email, "password": password}))
            .send()
    };
    for _ in 0..10 {
        assert_eq!(
            sign_in("bob@acme.example", "not it")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(
        sign_in("bob@acme.example", "not it")
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(get(ADMIN_TOKEN).await.unwrap().status(), 200);
    assert_eq!(
        sign_in("ann@acme.example", "not it either")
            .await
            .unwrap()
            .status(),
        401
    );
    for i in 0..10 {
        let r = get(&format!("guess-{i}")).await.unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    // A valid session or user token is random: it still works while the address is refused.
    assert_eq!(get(&user_token).await.unwrap().status(), 200);
    // The eleventh try from this address is refused without a check, even the right operator
    // token, until the window ends: guessing gets no answer.
    let r = get("guess-10").await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "retry-after {wait}");
    assert_eq!(get(ADMIN_TOKEN).await.unwrap().status(), 429);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_admin_auth_failures_total{reason=\"invalid\"}"
        ),
        21.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_admin_auth_failures_total{reason=\"throttled\"}"
        ),
        3.0
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.log().contains("invalid admin token") {
        assert!(std::time::Instant::now() < deadline, "failures are logged");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// One whole answer read from a raw socket: its head (lowercased) and its Content-Length body.
fn read_http_answer(s: &mut std::net::TcpStream) -> (String, String) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            1,
            "answer cut: {}",
            String::from_utf8_lossy(&got)
        );
        got.push(b[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// Raw HTTP/1.1 on one socket: what comes back for `request` (read until the server closes or
/// goes quiet for 1 s).
fn raw_exchange(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_body_framing_error_closes_the_connection() {
    let (_m, gw) = on_one_mock("").await;
    let smuggled = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        gw.key
    );
    for bad_chunk in [
        "zz\r\n",
        "-1\r\n",
        "5\r\nhello-world\r\n",
        &format!("{}\r\n", "f".repeat(40)),
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{bad_chunk}{smuggled}",
            gw.key
        );
        let port = gw.port;
        let out = tokio::task::spawn_blocking(move || raw_exchange(port, req.as_bytes()))
            .await
            .unwrap();
        let answers = out.matches("HTTP/1.1 ").count();
        assert_eq!(
            answers, 1,
            "{bad_chunk:?}: the bytes after a bad chunk are not a request: {out}"
        );
        assert!(out.starts_with("HTTP/1.1 400"), "{bad_chunk:?}: {out}");
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{bad_chunk:?}: {out}"
        );
    }
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_and_requests_per_connection_capped() {
    use std::io::{Read, Write};
    let (_m, gw) = on_one_mock("keepalive_timeout_seconds = 1\nkeepalive_requests = 3").await;
    let port = gw.port;
    let key = gw.key.clone();
    tokio::task::spawn_blocking(move || {
        let req =
            format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n");
        let read_answer = |s: &mut std::net::TcpStream| read_http_answer(s).0;
        // Idle: the connection is closed about a second after the answer.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(req.as_bytes()).unwrap();
        read_answer(&mut s);
        let t = std::time::Instant::now();
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "the idle connection is closed"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "closed after {:?}",
            t.elapsed()
        );
        // Requests per connection: the third answer says close, and the connection ends.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        for i in 1..=3 {
            s.write_all(req.as_bytes()).unwrap();
            let head = read_answer(&mut s);
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(
                head.contains("connection: close"),
                i == 3,
                "answer {i}: {head}"
            );
        }
        assert_eq!(s.read(&mut b).unwrap_or(0), 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let (_m, gw) = on_one_mock("").await;
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"first"}]}"#;
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        gw.key,
        body.len()
    );
    req.push_str(&format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        gw.key
    ));
    req.push_str(&format!(
        "GET /v1/nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        gw.key
    ));
    let port = gw.port;
    let out = tokio::task::spawn_blocking(move || raw_exchange(port, req.as_bytes()))
        .await
        .unwrap();
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "404"], "{out}");
    assert!(out.find("mock reply").unwrap() < out.find("\"object\":\"list\"").unwrap());
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use std::io::{Read, Write};
    let m = mock().await;
    // The answer takes a moment: the FIN arrives while the upstream is working.
    m.set_behavior(Behavior::Delay { ms: 300 });
    let gw = Gateway::start(&[Up::mock("m", &m)], "", "").await;
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        gw.key,
        body.len()
    );
    let port = gw.port;
    let out = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("mock reply"), "{out}");
    // Served and charged once.
    let evs = gw.usage_events(1).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["status"], 200);
    assert!(evs[0]["cost"].nano() > 0);
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_a_431_that_closes() {
    let (_m, gw) = on_one_mock("").await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Big: {}\r\n\r\n",
        gw.key,
        "a".repeat(100 * 1024)
    );
    let mut many = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n",
        gw.key
    );
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    for req in [big, many] {
        let port = gw.port;
        let out = tokio::task::spawn_blocking(move || raw_exchange(port, req.as_bytes()))
            .await
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431"),
            "{}",
            &out[..out.len().min(300)]
        );
        assert!(out.to_ascii_lowercase().contains("connection: close"));
        assert!(out.contains("request_header_fields_too_large"));
    }
    // Ordinary requests are untouched.
    assert_eq!(gw.chat(hello()).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn request_bodies_held_in_memory_have_a_global_budget() {
    // One 30 MB body counts 60 MB: a budget of 80 MB holds one at a time.
    let (m, gw) = on_one_mock("max_buffered_body_bytes = 80000000").await;
    m.set_behavior(Behavior::Delay { ms: 1500 });
    let big = |tag: &str| {
        json!({"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": format!("{tag} {}", "x ".repeat(15_000_000))}]})
    };
    let first = {
        let req = gw.chat(big("first"));
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    // A client that asks before sending its body (`Expect: 100-continue`) hears the 503 at
    // once; one that sends it anyway has its connection closed, as for a 413.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 30000100\r\nExpect: 100-continue\r\n\r\n",
        gw.key
    );
    let port = gw.port;
    let out = tokio::task::spawn_blocking(move || raw_exchange(port, req.as_bytes()))
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.to_ascii_lowercase().contains("retry-after: 1"), "{out}");
    assert!(out.contains("\"code\":\"overloaded\""), "{out}");
    assert_eq!(first.await.unwrap(), 200);
    // Given back when the request ended: the next one fits.
    m.set_behavior(Behavior::Normal);
    let r = gw.chat(big("third")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_body_budget_refusals_total"),
        1.0
    );
    // The share is given back when the request's context is dropped, which can come a moment
    // after the client has read the whole answer.
    let mut held = metric_value(&metrics, "tollgate_buffered_body_bytes");
    for _ in 0..50 {
        if held == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        held = metric_value(&gw.metrics().await, "tollgate_buffered_body_bytes");
    }
    assert_eq!(held, 0.0);
    // Small bodies never count.
    assert_eq!(gw.chat(hello()).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_request_head_must_arrive_whole_in_time_but_idle_and_slow_bodies_are_fine() {
    use std::io::{Read, Write};
    let (_m, gw) = on_one_mock("header_timeout_seconds = 1").await;
    let port = gw.port;
    let key = gw.key.clone();
    tokio::task::spawn_blocking(move || {
        let connect = || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            s
        };
        let sleep = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        // One header byte every 300 ms: the connection ends about a second in.
        let mut s = connect();
        let t = std::time::Instant::now();
        let head = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n");
        let mut closed = false;
        for b in head.as_bytes() {
            if s.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            sleep(300);
            if t.elapsed() > std::time::Duration::from_secs(4) {
                break;
            }
        }
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(closed || n == 0, "a trickled head is cut off: {}", String::from_utf8_lossy(&buf[..n]));
        assert!(t.elapsed() < std::time::Duration::from_secs(4));
        // Idle between requests longer than the head timeout, and a body sent slowly: served.
        let mut s = connect();
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"slow"}]}"#;
        for round in 0..2 {
            s.write_all(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            for piece in body.as_bytes().chunks(20) {
                sleep(400);
                s.write_all(piece).unwrap();
            }
            let (head, answer) = read_http_answer(&mut s);
            assert!(head.starts_with("http/1.1 200"), "round {round}: {head}");
            assert!(answer.contains("mock reply"), "round {round}: {answer}");
            sleep(1500);
        }
    })
    .await
    .unwrap();
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_client_header_timeouts_total"),
        1.0
    );
}

#[tokio::test]
async fn a_body_trickled_in_below_the_minimum_rate_is_refused() {
    use std::io::Write;
    let (_m, gw) =
        on_one_mock("min_body_bytes_per_second = 2000\nbody_rate_grace_seconds = 1").await;
    let port = gw.port;
    let key = gw.key.clone();
    tokio::task::spawn_blocking(move || {
        let content = "x".repeat(20_000);
        let body = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{content}"}}]}}"#);
        let send = |chunk_ms: u64, piece: usize| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            s.write_all(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            for p in body.as_bytes().chunks(piece) {
                if s.write_all(p).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(chunk_ms));
            }
            read_http_answer(&mut s).0
        };
        // 500 bytes every 500 ms (1,000 B/s, below 2,000): refused after the grace.
        let head = send(500, 500);
        assert!(head.starts_with("http/1.1 408"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        // 5,000 bytes every 200 ms (25,000 B/s): served.
        let head = send(200, 5000);
        assert!(head.starts_with("http/1.1 200"), "{head}");
    })
    .await
    .unwrap();
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_slow_body_refusals_total"),
        1.0
    );
}

#[tokio::test]
async fn answers_of_the_http_layer_carry_a_request_id_and_an_error_body() {
    let (_m, gw) = on_one_mock("").await;
    let requests: [(&[u8], u16); 4] = [
        (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            400,
        ),
        (b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
            405,
        ),
    ];
    let mut ids = Vec::new();
    for (req, status) in requests {
        let port = gw.port;
        let out = tokio::task::spawn_blocking(move || raw_exchange(port, req))
            .await
            .unwrap();
        assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{out}");
        assert!(!head.contains("server: pingora"), "{out}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no request id: {out}"))
            .to_string();
        assert!(id.starts_with("req_"), "{out}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["error"]["type"], "invalid_request_error", "{out}");
        ids.push(id);
    }
    // Each is logged with its request id and counted.
    for _ in 0..100 {
        if ids.iter().all(|id| gw.log().contains(id.as_str())) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = gw.log();
    for id in &ids {
        assert!(log.contains(id.as_str()), "{id} not logged:\n{log}");
    }
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "tollgate_malformed_requests_total"), 4.0);
    // The connection's next client is served as usual.
    assert_eq!(gw.chat(hello()).send().await.unwrap().status(), 200);
}
