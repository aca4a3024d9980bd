//! Anthropic Messages wire format: `POST /v1/messages`, JSON and SSE (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`), tool use, thinking, Anthropic error bodies.
//!
//! # Token accounting (reproducible by tests)
//! * prompt: the `system` text (string or the `text` of its blocks), then every message's
//!   content string or the `text` of its top-level `text` blocks, concatenated without
//!   separator and counted with o200k (as the OpenAI side). Of that total,
//!   `cache_read_input_tokens = min(cached setting, total)`,
//!   `cache_creation_input_tokens = min(cache-write setting, total - read)` and
//!   `input_tokens` is the rest (Anthropic reports the three apart).
//! * output: `min(max_tokens, 24)` reply tokens (`stop_reason` `max_tokens` when that hit
//!   the limit, else `end_turn`); a tool call (tools given and `tool_choice` `any`/`tool`, or
//!   the user mentions "weather") is `{"location":"Paris"}`, streamed one o200k token per
//!   `input_json_delta` (5 tokens); with `thinking` enabled a thinking block
//!   "Thinking about it." (4 tokens) with a signature comes first and is counted in
//!   `output_tokens`.
//! * Stats record prompt = input + read + write (OpenAI terms) and completion = output.
//!
//! Auth: when a key is required, `x-api-key` must carry it (401 `authentication_error`).
//! `anthropic-version` is required (400 without it), as on the real API.

use super::http::{Conn, Head, CHUNKED_END};
use super::openai::{
    count_tokens_async, js, pre_behavior, reply_pieces, request_id_header,
    write_body_with_behavior, write_response, SseOut, TOOL_ARGUMENTS,
};
use super::{Behavior, MockState, Reported};
use crate::protocol::tokens::split_tokens;
use serde_json::Value;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

const DEFAULT_REPLY_TOKENS: u64 = 24;
const MAX_REPLY_TOKENS: u64 = 4096;
const THINKING_TEXT: &str = "Thinking about it.";
const SIGNATURE: &str = "EqQBCgIYAhIMmockSignature";

fn error_json(kind: &str, message: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":{},"message":{}}}}}"#,
        js(kind),
        js(message)
    )
}

/// Body of the error answered by `Behavior::Status`, as Anthropic words them.
pub(crate) fn status_error_json(code: u16) -> String {
    match code {
        400 => error_json("invalid_request_error", "Mock vendor: bad request."),
        401 => error_json("authentication_error", "invalid x-api-key"),
        403 => error_json(
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => error_json(
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => error_json(
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => error_json(
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit (mock vendor).",
        ),
        529 => error_json("overloaded_error", "Overloaded"),
        c if c >= 500 => error_json("api_error", "Internal server error"),
        _ => error_json("invalid_request_error", "Mock vendor error."),
    }
}

async fn reply_error(
    conn: &mut Conn,
    status: u16,
    kind: &str,
    message: &str,
    keep_alive: bool,
) -> io::Result<bool> {
    super::openai::write_json(conn, status, &error_json(kind, message), keep_alive).await?;
    Ok(keep_alive)
}

fn blocks_text(v: Option<&Value>, out: &mut String) {
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if b.get("type").and_then(Value::as_str) == Some("text") {
                    out.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
                }
            }
        }
        _ => {}
    }
}

enum Reply {
    Text(Vec<String>),
    Tool {
        id: String,
        name: String,
        pieces: Vec<String>,
    },
}

struct Plan {
    id: String,
    model: String,
    thinking: Option<Vec<String>>,
    reply: Reply,
    stop_reason: &'static str,
    input: u64,
    read: u64,
    write: u64,
    output: u64,
}

impl Plan {
    fn usage_json(&self, output: u64) -> String {
        format!(
            r#"{{"input_tokens":{},"cache_creation_input_tokens":{},"cache_read_input_tokens":{},"output_tokens":{output}}}"#,
            self.input, self.write, self.read
        )
    }

    fn reported(&self, output: u64) -> Reported {
        Reported {
            prompt: self.input + self.read + self.write,
            completion: output,
            cached: self.read,
            cache_write: self.write,
            reasoning: 0,
        }
    }
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": n}`, the prompt counted as a Messages
/// call's (system + message text, o200k), so a test can tell it from the gateway's estimate.
async fn count_tokens(
    conn: &mut Conn,
    state: &Arc<MockState>,
    req: &serde_json::Map<String, Value>,
    keep_alive: bool,
) -> io::Result<bool> {
    let Some(messages) = req
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return reply_error(
            conn,
            400,
            "invalid_request_error",
            "messages: Field required",
            keep_alive,
        )
        .await;
    };
    let mut prompt = String::new();
    blocks_text(req.get("system"), &mut prompt);
    for m in messages {
        blocks_text(m.get("content"), &mut prompt);
    }
    let n = count_tokens_async(prompt).await;
    state.lock().stats.count_tokens_requests += 1;
    let body = format!(r#"{{"input_tokens":{n}}}"#);
    write_response(
        conn,
        200,
        "application/json",
        body.as_bytes(),
        &[],
        keep_alive,
    )
    .await?;
    Ok(keep_alive)
}

pub(crate) async fn route(
    conn: &mut Conn,
    state: &Arc<MockState>,
    head: &Head,
    json: Option<Value>,
    keep_alive: bool,
) -> io::Result<bool> {
    if head.method != "POST" {
        return reply_error(
            conn,
            405,
            "invalid_request_error",
            "Method not allowed.",
            keep_alive,
        )
        .await;
    }
    let required = state.lock().required_key.clone();
    if let Some(k) = required {
        match head.header("x-api-key") {
            Some(v) if v.trim() == k => {}
            Some(_) => {
                return reply_error(
                    conn,
                    401,
                    "authentication_error",
                    "invalid x-api-key",
                    keep_alive,
                )
                .await
            }
            None => {
                return reply_error(
                    conn,
                    401,
                    "authentication_error",
                    "x-api-key header is required",
                    keep_alive,
                )
                .await
            }
        }
    }
    if head.header("anthropic-version").is_none() {
        return reply_error(
            conn,
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            keep_alive,
        )
        .await;
    }
    let behavior = state.next_behavior();
    if let Some(keep) = pre_behavior(conn, &behavior, keep_alive, status_error_json).await? {
        return Ok(keep);
    }
    let Some(Value::Object(req)) = json else {
        return reply_error(
            conn,
            400,
            "invalid_request_error",
            "There was an issue with the format of your request: invalid JSON",
            keep_alive,
        )
        .await;
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return reply_error(
            conn,
            400,
            "invalid_request_error",
            "model: Field required",
            keep_alive,
        )
        .await;
    };
    if head.path == "/v1/messages/count_tokens" {
        return count_tokens(conn, state, &req, keep_alive).await;
    }
    let Some(max_tokens) = req.get("max_tokens").and_then(Value::as_u64) else {
        return reply_error(
            conn,
            400,
            "invalid_request_error",
            "max_tokens: Field required",
            keep_alive,
        )
        .await;
    };
    let Some(messages) = req
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return reply_error(
            conn,
            400,
            "invalid_request_error",
            "messages: Field required",
            keep_alive,
        )
        .await;
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);

    let mut prompt = String::new();
    blocks_text(req.get("system"), &mut prompt);
    let mut user = String::new();
    for m in messages {
        blocks_text(m.get("content"), &mut prompt);
        if m.get("role").and_then(Value::as_str) == Some("user") {
            user.clear();
            blocks_text(m.get("content"), &mut user);
        }
    }
    let total = count_tokens_async(prompt).await;
    let read = state.cached_tokens.load(Ordering::Relaxed).min(total);
    let write = state
        .cache_write_tokens
        .load(Ordering::Relaxed)
        .min(total - read);
    let n = state.next_id();

    let tools = req
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    let choice = req.get("tool_choice");
    let choice_type = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let forced = (choice_type == Some("tool"))
        .then(|| choice.and_then(|c| c.get("name")).and_then(Value::as_str))
        .flatten();
    let call = tools.and_then(|tools| {
        if choice_type == Some("none") {
            return None;
        }
        // A tool result ends an agent loop: text next, unless a tool is forced.
        let ends_on_tool = req
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last())
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .is_some_and(|b| {
                b.iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            });
        let wanted = matches!(choice_type, Some("any" | "tool"))
            || (!ends_on_tool && user.to_lowercase().contains("weather"));
        wanted.then(|| {
            forced
                .or_else(|| {
                    tools
                        .first()
                        .and_then(|t| t.get("name"))
                        .and_then(Value::as_str)
                })
                .unwrap_or("tool")
                .to_string()
        })
    });
    let thinking = (req
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("enabled"))
    .then(|| split_tokens(THINKING_TEXT));
    let thinking_tokens = thinking.as_ref().map_or(0, |t| t.len() as u64);
    let (reply, stop_reason, reply_tokens) = match call {
        Some(name) => {
            let pieces = split_tokens(TOOL_ARGUMENTS);
            let k = pieces.len() as u64;
            (
                Reply::Tool {
                    id: format!("toolu_mock_{n}"),
                    name,
                    pieces,
                },
                "tool_use",
                k,
            )
        }
        None => {
            let k = max_tokens
                .clamp(1, MAX_REPLY_TOKENS)
                .min(DEFAULT_REPLY_TOKENS);
            let stop = if k == max_tokens {
                "max_tokens"
            } else {
                "end_turn"
            };
            (Reply::Text(reply_pieces(&user, k as usize)), stop, k)
        }
    };
    let plan = Plan {
        id: format!("msg_mock_{n}"),
        model: model.to_string(),
        thinking,
        reply,
        stop_reason,
        input: total - read - write,
        read,
        write,
        output: thinking_tokens + reply_tokens,
    };
    drop(req);
    if stream {
        write_stream(conn, state, &plan, &behavior, keep_alive).await
    } else {
        write_message(conn, state, &plan, &behavior, keep_alive).await
    }
}

async fn write_message(
    conn: &mut Conn,
    state: &MockState,
    plan: &Plan,
    behavior: &Behavior,
    keep_alive: bool,
) -> io::Result<bool> {
    let mut content = Vec::new();
    if let Some(t) = &plan.thinking {
        content.push(format!(
            r#"{{"type":"thinking","thinking":{},"signature":{}}}"#,
            js(&t.concat()),
            js(SIGNATURE)
        ));
    }
    match &plan.reply {
        Reply::Text(p) => content.push(format!(r#"{{"type":"text","text":{}}}"#, js(&p.concat()))),
        Reply::Tool { id, name, pieces } => content.push(format!(
            r#"{{"type":"tool_use","id":{},"name":{},"input":{}}}"#,
            js(id),
            js(name),
            pieces.concat()
        )),
    }
    let usage = if *behavior == Behavior::NoUsage {
        String::new()
    } else {
        format!(r#","usage":{}"#, plan.usage_json(plan.output))
    };
    let body = format!(
        r#"{{"id":{},"type":"message","role":"assistant","model":{},"content":[{}],"stop_reason":"{}","stop_sequence":null{usage}}}"#,
        js(&plan.id),
        js(&plan.model),
        content.join(","),
        plan.stop_reason
    );
    write_body_with_behavior(
        conn,
        state,
        body.as_bytes(),
        &request_id_header(&plan.id),
        behavior,
        keep_alive,
        plan.reported(plan.output),
    )
    .await
}

async fn named(out: &mut SseOut<'_>, name: &str, json: &str) -> io::Result<()> {
    let ev = format!("event: {name}\ndata: {json}\n\n");
    let mid = name.len() + 14 + json.len() / 2;
    out.raw_event(ev.as_bytes(), mid).await
}

async fn write_stream(
    conn: &mut Conn,
    state: &MockState,
    plan: &Plan,
    behavior: &Behavior,
    keep_alive: bool,
) -> io::Result<bool> {
    let mut sent = 0u64;
    let mut recorded = false;
    let res = stream_inner(
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
        state.record(plan.reported(sent), false);
    }
    res
}

async fn stream_inner(
    conn: &mut Conn,
    state: &MockState,
    plan: &Plan,
    behavior: &Behavior,
    keep_alive: bool,
    sent: &mut u64,
    recorded: &mut bool,
) -> io::Result<bool> {
    let no_usage = *behavior == Behavior::NoUsage;
    let (mut out, cut) = SseOut::start(
        conn,
        state,
        behavior,
        "text/event-stream; charset=utf-8",
        vec![("request-id", format!("req_{}", plan.id))],
        keep_alive,
    )
    .await?;
    let start_usage = if no_usage {
        String::new()
    } else {
        format!(r#","usage":{}"#, plan.usage_json(1))
    };
    named(
        &mut out,
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":{},"type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null{start_usage}}}}}"#,
            js(&plan.id),
            js(&plan.model)
        ),
    )
    .await?;
    named(&mut out, "ping", r#"{"type": "ping"}"#).await?;
    let mut index = 0;
    if let Some(t) = &plan.thinking {
        named(&mut out, "content_block_start", &format!(r#"{{"type":"content_block_start","index":{index},"content_block":{{"type":"thinking","thinking":"","signature":""}}}}"#)).await?;
        for p in t {
            if cut.is_some_and(|n| *sent >= n) {
                break;
            }
            named(&mut out, "content_block_delta", &format!(r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"thinking_delta","thinking":{}}}}}"#, js(p))).await?;
            *sent += 1;
        }
        if cut.is_none() {
            named(&mut out, "content_block_delta", &format!(r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"signature_delta","signature":{}}}}}"#, js(SIGNATURE))).await?;
            named(
                &mut out,
                "content_block_stop",
                &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
            )
            .await?;
        }
        index += 1;
    }
    let (start, pieces, delta): (String, &[String], fn(&str) -> String) = match &plan.reply {
        Reply::Text(p) => (r#"{"type":"text","text":""}"#.to_string(), p, |p| {
            format!(r#"{{"type":"text_delta","text":{}}}"#, js(p))
        }),
        Reply::Tool { id, name, pieces } => (
            format!(
                r#"{{"type":"tool_use","id":{},"name":{},"input":{{}}}}"#,
                js(id),
                js(name)
            ),
            pieces,
            |p| format!(r#"{{"type":"input_json_delta","partial_json":{}}}"#, js(p)),
        ),
    };
    if cut.is_none_or(|n| *sent < n) {
        named(
            &mut out,
            "content_block_start",
            &format!(r#"{{"type":"content_block_start","index":{index},"content_block":{start}}}"#),
        )
        .await?;
        for p in pieces {
            if cut.is_some_and(|n| *sent >= n) {
                break;
            }
            named(
                &mut out,
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":{index},"delta":{}}}"#,
                    delta(p)
                ),
            )
            .await?;
            *sent += 1;
        }
    }
    if cut.is_some() {
        out.flush().await?;
        out.conn.stream.flush().await?;
        state.record(plan.reported(*sent), false);
        *recorded = true;
        return Ok(false);
    }
    named(
        &mut out,
        "content_block_stop",
        &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
    )
    .await?;
    let usage = if no_usage {
        String::new()
    } else {
        format!(r#","usage":{{"output_tokens":{sent}}}"#)
    };
    named(
        &mut out,
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}}{usage}}}"#,
            plan.stop_reason
        ),
    )
    .await?;
    state.record(plan.reported(*sent), true);
    *recorded = true;
    named(&mut out, "message_stop", r#"{"type":"message_stop"}"#).await?;
    out.buf.extend_from_slice(CHUNKED_END);
    out.flush().await?;
    Ok(keep_alive)
}
