//! OpenAI chat-completions / embeddings protocol: request validation and rewriting, usage
//! extraction (with vendor variants), and inline metering of streamed responses.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sse::{SseEvent, SseSplitter};
use super::tokens::TokenCounter;

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// What the gateway needs to know about a chat request for routing, limits and billing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatRequestInfo {
    pub model: String,
    pub stream: bool,
    /// The client itself set `stream_options.include_usage: true`.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Number of choices requested (default 1).
    pub n: u32,
    pub has_tools: bool,
    /// Entries in `tools` plus legacy `functions`.
    pub tool_count: usize,
    /// Images and files in the messages' content parts.
    pub media: super::Media,
    /// `response_format.type == "json_schema"`.
    pub has_response_format_schema: bool,
}

/// A request the gateway rejects with 400; `Display` is meant for API users.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid request body: {0}")]
    InvalidJson(String),
    #[error("missing required parameter `{0}`")]
    MissingField(&'static str),
    #[error("`{field}` {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl RequestError {
    /// The offending parameter, for the `param` member of an OpenAI error body.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            RequestError::InvalidJson(_) => None,
            RequestError::MissingField(f) => Some(f),
            RequestError::InvalidField { field, .. } => Some(field),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(RequestError::InvalidJson(
            "expected a JSON object".to_owned(),
        )),
        Err(e) => Err(RequestError::InvalidJson(e.to_string())),
    }
}

/// `null` is treated as absent, as OpenAI does for optional parameters.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

pub(super) fn required_model(obj: &Map<String, Value>) -> Result<String, RequestError> {
    match present(obj, "model") {
        None => Err(RequestError::MissingField("model")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(invalid("model", "must be a non-empty string")),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, RequestError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(key, "must be a boolean")),
    }
}

/// Accepts integral floats (`100.0`) too: some client serialisers emit them.
fn as_non_negative_int(v: &Value) -> Option<u64> {
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    let f = v.as_f64()?;
    if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 {
        Some(f as u64)
    } else {
        None
    }
}

fn opt_uint(obj: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, RequestError> {
    match present(obj, key) {
        None => Ok(None),
        Some(v) => as_non_negative_int(v)
            .map(Some)
            .ok_or_else(|| invalid(key, "must be a non-negative integer")),
    }
}

/// Parses and validates a chat-completions body: a JSON object with a non-empty string
/// `model` and a non-empty `messages` array of objects each carrying a string `role`;
/// `stream` must be a boolean, `max_tokens`/`max_completion_tokens` non-negative integers
/// and `n` at least 1. Other fields are not checked; the upstream does that.
pub fn parse_chat_request(
    body: &[u8],
) -> Result<(Map<String, Value>, ChatRequestInfo), RequestError> {
    let obj = parse_object(body)?;
    let model = required_model(&obj)?;

    let messages = match present(&obj, "messages") {
        None => return Err(RequestError::MissingField("messages")),
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => return Err(invalid("messages", "must be a non-empty array")),
    };
    let mut media = super::Media::default();
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(invalid("messages", format!("item {i} must be an object")));
        };
        if !matches!(m.get("role"), Some(Value::String(_))) {
            return Err(invalid(
                "messages",
                format!("item {i} must have a string `role`"),
            ));
        }
        if let Some(Value::Array(parts)) = m.get("content") {
            parts.iter().for_each(|p| media.add(p));
        }
    }

    let info = chat_fields(&obj, model, media)?;
    Ok((obj, info))
}

/// The checks and facts of a chat body beyond `model` and `messages` (shared by the tree
/// reading and `scan_chat_request`).
pub(super) fn chat_fields(
    obj: &Map<String, Value>,
    model: String,
    media: super::Media,
) -> Result<ChatRequestInfo, RequestError> {
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    let client_wants_usage = match present(obj, "stream_options") {
        None => false,
        Some(Value::Object(so)) => matches!(so.get("include_usage"), Some(Value::Bool(true))),
        Some(_) => return Err(invalid("stream_options", "must be an object")),
    };
    let max_completion = opt_uint(obj, "max_completion_tokens")?;
    let max_legacy = opt_uint(obj, "max_tokens")?;
    let n = match opt_uint(obj, "n")? {
        None => 1,
        Some(0) => return Err(invalid("n", "must be at least 1")),
        Some(n) => u32::try_from(n).map_err(|_| invalid("n", "is too large"))?,
    };
    let tools_len = |key: &str| match present(obj, key) {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    let tool_count = tools_len("tools") + tools_len("functions");
    let has_response_format_schema = present(obj, "response_format")
        .and_then(|rf| rf.get("type"))
        .and_then(Value::as_str)
        == Some("json_schema");

    let info = ChatRequestInfo {
        model,
        stream,
        client_wants_usage,
        max_tokens: max_completion.or(max_legacy),
        n,
        has_tools: tool_count > 0,
        tool_count,
        media,
        has_response_format_schema,
    };
    Ok(info)
}

fn serialize(obj: &Map<String, Value>) -> Vec<u8> {
    // Serialising a map with string keys into a Vec cannot fail.
    serde_json::to_vec(obj).unwrap_or_default()
}

/// Rewrites a chat body for the upstream: `model` becomes the upstream's model name and,
/// when streaming, `stream_options.include_usage` is forced on (other `stream_options`
/// keys kept) so the gateway can meter from vendor-reported usage. All other fields are
/// kept. Note: key order follows `serde_json::Map` (sorted unless `preserve_order`).
pub fn rewrite_chat_request(
    obj: &mut Map<String, Value>,
    upstream_model: &str,
    stream: bool,
) -> Vec<u8> {
    obj.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    if stream {
        match obj.get_mut("stream_options") {
            Some(Value::Object(so)) => {
                so.insert("include_usage".to_owned(), Value::Bool(true));
            }
            _ => {
                let mut so = Map::new();
                so.insert("include_usage".to_owned(), Value::Bool(true));
                obj.insert("stream_options".to_owned(), Value::Object(so));
            }
        }
    }
    serialize(obj)
}

/// Parses and validates an embeddings body: non-empty string `model`; `input` a non-empty
/// string, or a non-empty array of non-empty strings, of token ids, or of non-empty token
/// id arrays. Returns the object and the model name.
pub fn parse_embeddings_request(body: &[u8]) -> Result<(Map<String, Value>, String), RequestError> {
    let obj = parse_object(body)?;
    let model = required_model(&obj)?;
    const SHAPE: &str = "must be a non-empty string, or a non-empty array of non-empty \
                         strings, of integer token ids, or of non-empty token id arrays";
    match present(&obj, "input") {
        None => return Err(RequestError::MissingField("input")),
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::Array(items)) if !items.is_empty() => {
            let ok = match items.first() {
                Some(Value::String(_)) => items
                    .iter()
                    .all(|v| matches!(v, Value::String(s) if !s.is_empty())),
                Some(Value::Number(_)) => items.iter().all(|v| as_non_negative_int(v).is_some()),
                Some(Value::Array(_)) => items.iter().all(|v| {
                    matches!(v, Value::Array(ids)
                        if !ids.is_empty() && ids.iter().all(|t| as_non_negative_int(t).is_some()))
                }),
                _ => false,
            };
            if !ok {
                return Err(invalid("input", SHAPE));
            }
        }
        Some(_) => return Err(invalid("input", SHAPE)),
    }
    Ok((obj, model))
}

/// Sets `model` to the upstream's name and serialises; for bodies needing no other rewrite.
pub fn rewrite_model(obj: &mut Map<String, Value>, upstream_model: &str) -> Vec<u8> {
    obj.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    serialize(obj)
}

// ---------------------------------------------------------------------------------------
// Usage and non-streamed responses
// ---------------------------------------------------------------------------------------

/// Token usage as reported by the vendor, normalised to OpenAI semantics:
/// `cached_tokens` (cache reads) and `cache_write_tokens` (Anthropic's cache creation) are
/// part of `prompt_tokens`, `reasoning_tokens` is the vendor's figure and already included in
/// `completion_tokens` (Gemini's thoughts are added to it when translated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_write_tokens: u64,
}

/// Reads a token count leniently: vendors occasionally send floats; anything else is
/// treated as absent rather than failing the whole object.
fn count_field(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = obj.get(key)?;
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
}

fn nested_count(obj: &Map<String, Value>, outer: &str, key: &str) -> Option<u64> {
    obj.get(outer)?
        .as_object()
        .and_then(|o| count_field(o, key))
}

/// Parses an OpenAI-compatible `usage` object, including vendor variants:
/// `prompt_tokens_details.cached_tokens` (OpenAI, Qwen), DeepSeek's
/// `prompt_cache_hit_tokens`/`prompt_cache_miss_tokens`, Kimi's top-level `cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`, and the Responses-style
/// `input_tokens`/`output_tokens` names. `None` unless a prompt or completion count is found.
pub fn parse_usage(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    UsageFields {
        prompt: count_field(o, "prompt_tokens"),
        input: count_field(o, "input_tokens"),
        hit: count_field(o, "prompt_cache_hit_tokens"),
        miss: count_field(o, "prompt_cache_miss_tokens"),
        completion: count_field(o, "completion_tokens"),
        output: count_field(o, "output_tokens"),
        cached: count_field(o, "cached_tokens"),
        prompt_details_cached: nested_count(o, "prompt_tokens_details", "cached_tokens"),
        input_details_cached: nested_count(o, "input_tokens_details", "cached_tokens"),
        completion_details_reasoning: nested_count(
            o,
            "completion_tokens_details",
            "reasoning_tokens",
        ),
        output_details_reasoning: nested_count(o, "output_tokens_details", "reasoning_tokens"),
    }
    .usage()
}

/// The counts a `usage` object may carry, as found (see [`parse_usage`]; also read without a
/// value tree by `chunkscan::usage`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UsageFields {
    pub prompt: Option<u64>,
    pub input: Option<u64>,
    pub hit: Option<u64>,
    pub miss: Option<u64>,
    pub completion: Option<u64>,
    pub output: Option<u64>,
    pub cached: Option<u64>,
    pub prompt_details_cached: Option<u64>,
    pub input_details_cached: Option<u64>,
    pub completion_details_reasoning: Option<u64>,
    pub output_details_reasoning: Option<u64>,
}

impl UsageFields {
    pub(crate) fn usage(self) -> Option<Usage> {
        let prompt = self
            .prompt
            .or(self.input)
            .or_else(|| self.hit.zip(self.miss).map(|(h, m)| h.saturating_add(m)));
        let completion = self.completion.or(self.output);
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        let prompt = prompt.unwrap_or(0);
        // Vendors report the cache hit in different places; a vendor using one reports 0 or
        // nothing in the others, so the largest figure is the real one.
        let cached = [
            self.prompt_details_cached,
            self.input_details_cached,
            self.hit,
            self.cached,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let reasoning = self
            .completion_details_reasoning
            .or(self.output_details_reasoning)
            .unwrap_or(0);
        Some(Usage {
            prompt_tokens: prompt,
            cached_tokens: cached.min(prompt),
            completion_tokens: completion.unwrap_or(0),
            reasoning_tokens: reasoning,
            cache_write_tokens: 0,
        })
    }
}

/// A JSON number as `count_field` reads it: a non-negative integer, or a finite non-negative
/// float truncated.
pub(crate) fn count_from_number(text: &str) -> Option<u64> {
    text.parse::<u64>().ok().or_else(|| {
        let f = text.parse::<f64>().ok()?;
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
}

/// Calls `f` with every piece of generated text in a `message` or `delta` object:
/// content (string or text parts), reasoning, refusal, tool/function call names and
/// arguments.
fn walk_message_text<'v>(msg: &'v Value, f: &mut impl FnMut(&'v str)) {
    let Some(m) = msg.as_object() else { return };
    let str_of = |key: &str| m.get(key).and_then(Value::as_str);
    match m.get("content") {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for t in parts.iter().filter_map(|p| p.get("text")?.as_str()) {
                f(t);
            }
        }
        _ => {}
    }
    // Some vendors send both names for the same reasoning text; count it once.
    if let Some(s) = str_of("reasoning_content")
        .filter(|s| !s.is_empty())
        .or_else(|| str_of("reasoning"))
    {
        f(s);
    }
    if let Some(s) = str_of("refusal") {
        f(s);
    }
    let calls = match m.get("tool_calls") {
        Some(Value::Array(calls)) => calls.as_slice(),
        _ => &[],
    };
    let funcs = calls
        .iter()
        .filter_map(|tc| tc.get("function"))
        .chain(m.get("function_call"));
    for func in funcs {
        for key in ["name", "arguments"] {
            if let Some(s) = func.get(key).and_then(Value::as_str) {
                f(s);
            }
        }
    }
}

/// Usage of a non-streamed chat or embeddings response, or, when the vendor reported none,
/// the generated text (message content, reasoning, tool calls) for fallback counting: `Some`
/// when the body has a `choices` array and no usage; embeddings give `None`.
pub fn usage_from_response(body: &[u8]) -> (Option<Usage>, Option<String>) {
    // Fast path: a single pass finds the `usage` object and reads its counts; nothing is
    // allocated. The full tree is built only when a vendor sent no usage (or an odd shape).
    if let Ok(Some(raw)) = super::chunkscan::top_level(body, b"usage") {
        if let Ok(Some(usage)) = super::chunkscan::usage(raw) {
            return (Some(usage), None);
        }
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let usage = v.get("usage").and_then(parse_usage);
    let text = match v.get("choices") {
        Some(Value::Array(choices)) => {
            let mut text = String::new();
            for c in choices {
                if let Some(msg) = c.get("message") {
                    walk_message_text(msg, &mut |s| text.push_str(s));
                } else if let Some(Value::String(t)) = c.get("text") {
                    text.push_str(t);
                }
            }
            Some(text)
        }
        _ => None,
    };
    (usage, text)
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

/// A string field that never fails the enclosing parse: non-strings read as absent, so
/// one odd vendor field cannot hide a chunk's usage or content from the meter.
#[derive(Debug, Default)]
struct LStr<'a>(Option<Cow<'a, str>>);

impl<'a> LStr<'a> {
    fn non_empty(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LStr(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The few parts of a `chat.completion.chunk` the meter reads; everything else is skipped
/// without building a value tree. `usage` is a `Value` because it is rare (once per
/// stream, `null` elsewhere) and vendor shapes vary.
#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default, borrow)]
    finish_reason: LStr<'a>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: LStr<'a>,
    #[serde(default, borrow)]
    reasoning_content: LStr<'a>,
    #[serde(default, borrow)]
    reasoning: LStr<'a>,
    #[serde(default, borrow)]
    refusal: LStr<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
    #[serde(default, borrow)]
    function_call: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct ToolCallView<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    arguments: LStr<'a>,
}

/// Produced text kept for fallback counting; beyond this only the byte count is kept
/// (see [`ChatStreamMeter::fallback_completion_tokens`]).
const MAX_PRODUCED_TEXT: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct MeterState {
    client_wants_usage: bool,
    usage: Option<Usage>,
    saw_done: bool,
    finish_reason: Option<String>,
    text: String,
    text_overflow_bytes: u64,
    events: u64,
    first_content_seen: bool,
    stripped: u64,
    upstream_error: Option<String>,
}

impl MeterState {
    fn push_text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.first_content_seen = true;
        let room = MAX_PRODUCED_TEXT.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            let cut = floor_char_boundary(s, room);
            self.text.push_str(s.get(..cut).unwrap_or_default());
            self.text_overflow_bytes = self
                .text_overflow_bytes
                .saturating_add((s.len() - cut) as u64);
        }
    }

    fn set_finish_reason(&mut self, r: &str) {
        match &mut self.finish_reason {
            Some(cur) if cur == r => {}
            Some(cur) => {
                cur.clear();
                cur.push_str(r);
            }
            None => self.finish_reason = Some(r.to_owned()),
        }
    }

    fn set_error(&mut self, e: &Value) {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string());
        self.upstream_error = Some(msg);
    }

    /// Meters one event and forwards it unless it is a usage-only chunk the client did not
    /// ask for.
    fn handle(&mut self, ev: SseEvent<'_>, out: &mut BytesMut) {
        let forward = match ev.data {
            Some(data) if !ev.oversized => {
                self.events += 1;
                self.meter_data(data.trim_ascii())
            }
            _ => true,
        };
        if forward {
            out.extend_from_slice(ev.raw);
        } else {
            self.stripped += 1;
        }
    }

    /// Returns whether the event is to be forwarded.
    fn meter_data(&mut self, data: &[u8]) -> bool {
        if data == b"[DONE]" {
            self.saw_done = true;
            return true;
        }
        if data.first() != Some(&b'{') {
            return true;
        }
        if let Some(forward) = self.meter_fast(data) {
            return forward;
        }
        self.meter_serde(data)
    }

    /// The single-pass reader (`chunkscan`); `None` when it gave up on this chunk, with
    /// nothing of it metered.
    fn meter_fast(&mut self, data: &[u8]) -> Option<bool> {
        struct Texts<'s>(&'s mut MeterState);
        impl<'a> super::chunkscan::ChunkSink<'a> for Texts<'_> {
            fn text(
                &mut self,
                s: super::chunkscan::JsonStr<'a>,
            ) -> Result<(), super::chunkscan::GiveUp> {
                let t = s.decode().ok_or(super::chunkscan::GiveUp)?;
                self.0.push_text(&t);
                Ok(())
            }
        }
        let undo = (
            self.text.len(),
            self.text_overflow_bytes,
            self.first_content_seen,
        );
        let read = super::chunkscan::scan(data, &mut Texts(self)).and_then(|facts| {
            let finish = match facts.finish_reason {
                Some(r) => Some(r.decode().ok_or(super::chunkscan::GiveUp)?),
                None => None,
            };
            // A usage object is read by the scanner too; anything else (rare) as a value.
            let usage = match facts.usage {
                Some(raw) => Some(match super::chunkscan::usage(raw) {
                    Ok(u) => u,
                    Err(_) => {
                        let v = serde_json::from_slice::<Value>(raw)
                            .map_err(|_| super::chunkscan::GiveUp)?;
                        parse_usage(&v)
                    }
                }),
                None => None,
            };
            let error = match facts.error {
                Some(raw) => Some(
                    serde_json::from_slice::<Value>(raw).map_err(|_| super::chunkscan::GiveUp)?,
                ),
                None => None,
            };
            Ok((facts.has_choices, finish, usage, error))
        });
        match read {
            Ok((has_choices, finish, usage, error)) => {
                if let Some(r) = finish {
                    self.set_finish_reason(&r);
                }
                let present = usage.is_some();
                Some(self.after_chunk_read(usage.flatten(), present, error.as_ref(), has_choices))
            }
            Err(super::chunkscan::GiveUp) => {
                self.text.truncate(undo.0);
                (self.text_overflow_bytes, self.first_content_seen) = (undo.1, undo.2);
                None
            }
        }
    }

    /// The serde view of a chunk (the reference reading, and the fallback of `meter_fast`).
    fn meter_serde(&mut self, data: &[u8]) -> bool {
        match serde_json::from_slice::<ChunkView<'_>>(data) {
            Ok(chunk) => {
                let mut has_choices = false;
                for c in chunk.choices.iter().flatten() {
                    has_choices = true;
                    if let Some(d) = &c.delta {
                        self.absorb_delta(d);
                    }
                    if let Some(r) = c.finish_reason.non_empty() {
                        self.set_finish_reason(r);
                    }
                }
                self.after_chunk(chunk.usage.as_ref(), chunk.error.as_ref(), has_choices)
            }
            // A shape the typed view rejects (e.g. `choices` not an array): rare, so a full
            // parse is affordable and keeps usage metering robust.
            Err(_) => match serde_json::from_slice::<Value>(data) {
                Ok(v @ Value::Object(_)) => self.meter_value(&v),
                _ => true,
            },
        }
    }

    fn absorb_delta(&mut self, d: &DeltaView<'_>) {
        if let Some(s) = d.content.non_empty() {
            self.push_text(s);
        }
        match d.reasoning_content.non_empty() {
            Some(s) => self.push_text(s),
            None => {
                if let Some(s) = d.reasoning.non_empty() {
                    self.push_text(s);
                }
            }
        }
        if let Some(s) = d.refusal.non_empty() {
            self.push_text(s);
        }
        let calls = d
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|t| t.function.as_ref());
        for func in calls.chain(d.function_call.as_ref()) {
            if let Some(s) = func.name.non_empty() {
                self.push_text(s);
            }
            if let Some(s) = func.arguments.non_empty() {
                self.push_text(s);
            }
        }
    }

    fn meter_value(&mut self, v: &Value) -> bool {
        let mut has_choices = false;
        if let Some(Value::Array(choices)) = v.get("choices") {
            for c in choices {
                has_choices = true;
                if let Some(d) = c.get("delta") {
                    walk_message_text(d, &mut |s| self.push_text(s));
                }
                if let Some(Value::String(r)) = c.get("finish_reason") {
                    if !r.is_empty() {
                        self.set_finish_reason(r);
                    }
                }
            }
        }
        let usage = v.get("usage").filter(|u| !u.is_null());
        let error = v.get("error").filter(|e| !e.is_null());
        self.after_chunk(usage, error, has_choices)
    }

    fn after_chunk(&mut self, usage: Option<&Value>, error: Option<&Value>, choices: bool) -> bool {
        self.after_chunk_read(usage.and_then(parse_usage), usage.is_some(), error, choices)
    }

    /// `usage`: the chunk's usage as parsed; `usage_present`: it had a non-null `usage`.
    fn after_chunk_read(
        &mut self,
        usage: Option<Usage>,
        usage_present: bool,
        error: Option<&Value>,
        choices: bool,
    ) -> bool {
        if let Some(u) = usage {
            self.usage = Some(u);
        }
        if let Some(e) = error {
            self.set_error(e);
        }
        // The usage-only chunk exists only because the gateway forced include_usage.
        let strip = !self.client_wants_usage && usage_present && !choices && error.is_none();
        !strip
    }
}

/// Largest `i <= at` that is a char boundary of `s` (std's `floor_char_boundary` is too new
/// for the crate's MSRV).
pub(crate) fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    let mut i = at;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Meters a streamed chat completion inline, inside the proxy's body filter: forwards
/// complete events byte-exact, drops the usage-only chunk when only the gateway wanted it,
/// and records usage, `[DONE]`, finish reason and produced text.
#[derive(Debug)]
pub struct ChatStreamMeter {
    splitter: SseSplitter,
    st: MeterState,
    /// Output buffer reused by [`ChatStreamMeter::on_chunk_bytes`].
    scratch: BytesMut,
}

impl ChatStreamMeter {
    /// `client_wants_usage`: whether the client itself asked for
    /// `stream_options.include_usage` (the gateway always asks the upstream).
    pub fn new(client_wants_usage: bool) -> Self {
        ChatStreamMeter {
            splitter: SseSplitter::new(),
            st: MeterState {
                client_wants_usage,
                ..MeterState::default()
            },
            scratch: BytesMut::new(),
        }
    }

    /// Processes one upstream body chunk, appending to `out` what the client must receive:
    /// every complete event, byte-exact and in order, except the usage-only chunk
    /// (`choices` empty/absent with a `usage` object) when the client did not ask for
    /// usage. A trailing partial event is held until it completes.
    pub fn on_chunk(&mut self, chunk: &[u8], out: &mut BytesMut) {
        out.reserve(chunk.len());
        let st = &mut self.st;
        self.splitter.feed(chunk, |ev| st.handle(ev, out));
    }

    /// [`on_chunk`](Self::on_chunk) for a body filter holding `Bytes`: when the chunk is
    /// passed on unchanged (the common case: whole events, nothing stripped or held) the
    /// same `Bytes` is returned, without allocating.
    pub fn on_chunk_bytes(&mut self, chunk: &Bytes) -> Bytes {
        let held_before = self.splitter.pending_len() > 0;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.on_chunk(chunk, &mut out);
        if !held_before && self.splitter.pending_len() == 0 && out.len() == chunk.len() {
            // Forwarded events are in-order slices of the chunk, so equal length means
            // equal bytes.
            out.clear();
            self.scratch = out;
            chunk.clone()
        } else {
            out.split().freeze()
        }
    }

    /// End of the upstream body: appends any incomplete trailing bytes as they were. The
    /// tail is also metered as if complete, so a final `data: [DONE]` or usage chunk that
    /// lacks its blank line still counts.
    pub fn finish(&mut self, out: &mut BytesMut) {
        let st = &mut self.st;
        self.splitter.finish(|ev| st.handle(ev, out));
    }

    /// The stream broke: forwards what is complete, drops the incomplete trailing event
    /// (never sent, and sending it would corrupt framing), then appends an SSE error event.
    /// Returns how many incomplete bytes were dropped.
    pub fn finish_with_error(&mut self, message: &str, kind: &str, out: &mut BytesMut) -> usize {
        let st = &mut self.st;
        self.splitter.flush(|ev| st.handle(ev, out));
        if self.splitter.in_oversized_event() {
            // Part of an over-cap event already went out; end it before the error event.
            out.extend_from_slice(b"\n\n");
        }
        let dropped = self.splitter.take_pending().len();
        out.extend_from_slice(&error_event(message, kind));
        dropped
    }

    /// Vendor-reported usage: the last usage object seen, also when it rode on a chunk
    /// with choices.
    pub fn usage(&self) -> Option<Usage> {
        self.st.usage
    }

    /// `data: [DONE]` was seen; false means the stream was cut short.
    pub fn saw_done(&self) -> bool {
        self.st.saw_done
    }

    /// Last non-null `finish_reason`.
    pub fn finish_reason(&self) -> Option<&str> {
        self.st.finish_reason.as_deref()
    }

    /// Concatenated content, reasoning (`reasoning_content`, else `reasoning`), refusal
    /// and tool/function call names and arguments, capped at 4 MiB.
    pub fn produced_text(&self) -> &str {
        &self.st.text
    }

    /// Completion tokens estimated from the produced text, for when the vendor reported
    /// no usage. CPU-bound (tiktoken over up to 4 MiB): call once, at the end.
    pub fn fallback_completion_tokens(&self) -> u64 {
        TokenCounter::count(&self.st.text).saturating_add(self.st.text_overflow_bytes.div_ceil(4))
    }

    /// Events that carried a `data` payload (including `[DONE]`); comments and keep-alives
    /// are not counted.
    pub fn events(&self) -> u64 {
        self.st.events
    }

    /// A chunk with non-empty content, reasoning, refusal or tool call delta arrived
    /// (time-to-first-token marker).
    pub fn first_content_seen(&self) -> bool {
        self.st.first_content_seen
    }

    /// Usage-only chunks withheld from the client.
    pub fn stripped_events(&self) -> u64 {
        self.st.stripped
    }

    /// Message of an `{"error": ...}` object the upstream sent inside the stream.
    pub fn upstream_error(&self) -> Option<&str> {
        self.st.upstream_error.as_deref()
    }

    /// Bytes of an incomplete event currently held back.
    pub fn pending_len(&self) -> usize {
        self.splitter.pending_len()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

/// An OpenAI-style SSE error event, `data: {"error":{...}}\n\n`, for the gateway to append
/// when a stream breaks. `kind` is used as both `type` and `code`.
pub fn error_event(message: &str, kind: &str) -> Bytes {
    let body = ErrorBody {
        error: ErrorInner {
            message,
            kind,
            param: None,
            code: kind,
        },
    };
    let mut v = Vec::with_capacity(64 + message.len() + 2 * kind.len());
    v.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut v, &body).is_err() {
        return Bytes::from_static(
            b"data: {\"error\":{\"message\":\"stream error\",\"type\":\"server_error\",\"param\":null,\"code\":\"server_error\"}}\n\n",
        );
    }
    v.extend_from_slice(b"\n\n");
    Bytes::from(v)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A recorded-shape OpenAI stream with include_usage: role chunk, content, a comment,
    /// finish chunk, usage-only chunk, [DONE].
    const STREAM: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n\
: OPENROUTER PROCESSING\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\\"w\\u00f6rld\\\"\\n\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
    const USAGE_CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":5,\"total_tokens\":24,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    /// Random chunk payloads in OpenAI's shape and around it (nulls, odd types, escapes,
    /// non-ASCII, tool calls, usage, errors, unknown nested fields, whitespace, repeated keys,
    /// truncation): the single-pass reader must meter each exactly as the serde view does, or
    /// give up and leave it to the serde view.
    #[test]
    fn fast_and_serde_meters_agree_on_random_chunks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        fn text(rng: &mut rand::rngs::StdRng) -> Value {
            // JSON string bodies (escapes as they appear on the wire).
            const PIECES: [&str; 10] = [
                r#""#,
                r#"Hel"#,
                r#"lo \"w\u00f6rld\"\n"#,
                "日本語",
                r#"a\\b"#,
                r#"{\"x\":1}"#,
                " ",
                "🙂",
                r#"tab\t"#,
                r#"}]\","#,
            ];
            let p = PIECES[rng.random_range(0..PIECES.len())];
            Value::String(serde_json::from_str::<String>(&format!("\"{p}\"")).unwrap())
        }
        fn lenient(rng: &mut rand::rngs::StdRng) -> Value {
            match rng.random_range(0..10) {
                0 => Value::Null,
                1 => json!(3),
                2 => json!(["x"]),
                3 => json!({"text": "y"}),
                _ => text(rng),
            }
        }
        fn function(rng: &mut rand::rngs::StdRng) -> Value {
            match rng.random_range(0..8) {
                0 => Value::Null,
                1 => json!("f"),
                _ => {
                    json!({"name": lenient(rng), "arguments": lenient(rng), "extra": [1, {"a": null}]})
                }
            }
        }
        fn delta(rng: &mut rand::rngs::StdRng) -> Value {
            let mut d = serde_json::Map::new();
            for key in [
                "role",
                "content",
                "reasoning_content",
                "reasoning",
                "refusal",
            ] {
                if rng.random_bool(0.5) {
                    d.insert(
                        key.into(),
                        if key == "role" {
                            json!("assistant")
                        } else {
                            lenient(rng)
                        },
                    );
                }
            }
            if rng.random_bool(0.2) {
                let calls: Vec<Value> = (0..rng.random_range(0..3))
                    .map(|i| json!({"index": i, "id": "call_1", "type": "function", "function": function(rng)}))
                    .collect();
                d.insert(
                    "tool_calls".into(),
                    if rng.random_bool(0.1) {
                        Value::Null
                    } else {
                        Value::Array(calls)
                    },
                );
            }
            if rng.random_bool(0.1) {
                d.insert("function_call".into(), function(rng));
            }
            match rng.random_range(0..20) {
                0 => Value::Null,
                1 => json!("odd"),
                _ => Value::Object(d),
            }
        }
        fn chunk(rng: &mut rand::rngs::StdRng) -> Value {
            let mut c = serde_json::Map::new();
            c.insert("id".into(), json!("chatcmpl-1"));
            c.insert("object".into(), json!("chat.completion.chunk"));
            c.insert("created".into(), json!(1.5e9));
            c.insert(
                "system_fingerprint".into(),
                json!({"nested": [[{"deep": [true, false, null, -1.5e-3]}]]}),
            );
            let choices: Vec<Value> = (0..rng.random_range(0..3))
                .map(|i| {
                    let mut ch = serde_json::Map::new();
                    ch.insert("index".into(), json!(i));
                    if rng.random_bool(0.9) {
                        ch.insert("delta".into(), delta(rng));
                    }
                    ch.insert(
                        "finish_reason".into(),
                        match rng.random_range(0..6) {
                            0 => json!("stop"),
                            1 => json!(""),
                            2 => json!(7),
                            _ => Value::Null,
                        },
                    );
                    ch.insert("logprobs".into(), Value::Null);
                    if rng.random_bool(0.05) {
                        json!(5)
                    } else {
                        Value::Object(ch)
                    }
                })
                .collect();
            match rng.random_range(0..12) {
                0 => {}
                1 => {
                    c.insert("choices".into(), Value::Null);
                }
                2 => {
                    c.insert("choices".into(), json!({"0": 1}));
                }
                _ => {
                    c.insert("choices".into(), Value::Array(choices));
                }
            }
            match rng.random_range(0..6) {
                0 => {
                    c.insert(
                        "usage".into(),
                        json!({"prompt_tokens": rng.random_range(0..100), "completion_tokens": 5,
                               "prompt_tokens_details": {"cached_tokens": 2}}),
                    );
                }
                1 => {
                    c.insert("usage".into(), Value::Null);
                }
                2 => {
                    c.insert("usage".into(), json!("n/a"));
                }
                _ => {}
            }
            if rng.random_bool(0.05) {
                c.insert(
                    "error".into(),
                    json!({"message": "overloaded", "type": "server_error"}),
                );
            }
            Value::Object(c)
        }
        fn spaced(s: &str, rng: &mut rand::rngs::StdRng) -> String {
            // Whitespace after structural characters outside strings.
            let mut out = String::new();
            let mut in_str = false;
            let mut esc = false;
            for ch in s.chars() {
                out.push(ch);
                if in_str {
                    if esc {
                        esc = false;
                    } else if ch == '\\' {
                        esc = true;
                    } else if ch == '"' {
                        in_str = false;
                    }
                    continue;
                }
                if ch == '"' {
                    in_str = true;
                } else if matches!(ch, '{' | '[' | ',' | ':') && rng.random_bool(0.3) {
                    out.push_str([" ", "\n", "\t ", "\r\n"][rng.random_range(0..4)]);
                }
            }
            out
        }
        let mut fast_taken = 0;
        for round in 0..3_000 {
            let mut payload = chunk(&mut rng).to_string();
            if rng.random_bool(0.3) {
                payload = spaced(&payload, &mut rng);
            }
            match rng.random_range(0..40) {
                0 => payload.truncate(rng.random_range(0..payload.len())),
                1 => payload = payload.replacen("\"choices\"", "\"choices\":null,\"choices\"", 1),
                2 => {
                    payload =
                        payload.replacen("\"id\"", "\"usage\":{\"prompt_tokens\":1},\"usage\"", 1)
                }
                3 => payload = payload.replacen("\"delta\"", "\"del\\u0074a\"", 1),
                4 => payload.push_str(" x"),
                _ => {}
            }
            for wants_usage in [false, true] {
                let mut fast = MeterState {
                    client_wants_usage: wants_usage,
                    ..MeterState::default()
                };
                let mut slow = MeterState {
                    client_wants_usage: wants_usage,
                    ..MeterState::default()
                };
                // Some text already metered, to check that a give-up leaves it untouched.
                fast.push_text("earlier ");
                slow.push_text("earlier ");
                let data = payload.as_bytes();
                let fwd_fast = match fast.meter_fast(data) {
                    Some(f) => {
                        fast_taken += 1;
                        f
                    }
                    None => fast.meter_serde(data),
                };
                let fwd_slow = slow.meter_serde(data);
                let what = format!("round {round}, usage wanted {wants_usage}: {payload}");
                assert_eq!(fwd_fast, fwd_slow, "forward: {what}");
                assert_eq!(fast.text, slow.text, "text: {what}");
                assert_eq!(fast.first_content_seen, slow.first_content_seen, "{what}");
                assert_eq!(fast.finish_reason, slow.finish_reason, "finish: {what}");
                assert_eq!(fast.usage, slow.usage, "usage: {what}");
                assert_eq!(fast.upstream_error, slow.upstream_error, "error: {what}");
            }
        }
        // Most chunks must take the fast path, or it would not be worth having.
        assert!(
            fast_taken > 4_000,
            "fast path taken {fast_taken} of 6000 times"
        );
    }

    /// The scanner's reading of `usage` objects (streams and whole responses) agrees with
    /// `parse_usage` over a value tree, across vendor shapes and odd values.
    #[test]
    fn scanned_usage_agrees_with_the_value_reading() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let count = |rng: &mut rand::rngs::StdRng| -> Value {
            match rng.random_range(0..9) {
                0 => json!(-3),
                1 => json!(2.7),
                2 => json!("12"),
                3 => Value::Null,
                4 => json!(1e20),
                5 => json!({"x": 1}),
                _ => json!(rng.random_range(0..5000)),
            }
        };
        let keys = [
            "prompt_tokens",
            "input_tokens",
            "prompt_cache_hit_tokens",
            "prompt_cache_miss_tokens",
            "completion_tokens",
            "output_tokens",
            "cached_tokens",
            "total_tokens",
        ];
        let nested = [
            ("prompt_tokens_details", "cached_tokens"),
            ("input_tokens_details", "cached_tokens"),
            ("completion_tokens_details", "reasoning_tokens"),
            ("output_tokens_details", "reasoning_tokens"),
        ];
        let mut scanned = 0;
        for round in 0..3_000 {
            let mut u = serde_json::Map::new();
            for k in keys {
                if rng.random_bool(0.4) {
                    u.insert(k.into(), count(&mut rng));
                }
            }
            for (outer, inner) in nested {
                if rng.random_bool(0.3) {
                    let v = match rng.random_range(0..5) {
                        0 => Value::Null,
                        1 => json!([1]),
                        _ => json!({inner: count(&mut rng), "audio_tokens": 0}),
                    };
                    u.insert(outer.into(), v);
                }
            }
            let usage = match rng.random_range(0..30) {
                0 => json!("n/a"),
                1 => Value::Null,
                _ => Value::Object(u),
            };
            let mut text = usage.to_string();
            if rng.random_bool(0.05) {
                // A repeated key: the last one counts in both readings.
                text = text.replacen('{', "{\"prompt_tokens\":999,", 1);
            }
            let want = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| parse_usage(&v));
            if let Ok(got) = super::super::chunkscan::usage(text.as_bytes()) {
                scanned += 1;
                assert_eq!(got, want, "round {round}: {text}");
            }
            // The same object in a whole response.
            let body = format!(
                "{{\"id\":\"x\",\"choices\":[{{\"message\":{{\"content\":\"\\\"usage\\\": 1\"}}}}],\"usage\": {text} }}"
            );
            let (from_body, _) = usage_from_response(body.as_bytes());
            assert_eq!(from_body, want, "round {round}: {body}");
        }
        assert!(scanned > 2_500, "scanner read {scanned} of 3000");
    }

    /// Cost per event of the meter's two readings on the mock's chunks (release build):
    /// `cargo test --release --lib meter_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn meter_cost() {
        let events: Vec<String> = (0..16)
            .map(|i| format!("{{\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1763900000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_mock\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}"))
            .chain(std::iter::once(String::from_utf8(USAGE_CHUNK[6..USAGE_CHUNK.len() - 2].to_vec()).unwrap()))
            .collect();
        for (name, fast) in [("single-pass reader", true), ("serde view", false)] {
            let rounds = 20_000;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                let mut st = MeterState::default();
                for e in &events {
                    let d = e.as_bytes();
                    let fwd = if fast {
                        st.meter_fast(d).unwrap_or_else(|| st.meter_serde(d))
                    } else {
                        st.meter_serde(d)
                    };
                    std::hint::black_box(fwd);
                }
                assert!(st.usage.is_some());
            }
            let ns = start.elapsed().as_nanos() as f64 / (rounds * events.len()) as f64;
            println!("{name}: {ns:.0} ns per event");
        }
    }

    /// Cost of reading a chat request and writing its upstream body, by request size (release
    /// build): `cargo test --release --lib request_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn request_cost() {
        let para = "The quarterly report shows revenue of 4.2 million, up 12% on last year; \
                    costs rose by 3% and \"margins\" widened.\n";
        for (label, turns) in [("bench-size", 0usize), ("100 KB", 10), ("1 MB", 100)] {
            let mut messages = vec![
                serde_json::json!({"role": "system", "content": "You are a terse assistant."}),
            ];
            for t in 0..turns {
                let text = para.repeat(80);
                let role = if t % 2 == 0 { "user" } else { "assistant" };
                messages.push(serde_json::json!({"role": role, "content": text}));
            }
            messages
                .push(serde_json::json!({"role": "user", "content": "Say hello in five words."}));
            let body = serde_json::to_vec(&serde_json::json!({
                "model": "gpt-4o-mini", "stream": true, "max_tokens": 64, "messages": messages
            }))
            .unwrap();
            let rounds = (20_000_000 / body.len()).clamp(20, 100_000);
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                let (mut obj, info) = parse_chat_request(&body).unwrap();
                let out = rewrite_chat_request(&mut obj, "gpt-4o-mini-2024", info.stream);
                std::hint::black_box(out);
            }
            let tree = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                let scan = super::super::chatbody::scan(&body).unwrap();
                let out = super::super::chatbody::splice(
                    &body,
                    &scan,
                    "gpt-4o-mini-2024",
                    scan.info.stream,
                );
                std::hint::black_box(out);
            }
            let scanned = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
            println!(
                "{label} ({} bytes): tree {tree:.1} us, scan + splice {scanned:.1} us per request",
                body.len()
            );
        }
    }

    fn full_stream() -> Vec<u8> {
        [STREAM, USAGE_CHUNK, DONE].concat()
    }

    fn meter_pieces(pieces: &[&[u8]], wants_usage: bool) -> (ChatStreamMeter, Vec<u8>) {
        let mut m = ChatStreamMeter::new(wants_usage);
        let mut out = BytesMut::new();
        for p in pieces {
            m.on_chunk(p, &mut out);
        }
        m.finish(&mut out);
        (m, out.to_vec())
    }

    fn expected_usage() -> Usage {
        Usage {
            prompt_tokens: 19,
            cached_tokens: 0,
            completion_tokens: 5,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
        }
    }

    #[test]
    fn meter_every_split_point() {
        let full = full_stream();
        for wants in [true, false] {
            let expected_out = if wants {
                full.clone()
            } else {
                [STREAM, DONE].concat()
            };
            let check = |pieces: &[&[u8]], what: &str| {
                let (m, out) = meter_pieces(pieces, wants);
                assert_eq!(out, expected_out, "{what} wants={wants}");
                assert_eq!(m.usage(), Some(expected_usage()), "{what}");
                assert!(m.saw_done(), "{what}");
                assert_eq!(m.finish_reason(), Some("stop"), "{what}");
                assert_eq!(m.produced_text(), "Hello \"wörld\"\n", "{what}");
                assert_eq!(m.events(), 6, "{what}");
                assert!(m.first_content_seen());
                assert_eq!(m.stripped_events(), u64::from(!wants));
            };
            for cut in 0..=full.len() {
                let (a, b) = full.split_at(cut);
                check(&[a, b], &format!("split at {cut}"));
            }
            let bytes: Vec<&[u8]> = full.chunks(1).collect();
            check(&bytes, "one byte at a time");
        }
    }

    #[test]
    fn meter_crlf_stream() {
        let crlf: Vec<u8> = String::from_utf8(full_stream())
            .unwrap()
            .replace("\n\n", "\r\n\r\n")
            .into_bytes();
        for cut in 0..=crlf.len() {
            let (a, b) = crlf.split_at(cut);
            let (m, out) = meter_pieces(&[a, b], true);
            assert_eq!(out, crlf, "split at {cut}");
            assert_eq!(m.usage(), Some(expected_usage()));
            assert!(m.saw_done());
        }
        let (_, out) = meter_pieces(&[&crlf], false);
        let want = String::from_utf8([STREAM, DONE].concat())
            .unwrap()
            .replace("\n\n", "\r\n\r\n");
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn strip_rules_table() {
        // (event data, client wants usage, forwarded?)
        let cases: &[(&str, bool, bool)] = &[
            (
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
                false,
                false,
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
                true,
                true,
            ),
            (
                r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
                false,
                false,
            ),
            (
                r#"{"choices":null,"usage":{"prompt_tokens":1}}"#,
                false,
                false,
            ),
            // Usage riding on a chunk with choices is never stripped.
            (
                r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
                false,
                true,
            ),
            (r#"{"choices":[],"usage":null}"#, false, true),
            (r#"{"choices":[]}"#, false, true),
            (
                r#"{"error":{"message":"boom"},"usage":{"prompt_tokens":1}}"#,
                false,
                true,
            ),
            // Odd shape handled by the fallback parse: still stripped.
            (
                r#"{"choices":[],"choices":[],"usage":{"prompt_tokens":1}}"#,
                false,
                false,
            ),
        ];
        for (data, wants, fwd) in cases {
            let ev = format!("data: {data}\n\n");
            let (m, out) = meter_pieces(&[ev.as_bytes()], *wants);
            assert_eq!(!out.is_empty(), *fwd, "{data} wants={wants}");
            if *fwd {
                assert_eq!(out, ev.as_bytes());
            }
            if data.contains("\"usage\":{") && !data.contains("error") {
                assert!(m.usage().is_some(), "{data}");
            }
        }
    }

    #[test]
    fn usage_vendor_shapes() {
        let cases: Vec<(Value, Option<Usage>)> = vec![
            // OpenAI
            (
                json!({"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                       "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                       "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0}}),
                Some(Usage {
                    prompt_tokens: 2006,
                    cached_tokens: 1920,
                    completion_tokens: 300,
                    reasoning_tokens: 192,
                    cache_write_tokens: 0,
                }),
            ),
            // DeepSeek
            (
                json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                       "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36,
                       "completion_tokens_details": {"reasoning_tokens": 10}}),
                Some(Usage {
                    prompt_tokens: 100,
                    cached_tokens: 64,
                    completion_tokens: 20,
                    reasoning_tokens: 10,
                    cache_write_tokens: 0,
                }),
            ),
            // DeepSeek without prompt_tokens: hit + miss
            (
                json!({"completion_tokens": 1, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}),
                Some(Usage {
                    prompt_tokens: 100,
                    cached_tokens: 64,
                    completion_tokens: 1,
                    reasoning_tokens: 0,
                    cache_write_tokens: 0,
                }),
            ),
            // Kimi (Moonshot)
            (
                json!({"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57, "cached_tokens": 32}),
                Some(Usage {
                    prompt_tokens: 50,
                    cached_tokens: 32,
                    completion_tokens: 7,
                    reasoning_tokens: 0,
                    cache_write_tokens: 0,
                }),
            ),
            // Qwen (DashScope compatible mode)
            (
                json!({"prompt_tokens": 3019, "completion_tokens": 104, "total_tokens": 3123,
                       "prompt_tokens_details": {"cached_tokens": 2048}}),
                Some(Usage {
                    prompt_tokens: 3019,
                    cached_tokens: 2048,
                    completion_tokens: 104,
                    reasoning_tokens: 0,
                    cache_write_tokens: 0,
                }),
            ),
            // Responses-style names
            (
                json!({"input_tokens": 10, "output_tokens": 4,
                       "input_tokens_details": {"cached_tokens": 3},
                       "output_tokens_details": {"reasoning_tokens": 2}}),
                Some(Usage {
                    prompt_tokens: 10,
                    cached_tokens: 3,
                    completion_tokens: 4,
                    reasoning_tokens: 2,
                    cache_write_tokens: 0,
                }),
            ),
            // Embeddings
            (
                json!({"prompt_tokens": 8, "total_tokens": 8}),
                Some(Usage {
                    prompt_tokens: 8,
                    ..Usage::default()
                }),
            ),
            // Lenient numbers, nulls, cached clamped to prompt
            (
                json!({"prompt_tokens": 10.0, "completion_tokens": null, "cached_tokens": 99,
                       "prompt_tokens_details": null}),
                Some(Usage {
                    prompt_tokens: 10,
                    cached_tokens: 10,
                    completion_tokens: 0,
                    reasoning_tokens: 0,
                    cache_write_tokens: 0,
                }),
            ),
            (json!({"total_tokens": 5}), None),
            (json!({"prompt_tokens": "12"}), None),
            (json!(null), None),
            (json!([1, 2]), None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_usage(&v), want, "{v}");
        }
    }

    #[test]
    fn stream_usage_vendor_shapes() {
        // DeepSeek puts usage on the final chunk that also has choices; Kimi puts it inside
        // the choice (ignored) and at top level on some versions.
        let deepseek = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":12}}\n\ndata: [DONE]\n\n";
        let (m, out) = meter_pieces(&[deepseek], false);
        assert_eq!(out, deepseek);
        assert_eq!(
            m.usage().map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((12, 3))
        );
        let kimi = b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":8}}],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":9,\"total_tokens\":49,\"cached_tokens\":16}}\n\n";
        let (m, _) = meter_pieces(&[kimi], true);
        assert_eq!(
            m.usage(),
            Some(Usage {
                prompt_tokens: 40,
                cached_tokens: 16,
                completion_tokens: 9,
                reasoning_tokens: 0,
                cache_write_tokens: 0,
            })
        );
        // Cumulative usage on every chunk: the last one wins.
        let cumulative = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";
        let (m, _) = meter_pieces(&[cumulative], false);
        assert_eq!(m.usage().map(|u| u.completion_tokens), Some(2));
    }

    #[test]
    fn tool_call_fragments_and_reasoning_concatenated() {
        let s = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"think \",\"reasoning\":\"think \"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\":\\\"Paris\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"only-reasoning\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        );
        let (m, out) = meter_pieces(&[s.as_bytes()], false);
        assert_eq!(out, s.as_bytes());
        assert_eq!(
            m.produced_text(),
            "think get_weather{\"city\":\"Paris\"}only-reasoning"
        );
        assert_eq!(m.finish_reason(), Some("tool_calls"));
        assert!(!m.saw_done());
        assert!(m.fallback_completion_tokens() > 5);
    }

    #[test]
    fn on_chunk_bytes_zero_copy_when_unchanged() {
        let mut m = ChatStreamMeter::new(false);
        let whole = Bytes::from_static(STREAM);
        let out = m.on_chunk_bytes(&whole);
        assert_eq!(out, whole);
        assert_eq!(
            out.as_ptr(),
            whole.as_ptr(),
            "unchanged chunk is passed on as is"
        );
        // Stripped usage chunk, then a chunk that completes a held event.
        let out = m.on_chunk_bytes(&Bytes::from_static(USAGE_CHUNK));
        assert!(out.is_empty());
        let (a, b) = DONE.split_at(5);
        assert!(m.on_chunk_bytes(&Bytes::from_static(a)).is_empty());
        let out = m.on_chunk_bytes(&Bytes::from_static(b));
        assert_eq!(out, DONE);
        assert!(m.saw_done());
        assert_eq!(m.usage(), Some(expected_usage()));
    }

    /// Random streams built from SSE/JSON fragments, cut at random points: never panics,
    /// and with nothing to strip the output is the input, byte for byte.
    #[test]
    fn random_streams_pass_through_exactly() {
        let vocab: &[&[u8]] = &[
            b"data: ",
            b"data:",
            b"event: x",
            b": c",
            b"\n",
            b"\r",
            b"\r\n",
            b"[DONE]",
            b"{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
            b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}",
            b"{",
            b"}",
            b"\"",
            b"\\",
            b"\xff",
            b"\xEF\xBB\xBF",
            "é".as_bytes(),
            b"null",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..next(40) {
                input.extend_from_slice(vocab[next(vocab.len())]);
            }
            let mut m = ChatStreamMeter::new(true);
            let mut out = BytesMut::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(1 + next(rest.len()));
                m.on_chunk(a, &mut out);
                rest = b;
            }
            m.finish(&mut out);
            assert_eq!(&out[..], &input[..]);
            // Without usage wanted, output is the input minus whole events.
            let (_, out) = meter_pieces(&[&input], false);
            assert!(out.len() <= input.len());
        }
    }

    #[test]
    fn first_content_seen_only_after_content() {
        let role =
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        let mut m = ChatStreamMeter::new(false);
        let mut out = BytesMut::new();
        m.on_chunk(role, &mut out);
        assert!(!m.first_content_seen());
        m.on_chunk(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
            &mut out,
        );
        assert!(m.first_content_seen());
    }

    #[test]
    fn done_detection_table() {
        let cases: &[(&[u8], bool)] = &[
            (b"data: [DONE]\n\n", true),
            (b"data:[DONE]\r\n\r\n", true),
            (b"data: [DONE] \n\n", true),
            (b"data: [DONE]", true), // no blank line at end of body: metered at finish
            (b"data: [DONE]\n", true),
            (b"data: [DONE", false),
            (b"data: \"[DONE]\"\n\n", false),
            (b": [DONE]\n\n", false),
            (b"event: done\ndata: {}\n\n", false),
        ];
        for (s, done) in cases {
            let (m, out) = meter_pieces(&[s], false);
            assert_eq!(m.saw_done(), *done, "{}", String::from_utf8_lossy(s));
            assert_eq!(out, *s);
        }
    }

    #[test]
    fn truncated_stream() {
        let full = full_stream();
        let cut = STREAM.len() + 40; // inside the usage chunk
        let mut m = ChatStreamMeter::new(true);
        let mut out = BytesMut::new();
        m.on_chunk(&full[..cut], &mut out);
        assert_eq!(&out[..], STREAM, "partial event held back");
        assert_eq!(m.pending_len(), 40);
        m.finish(&mut out);
        assert_eq!(
            &out[..],
            &full[..cut],
            "finish flushes the partial bytes as they were"
        );
        assert!(!m.saw_done());
        assert_eq!(m.usage(), None);
        assert_eq!(m.finish_reason(), Some("stop"));

        let mut m = ChatStreamMeter::new(true);
        let mut out = BytesMut::new();
        m.on_chunk(&full[..cut], &mut out);
        let dropped =
            m.finish_with_error("upstream closed the connection", "upstream_error", &mut out);
        assert_eq!(dropped, 40);
        let mut want = STREAM.to_vec();
        want.extend_from_slice(&error_event(
            "upstream closed the connection",
            "upstream_error",
        ));
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn non_json_and_garbage_pass_through() {
        let cases: &[&[u8]] = &[
            b"data: hello\n\n",
            b"data: {not json\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\\ud800\"}}]}\n\n",
            b"data: {\"choices\":5}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":[1,{\"a\":2}],\"tool_calls\":7}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n\xff\xfe\n\n",
            b"\n\n\n\r\r\r\n",
            b"event: ping\n\n",
            b"",
        ];
        for s in cases {
            let (_, out) = meter_pieces(&[s], false);
            assert_eq!(out, *s, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn upstream_error_event_recorded() {
        let s = b"data: {\"error\":{\"message\":\"rate limited\",\"type\":\"rate_limit\"}}\n\n";
        let (m, out) = meter_pieces(&[s], false);
        assert_eq!(out, s);
        assert_eq!(m.upstream_error(), Some("rate limited"));
        let (m, _) = meter_pieces(&[b"data: {\"error\":\"overloaded\"}\n\n"], false);
        assert_eq!(m.upstream_error(), Some("overloaded"));
    }

    #[test]
    fn error_event_shape() {
        let e = error_event("bad \"thing\"\nhappened", "server_error");
        assert!(e.starts_with(b"data: {") && e.ends_with(b"}\n\n"));
        let v: Value = serde_json::from_slice(&e[6..e.len() - 2]).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "bad \"thing\"\nhappened", "type": "server_error",
                             "param": null, "code": "server_error"}})
        );
    }

    #[test]
    fn chat_request_errors_table() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid request body"),
            ("{", "invalid request body"),
            ("[1]", "invalid request body: expected a JSON object"),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                "missing required parameter `model`",
            ),
            (
                r#"{"model":null,"messages":[{"role":"user"}]}"#,
                "missing required parameter `model`",
            ),
            (
                r#"{"model":"","messages":[{"role":"user"}]}"#,
                "`model` must be a non-empty string",
            ),
            (
                r#"{"model":5,"messages":[{"role":"user"}]}"#,
                "`model` must be a non-empty string",
            ),
            (r#"{"model":"m"}"#, "missing required parameter `messages`"),
            (
                r#"{"model":"m","messages":[]}"#,
                "`messages` must be a non-empty array",
            ),
            (
                r#"{"model":"m","messages":{}}"#,
                "`messages` must be a non-empty array",
            ),
            (
                r#"{"model":"m","messages":["hi"]}"#,
                "`messages` item 0 must be an object",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"},{"content":"x"}]}"#,
                "`messages` item 1 must have a string `role`",
            ),
            (
                r#"{"model":"m","messages":[{"role":1}]}"#,
                "`messages` item 0 must have a string `role`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                "`stream` must be a boolean",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#,
                "`max_tokens` must be a non-negative integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":1.5}"#,
                "`max_tokens` must be a non-negative integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_completion_tokens":"9"}"#,
                "`max_completion_tokens` must be a non-negative integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"n":0}"#,
                "`n` must be at least 1",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"n":5000000000}"#,
                "`n` is too large",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream_options":true}"#,
                "`stream_options` must be an object",
            ),
        ];
        for (body, msg) in cases {
            match parse_chat_request(body.as_bytes()) {
                Ok(_) => panic!("accepted {body}"),
                Err(e) => assert!(
                    e.to_string().starts_with(msg),
                    "{body}: got `{e}`, want `{msg}`"
                ),
            }
        }
        let e = parse_chat_request(br#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.param(), Some("messages"));
    }

    #[test]
    fn chat_request_info() {
        let body = json!({
            "model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 100, "max_completion_tokens": 50.0, "n": 2,
            "tools": [{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "https://x"}}]}]
        });
        let (_, info) = parse_chat_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(info.model, "gpt-4o");
        assert!(info.stream && info.client_wants_usage && info.has_tools && info.media.any_image());
        assert!(info.has_response_format_schema);
        assert_eq!((info.max_tokens, info.n, info.tool_count), (Some(50), 2, 2));

        let (_, info) =
            parse_chat_request(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":null,"n":null,"max_tokens":7}"#)
                .unwrap();
        assert!(
            !info.stream && !info.client_wants_usage && !info.has_tools && !info.media.any_image()
        );
        assert_eq!((info.max_tokens, info.n), (Some(7), 1));
    }

    #[test]
    fn rewrite_keeps_unknown_fields_and_sets_include_usage() {
        let body = br#"{"model":"alias","messages":[{"role":"user","content":"x","vendor_ext":1}],"stream":true,"stream_options":{"include_usage":false,"other":"k"},"temperature":0.2,"x_custom":{"a":[1,2]}}"#;
        let (mut obj, info) = parse_chat_request(body).unwrap();
        assert!(!info.client_wants_usage);
        let out = rewrite_chat_request(&mut obj, "gpt-4o-2024-08-06", info.stream);
        let v: Value = serde_json::from_slice(&out).unwrap();
        let mut want: Value = serde_json::from_slice(body).unwrap();
        want["model"] = json!("gpt-4o-2024-08-06");
        want["stream_options"]["include_usage"] = json!(true);
        assert_eq!(v, want);

        let cases: &[(&str, bool, Value)] = &[
            (
                r#"{"model":"a","messages":[{"role":"user"}],"stream":true}"#,
                true,
                json!({"include_usage": true}),
            ),
            (
                r#"{"model":"a","messages":[{"role":"user"}],"stream":true,"stream_options":null}"#,
                true,
                json!({"include_usage": true}),
            ),
            (
                r#"{"model":"a","messages":[{"role":"user"}]}"#,
                false,
                Value::Null,
            ),
        ];
        for (body, stream, so) in cases {
            let (mut obj, _) = parse_chat_request(body.as_bytes()).unwrap();
            let v: Value =
                serde_json::from_slice(&rewrite_chat_request(&mut obj, "up", *stream)).unwrap();
            assert_eq!(v["model"], "up");
            assert_eq!(
                v.get("stream_options").cloned().unwrap_or(Value::Null),
                *so,
                "{body}"
            );
        }
    }

    #[test]
    fn embeddings_request_table() {
        let ok = [
            r#"{"model":"e","input":"hello"}"#,
            r#"{"model":"e","input":["a","b"]}"#,
            r#"{"model":"e","input":[1,2,3]}"#,
            r#"{"model":"e","input":[[1,2],[3]],"dimensions":256}"#,
        ];
        for body in ok {
            let (mut obj, model) = parse_embeddings_request(body.as_bytes()).unwrap();
            assert_eq!(model, "e");
            let v: Value = serde_json::from_slice(&rewrite_model(&mut obj, "up")).unwrap();
            assert_eq!(v["model"], "up");
            assert_eq!(
                v["input"],
                serde_json::from_str::<Value>(body).unwrap()["input"]
            );
        }
        let bad: &[(&str, &str)] = &[
            (r#"{"input":"x"}"#, "missing required parameter `model`"),
            (r#"{"model":"e"}"#, "missing required parameter `input`"),
            (r#"{"model":"e","input":""}"#, "`input` must be"),
            (r#"{"model":"e","input":[]}"#, "`input` must be"),
            (r#"{"model":"e","input":["a",1]}"#, "`input` must be"),
            (r#"{"model":"e","input":["a",""]}"#, "`input` must be"),
            (r#"{"model":"e","input":[1,-2]}"#, "`input` must be"),
            (r#"{"model":"e","input":[[1],[]]}"#, "`input` must be"),
            (r#"{"model":"e","input":[[1],"a"]}"#, "`input` must be"),
            (r#"{"model":"e","input":{"a":1}}"#, "`input` must be"),
            (r#"{"model":"e","input":[true]}"#, "`input` must be"),
        ];
        for (body, msg) in bad {
            match parse_embeddings_request(body.as_bytes()) {
                Ok(_) => panic!("accepted {body}"),
                Err(e) => assert!(e.to_string().starts_with(msg), "{body}: got `{e}`"),
            }
        }
    }

    #[test]
    fn usage_from_response_table() {
        let chat = json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.", "reasoning_content": "hmm ",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                      "prompt_cache_hit_tokens": 16, "prompt_cache_miss_tokens": 14}
        });
        let (u, text) = usage_from_response(chat.to_string().as_bytes());
        assert_eq!(
            u,
            Some(Usage {
                prompt_tokens: 30,
                cached_tokens: 16,
                completion_tokens: 12,
                reasoning_tokens: 0,
                cache_write_tokens: 0,
            })
        );
        assert_eq!(text, None, "text is only extracted when usage is missing");
        let mut no_usage_chat = chat.clone();
        no_usage_chat.as_object_mut().unwrap().remove("usage");
        let (u, text) = usage_from_response(no_usage_chat.to_string().as_bytes());
        assert_eq!(u, None);
        assert_eq!(text.as_deref(), Some("Let me check.hmm f{\"a\":1}"));

        let emb = json!({"object": "list", "data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 4, "total_tokens": 4}});
        let (u, text) = usage_from_response(emb.to_string().as_bytes());
        assert_eq!(u.map(|u| u.prompt_tokens), Some(4));
        assert_eq!(text, None);

        let no_usage = json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]});
        assert_eq!(
            usage_from_response(no_usage.to_string().as_bytes()),
            (None, Some("ab".into()))
        );
        assert_eq!(usage_from_response(b"not json"), (None, None));
        assert_eq!(usage_from_response(b""), (None, None));
    }

    #[test]
    fn produced_text_capped() {
        let mut m = MeterState::default();
        let piece = "é".repeat(1000);
        for _ in 0..(MAX_PRODUCED_TEXT / piece.len() + 10) {
            m.push_text(&piece);
        }
        assert!(m.text.len() <= MAX_PRODUCED_TEXT);
        assert!(m.text_overflow_bytes > 0);
    }

    #[test]
    #[ignore]
    fn bench_chunk_ns() {
        let ev: &[u8] = b"data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":null}]}\n\n";
        println!("event size: {} bytes", ev.len());
        let mut m = ChatStreamMeter::new(false);
        let mut out = BytesMut::with_capacity(1 << 20);
        let iters = 200_000u32;
        for (label, split) in [("whole", false), ("split in two", true)] {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                if split {
                    let (a, b) = ev.split_at(70);
                    m.on_chunk(a, &mut out);
                    m.on_chunk(b, &mut out);
                } else {
                    m.on_chunk(ev, &mut out);
                }
                if out.len() > (1 << 19) {
                    out.clear();
                }
            }
            let ns = t.elapsed().as_nanos() / u128::from(iters);
            println!("{label}: {ns} ns per event");
        }
        assert!(m.events() == 2 * u64::from(iters));
        let data = &ev[6..ev.len() - 2];
        let t = std::time::Instant::now();
        for _ in 0..iters {
            let c: ChunkView<'_> = serde_json::from_slice(std::hint::black_box(data)).unwrap();
            std::hint::black_box(&c);
        }
        let ns = t.elapsed().as_nanos() / u128::from(iters);
        println!("of which JSON view parse: {ns} ns");
        let mut sp = SseSplitter::new();
        let t = std::time::Instant::now();
        for _ in 0..iters {
            sp.feed(std::hint::black_box(ev), |e| {
                std::hint::black_box(e.data);
            });
        }
        let ns = t.elapsed().as_nanos() / u128::from(iters);
        println!("of which SSE split: {ns} ns");
    }
}
