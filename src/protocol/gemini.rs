//! Google Gemini (`generateContent` / `streamGenerateContent?alt=sse`): request translation
//! from the OpenAI chat shape (and from Anthropic Messages through it), usage normalisation
//! and error bodies. The model is part of the URL, not of the body.

use super::anthropic::openai_content_text;
use super::{anthropic, Dialect, TranslateError, Usage};
use serde_json::{json, Map, Value};

/// `models/{model}:generateContent` or `models/{model}:streamGenerateContent?alt=sse`, under
/// the upstream's base path (e.g. `/v1beta`).
pub fn path(base: &str, model: &str, stream: bool) -> String {
    if stream {
        format!("{base}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/models/{model}:generateContent")
    }
}

/// Separator between a tool-call id and the Gemini `thoughtSignature` carried inside it.
///
/// Gemini thinking models sign a function call (`thoughtSignature` beside the `functionCall`
/// part) and want the signature back with that call in the next turn's history. OpenAI and
/// Anthropic callers have no field for it, but they do send each tool call's id back verbatim,
/// so the signature travels in the id: `<id>__thought__<signature>`, the signature's base64
/// in the URL-safe alphabet without padding, so the id stays within `[A-Za-z0-9_-]` (what
/// Anthropic accepts as a `tool_use` id).
pub const SIGNATURE_SEP: &str = "__thought__";

/// The id given to the caller for a Gemini function call: `id`, plus the call's
/// `thoughtSignature` when it has one in standard base64 (anything else is not carried).
pub fn call_id(id: &str, signature: Option<&str>) -> String {
    let Some(sig) = signature.filter(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    }) else {
        return id.to_string();
    };
    let mut out = String::with_capacity(id.len() + SIGNATURE_SEP.len() + sig.len());
    out.push_str(id);
    out.push_str(SIGNATURE_SEP);
    out.extend(sig.chars().filter(|c| *c != '=').map(|c| match c {
        '+' => '-',
        '/' => '_',
        c => c,
    }));
    out
}

/// The `thoughtSignature` carried in a tool-call id made by [`call_id`], if any.
pub fn signature_of(id: &str) -> Option<String> {
    let (_, enc) = id.split_once(SIGNATURE_SEP)?;
    if enc.is_empty()
        || !enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return None;
    }
    let mut sig: String = enc
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !sig.len().is_multiple_of(4) {
        sig.push('=');
    }
    Some(sig)
}

/// Normalises `usageMetadata`: the prompt includes cached content; thoughts are output the
/// caller pays for, so completion = candidates + thoughts, with thoughts as reasoning.
pub fn parse_usage(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    let n = |k: &str| o.get(k).and_then(Value::as_u64);
    let prompt = n("promptTokenCount");
    let candidates = n("candidatesTokenCount");
    if prompt.is_none() && candidates.is_none() {
        return None;
    }
    let thoughts = n("thoughtsTokenCount").unwrap_or(0);
    let prompt = prompt
        .unwrap_or(0)
        .saturating_add(n("toolUsePromptTokenCount").unwrap_or(0));
    Some(Usage {
        prompt_tokens: prompt,
        cached_tokens: n("cachedContentTokenCount").unwrap_or(0).min(prompt),
        completion_tokens: candidates.unwrap_or(0).saturating_add(thoughts),
        reasoning_tokens: thoughts,
        cache_write_tokens: 0,
    })
}

/// The `usageMetadata` object for normalised usage.
pub fn usage_value(u: &Usage) -> Value {
    json!({
        "promptTokenCount": u.prompt_tokens,
        "candidatesTokenCount": u.completion_tokens.saturating_sub(u.reasoning_tokens),
        "thoughtsTokenCount": u.reasoning_tokens,
        "cachedContentTokenCount": u.cached_tokens,
        "totalTokenCount": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

/// Google's canonical status name for an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// `{"error":{"code","message","status"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"error": {"code": status, "message": message, "status": status_name(status)}}),
    )
    .unwrap_or_default()
}

const OPENAI_TOP_LEVEL: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "temperature",
    "top_p",
    "top_k",
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
    "seed",
    "presence_penalty",
    "frequency_penalty",
];

/// JSON-schema keywords Gemini's OpenAPI-subset `parameters` rejects.
const SCHEMA_DROP: &[&str] = &["$schema", "additionalProperties", "$id", "strict"];

fn clean_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !SCHEMA_DROP.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

fn image_part(url: &str, at: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (mt, data) = rest.split_once(";base64,").ok_or_else(|| {
            TranslateError::invalid(at, "must be a base64 data URL for a Gemini upstream")
        })?;
        return Ok(json!({"inlineData": {"mimeType": mt, "data": data}}));
    }
    Err(TranslateError::unsupported(
        format!("{at} (image by URL; send it as base64)"),
        Dialect::Gemini,
    ))
}

fn user_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let pat = format!("{at}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out
                        .push(json!({"text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                    Some("refusal") => out.push(
                        json!({"text": p.get("refusal").and_then(Value::as_str).unwrap_or("")}),
                    ),
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
                        out.push(image_part(url, &format!("{pat}.image_url.url"))?);
                    }
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{pat}.type={}", other.unwrap_or("?")),
                            Dialect::Gemini,
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(TranslateError::invalid(at, "must be a string or an array")),
    }
}

/// Thinking budget for an OpenAI `reasoning_effort`.
fn thinking_budget(effort: &str) -> Option<i64> {
    match effort {
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// Translates an OpenAI chat request to a Gemini `GenerateContentRequest` (no model, no
/// stream flag: both go in the URL).
pub fn from_openai(o: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let target = Dialect::Gemini;
    for (k, v) in o {
        if !v.is_null() && !OPENAI_TOP_LEVEL.contains(&k.as_str()) {
            return Err(TranslateError::unsupported(k.clone(), target));
        }
    }
    anthropic::check_openai_common(o, target)?;
    let mut g = Map::new();
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // tool_call_id -> function name: Gemini answers a call by name.
    let mut call_names: Vec<(String, String)> = Vec::new();
    let empty = Vec::new();
    let msgs = o
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut push =
        |role: &str, parts: Vec<Value>| anthropic::push_turn(&mut contents, "parts", role, parts);
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let at = format!("messages[{i}].content");
        anthropic::reject_message_fields(m, i, target)?;
        match role {
            "system" | "developer" => {
                let text = openai_content_text(m.get("content"), &at, target)?;
                system.push(json!({"text": text}));
            }
            "user" => push("user", user_parts(m.get("content"), &at)?),
            "assistant" => {
                let mut parts = user_parts(m.get("content"), &at)?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, c) in calls.iter().enumerate() {
                        let f = c.get("function").cloned().unwrap_or(Value::Null);
                        let name = f
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let args: Value = if args.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(args).map_err(|_| {
                                TranslateError::invalid(
                                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                    "must be a JSON object",
                                )
                            })?
                        };
                        let id = c.get("id").and_then(Value::as_str);
                        if let Some(id) = id {
                            call_names.push((id.to_string(), name.clone()));
                        }
                        let mut part = json!({"functionCall": {"name": name, "args": args}});
                        if let Some(sig) = id.and_then(signature_of) {
                            part["thoughtSignature"] = Value::String(sig);
                        }
                        parts.push(part);
                    }
                }
                push("model", parts);
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = call_names
                    .iter()
                    .rev()
                    .find(|(cid, _)| cid == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| {
                        TranslateError::invalid(
                            format!("messages[{i}].tool_call_id"),
                            "must name a tool call of an earlier assistant message (Gemini answers calls by function name)",
                        )
                    })?;
                let text = openai_content_text(m.get("content"), &at, target)?;
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                push(
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
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
        g.insert("systemInstruction".into(), json!({"parts": system}));
    }
    g.insert("contents".into(), Value::Array(contents));

    let mut gc = Map::new();
    if let Some(v) = o
        .get("max_completion_tokens")
        .or_else(|| o.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        gc.insert("maxOutputTokens".into(), v.clone());
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = o.get(from).filter(|v| !v.is_null()) {
            gc.insert(to.into(), v.clone());
        }
    }
    match o.get("stop") {
        Some(Value::String(s)) => {
            gc.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(v)) => {
            gc.insert("stopSequences".into(), Value::Array(v.clone()));
        }
        _ => {}
    }
    if let Some(rf) = o.get("response_format").filter(|v| !v.is_null()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                gc.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                gc.insert("responseMimeType".into(), "application/json".into());
                if let Some(s) = rf.get("json_schema").and_then(|j| j.get("schema")) {
                    // The long-established OpenAPI-subset field (keywords it rejects removed).
                    gc.insert("responseSchema".into(), clean_schema(s));
                }
            }
            _ => return Err(TranslateError::unsupported("response_format.type", target)),
        }
    }
    if let Some(effort) = o.get("reasoning_effort").and_then(Value::as_str) {
        let budget = thinking_budget(effort).ok_or_else(|| {
            TranslateError::invalid(
                "reasoning_effort",
                "must be none, minimal, low, medium or high",
            )
        })?;
        gc.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": budget > 0}),
        );
    }
    if !gc.is_empty() {
        g.insert("generationConfig".into(), Value::Object(gc));
    }

    if let Some(tools) = o.get("tools").and_then(Value::as_array) {
        let mut decls = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::unsupported(
                    format!("tools[{i}].type"),
                    target,
                ));
            }
            let f = t.get("function").cloned().unwrap_or(Value::Null);
            let mut d = Map::new();
            d.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
            if let Some(desc) = f.get("description") {
                d.insert("description".into(), desc.clone());
            }
            if let Some(p) = f.get("parameters").filter(|p| !p.is_null()) {
                d.insert("parameters".into(), clean_schema(p));
            }
            decls.push(Value::Object(d));
        }
        if !decls.is_empty() {
            g.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
    }
    let mode = match o.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"mode": "AUTO"})),
            "required" => Some(json!({"mode": "ANY"})),
            "none" => Some(json!({"mode": "NONE"})),
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
            Some(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
        }
    };
    if let Some(m) = mode {
        g.insert("toolConfig".into(), json!({"functionCallingConfig": m}));
    }
    Ok(g)
}

/// Translates a Messages request to Gemini: through the OpenAI shape, then the settings
/// the pivot cannot carry exactly (`top_k`, the exact thinking budget) are set directly.
pub fn from_anthropic(a: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let o = anthropic::to_openai(a, Dialect::Gemini)?;
    let mut g = from_openai(&o)?;
    if let Some(budget) = a
        .get("thinking")
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("enabled"))
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
    {
        if let Some(Value::Object(gc)) = g.get_mut("generationConfig") {
            gc.insert(
                "thinkingConfig".into(),
                json!({"thinkingBudget": budget, "includeThoughts": true}),
            );
        }
    }
    Ok(g)
}
