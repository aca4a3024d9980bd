//! The data plane: a Pingora `ProxyHttp` whose phases each delegate to a small piece of logic.
//!
//! Request path (see docs/architecture.md for the failure rules):
//! 1. `request_filter`: route (OpenAI or Anthropic caller), authenticate (hash lookup in a
//!    snapshot), read the bounded body, validate it, resolve the model and the channel, translate
//!    the request for the other protocols among the channel's upstreams. Errors are answered
//!    here, in the caller's shape, before any upstream is contacted.
//! 2. `upstream_peer`: the balancer picks the next upstream of the channel not yet tried; the
//!    body is re-serialised for that upstream's model name.
//! 3. `upstream_request_filter` / `request_body_filter`: a fresh upstream request carrying the
//!    upstream's own credential (never the caller's) and the rewritten body.
//! 4. `upstream_response_filter`: a 429 or 5xx answered before anything reached the client is
//!    turned into a retryable error so Pingora asks `upstream_peer` for another upstream.
//!    Connect errors and timeouts arrive through `fail_to_connect` / `error_while_proxy`.
//! 5. `response_body_filter`: SSE metering, usage-chunk hiding, stream and body translation to
//!    the caller's protocol, and an explicit error event when a stream ends without its
//!    terminator.
//! 6. `logging`: settle the attempt, emit the usage event and metrics.

pub mod autoroute;
pub mod body;
pub mod conn;
pub mod ctx;
mod hold;
pub mod usage;

use crate::app::App;
use crate::config::{Config, ModelKind};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::protocol::openai::{self, ChatStreamMeter};
use crate::protocol::translate::{self, Names, StreamTranslator};
use crate::protocol::{anthropic, chatbody, gemini, responses, Dialect};
use crate::routing::balancer::{self, NoPick};
use crate::routing::upstream::Admission;
use crate::tenancy::unix_now;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ctx::{Attempt, Endpoint, RequestCtx};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wall-clock milliseconds (rate-limit windows are aligned to real minutes).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Response header of `count_tokens`: `vendor` (Anthropic's own count) or `estimate`.
pub const TOKEN_COUNT_HEADER: &str = "x-tollgate-token-count";
/// Header a caller uses to pick one of the channels its key may use.
pub const CHANNEL_HEADER: &str = "x-tollgate-channel";
/// The request id, on the upstream request and on the response.
const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");
const X_TOLLGATE_CHANNEL: http::header::HeaderName =
    http::header::HeaderName::from_static("x-tollgate-channel");
/// Largest non-streamed response kept in memory to read its usage.
const MAX_KEPT_RESPONSE: usize = 16 * 1024 * 1024;

pub struct Gateway {
    pub app: Arc<App>,
}

enum Admitted {
    /// Go on to an upstream.
    Proxy,
    /// The gateway answered by itself (e.g. `/v1/models`).
    Answered,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Self {
        Gateway { app }
    }

    /// Everything `request_filter` decides; an `Err` is answered to the caller.
    /// Rate limits: on this node's counts (embedded mode), or, in cluster mode when a subject
    /// has an RPM, first on this node's view of the fleet (a cheap refusal) and then against the
    /// fleet's counters in Redis in one atomic step, so that N nodes together admit no more than
    /// the limit. While Redis does not answer, each node decides on what it knows (as its
    /// periodic sync does).
    async fn admit_rates(
        &self,
        subjects: &[(
            crate::tenancy::limits::Scope,
            i64,
            crate::tenancy::limits::Limits,
        )],
    ) -> std::result::Result<(), crate::tenancy::limits::Limited> {
        let limiter = &self.app.limiter;
        let now = now_ms();
        let fleet = match self.app.ledger.fleet() {
            Some(f) if !limiter.is_handed_over() && subjects.iter().any(|s| s.2.rpm.is_some()) => f,
            _ => return limiter.admit(now, subjects),
        };
        limiter.check(now, subjects)?;
        let named: Vec<(String, u64)> = subjects
            .iter()
            .filter(|s| !s.2.is_unlimited())
            .map(|(scope, id, l)| {
                (
                    crate::tenancy::limits::subject_name(*scope, *id),
                    l.rpm.map_or(0, u64::from),
                )
            })
            .collect();
        match fleet.allowances().bank().admit_request(now, &named).await {
            Ok(None) => {
                limiter.count(now, subjects, true);
                Ok(())
            }
            Ok(Some(i)) => {
                let refused = subjects.iter().filter(|s| !s.2.is_unlimited()).nth(i);
                let (scope, limit) =
                    refused.map_or((subjects[0].0, 0), |s| (s.0, s.2.rpm.map_or(0, u64::from)));
                Err(crate::tenancy::limits::Limited {
                    scope,
                    tokens: false,
                    limit,
                    retry_after_secs: crate::tenancy::limits::retry_after(now),
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster rate limit: redis did not answer; deciding on this node's counts");
                limiter.admit(now, subjects)
            }
        }
    }

    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<Admitted, GatewayError> {
        let cfg = self.app.config();
        ctx.config = Some(cfg.clone());
        // Pingora keeps an idle HTTP/1.1 connection forever; this bounds the wait for the next
        // request (a `Connection: close` answer overrides it).
        if session.get_keepalive().is_some() {
            // Requests sent before the previous answer arrived are served in order (RFC 9112
            // 9.3.2), not dropped.
            session.set_pipelining_enabled(true);
            // A client that half-closes after its request (FIN) still gets the answer (RFC
            // 9112 9.6); one that is gone shows when the answer's first write fails.
            session.set_abort_on_close(false);
            if session.get_keepalive_reuses_remaining() == Some(0) {
                // The connection's last request (`keepalive_requests`): say so in the answer.
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(cfg.server.keepalive_timeout_seconds));
            }
        }

        {
            let req = session.req_header();
            let lim = &cfg.server;
            if req.headers.len() > lim.max_headers {
                ctx.close_connection = true;
                return Err(GatewayError::HeadersTooLarge(format!(
                    "The request has {} headers; at most {} are accepted.",
                    req.headers.len(),
                    lim.max_headers
                )));
            }
            let head_bytes = req.uri.path_and_query().map_or(0, |p| p.as_str().len())
                + req
                    .headers
                    .iter()
                    .map(|(n, v)| n.as_str().len() + v.len() + 4)
                    .sum::<usize>();
            if head_bytes > lim.max_header_bytes {
                ctx.close_connection = true;
                return Err(GatewayError::HeadersTooLarge(format!(
                    "The request's headers are {head_bytes} bytes; at most {} are accepted.",
                    lim.max_header_bytes
                )));
            }
        }
        let (endpoint, method_ok) = {
            let req = session.req_header();
            let full = req.uri.path();
            // Kept only when it says more than the endpoint (`usage::canonical_path`): the
            // common call allocates nothing for it.
            if !matches!(
                full,
                "/v1/chat/completions"
                    | "/v1/messages"
                    | "/v1/responses"
                    | "/v1/messages/count_tokens"
                    | "/v1/embeddings"
                    | "/v1/models"
            ) {
                let cut = crate::protocol::openai::floor_char_boundary(full, 256);
                ctx.path = Some(full.get(..cut).unwrap_or("").to_string());
            }
            ctx.method = match req.method {
                http::Method::GET => "GET",
                http::Method::POST => "POST",
                http::Method::PUT => "PUT",
                http::Method::DELETE => "DELETE",
                http::Method::HEAD => "HEAD",
                http::Method::OPTIONS => "OPTIONS",
                http::Method::PATCH => "PATCH",
                _ => "OTHER",
            };
            let path = full.strip_prefix("/v1").unwrap_or(full);
            let anthropic_caller = req.headers.contains_key("anthropic-version")
                || req.headers.contains_key("x-api-key");
            let (ep, inbound) = match path {
                "/chat/completions" => (Endpoint::Chat, Dialect::OpenAi),
                "/embeddings" => (Endpoint::Embeddings, Dialect::OpenAi),
                "/messages" => (Endpoint::Chat, Dialect::Anthropic),
                "/responses" => (Endpoint::Chat, Dialect::Responses),
                "/messages/count_tokens" => (Endpoint::CountTokens, Dialect::Anthropic),
                "/models" if anthropic_caller => (Endpoint::Models, Dialect::Anthropic),
                "/models" => (Endpoint::Models, Dialect::OpenAi),
                _ => {
                    ctx.inbound = if anthropic_caller {
                        Dialect::Anthropic
                    } else {
                        Dialect::OpenAi
                    };
                    // A caller with a valid key gets its 404 recorded against that key.
                    ctx.key = caller_key(session)
                        .and_then(|t| self.app.keys.authenticate(t, unix_now()).ok());
                    let req = session.req_header();
                    return Err(GatewayError::NotFound(format!(
                        "Unknown path `{}`. This gateway serves /v1/chat/completions, /v1/responses, /v1/messages, /v1/messages/count_tokens, /v1/embeddings and /v1/models.",
                        clip(req.uri.path(), 200)
                    )));
                }
            };
            ctx.inbound = inbound;
            if inbound == Dialect::Anthropic {
                let h = |n: &str| {
                    req.headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                ctx.anthropic_version = h("anthropic-version");
                ctx.anthropic_beta = h("anthropic-beta");
            }
            let want = if ep == Endpoint::Models {
                http::Method::GET
            } else {
                http::Method::POST
            };
            (ep, req.method == want)
        };
        ctx.endpoint = endpoint;
        if !method_ok {
            ctx.key =
                caller_key(session).and_then(|t| self.app.keys.authenticate(t, unix_now()).ok());
            let websocket = session
                .get_header(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if websocket && ctx.inbound == Dialect::Responses {
                return Err(GatewayError::UpgradeRequired(
                    "The Responses API is served over HTTP only on this gateway (no WebSocket mode): send POST /v1/responses.".into(),
                ));
            }
            return Err(GatewayError::MethodNotAllowed(format!(
                "Method {} is not allowed on {}",
                session.req_header().method,
                session.req_header().uri.path()
            )));
        }

        let key = {
            let token = caller_key(session).ok_or_else(|| {
                GatewayError::MissingKey(
                    "You didn't provide an API key. Send it in the Authorization header (`Authorization: Bearer <key>`) or in `x-api-key`.".into(),
                )
            })?;
            self.app.keys.authenticate(token, unix_now()).map_err(|f| {
                use crate::tenancy::keys::AuthFailure;
                GatewayError::InvalidKey(
                    match f {
                        AuthFailure::Unknown => "Incorrect API key provided.",
                        AuthFailure::Revoked => "This API key has been revoked.",
                        AuthFailure::Expired => "This API key has expired.",
                    }
                    .into(),
                )
            })?
        };
        ctx.key = Some(key.clone());

        // Network allow-lists (the key's and its tenant's); nothing to do for most keys.
        if let Some(rule) = &key.network {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let ip = crate::tenancy::client_ip(
                peer,
                session.get_header("x-forwarded-for").map(|v| v.as_bytes()),
                &cfg.server.trusted_proxies,
            );
            if let Some(scope) = rule.refuses(ip) {
                crate::metrics::METRICS
                    .network_refusals
                    .with_label_values(&[scope])
                    .inc();
                return Err(GatewayError::Forbidden(format!(
                    "This API key may not be used from {} (the {} allow-list).",
                    ip.map_or_else(|| "an unknown address".to_string(), |i| i.to_string()),
                    if scope == "key" { "key's" } else { "tenant's" }
                )));
            }
        }

        if endpoint == Endpoint::Models {
            let body = models_list(&cfg, &key, ctx.inbound);
            ctx.status = 200;
            write_json(session, ctx, 200, body, None, false).await;
            return Ok(Admitted::Answered);
        }

        let channel = {
            let chosen = session
                .get_header(CHANNEL_HEADER)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
            let name = match chosen {
                Some(n) if !n.is_empty() => {
                    if !key.may_use_channel(&n) {
                        return Err(GatewayError::Forbidden(format!(
                            "This API key may not use channel `{}`.",
                            clip(&n, 200)
                        )));
                    }
                    n
                }
                _ => key.default_channel.clone(),
            };
            cfg.channel(&name).cloned().ok_or_else(|| {
                GatewayError::NoUpstream(format!(
                    "Channel `{name}` is not configured on this gateway."
                ))
            })?
        };
        ctx.channel = Some(channel.clone());

        // Rate limits before the body is read: an over-limit caller costs as little as possible.
        let subjects = key.rate_subjects();
        if !subjects.is_empty() {
            self.admit_rates(&subjects)
                .await
                .map_err(|l| GatewayError::RateLimited {
                    message: format!(
                        "Rate limit reached for this {}: {} {} per minute. Retry in {} s.",
                        l.scope.as_str(),
                        l.limit,
                        if l.tokens { "tokens" } else { "requests" },
                        l.retry_after_secs
                    ),
                    retry_after: l.retry_after_secs,
                })?;
        }

        let (mut raw, hold) = body::read_bounded(
            session,
            cfg.server.max_body_bytes,
            cfg.server.max_buffered_body_bytes,
            cfg.server.min_body_rate,
        )
        .await
        .inspect_err(|_| ctx.close_connection = true)?;
        ctx.body_hold = hold;

        // The tenant's prompt guardrails, on the body as received (before any translation).
        if let Some(g) = &key.guardrails {
            let mut hits = crate::guardrails::Hits::default();
            let verdict = g.scan(&raw, &mut hits);
            ctx.guardrails = hits.summary();
            match verdict {
                crate::guardrails::Verdict::Pass => {}
                crate::guardrails::Verdict::Block(detector) => {
                    return Err(GatewayError::bad_request(format!(
                        "The request was blocked by this organization's `{detector}` guardrail."
                    )));
                }
                crate::guardrails::Verdict::Redacted(b) => raw = bytes::Bytes::from(b),
            }
        }

        // What the credit hold needs to know of the prompt (`billing::hold`).
        let mut shape = crate::billing::hold::PromptShape {
            bytes: raw.len() as u64,
            ..Default::default()
        };
        type Parsed = (
            Option<serde_json::Map<String, serde_json::Value>>,
            String,
            ModelKind,
            Option<u64>,
        );
        let mut parse = || -> std::result::Result<Parsed, GatewayError> {
            Ok(match endpoint {
                Endpoint::Chat if ctx.inbound == Dialect::Anthropic => {
                    let (obj, info) = anthropic::parse_messages_request(&raw)?;
                    ctx.stream = info.stream;
                    shape.media = info.media;
                    shape.tools = obj.get("tools").is_some_and(|t| !t.is_null());
                    (
                        Some(obj),
                        info.model,
                        ModelKind::Chat,
                        Some(info.max_tokens),
                    )
                }
                Endpoint::Chat if ctx.inbound == Dialect::Responses => {
                    let (obj, info) = responses::parse_request(&raw)?;
                    ctx.stream = info.stream;
                    shape.media = info.media;
                    shape.tools = info.has_tools;
                    (
                        Some(obj),
                        info.model,
                        ModelKind::Chat,
                        info.max_output_tokens,
                    )
                }
                Endpoint::CountTokens => {
                    let obj = match serde_json::from_slice::<serde_json::Value>(&raw) {
                        Ok(serde_json::Value::Object(m)) => m,
                        _ => {
                            return Err(GatewayError::bad_request(
                                "The body must be a JSON object.",
                            ))
                        }
                    };
                    let model = obj
                        .get("model")
                        .and_then(serde_json::Value::as_str)
                        .filter(|m| !m.is_empty())
                        .ok_or_else(|| GatewayError::BadRequest {
                            message: "model: Field required".into(),
                            param: Some("model".into()),
                        })?
                        .to_string();
                    (Some(obj), model, ModelKind::Chat, Some(0))
                }
                Endpoint::Chat => {
                    // The common body is scanned, not built into a tree (`protocol::chatbody`).
                    let (obj, info) = match chatbody::scan(&raw) {
                        Some(mut scan) => {
                            let info = std::mem::take(&mut scan.info);
                            ctx.raw_chat = Some((raw.clone(), Box::new(scan)));
                            (None, info)
                        }
                        None => {
                            let (obj, info) = openai::parse_chat_request(&raw)?;
                            (Some(obj), info)
                        }
                    };
                    ctx.stream = info.stream;
                    ctx.client_wants_usage = info.client_wants_usage;
                    shape.media = info.media;
                    shape.tools = info.has_tools;
                    let out = info
                        .max_tokens
                        .map(|m| m.saturating_mul(u64::from(info.n.max(1))));
                    (obj, info.model, ModelKind::Chat, out)
                }
                Endpoint::Embeddings => {
                    let (obj, model) = openai::parse_embeddings_request(&raw)?;
                    (Some(obj), model, ModelKind::Embedding, Some(0))
                }
                Endpoint::Models | Endpoint::Unknown => {
                    Err(GatewayError::Internal("unroutable endpoint".into()))?
                }
            })
        };
        let parsed = parse();
        let (mut obj, mut model_name, wanted_kind, max_output) = match parsed {
            Ok(p) => p,
            Err(e) => {
                // What the caller asked, as far as the body tells, for the usage record.
                if let Ok(serde_json::Value::Object(m)) =
                    serde_json::from_slice::<serde_json::Value>(&raw)
                {
                    ctx.model_requested = m
                        .get("model")
                        .and_then(serde_json::Value::as_str)
                        .map(|s| s.chars().take(200).collect());
                    ctx.stream = m.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
                }
                return Err(e);
            }
        };
        drop(raw);
        // What a client sent is echoed and logged only in part (a 1 MiB model name is not).
        ctx.model_requested = Some(clip(&model_name, 200).into_owned());
        let mut channel = channel;
        // The router reads OpenAI chat bodies; Anthropic callers name concrete models.
        if endpoint == Endpoint::Chat && ctx.inbound == Dialect::OpenAi {
            if let Some(mode) = crate::router::parse_auto_model(&model_name) {
                let hint = session
                    .get_header(crate::router::HINT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let (routed, tier_channel, note) = autoroute::route(
                    &self.app,
                    &cfg,
                    &key,
                    hint.as_deref(),
                    tree(&mut obj, ctx)?,
                    mode,
                    &channel,
                )?;
                model_name = routed;
                if let Some(c) = tier_channel {
                    channel = c;
                    ctx.channel = Some(channel.clone());
                }
                ctx.route = Some(Box::new(note));
            }
        }
        let model = cfg.model(&model_name).cloned().ok_or_else(|| {
            GatewayError::ModelNotFound(format!(
                "The model `{}` does not exist or you do not have access to it.",
                clip(&model_name, 200)
            ))
        })?;
        if model.kind != wanted_kind {
            return Err(GatewayError::BadRequest {
                message: format!(
                    "The model `{}` is {} model and cannot be used on this endpoint.",
                    model.name,
                    if model.kind == ModelKind::Chat {
                        "a chat"
                    } else {
                        "an embedding"
                    }
                ),
                param: Some("model".into()),
            });
        }
        if !key.may_use_model(&model.name) {
            return Err(GatewayError::ModelNotFound(format!(
                "The model `{}` does not exist or you do not have access to it.",
                clip(&model_name, 200)
            )));
        }
        if !channel.serves(&model.name) {
            return Err(GatewayError::ModelNotFound(format!(
                "The model `{}` is not served on channel `{}`.",
                clip(&model_name, 200),
                channel.name
            )));
        }
        if endpoint == Endpoint::CountTokens {
            // Anthropic's own count when the channel has an Anthropic upstream for this model:
            // only those may serve the call (the others count as tried). Free: no credit hold.
            let others: Vec<usize> = channel
                .upstreams
                .iter()
                .enumerate()
                .filter(|(_, u)| {
                    u.protocol != Dialect::Anthropic
                        || !u.models.contains(&model.name)
                        || u.disabled.is_some()
                })
                .map(|(i, _)| i)
                .collect();
            if others.len() < channel.upstreams.len() {
                ctx.tried = others;
                ctx.token_count = Some("vendor");
                ctx.model = Some(model);
                ctx.body = obj;
                return Ok(Admitted::Proxy);
            }
            // Else counted here with the gateway's tokenizer (o200k): an estimate, said so.
            let n = estimate_input_tokens(std::mem::take(tree(&mut obj, ctx)?)).await?;
            ctx.status = 200;
            ctx.token_count = Some("estimate");
            write_json(session, ctx, 200, count_body(n), None, false).await;
            return Ok(Admitted::Answered);
        }
        // Translate now for every other protocol among the upstreams that may serve this call:
        // a feature without equivalent is the caller's 400 before anything is sent.
        let default_max = model
            .max_output_tokens
            .unwrap_or(cfg.billing.default_max_output_tokens);
        for up in channel
            .upstreams
            .iter()
            .filter(|u| u.models.contains(&model.name) && u.disabled.is_none())
        {
            let to = up.dialect_for(ctx.inbound);
            if to == ctx.inbound || ctx.translations.iter().any(|(d, _)| *d == to) {
                continue;
            }
            if endpoint == Endpoint::Embeddings {
                return Err(GatewayError::bad_request(format!(
                    "Embeddings are served by OpenAI-compatible upstreams only; `{}` is served by a {} upstream on this channel.",
                    model.name,
                    to.display()
                )));
            }
            let obj = &*tree(&mut obj, ctx)?;
            let translated = match (ctx.inbound, to) {
                (Dialect::OpenAi, Dialect::Anthropic) => anthropic::from_openai(obj, default_max)?,
                (Dialect::OpenAi, Dialect::Gemini) => gemini::from_openai(obj)?,
                (Dialect::Anthropic, Dialect::OpenAi) => {
                    anthropic::to_openai(obj, Dialect::OpenAi)?
                }
                (Dialect::Anthropic, Dialect::Gemini) => gemini::from_anthropic(obj)?,
                (Dialect::Responses, Dialect::OpenAi) => responses::to_chat(obj)?,
                (Dialect::Responses, Dialect::Anthropic) => {
                    anthropic::from_openai(&responses::to_chat(obj)?, default_max)?
                }
                (Dialect::Responses, Dialect::Gemini) => {
                    gemini::from_openai(&responses::to_chat(obj)?)?
                }
                _ => {
                    return Err(GatewayError::Internal(
                        "no translation for this pair".into(),
                    ))
                }
            };
            let mut translated = translated;
            crate::protocol::fit_reasoning(to, &mut translated, model.reasoning);
            ctx.translations.push((to, translated));
        }
        if !cfg.billing.enabled {
            ctx.model = Some(model);
            ctx.body = obj;
            return Ok(Admitted::Proxy);
        }
        // Hold the worst case before anything is sent: the prompt's bound at its dearest price
        // plus every output token the call may produce, on whichever upstream serves it: a
        // translation may raise the limit (a thinking budget Anthropic counts inside
        // `max_tokens`, one Gemini may add to `maxOutputTokens`) and is what the vendor counts.
        let max_output = ctx
            .translations
            .iter()
            .map(|(d, body)| crate::protocol::max_output_tokens(*d, body, default_max))
            .fold(max_output.unwrap_or(default_max), u64::max);
        for (_, body) in &ctx.translations {
            shape.bytes = shape.bytes.max(json_len(body));
        }
        let inbound = ctx.inbound;
        let raw_chat = ctx.raw_chat.as_ref().map(|(raw, _)| raw.clone());
        let reservation = hold::hold(
            &self.app,
            &cfg,
            hold::Call {
                key: &key,
                model: &model,
                channel: &channel,
                shape,
                max_output,
            },
            || countable(endpoint, inbound, obj.as_ref(), raw_chat.as_deref()),
        )
        .await?;
        ctx.reservation = Some(reservation);
        ctx.model = Some(model);
        ctx.body = obj;
        Ok(Admitted::Proxy)
    }

    /// Ids of a translated response: the request id and the model name the caller asked for.
    fn names(&self, ctx: &RequestCtx) -> Names {
        Names {
            id: ctx.request_id.clone(),
            model: ctx
                .model_requested
                .clone()
                .unwrap_or_else(|| ctx.upstream_body_model.clone()),
            created: unix_now().max(0) as u64,
            tools: match (ctx.inbound, ctx.body.as_ref()) {
                (Dialect::Responses, Some(b)) => responses::tool_kinds(b),
                _ => Vec::new(),
            },
            json_tool: ctx.upstream_dialect == Dialect::Anthropic
                && ctx
                    .translations
                    .iter()
                    .any(|(d, b)| *d == Dialect::Anthropic && anthropic::has_json_tool(b)),
        }
    }

    /// A whole upstream body (kept in `ctx.response`) in the caller's protocol: the answer
    /// translated, or the upstream's error re-worded in the caller's error shape.
    fn convert_whole(&self, ctx: &RequestCtx) -> Vec<u8> {
        let status = ctx.upstream_status;
        if !(200..300).contains(&status) {
            return translate::error_to(ctx.inbound, status, &ctx.response).1;
        }
        let reply = if ctx.response_truncated {
            None
        } else {
            translate::reply_from(ctx.upstream_dialect, &ctx.response)
        };
        match reply {
            Some(mut r) => {
                let names = self.names(ctx);
                if names.json_tool {
                    translate::unwrap_json_tool(&mut r);
                }
                translate::reply_to(ctx.inbound, &r, &names)
            }
            None => GatewayError::UpstreamFailed(format!(
                "The upstream's {} answer could not be read.",
                ctx.upstream_dialect.display()
            ))
            .body_for(ctx.inbound)
            .to_vec(),
        }
    }

    /// Whether another attempt is possible after the current one failed.
    fn can_retry(&self, ctx: &RequestCtx) -> bool {
        let (Some(channel), Some(model)) = (ctx.channel.as_ref(), ctx.model.as_ref()) else {
            return false;
        };
        if ctx.downstream_started || ctx.attempts >= channel.retry.max_attempts {
            return false;
        }
        channel.upstreams.iter().enumerate().any(|(i, u)| {
            !ctx.tried.contains(&i)
                && u.disabled.is_none()
                && u.models.contains(&model.name)
                && u.state.looks_available()
        })
    }

    /// Record a failed attempt once (breaker, metrics), and remember the caller-facing error.
    fn fail_attempt(
        &self,
        ctx: &mut RequestCtx,
        outcome: &'static str,
        err: GatewayError,
        breaker: bool,
    ) {
        if let Some(a) = ctx.attempt.as_mut() {
            if !a.settled {
                a.settled = true;
                a.upstream.state.on_end();
                METRICS
                    .attempts
                    .with_label_values(&[&a.upstream.id, outcome])
                    .inc();
                if breaker {
                    if let Some(ch) = ctx.channel.as_ref() {
                        if a.upstream
                            .state
                            .record_failure(&ch.breaker, a.admission == Admission::Probe)
                        {
                            METRICS
                                .breaker_opened
                                .with_label_values(&[&a.upstream.id])
                                .inc();
                            tracing::warn!(upstream = %a.upstream.id, "circuit breaker opened");
                            self.app.export_upstream_health();
                        }
                    }
                } else if a.admission == Admission::Probe {
                    a.upstream.state.release_probe();
                }
                if !ctx.tried.contains(&a.index) {
                    ctx.tried.push(a.index);
                }
            }
        }
        ctx.error = Some(err);
    }

    fn build_peer(
        &self,
        ctx: &RequestCtx,
        up: &crate::config::Upstream,
        addr: std::net::SocketAddr,
    ) -> HttpPeer {
        let t = ctx.channel.as_ref().map(|c| c.timeouts);
        let mut peer = HttpPeer::new(addr, up.base.tls, up.base.host.clone());
        if let Some(t) = t {
            let remaining = t
                .total
                .saturating_sub(ctx.started.elapsed())
                .max(Duration::from_millis(1));
            // One read timer per upstream connection: it bounds the wait for the response header
            // and every gap between body chunks. Streams use the longer of first-byte and idle;
            // a non-streamed answer arrives only when generation ends, so it gets first-byte.
            let read = if ctx.stream {
                t.first_byte.max(t.idle)
            } else {
                t.first_byte
            };
            peer.options.connection_timeout = Some(t.connect);
            peer.options.total_connection_timeout = Some(t.connect * 2);
            peer.options.read_timeout = Some(read.min(remaining));
            peer.options.write_timeout = Some(t.idle.min(remaining));
        }
        peer.options.idle_timeout = Some(Duration::from_secs(90));
        peer
    }
}

/// The prompt for the hold's exact count, in the shape the counter reads: the caller's tree
/// (an Anthropic body in its OpenAI form), else the scanned bytes read anew (the scan is kept
/// for the upstream body).
fn countable(
    endpoint: Endpoint,
    inbound: Dialect,
    obj: Option<&serde_json::Map<String, serde_json::Value>>,
    raw: Option<&[u8]>,
) -> std::result::Result<Option<hold::Countable>, GatewayError> {
    let owned = match (obj, raw) {
        (Some(o), _) => o.clone(),
        (None, Some(raw)) => openai::parse_chat_request(raw)?.0,
        (None, None) => return Ok(None),
    };
    Ok(Some(match (endpoint, inbound) {
        (Endpoint::Embeddings, _) => hold::Countable::Embedding(owned),
        (_, Dialect::Anthropic) => {
            hold::Countable::Chat(anthropic::to_openai(&owned, Dialect::Gemini)?)
        }
        (_, Dialect::Responses) => hold::Countable::Chat(responses::to_chat(&owned)?),
        _ => hold::Countable::Chat(owned),
    }))
}

/// Bytes of a body as serialised, without keeping the serialisation.
fn json_len(body: &serde_json::Map<String, serde_json::Value>) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail; a map always serialises.
    let _ = serde_json::to_writer(&mut c, body);
    c.0
}

/// The request's tree, read from the scanned bytes on first need; the scan is dropped then,
/// since whoever asked for the tree may change it.
fn tree<'a>(
    obj: &'a mut Option<serde_json::Map<String, serde_json::Value>>,
    ctx: &mut RequestCtx,
) -> std::result::Result<&'a mut serde_json::Map<String, serde_json::Value>, GatewayError> {
    if obj.is_none() {
        if let Some((raw, _)) = ctx.raw_chat.take() {
            *obj = Some(openai::parse_chat_request(&raw)?.0);
        }
    }
    obj.as_mut()
        .ok_or_else(|| GatewayError::Internal("The request body was not kept.".into()))
}

/// At most `max` bytes of a client-sent string (cut at a character boundary, marked `...`), for
/// what is echoed in answers and logs.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let cut = crate::protocol::openai::floor_char_boundary(s, max);
    std::borrow::Cow::Owned(format!("{}...", s.get(..cut).unwrap_or("")))
}

/// The caller's key: `Authorization: Bearer <key>`, else `x-api-key` (Anthropic clients).
fn caller_key(session: &Session) -> Option<&str> {
    bearer_token(session).or_else(|| {
        let v = session.get_header("x-api-key")?.to_str().ok()?.trim();
        (!v.is_empty()).then_some(v)
    })
}

fn bearer_token(session: &Session) -> Option<&str> {
    let v = session
        .get_header(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// `GET /v1/models`: what this key may call through the channels it may use, in the caller's
/// format (Anthropic's when the request carries `anthropic-version` or `x-api-key`).
fn models_list(cfg: &Config, key: &crate::tenancy::ApiKey, caller: Dialect) -> Bytes {
    let channels: Vec<_> = cfg
        .channels
        .iter()
        .filter(|c| key.may_use_channel(&c.name))
        .collect();
    let data: Vec<serde_json::Value> = cfg
        .models
        .iter()
        .filter(|m| key.may_use_model(&m.name) && channels.iter().any(|c| c.serves(&m.name)))
        // Anthropic's list names what /v1/messages can call: no embedding models.
        .filter(|m| caller != Dialect::Anthropic || m.kind == ModelKind::Chat)
        .map(|m| {
            if caller == Dialect::Anthropic {
                return serde_json::json!({
                    "type": "model",
                    "id": m.name,
                    "display_name": m.name,
                    "created_at": "1970-01-01T00:00:00Z",
                });
            }
            serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": if m.vendor.is_empty() { "tollgate" } else { m.vendor.as_str() },
            })
        })
        .collect();
    if caller == Dialect::Anthropic {
        let first = data.first().and_then(|m| m.get("id")).cloned();
        let last = data.last().and_then(|m| m.get("id")).cloned();
        return Bytes::from(
            serde_json::json!({ "data": data, "has_more": false, "first_id": first, "last_id": last })
                .to_string(),
        );
    }
    Bytes::from(serde_json::json!({ "object": "list", "data": data }).to_string())
}

/// `count_tokens` answered by the gateway: the Messages request in the OpenAI shape, counted
/// with o200k like prompts without vendor usage (on the blocking pool: tokenizing is CPU work).
async fn estimate_input_tokens(
    obj: serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<u64, GatewayError> {
    tokio::task::spawn_blocking(move || {
        anthropic::to_openai(&obj, Dialect::Gemini)
            .map(|o| crate::protocol::TokenCounter::estimate_chat_prompt(&o))
    })
    .await
    .map_err(|_| GatewayError::Internal("token counting failed".into()))?
    .map_err(|e| GatewayError::BadRequest {
        // No vendor is involved in an estimate: say what cannot be counted, not whose API.
        message: match e.param.as_deref() {
            Some(p) => format!(
                "`{p}` cannot be counted by the gateway's token estimate (no Anthropic upstream serves this model on the channel); remove it to count the rest."
            ),
            None => e.message.clone(),
        },
        param: e.param,
    })
}

fn count_body(n: u64) -> Bytes {
    Bytes::from(serde_json::json!({ "input_tokens": n }).to_string())
}

/// Write a complete JSON response in one go (header + body), ignoring a vanished client.
async fn write_json(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    body: Bytes,
    retry_after: Option<u64>,
    close: bool,
) {
    let resp = (|| -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header("x-request-id", &ctx.request_id)?;
        if let Some(s) = retry_after {
            resp.insert_header(http::header::RETRY_AFTER, s)?;
        }
        if let (Some(source), 200) = (ctx.token_count, status) {
            resp.insert_header(TOKEN_COUNT_HEADER, source)?;
        }
        Ok(resp)
    })();
    let Ok(resp) = resp else { return };
    if close {
        // Pingora does not reuse a client connection after a proxying failure; say so in the
        // response (`Connection: close`) so the client does not send its next request into a
        // closing socket.
        session.as_mut().set_keepalive(None);
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// The caller-facing error for a Pingora error when no better one was recorded.
fn classify(e: &Error) -> GatewayError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            GatewayError::UpstreamTimeout("The upstream did not answer in time.".into())
        }
        ErrorType::HTTPStatus(code) if *code == 429 => GatewayError::UpstreamRateLimited {
            message: "The upstream is rate limiting requests.".into(),
            retry_after: None,
        },
        ErrorType::HTTPStatus(code) if *code < 500 => {
            GatewayError::bad_request(format!("HTTP {code}"))
        }
        _ => match e.esource() {
            ErrorSource::Upstream => {
                GatewayError::UpstreamFailed("The upstream failed to answer.".into())
            }
            ErrorSource::Downstream => GatewayError::bad_request("The request could not be read."),
            ErrorSource::Internal | ErrorSource::Unset => {
                GatewayError::Internal("Internal gateway error.".into())
            }
        },
    }
}

fn retry_after_secs(resp: &ResponseHeader) -> Option<u64> {
    let v = resp
        .headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    // Seconds form only; an HTTP-date is rare from LLM vendors and treated as absent.
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| s.ceil() as u64)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    /// Runs first for every request. `Ok(true)` means the gateway already answered (errors and
    /// `/v1/models`); `Ok(false)` goes on to `upstream_peer`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        METRICS.inflight.inc();
        ctx.counted_inflight = true;

        let t0 = Instant::now();
        match self.admit(session, ctx).await {
            Ok(Admitted::Proxy) => {
                METRICS.gateway_overhead.observe(t0.elapsed().as_secs_f64());
                Ok(false)
            }
            Ok(Admitted::Answered) => Ok(true),
            Err(e) => {
                ctx.status = e.status();
                // A body left partly unread (refused before it was read, or badly framed)
                // leaves bytes on the socket that must not be read as the next request.
                let close = ctx.close_connection || !session.as_mut().is_body_done();
                write_json(
                    session,
                    ctx,
                    e.status(),
                    e.body_for(ctx.inbound),
                    e.retry_after(),
                    close,
                )
                .await;
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    /// Called for the first attempt and again after each retryable failure.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let (Some(channel), Some(model)) = (ctx.channel.clone(), ctx.model.clone()) else {
            return Error::e_explain(ErrorType::InternalError, "no route decided");
        };
        if ctx.attempts >= channel.retry.max_attempts {
            return Error::e_explain(ErrorType::InternalError, "attempts exhausted");
        }
        let (index, upstream, admission) = match balancer::pick(&channel, &model.name, &ctx.tried) {
            Ok(p) => p,
            Err(why) => {
                if ctx.error.is_none() {
                    ctx.error = Some(match why {
                        NoPick::NotServed => GatewayError::ModelNotFound(format!(
                            "The model `{}` is not served on channel `{}`.",
                            model.name, channel.name
                        )),
                        NoPick::Exhausted => {
                            let parked = channel
                                .upstreams
                                .iter()
                                .filter(|u| u.models.contains(&model.name))
                                .filter_map(|u| u.state.parked_for())
                                .min();
                            match parked {
                                Some(d) => GatewayError::UpstreamRateLimited {
                                    message: format!(
                                        "Every upstream of channel `{}` is rate limited.",
                                        channel.name
                                    ),
                                    retry_after: Some(d.as_secs().max(1)),
                                },
                                None => GatewayError::NoUpstream(format!(
                                    "No healthy upstream is available for `{}` on channel `{}`.",
                                    model.name, channel.name
                                )),
                            }
                        }
                    });
                }
                return Error::e_explain(ErrorType::ConnectNoRoute, "no upstream available");
            }
        };
        let Some(addr) = upstream.state.pick_addr() else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "upstream has no address");
        };
        let upstream_model = upstream.upstream_model(&model.name).to_string();
        let to = upstream.dialect_for(ctx.inbound);
        ctx.upstream_dialect = to;
        let fresh = ctx.upstream_body.is_empty()
            || ctx.upstream_body_model != upstream_model
            || ctx.upstream_body_dialect != Some(to);
        let scanned = match &ctx.raw_chat {
            Some((raw, scan)) if to == Dialect::OpenAi && ctx.inbound == Dialect::OpenAi => {
                Some((raw, scan))
            }
            _ => None,
        };
        if let (true, Some((raw, scan))) = (fresh, scanned) {
            ctx.upstream_body =
                Bytes::from(chatbody::splice(raw, scan, &upstream_model, ctx.stream));
            ctx.upstream_body_model = upstream_model;
            ctx.upstream_body_dialect = Some(to);
        } else if fresh {
            let translated = ctx
                .translations
                .iter_mut()
                .find(|(d, _)| *d == to && to != ctx.inbound)
                .map(|(_, m)| m);
            let obj = match translated {
                Some(m) => Some(m),
                None if to == ctx.inbound => ctx.body.as_mut(),
                None => None,
            };
            let Some(obj) = obj else {
                return Error::e_explain(ErrorType::InternalError, "no body for this protocol");
            };
            ctx.upstream_body = Bytes::from(match (ctx.endpoint, to) {
                (Endpoint::Chat, Dialect::OpenAi) => {
                    openai::rewrite_chat_request(obj, &upstream_model, ctx.stream)
                }
                (Endpoint::Chat | Endpoint::CountTokens, Dialect::Anthropic) => {
                    anthropic::rewrite_messages_request(obj, &upstream_model)
                }
                (_, Dialect::Gemini) => serde_json::to_vec(obj).unwrap_or_default(),
                (Endpoint::Chat, Dialect::Responses) => {
                    responses::rewrite_request(obj, &upstream_model)
                }
                _ => openai::rewrite_model(obj, &upstream_model),
            });
            ctx.upstream_body_model = upstream_model;
            ctx.upstream_body_dialect = Some(to);
        }
        ctx.body_forwarded = false;
        ctx.attempts += 1;
        upstream.state.on_start();
        let peer = self.build_peer(ctx, &upstream, addr);
        ctx.attempt = Some(Attempt {
            index,
            upstream,
            admission,
            started: Instant::now(),
            settled: false,
        });
        Ok(Box::new(peer))
    }

    /// A fresh request for the upstream: its path, Host and credential, never the caller's.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(attempt) = ctx.attempt.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no attempt");
        };
        let up = &attempt.upstream;
        let mut req = match (ctx.endpoint, up.chat_header_templates.as_ref()) {
            (Endpoint::Chat, Some(templates)) if ctx.upstream_dialect == Dialect::OpenAi => {
                templates[usize::from(ctx.stream)].clone()
            }
            _ => {
                let gemini_path;
                let count_path;
                let path = match (ctx.endpoint, ctx.upstream_dialect) {
                    (Endpoint::Embeddings, _) => &up.embeddings_path,
                    (Endpoint::Chat, Dialect::Responses) => {
                        up.responses_path.as_ref().unwrap_or(&up.chat_path)
                    }
                    (Endpoint::CountTokens, _) => {
                        count_path = format!("{}/count_tokens", up.chat_path);
                        &count_path
                    }
                    (_, Dialect::Gemini) => {
                        gemini_path =
                            gemini::path(&up.base.path, &ctx.upstream_body_model, ctx.stream);
                        &gemini_path
                    }
                    _ => &up.chat_path,
                };
                let mut req = up.request_header(path, ctx.stream)?;
                if up.protocol == Dialect::Anthropic {
                    let version = ctx
                        .anthropic_version
                        .as_deref()
                        .unwrap_or(anthropic::DEFAULT_VERSION);
                    req.insert_header("anthropic-version", version)?;
                    if let Some(beta) = ctx.anthropic_beta.as_deref() {
                        req.insert_header("anthropic-beta", beta)?;
                    }
                }
                req
            }
        };
        req.insert_header(http::header::CONTENT_LENGTH, ctx.upstream_body.len())?;
        req.insert_header(X_REQUEST_ID, &ctx.request_id)?;
        *upstream_request = req;
        Ok(())
    }

    /// The caller's body was read whole in `request_filter`; the rewritten one replaces it here,
    /// on every attempt (see `body.rs` for why this works for bodies of any size).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.body_forwarded {
            *body = None;
        } else {
            *body = Some(ctx.upstream_body.clone());
            ctx.body_forwarded = true;
        }
        Ok(())
    }

    /// Retryable errors: connect failures, marked for retry while another upstream is left.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let err = match e.etype() {
            ErrorType::ConnectTimedout => {
                GatewayError::UpstreamTimeout("Connecting to the upstream timed out.".into())
            }
            _ => GatewayError::UpstreamFailed("Could not connect to any upstream.".into()),
        };
        let outcome = if matches!(e.etype(), ErrorType::ConnectTimedout) {
            "connect_timeout"
        } else {
            "connect_error"
        };
        self.fail_attempt(ctx, outcome, err, true);
        e.set_retry(self.can_retry(ctx));
        e
    }

    /// The upstream's response header. A 429 or 5xx here has not reached the client yet, so it
    /// can still be retried elsewhere; on the last candidate it is passed through as is.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if resp.status.is_informational() {
            return Ok(());
        }
        let retryable = status == 429 || status >= 500;
        // The upstream's own fault though it answered (docs/architecture.md, "Vendor statuses"):
        // its credential refused (401/403), the model unknown there (404: a wrong model_map),
        // or it timed out the request (408). Fail over, count it against the upstream's
        // breaker, and never pass the vendor's words on (they talk about the gateway's key).
        let refused = matches!(status, 401 | 403 | 408)
            || (status == 404 && ctx.endpoint != Endpoint::CountTokens);
        if refused {
            // A refused credential does not heal on retry: the breaker opens at once (its
            // half-open probe tries the upstream again later).
            let credential = matches!(status, 401 | 403);
            if let (Some(a), Some(ch)) = (ctx.attempt.as_ref(), ctx.channel.as_ref()) {
                tracing::error!(
                    upstream = %a.upstream.id,
                    status,
                    request_id = %ctx.request_id,
                    "upstream refused the call: check its credential (api_key_env), its model_map and the vendor account; failing over"
                );
                if credential && !a.settled && a.upstream.state.record_failure(&ch.breaker, true) {
                    METRICS
                        .breaker_opened
                        .with_label_values(&[&a.upstream.id])
                        .inc();
                    self.app.export_upstream_health();
                }
            }
            self.fail_attempt(
                ctx,
                "upstream_refused",
                                GatewayError::UpstreamFailed(format!(
                    "The upstream serving this model refused the call (HTTP {status}); no other upstream could serve it."
                )),
                !credential,
            );
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "upstream refused the call");
            e.set_retry(self.can_retry(ctx));
            return Err(e);
        }
        if ctx.endpoint == Endpoint::CountTokens && status == 404 {
            // An Anthropic-compatible vendor without count_tokens: estimate instead (in
            // `fail_to_proxy`), or ask another Anthropic upstream.
            self.fail_attempt(
                ctx,
                "no_count_tokens",
                GatewayError::UpstreamFailed("The upstream cannot count tokens.".into()),
                false,
            );
            let mut e = Error::explain(ErrorType::HTTPStatus(404), "no count_tokens upstream");
            e.set_retry(self.can_retry(ctx));
            return Err(e);
        }
        if retryable {
            let (max_park, up) = match (ctx.channel.as_ref(), ctx.attempt.as_ref()) {
                (Some(c), Some(a)) => (c.retry.max_retry_after, a.upstream.clone()),
                _ => return Ok(()),
            };
            if status == 429 {
                // Rate limited: park this upstream as asked (1 s when it does not say), but it
                // is healthy, so the breaker is not involved.
                let wait = retry_after_secs(resp)
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1));
                up.state.park_for(wait.min(max_park));
                self.fail_attempt(
                    ctx,
                    "http_429",
                    GatewayError::UpstreamRateLimited {
                        message: "The upstream is rate limiting requests.".into(),
                        retry_after: retry_after_secs(resp),
                    },
                    false,
                );
            } else {
                self.fail_attempt(
                    ctx,
                    "http_5xx",
                    GatewayError::UpstreamFailed(format!("The upstream answered HTTP {status}.")),
                    true,
                );
            }
            if self.can_retry(ctx) {
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "upstream answered with a retryable status",
                );
                e.set_retry(true);
                return Err(e);
            }
            if ctx.endpoint == Endpoint::CountTokens {
                // No vendor could count: the estimate answers instead (`fail_to_proxy`).
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "no upstream could count tokens",
                );
            }
            // Last candidate: pass the vendor's own answer through.
            ctx.error = None;
        } else if let Some(a) = ctx.attempt.as_mut() {
            a.upstream.state.record_success(a.started.elapsed());
        }
        if let Some(a) = ctx.attempt.as_ref() {
            ctx.served_by = Some((a.upstream.id.clone(), ctx.upstream_body_model.clone()));
        }
        // Which vendor software answered is not the caller's business.
        resp.remove_header(&http::header::SERVER);
        let is_sse = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let translating = ctx.upstream_dialect != ctx.inbound;
        ctx.upstream_status = status;
        if ctx.endpoint == Endpoint::Chat && ctx.stream && is_sse && resp.status.is_success() {
            if ctx.inbound == Dialect::OpenAi && !translating {
                ctx.meter = Some(Box::new(ChatStreamMeter::new(ctx.client_wants_usage)));
            } else {
                ctx.translator = Some(Box::new(StreamTranslator::new(
                    ctx.upstream_dialect,
                    ctx.inbound,
                    self.names(ctx),
                    ctx.client_wants_usage,
                )));
                resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
            }
            // The usage chunk may be removed, so the length can change.
            resp.remove_header(&http::header::CONTENT_LENGTH);
        } else if !translating && status >= 400 {
            // The vendor's error in the caller's protocol: passed on whole, keys scrubbed.
            ctx.scrub_error = true;
            resp.remove_header(&http::header::CONTENT_LENGTH);
        } else if translating {
            // A whole answer or error in another protocol: converted when it is complete.
            ctx.translate_whole = true;
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            if status == 529 && ctx.inbound != Dialect::Anthropic {
                // Anthropic's "overloaded" has no meaning to other clients.
                resp.set_status(503)?;
            }
        }
        Ok(())
    }

    /// The header going to the client: from here on nothing is retried.
    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.downstream_started = true;
        ctx.status = resp.status.as_u16();
        resp.insert_header(X_REQUEST_ID, &ctx.request_id)?;
        if let Some(c) = ctx.channel.as_ref() {
            resp.insert_header(X_TOLLGATE_CHANNEL, &c.name)?;
        }
        if let (Some(source), true) = (ctx.token_count, resp.status.is_success()) {
            resp.insert_header(TOKEN_COUNT_HEADER, source)?;
        }
        if let Some(r) = ctx.route.as_ref() {
            resp.insert_header("x-tollgate-route-model", &r.model)?;
            resp.insert_header("x-tollgate-route-tier", &r.tier)?;
            resp.insert_header("x-tollgate-route-reason", r.reason)?;
            resp.insert_header("x-tollgate-route-mode", r.mode)?;
            if let Some(score) = r.score {
                resp.insert_header("x-tollgate-route-score", format!("{score:.4}"))?;
            }
        }
        if !ctx.stream {
            ctx.first_token_at = Some(Instant::now());
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(tr) = ctx.translator.as_mut() {
            let mut out = BytesMut::new();
            if let Some(chunk) = body.as_ref() {
                tr.on_chunk(chunk, &mut out);
            }
            if ctx.first_token_at.is_none() && tr.first_content_seen() {
                ctx.first_token_at = Some(Instant::now());
            }
            if end_of_stream && !tr.finish(&mut out) {
                ctx.stream_error = Some(if tr.upstream_error().is_some() {
                    "upstream_error"
                } else {
                    "truncated"
                });
            }
            *body = Some(out.freeze());
        } else if ctx.translate_whole {
            if let Some(chunk) = body.take() {
                if ctx.response.len() + chunk.len() <= MAX_KEPT_RESPONSE {
                    ctx.response.extend_from_slice(&chunk);
                } else {
                    ctx.response_truncated = true;
                }
            }
            if end_of_stream {
                *body = Some(Bytes::from(self.convert_whole(ctx)));
            }
        } else if ctx.scrub_error {
            if let Some(chunk) = body.take() {
                if ctx.response.len() + chunk.len() <= MAX_KEPT_RESPONSE {
                    ctx.response.extend_from_slice(&chunk);
                } else {
                    ctx.response_truncated = true;
                }
            }
            if end_of_stream {
                *body = Some(Bytes::from(
                    crate::protocol::scrub_secrets(&ctx.response).into_owned(),
                ));
            }
        } else if let Some(meter) = ctx.meter.as_mut() {
            // Whole events pass through as the same `Bytes` (no copy); a partial trailing
            // event is held until it completes.
            let mut passed = match body.as_ref() {
                Some(chunk) => meter.on_chunk_bytes(chunk),
                None => Bytes::new(),
            };
            if ctx.first_token_at.is_none() && meter.first_content_seen() {
                ctx.first_token_at = Some(Instant::now());
            }
            if end_of_stream {
                let mut out = BytesMut::from(&passed[..]);
                if meter.saw_done() {
                    meter.finish(&mut out);
                } else {
                    // A clean close without `[DONE]` is a truncated answer: say so.
                    meter.finish_with_error(
                        "The upstream ended the stream before it was complete.",
                        "upstream_error",
                        &mut out,
                    );
                    ctx.stream_error = Some("truncated");
                }
                passed = out.freeze();
            }
            *body = Some(passed);
        } else if let Some(chunk) = body.as_ref() {
            if ctx.response.len() + chunk.len() <= MAX_KEPT_RESPONSE {
                ctx.response.extend_from_slice(chunk);
            } else {
                ctx.response_truncated = true;
            }
        }
        if end_of_stream && ctx.stream_error.is_none() {
            usage::log_charge(&self.app, ctx);
        }
        if let Some(c) = ctx.channel.as_ref() {
            if !end_of_stream && ctx.started.elapsed() > c.timeouts.total {
                ctx.stream_error = Some("total_timeout");
                return Error::e_explain(ErrorType::ReadTimedout, "total request time exceeded");
            }
        }
        Ok(None)
    }

    /// Errors while proxying. Before the client saw anything the attempt may be retried on
    /// another upstream (POST included: LLM calls are safe to resend until an answer started).
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        if ctx.downstream_started {
            e.set_retry(false);
            return e;
        }
        if *e.esource() == ErrorSource::Downstream {
            // The caller hung up (or its connection broke) while the upstream was working:
            // the upstream is not at fault and nobody is waiting for a retry.
            if let Some(a) = ctx.attempt.as_mut() {
                if !a.settled {
                    a.settled = true;
                    a.upstream.state.on_end();
                    if a.admission == Admission::Probe {
                        a.upstream.state.release_probe();
                    }
                    METRICS
                        .attempts
                        .with_label_values(&[&a.upstream.id, "client_gone"])
                        .inc();
                }
            }
            ctx.stream_error = Some("client_gone");
            e.set_retry(false);
            return e;
        }
        let unsettled = ctx.attempt.as_ref().is_some_and(|a| !a.settled);
        if unsettled {
            let timeout = matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
            // A pooled connection the upstream had already closed is not the upstream's fault.
            let stale = client_reused
                && matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                );
            let (outcome, err) = if timeout {
                (
                    "timeout",
                    GatewayError::UpstreamTimeout("The upstream did not answer in time.".into()),
                )
            } else {
                (
                    "error",
                    GatewayError::UpstreamFailed("The upstream failed to answer.".into()),
                )
            };
            self.fail_attempt(
                ctx,
                if stale { "stale_connection" } else { outcome },
                err,
                !stale,
            );
            if stale {
                // Let the same upstream be chosen again with a fresh connection.
                if let Some(a) = ctx.attempt.as_ref() {
                    let idx = a.index;
                    ctx.tried.retain(|&i| i != idx);
                }
            }
        }
        e.set_retry(self.can_retry(ctx));
        e
    }

    /// The request failed for good. Before the first byte: an error JSON with the right status.
    /// After it: an SSE error event ends the stream, never a silent clean end.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if ctx.downstream_started {
            if *e.esource() != ErrorSource::Downstream && ctx.stream {
                let err = if matches!(e.etype(), ErrorType::ReadTimedout) {
                    GatewayError::UpstreamTimeout(
                        "The upstream stream stalled or exceeded the time limit.".into(),
                    )
                } else {
                    GatewayError::UpstreamFailed(
                        "The upstream connection broke during the stream.".into(),
                    )
                };
                let event = match ctx.translator.as_mut() {
                    Some(tr) => {
                        let mut out = BytesMut::new();
                        tr.fail(&err.to_string(), &mut out);
                        out.freeze()
                    }
                    None => err.sse_event_for(ctx.inbound),
                };
                let _ = session.write_response_body(Some(event), true).await;
                ctx.stream_error.get_or_insert("upstream_broken");
            } else if *e.esource() == ErrorSource::Downstream {
                ctx.stream_error.get_or_insert("client_gone");
            }
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if *e.esource() == ErrorSource::Downstream {
            ctx.status = 0;
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if ctx.endpoint == Endpoint::CountTokens {
            // The vendor could not count (down, overloaded, no such endpoint): estimate.
            if let Some(obj) = ctx.body.take() {
                if let Ok(n) = estimate_input_tokens(obj).await {
                    ctx.error = None;
                    ctx.status = 200;
                    ctx.token_count = Some("estimate");
                    write_json(session, ctx, 200, count_body(n), None, true).await;
                    return FailToProxy {
                        error_code: 200,
                        can_reuse_downstream: false,
                    };
                }
            }
        }
        let err = ctx.error.clone().unwrap_or_else(|| classify(e));
        ctx.status = err.status();
        write_json(
            session,
            ctx,
            err.status(),
            err.body_for(ctx.inbound),
            err.retry_after(),
            true,
        )
        .await;
        ctx.error = Some(err);
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // An attempt still open here either succeeded or broke mid-stream.
        if let Some(a) = ctx.attempt.as_mut() {
            if !a.settled {
                a.settled = true;
                a.upstream.state.on_end();
                let broken = matches!(
                    ctx.stream_error,
                    Some("upstream_broken") | Some("truncated")
                );
                let outcome = if broken {
                    if let Some(ch) = ctx.channel.as_ref() {
                        a.upstream
                            .state
                            .record_failure(&ch.breaker, a.admission == Admission::Probe);
                    }
                    "broken_stream"
                } else if e.is_some() {
                    if a.admission == Admission::Probe {
                        a.upstream.state.release_probe();
                    }
                    "aborted"
                } else {
                    "ok"
                };
                if outcome == "ok" {
                    a.upstream.attempts_ok.inc();
                } else {
                    METRICS
                        .attempts
                        .with_label_values(&[&a.upstream.id, outcome])
                        .inc();
                }
            }
        }
        if let Some(reason) = ctx.stream_error {
            METRICS.stream_errors.with_label_values(&[reason]).inc();
        }
        if ctx.counted_inflight {
            METRICS.inflight.dec();
        }
        crate::proxy::usage::emit(&self.app, ctx, e).await;
    }
}
