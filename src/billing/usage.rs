//! Usage events: one per request, written to the store in batches by the recorder, so the request
//! path never waits on storage. Events of calls that were charged go through the ledger's
//! unbounded journal queue (a charge is never dropped, see `Ledger::journal_call`); the others
//! through the bounded queue here, which drops and counts them when the recorder is far behind.

use crate::tenancy::{GroupId, KeyId, TenantId, UserId};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsageEvent {
    pub request_id: String,
    pub ts_ms: i64,
    pub tenant_id: Option<TenantId>,
    pub key_id: Option<KeyId>,
    pub user_id: Option<UserId>,
    pub group_id: Option<GroupId>,
    /// "chat", "messages", "responses", "count_tokens", "embeddings" or "other".
    pub endpoint: String,
    /// The request path (at most 256 bytes).
    pub path: Option<String>,
    pub channel: Option<String>,
    /// `channel/upstream` of the attempt that produced the response.
    pub upstream: Option<String>,
    pub model_requested: Option<String>,
    /// The upstream's own model name.
    pub model_used: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub error_code: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    /// Anthropic cache writes (`cache_creation_input_tokens`), part of `prompt_tokens`.
    pub cache_write_tokens: u64,
    /// "vendor" (reported by the upstream), "counted" (tiktoken fallback) or "none".
    pub usage_source: String,
    pub attempts: u32,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// What the call was charged, in nano-credits. A call's usage record is its charge: there is
    /// no second row for it in the journal.
    pub cost_nano: i64,
    /// What the call cost beyond what its accounts could still pay (never charged).
    pub uncollected: i64,
    /// `model: "auto"` calls: the tier the router chose, why, and the score.
    pub route_tier: Option<String>,
    pub route_reason: Option<String>,
    pub route_score: Option<f32>,
    /// `model: "auto"` calls: what the same tokens would have cost on the strongest tier.
    pub baseline_cost_nano: Option<i64>,
    /// What the tenant's prompt guardrails found in the request: detector and count
    /// (`email=2,keywords:codenames=1`), never the text; `None`: nothing (or no policy).
    #[serde(default)]
    pub guardrails: Option<String>,
    /// Where the charge is in this process's charge log, released once the record is stored.
    #[serde(skip)]
    pub charge_ticket: Option<crate::billing::chargelog::Ticket>,
}

/// The producer side, cloned into the data plane.
#[derive(Clone, Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageEvent>,
    dropped: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
}

impl UsageSink {
    /// Never blocks: when the writer is far behind the event is counted as dropped.
    pub fn push(&self, e: UsageEvent) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS.usage_events_dropped.inc();
        } else {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events queued so far (not counting dropped ones).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

pub const QUEUE: usize = 65_536;

/// Create the queue; the ledger's recorder (billing::ledger::Recorder) drains it.
pub fn queue() -> (UsageSink, mpsc::Receiver<UsageEvent>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let sink = UsageSink {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
        queued: Arc::new(AtomicU64::new(0)),
    };
    (sink, rx)
}

/// The path of an endpoint as recorded (`UsageEvent::endpoint`), when it has one.
pub fn canonical_path(endpoint: &str) -> Option<&'static str> {
    Some(match endpoint {
        "chat" => "/v1/chat/completions",
        "messages" => "/v1/messages",
        "responses" => "/v1/responses",
        "count_tokens" => "/v1/messages/count_tokens",
        "embeddings" => "/v1/embeddings",
        "models" => "/v1/models",
        _ => return None,
    })
}
