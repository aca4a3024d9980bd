//! Health, metrics, the API description, who am I, channels, configuration reload and status.

use super::auth::Principal;
use super::wire::{time, ApiError, ApiResult, ErrorBody, PathParams, UserOut};
use super::Admin;
use crate::config::reload;
use crate::error::GatewayError;
use crate::metrics;
use crate::routing::upstream::BreakerState;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Keys loaded, the books restored, the credit bank reachable (cluster mode) and the
    /// store keeping up.
    pub ready: bool,
    pub config_generation: u64,
    /// Cluster mode: `up` or `down`.
    pub credit_bank: Option<String>,
    /// `backlogged` while charges wait for the store beyond its limit.
    pub store: Option<String>,
}

/// Readiness for a load balancer: 200 when this node can serve calls, 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness, description = "Not ready")))]
pub async fn readyz(State(admin): State<Arc<Admin>>) -> (StatusCode, Json<Readiness>) {
    let app = &admin.app;
    let bank = app
        .ledger
        .fleet()
        .map(|f| f.allowances().bank().is_reachable());
    let backlogged = app.ledger.backlogged();
    let ready =
        app.keys.generation() > 0 && app.ledger.ready() && bank != Some(false) && !backlogged;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            config_generation: app.generation(),
            credit_bank: bank.map(|up| if up { "up" } else { "down" }.into()),
            store: backlogged.then(|| "backlogged".into()),
        }),
    )
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    admin.app.export_upstream_health();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
        .into_response()
}

/// This description (OpenAPI 3.1), generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses(
    (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        admin.openapi.clone(),
    )
        .into_response()
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    /// `operator`, `tenant_admin`, `member` or `viewer`.
    pub role: String,
    pub user: Option<UserOut>,
    pub tenant_id: Option<i64>,
    pub tenant_name: Option<String>,
    /// The CSRF token of the console session the request came with (session tokens only).
    pub csrf: Option<String>,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/admin/me", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    csrf: Option<axum::Extension<super::sessions::SessionCsrf>>,
) -> ApiResult<Json<Me>> {
    let csrf = csrf.map(|axum::Extension(c)| c.0);
    Ok(Json(match &who {
        Principal::Operator => Me {
            role: "operator".into(),
            user: None,
            tenant_id: None,
            tenant_name: None,
            csrf,
        },
        Principal::User(u) => {
            let t = u.user.tenant_id;
            let names = admin.names(&[t]).await?;
            let spend = admin.spend(t, crate::billing::entry::Account::User(u.user.id));
            Me {
                role: u.user.role.as_str().into(),
                user: Some(UserOut::from(&u.user, &names, spend)),
                tenant_id: Some(t.0),
                tenant_name: Some(u.tenant_name.clone()),
                csrf,
            }
        }
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ChannelOut {
    pub name: String,
    pub description: String,
    /// Price multiplier of the channel (decimal string).
    pub multiplier: String,
    pub upstreams: Vec<UpstreamOut>,
}

#[derive(Serialize, ToSchema)]
pub struct UpstreamOut {
    pub id: String,
    pub base_url: String,
    pub weight: u32,
    pub models: Vec<String>,
    /// Why it is disabled by configuration, if it is.
    pub disabled: Option<String>,
    /// Circuit breaker: `closed`, `open` or `half_open`.
    pub breaker: String,
    pub healthy: bool,
    pub inflight: u64,
    /// Latency moving average, milliseconds.
    pub ewma_ms: f64,
    pub requests: u64,
    pub failures: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    pub data: Vec<ChannelOut>,
}

/// Channels with their upstreams' health (operator).
#[utoipa::path(get, path = "/admin/channels", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = ChannelList), (status = 403, body = ErrorBody)))]
pub async fn channels(
    State(admin): State<Arc<Admin>>,
    who: Principal,
) -> ApiResult<Json<ChannelList>> {
    who.require_operator()?;
    let cfg = admin.app.config();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let data = cfg
        .channels
        .iter()
        .map(|c| ChannelOut {
            name: c.name.clone(),
            description: c.description.clone(),
            multiplier: c.multiplier.to_string(),
            upstreams: c
                .upstreams
                .iter()
                .map(|u| UpstreamOut {
                    id: u.id.clone(),
                    base_url: format!(
                        "{}://{}{}",
                        if u.base.tls { "https" } else { "http" },
                        u.base.authority(),
                        u.base.path
                    ),
                    weight: u.weight,
                    models: {
                        let mut m: Vec<String> = u.models.iter().cloned().collect();
                        m.sort();
                        m
                    },
                    disabled: u.disabled.clone(),
                    breaker: u.state.breaker_state().as_str().into(),
                    healthy: u.disabled.is_none()
                        && u.state.breaker_state() == BreakerState::Closed,
                    inflight: u.state.inflight() as u64,
                    ewma_ms: u.state.ewma_us() as f64 / 1000.0,
                    requests: u.state.requests.load(relaxed),
                    failures: u.state.failures.load(relaxed),
                })
                .collect(),
        })
        .collect();
    Ok(Json(ChannelList { data }))
}

#[derive(Serialize, ToSchema)]
pub struct Reloaded {
    pub reloaded: bool,
    pub generation: u64,
}

/// Reload the configuration files now (operator); a bad file keeps the running configuration.
#[utoipa::path(post, path = "/admin/reload", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Reloaded), (status = 400, body = ErrorBody, description = "The new configuration is invalid")))]
pub async fn reload(State(admin): State<Arc<Admin>>, who: Principal) -> ApiResult<Json<Reloaded>> {
    who.require_operator()?;
    match reload::reload(admin.app.clone()).await {
        Ok(()) => Ok(Json(Reloaded {
            reloaded: true,
            generation: admin.app.generation(),
        })),
        Err(e) => Err(ApiError(GatewayError::bad_request(format!(
            "Reload failed, running configuration kept: {e}"
        )))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConfigStatus {
    pub generation: u64,
    /// When the running configuration was loaded (start or last successful reload).
    pub loaded_at: String,
    pub path: Option<String>,
    /// Channels and upstream endpoints in the running configuration.
    pub channels: usize,
    pub upstreams: usize,
    pub last_reload_error: Option<String>,
    pub warnings: Vec<String>,
}

/// The running configuration's generation, file and last reload error (operator).
#[utoipa::path(get, path = "/admin/config/status", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = ConfigStatus), (status = 403, body = ErrorBody)))]
pub async fn config_status(
    State(admin): State<Arc<Admin>>,
    who: Principal,
) -> ApiResult<Json<ConfigStatus>> {
    who.require_operator()?;
    let app = &admin.app;
    let cfg = app.config();
    Ok(Json(ConfigStatus {
        generation: app.generation(),
        loaded_at: time(app.loaded_at()),
        channels: cfg.channels.len(),
        upstreams: cfg.upstreams().count(),
        path: app.config_path.as_ref().map(|p| p.display().to_string()),
        last_reload_error: app.reload_error(),
        warnings: cfg.warnings.clone(),
    }))
}

pub async fn unknown_path(method: Method, uri: Uri) -> ApiError {
    ApiError(GatewayError::NotFound(format!(
        "Unknown admin path `{method} {}`.",
        uri.path()
    )))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(GatewayError::MethodNotAllowed(format!(
        "`{method}` is not allowed on `{}`.",
        uri.path()
    )))
}

#[derive(Serialize, ToSchema)]
pub struct ModelPrice {
    pub model: String,
    pub vendor: String,
    /// Credits per million input tokens on this channel.
    pub input: String,
    /// Credits per million cached input tokens.
    pub cached_input: String,
    /// Credits per million output tokens.
    pub output: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelPrices {
    pub name: String,
    pub description: String,
    pub multiplier: String,
    /// Priced models this channel serves, with what they cost here.
    pub models: Vec<ModelPrice>,
}

#[derive(Serialize, ToSchema)]
pub struct PriceList {
    /// Credits one RMB buys.
    pub credits_per_rmb: String,
    pub channels: Vec<ChannelPrices>,
}

/// The channels and what each model costs on them, in credits per million tokens (any role of
/// the tenant).
#[utoipa::path(get, path = "/admin/tenants/{t}/prices", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = PriceList), (status = 404, body = ErrorBody)))]
pub async fn prices(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<PriceList>> {
    let tenant = admin.tenant(&t).await?.id;
    who.role_in(tenant)?;
    let cfg = admin.app.config();
    let per_rmb = cfg.billing.credits_per_rmb;
    let million = crate::billing::pricing::TokenCounts {
        input: 1_000_000,
        ..Default::default()
    };
    let cost = |m: &crate::config::Model,
                c: &crate::config::Channel,
                t: crate::billing::pricing::TokenCounts| {
        crate::billing::pricing::cost_credits(m, c, per_rmb, &t)
            .map(|d| d.round_dp(6).normalize().to_string())
            .unwrap_or_default()
    };
    let channels = cfg
        .channels
        .iter()
        .map(|c| ChannelPrices {
            name: c.name.clone(),
            description: c.description.clone(),
            multiplier: c.multiplier.to_string(),
            models: cfg
                .models
                .iter()
                .filter(|m| m.price.is_some() && c.serves(&m.name))
                .map(|m| ModelPrice {
                    model: m.name.clone(),
                    vendor: m.vendor.clone(),
                    input: cost(m, c, million),
                    cached_input: cost(
                        m,
                        c,
                        crate::billing::pricing::TokenCounts {
                            cached_input: 1_000_000,
                            ..Default::default()
                        },
                    ),
                    output: cost(
                        m,
                        c,
                        crate::billing::pricing::TokenCounts {
                            output: 1_000_000,
                            ..Default::default()
                        },
                    ),
                })
                .collect(),
        })
        .collect();
    Ok(Json(PriceList {
        credits_per_rmb: per_rmb.to_string(),
        channels,
    }))
}
