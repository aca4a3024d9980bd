//! Wire protocols: OpenAI chat completions (the gateway's pivot shape), Anthropic Messages and
//! Google Gemini; request validation and rewriting, usage extraction, inline SSE metering of
//! streamed responses, translation between the three (requests, responses, streams, errors),
//! and tiktoken-based fallback counting.

pub mod anthropic;
mod bpe_hash;
pub mod chatbody;
pub mod chunkscan;
pub mod gemini;
pub mod o200k;
pub mod openai;
pub mod responses;
pub mod sse;
pub mod tokens;
pub mod translate;

pub use openai::{
    error_event, parse_chat_request, parse_embeddings_request, parse_usage, rewrite_chat_request,
    rewrite_model, usage_from_response, ChatRequestInfo, ChatStreamMeter, RequestError, Usage,
};
pub use sse::{SseEvent, SseSplitter};
pub use tokens::TokenCounter;

/// What a prompt carries besides text that a vendor may count far beyond its bytes in the
/// body: images (a URL of a few bytes may cost thousands of tokens) and files or documents
/// (a PDF by URL or file id: any size). Counted while the request is read, for the credit hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Media {
    pub images: u32,
    pub files: u32,
}

impl Media {
    /// Counts one content part or block (OpenAI parts, Anthropic blocks; an Anthropic
    /// `tool_result` is looked into, as its content may hold images and documents).
    pub fn add(&mut self, part: &serde_json::Value) {
        match part.get("type").and_then(serde_json::Value::as_str) {
            Some("image_url" | "input_image" | "image") => {
                self.images = self.images.saturating_add(1);
            }
            Some("file" | "input_file" | "document") => {
                self.files = self.files.saturating_add(1);
            }
            Some("tool_result") => {
                if let Some(serde_json::Value::Array(inner)) = part.get("content") {
                    inner.iter().for_each(|p| self.add(p));
                }
            }
            _ => {}
        }
    }

    pub fn any_image(&self) -> bool {
        self.images > 0
    }
}

/// A wire format: what a caller speaks, or what an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// OpenAI chat completions (also DeepSeek, Kimi, Qwen compatible mode, GLM, ...).
    #[default]
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent` (upstreams only).
    Gemini,
    /// OpenAI Responses (`/v1/responses`): callers, and OpenAI upstreams configured with
    /// `responses = true` (the caller's request then passes through).
    Responses,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Responses => "responses",
        }
    }

    /// Human name used in error messages.
    pub fn display(self) -> &'static str {
        match self {
            Dialect::OpenAi => "OpenAI chat completions",
            Dialect::Anthropic => "Anthropic Messages",
            Dialect::Gemini => "Gemini",
            Dialect::Responses => "OpenAI Responses",
        }
    }
}

/// A request that cannot be expressed in the upstream's protocol (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TranslateError {
    pub message: String,
    pub param: Option<String>,
}

impl TranslateError {
    /// `feature` (a parameter path such as `messages[2].content[0].type=document`) has no
    /// equivalent in `target`.
    pub fn unsupported(feature: impl Into<String>, target: Dialect) -> Self {
        let feature = feature.into();
        TranslateError {
            message: format!(
                "`{feature}` has no equivalent in the {} API of the upstream serving this model; remove it or pick a model served natively.",
                target.display()
            ),
            param: Some(feature),
        }
    }

    pub fn invalid(param: impl Into<String>, reason: impl Into<String>) -> Self {
        let param = param.into();
        TranslateError {
            message: format!("`{param}` {}", reason.into()),
            param: Some(param),
        }
    }
}

/// A vendor's error body with anything that looks like an API key replaced by `[redacted]`:
/// vendors quote the key they were given (`Incorrect API key provided: sk-proj-****Qz7X`), and
/// that is the gateway's key, not the caller's. A word (a run of letters, digits, `-`, `_`, `.`,
/// `*`) is a key when it starts like one (`sk-`, `sk_`, `AIza`) or holds a masked part (`***`).
pub fn scrub_secrets(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let is_key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*');
    let looks_like_key = |w: &[u8]| {
        (w.len() >= 6 && (w.starts_with(b"sk-") || w.starts_with(b"sk_")))
            || (w.len() >= 20 && w.starts_with(b"AIza"))
            || w.windows(3).any(|x| x == b"***")
    };
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut copied = 0;
    while i < body.len() {
        if !is_key_char(body[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < body.len() && is_key_char(body[i]) {
            i += 1;
        }
        // A sentence's full stop is not part of the key.
        let mut end = i;
        while end > start && body[end - 1] == b'.' {
            end -= 1;
        }
        if looks_like_key(&body[start..end]) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
            o.extend_from_slice(&body[copied..start]);
            o.extend_from_slice(b"[redacted]");
            copied = end;
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(body),
        Some(mut o) => {
            o.extend_from_slice(&body[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// Fits a translated request in `dialect`'s shape to what the model takes (its `reasoning`
/// setting): a model that does not reason gets no reasoning settings (its vendor would refuse
/// them); a reasoning model on an OpenAI-compatible upstream gets its limit as
/// `max_completion_tokens` (OpenAI refuses `max_tokens` there). Unset: left as translated.
pub fn fit_reasoning(
    dialect: Dialect,
    body: &mut serde_json::Map<String, serde_json::Value>,
    reasoning: Option<bool>,
) {
    match reasoning {
        Some(false) => drop_reasoning(dialect, body),
        Some(true) if dialect == Dialect::OpenAi => {
            if let Some(n) = body.remove("max_tokens") {
                body.entry("max_completion_tokens").or_insert(n);
            }
        }
        _ => {}
    }
}

fn drop_reasoning(dialect: Dialect, body: &mut serde_json::Map<String, serde_json::Value>) {
    match dialect {
        Dialect::OpenAi => {
            body.remove("reasoning_effort");
        }
        Dialect::Anthropic => {
            body.remove("thinking");
        }
        Dialect::Gemini => {
            if let Some(serde_json::Value::Object(gc)) = body.get_mut("generationConfig") {
                gc.remove("thinkingConfig");
            }
        }
        Dialect::Responses => {
            body.remove("reasoning");
        }
    }
}

/// The most output tokens an upstream may produce for `body`, a request in `dialect`'s own
/// shape, thinking included: what a credit hold must cover for that upstream. `ceiling` (the
/// model's `max_output_tokens`, else the billing default) applies when the body sets no limit.
///
/// Anthropic counts thinking inside `max_tokens`. Gemini is reported to count thoughts inside
/// `maxOutputTokens` too, but does not document it, so its thinking budget is added on top.
pub fn max_output_tokens(
    dialect: Dialect,
    body: &serde_json::Map<String, serde_json::Value>,
    ceiling: u64,
) -> u64 {
    use serde_json::Value;
    let uint = |v: Option<&Value>| v.and_then(Value::as_u64);
    match dialect {
        Dialect::OpenAi => {
            let n = uint(body.get("n")).unwrap_or(1).max(1);
            uint(body.get("max_completion_tokens"))
                .or_else(|| uint(body.get("max_tokens")))
                .unwrap_or(ceiling)
                .saturating_mul(n)
        }
        Dialect::Anthropic => uint(body.get("max_tokens")).unwrap_or(ceiling),
        Dialect::Responses => uint(body.get("max_output_tokens")).unwrap_or(ceiling),
        Dialect::Gemini => {
            let gc = body.get("generationConfig");
            let limit = uint(gc.and_then(|g| g.get("maxOutputTokens"))).unwrap_or(ceiling);
            let budget = gc
                .and_then(|g| g.get("thinkingConfig"))
                .and_then(|t| t.get("thinkingBudget"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let candidates = uint(gc.and_then(|g| g.get("candidateCount")))
                .unwrap_or(1)
                .max(1);
            limit.saturating_add(budget).saturating_mul(candidates)
        }
    }
}

#[cfg(test)]
mod scrub_tests {
    use super::scrub_secrets;

    #[test]
    fn key_like_words_are_redacted_and_the_rest_kept() {
        let cases = [
            (
                "Incorrect API key provided: sk-proj-****Qz7X. You can find your API key at https://platform.openai.com.",
                "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com.",
            ),
            ("key sk-ant-api03-abcdefgh is invalid", "key [redacted] is invalid"),
            ("API key not valid: AIzaSyA1234567890abcdefghij", "API key not valid: [redacted]"),
            ("masked abc****wxyz here", "masked [redacted] here"),
            ("the model `gpt-4o` does not exist; task-1 sk- ok", "the model `gpt-4o` does not exist; task-1 sk- ok"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&scrub_secrets(input.as_bytes())),
                want
            );
        }
        assert!(matches!(
            scrub_secrets(b"nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
