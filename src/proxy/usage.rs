//! The one usage event per request, assembled in `logging` from what the response showed.

use super::ctx::{Endpoint, RequestCtx};
use crate::app::App;
use crate::billing::ledger::Settlement;
use crate::billing::pricing::{self, TokenCounts};
use crate::billing::usage::UsageEvent;
use crate::metrics::METRICS;
use crate::protocol::openai::Usage;
use crate::protocol::tokens::TokenCounter;
use crate::protocol::{anthropic, openai, translate, Dialect};
use pingora_error::Error;

/// What the response tells about usage: the vendor's report, or text still to be counted.
enum Measured {
    Known(Usage, &'static str),
    /// No vendor usage: count `text` (completion) and estimate the prompt with tiktoken
    /// unless the vendor reported it (`prompt`, e.g. a Gemini stream cut before its end).
    Count {
        text: String,
        prompt: Option<u64>,
    },
}

/// Usage and where it came from: the vendor's own report, our tiktoken count, or nothing.
/// Tokenizing is CPU work (and builds the o200k tables on first use, ~0.5 s and ~55 MiB), so it
/// runs on the blocking pool, only for vendors that report no usage.
async fn measured_usage(ctx: &RequestCtx) -> (Usage, &'static str) {
    if let Some((u, source, _)) = ctx.final_usage.as_deref() {
        return (*u, source);
    }
    match measure(ctx) {
        Measured::Known(u, source) => (u, source),
        Measured::Count { text, prompt } => {
            let body = ctx.body.clone();
            let scanned = ctx.raw_chat.as_ref().map(|(raw, _)| raw.clone());
            let endpoint = ctx.endpoint;
            let inbound = ctx.inbound;
            let counted = tokio::task::spawn_blocking(move || {
                // A scanned body's tree is read here, off the request path, only when needed.
                let body = body.or_else(|| {
                    scanned.and_then(|raw| openai::parse_chat_request(&raw).ok().map(|(o, _)| o))
                });
                Usage {
                    prompt_tokens: match (prompt, endpoint, body.as_ref()) {
                        (Some(p), _, _) => p,
                        (None, Endpoint::Chat, Some(b)) if inbound == Dialect::Anthropic => {
                            anthropic::to_openai(b, Dialect::Gemini)
                                .map(|o| TokenCounter::estimate_chat_prompt(&o))
                                .unwrap_or(0)
                        }
                        (None, Endpoint::Chat, Some(b)) if inbound == Dialect::Responses => {
                            crate::protocol::responses::to_chat(b)
                                .map(|o| TokenCounter::estimate_chat_prompt(&o))
                                .unwrap_or(0)
                        }
                        (None, Endpoint::Chat, Some(b)) => TokenCounter::estimate_chat_prompt(b),
                        (None, Endpoint::Embeddings, Some(b)) => {
                            TokenCounter::estimate_embedding_input(b)
                        }
                        _ => 0,
                    },
                    completion_tokens: TokenCounter::count(&text),
                    ..Usage::default()
                }
            })
            .await;
            match counted {
                Ok(u) => (u, "counted"),
                Err(_) => (Usage::default(), "none"),
            }
        }
    }
}

fn measure(ctx: &RequestCtx) -> Measured {
    use Measured::*;
    if !(200..300).contains(&ctx.status) {
        // Only a stream that started successfully produced tokens worth recording.
        if ctx.meter.is_none() && ctx.translator.is_none() {
            return Known(Usage::default(), "none");
        }
    }
    if let Some(tr) = ctx.translator.as_ref() {
        // A complete stream's last usage is the vendor's final word; a broken one may carry
        // only the prompt so far (Gemini, Anthropic's message_start): count what was produced.
        match tr.usage() {
            Some(u) if tr.saw_done() => return Known(u, "vendor"),
            u => {
                let text = tr.produced_text();
                if text.is_empty() && !tr.first_content_seen() && u.is_none() {
                    return Known(Usage::default(), "none");
                }
                return Count {
                    text: text.to_string(),
                    prompt: u.map(|u| u.prompt_tokens).filter(|p| *p > 0),
                };
            }
        }
    }
    if let Some(meter) = ctx.meter.as_ref() {
        if let Some(u) = meter.usage() {
            return Known(u, "vendor");
        }
        let text = meter.produced_text();
        if text.is_empty() && !meter.first_content_seen() {
            return Known(Usage::default(), "none");
        }
        return Count {
            text: text.to_string(),
            prompt: None,
        };
    }
    if ctx.endpoint == Endpoint::Chat || ctx.endpoint == Endpoint::Embeddings {
        if ctx.response.is_empty() {
            return Known(Usage::default(), "none");
        }
        if !(200..300).contains(&ctx.upstream_status) && ctx.upstream_status != 0 {
            return Known(Usage::default(), "none");
        }
        let (usage, text) = translate::usage_of(ctx.upstream_dialect, &ctx.response);
        if let Some(u) = usage {
            return Known(u, "vendor");
        }
        return Count {
            text: text.unwrap_or_default(),
            prompt: None,
        };
    }
    Known(Usage::default(), "none")
}

/// At the end of a complete response, before its last bytes go to the client: when the vendor
/// reported the usage, append the call's charge to the charge log, so that a crash of the
/// process after the client got its answer cannot lose the charge (`billing::chargelog`).
/// Usage the gateway must count itself is logged when `logging` settles (a tokenizer run is
/// not done here, on the response path).
pub(super) fn log_charge(app: &App, ctx: &mut RequestCtx) {
    let Some(log) = app.ledger.charge_log() else {
        return;
    };
    if ctx.reservation.is_none() || ctx.final_usage.is_some() {
        return;
    }
    let Measured::Known(usage, source) = measure(ctx) else {
        return;
    };
    let (Some(m), Some(c), Some(cfg), Some(key)) = (
        ctx.model.as_deref(),
        ctx.channel.as_deref(),
        ctx.config.as_deref(),
        ctx.key.as_deref(),
    ) else {
        return;
    };
    let cost = pricing::cost_nano(
        m,
        c,
        cfg.billing.credits_per_rmb,
        &TokenCounts::from_usage(&usage),
    )
    .unwrap_or(0);
    if cost > 0 {
        let ts_ms = unix_ms();
        ctx.charge_ts_ms = Some(ts_ms);
        ctx.charge_ticket = log.append(&crate::billing::chargelog::Charge {
            request_id: &ctx.request_id,
            ts_ms,
            tenant: key.tenant_id,
            key: key.id,
            user: key.user_id,
            group: key.group_id,
            endpoint: ctx.endpoint_label(),
            model: &m.name,
            channel: &c.name,
            cost_nano: cost,
            prompt_tokens: usage.prompt_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            completion_tokens: usage.completion_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            stream: ctx.stream,
            buckets: ctx.reservation.as_ref().map_or(&[][..], |r| r.buckets()),
        });
    }
    ctx.final_usage = Some(Box::new((usage, source, cost)));
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Settle the call's credit hold to what it really cost (nothing for a call that produced no
/// tokens). `None` when the call held no credit; otherwise what was charged and what could not
/// be, and the call's usage record must then go to the ledger's journal.
fn settle(app: &App, ctx: &mut RequestCtx, usage: &Usage) -> Option<Settlement> {
    let res = ctx.reservation.take()?;
    let cost = match (ctx.model.as_ref(), ctx.channel.as_ref(), ctx.config.as_ref()) {
        // Priced already when the charge was logged (the same usage).
        _ if ctx.final_usage.is_some() => ctx.final_usage.as_deref().map_or(0, |f| f.2),
        (Some(m), Some(c), Some(cfg)) => {
            pricing::cost_nano(m, c, cfg.billing.credits_per_rmb, &TokenCounts::from_usage(usage)).unwrap_or_else(|err| {
                tracing::error!(request_id = %ctx.request_id, error = %err, "cannot price a call; charging its hold");
                res.amount
            })
        }
        _ => 0,
    };
    let key = ctx.key.clone()?;
    let s = app.ledger.settle_logged(res, cost, &key, ctx.charge_ticket);
    let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    if tokens > 0 {
        let subjects = key.rate_subjects();
        if !subjects.is_empty() {
            app.limiter
                .record_tokens(super::now_ms(), &subjects, tokens);
        }
    }
    if s.uncollected > 0 {
        METRICS.uncollected.inc_by(s.uncollected as u64);
        tracing::warn!(request_id = %ctx.request_id, uncollected = s.uncollected, "call cost more than its accounts could pay");
    }
    Some(s)
}

pub async fn emit(app: &App, ctx: &mut RequestCtx, e: Option<&Error>) {
    let latency = ctx.started.elapsed();
    // Labels borrowed from the call's configuration (held here: `settle` needs `ctx` mutably).
    let (channel_cfg, model_cfg) = (ctx.channel.clone(), ctx.model.clone());
    let channel = channel_cfg.as_deref().map_or("none", |c| c.name.as_str());
    let model = model_cfg.as_deref().map_or("other", |m| m.name.as_str());
    let status = ctx.status;
    let (usage, source) = measured_usage(ctx).await;
    let settled = settle(app, ctx, &usage);
    ctx.cost_nano = settled.map_or(0, |s| s.charged);
    let ttft = ctx.first_token_at.map(|t| t.duration_since(ctx.started));

    // The channel's pre-resolved children where there are some (a configured channel and a
    // model it serves), the labelled lookup otherwise.
    let resolved = channel_cfg
        .as_deref()
        .map(|c| (&c.metrics, c.metrics.models.get(model)));
    match (status, resolved) {
        (200, Some((_, Some(mm)))) => mm.ok.inc(),
        _ => {
            let status_label: std::borrow::Cow<'static, str> = match status {
                0 => "client_closed".into(),
                200 => "200".into(),
                s => s.to_string().into(),
            };
            METRICS
                .requests
                .with_label_values(&[channel, model, &status_label])
                .inc();
        }
    }
    let endpoint = ctx.endpoint_label();
    match (
        status,
        crate::metrics::OK_ENDPOINTS
            .iter()
            .position(|e| *e == endpoint),
    ) {
        (200, Some(i)) => METRICS.endpoint_ok[i].inc(),
        _ => METRICS
            .endpoint_requests
            .with_label_values(&[endpoint, &status.to_string()])
            .inc(),
    }
    match resolved {
        Some((cm, _)) => cm.duration.observe(latency.as_secs_f64()),
        None => METRICS
            .duration
            .with_label_values(&[channel])
            .observe(latency.as_secs_f64()),
    }
    if let Some(t) = ttft {
        match resolved {
            Some((cm, _)) => cm.ttft.observe(t.as_secs_f64()),
            None => METRICS
                .ttft
                .with_label_values(&[channel])
                .observe(t.as_secs_f64()),
        }
    }
    let counts = [
        usage.prompt_tokens,
        usage.cached_tokens,
        usage.completion_tokens,
        usage.reasoning_tokens,
        usage.cache_write_tokens,
    ];
    for (i, n) in counts.into_iter().enumerate() {
        if n == 0 {
            continue;
        }
        match resolved {
            Some((_, Some(mm))) => mm.tokens[i].inc_by(n),
            _ => METRICS
                .tokens
                .with_label_values(&[channel, model, crate::metrics::TOKEN_KINDS[i]])
                .inc_by(n),
        }
    }

    let (upstream, model_used) = match ctx.served_by.as_ref() {
        Some((u, m)) => (Some(u.clone()), Some(m.clone())),
        None => (ctx.attempt.as_ref().map(|a| a.upstream.id.clone()), None),
    };
    let error_code = ctx
        .error
        .as_ref()
        .map(|e| e.code().to_string())
        .or_else(|| ctx.stream_error.map(|s| s.to_string()));

    tracing::info!(
        request_id = ctx.request_id.as_str(),
        tenant = ctx.key.as_ref().map(|k| k.tenant_id.0),
        key = ctx.key.as_ref().map(|k| k.id.0),
        endpoint = ctx.endpoint_label(),
        method = ctx.method,
        path = ctx.path.as_deref().unwrap_or("-"),
        channel,
        upstream = upstream.as_deref().unwrap_or("-"),
        model = ctx.model_requested.as_deref().unwrap_or("-"),
        stream = ctx.stream,
        status,
        attempts = ctx.attempts,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        usage_source = source,
        cost_nano = ctx.cost_nano,
        latency_ms = latency.as_millis() as u64,
        ttft_ms = ttft.map(|t| t.as_millis() as u64),
        error = error_code.as_deref().unwrap_or("-"),
        proxy_error = e.map(|e| e.to_string()).as_deref().unwrap_or("-"),
        "request"
    );

    // Every authenticated request is recorded (model listings and unknown paths too).
    let Some(key) = ctx.key.as_ref() else { return };
    let event = UsageEvent {
        request_id: ctx.request_id.clone(),
        ts_ms: ctx.charge_ts_ms.unwrap_or_else(unix_ms),
        tenant_id: Some(key.tenant_id),
        key_id: Some(key.id),
        user_id: key.user_id,
        group_id: key.group_id,
        endpoint: ctx.endpoint_label().to_string(),
        path: ctx.path.clone(),
        channel: ctx.channel.as_ref().map(|c| c.name.clone()),
        upstream,
        model_requested: ctx.model_requested.clone(),
        model_used,
        stream: ctx.stream,
        status,
        error_code,
        prompt_tokens: usage.prompt_tokens,
        cached_tokens: usage.cached_tokens,
        completion_tokens: usage.completion_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        usage_source: source.to_string(),
        attempts: ctx.attempts,
        latency_ms: latency.as_millis() as u64,
        ttft_ms: ttft.map(|t| t.as_millis() as u64),
        cost_nano: ctx.cost_nano,
        uncollected: settled.map_or(0, |s| s.uncollected),
        guardrails: ctx.guardrails.clone(),
        route_tier: ctx.route.as_ref().map(|r| r.tier.clone()),
        route_reason: ctx.route.as_ref().map(|r| r.reason.to_string()),
        route_score: ctx.route.as_ref().and_then(|r| r.score),
        baseline_cost_nano: baseline_cost(ctx, &usage),
        charge_ticket: ctx.charge_ticket.take(),
    };
    match settled {
        // The usage record carries the charge: it must not be dropped.
        Some(s) if s.charged > 0 || s.uncollected > 0 => app.ledger.journal_call(event),
        _ => app.usage.push(event),
    }
}

/// `model: "auto"` calls: what the same tokens would have cost on the strongest tier (for the
/// savings report). None when the strong tier's model has no price.
fn baseline_cost(ctx: &RequestCtx, usage: &Usage) -> Option<i64> {
    let r = ctx.route.as_ref()?;
    let (m, c, cfg) = (
        r.baseline_model.as_ref()?,
        r.baseline_channel.as_ref()?,
        ctx.config.as_ref()?,
    );
    pricing::cost_nano(
        m,
        c,
        cfg.billing.credits_per_rmb,
        &TokenCounts::from_usage(usage),
    )
    .ok()
}
