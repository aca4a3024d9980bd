//! Tenants, their rate limits, quota period and complexity-router override.

use super::auth::Principal;
use super::wire::{
    bad_param, double_option, ApiResult, ErrorBody, JsonBody, ListQuery, Page, PathParams,
    QueryParams, TenantOut,
};
use super::Admin;
use crate::billing::entry::Account;
use crate::error::GatewayError;
use crate::router::TenantRouterOverride;
use crate::store::sqlite::LimitSubject;
use crate::tenancy::limits::LimitsPatch;
use crate::tenancy::{QuotaPeriod, Role};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
}

/// Tenants: every tenant for the operator, one's own for a user.
#[utoipa::path(get, path = "/admin/tenants", tag = "tenants", security(("bearer" = [])),
    params(ListQuery), responses((status = 200, body = Page<TenantOut>), (status = 401, body = ErrorBody)))]
pub async fn list_tenants(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<TenantOut>>> {
    let mut tenants = admin.blocking(|a| a.store.list_tenants()).await?;
    if let Some(u) = who.user() {
        tenants.retain(|t| t.id == u.user.tenant_id);
    }
    let page = q.page(tenants, |t| t.id.0, |t| t.created_at)?;
    Ok(Json(Page {
        data: page.data.iter().map(TenantOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Create a tenant (operator).
#[utoipa::path(post, path = "/admin/tenants", tag = "tenants", security(("bearer" = [])),
    request_body = CreateTenant,
    responses((status = 201, body = TenantOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_tenant(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    JsonBody(req): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantOut>)> {
    who.require_operator()?;
    let t = admin
        .blocking(move |a| a.store.create_tenant(&req.name))
        .await?;
    Ok((StatusCode::CREATED, Json(TenantOut::from(&t))))
}

/// One tenant, by id or name.
#[utoipa::path(get, path = "/admin/tenants/{t}", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = TenantOut), (status = 404, body = ErrorBody)))]
pub async fn get_tenant(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<TenantOut>> {
    let tenant = admin.tenant(&t).await?;
    who.role_in(tenant.id)?;
    let id = tenant.id;
    let period = admin.blocking(move |a| a.store.quota_period(id)).await?;
    Ok(Json(TenantOut {
        quota_period: Some(period.as_str().into()),
        ..TenantOut::from(&tenant)
    }))
}

/// A change of rate limits: only the fields sent change (absent: kept; `null`: unlimited).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    /// Requests per minute.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub rpm_limit: Option<Option<u32>>,
    /// Tokens per minute.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub tpm_limit: Option<Option<u64>>,
}

impl SetLimits {
    pub fn patch(&self) -> LimitsPatch {
        LimitsPatch {
            rpm: self.rpm_limit,
            tpm: self.tpm_limit,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LimitsOut {
    /// The tenant, user or key.
    pub id: i64,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u64>,
}

pub async fn set_limits_of(
    admin: &Admin,
    subject: LimitSubject,
    id: i64,
    req: SetLimits,
) -> ApiResult<Json<LimitsOut>> {
    let patch = req.patch();
    let limits = admin
        .blocking(move |a| {
            let l = a.store.set_limits(subject, patch)?;
            a.refresh_keys()?;
            Ok(l)
        })
        .await?;
    Ok(Json(LimitsOut {
        id,
        rpm_limit: limits.rpm,
        tpm_limit: limits.tpm,
    }))
}

/// Change a tenant's rate limits (operator).
#[utoipa::path(patch, path = "/admin/tenants/{t}/limits", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = SetLimits,
    responses((status = 200, body = LimitsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_tenant_limits(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<SetLimits>,
) -> ApiResult<Json<LimitsOut>> {
    who.require_operator()?;
    let tenant = admin.tenant(&t).await?;
    set_limits_of(&admin, LimitSubject::Tenant(tenant.id), tenant.id.0, req).await
}

/// The same as `PATCH` (kept for clients of the first version).
#[utoipa::path(put, path = "/admin/tenants/{t}/limits", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = SetLimits,
    responses((status = 200, body = LimitsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_tenant_limits_put(
    state: State<Arc<Admin>>,
    who: Principal,
    t: PathParams<String>,
    req: JsonBody<SetLimits>,
) -> ApiResult<Json<LimitsOut>> {
    set_tenant_limits(state, who, t, req).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuotaPeriod {
    /// `none` (lifetime limits), `day` or `month` (UTC).
    pub period: String,
}

#[derive(Serialize, ToSchema)]
pub struct QuotaPeriodOut {
    pub tenant_id: i64,
    /// `none`, `day` or `month`.
    pub quota_period: String,
    /// Start of the current period.
    pub period_started_at: Option<String>,
}

/// Set the period over which key quotas, user quotas and department budgets count (tenant admin).
#[utoipa::path(put, path = "/admin/tenants/{t}/quota-period", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = SetQuotaPeriod,
    responses((status = 200, body = QuotaPeriodOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn quota_period(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<SetQuotaPeriod>,
) -> ApiResult<Json<QuotaPeriodOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let period = QuotaPeriod::parse(&req.period)
        .ok_or_else(|| bad_param("period", "`period` must be one of none, day, month"))?;
    admin
        .blocking(move |a| {
            a.store.set_quota_period(tenant, period)?;
            a.refresh_keys()?;
            // The books now count the new period's spend, as the journal has it.
            let spend: Vec<(Account, i64)> = a
                .store
                .account_spend()?
                .into_iter()
                .filter(|(t, _, _)| *t == tenant)
                .map(|(_, acc, v)| (acc, v))
                .collect();
            a.ledger.restore_spend(tenant, &spend);
            Ok(())
        })
        .await?;
    let now = crate::tenancy::unix_now() * 1000;
    Ok(Json(QuotaPeriodOut {
        tenant_id: tenant.0,
        quota_period: period.as_str().into(),
        period_started_at: Some(period.start_ms(now))
            .filter(|ms| *ms > 0)
            .map(super::wire::time_ms),
    }))
}

/// A routing tier as it applies.
#[derive(Serialize, ToSchema)]
pub struct TierOut {
    pub name: String,
    pub model: String,
    pub channel: Option<String>,
    pub context_tokens: Option<u64>,
}

/// The routing policy that applies to a tenant's `model: "auto"` calls.
#[derive(Serialize, ToSchema)]
pub struct PolicyOut {
    pub tiers: Vec<TierOut>,
    pub default_mode: String,
    pub fallback_tier: Option<String>,
    pub allow_hints: bool,
    pub max_light_tools: usize,
}

fn policy_out(p: &crate::router::RoutePolicy) -> PolicyOut {
    PolicyOut {
        tiers: p
            .tiers
            .iter()
            .map(|t| TierOut {
                name: t.name.clone(),
                model: t.model.clone(),
                channel: t.channel.clone(),
                context_tokens: t.context_tokens,
            })
            .collect(),
        default_mode: p.default_mode.as_str().into(),
        fallback_tier: p.tiers.get(p.fallback_tier).map(|t| t.name.clone()),
        allow_hints: p.allow_hints,
        max_light_tools: p.max_light_tools,
    }
}

#[derive(Serialize, ToSchema)]
pub struct RouterOut {
    pub tenant_id: i64,
    /// The tenant's override, if any.
    #[serde(rename = "override")]
    pub override_: Option<TenantRouterOverride>,
    /// The policy in effect (absent when the router is not configured).
    pub effective: Option<PolicyOut>,
}

/// Chat models by name or alias, with their context window, for router policies.
fn router_models(
    cfg: &crate::config::Config,
) -> impl Fn(&str) -> Option<(String, Option<u64>)> + '_ {
    move |name: &str| {
        cfg.model(name)
            .filter(|m| m.kind == crate::config::ModelKind::Chat)
            .map(|m| (m.name.clone(), m.context_window))
    }
}

/// The tenant's router override and the policy in effect (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/router", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = RouterOut), (status = 404, body = ErrorBody)))]
pub async fn router_get(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<RouterOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let stored = admin
        .blocking(move |a| a.store.router_override(tenant))
        .await?;
    let cfg = admin.app.config();
    let o: Option<TenantRouterOverride> =
        stored.as_deref().and_then(|j| serde_json::from_str(j).ok());
    let effective = cfg.router.as_deref().map(|r| {
        let policy = match o.as_ref() {
            Some(o) => r
                .policy
                .with_override(o, &router_models(&cfg), &|c: &str| cfg.channel(c).is_some())
                .map(Arc::new)
                .unwrap_or_else(|_| r.policy.clone()),
            None => r.policy.clone(),
        };
        policy_out(&policy)
    });
    Ok(Json(RouterOut {
        tenant_id: tenant.0,
        override_: o,
        effective,
    }))
}

/// Set the tenant's router override (tenant admin); checked against the configuration.
#[utoipa::path(put, path = "/admin/tenants/{t}/router", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = TenantRouterOverride,
    responses((status = 200, body = RouterOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn router_put(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(o): JsonBody<TenantRouterOverride>,
) -> ApiResult<Json<RouterOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let cfg = admin.app.config();
    let Some(r) = cfg.router.as_deref() else {
        return Err(GatewayError::bad_request(
            "The complexity router is not configured on this gateway ([router] section).",
        )
        .into());
    };
    let policy = r
        .policy
        .with_override(&o, &router_models(&cfg), &|c: &str| {
            cfg.channel(c).is_some()
        })
        .map_err(|e| GatewayError::bad_request(format!("Invalid router override: {e}")))?;
    let text = serde_json::to_string(&o).map_err(|e| GatewayError::Internal(e.to_string()))?;
    admin
        .blocking(move |a| {
            a.store.set_router_override(tenant, Some(&text))?;
            a.refresh_keys().map(|_| ())
        })
        .await?;
    Ok(Json(RouterOut {
        tenant_id: tenant.0,
        override_: Some(o),
        effective: Some(policy_out(&policy)),
    }))
}

/// Remove the tenant's router override (tenant admin).
#[utoipa::path(delete, path = "/admin/tenants/{t}/router", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = RouterOut), (status = 403, body = ErrorBody)))]
pub async fn router_delete(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<RouterOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    admin
        .blocking(move |a| {
            a.store.set_router_override(tenant, None)?;
            a.refresh_keys().map(|_| ())
        })
        .await?;
    let cfg = admin.app.config();
    Ok(Json(RouterOut {
        tenant_id: tenant.0,
        override_: None,
        effective: cfg.router.as_deref().map(|r| policy_out(&r.policy)),
    }))
}
