//! Anthropic Messages: request validation, request translation to and from the OpenAI
//! chat-completions shape, and usage normalisation.
//!
//! Mapping rules (also in docs/protocols.md): the system prompt becomes system messages and
//! back; text and image blocks become content parts (base64 images as `data:` URLs, URL images
//! as URLs); `tool_use` blocks become `tool_calls` (input object <-> arguments string);
//! `tool_result` blocks become `tool` messages placed before the rest of the user turn;
//! `stop_sequences` <-> `stop`; `thinking.budget_tokens` <-> `reasoning_effort`
//! (low 1024 / medium 4096 / high 16384). Anything without an equivalent is a
//! [`TranslateError`], never silently dropped; pure hints (`cache_control`, image `detail`)
//! are documented as dropped.

use super::openai::RequestError;
use super::{Dialect, TranslateError, Usage};
use serde_json::{json, Map, Value};

/// The tool a `response_format` becomes for an Anthropic upstream.
pub const JSON_TOOL: &str = "structured_output";

/// Whether a translated Messages body carries the structured-output tool.
pub fn has_json_tool(a: &Map<String, Value>) -> bool {
    a.get("tools").and_then(Value::as_array).is_some_and(|t| {
        t.iter()
            .any(|t| t.get("name").and_then(Value::as_str) == Some(JSON_TOOL))
    })
}

/// Version sent to Anthropic upstreams when the caller gave none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// What the gateway needs to know about a Messages request.
#[derive(Debug, Clone, Default)]
pub struct MessagesRequestInfo {
    pub model: String,
    pub stream: bool,
    pub max_tokens: u64,
    /// Images and documents in the messages (tool results included).
    pub media: super::Media,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Validates a Messages body: non-empty string `model`, integer `max_tokens` >= 1, non-empty
/// `messages` of objects whose `role` is `user` or `assistant`, boolean `stream`.
pub fn parse_messages_request(
    body: &[u8],
) -> Result<(Map<String, Value>, MessagesRequestInfo), RequestError> {
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(RequestError::InvalidJson("expected a JSON object".into())),
        Err(e) => return Err(RequestError::InvalidJson(e.to_string())),
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(RequestError::MissingField("model")),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(invalid("model", "must be a non-empty string")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => return Err(RequestError::MissingField("max_tokens")),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err(invalid("max_tokens", "must be an integer of at least 1")),
        },
    };
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(RequestError::MissingField("messages")),
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => return Err(invalid("messages", "must be a non-empty array")),
    };
    let mut media = super::Media::default();
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(invalid("messages", format!("item {i} must be an object")));
        };
        // `system` inside `messages`: Claude Code's mid-conversation instructions
        // (`anthropic-beta: mid-conversation-system-...`).
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant" | "system") => {}
            _ => {
                return Err(invalid(
                    "messages",
                    format!("item {i}: `role` must be \"user\", \"assistant\" or \"system\""),
                ))
            }
        }
        match m.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Array(blocks)) => {
                blocks.iter().for_each(|b| media.add(b));
            }
            _ => {
                return Err(invalid(
                    "messages",
                    format!("item {i}: `content` must be a string or an array of blocks"),
                ))
            }
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "must be a boolean")),
    };
    Ok((
        obj,
        MessagesRequestInfo {
            model,
            stream,
            max_tokens,
            media,
        },
    ))
}

/// Rewrites a Messages body for an Anthropic upstream: only the model name changes.
pub fn rewrite_messages_request(obj: &mut Map<String, Value>, upstream_model: &str) -> Vec<u8> {
    obj.insert("model".into(), Value::String(upstream_model.into()));
    serde_json::to_vec(obj).unwrap_or_default()
}

/// Normalises an Anthropic `usage` object (input excludes cache reads and writes there) to
/// OpenAI semantics (prompt includes them). `None` without input or output counts.
pub fn parse_usage(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    let n = |k: &str| o.get(k).and_then(Value::as_u64);
    let (input, output) = (n("input_tokens"), n("output_tokens"));
    if input.is_none() && output.is_none() {
        return None;
    }
    let read = n("cache_read_input_tokens").unwrap_or(0);
    let write = n("cache_creation_input_tokens").unwrap_or(0);
    Some(Usage {
        prompt_tokens: input
            .unwrap_or(0)
            .saturating_add(read)
            .saturating_add(write),
        cached_tokens: read,
        completion_tokens: output.unwrap_or(0),
        reasoning_tokens: 0,
        cache_write_tokens: write,
    })
}

/// The Anthropic `usage` object for normalised usage.
pub fn usage_value(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens.saturating_add(u.cache_write_tokens)),
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens,
    })
}

/// Anthropic error `type` for an HTTP status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 405 | 411 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type":..,"message":..}}`.
pub fn error_body(kind: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "error", "error": {"type": kind, "message": message}}))
        .unwrap_or_default()
}

/// The SSE `error` event that ends a broken Messages stream.
pub fn error_event(kind: &str, message: &str) -> Vec<u8> {
    let mut v = b"event: error\ndata: ".to_vec();
    v.extend_from_slice(&error_body(kind, message));
    v.extend_from_slice(b"\n\n");
    v
}

// ---------------------------------------------------------------------------------------------
// Anthropic -> OpenAI

/// A tool-call id going to `target`: a Gemini thought signature carried in it (see
/// [`super::gemini::SIGNATURE_SEP`]) is kept for Gemini and removed for OpenAI-compatible vendors,
/// which do not need it and may limit the id's length (OpenAI: 40 characters).
fn call_id_for(id: Option<&Value>, target: Dialect) -> Value {
    match id {
        Some(Value::String(s)) if target == Dialect::OpenAi => {
            match s.split_once(super::gemini::SIGNATURE_SEP) {
                Some((base, _)) => Value::String(base.to_string()),
                None => Value::String(s.clone()),
            }
        }
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// Budget given to Anthropic `thinking` for an OpenAI `reasoning_effort`.
pub fn budget_for_effort(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// OpenAI `reasoning_effort` for an Anthropic thinking budget.
pub fn effort_for_budget(budget: u64) -> &'static str {
    if budget <= 2048 {
        "low"
    } else if budget <= 8192 {
        "medium"
    } else {
        "high"
    }
}

fn image_source_to_url(src: &Value, at: &str) -> Result<String, TranslateError> {
    match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let mt = src
                .get("media_type")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::invalid(format!("{at}.media_type"), "is required")
                })?;
            let data = src
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::invalid(format!("{at}.data"), "is required"))?;
            Ok(format!("data:{mt};base64,{data}"))
        }
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| TranslateError::invalid(format!("{at}.url"), "is required")),
        other => Err(TranslateError::unsupported(
            format!("{at}.type={}", other.unwrap_or("?")),
            Dialect::OpenAi,
        )),
    }
}

/// Text of a string or an array of text blocks (`tool_result` content, system). Other block
/// types are errors naming `at`.
fn blocks_text(v: &Value, at: &str, target: Dialect) -> Result<String, TranslateError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{at}[{i}].type={}", other.unwrap_or("?")),
                            target,
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(TranslateError::invalid(at, "must be a string or an array")),
    }
}

const ANTHROPIC_TOP_LEVEL: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
    "context_management",
    "output_config",
    "output_format",
    "safeguards",
];

/// Translates a Messages request to an OpenAI chat request. `target` is where the result is
/// going: Gemini accepts `top_k`, which OpenAI does not (it is kept in the pivot only then).
pub fn to_openai(
    a: &Map<String, Value>,
    target: Dialect,
) -> Result<Map<String, Value>, TranslateError> {
    for k in a.keys() {
        if !ANTHROPIC_TOP_LEVEL.contains(&k.as_str()) {
            if k == "service_tier" && a.get(k).and_then(Value::as_str) == Some("auto") {
                continue;
            }
            return Err(TranslateError::unsupported(k.clone(), target));
        }
    }
    let mut o = Map::new();
    if let Some(m) = a.get("model") {
        o.insert("model".into(), m.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    if let Some(sys) = a.get("system").filter(|v| !v.is_null()) {
        let text = blocks_text(sys, "system", target)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let empty = Vec::new();
    let msgs = a
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let at = format!("messages[{i}].content");
        if role == "system" {
            let text = blocks_text(m.get("content").unwrap_or(&Value::Null), &at, target)?;
            messages.push(json!({"role": "system", "content": text}));
            continue;
        }
        let blocks: Vec<Value> = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(b)) => b.clone(),
            _ => Vec::new(),
        };
        if role == "assistant" {
            let mut text = String::new();
            let mut calls = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("tool_use") => {
                        let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                        calls.push(json!({
                            "id": call_id_for(b.get("id"), target),
                            "type": "function",
                            "function": {
                                "name": b.get("name").cloned().unwrap_or(Value::Null),
                                "arguments": input.to_string(),
                            }
                        }));
                    }
                    // Earlier turns' reasoning: the model does not need it back (Anthropic
                    // itself strips it from context), and other vendors cannot verify it.
                    Some("thinking" | "redacted_thinking") => {}
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{at}[{j}].type={}", other.unwrap_or("?")),
                            target,
                        ))
                    }
                }
            }
            let mut msg = Map::new();
            msg.insert("role".into(), "assistant".into());
            msg.insert(
                "content".into(),
                if text.is_empty() && !calls.is_empty() {
                    Value::Null
                } else {
                    Value::String(text)
                },
            );
            if !calls.is_empty() {
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            messages.push(Value::Object(msg));
            continue;
        }
        // User turn: tool results first (they answer the previous assistant turn), then the
        // rest as one user message.
        let mut parts = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bat = format!("{at}[{j}]");
            match b.get("type").and_then(Value::as_str) {
                Some("text") => parts.push(json!({
                    "type": "text",
                    "text": b.get("text").and_then(Value::as_str).unwrap_or(""),
                })),
                Some("image") => {
                    let src = b.get("source").cloned().unwrap_or(Value::Null);
                    let url = image_source_to_url(&src, &format!("{bat}.source"))?;
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                Some("tool_result") => {
                    let mut content = blocks_text(
                        b.get("content").unwrap_or(&Value::Null),
                        &format!("{bat}.content"),
                        target,
                    )?;
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        content.insert_str(0, "Error: ");
                    }
                    messages.push(json!({
                        "role": "tool",
                        "tool_call_id": call_id_for(b.get("tool_use_id"), target),
                        "content": content,
                    }));
                }
                other => {
                    return Err(TranslateError::unsupported(
                        format!("{bat}.type={}", other.unwrap_or("?")),
                        target,
                    ))
                }
            }
        }
        if !parts.is_empty() {
            let all_text = parts
                .iter()
                .all(|p| p.get("type").and_then(Value::as_str) == Some("text"));
            let content = if all_text && parts.len() == 1 {
                parts
                    .first()
                    .and_then(|p| p.get("text"))
                    .cloned()
                    .unwrap_or(Value::Null)
            } else {
                Value::Array(parts)
            };
            messages.push(json!({"role": "user", "content": content}));
        }
    }
    o.insert("messages".into(), Value::Array(messages));
    if let Some(v) = a.get("max_tokens") {
        o.insert("max_tokens".into(), v.clone());
    }
    if let Some(v) = a.get("stop_sequences").filter(|v| !v.is_null()) {
        o.insert("stop".into(), v.clone());
    }
    for k in ["temperature", "top_p", "stream"] {
        if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
            o.insert(k.into(), v.clone());
        }
    }
    if let Some(v) = a.get("top_k").filter(|v| !v.is_null()) {
        if target == Dialect::OpenAi {
            return Err(TranslateError::unsupported("top_k", target));
        }
        o.insert("top_k".into(), v.clone());
    }
    if let Some(uid) = a
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        o.insert("user".into(), uid.into());
    }
    // `output_config.effort` steers how much the model spends; it has an equivalent only for
    // reasoning (OpenAI's `reasoning_effort`), so it is used when thinking is on, else dropped.
    let effort = a
        .get("output_config")
        .and_then(|c| c.get("effort"))
        .and_then(Value::as_str)
        .map(|e| match e {
            "max" | "xhigh" => "high",
            "minimal" => "low",
            other => other,
        });
    if let Some(e) = effort {
        if !matches!(e, "low" | "medium" | "high") {
            return Err(TranslateError::invalid(
                "output_config.effort",
                "must be low, medium, high or max",
            ));
        }
    }
    // Structured output (`output_config.format`, or the older `output_format`): the pivot's
    // `response_format`.
    let format = a
        .get("output_config")
        .and_then(|c| c.get("format"))
        .or_else(|| a.get("output_format"))
        .filter(|f| !f.is_null());
    if let Some(f) = format {
        match f.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let schema = f
                    .get("schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                o.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
                );
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("output_config.format.type={}", other.unwrap_or("?")),
                    target,
                ))
            }
        }
    }
    if let Some(t) = a.get("thinking").filter(|v| !v.is_null()) {
        match t.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                let budget = t
                    .get("budget_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(1024);
                o.insert(
                    "reasoning_effort".into(),
                    effort.unwrap_or(effort_for_budget(budget)).into(),
                );
            }
            // The model decides how much to think: the effort asked, else medium.
            Some("adaptive") => {
                o.insert("reasoning_effort".into(), effort.unwrap_or("medium").into());
            }
            Some("disabled") => {}
            other => {
                return Err(TranslateError::unsupported(
                    format!("thinking.type={}", other.unwrap_or("?")),
                    target,
                ))
            }
        }
    }
    if let Some(tools) = a.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(TranslateError::unsupported(
                        format!("tools[{i}].type={other}"),
                        target,
                    ))
                }
            }
            let mut f = Map::new();
            f.insert("name".into(), t.get("name").cloned().unwrap_or(Value::Null));
            if let Some(d) = t.get("description") {
                f.insert("description".into(), d.clone());
            }
            f.insert(
                "parameters".into(),
                t.get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            );
            out.push(json!({"type": "function", "function": f}));
        }
        if !out.is_empty() {
            o.insert("tools".into(), Value::Array(out));
        }
    }
    if let Some(tc) = a.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("tool_choice.type={}", other.unwrap_or("?")),
                    target,
                ))
            }
        };
        o.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            o.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// OpenAI -> Anthropic

const OPENAI_TOP_LEVEL: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "reasoning_effort",
    "n",
    "response_format",
    "logprobs",
    "store",
    "metadata",
    "service_tier",
];

/// Data URL `data:<mt>;base64,<data>` to an Anthropic image source; http(s) URLs become URL
/// sources.
fn url_to_image_source(url: &str, at: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (mt, data) = rest.split_once(";base64,").ok_or_else(|| {
            TranslateError::invalid(at, "must be a base64 data URL or an http(s) URL")
        })?;
        return Ok(json!({"type": "base64", "media_type": mt, "data": data}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(TranslateError::invalid(
        at,
        "must be a base64 data URL or an http(s) URL",
    ))
}

/// Content of an OpenAI message as Anthropic blocks (text, images).
fn openai_content_blocks(
    content: Option<&Value>,
    at: &str,
    target: Dialect,
) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(if s.is_empty() {
            Vec::new()
        } else {
            vec![json!({"type": "text", "text": s})]
        }),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let pat = format!("{at}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(json!({
                        "type": "text",
                        "text": p.get("text").and_then(Value::as_str).unwrap_or(""),
                    })),
                    Some("refusal") => out.push(json!({
                        "type": "text",
                        "text": p.get("refusal").and_then(Value::as_str).unwrap_or(""),
                    })),
                    Some("image_url") => {
                        let url = p
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                TranslateError::invalid(
                                    format!("{pat}.image_url.url"),
                                    "is required",
                                )
                            })?;
                        out.push(json!({"type": "image", "source": url_to_image_source(url, &format!("{pat}.image_url.url"))?}));
                    }
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{pat}.type={}", other.unwrap_or("?")),
                            target,
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(TranslateError::invalid(at, "must be a string or an array")),
    }
}

/// Plain text of OpenAI content (system and tool messages).
pub(crate) fn openai_content_text(
    content: Option<&Value>,
    at: &str,
    target: Dialect,
) -> Result<String, TranslateError> {
    let mut s = String::new();
    for b in openai_content_blocks(content, at, target)? {
        match b.get("text").and_then(Value::as_str) {
            Some(t) => {
                if !s.is_empty() {
                    s.push('\n');
                }
                s.push_str(t);
            }
            None => {
                return Err(TranslateError::unsupported(
                    format!("{at}.type=image_url"),
                    target,
                ))
            }
        }
    }
    Ok(s)
}

/// Checks the OpenAI parameters that exist in no other protocol; shared by the Anthropic and
/// Gemini translations.
/// Append a turn's items (`key`: "content" blocks or Gemini "parts") to `turns`, merged into
/// the last turn when it has the same role (tool results must all sit in the one turn that
/// follows the calls; both targets also refuse two consecutive turns of one role).
pub(crate) fn push_turn(turns: &mut Vec<Value>, key: &str, role: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(c)) = last.get_mut(key) {
                c.extend(items);
                return;
            }
        }
    }
    turns.push(json!({"role": role, key: items}));
}

/// OpenAI message fields that neither Anthropic nor Gemini can carry: a 400 naming the field.
pub(crate) fn reject_message_fields(
    m: &Value,
    i: usize,
    target: Dialect,
) -> Result<(), TranslateError> {
    for k in ["name", "function_call", "audio"] {
        if m.get(k).is_some_and(|v| !v.is_null()) {
            return Err(TranslateError::unsupported(
                format!("messages[{i}].{k}"),
                target,
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_openai_common(
    o: &Map<String, Value>,
    target: Dialect,
) -> Result<(), TranslateError> {
    if let Some(n) = o.get("n").and_then(Value::as_u64) {
        if n != 1 {
            return Err(TranslateError::unsupported("n", target));
        }
    }
    if o.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(TranslateError::unsupported("logprobs", target));
    }
    if o.get("store").and_then(Value::as_bool) == Some(true) {
        return Err(TranslateError::unsupported("store", target));
    }
    Ok(())
}

/// Translates an OpenAI chat request to a Messages request. `default_max_tokens` fills the
/// `max_tokens` Anthropic requires when the caller gave none.
pub fn from_openai(
    o: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Map<String, Value>, TranslateError> {
    let target = Dialect::Anthropic;
    for (k, v) in o {
        if v.is_null() {
            continue;
        }
        if !OPENAI_TOP_LEVEL.contains(&k.as_str()) {
            return Err(TranslateError::unsupported(k.clone(), target));
        }
    }
    check_openai_common(o, target)?;
    // Structured output: Anthropic has no response format, so the schema becomes a tool the
    // model is made to call; its input is answered as the message text (`translate`).
    let json_schema = match o.get("response_format").filter(|v| !v.is_null()) {
        None => None,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some((json!({"type": "object"}), None)),
            Some("json_schema") => {
                let js = rf.get("json_schema").unwrap_or(&Value::Null);
                let schema = js
                    .get("schema")
                    .filter(|v| !v.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    return Err(TranslateError::invalid(
                        "response_format.json_schema.schema",
                        "must describe a JSON object (`\"type\": \"object\"`) for an Anthropic upstream",
                    ));
                }
                let desc = js
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Some((schema, desc))
            }
            _ => return Err(TranslateError::unsupported("response_format.type", target)),
        },
    };
    let mut a = Map::new();
    if let Some(m) = o.get("model") {
        a.insert("model".into(), m.clone());
    }
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let empty = Vec::new();
    let msgs = o
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    // Consecutive messages of one role are merged: tool results must all sit in the one user
    // turn that follows the assistant's tool calls.
    let mut push =
        |role: &str, blocks: Vec<Value>| push_turn(&mut messages, "content", role, blocks);
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let at = format!("messages[{i}].content");
        reject_message_fields(m, i, target)?;
        match role {
            "system" | "developer" => {
                let text = openai_content_text(m.get("content"), &at, target)?;
                system.push(json!({"type": "text", "text": text}));
            }
            "user" => push(
                "user",
                openai_content_blocks(m.get("content"), &at, target)?,
            ),
            "assistant" => {
                let mut blocks = openai_content_blocks(m.get("content"), &at, target)?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, c) in calls.iter().enumerate() {
                        let f = c.get("function").cloned().unwrap_or(Value::Null);
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let input: Value = if args.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(args).map_err(|_| {
                                TranslateError::invalid(
                                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                    "must be a JSON object",
                                )
                            })?
                        };
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": c.get("id").cloned().unwrap_or(Value::Null),
                            "name": f.get("name").cloned().unwrap_or(Value::Null),
                            "input": input,
                        }));
                    }
                }
                push("assistant", blocks);
            }
            "tool" => {
                let text = openai_content_text(m.get("content"), &at, target)?;
                push(
                    "user",
                    vec![json!({
                        "type": "tool_result",
                        "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                        "content": text,
                    })],
                );
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}].role={other}"),
                    target,
                ))
            }
        }
    }
    if !system.is_empty() {
        a.insert("system".into(), Value::Array(system));
    }
    a.insert("messages".into(), Value::Array(messages));
    let mut max_tokens = o
        .get("max_completion_tokens")
        .or_else(|| o.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens)
        .max(1);
    if let Some(effort) = o.get("reasoning_effort").and_then(Value::as_str) {
        match budget_for_effort(effort) {
            Some(budget) => {
                // Anthropic counts thinking inside max_tokens and wants room beyond it.
                if max_tokens <= budget {
                    max_tokens += budget;
                }
                a.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
            }
            None if effort == "none" => {}
            None => {
                return Err(TranslateError::invalid(
                    "reasoning_effort",
                    "must be minimal, low, medium or high",
                ))
            }
        }
    }
    a.insert("max_tokens".into(), max_tokens.into());
    match o.get("stop") {
        Some(Value::String(s)) => {
            a.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(v)) => {
            a.insert("stop_sequences".into(), Value::Array(v.clone()));
        }
        _ => {}
    }
    if let Some(t) = o.get("temperature").and_then(Value::as_f64) {
        if t > 1.0 {
            return Err(TranslateError::invalid(
                "temperature",
                "above 1 cannot be expressed for an Anthropic upstream (its range is 0-1)",
            ));
        }
        a.insert(
            "temperature".into(),
            o.get("temperature").cloned().unwrap_or(Value::Null),
        );
    }
    for k in ["top_p", "stream"] {
        if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
            a.insert(k.into(), v.clone());
        }
    }
    for (k, v) in o {
        if matches!(
            k.as_str(),
            "presence_penalty" | "frequency_penalty" | "seed" | "logit_bias"
        ) && !v.is_null()
        {
            return Err(TranslateError::unsupported(k.clone(), target));
        }
    }
    if let Some(u) = o.get("user").and_then(Value::as_str) {
        a.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(tools) = o.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::unsupported(
                    format!("tools[{i}].type"),
                    target,
                ));
            }
            let f = t.get("function").cloned().unwrap_or(Value::Null);
            let mut tool = Map::new();
            tool.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
            if let Some(d) = f.get("description") {
                tool.insert("description".into(), d.clone());
            }
            tool.insert(
                "input_schema".into(),
                f.get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            );
            out.push(Value::Object(tool));
        }
        if !out.is_empty() {
            a.insert("tools".into(), Value::Array(out));
        }
    }
    let parallel_off = o.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let mut choice = match o.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            other => {
                return Err(TranslateError::invalid(
                    "tool_choice",
                    format!("`{other}` is not a known tool choice"),
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .cloned()
                .ok_or_else(|| TranslateError::invalid("tool_choice", "needs function.name"))?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if let Some((schema, desc)) = json_schema {
        let caller_tools = a.contains_key("tools");
        let tools = a.entry("tools").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(tools) = tools {
            if tools
                .iter()
                .any(|t| t.get("name").and_then(Value::as_str) == Some(JSON_TOOL))
            {
                return Err(TranslateError::invalid(
                    "tools",
                    format!("a tool named `{JSON_TOOL}` cannot be combined with response_format for an Anthropic upstream"),
                ));
            }
            let mut d = String::from(
                "Give your final answer by calling this tool: its input is the answer.",
            );
            if let Some(desc) = desc {
                d.push(' ');
                d.push_str(&desc);
            }
            tools.push(json!({"name": JSON_TOOL, "description": d, "input_schema": schema}));
        }
        // Forced when nothing else competes (Anthropic refuses forced tools with thinking).
        if !caller_tools && !a.contains_key("thinking") && choice.is_none() {
            choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
        }
    }
    if parallel_off && a.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(m) = c.as_object_mut() {
            m.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    if let Some(c) = choice {
        a.insert("tool_choice".into(), c);
    }
    Ok(a)
}
