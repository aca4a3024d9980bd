//! How much credit a call holds before it is sent: an upper bound of its cost that every
//! vendor's count stays under, so that a call is either covered by its hold or refused.
//!
//! Two bounds, the cheap one first (docs/billing.md, "Holds"):
//! 1. **Bytes.** Every tokenizer the gateway fronts is a byte-level BPE or a SentencePiece with
//!    byte fallback: a token stands for at least one byte of text. The prompt's text is inside
//!    the body as sent (JSON escapes only lengthen it), so the body's bytes bound the text's
//!    tokens; the chat template's few tokens per message are fewer than the JSON that frames
//!    each message. Added: a fixed framing allowance, the vendor's hidden tool-use prompt when
//!    tools are sent, and a per-image bound (an image URL is a few bytes, the image thousands of
//!    tokens). A file or document of unknown size (a PDF by URL or file id) can be anything up
//!    to the model's context window: that is its bound.
//! 2. **Exact count**, only when the byte bound's cost does not fit the remaining credit and
//!    the gateway has the model's tokenizer: the prompt counted as the vendor counts it, plus
//!    margins (`TokenCounter::bound_chat_prompt`).
//!
//! Either bound is capped by the model's context window when one is configured: the vendor
//! refuses longer prompts.

use crate::config::{BillingSettings, Channel, Model};
use crate::protocol::Media;

use super::pricing::{self, PricingError, TokenCounts};

/// Chat template tokens a vendor may add beyond the body's bytes (reply priming, BOS).
pub const FRAMING_TOKENS: u64 = 64;
/// The hidden system prompt a vendor adds when tools are offered (Anthropic documents 313-346
/// tokens for its tool-use prompt).
pub const TOOL_PROMPT_TOKENS: u64 = 512;

/// What the request says about its prompt's size, known once it is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptShape {
    /// The largest body among the caller's and each translation sent upstream.
    pub bytes: u64,
    pub media: Media,
    pub tools: bool,
}

/// Prompt tokens an image may cost on `model`.
pub fn image_tokens(model: &Model, billing: &BillingSettings) -> u64 {
    model.image_tokens.unwrap_or(billing.image_token_bound)
}

/// The prompt bound that costs nothing to compute (step 1).
pub fn byte_bound(shape: &PromptShape, model: &Model, billing: &BillingSettings) -> u64 {
    if shape.media.files > 0 {
        return model
            .context_window
            .unwrap_or(billing.attachment_token_bound);
    }
    let bound = shape
        .bytes
        .saturating_add(FRAMING_TOKENS)
        .saturating_add(if shape.tools { TOOL_PROMPT_TOKENS } else { 0 })
        .saturating_add(u64::from(shape.media.images).saturating_mul(image_tokens(model, billing)));
    cap_by_window(bound, model)
}

/// The exact count (step 2) made a bound: the tool-use prompt added, capped by the window.
pub fn counted_bound(counted: u64, shape: &PromptShape, model: &Model) -> u64 {
    let bound = counted.saturating_add(if shape.tools { TOOL_PROMPT_TOKENS } else { 0 });
    cap_by_window(bound, model)
}

fn cap_by_window(bound: u64, model: &Model) -> u64 {
    match model.context_window {
        Some(w) => bound.min(w),
        None => bound,
    }
}

/// The worst-case cost of a call: `prompt` tokens at the dearest prompt price (a cache write
/// may cost more than plain input) plus `output` tokens at the output price.
pub fn worst_cost(
    model: &Model,
    channel: &Channel,
    credits_per_rmb: rust_decimal::Decimal,
    prompt: u64,
    output: u64,
) -> Result<i64, PricingError> {
    let price = model
        .price
        .as_ref()
        .ok_or_else(|| PricingError::Unpriced(model.name.clone()))?;
    let mut t = TokenCounts {
        output,
        ..TokenCounts::default()
    };
    if price.cache_write > price.input && price.cache_write >= price.cached_input {
        t.cache_write = prompt;
    } else if price.cached_input > price.input {
        t.cached_input = prompt;
    } else {
        t.input = prompt;
    }
    pricing::cost_nano(model, channel, credits_per_rmb, &t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{schema::FileConfig, Config};
    use crate::routing::upstream::UpstreamStates;

    fn cfg() -> Config {
        let file: FileConfig = toml::from_str(
            r#"
[[models]]
name = "m"
vendor = "openai"
context_window = 100000
price = { currency = "USD", input = "1", cache_write = "1.25", output = "2" }

[[models]]
name = "open"
vendor = "other"
image_tokens = 100
price = { currency = "USD", input = "1", output = "2" }

[[channels]]
name = "c"
multiplier = "1"
[[channels.upstreams]]
name = "u"
base_url = "http://127.0.0.1:1"
models = ["m", "open"]
"#,
        )
        .unwrap();
        Config::build(file, &UpstreamStates::default(), &|_| None).unwrap()
    }

    #[test]
    fn byte_bound_table() {
        let cfg = cfg();
        let m = cfg.model("m").unwrap();
        let open = cfg.model("open").unwrap();
        let b = &cfg.billing;
        let shape = |bytes, images, files, tools| PromptShape {
            bytes,
            media: Media { images, files },
            tools,
        };
        let cases = [
            (open, shape(1_000, 0, 0, false), 1_064),
            (open, shape(1_000, 0, 0, true), 1_576),
            (open, shape(1_000, 2, 0, false), 1_264),
            (m, shape(1_000, 1, 0, false), 1_064 + 8_192),
            // capped by the context window
            (m, shape(5_000_000, 0, 0, false), 100_000),
            // a document of unknown size: the window, or the configured default
            (m, shape(10, 0, 1, false), 100_000),
            (open, shape(10, 0, 1, false), 2_097_152),
        ];
        for (model, s, want) in cases {
            assert_eq!(byte_bound(&s, model, b), want, "{} {s:?}", model.name);
        }
    }

    #[test]
    fn the_prompt_is_held_at_its_dearest_price() {
        let cfg = cfg();
        let c = cfg.channel("c").unwrap();
        // m: cache writes (1.25) cost more than input (1): 1M prompt + 1M output.
        let m = cfg.model("m").unwrap();
        let w = worst_cost(m, c, rust_decimal::Decimal::ONE, 1_000_000, 1_000_000).unwrap();
        assert_eq!(w, 3_250_000_000);
        let open = cfg.model("open").unwrap();
        let w = worst_cost(open, c, rust_decimal::Decimal::ONE, 1_000_000, 0).unwrap();
        assert_eq!(w, 1_000_000_000);
    }
}
