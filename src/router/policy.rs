//! Tiers and routing policy: the `[router]` section of the configuration validated into
//! runtime types, and the per-tenant override applied on top of it.

use super::model::RouterModel;
use super::Mode;
use crate::config::schema::{RouterSection, TierSection};
use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Resolves a model name or alias to its canonical name and context window (`None`: not a
/// configured chat model).
pub type ModelLookup<'a> = dyn Fn(&str) -> Option<(String, Option<u64>)> + 'a;

/// At most this many tiers (tier indexes are stored as `u8` in the sticky map).
pub const MAX_TIERS: usize = 8;

/// One tier: the model requests routed to it use, and optionally the channel they go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    /// Canonical gateway model name (aliases in the file are resolved).
    pub model: String,
    /// Channel to use instead of the caller's; `None`: the caller's channel.
    pub channel: Option<String>,
    /// Context window in tokens (the tier's own setting, else the model's); `None`: unknown.
    pub context_tokens: Option<u64>,
}

/// How requests of one tenant are routed. Tiers are ordered from the cheapest (index 0, the
/// "light" tier) to the strongest (the last, the "strong" tier).
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub tiers: Vec<Arc<Tier>>,
    /// Mode of plain `auto`.
    pub default_mode: Mode,
    /// Tier used when the router fails (index into `tiers`).
    pub fallback_tier: usize,
    /// Whether the caller may raise the tier with `x-tollgate-tier` / `tollgate_tier`.
    pub allow_hints: bool,
    /// More tools than this sends a request to the strong tier.
    pub max_light_tools: usize,
}

impl RoutePolicy {
    pub fn top(&self) -> usize {
        self.tiers.len().saturating_sub(1)
    }

    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// This policy with a tenant's override applied; validated like the file (errors name
    /// `tenant_router.<field>`). `models` resolves a model name or alias to its canonical name
    /// and context window; `channel_exists` checks a channel name.
    pub fn with_override(
        &self,
        o: &TenantRouterOverride,
        models: &ModelLookup<'_>,
        channel_exists: &dyn Fn(&str) -> bool,
    ) -> Result<RoutePolicy, ConfigError> {
        let TenantRouterOverride {
            tiers,
            default_mode,
            fallback_tier,
            allow_hints,
            max_light_tools,
        } = o;
        let at = "tenant_router";
        let tiers = match tiers {
            Some(t) => build_tiers(t, at, models, channel_exists)?,
            None => self.tiers.clone(),
        };
        let default_mode = match default_mode {
            Some(m) => parse_mode(m, &format!("{at}.default_mode"))?,
            None => self.default_mode,
        };
        let fallback_tier = match fallback_tier {
            Some(name) => find_tier(&tiers, name, &format!("{at}.fallback_tier"))?,
            // The base fallback by name when the tiers changed, else the strongest.
            None => self
                .tiers
                .get(self.fallback_tier)
                .and_then(|t| tiers.iter().position(|u| u.name == t.name))
                .unwrap_or(tiers.len().saturating_sub(1)),
        };
        Ok(RoutePolicy {
            tiers,
            default_mode,
            fallback_tier,
            allow_hints: allow_hints.unwrap_or(self.allow_hints),
            max_light_tools: max_light_tools.unwrap_or(self.max_light_tools),
        })
    }
}

/// A tenant's override of the gateway's router settings, as the store keeps it (JSON with the
/// same field names as the `[router]` section; every field optional, unknown fields refused):
///
/// ```json
/// {"tiers": [{"name": "light", "model": "deepseek-chat"},
///            {"name": "strong", "model": "gpt-4o", "channel": "official"}],
///  "default_mode": "quality", "allow_hints": true}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRouterOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierSection>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_hints: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_light_tools: Option<usize>,
}

/// The validated `[router]` section.
#[derive(Debug)]
pub struct RouterSettings {
    pub model_file: PathBuf,
    pub model: Arc<RouterModel>,
    pub policy: Arc<RoutePolicy>,
    pub sticky_capacity: usize,
    pub sticky_ttl: Duration,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn parse_mode(s: &str, at: &str) -> Result<Mode, ConfigError> {
    Mode::parse(s).ok_or_else(|| {
        invalid(
            at,
            format!("unknown mode `{s}` (cheap, balanced or quality)"),
        )
    })
}

fn find_tier(tiers: &[Arc<Tier>], name: &str, at: &str) -> Result<usize, ConfigError> {
    tiers
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| invalid(at, format!("no tier named `{name}`")))
}

fn build_tiers(
    tiers: &[TierSection],
    at: &str,
    models: &ModelLookup<'_>,
    channel_exists: &dyn Fn(&str) -> bool,
) -> Result<Vec<Arc<Tier>>, ConfigError> {
    if tiers.len() < 2 || tiers.len() > MAX_TIERS {
        return Err(invalid(
            format!("{at}.tiers"),
            format!(
                "between 2 and {MAX_TIERS} tiers are needed, cheapest first (found {})",
                tiers.len()
            ),
        ));
    }
    let mut out: Vec<Arc<Tier>> = Vec::new();
    for (i, t) in tiers.iter().enumerate() {
        let TierSection {
            name,
            model,
            channel,
            context_tokens,
        } = t;
        let tat = format!("{at}.tiers[{i}]");
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_whitespace()) {
            return Err(invalid(
                format!("{tat}.name"),
                "must be 1-64 characters without spaces",
            ));
        }
        if out.iter().any(|u| &u.name == name) {
            return Err(invalid(
                format!("{tat}.name"),
                format!("tier `{name}` is defined twice"),
            ));
        }
        let (canonical, window) = models(model).ok_or_else(|| {
            invalid(
                format!("{tat}.model"),
                format!("model `{model}` is not configured (or not a chat model)"),
            )
        })?;
        if let Some(c) = channel {
            if !channel_exists(c) {
                return Err(invalid(
                    format!("{tat}.channel"),
                    format!("channel `{c}` is not configured"),
                ));
            }
        }
        if *context_tokens == Some(0) {
            return Err(invalid(format!("{tat}.context_tokens"), "must be positive"));
        }
        out.push(Arc::new(Tier {
            name: name.clone(),
            model: canonical,
            channel: channel.clone(),
            context_tokens: context_tokens.or(window),
        }));
    }
    Ok(out)
}

/// Validate the `[router]` section and load its model file.
pub fn build_router(
    section: RouterSection,
    models: &ModelLookup<'_>,
    channel_exists: &dyn Fn(&str) -> bool,
) -> Result<RouterSettings, ConfigError> {
    // Destructured without `..`: a new setting fails to compile until it is handled here.
    let RouterSection {
        model_file,
        default_mode,
        fallback_tier,
        allow_hints,
        max_light_tools,
        sticky_capacity,
        sticky_ttl_seconds,
        tiers,
    } = section;
    let tiers = build_tiers(&tiers, "router", models, channel_exists)?;
    let default_mode = parse_mode(&default_mode, "router.default_mode")?;
    let fallback_tier = match fallback_tier {
        Some(name) => find_tier(&tiers, &name, "router.fallback_tier")?,
        None => tiers.len() - 1,
    };
    if sticky_ttl_seconds == 0 && sticky_capacity > 0 {
        return Err(invalid(
            "router.sticky_ttl_seconds",
            "must be positive (set sticky_capacity = 0 to disable stickiness)",
        ));
    }
    let model = RouterModel::load(std::path::Path::new(&model_file))
        .map_err(|e| invalid("router.model_file", e.to_string()))?;
    Ok(RouterSettings {
        model_file: PathBuf::from(model_file),
        model: Arc::new(model),
        policy: Arc::new(RoutePolicy {
            tiers,
            default_mode,
            fallback_tier,
            allow_hints,
            max_light_tools,
        }),
        sticky_capacity,
        sticky_ttl: Duration::from_secs(sticky_ttl_seconds),
    })
}
