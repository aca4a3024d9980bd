#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every caller protocol (OpenAI chat completions, Anthropic Messages) against every upstream
//! protocol (OpenAI, Anthropic, Gemini), through the real gateway and the mock vendor: text,
//! streaming, a tool-call round trip, an image, errors in the caller's shape, and usage events
//! equal to what the mock reported.

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate::mock::{Behavior, MockHandle};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Caller {
    OpenAi,
    Anthropic,
}

const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// A gateway whose channel `main` has one upstream speaking `protocol` on the mock.
async fn gateway(m: &MockHandle, protocol: &str) -> Gateway {
    let base = match protocol {
        "gemini" => m.gemini_base_url(),
        _ => m.base_url(),
    };
    let extra = format!(
        "[[channels.upstreams]]\nname = \"{protocol}\"\nbase_url = \"{base}\"\nprotocol = \"{protocol}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nmodels = [\"gpt-4o-mini\", \"gpt-4o\"]\nmodel_map = {{ \"gpt-4o-mini\" = \"mock-small\" }}\n"
    );
    Gateway::start(&[], "", &extra).await
}

async fn call(gw: &Gateway, caller: Caller, body: Value) -> reqwest::Response {
    match caller {
        Caller::OpenAi => gw.chat(body).send().await.unwrap(),
        Caller::Anthropic => gw
            .client
            .post(gw.url("/v1/messages"))
            .header("x-api-key", &gw.key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap(),
    }
}

fn user_text(caller: Caller, text: &str, max: u64, stream: bool) -> Value {
    match caller {
        Caller::OpenAi => json!({"model": "gpt-4o-mini", "max_tokens": max, "stream": stream,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}),
        Caller::Anthropic => json!({"model": "gpt-4o-mini", "max_tokens": max, "stream": stream,
            "system": "Be brief.", "messages": [{"role": "user", "content": text}]}),
    }
}

/// Text, stop reason and (for tool calls) name + arguments of a whole answer.
fn read_answer(caller: Caller, v: &Value) -> (String, String, Option<(String, String, Value)>) {
    match caller {
        Caller::OpenAi => {
            let c = &v["choices"][0];
            let call = c["message"]["tool_calls"].get(0).map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    t["function"]["name"].as_str().unwrap().to_string(),
                    serde_json::from_str(t["function"]["arguments"].as_str().unwrap()).unwrap(),
                )
            });
            (
                c["message"]["content"].as_str().unwrap_or("").to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
                call,
            )
        }
        Caller::Anthropic => {
            assert_eq!(v["type"], "message");
            let mut text = String::new();
            let mut call = None;
            for b in v["content"].as_array().unwrap() {
                match b["type"].as_str().unwrap() {
                    "text" => text.push_str(b["text"].as_str().unwrap()),
                    "tool_use" => {
                        call = Some((
                            b["id"].as_str().unwrap().to_string(),
                            b["name"].as_str().unwrap().to_string(),
                            b["input"].clone(),
                        ))
                    }
                    _ => {}
                }
            }
            (text, v["stop_reason"].as_str().unwrap().to_string(), call)
        }
    }
}

/// The same from a stream, checking its framing (OpenAI: role first, `[DONE]` last;
/// Anthropic: message_start first, message_stop last, named events).
fn read_stream(caller: Caller, raw: &str) -> (String, String, Option<(String, String, Value)>) {
    let events: Vec<(Option<&str>, &str)> = raw
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = "";
            for l in e.lines() {
                if let Some(n) = l.strip_prefix("event: ") {
                    name = Some(n);
                } else if let Some(d) = l.strip_prefix("data: ") {
                    data = d;
                }
            }
            (name, data)
        })
        .collect();
    let mut text = String::new();
    let mut stop = String::new();
    let (mut id, mut name, mut args) = (String::new(), String::new(), String::new());
    match caller {
        Caller::OpenAi => {
            assert_eq!(events.last().unwrap().1, "[DONE]", "{raw}");
            for (_, d) in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(d).unwrap();
                assert!(v.get("error").is_none(), "{raw}");
                let Some(c) = v["choices"].get(0) else {
                    continue;
                };
                text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
                if let Some(tc) = c["delta"]["tool_calls"].get(0) {
                    id.push_str(tc["id"].as_str().unwrap_or(""));
                    name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
                    args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    stop = f.to_string();
                }
            }
        }
        Caller::Anthropic => {
            assert_eq!(events.first().unwrap().0, Some("message_start"), "{raw}");
            assert_eq!(events.last().unwrap().0, Some("message_stop"), "{raw}");
            for (n, d) in &events {
                let v: Value = serde_json::from_str(d).unwrap();
                assert_eq!(*n, v["type"].as_str(), "{raw}");
                match v["type"].as_str().unwrap() {
                    "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                        id = v["content_block"]["id"].as_str().unwrap().into();
                        name = v["content_block"]["name"].as_str().unwrap().into();
                    }
                    "content_block_delta" => {
                        text.push_str(v["delta"]["text"].as_str().unwrap_or(""));
                        args.push_str(v["delta"]["partial_json"].as_str().unwrap_or(""));
                    }
                    "message_delta" => stop = v["delta"]["stop_reason"].as_str().unwrap().into(),
                    "error" => panic!("{raw}"),
                    _ => {}
                }
            }
        }
    }
    let call = (!name.is_empty()).then(|| (id, name, serde_json::from_str(&args).unwrap()));
    (text, stop, call)
}

fn tools(caller: Caller) -> Value {
    let schema = json!({"type": "object", "properties": {"location": {"type": "string"}}});
    match caller {
        Caller::OpenAi => {
            json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": schema}}])
        }
        Caller::Anthropic => {
            json!([{"name": "get_weather", "description": "Weather now", "input_schema": schema}])
        }
    }
}

/// The follow-up request carrying the tool's result.
fn tool_result(caller: Caller, id: &str, stream: bool) -> Value {
    match caller {
        Caller::OpenAi => {
            json!({"model": "gpt-4o-mini", "stream": stream, "tools": tools(caller), "tool_choice": "none", "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "sunny, 21 C"}]})
        }
        Caller::Anthropic => {
            json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream, "tools": tools(caller),
            "tool_choice": {"type": "none"}, "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "get_weather", "input": {"location": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny, 21 C"}]}]})
        }
    }
}

fn assert_error_shape(caller: Caller, v: &Value) -> String {
    match caller {
        Caller::OpenAi => {
            assert!(v["error"]["type"].is_string(), "{v}");
            v["error"]["message"].as_str().unwrap().to_string()
        }
        Caller::Anthropic => {
            assert_eq!(v["type"], "error", "{v}");
            assert!(v["error"]["type"].is_string(), "{v}");
            v["error"]["message"].as_str().unwrap().to_string()
        }
    }
}

async fn run_pair(caller: Caller, upstream: &str) {
    let m = mock().await;
    m.require_key(Some(UPSTREAM_KEY.into()));
    m.set_cached_tokens(3);
    m.set_cache_write_tokens(2);
    let gw = gateway(&m, upstream).await;
    let (length, end_turn, tool_stop) = match caller {
        Caller::OpenAi => ("length", "stop", "tool_calls"),
        Caller::Anthropic => ("max_tokens", "end_turn", "tool_use"),
    };

    // Text, whole.
    let r = call(&gw, caller, user_text(caller, "Hello there", 5, false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (text, stop, _) = read_answer(caller, &v);
    assert!(text.starts_with("This is a mock reply"), "{v}");
    assert_eq!(stop, length, "{v}");
    let usage_prompt = match caller {
        Caller::OpenAi => v["usage"]["prompt_tokens"].as_u64().unwrap(),
        Caller::Anthropic => {
            v["usage"]["input_tokens"].as_u64().unwrap()
                + v["usage"]["cache_read_input_tokens"].as_u64().unwrap()
                + v["usage"]["cache_creation_input_tokens"].as_u64().unwrap()
        }
    };
    assert_eq!(
        usage_prompt,
        m.stats().prompt_tokens,
        "the caller sees the vendor's usage"
    );

    // Text, streamed.
    let r = call(&gw, caller, user_text(caller, "Hello there", 6, true)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let raw = r.text().await.unwrap();
    let (text, stop, _) = read_stream(caller, &raw);
    assert!(text.starts_with("This is a mock reply"), "{raw}");
    assert_eq!(stop, length);

    // Tool call, whole then streamed, and the result sent back.
    for stream in [false, true] {
        let mut body = user_text(caller, "weather in Paris?", 50, stream);
        body["tools"] = tools(caller);
        let r = call(&gw, caller, body).await;
        assert_eq!(r.status(), 200);
        let (_, stop, call_) = if stream {
            read_stream(caller, &r.text().await.unwrap())
        } else {
            read_answer(caller, &r.json().await.unwrap())
        };
        assert_eq!(stop, tool_stop);
        let (id, name, args) = call_.expect("a tool call");
        assert_eq!(name, "get_weather");
        assert_eq!(args, json!({"location": "Paris"}));
        let r = call(&gw, caller, tool_result(caller, &id, stream)).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        let sent = m.stats().last_request_body.unwrap();
        let s = sent.to_string();
        match upstream {
            "openai" => {
                assert!(s.contains(r#""role":"tool""#) && s.contains(&id), "{s}");
            }
            "anthropic" => {
                assert!(
                    s.contains(r#""type":"tool_result""#) && s.contains(&id),
                    "{s}"
                );
            }
            _ => assert!(
                s.contains(r#""functionResponse":{"name":"get_weather""#),
                "{s}"
            ),
        }
        assert!(s.contains("sunny, 21 C"), "{s}");
    }

    // An image (base64).
    let image = match caller {
        Caller::OpenAi => json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}}]}]}),
        Caller::Anthropic => {
            json!({"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]})
        }
    };
    let r = call(&gw, caller, image).await;
    assert_eq!(r.status(), 200);
    let (text, stop, _) = read_answer(caller, &r.json().await.unwrap());
    assert!(text.contains("What is in this image?"));
    // The OpenAI mock stops at any given limit; the others only when it is reached.
    assert!(stop == end_turn || stop == length, "{stop}");
    let s = m.stats().last_request_body.unwrap().to_string();
    assert!(s.contains(PNG), "{s}");
    match upstream {
        "openai" => assert!(s.contains("data:image/png;base64,")),
        "anthropic" => assert!(s.contains(r#""media_type":"image/png""#)),
        _ => assert!(
            s.contains(r#""inlineData":{"data""#) || s.contains(r#""mimeType":"image/png""#)
        ),
    }

    // The vendor's error (last candidate: passed on) in the caller's shape and status.
    m.push_behavior(Behavior::Status {
        code: 429,
        retry_after: Some(1),
    });
    let r = call(&gw, caller, user_text(caller, "Hello", 5, false)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_error_shape(caller, &v);
    // A feature the upstream cannot express: a 400 naming it, nothing sent upstream.
    let before = m.stats().requests;
    let (bad, param) = match (caller, upstream) {
        (Caller::OpenAi, "openai") | (Caller::Anthropic, "anthropic") => (None, ""),
        (Caller::OpenAi, _) => {
            let mut b = user_text(caller, "x", 5, false);
            b["n"] = json!(2);
            (Some(b), "n")
        }
        (Caller::Anthropic, _) => {
            let mut b = user_text(caller, "x", 5, false);
            b["messages"] = json!([{"role": "user", "content": [{"type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]);
            (Some(b), "messages[0].content[0].type=document")
        }
    };
    if let Some(bad) = bad {
        let r = call(&gw, caller, bad).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        let msg = assert_error_shape(caller, &v);
        assert!(msg.contains(param), "{msg}");
        assert_eq!(m.stats().requests, before);
    }
    // The gateway's own errors too.
    let r = match caller {
        Caller::OpenAi => gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("tg-wrong")
            .json(&user_text(caller, "x", 5, false))
            .send()
            .await
            .unwrap(),
        Caller::Anthropic => gw
            .client
            .post(gw.url("/v1/messages"))
            .header("x-api-key", "tg-wrong")
            .header("anthropic-version", "2023-06-01")
            .json(&user_text(caller, "x", 5, false))
            .send()
            .await
            .unwrap(),
    };
    assert_eq!(r.status(), 401);
    assert_error_shape(caller, &r.json().await.unwrap());

    // Usage events: exactly what the mock reported, token kind by token kind, and charged.
    let n_ok = 7;
    let events = gw.usage_events(n_ok + 1).await;
    let ok: Vec<&Value> = events.iter().filter(|e| e["status"] == 200).collect();
    assert_eq!(ok.len(), n_ok, "{events:?}");
    let sum = |k: &str| ok.iter().map(|e| e[k].as_u64().unwrap()).sum::<u64>();
    let s = m.stats();
    assert_eq!(sum("prompt_tokens"), s.prompt_tokens, "{events:?}");
    assert_eq!(sum("completion_tokens"), s.completion_tokens, "{events:?}");
    assert_eq!(sum("cached_tokens"), s.cached_tokens, "{events:?}");
    assert_eq!(sum("reasoning_tokens"), s.reasoning_tokens, "{events:?}");
    if upstream == "anthropic" {
        assert_eq!(
            sum("cache_write_tokens"),
            s.cache_write_tokens,
            "{events:?}"
        );
        assert!(s.cache_write_tokens > 0);
    }
    assert!(s.cached_tokens > 0);
    assert!(
        ok.iter()
            .all(|e| e["usage_source"] == "vendor" && e["cost"].nano() > 0),
        "{events:?}"
    );
}

#[tokio::test]
async fn openai_caller_openai_upstream() {
    run_pair(Caller::OpenAi, "openai").await;
}

#[tokio::test]
async fn openai_caller_anthropic_upstream() {
    run_pair(Caller::OpenAi, "anthropic").await;
}

#[tokio::test]
async fn openai_caller_gemini_upstream() {
    run_pair(Caller::OpenAi, "gemini").await;
}

#[tokio::test]
async fn anthropic_caller_openai_upstream() {
    run_pair(Caller::Anthropic, "openai").await;
}

#[tokio::test]
async fn anthropic_caller_anthropic_upstream() {
    run_pair(Caller::Anthropic, "anthropic").await;
}

#[tokio::test]
async fn anthropic_caller_gemini_upstream() {
    run_pair(Caller::Anthropic, "gemini").await;
}

/// Two upstreams of different protocols on one channel: the first attempt fails with a 5xx
/// (Anthropic's 529 or Gemini's 503), the request is translated again for the other one, and
/// usage stays exact.
#[tokio::test]
async fn failover_between_protocols_retranslates_and_meters_exactly() {
    let m = mock().await;
    m.require_key(Some(UPSTREAM_KEY.into()));
    let up = |name: &str, base: String| {
        format!("[[channels.upstreams]]\nname = \"{name}\"\nbase_url = \"{base}\"\nprotocol = \"{name}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nmodels = [\"gpt-4o-mini\"]\n")
    };
    let extra = up("anthropic", m.base_url()) + &up("gemini", m.gemini_base_url());
    let gw = Gateway::start(&[], "", &extra).await;
    for (i, caller) in [
        Caller::OpenAi,
        Caller::Anthropic,
        Caller::OpenAi,
        Caller::Anthropic,
    ]
    .into_iter()
    .enumerate()
    {
        m.push_behavior(Behavior::Status {
            code: if i % 2 == 0 { 529 } else { 503 },
            retry_after: None,
        });
        let r = call(&gw, caller, user_text(caller, "Hello there", 7, i >= 2)).await;
        assert_eq!(r.status(), 200);
        let (text, _, _) = if i >= 2 {
            read_stream(caller, &r.text().await.unwrap())
        } else {
            read_answer(caller, &r.json().await.unwrap())
        };
        assert!(text.starts_with("This is a mock reply"));
    }
    let events = gw.usage_events(4).await;
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| e["attempts"] == 2 && e["status"] == 200),
        "{events:?}"
    );
    let s = m.stats();
    assert_eq!(s.messages_requests + s.gemini_requests, 8);
    let sum = |k: &str| events.iter().map(|e| e[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("prompt_tokens"), s.prompt_tokens);
    assert_eq!(sum("completion_tokens"), s.completion_tokens);
    assert_eq!(s.completion_tokens, 4 * 7);
}

/// The credit hold covers what is sent upstream, not what the caller wrote: `reasoning_effort`
/// becomes a thinking budget (Anthropic raises `max_tokens` above it, Gemini gets it beside
/// `maxOutputTokens`), so a caller asking for 1 token may make the upstream produce 1,025. A
/// balance that covers 1 token but not 1,025 is refused before the upstream is contacted;
/// once it covers the translated worst case the call is served and charged in full.
#[tokio::test]
async fn credit_hold_covers_the_translated_worst_case() {
    // gpt-4o-mini output: $0.60 per 1M x 7.2 = 4,320 nano-credits per token.
    const OUTPUT_NANO: u64 = 4_320;
    for upstream in ["anthropic", "gemini"] {
        let m = mock().await;
        let gw = gateway(&m, upstream).await;
        gw.admin_post("/admin/tenants", json!({"name": "lean"}))
            .await;
        // 0.002 credits: about 460 output tokens, far above the caller's 1, far below 1,025.
        gw.admin_post("/admin/tenants/lean/topups", json!({"amount_rmb": "0.002"}))
            .await;
        let key = gw
            .create_key(json!({"tenant": "lean", "name": "k", "default_channel": "main"}))
            .await;
        let ask = |effort: bool| {
            let mut body = json!({"model": "gpt-4o-mini", "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hello"}]});
            if effort {
                body["reasoning_effort"] = json!("low");
            }
            gw.client
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
        };

        let r = ask(true).await.unwrap();
        assert_eq!(r.status(), 402, "{upstream}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap().to_string();
        let held: f64 = msg
            .split("may cost up to ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            held * 1e9 >= (1 + 1024) as f64 * OUTPUT_NANO as f64,
            "{upstream}: the hold must cover 1 + 1024 thinking tokens: {msg}"
        );
        assert_eq!(
            m.stats().requests,
            0,
            "{upstream}: refused before the upstream"
        );

        // Without the thinking budget the same balance is enough: the refusal was the budget.
        let r = ask(false).await.unwrap();
        assert_eq!(r.status(), 200, "{upstream}");
        let _ = r.bytes().await.unwrap();

        // Covered: served, charged the whole usage, nothing uncollected, the books balance.
        gw.admin_post("/admin/tenants/lean/topups", json!({"amount_rmb": "0.01"}))
            .await;
        let r = ask(true).await.unwrap();
        assert_eq!(r.status(), 200, "{upstream}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["usage"]["completion_tokens"].as_u64().unwrap() > 1,
            "{upstream}: thinking was produced: {v}"
        );
        let events: Vec<Value> = gw
            .usage_events(3)
            .await
            .into_iter()
            .filter(|e| e["status"] == 200)
            .collect();
        assert_eq!(events.len(), 2, "{upstream}: {events:?}");
        let charges = loop {
            let l = gw.admin_get("/admin/tenants/lean/ledger").await;
            let c: Vec<Value> = l["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["entry"]["kind"] == "charge")
                .cloned()
                .collect();
            if c.len() >= 2 {
                break c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        };
        for e in &events {
            let c = charges
                .iter()
                .find(|c| c["entry"]["request_id"] == e["request_id"])
                .unwrap();
            assert_eq!(c["entry"]["uncollected"], "0", "{upstream}: {c}");
            assert_eq!(c["entry"]["amount"].nano(), -e["cost"].nano(), "{upstream}");
        }
        let b = gw.balance("lean").await;
        assert_eq!(b["reserved"], "0", "{b}");
        assert_eq!(
            b["available"].nano() + b["charged"].nano(),
            b["credited"].nano(),
            "{b}"
        );
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(&metrics, "tollgate_uncollected_nanocredits_total"),
            0.0,
            "{upstream}"
        );
    }
}

/// Anthropic cache writes reach the analytics roll-ups: whatever the caller's protocol and
/// streaming, the tenant's analytics (total, hourly, by model) equal the sum of the usage
/// events, cache writes and cost included, and the cache writes equal the vendor's.
#[tokio::test]
async fn analytics_carry_cache_writes_equal_to_the_usage_events() {
    let m = mock().await;
    m.set_cached_tokens(2);
    m.set_cache_write_tokens(3);
    let gw = gateway(&m, "anthropic").await;
    for caller in [Caller::OpenAi, Caller::Anthropic] {
        for stream in [false, true] {
            let r = call(
                &gw,
                caller,
                user_text(caller, "Tell me about prompt caching please", 6, stream),
            )
            .await;
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }
    }
    let events = gw.usage_events(4).await;
    assert_eq!(events.len(), 4);
    let sum = |k: &str| events.iter().map(|e| e[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("cache_write_tokens"), 4 * 3, "{events:?}");
    assert_eq!(
        sum("cache_write_tokens") as u64,
        m.stats().cache_write_tokens
    );
    for q in [
        "",
        "?granularity=hour",
        "?group_by=model",
        "?granularity=day&group_by=key",
    ] {
        let v = gw
            .admin_get(&format!("/admin/tenants/acme/analytics{q}"))
            .await;
        let rows = v["data"].as_array().unwrap();
        let total = |k: &str| rows.iter().map(|r| r[k].as_i64().unwrap()).sum::<i64>();
        for k in [
            "prompt_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "completion_tokens",
        ] {
            assert_eq!(total(k), sum(k), "{q}: {k}: {v}");
        }
        let credits: i64 = rows.iter().map(|r| r["credits"].nano()).sum();
        let cost: i64 = events.iter().map(|e| e["cost"].nano()).sum();
        assert_eq!(credits, cost, "{q}: credits: {v}");
        assert_eq!(total("requests"), 4, "{q}");
    }
}

/// A translated stream cut by the upstream ends with an error event in the caller's format
/// (never a clean end), and what was produced before the cut is billed.
#[tokio::test]
async fn cut_translated_stream_ends_with_callers_error_and_bills_what_was_sent() {
    for (caller, upstream) in [
        (Caller::Anthropic, "openai"),
        (Caller::OpenAi, "anthropic"),
        (Caller::Anthropic, "gemini"),
    ] {
        let m = mock().await;
        let gw = gateway(&m, upstream).await;
        m.push_behavior(Behavior::CutStreamAfter { chunks: 3 });
        let r = call(&gw, caller, user_text(caller, "Hello there", 10, true)).await;
        assert_eq!(r.status(), 200);
        let raw = r.text().await.unwrap();
        let last = raw.trim_end().rsplit("\n\n").next().unwrap().to_string();
        match caller {
            Caller::Anthropic => {
                assert!(last.starts_with("event: error\ndata: "), "{raw}");
                assert!(!raw.contains("message_stop"), "{raw}");
            }
            Caller::OpenAi => {
                assert!(last.starts_with("data: {\"error\""), "{raw}");
                assert!(!raw.contains("[DONE]"), "{raw}");
            }
        }
        let events = gw.usage_events(1).await;
        let e = &events[0];
        assert!(
            e["error_code"] == "truncated" || e["error_code"] == "upstream_broken",
            "{e}"
        );
        assert_eq!(e["completion_tokens"], 3, "{upstream}: {e}");
        assert_eq!(m.stats().completion_tokens, 3);
        assert!(e["cost"].nano() > 0);
    }
}

/// A translated body far beyond Pingora's 64 KiB retry buffer reaches the upstream whole, on
/// the first attempt and after a failover (the substitution of src/proxy/body.rs).
#[tokio::test]
async fn large_translated_bodies_reach_the_upstream_whole() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m), Up::mock("b", &m)], "", "").await;
    let big = "lorem ipsum ".repeat(100_000); // 1.2 MB
    for retry in [false, true] {
        if retry {
            m.push_behavior(Behavior::Status {
                code: 500,
                retry_after: None,
            });
        }
        let r = call(
            &gw,
            Caller::Anthropic,
            user_text(Caller::Anthropic, &big, 5, false),
        )
        .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "message");
        let sent = m.stats().last_request_body.unwrap();
        assert_eq!(
            sent["messages"][1]["content"].as_str().unwrap().len(),
            big.len()
        );
    }
    let events = gw.usage_events(2).await;
    assert_eq!(events[0]["attempts"], 2, "{events:?}");
}

/// Anthropic callers get Anthropic's validation, `count_tokens`, the model list in Anthropic's
/// format and the gateway's own refusals in Anthropic's error shape.
#[tokio::test]
async fn anthropic_endpoints_validate_count_and_list_in_anthropics_shape() {
    let m = mock().await;
    let gw = gateway(&m, "anthropic").await;
    let post = |path: &str, body: Value| {
        gw.client
            .post(gw.url(path))
            .header("x-api-key", &gw.key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
    };
    let cases = [
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}),
            400,
            "invalid_request_error",
            "role",
        ),
        (
            json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            404,
            "not_found_error",
            "nope",
        ),
    ];
    for (body, status, kind, needle) in cases {
        let r = post("/v1/messages", body).send().await.unwrap();
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    assert_eq!(m.stats().requests, 0);

    let r = post(
        "/v1/messages/count_tokens",
        json!({"model": "gpt-4o-mini", "system": "Be brief.", "messages": [{"role": "user", "content": "Hello there"}]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let n = r.json::<Value>().await.unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    assert!(n >= 4, "{n}");
    assert_eq!(
        m.stats().count_tokens_requests,
        1,
        "asked the Anthropic upstream"
    );

    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .header("x-api-key", &gw.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["data"][0]["type"], "model");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini"), "{v}");
    // The OpenAI list for OpenAI clients.
    let v: Value = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
}

/// `count_tokens` is Anthropic's own count when the caller's channel has an Anthropic upstream
/// for the model (model name mapped, the upstream's credential), and the gateway's estimate
/// when it has none or that upstream cannot answer (5xx, no such endpoint); the
/// `x-tollgate-token-count` header says which.
#[tokio::test]
async fn count_tokens_asks_the_anthropic_upstream_else_estimates() {
    let body = json!({"model": "gpt-4o-mini", "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello there, how many tokens is this?"}]});
    let exact = tiktoken_rs::o200k_base()
        .unwrap()
        .encode_ordinary("Be brief.Hello there, how many tokens is this?")
        .len() as u64;
    let count = |gw: &Gateway| {
        gw.client
            .post(gw.url("/v1/messages/count_tokens"))
            .header("x-api-key", &gw.key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let read = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        let source = r.headers()["x-tollgate-token-count"]
            .to_str()
            .unwrap()
            .to_string();
        let n = r.json::<Value>().await.unwrap()["input_tokens"]
            .as_u64()
            .unwrap();
        (source, n)
    };

    // A channel with an OpenAI and an Anthropic upstream: only the Anthropic one is asked.
    let m = mock().await;
    m.require_key(Some(UPSTREAM_KEY.into()));
    let extra = format!("[[channels.upstreams]]\nname = \"anthropic\"\nbase_url = \"{}\"\nprotocol = \"anthropic\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nmodels = [\"gpt-4o-mini\"]\nmodel_map = {{ \"gpt-4o-mini\" = \"claude-small\" }}\n", m.base_url());
    let gw = Gateway::start(&[Up::mock("openai", &m)], "", &extra).await;
    for _ in 0..3 {
        let (source, n) = read(count(&gw).await.unwrap()).await;
        assert_eq!((source.as_str(), n), ("vendor", exact));
    }
    let s = m.stats();
    assert_eq!((s.count_tokens_requests, s.chat_requests), (3, 0));
    assert_eq!(s.last_request_body.unwrap()["model"], "claude-small");

    // The vendor cannot answer: estimated instead, never an error for a count.
    for code in [503, 404] {
        m.push_behavior(Behavior::Status {
            code,
            retry_after: None,
        });
        let (source, n) = read(count(&gw).await.unwrap()).await;
        assert_eq!(source, "estimate", "{code}");
        assert!(n >= exact, "{code}: {n}");
    }
    assert_eq!(m.stats().count_tokens_requests, 3);
    // Free: no charge for any of them.
    assert_eq!(gw.balance("acme").await["charged"], "0");

    // No Anthropic upstream on the channel: estimated, nothing sent.
    for upstream in ["openai", "gemini"] {
        let m = mock().await;
        let gw = gateway(&m, upstream).await;
        let (source, n) = read(count(&gw).await.unwrap()).await;
        assert_eq!(source, "estimate", "{upstream}");
        assert!(n >= exact, "{upstream}: {n}");
        assert_eq!(m.stats().requests, 0, "{upstream}");
    }
}

/// Reasoning settings cross protocols, thinking comes back as the caller's reasoning, and
/// thinking tokens reach the usage event.
#[tokio::test]
async fn thinking_crosses_protocols_and_is_metered() {
    // OpenAI caller, Gemini upstream: reasoning_effort -> thinkingConfig; thoughts come back as
    // reasoning_content and are counted as reasoning tokens.
    let m = mock().await;
    let gw = gateway(&m, "gemini").await;
    let body = json!({"model": "gpt-4o-mini", "reasoning_effort": "low", "max_tokens": 5,
        "messages": [{"role": "user", "content": "Hello"}]});
    let v: Value = gw
        .chat(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"], "Thinking about it.",
        "{v}"
    );
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"], 4,
        "{v}"
    );
    let sent = m.stats().last_request_body.unwrap();
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        1024
    );
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let raw = gw
        .chat(streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        raw.contains(r#""reasoning_content":"Thinking about it.""#),
        "{raw}"
    );
    let events = gw.usage_events(2).await;
    assert!(
        events
            .iter()
            .all(|e| e["reasoning_tokens"] == 4 && e["completion_tokens"] == 9),
        "{events:?}"
    );
    assert_eq!(m.stats().reasoning_tokens, 8);

    // OpenAI caller, Anthropic upstream: reasoning_effort -> thinking budget; the thinking block
    // comes back as reasoning_content, streamed too.
    let m = mock().await;
    let gw = gateway(&m, "anthropic").await;
    let body = json!({"model": "gpt-4o-mini", "reasoning_effort": "low", "max_tokens": 2000, "stream": true,
        "messages": [{"role": "user", "content": "Hello"}]});
    let raw = gw.chat(body).send().await.unwrap().text().await.unwrap();
    assert!(raw.contains(r#""reasoning_content":"Thinking""#), "{raw}");
    let sent = m.stats().last_request_body.unwrap();
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    let events = gw.usage_events(1).await;
    assert_eq!(
        events[0]["completion_tokens"].as_u64(),
        Some(m.stats().completion_tokens)
    );
}

/// A Gemini thinking model's signed function call survives the round trip through either
/// caller, whole and streamed: the signature rides in the tool-call id and goes back on the
/// call in the next turn. The mock refuses (like Gemini 3) a thinking turn whose history has an
/// unsigned call, so the same follow-up with a plain id is the caller's 400.
#[tokio::test]
async fn gemini_thought_signature_round_trips_in_tool_call_ids() {
    let m = mock().await;
    let gw = gateway(&m, "gemini").await;
    let think = |caller: Caller, body: &mut Value| match caller {
        Caller::OpenAi => body["reasoning_effort"] = json!("low"),
        Caller::Anthropic => {
            body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
            body["max_tokens"] = json!(2000);
        }
    };
    for caller in [Caller::OpenAi, Caller::Anthropic] {
        for stream in [false, true] {
            let mut body = user_text(caller, "weather in Paris?", 50, stream);
            body["tools"] = tools(caller);
            think(caller, &mut body);
            let r = call(&gw, caller, body).await;
            assert_eq!(r.status(), 200);
            let (_, _, called) = if stream {
                read_stream(caller, &r.text().await.unwrap())
            } else {
                read_answer(caller, &r.json().await.unwrap())
            };
            let (id, name, _) = called.unwrap();
            assert_eq!(name, "get_weather");
            assert!(id.contains("__thought__"), "{caller:?} {stream}: {id}");

            let mut next = tool_result(caller, &id, stream);
            think(caller, &mut next);
            let r = call(&gw, caller, next.clone()).await;
            assert_eq!(r.status(), 200, "{caller:?} {stream}");
            let _ = r.bytes().await.unwrap();
            let sent = m.stats().last_request_body.unwrap();
            assert_eq!(
                sent["contents"][1]["parts"][0]["thoughtSignature"],
                tollgate::mock::GEMINI_THOUGHT_SIGNATURE,
                "{sent}"
            );

            // Without the signature (a plain id) the thinking model refuses the turn.
            let plain = id.split("__thought__").next().unwrap();
            let mut bare = tool_result(caller, plain, stream);
            think(caller, &mut bare);
            let r = call(&gw, caller, bare).await;
            assert_eq!(r.status(), 400, "{caller:?} {stream}");
            let v: Value = r.json().await.unwrap();
            assert!(
                assert_error_shape(caller, &v).contains("thought_signature"),
                "{v}"
            );
        }
    }
}

/// Upstream events cut at awkward offsets over the network (inside `data:`, inside the JSON,
/// between the two newlines) translate exactly as whole ones.
#[tokio::test]
async fn fragmented_upstream_streams_translate_exactly() {
    for upstream in ["openai", "anthropic", "gemini"] {
        let m = mock().await;
        m.set_fragmented_writes(true);
        let gw = gateway(&m, upstream).await;
        for caller in [Caller::OpenAi, Caller::Anthropic] {
            let r = call(&gw, caller, user_text(caller, "Hello there", 8, true)).await;
            let (text, _, _) = read_stream(caller, &r.text().await.unwrap());
            let expected = tollgate::mock::reply_text("Hello there", 8);
            assert_eq!(text, expected, "{upstream}");
            let mut body = user_text(caller, "weather in Paris?", 50, true);
            body["tools"] = tools(caller);
            let (_, _, call_) =
                read_stream(caller, &call(&gw, caller, body).await.text().await.unwrap());
            assert_eq!(call_.unwrap().2, json!({"location": "Paris"}), "{upstream}");
        }
    }
}
