//! The complexity router: which model tier serves a `model: "auto"` request (issue 5,
//! docs/routing.md). Not to be confused with `crate::routing`, which balances upstreams.
//!
//! # API for the gateway
//!
//! ```text
//! // once per configuration (reloads rebuild it; everything is immutable, share by Arc):
//! let settings: &RouterSettings = config.router.as_deref()?;        // [router] section
//! let sticky = StickyMap::new(settings.sticky_capacity, settings.sticky_ttl); // service-wide
//!
//! // per request, when the model name is auto / auto:<mode>:
//! let Some(mode) = parse_auto_model(model_name) else { /* concrete model: no routing */ };
//! let policy = match tenant_override {            // TenantRouterOverride, stored per tenant
//!     Some(o) => Arc::new(settings.policy.with_override(&o, &models, &channels)?), // cache it
//!     None => settings.policy.clone(),
//! };
//! let d: Decision = decide(
//!     Some(&settings.model),
//!     &policy,
//!     &RouteInput { body: &json, hint_header: headers.get("x-tollgate-tier"), mode,
//!                   scope: tenant_id },
//!     Some(&sticky),
//! );
//! // d.tier.model / d.tier.channel: what to call; d.reason.as_str(), d.score: headers, usage
//! // event and metrics. decide never fails: on any internal error it returns the policy's
//! // fallback tier with Reason::RouterError (count it).
//! ```
//!
//! The caller must strip the body field `tollgate_tier` (a hint) before forwarding the body.

mod features;
mod model;
mod policy;
mod sticky;

pub mod cli;

pub use features::{score, score_f64, DENSE_NAMES, FEATURE_VERSION};
pub use model::{FeatureSpec, ModelError, RouterModel};
pub use policy::{
    build_router, ModelLookup, RoutePolicy, RouterSettings, TenantRouterOverride, Tier, MAX_TIERS,
};
pub use sticky::StickyMap;

use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Header through which a caller may ask for a minimum tier (if the policy allows hints).
pub const HINT_HEADER: &str = "x-tollgate-tier";
/// Body field with the same meaning (the gateway removes it before forwarding).
pub const HINT_FIELD: &str = "tollgate_tier";

/// A target share of strong-tier calls; thresholds come from the model's score quantiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// ~20% strong (`auto:cheap`, also `auto:cost`).
    Cheap,
    /// ~50% strong (`auto:balanced`).
    Balanced,
    /// ~80% strong (`auto:quality`).
    Quality,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "cheap" | "cost" => Some(Mode::Cheap),
            "balanced" => Some(Mode::Balanced),
            "quality" => Some(Mode::Quality),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cheap => "cheap",
            Mode::Balanced => "balanced",
            Mode::Quality => "quality",
        }
    }
}

/// `Some(None)` for `auto` (the policy's default mode), `Some(Some(mode))` for
/// `auto:cheap|cost|balanced|quality`, `None` for any other name (a concrete model: the
/// router is bypassed).
pub fn parse_auto_model(name: &str) -> Option<Option<Mode>> {
    match name {
        "auto" => Some(None),
        _ => name.strip_prefix("auto:").and_then(Mode::parse).map(Some),
    }
}

/// Why a tier was chosen. `as_str` is low-cardinality (a metric label and the
/// `x-tollgate-route-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The caller's hint (header or body field) raised the tier.
    Hint,
    /// The conversation was escalated before and stays on its tier.
    Sticky,
    /// The request carries images.
    Images,
    /// The estimated input (+ requested output) exceeds the light tier's context window.
    Context,
    /// More tools than `max_light_tools`.
    Tools,
    /// `tool_choice` forces tool use (`required` or a named function).
    ToolChoice,
    /// `response_format` is `json_schema`.
    JsonSchema,
    /// The learned score reached the mode's threshold.
    ScoreAbove(Mode),
    /// The learned score stayed below the mode's threshold.
    ScoreBelow(Mode),
    /// The router failed; the fallback tier was used.
    RouterError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Hint => "hint",
            Reason::Sticky => "sticky",
            Reason::Images => "images",
            Reason::Context => "context",
            Reason::Tools => "tools",
            Reason::ToolChoice => "tool_choice",
            Reason::JsonSchema => "json_schema",
            Reason::ScoreAbove(Mode::Cheap) => "score>=threshold(cheap)",
            Reason::ScoreAbove(Mode::Balanced) => "score>=threshold(balanced)",
            Reason::ScoreAbove(Mode::Quality) => "score>=threshold(quality)",
            Reason::ScoreBelow(Mode::Cheap) => "score<threshold(cheap)",
            Reason::ScoreBelow(Mode::Balanced) => "score<threshold(balanced)",
            Reason::ScoreBelow(Mode::Quality) => "score<threshold(quality)",
            Reason::RouterError => "router_error",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The router's answer for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub tier: Arc<Tier>,
    /// Index of `tier` in the policy (0 = light).
    pub tier_index: usize,
    /// The learned score, when it was computed.
    pub score: Option<f32>,
    /// The threshold of `mode` the score was compared with.
    pub threshold: Option<f32>,
    pub mode: Mode,
    pub reason: Reason,
}

/// What the router reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// The parsed OpenAI chat request body.
    pub body: &'a Value,
    /// Value of the `x-tollgate-tier` header, if present.
    pub hint_header: Option<&'a str>,
    /// The mode named by the model (`auto:quality`); `None`: the policy's default.
    pub mode: Option<Mode>,
    /// Namespace of the sticky key (the tenant id): tenants never share sticky entries.
    pub scope: &'a str,
}

/// Internal failures, turned into the fallback tier with [`Reason::RouterError`].
#[derive(Debug, thiserror::Error)]
enum RouterError {
    #[error("no router model is loaded")]
    NoModel,
    #[error("the policy has no tiers")]
    NoTiers,
    #[error("the score is not a number in [0, 1]")]
    BadScore,
    #[error("the router panicked")]
    Panicked,
}

/// Route one request. Never fails and never panics: any internal failure gives the policy's
/// fallback tier with [`Reason::RouterError`].
pub fn decide(
    model: Option<&RouterModel>,
    policy: &RoutePolicy,
    input: &RouteInput<'_>,
    sticky: Option<&StickyMap>,
) -> Decision {
    decide_at(model, policy, input, sticky, Instant::now())
}

/// [`decide`] at a given instant (for the sticky map's TTL; tests pass their own clock).
pub fn decide_at(
    model: Option<&RouterModel>,
    policy: &RoutePolicy,
    input: &RouteInput<'_>,
    sticky: Option<&StickyMap>,
    now: Instant,
) -> Decision {
    let mode = input.mode.unwrap_or(policy.default_mode);
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        try_decide(model, policy, input, sticky, mode, now)
    }))
    .unwrap_or(Err(RouterError::Panicked));
    match attempt {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "router failed, using the fallback tier");
            fallback(policy, mode)
        }
    }
}

fn fallback(policy: &RoutePolicy, mode: Mode) -> Decision {
    let idx = policy.fallback_tier.min(policy.top());
    let tier = policy.tiers.get(idx).cloned().unwrap_or_else(|| {
        // Unreachable with a validated policy (2+ tiers); a placeholder rather than a panic.
        Arc::new(Tier {
            name: String::new(),
            model: String::new(),
            channel: None,
            context_tokens: None,
        })
    });
    Decision {
        tier,
        tier_index: idx,
        score: None,
        threshold: None,
        mode,
        reason: Reason::RouterError,
    }
}

/// Tokens the request may occupy: text bytes / 4 (the usual English rule of thumb) plus the
/// requested output (`max_completion_tokens` or `max_tokens`).
fn estimated_tokens(body: &Value) -> u64 {
    let text = features::total_text_bytes(body) as u64;
    let out = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    text.div_ceil(4).saturating_add(out)
}

fn has_images(body: &Value) -> bool {
    let Some(Value::Array(msgs)) = body.get("messages") else {
        return false;
    };
    msgs.iter().any(|m| match m.get("content") {
        Some(Value::Array(parts)) => parts.iter().any(|p| {
            matches!(
                p.get("type").and_then(Value::as_str),
                Some("image_url") | Some("input_image") | Some("image")
            )
        }),
        _ => false,
    })
}

fn forces_tool_use(body: &Value) -> bool {
    match body.get("tool_choice") {
        Some(Value::String(s)) => s == "required",
        Some(Value::Object(_)) => true,
        _ => false,
    }
}

/// The sticky key of a conversation: FNV-1a of the scope, the system/developer messages and the
/// first user message (each a bounded fingerprint). `None` without a user message.
pub fn conversation_key(body: &Value, scope: &str) -> Option<u64> {
    let msgs = match body.get("messages") {
        Some(Value::Array(m)) => m,
        _ => return None,
    };
    let mut h = features::fnv(scope.as_bytes());
    for m in msgs {
        match m.get("role").and_then(Value::as_str) {
            Some("system") | Some("developer") => {
                h = features::fingerprint(h ^ 0x5, m.get("content"), 1024);
            }
            Some("user") => {
                return Some(features::fingerprint(h ^ 0x7, m.get("content"), 1024));
            }
            _ => {}
        }
    }
    None
}

fn try_decide(
    model: Option<&RouterModel>,
    policy: &RoutePolicy,
    input: &RouteInput<'_>,
    sticky: Option<&StickyMap>,
    mode: Mode,
    now: Instant,
) -> Result<Decision, RouterError> {
    if policy.tiers.is_empty() {
        return Err(RouterError::NoTiers);
    }
    let model = model.ok_or(RouterError::NoModel)?;
    let body = input.body;
    let top = policy.top();

    // Hard rules: each may set a minimum tier. The first rule reaching the highest minimum
    // names the reason.
    let mut min_tier = 0usize;
    let mut min_reason: Option<Reason> = None;
    let mut raise = |tier: usize, reason: Reason| {
        if tier > min_tier {
            min_tier = tier;
            min_reason = Some(reason);
        }
    };
    if policy.allow_hints {
        let hint = input
            .hint_header
            .or_else(|| body.get(HINT_FIELD).and_then(Value::as_str));
        if let Some(t) = hint.and_then(|h| policy.tier_index(h.trim())) {
            raise(t, Reason::Hint);
        }
    }
    let key = conversation_key(body, input.scope);
    if let (Some(k), Some(s)) = (key, sticky) {
        if let Some(t) = s.get(k, now) {
            raise(usize::from(t).min(top), Reason::Sticky);
        }
    }
    if has_images(body) {
        raise(top, Reason::Images);
    }
    let light_ctx = policy.tiers.first().and_then(|t| t.context_tokens);
    if let Some(ctx) = light_ctx {
        let need = estimated_tokens(body);
        if need > ctx {
            let fits = policy
                .tiers
                .iter()
                .position(|t| t.context_tokens.is_none_or(|c| c >= need))
                .unwrap_or(top);
            raise(fits, Reason::Context);
        }
    }
    let tools = match body.get("tools") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    if tools > policy.max_light_tools {
        raise(top, Reason::Tools);
    }
    if forces_tool_use(body) {
        raise(top, Reason::ToolChoice);
    }
    if body
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
        == Some("json_schema")
    {
        raise(top, Reason::JsonSchema);
    }

    // The learned score, always computed (for the audit headers) at a bounded cost.
    let s = features::score_f64(model, body);
    if !(0.0..=1.0).contains(&s) {
        return Err(RouterError::BadScore);
    }
    let threshold = model.threshold(mode);
    let (tier_index, reason) = match min_reason {
        Some(r) if min_tier >= top => (top, r),
        _ if s >= threshold => (top, Reason::ScoreAbove(mode)),
        Some(r) => (min_tier, r),
        None => (0, Reason::ScoreBelow(mode)),
    };
    if tier_index > 0 {
        if let (Some(k), Some(st)) = (key, sticky) {
            st.escalate(k, tier_index as u8, now);
        }
    }
    let tier = policy
        .tiers
        .get(tier_index)
        .cloned()
        .ok_or(RouterError::NoTiers)?;
    Ok(Decision {
        tier,
        tier_index,
        score: Some(s as f32),
        threshold: Some(threshold as f32),
        mode,
        reason,
    })
}

#[cfg(test)]
mod tests;
