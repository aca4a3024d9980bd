//! Table tests of every translation, with streams recorded in tests/fixtures/streams (shaped
//! as the vendors document them) fed at every split offset.

use super::*;
use crate::protocol::{anthropic, gemini, Dialect, TranslateError};
use serde_json::{json, Value};

const A_TOOL: &str = include_str!("../../tests/fixtures/streams/anthropic_text_tool.sse");
const A_THINK: &str = include_str!("../../tests/fixtures/streams/anthropic_thinking.sse");
const O_TOOL: &str = include_str!("../../tests/fixtures/streams/openai_text_tool.sse");
const G_CALL: &str = include_str!("../../tests/fixtures/streams/gemini_text_call.sse");

fn names() -> Names {
    Names {
        id: "req_1".into(),
        model: "caller-model".into(),
        created: 7,
        ..Default::default()
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

// ----- requests ---------------------------------------------------------------------------------

#[test]
fn anthropic_request_to_openai() {
    let a = obj(json!({
        "model": "claude", "max_tokens": 100, "stream": true,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
                {"type": "text", "text": "thanks"}]}
        ]
    }));
    let o = anthropic::to_openai(&a, Dialect::OpenAi).unwrap();
    assert_eq!(
        Value::Object(o),
        json!({
            "model": "claude", "max_tokens": 100, "stream": true, "stop": ["END"],
            "temperature": 0.5, "top_p": 0.9, "user": "u1", "reasoning_effort": "medium",
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
                {"role": "user", "content": "thanks"}
            ]
        })
    );
}

#[test]
fn openai_request_to_anthropic() {
    let o = obj(json!({
        "model": "gpt", "max_tokens": 50, "stream": true, "stream_options": {"include_usage": true},
        "stop": "END", "temperature": 0.2, "user": "u1", "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "thanks"}
        ]
    }));
    let a = anthropic::from_openai(&o, 4096).unwrap();
    assert_eq!(
        Value::Object(a),
        json!({
            "model": "gpt", "max_tokens": 50, "stream": true, "stop_sequences": ["END"],
            "temperature": 0.2, "metadata": {"user_id": "u1"},
            "system": [{"type": "text", "text": "Be brief."}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "text", "text": "thanks"}]}
            ]
        })
    );
    // No max_tokens: Anthropic requires one; reasoning adds room for the budget.
    let a = anthropic::from_openai(
        &obj(json!({"model": "m", "reasoning_effort": "low", "messages": [{"role": "user", "content": "hi"}]})),
        512,
    )
    .unwrap();
    assert_eq!(a["max_tokens"], 512 + 1024);
    assert_eq!(
        a["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
}

#[test]
fn openai_request_to_gemini() {
    let o = obj(json!({
        "model": "gemini", "max_completion_tokens": 64, "stop": ["X"], "temperature": 0.3,
        "top_p": 0.8, "seed": 3, "reasoning_effort": "medium",
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "w",
            "parameters": {"type": "object", "additionalProperties": false, "properties": {"location": {"type": "string"}}}}}],
        "tool_choice": "required",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
        ]
    }));
    let g = gemini::from_openai(&o).unwrap();
    assert_eq!(
        Value::Object(g),
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Look"}, {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}]},
                {"role": "model", "parts": [{"text": ""}, {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}
            ],
            "generationConfig": {"maxOutputTokens": 64, "stopSequences": ["X"], "temperature": 0.3,
                "topP": 0.8, "seed": 3, "responseMimeType": "application/json",
                "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": true}},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "w",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}
        })
    );
}

#[test]
fn anthropic_request_to_gemini_keeps_top_k_and_budget() {
    let a = obj(json!({
        "model": "m", "max_tokens": 10, "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 3000},
        "messages": [{"role": "user", "content": "hi"}]
    }));
    let g = gemini::from_anthropic(&a).unwrap();
    assert_eq!(g["generationConfig"]["topK"], 5);
    assert_eq!(g["generationConfig"]["maxOutputTokens"], 10);
    assert_eq!(
        g["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 3000, "includeThoughts": true})
    );
    assert_eq!(
        g["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );
}

/// What the credit hold must cover is read from the body actually sent upstream: a thinking
/// budget added by the translation raises it.
#[test]
fn worst_case_output_of_translated_requests() {
    let ceiling = 1000;
    let openai = |v: Value| obj(v);
    let cases: Vec<(&str, Dialect, Map<String, Value>, u64)> = vec![
        (
            "openai as sent, n multiplies",
            Dialect::OpenAi,
            openai(json!({"max_completion_tokens": 50, "max_tokens": 9, "n": 3})),
            150,
        ),
        (
            "openai without a limit",
            Dialect::OpenAi,
            openai(json!({})),
            ceiling,
        ),
        (
            "openai -> anthropic, effort raises max_tokens above the budget",
            Dialect::Anthropic,
            anthropic::from_openai(
                &openai(
                    json!({"model": "m", "max_tokens": 100, "reasoning_effort": "high",
                    "messages": [{"role": "user", "content": "hi"}]}),
                ),
                ceiling,
            )
            .unwrap(),
            100 + 16384,
        ),
        (
            "openai -> anthropic, no limit: the default fills max_tokens",
            Dialect::Anthropic,
            anthropic::from_openai(
                &openai(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
                ceiling,
            )
            .unwrap(),
            ceiling,
        ),
        (
            "openai -> gemini, the thinking budget on top of maxOutputTokens",
            Dialect::Gemini,
            gemini::from_openai(&openai(json!({"model": "m", "max_tokens": 5,
                "reasoning_effort": "medium", "messages": [{"role": "user", "content": "hi"}]})))
            .unwrap(),
            5 + 8192,
        ),
        (
            "openai -> gemini, no limit: the ceiling plus the budget",
            Dialect::Gemini,
            gemini::from_openai(&openai(json!({"model": "m", "reasoning_effort": "low",
                "messages": [{"role": "user", "content": "hi"}]})))
            .unwrap(),
            ceiling + 1024,
        ),
        (
            "anthropic -> gemini keeps the exact budget",
            Dialect::Gemini,
            gemini::from_anthropic(&obj(json!({"model": "m", "max_tokens": 3000,
                "thinking": {"type": "enabled", "budget_tokens": 2000},
                "messages": [{"role": "user", "content": "hi"}]})))
            .unwrap(),
            5000,
        ),
        (
            "gemini candidates multiply, a negative (dynamic) budget adds nothing",
            Dialect::Gemini,
            obj(
                json!({"generationConfig": {"maxOutputTokens": 10, "candidateCount": 2,
                "thinkingConfig": {"thinkingBudget": -1}}}),
            ),
            20,
        ),
    ];
    for (name, dialect, body, want) in cases {
        assert_eq!(
            crate::protocol::max_output_tokens(dialect, &body, ceiling),
            want,
            "{name}"
        );
    }
}

#[test]
fn features_without_equivalent_are_named_errors() {
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let a_cases: Vec<(Value, Dialect, &str)> = vec![
        (
            json!({"model": "m", "max_tokens": 1, "messages": user(json!([{"type": "document", "source": {}}]))}),
            Dialect::OpenAi,
            "messages[0].content[0].type=document",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "top_k": 3, "messages": user(json!("x"))}),
            Dialect::OpenAi,
            "top_k",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "mcp_servers": [], "messages": user(json!("x"))}),
            Dialect::OpenAi,
            "mcp_servers",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": user(json!("x"))}),
            Dialect::OpenAi,
            "tools[0].type=web_search_20250305",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": user(json!([{"type": "image", "source": {"type": "url", "url": "https://x"}}]))}),
            Dialect::Gemini,
            "messages[0].content[0].image_url.url (image by URL; send it as base64)",
        ),
    ];
    for (a, target, param) in a_cases {
        let e: TranslateError = match target {
            Dialect::Gemini => gemini::from_anthropic(&obj(a)).unwrap_err(),
            _ => anthropic::to_openai(&obj(a), target).unwrap_err(),
        };
        assert_eq!(e.param.as_deref(), Some(param), "{e}");
        assert!(e.message.contains(param), "{e}");
    }
    let o_cases: Vec<(Value, &str)> = vec![
        (
            json!({"model": "m", "n": 2, "messages": user(json!("x"))}),
            "n",
        ),
        (
            json!({"model": "m", "logprobs": true, "messages": user(json!("x"))}),
            "logprobs",
        ),
        (
            json!({"model": "m", "presence_penalty": 0.5, "messages": user(json!("x"))}),
            "presence_penalty",
        ),
        (
            json!({"model": "m", "temperature": 1.5, "messages": user(json!("x"))}),
            "temperature",
        ),
        (
            json!({"model": "m", "messages": user(json!([{"type": "input_audio", "input_audio": {}}]))}),
            "messages[0].content[0].type=input_audio",
        ),
        (
            json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]}),
            "messages[0].name",
        ),
    ];
    for (o, param) in o_cases {
        let e = anthropic::from_openai(&obj(o), 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{e}");
    }
    let e = gemini::from_openai(&obj(json!({"model": "m", "messages": [
        {"role": "tool", "tool_call_id": "nope", "content": "x"}]})))
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
    let e = gemini::from_openai(&obj(
        json!({"model": "m", "logit_bias": {"1": 2}, "messages": user(json!("x"))}),
    ))
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("logit_bias"));
}

// ----- whole responses ----------------------------------------------------------------------------

#[test]
fn usage_normalisation() {
    let a = anthropic::parse_usage(&json!({"input_tokens": 10, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20, "output_tokens": 5}))
    .unwrap();
    assert_eq!(
        a,
        Usage {
            prompt_tokens: 130,
            cached_tokens: 100,
            completion_tokens: 5,
            reasoning_tokens: 0,
            cache_write_tokens: 20
        }
    );
    assert_eq!(
        anthropic::usage_value(&a),
        json!({"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 5})
    );
    let g = gemini::parse_usage(&json!({"promptTokenCount": 90, "candidatesTokenCount": 20,
        "thoughtsTokenCount": 12, "cachedContentTokenCount": 40}))
    .unwrap();
    assert_eq!(
        g,
        Usage {
            prompt_tokens: 90,
            cached_tokens: 40,
            completion_tokens: 32,
            reasoning_tokens: 12,
            cache_write_tokens: 0
        }
    );
    let t = crate::billing::pricing::TokenCounts::from_usage(&a);
    assert_eq!(
        (t.input, t.cached_input, t.cache_write, t.output),
        (10, 100, 20, 5)
    );
}

#[test]
fn whole_responses_between_formats() {
    let anthropic_body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 5}});
    let r = reply_from(Dialect::Anthropic, anthropic_body.to_string().as_bytes()).unwrap();
    let o: Value = serde_json::from_slice(&reply_to(Dialect::OpenAi, &r, &names())).unwrap();
    assert_eq!(
        o,
        json!({"id": "chatcmpl-req_1", "object": "chat.completion", "created": 7, "model": "caller-model",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.", "reasoning_content": "hmm",
                "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                "prompt_tokens_details": {"cached_tokens": 100}, "completion_tokens_details": {"reasoning_tokens": 0}}})
    );
    // And back: the Anthropic caller sees its own shape again.
    let back: Value = serde_json::from_slice(&reply_to(Dialect::Anthropic, &r, &names())).unwrap();
    assert_eq!(back["content"], anthropic_body["content"]);
    assert_eq!(back["usage"], anthropic_body["usage"]);
    assert_eq!(back["stop_reason"], "tool_use");

    let openai_body = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt",
        "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Hi there"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 1}}});
    let r = reply_from(Dialect::OpenAi, openai_body.to_string().as_bytes()).unwrap();
    let a: Value = serde_json::from_slice(&reply_to(Dialect::Anthropic, &r, &names())).unwrap();
    assert_eq!(
        a,
        json!({"id": "msg_req_1", "type": "message", "role": "assistant", "model": "caller-model",
            "content": [{"type": "text", "text": "Hi there"}], "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 8, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0, "output_tokens": 3}})
    );

    let gemini_body = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "plan", "thought": true}, {"text": "Hel"}, {"text": "lo"},
            {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "thoughtsTokenCount": 2, "cachedContentTokenCount": 3}});
    let r = reply_from(Dialect::Gemini, gemini_body.to_string().as_bytes()).unwrap();
    assert_eq!(r.stop, Stop::ToolUse);
    let o: Value = serde_json::from_slice(&reply_to(Dialect::OpenAi, &r, &names())).unwrap();
    assert_eq!(o["choices"][0]["message"]["content"], "Hello");
    assert_eq!(o["choices"][0]["message"]["reasoning_content"], "plan");
    assert_eq!(o["choices"][0]["message"]["tool_calls"][0]["id"], "call_1");
    assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(o["usage"]["completion_tokens"], 6);
    assert_eq!(
        o["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );
    let a: Value = serde_json::from_slice(&reply_to(Dialect::Anthropic, &r, &names())).unwrap();
    assert_eq!(
        a["content"][2],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}})
    );
    assert_eq!(a["usage"]["input_tokens"], 6);

    // Billing reads the same numbers from the untranslated body.
    let (u, _) = usage_of(Dialect::Gemini, gemini_body.to_string().as_bytes());
    assert_eq!(u.unwrap().completion_tokens, 6);
    let (u, text) = usage_of(
        Dialect::Anthropic,
        br#"{"content":[{"type":"text","text":"abc"}],"stop_reason":"end_turn"}"#,
    );
    assert_eq!((u, text.as_deref()), (None, Some("abc")));
}

#[test]
fn errors_between_formats() {
    let anthropic_overloaded =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let (s, b) = error_to(Dialect::OpenAi, 529, anthropic_overloaded);
    assert_eq!(s, 503);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["message"], "Overloaded");
    assert_eq!(v["error"]["type"], "api_error");
    let gemini_bad =
        br#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
    let (s, b) = error_to(Dialect::Anthropic, 400, gemini_bad);
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap(),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Invalid JSON payload"}})
    );
    let (s, b) = error_to(
        Dialect::Anthropic,
        429,
        br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(s, 429);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["error"]["type"],
        "rate_limit_error"
    );
    let (_, b) = error_to(Dialect::OpenAi, 502, b"<html>bad gateway</html>");
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["error"]["message"],
        "<html>bad gateway</html>"
    );
}

// ----- streams ------------------------------------------------------------------------------------

fn feed(
    up: Dialect,
    caller: Dialect,
    pieces: &[&[u8]],
    wants_usage: bool,
) -> (Vec<u8>, StreamTranslator) {
    let mut t = StreamTranslator::new(up, caller, names(), wants_usage);
    let mut out = BytesMut::new();
    for p in pieces {
        t.on_chunk(p, &mut out);
    }
    t.finish(&mut out);
    (out.to_vec(), t)
}

/// Feeding the stream in two pieces at every offset, and byte by byte, gives exactly the
/// output of feeding it whole.
fn every_split(up: Dialect, caller: Dialect, input: &str) -> (Vec<u8>, StreamTranslator) {
    let b = input.as_bytes();
    let (whole, t) = feed(up, caller, &[b], true);
    for i in 0..=b.len() {
        let (out, _) = feed(up, caller, &[&b[..i], &b[i..]], true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole),
            "split at {i}"
        );
    }
    let bytes: Vec<&[u8]> = b.chunks(1).collect();
    assert_eq!(feed(up, caller, &bytes, true).0, whole, "byte by byte");
    (whole, t)
}

fn data_events(out: &[u8]) -> Vec<(Option<String>, Value)> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let v = if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(&data).unwrap_or_else(|_| panic!("bad event data {data}"))
            };
            (name, v)
        })
        .collect()
}

/// An OpenAI stream as seen by a client: content, reasoning, tool calls by index, finish
/// reason, usage; checks the framing (role first, [DONE] last).
#[derive(Debug, Default, PartialEq)]
struct OpenAiSeen {
    text: String,
    reasoning: String,
    tools: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
}

fn openai_seen(out: &[u8]) -> OpenAiSeen {
    let evs = data_events(out);
    assert_eq!(evs.last().map(|e| e.1.clone()), Some(json!("[DONE]")));
    assert_eq!(evs[0].1["choices"][0]["delta"]["role"], "assistant");
    let mut s = OpenAiSeen::default();
    for (_, v) in evs {
        if v == json!("[DONE]") {
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "caller-model");
        if !v["usage"].is_null() {
            s.usage = Some(v["usage"].clone());
        }
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        let d = &c["delta"];
        s.text.push_str(d["content"].as_str().unwrap_or(""));
        s.reasoning
            .push_str(d["reasoning_content"].as_str().unwrap_or(""));
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == s.tools.len() {
                s.tools.push(Default::default());
            }
            let t = &mut s.tools[i];
            if let Some(id) = tc["id"].as_str() {
                t.0 = id.into();
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                t.1.push_str(n);
            }
            t.2.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = c["finish_reason"].as_str() {
            s.finish = Some(f.into());
        }
    }
    s
}

#[derive(Debug, Default, PartialEq)]
struct AnthropicSeen {
    blocks: Vec<Value>,
    stop: Option<String>,
    usage: Value,
}

/// An Anthropic stream as the SDK accumulates it, checking the event grammar: message_start
/// first, message_stop last, every delta inside a started, not yet stopped block whose
/// type matches the delta, event names equal to the data's type.
fn anthropic_seen(out: &[u8]) -> AnthropicSeen {
    let evs = data_events(out);
    assert_eq!(evs.first().unwrap().1["type"], "message_start");
    assert_eq!(evs.last().unwrap().1["type"], "message_stop");
    let mut s = AnthropicSeen::default();
    let mut open: Option<usize> = None;
    s.usage = evs[0].1["message"]["usage"].clone();
    for (name, v) in &evs {
        assert_eq!(name.as_deref(), v["type"].as_str());
        match v["type"].as_str().unwrap() {
            "content_block_start" => {
                assert!(open.is_none(), "block started while another is open");
                let i = v["index"].as_u64().unwrap() as usize;
                assert_eq!(i, s.blocks.len());
                s.blocks.push(v["content_block"].clone());
                open = Some(i);
            }
            "content_block_delta" => {
                let i = v["index"].as_u64().unwrap() as usize;
                assert_eq!(open, Some(i));
                let b = &mut s.blocks[i];
                let d = &v["delta"];
                let (field, piece) = match d["type"].as_str().unwrap() {
                    "text_delta" => ("text", &d["text"]),
                    "thinking_delta" => ("thinking", &d["thinking"]),
                    "signature_delta" => ("signature", &d["signature"]),
                    "input_json_delta" => ("partial_json", &d["partial_json"]),
                    other => panic!("delta {other}"),
                };
                let cur = b[field].as_str().unwrap_or("").to_string();
                b[field] = json!(cur + piece.as_str().unwrap());
            }
            "content_block_stop" => {
                assert_eq!(open.take(), Some(v["index"].as_u64().unwrap() as usize));
            }
            "message_delta" => {
                s.stop = v["delta"]["stop_reason"].as_str().map(str::to_owned);
                for (k, n) in v["usage"].as_object().unwrap() {
                    s.usage[k] = n.clone();
                }
            }
            _ => {}
        }
    }
    assert!(open.is_none());
    s
}

#[test]
fn anthropic_stream_to_openai_at_every_split() {
    let (out, t) = every_split(Dialect::Anthropic, Dialect::OpenAi, A_TOOL);
    let seen = openai_seen(&out);
    assert_eq!(seen.text, "Okay, let's check the weather ☀ for Paris.");
    assert_eq!(
        seen.tools,
        vec![(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
            "get_weather".into(),
            "{\"location\": \"Paris\"}".into()
        )]
    );
    assert_eq!(seen.finish.as_deref(), Some("tool_calls"));
    let u = Usage {
        prompt_tokens: 2572,
        cached_tokens: 2000,
        completion_tokens: 89,
        reasoning_tokens: 0,
        cache_write_tokens: 100,
    };
    assert_eq!(t.usage(), Some(u));
    assert_eq!(seen.usage.unwrap()["prompt_tokens"], 2572);
    assert!(t.saw_done());

    let (out, _) = every_split(Dialect::Anthropic, Dialect::OpenAi, A_THINK);
    let seen = openai_seen(&out);
    assert_eq!(seen.reasoning, "Let me think: 27 * 453");
    assert_eq!(seen.text, "27 * 453 = 12231");
    assert_eq!(seen.finish.as_deref(), Some("stop"));
}

#[test]
fn openai_stream_to_anthropic_at_every_split() {
    let (out, t) = every_split(Dialect::OpenAi, Dialect::Anthropic, O_TOOL);
    let seen = anthropic_seen(&out);
    assert_eq!(
        seen.blocks,
        vec![
            json!({"type": "text", "text": "Checking ☀ Paris."}),
            json!({"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {},
                   "partial_json": "{\"location\": \"Paris\"}"}),
        ]
    );
    assert_eq!(seen.stop.as_deref(), Some("tool_use"));
    assert_eq!(
        seen.usage,
        json!({"input_tokens": 56, "cache_read_input_tokens": 64, "cache_creation_input_tokens": 0, "output_tokens": 30})
    );
    assert_eq!(t.usage().unwrap().reasoning_tokens, 7);
}

#[test]
fn gemini_stream_to_both_at_every_split() {
    let (out, t) = every_split(Dialect::Gemini, Dialect::OpenAi, G_CALL);
    let seen = openai_seen(&out);
    assert_eq!(seen.text, "Checking ☀ Paris.");
    assert_eq!(seen.reasoning, "thinking about Paris");
    assert_eq!(
        seen.tools,
        vec![(
            "call_1".into(),
            "get_weather".into(),
            "{\"location\":\"Paris\"}".into()
        )]
    );
    assert_eq!(seen.finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        t.usage(),
        Some(Usage {
            prompt_tokens: 90,
            cached_tokens: 40,
            completion_tokens: 32,
            reasoning_tokens: 12,
            cache_write_tokens: 0
        })
    );
    let (out, _) = every_split(Dialect::Gemini, Dialect::Anthropic, G_CALL);
    let seen = anthropic_seen(&out);
    assert_eq!(seen.blocks.len(), 4, "{:?}", seen.blocks);
    assert_eq!(
        seen.blocks[0],
        json!({"type": "text", "text": "Checking ☀ "})
    );
    assert_eq!(
        seen.blocks[1],
        json!({"type": "thinking", "thinking": "thinking about Paris"})
    );
    assert_eq!(seen.blocks[2], json!({"type": "text", "text": "Paris."}));
    assert_eq!(seen.blocks[3]["partial_json"], "{\"location\":\"Paris\"}");
    assert_eq!(seen.stop.as_deref(), Some("tool_use"));
    assert_eq!(seen.usage["input_tokens"], 50);
    assert_eq!(seen.usage["cache_read_input_tokens"], 40);
    assert_eq!(seen.usage["output_tokens"], 32);
}

#[test]
fn like_formats_pass_through_byte_exact_and_metered() {
    let (out, t) = every_split(Dialect::Anthropic, Dialect::Anthropic, A_TOOL);
    assert_eq!(out, A_TOOL.as_bytes());
    assert_eq!(t.usage().unwrap().completion_tokens, 89);
    assert_eq!(t.stop(), Some(Stop::ToolUse));
    let (out, t) = every_split(Dialect::Anthropic, Dialect::Anthropic, A_THINK);
    assert_eq!(out, A_THINK.as_bytes());
    assert!(t.produced_text().contains("27 * 453 = 12231"));
}

#[test]
fn thinking_signature_reaches_an_anthropic_caller() {
    // Through OpenAI there is no place for it; Anthropic -> Anthropic keeps it byte for byte
    // (above). A Gemini thought becomes a thinking block without a signature.
    let mut t = StreamTranslator::new(Dialect::OpenAi, Dialect::Anthropic, names(), false);
    let mut out = BytesMut::new();
    t.on_chunk(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", &mut out);
    assert!(t.finish(&mut out));
    let seen = anthropic_seen(&out);
    assert_eq!(
        seen.blocks,
        vec![
            json!({"type": "thinking", "thinking": "a"}),
            json!({"type": "text", "text": "b"})
        ]
    );
    assert_eq!(seen.stop.as_deref(), Some("end_turn"));
}

#[test]
fn cut_streams_end_with_an_error_event_in_the_callers_format() {
    let cut = &A_TOOL[..A_TOOL.find("event: content_block_stop").unwrap() + 10];
    let (out, t) = feed(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &[cut.as_bytes()],
        false,
    );
    assert!(!t.saw_done());
    let evs = data_events(&out);
    assert!(evs.last().unwrap().1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("before it was complete"));
    let (out, _) = feed(
        Dialect::OpenAi,
        Dialect::Anthropic,
        &[&O_TOOL.as_bytes()[..300]],
        false,
    );
    let evs = data_events(&out);
    assert_eq!(evs.last().unwrap().0.as_deref(), Some("error"));
    assert_eq!(evs.last().unwrap().1["error"]["type"], "api_error");
    let (out, _) = feed(
        Dialect::Anthropic,
        Dialect::Anthropic,
        &[cut.as_bytes()],
        false,
    );
    assert!(out.starts_with(&cut.as_bytes()[..cut.rfind("\n\n").unwrap()]));
    let evs = data_events(&out);
    assert_eq!(evs.last().unwrap().0.as_deref(), Some("error"));
    assert_eq!(evs.last().unwrap().1["error"]["type"], "api_error");
    // An upstream error event is translated, and nothing follows it.
    let err = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (out, t) = feed(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &[
            &A_TOOL.as_bytes()[..A_TOOL.find("\n\n").unwrap() + 2],
            err.as_bytes(),
        ],
        false,
    );
    assert_eq!(t.upstream_error(), Some("Overloaded"));
    let evs = data_events(&out);
    assert_eq!(evs.last().unwrap().1["error"]["message"], "Overloaded");
}

#[test]
fn openai_usage_chunk_only_when_asked() {
    let (out, _) = feed(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &[A_TOOL.as_bytes()],
        false,
    );
    assert!(openai_seen(&out).usage.is_none());
    let (out, _) = feed(
        Dialect::Anthropic,
        Dialect::OpenAi,
        &[A_TOOL.as_bytes()],
        true,
    );
    assert_eq!(openai_seen(&out).usage.unwrap()["completion_tokens"], 89);
}

#[test]
fn garbage_never_panics() {
    for up in [Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini] {
        for caller in [Dialect::OpenAi, Dialect::Anthropic] {
            for input in [
                &b"data: {\"choices\":7,\"usage\":\"x\"}\n\n"[..],
                b"data: {\"type\":\"content_block_delta\",\"index\":-1,\"delta\":{\"type\":\"input_json_delta\"}}\n\n",
                b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":7}]},\"finishReason\":3}]}\n\n",
                b"\xff\xfe\r\n\r\ndata: [DONE]\n\n",
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ] {
                let _ = feed(up, caller, &[input], true);
                let _ = reply_from(up, input);
                let _ = error_to(caller, 500, input);
            }
        }
    }
}

#[test]
fn absurd_usage_numbers_saturate_instead_of_panicking() {
    let max = u64::MAX;
    let a = format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{max},\"cache_read_input_tokens\":{max},\"cache_creation_input_tokens\":{max},\"output_tokens\":{max}}}}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
    for caller in [Dialect::OpenAi, Dialect::Anthropic] {
        let (_, t) = feed(Dialect::Anthropic, caller, &[a.as_bytes()], true);
        assert_eq!(t.usage().unwrap().prompt_tokens, max);
    }
    let g = format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"x\"}}]}},\"finishReason\":\"STOP\"}}],\"usageMetadata\":{{\"promptTokenCount\":{max},\"toolUsePromptTokenCount\":{max},\"candidatesTokenCount\":{max},\"thoughtsTokenCount\":{max}}}}}\n\n");
    let (_, t) = feed(Dialect::Gemini, Dialect::OpenAi, &[g.as_bytes()], true);
    assert_eq!(t.usage().unwrap().completion_tokens, max);
    let r = reply_from(Dialect::Gemini, &g.as_bytes()[6..]).unwrap();
    let _ = reply_to(Dialect::Anthropic, &r, &names());
    let _ = reply_to(Dialect::OpenAi, &r, &names());
}

#[test]
fn json_schema_response_format_reaches_gemini_as_response_schema() {
    let o = obj(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema":
            {"type": "object", "additionalProperties": false, "properties": {"a": {"type": "string"}}}}}}),
    );
    let g = gemini::from_openai(&o).unwrap();
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        g["generationConfig"]["responseSchema"],
        json!({"type": "object", "properties": {"a": {"type": "string"}}})
    );
}

// ----- Gemini thought signatures ----------------------------------------------------------------

/// The signature rides in the tool-call id: every base64 signature comes back exactly, the id
/// stays in Anthropic's `tool_use` id alphabet, and what cannot be carried is left out.
#[test]
fn thought_signature_in_tool_call_ids() {
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        ("call_1", Some("EqQBCgIYAhIM+/x="), Some("EqQBCgIYAhIM+/x=")),
        ("call_1", Some("AAAA"), Some("AAAA")),
        ("call_1", Some("ab+/Yw=="), Some("ab+/Yw==")),
        ("fc_7", Some("Zm9vYmFy"), Some("Zm9vYmFy")),
        ("call_1", None, None),
        ("call_1", Some(""), None),
        ("call_1", Some("not base64!"), None),
    ];
    for (base, sig, back) in cases {
        let id = gemini::call_id(base, *sig);
        assert!(id.starts_with(base), "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{id}"
        );
        assert_eq!(
            gemini::signature_of(&id).as_deref(),
            *back,
            "{base} {sig:?}"
        );
    }
    // Ids that never carried one.
    for id in ["call_1", "toolu_01A", "x__thought__", "x__thought__a+b"] {
        assert_eq!(gemini::signature_of(id), None, "{id}");
    }
}

/// A signed Gemini function call goes to the caller (whole or streamed, OpenAI or Anthropic)
/// and the caller's next turn, carrying the call in its history, gives Gemini the signature
/// back on that call, with the tool result still matched by name.
#[test]
fn thought_signature_round_trips_through_both_callers() {
    let sig = "CiQBVKhc7u3+Jv/Pn2mWv0k1ZmAbc9==";
    let whole = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": sig},
        {"functionCall": {"name": "get_time", "args": {}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5}});
    let stream = format!("data: {}\r\n\r\n", serde_json::to_string(&whole).unwrap());
    let reply = reply_from(Dialect::Gemini, whole.to_string().as_bytes()).unwrap();

    // OpenAI caller: the ids it sees, whole and streamed, are the same.
    let o: Value = serde_json::from_slice(&reply_to(Dialect::OpenAi, &reply, &names())).unwrap();
    let calls = o["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    let (out, _) = every_split(Dialect::Gemini, Dialect::OpenAi, &stream);
    let streamed: Vec<String> = data_events(&out)
        .iter()
        .filter_map(|(_, v)| {
            v["choices"][0]["delta"]["tool_calls"][0]["id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        streamed,
        calls
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    );
    let next = obj(json!({"model": "m", "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"}]}));
    let g = gemini::from_openai(&next).unwrap();
    let model_parts = &g["contents"][1]["parts"];
    assert_eq!(model_parts[0]["thoughtSignature"], sig, "{g:?}");
    assert!(model_parts[1].get("thoughtSignature").is_none(), "{g:?}");
    let answers = &g["contents"][2]["parts"];
    assert_eq!(answers[0]["functionResponse"]["name"], "get_weather");
    assert_eq!(answers[1]["functionResponse"]["name"], "get_time");

    // Anthropic caller: tool_use ids, whole and streamed, and back through from_anthropic.
    let a: Value = serde_json::from_slice(&reply_to(Dialect::Anthropic, &reply, &names())).unwrap();
    let uses: Vec<Value> = a["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .cloned()
        .collect();
    let (out, _) = every_split(Dialect::Gemini, Dialect::Anthropic, &stream);
    let streamed: Vec<Value> = data_events(&out)
        .iter()
        .filter(|(_, v)| v["content_block"]["type"] == "tool_use")
        .map(|(_, v)| v["content_block"]["id"].clone())
        .collect();
    assert_eq!(
        streamed,
        uses.iter().map(|u| u["id"].clone()).collect::<Vec<_>>()
    );
    let next = obj(json!({"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": uses},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "sunny"},
            {"type": "tool_result", "tool_use_id": uses[1]["id"], "content": "noon"}]}]}));
    // Towards an OpenAI-compatible upstream the signature is dropped from the ids (both ends).
    let o = anthropic::to_openai(&next, Dialect::OpenAi).unwrap();
    assert_eq!(o["messages"][1]["tool_calls"][0]["id"], "call_1", "{o:?}");
    assert_eq!(o["messages"][2]["tool_call_id"], "call_1", "{o:?}");
    let g = gemini::from_anthropic(&next).unwrap();
    assert_eq!(
        g["contents"][1]["parts"][0]["thoughtSignature"], sig,
        "{g:?}"
    );
    assert!(g["contents"][1]["parts"][1]
        .get("thoughtSignature")
        .is_none());
    assert_eq!(
        g["contents"][2]["parts"][0]["functionResponse"]["name"],
        "get_weather"
    );
}
