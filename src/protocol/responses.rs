//! OpenAI Responses API (`POST /v1/responses`) for callers: request validation, translation of
//! a Responses request into the chat-completions shape (the gateway's pivot, from which the
//! Anthropic and Gemini translations start), whole answers and usage in the Responses shape.
//! Streams are written by `translate::StreamTranslator` (its Responses writer and reader).
//!
//! Mapping rules (also in docs/protocols.md): `instructions` and `system`/`developer` input
//! messages become system messages; `input_text`/`output_text` parts become text,
//! `input_image` an `image_url` part, `input_file` a `file` part; `function_call` items become
//! an assistant message's `tool_calls` (consecutive calls are one message) and
//! `function_call_output` items `tool` messages; `reasoning` items are dropped (their content
//! is the vendor's own and only that vendor can read it back); `text.format` becomes
//! `response_format`, `reasoning.effort` `reasoning_effort`, `max_output_tokens` `max_tokens`.
//! Built-in tools (web search, file search, computer use, code interpreter, MCP, ...) and
//! items that reference stored state exist only at OpenAI: a 400 when translating.
//! Nothing is stored by the gateway: `store` is accepted and answered as `false`, and
//! `previous_response_id` / `conversation` / `background` are refused with a 400.

use super::openai::RequestError;
use super::translate::{Block, Reply, Stop};
use super::{Dialect, Media, TranslateError, Usage};
use serde_json::{json, Map, Value};

/// What the gateway needs to know about a Responses request.
#[derive(Debug, Clone, Default)]
pub struct ResponsesRequestInfo {
    pub model: String,
    pub stream: bool,
    pub max_output_tokens: Option<u64>,
    pub media: Media,
    pub has_tools: bool,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Validates a Responses body: a JSON object with a non-empty string `model`, an `input` that
/// is a string or an array of objects, boolean `stream`, integer `max_output_tokens` of at
/// least 16 (OpenAI's own minimum is 16; any positive value is accepted here), and none of the
/// stateful parameters the gateway cannot honour.
pub fn parse_request(
    body: &[u8],
) -> Result<(Map<String, Value>, ResponsesRequestInfo), RequestError> {
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(RequestError::InvalidJson("expected a JSON object".into())),
        Err(e) => return Err(RequestError::InvalidJson(e.to_string())),
    };
    let model = super::openai::required_model(&obj)?;
    let mut media = Media::default();
    match present(&obj, "input") {
        None => {
            if present(&obj, "instructions").is_none() {
                return Err(RequestError::MissingField("input"));
            }
        }
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let Some(it) = it.as_object() else {
                    return Err(invalid("input", format!("item {i} must be an object")));
                };
                if let Some(Value::Array(parts)) = it.get("content") {
                    parts.iter().for_each(|p| media.add(p));
                }
                if let Some(Value::Array(parts)) = it.get("output") {
                    parts.iter().for_each(|p| media.add(p));
                }
            }
        }
        Some(_) => return Err(invalid("input", "must be a string or an array of items")),
    }
    let stream = match present(&obj, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "must be a boolean")),
    };
    let max_output_tokens = match present(&obj, "max_output_tokens") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            _ => return Err(invalid("max_output_tokens", "must be a positive integer")),
        },
    };
    for key in ["previous_response_id", "conversation"] {
        if present(&obj, key).is_some() {
            return Err(RequestError::InvalidField {
                field: if key == "conversation" { "conversation" } else { "previous_response_id" },
                reason: "is not supported: this gateway stores no responses or conversations; send the whole conversation in `input` (with `store: false` and `include: [\"reasoning.encrypted_content\"]` to carry reasoning across turns)".into(),
            });
        }
    }
    if matches!(present(&obj, "background"), Some(Value::Bool(true))) {
        return Err(invalid(
            "background",
            "is not supported: this gateway answers responses in the request (stream for long ones)",
        ));
    }
    let has_tools = matches!(present(&obj, "tools"), Some(Value::Array(t)) if !t.is_empty());
    Ok((
        obj,
        ResponsesRequestInfo {
            model,
            stream,
            max_output_tokens,
            media,
            has_tools,
        },
    ))
}

/// Rewrites a Responses body for an upstream that speaks it: the model name, and `store: false`
/// (nothing is kept at the vendor under the gateway's credential).
pub fn rewrite_request(obj: &mut Map<String, Value>, upstream_model: &str) -> Vec<u8> {
    obj.insert("model".into(), Value::String(upstream_model.into()));
    obj.insert("store".into(), Value::Bool(false));
    serde_json::to_vec(obj).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Responses -> chat completions

/// Text of a content array or string (`input_text`, `output_text`, `text`, `refusal` parts).
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        s.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("refusal") => {
                        s.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or(""))
                    }
                    _ => return None,
                }
            }
            Some(s)
        }
        _ => None,
    }
}

/// A user (or system) content array in chat parts.
fn chat_parts(content: &Value, at: &str) -> Result<Value, TranslateError> {
    let Value::Array(parts) = content else {
        return match content {
            Value::String(s) => Ok(Value::String(s.clone())),
            _ => Err(TranslateError::invalid(
                format!("{at}.content"),
                "must be a string or an array of content parts",
            )),
        };
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => out.push(json!({
                "type": "text",
                "text": p.get("text").and_then(Value::as_str).unwrap_or(""),
            })),
            Some("refusal") => out.push(json!({
                "type": "text",
                "text": p.get("refusal").and_then(Value::as_str).unwrap_or(""),
            })),
            Some("input_image") => {
                let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                    return Err(TranslateError::unsupported(
                        format!("{here}.file_id"),
                        Dialect::OpenAi,
                    ));
                };
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").and_then(Value::as_str) {
                    image["detail"] = json!(d);
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some("input_file") => {
                let mut file = Map::new();
                for k in ["file_data", "file_id", "filename"] {
                    if let Some(v) = p.get(k).filter(|v| !v.is_null()) {
                        file.insert(k.into(), v.clone());
                    }
                }
                if p.get("file_url").is_some() {
                    return Err(TranslateError::unsupported(
                        format!("{here}.file_url"),
                        Dialect::OpenAi,
                    ));
                }
                out.push(json!({"type": "file", "file": file}));
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("{here}.type={}", other.unwrap_or("?")),
                    Dialect::OpenAi,
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

/// The output of a tool call as chat `tool` message content: a string, or text parts.
fn tool_output(out: Option<&Value>, at: &str) -> Result<Value, TranslateError> {
    match out {
        None | Some(Value::Null) => Ok(Value::String(String::new())),
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(v @ Value::Array(_)) => match text_of(v) {
            Some(s) => Ok(Value::String(s)),
            None => chat_parts(v, at),
        },
        Some(v) => Ok(Value::String(v.to_string())),
    }
}

/// The chat-completions body equivalent to a Responses request (the pivot for every other
/// upstream protocol). Fails on what has no equivalent outside OpenAI's own Responses API.
pub fn to_chat(r: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let mut messages: Vec<Value> = Vec::new();
    let mut extra_tools: Vec<Value> = Vec::new();
    if let Some(ins) = present(r, "instructions") {
        match ins {
            Value::String(s) if !s.is_empty() => {
                messages.push(json!({"role": "system", "content": s}))
            }
            Value::String(_) => {}
            _ => {
                return Err(TranslateError::invalid("instructions", "must be a string"));
            }
        }
    }
    match present(r, "input") {
        None => {}
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let at = format!("input[{i}]");
                let kind = it.get("type").and_then(Value::as_str);
                let kind = match kind {
                    None if it.get("role").is_some() => "message",
                    None => {
                        return Err(TranslateError::invalid(
                            at,
                            "must have a `type` or a `role`",
                        ))
                    }
                    Some(k) => k,
                };
                match kind {
                    "message" => {
                        let role = it.get("role").and_then(Value::as_str).unwrap_or("user");
                        let content = it.get("content").unwrap_or(&Value::Null);
                        match role {
                            "assistant" => {
                                let text = text_of(content).ok_or_else(|| {
                                    TranslateError::invalid(
                                        format!("{at}.content"),
                                        "of an assistant message must be text",
                                    )
                                })?;
                                messages.push(json!({"role": "assistant", "content": text}));
                            }
                            "user" => messages.push(json!({
                                "role": "user",
                                "content": chat_parts(content, &at)?,
                            })),
                            "system" | "developer" => {
                                let text = text_of(content).ok_or_else(|| {
                                    TranslateError::invalid(
                                        format!("{at}.content"),
                                        "of a system message must be text",
                                    )
                                })?;
                                messages.push(json!({"role": "system", "content": text}));
                            }
                            other => {
                                return Err(TranslateError::invalid(
                                    format!("{at}.role"),
                                    format!("`{other}` is not a message role"),
                                ))
                            }
                        }
                    }
                    "function_call" | "custom_tool_call" => {
                        let call_id =
                            it.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                                TranslateError::invalid(format!("{at}.call_id"), "is required")
                            })?;
                        let name = it.get("name").and_then(Value::as_str).unwrap_or("");
                        let arguments = if kind == "custom_tool_call" {
                            json!({"input": it.get("input").and_then(Value::as_str).unwrap_or("")})
                                .to_string()
                        } else {
                            it.get("arguments")
                                .and_then(Value::as_str)
                                .unwrap_or("{}")
                                .to_string()
                        };
                        let call = json!({"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": arguments}});
                        // Consecutive calls (and a call right after the assistant's text) are
                        // one assistant turn.
                        let merged = match messages.last_mut() {
                            Some(Value::Object(m))
                                if m.get("role").and_then(Value::as_str) == Some("assistant") =>
                            {
                                match m
                                    .entry("tool_calls")
                                    .or_insert_with(|| Value::Array(Vec::new()))
                                {
                                    Value::Array(calls) => {
                                        calls.push(call.clone());
                                        true
                                    }
                                    _ => false,
                                }
                            }
                            _ => false,
                        };
                        if !merged {
                            messages.push(json!({"role": "assistant", "content": null,
                                "tool_calls": [call]}));
                        }
                    }
                    "function_call_output" | "custom_tool_call_output" => {
                        let call_id =
                            it.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                                TranslateError::invalid(format!("{at}.call_id"), "is required")
                            })?;
                        messages.push(json!({"role": "tool", "tool_call_id": call_id,
                            "content": tool_output(it.get("output"), &at)?}));
                    }
                    // The vendor's own reasoning state: only that vendor can read it back.
                    "reasoning" => {}
                    // Tools offered in the input (Codex's "responses lite"): like `tools`.
                    "additional_tools" => {
                        if let Some(Value::Array(t)) = it.get("tools") {
                            extra_tools.extend(t.iter().cloned());
                        }
                    }
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{at}.type={other}"),
                            Dialect::OpenAi,
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                "input",
                "must be a string or an array",
            ))
        }
    }
    if messages.is_empty() {
        return Err(TranslateError::invalid("input", "must not be empty"));
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        r.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    for k in ["temperature", "top_p", "parallel_tool_calls", "user"] {
        if let Some(v) = present(r, k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(n) = present(r, "max_output_tokens") {
        out.insert("max_tokens".into(), n.clone());
    }
    if let Some(Value::Bool(true)) = present(r, "stream") {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(effort) = present(r, "reasoning")
        .and_then(|x| x.get("effort"))
        .and_then(Value::as_str)
        // `none` is what a model without reasoning does anyway.
        .filter(|e| *e != "none")
    {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    let mut all_tools: Vec<&Value> = match present(r, "tools") {
        Some(Value::Array(t)) => t.iter().collect(),
        _ => Vec::new(),
    };
    all_tools.extend(extra_tools.iter());
    // Namespaces group tools; their members are offered as plain tools.
    let mut flat: Vec<&Value> = Vec::with_capacity(all_tools.len());
    for t in all_tools {
        match (t.get("type").and_then(Value::as_str), t.get("tools")) {
            (Some("namespace"), Some(Value::Array(inner))) => flat.extend(inner.iter()),
            _ => flat.push(t),
        }
    }
    if !flat.is_empty() {
        let tools = flat;
        let mut chat_tools = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = Map::new();
                    for k in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                            f.insert(k.into(), v.clone());
                        }
                    }
                    f.entry("parameters")
                        .or_insert_with(|| json!({"type": "object", "properties": {}}));
                    chat_tools.push(json!({"type": "function", "function": f}));
                }
                Some("custom") => {
                    // A free-form tool: a function taking its text as one string.
                    let desc = t.get("description").and_then(Value::as_str).unwrap_or("");
                    chat_tools.push(json!({"type": "function", "function": {
                        "name": t.get("name").cloned().unwrap_or(Value::Null),
                        "description": desc,
                        "parameters": {"type": "object", "properties": {
                            "input": {"type": "string", "description": "The tool's free-form input."}},
                            "required": ["input"]},
                    }}));
                }
                // Tools that OpenAI itself runs (search, code, images, MCP) or that answer in
                // OpenAI-only item types: not offered to another vendor's model, which
                // answers with the caller's own tools (docs/protocols.md).
                Some(k) if is_hosted_tool(k) => {}
                other => {
                    return Err(TranslateError::unsupported(
                        format!("tools[{i}].type={}", other.unwrap_or("?")),
                        Dialect::OpenAi,
                    ))
                }
            }
        }
        if !chat_tools.is_empty() {
            out.insert("tools".into(), Value::Array(chat_tools));
        }
    }
    if let Some(tc) = present(r, "tool_choice") {
        let v = match tc {
            Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => tc.clone(),
            Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                Some("function" | "custom") => {
                    json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}})
                }
                Some("allowed_tools") => match o.get("mode").and_then(Value::as_str) {
                    Some("required") => json!("required"),
                    _ => json!("auto"),
                },
                _ => {
                    return Err(TranslateError::unsupported(
                        "tool_choice.type",
                        Dialect::OpenAi,
                    ))
                }
            },
            _ => {
                return Err(TranslateError::invalid(
                    "tool_choice",
                    "is not a valid choice",
                ))
            }
        };
        out.insert("tool_choice".into(), v);
    }
    if let Some(fmt) = present(r, "text")
        .and_then(|t| t.get("format"))
        .filter(|f| !f.is_null())
    {
        match fmt.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut js = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = fmt.get(k).filter(|v| !v.is_null()) {
                        js.insert(k.into(), v.clone());
                    }
                }
                js.entry("name").or_insert_with(|| json!("response"));
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": js}),
                );
            }
            Some(other) => {
                return Err(TranslateError::unsupported(
                    format!("text.format.type={other}"),
                    Dialect::OpenAi,
                ))
            }
        }
    }
    if present(r, "prompt").is_some() {
        return Err(TranslateError::unsupported("prompt", Dialect::OpenAi));
    }
    Ok(out)
}

/// Per tool name: free-form (`custom`), and the namespace it came in (see [`tool_kinds`]).
pub type ToolKinds = Vec<(String, bool, Option<String>)>;

fn kind_of<'a>(tools: &'a [(String, bool, Option<String>)], name: &str) -> (bool, Option<&'a str>) {
    tools
        .iter()
        .find(|(n, _, _)| n == name)
        .map_or((false, None), |(_, c, ns)| (*c, ns.as_deref()))
}

/// Types of tools that OpenAI runs itself or answers with its own item types.
fn is_hosted_tool(kind: &str) -> bool {
    kind.starts_with("web_search")
        || kind.starts_with("computer_use")
        || matches!(
            kind,
            "file_search"
                | "code_interpreter"
                | "image_generation"
                | "mcp"
                | "local_shell"
                | "shell"
                | "apply_patch"
                | "tool_search"
        )
}

/// How the request's tools are answered: for each tool name, whether it is free-form
/// (`custom`: a `custom_tool_call` item with the input unwrapped) and the namespace it was
/// offered in (echoed on the call item). Tools come from `tools` and from `additional_tools`
/// input items, namespaces looked into.
pub fn tool_kinds(r: &Map<String, Value>) -> ToolKinds {
    fn walk(t: &Value, ns: Option<&str>, out: &mut Vec<(String, bool, Option<String>)>) {
        match t.get("type").and_then(Value::as_str) {
            Some("namespace") => {
                let name = t.get("name").and_then(Value::as_str);
                for inner in t
                    .get("tools")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    walk(inner, name, out);
                }
            }
            Some(kind @ ("function" | "custom")) => {
                if let Some(n) = t.get("name").and_then(Value::as_str) {
                    out.push((n.to_owned(), kind == "custom", ns.map(str::to_owned)));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for t in present(r, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(t, None, &mut out);
    }
    for it in present(r, "input")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if it.get("type").and_then(Value::as_str) == Some("additional_tools") {
            for t in it
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                walk(t, None, &mut out);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Usage and answers

/// Normalised usage of a Responses `usage` object.
pub fn parse_usage(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    let n = |x: Option<&Value>| x.and_then(Value::as_u64);
    let input = n(o.get("input_tokens"))?;
    let output = n(o.get("output_tokens")).unwrap_or(0);
    Some(Usage {
        prompt_tokens: input,
        cached_tokens: n(o
            .get("input_tokens_details")
            .and_then(|d| d.get("cached_tokens")))
        .unwrap_or(0),
        completion_tokens: output,
        reasoning_tokens: n(o
            .get("output_tokens_details")
            .and_then(|d| d.get("reasoning_tokens")))
        .unwrap_or(0),
        cache_write_tokens: 0,
    })
}

/// A Responses `usage` object.
pub fn usage_value(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

/// A whole Responses answer read into the neutral [`Reply`].
pub fn reply_from(v: &Value) -> Option<Reply> {
    let output = v.get("output")?.as_array()?;
    let mut blocks = Vec::new();
    let mut calls = false;
    for item in output {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                if let Some(s) = item.get("content").and_then(text_of) {
                    blocks.push(Block::Text(s));
                }
            }
            Some("reasoning") => {
                let mut s = String::new();
                for part in item
                    .get("summary")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(
                        item.get("content")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten(),
                    )
                {
                    s.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""));
                }
                if !s.is_empty() {
                    blocks.push(Block::Thinking {
                        text: s,
                        signature: None,
                    });
                }
            }
            Some("function_call") => {
                calls = true;
                let args = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                blocks.push(Block::ToolUse {
                    id: item
                        .get("call_id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    name: item
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    input: serde_json::from_str(args).unwrap_or_else(|_| json!({})),
                });
            }
            _ => {}
        }
    }
    let stop = stop_of(v, calls);
    Some(Reply {
        blocks,
        stop,
        stop_sequence: None,
        usage: v.get("usage").and_then(parse_usage),
    })
}

/// Why a Responses answer ended.
pub fn stop_of(resp: &Value, calls: bool) -> Stop {
    let reason = resp
        .get("incomplete_details")
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    match (resp.get("status").and_then(Value::as_str), reason) {
        (Some("incomplete"), Some("max_output_tokens")) => Stop::MaxTokens,
        (Some("incomplete"), Some("content_filter")) => Stop::ContentFilter,
        (Some("incomplete"), _) => Stop::Other,
        _ if calls => Stop::ToolUse,
        _ => Stop::EndTurn,
    }
}

/// `status` and `incomplete_details` of an answer that stopped for `stop`.
pub fn status_of(stop: Stop) -> (&'static str, Value) {
    match stop {
        Stop::MaxTokens => ("incomplete", json!({"reason": "max_output_tokens"})),
        Stop::ContentFilter | Stop::Refusal => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The fields of a response object that do not depend on its output.
pub fn response_shell(id: &str, model: &str, created: u64, status: &str) -> Map<String, Value> {
    let v = json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": [],
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": null,
        "metadata": {},
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// One output item of a finished answer, `n` its position (ids are unique per response).
pub fn output_item(
    block: &Block,
    id: &str,
    n: usize,
    tools: &[(String, bool, Option<String>)],
) -> Value {
    match block {
        Block::Text(t) => json!({
            "type": "message", "id": format!("msg_{id}_{n}"), "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": t, "annotations": [], "logprobs": []}],
        }),
        Block::Thinking { text, .. } => json!({
            "type": "reasoning", "id": format!("rs_{id}_{n}"),
            "summary": [{"type": "summary_text", "text": text}],
        }),
        Block::ToolUse {
            id: call_id,
            name,
            input,
        } => {
            let (custom, ns) = kind_of(tools, name);
            let mut v = if custom {
                let text = input.get("input").and_then(Value::as_str).unwrap_or("");
                json!({"type": "custom_tool_call", "id": format!("ctc_{id}_{n}"),
                    "status": "completed", "call_id": call_id, "name": name, "input": text})
            } else {
                let args = if input.is_object() {
                    input.to_string()
                } else {
                    "{}".to_string()
                };
                json!({"type": "function_call", "id": format!("fc_{id}_{n}"),
                    "status": "completed", "call_id": call_id, "name": name, "arguments": args})
            };
            if let Some(ns) = ns {
                v["namespace"] = json!(ns);
            }
            v
        }
    }
}

/// A whole answer in the Responses shape.
pub fn reply_value(
    r: &Reply,
    id: &str,
    model: &str,
    created: u64,
    tools: &[(String, bool, Option<String>)],
) -> Value {
    let (status, incomplete) = status_of(r.stop);
    let mut m = response_shell(&format!("resp_{id}"), model, created, status);
    m.insert("incomplete_details".into(), incomplete);
    let output: Vec<Value> = r
        .blocks
        .iter()
        .enumerate()
        .map(|(n, b)| output_item(b, id, n, tools))
        .collect();
    m.insert("output".into(), Value::Array(output));
    m.insert("usage".into(), usage_value(&r.usage.unwrap_or_default()));
    Value::Object(m)
}

/// The SSE events that end a broken Responses stream: `error`, then `response.failed`.
pub fn error_events(message: &str, code: &str, id: &str, model: &str, seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let err = json!({"type": "error", "code": code, "message": message, "param": null,
        "sequence_number": seq});
    push_event(&mut out, "error", &err);
    let mut shell = response_shell(&format!("resp_{id}"), model, 0, "failed");
    shell.insert("error".into(), json!({"code": code, "message": message}));
    let failed = json!({"type": "response.failed", "response": shell, "sequence_number": seq + 1});
    push_event(&mut out, "response.failed", &failed);
    out
}

/// `event: <name>\ndata: <json>\n\n`.
pub fn push_event(out: &mut Vec<u8>, name: &str, v: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

// ---------------------------------------------------------------------------------------------
// Streams: the caller's typed events

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Reasoning,
    Call,
    Custom,
}

#[derive(Debug)]
struct Item {
    kind: Kind,
    id: String,
    /// Text, reasoning summary or arguments so far.
    text: String,
    /// The upstream's key of a tool call.
    key: u64,
    call_id: String,
    name: String,
    done: bool,
}

/// Writes a stream of neutral steps as Responses API events (`response.created`, the item,
/// part and delta events, `response.completed` with the whole answer and its usage).
#[derive(Debug)]
pub struct StreamWriter {
    id: String,
    resp_id: String,
    model: String,
    created: u64,
    tools: ToolKinds,
    seq: u64,
    started: bool,
    items: Vec<Item>,
}

impl StreamWriter {
    pub fn new(id: &str, model: &str, created: u64, tools: ToolKinds) -> Self {
        StreamWriter {
            id: id.to_string(),
            resp_id: format!("resp_{id}"),
            model: model.to_string(),
            created,
            tools,
            seq: 0,
            started: false,
            items: Vec::new(),
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, mut v: Value) {
        let name = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(o) = v.as_object_mut() {
            o.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        push_event(out, &name, &v);
    }

    fn shell(&self, status: &str) -> Map<String, Value> {
        response_shell(&self.resp_id, &self.model, self.created, status)
    }

    pub fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let shell = Value::Object(self.shell("in_progress"));
        self.emit(
            out,
            json!({"type": "response.created", "response": shell.clone()}),
        );
        self.emit(
            out,
            json!({"type": "response.in_progress", "response": shell}),
        );
    }

    fn item_value(&self, n: usize) -> Value {
        let it = &self.items[n];
        let status = if it.done { "completed" } else { "in_progress" };
        match it.kind {
            Kind::Message => {
                let content = if it.done {
                    json!([{"type": "output_text", "text": it.text, "annotations": [], "logprobs": []}])
                } else {
                    json!([])
                };
                json!({"type": "message", "id": it.id, "status": status, "role": "assistant",
                    "content": content})
            }
            Kind::Reasoning => {
                let summary = if it.done {
                    json!([{"type": "summary_text", "text": it.text}])
                } else {
                    json!([])
                };
                json!({"type": "reasoning", "id": it.id, "summary": summary})
            }
            Kind::Call | Kind::Custom => {
                let mut v = if it.kind == Kind::Call {
                    json!({"type": "function_call", "id": it.id, "status": status,
                        "call_id": it.call_id, "name": it.name,
                        "arguments": if it.done { it.text.as_str() } else { "" }})
                } else {
                    let input = if it.done {
                        custom_input(&it.text)
                    } else {
                        String::new()
                    };
                    json!({"type": "custom_tool_call", "id": it.id, "status": status,
                        "call_id": it.call_id, "name": it.name, "input": input})
                };
                if let (_, Some(ns)) = kind_of(&self.tools, &it.name) {
                    v["namespace"] = json!(ns);
                }
                v
            }
        }
    }

    /// Opens an item of `kind` (closing the open one) and returns its position.
    fn open(
        &mut self,
        kind: Kind,
        key: u64,
        call_id: &str,
        name: &str,
        out: &mut Vec<u8>,
    ) -> usize {
        self.close_last(out);
        let n = self.items.len();
        let prefix = match kind {
            Kind::Message => "msg",
            Kind::Reasoning => "rs",
            Kind::Call => "fc",
            Kind::Custom => "ctc",
        };
        self.items.push(Item {
            kind,
            id: format!("{prefix}_{}_{n}", self.id),
            text: String::new(),
            key,
            call_id: call_id.to_string(),
            name: name.to_string(),
            done: false,
        });
        let item = self.item_value(n);
        self.emit(
            out,
            json!({"type": "response.output_item.added", "output_index": n, "item": item}),
        );
        let item_id = self.items[n].id.clone();
        match kind {
            Kind::Message => self.emit(
                out,
                json!({"type": "response.content_part.added",
                "item_id": item_id, "output_index": n, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            ),
            Kind::Reasoning => self.emit(
                out,
                json!({"type": "response.reasoning_summary_part.added",
                "item_id": item_id, "output_index": n, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}}),
            ),
            Kind::Call | Kind::Custom => {}
        }
        n
    }

    fn close_last(&mut self, out: &mut Vec<u8>) {
        let Some(n) = self.items.len().checked_sub(1) else {
            return;
        };
        if self.items[n].done {
            return;
        }
        self.items[n].done = true;
        let (id, text) = (self.items[n].id.clone(), self.items[n].text.clone());
        match self.items[n].kind {
            Kind::Message => {
                self.emit(
                    out,
                    json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": n, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(out, json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": n, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
            }
            Kind::Reasoning => {
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_text.done",
                    "item_id": id, "output_index": n, "summary_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    json!({"type": "response.reasoning_summary_part.done",
                    "item_id": id, "output_index": n, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}}),
                );
            }
            Kind::Call => {
                let name = self.items[n].name.clone();
                self.emit(
                    out,
                    json!({"type": "response.function_call_arguments.done",
                    "item_id": id, "output_index": n, "name": name, "arguments": text}),
                );
            }
            Kind::Custom => {
                let input = custom_input(&text);
                self.emit(
                    out,
                    json!({"type": "response.custom_tool_call_input.delta",
                    "item_id": id, "output_index": n, "delta": input}),
                );
                self.emit(
                    out,
                    json!({"type": "response.custom_tool_call_input.done",
                    "item_id": id, "output_index": n, "input": input}),
                );
            }
        }
        let item = self.item_value(n);
        self.emit(
            out,
            json!({"type": "response.output_item.done", "output_index": n, "item": item}),
        );
    }

    /// Generated text (`thinking`: reasoning) appended to the open item of its kind.
    pub fn text(&mut self, thinking: bool, s: &str, out: &mut Vec<u8>) {
        self.ensure_started(out);
        let kind = if thinking {
            Kind::Reasoning
        } else {
            Kind::Message
        };
        let n = match self.items.last() {
            Some(it) if it.kind == kind && !it.done => self.items.len() - 1,
            _ => self.open(kind, 0, "", "", out),
        };
        self.items[n].text.push_str(s);
        let id = self.items[n].id.clone();
        if thinking {
            self.emit(
                out,
                json!({"type": "response.reasoning_summary_text.delta",
                "item_id": id, "output_index": n, "summary_index": 0, "delta": s}),
            );
        } else {
            self.emit(
                out,
                json!({"type": "response.output_text.delta", "item_id": id,
                "output_index": n, "content_index": 0, "delta": s, "logprobs": []}),
            );
        }
    }

    pub fn tool_start(&mut self, key: u64, call_id: &str, name: &str, out: &mut Vec<u8>) {
        self.ensure_started(out);
        if self
            .items
            .iter()
            .any(|it| it.key == key && matches!(it.kind, Kind::Call | Kind::Custom))
        {
            return;
        }
        let kind = if kind_of(&self.tools, name).0 {
            Kind::Custom
        } else {
            Kind::Call
        };
        self.open(kind, key, call_id, name, out);
    }

    pub fn tool_args(&mut self, key: u64, frag: &str, out: &mut Vec<u8>) {
        self.ensure_started(out);
        let n = match self
            .items
            .iter()
            .position(|it| it.key == key && matches!(it.kind, Kind::Call | Kind::Custom))
        {
            Some(n) => n,
            None => self.open(Kind::Call, key, &format!("call_{key}"), "", out),
        };
        self.items[n].text.push_str(frag);
        if self.items[n].kind == Kind::Call && !self.items[n].done {
            let id = self.items[n].id.clone();
            self.emit(
                out,
                json!({"type": "response.function_call_arguments.delta",
                "item_id": id, "output_index": n, "delta": frag}),
            );
        }
    }

    /// The closing events: the open item, then `response.completed` (or `.incomplete`).
    pub fn end(&mut self, stop: Stop, usage: Option<&Usage>, out: &mut Vec<u8>) {
        self.ensure_started(out);
        self.close_last(out);
        let stop = if stop == Stop::EndTurn
            && self
                .items
                .iter()
                .any(|i| matches!(i.kind, Kind::Call | Kind::Custom))
        {
            Stop::ToolUse
        } else {
            stop
        };
        let (status, incomplete) = status_of(stop);
        let mut shell = self.shell(status);
        shell.insert("incomplete_details".into(), incomplete);
        let output: Vec<Value> = (0..self.items.len()).map(|n| self.item_value(n)).collect();
        shell.insert("output".into(), Value::Array(output));
        shell.insert(
            "usage".into(),
            usage_value(&usage.copied().unwrap_or_default()),
        );
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, json!({"type": kind, "response": Value::Object(shell)}));
    }

    /// Ends the stream with `error` and `response.failed`.
    pub fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.ensure_started(out);
        let ev = error_events(message, "upstream_error", &self.id, &self.model, self.seq);
        self.seq += 2;
        out.extend_from_slice(&ev);
    }
}

/// The free-form input of a custom tool, carried as `{"input": ...}` through other protocols.
fn custom_input(args: &str) -> String {
    match serde_json::from_str::<Value>(args) {
        Ok(v) => match v.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => args.to_string(),
        },
        Err(_) => args.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn stateful_parameters_are_refused_and_bad_shapes_named() {
        for body in [
            r#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
            r#"{"model":"m","input":"hi","conversation":"conv_1"}"#,
            r#"{"model":"m","input":"hi","background":true}"#,
            r#"{"model":"m","input":5}"#,
            r#"{"model":"m"}"#,
            r#"{"input":"hi"}"#,
            r#"{"model":"m","input":"hi","max_output_tokens":0}"#,
        ] {
            assert!(parse_request(body.as_bytes()).is_err(), "{body}");
        }
        let (_, info) = parse_request(
            br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/y.png"}]}],"stream":true,"max_output_tokens":64,"store":true}"#,
        )
        .unwrap();
        assert!(info.stream);
        assert_eq!(info.max_output_tokens, Some(64));
        assert_eq!(info.media.images, 1);
    }

    #[test]
    fn items_become_chat_messages_with_calls_merged() {
        let r = obj(json!({
            "model": "m",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "answer in French"}]},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"},
            "max_output_tokens": 100,
            "stream": true,
            "store": false,
            "include": ["reasoning.encrypted_content"],
        }));
        let c = to_chat(&r).unwrap();
        let msgs = c["messages"].as_array().unwrap();
        let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "tool", "system"]
        );
        assert_eq!(msgs[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(msgs[4]["content"], "rain");
        assert_eq!(c["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(c["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(c["response_format"]["json_schema"]["name"], "w");
        assert_eq!(c["reasoning_effort"], "low");
        assert_eq!(c["max_tokens"], 100);
        assert_eq!(c["stream_options"]["include_usage"], true);
        assert!(c.get("store").is_none() && c.get("include").is_none());
    }

    #[test]
    fn codex_requests_translate_with_their_tools() {
        // What Codex 0.171 sends (tests/fixtures/clients): tools in an `additional_tools`
        // input item grouped in namespaces, free-form tools, hosted tools, item ids.
        for f in [
            include_str!("../../tests/fixtures/clients/codex-1.json"),
            include_str!("../../tests/fixtures/clients/codex-2.json"),
            include_str!("../../tests/fixtures/clients/codex-3.json"),
            include_str!("../../tests/fixtures/clients/codex-4.json"),
            include_str!("../../tests/fixtures/clients/codex-5.json"),
            include_str!("../../tests/fixtures/clients/agents-sdk-2.json"),
        ] {
            let v: Value = serde_json::from_str(f).unwrap();
            let body = obj(v["body"].clone());
            let c = to_chat(&body).unwrap_or_else(|e| panic!("{e}"));
            let names: Vec<&str> = c["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap())
                .collect();
            assert!(!names.is_empty());
            assert!(c["messages"].as_array().unwrap().len() >= 2);
        }
        let v: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/clients/codex-2.json"))
                .unwrap();
        let body = obj(v["body"].clone());
        let kinds = tool_kinds(&body);
        assert!(kinds
            .iter()
            .any(|(n, custom, ns)| n == "exec" && *custom && ns.as_deref() == Some("functions")));
        // The free-form call comes back as a custom_tool_call in its namespace.
        let item = output_item(
            &Block::ToolUse {
                id: "call_1".into(),
                name: "exec".into(),
                input: json!({"input": "text(1)"}),
            },
            "r",
            0,
            &kinds,
        );
        assert_eq!(item["type"], "custom_tool_call");
        assert_eq!(item["input"], "text(1)");
        assert_eq!(item["namespace"], "functions");
    }

    #[test]
    fn openai_only_features_are_a_clear_400() {
        let r = obj(json!({"model": "m", "input": "hi", "tools": [{"type": "no_such_tool"}]}));
        let e = to_chat(&r).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type=no_such_tool"));
        // Hosted tools are not offered to another vendor's model.
        let r = obj(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}));
        assert!(to_chat(&r).unwrap().get("tools").is_none());
        let r = obj(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}));
        assert!(to_chat(&r).is_err());
    }

    #[test]
    fn answers_round_trip_through_the_neutral_reply() {
        let r = Reply {
            blocks: vec![
                Block::Thinking {
                    text: "hmm".into(),
                    signature: None,
                },
                Block::Text("Hello".into()),
                Block::ToolUse {
                    id: "call_1".into(),
                    name: "f".into(),
                    input: json!({"a": 1}),
                },
            ],
            stop: Stop::ToolUse,
            stop_sequence: None,
            usage: Some(Usage {
                prompt_tokens: 10,
                cached_tokens: 4,
                completion_tokens: 7,
                reasoning_tokens: 2,
                cache_write_tokens: 0,
            }),
        };
        let v = reply_value(&r, "abc", "m", 1, &[]);
        assert_eq!(v["status"], "completed");
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 4);
        let back = reply_from(&v).unwrap();
        assert_eq!(back.blocks, r.blocks);
        assert_eq!(back.stop, Stop::ToolUse);
        assert_eq!(back.usage.unwrap().reasoning_tokens, 2);
        let cut = Reply {
            stop: Stop::MaxTokens,
            ..r
        };
        let v = reply_value(&cut, "abc", "m", 1, &[]);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    }
}
