//! `model: "auto"` on the request path: the complexity router (`crate::router`) picks the tier,
//! this module applies the decision to the request (model, channel, hint field removed) and
//! remembers it for the response headers, the usage event, the metrics and the savings report.
//! Routing never fails a request: the router itself falls back to the policy's fallback tier, and
//! a tenant override that no longer fits the configuration falls back to the gateway's policy.

use crate::app::App;
use crate::config::{Channel, Config, Model, ModelKind};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::router::{self, Mode, Reason, RouteInput, RoutePolicy};
use crate::tenancy::ApiKey;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What the router decided for one request.
#[derive(Debug, Clone)]
pub struct RouteNote {
    pub tier: String,
    pub model: String,
    pub score: Option<f32>,
    pub reason: &'static str,
    pub mode: &'static str,
    /// The strongest tier's model and channel: what "send everything to the strong tier" would
    /// have cost is priced with them.
    pub baseline_model: Option<Arc<Model>>,
    pub baseline_channel: Option<Arc<Channel>>,
}

/// The tenant's policy: the gateway's, or with the tenant's override applied (cached per
/// configuration generation and override).
fn policy_for(
    app: &App,
    cfg: &Config,
    settings: &router::RouterSettings,
    key: &ApiKey,
) -> Arc<RoutePolicy> {
    let Some(o) = key.router_override.as_ref() else {
        return settings.policy.clone();
    };
    let generation = app.generation();
    if let Some(hit) = app.route_policies.get(&key.tenant_id) {
        let (g, ov, p) = hit.value();
        if *g == generation && Arc::ptr_eq(ov, o) {
            return p.clone();
        }
    }
    let lookup = |name: &str| {
        cfg.model(name)
            .filter(|m| m.kind == ModelKind::Chat)
            .map(|m| (m.name.clone(), m.context_window))
    };
    let exists = |name: &str| cfg.channel(name).is_some();
    match settings.policy.with_override(o, &lookup, &exists) {
        Ok(p) => {
            let p = Arc::new(p);
            app.route_policies
                .insert(key.tenant_id, (generation, o.clone(), p.clone()));
            p
        }
        Err(e) => {
            // Validated when it was stored; the configuration changed since (a tier's model
            // or channel is gone). Route with the gateway's policy and say so.
            METRICS.router_errors.inc();
            tracing::warn!(tenant = key.tenant_id.0, error = %e, "tenant router override no longer valid; using the gateway's policy");
            settings.policy.clone()
        }
    }
}

/// Route a chat request whose model is `auto` / `auto:<mode>`. Returns the concrete model name
/// and the channel the tier names (if any); records the decision in `note`.
pub fn route(
    app: &App,
    cfg: &Config,
    key: &ApiKey,
    hint_header: Option<&str>,
    obj: &mut Map<String, Value>,
    mode: Option<Mode>,
    request_channel: &Arc<Channel>,
) -> Result<(String, Option<Arc<Channel>>, RouteNote), GatewayError> {
    let Some(settings) = cfg.router.as_deref() else {
        return Err(GatewayError::ModelNotFound(
            "The model `auto` needs the complexity router, which is not configured on this gateway.".into(),
        ));
    };
    let policy = policy_for(app, cfg, settings, key);
    let scope = key.tenant_id.0.to_string();
    let body = Value::Object(std::mem::take(obj));
    let d = router::decide(
        Some(&settings.model),
        &policy,
        &RouteInput {
            body: &body,
            hint_header,
            mode,
            scope: &scope,
        },
        Some(&app.sticky),
    );
    if let Value::Object(m) = body {
        *obj = m;
    }
    obj.remove(router::HINT_FIELD);
    let reason = d.reason.as_str();
    METRICS
        .router_decisions
        .with_label_values(&[&d.tier.name, reason])
        .inc();
    if d.reason == Reason::RouterError {
        METRICS.router_errors.inc();
    }
    let channel = match d.tier.channel.as_deref() {
        Some(name) => Some(cfg.channel(name).cloned().ok_or_else(|| {
            GatewayError::NoUpstream(format!(
                "Channel `{name}` of routing tier `{}` is not configured on this gateway.",
                d.tier.name
            ))
        })?),
        None => None,
    };
    let strong = policy.tiers.last();
    let note = RouteNote {
        tier: d.tier.name.clone(),
        model: d.tier.model.clone(),
        score: d.score,
        reason,
        mode: d.mode.as_str(),
        baseline_model: strong.and_then(|t| cfg.model(&t.model).cloned()),
        baseline_channel: strong
            .and_then(|t| t.channel.as_deref())
            .and_then(|c| cfg.channel(c).cloned())
            .or_else(|| Some(request_channel.clone())),
    };
    Ok((d.tier.model.clone(), channel, note))
}
