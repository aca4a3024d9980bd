//! Mock LLM vendor: a small, fast HTTP/1.1 server (raw tokio + `httparse`) that speaks
//! OpenAI's, Anthropic's and Gemini's wire formats. Used by integration tests, `tollgate demo`
//! and benchmarks.
//!
//! # Endpoints
//! * `POST /v1/chat/completions` — Chat Completions, non-stream and SSE stream, tool calls.
//! * `POST /v1/messages` — Anthropic Messages (see `anthropic.rs` for its token rules).
//! * `POST /v1/messages/count_tokens` — `{"input_tokens": n}`, the Messages prompt count.
//! * `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse` —
//!   Gemini (see `gemini.rs`).
//! * `POST /v1/responses` — OpenAI Responses, JSON and typed SSE events (see `responses.rs`).
//! * `POST /v1/embeddings` — 8-float (or `dimensions`) deterministic embeddings,
//!   `encoding_format` `float` or `base64`.
//! * `GET /v1/models`, `GET /v1/models/{id}`.
//! * Control plane (never counted in stats, never subject to behaviours or auth):
//!   `POST /_mock/behavior` (Behavior JSON, sets the default), `POST /_mock/push` (one-shot),
//!   `GET /_mock/stats` ([`MockStats`] JSON), `POST /_mock/reset` (stats, default behaviour and
//!   queue), `POST /_mock/config` (`{"fragmented_writes":bool,"cached_tokens":n,"cache_write_tokens":n,
//!   "required_key":"k"|null,"models":[..]}`, every field optional).
//!
//! # Token accounting (reproducible by tests)
//! * **prompt_tokens** (chat): take `messages` in order; from each message take its `content`
//!   if it is a string, or, if it is an array, the `text` string field of each part that has one
//!   (in order); anything else (null content, images, `tool_calls`, names, roles) contributes
//!   nothing. Concatenate all of these pieces with **no separator** and count them with
//!   `tiktoken` o200k_base (`protocol::tokens::o200k().count(..)`). If the concatenated text is
//!   longer than [`EXACT_COUNT_LIMIT`] bytes (1 MiB) the count is `ceil(bytes / 4)` instead
//!   (o200k is super-linear on huge single words).
//! * **prompt_tokens** (embeddings): sum over inputs; a string input counts as above (same
//!   1 MiB rule per input), a token-array input counts its length.
//! * **cached_tokens** = `min(set_cached_tokens value, prompt_tokens)` (default 0).
//! * **completion_tokens** (text reply): exactly `max_completion_tokens`, else `max_tokens`,
//!   else 24, clamped to `1..=4096`; the reply text re-encodes to exactly that many o200k tokens
//!   and a stream sends exactly one content chunk per token. `finish_reason` is `"length"` when a
//!   limit of at most 4096 was given in the request (the reply reached it), else `"stop"`.
//! * **completion_tokens** (tool call): the o200k count of the arguments string
//!   `{"location":"Paris"}` (5); a stream sends one argument fragment per token.
//!
//! # Behaviours
//! Behaviours apply only to `POST /v1/chat/completions`, `POST /v1/embeddings`,
//! `POST /v1/messages` (and its `count_tokens`) and the Gemini generate calls, after the auth check (a 401 does not
//! consume a pushed behaviour). See [`Behavior`].
//!
//! Stats are updated just *before* the final write of a response (and before closing a cut
//! stream), so a client that has read a whole response always sees it in [`MockHandle::stats`].

mod anthropic;
mod gemini;
mod http;
mod openai;
mod responses;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use gemini::THOUGHT_SIGNATURE as GEMINI_THOUGHT_SIGNATURE;
pub use openai::EXACT_COUNT_LIMIT;

/// The reply text the mock generates for `user`'s last message with `n` tokens (the same on
/// every protocol), for tests that compare what a client received.
pub fn reply_text(user: &str, n: usize) -> String {
    openai::reply_pieces(user, n).concat()
}

/// Namespace for starting the mock vendor.
pub struct MockVendor;

impl MockVendor {
    /// Binds `bind` (use `127.0.0.1:0` for a free port) and serves in a spawned tokio task.
    /// Dropping every [`MockHandle`] does *not* stop the server; call [`MockHandle::shutdown`].
    pub async fn start(bind: SocketAddr) -> std::io::Result<MockHandle> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState::default());
        let (tx, rx) = watch::channel(false);
        let shutdown = Arc::new(tx);
        tokio::spawn(accept_loop(listener, state.clone(), rx));
        tracing::info!(%addr, "mock vendor listening");
        Ok(MockHandle {
            addr,
            state,
            shutdown,
        })
    }
}

/// Starts the mock vendor on `bind` and waits until it is shut down (i.e. forever, unless
/// something calls `shutdown`). Used by the `tollgate mock-vendor` CLI subcommand.
pub async fn run_standalone(bind: SocketAddr) -> std::io::Result<()> {
    let handle = MockVendor::start(bind).await?;
    tracing::info!(base_url = %handle.base_url(), "mock vendor running standalone");
    handle.wait_shutdown().await;
    Ok(())
}

/// Handle to a running mock vendor. Cheap to clone; all clones control the same server.
#[derive(Clone)]
pub struct MockHandle {
    addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl MockHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sets the default behaviour for all following requests.
    pub fn set_behavior(&self, b: Behavior) {
        self.state.lock().default_behavior = b;
    }

    /// Queues a one-shot behaviour, consumed (FIFO) by the next chat/embeddings request before
    /// the default applies.
    pub fn push_behavior(&self, b: Behavior) {
        self.state.lock().queue.push_back(b);
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.state.lock().stats.clone()
    }

    /// Zeroes the counters and forgets the last request.
    pub fn reset_stats(&self) {
        self.state.lock().stats = MockStats::default();
    }

    /// Stops accepting and closes every open connection (in-flight responses are cut).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once [`shutdown`](Self::shutdown) has been called.
    pub async fn wait_shutdown(&self) {
        wait_for_shutdown(self.shutdown.subscribe()).await;
    }

    /// Cached tokens reported per chat request (`min(n, prompt_tokens)`); default 0.
    pub fn set_cached_tokens(&self, n: u64) {
        self.state.cached_tokens.store(n, Ordering::Relaxed);
    }

    /// Anthropic `cache_creation_input_tokens` reported per Messages request
    /// (`min(n, prompt tokens - cached)`); default 0.
    pub fn set_cache_write_tokens(&self, n: u64) {
        self.state.cache_write_tokens.store(n, Ordering::Relaxed);
    }

    /// `http://<addr>/v1beta`, the base URL of the Gemini side.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}/v1beta", self.addr)
    }

    /// When on, each SSE event is written in 2–3 pieces at awkward offsets (mid-`data:`,
    /// mid-JSON, between the two newlines), each piece its own HTTP chunk, with a flush and a
    /// ~1 ms pause between pieces. Non-stream bodies are written in two pieces.
    pub fn set_fragmented_writes(&self, on: bool) {
        self.state.fragmented.store(on, Ordering::Relaxed);
    }

    /// Extra model ids listed by `GET /v1/models` after `mock-small` and `mock-large`.
    pub fn set_models(&self, models: Vec<String>) {
        self.state.lock().models = models;
    }

    /// When `Some(key)`, `/v1/*` requests without `Authorization: Bearer <key>` get 401
    /// (`invalid_api_key`). `None` (default) accepts any key or none.
    pub fn require_key(&self, key: Option<String>) {
        self.state.lock().required_key = key;
    }
}

/// Counters, as seen by the mock. Control-plane requests (`/_mock/*`) are never counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MockStats {
    /// TCP connections accepted (shows whether a client pools and reuses connections).
    pub connections: u64,
    /// Every request received on any non-control path, counted as soon as its head is parsed.
    pub requests: u64,
    /// `POST /v1/chat/completions` requests (counted at parse time, whatever the outcome).
    pub chat_requests: u64,
    /// `POST /v1/embeddings` requests (counted at parse time).
    pub embedding_requests: u64,
    /// Successful chat/embeddings responses fully written (with or without usage).
    pub completed: u64,
    /// Sum of prompt_tokens the mock reported (or would have, for `NoUsage`) for completed and
    /// cut calls.
    pub prompt_tokens: u64,
    /// Sum of completion tokens actually sent (for cut streams: the content chunks sent).
    pub completion_tokens: u64,
    /// Sum of cached_tokens reported (Anthropic `cache_read_input_tokens`, Gemini
    /// `cachedContentTokenCount`).
    pub cached_tokens: u64,
    /// Sum of Anthropic `cache_creation_input_tokens` reported.
    pub cache_write_tokens: u64,
    /// Sum of reasoning tokens reported (Anthropic thinking is not reported separately by
    /// Anthropic, so only Gemini `thoughtsTokenCount` lands here).
    pub reasoning_tokens: u64,
    /// `POST /v1/messages` requests (Anthropic, counted at parse time).
    pub messages_requests: u64,
    /// Gemini `generateContent` / `streamGenerateContent` requests (counted at parse time).
    pub gemini_requests: u64,
    /// `POST /v1/responses` requests (OpenAI Responses, counted at parse time).
    #[serde(default)]
    pub responses_requests: u64,
    /// `POST /v1/messages/count_tokens` requests answered with a count.
    #[serde(default)]
    pub count_tokens_requests: u64,
    /// Last JSON body received on a non-control path (unchanged by bodies that are not JSON).
    pub last_request_body: Option<serde_json::Value>,
    /// Headers of the last non-control request, names lowercased, in received order.
    pub last_request_headers: Vec<(String, String)>,
}

/// What the mock does with a chat/embeddings request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Behavior {
    /// Answer normally.
    Normal,
    /// Wait `ms` before writing the response head, then answer normally.
    Delay { ms: u64 },
    /// Answer an error JSON in the vendor's shape (OpenAI's, Anthropic's with `overloaded_error`
    /// for 529, Google's) with this status (`Content-Length`, keep-alive kept);
    /// `Retry-After: <secs>` header when set. Codes outside `200..=999` are answered as 500.
    Status { code: u16, retry_after: Option<u64> },
    /// Answer `body` verbatim (as JSON) with this status: a vendor's own error text, e.g. one
    /// that quotes the key it was given.
    StatusBody { code: u16, body: String },
    /// Read the whole request, then close the socket (FIN) without writing a byte.
    CloseImmediately,
    /// Stream: write the head, the role chunk and `chunks` content chunks, then close the socket
    /// (FIN): no finish chunk, no usage, no `[DONE]`, no chunked terminator. Non-stream (and
    /// embeddings): write the head (full `Content-Length`) and the first half of the body, then
    /// close. Counts prompt tokens and the content chunks sent; not counted as completed.
    CutStreamAfter { chunks: u32 },
    /// Answer normally but without usage (non-stream: no `usage` field; stream: no usage chunk
    /// even when `stream_options.include_usage` is true). Still counted in stats.
    NoUsage,
    /// Stream: wait `ms` between SSE events (the head and role chunk go out at once). Ignored
    /// for non-stream responses.
    SlowChunks { ms: u64 },
}

/// Usage of one answer in OpenAI terms: `prompt` includes cached and cache-write tokens,
/// `completion` includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reported {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

#[derive(Default)]
pub(crate) struct MockState {
    inner: Mutex<Inner>,
    fragmented: AtomicBool,
    cached_tokens: AtomicU64,
    cache_write_tokens: AtomicU64,
    next_id: AtomicU64,
}

pub(crate) struct Inner {
    stats: MockStats,
    default_behavior: Behavior,
    queue: VecDeque<Behavior>,
    required_key: Option<String>,
    models: Vec<String>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            stats: MockStats::default(),
            default_behavior: Behavior::Normal,
            queue: VecDeque::new(),
            required_key: None,
            models: Vec::new(),
        }
    }
}

impl MockState {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_behavior(&self) -> Behavior {
        let mut inner = self.lock();
        match inner.queue.pop_front() {
            Some(b) => b,
            None => inner.default_behavior.clone(),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records token usage of a completed or cut call.
    pub(crate) fn record_usage(&self, prompt: u64, completion: u64, cached: u64, completed: bool) {
        self.record(
            Reported {
                prompt,
                completion,
                cached,
                ..Reported::default()
            },
            completed,
        );
    }

    /// Records what an Anthropic or Gemini answer reported, in OpenAI terms (see [`Reported`]).
    pub(crate) fn record(&self, r: Reported, completed: bool) {
        let mut inner = self.lock();
        let s = &mut inner.stats;
        s.prompt_tokens += r.prompt;
        s.completion_tokens += r.completion;
        s.cached_tokens += r.cached;
        s.cache_write_tokens += r.cache_write;
        s.reasoning_tokens += r.reasoning;
        if completed {
            s.completed += 1;
        }
    }
}

async fn wait_for_shutdown(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            // Sender gone without a shutdown: never resolve.
            std::future::pending::<()>().await;
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<MockState>, rx: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = wait_for_shutdown(rx.clone()) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                state.lock().stats.connections += 1;
                let state = state.clone();
                let rx = rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_conn(stream, state) => {}
                        _ = wait_for_shutdown(rx) => {}
                    }
                    tracing::trace!(%peer, "mock connection closed");
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "mock accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    tracing::info!("mock vendor stopped accepting");
}

async fn serve_conn(stream: TcpStream, state: Arc<MockState>) {
    let mut conn = http::Conn::new(stream);
    loop {
        let head = match conn.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) | Err(http::HttpError::Io) => return,
            Err(http::HttpError::Status(code, msg)) => {
                let _ = openai::write_plain_error(&mut conn, code, msg, false).await;
                let _ = conn.stream.shutdown().await;
                return;
            }
        };
        let control = head.path.starts_with("/_mock/");
        if !control {
            let mut inner = state.lock();
            let s = &mut inner.stats;
            s.requests += 1;
            if head.method == "POST" {
                match head.path.as_str() {
                    "/v1/chat/completions" => s.chat_requests += 1,
                    "/v1/embeddings" => s.embedding_requests += 1,
                    "/v1/messages" => s.messages_requests += 1,
                    "/v1/responses" => s.responses_requests += 1,
                    p if p.starts_with("/v1beta/models/") => s.gemini_requests += 1,
                    _ => {}
                }
            }
            s.last_request_headers = head.headers.clone();
        }
        let keep_alive = head.keep_alive();
        let body = match conn.read_body(&head).await {
            Ok(body) => body,
            Err(http::HttpError::Io) => return,
            Err(http::HttpError::Status(code, msg)) => {
                let _ = openai::write_plain_error(&mut conn, code, msg, false).await;
                let _ = conn.stream.shutdown().await;
                return;
            }
        };
        match openai::route(&mut conn, &state, &head, body, keep_alive).await {
            Ok(true) => continue,
            Ok(false) => {
                let _ = conn.stream.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "mock connection write failed");
                return;
            }
        }
    }
}
