#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property-based fuzzing (proptest) of what reads untrusted bytes on the request path: the
//! chat body scanner, the SSE splitter, the stream translators and the request translators.
//! Bounded: `PROPTEST_CASES` cases per property (default 256, what CI runs); a failing case is
//! shrunk and saved under `tests/fuzz.proptest-regressions`, which is kept in the repository
//! and replayed first on every run.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tollgate::protocol::sse::SseSplitter;
use tollgate::protocol::translate::{Names, StreamTranslator};
use tollgate::protocol::{anthropic, chatbody, gemini, openai, responses, Dialect};

/// Keys the request code looks at, so that random trees reach its branches.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "tools",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "input",
    "image_url",
    "url",
    "stream",
    "max_tokens",
    "system",
    "tool_choice",
    "tool_use_id",
    "call_id",
    "output",
    "instructions",
    "parameters",
    "n",
    "response_format",
    "json_schema",
    "schema",
    "thinking",
    "budget_tokens",
    "source",
    "data",
    "reasoning",
    "effort",
    "format",
    "id",
    "tool_call_id",
    "stop",
    "temperature",
    "namespace",
];

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "user",
            "assistant",
            "system",
            "tool",
            "developer",
            "text",
            "image_url",
            "tool_use",
            "tool_result",
            "function",
            "function_call",
            "function_call_output",
            "input_text",
            "message",
            "auto",
            "required",
            "json_schema",
            "enabled",
            "adaptive",
            "gpt-4o",
            "",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((prop::sample::select(KEYS), value()), 0..8)
        .prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Chat bodies: well-formed ones with awkward strings, and byte mutations of them.
fn chat_body() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![".{0,16}", "[\\\\\"\\u{0}-\\u{1f}é中😀]{0,8}"];
    let valid = (
        text.clone(),
        text,
        any::<bool>(),
        prop::option::of(0u64..5000),
        prop::option::of(1u32..4),
        any::<bool>(),
    )
        .prop_map(|(model, content, stream, max, n, tools)| {
            let mut v = json!({"model": model, "stream": stream,
                "messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": content}]});
            if let Some(m) = max {
                v["max_tokens"] = json!(m);
            }
            if let Some(n) = n {
                v["n"] = json!(n);
            }
            if tools {
                v["tools"] =
                    json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
            }
            serde_json::to_vec(&v).unwrap()
        });
    prop_oneof![
        3 => valid.clone(),
        1 => (valid, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, i, x)| {
            let i = i.index(b.len());
            b[i] = x;
            b
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn cuts(len: usize, points: &[prop::sample::Index]) -> Vec<usize> {
    let mut c: Vec<usize> = points.iter().map(|i| i.index(len + 1)).collect();
    c.push(0);
    c.push(len);
    c.sort_unstable();
    c.dedup();
    c
}

fn upstream_stream() -> impl Strategy<Value = (Dialect, Vec<u8>)> {
    let openai = prop::collection::vec(
        prop_oneof![
            ".{0,8}".prop_map(|t| format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": t}}]}))),
            Just("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n".to_string()),
            Just("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n".to_string()),
            Just("data: [DONE]\n\n".to_string()),
            ".{0,20}".prop_map(|g| format!("data: {g}\n\n")),
        ],
        0..12,
    )
    .prop_map(|e| (Dialect::OpenAi, e.concat().into_bytes()));
    let anthropic = prop::collection::vec(
        prop_oneof![
            Just("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n".to_string()),
            ".{0,8}".prop_map(|t| format!("event: content_block_delta\ndata: {}\n\n", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}))),
            Just("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n".to_string()),
            Just("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n".to_string()),
            Just("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string()),
            ".{0,20}".prop_map(|g| format!("data: {g}\n\n")),
        ],
        0..12,
    )
    .prop_map(|e| (Dialect::Anthropic, e.concat().into_bytes()));
    let responses = prop::collection::vec(
        prop_oneof![
            ".{0,8}".prop_map(|t| format!("event: response.output_text.delta\ndata: {}\n\n", json!({"type": "response.output_text.delta", "delta": t, "output_index": 0}))),
            Just("event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":2,\"output_tokens\":1}}}\n\n".to_string()),
            ".{0,20}".prop_map(|g| format!("data: {g}\n\n")),
        ],
        0..12,
    )
    .prop_map(|e| (Dialect::Responses, e.concat().into_bytes()));
    prop_oneof![openai, anthropic, responses]
}

fn translate_all(up: Dialect, caller: Dialect, bytes: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut t = StreamTranslator::new(
        up,
        caller,
        Names {
            id: "r".into(),
            model: "m".into(),
            created: 1,
            ..Default::default()
        },
        true,
    );
    let mut out = BytesMut::new();
    for w in cuts.windows(2) {
        t.on_chunk(&bytes[w[0]..w[1]], &mut out);
    }
    t.finish(&mut out);
    out.to_vec()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The scanner (which skips building a tree on the hot path) agrees with the tree parser
    /// whenever it accepts a body, and its splice is valid JSON with the new model.
    #[test]
    fn chat_scan_agrees_with_the_parser(body in chat_body(), model in ".{0,10}") {
        if let Some(scan) = chatbody::scan(&body) {
            let (_, info) = openai::parse_chat_request(&body)
                .unwrap_or_else(|e| panic!("scan accepted what the parser refuses ({e}): {}", String::from_utf8_lossy(&body)));
            prop_assert_eq!(&scan.info, &info);
            let spliced = chatbody::splice(&body, &scan, &model, info.stream);
            let v: Value = serde_json::from_slice(&spliced).unwrap();
            prop_assert_eq!(v["model"].as_str(), Some(model.as_str()));
        }
    }

    /// Events come out the same whatever the chunk boundaries.
    #[test]
    fn sse_splitting_is_independent_of_chunking(bytes in prop::collection::vec(any::<u8>(), 0..400), points in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let events = |cuts: &[usize]| {
            let mut s = SseSplitter::new();
            let mut out = Vec::new();
            for w in cuts.windows(2) {
                s.feed(&bytes[w[0]..w[1]], |e| out.push(e.raw.to_vec()));
            }
            s.flush(|e| out.push(e.raw.to_vec()));
            out
        };
        let whole = events(&[0, bytes.len()]);
        prop_assert_eq!(events(&cuts(bytes.len(), &points)), whole);
    }

    /// Stream translation never panics and gives the same bytes for any chunking.
    #[test]
    fn stream_translation_is_independent_of_chunking((up, bytes) in upstream_stream(), points in prop::collection::vec(any::<prop::sample::Index>(), 0..8), caller in prop::sample::select(vec![Dialect::OpenAi, Dialect::Anthropic, Dialect::Responses])) {
        let whole = translate_all(up, caller, &bytes, &[0, bytes.len()]);
        prop_assert_eq!(translate_all(up, caller, &bytes, &cuts(bytes.len(), &points)), whole);
    }

    /// Request translators take any tree without panicking (an error is a 400, not a crash).
    #[test]
    fn request_translators_never_panic(o in object()) {
        let _ = anthropic::to_openai(&o, Dialect::OpenAi);
        let _ = anthropic::to_openai(&o, Dialect::Gemini);
        let _ = anthropic::from_openai(&o, 100);
        let _ = gemini::from_openai(&o);
        let _ = gemini::from_anthropic(&o);
        if let Ok(chat) = responses::to_chat(&o) {
            let _ = anthropic::from_openai(&chat, 100);
            let _ = gemini::from_openai(&chat);
        }
        let _ = responses::tool_kinds(&o);
        let bytes = serde_json::to_vec(&o).unwrap();
        let _ = anthropic::parse_messages_request(&bytes);
        let _ = responses::parse_request(&bytes);
        let _ = tollgate::protocol::translate::reply_from(Dialect::Responses, &bytes);
        let _ = tollgate::protocol::translate::reply_from(Dialect::Anthropic, &bytes);
        let _ = tollgate::protocol::translate::reply_from(Dialect::Gemini, &bytes);
        let _ = tollgate::protocol::translate::reply_from(Dialect::OpenAi, &bytes);
    }
}
