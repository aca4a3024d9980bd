//! Wire protocols: OpenAI chat completions (the gateway's pivot shape), Anthropic Messages and
//! Google Gemini; request validation and rewriting, usage extraction, inline SSE metering of
//! streamed responses, translation between the three (requests, responses, streams, errors),
//! and tiktoken-based fallback counting.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod sse;
pub mod tokens;
pub mod translate;

pub use openai::{
    error_event, parse_chat_request, parse_embeddings_request, parse_usage, rewrite_chat_request,
    rewrite_model, usage_from_response, ChatRequestInfo, ChatStreamMeter, RequestError, Usage,
};
pub use sse::{SseEvent, SseSplitter};
pub use tokens::TokenCounter;

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
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }

    /// Human name used in error messages.
    pub fn display(self) -> &'static str {
        match self {
            Dialect::OpenAi => "OpenAI chat completions",
            Dialect::Anthropic => "Anthropic Messages",
            Dialect::Gemini => "Gemini",
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
