//! Gemini wire format: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` (each SSE event a whole `GenerateContentResponse`, events
//! separated by `\r\n\r\n`, no end marker: the last chunk carries `finishReason`), function
//! calls, thoughts, `usageMetadata`, Google error bodies.
//!
//! # Token accounting (reproducible by tests)
//! * prompt (`promptTokenCount`): the `systemInstruction` parts' `text`, then every content's
//!   parts' `text`, concatenated without separator, o200k; `cachedContentTokenCount` =
//!   `min(cached setting, prompt)`.
//! * output (`candidatesTokenCount`): `generationConfig.maxOutputTokens` reply tokens, else 24
//!   (`finishReason` `MAX_TOKENS` when a limit of at most the cap was given, else `STOP`), one token per stream
//!   chunk; a function call (declarations given and mode `ANY`, or the user mentions
//!   "weather", mode not `NONE`) is `get_weather({"location":"Paris"})` counted as the 5 o200k
//!   tokens of its arguments, sent whole in one chunk.
//! * thoughts (`thoughtsTokenCount`): with `thinkingConfig.thinkingBudget` > 0, the thought
//!   "Thinking about it." (4 tokens), sent as a `thought: true` part when `includeThoughts`.
//! * Stats record prompt, completion = candidates + thoughts, reasoning = thoughts, cached.
//!
//! Thought signatures: with `thinkingBudget` > 0 a function call part carries
//! `thoughtSignature` [`THOUGHT_SIGNATURE`], and (as Gemini 3 does) a thinking request whose
//! history has a model `functionCall` part without that signature is refused with 400
//! `INVALID_ARGUMENT`.
//!
//! Auth: when a key is required, `x-goog-api-key` or `?key=` must carry it (400
//! `INVALID_ARGUMENT` "API key not valid", 403 `PERMISSION_DENIED` when absent).

use super::http::{Conn, Head, CHUNKED_END};
use super::openai::{
    count_tokens_async, js, pre_behavior, reply_pieces, write_body_with_behavior, SseOut,
    TOOL_ARGUMENTS,
};
use super::{Behavior, MockState, Reported};
use crate::protocol::tokens::o200k;
use serde_json::Value;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

const DEFAULT_REPLY_TOKENS: u64 = 24;
const MAX_REPLY_TOKENS: u64 = 4096;
const THINKING_TEXT: &str = "Thinking about it.";

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn error_json(code: u16, message: &str) -> String {
    format!(
        r#"{{"error":{{"code":{code},"message":{},"status":"{}"}}}}"#,
        js(message),
        status_name(code)
    )
}

/// Body of the error answered by `Behavior::Status`, as Google words them.
pub(crate) fn status_error_json(code: u16) -> String {
    let msg = match code {
        429 => "Resource has been exhausted (e.g. check quota).",
        503 => "The model is overloaded. Please try again later.",
        500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        400 => "Mock vendor: invalid argument.",
        _ => "Mock vendor error.",
    };
    error_json(code, msg)
}

async fn reply_error(
    conn: &mut Conn,
    code: u16,
    message: &str,
    keep_alive: bool,
) -> io::Result<bool> {
    super::openai::write_json(conn, code, &error_json(code, message), keep_alive).await?;
    Ok(keep_alive)
}

fn parts_text(content: &Value, out: &mut String) {
    for p in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            out.push_str(t);
        }
    }
}

struct Plan {
    id: String,
    model: String,
    thought: Option<String>,
    thoughts: u64,
    reply: Option<Vec<String>>,
    call: Option<String>,
    finish: &'static str,
    prompt: u64,
    cached: u64,
    output: u64,
}

impl Plan {
    fn usage_json(&self, output: u64, done: bool) -> String {
        if done {
            format!(
                r#"{{"promptTokenCount":{},"candidatesTokenCount":{output},"totalTokenCount":{},"cachedContentTokenCount":{},"thoughtsTokenCount":{}}}"#,
                self.prompt,
                self.prompt + output + self.thoughts,
                self.cached,
                self.thoughts
            )
        } else {
            format!(
                r#"{{"promptTokenCount":{},"totalTokenCount":{},"cachedContentTokenCount":{}}}"#,
                self.prompt, self.prompt, self.cached
            )
        }
    }

    fn reported(&self, output: u64) -> Reported {
        Reported {
            prompt: self.prompt,
            completion: output + self.thoughts,
            cached: self.cached,
            cache_write: 0,
            reasoning: self.thoughts,
        }
    }

    fn chunk(&self, parts: &str, finish: Option<&str>, usage: Option<String>) -> String {
        let finish = finish
            .map(|f| format!(r#","finishReason":"{f}""#))
            .unwrap_or_default();
        let usage = usage
            .map(|u| format!(r#","usageMetadata":{u}"#))
            .unwrap_or_default();
        format!(
            r#"{{"candidates":[{{"content":{{"parts":[{parts}],"role":"model"}}{finish},"index":0}}]{usage},"modelVersion":{},"responseId":{}}}"#,
            js(&self.model),
            js(&self.id)
        )
    }
}

/// The signature the mock puts on function calls of thinking requests (standard base64).
pub const THOUGHT_SIGNATURE: &str = "bW9jayB0aG91Z2h0IHNpZ25hdHVyZSD7/w==";

fn call_part(name: &str, signed: bool) -> String {
    let sig = if signed {
        format!(r#","thoughtSignature":{}"#, js(THOUGHT_SIGNATURE))
    } else {
        String::new()
    };
    format!(
        r#"{{"functionCall":{{"name":{},"args":{TOOL_ARGUMENTS}}}{sig}}}"#,
        js(name)
    )
}

/// Whether some model `functionCall` part in the history lacks the mock's signature.
fn unsigned_call_in_history(contents: &[Value]) -> bool {
    contents
        .iter()
        .filter(|c| c.get("role").and_then(Value::as_str) == Some("model"))
        .filter_map(|c| c.get("parts").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("functionCall").is_some())
        .any(|p| p.get("thoughtSignature").and_then(Value::as_str) != Some(THOUGHT_SIGNATURE))
}

pub(crate) async fn route(
    conn: &mut Conn,
    state: &Arc<MockState>,
    head: &Head,
    json: Option<Value>,
    keep_alive: bool,
) -> io::Result<bool> {
    let Some(rest) = head.path.strip_prefix("/v1beta/models/") else {
        return reply_error(conn, 404, "Not found.", keep_alive).await;
    };
    let (model, stream) = match rest.rsplit_once(':') {
        Some((m, "generateContent")) => (m.to_string(), false),
        Some((m, "streamGenerateContent")) => (m.to_string(), true),
        _ => return reply_error(conn, 404, "Method not found.", keep_alive).await,
    };
    if head.method != "POST" {
        return reply_error(conn, 405, "Method not allowed.", keep_alive).await;
    }
    let query_key = head
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .map(str::to_string);
    let required = state.lock().required_key.clone();
    if let Some(k) = required {
        match head.header("x-goog-api-key").map(str::to_string).or(query_key) {
            Some(v) if v.trim() == k => {}
            Some(_) => {
                return reply_error(conn, 400, "API key not valid. Please pass a valid API key.", keep_alive).await
            }
            None => {
                return reply_error(conn, 403, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.", keep_alive).await
            }
        }
    }
    if stream && !head.query.split('&').any(|kv| kv == "alt=sse") {
        return reply_error(
            conn,
            400,
            "The mock vendor streams only with alt=sse.",
            keep_alive,
        )
        .await;
    }
    let behavior = state.next_behavior();
    if let Some(keep) = pre_behavior(conn, &behavior, keep_alive, status_error_json).await? {
        return Ok(keep);
    }
    let Some(Value::Object(req)) = json else {
        return reply_error(conn, 400, "Invalid JSON payload received.", keep_alive).await;
    };
    let Some(contents) = req
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    else {
        return reply_error(
            conn,
            400,
            "* GenerateContentRequest.contents: contents is not specified",
            keep_alive,
        )
        .await;
    };
    let mut prompt = String::new();
    if let Some(si) = req.get("systemInstruction") {
        parts_text(si, &mut prompt);
    }
    let mut user = String::new();
    for c in contents {
        parts_text(c, &mut prompt);
        if c.get("role").and_then(Value::as_str) != Some("model") {
            let mut t = String::new();
            parts_text(c, &mut t);
            if !t.is_empty() {
                user = t;
            }
        }
    }
    let prompt_tokens = count_tokens_async(prompt).await;
    let cached = state
        .cached_tokens
        .load(Ordering::Relaxed)
        .min(prompt_tokens);
    let gc = req.get("generationConfig");
    let limit = gc
        .and_then(|g| g.get("maxOutputTokens"))
        .and_then(Value::as_u64);
    let thinking = gc.and_then(|g| g.get("thinkingConfig"));
    let budget = thinking
        .and_then(|t| t.get("thinkingBudget"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let include = thinking
        .and_then(|t| t.get("includeThoughts"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if budget > 0 && unsigned_call_in_history(contents) {
        return reply_error(
            conn,
            400,
            "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance.",
            keep_alive,
        )
        .await;
    }
    let bpe = o200k();
    let thoughts = if budget > 0 {
        bpe.count(THINKING_TEXT) as u64
    } else {
        0
    };
    let decl = req
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(|t| t.get("functionDeclarations"))
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|d| d.get("name"))
        .and_then(Value::as_str);
    let mode = req
        .get("toolConfig")
        .and_then(|t| t.get("functionCallingConfig"))
        .and_then(|f| f.get("mode"))
        .and_then(Value::as_str);
    let allowed = req
        .get("toolConfig")
        .and_then(|t| t.get("functionCallingConfig"))
        .and_then(|f| f.get("allowedFunctionNames"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let call = decl.and_then(|first| {
        let ends_on_tool = req
            .get("contents")
            .and_then(Value::as_array)
            .and_then(|c| c.last())
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()));
        let wanted = mode == Some("ANY")
            || (mode != Some("NONE") && !ends_on_tool && user.to_lowercase().contains("weather"));
        wanted.then(|| allowed.unwrap_or(first).to_string())
    });
    let n = state.next_id();
    let (reply, output, finish) = match &call {
        Some(_) => (None, bpe.count(TOOL_ARGUMENTS) as u64, "STOP"),
        None => {
            let k = limit
                .unwrap_or(DEFAULT_REPLY_TOKENS)
                .clamp(1, MAX_REPLY_TOKENS);
            (
                Some(reply_pieces(&user, k as usize)),
                k,
                // The reply reached the caller's limit (not only the mock's own cap).
                if limit.is_some_and(|l| l <= MAX_REPLY_TOKENS) {
                    "MAX_TOKENS"
                } else {
                    "STOP"
                },
            )
        }
    };
    let plan = Plan {
        id: format!("mock-{n}"),
        model,
        thought: (budget > 0 && include).then(|| THINKING_TEXT.to_string()),
        thoughts,
        reply,
        call,
        finish,
        prompt: prompt_tokens,
        cached,
        output,
    };
    drop(req);
    if stream {
        write_stream(conn, state, &plan, &behavior, keep_alive).await
    } else {
        let mut parts = Vec::new();
        if let Some(t) = &plan.thought {
            parts.push(format!(r#"{{"text":{},"thought":true}}"#, js(t)));
        }
        if let Some(r) = &plan.reply {
            parts.push(format!(r#"{{"text":{}}}"#, js(&r.concat())));
        }
        if let Some(c) = &plan.call {
            parts.push(call_part(c, plan.thoughts > 0));
        }
        let usage = (behavior != Behavior::NoUsage).then(|| plan.usage_json(plan.output, true));
        let body = plan.chunk(&parts.join(","), Some(plan.finish), usage);
        write_body_with_behavior(
            conn,
            state,
            body.as_bytes(),
            &[],
            &behavior,
            keep_alive,
            plan.reported(plan.output),
        )
        .await
    }
}

async fn write_stream(
    conn: &mut Conn,
    state: &MockState,
    plan: &Plan,
    behavior: &Behavior,
    keep_alive: bool,
) -> io::Result<bool> {
    let no_usage = *behavior == Behavior::NoUsage;
    let (mut out, cut) = SseOut::start(
        conn,
        state,
        behavior,
        "text/event-stream",
        Vec::new(),
        keep_alive,
    )
    .await?;
    let mut sent = 0u64;
    let partial_usage = || (!no_usage).then(|| plan.usage_json(0, false));
    let mut chunks: Vec<(String, u64)> = Vec::new();
    if let Some(t) = &plan.thought {
        chunks.push((format!(r#"{{"text":{},"thought":true}}"#, js(t)), 0));
    }
    if let Some(r) = &plan.reply {
        for p in r {
            chunks.push((format!(r#"{{"text":{}}}"#, js(p)), 1));
        }
    }
    if let Some(c) = &plan.call {
        chunks.push((call_part(c, plan.thoughts > 0), plan.output));
    }
    let last = chunks.len().saturating_sub(1);
    for (i, (part, tokens)) in chunks.iter().enumerate() {
        if cut.is_some_and(|n| sent >= n) {
            break;
        }
        let json = if i == last && cut.is_none() {
            let usage = (!no_usage).then(|| plan.usage_json(sent + tokens, true));
            plan.chunk(part, Some(plan.finish), usage)
        } else {
            plan.chunk(part, None, partial_usage())
        };
        let ev = format!("data: {json}\r\n\r\n");
        if i == last && cut.is_none() {
            state.record(plan.reported(sent + tokens), true);
        }
        out.raw_event(ev.as_bytes(), 6 + json.len() / 2).await?;
        sent += tokens;
    }
    if cut.is_some() {
        out.flush().await?;
        out.conn.stream.flush().await?;
        let mut r = plan.reported(sent);
        r.completion = sent;
        r.reasoning = 0;
        state.record(r, false);
        return Ok(false);
    }
    out.buf.extend_from_slice(CHUNKED_END);
    out.flush().await?;
    Ok(keep_alive)
}
