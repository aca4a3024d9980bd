#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The OpenAI Responses API for callers (passed through to an upstream that speaks it,
//! translated to chat completions, Anthropic Messages and Gemini otherwise), structured output
//! on Anthropic upstreams, the fields coding agents send on /v1/messages, and the usage record
//! of every authenticated request. Real gateway, real HTTP, the mock vendor.

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate::mock::{Behavior, MockHandle};

/// Channel `main`: gpt-4o on an upstream that speaks Responses (pass-through), gpt-4o-mini on
/// a chat-only OpenAI upstream, claude-x on Anthropic, gemini-x on Gemini.
async fn gateway(m: &MockHandle) -> Gateway {
    let ups = protocol_upstreams(
        m,
        &ProtocolModels {
            native: &["gpt-4o"],
            chat: &[
                "gpt-4o-mini",
                "text-embedding-3-small",
                "plain-x",
                "reasoner-x",
            ],
            anthropic: &["claude-x"],
            gemini: &["gemini-x"],
        },
    );
    let extra = format!(
        r#"
{ups}[[models]]
name = "claude-x"
vendor = "anthropic"
max_output_tokens = 1000
price = {{ currency = "USD", input = "3", cached_input = "0.3", cache_write = "3.75", output = "15" }}

[[models]]
name = "plain-x"
vendor = "openai"
reasoning = false
price = {{ currency = "USD", input = "1", output = "2" }}

[[models]]
name = "reasoner-x"
vendor = "openai"
reasoning = true
price = {{ currency = "USD", input = "1", output = "2" }}

[[models]]
name = "gemini-x"
vendor = "google"
max_output_tokens = 1000
price = {{ currency = "USD", input = "0.3", cached_input = "0.075", output = "2.5" }}
"#
    );
    Gateway::start(&[], "", &extra).await
}

const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-x", "gemini-x"];

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
            "required": ["location"]}}])
}

async fn responses(gw: &Gateway, body: Value) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/responses"))
        .bearer_auth(&gw.key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Named SSE events of a Responses stream: (event name, data).
async fn events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or_else(|_| panic!("bad data: {d}"));
                }
            }
            (name, data)
        })
        .collect()
}

fn output_text(resp: &Value) -> String {
    resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

/// Checks the typed-event grammar every Responses client relies on and returns the final
/// response object (from `response.completed`).
fn check_stream(evs: &[(String, Value)]) -> Value {
    assert_eq!(evs.first().unwrap().0, "response.created", "{evs:?}");
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "event name and type agree");
        assert_eq!(
            data["sequence_number"], i as u64,
            "sequence numbers count up from 0"
        );
    }
    let (last, done) = evs.last().unwrap();
    assert_eq!(last, "response.completed", "{evs:?}");
    let resp = done["response"].clone();
    // The deltas add up to what the final response holds.
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, output_text(&resp));
    let args: String = evs
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let calls: String = resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .map(|i| i["arguments"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, calls);
    let added = evs
        .iter()
        .filter(|(n, _)| n == "response.output_item.added")
        .count();
    let done_items = evs
        .iter()
        .filter(|(n, _)| n == "response.output_item.done")
        .count();
    assert_eq!(added, done_items);
    assert_eq!(added, resp["output"].as_array().unwrap().len());
    resp
}

#[tokio::test]
async fn responses_api_on_every_upstream_protocol_billed_exactly() {
    let m = mock().await;
    let gw = gateway(&m).await;
    let mut calls = 0;
    for model in MODELS {
        // Text, whole.
        let r = responses(
            &gw,
            json!({"model": model, "instructions": "Be brief.", "input": "Hello there"}),
        )
        .await;
        assert_eq!(r.status(), 200, "{model}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed", "{model}: {v}");
        assert!(
            output_text(&v).starts_with("This is a mock reply to: Hello there"),
            "{model}: {v}"
        );
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);

        // Text, streamed.
        let r = responses(&gw, json!({"model": model, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Stream please"}]}], "stream": true})).await;
        assert_eq!(r.status(), 200);
        let resp = check_stream(&events(r).await);
        assert!(
            output_text(&resp).contains("Stream please"),
            "{model}: {resp}"
        );

        // A tool round trip: the call, then its output, then the answer.
        let r = responses(&gw, json!({"model": model, "input": "What is the weather in Paris?", "tools": weather_tool()})).await;
        let v: Value = r.json().await.unwrap();
        let call = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "function_call")
            .cloned()
            .unwrap_or_else(|| panic!("{model}: no call in {v}"));
        assert_eq!(call["name"], "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
            json!({"location": "Paris"})
        );
        let follow = json!({"model": model, "tools": weather_tool(), "input": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 21 C"},
        ]});
        let r = responses(&gw, follow.clone()).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(
            output_text(&v).starts_with("This is a mock reply"),
            "{model}: the loop ends: {v}"
        );

        // The tool call streamed.
        let mut body = json!({"model": model, "input": "Weather in Paris?", "tools": weather_tool(), "stream": true});
        body["tool_choice"] = json!("auto");
        let resp = check_stream(&events(responses(&gw, body).await).await);
        assert_eq!(
            resp["output"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["type"] == "function_call")
                .count(),
            1,
            "{model}: {resp}"
        );
        calls += 5;
    }
    // Only the upstream that speaks Responses got Responses requests (gpt-4o's five calls).
    assert_eq!(m.stats().responses_requests, 5);
    // Every call is one usage event on the `responses` endpoint, metered exactly as the
    // vendor reported.
    let evs = gw.usage_events(calls).await;
    assert_eq!(evs.len(), calls);
    let st = m.stats();
    let sum = |k: &str| evs.iter().map(|e| e[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("prompt_tokens"), st.prompt_tokens);
    assert_eq!(sum("completion_tokens"), st.completion_tokens);
    for e in &evs {
        assert_eq!(e["endpoint"], "responses", "{e}");
        assert_eq!(e["path"], "/v1/responses");
        assert_eq!(e["status"], 200);
        assert!(e["cost"].nano() > 0, "{e}");
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_endpoint_requests_total{endpoint=\"responses\",status=\"200\"}"
        ),
        calls as f64
    );
    assert_eq!(
        metric_value(&metrics, "tollgate_uncollected_nanocredits_total"),
        0.0
    );
}

#[tokio::test]
async fn responses_errors_are_in_openai_shape_and_stateful_fields_are_refused() {
    let m = mock().await;
    let gw = gateway(&m).await;
    for (body, param) in [
        (
            json!({"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "gpt-4o", "input": "hi", "background": true}),
            "background",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "no_such_tool"}]}),
            "tools[0].type=no_such_tool",
        ),
        (
            json!({"model": "claude-x", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type=item_reference",
        ),
        (json!({"input": "hi"}), "model"),
    ] {
        let r = responses(&gw, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    // An unknown model: 404 in OpenAI's shape.
    let r = responses(&gw, json!({"model": "nope", "input": "hi"})).await;
    assert_eq!(r.status(), 404);
    // A vendor error on a translated call comes back in OpenAI's shape with its status.
    m.set_behavior(Behavior::Status {
        code: 500,
        retry_after: None,
    });
    let r = responses(&gw, json!({"model": "claude-x", "input": "hi"})).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    // A stream cut by the vendor ends with `error` and `response.failed`, never a clean end.
    m.set_behavior(Behavior::CutStreamAfter { chunks: 2 });
    for model in ["gpt-4o", "claude-x"] {
        // The gateway closes a connection whose upstream broke: a fresh one per call.
        let r = reqwest::Client::new()
            .post(gw.url("/v1/responses"))
            .bearer_auth(&gw.key)
            .json(&json!({"model": model, "input": "hi", "stream": true}))
            .send()
            .await
            .unwrap();
        let evs = events(r).await;
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[names.len() - 2..],
            ["error", "response.failed"],
            "{model}: {names:?}"
        );
        assert!(!names.contains(&"response.completed"));
    }
    m.set_behavior(Behavior::Normal);
}

#[tokio::test]
async fn structured_output_reaches_an_anthropic_upstream_as_a_forced_tool() {
    let m = mock().await;
    let gw = gateway(&m).await;
    let schema = json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]});
    let rf = json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": true}});
    // Chat completions, whole and streamed.
    let r = gw.chat(json!({"model": "claude-x", "messages": [{"role": "user", "content": "Where?"}], "response_format": rf})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(content).unwrap(),
        json!({"location": "Paris"})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    let sent = m.stats().last_request_body.unwrap();
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "structured_output"})
    );
    assert_eq!(sent["tools"][0]["input_schema"], schema);

    let r = gw.chat(json!({"model": "claude-x", "stream": true, "messages": [{"role": "user", "content": "Where?"}], "response_format": rf})).send().await.unwrap();
    let (raw, chunks) = read_sse(r).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"location": "Paris"}),
        "{raw}"
    );
    assert!(!raw.contains("tool_calls"));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));

    // The Responses API's text.format takes the same way.
    let r = responses(&gw, json!({"model": "claude-x", "input": "Where?", "text": {"format": {"type": "json_schema", "name": "place", "schema": schema}}})).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&output_text(&v)).unwrap(),
        json!({"location": "Paris"}),
        "{v}"
    );
    // A schema that is not an object cannot be a tool input: a clear 400.
    let r = gw.chat(json!({"model": "claude-x", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": {"type": "array"}}}})).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn claude_code_fields_are_accepted_and_mapped_for_every_upstream() {
    let m = mock().await;
    let gw = gateway(&m).await;
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 64, "stream": false,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "system", "content": "The user prefers short answers."},
        ]})
    };
    let post = |path: &'static str, b: Value| {
        gw.client
            .post(gw.url(path))
            .header("x-api-key", &gw.key)
            .header("anthropic-version", "2023-06-01")
            .header(
                "anthropic-beta",
                "mid-conversation-system-2025-11-24,context-management-2025-06-27",
            )
            .json(&b)
            .send()
    };
    // Native: passed through as sent (role system included), beta header forwarded.
    let r = post("/v1/messages", body("claude-x")).await.unwrap();
    assert_eq!(r.status(), 200);
    let sent = m.stats().last_request_body.unwrap();
    assert_eq!(sent["messages"][1]["role"], "system");
    assert!(sent.get("context_management").is_some());
    // OpenAI: the system message stays in place, effort becomes reasoning_effort, the context
    // editing (the vendor's own context handling) is dropped.
    let r = post("/v1/messages", body("gpt-4o-mini")).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = m.stats().last_request_body.unwrap();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "system"]);
    assert_eq!(sent["reasoning_effort"], "high");
    assert!(sent.get("context_management").is_none() && sent.get("output_config").is_none());
    // Gemini: system text in systemInstruction, a thinking budget for the effort.
    let r = post("/v1/messages", body("gemini-x")).await.unwrap();
    assert_eq!(r.status(), 200);
    let sent = m.stats().last_request_body.unwrap();
    let sys = sent["systemInstruction"].to_string();
    assert!(
        sys.contains("short answers") && sys.contains("Claude Code"),
        "{sent}"
    );
    assert!(
        sent["generationConfig"]["thinkingConfig"]["thinkingBudget"]
            .as_u64()
            .unwrap()
            > 0
    );
    // A model configured as not reasoning gets no reasoning effort.
    let r = post("/v1/messages", body("plain-x")).await.unwrap();
    assert_eq!(r.status(), 200);
    let sent = m.stats().last_request_body.unwrap();
    assert!(sent.get("reasoning_effort").is_none(), "{sent}");
    // A reasoning model gets its limit as max_completion_tokens (OpenAI refuses max_tokens).
    let r = post("/v1/messages", body("reasoner-x")).await.unwrap();
    assert_eq!(r.status(), 200);
    let sent = m.stats().last_request_body.unwrap();
    assert_eq!(sent["max_completion_tokens"], 64, "{sent}");
    assert!(sent.get("max_tokens").is_none() && sent["reasoning_effort"] == "high");
    // count_tokens for a model without an Anthropic upstream: estimated, fields accepted.
    let r = post("/v1/messages/count_tokens", body("gpt-4o-mini"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-token-count"], "estimate");
    // What cannot be counted is named without blaming a vendor the model is not on.
    let mut b = body("gpt-4o-mini");
    b["mcp_servers"] = json!([]);
    let r = post("/v1/messages/count_tokens", b).await.unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("mcp_servers") && !msg.contains("Gemini"),
        "{msg}"
    );
}

#[tokio::test]
async fn every_authenticated_request_is_recorded_with_endpoint_path_and_model() {
    let m = mock().await;
    let gw = gateway(&m).await;
    // An unknown path with a valid key.
    let r = gw
        .client
        .get(gw.url("/v1/assistants"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A bad Messages body that names a model and asks to stream.
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.key)
        .json(&json!({"model": "claude-x", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A wrong method on a known path.
    let r = gw
        .client
        .get(gw.url("/v1/responses"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Anthropic's model list names no embedding model.
    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .header("x-api-key", &gw.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"claude-x") && !ids.contains(&"text-embedding-3-small"),
        "{ids:?}"
    );
    // An unauthenticated request is not recorded.
    let r = gw.client.get(gw.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let evs = gw.usage_events(4).await;
    let find = |path: &str| {
        evs.iter()
            .find(|e| e["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path}: {evs:?}"))
    };
    let e = find("/v1/assistants");
    assert_eq!(
        (e["endpoint"].as_str(), e["status"].as_u64()),
        (Some("other"), Some(404))
    );
    let e = find("/v1/messages");
    assert_eq!(e["endpoint"], "messages");
    assert_eq!(e["model_requested"], "claude-x");
    assert_eq!(e["stream"], true);
    assert_eq!(e["status"], 400);
    assert_eq!(find("/v1/responses")["status"], 405);
    assert_eq!(find("/v1/models")["endpoint"], "models");
    assert!(evs.iter().all(|e| e["path"] != "/v1/nothing"));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_endpoint_requests_total{endpoint=\"other\",status=\"404\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_endpoint_requests_total{endpoint=\"messages\",status=\"400\"}"
        ),
        1.0
    );
    // The request log line is written after the answer (and the log is buffered): wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.log().contains("/v1/assistants") {
        assert!(
            std::time::Instant::now() < deadline,
            "the request log names the path"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
