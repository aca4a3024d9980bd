#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end behaviour of the data plane: the real gateway binary between a real HTTP client
//! and our mock vendor, asserting on what the client sees, what the vendor received and what
//! the usage store recorded.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tollgate::mock::Behavior;

fn hello(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello to the gateway"}]})
}

#[tokio::test]
async fn non_streaming_round_trip_maps_model_and_uses_upstream_credential() {
    let m = mock().await;
    m.require_key(Some(UPSTREAM_KEY.into()));
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;

    let resp = gw.chat(hello("gpt-4o-mini")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(request_id.starts_with("req_"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("mock reply"));

    let stats = m.stats();
    // The model name was mapped for this upstream, and the caller's key never left the gateway.
    assert_eq!(
        stats.last_request_body.as_ref().unwrap()["model"],
        "mock-small"
    );
    let auth = stats
        .last_request_headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    assert_eq!(auth.1, format!("Bearer {UPSTREAM_KEY}"));
    let header = |name: &str| {
        m.stats()
            .last_request_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // The upstream request header: the gateway's own, with this call's id and body length.
    assert_eq!(header("x-request-id").as_deref(), Some(request_id.as_str()));
    assert_eq!(header("accept").as_deref(), Some("application/json"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert!(header("host").is_some_and(|h| h.starts_with("127.0.0.1:")));
    assert!(header("user-agent").is_some_and(|h| h.starts_with("tollgate/")));
    let body_len = serde_json::to_vec(stats.last_request_body.as_ref().unwrap())
        .unwrap()
        .len();
    assert!(header("content-length").is_some_and(|l| l.parse::<usize>().unwrap() >= body_len));

    // A stream asks for an event stream, under its own request id.
    let mut req = hello("gpt-4o-mini");
    req["stream"] = serde_json::json!(true);
    let resp = gw.chat(req).send().await.unwrap();
    let stream_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    resp.text().await.unwrap();
    assert_ne!(stream_id, request_id);
    assert_eq!(header("x-request-id").as_deref(), Some(stream_id.as_str()));
    assert_eq!(header("accept").as_deref(), Some("text/event-stream"));
    assert_eq!(
        m.stats()
            .last_request_headers
            .iter()
            .filter(|(k, _)| k == "x-request-id" || k == "authorization" || k == "content-length")
            .count(),
        3,
        "each once"
    );

    let events = gw.usage_events(2).await;
    assert_eq!(events.len(), 2);
    let e = events
        .iter()
        .find(|e| e["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(e["status"], 200);
    assert_eq!(e["model_requested"], "gpt-4o-mini");
    assert_eq!(e["model_used"], "mock-small");
    assert_eq!(e["upstream"], "main/a");
    assert_eq!(e["usage_source"], "vendor");
    assert_eq!(e["prompt_tokens"], stats.prompt_tokens);
    assert_eq!(e["completion_tokens"], stats.completion_tokens);
    assert_eq!(e["tenant_id"], gw.tenant_id);
    assert_eq!(e["attempts"], 1);

    // The structured log has one JSON access line for the call, carrying its request id.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let log = gw.log();
        if let Some(l) = log.lines().find(|l| l.contains(&request_id)) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line for {request_id}:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["message"], "request");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["request_id"], request_id.as_str());
    assert_eq!(v["status"], 200);
    assert_eq!(v["upstream"], "main/a");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn streaming_hides_the_usage_chunk_unless_the_client_asked() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;

    let mut req = hello("gpt-4o");
    req["stream"] = json!(true);
    req["max_tokens"] = json!(7);
    let resp = gw.chat(req.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (text, events) = read_sse(resp).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        events
            .iter()
            .all(|e| e["usage"].is_null() || e.get("usage").is_none()),
        "usage chunk leaked: {text}"
    );
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.starts_with("This is a mock reply"));
    // The gateway asked the upstream for usage although the client did not.
    let sent = m.stats().last_request_body.unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    req["stream_options"] = json!({"include_usage": true});
    let (_, events) = read_sse(gw.chat(req).send().await.unwrap()).await;
    let usage = events
        .iter()
        .find(|e| e["usage"].is_object())
        .expect("usage chunk shown when asked");
    assert_eq!(usage["usage"]["completion_tokens"], 7);

    let events = gw.usage_events(2).await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["usage_source"], "vendor");
        assert_eq!(e["completion_tokens"], 7);
        assert_eq!(e["stream"], true);
        assert!(e["ttft_ms"].is_number());
    }
    let stats = m.stats();
    let recorded: u64 = events
        .iter()
        .map(|e| e["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(recorded, stats.prompt_tokens);
}

#[tokio::test]
async fn sse_events_split_across_tcp_chunks_are_reassembled() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let mut req = hello("gpt-4o-mini");
    req["stream"] = json!(true);
    req["max_tokens"] = json!(12);
    let (plain_text, plain) = read_sse(gw.chat(req.clone()).send().await.unwrap()).await;

    m.set_fragmented_writes(true);
    let (frag_text, frag) = read_sse(gw.chat(req).send().await.unwrap()).await;
    let content = |evs: &[serde_json::Value]| -> String {
        evs.iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect()
    };
    assert_eq!(content(&plain), content(&frag));
    assert_eq!(plain.len(), frag.len());
    assert!(frag_text.ends_with("data: [DONE]\n\n"));
    assert!(plain_text.ends_with("data: [DONE]\n\n"));
    let events = gw.usage_events(2).await;
    assert!(
        events
            .iter()
            .all(|e| e["completion_tokens"] == 12 && e["usage_source"] == "vendor"),
        "{events:?}"
    );
}

#[tokio::test]
async fn vendor_without_usage_is_counted_with_tiktoken() {
    let m = mock().await;
    m.set_behavior(Behavior::NoUsage);
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;

    let mut req = hello("gpt-4o-mini");
    req["max_tokens"] = json!(9);
    assert_eq!(gw.chat(req.clone()).send().await.unwrap().status(), 200);
    req["stream"] = json!(true);
    let (text, _) = read_sse(gw.chat(req).send().await.unwrap()).await;
    assert!(text.ends_with("data: [DONE]\n\n"));

    let events = gw.usage_events(2).await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["usage_source"], "counted", "{e}");
        assert_eq!(e["completion_tokens"], 9, "{e}");
        assert!(e["prompt_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn embeddings_round_trip() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let resp = gw
        .client
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "text-embedding-3-small", "input": ["one two three", "four"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let events = gw.usage_events(1).await;
    assert_eq!(events[0]["endpoint"], "embeddings");
    assert_eq!(events[0]["prompt_tokens"], body["usage"]["prompt_tokens"]);
}

/// Two upstreams, the first heavily weighted so the balancer tries it first.
async fn pair() -> (
    tollgate::mock::MockHandle,
    tollgate::mock::MockHandle,
    Gateway,
) {
    let a = mock().await;
    let b = mock().await;
    let mut ua = Up::mock("a", &a);
    ua.weight = 10_000;
    let gw = Gateway::start(
        &[ua, Up::mock("b", &b)],
        "timeouts = { connect_ms = 500, first_byte_ms = 800, idle_ms = 800, total_ms = 10000 }",
        "",
    )
    .await;
    (a, b, gw)
}

async fn assert_failed_over(gw: &Gateway, b: &tollgate::mock::MockHandle, stream: bool) {
    let mut req = hello("gpt-4o-mini");
    if stream {
        req["stream"] = json!(true);
    }
    let resp = gw.chat(req).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.log());
    if stream {
        let (text, _) = read_sse(resp).await;
        assert!(text.ends_with("data: [DONE]\n\n"));
    } else {
        let _ = resp.bytes().await.unwrap();
    }
    assert_eq!(b.stats().completed, 1);
    let events = gw.usage_events(1).await;
    assert_eq!(events[0]["attempts"], 2, "{:?}", events[0]);
    assert_eq!(events[0]["upstream"], "main/b");
}

#[tokio::test]
async fn fails_over_on_5xx_before_the_first_byte() {
    let (a, b, gw) = pair().await;
    a.push_behavior(Behavior::Status {
        code: 503,
        retry_after: None,
    });
    assert_failed_over(&gw, &b, true).await;
    assert_eq!(a.stats().chat_requests, 1);
}

#[tokio::test]
async fn fails_over_on_429_and_parks_the_upstream_for_retry_after() {
    let (a, b, gw) = pair().await;
    a.push_behavior(Behavior::Status {
        code: 429,
        retry_after: Some(30),
    });
    assert_failed_over(&gw, &b, false).await;
    // Parked for 30 s: the next requests go straight to b without touching a.
    for _ in 0..3 {
        assert_eq!(
            gw.chat(hello("gpt-4o-mini")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(a.stats().chat_requests, 1);
    assert_eq!(b.stats().completed, 4);
}

#[tokio::test]
async fn fails_over_when_the_upstream_closes_without_answering() {
    let (a, b, gw) = pair().await;
    a.push_behavior(Behavior::CloseImmediately);
    assert_failed_over(&gw, &b, false).await;
}

#[tokio::test]
async fn fails_over_on_first_byte_timeout() {
    let (a, b, gw) = pair().await;
    a.push_behavior(Behavior::Delay { ms: 3000 });
    assert_failed_over(&gw, &b, true).await;
}

#[tokio::test]
async fn fails_over_on_connect_error() {
    let b = mock().await;
    let dead = Up {
        name: "dead",
        base_url: format!("http://127.0.0.1:{}/v1", free_port()),
        weight: 10_000,
    };
    let gw = Gateway::start(&[dead, Up::mock("b", &b)], "", "").await;
    assert_failed_over(&gw, &b, false).await;
}

#[tokio::test]
async fn no_retry_after_the_first_byte_and_the_break_is_explicit() {
    let (a, b, gw) = pair().await;
    a.push_behavior(Behavior::CutStreamAfter { chunks: 3 });
    let mut req = hello("gpt-4o-mini");
    req["stream"] = json!(true);
    let resp = gw.chat(req).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (text, events) = read_sse(resp).await;
    let last = events.last().expect("events");
    assert!(
        last["error"]["message"].is_string(),
        "stream must end with an error event: {text}"
    );
    assert!(!text.contains("[DONE]"));
    assert_eq!(
        b.stats().requests,
        0,
        "no retry once bytes reached the client"
    );
    let usage = gw.usage_events(1).await;
    let e = &usage[0];
    assert_eq!(e["attempts"], 1);
    assert!(e["error_code"].is_string(), "{e}");
    // What was produced before the break is metered (counted: the vendor sent no usage).
    assert_eq!(e["completion_tokens"], a.stats().completion_tokens, "{e}");
    assert_eq!(e["usage_source"], "counted");
}

#[tokio::test]
async fn breaker_ejects_a_failing_upstream_and_a_probe_restores_it() {
    let a = mock().await;
    let b = mock().await;
    let mut ua = Up::mock("a", &a);
    ua.weight = 10_000;
    let gw = Gateway::start(
        &[ua, Up::mock("b", &b)],
        "breaker = { failure_threshold = 2, open_ms = 500 }",
        "",
    )
    .await;
    a.set_behavior(Behavior::Status {
        code: 500,
        retry_after: None,
    });
    for _ in 0..2 {
        assert_eq!(
            gw.chat(hello("gpt-4o-mini")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(a.stats().chat_requests, 2);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_upstream_healthy{upstream=\"main/a\"}"),
        0.0,
        "{metrics}"
    );
    // Ejected: traffic goes straight to b.
    for _ in 0..5 {
        assert_eq!(
            gw.chat(hello("gpt-4o-mini")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(a.stats().chat_requests, 2);

    a.set_behavior(Behavior::Normal);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        gw.chat(hello("gpt-4o-mini")).send().await.unwrap().status(),
        200
    );
    assert_eq!(a.stats().completed, 1, "the half-open probe went to a");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_upstream_healthy{upstream=\"main/a\"}"),
        1.0
    );
}

#[tokio::test]
async fn large_bodies_reach_the_upstream_including_on_failover() {
    let (a, b, gw) = pair().await;
    a.push_behavior(Behavior::Status {
        code: 502,
        retry_after: None,
    });
    let big = "x".repeat(32 * 1024 * 1024);
    let req = json!({"model": "gpt-4o-mini", "max_tokens": 3, "messages": [{"role": "user", "content": big}]});
    let resp = gw
        .chat(req)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.log());
    let got = b.stats().last_request_body.unwrap();
    assert_eq!(
        got["messages"][0]["content"].as_str().unwrap().len(),
        32 * 1024 * 1024
    );
    assert_eq!(a.stats().chat_requests, 1);
}

async fn error_of(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "{v}"
    );
    (status, v)
}

#[tokio::test]
async fn errors_have_openai_shape_and_status() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let c = &gw.client;
    let url = gw.url("/v1/chat/completions");

    let (s, v) = error_of(
        c.post(&url)
            .json(&hello("gpt-4o-mini"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("missing_api_key"))
    );
    let (s, v) = error_of(
        c.post(&url)
            .bearer_auth("tg-wrong")
            .json(&hello("gpt-4o-mini"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, v) = error_of(gw.chat(hello("no-such-model")).send().await.unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (s, _) = error_of(
        c.post(&url)
            .bearer_auth(&gw.key)
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    let (s, v) = error_of(
        gw.chat(json!({"model": "gpt-4o-mini"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
    let (s, _) = error_of(gw.chat(json!({"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "x"}]})).send().await.unwrap()).await;
    assert_eq!(s, 400);
    let (s, _) = error_of(c.get(&url).bearer_auth(&gw.key).send().await.unwrap()).await;
    assert_eq!(s, 405);
    let (s, _) = error_of(
        c.get(gw.url("/v2/whatever"))
            .bearer_auth(&gw.key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    let huge = "y".repeat(41_000_000);
    let resp = c
        .post(&url)
        .bearer_auth(&gw.key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await;
    match resp {
        Ok(r) => assert_eq!(error_of(r).await.0, 413),
        // The gateway may answer 413 and close before the client finished sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert_eq!(m.stats().requests, 0, "no error case reached the vendor");
}

#[tokio::test]
async fn all_upstreams_down_is_502_and_all_ejected_is_503() {
    let dead = |name| Up {
        name,
        base_url: format!("http://127.0.0.1:{}/v1", free_port()),
        weight: 1,
    };
    let gw = Gateway::start(
        &[dead("x"), dead("y")],
        "breaker = { failure_threshold = 1, open_ms = 60000 }",
        "",
    )
    .await;
    let (s, v) = error_of(gw.chat(hello("gpt-4o-mini")).send().await.unwrap()).await;
    assert_eq!(s, 502, "{v}");
    let (s, v) = error_of(gw.chat(hello("gpt-4o-mini")).send().await.unwrap()).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_upstream_available");
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let m = mock().await;
    m.set_behavior(Behavior::Delay { ms: 3000 });
    let gw = Gateway::start(
        &[Up::mock("a", &m)],
        "timeouts = { connect_ms = 500, first_byte_ms = 500, idle_ms = 500, total_ms = 5000 }",
        "",
    )
    .await;
    let (s, v) = error_of(gw.chat(hello("gpt-4o-mini")).send().await.unwrap()).await;
    assert_eq!(s, 504, "{v}");
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use_and_channels_are_enforced() {
    let m = mock().await;
    let m2 = mock().await;
    let second = format!(
        "[[channels]]\nname = \"second\"\n[[channels.upstreams]]\nname = \"s\"\nbase_url = \"{}\"\nmodels = [\"gpt-4o\"]\n",
        m2.base_url()
    );
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &second).await;
    let limited = gw
        .create_key(json!({"tenant": "acme", "name": "limited", "default_channel": "main", "allowed_models": ["gpt-4o-mini"]}))
        .await;
    let v: serde_json::Value = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(&limited)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt-4o-mini"]);
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&limited)
        .json(&hello("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The default key may not select `second`; a key allowed to does reach m2.
    let resp = gw
        .chat(hello("gpt-4o"))
        .header("x-tollgate-channel", "second")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let multi = gw
        .create_key(json!({"tenant": "acme", "name": "multi", "default_channel": "main", "allowed_channels": ["second"]}))
        .await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&multi)
        .header("x-tollgate-channel", "second")
        .json(&hello("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tollgate-channel"], "second");
    assert_eq!(m2.stats().completed, 1);
    assert_eq!(m.stats().completed, 0);
}

#[tokio::test]
async fn revoked_keys_stop_working_at_once() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let v = gw
        .admin_post(
            "/admin/keys",
            json!({"tenant": "acme", "name": "tmp", "default_channel": "main"}),
        )
        .await;
    let key = v["key"].as_str().unwrap().to_string();
    let id = v["record"]["id"].as_i64().unwrap();
    let ok = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&hello("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    gw.admin_post(&format!("/admin/keys/{id}/revoke"), json!({}))
        .await;
    let (s, v) = error_of(
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&hello("gpt-4o-mini"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_attempts_with_bounded_labels() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    for _ in 0..3 {
        assert_eq!(
            gw.chat(hello("gpt-4o-mini")).send().await.unwrap().status(),
            200
        );
    }
    let _ = gw.chat(hello("nope")).send().await.unwrap();
    // Metrics are recorded in the logging phase, just after the response went out.
    let not_found = "tollgate_requests_total{channel=\"main\",model=\"other\",status=\"404\"}";
    let mut text = gw.metrics().await;
    for _ in 0..100 {
        if metric_value(&text, not_found) == 1.0
            && metric_value(&text, "tollgate_inflight_requests") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = gw.metrics().await;
    }
    assert_eq!(
        metric_value(
            &text,
            "tollgate_requests_total{channel=\"main\",model=\"gpt-4o-mini\",status=\"200\"}"
        ),
        3.0,
        "{text}"
    );
    assert_eq!(metric_value(&text, not_found), 1.0, "{text}");
    assert_eq!(
        metric_value(&text, "tollgate_inflight_requests"),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_upstream_attempts_total{outcome=\"ok\",upstream=\"main/a\"}"
        ),
        3.0,
        "{text}"
    );
    assert!(
        metric_value(
            &text,
            "tollgate_tokens_total{channel=\"main\",kind=\"completion\",model=\"gpt-4o-mini\"}"
        ) > 0.0
    );
    assert!(text.contains("tollgate_time_to_first_token_seconds_bucket"));
    assert!(
        !text.contains(&gw.key) && !text.contains("acme"),
        "no key or tenant in labels"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    for i in 0..20 {
        let mut req = hello("gpt-4o-mini");
        if i % 2 == 0 {
            req["stream"] = json!(true);
        }
        let resp = gw.chat(req).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
    }
    let stats = m.stats();
    assert_eq!(stats.completed, 20);
    // Sequential calls: one pooled connection does (nearly) all of the work.
    assert!(
        stats.connections <= 2,
        "{} upstream connections for 20 calls",
        stats.connections
    );
}

#[tokio::test]
async fn images_tools_and_unknown_fields_pass_through_unchanged() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let content = json!([
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    ]);
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let req = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}],
        "tools": tools,
        "temperature": 0.2,
        "vendor_specific_knob": {"x": 1},
    });
    assert_eq!(gw.chat(req).send().await.unwrap().status(), 200);
    let got = m.stats().last_request_body.unwrap();
    assert_eq!(got["messages"][0]["content"], content);
    assert_eq!(got["tools"], tools);
    assert_eq!(got["temperature"], 0.2);
    assert_eq!(got["vendor_specific_knob"]["x"], 1);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event() {
    let m = mock().await;
    // The header and first chunk come at once, then 4 s of silence: the 1.5 s idle timer fires
    // (generous enough that a loaded CI machine still delivers the header in time).
    m.set_behavior(Behavior::SlowChunks { ms: 4000 });
    let gw = Gateway::start(
        &[Up::mock("a", &m)],
        "timeouts = { connect_ms = 500, first_byte_ms = 1500, idle_ms = 1500, total_ms = 20000 }",
        "",
    )
    .await;
    let mut req = hello("gpt-4o-mini");
    req["stream"] = json!(true);
    let resp = gw.chat(req).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (text, events) = read_sse(resp).await;
    assert!(!text.contains("[DONE]"));
    let last = events.last().unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled"),
        "{text}"
    );
    let usage = gw.usage_events(1).await;
    assert_eq!(usage[0]["error_code"], "upstream_broken", "{:?}", usage[0]);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let body = serde_json::to_vec(&hello("gpt-4o-mini")).unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        gw.key,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The body is withheld until the interim response arrives.
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(&body).await.unwrap();
    let mut rest = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !String::from_utf8_lossy(&rest).contains("\"usage\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&rest).to_lowercase();
    assert!(text.contains("200 ok"), "{text}");
    // The interim response does not cost the client its connection: keep-alive is announced
    // and a second request goes through on the same socket.
    assert!(text.contains("connection: keep-alive"), "{text}");
    let again = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        gw.key,
        body.len()
    );
    s.write_all(again.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut second = Vec::new();
    while !String::from_utf8_lossy(&second).contains("\"usage\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&second));
        second.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&second).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn clients_hanging_up_neither_retry_nor_eject_a_healthy_upstream() {
    let m = mock().await;
    let gw = Gateway::start(
        &[Up::mock("a", &m)],
        "breaker = { failure_threshold = 2, open_ms = 60000 }",
        "",
    )
    .await;
    for _ in 0..4 {
        m.push_behavior(Behavior::Delay { ms: 400 });
    }
    for _ in 0..4 {
        let r = gw
            .chat(hello("gpt-4o-mini"))
            .timeout(Duration::from_millis(60))
            .send()
            .await;
        assert!(r.is_err(), "the client gives up first");
    }
    // Let the gateway notice the hang-ups.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        gw.chat(hello("gpt-4o-mini")).send().await.unwrap().status(),
        200,
        "{}",
        gw.log()
    );
    assert_eq!(
        m.stats().chat_requests,
        5,
        "abandoned requests must not be re-sent"
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric_value(&text, "tollgate_upstream_healthy{upstream=\"main/a\"}"),
        1.0
    );
    // A hang-up (FIN) is not an abort by itself: a client may half-close and still read its
    // answer (RFC 9112 9.6, tests/edge.rs); a gone client shows when its answer is written.
    assert_eq!(
        metric_value(
            &text,
            "tollgate_upstream_attempts_total{outcome=\"error\",upstream=\"main/a\"}"
        ),
        0.0,
        "{text}"
    );
}
