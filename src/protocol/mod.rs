//! OpenAI protocol layer: request inspection and rewriting, usage extraction, inline SSE
//! metering of streamed responses, and tiktoken-based fallback counting.

pub mod openai;
pub mod sse;
pub mod tokens;

pub use openai::{
    error_event, parse_chat_request, parse_embeddings_request, parse_usage, rewrite_chat_request,
    rewrite_model, usage_from_response, ChatRequestInfo, ChatStreamMeter, RequestError, Usage,
};
pub use sse::{SseEvent, SseSplitter};
pub use tokens::TokenCounter;
