//! Budget and balance alerts (issue 17; the engine is `crate::alerts`): a tenant admin chooses
//! the thresholds and where alerts go, and reads the delivery log.

use super::auth::Principal;
use super::wire::{
    bad_param, time, ApiResult, ErrorBody, JsonBody, ListQuery, Page, PathParams, QueryParams,
};
use super::Admin;
use crate::store::sqlite::{AlertDelivery, AlertSettings};
use crate::tenancy::Role;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct AlertSettingsOut {
    pub tenant_id: i64,
    /// Alert when the available balance falls below this many credits.
    pub balance_below: Option<String>,
    /// Alert when the available balance covers fewer than this many days of the last 7 days'
    /// average daily spend.
    pub balance_days: Option<i64>,
    /// Percent thresholds of every department budget, user quota and key quota.
    pub quota_percents: Vec<u32>,
    pub emails: Vec<String>,
    pub webhook_url: Option<String>,
    /// The secret webhooks are signed with (`Tollgate-Signature: t=..,v1=<HMAC-SHA256 of
    /// "t.body">`).
    pub webhook_secret: Option<String>,
    pub enabled: bool,
    pub updated_at: Option<String>,
}

impl AlertSettingsOut {
    fn from(a: &AlertSettings) -> AlertSettingsOut {
        AlertSettingsOut {
            tenant_id: a.tenant_id.0,
            balance_below: a.balance_below_nano.map(super::wire::credits),
            balance_days: a.balance_days,
            quota_percents: a.quota_percents.clone(),
            emails: a.emails.clone(),
            webhook_url: a.webhook_url.clone(),
            webhook_secret: a.webhook_secret.clone(),
            enabled: a.enabled,
            updated_at: (a.updated_at > 0).then(|| time(a.updated_at)),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSettingsIn {
    /// Credits (a decimal string); absent or null: no balance threshold.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "500")]
    pub balance_below: Option<Decimal>,
    /// 1 to 365; absent or null: none.
    #[serde(default)]
    pub balance_days: Option<i64>,
    /// Each 1 to 1000 (percent), at most 5 (e.g. `[80, 100]`).
    #[serde(default)]
    pub quota_percents: Vec<u32>,
    /// At most 10 addresses.
    #[serde(default)]
    pub emails: Vec<String>,
    /// `https://...` (or `http://` for a private address).
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Make a new webhook secret.
    #[serde(default)]
    pub rotate_secret: bool,
}

fn yes() -> bool {
    true
}

/// A tenant's alert settings (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/alerts", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = AlertSettingsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alerts(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<AlertSettingsOut>> {
    let tenant = admin.tenant(&t).await?.id;
    let role = who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let a = admin
        .blocking(move |a| a.store.alert_settings(tenant))
        .await?
        .unwrap_or(AlertSettings {
            tenant_id: tenant,
            balance_below_nano: None,
            balance_days: None,
            quota_percents: Vec::new(),
            emails: Vec::new(),
            webhook_url: None,
            webhook_secret: None,
            enabled: false,
            updated_at: 0,
        });
    let mut out = AlertSettingsOut::from(&a);
    if role == Role::Viewer {
        out.webhook_secret = None;
    }
    Ok(Json(out))
}

/// Set a tenant's alert thresholds and destinations (tenant admin). Each alert fires once per
/// crossing, by email and by a signed webhook; a webhook secret is made when a webhook is first
/// set (or `rotate_secret`).
#[utoipa::path(put, path = "/admin/tenants/{t}/alerts", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = AlertSettingsIn,
    responses((status = 200, body = AlertSettingsOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_alerts(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<AlertSettingsIn>,
) -> ApiResult<Json<AlertSettingsOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let balance_below_nano = match req.balance_below {
        None => None,
        Some(b) => Some(
            crate::billing::pricing::to_nano(b)
                .filter(|n| *n > 0)
                .ok_or_else(|| bad_param("balance_below", "a positive amount of credits"))?,
        ),
    };
    if req.balance_days.is_some_and(|d| !(1..=365).contains(&d)) {
        return Err(bad_param("balance_days", "1 to 365 days").into());
    }
    let mut percents = req.quota_percents.clone();
    percents.sort_unstable();
    percents.dedup();
    if percents.len() > 5 || percents.iter().any(|p| !(1..=1000).contains(p)) {
        return Err(bad_param("quota_percents", "at most 5 percentages, each 1 to 1000").into());
    }
    if req.emails.len() > 10 {
        return Err(bad_param("emails", "at most 10 addresses").into());
    }
    let mut emails = Vec::new();
    for e in &req.emails {
        let e = e.trim();
        if e.parse::<lettre::Address>().is_err() {
            return Err(bad_param("emails", format!("`{e}` is not an email address")).into());
        }
        emails.push(e.to_string());
    }
    let webhook_url = req
        .webhook_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    if let Some(u) = &webhook_url {
        let ok = (u.starts_with("https://") || u.starts_with("http://"))
            && u.len() <= 2000
            && !u.contains(char::is_whitespace);
        if !ok {
            return Err(bad_param("webhook_url", "an http(s) address").into());
        }
    }
    let before = admin
        .blocking(move |a| a.store.alert_settings(tenant))
        .await?;
    let secret = match (&webhook_url, before.and_then(|b| b.webhook_secret)) {
        (None, _) => None,
        (Some(_), Some(s)) if !req.rotate_secret => Some(s),
        (Some(_), _) => Some(format!("whsec_{}", crate::payments::keys::nonce(32))),
    };
    let settings = AlertSettings {
        tenant_id: tenant,
        balance_below_nano,
        balance_days: req.balance_days,
        quota_percents: percents,
        emails,
        webhook_url,
        webhook_secret: secret,
        enabled: req.enabled,
        updated_at: 0,
    };
    let saved = admin
        .blocking(move |a| a.store.set_alert_settings(&settings))
        .await?;
    Ok(Json(AlertSettingsOut::from(&saved)))
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: i64,
    pub alert_id: String,
    /// `balance_low`, `balance_days`, `department_budget`, `user_quota`, `key_quota`, `test`.
    pub kind: String,
    pub subject: String,
    /// `email` or `webhook`.
    pub channel: String,
    pub target: String,
    /// `pending` (being retried), `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The alert as sent (JSON).
    pub payload: String,
    pub created_at: String,
    pub updated_at: String,
}

impl DeliveryOut {
    fn from(d: &AlertDelivery) -> DeliveryOut {
        DeliveryOut {
            id: d.id,
            alert_id: d.alert_id.clone(),
            kind: d.kind.clone(),
            subject: d.subject.clone(),
            channel: d.channel.clone(),
            target: d.target.clone(),
            state: d.state.clone(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            payload: d.payload.clone(),
            created_at: time(d.created_at),
            updated_at: time(d.updated_at),
        }
    }
}

/// The tenant's alert deliveries, newest first (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/alerts/deliveries", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ListQuery),
    responses((status = 200, body = Page<DeliveryOut>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<DeliveryOut>>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let page = q.newest_first()?;
    let rows = admin
        .blocking(move |a| a.store.alert_deliveries(tenant, page))
        .await?;
    let p = ListQuery::newest_page(page, rows, |d| d.id);
    Ok(Json(Page {
        data: p.data.iter().map(DeliveryOut::from).collect(),
        next_cursor: p.next_cursor,
    }))
}

/// Send a test alert to the tenant's addresses and webhook (tenant admin): check the
/// destinations before a real alert needs them.
#[utoipa::path(post, path = "/admin/tenants/{t}/alerts/test", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 202, description = "Sent; see the delivery log"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn test_alert(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<StatusCode> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin])?;
    let id = tenant.id;
    let Some(settings) = admin.blocking(move |a| a.store.alert_settings(id)).await? else {
        return Err(bad_param("alerts", "Set the alert destinations first.").into());
    };
    let alert = serde_json::json!({
        "id": format!("al_{}", crate::payments::keys::nonce(20)),
        "type": "test",
        "tenant": {"id": tenant.id.0, "name": tenant.name},
        "subject": {"kind": "tenant", "id": tenant.id.0, "name": tenant.name},
        "threshold": "",
        "value": "0",
        "limit": "0",
        "message": format!("A test alert for {}: the destinations work.", tenant.name),
        "created_at": time(crate::tenancy::unix_now()),
    });
    crate::metrics::METRICS
        .alerts_fired
        .with_label_values(&["test"])
        .inc();
    crate::alerts::send(&admin.app, &settings, alert).await;
    Ok(StatusCode::ACCEPTED)
}
