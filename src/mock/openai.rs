//! OpenAI wire format: routing, chat completions (JSON and SSE), embeddings, models, errors,
//! and the control plane.

use super::http::{self, Conn, Head, CHUNKED_END};
use super::{Behavior, MockState};
use crate::protocol::tokens::{o200k, split_tokens};
use bytes::Bytes;
use serde_json::Value;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Texts longer than this many bytes are not tokenised; they count as `ceil(bytes / 4)`.
pub const EXACT_COUNT_LIMIT: usize = 1024 * 1024;
/// Texts longer than this are counted on the blocking pool.
const BLOCKING_COUNT_THRESHOLD: usize = 64 * 1024;
pub(crate) const DEFAULT_COMPLETION_TOKENS: u64 = 24;
pub(crate) const MAX_COMPLETION_TOKENS: u64 = 4096;
const DEFAULT_EMBEDDING_DIMS: u64 = 8;
const MAX_EMBEDDING_DIMS: u64 = 4096;
/// Buffered stream bytes are flushed once they reach this size.
const STREAM_FLUSH_AT: usize = 16 * 1024;
pub(crate) const FRAGMENT_PAUSE: Duration = Duration::from_millis(1);
pub(crate) const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;
const BASE_MODELS: [&str; 2] = ["mock-small", "mock-large"];

/// Words that are each exactly one o200k token (with their leading space), and stay one
/// token each when concatenated (checked by a test).
pub(crate) const FILLER: [&str; 20] = [
    " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", " and", " then",
    " runs", " away", " from", " mock", " data", " token", " stream", " gateway", " reply",
    " test",
];

// ---------------------------------------------------------------------------------------------
// Token counting and reply text

/// o200k token count, with the documented 1 MiB escape hatch.
pub(crate) fn count_tokens(text: &str) -> u64 {
    if text.len() > EXACT_COUNT_LIMIT {
        (text.len() as u64).div_ceil(4)
    } else {
        o200k().count(text) as u64
    }
}

pub(crate) async fn count_tokens_async(text: String) -> u64 {
    if text.len() <= BLOCKING_COUNT_THRESHOLD {
        return count_tokens(&text);
    }
    tokio::task::spawn_blocking(move || count_tokens(&text))
        .await
        .unwrap_or(0)
}

/// Appends the countable text of one message (see the module docs for the rule).
fn push_message_text(msg: &Value, out: &mut String) {
    match msg.get("content") {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

/// The prompt text whose o200k count is `prompt_tokens`.
pub(crate) fn prompt_text(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        push_message_text(m, &mut out);
    }
    out
}

fn last_user_text(messages: &[Value]) -> String {
    let mut out = String::new();
    if let Some(m) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    {
        push_message_text(m, &mut out);
    }
    out
}

/// Printable-ASCII rendering of the user's text (whitespace and anything else collapsed to
/// single spaces), at most 40 characters.
pub(crate) fn echo_text(user: &str) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    for ch in user.chars() {
        if ch.is_ascii_graphic() {
            if pending_space && !out.is_empty() {
                if out.len() + 1 >= 40 {
                    break;
                }
                out.push(' ');
            }
            pending_space = false;
            out.push(ch);
            if out.len() >= 40 {
                break;
            }
        } else {
            pending_space = true;
        }
    }
    out
}

fn filler_pieces(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| FILLER[i % FILLER.len()].to_string())
        .collect()
}

/// The reply as o200k token strings: `"This is a mock reply to: <echo>"` then filler words,
/// exactly `n` tokens (the concatenation re-encodes to exactly `n` tokens).
pub(crate) fn reply_pieces(user: &str, n: usize) -> Vec<String> {
    let bpe = o200k();
    let echo = echo_text(user);
    let prefix = if echo.is_empty() {
        "This is a mock reply.".to_string()
    } else {
        format!("This is a mock reply to: {echo}")
    };
    let mut pieces = split_tokens(&prefix);
    pieces.truncate(n);
    let mut i = 0;
    while pieces.len() < n {
        pieces.push(FILLER[i % FILLER.len()].to_string());
        i += 1;
    }
    if bpe.count(&pieces.concat()) == n {
        pieces
    } else {
        filler_pieces(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

pub(crate) fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error_json(message: &str, etype: &str, code: Option<&str>) -> String {
    format!(
        r#"{{"error":{{"message":{},"type":{},"param":null,"code":{}}}}}"#,
        js(message),
        js(etype),
        code.map(js).unwrap_or_else(|| "null".to_string())
    )
}

fn usage_json(prompt: u64, completion: u64, cached: u64) -> String {
    format!(
        r#"{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{cached}}},"completion_tokens_details":{{"reasoning_tokens":0}}}}"#,
        prompt + completion
    )
}

/// Writes a complete response (head + body) in one write.
pub(crate) async fn write_response(
    conn: &mut Conn,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, String)],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = http::response_head(status, content_type, Some(body.len()), extra, keep_alive);
    out.extend_from_slice(body);
    conn.stream.write_all(&out).await
}

pub(crate) async fn write_json(
    conn: &mut Conn,
    status: u16,
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    write_response(
        conn,
        status,
        "application/json",
        body.as_bytes(),
        &[],
        keep_alive,
    )
    .await
}

/// OpenAI-style error for protocol-level failures (400 garbage, 404, 405, 413, 431).
pub(crate) async fn write_plain_error(
    conn: &mut Conn,
    status: u16,
    message: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let etype = match status {
        429 => "requests",
        500..=599 => "server_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    write_json(conn, status, &error_json(message, etype, None), keep_alive).await
}

pub(crate) async fn bad_request(
    conn: &mut Conn,
    message: &str,
    keep_alive: bool,
) -> io::Result<bool> {
    write_json(
        conn,
        400,
        &error_json(message, "invalid_request_error", None),
        keep_alive,
    )
    .await?;
    Ok(keep_alive)
}

/// Body of the error answered by `Behavior::Status`.
pub(crate) fn status_error_json(code: u16) -> String {
    match code {
        400 => error_json("Mock vendor: bad request.", "invalid_request_error", None),
        401 => error_json(
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        403 => error_json(
            "You are not allowed to access this resource.",
            "permission_error",
            None,
        ),
        404 => error_json(
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        429 => error_json(
            "Rate limit reached for requests (mock vendor). Please try again later.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500 => error_json(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        503 => error_json(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
        ),
        c if c >= 500 => error_json(&format!("Mock vendor error {c}."), "server_error", None),
        c => error_json(&format!("Mock vendor error {c}."), "api_error", None),
    }
}

/// Applies Delay / Status / CloseImmediately. `Some(keep)` means the request is answered.
pub(crate) async fn pre_behavior(
    conn: &mut Conn,
    behavior: &Behavior,
    keep_alive: bool,
    error_body: fn(u16) -> String,
) -> io::Result<Option<bool>> {
    match behavior {
        Behavior::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            Ok(None)
        }
        Behavior::Status { code, retry_after } => {
            let code = if (200..=999).contains(code) {
                *code
            } else {
                500
            };
            let extra: Vec<(&str, String)> = retry_after
                .iter()
                .map(|s| ("retry-after", s.to_string()))
                .collect();
            let body = error_body(code);
            write_response(
                conn,
                code,
                "application/json",
                body.as_bytes(),
                &extra,
                keep_alive,
            )
            .await?;
            Ok(Some(keep_alive))
        }
        Behavior::StatusBody { code, body } => {
            let code = if (200..=999).contains(code) {
                *code
            } else {
                500
            };
            write_response(
                conn,
                code,
                "application/json",
                body.as_bytes(),
                &[],
                keep_alive,
            )
            .await?;
            Ok(Some(keep_alive))
        }
        Behavior::CloseImmediately => Ok(Some(false)),
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

/// Handles one request; returns whether the connection stays open.
pub(crate) async fn route(
    conn: &mut Conn,
    state: &Arc<MockState>,
    head: &Head,
    body: Bytes,
    keep_alive: bool,
) -> io::Result<bool> {
    let path = head.path.as_str();
    let method = head.method.as_str();
    if let Some(cmd) = path.strip_prefix("/_mock/") {
        return control(conn, state, method, cmd, &body, keep_alive).await;
    }

    let json: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    drop(body);
    if let Some(v) = &json {
        state.lock().stats.last_request_body = Some(v.clone());
    }

    if path == "/v1/messages" || path == "/v1/messages/count_tokens" {
        return super::anthropic::route(conn, state, head, json, keep_alive).await;
    }
    if path.starts_with("/v1beta/") {
        return super::gemini::route(conn, state, head, json, keep_alive).await;
    }
    let allowed = match path {
        "/v1/chat/completions" | "/v1/embeddings" | "/v1/responses" => "POST",
        "/v1/models" => "GET",
        p if p.starts_with("/v1/models/") => "GET",
        _ => {
            let msg = format!("Invalid URL ({method} {path})");
            write_plain_error(conn, 404, &msg, keep_alive).await?;
            return Ok(keep_alive);
        }
    };
    if method != allowed {
        let msg = format!("Method {method} not allowed for {path}; use {allowed}.");
        let body = error_json(&msg, "invalid_request_error", None);
        write_response(
            conn,
            405,
            "application/json",
            body.as_bytes(),
            &[("allow", allowed.to_string())],
            keep_alive,
        )
        .await?;
        return Ok(keep_alive);
    }

    if let Some(err) = auth_error(state, head) {
        write_json(conn, 401, &err, keep_alive).await?;
        return Ok(keep_alive);
    }

    match path {
        "/v1/chat/completions" => chat(conn, state, json, keep_alive).await,
        "/v1/embeddings" => embeddings(conn, state, json, keep_alive).await,
        "/v1/responses" => super::responses::responses(conn, state, json, keep_alive).await,
        "/v1/models" => models(conn, state, None, keep_alive).await,
        p => {
            let id = p.strip_prefix("/v1/models/").unwrap_or("");
            models(conn, state, Some(id), keep_alive).await
        }
    }
}

/// `Some(error JSON)` when a key is required and the request lacks it.
fn auth_error(state: &MockState, head: &Head) -> Option<String> {
    let required = state.lock().required_key.clone()?;
    let presented = head.header("authorization").and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string())
    });
    match presented {
        Some(k) if k == required => None,
        Some(k) => {
            let masked = if k.len() > 8 && k.is_ascii() {
                format!("{}****{}", &k[..3], &k[k.len() - 4..])
            } else {
                "****".to_string()
            };
            Some(error_json(
                &format!(
                    "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
                ),
                "invalid_request_error",
                Some("invalid_api_key"),
            ))
        }
        None => Some(error_json(
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            Some("invalid_api_key"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Chat completions

enum Reply {
    Text(Vec<String>),
    Tool {
        call_id: String,
        name: String,
        arg_pieces: Vec<String>,
    },
}

struct ChatPlan {
    id: String,
    created: u64,
    model: String,
    reply: Reply,
    finish_reason: &'static str,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    include_usage: bool,
}

async fn chat(
    conn: &mut Conn,
    state: &Arc<MockState>,
    json: Option<Value>,
    keep_alive: bool,
) -> io::Result<bool> {
    let behavior = state.next_behavior();
    if let Some(keep) = pre_behavior(conn, &behavior, keep_alive, status_error_json).await? {
        return Ok(keep);
    }
    let req = match json {
        Some(Value::Object(m)) => m,
        _ => {
            return bad_request(
                conn,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                keep_alive,
            )
            .await
        }
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return bad_request(conn, "You must provide a model parameter.", keep_alive).await;
    };
    let messages = match req.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m,
        _ => return bad_request(conn, "Missing required parameter: 'messages'.", keep_alive).await,
    };

    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream
        && req
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let limit = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64));
    let n_tokens = limit
        .unwrap_or(DEFAULT_COMPLETION_TOKENS)
        .clamp(1, MAX_COMPLETION_TOKENS) as usize;

    let user = last_user_text(messages);
    let prompt_tokens = count_tokens_async(prompt_text(messages)).await;
    let cached_tokens = state
        .cached_tokens
        .load(Ordering::Relaxed)
        .min(prompt_tokens);
    let n = state.next_id();

    let ends_on_tool = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    let reply = match tool_to_call(&req, &user, ends_on_tool) {
        Some(name) => Reply::Tool {
            call_id: format!("call_mock_{n}"),
            name,
            arg_pieces: split_tokens(TOOL_ARGUMENTS),
        },
        None => Reply::Text(reply_pieces(&user, n_tokens)),
    };
    let (completion_tokens, finish_reason) = match &reply {
        Reply::Text(p) => (
            p.len() as u64,
            // The reply reached the caller's limit (not only the mock's own cap).
            if limit.is_some_and(|l| l <= MAX_COMPLETION_TOKENS) {
                "length"
            } else {
                "stop"
            },
        ),
        Reply::Tool { arg_pieces, .. } => (arg_pieces.len() as u64, "tool_calls"),
    };
    let plan = ChatPlan {
        id: format!("chatcmpl-mock-{n}"),
        created: unix_now(),
        model: model.to_string(),
        reply,
        finish_reason,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        include_usage,
    };
    drop(req);
    if stream {
        write_chat_stream(conn, state, &plan, &behavior, keep_alive).await
    } else {
        write_chat_json(conn, state, &plan, &behavior, keep_alive).await
    }
}

/// Name of the tool to call, if this request gets a tool call.
fn tool_to_call(
    req: &serde_json::Map<String, Value>,
    user: &str,
    ends_on_tool: bool,
) -> Option<String> {
    let tools = req
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())?;
    let choice = req.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let forced = choice
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    // A tool result ends the loop: the next answer is text unless a tool is forced by name.
    let wanted = forced.is_some()
        || (!ends_on_tool
            && (choice.and_then(Value::as_str) == Some("required")
                || user.to_lowercase().contains("weather")));
    if !wanted {
        return None;
    }
    let first = tools.first().and_then(|t| {
        t.get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| t.get("name"))
            .and_then(Value::as_str)
    });
    Some(forced.or(first).unwrap_or("tool").to_string())
}

async fn write_chat_json(
    conn: &mut Conn,
    state: &MockState,
    plan: &ChatPlan,
    behavior: &Behavior,
    keep_alive: bool,
) -> io::Result<bool> {
    let message = match &plan.reply {
        Reply::Text(pieces) => format!(
            r#"{{"role":"assistant","content":{}}}"#,
            js(&pieces.concat())
        ),
        Reply::Tool {
            call_id,
            name,
            arg_pieces,
        } => format!(
            r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":{},"type":"function","function":{{"name":{},"arguments":{}}}}}]}}"#,
            js(call_id),
            js(name),
            js(&arg_pieces.concat())
        ),
    };
    let usage = if *behavior == Behavior::NoUsage {
        String::new()
    } else {
        format!(
            r#","usage":{}"#,
            usage_json(
                plan.prompt_tokens,
                plan.completion_tokens,
                plan.cached_tokens
            )
        )
    };
    let body = format!(
        r#"{{"id":{},"object":"chat.completion","created":{},"model":{},"choices":[{{"index":0,"message":{message},"logprobs":null,"finish_reason":"{}"}}]{usage}}}"#,
        js(&plan.id),
        plan.created,
        js(&plan.model),
        plan.finish_reason
    );
    let (prompt, completion, cached) = (
        plan.prompt_tokens,
        plan.completion_tokens,
        plan.cached_tokens,
    );
    write_body_with_behavior(
        conn,
        state,
        body.as_bytes(),
        &request_id_header(&plan.id),
        behavior,
        keep_alive,
        super::Reported {
            prompt,
            completion,
            cached,
            ..Default::default()
        },
    )
    .await
}

pub(crate) fn request_id_header(id: &str) -> Vec<(&'static str, String)> {
    vec![("x-request-id", format!("req_{id}"))]
}

/// Writes a successful JSON body honouring CutStreamAfter and fragmented writes, recording
/// `usage` (prompt, completion, cached) in the stats just before the final write.
pub(crate) async fn write_body_with_behavior(
    conn: &mut Conn,
    state: &MockState,
    body: &[u8],
    extra: &[(&'static str, String)],
    behavior: &Behavior,
    keep_alive: bool,
    usage: super::Reported,
) -> io::Result<bool> {
    let mut out = http::response_head(200, "application/json", Some(body.len()), extra, keep_alive);
    let half = body.len() / 2;
    if let Behavior::CutStreamAfter { .. } = behavior {
        out.extend_from_slice(&body[..half]);
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
        state.record(
            super::Reported {
                completion: 0,
                reasoning: 0,
                ..usage
            },
            false,
        );
        return Ok(false);
    }
    if state.fragmented.load(Ordering::Relaxed) {
        out.extend_from_slice(&body[..half]);
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
        tokio::time::sleep(FRAGMENT_PAUSE).await;
        state.record(usage, true);
        conn.stream.write_all(&body[half..]).await?;
    } else {
        out.extend_from_slice(body);
        state.record(usage, true);
        conn.stream.write_all(&out).await?;
    }
    Ok(keep_alive)
}

/// Buffers SSE events as HTTP chunks and writes them according to the mode.
pub(crate) struct SseOut<'a> {
    pub conn: &'a mut Conn,
    pub buf: Vec<u8>,
    pub fragmented: bool,
    pub slow: Option<Duration>,
    pub events: usize,
}

impl<'a> SseOut<'a> {
    /// Starts an SSE answer (status 200, `content_type`, `no-cache` and `extra` headers) shaped
    /// by `behavior`: `SlowChunks` paces the events, fragmented mode writes the head alone.
    /// Also returns after how many content events a `CutStreamAfter` cuts the stream.
    pub async fn start(
        conn: &'a mut Conn,
        state: &MockState,
        behavior: &Behavior,
        content_type: &str,
        extra: Vec<(&'static str, String)>,
        keep_alive: bool,
    ) -> io::Result<(SseOut<'a>, Option<u64>)> {
        let cut = match behavior {
            Behavior::CutStreamAfter { chunks } => Some(u64::from(*chunks)),
            _ => None,
        };
        let slow = match behavior {
            Behavior::SlowChunks { ms } => Some(Duration::from_millis(*ms)),
            _ => None,
        };
        let mut headers = vec![("cache-control", "no-cache".to_string())];
        headers.extend(extra);
        let head = http::response_head(200, content_type, None, &headers, keep_alive);
        let fragmented = state.fragmented.load(Ordering::Relaxed);
        let mut out = SseOut {
            conn,
            buf: head,
            fragmented,
            slow,
            events: 0,
        };
        if fragmented {
            out.flush().await?;
        }
        Ok((out, cut))
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.conn.stream.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    pub async fn event(&mut self, json: &str) -> io::Result<()> {
        let mut ev = String::with_capacity(json.len() + 8);
        ev.push_str("data: ");
        ev.push_str(json);
        ev.push_str("\n\n");
        self.raw_event(ev.as_bytes(), 6 + json.len() / 2).await
    }

    /// Writes one complete, formatted event; `mid` is an offset inside its JSON, used as
    /// an awkward cut point in fragmented mode.
    pub async fn raw_event(&mut self, ev: &[u8], mid: usize) -> io::Result<()> {
        if let Some(pause) = self.slow {
            if self.events > 0 {
                self.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }

        if self.fragmented {
            self.flush().await?;
            // Awkward offsets: inside "data:", inside the JSON, between the two newlines.
            let (a, b, c) = (
                2,
                mid.clamp(3, ev.len().saturating_sub(2).max(3)),
                ev.len() - 1,
            );
            let cuts = match self.events % 3 {
                0 => [a, b],
                1 => [b, c],
                _ => [a, c],
            };
            let mut start = 0;
            for (i, end) in cuts.into_iter().chain([ev.len()]).enumerate() {
                if i > 0 {
                    tokio::time::sleep(FRAGMENT_PAUSE).await;
                }
                let mut frame = Vec::with_capacity(end - start + 16);
                http::push_chunk(&mut frame, &ev[start..end]);
                self.conn.stream.write_all(&frame).await?;
                self.conn.stream.flush().await?;
                start = end;
            }
        } else {
            http::push_chunk(&mut self.buf, ev);
            if self.slow.is_some() || self.buf.len() >= STREAM_FLUSH_AT {
                self.flush().await?;
            }
        }
        self.events += 1;
        Ok(())
    }
}

async fn write_chat_stream(
    conn: &mut Conn,
    state: &MockState,
    plan: &ChatPlan,
    behavior: &Behavior,
    keep_alive: bool,
) -> io::Result<bool> {
    let mut sent = 0u64;
    let mut recorded = false;
    let res = chat_stream_inner(
        conn,
        state,
        plan,
        behavior,
        keep_alive,
        &mut sent,
        &mut recorded,
    )
    .await;
    if !recorded {
        state.record_usage(plan.prompt_tokens, sent, plan.cached_tokens, false);
    }
    res
}

async fn chat_stream_inner(
    conn: &mut Conn,
    state: &MockState,
    plan: &ChatPlan,
    behavior: &Behavior,
    keep_alive: bool,
    sent: &mut u64,
    recorded: &mut bool,
) -> io::Result<bool> {
    let send_usage = plan.include_usage && *behavior != Behavior::NoUsage;

    let prefix = format!(
        r#"{{"id":{},"object":"chat.completion.chunk","created":{},"model":{},"choices":["#,
        js(&plan.id),
        plan.created,
        js(&plan.model)
    );
    let suffix = if plan.include_usage {
        r#"],"usage":null}"#
    } else {
        "]}"
    };
    let chunk = |choice: &str| {
        let mut s = String::with_capacity(prefix.len() + choice.len() + suffix.len());
        s.push_str(&prefix);
        s.push_str(choice);
        s.push_str(suffix);
        s
    };

    let (mut out, cut) = SseOut::start(
        conn,
        state,
        behavior,
        "text/event-stream; charset=utf-8",
        vec![("x-request-id", format!("req_{}", plan.id))],
        keep_alive,
    )
    .await?;

    let (first, pieces, piece_choice): (String, &[String], fn(&str) -> String) = match &plan.reply
    {
        Reply::Text(pieces) => (
            r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#
                .to_string(),
            pieces,
            |p| {
                format!(
                    r#"{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}"#,
                    js(p)
                )
            },
        ),
        Reply::Tool {
            call_id,
            name,
            arg_pieces,
        } => (
            format!(
                r#"{{"index":0,"delta":{{"role":"assistant","content":null,"tool_calls":[{{"index":0,"id":{},"type":"function","function":{{"name":{},"arguments":""}}}}]}},"logprobs":null,"finish_reason":null}}"#,
                js(call_id),
                js(name)
            ),
            arg_pieces,
            |p| {
                format!(
                    r#"{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}},"logprobs":null,"finish_reason":null}}"#,
                    js(p)
                )
            },
        ),
    };

    out.event(&chunk(&first)).await?;
    for piece in pieces {
        if cut.is_some_and(|n| *sent >= n) {
            break;
        }
        out.event(&chunk(&piece_choice(piece))).await?;
        *sent += 1;
    }
    if cut.is_some() {
        out.flush().await?;
        out.conn.stream.flush().await?;
        state.record_usage(plan.prompt_tokens, *sent, plan.cached_tokens, false);
        *recorded = true;
        return Ok(false);
    }
    out.event(&chunk(&format!(
        r#"{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{}"}}"#,
        plan.finish_reason
    )))
    .await?;
    if send_usage {
        let usage = usage_json(plan.prompt_tokens, *sent, plan.cached_tokens);
        out.event(&format!(r#"{prefix}],"usage":{usage}}}"#))
            .await?;
    }
    state.record_usage(plan.prompt_tokens, *sent, plan.cached_tokens, true);
    *recorded = true;
    out.event("[DONE]").await?;
    out.buf.extend_from_slice(CHUNKED_END);
    out.flush().await?;
    Ok(keep_alive)
}

// ---------------------------------------------------------------------------------------------
// Embeddings

enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u64>),
}

fn parse_embedding_input(v: Option<&Value>) -> Option<Vec<EmbeddingInput>> {
    fn tokens(v: &[Value]) -> Option<Vec<u64>> {
        v.iter().map(Value::as_u64).collect()
    }
    match v? {
        Value::String(s) => Some(vec![EmbeddingInput::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) => {
            if items.iter().all(Value::is_number) {
                return Some(vec![EmbeddingInput::Tokens(tokens(items)?)]);
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Some(EmbeddingInput::Text(s.clone())),
                    Value::Array(t) if !t.is_empty() => tokens(t).map(EmbeddingInput::Tokens),
                    _ => None,
                })
                .collect()
        }
        _ => None,
    }
}

/// Deterministic unit vector derived from the input (FNV-1a seed, splitmix64 stream).
fn embedding_vector(input: &EmbeddingInput, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match input {
        EmbeddingInput::Text(s) => s.bytes().for_each(&mut eat),
        EmbeddingInput::Tokens(t) => t
            .iter()
            .for_each(|x| x.to_le_bytes().into_iter().for_each(&mut eat)),
    }
    let mut state = h;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

async fn embeddings(
    conn: &mut Conn,
    state: &Arc<MockState>,
    json: Option<Value>,
    keep_alive: bool,
) -> io::Result<bool> {
    let behavior = state.next_behavior();
    if let Some(keep) = pre_behavior(conn, &behavior, keep_alive, status_error_json).await? {
        return Ok(keep);
    }
    let Some(Value::Object(req)) = json else {
        return bad_request(
            conn,
            "We could not parse the JSON body of your request.",
            keep_alive,
        )
        .await;
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return bad_request(conn, "You must provide a model parameter.", keep_alive).await;
    };
    let Some(inputs) = parse_embedding_input(req.get("input")) else {
        return bad_request(
            conn,
            "'input' must be a non-empty string, array of strings, or array of token arrays.",
            keep_alive,
        )
        .await;
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_EMBEDDING_DIMS)
        .clamp(1, MAX_EMBEDDING_DIMS) as usize;
    let base64_format = req.get("encoding_format").and_then(Value::as_str) == Some("base64");

    let mut prompt_tokens = 0u64;
    for input in &inputs {
        prompt_tokens += match input {
            EmbeddingInput::Text(s) => count_tokens_async(s.clone()).await,
            EmbeddingInput::Tokens(t) => t.len() as u64,
        };
    }

    let mut data = String::new();
    for (i, input) in inputs.iter().enumerate() {
        let v = embedding_vector(input, dims);
        let embedding = if base64_format {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            js(&base64(&bytes))
        } else {
            serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_string())
        };
        if i > 0 {
            data.push(',');
        }
        data.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":{embedding}}}"#
        ));
    }
    let usage = if behavior == Behavior::NoUsage {
        String::new()
    } else {
        format!(r#","usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}"#)
    };
    let body = format!(
        r#"{{"object":"list","data":[{data}],"model":{}{usage}}}"#,
        js(model)
    );
    write_body_with_behavior(
        conn,
        state,
        body.as_bytes(),
        &[],
        &behavior,
        keep_alive,
        super::Reported {
            prompt: prompt_tokens,
            ..Default::default()
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Models and control plane

fn model_list(state: &MockState) -> Vec<String> {
    let extra = state.lock().models.clone();
    let mut all: Vec<String> = BASE_MODELS.iter().map(|s| s.to_string()).collect();
    for m in extra {
        if !all.contains(&m) {
            all.push(m);
        }
    }
    all
}

fn model_json(id: &str) -> String {
    format!(
        r#"{{"id":{},"object":"model","created":1700000000,"owned_by":"tollgate-mock"}}"#,
        js(id)
    )
}

async fn models(
    conn: &mut Conn,
    state: &MockState,
    one: Option<&str>,
    keep_alive: bool,
) -> io::Result<bool> {
    let all = model_list(state);
    match one {
        None => {
            let data: Vec<String> = all.iter().map(|m| model_json(m)).collect();
            let body = format!(r#"{{"object":"list","data":[{}]}}"#, data.join(","));
            write_json(conn, 200, &body, keep_alive).await?;
        }
        Some(id) if all.iter().any(|m| m == id) => {
            write_json(conn, 200, &model_json(id), keep_alive).await?;
        }
        Some(id) => {
            let body = error_json(
                &format!("The model '{id}' does not exist"),
                "invalid_request_error",
                Some("model_not_found"),
            );
            write_json(conn, 404, &body, keep_alive).await?;
        }
    }
    Ok(keep_alive)
}

async fn control(
    conn: &mut Conn,
    state: &MockState,
    method: &str,
    cmd: &str,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<bool> {
    let allowed = match cmd {
        "stats" => "GET",
        "behavior" | "push" | "reset" | "config" => "POST",
        _ => {
            write_plain_error(conn, 404, "Unknown mock control endpoint", keep_alive).await?;
            return Ok(keep_alive);
        }
    };
    if method != allowed {
        write_plain_error(conn, 405, "Method not allowed", keep_alive).await?;
        return Ok(keep_alive);
    }
    const OK: &str = r#"{"ok":true}"#;
    match cmd {
        "stats" => {
            let stats = state.lock().stats.clone();
            let body = serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_string());
            write_json(conn, 200, &body, keep_alive).await?;
        }
        "behavior" | "push" => match serde_json::from_slice::<Behavior>(body) {
            Ok(b) => {
                {
                    let mut inner = state.lock();
                    if cmd == "push" {
                        inner.queue.push_back(b);
                    } else {
                        inner.default_behavior = b;
                    }
                }
                write_json(conn, 200, OK, keep_alive).await?;
            }
            Err(e) => {
                bad_request(conn, &format!("Invalid behavior: {e}"), keep_alive).await?;
            }
        },
        "reset" => {
            {
                let mut inner = state.lock();
                inner.stats = super::MockStats::default();
                inner.default_behavior = Behavior::Normal;
                inner.queue.clear();
            }
            write_json(conn, 200, OK, keep_alive).await?;
        }
        _ => {
            let cfg: Value = match serde_json::from_slice(body) {
                Ok(Value::Object(m)) => Value::Object(m),
                _ => return bad_request(conn, "Config must be a JSON object.", keep_alive).await,
            };
            if let Some(on) = cfg.get("fragmented_writes").and_then(Value::as_bool) {
                state.fragmented.store(on, Ordering::Relaxed);
            }
            if let Some(n) = cfg.get("cached_tokens").and_then(Value::as_u64) {
                state.cached_tokens.store(n, Ordering::Relaxed);
            }
            if let Some(n) = cfg.get("cache_write_tokens").and_then(Value::as_u64) {
                state.cache_write_tokens.store(n, Ordering::Relaxed);
            }
            {
                let mut inner = state.lock();
                match cfg.get("required_key") {
                    Some(Value::String(k)) => inner.required_key = Some(k.clone()),
                    Some(Value::Null) => inner.required_key = None,
                    _ => {}
                }
                if let Some(models) = cfg.get("models").and_then(Value::as_array) {
                    inner.models = models
                        .iter()
                        .filter_map(|m| m.as_str().map(str::to_string))
                        .collect();
                }
            }
            write_json(conn, 200, OK, keep_alive).await?;
        }
    }
    Ok(keep_alive)
}
