//! Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Labels are bounded by configuration: channel, upstream and model names come from the config
//! file (unknown model names are folded into "other"), status is the HTTP code. No key, user or
//! tenant ids ever become labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub attempts: IntCounterVec,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub inflight: IntGauge,
    pub upstream_healthy: IntGaugeVec,
    pub breaker_opened: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub usage_events_written: IntCounter,
    pub usage_events_dropped: IntCounter,
    pub usage_events_pruned: IntCounter,
    pub retention_failures: IntCounter,
    pub stream_errors: IntCounterVec,
    pub gateway_overhead: Histogram,
    pub ledger_entries_written: IntCounter,
    pub recorder_queued: IntGaugeVec,
    pub recorder_commit_failures: IntCounter,
    pub uncollected: IntCounter,
    pub hold_exact_counts: IntCounterVec,
    /// Complexity-router decisions by tier and reason (`model: "auto"`).
    pub router_decisions: IntCounterVec,
    /// Router failures (the request went to the fallback tier).
    pub router_errors: IntCounter,
    /// Requests by endpoint (chat, messages, responses, count_tokens, embeddings, models,
    /// other) and HTTP status.
    pub endpoint_requests: IntCounterVec,
    /// `endpoint_requests{status="200"}` of the generation endpoints, resolved once.
    pub endpoint_ok: [IntCounter; 3],
    /// Admin API authentications refused: `invalid` (a wrong token), `throttled` (refused
    /// without a check: too many wrong tokens from that address).
    pub admin_auth_failures: IntCounterVec,
    /// Payment notifications by provider and outcome (`credited`, `duplicate`, `ignored`,
    /// `bad_signature`, `unknown_order`, `mismatch`, `error`).
    pub payment_notifications: IntCounterVec,
    /// Budget and balance alerts fired, by kind (`balance_low`, `balance_days`,
    /// `department_budget`, `user_quota`, `key_quota`, `test`).
    pub alerts_fired: IntCounterVec,
    /// Alert subjects past a threshold now (as of this node's last check), by kind: a bounded
    /// count, not a series per tenant.
    pub alerts_active: IntGaugeVec,
    /// Calls refused by a network allow-list, by list (`key`, `tenant`).
    pub network_refusals: IntCounterVec,
    /// Guardrail hits by detector (`secrets`, `email`, `phone`, `cn_id`, `bank_card`,
    /// `keywords`) and action (`log`, `redact`, `block`).
    pub guardrail_hits: IntCounterVec,
    /// Alert deliveries by channel (`email`, `webhook`) and outcome (`delivered`, `failed`,
    /// `retried`).
    pub alert_deliveries: IntCounterVec,
    /// Client connections closed because a request head did not arrive whole in time.
    pub header_timeouts: IntCounter,
    pub proxy_protocol_refusals: IntCounter,
    pub malformed_requests: IntCounter,
    pub credit_bank_up: IntGauge,
    pub credit_bank_unreplicated: IntCounter,
    /// Requests refused (408) because their body came slower than the minimum rate.
    pub slow_bodies: IntCounter,
    /// Requests refused because the buffered-body budget was spent.
    pub body_budget_refusals: IntCounter,
    /// Bytes of request bodies held now (twice each body's length, see `proxy::body`).
    pub buffered_body_bytes: IntGauge,
}

/// The endpoints whose 200s are pre-resolved in `Metrics::endpoint_ok`, in that order.
pub const OK_ENDPOINTS: [&str; 3] = ["chat", "messages", "responses"];

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "tollgate_requests_total",
            "Requests answered, by channel, model and HTTP status",
        ),
        &["channel", "model", "status"],
    )?;
    let attempts = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_attempts_total",
            "Upstream attempts by outcome",
        ),
        &["upstream", "outcome"],
    )?;
    let duration = HistogramVec::new(
        HistogramOpts::new("tollgate_request_duration_seconds", "Total request latency")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["channel"],
    )?;
    let ttft = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_time_to_first_token_seconds",
            "Time from request to the first response byte",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["channel"],
    )?;
    let tokens = IntCounterVec::new(
        Opts::new(
            "tollgate_tokens_total",
            "Tokens by kind (prompt, cached, completion, reasoning)",
        ),
        &["channel", "model", "kind"],
    )?;
    let inflight = IntGauge::new("tollgate_inflight_requests", "Requests being served")?;
    let upstream_healthy = IntGaugeVec::new(
        Opts::new(
            "tollgate_upstream_healthy",
            "1 when the upstream's breaker is closed, 0 when ejected",
        ),
        &["upstream"],
    )?;
    let breaker_opened = IntCounterVec::new(
        Opts::new(
            "tollgate_breaker_opened_total",
            "Times an upstream was ejected",
        ),
        &["upstream"],
    )?;
    let config_reloads = IntCounterVec::new(
        Opts::new(
            "tollgate_config_reloads_total",
            "Configuration reloads by result",
        ),
        &["result"],
    )?;
    let config_generation = IntGauge::new(
        "tollgate_config_generation",
        "Number of configurations applied",
    )?;
    let usage_events_written =
        IntCounter::new("tollgate_usage_events_written_total", "Usage events stored")?;
    let usage_events_dropped = IntCounter::new(
        "tollgate_usage_events_dropped_total",
        "Usage events lost (queue full)",
    )?;
    let usage_events_pruned = IntCounter::new(
        "tollgate_usage_events_pruned_total",
        "Raw usage records removed by retention (archived first when an archive directory is set)",
    )?;
    let retention_failures = IntCounter::new(
        "tollgate_retention_failures_total",
        "Retention passes that failed (the records stay; retried at the next pass)",
    )?;
    let stream_errors = IntCounterVec::new(
        Opts::new(
            "tollgate_stream_errors_total",
            "Streams that ended with an error event",
        ),
        &["reason"],
    )?;
    let gateway_overhead = Histogram::with_opts(
        HistogramOpts::new(
            "tollgate_request_filter_seconds",
            "Time spent in the gateway before contacting the upstream",
        )
        .buckets(vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
        ]),
    )?;
    registry.register(Box::new(requests.clone()))?;
    let endpoint_requests = IntCounterVec::new(
        Opts::new(
            "tollgate_endpoint_requests_total",
            "Requests answered, by endpoint and HTTP status (0: the client went away)",
        ),
        &["endpoint", "status"],
    )?;
    registry.register(Box::new(endpoint_requests.clone()))?;
    let endpoint_ok = OK_ENDPOINTS.map(|e| endpoint_requests.with_label_values(&[e, "200"]));
    let admin_auth_failures = IntCounterVec::new(
        Opts::new(
            "tollgate_admin_auth_failures_total",
            "Admin API authentications refused, by reason (invalid, throttled)",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(admin_auth_failures.clone()))?;
    let payment_notifications = IntCounterVec::new(
        Opts::new(
            "tollgate_payment_notifications_total",
            "Payment provider notifications, by provider and outcome (credited, duplicate, ignored, bad_signature, unknown_order, mismatch, error)",
        ),
        &["provider", "outcome"],
    )?;
    registry.register(Box::new(payment_notifications.clone()))?;
    let alerts_fired = IntCounterVec::new(
        Opts::new(
            "tollgate_alerts_fired_total",
            "Budget and balance alerts fired (once per crossing), by kind",
        ),
        &["kind"],
    )?;
    registry.register(Box::new(alerts_fired.clone()))?;
    let alerts_active = IntGaugeVec::new(
        Opts::new(
            "tollgate_alerts_active",
            "Alert subjects (tenants, departments, users, keys) past a threshold at this node's last check, by kind",
        ),
        &["kind"],
    )?;
    registry.register(Box::new(alerts_active.clone()))?;
    let network_refusals = IntCounterVec::new(
        Opts::new(
            "tollgate_network_refusals_total",
            "Calls refused by a network allow-list, by list (key, tenant)",
        ),
        &["scope"],
    )?;
    registry.register(Box::new(network_refusals.clone()))?;
    let guardrail_hits = IntCounterVec::new(
        Opts::new(
            "tollgate_guardrail_hits_total",
            "Prompt guardrail hits by detector and action (log, redact, block); the text is never recorded",
        ),
        &["detector", "action"],
    )?;
    registry.register(Box::new(guardrail_hits.clone()))?;
    let alert_deliveries = IntCounterVec::new(
        Opts::new(
            "tollgate_alert_deliveries_total",
            "Alert deliveries by channel (email, webhook) and outcome (delivered, failed, retried)",
        ),
        &["channel", "outcome"],
    )?;
    registry.register(Box::new(alert_deliveries.clone()))?;
    let header_timeouts = IntCounter::new(
        "tollgate_client_header_timeouts_total",
        "Client connections closed because a request head did not arrive whole within server.header_timeout_seconds",
    )?;
    registry.register(Box::new(header_timeouts.clone()))?;
    let proxy_protocol_refusals = IntCounter::new(
        "tollgate_proxy_protocol_refusals_total",
        "Connections closed because server.proxy_protocol is on and their PROXY header was missing, malformed, late or from an untrusted peer",
    )?;
    registry.register(Box::new(proxy_protocol_refusals.clone()))?;
    let malformed_requests = IntCounter::new(
        "tollgate_malformed_requests_total",
        "Requests refused by the HTTP layer before the gateway saw them (unparsable head: 400; CONNECT: 405)",
    )?;
    registry.register(Box::new(malformed_requests.clone()))?;
    let credit_bank_up = IntGauge::new(
        "tollgate_credit_bank_up",
        "Cluster mode: 1 while the credit bank (Redis) answers its probe (every 500 ms), else 0; /readyz follows it",
    )?;
    registry.register(Box::new(credit_bank_up.clone()))?;
    let credit_bank_unreplicated = IntCounter::new(
        "tollgate_credit_bank_unreplicated_total",
        "Sentinel: credit-moving writes no replica confirmed within half the operation timeout (a failover could lose them)",
    )?;
    registry.register(Box::new(credit_bank_unreplicated.clone()))?;
    let slow_bodies = IntCounter::new(
        "tollgate_slow_body_refusals_total",
        "Requests refused (408) because their body came slower than server.min_body_bytes_per_second",
    )?;
    registry.register(Box::new(slow_bodies.clone()))?;
    let body_budget_refusals = IntCounter::new(
        "tollgate_body_budget_refusals_total",
        "Requests refused (503) because request bodies held in memory reached server.max_buffered_body_bytes",
    )?;
    registry.register(Box::new(body_budget_refusals.clone()))?;
    let buffered_body_bytes = IntGauge::new(
        "tollgate_buffered_body_bytes",
        "Request body bytes held in memory now (bodies over 64 KiB, counted twice)",
    )?;
    registry.register(Box::new(buffered_body_bytes.clone()))?;
    registry.register(Box::new(attempts.clone()))?;
    registry.register(Box::new(duration.clone()))?;
    registry.register(Box::new(ttft.clone()))?;
    registry.register(Box::new(tokens.clone()))?;
    registry.register(Box::new(inflight.clone()))?;
    registry.register(Box::new(upstream_healthy.clone()))?;
    registry.register(Box::new(breaker_opened.clone()))?;
    registry.register(Box::new(config_reloads.clone()))?;
    registry.register(Box::new(config_generation.clone()))?;
    registry.register(Box::new(usage_events_written.clone()))?;
    registry.register(Box::new(usage_events_dropped.clone()))?;
    registry.register(Box::new(usage_events_pruned.clone()))?;
    registry.register(Box::new(retention_failures.clone()))?;
    registry.register(Box::new(stream_errors.clone()))?;
    registry.register(Box::new(gateway_overhead.clone()))?;
    let ledger_entries_written = IntCounter::new(
        "tollgate_ledger_entries_written_total",
        "Charges committed to the store (usage records that carry a charge)",
    )?;
    let uncollected = IntCounter::new(
        "tollgate_uncollected_nanocredits_total",
        "Cost above what a call's accounts could pay (never taken from a balance)",
    )?;
    let recorder_queued = IntGaugeVec::new(
        Opts::new(
            "tollgate_recorder_queued",
            "Usage records waiting for the recorder, by queue (charged: never dropped; usage: bounded)",
        ),
        &["queue"],
    )?;
    let recorder_commit_failures = IntCounter::new(
        "tollgate_recorder_commit_failures_total",
        "Recorder commits that failed and are being retried (the store is not accepting writes)",
    )?;
    let hold_exact_counts = IntCounterVec::new(
        Opts::new(
            "tollgate_hold_exact_counts_total",
            "Credit holds whose byte bound did not fit the remaining credit and were counted with the model's tokenizer, by outcome (held or refused)",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(ledger_entries_written.clone()))?;
    registry.register(Box::new(uncollected.clone()))?;
    registry.register(Box::new(hold_exact_counts.clone()))?;
    registry.register(Box::new(recorder_queued.clone()))?;
    registry.register(Box::new(recorder_commit_failures.clone()))?;
    let router_decisions = IntCounterVec::new(
        Opts::new(
            "tollgate_router_decisions_total",
            "Requests for model auto routed, by tier and reason",
        ),
        &["tier", "reason"],
    )?;
    let router_errors = IntCounter::new(
        "tollgate_router_errors_total",
        "Router failures: the request went to the fallback tier",
    )?;
    registry.register(Box::new(router_decisions.clone()))?;
    registry.register(Box::new(router_errors.clone()))?;
    // The process's CPU, memory, file descriptors and threads (Linux), and what is running.
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build_info = IntGaugeVec::new(
        Opts::new("tollgate_build_info", "The running build (always 1)"),
        &["version"],
    )?;
    registry.register(Box::new(build_info.clone()))?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    // Series whose labels are fixed are exported from start-up, at zero, so that alerts and
    // dashboards see them before the first event (per-channel ones are created when a
    // configuration is loaded).
    for (vec, labels) in [
        (
            &stream_errors,
            &[
                &["upstream_broken"][..],
                &["truncated"],
                &["total_timeout"],
                &["client_gone"],
            ][..],
        ),
        (
            &admin_auth_failures,
            &[&["invalid"][..], &["throttled"]][..],
        ),
        (&config_reloads, &[&["ok"][..], &["error"]][..]),
        (&network_refusals, &[&["key"][..], &["tenant"]][..]),
    ] {
        for l in labels {
            vec.with_label_values(l);
        }
    }
    for kind in [
        "balance_low",
        "balance_days",
        "department_budget",
        "user_quota",
        "key_quota",
        "test",
    ] {
        alerts_fired.with_label_values(&[kind]);
        if kind != "test" {
            alerts_active.with_label_values(&[kind]);
        }
    }
    for channel in ["email", "webhook"] {
        for outcome in ["delivered", "failed", "retried"] {
            alert_deliveries.with_label_values(&[channel, outcome]);
        }
    }
    for provider in ["alipay", "wechat", "stripe"] {
        for outcome in [
            "credited",
            "duplicate",
            "ignored",
            "bad_signature",
            "unknown_order",
            "mismatch",
            "error",
        ] {
            payment_notifications.with_label_values(&[provider, outcome]);
        }
    }
    for detector in [
        "secrets",
        "email",
        "phone",
        "cn_id",
        "bank_card",
        "keywords",
    ] {
        for action in ["log", "redact", "block"] {
            guardrail_hits.with_label_values(&[detector, action]);
        }
    }
    for outcome in ["held", "refused"] {
        hold_exact_counts.with_label_values(&[outcome]);
    }
    for queue in ["charged", "usage"] {
        recorder_queued.with_label_values(&[queue]);
    }
    Ok(Metrics {
        registry,
        requests,
        endpoint_requests,
        endpoint_ok,
        admin_auth_failures,
        payment_notifications,
        alerts_fired,
        alerts_active,
        network_refusals,
        guardrail_hits,
        alert_deliveries,
        header_timeouts,
        proxy_protocol_refusals,
        malformed_requests,
        credit_bank_up,
        credit_bank_unreplicated,
        slow_bodies,
        body_budget_refusals,
        buffered_body_bytes,
        attempts,
        duration,
        ttft,
        tokens,
        inflight,
        upstream_healthy,
        breaker_opened,
        config_reloads,
        config_generation,
        usage_events_written,
        usage_events_dropped,
        usage_events_pruned,
        retention_failures,
        stream_errors,
        gateway_overhead,
        ledger_entries_written,
        uncollected,
        hold_exact_counts,
        recorder_queued,
        recorder_commit_failures,
        router_decisions,
        router_errors,
    })
}

/// A channel's metric children, resolved once per configuration: the per-request metrics then
/// cost an increment, not a label lookup (hashing the label values, a lock, a map probe) each.
#[derive(Debug, Clone)]
pub struct ChannelMetrics {
    pub duration: Histogram,
    pub ttft: Histogram,
    /// By model name, for the models the channel's upstreams serve.
    pub models: crate::FastMap<String, ModelMetrics>,
}

#[derive(Debug, Clone)]
pub struct ModelMetrics {
    /// `tollgate_requests_total{status="200"}`.
    pub ok: IntCounter,
    /// Tokens by kind, in `TOKEN_KINDS` order.
    pub tokens: [IntCounter; 5],
}

/// The `kind` label values of `tollgate_tokens_total`.
pub const TOKEN_KINDS: [&str; 5] = ["prompt", "cached", "completion", "reasoning", "cache_write"];

impl ChannelMetrics {
    pub fn new<'a>(channel: &str, models: impl IntoIterator<Item = &'a str>) -> ChannelMetrics {
        let m = &*METRICS;
        ChannelMetrics {
            duration: m.duration.with_label_values(&[channel]),
            ttft: m.ttft.with_label_values(&[channel]),
            models: models
                .into_iter()
                .map(|model| {
                    let labels = |kind| [channel, model, kind];
                    (
                        model.to_string(),
                        ModelMetrics {
                            ok: m.requests.with_label_values(&[channel, model, "200"]),
                            tokens: TOKEN_KINDS.map(|k| m.tokens.with_label_values(&labels(k))),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[allow(clippy::expect_used)]
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric definitions are static and valid"));

/// The text exposition of every metric.
pub fn render() -> Vec<u8> {
    METRICS
        .buffered_body_bytes
        .set(crate::proxy::body::BodyHold::in_use() as i64);
    let mut buf = Vec::with_capacity(16 * 1024);
    let families = METRICS.registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    buf
}

#[cfg(test)]
mod resolved_tests {
    use super::*;

    #[test]
    fn pre_resolved_children_are_the_labelled_series() {
        let cm = ChannelMetrics::new("resolved-test", ["m1", "m2"]);
        let m = &*METRICS;
        let before = m
            .requests
            .with_label_values(&["resolved-test", "m2", "200"])
            .get();
        cm.models["m2"].ok.inc();
        cm.models["m2"].tokens[2].inc_by(7);
        cm.duration.observe(0.5);
        assert_eq!(
            m.requests
                .with_label_values(&["resolved-test", "m2", "200"])
                .get(),
            before + 1
        );
        assert_eq!(
            m.tokens
                .with_label_values(&["resolved-test", "m2", "completion"])
                .get(),
            7
        );
        assert_eq!(
            m.duration
                .with_label_values(&["resolved-test"])
                .get_sample_count(),
            1
        );
        assert!(!cm.models.contains_key("m3"));
    }
}
