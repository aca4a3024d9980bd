//! Per-request state, created by `new_ctx` and carried through every `ProxyHttp` phase.

use crate::config::{Channel, Config, Model, Upstream};
use crate::error::GatewayError;
use crate::protocol::openai::ChatStreamMeter;
use crate::protocol::translate::StreamTranslator;
use crate::protocol::Dialect;
use crate::routing::upstream::Admission;
use crate::tenancy::ApiKey;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Unknown,
    Chat,
    Embeddings,
    Models,
    /// `POST /v1/messages/count_tokens`: forwarded to an Anthropic upstream of the channel, else
    /// estimated by the gateway.
    CountTokens,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Unknown => "other",
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::CountTokens => "count_tokens",
        }
    }
}

impl RequestCtx {
    /// The endpoint as recorded and labelled: generation calls are told apart by protocol
    /// (`chat` for chat completions, `messages`, `responses`).
    pub fn endpoint_label(&self) -> &'static str {
        match (self.endpoint, self.inbound) {
            (Endpoint::Chat, Dialect::Anthropic) => "messages",
            (Endpoint::Chat, Dialect::Responses) => "responses",
            (e, _) => e.as_str(),
        }
    }
}

/// The attempt in progress.
pub struct Attempt {
    pub index: usize,
    pub upstream: Arc<Upstream>,
    pub admission: Admission,
    pub started: Instant,
    /// Set once the attempt's outcome was recorded (success, failure or hand-off).
    pub settled: bool,
}

pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub endpoint: Endpoint,
    /// The request path (at most 256 bytes) and method, for the usage record and the log.
    pub path: Option<String>,
    pub method: &'static str,
    /// The configuration this request runs under, fixed at its start (reload-safe).
    pub config: Option<Arc<Config>>,
    pub key: Option<Arc<ApiKey>>,
    pub model_requested: Option<String>,
    pub model: Option<Arc<Model>>,
    pub channel: Option<Arc<Channel>>,
    pub stream: bool,
    pub client_wants_usage: bool,
    /// The parsed request, kept to re-serialise per upstream (model mapping) and for estimates.
    /// `None` while an OpenAI chat body is only scanned (`raw_chat`): the tree is read from the
    /// bytes when something needs it (routing, translation, a token estimate).
    pub body: Option<serde_json::Map<String, serde_json::Value>>,
    /// An OpenAI chat body read without its tree: the caller's bytes and where the upstream
    /// edits go (`protocol::chatbody`). Dropped once the tree is read (the tree may change).
    pub raw_chat: Option<(Bytes, Box<crate::protocol::chatbody::ChatScan>)>,
    /// The bytes sent upstream, and the upstream model name they carry.
    pub upstream_body: Bytes,
    pub upstream_body_model: String,
    pub body_forwarded: bool,
    pub tried: Vec<usize>,
    pub attempt: Option<Attempt>,
    pub attempts: u32,
    /// The id and upstream model of the attempt that produced the response.
    pub served_by: Option<(String, String)>,
    /// A response header went to the client: no retry from here on.
    pub downstream_started: bool,
    pub status: u16,
    pub error: Option<GatewayError>,
    /// Boxed, like the other per-kind parts below: the context is moved around by value in
    /// Pingora's request future, so its common part is kept small.
    pub meter: Option<Box<ChatStreamMeter>>,
    /// The protocol the caller speaks (`/v1/messages`: Anthropic).
    pub inbound: Dialect,
    /// The caller's request translated for each other protocol among the channel's upstreams
    /// (model set per attempt), computed before any upstream is contacted so that a feature
    /// without equivalent is a 400, never a failover.
    pub translations: Vec<(Dialect, serde_json::Map<String, serde_json::Value>)>,
    /// Protocol of the attempt in progress and of the bytes in `upstream_body`.
    pub upstream_dialect: Dialect,
    pub upstream_body_dialect: Option<Dialect>,
    /// Streams other than OpenAI -> OpenAI: translated (or, Anthropic -> Anthropic, metered).
    pub translator: Option<Box<StreamTranslator>>,
    /// A whole body (answer or error) to convert to the caller's protocol at its end.
    pub translate_whole: bool,
    /// A vendor error passed through: kept whole and scrubbed of key-like words at its end.
    pub scrub_error: bool,
    /// The request body could not be read whole: the answer closes the connection.
    pub close_connection: bool,
    /// A large body's share of the buffered-body budget, given back when the request ends.
    pub body_hold: Option<super::body::BodyHold>,
    pub upstream_status: u16,
    /// Anthropic headers of the caller, forwarded to Anthropic upstreams.
    pub anthropic_version: Option<String>,
    pub anthropic_beta: Option<String>,
    /// Non-streamed response body, kept (bounded) to read its usage.
    pub response: Vec<u8>,
    pub response_truncated: bool,
    pub first_token_at: Option<Instant>,
    /// The stream ended with an error event we injected.
    pub stream_error: Option<&'static str>,
    pub counted_inflight: bool,
    /// Credit held for this call until `logging` settles it.
    pub reservation: Option<crate::billing::ledger::Reservation>,
    /// The usage a complete response reported, read when its end passed through (the charge
    /// was logged then), with its source and cost, so that `logging` settles exactly that.
    pub final_usage: Option<Box<(crate::protocol::openai::Usage, &'static str, i64)>>,
    /// Where the charge went in the charge log (`billing::chargelog`).
    pub charge_ticket: Option<crate::billing::chargelog::Ticket>,
    /// The time written to the charge log, which the usage record then carries too: a record
    /// rebuilt from the log after a crash is then the same (request id, time) as the one the
    /// recorder may already have stored, and is applied once (PostgreSQL's unique key).
    pub charge_ts_ms: Option<i64>,
    pub cost_nano: i64,
    /// What the complexity router decided, for `model: "auto"` requests.
    pub route: Option<Box<super::autoroute::RouteNote>>,
    /// `count_tokens`: where the count comes from (`vendor` or `estimate`), answered in the
    /// `x-tollgate-token-count` header.
    pub token_count: Option<&'static str>,
    /// What the tenant's prompt guardrails found (`email=2,secrets=1`), for the usage record.
    pub guardrails: Option<String>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            request_id: new_request_id(),
            started: Instant::now(),
            endpoint: Endpoint::Unknown,
            path: None,
            method: "-",
            config: None,
            key: None,
            model_requested: None,
            route: None,
            token_count: None,
            guardrails: None,
            final_usage: None,
            charge_ticket: None,
            charge_ts_ms: None,
            model: None,
            channel: None,
            stream: false,
            client_wants_usage: false,
            body: None,
            raw_chat: None,
            upstream_body: Bytes::new(),
            upstream_body_model: String::new(),
            body_forwarded: false,
            tried: Vec::new(),
            attempt: None,
            attempts: 0,
            served_by: None,
            downstream_started: false,
            status: 0,
            error: None,
            meter: None,
            inbound: Dialect::OpenAi,
            translations: Vec::new(),
            upstream_dialect: Dialect::OpenAi,
            upstream_body_dialect: None,
            translator: None,
            translate_whole: false,
            scrub_error: false,
            close_connection: false,
            body_hold: None,
            upstream_status: 0,
            anthropic_version: None,
            anthropic_beta: None,
            response: Vec::new(),
            response_truncated: false,
            first_token_at: None,
            stream_error: None,
            counted_inflight: false,
            reservation: None,
            cost_nano: 0,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// `req_` + the time in milliseconds (12 hex digits) + 80 random bits. Time-ordered, so the
/// unique indexes on usage and ledger rows grow at their right edge instead of at random pages.
pub(crate) fn new_request_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let r: u128 = rand::random::<u128>() >> 48;
    format!("req_{ms:012x}{r:020x}")
}
