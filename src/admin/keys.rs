//! API keys of the data plane: created with model and channel allow-lists, a default channel,
//! a quota, rate limits and an expiry; the secret is shown once (at creation and rotation).

use super::auth::Principal;
use super::tenants::{set_limits_of, LimitsOut, SetLimits};
use super::wire::{
    bad_param, double_option, forbidden, not_found, positive_nano, ApiResult, ErrorBody, Instant,
    JsonBody, KeyOut, ListQuery, Names, Page, PathParams, QueryParams,
};
use super::Admin;
use crate::billing::entry::Account;
use crate::error::GatewayError;
use crate::store::sqlite::{LimitSubject, NewKey};
use crate::store::KeyPatch;
use crate::tenancy::limits::Limits;
use crate::tenancy::{ApiKey, KeyId, Role, UserId};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// A key the caller may see, with the caller's role in its tenant. Another tenant's key and a
/// missing one are both "key not found"; members see their own keys only.
async fn visible_key(
    admin: &Admin,
    who: &Principal,
    id: i64,
) -> Result<(ApiKey, Role), GatewayError> {
    let key = admin.blocking(move |a| a.store.get_key(KeyId(id))).await?;
    let role = who.role_in(key.tenant_id).map_err(|_| not_found("key"))?;
    if role == Role::Member && !owns(who, &key) {
        return Err(not_found("key"));
    }
    Ok((key, role))
}

fn owns(who: &Principal, key: &ApiKey) -> bool {
    who.user().is_some_and(|u| key.user_id == Some(u.user.id))
}

/// Tenant admins manage every key of their tenant; members their own.
fn may_manage(who: &Principal, key: &ApiKey, role: Role) -> Result<(), GatewayError> {
    match role {
        Role::Operator | Role::TenantAdmin => Ok(()),
        Role::Member if owns(who, key) => Ok(()),
        _ => Err(forbidden("You may only manage your own keys.")),
    }
}

pub fn key_out(admin: &Admin, k: &ApiKey, names: &Names) -> KeyOut {
    KeyOut::from(
        k,
        names,
        admin.spend(k.tenant_id, Account::Key(k.id)),
        crate::tenancy::unix_now(),
    )
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// Tenant id or name (operator: default every tenant; users: their own).
    pub tenant: Option<String>,
    /// Only this member's keys.
    pub user: Option<i64>,
    /// `active`, `expired` or `revoked`.
    pub state: Option<String>,
    /// Created at or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Created before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Rows per page, 1 to 10000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// API keys with their spend in the current quota period: a tenant's (tenant admin, viewer),
/// a member's own, or every tenant's (operator).
#[utoipa::path(get, path = "/admin/keys", tag = "keys", security(("bearer" = [])), params(KeyQuery),
    responses((status = 200, body = Page<KeyOut>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_keys(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    QueryParams(q): QueryParams<KeyQuery>,
) -> ApiResult<Json<Page<KeyOut>>> {
    let tenant = match q.tenant.as_deref() {
        Some(t) => Some(admin.tenant(t).await?.id),
        None => None,
    };
    let (tenant, only_user) = match who.user() {
        None => (tenant, q.user.map(UserId)),
        Some(u) => {
            if tenant.is_some_and(|t| t != u.user.tenant_id) {
                return Err(not_found("tenant").into());
            }
            let only = match u.user.role {
                Role::Member => Some(u.user.id),
                _ => q.user.map(UserId),
            };
            (Some(u.user.tenant_id), only)
        }
    };
    let mut keys = admin.blocking(move |a| a.store.list_keys(tenant)).await?;
    if let Some(uid) = only_user {
        keys.retain(|k| k.user_id == Some(uid));
    }
    let names = {
        let mut ts: Vec<_> = keys.iter().map(|k| k.tenant_id).collect();
        ts.dedup();
        admin.names(&ts).await?
    };
    let mut outs: Vec<KeyOut> = keys.iter().map(|k| key_out(&admin, k, &names)).collect();
    if let Some(state) = q.state.as_deref() {
        if !matches!(state, "active" | "expired" | "revoked") {
            return Err(bad_param("state", "`state` must be active, expired or revoked").into());
        }
        outs.retain(|k| k.state == state);
    }
    let window = ListQuery {
        from: q.from,
        to: q.to,
        limit: q.limit,
        cursor: q.cursor,
    };
    let created: std::collections::HashMap<i64, i64> =
        keys.iter().map(|k| (k.id.0, k.created_at)).collect();
    Ok(Json(window.page(
        outs,
        |k| k.id,
        |k| created.get(&k.id).copied().unwrap_or_default(),
    )?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Tenant id or name (defaults to the caller's own tenant for tenant users).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<serde_json::Value>,
    /// The member who owns the key (members: themselves).
    #[serde(default)]
    pub user_id: Option<i64>,
    pub name: String,
    pub default_channel: String,
    /// Channels the key may select with `x-tollgate-channel` (the default is implied).
    #[serde(default)]
    pub allowed_channels: Vec<String>,
    /// Models the key may use; empty: every model its channels serve.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<Instant>,
    /// Spending cap per quota period, in credits.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "50")]
    pub quota_credits: Option<Decimal>,
    #[serde(default)]
    pub rpm_limit: Option<u32>,
    #[serde(default)]
    pub tpm_limit: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct NewKeyOut {
    /// The secret, shown once.
    pub key: String,
    pub record: KeyOut,
}

/// Checks channels and models against the configuration; the models' canonical names.
fn checked_routes(
    admin: &Admin,
    default_channel: Option<&String>,
    channels: Option<&Vec<String>>,
    models: Option<&Vec<String>>,
) -> Result<Option<Vec<String>>, GatewayError> {
    let cfg = admin.app.config();
    for c in default_channel
        .into_iter()
        .chain(channels.into_iter().flatten())
    {
        if cfg.channel(c).is_none() {
            return Err(bad_param(
                "default_channel",
                format!("Channel `{c}` is not configured."),
            ));
        }
    }
    models
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    cfg.model(m).map(|model| model.name.clone()).ok_or_else(|| {
                        bad_param("allowed_models", format!("Model `{m}` is not configured."))
                    })
                })
                .collect()
        })
        .transpose()
}

/// Create an API key (tenant admin for any member; members for themselves).
#[utoipa::path(post, path = "/admin/keys", tag = "keys", security(("bearer" = [])), request_body = CreateKey,
    responses((status = 201, body = NewKeyOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_key(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    JsonBody(req): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<NewKeyOut>)> {
    let models = checked_routes(
        &admin,
        Some(&req.default_channel),
        Some(&req.allowed_channels),
        Some(&req.allowed_models),
    )?
    .unwrap_or_default();
    let quota_nano = req
        .quota_credits
        .map(|q| positive_nano(q, "quota_credits"))
        .transpose()?;
    let tenant_ref = match (&req.tenant, who.user()) {
        (Some(serde_json::Value::String(s)), _) => s.clone(),
        (Some(serde_json::Value::Number(n)), _) => n.to_string(),
        (None, Some(u)) => u.user.tenant_id.0.to_string(),
        (None, None) => return Err(bad_param("tenant", "`tenant` is required.").into()),
        _ => return Err(bad_param("tenant", "`tenant` must be a tenant id or name.").into()),
    };
    let tenant = admin.tenant(&tenant_ref).await?.id;
    let role = who.role_in(tenant)?;
    let user_id = match role {
        Role::Operator | Role::TenantAdmin => req.user_id.map(UserId),
        // Members make keys for themselves only.
        Role::Member => match (who.user(), req.user_id) {
            (Some(u), None) => Some(u.user.id),
            (Some(u), Some(id)) if id == u.user.id.0 => Some(u.user.id),
            _ => return Err(forbidden("Members can only create keys for themselves.").into()),
        },
        Role::Viewer => return Err(forbidden("Viewers cannot create keys.").into()),
    };
    let new = NewKey {
        tenant_id: tenant,
        name: req.name,
        default_channel: req.default_channel,
        allowed_channels: req.allowed_channels,
        allowed_models: models,
        expires_at: super::wire::future(req.expires_at.map(|i| i.0))?,
        quota_nano,
        user_id,
        limits: Limits {
            rpm: req.rpm_limit,
            tpm: req.tpm_limit,
        },
    };
    let (key, plaintext) = admin
        .blocking(move |a| {
            let out = a.store.create_key(&new)?;
            // Usable as soon as this call returns.
            a.refresh_keys()?;
            Ok(out)
        })
        .await?;
    let names = admin.names(&[tenant]).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewKeyOut {
            key: plaintext,
            record: key_out(&admin, &key, &names),
        }),
    ))
}

/// One key (tenant admin, viewer; members their own).
#[utoipa::path(get, path = "/admin/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 200, body = KeyOut), (status = 404, body = ErrorBody)))]
pub async fn get_key(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<KeyOut>> {
    let (key, _) = visible_key(&admin, &who, id).await?;
    let names = admin.names(&[key.tenant_id]).await?;
    Ok(Json(key_out(&admin, &key, &names)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub default_channel: Option<String>,
    #[serde(default)]
    pub allowed_channels: Option<Vec<String>>,
    /// Empty: every model its channels serve.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// `null`: never expires.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<Instant>>,
    /// Credits per quota period; `null`: no quota.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub quota_credits: Option<Option<Decimal>>,
    /// Requests per minute; `null`: unlimited.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub rpm_limit: Option<Option<u32>>,
    /// Tokens per minute; `null`: unlimited.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub tpm_limit: Option<Option<u64>>,
}

/// Change a key's settings (tenant admin): only the fields sent change. Takes effect on every
/// node at its next key-snapshot reload.
#[utoipa::path(patch, path = "/admin/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")), request_body = UpdateKey,
    responses((status = 200, body = KeyOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_key(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    JsonBody(req): JsonBody<UpdateKey>,
) -> ApiResult<Json<KeyOut>> {
    let (key, _) = visible_key(&admin, &who, id).await?;
    who.require(key.tenant_id, &[Role::TenantAdmin])?;
    let models = checked_routes(
        &admin,
        req.default_channel.as_ref(),
        req.allowed_channels.as_ref(),
        req.allowed_models.as_ref(),
    )?;
    let patch = KeyPatch {
        name: req.name,
        default_channel: req.default_channel,
        allowed_channels: req.allowed_channels,
        allowed_models: models,
        expires_at: match req.expires_at {
            Some(Some(i)) => Some(super::wire::future(Some(i.0))?),
            other => other.map(|e| e.map(|i| i.0)),
        },
        quota_nano: match req.quota_credits {
            None => None,
            Some(None) => Some(None),
            Some(Some(q)) => Some(Some(positive_nano(q, "quota_credits")?)),
        },
    };
    let limits = crate::tenancy::limits::LimitsPatch {
        rpm: req.rpm_limit,
        tpm: req.tpm_limit,
    };
    let kid = key.id;
    let key = admin
        .blocking(move |a| {
            a.store.update_key(kid, &patch)?;
            if limits.rpm.is_some() || limits.tpm.is_some() {
                a.store.set_limits(LimitSubject::Key(kid), limits)?;
            }
            a.refresh_keys()?;
            a.store.get_key(kid)
        })
        .await?;
    let names = admin.names(&[key.tenant_id]).await?;
    Ok(Json(key_out(&admin, &key, &names)))
}

async fn revoke_visible(admin: &Admin, who: &Principal, id: i64) -> ApiResult<Json<KeyOut>> {
    let (key, role) = visible_key(admin, who, id).await?;
    may_manage(who, &key, role)?;
    let kid = key.id;
    let key = admin
        .blocking(move |a| {
            let k = a.store.revoke_key(kid)?;
            a.refresh_keys()?;
            Ok(k)
        })
        .await?;
    let names = admin.names(&[key.tenant_id]).await?;
    Ok(Json(key_out(admin, &key, &names)))
}

/// Revoke a key (tenant admin; members their own). Revoking again changes nothing.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 200, body = KeyOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_key(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<KeyOut>> {
    revoke_visible(&admin, &who, id).await
}

/// The same as `DELETE /admin/keys/{id}`.
#[utoipa::path(post, path = "/admin/keys/{id}/revoke", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 200, body = KeyOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<KeyOut>> {
    revoke_visible(&admin, &who, id).await
}

/// A new secret for a key (tenant admin; members their own): the id, settings and spend stay,
/// the old secret stops working.
#[utoipa::path(post, path = "/admin/keys/{id}/rotate", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 200, body = NewKeyOut), (status = 400, body = ErrorBody, description = "The key is revoked"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rotate_key(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<NewKeyOut>> {
    let (key, role) = visible_key(&admin, &who, id).await?;
    may_manage(&who, &key, role)?;
    let kid = key.id;
    let (key, plaintext) = admin
        .blocking(move |a| {
            let out = a.store.rotate_key(kid)?;
            a.refresh_keys()?;
            Ok(out)
        })
        .await?;
    let names = admin.names(&[key.tenant_id]).await?;
    Ok(Json(NewKeyOut {
        key: plaintext,
        record: key_out(&admin, &key, &names),
    }))
}

/// Change a key's rate limits (tenant admin).
#[utoipa::path(patch, path = "/admin/keys/{id}/limits", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")), request_body = SetLimits,
    responses((status = 200, body = LimitsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_key_limits(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    JsonBody(req): JsonBody<SetLimits>,
) -> ApiResult<Json<LimitsOut>> {
    let (key, _) = visible_key(&admin, &who, id).await?;
    who.require(key.tenant_id, &[Role::TenantAdmin])?;
    set_limits_of(&admin, LimitSubject::Key(key.id), id, req).await
}

/// The same as `PATCH` (kept for clients of the first version).
#[utoipa::path(put, path = "/admin/keys/{id}/limits", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")), request_body = SetLimits,
    responses((status = 200, body = LimitsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_key_limits_put(
    state: State<Arc<Admin>>,
    who: Principal,
    id: PathParams<i64>,
    req: JsonBody<SetLimits>,
) -> ApiResult<Json<LimitsOut>> {
    set_key_limits(state, who, id, req).await
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    /// Client networks (IPv4/IPv6 CIDRs or single addresses), at most 100; empty: anywhere.
    pub allowed_cidrs: Vec<String>,
}

/// Checks and normalises an allow-list.
pub(super) fn checked_cidrs(list: &[String]) -> Result<Vec<String>, GatewayError> {
    if list.len() > 100 {
        return Err(bad_param("allowed_cidrs", "at most 100 networks"));
    }
    let mut out = Vec::new();
    for c in list {
        let net = crate::tenancy::parse_cidr(c).map_err(|e| bad_param("allowed_cidrs", e))?;
        let text = net.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out)
}

/// The client networks a key may be used from (its tenant's list applies too).
#[utoipa::path(get, path = "/admin/keys/{id}/network", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses((status = 200, body = AllowList), (status = 404, body = ErrorBody)))]
pub async fn get_key_network(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<AllowList>> {
    visible_key(&admin, &who, id).await?;
    let allowed_cidrs = admin
        .blocking(move |a| a.store.allowed_cidrs(LimitSubject::Key(KeyId(id))))
        .await?;
    Ok(Json(AllowList { allowed_cidrs }))
}

/// Restrict where a key may be used from (tenant admin): a call from any other address is
/// refused with 403 in the caller's protocol. The client address is the socket's, or from
/// `X-Forwarded-For` only when the socket's is one of `[server] trusted_proxies`.
#[utoipa::path(put, path = "/admin/keys/{id}/network", tag = "keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")), request_body = AllowList,
    responses((status = 200, body = AllowList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_key_network(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    JsonBody(req): JsonBody<AllowList>,
) -> ApiResult<Json<AllowList>> {
    let (key, _) = visible_key(&admin, &who, id).await?;
    who.require(key.tenant_id, &[Role::TenantAdmin])?;
    let list = checked_cidrs(&req.allowed_cidrs)?;
    let allowed_cidrs = admin
        .blocking(move |a| {
            let l = a
                .store
                .set_allowed_cidrs(LimitSubject::Key(KeyId(id)), &list)?;
            a.refresh_keys()?;
            Ok(l)
        })
        .await?;
    Ok(Json(AllowList { allowed_cidrs }))
}

/// The client networks every key of a tenant may be used from.
#[utoipa::path(get, path = "/admin/tenants/{t}/network", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = AllowList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_tenant_network(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<AllowList>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let allowed_cidrs = admin
        .blocking(move |a| a.store.allowed_cidrs(LimitSubject::Tenant(tenant)))
        .await?;
    Ok(Json(AllowList { allowed_cidrs }))
}

/// Restrict where every key of a tenant may be used from (tenant admin); a key's own list
/// narrows it further.
#[utoipa::path(put, path = "/admin/tenants/{t}/network", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = AllowList,
    responses((status = 200, body = AllowList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_tenant_network(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<AllowList>,
) -> ApiResult<Json<AllowList>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let list = checked_cidrs(&req.allowed_cidrs)?;
    let allowed_cidrs = admin
        .blocking(move |a| {
            let l = a
                .store
                .set_allowed_cidrs(LimitSubject::Tenant(tenant), &list)?;
            a.refresh_keys()?;
            Ok(l)
        })
        .await?;
    Ok(Json(AllowList { allowed_cidrs }))
}

/// A tenant's prompt guardrail policy (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/guardrails", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = crate::guardrails::Policy), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_guardrails(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<crate::guardrails::Policy>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let text = admin.blocking(move |a| a.store.guardrails(tenant)).await?;
    Ok(Json(
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
    ))
}

/// Set a tenant's prompt guardrails (tenant admin): detectors `secrets`, `email`, `phone`,
/// `cn_id`, `bank_card` and keyword lists, each `off`, `log`, `redact` or `block`. Applies to
/// every key of the tenant on every node within a key reload.
#[utoipa::path(put, path = "/admin/tenants/{t}/guardrails", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = crate::guardrails::Policy,
    responses((status = 200, body = crate::guardrails::Policy), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_guardrails(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(policy): JsonBody<crate::guardrails::Policy>,
) -> ApiResult<Json<crate::guardrails::Policy>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    if policy.keywords.len() > 20
        || policy
            .keywords
            .iter()
            .any(|k| k.words.len() > 10_000 || k.name.is_empty() || k.name.len() > 64)
    {
        return Err(bad_param("keywords", "at most 20 named lists of at most 10,000 words").into());
    }
    crate::guardrails::Compiled::new(&policy).map_err(|e| bad_param("detectors", e))?;
    let text = serde_json::to_string(&policy).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let empty = policy == crate::guardrails::Policy::default();
    admin
        .blocking(move |a| {
            a.store
                .set_guardrails(tenant, (!empty).then_some(text.as_str()))?;
            a.refresh_keys()?;
            Ok(())
        })
        .await?;
    Ok(Json(policy))
}
