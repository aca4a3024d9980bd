//! The credit hold, one step of admission: the prompt's bound, the call's worst case, the
//! reservation, and the exact count when the cheap bound does not fit (`billing::hold`).
//! A call is either covered by its hold or refused here, before any upstream is contacted.

use crate::app::App;
use crate::billing::hold::{self, PromptShape};
use crate::billing::ledger::{Refusal, Reservation};
use crate::billing::pricing::{self, PricingError};
use crate::config::{Channel, Config, Model, Tokenizer};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::protocol::TokenCounter;
use crate::tenancy::ApiKey;
use serde_json::{Map, Value};

/// A prompt in the shape the exact count reads (an OpenAI chat body or an embeddings body),
/// produced only when the count is needed.
pub(super) enum Countable {
    Chat(Map<String, Value>),
    Embedding(Map<String, Value>),
}

/// What the hold is computed from.
pub(super) struct Call<'a> {
    pub key: &'a ApiKey,
    pub model: &'a Model,
    pub channel: &'a Channel,
    pub shape: PromptShape,
    /// The most output tokens any candidate upstream may produce for this call.
    pub max_output: u64,
}

/// Holds the worst case of `call`. `countable` gives the prompt for the exact count; it is
/// called only when the byte bound's cost does not fit and the model's tokenizer is known.
pub(super) async fn hold(
    app: &App,
    cfg: &Config,
    call: Call<'_>,
    countable: impl FnOnce() -> Result<Option<Countable>, GatewayError>,
) -> Result<Reservation, GatewayError> {
    let bound = hold::byte_bound(&call.shape, call.model, &cfg.billing);
    let worst = worst_cost(cfg, &call, bound)?;
    let generation = app.keys.generation();
    let refusal = match app.ledger.reserve_call(call.key, worst, generation).await {
        Ok(r) => return Ok(r),
        Err(r @ (Refusal::Balance { .. } | Refusal::Quota { .. }))
            if call.model.tokenizer == Tokenizer::O200k && call.shape.media.files == 0 =>
        {
            r
        }
        Err(r) => return Err(refused(r, bound, call.max_output)),
    };
    // The byte bound does not fit: count the prompt as the vendor will.
    let Some(prompt) = countable()? else {
        return Err(refused(refusal, bound, call.max_output));
    };
    let image_tokens = hold::image_tokens(call.model, &cfg.billing);
    let counted = tokio::task::spawn_blocking(move || match prompt {
        Countable::Chat(obj) => TokenCounter::bound_chat_prompt(&obj, image_tokens),
        Countable::Embedding(obj) => TokenCounter::bound_embedding_input(&obj),
    })
    .await
    .map_err(|_| GatewayError::Internal("token counting failed".into()))?;
    let exact = hold::counted_bound(counted, &call.shape, call.model).min(bound);
    let worst = worst_cost(cfg, &call, exact)?;
    let outcome = app.ledger.reserve_call(call.key, worst, generation).await;
    METRICS
        .hold_exact_counts
        .with_label_values(&[if outcome.is_ok() { "held" } else { "refused" }])
        .inc();
    outcome.map_err(|r| refused(r, exact, call.max_output))
}

fn worst_cost(cfg: &Config, call: &Call<'_>, prompt: u64) -> Result<i64, GatewayError> {
    hold::worst_cost(
        call.model,
        call.channel,
        cfg.billing.credits_per_rmb,
        prompt,
        call.max_output,
    )
    .map_err(|e| match e {
        PricingError::Unpriced(_) => GatewayError::NotBillable(format!(
            "The model `{}` has no price configured on this gateway and cannot be used.",
            call.model.name
        )),
        PricingError::Overflow => {
            GatewayError::bad_request("The requested output size is too large.")
        }
    })
}

/// The refusal in the caller's terms: what the call may cost and why.
fn refused(r: Refusal, prompt: u64, output: u64) -> GatewayError {
    let why = format!("up to {prompt} prompt and {output} output tokens");
    match r {
        Refusal::Balance { available, needed } => GatewayError::InsufficientCredit(format!(
            "Insufficient credit: this call may cost up to {} credits ({why}) and the balance has {} available. Top up or lower max_tokens.",
            pricing::to_credits(needed),
            pricing::to_credits(available)
        )),
        Refusal::Quota {
            account,
            remaining,
            needed,
        } => GatewayError::QuotaExceeded(format!(
            "The {account} is exhausted: this call may cost up to {} credits ({why}) and {} remain.",
            pricing::to_credits(needed),
            pricing::to_credits(remaining)
        )),
        Refusal::Unavailable => GatewayError::CreditUnavailable(
            "The credit service is temporarily unavailable; retry shortly.".into(),
        ),
        Refusal::Backlog => GatewayError::StoreBacklog(
            "The usage store is not keeping up; retry shortly.".into(),
        ),
    }
}
