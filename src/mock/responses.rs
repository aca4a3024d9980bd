//! OpenAI Responses API (`POST /v1/responses`), JSON and SSE (typed events with
//! `sequence_number`), with the same token rules as chat completions: the prompt is
//! `instructions` followed by the text of every input item (message content parts'
//! `text`, a string `content`, a string `output` of a tool result) with no separator;
//! the reply is the chat reply for the last user text, `max_output_tokens` (else 24) tokens;
//! a function call is made (arguments `{"location":"Paris"}`) when `tool_choice` asks for one
//! or the last user text mentions "weather", unless the last input item is a tool result (so
//! agent loops end). Behaviours apply as on chat completions; `CutStreamAfter` closes the
//! socket after that many deltas, without `response.completed`.

use super::http::{Conn, CHUNKED_END};
use super::openai::{
    bad_request, count_tokens_async, pre_behavior, reply_pieces, status_error_json, unix_now,
    write_body_with_behavior, SseOut, DEFAULT_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS,
    TOOL_ARGUMENTS,
};
use super::{Behavior, MockState, Reported};
use crate::protocol::tokens::split_tokens;
use serde_json::{json, Value};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn push_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

/// Prompt text, last user text, and whether the conversation ends on a tool result.
fn read_input(req: &serde_json::Map<String, Value>) -> (String, String, bool) {
    let mut prompt = String::new();
    if let Some(Value::String(s)) = req.get("instructions") {
        prompt.push_str(s);
    }
    let mut user = String::new();
    let mut ends_on_tool = false;
    match req.get("input") {
        Some(Value::String(s)) => {
            prompt.push_str(s);
            user = s.clone();
        }
        Some(Value::Array(items)) => {
            for it in items {
                let kind = it.get("type").and_then(Value::as_str).unwrap_or("message");
                ends_on_tool = matches!(kind, "function_call_output" | "custom_tool_call_output");
                if let Some(c) = it.get("content") {
                    push_text(c, &mut prompt);
                    if it.get("role").and_then(Value::as_str) == Some("user") {
                        user.clear();
                        push_text(c, &mut user);
                    }
                }
                if let Some(Value::String(o)) = it.get("output") {
                    prompt.push_str(o);
                }
            }
        }
        _ => {}
    }
    (prompt, user, ends_on_tool)
}

/// The tool to call: (kind, name) with kind "function" or "custom".
fn tool_to_call(
    req: &serde_json::Map<String, Value>,
    user: &str,
    ends_on_tool: bool,
) -> Option<(String, String)> {
    let tools = req
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())?;
    let choice = req.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let forced = choice.and_then(|c| c.get("name")).and_then(Value::as_str);
    let wanted = forced.is_some()
        || (!ends_on_tool
            && (choice.and_then(Value::as_str) == Some("required")
                || user.to_lowercase().contains("weather")));
    if !wanted {
        return None;
    }
    let named = |n: &str| {
        tools
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(n))
    };
    let tool = match forced {
        Some(n) => named(n),
        None => tools.iter().find(|t| {
            matches!(
                t.get("type").and_then(Value::as_str),
                Some("function" | "custom")
            )
        }),
    }?;
    Some((
        tool.get("type")
            .and_then(Value::as_str)
            .unwrap_or("function")
            .to_string(),
        tool.get("name")
            .and_then(Value::as_str)
            .unwrap_or("tool")
            .to_string(),
    ))
}

pub(crate) async fn responses(
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
    let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return bad_request(conn, "Missing required parameter: 'model'.", keep_alive).await;
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let limit = req.get("max_output_tokens").and_then(Value::as_u64);
    let n_tokens = limit
        .unwrap_or(DEFAULT_COMPLETION_TOKENS)
        .clamp(1, MAX_COMPLETION_TOKENS) as usize;
    let (prompt, user, ends_on_tool) = read_input(&req);
    let prompt_tokens = count_tokens_async(prompt).await;
    let cached = state
        .cached_tokens
        .load(Ordering::Relaxed)
        .min(prompt_tokens);
    let n = state.next_id();
    let id = format!("resp_mock_{n}");
    let call = tool_to_call(&req, &user, ends_on_tool);
    let pieces = match &call {
        Some(_) => split_tokens(TOOL_ARGUMENTS),
        None => reply_pieces(&user, n_tokens),
    };
    let incomplete = call.is_none() && limit.is_some_and(|l| l <= MAX_COMPLETION_TOKENS);
    let plan = Plan {
        id,
        model,
        created: unix_now(),
        call,
        call_id: format!("call_mock_{n}"),
        pieces,
        incomplete,
        prompt_tokens,
        cached,
    };
    if stream {
        write_stream(conn, state, &plan, &behavior, keep_alive).await
    } else {
        let body = plan.response(plan.pieces.len() as u64, behavior != Behavior::NoUsage);
        write_body_with_behavior(
            conn,
            state,
            body.to_string().as_bytes(),
            &[("x-request-id", format!("req_{}", plan.id))],
            &behavior,
            keep_alive,
            Reported {
                prompt: prompt_tokens,
                completion: plan.pieces.len() as u64,
                cached,
                ..Default::default()
            },
        )
        .await
    }
}

struct Plan {
    id: String,
    model: String,
    created: u64,
    /// (kind, name) of the tool called.
    call: Option<(String, String)>,
    call_id: String,
    pieces: Vec<String>,
    incomplete: bool,
    prompt_tokens: u64,
    cached: u64,
}

impl Plan {
    fn item(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        let text = if done {
            self.pieces.concat()
        } else {
            String::new()
        };
        match &self.call {
            Some((kind, name)) if kind == "custom" => json!({"type": "custom_tool_call",
                "id": format!("ctc_{}", self.id), "status": status, "call_id": self.call_id,
                "name": name, "input": text}),
            Some((_, name)) => json!({"type": "function_call", "id": format!("fc_{}", self.id),
                "status": status, "call_id": self.call_id, "name": name, "arguments": text}),
            None => json!({"type": "message", "id": format!("msg_{}", self.id), "status": status,
                "role": "assistant",
                "content": if done { json!([{"type": "output_text", "text": text,
                    "annotations": [], "logprobs": []}]) } else { json!([]) }}),
        }
    }

    fn item_id(&self) -> String {
        match &self.call {
            Some((kind, _)) if kind == "custom" => format!("ctc_{}", self.id),
            Some(_) => format!("fc_{}", self.id),
            None => format!("msg_{}", self.id),
        }
    }

    fn response(&self, completion: u64, with_usage: bool) -> Value {
        let (status, details) = if self.incomplete {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        } else {
            ("completed", Value::Null)
        };
        let usage = if with_usage {
            json!({"input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": self.cached},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + completion})
        } else {
            Value::Null
        };
        json!({"id": self.id, "object": "response", "created_at": self.created, "status": status,
            "error": null, "incomplete_details": details, "model": self.model,
            "output": [self.item(true)], "parallel_tool_calls": true, "tool_choice": "auto",
            "tools": [], "store": false, "usage": usage})
    }

    fn shell(&self) -> Value {
        json!({"id": self.id, "object": "response", "created_at": self.created,
            "status": "in_progress", "error": null, "incomplete_details": null,
            "model": self.model, "output": [], "usage": null})
    }
}

async fn write_stream(
    conn: &mut Conn,
    state: &MockState,
    plan: &Plan,
    behavior: &Behavior,
    keep_alive: bool,
) -> io::Result<bool> {
    let (mut out, cut) = SseOut::start(
        conn,
        state,
        behavior,
        "text/event-stream; charset=utf-8",
        vec![("x-request-id", format!("req_{}", plan.id))],
        keep_alive,
    )
    .await?;
    let cut = cut.map(|c| c as usize);
    let mut seq = 0u64;
    let mut ev = |v: Value| {
        let mut v = v;
        v["sequence_number"] = json!(seq);
        seq += 1;
        let name = v["type"].as_str().unwrap_or("").to_string();
        let data = v.to_string();
        let s = format!("event: {name}\ndata: {data}\n\n");
        let mid = 14 + name.len() + data.len() / 2;
        (s, mid)
    };
    let item_id = plan.item_id();
    let mut events = vec![
        ev(json!({"type": "response.created", "response": plan.shell()})),
        ev(json!({"type": "response.in_progress", "response": plan.shell()})),
        ev(
            json!({"type": "response.output_item.added", "output_index": 0, "item": plan.item(false)}),
        ),
    ];
    let is_call = plan.call.is_some();
    let custom = matches!(&plan.call, Some((k, _)) if k == "custom");
    if !is_call {
        events.push(ev(
            json!({"type": "response.content_part.added", "item_id": item_id,
            "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ));
    }
    for (s, mid) in events {
        out.raw_event(s.as_bytes(), mid).await?;
    }
    let mut sent = 0usize;
    for piece in &plan.pieces {
        if cut.is_some_and(|c| sent >= c) {
            break;
        }
        let v = if custom {
            json!({"type": "response.custom_tool_call_input.delta", "item_id": item_id,
                "output_index": 0, "delta": piece})
        } else if is_call {
            json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                "output_index": 0, "delta": piece})
        } else {
            json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                "content_index": 0, "delta": piece, "logprobs": []})
        };
        let (s, mid) = ev(v);
        out.raw_event(s.as_bytes(), mid).await?;
        sent += 1;
    }
    if cut.is_some() {
        out.flush().await?;
        state.record_usage(plan.prompt_tokens, sent as u64, plan.cached, false);
        return Ok(false);
    }
    let text = plan.pieces.concat();
    let mut tail = Vec::new();
    if custom {
        tail.push(ev(
            json!({"type": "response.custom_tool_call_input.done", "item_id": item_id,
            "output_index": 0, "input": text}),
        ));
    } else if is_call {
        tail.push(ev(
            json!({"type": "response.function_call_arguments.done", "item_id": item_id,
            "output_index": 0, "arguments": text}),
        ));
    } else {
        tail.push(ev(
            json!({"type": "response.output_text.done", "item_id": item_id,
            "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        ));
        tail.push(ev(
            json!({"type": "response.content_part.done", "item_id": item_id,
            "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
        ));
    }
    tail.push(ev(
        json!({"type": "response.output_item.done", "output_index": 0,
        "item": plan.item(true)}),
    ));
    let done = plan.response(sent as u64, *behavior != Behavior::NoUsage);
    let kind = if plan.incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    tail.push(ev(json!({"type": kind, "response": done})));
    for (s, mid) in tail {
        out.raw_event(s.as_bytes(), mid).await?;
    }
    state.record_usage(plan.prompt_tokens, sent as u64, plan.cached, true);
    out.buf.extend_from_slice(CHUNKED_END);
    out.flush().await?;
    Ok(keep_alive)
}
