//! What the admin API sends and takes on the wire: one unit convention everywhere (credits as
//! decimal strings, times as RFC 3339 in UTC, names next to ids), errors in the data plane's
//! JSON shape, and the extractors that parse a request into typed values with those errors
//! rather than the web framework's plain-text rejections.

use crate::billing::entry::{Account, LedgerEntry};
use crate::billing::pricing;
use crate::error::GatewayError;
use crate::store::sqlite::StoreError;
use crate::tenancy::{ApiKey, Group, TenantId, User};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

/// An error answered by the admin API: `{"error": {"message", "type", "param", "code"}}` with
/// the status of the data plane's error of the same kind.
#[derive(Debug)]
pub struct ApiError(pub GatewayError);

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> ApiError {
        ApiError(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError(store_error(e))
    }
}

pub fn store_error(e: StoreError) -> GatewayError {
    match e {
        StoreError::NotFound { what, .. } => not_found(what),
        StoreError::Conflict(m) => GatewayError::BadRequest {
            message: m,
            param: None,
        },
        StoreError::Invalid(m) => GatewayError::bad_request(m),
        other => GatewayError::Internal(other.to_string()),
    }
}

/// The one answer for a record the caller may not see, whether it is missing or another
/// tenant's: it names the kind of record (`tenant`, `key`, `user`, `group`, ...), never the id
/// asked for, so the two cases give the same status and the same body.
pub fn not_found(what: &str) -> GatewayError {
    GatewayError::NotFound(format!("{what} not found"))
}

pub fn forbidden(m: &str) -> GatewayError {
    GatewayError::Forbidden(m.into())
}

pub fn bad_param(name: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        message: message.into(),
        param: Some(name.into()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        if let GatewayError::Internal(m) = &e {
            tracing::warn!(error = %m, "admin request failed");
        }
        let mut r = (
            axum::http::StatusCode::from_u16(e.status())
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            e.openai_body(),
        )
            .into_response();
        if let Some(s) = e.retry_after() {
            if let Ok(h) = axum::http::HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, h);
            }
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The error body, for the API description.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<String>,
}

/// A JSON request body, parsed with the API's error shape (unknown fields are refused where
/// the type says so).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| GatewayError::bad_request("The request body could not be read."))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError(GatewayError::bad_request(format!("Invalid JSON body: {e}"))))
    }
}

/// Query parameters, percent-decoded and parsed into `T`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(QueryParams)
            .map_err(|e| ApiError(GatewayError::bad_request(format!("Invalid query: {e}"))))
    }
}

/// Path parameters, percent-decoded (a tenant named "Acme Corp" is `/tenants/Acme%20Corp`).
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError(GatewayError::bad_request(e.body_text())))
    }
}

/// Credits as a decimal string (`"12.5"`): exact to the nano-credit, never a float.
pub fn credits(nano: i64) -> String {
    pricing::to_credits(nano).normalize().to_string()
}

pub fn opt_credits(nano: Option<i64>) -> Option<String> {
    nano.map(credits)
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-02T10:00:00Z`).
pub fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

pub fn opt_time(secs: Option<i64>) -> Option<String> {
    secs.map(time)
}

/// Unix milliseconds as RFC 3339 in UTC, with milliseconds.
pub fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An instant given as RFC 3339 (`2026-12-02T10:00:00Z`, any offset) or as unix seconds;
/// parsed to unix milliseconds.
pub fn parse_instant_ms(name: &str, v: &str) -> Result<i64, GatewayError> {
    let ms = match v.trim().parse::<i64>() {
        Ok(secs) => secs.checked_mul(1000),
        Err(_) => chrono::DateTime::parse_from_rfc3339(v.trim())
            .ok()
            .map(|t| t.timestamp_millis()),
    };
    ms.ok_or_else(|| {
        bad_param(
            name,
            format!("`{name}` must be an RFC 3339 time or unix seconds"),
        )
    })
}

/// An instant in a request body: RFC 3339 text or unix seconds, as unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant(pub i64);

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Instant(s)),
            Raw::Text(t) => parse_instant_ms("time", &t)
                .map(|ms| Instant(ms.div_euclid(1000)))
                .map_err(|e| serde::de::Error::custom(e.to_string())),
        }
    }
}

/// An expiry being set must be in the future (an already-expired key or code is a mistake).
pub fn future(expires: Option<i64>) -> Result<Option<i64>, GatewayError> {
    match expires {
        Some(t) if t <= crate::tenancy::unix_now() => {
            Err(bad_param("expires_at", "`expires_at` is in the past"))
        }
        e => Ok(e),
    }
}

impl utoipa::PartialSchema for Instant {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .description(Some("RFC 3339 (or unix seconds)"))
            .into()
    }
}

impl utoipa::ToSchema for Instant {}

/// Distinguishes a missing field (leave unchanged) from an explicit `null` (clear it).
pub mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A positive amount of credits, in nano-credits.
pub fn positive_nano(credits: Decimal, field: &str) -> Result<i64, GatewayError> {
    match pricing::to_nano(credits) {
        Some(n) if n > 0 => Ok(n),
        None if credits > Decimal::ZERO => Err(bad_param(
            field,
            format!("`{field}` is too large (at most 9,000,000,000 credits)"),
        )),
        _ => Err(bad_param(
            field,
            format!("`{field}` must be a positive amount"),
        )),
    }
}

/// One page of a listing: `next_cursor` is passed as `cursor` to read the next page (absent on
/// the last page).
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The window of a listing: a time range on the records' creation time, a page size and a
/// cursor.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Created at or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Created before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Rows per page, 1 to 10000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Rows per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 10_000;

pub fn page_limit(limit: Option<u32>, default: u32) -> Result<u32, GatewayError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(bad_param(
            "limit",
            format!("`limit` must be a number from 1 to {MAX_PAGE}"),
        )),
    }
}

/// `from`/`to` of a listing in unix milliseconds (`defaults` for the ones not given).
pub fn range_ms(
    from: Option<&str>,
    to: Option<&str>,
    defaults: (i64, i64),
) -> Result<(i64, i64), GatewayError> {
    let from = from
        .map(|v| parse_instant_ms("from", v))
        .transpose()?
        .unwrap_or(defaults.0);
    let to = to
        .map(|v| parse_instant_ms("to", v))
        .transpose()?
        .unwrap_or(defaults.1);
    if to <= from {
        return Err(bad_param("to", "`to` must be after `from`"));
    }
    Ok((from, to))
}

impl ListQuery {
    /// The query's page size, range (milliseconds) and the id its cursor (of listing `kind`)
    /// stopped at.
    fn window(&self, kind: &str) -> Result<(u32, i64, i64, Option<i64>), GatewayError> {
        let limit = page_limit(self.limit, DEFAULT_PAGE)?;
        let (from, to) = range_ms(
            self.from.as_deref(),
            self.to.as_deref(),
            (i64::MIN, i64::MAX),
        )?;
        let at = match self.cursor.as_deref() {
            None => None,
            Some(c) => Some(
                super::listing::decode_cursor(c, kind, 1)
                    .map(|v| v[0])
                    .ok_or_else(|| {
                        bad_param("cursor", "`cursor` is not a cursor of this listing")
                    })?,
            ),
        };
        Ok((limit, from, to, at))
    }

    /// The store page this query asks for, newest first: its range in seconds, the id the
    /// cursor stopped at, and one row more than the page holds (to know whether one follows).
    pub fn newest_first(&self) -> Result<crate::store::sqlite::NewestFirst, GatewayError> {
        let (limit, from, to, before) = self.window("n")?;
        Ok(crate::store::sqlite::NewestFirst {
            from: from.div_euclid(1000),
            to: if to == i64::MAX {
                i64::MAX
            } else {
                to.saturating_add(999).div_euclid(1000)
            },
            before,
            limit: limit + 1,
        })
    }

    /// A page of rows read with [`ListQuery::newest_first`]: the extra row, if any, means a
    /// next page, whose cursor is the last kept row's id.
    pub fn newest_page<T>(
        page: crate::store::sqlite::NewestFirst,
        mut rows: Vec<T>,
        id: impl Fn(&T) -> i64,
    ) -> Page<T> {
        let limit = page.limit.saturating_sub(1) as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|t| super::listing::encode_cursor("n", &[id(t)]))
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }

    /// A page of `items` (ordered by id): those created in the range, after the cursor.
    /// `id` and `created` (unix seconds) read an item.
    pub fn page<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> i64,
        created: impl Fn(&T) -> i64,
    ) -> Result<Page<T>, GatewayError> {
        let (limit, from, to, after) = self.window("i")?;
        let limit = limit as usize;
        let mut data: Vec<T> = items
            .into_iter()
            .filter(|t| {
                let ms = created(t).saturating_mul(1000);
                ms >= from && ms < to && after.is_none_or(|a| id(t) > a)
            })
            .take(limit + 1)
            .collect();
        let next_cursor = if data.len() > limit {
            data.truncate(limit);
            data.last()
                .map(|t| super::listing::encode_cursor("i", &[id(t)]))
        } else {
            None
        };
        Ok(Page { data, next_cursor })
    }
}

/// Names of a tenant's keys, users and groups, to put next to the ids in listings.
#[derive(Default)]
pub struct Names {
    pub tenants: HashMap<i64, String>,
    pub keys: HashMap<i64, String>,
    pub users: HashMap<i64, (String, String)>,
    pub groups: HashMap<i64, String>,
}

impl Names {
    pub fn merge(&mut self, other: Names) {
        self.tenants.extend(other.tenants);
        self.keys.extend(other.keys);
        self.users.extend(other.users);
        self.groups.extend(other.groups);
    }
    pub fn key(&self, id: Option<i64>) -> Option<String> {
        id.and_then(|i| self.keys.get(&i).cloned())
    }
    pub fn user_email(&self, id: Option<i64>) -> Option<String> {
        id.and_then(|i| self.users.get(&i).map(|u| u.0.clone()))
    }
    pub fn user_name(&self, id: Option<i64>) -> Option<String> {
        id.and_then(|i| self.users.get(&i).map(|u| u.1.clone()))
    }
    pub fn group(&self, id: Option<i64>) -> Option<String> {
        id.and_then(|i| self.groups.get(&i).cloned())
    }
    pub fn tenant(&self, id: Option<i64>) -> Option<String> {
        id.and_then(|i| self.tenants.get(&i).cloned())
    }
}

/// Spend of a key, user or group in the current quota period (from the live books).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spend {
    pub spent: i64,
    pub reserved: i64,
}

pub fn spend_of(app: &crate::app::App, tenant: TenantId, account: Account) -> Spend {
    let (spent, reserved) = app.ledger.account_spend(tenant, account);
    Spend { spent, reserved }
}

fn remaining(limit: Option<i64>, s: Spend) -> Option<String> {
    limit.map(|l| credits((l - s.spent - s.reserved).max(0)))
}

#[derive(Serialize, ToSchema)]
pub struct TenantOut {
    pub id: i64,
    pub name: String,
    pub created_at: String,
    /// The tenant's requests per minute (all its keys together); `null`: unlimited.
    pub rpm_limit: Option<u32>,
    /// The tenant's tokens per minute; `null`: unlimited.
    pub tpm_limit: Option<u64>,
    /// What key quotas, user quotas and department budgets count: `none` (all time), `day`
    /// or `month` (UTC). In the answer for one tenant.
    pub quota_period: Option<String>,
}

impl TenantOut {
    pub fn from(t: &crate::tenancy::Tenant) -> TenantOut {
        TenantOut {
            id: t.id.0,
            name: t.name.clone(),
            created_at: time(t.created_at),
            rpm_limit: t.limits.rpm,
            tpm_limit: t.limits.tpm,
            quota_period: None,
        }
    }
}

/// An API key, never its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyOut {
    pub id: i64,
    pub name: String,
    /// First characters of the secret, to recognise it.
    pub prefix: String,
    pub tenant_id: i64,
    pub tenant_name: String,
    pub user_id: Option<i64>,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
    pub group_id: Option<i64>,
    pub group_name: Option<String>,
    pub default_channel: String,
    pub allowed_channels: Vec<String>,
    /// Empty: every model its channels serve.
    pub allowed_models: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// Spending cap per quota period (credits); absent: none.
    pub quota: Option<String>,
    /// Spent in the current quota period.
    pub spent: String,
    /// Held by calls in flight.
    pub reserved: String,
    /// What the quota leaves; absent without a quota.
    pub remaining: Option<String>,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u64>,
}

impl KeyOut {
    pub fn from(k: &ApiKey, names: &Names, spend: Spend, now: i64) -> KeyOut {
        let uid = k.user_id.map(|u| u.0);
        let state = if k.revoked_at.is_some() {
            "revoked"
        } else if k.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        };
        KeyOut {
            id: k.id.0,
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            tenant_id: k.tenant_id.0,
            tenant_name: k.tenant_name.clone(),
            user_id: uid,
            user_email: names.user_email(uid),
            user_name: names.user_name(uid),
            group_id: k.group_id.map(|g| g.0),
            group_name: names.group(k.group_id.map(|g| g.0)),
            default_channel: k.default_channel.clone(),
            allowed_channels: k.allowed_channels.clone(),
            allowed_models: k.allowed_models.clone(),
            created_at: time(k.created_at),
            expires_at: opt_time(k.expires_at),
            revoked_at: opt_time(k.revoked_at),
            state: state.into(),
            quota: opt_credits(k.quota_nano),
            spent: credits(spend.spent),
            reserved: credits(spend.reserved),
            remaining: remaining(k.quota_nano, spend),
            rpm_limit: k.key_limits.rpm,
            tpm_limit: k.key_limits.tpm,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: i64,
    pub tenant_id: i64,
    pub email: String,
    pub name: String,
    /// `tenant_admin`, `member` or `viewer`.
    pub role: String,
    pub group_id: Option<i64>,
    pub group_name: Option<String>,
    /// Spending cap per quota period (credits); absent: none.
    pub quota: Option<String>,
    pub spent: String,
    pub reserved: String,
    pub remaining: Option<String>,
    pub created_at: String,
    pub disabled_at: Option<String>,
    /// The member's requests per minute (all their keys together); `null`: unlimited.
    pub rpm_limit: Option<u32>,
    /// The member's tokens per minute; `null`: unlimited.
    pub tpm_limit: Option<u64>,
    /// Console sign-in locked after repeated wrong passwords, until then (a password reset
    /// lifts it); absent: not locked.
    pub locked_until: Option<String>,
}

impl UserOut {
    pub fn from(u: &User, names: &Names, spend: Spend) -> UserOut {
        UserOut {
            id: u.id.0,
            tenant_id: u.tenant_id.0,
            email: u.email.clone(),
            name: u.name.clone(),
            role: u.role.as_str().into(),
            group_id: u.group_id.map(|g| g.0),
            group_name: names.group(u.group_id.map(|g| g.0)),
            quota: opt_credits(u.quota_nano),
            spent: credits(spend.spent),
            reserved: credits(spend.reserved),
            remaining: remaining(u.quota_nano, spend),
            created_at: time(u.created_at),
            disabled_at: opt_time(u.disabled_at),
            rpm_limit: u.limits.rpm,
            tpm_limit: u.limits.tpm,
            locked_until: u
                .locked_until
                .filter(|t| *t > crate::tenancy::unix_now())
                .map(time),
        }
    }
}

/// A department or project.
#[derive(Serialize, ToSchema)]
pub struct GroupOut {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    /// Budget per quota period (credits); absent: none.
    pub budget: Option<String>,
    pub spent: String,
    pub reserved: String,
    pub remaining: Option<String>,
    pub members: usize,
    pub created_at: String,
}

impl GroupOut {
    pub fn from(g: &Group, spend: Spend, members: usize) -> GroupOut {
        GroupOut {
            id: g.id.0,
            tenant_id: g.tenant_id.0,
            name: g.name.clone(),
            budget: opt_credits(g.budget_nano),
            spent: credits(spend.spent),
            reserved: credits(spend.reserved),
            remaining: remaining(g.budget_nano, spend),
            members,
            created_at: time(g.created_at),
        }
    }
}

/// A journal entry.
#[derive(Serialize, ToSchema)]
pub struct EntryOut {
    /// Idempotency id, unique in the journal.
    pub id: String,
    pub tenant_id: i64,
    /// `top_up`, `grant`, `redemption`, `adjustment`, `promo` or `charge`.
    pub kind: String,
    /// Signed credits: money in positive, charges negative.
    pub amount: String,
    /// Part of a charge the accounts could not cover (never taken from the balance).
    pub uncollected: String,
    pub key_id: Option<i64>,
    pub key_name: Option<String>,
    pub user_id: Option<i64>,
    pub user_email: Option<String>,
    pub group_id: Option<i64>,
    pub group_name: Option<String>,
    pub request_id: Option<String>,
    /// Who made it: `operator`, `user:<id>`, ...
    pub actor: Option<String>,
    pub note: Option<String>,
    pub created_at: String,
}

impl EntryOut {
    pub fn from(e: &LedgerEntry, names: &Names) -> EntryOut {
        let (k, u, g) = (
            e.key_id.map(|k| k.0),
            e.user_id.map(|u| u.0),
            e.group_id.map(|g| g.0),
        );
        EntryOut {
            id: e.id.clone(),
            tenant_id: e.tenant_id.0,
            kind: e.kind.as_str().into(),
            amount: credits(e.amount),
            uncollected: credits(e.uncollected),
            key_id: k,
            key_name: names.key(k),
            user_id: u,
            user_email: names.user_email(u),
            group_id: g,
            group_name: names.group(g),
            request_id: e.request_id.clone(),
            actor: e.actor.clone(),
            note: e.note.clone(),
            created_at: time_ms(e.created_ms),
        }
    }
}

/// A tenant's balance.
#[derive(Serialize, ToSchema)]
pub struct BalanceOut {
    pub tenant_id: i64,
    pub tenant_name: String,
    /// What calls may still spend.
    pub available: String,
    /// Held by calls in flight.
    pub reserved: String,
    /// Spent, ever.
    pub charged: String,
    /// Money in, ever (top-ups, grants, codes, promotions, adjustments).
    pub credited: String,
    /// Cluster mode: the shared credit bank's view.
    pub bank: Option<BankOut>,
}

/// The shared credit bank's view of a tenant (cluster mode).
#[derive(Serialize, ToSchema)]
pub struct BankOut {
    /// Not leased to any node.
    pub unleased: String,
    /// Leased to nodes (calls in flight hold part of it).
    pub leases: String,
    pub spent: String,
    pub credited: String,
    pub nodes: Vec<NodeLease>,
}

#[derive(Serialize, ToSchema)]
pub struct NodeLease {
    pub node: String,
    pub lease: String,
}
