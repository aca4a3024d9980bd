//! Usage events: one per request, pushed by the data plane into a bounded queue and written to
//! the store in batches by a background task, so the request path never waits on storage.

use crate::tenancy::store::Store;
use crate::tenancy::{GroupId, KeyId, TenantId, UserId};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsageEvent {
    pub request_id: String,
    pub ts_ms: i64,
    pub tenant_id: Option<TenantId>,
    pub key_id: Option<KeyId>,
    pub user_id: Option<UserId>,
    pub group_id: Option<GroupId>,
    /// "chat" or "embeddings".
    pub endpoint: String,
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
    /// "vendor" (reported by the upstream), "counted" (tiktoken fallback) or "none".
    pub usage_source: String,
    pub attempts: u32,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// What the call was charged, in nano-credits.
    pub cost_nano: i64,
}

/// The producer side, cloned into the data plane.
#[derive(Clone, Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageEvent>,
    dropped: Arc<AtomicU64>,
}

impl UsageSink {
    /// Never blocks: when the writer is far behind the event is counted as dropped.
    pub fn push(&self, e: UsageEvent) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS.usage_events_dropped.inc();
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

pub const QUEUE: usize = 65_536;
pub const BATCH: usize = 4096;
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Create the queue; run the returned future on a runtime to drain it into `store`.
pub fn channel(store: Store) -> (UsageSink, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let sink = UsageSink {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    (sink, writer(store, rx))
}

async fn writer(store: Store, mut rx: mpsc::Receiver<UsageEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Sleep, then take whatever queued up. The writer never waits inside `recv`, so the
        // data plane's sends never have to wake it: one wake-up per flush, not per request.
        tokio::time::sleep(FLUSH_EVERY).await;
        loop {
            match rx.try_recv() {
                Ok(e) => {
                    batch.push(e);
                    if batch.len() >= BATCH {
                        flush(&store, &mut batch).await;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    flush(&store, &mut batch).await;
                    return;
                }
            }
        }
        flush(&store, &mut batch).await;
    }
}

async fn flush(store: &Store, batch: &mut Vec<UsageEvent>) {
    if batch.is_empty() {
        return;
    }
    let events = std::mem::take(batch);
    let n = events.len();
    let store = store.clone();
    // Retry a failed batch a few times; inserts are idempotent on request id.
    let mut events = events;
    for attempt in 0..5u32 {
        let s = store.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = s.insert_usage_events(&events);
            (r, events)
        })
        .await;
        match res {
            Ok((Ok(_), _)) => {
                crate::metrics::METRICS
                    .usage_events_written
                    .inc_by(n as u64);
                return;
            }
            Ok((Err(e), back)) => {
                tracing::warn!(error = %e, attempt, "usage batch write failed; retrying");
                events = back;
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "usage writer task failed");
                return;
            }
        }
    }
    tracing::error!(events = n, "usage batch dropped after retries");
    crate::metrics::METRICS
        .usage_events_dropped
        .inc_by(n as u64);
}
