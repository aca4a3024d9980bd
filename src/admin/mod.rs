//! The admin API: a small HTTP service on its own port (loopback by default), hosted as a
//! Pingora service so that graceful upgrades hand its listener over like the gateway's.
//!
//! Unauthenticated: `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text format).
//! Everything under `/admin/` needs `Authorization: Bearer <token>`: the operator token
//! (`$TOLLGATE_ADMIN_TOKEN`, every tenant) or a tenant user's token (their own tenant only, by
//! role: tenant_admin, member, viewer). Every endpoint checks role and tenant; another tenant's
//! resources answer 404 exactly like missing ones. Errors use the data plane's JSON shape.

mod listing;

use crate::app::App;
use crate::billing::cluster::BankError;
use crate::billing::fleet::FleetError;
use crate::billing::ledger::Account;
use crate::billing::ledger::{BalanceView, EntryKind, LedgerEntry};
use crate::billing::pricing;
use crate::config::reload;
use crate::error::GatewayError;
use crate::metrics::{self, METRICS};
use crate::routing::upstream::BreakerState;
use crate::store::sqlite::LimitSubject;
use crate::store::sqlite::{
    AnalyticsQuery, Credited, Dimension, Granularity, IdempotencyKey, IdempotentRecord, NewKey,
    PromoBonus, StoreError, UsageQuery, UserPrincipal,
};
use crate::tenancy::limits::{Limits, LimitsPatch};
use crate::tenancy::{ApiKey, GroupId, KeyId, Role, TenantId, User, UserId};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use listing::{Export, Params, StatementCursor};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The OpenAPI description of this API, served at `GET /openapi.json`.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub struct AdminApi {
    pub app: Arc<App>,
    pub auth_throttle: AuthThrottle,
}

/// Wrong admin tokens from one address within this window...
const AUTH_WINDOW_MS: u64 = 60_000;
/// ...beyond this many, and the address is refused (429) until the window ends.
const AUTH_MAX_FAILURES: u32 = 10;
/// Addresses remembered at most (the oldest windows are dropped first when full).
const AUTH_MAX_ADDRESSES: usize = 10_000;

/// Failed admin authentications per source address: a token cannot be guessed at speed
/// (without it, 300 tries took 0.1 s).
#[derive(Default)]
pub struct AuthThrottle {
    failures: std::sync::Mutex<crate::FastMap<std::net::IpAddr, (u64, u32)>>,
}

impl AuthThrottle {
    /// `Err(seconds to wait)` while `ip` is locked out.
    fn check(&self, ip: std::net::IpAddr, now_ms: u64) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some(&(start, n)) if n >= AUTH_MAX_FAILURES && now_ms < start + AUTH_WINDOW_MS => {
                Err((start + AUTH_WINDOW_MS - now_ms).div_ceil(1000))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, ip: std::net::IpAddr, now_ms: u64) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= AUTH_MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now_ms < *start + AUTH_WINDOW_MS);
            if map.len() >= AUTH_MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(ip).or_insert((now_ms, 0));
        if now_ms >= e.0 + AUTH_WINDOW_MS {
            *e = (now_ms, 0);
        }
        e.1 += 1;
        e.1
    }
}

fn reply(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn reply_bytes(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// How long a replay waits for the first request with its idempotency key to answer before
/// answering from the entries that request committed.
const IDEMPOTENT_ANSWER_WAIT_MS: i64 = 10_000;

/// An idempotency key as sent (1-255 characters), scoped to `scope` (and, in the store, to the
/// tenant), with a digest of the request's parameters.
fn idempotency_key(
    scope: &'static str,
    key: &str,
    params: serde_json::Value,
) -> Result<IdempotencyKey, GatewayError> {
    if key.is_empty() || key.len() > 255 {
        return Err(GatewayError::BadRequest {
            message: "`idempotency_key` must be 1-255 characters".into(),
            param: Some("idempotency_key".into()),
        });
    }
    use sha2::{Digest, Sha256};
    Ok(IdempotencyKey {
        scope,
        key: key.to_string(),
        fingerprint: hex::encode(Sha256::digest(params.to_string().as_bytes())),
    })
}

/// The body of a top-up (`entries`: the top-up and its promo bonus) or an adjustment (`entry`).
fn credited_body(
    scope: &str,
    entries: Vec<LedgerEntry>,
    balance: serde_json::Value,
) -> serde_json::Value {
    if scope == "adjust" {
        json!({"entry": entries.into_iter().next(), "balance": balance})
    } else {
        json!({"entries": entries, "balance": balance})
    }
}

fn error_reply(e: &GatewayError) -> Response<Vec<u8>> {
    let v: serde_json::Value =
        serde_json::from_slice(&e.openai_body()).unwrap_or(serde_json::Value::Null);
    let mut r = reply(e.status(), v);
    if let Some(s) = e.retry_after() {
        if let Ok(h) = http::HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, h);
        }
    }
    r
}

fn store_error(e: StoreError) -> GatewayError {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// Tenant id or name (defaults to the caller's own tenant for tenant users).
    #[serde(default)]
    tenant: Option<serde_json::Value>,
    /// The member who owns the key.
    #[serde(default)]
    user_id: Option<i64>,
    name: String,
    default_channel: String,
    #[serde(default)]
    allowed_channels: Vec<String>,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    /// Lifetime spending cap of the key, in credits.
    #[serde(default)]
    quota_credits: Option<Decimal>,
    #[serde(default)]
    rpm_limit: Option<u32>,
    #[serde(default)]
    tpm_limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuotaPeriod {
    /// `none` (lifetime limits), `day` or `month` (UTC).
    period: String,
}

/// A change of rate limits: only the fields sent change (absent: kept; `null`: unlimited).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLimits {
    /// Requests per minute.
    #[serde(default, with = "double_option")]
    rpm_limit: Option<Option<u32>>,
    /// Tokens per minute.
    #[serde(default, with = "double_option")]
    tpm_limit: Option<Option<u64>>,
}

impl SetLimits {
    fn patch(&self) -> LimitsPatch {
        LimitsPatch {
            rpm: self.rpm_limit,
            tpm: self.tpm_limit,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    /// Money received, in RMB; converted at the configured credits per RMB.
    amount_rmb: Decimal,
    /// A promotion campaign code to apply to this top-up.
    #[serde(default)]
    promo_code: Option<String>,
    #[serde(default)]
    note: Option<String>,
    /// Optional idempotency key: the same top-up sent twice is applied once.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Adjustment {
    /// Signed, in credits.
    credits: Decimal,
    note: String,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCodes {
    credits: Decimal,
    count: u32,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePromo {
    code: String,
    /// Fixed bonus in credits, granted once per tenant.
    #[serde(default)]
    credits: Option<Decimal>,
    /// Bonus as a percentage of the top-up it is applied to.
    #[serde(default)]
    percent: Option<Decimal>,
    #[serde(default)]
    expires_at: Option<i64>,
    /// Cap on total uses across tenants.
    #[serde(default)]
    max_uses: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Redeem {
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: String,
    #[serde(default)]
    name: String,
    /// tenant_admin, member or viewer.
    role: String,
    #[serde(default)]
    group_id: Option<i64>,
    #[serde(default)]
    quota_credits: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    #[serde(default)]
    role: Option<String>,
    /// `null` removes the user from their group.
    #[serde(default, with = "double_option")]
    group_id: Option<Option<i64>>,
    /// `null` removes the quota.
    #[serde(default, with = "double_option")]
    quota_credits: Option<Option<Decimal>>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// Distinguishes a missing field (leave unchanged) from an explicit `null` (clear it).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    name: String,
    #[serde(default)]
    budget_credits: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateInvite {
    email: String,
    role: String,
    #[serde(default)]
    group_id: Option<i64>,
    #[serde(default)]
    ttl_hours: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptInvite {
    token: String,
    #[serde(default)]
    name: String,
}

fn parse_role(s: &str) -> Result<Role, GatewayError> {
    Role::parse_tenant_role(s).ok_or_else(|| GatewayError::BadRequest {
        message: "`role` must be tenant_admin, member or viewer".into(),
        param: Some("role".into()),
    })
}

fn forbidden(m: &str) -> GatewayError {
    GatewayError::Forbidden(m.into())
}

/// The one answer for a record the caller may not see, whether it is missing or another
/// tenant's: it names the kind of record (`tenant`, `key`, `user`, `group`, ...), never the id
/// asked for, so the two cases give the same status and the same body.
fn not_found(what: &str) -> GatewayError {
    GatewayError::NotFound(format!("{what} not found"))
}

/// Who is calling.
enum Principal {
    Operator,
    User(UserPrincipal),
}

impl Principal {
    fn require_operator(&self) -> Result<(), GatewayError> {
        match self {
            Principal::Operator => Ok(()),
            Principal::User(_) => Err(forbidden("Only platform operators may do this.")),
        }
    }

    /// The caller's role for `tenant`: Operator everywhere; a user only in their own tenant
    /// (any other tenant is "not found").
    fn role_in(&self, tenant: TenantId) -> Result<Role, GatewayError> {
        match self {
            Principal::Operator => Ok(Role::Operator),
            Principal::User(u) if u.user.tenant_id == tenant => Ok(u.user.role),
            Principal::User(_) => Err(not_found("tenant")),
        }
    }

    /// Operator, or a user of `tenant` holding one of `roles`.
    fn require(&self, tenant: TenantId, roles: &[Role]) -> Result<(), GatewayError> {
        let role = self.role_in(tenant)?;
        if role == Role::Operator || roles.contains(&role) {
            Ok(())
        } else {
            Err(forbidden(&format!(
                "The {} role may not do this.",
                role.as_str()
            )))
        }
    }

    fn actor(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::User(u) => format!("user:{}", u.user.id.0),
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Principal::Operator => json!({"role": "operator"}),
            Principal::User(u) => {
                json!({"role": u.user.role, "user": u.user, "tenant_name": u.tenant_name})
            }
        }
    }
}

fn credits_json(nano: i64) -> serde_json::Value {
    json!(pricing::to_credits(nano).normalize().to_string())
}

fn balance_json(tenant: TenantId, v: BalanceView) -> serde_json::Value {
    json!({
        "tenant_id": tenant,
        "available": credits_json(v.available),
        "reserved": credits_json(v.reserved),
        "charged": credits_json(v.charged),
        "credited": credits_json(v.credited),
        "nano": v,
    })
}

/// `from` and `to` (unix seconds) of an analytics query; default: the last 30 days. Either may
/// be given as unix seconds or RFC 3339, like every listing's.
fn time_range(params: &Params) -> Result<(i64, i64), GatewayError> {
    let now_ms = crate::tenancy::unix_now().saturating_mul(1000);
    let (from, to) = params.time_range_ms((now_ms - 30 * 86_400_000, now_ms + 1000))?;
    Ok((
        from.div_euclid(1000),
        to.saturating_add(999).div_euclid(1000),
    ))
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

fn policy_json(p: &crate::router::RoutePolicy) -> serde_json::Value {
    json!({
        "tiers": p.tiers.iter().map(|t| json!({"name": t.name, "model": t.model, "channel": t.channel, "context_tokens": t.context_tokens})).collect::<Vec<_>>(),
        "default_mode": p.default_mode.as_str(),
        "fallback_tier": p.tiers.get(p.fallback_tier).map(|t| t.name.clone()),
        "allow_hints": p.allow_hints,
        "max_light_tools": p.max_light_tools,
    })
}

fn positive_nano(credits: Decimal, field: &str) -> Result<i64, GatewayError> {
    match pricing::to_nano(credits) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(GatewayError::BadRequest {
            message: format!("`{field}` must be a positive amount"),
            param: Some(field.into()),
        }),
    }
}

impl AdminApi {
    /// The operator (the configured token) or a tenant user (a user token from the store).
    async fn principal(&self, session: &ServerSession) -> Result<Principal, GatewayError> {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let now_ms = crate::tenancy::unix_now().max(0) as u64 * 1000;
        if let Some(ip) = ip {
            if let Err(wait) = self.auth_throttle.check(ip, now_ms) {
                METRICS
                    .admin_auth_failures
                    .with_label_values(&["throttled"])
                    .inc();
                return Err(GatewayError::RateLimited {
                    message: format!(
                        "Too many invalid admin tokens from this address. Retry in {wait} s."
                    ),
                    retry_after: wait,
                });
            }
        }
        let result = self.check_token(session).await;
        if let (Err(GatewayError::InvalidKey(_)), Some(ip)) = (&result, ip) {
            let n = self.auth_throttle.failed(ip, now_ms);
            METRICS
                .admin_auth_failures
                .with_label_values(&["invalid"])
                .inc();
            tracing::warn!(client = %ip, failures = n, "invalid admin token");
        }
        result
    }

    async fn check_token(&self, session: &ServerSession) -> Result<Principal, GatewayError> {
        let presented = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                GatewayError::MissingKey(
                    "The admin API needs `Authorization: Bearer <token>`: the operator token or a user token.".into(),
                )
            })?;
        if let Some(expected) = self.app.admin_token.as_deref() {
            // Constant-time comparison of the token digests.
            use sha2::{Digest, Sha256};
            let a = Sha256::digest(presented.as_bytes());
            let b = Sha256::digest(expected.as_bytes());
            if a.iter()
                .zip(b.iter())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
            {
                return Ok(Principal::Operator);
            }
        }
        match self
            .blocking(move |a| a.store.user_by_token(&presented))
            .await?
        {
            Some(u) => Ok(Principal::User(u)),
            None => Err(GatewayError::InvalidKey("Invalid admin token.".into())),
        }
    }
    async fn read_json<T: for<'de> Deserialize<'de>>(
        session: &mut ServerSession,
    ) -> Result<T, GatewayError> {
        let mut buf = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_ADMIN_BODY {
                        return Err(GatewayError::PayloadTooLarge {
                            limit: MAX_ADMIN_BODY,
                        });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    return Err(GatewayError::bad_request(
                        "The request body could not be read.",
                    ))
                }
            }
        }
        serde_json::from_slice(&buf)
            .map_err(|e| GatewayError::bad_request(format!("Invalid JSON body: {e}")))
    }

    /// Apply committed credit entries to the live books; returns the new balance as JSON.
    async fn apply_credits(&self, tenant: TenantId, entries: &[LedgerEntry]) -> serde_json::Value {
        for e in entries {
            self.app.ledger.apply_committed(e);
        }
        if let Some(fleet) = self.app.ledger.fleet() {
            // Cluster mode: the entries are in SQL; replay them into Redis now rather than at
            // the next background round (the background replay retries if this fails).
            if let Err(e) = fleet.replay_credits().await {
                tracing::warn!(error = %e, "credit replay after a credit failed; the background replay retries");
            }
        }
        self.balance_of(tenant).await
    }

    /// The answer to a top-up or adjustment: for entries committed now, apply them and answer
    /// (recording the answer under the idempotency key, if any); for a key used before, the
    /// first answer.
    async fn credited(
        &self,
        tenant: TenantId,
        scope: &'static str,
        idem: Option<IdempotencyKey>,
        outcome: Credited,
    ) -> Result<Response<Vec<u8>>, GatewayError> {
        let entries = match outcome {
            Credited::Committed(entries) => entries,
            Credited::Replay(first) => {
                return match idem {
                    Some(k) => self.replay(tenant, &k, first).await,
                    None => Err(GatewayError::Internal("a replay without a key".into())),
                }
            }
        };
        let balance = self.apply_credits(tenant, &entries).await;
        let body = credited_body(scope, entries, balance);
        if let Some(k) = idem {
            let text = body.to_string();
            let stored = self
                .blocking(move |a| {
                    a.store
                        .answer_idempotent(tenant, k.scope, &k.key, 201, &text)
                })
                .await;
            if let Err(e) = stored {
                // A replay then answers from the committed entries (see `replay`).
                tracing::warn!(error = %e, "the answer to an idempotent request was not recorded");
            }
        }
        Ok(reply(201, body))
    }

    /// Answer a request whose idempotency key was used before: refused when the parameters
    /// differ, else the first answer (same status and body). While the first request is still
    /// answering, wait for it; a first request that committed but never recorded its answer
    /// (the process died in between, or the key predates recorded answers) is answered from the
    /// entries it committed.
    async fn replay(
        &self,
        tenant: TenantId,
        k: &IdempotencyKey,
        mut first: IdempotentRecord,
    ) -> Result<Response<Vec<u8>>, GatewayError> {
        if !first.fingerprint.is_empty() && first.fingerprint != k.fingerprint {
            return Err(GatewayError::BadRequest {
                message: "This idempotency key was already used with different parameters.".into(),
                param: Some("idempotency_key".into()),
            });
        }
        let (scope, key) = (k.scope, k.key.clone());
        loop {
            if let Some((status, body)) = first.answer {
                return Ok(reply_bytes(status, "application/json", body.into_bytes()));
            }
            let now_ms = crate::tenancy::unix_now() * 1000;
            if now_ms >= first.created_ms + IDEMPOTENT_ANSWER_WAIT_MS {
                let ids = first.entry_ids.clone();
                let entries = self
                    .blocking(move |a| a.store.entries_by_id(tenant, &ids))
                    .await?;
                let body = credited_body(scope, entries, self.balance_of(tenant).await);
                let (text, key) = (body.to_string(), key.clone());
                self.blocking(move |a| a.store.answer_idempotent(tenant, scope, &key, 201, &text))
                    .await?;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let key = key.clone();
            first = self
                .blocking(move |a| a.store.idempotent_record(tenant, scope, &key))
                .await?
                .ok_or_else(|| GatewayError::Internal("an idempotency key vanished".into()))?;
        }
    }

    /// A tenant's balance: this process's books (embedded mode) or the shared bank (cluster
    /// mode, where `available` includes allowance leased by nodes, holds in flight among it).
    async fn balance_of(&self, tenant: TenantId) -> serde_json::Value {
        let Some(fleet) = self.app.ledger.fleet() else {
            return balance_json(tenant, self.app.ledger.balance(tenant));
        };
        match fleet.totals(tenant).await {
            Ok(t) => {
                let v = BalanceView {
                    available: t.bal + t.leases,
                    reserved: 0,
                    charged: t.spent,
                    credited: t.credited,
                };
                let mut j = balance_json(tenant, v);
                j["bank"] = json!(t);
                j
            }
            Err(e) => {
                json!({"tenant_id": tenant, "error": format!("credit bank unavailable: {e}")})
            }
        }
    }

    /// A key the caller may see, with the caller's role in its tenant. Another tenant's key
    /// and a missing one are both "key not found".
    async fn visible_key(&self, who: &Principal, id: &str) -> Result<(ApiKey, Role), GatewayError> {
        let id: i64 = id
            .parse()
            .map_err(|_| GatewayError::bad_request("Key id must be a number."))?;
        let key = self.blocking(move |a| a.store.get_key(KeyId(id))).await?;
        let role = who.role_in(key.tenant_id).map_err(|_| not_found("key"))?;
        Ok((key, role))
    }

    /// A user the caller may see, with the caller's role in their tenant. Another tenant's user
    /// and a missing one are both "user not found".
    async fn visible_user(&self, who: &Principal, id: &str) -> Result<(User, Role), GatewayError> {
        let id: i64 = id
            .parse()
            .map_err(|_| GatewayError::bad_request("User id must be a number."))?;
        let user = self.blocking(move |a| a.store.get_user(UserId(id))).await?;
        let role = who.role_in(user.tenant_id).map_err(|_| not_found("user"))?;
        Ok((user, role))
    }

    /// The tenant, time range and start of a statement listing, checked for the caller.
    async fn statement_listing(
        &self,
        who: &Principal,
        t: &str,
        params: &Params,
    ) -> Result<(TenantId, i64, i64, Option<StatementCursor>), GatewayError> {
        let tenant = self.tenant(t).await?;
        who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
        let (from, to) = params.time_range_ms((i64::MIN, i64::MAX))?;
        Ok((tenant, from, to, params.statement_cursor()?))
    }

    /// A usage listing, checked for the caller: users see their own tenant only, members their
    /// own calls only.
    async fn usage_listing(
        &self,
        who: &Principal,
        params: &Params,
        limit: u32,
    ) -> Result<UsageQuery, GatewayError> {
        let requested = match params.get("tenant") {
            Some(t) => Some(self.tenant(t).await?),
            None => None,
        };
        let asked_user = params
            .get("user")
            .map(|u| {
                u.parse::<i64>()
                    .map(UserId)
                    .map_err(|_| GatewayError::BadRequest {
                        message: "`user` must be a user id".into(),
                        param: Some("user".into()),
                    })
            })
            .transpose()?;
        let (tenant, user) = match who {
            Principal::Operator => (requested, asked_user),
            Principal::User(u) => {
                if requested.is_some_and(|t| t != u.user.tenant_id) {
                    return Err(not_found("tenant"));
                }
                let user = if u.user.role == Role::Member {
                    Some(u.user.id)
                } else {
                    asked_user
                };
                (Some(u.user.tenant_id), user)
            }
        };
        let (from_ms, to_ms) = params.time_range_ms((i64::MIN, i64::MAX))?;
        Ok(UsageQuery {
            tenant,
            user,
            model: params.get("model").map(str::to_string),
            from_ms,
            to_ms,
            before: params.usage_cursor()?,
            limit,
        })
    }

    /// Exports (`format=csv` on the statement and usage listings) are streamed; everything
    /// else is answered whole by `route`.
    async fn answer(&self, session: &mut ServerSession) -> Result<Answer, GatewayError> {
        let req = session.req_header();
        let params = Params::parse(req.uri.query());
        if req.method == Method::GET && params.is_csv() {
            let path = req.uri.path().to_string();
            let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
            match segments.as_slice() {
                ["admin", "tenants", t, "ledger"] => {
                    let who = self.principal(session).await?;
                    let (tenant, from_ms, to_ms, start) =
                        self.statement_listing(&who, t, &params).await?;
                    return Ok(Answer::Export(Export::Statement {
                        tenant,
                        from_ms,
                        to_ms,
                        start,
                    }));
                }
                ["admin", "usage"] => {
                    let who = self.principal(session).await?;
                    let q = self.usage_listing(&who, &params, listing::MAX_PAGE).await?;
                    return Ok(Answer::Export(Export::Usage(q)));
                }
                _ => {}
            }
        }
        self.route(session).await.map(Answer::Full)
    }

    async fn tenant(&self, id_or_name: &str) -> Result<TenantId, GatewayError> {
        let t = id_or_name.to_string();
        Ok(self.blocking(move |a| a.store.find_tenant(&t)).await?.id)
    }

    /// Run a store call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&App) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let app = self.app.clone();
        match tokio::task::spawn_blocking(move || f(&app)).await {
            Ok(r) => r.map_err(store_error),
            Err(e) => Err(GatewayError::Internal(e.to_string())),
        }
    }

    async fn route(&self, session: &mut ServerSession) -> Result<Response<Vec<u8>>, GatewayError> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let params = Params::parse(session.req_header().uri.query());
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();

        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return Ok(reply(200, json!({"status": "ok"}))),
            (&Method::GET, ["readyz"]) => {
                let bank = self
                    .app
                    .ledger
                    .fleet()
                    .map(|f| f.allowances().bank().is_reachable());
                let backlogged = self.app.ledger.backlogged();
                let ready = self.app.keys.generation() > 0
                    && self.app.ledger.ready()
                    && bank != Some(false)
                    && !backlogged;
                let mut body = json!({"ready": ready, "config_generation": self.app.generation()});
                if let Some(up) = bank {
                    body["credit_bank"] = json!(if up { "up" } else { "down" });
                }
                if backlogged {
                    body["store"] = json!("backlogged");
                }
                return Ok(reply(if ready { 200 } else { 503 }, body));
            }
            (&Method::GET, ["openapi.json"]) | (&Method::GET, ["admin", "openapi.json"]) => {
                let body = OPENAPI.as_bytes().to_vec();
                return Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .map_err(|e| GatewayError::Internal(e.to_string()));
            }
            (&Method::GET, ["metrics"]) => {
                self.app.export_upstream_health();
                let body = metrics::render();
                return Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .map_err(|e| GatewayError::Internal(e.to_string()));
            }
            _ => {}
        }

        if segments.first() != Some(&"admin") {
            return Err(GatewayError::NotFound(format!("Unknown path `{path}`.")));
        }
        // Accepting an invitation needs no account yet: the invitation token is the credential.
        if let (&Method::POST, ["admin", "invites", "accept"]) = (&method, segments.as_slice()) {
            let req: AcceptInvite = Self::read_json(session).await?;
            let (user, token) = self
                .blocking(move |a| a.store.accept_invite(&req.token, &req.name))
                .await?;
            let _ = self.blocking(|a| a.refresh_keys()).await;
            return Ok(reply(201, json!({"user": user, "token": token})));
        }
        let who = self.principal(session).await?;

        match (&method, &segments[1..]) {
            (&Method::GET, ["me"]) => Ok(reply(200, who.describe())),
            (&Method::GET, ["tenants"]) => {
                let mut tenants = self.blocking(|a| a.store.list_tenants()).await?;
                if let Principal::User(u) = &who {
                    tenants.retain(|t| t.id == u.user.tenant_id);
                }
                Ok(reply(200, json!({"data": tenants})))
            }
            (&Method::POST, ["tenants"]) => {
                who.require_operator()?;
                let req: CreateTenant = Self::read_json(session).await?;
                let t = self
                    .blocking(move |a| a.store.create_tenant(&req.name))
                    .await?;
                Ok(reply(201, json!(t)))
            }
            (&Method::GET, ["keys"]) => {
                let tenant = match params.get("tenant") {
                    Some(t) => Some(self.tenant(t).await?),
                    None => None,
                };
                let (tenant, only_user) = match &who {
                    Principal::Operator => (tenant, None),
                    Principal::User(u) => {
                        if tenant.is_some_and(|t| t != u.user.tenant_id) {
                            return Err(not_found("tenant"));
                        }
                        let only = (u.user.role == Role::Member).then_some(u.user.id);
                        (Some(u.user.tenant_id), only)
                    }
                };
                let mut keys = self.blocking(move |a| a.store.list_keys(tenant)).await?;
                if let Some(uid) = only_user {
                    keys.retain(|k| k.user_id == Some(uid));
                }
                Ok(reply(200, json!({"data": keys})))
            }
            (&Method::POST, ["keys"]) => {
                let req: CreateKey = Self::read_json(session).await?;
                let cfg = self.app.config();
                for c in std::iter::once(&req.default_channel).chain(req.allowed_channels.iter()) {
                    if cfg.channel(c).is_none() {
                        return Err(GatewayError::BadRequest {
                            message: format!("Channel `{c}` is not configured."),
                            param: Some("default_channel".into()),
                        });
                    }
                }
                let mut models = Vec::new();
                for m in &req.allowed_models {
                    match cfg.model(m) {
                        Some(model) => models.push(model.name.clone()),
                        None => {
                            return Err(GatewayError::BadRequest {
                                message: format!("Model `{m}` is not configured."),
                                param: Some("allowed_models".into()),
                            })
                        }
                    }
                }
                let quota_nano = match req.quota_credits {
                    Some(q) => Some(positive_nano(q, "quota_credits")?),
                    None => None,
                };
                let tenant_ref = match &req.tenant {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    None => match &who {
                        Principal::User(u) => u.user.tenant_id.0.to_string(),
                        Principal::Operator => {
                            return Err(GatewayError::bad_request("`tenant` is required."))
                        }
                    },
                    _ => {
                        return Err(GatewayError::bad_request(
                            "`tenant` must be a tenant id or name.",
                        ))
                    }
                };
                let tenant_id = self.tenant(&tenant_ref).await?;
                let role = who.role_in(tenant_id)?;
                let user_id = match role {
                    Role::Operator | Role::TenantAdmin => req.user_id.map(UserId),
                    // Members make keys for themselves only.
                    Role::Member => match (&who, req.user_id) {
                        (Principal::User(u), None) => Some(u.user.id),
                        (Principal::User(u), Some(id)) if id == u.user.id.0 => Some(u.user.id),
                        _ => return Err(forbidden("Members can only create keys for themselves.")),
                    },
                    Role::Viewer => return Err(forbidden("Viewers cannot create keys.")),
                };
                let (key, plaintext) = self
                    .blocking(move |a| {
                        let tenant = a.store.find_tenant(&tenant_ref)?;
                        let out = a.store.create_key(&NewKey {
                            tenant_id: tenant.id,
                            name: req.name,
                            default_channel: req.default_channel,
                            allowed_channels: req.allowed_channels,
                            allowed_models: models,
                            expires_at: req.expires_at,
                            quota_nano,
                            user_id,
                            limits: Limits {
                                rpm: req.rpm_limit,
                                tpm: req.tpm_limit,
                            },
                        })?;
                        // Usable as soon as this call returns.
                        a.refresh_keys()?;
                        Ok(out)
                    })
                    .await?;
                Ok(reply(201, json!({"key": plaintext, "record": key})))
            }
            (&Method::POST, ["keys", id, "revoke"]) | (&Method::DELETE, ["keys", id]) => {
                let (key, role) = self.visible_key(&who, id).await?;
                let id = key.id;
                match role {
                    Role::Operator | Role::TenantAdmin => {}
                    Role::Member if matches!(&who, Principal::User(u) if key.user_id == Some(u.user.id)) =>
                        {}
                    _ => return Err(forbidden("You may only revoke your own keys.")),
                }
                let key = self
                    .blocking(move |a| {
                        let k = a.store.revoke_key(id)?;
                        a.refresh_keys()?;
                        Ok(k)
                    })
                    .await?;
                Ok(reply(200, json!(key)))
            }
            (&Method::GET, ["tenants", t, "balance"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
                Ok(reply(200, self.balance_of(tenant).await))
            }
            (&Method::POST, ["tenants", t, "topups"]) => {
                who.require_operator()?;
                let tenant = self.tenant(t).await?;
                let req: TopUp = Self::read_json(session).await?;
                let credits = req.amount_rmb * self.app.config().billing.credits_per_rmb;
                let amount = positive_nano(credits, "amount_rmb")?;
                let idem = req
                    .idempotency_key
                    .as_deref()
                    .map(|k| {
                        idempotency_key(
                            "topup",
                            k,
                            json!([amount, req.promo_code.as_deref(), req.note.as_deref()]),
                        )
                    })
                    .transpose()?;
                let id = format!("topup:{}", crate::tenancy::keys::generate_key());
                let (note, promo, idem2) = (req.note, req.promo_code, idem.clone());
                let outcome = self
                    .blocking(move |a| {
                        a.store.top_up(
                            tenant,
                            amount,
                            promo.as_deref(),
                            Some("operator"),
                            note.as_deref(),
                            &id,
                            idem2.as_ref(),
                        )
                    })
                    .await?;
                self.credited(tenant, "topup", idem, outcome).await
            }
            (&Method::POST, ["tenants", t, "promo"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let req: Redeem = Self::read_json(session).await?;
                let actor = who.actor();
                let entry = self
                    .blocking(move |a| a.store.claim_fixed_promo(tenant, &req.code, Some(&actor)))
                    .await?;
                let balance = self
                    .apply_credits(tenant, std::slice::from_ref(&entry))
                    .await;
                Ok(reply(201, json!({"entry": entry, "balance": balance})))
            }
            (&Method::POST, ["promos"]) => {
                who.require_operator()?;
                let req: CreatePromo = Self::read_json(session).await?;
                let bonus = match (req.credits, req.percent) {
                    (Some(c), None) => PromoBonus::Fixed(positive_nano(c, "credits")?),
                    (None, Some(p)) => {
                        let bp = (p * Decimal::from(100)).round();
                        PromoBonus::Percent(
                            rust_decimal::prelude::ToPrimitive::to_i64(&bp).unwrap_or(0),
                        )
                    }
                    _ => return Err(GatewayError::bad_request(
                        "Give exactly one of `credits` (fixed bonus) or `percent` (of a top-up).",
                    )),
                };
                let p = self
                    .blocking(move |a| {
                        a.store
                            .create_promo(&req.code, bonus, req.expires_at, req.max_uses)
                    })
                    .await?;
                Ok(reply(201, json!(p)))
            }
            (&Method::GET, ["promos"]) => {
                who.require_operator()?;
                let promos = self.blocking(|a| a.store.list_promos()).await?;
                Ok(reply(200, json!({"data": promos})))
            }
            (&Method::POST, ["tenants", t, "adjustments"]) => {
                who.require_operator()?;
                let tenant = self.tenant(t).await?;
                let req: Adjustment = Self::read_json(session).await?;
                let amount = pricing::to_nano(req.credits)
                    .filter(|n| *n != 0)
                    .ok_or_else(|| {
                        GatewayError::bad_request("`credits` must be a non-zero amount")
                    })?;
                let idem = req
                    .idempotency_key
                    .as_deref()
                    .map(|k| idempotency_key("adjust", k, json!([amount, req.note])))
                    .transpose()?;
                let id = match &idem {
                    Some(k) => {
                        // A replay is answered before anything moves (in cluster mode, before
                        // the debit below).
                        let (scope, key) = (k.scope, k.key.clone());
                        let first = self
                            .blocking(move |a| a.store.idempotent_record(tenant, scope, &key))
                            .await?;
                        if let Some(first) = first {
                            return self.replay(tenant, k, first).await;
                        }
                        k.entry_id(tenant)
                    }
                    None => format!("adjust:{}", crate::tenancy::keys::generate_key()),
                };
                let refused = || {
                    GatewayError::bad_request(
                        "A negative adjustment cannot exceed the available balance.",
                    )
                };
                match self.app.ledger.fleet() {
                    // Cluster mode: debit Redis first (refused when the unleased balance cannot
                    // cover it), then record; the replay of the recorded entry is a no-op.
                    // Concurrent requests with one idempotency key debit once: the debit is
                    // idempotent on the entry id, which is the key's.
                    Some(fleet) if amount < 0 => {
                        if let Err(e) = fleet.debit_first(tenant, amount, &id).await {
                            return Err(match e {
                                FleetError::Bank(BankError::Insufficient { .. }) => refused(),
                                e => GatewayError::CreditUnavailable(format!(
                                    "The credit bank is unavailable: {e}"
                                )),
                            });
                        }
                    }
                    Some(_) => {}
                    None => {
                        if amount < 0 && self.app.ledger.balance(tenant).available < -amount {
                            return Err(refused());
                        }
                    }
                }
                let (note, idem2) = (req.note, idem.clone());
                let outcome = self
                    .blocking(move |a| match idem2 {
                        Some(k) => a.store.credit_idempotent(
                            tenant,
                            EntryKind::Adjustment,
                            amount,
                            Some("operator"),
                            Some(&note),
                            &k,
                        ),
                        None => a
                            .store
                            .credit(
                                tenant,
                                EntryKind::Adjustment,
                                amount,
                                Some("operator"),
                                Some(&note),
                                &id,
                            )
                            .map(|e| Credited::Committed(vec![e])),
                    })
                    .await?;
                self.credited(tenant, "adjust", idem, outcome).await
            }
            (&Method::GET, ["tenants", t, "ledger"]) => {
                // `format=csv` is answered before routing, as a stream (see `answer`).
                let (tenant, from, to, start) = self.statement_listing(&who, t, &params).await?;
                let limit = params.limit(listing::MAX_PAGE)?;
                let (after, mut running, mut row) =
                    listing::statement_start(&self.app, tenant, from, start).await?;
                let page = self
                    .blocking(move |a| a.store.statement_page(tenant, from, to, after, limit))
                    .await?;
                let full = page.len() == limit as usize;
                let mut last = None;
                let data: Vec<_> = page
                    .into_iter()
                    .map(|r| {
                        running += r.entry.amount;
                        row += 1;
                        last = Some(StatementCursor {
                            pos: r.pos,
                            running,
                            row,
                        });
                        json!({
                            "entry": r.entry,
                            "amount": credits_json(r.entry.amount),
                            "running_balance": credits_json(running),
                            "call": r.call,
                        })
                    })
                    .collect();
                let next = last.filter(|_| full).map(|c| c.encode());
                Ok(reply(200, json!({"data": data, "next_cursor": next})))
            }
            (&Method::POST, ["tenants", t, "redeem"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let req: Redeem = Self::read_json(session).await?;
                let actor = who.actor();
                let entry = self
                    .blocking(move |a| a.store.redeem(&req.code, tenant, Some(&actor)))
                    .await?;
                let balance = self
                    .apply_credits(tenant, std::slice::from_ref(&entry))
                    .await;
                Ok(reply(201, json!({"entry": entry, "balance": balance})))
            }
            (&Method::POST, ["codes"]) => {
                who.require_operator()?;
                let req: CreateCodes = Self::read_json(session).await?;
                let amount = positive_nano(req.credits, "credits")?;
                let batch = req
                    .batch
                    .unwrap_or_else(|| format!("batch-{}", crate::tenancy::unix_now()));
                let b2 = batch.clone();
                let codes = self
                    .blocking(move |a| a.store.create_codes(&b2, amount, req.count, req.expires_at))
                    .await?;
                Ok(reply(
                    201,
                    json!({"batch": batch, "credits": credits_json(amount), "codes": codes}),
                ))
            }
            (&Method::GET, ["codes"]) => {
                who.require_operator()?;
                let batch = params.get("batch").map(str::to_string);
                let codes = self
                    .blocking(move |a| a.store.list_codes(batch.as_deref()))
                    .await?;
                Ok(reply(200, json!({"data": codes})))
            }
            (&Method::GET, ["channels"]) => {
                who.require_operator()?;
                let cfg = self.app.config();
                let channels: Vec<_> = cfg
                    .channels
                    .iter()
                    .map(|c| {
                        json!({
                            "name": c.name,
                            "description": c.description,
                            "multiplier": c.multiplier.to_string(),
                            "upstreams": c.upstreams.iter().map(|u| json!({
                                "id": u.id,
                                "base_url": format!("{}://{}{}", if u.base.tls {"https"} else {"http"}, u.base.authority(), u.base.path),
                                "weight": u.weight,
                                "models": u.models,
                                "disabled": u.disabled,
                                "breaker": u.state.breaker_state().as_str(),
                                "healthy": u.disabled.is_none() && u.state.breaker_state() == BreakerState::Closed,
                                "inflight": u.state.inflight(),
                                "ewma_ms": u.state.ewma_us() as f64 / 1000.0,
                                "requests": u.state.requests.load(std::sync::atomic::Ordering::Relaxed),
                                "failures": u.state.failures.load(std::sync::atomic::Ordering::Relaxed),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                Ok(reply(200, json!({"data": channels})))
            }
            (&Method::POST, ["reload"]) => match who.require_operator() {
                Err(e) => Err(e),
                Ok(()) => match reload::reload(self.app.clone()).await {
                    Ok(()) => Ok(reply(
                        200,
                        json!({"reloaded": true, "generation": self.app.generation()}),
                    )),
                    Err(e) => Err(GatewayError::bad_request(format!(
                        "Reload failed, running configuration kept: {e}"
                    ))),
                },
            },
            (&Method::GET, ["config", "status"]) if who.require_operator().is_ok() => Ok(reply(
                200,
                json!({
                    "generation": self.app.generation(),
                    "path": self.app.config_path.as_ref().map(|p| p.display().to_string()),
                    "last_reload_error": self.app.reload_error(),
                    "warnings": self.app.config().warnings,
                }),
            )),
            (&Method::GET, ["usage"]) => {
                // `format=csv` is answered before routing, as a stream (see `answer`).
                let limit = params.limit(100)?;
                let q = self.usage_listing(&who, &params, limit).await?;
                let page = self.blocking(move |a| a.store.usage_page(&q)).await?;
                let next = page
                    .last()
                    .filter(|_| page.len() == limit as usize)
                    .map(|(p, _)| listing::usage_next_cursor(*p));
                let data: Vec<_> = page.into_iter().map(|(_, e)| e).collect();
                Ok(reply(200, json!({"data": data, "next_cursor": next})))
            }
            (&Method::GET, ["tenants", t, "analytics"]) => {
                let tenant = self.tenant(t).await?;
                let role = who.role_in(tenant)?;
                let q = |name: &str| params.get(name);
                let (from, to) = time_range(&params)?;
                let granularity = match q("granularity").unwrap_or("total") {
                    "hour" => Granularity::Hour,
                    "day" => Granularity::Day,
                    "total" => Granularity::Total,
                    _ => {
                        return Err(GatewayError::bad_request(
                            "`granularity` must be hour, day or total",
                        ))
                    }
                };
                let group_by = match q("group_by").unwrap_or("none") {
                    "none" => Dimension::None,
                    "user" => Dimension::User,
                    "group" | "department" | "project" => Dimension::Group,
                    "key" => Dimension::Key,
                    "model" => Dimension::Model,
                    "channel" => Dimension::Channel,
                    _ => {
                        return Err(GatewayError::bad_request(
                            "`group_by` must be none, user, group, key, model or channel",
                        ))
                    }
                };
                // Members see their own calls only.
                let user = match (&who, role) {
                    (Principal::User(u), Role::Member) => Some(u.user.id),
                    _ => q("user").and_then(|v| v.parse::<i64>().ok()).map(UserId),
                };
                let query = AnalyticsQuery {
                    tenant,
                    from,
                    to,
                    granularity,
                    group_by,
                    user,
                };
                let rows = self.blocking(move |a| a.store.analytics(&query)).await?;
                let data: Vec<_> = rows
                    .into_iter()
                    .map(|r| {
                        json!({
                            "bucket": r.bucket,
                            "key": r.key,
                            "requests": r.requests,
                            "errors": r.errors,
                            "prompt_tokens": r.prompt_tokens,
                            "cached_tokens": r.cached_tokens,
                            "cache_write_tokens": r.cache_write_tokens,
                            "completion_tokens": r.completion_tokens,
                            "reasoning_tokens": r.reasoning_tokens,
                            "credits": credits_json(r.cost_nano),
                            "cost_nano": r.cost_nano,
                        })
                    })
                    .collect();
                Ok(reply(200, json!({"from": from, "to": to, "data": data})))
            }
            (&Method::GET, ["tenants", t, "router"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
                let stored = self
                    .blocking(move |a| a.store.router_override(tenant))
                    .await?;
                let cfg = self.app.config();
                let o: Option<crate::router::TenantRouterOverride> =
                    stored.as_deref().and_then(|j| serde_json::from_str(j).ok());
                let effective = cfg.router.as_deref().map(|r| {
                    let policy = match o.as_ref() {
                        Some(o) => r
                            .policy
                            .with_override(o, &router_models(&cfg), &|c: &str| {
                                cfg.channel(c).is_some()
                            })
                            .map(Arc::new)
                            .unwrap_or_else(|_| r.policy.clone()),
                        None => r.policy.clone(),
                    };
                    policy_json(&policy)
                });
                Ok(reply(
                    200,
                    json!({"tenant_id": tenant, "override": o, "effective": effective}),
                ))
            }
            (&Method::PUT, ["tenants", t, "router"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let o: crate::router::TenantRouterOverride = Self::read_json(session).await?;
                let cfg = self.app.config();
                let Some(r) = cfg.router.as_deref() else {
                    return Err(GatewayError::bad_request(
                        "The complexity router is not configured on this gateway ([router] section).",
                    ));
                };
                let policy = r
                    .policy
                    .with_override(&o, &router_models(&cfg), &|c: &str| {
                        cfg.channel(c).is_some()
                    })
                    .map_err(|e| {
                        GatewayError::bad_request(format!("Invalid router override: {e}"))
                    })?;
                let text =
                    serde_json::to_string(&o).map_err(|e| GatewayError::Internal(e.to_string()))?;
                self.blocking(move |a| {
                    a.store.set_router_override(tenant, Some(&text))?;
                    a.refresh_keys().map(|_| ())
                })
                .await?;
                Ok(reply(
                    200,
                    json!({"tenant_id": tenant, "override": o, "effective": policy_json(&policy)}),
                ))
            }
            (&Method::DELETE, ["tenants", t, "router"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                self.blocking(move |a| {
                    a.store.set_router_override(tenant, None)?;
                    a.refresh_keys().map(|_| ())
                })
                .await?;
                Ok(reply(200, json!({"tenant_id": tenant, "override": null})))
            }
            (&Method::GET, ["tenants", t, "routing"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
                let (from, to) = time_range(&params)?;
                let rows = self
                    .blocking(move |a| a.store.routing_savings(tenant, from * 1000, to * 1000))
                    .await?;
                let (cost, baseline, calls) = rows.iter().fold((0i64, 0i64, 0i64), |acc, r| {
                    (
                        acc.0 + r.cost_nano,
                        acc.1 + r.baseline_cost_nano,
                        acc.2 + r.calls,
                    )
                });
                let tiers: Vec<_> = rows
                    .iter()
                    .map(|r| json!({"tier": r.tier, "calls": r.calls, "cost": credits_json(r.cost_nano), "baseline_cost": credits_json(r.baseline_cost_nano), "nano": r}))
                    .collect();
                Ok(reply(
                    200,
                    json!({
                        "tenant_id": tenant, "from": from, "to": to,
                        "routed_calls": calls,
                        "cost": credits_json(cost),
                        "strong_tier_cost": credits_json(baseline),
                        "saved": credits_json(baseline - cost),
                        "saved_share": if baseline > 0 { (baseline - cost) as f64 / baseline as f64 } else { 0.0 },
                        "by_tier": tiers,
                    }),
                ))
            }
            (&Method::PUT, ["tenants", t, "quota-period"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let req: SetQuotaPeriod = Self::read_json(session).await?;
                let period = crate::tenancy::QuotaPeriod::parse(&req.period).ok_or_else(|| {
                    GatewayError::BadRequest {
                        message: "`period` must be one of none, day, month".into(),
                        param: Some("period".into()),
                    }
                })?;
                self.blocking(move |a| {
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
                Ok(reply(
                    200,
                    json!({"tenant_id": tenant, "quota_period": period, "period_started_ms": period.start_ms(now)}),
                ))
            }
            (&Method::PUT | &Method::PATCH, ["tenants", t, "limits"]) => {
                who.require_operator()?;
                let tenant = self.tenant(t).await?;
                let req: SetLimits = Self::read_json(session).await?;
                let patch = req.patch();
                let limits = self
                    .blocking(move |a| {
                        let l = a.store.set_limits(LimitSubject::Tenant(tenant), patch)?;
                        a.refresh_keys()?;
                        Ok(l)
                    })
                    .await?;
                Ok(reply(
                    200,
                    json!({"tenant_id": tenant, "rpm_limit": limits.rpm, "tpm_limit": limits.tpm}),
                ))
            }
            (&Method::PUT | &Method::PATCH, [kind @ ("users" | "keys"), id, "limits"]) => {
                let subject = if *kind == "users" {
                    let (user, _) = self.visible_user(&who, id).await?;
                    who.require(user.tenant_id, &[Role::TenantAdmin])?;
                    LimitSubject::User(user.id)
                } else {
                    let (key, _) = self.visible_key(&who, id).await?;
                    who.require(key.tenant_id, &[Role::TenantAdmin])?;
                    LimitSubject::Key(key.id)
                };
                let req: SetLimits = Self::read_json(session).await?;
                let patch = req.patch();
                let limits = self
                    .blocking(move |a| {
                        let l = a.store.set_limits(subject, patch)?;
                        a.refresh_keys()?;
                        Ok(l)
                    })
                    .await?;
                Ok(reply(
                    200,
                    json!({"id": id.parse::<i64>().unwrap_or_default(), "rpm_limit": limits.rpm, "tpm_limit": limits.tpm}),
                ))
            }
            (&Method::GET, ["tenants", t, "users"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
                let users = self.blocking(move |a| a.store.list_users(tenant)).await?;
                Ok(reply(200, json!({"data": users})))
            }
            (&Method::POST, ["tenants", t, "users"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let req: CreateUser = Self::read_json(session).await?;
                let role = parse_role(&req.role)?;
                let quota = req
                    .quota_credits
                    .map(|q| positive_nano(q, "quota_credits"))
                    .transpose()?;
                let user = self
                    .blocking(move |a| {
                        let u = a.store.create_user(
                            tenant,
                            &req.email,
                            &req.name,
                            role,
                            req.group_id.map(GroupId),
                            quota,
                        )?;
                        let token = a.store.create_user_token(u.id)?;
                        Ok((u, token))
                    })
                    .await?;
                Ok(reply(201, json!({"user": user.0, "token": user.1})))
            }
            (&Method::PATCH, ["users", id]) => {
                let (user, _) = self.visible_user(&who, id).await?;
                who.require(user.tenant_id, &[Role::TenantAdmin])?;
                let id = user.id;
                let req: UpdateUser = Self::read_json(session).await?;
                let role = req.role.as_deref().map(parse_role).transpose()?;
                let quota = match req.quota_credits {
                    None => None,
                    Some(None) => Some(None),
                    Some(Some(q)) => Some(Some(positive_nano(q, "quota_credits")?)),
                };
                let group = req.group_id.map(|g| g.map(GroupId));
                let updated = self
                    .blocking(move |a| {
                        let u = a.store.update_user(id, role, group, quota, req.disabled)?;
                        a.refresh_keys()?;
                        Ok(u)
                    })
                    .await?;
                Ok(reply(200, json!(updated)))
            }
            (&Method::POST, ["users", id, "tokens"]) => {
                let (user, _) = self.visible_user(&who, id).await?;
                who.require(user.tenant_id, &[Role::TenantAdmin])?;
                let token = self
                    .blocking(move |a| a.store.create_user_token(user.id))
                    .await?;
                Ok(reply(201, json!({"token": token})))
            }
            (&Method::GET, ["tenants", t, "groups"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
                let groups = self.blocking(move |a| a.store.list_groups(tenant)).await?;
                let data: Vec<_> = groups
                    .into_iter()
                    .map(|g| {
                        let (spent, reserved) = self.app.ledger.account_spend(tenant, Account::Group(g.id));
                        json!({"group": g, "spent": credits_json(spent), "reserved": credits_json(reserved)})
                    })
                    .collect();
                Ok(reply(200, json!({"data": data})))
            }
            (&Method::POST, ["tenants", t, "groups"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let req: CreateGroup = Self::read_json(session).await?;
                let budget = req
                    .budget_credits
                    .map(|b| positive_nano(b, "budget_credits"))
                    .transpose()?;
                let g = self
                    .blocking(move |a| a.store.create_group(tenant, &req.name, budget))
                    .await?;
                Ok(reply(201, json!(g)))
            }
            (&Method::POST, ["tenants", t, "invites"]) => {
                let tenant = self.tenant(t).await?;
                who.require(tenant, &[Role::TenantAdmin])?;
                let req: CreateInvite = Self::read_json(session).await?;
                let role = parse_role(&req.role)?;
                let ttl = req.ttl_hours.unwrap_or(72).clamp(1, 24 * 30) * 3600;
                let token = self
                    .blocking(move |a| {
                        a.store.create_invite(
                            tenant,
                            &req.email,
                            role,
                            req.group_id.map(GroupId),
                            ttl,
                        )
                    })
                    .await?;
                Ok(reply(201, json!({"invite_token": token})))
            }
            _ => Err(GatewayError::NotFound(format!(
                "Unknown admin path `{method} {path}`."
            ))),
        }
    }
}

/// An answer of the admin API: whole, or an export streamed page by page.
enum Answer {
    Full(Response<Vec<u8>>),
    Export(Export),
}

/// Write a whole response; returns whether it was written.
async fn write_full(session: &mut ServerSession, r: Response<Vec<u8>>) -> bool {
    let (parts, body) = r.into_parts();
    let header: ResponseHeader = parts.into();
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return false;
    }
    session
        .write_response_body(Bytes::from(body), true)
        .await
        .is_ok()
}

/// The admin API serves its own HTTP sessions (rather than through Pingora's `ServeHttp`,
/// which must hold a whole response in memory) so that exports can be written as they are read.
#[async_trait]
impl HttpServerApp for AdminApi {
    /// Runs for each request on an admin connection: reads the request head, answers, and hands
    /// the connection back for reuse when the answer was written whole.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "admin request could not be read");
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let written = match self.answer(&mut session).await {
            Ok(Answer::Full(r)) => write_full(&mut session, r).await,
            Ok(Answer::Export(x)) => x.stream(&self.app, &mut session).await,
            Err(e) => write_full(&mut session, error_reply(&e)).await,
        };
        if !written {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}
