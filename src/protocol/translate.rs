//! Translation of responses between wire formats: whole (non-streamed) bodies, errors, and
//! streams.
//!
//! Every upstream format is read into one small model (a [`Reply`] for whole bodies, a
//! sequence of [`Ev`] for streams) and written out in the caller's format, so three upstream
//! readers and two caller writers cover every pair. Streams are translated incrementally and
//! synchronously (they run inside Pingora's `response_body_filter`): upstream bytes at any
//! chunk boundary go through the [`SseSplitter`], and each complete upstream event is
//! turned into the caller's events at once; nothing waits for the end of the stream except
//! the closing events, which need the final usage.

use super::openai::{self, floor_char_boundary, Usage};
use super::sse::{SseEvent, SseSplitter};
use super::{anthropic, gemini, responses, Dialect};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// Why generation stopped, in the union of the protocols' vocabularies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    ContentFilter,
    Refusal,
    PauseTurn,
    Other,
}

impl Stop {
    pub fn from_openai(s: &str) -> Stop {
        match s {
            "stop" => Stop::EndTurn,
            "length" => Stop::MaxTokens,
            "tool_calls" | "function_call" => Stop::ToolUse,
            "content_filter" => Stop::ContentFilter,
            _ => Stop::Other,
        }
    }

    pub fn from_anthropic(s: &str) -> Stop {
        match s {
            "end_turn" => Stop::EndTurn,
            "max_tokens" | "model_context_window_exceeded" => Stop::MaxTokens,
            "stop_sequence" => Stop::StopSequence,
            "tool_use" => Stop::ToolUse,
            "refusal" => Stop::Refusal,
            "pause_turn" => Stop::PauseTurn,
            _ => Stop::Other,
        }
    }

    pub fn from_gemini(s: &str) -> Stop {
        match s {
            "STOP" => Stop::EndTurn,
            "MAX_TOKENS" => Stop::MaxTokens,
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
            | "IMAGE_SAFETY" => Stop::ContentFilter,
            "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" => Stop::Other,
            _ => Stop::Other,
        }
    }

    pub fn openai(self) -> &'static str {
        match self {
            Stop::MaxTokens => "length",
            Stop::ToolUse => "tool_calls",
            Stop::ContentFilter | Stop::Refusal => "content_filter",
            Stop::EndTurn | Stop::StopSequence | Stop::PauseTurn | Stop::Other => "stop",
        }
    }

    pub fn anthropic(self) -> &'static str {
        match self {
            Stop::MaxTokens => "max_tokens",
            Stop::StopSequence => "stop_sequence",
            Stop::ToolUse => "tool_use",
            Stop::ContentFilter | Stop::Refusal => "refusal",
            Stop::PauseTurn => "pause_turn",
            Stop::EndTurn | Stop::Other => "end_turn",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Whole responses

/// One block of generated content.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    Thinking {
        text: String,
        signature: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// A non-streamed answer in no particular format.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub blocks: Vec<Block>,
    pub stop: Stop,
    pub stop_sequence: Option<String>,
    pub usage: Option<Usage>,
}

impl Reply {
    /// Generated text (content, reasoning, tool names and arguments), for fallback counting.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for b in &self.blocks {
            match b {
                Block::Text(t) | Block::Thinking { text: t, .. } => s.push_str(t),
                Block::ToolUse { name, input, .. } => {
                    s.push_str(name);
                    s.push_str(&input.to_string());
                }
            }
        }
        s
    }
}

fn parse_args(args: &str) -> Value {
    if args.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(args).unwrap_or_else(|_| Value::String(args.to_string()))
}

fn args_string(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Reads a successful non-streamed body of `dialect`. `None` if it is not one.
pub fn reply_from(dialect: Dialect, body: &[u8]) -> Option<Reply> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match dialect {
        Dialect::OpenAi => reply_from_openai(&v),
        Dialect::Anthropic => reply_from_anthropic(&v),
        Dialect::Gemini => reply_from_gemini(&v),
        Dialect::Responses => responses::reply_from(&v),
    }
}

fn reply_from_openai(v: &Value) -> Option<Reply> {
    let choice = v.get("choices")?.as_array()?.first()?;
    let msg = choice.get("message")?;
    let mut blocks = Vec::new();
    let reasoning = msg
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| msg.get("reasoning").and_then(Value::as_str));
    if let Some(r) = reasoning.filter(|s| !s.is_empty()) {
        blocks.push(Block::Thinking {
            text: r.to_string(),
            signature: None,
        });
    }
    match msg.get("content") {
        Some(Value::String(s)) if !s.is_empty() => blocks.push(Block::Text(s.clone())),
        Some(Value::Array(parts)) => {
            let t: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if !t.is_empty() {
                blocks.push(Block::Text(t));
            }
        }
        _ => {}
    }
    if let Some(r) = msg.get("refusal").and_then(Value::as_str) {
        blocks.push(Block::Text(r.to_string()));
    }
    for c in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = c.get("function");
        blocks.push(Block::ToolUse {
            id: c
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            name: f
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            input: parse_args(
                f.and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            ),
        });
    }
    let stop = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(Stop::from_openai)
        .unwrap_or(Stop::EndTurn);
    Some(Reply {
        blocks,
        stop,
        stop_sequence: None,
        usage: v.get("usage").and_then(openai::parse_usage),
    })
}

fn reply_from_anthropic(v: &Value) -> Option<Reply> {
    let content = v.get("content")?.as_array()?;
    let mut blocks = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => blocks.push(Block::Text(
                b.get("text").and_then(Value::as_str).unwrap_or("").into(),
            )),
            Some("thinking") => blocks.push(Block::Thinking {
                text: b
                    .get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                signature: b
                    .get("signature")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }),
            Some("tool_use") => blocks.push(Block::ToolUse {
                id: b.get("id").and_then(Value::as_str).unwrap_or("").into(),
                name: b.get("name").and_then(Value::as_str).unwrap_or("").into(),
                input: b.get("input").cloned().unwrap_or_else(|| json!({})),
            }),
            _ => {}
        }
    }
    Some(Reply {
        blocks,
        stop: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(Stop::from_anthropic)
            .unwrap_or(Stop::EndTurn),
        stop_sequence: v
            .get("stop_sequence")
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage: v.get("usage").and_then(anthropic::parse_usage),
    })
}

fn reply_from_gemini(v: &Value) -> Option<Reply> {
    let usage = v.get("usageMetadata").and_then(gemini::parse_usage);
    let cands = v.get("candidates").and_then(Value::as_array);
    let Some(c) = cands.and_then(|c| c.first()) else {
        // A prompt blocked before generation has no candidates.
        v.get("promptFeedback")?;
        return Some(Reply {
            blocks: Vec::new(),
            stop: Stop::ContentFilter,
            stop_sequence: None,
            usage,
        });
    };
    let mut blocks = Vec::new();
    let mut calls = 0;
    for p in c
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                blocks.push(Block::Thinking {
                    text: t.into(),
                    signature: None,
                });
            } else {
                match blocks.last_mut() {
                    Some(Block::Text(s)) => s.push_str(t),
                    _ => blocks.push(Block::Text(t.into())),
                }
            }
        } else if let Some(fc) = p.get("functionCall") {
            calls += 1;
            let base = fc
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{calls}"));
            blocks.push(Block::ToolUse {
                id: gemini::call_id(&base, p.get("thoughtSignature").and_then(Value::as_str)),
                name: fc.get("name").and_then(Value::as_str).unwrap_or("").into(),
                input: fc.get("args").cloned().unwrap_or_else(|| json!({})),
            });
        }
    }
    let mut stop = c
        .get("finishReason")
        .and_then(Value::as_str)
        .map(Stop::from_gemini)
        .unwrap_or(Stop::EndTurn);
    if calls > 0 && stop == Stop::EndTurn {
        stop = Stop::ToolUse;
    }
    Some(Reply {
        blocks,
        stop,
        stop_sequence: None,
        usage,
    })
}

/// Names of the response in the caller's format.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Response id (`chatcmpl-...` / `msg_...` shaped by the writer).
    pub id: String,
    /// The model name the caller asked for.
    pub model: String,
    pub created: u64,
    /// A Responses caller's tools: which are free-form (`custom`, answered as
    /// `custom_tool_call` items) and the namespace each came in.
    pub tools: responses::ToolKinds,
    /// The upstream was asked for structured output through `anthropic::JSON_TOOL`: that
    /// tool's call is the answer's text.
    pub json_tool: bool,
}

/// A structured-output tool call made the answer's text (see [`Names::json_tool`]).
pub fn unwrap_json_tool(r: &mut Reply) {
    let mut found = false;
    for b in &mut r.blocks {
        if let Block::ToolUse { name, input, .. } = b {
            if name == anthropic::JSON_TOOL {
                *b = Block::Text(input.to_string());
                found = true;
            }
        }
    }
    let other_calls = r.blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }));
    if found && !other_calls && r.stop == Stop::ToolUse {
        r.stop = Stop::EndTurn;
    }
}

fn openai_usage_value(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// Writes a reply in the caller's format.
pub fn reply_to(dialect: Dialect, r: &Reply, names: &Names) -> Vec<u8> {
    let v = match dialect {
        Dialect::Responses => {
            responses::reply_value(r, &names.id, &names.model, names.created, &names.tools)
        }
        Dialect::Anthropic => {
            let content: Vec<Value> = r
                .blocks
                .iter()
                .map(|b| match b {
                    Block::Text(t) => json!({"type": "text", "text": t}),
                    Block::Thinking { text, signature } => json!({
                        "type": "thinking", "thinking": text,
                        "signature": signature.clone().unwrap_or_default(),
                    }),
                    Block::ToolUse { id, name, input } => json!({
                        "type": "tool_use", "id": id, "name": name,
                        "input": if input.is_object() { input.clone() } else { json!({}) },
                    }),
                })
                .collect();
            json!({
                "id": format!("msg_{}", names.id),
                "type": "message",
                "role": "assistant",
                "model": names.model,
                "content": content,
                "stop_reason": r.stop.anthropic(),
                "stop_sequence": r.stop_sequence,
                "usage": anthropic::usage_value(&r.usage.unwrap_or_default()),
            })
        }
        Dialect::OpenAi | Dialect::Gemini => {
            let mut msg = Map::new();
            msg.insert("role".into(), "assistant".into());
            let text: String = r
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            let reasoning: String = r
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::Thinking { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let calls: Vec<Value> = r
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => Some(json!({
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": args_string(input)},
                    })),
                    _ => None,
                })
                .collect();
            msg.insert(
                "content".into(),
                if text.is_empty() && !calls.is_empty() {
                    Value::Null
                } else {
                    Value::String(text)
                },
            );
            if !reasoning.is_empty() {
                msg.insert("reasoning_content".into(), reasoning.into());
            }
            if !calls.is_empty() {
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            let mut out = json!({
                "id": format!("chatcmpl-{}", names.id),
                "object": "chat.completion",
                "created": names.created,
                "model": names.model,
                "choices": [{"index": 0, "message": msg, "logprobs": null, "finish_reason": r.stop.openai()}],
            });
            if let (Some(u), Some(o)) = (r.usage.as_ref(), out.as_object_mut()) {
                o.insert("usage".into(), openai_usage_value(u));
            }
            out
        }
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Usage of a non-streamed body of `dialect`, or (when the vendor reported none) the text to
/// count.
pub fn usage_of(dialect: Dialect, body: &[u8]) -> (Option<Usage>, Option<String>) {
    match dialect {
        Dialect::OpenAi => openai::usage_from_response(body),
        _ => match reply_from(dialect, body) {
            Some(r) if r.usage.is_some() => (r.usage, None),
            Some(r) => (None, Some(r.text())),
            None => (None, None),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The message and kind of an error body of any of the formats.
fn error_parts(body: &[u8]) -> (String, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let s = String::from_utf8_lossy(body);
        let s = s.trim();
        let cut = floor_char_boundary(s, 500);
        return (s.get(..cut).unwrap_or("").to_string(), None);
    };
    let e = v.get("error").unwrap_or(&v);
    let msg = e
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .unwrap_or("The upstream answered with an error.")
        .to_string();
    let kind = e
        .get("type")
        .or_else(|| e.get("status"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    (msg, kind)
}

/// Re-renders an upstream error answer (`status`, `body` in `from`'s format) in the caller's
/// format. Returns the status to answer (Anthropic's 529 "overloaded" is 503 for others).
pub fn error_to(to: Dialect, status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let (message, _) = error_parts(&super::scrub_secrets(body));
    match to {
        Dialect::Anthropic => (
            status,
            anthropic::error_body(anthropic::error_type_for_status(status), &message),
        ),
        Dialect::Gemini => (status, gemini::error_body(status, &message)),
        Dialect::OpenAi | Dialect::Responses => {
            let status = if status == 529 { 503 } else { status };
            let (kind, code) = match status {
                400 | 404 | 405 | 413 | 422 => ("invalid_request_error", None),
                401 => ("authentication_error", Some("invalid_api_key")),
                403 => ("permission_error", None),
                429 => ("rate_limit_error", Some("rate_limit_exceeded")),
                _ => ("api_error", Some("upstream_error")),
            };
            let v =
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
            (status, serde_json::to_vec(&v).unwrap_or_default())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// One step of a stream, in no particular format. `key` identifies a tool call within the
/// upstream stream (its index there).
#[derive(Debug)]
enum Ev<'a> {
    Text(&'a str),
    Thinking(&'a str),
    Signature(&'a str),
    ToolStart {
        key: u64,
        id: &'a str,
        name: &'a str,
    },
    ToolArgs {
        key: u64,
        json: &'a str,
    },
    Stop(Stop),
    Usage(Usage),
    Error(&'a str),
    /// The upstream's end-of-stream marker.
    Done,
}

/// What the reader of each upstream format remembers between events.
#[derive(Debug)]
enum Reader {
    OpenAi,
    /// Anthropic's usage arrives in pieces (message_start, then message_delta).
    Anthropic {
        input: u64,
        read: u64,
        write: u64,
        output: u64,
    },
    /// Gemini sends whole function calls; they are numbered here.
    Gemini {
        calls: u64,
        saw_call: bool,
    },
    /// OpenAI Responses: typed events; the last `sequence_number` seen.
    Responses {
        seq: u64,
    },
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

// Borrowed views of the frequent events (text and argument deltas), read without building a
// value tree; anything they do not fit (rare events, odd vendor shapes) takes the `Value` path.

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    delta: Option<AnthropicDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<OpenAiChoice<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<OpenAiDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<OpenAiToolCall<'a>>>,
}

#[derive(Deserialize)]
struct OpenAiToolCall<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<OpenAiFunction<'a>>,
}

#[derive(Deserialize)]
struct OpenAiFunction<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

fn non_empty<'s>(s: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// An OpenAI chunk through the borrowed view; false when it does not fit the view.
fn read_openai_fast(data: &[u8], f: &mut dyn FnMut(Ev<'_>)) -> bool {
    let Ok(c) = serde_json::from_slice::<OpenAiChunk<'_>>(data) else {
        return false;
    };
    if let Some(e) = c.error.as_ref().filter(|e| !e.is_null()) {
        f(Ev::Error(
            str_at(e, &["message"])
                .or(e.as_str())
                .unwrap_or("upstream error"),
        ));
        return true;
    }
    if let Some(ch) = c.choices.as_ref().and_then(|c| c.first()) {
        if let Some(d) = ch.delta.as_ref() {
            if let Some(r) = non_empty(&d.reasoning_content).or_else(|| non_empty(&d.reasoning)) {
                f(Ev::Thinking(r));
            }
            if let Some(t) = non_empty(&d.content) {
                f(Ev::Text(t));
            }
            if let Some(t) = non_empty(&d.refusal) {
                f(Ev::Text(t));
            }
            for tc in d.tool_calls.iter().flatten() {
                let name = tc.function.as_ref().and_then(|f| non_empty(&f.name));
                if tc.id.is_some() || name.is_some() {
                    f(Ev::ToolStart {
                        key: tc.index,
                        id: tc.id.as_deref().unwrap_or(""),
                        name: name.unwrap_or(""),
                    });
                }
                if let Some(a) = tc.function.as_ref().and_then(|f| non_empty(&f.arguments)) {
                    f(Ev::ToolArgs {
                        key: tc.index,
                        json: a,
                    });
                }
            }
        }
        if let Some(r) = non_empty(&ch.finish_reason) {
            f(Ev::Stop(Stop::from_openai(r)));
        }
    }
    if let Some(u) = c.usage.as_ref().and_then(openai::parse_usage) {
        f(Ev::Usage(u));
    }
    true
}

/// An Anthropic `content_block_delta` through the borrowed view; false for other events.
fn read_anthropic_delta(data: &[u8], f: &mut dyn FnMut(Ev<'_>)) -> bool {
    let Ok(e) = serde_json::from_slice::<AnthropicEvent<'_>>(data) else {
        return false;
    };
    let (Some(d), "content_block_delta") = (e.delta.as_ref(), e.kind.as_ref()) else {
        return false;
    };
    let empty = Cow::Borrowed("");
    match d.kind.as_ref() {
        "text_delta" => f(Ev::Text(d.text.as_ref().unwrap_or(&empty))),
        "thinking_delta" => f(Ev::Thinking(d.thinking.as_ref().unwrap_or(&empty))),
        "signature_delta" => f(Ev::Signature(d.signature.as_ref().unwrap_or(&empty))),
        "input_json_delta" => f(Ev::ToolArgs {
            key: e.index,
            json: d.partial_json.as_ref().unwrap_or(&empty),
        }),
        _ => {}
    }
    true
}

impl Reader {
    fn read(&mut self, ev: &SseEvent<'_>, f: &mut dyn FnMut(Ev<'_>)) {
        let Some(data) = ev.data.map(|d| d.trim_ascii()) else {
            return;
        };
        if data == b"[DONE]" {
            f(Ev::Done);
            return;
        }
        match self {
            Reader::OpenAi if read_openai_fast(data, f) => return,
            Reader::Anthropic { .. } if read_anthropic_delta(data, f) => return,
            _ => {}
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match self {
            Reader::OpenAi => read_openai(&v, f),
            Reader::Anthropic {
                input,
                read,
                write,
                output,
            } => {
                let mut merge = |u: &Value| {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64);
                    if let Some(x) = n("input_tokens") {
                        *input = x;
                    }
                    if let Some(x) = n("cache_read_input_tokens") {
                        *read = x;
                    }
                    if let Some(x) = n("cache_creation_input_tokens") {
                        *write = x;
                    }
                    if let Some(x) = n("output_tokens") {
                        *output = x;
                    }
                };
                let t = v.get("type").and_then(Value::as_str).unwrap_or("");
                match t {
                    "message_start" => {
                        if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                            merge(u);
                        }
                    }
                    "message_delta" => {
                        if let Some(u) = v.get("usage") {
                            merge(u);
                        }
                        if let Some(s) = str_at(&v, &["delta", "stop_reason"]) {
                            f(Ev::Stop(Stop::from_anthropic(s)));
                        }
                    }
                    "content_block_start" => {
                        let key = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let b = v.get("content_block").unwrap_or(&Value::Null);
                        match b.get("type").and_then(Value::as_str) {
                            Some("tool_use") => {
                                f(Ev::ToolStart {
                                    key,
                                    id: str_at(b, &["id"]).unwrap_or(""),
                                    name: str_at(b, &["name"]).unwrap_or(""),
                                });
                                if let Some(i) = b
                                    .get("input")
                                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                                {
                                    f(Ev::ToolArgs {
                                        key,
                                        json: &i.to_string(),
                                    });
                                }
                            }
                            Some("text") => {
                                if let Some(t) = str_at(b, &["text"]).filter(|t| !t.is_empty()) {
                                    f(Ev::Text(t));
                                }
                            }
                            Some("thinking") => {
                                if let Some(t) = str_at(b, &["thinking"]).filter(|t| !t.is_empty())
                                {
                                    f(Ev::Thinking(t));
                                }
                            }
                            _ => {}
                        }
                    }
                    "content_block_delta" => {
                        let key = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let d = v.get("delta").unwrap_or(&Value::Null);
                        match d.get("type").and_then(Value::as_str) {
                            Some("text_delta") => f(Ev::Text(str_at(d, &["text"]).unwrap_or(""))),
                            Some("thinking_delta") => {
                                f(Ev::Thinking(str_at(d, &["thinking"]).unwrap_or("")))
                            }
                            Some("signature_delta") => {
                                f(Ev::Signature(str_at(d, &["signature"]).unwrap_or("")))
                            }
                            Some("input_json_delta") => f(Ev::ToolArgs {
                                key,
                                json: str_at(d, &["partial_json"]).unwrap_or(""),
                            }),
                            _ => {}
                        }
                    }
                    "message_stop" => {
                        f(Ev::Usage(Usage {
                            prompt_tokens: input.saturating_add(*read).saturating_add(*write),
                            cached_tokens: *read,
                            completion_tokens: *output,
                            reasoning_tokens: 0,
                            cache_write_tokens: *write,
                        }));
                        f(Ev::Done);
                        return;
                    }
                    "error" => {
                        f(Ev::Error(
                            str_at(&v, &["error", "message"]).unwrap_or("upstream error"),
                        ));
                        return;
                    }
                    _ => {}
                }
                if matches!(t, "message_start" | "message_delta") {
                    f(Ev::Usage(Usage {
                        prompt_tokens: input.saturating_add(*read).saturating_add(*write),
                        cached_tokens: *read,
                        completion_tokens: *output,
                        reasoning_tokens: 0,
                        cache_write_tokens: *write,
                    }));
                }
            }
            Reader::Responses { seq } => read_responses(&v, seq, f),
            Reader::Gemini { calls, saw_call } => {
                if let Some(e) = v.get("error") {
                    f(Ev::Error(
                        str_at(e, &["message"]).unwrap_or("upstream error"),
                    ));
                    return;
                }
                if let Some(u) = v.get("usageMetadata").and_then(gemini::parse_usage) {
                    f(Ev::Usage(u));
                }
                let Some(c) = v
                    .get("candidates")
                    .and_then(Value::as_array)
                    .and_then(|c| c.first())
                else {
                    if v.get("promptFeedback").is_some() {
                        f(Ev::Stop(Stop::ContentFilter));
                        f(Ev::Done);
                    }
                    return;
                };
                for p in c
                    .get("content")
                    .and_then(|c| c.get("parts"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        if p.get("thought").and_then(Value::as_bool) == Some(true) {
                            f(Ev::Thinking(t));
                        } else {
                            f(Ev::Text(t));
                        }
                    } else if let Some(fc) = p.get("functionCall") {
                        *calls += 1;
                        *saw_call = true;
                        let base = str_at(fc, &["id"])
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("call_{calls}"));
                        let id = gemini::call_id(&base, str_at(p, &["thoughtSignature"]));
                        f(Ev::ToolStart {
                            key: *calls,
                            id: &id,
                            name: str_at(fc, &["name"]).unwrap_or(""),
                        });
                        let args = fc.get("args").cloned().unwrap_or_else(|| json!({}));
                        f(Ev::ToolArgs {
                            key: *calls,
                            json: &args.to_string(),
                        });
                    }
                }
                if let Some(r) = c.get("finishReason").and_then(Value::as_str) {
                    let mut stop = Stop::from_gemini(r);
                    if *saw_call && stop == Stop::EndTurn {
                        stop = Stop::ToolUse;
                    }
                    f(Ev::Stop(stop));
                    // Gemini has no end marker: the finish reason is the last chunk.
                    f(Ev::Done);
                }
            }
        }
    }
}

fn read_responses(v: &Value, seq: &mut u64, f: &mut dyn FnMut(Ev<'_>)) {
    if let Some(n) = v.get("sequence_number").and_then(Value::as_u64) {
        *seq = n;
    }
    let key = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
    match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "response.output_text.delta" | "response.refusal.delta" => {
            f(Ev::Text(str_at(v, &["delta"]).unwrap_or("")))
        }
        "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
            f(Ev::Thinking(str_at(v, &["delta"]).unwrap_or("")))
        }
        "response.output_item.added" => {
            let item = v.get("item").unwrap_or(&Value::Null);
            if matches!(
                str_at(item, &["type"]),
                Some("function_call" | "custom_tool_call")
            ) {
                f(Ev::ToolStart {
                    key,
                    id: str_at(item, &["call_id"]).unwrap_or(""),
                    name: str_at(item, &["name"]).unwrap_or(""),
                });
            }
        }
        "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
            f(Ev::ToolArgs {
                key,
                json: str_at(v, &["delta"]).unwrap_or(""),
            })
        }
        "response.completed" | "response.incomplete" => {
            let r = v.get("response").unwrap_or(&Value::Null);
            if let Some(u) = r.get("usage").and_then(responses::parse_usage) {
                f(Ev::Usage(u));
            }
            let calls = r.get("output").and_then(Value::as_array).is_some_and(|o| {
                o.iter().any(|i| {
                    matches!(
                        str_at(i, &["type"]),
                        Some("function_call" | "custom_tool_call")
                    )
                })
            });
            f(Ev::Stop(responses::stop_of(r, calls)));
            f(Ev::Done);
        }
        "response.failed" => {
            let r = v.get("response").unwrap_or(&Value::Null);
            if let Some(u) = r.get("usage").and_then(responses::parse_usage) {
                f(Ev::Usage(u));
            }
            f(Ev::Error(
                str_at(r, &["error", "message"]).unwrap_or("The upstream failed the response."),
            ));
        }
        "error" => f(Ev::Error(
            str_at(v, &["message"])
                .or_else(|| str_at(v, &["error", "message"]))
                .unwrap_or("upstream error"),
        )),
        _ => {}
    }
}

fn read_openai(v: &Value, f: &mut dyn FnMut(Ev<'_>)) {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        f(Ev::Error(
            str_at(e, &["message"])
                .or(e.as_str())
                .unwrap_or("upstream error"),
        ));
        return;
    }
    if let Some(c) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        if let Some(d) = c.get("delta") {
            let reasoning = str_at(d, &["reasoning_content"])
                .filter(|s| !s.is_empty())
                .or_else(|| str_at(d, &["reasoning"]));
            if let Some(r) = reasoning.filter(|s| !s.is_empty()) {
                f(Ev::Thinking(r));
            }
            if let Some(t) = str_at(d, &["content"]).filter(|s| !s.is_empty()) {
                f(Ev::Text(t));
            }
            if let Some(t) = str_at(d, &["refusal"]).filter(|s| !s.is_empty()) {
                f(Ev::Text(t));
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let key = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let id = str_at(tc, &["id"]);
                let name = str_at(tc, &["function", "name"]);
                if id.is_some() || name.is_some_and(|n| !n.is_empty()) {
                    f(Ev::ToolStart {
                        key,
                        id: id.unwrap_or(""),
                        name: name.unwrap_or(""),
                    });
                }
                if let Some(a) = str_at(tc, &["function", "arguments"]).filter(|a| !a.is_empty()) {
                    f(Ev::ToolArgs { key, json: a });
                }
            }
        }
        if let Some(r) = str_at(c, &["finish_reason"]).filter(|s| !s.is_empty()) {
            f(Ev::Stop(Stop::from_openai(r)));
        }
    }
    if let Some(u) = v.get("usage").and_then(openai::parse_usage) {
        f(Ev::Usage(u));
    }
}

/// Which block of an Anthropic stream is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool(u64),
}

/// What the caller's writer remembers between events.
#[derive(Debug)]
enum Writer {
    /// Same format as the upstream: events are forwarded byte for byte, only metered.
    Raw,
    OpenAi {
        started: bool,
        /// Upstream tool keys in order of appearance; the position is the OpenAI index.
        tools: Vec<u64>,
    },
    Anthropic {
        started: bool,
        open: Option<(u64, Open)>,
        next_index: u64,
        /// Upstream tool key -> block index.
        tools: Vec<(u64, u64)>,
    },
    Responses(Box<responses::StreamWriter>),
}

/// Produced text kept for fallback counting.
const MAX_TEXT: usize = 4 * 1024 * 1024;

/// Translates (or, between like formats, meters) a streamed response inline.
#[derive(Debug)]
pub struct StreamTranslator {
    splitter: SseSplitter,
    reader: Reader,
    st: State,
}

#[derive(Debug)]
struct State {
    writer: Writer,
    names: Names,
    client_wants_usage: bool,
    usage: Option<Usage>,
    stop: Option<Stop>,
    done: bool,
    ended: bool,
    error: Option<String>,
    text: String,
    first_content: bool,
    /// Reused for the JSON of each emitted event.
    buf: Vec<u8>,
    /// The upstream key of the structured-output tool call, and whether other tools were called.
    json_key: Option<u64>,
    other_tools: bool,
    /// `data: {"id":..,"object":"chat.completion.chunk",..,"delta":` for OpenAI callers.
    prefix: Vec<u8>,
}

/// A JSON string literal appended to `out`.
fn push_js(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

impl State {
    fn keep_text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.first_content = true;
        let room = MAX_TEXT.saturating_sub(self.text.len());
        let cut = floor_char_boundary(s, room);
        self.text.push_str(s.get(..cut).unwrap_or(""));
    }

    fn apply(&mut self, ev: Ev<'_>, out: &mut BytesMut) {
        if self.names.json_tool {
            match ev {
                Ev::ToolStart { key, name, .. } if name == anthropic::JSON_TOOL => {
                    self.json_key = Some(key);
                    return;
                }
                Ev::ToolArgs { key, json } if self.json_key == Some(key) => {
                    return self.apply(Ev::Text(json), out);
                }
                Ev::ToolStart { .. } => self.other_tools = true,
                Ev::Stop(Stop::ToolUse) if self.json_key.is_some() && !self.other_tools => {
                    return self.apply(Ev::Stop(Stop::EndTurn), out);
                }
                _ => {}
            }
        }
        match &ev {
            Ev::Text(s) | Ev::Thinking(s) => self.keep_text(s),
            Ev::ToolStart { name, .. } => self.keep_text(name),
            Ev::ToolArgs { json, .. } => self.keep_text(json),
            Ev::Usage(u) => self.usage = Some(*u),
            Ev::Stop(s) => self.stop = Some(*s),
            Ev::Done => self.done = true,
            Ev::Error(m) => self.error = Some((*m).to_string()),
            Ev::Signature(_) => {}
        }
        if self.ended {
            return;
        }
        match ev {
            Ev::Text(s) if !s.is_empty() => self.text_like(false, s, out),
            Ev::Thinking(s) if !s.is_empty() => self.text_like(true, s, out),
            Ev::Signature(s) => self.signature(s, out),
            Ev::ToolStart { key, id, name } => self.tool_start(key, id, name, out),
            Ev::ToolArgs { key, json } => self.tool_args(key, json, out),
            Ev::Error(m) => {
                self.ended = true;
                match &mut self.writer {
                    Writer::Raw => {}
                    Writer::OpenAi { .. } => {
                        out.extend_from_slice(&openai::error_event(m, "upstream_error"))
                    }
                    Writer::Anthropic { .. } => {
                        out.extend_from_slice(&anthropic::error_event("api_error", m))
                    }
                    Writer::Responses(w) => {
                        let mut v = Vec::new();
                        w.fail(m, &mut v);
                        out.extend_from_slice(&v);
                    }
                }
            }
            Ev::Done => self.end(out),
            _ => {}
        }
    }

    fn openai_chunk(&mut self, out: &mut BytesMut, delta: &[u8], finish: Option<&str>) {
        if self.prefix.is_empty() {
            let b = &mut self.prefix;
            b.extend_from_slice(b"data: {\"id\":");
            push_js(b, &format!("chatcmpl-{}", self.names.id));
            b.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
            b.extend_from_slice(self.names.created.to_string().as_bytes());
            b.extend_from_slice(b",\"model\":");
            push_js(b, &self.names.model);
            b.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
        }
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(delta);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                let mut v = Vec::with_capacity(16);
                push_js(&mut v, f);
                out.extend_from_slice(&v);
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// `content_block_delta` with one string field, written without a value tree.
    fn anthropic_delta(
        &mut self,
        out: &mut BytesMut,
        index: u64,
        kind: &str,
        field: &str,
        s: &str,
    ) {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        b.extend_from_slice(index.to_string().as_bytes());
        b.extend_from_slice(b",\"delta\":{\"type\":\"");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b"\",\"");
        b.extend_from_slice(field.as_bytes());
        b.extend_from_slice(b"\":");
        push_js(b, s);
        b.extend_from_slice(b"}}\n\n");
        out.extend_from_slice(b);
    }

    fn anthropic_event(out: &mut BytesMut, name: &str, v: &Value) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    /// The opening events, once.
    fn ensure_started(&mut self, out: &mut BytesMut) {
        match &mut self.writer {
            Writer::Raw => {}
            Writer::Responses(w) => {
                let mut v = Vec::new();
                w.ensure_started(&mut v);
                out.extend_from_slice(&v);
            }
            Writer::OpenAi { started, .. } => {
                if !*started {
                    *started = true;
                    self.openai_chunk(out, br#"{"role":"assistant","content":""}"#, None);
                }
            }
            Writer::Anthropic { started, .. } => {
                if !*started {
                    *started = true;
                    let u = self.usage.unwrap_or_default();
                    let mut usage = anthropic::usage_value(&u);
                    if let Some(o) = usage.as_object_mut() {
                        o.insert("output_tokens".into(), json!(0));
                    }
                    let v = json!({"type": "message_start", "message": {
                        "id": format!("msg_{}", self.names.id), "type": "message",
                        "role": "assistant", "model": self.names.model, "content": [],
                        "stop_reason": null, "stop_sequence": null, "usage": usage,
                    }});
                    Self::anthropic_event(out, "message_start", &v);
                }
            }
        }
    }

    /// Opens an Anthropic block of `kind` unless it is the open one; returns its index.
    fn open_block(&mut self, kind: Open, start: Value, out: &mut BytesMut) -> u64 {
        let Writer::Anthropic {
            open, next_index, ..
        } = &mut self.writer
        else {
            return 0;
        };
        if let Some((i, k)) = *open {
            if k == kind {
                return i;
            }
            Self::anthropic_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            );
        }
        let i = *next_index;
        *next_index += 1;
        *open = Some((i, kind));
        Self::anthropic_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": start}),
        );
        i
    }

    fn text_like(&mut self, thinking: bool, s: &str, out: &mut BytesMut) {
        self.ensure_started(out);
        match &mut self.writer {
            Writer::Raw => {}
            Writer::Responses(w) => {
                let mut v = Vec::new();
                w.text(thinking, s, &mut v);
                out.extend_from_slice(&v);
            }
            Writer::OpenAi { .. } => {
                let mut d = std::mem::take(&mut self.buf);
                d.clear();
                d.extend_from_slice(if thinking {
                    b"{\"reasoning_content\":"
                } else {
                    b"{\"content\":"
                });
                push_js(&mut d, s);
                d.push(b'}');
                self.openai_chunk(out, &d, None);
                self.buf = d;
            }
            Writer::Anthropic { open, .. } => {
                let open = *open;
                let kind = if thinking { Open::Thinking } else { Open::Text };
                let i = match open {
                    Some((i, k)) if k == kind => i,
                    _ => {
                        let start = if thinking {
                            json!({"type": "thinking", "thinking": ""})
                        } else {
                            json!({"type": "text", "text": ""})
                        };
                        self.open_block(kind, start, out)
                    }
                };
                if thinking {
                    self.anthropic_delta(out, i, "thinking_delta", "thinking", s);
                } else {
                    self.anthropic_delta(out, i, "text_delta", "text", s);
                }
            }
        }
    }

    fn signature(&mut self, s: &str, out: &mut BytesMut) {
        // OpenAI's format has no place for a thinking signature.
        if let Writer::Anthropic { .. } = self.writer {
            self.ensure_started(out);
            let i = self.open_block(
                Open::Thinking,
                json!({"type": "thinking", "thinking": ""}),
                out,
            );
            Self::anthropic_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "signature_delta", "signature": s}}),
            );
        }
    }

    fn tool_start(&mut self, key: u64, id: &str, name: &str, out: &mut BytesMut) {
        self.ensure_started(out);
        match &mut self.writer {
            Writer::Raw => {}
            Writer::Responses(w) => {
                let mut v = Vec::new();
                w.tool_start(key, id, name, &mut v);
                out.extend_from_slice(&v);
            }
            Writer::OpenAi { tools, .. } => {
                if tools.contains(&key) {
                    return;
                }
                tools.push(key);
                let idx = tools.len() - 1;
                let d = json!({"tool_calls": [{"index": idx, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]});
                let d = serde_json::to_vec(&d).unwrap_or_default();
                self.openai_chunk(out, &d, None);
            }
            Writer::Anthropic { tools, .. } => {
                if tools.iter().any(|(k, _)| *k == key) {
                    return;
                }
                let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let i = self.open_block(Open::Tool(key), start, out);
                if let Writer::Anthropic { tools, .. } = &mut self.writer {
                    tools.push((key, i));
                }
            }
        }
    }

    fn tool_args(&mut self, key: u64, frag: &str, out: &mut BytesMut) {
        if frag.is_empty() {
            return;
        }
        self.ensure_started(out);
        match &mut self.writer {
            Writer::Raw => {}
            Writer::Responses(w) => {
                let mut v = Vec::new();
                w.tool_args(key, frag, &mut v);
                out.extend_from_slice(&v);
            }
            Writer::OpenAi { tools, .. } => {
                let idx = match tools.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        tools.push(key);
                        tools.len() - 1
                    }
                };
                let mut d = std::mem::take(&mut self.buf);
                d.clear();
                d.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                d.extend_from_slice(idx.to_string().as_bytes());
                d.extend_from_slice(b",\"function\":{\"arguments\":");
                push_js(&mut d, frag);
                d.extend_from_slice(b"}}]}");
                self.openai_chunk(out, &d, None);
                self.buf = d;
            }
            Writer::Anthropic { tools, .. } => {
                let i = match tools.iter().find(|(k, _)| *k == key) {
                    Some((_, i)) => *i,
                    None => {
                        let i = self.open_block(
                            Open::Tool(key),
                            json!({"type": "tool_use", "id": format!("call_{key}"), "name": "", "input": {}}),
                            out,
                        );
                        if let Writer::Anthropic { tools, .. } = &mut self.writer {
                            tools.push((key, i));
                        }
                        i
                    }
                };
                self.anthropic_delta(out, i, "input_json_delta", "partial_json", frag);
            }
        }
    }

    /// The closing events: finish reason, usage, terminator.
    fn end(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Writer::Raw = self.writer {
            return;
        }
        self.ensure_started(out);
        let stop = self.stop.unwrap_or(Stop::EndTurn);
        match &mut self.writer {
            Writer::Raw => {}
            Writer::Responses(w) => {
                let mut v = Vec::new();
                w.end(stop, self.usage.as_ref(), &mut v);
                out.extend_from_slice(&v);
            }
            Writer::OpenAi { .. } => {
                self.openai_chunk(out, b"{}", Some(stop.openai()));
                if self.client_wants_usage {
                    let u = self.usage.unwrap_or_default();
                    let v = json!({
                        "id": format!("chatcmpl-{}", self.names.id),
                        "object": "chat.completion.chunk", "created": self.names.created,
                        "model": self.names.model, "choices": [],
                        "usage": openai_usage_value(&u),
                    });
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                    out.extend_from_slice(b"\n\n");
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Writer::Anthropic { open, .. } => {
                if let Some((i, _)) = open.take() {
                    Self::anthropic_event(
                        out,
                        "content_block_stop",
                        &json!({"type": "content_block_stop", "index": i}),
                    );
                }
                let u = self.usage.unwrap_or_default();
                Self::anthropic_event(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": stop.anthropic(), "stop_sequence": null},
                            "usage": anthropic::usage_value(&u)}),
                );
                Self::anthropic_event(out, "message_stop", &json!({"type": "message_stop"}));
            }
        }
    }
}

impl StreamTranslator {
    /// `upstream`: the format of the bytes fed in; `caller`: the format to emit (the same
    /// format means pass-through with metering). `client_wants_usage`: an OpenAI caller's
    /// `stream_options.include_usage`.
    pub fn new(upstream: Dialect, caller: Dialect, names: Names, client_wants_usage: bool) -> Self {
        let reader = match upstream {
            Dialect::OpenAi => Reader::OpenAi,
            Dialect::Anthropic => Reader::Anthropic {
                input: 0,
                read: 0,
                write: 0,
                output: 0,
            },
            Dialect::Gemini => Reader::Gemini {
                calls: 0,
                saw_call: false,
            },
            Dialect::Responses => Reader::Responses { seq: 0 },
        };
        let writer = if upstream == caller {
            Writer::Raw
        } else {
            match caller {
                Dialect::Anthropic => Writer::Anthropic {
                    started: false,
                    open: None,
                    next_index: 0,
                    tools: Vec::new(),
                },
                Dialect::Responses => Writer::Responses(Box::new(responses::StreamWriter::new(
                    &names.id,
                    &names.model,
                    names.created,
                    names.tools.clone(),
                ))),
                Dialect::OpenAi | Dialect::Gemini => Writer::OpenAi {
                    started: false,
                    tools: Vec::new(),
                },
            }
        };
        StreamTranslator {
            splitter: SseSplitter::new(),
            reader,
            st: State {
                writer,
                names,
                client_wants_usage,
                usage: None,
                stop: None,
                done: false,
                ended: false,
                error: None,
                text: String::new(),
                first_content: false,
                buf: Vec::new(),
                prefix: Vec::new(),
                json_key: None,
                other_tools: false,
            },
        }
    }

    /// One upstream chunk in; the caller's bytes for every event it completed out.
    pub fn on_chunk(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let (reader, st) = (&mut self.reader, &mut self.st);
        self.splitter.feed(chunk, |ev| {
            reader.read(&ev, &mut |e| st.apply(e, out));
            if let Writer::Raw = st.writer {
                out.extend_from_slice(ev.raw);
            }
        });
    }

    /// `on_chunk` for a body filter holding `Bytes`.
    pub fn on_chunk_bytes(&mut self, chunk: &Bytes) -> Bytes {
        let mut out = BytesMut::with_capacity(chunk.len() + 64);
        self.on_chunk(chunk, &mut out);
        out.freeze()
    }

    /// End of the upstream body. A stream that reached its end marker is closed properly;
    /// otherwise an error event in the caller's format says it was cut. Returns whether the
    /// stream was complete.
    pub fn finish(&mut self, out: &mut BytesMut) -> bool {
        let (reader, st) = (&mut self.reader, &mut self.st);
        self.splitter.flush(|ev| {
            reader.read(&ev, &mut |e| st.apply(e, out));
            if let Writer::Raw = st.writer {
                out.extend_from_slice(ev.raw);
            }
        });
        if self.splitter.pending_len() > 0 && !st.done && !self.splitter.in_oversized_event() {
            // A last event without its blank line still counts when it completes the
            // stream; a pass-through caller then gets it with the blank line added.
            self.splitter.finish(|ev| {
                reader.read(&ev, &mut |e| st.apply(e, out));
                if matches!(st.writer, Writer::Raw) && st.done {
                    out.extend_from_slice(ev.raw);
                    out.extend_from_slice(b"\n\n");
                }
            });
        }
        if self.st.done || self.st.error.is_some() {
            self.st.end(out);
            return self.st.done;
        }
        self.fail("The upstream ended the stream before it was complete.", out);
        false
    }

    /// Ends the stream with an error event in the caller's format (once).
    pub fn fail(&mut self, message: &str, out: &mut BytesMut) {
        if self.st.ended {
            return;
        }
        self.st.ended = true;
        if self.splitter.in_oversized_event() {
            out.extend_from_slice(b"\n\n");
        }
        let _ = self.splitter.take_pending();
        match &mut self.st.writer {
            Writer::Raw => match self.reader {
                Reader::Anthropic { .. } => {
                    out.extend_from_slice(&anthropic::error_event("api_error", message))
                }
                Reader::Responses { seq } => out.extend_from_slice(&responses::error_events(
                    message,
                    "upstream_error",
                    &self.st.names.id,
                    &self.st.names.model,
                    seq + 1,
                )),
                _ => out.extend_from_slice(&openai::error_event(message, "upstream_error")),
            },
            Writer::OpenAi { .. } => {
                out.extend_from_slice(&openai::error_event(message, "upstream_error"))
            }
            Writer::Anthropic { .. } => {
                out.extend_from_slice(&anthropic::error_event("api_error", message))
            }
            Writer::Responses(w) => {
                let mut v = Vec::new();
                w.fail(message, &mut v);
                out.extend_from_slice(&v);
            }
        }
    }

    /// The last usage the upstream reported (normalised).
    pub fn usage(&self) -> Option<Usage> {
        self.st.usage
    }

    /// The upstream's end marker was seen.
    pub fn saw_done(&self) -> bool {
        self.st.done
    }

    pub fn stop(&self) -> Option<Stop> {
        self.st.stop
    }

    /// An error the upstream reported inside the stream.
    pub fn upstream_error(&self) -> Option<&str> {
        self.st.error.as_deref()
    }

    /// Generated text (capped at 4 MiB), for counting when the vendor reported no usage.
    pub fn produced_text(&self) -> &str {
        &self.st.text
    }

    pub fn first_content_seen(&self) -> bool {
        self.st.first_content
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
