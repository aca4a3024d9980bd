//! The record, split by domain, with two implementations of each domain: SQLite (the embedded
//! default, `store::sqlite::Store`) and PostgreSQL (`pg::PgStore`, the fleet store of issue 15).
//!
//! Each domain is a trait with async methods, so that the PostgreSQL driver (sqlx) is used as it
//! is meant to be and SQLite runs on the blocking pool; the same behaviour tests run against both
//! (tests/store.rs). Domains so far:
//!
//! - [`Directory`]: tenants and API keys, and the key generation the nodes poll to reload their
//!   key snapshot.
//! - [`Members`]: departments (groups), users, their admin tokens and invitations, and the
//!   tenant settings the key snapshot carries.
//! - [`UsageLog`]: the batched write path of usage records (the charges they carry included).
//! - [`Ledger`]: money in, idempotency keys, totals, spend per account, statements, and the
//!   limits and quota periods.
//!
//! - [`Codes`]: promotion campaigns and redemption codes.
//! - [`Analytics`]: roll-up reads, routing savings, pages of usage records.
//!
//! The gateway itself still calls the SQLite store directly; docs/architecture.md ("The
//! record") says what is left and in which order.

pub mod backend;
pub mod copy;
pub mod pg;
pub mod retention;
pub mod sqlite;

use crate::billing::entry::{Account, EntryKind, LedgerEntry};
use crate::billing::usage::UsageEvent;
use crate::store::sqlite::{
    AnalyticsQuery, AnalyticsRow, CreditRow, Credited, Dimension, Granularity, IdempotencyKey,
    IdempotentRecord, LedgerTotals, LimitSubject, NewKey, PromoBonus, PromoCampaign,
    RedemptionCode, RoutingRow, StatementPos, StatementRow, Store, StoreError, UsagePos,
    UsageQuery, UserPrincipal,
};
use crate::tenancy::keys::KeySnapshot;
use crate::tenancy::limits::{Limits, LimitsPatch};
use crate::tenancy::{
    ApiKey, Group, GroupId, KeyId, QuotaPeriod, Role, Tenant, TenantId, User, UserId,
};

/// Tenants and API keys.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// A new tenant; `Conflict` when the name is taken, `Invalid` when it is empty or too long.
    async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// A tenant by numeric id or by name.
    async fn find_tenant(&self, id_or_name: &str) -> Result<Tenant, StoreError>;
    /// A new key and its plaintext (shown once, never stored).
    async fn create_key(&self, new: &NewKey) -> Result<(ApiKey, String), StoreError>;
    async fn get_key(&self, id: KeyId) -> Result<ApiKey, StoreError>;
    async fn list_keys(&self, tenant: Option<TenantId>) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes a key (again: no change) and moves the key generation.
    async fn revoke_key(&self, id: KeyId) -> Result<ApiKey, StoreError>;
    /// Changes a key's settings (the caller checked channels and models); moves the key
    /// generation. `Conflict` for a revoked key.
    async fn update_key(&self, id: KeyId, patch: &KeyPatch) -> Result<ApiKey, StoreError>;
    /// A new secret for a key that is not revoked (its id, settings and spend stay): the old
    /// secret stops working when the nodes reload their key snapshot. The plaintext is returned
    /// once.
    async fn rotate_key(&self, id: KeyId) -> Result<(ApiKey, String), StoreError>;
    /// Moves with every key change: a node whose snapshot is older reloads it.
    async fn key_generation(&self) -> Result<i64, StoreError>;
    /// Every key by hash, revoked ones included.
    async fn load_key_snapshot(&self) -> Result<KeySnapshot, StoreError>;
}

/// The usage records' write path.
#[async_trait::async_trait]
pub trait UsageLog: Send + Sync {
    /// Stores a batch of usage records (with the charges they carry) in one transaction,
    /// idempotent on the request id: a batch written again adds nothing. Returns how many rows
    /// were new.
    async fn record(&self, events: &[UsageEvent]) -> Result<usize, StoreError>;
}

/// Runs a SQLite store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| StoreError::Invalid(format!("store task failed: {e}")))?
}

#[async_trait::async_trait]
impl Directory for Store {
    async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let name = name.to_string();
        blocking(self, move |s| s.create_tenant(&name)).await
    }
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        blocking(self, |s| s.list_tenants()).await
    }
    async fn find_tenant(&self, id_or_name: &str) -> Result<Tenant, StoreError> {
        let q = id_or_name.to_string();
        blocking(self, move |s| s.find_tenant(&q)).await
    }
    async fn create_key(&self, new: &NewKey) -> Result<(ApiKey, String), StoreError> {
        let new = new.clone();
        blocking(self, move |s| s.create_key(&new)).await
    }
    async fn get_key(&self, id: KeyId) -> Result<ApiKey, StoreError> {
        blocking(self, move |s| s.get_key(id)).await
    }
    async fn list_keys(&self, tenant: Option<TenantId>) -> Result<Vec<ApiKey>, StoreError> {
        blocking(self, move |s| s.list_keys(tenant)).await
    }
    async fn revoke_key(&self, id: KeyId) -> Result<ApiKey, StoreError> {
        blocking(self, move |s| s.revoke_key(id)).await
    }
    async fn update_key(&self, id: KeyId, patch: &KeyPatch) -> Result<ApiKey, StoreError> {
        let patch = patch.clone();
        blocking(self, move |s| s.update_key(id, &patch)).await
    }
    async fn rotate_key(&self, id: KeyId) -> Result<(ApiKey, String), StoreError> {
        blocking(self, move |s| s.rotate_key(id)).await
    }
    async fn key_generation(&self) -> Result<i64, StoreError> {
        blocking(self, |s| s.key_generation()).await
    }
    async fn load_key_snapshot(&self) -> Result<KeySnapshot, StoreError> {
        blocking(self, |s| s.load_key_snapshot()).await
    }
}

#[async_trait::async_trait]
impl UsageLog for Store {
    async fn record(&self, events: &[UsageEvent]) -> Result<usize, StoreError> {
        let events = events.to_vec();
        blocking(self, move |s| s.record(&events)).await
    }
}

/// (tenant, hour, key, user, group, model, channel) of an hourly roll-up row, borrowing the
/// batch's strings (0 and "" for none).
pub(crate) type HourlyKey<'a> = (i64, i64, i64, i64, i64, &'a str, &'a str);
/// (tenant, dimension, period, bucket, value) of a per-dimension roll-up row.
pub(crate) type DimKey = (i64, i64, i64, i64, String);
/// requests, errors, prompt, cached, completion, reasoning tokens, cost, cache writes.
pub(crate) type Deltas = [i64; 8];

/// What a batch of usage records adds to the roll-ups, counting only the records that were new
/// (`fresh[i]` for `events[i]`): the hourly rows, summed per distinct row, and from them the
/// per-dimension hour and day rows (tenant total, user, group, key, model, channel) that
/// unfiltered analytics read. Both stores apply these in the transaction that stores the
/// records, so a replayed batch moves nothing.
pub(crate) fn rollup_deltas<'a>(
    events: &'a [UsageEvent],
    fresh: &[bool],
) -> (
    std::collections::HashMap<HourlyKey<'a>, Deltas>,
    std::collections::HashMap<DimKey, Deltas>,
) {
    let mut hourly: std::collections::HashMap<HourlyKey<'a>, Deltas> =
        std::collections::HashMap::new();
    for (e, inserted) in events.iter().zip(fresh) {
        if let (true, Some(t)) = (*inserted, e.tenant_id) {
            let k = (
                t.0,
                e.ts_ms.div_euclid(3_600_000),
                e.key_id.map_or(0, |k| k.0),
                e.user_id.map_or(0, |u| u.0),
                e.group_id.map_or(0, |g| g.0),
                e.model_requested.as_deref().unwrap_or_default(),
                e.channel.as_deref().unwrap_or_default(),
            );
            let d = hourly.entry(k).or_insert([0i64; 8]);
            d[0] += 1;
            d[1] += i64::from(!(200..300).contains(&e.status));
            d[2] += e.prompt_tokens as i64;
            d[3] += e.cached_tokens as i64;
            d[4] += e.completion_tokens as i64;
            d[5] += e.reasoning_tokens as i64;
            d[6] += e.cost_nano;
            d[7] += e.cache_write_tokens as i64;
        }
    }
    let mut dims: std::collections::HashMap<DimKey, Deltas> = std::collections::HashMap::new();
    // Routed calls (`model: "auto"`) by tier: dimension 6 holds what they were charged,
    // dimension 7 what they would have cost on the strongest tier (`ROUTE_TIER_DIMS`).
    for (e, inserted) in events.iter().zip(fresh) {
        if let (true, Some(t), Some(tier)) = (*inserted, e.tenant_id, e.route_tier.as_deref()) {
            let hour = e.ts_ms.div_euclid(3_600_000);
            let baseline = e.baseline_cost_nano.unwrap_or(e.cost_nano);
            for (dim, cost) in [
                (ROUTE_TIER_DIMS.0, e.cost_nano),
                (ROUTE_TIER_DIMS.1, baseline),
            ] {
                for period in [3600i64, 86_400] {
                    let bucket = (hour * 3600).div_euclid(period) * period;
                    let acc = dims
                        .entry((t.0, dim, period, bucket, tier.to_string()))
                        .or_insert([0i64; 8]);
                    acc[0] += 1;
                    acc[6] += cost;
                }
            }
        }
    }
    for ((tenant, hour, key, user, group, model, channel), d) in &hourly {
        let values: [(i64, String); 6] = [
            (0, String::new()),
            (1, user.to_string()),
            (2, group.to_string()),
            (3, key.to_string()),
            (4, model.to_string()),
            (5, channel.to_string()),
        ];
        for period in [3600i64, 86_400] {
            let bucket = (hour * 3600).div_euclid(period) * period;
            for (dim, value) in &values {
                let acc = dims
                    .entry((*tenant, *dim, period, bucket, value.clone()))
                    .or_insert([0i64; 8]);
                for (a, x) in acc.iter_mut().zip(d.iter()) {
                    *a += x;
                }
            }
        }
    }
    (hourly, dims)
}

/// The ids of the entries an idempotency key committed, as stored with the key (a JSON array).
pub(crate) fn entry_ids_json(entries: &[LedgerEntry]) -> Result<String, StoreError> {
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// A name of 1-128 characters once trimmed (tenants, keys, groups).
pub(crate) fn checked_name<'a>(name: &'a str, what: &str) -> Result<&'a str, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 {
        return Err(StoreError::Invalid(format!(
            "{what} name must be 1-128 characters"
        )));
    }
    Ok(name)
}

/// An email address, trimmed and lower-cased; `Invalid` without an `@` or beyond 254 bytes.
pub(crate) fn checked_email(email: &str) -> Result<String, StoreError> {
    let email = email.trim().to_ascii_lowercase();
    if !email.contains('@') || email.len() > 254 {
        return Err(StoreError::Invalid("a valid email is required".into()));
    }
    Ok(email)
}

/// Tenant users have tenant roles; operators are not users of a tenant.
pub(crate) fn checked_role(role: Role) -> Result<Role, StoreError> {
    if role == Role::Operator {
        return Err(StoreError::Invalid(
            "tenant users cannot be operators".into(),
        ));
    }
    Ok(role)
}

/// A partial update of a user: `None` leaves a field; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub group: Option<Option<GroupId>>,
    pub quota_nano: Option<Option<i64>>,
    pub disabled: Option<bool>,
}

/// A partial update of a key: `None` leaves a field; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub default_channel: Option<String>,
    pub allowed_channels: Option<Vec<String>>,
    pub allowed_models: Option<Vec<String>>,
    pub expires_at: Option<Option<i64>>,
    pub quota_nano: Option<Option<i64>>,
}

/// An invitation, never its token.
#[derive(Debug, Clone, PartialEq)]
pub struct Invite {
    pub id: i64,
    pub tenant_id: TenantId,
    pub email: String,
    pub role: Role,
    pub group_id: Option<GroupId>,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_user_id: Option<UserId>,
    pub revoked_at: Option<i64>,
}

impl Invite {
    /// `accepted`, `revoked`, `expired` (at `now`, unix seconds) or `pending`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.accepted_user_id.is_some() {
            "accepted"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "pending"
        }
    }
}

/// One of a user's admin-API tokens, never the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct UserToken {
    pub id: i64,
    pub user_id: UserId,
    /// First characters of the token, for display.
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A tenant's members: departments (groups), users, their admin-API tokens and invitations,
/// and the tenant settings the key snapshot carries.
#[async_trait::async_trait]
pub trait Members: Send + Sync {
    async fn create_group(
        &self,
        tenant: TenantId,
        name: &str,
        budget_nano: Option<i64>,
    ) -> Result<Group, StoreError>;
    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<Group>, StoreError>;
    async fn create_user(
        &self,
        tenant: TenantId,
        email: &str,
        name: &str,
        role: Role,
        group: Option<GroupId>,
        quota_nano: Option<i64>,
    ) -> Result<User, StoreError>;
    async fn get_user(&self, id: UserId) -> Result<User, StoreError>;
    async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>, StoreError>;
    /// Disabling a user also revokes the user's admin tokens.
    async fn update_user(&self, id: UserId, patch: &UserPatch) -> Result<User, StoreError>;
    /// A new admin-API token; the plaintext is returned once.
    async fn create_user_token(&self, user: UserId) -> Result<String, StoreError>;
    /// The enabled user behind a token that is not revoked.
    async fn user_by_token(&self, token: &str) -> Result<Option<UserPrincipal>, StoreError>;
    /// A single-use invitation token valid `ttl_secs`.
    async fn create_invite(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        group: Option<GroupId>,
        ttl_secs: i64,
    ) -> Result<String, StoreError>;
    /// Accepts an invitation once: the new user and an admin token.
    async fn accept_invite(&self, token: &str, name: &str) -> Result<(User, String), StoreError>;
    /// A tenant's invitations, newest first.
    async fn list_invites(&self, tenant: TenantId) -> Result<Vec<Invite>, StoreError>;
    /// The invitation a link's token opens, whatever its state.
    async fn invite_by_token(&self, token: &str) -> Result<Option<Invite>, StoreError>;
    /// Revokes a pending invitation of `tenant` (one accepted or revoked: `Conflict`).
    async fn revoke_invite(&self, tenant: TenantId, id: i64) -> Result<Invite, StoreError>;
    /// A user's admin-API tokens, oldest first.
    async fn list_user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError>;
    /// Revokes one of the user's tokens (again: no change).
    async fn revoke_user_token(&self, user: UserId, id: i64) -> Result<UserToken, StoreError>;
    async fn set_router_override(
        &self,
        tenant: TenantId,
        json: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn router_override(&self, tenant: TenantId) -> Result<Option<String>, StoreError>;
}

/// Online payment orders (`payment_orders`): the PostgreSQL side of the same calls on
/// `sqlite::Store`.
#[async_trait::async_trait]
pub trait Orders: Send + Sync {
    #[allow(clippy::too_many_arguments)]
    async fn create_order(
        &self,
        tenant: TenantId,
        provider: &str,
        amount_minor: i64,
        currency: &str,
        promo_code: Option<&str>,
        created_by: Option<&str>,
        ttl_secs: i64,
    ) -> Result<sqlite::PaymentOrder, StoreError>;
    async fn order(&self, id: i64) -> Result<sqlite::PaymentOrder, StoreError>;
    async fn list_orders(
        &self,
        tenant: Option<TenantId>,
        page: sqlite::NewestFirst,
    ) -> Result<Vec<sqlite::PaymentOrder>, StoreError>;
    async fn order_pending(
        &self,
        id: i64,
        provider_ref: &str,
    ) -> Result<sqlite::PaymentOrder, StoreError>;
    async fn order_closed(&self, id: i64, state: &str) -> Result<sqlite::PaymentOrder, StoreError>;
    async fn expire_orders(&self, now: i64, grace_secs: i64) -> Result<u64, StoreError>;
    async fn order_paid(
        &self,
        id: i64,
        entry_id: &str,
        late: bool,
        credited_nano: i64,
    ) -> Result<sqlite::PaymentOrder, StoreError>;
    async fn create_refund(
        &self,
        order_id: i64,
        amount_minor: i64,
        debit_nano: i64,
        reason: Option<&str>,
        created_by: Option<&str>,
    ) -> Result<sqlite::Refund, StoreError>;
    async fn refund(&self, id: i64) -> Result<sqlite::Refund, StoreError>;
    async fn list_refunds(
        &self,
        order_id: Option<i64>,
        page: sqlite::NewestFirst,
    ) -> Result<Vec<sqlite::Refund>, StoreError>;
    async fn refund_settled(
        &self,
        id: i64,
        state: &str,
        provider_ref: Option<&str>,
    ) -> Result<sqlite::Refund, StoreError>;
}

/// Budget and balance alerts: the PostgreSQL side of the same calls on `sqlite::Store`.
#[async_trait::async_trait]
pub trait Alerts: Send + Sync {
    async fn set_alert_settings(
        &self,
        a: &sqlite::AlertSettings,
    ) -> Result<sqlite::AlertSettings, StoreError>;
    async fn alert_settings(
        &self,
        tenant: TenantId,
    ) -> Result<Option<sqlite::AlertSettings>, StoreError>;
    async fn enabled_alert_settings(&self) -> Result<Vec<sqlite::AlertSettings>, StoreError>;
    async fn alert_level(
        &self,
        tenant: TenantId,
        subject: &str,
        level: i64,
    ) -> Result<sqlite::AlertMove, StoreError>;
    async fn daily_spend(&self, tenant: TenantId, days: i64) -> Result<i64, StoreError>;
    async fn add_alert_delivery(&self, d: &sqlite::AlertDelivery) -> Result<i64, StoreError>;
    async fn update_alert_delivery(
        &self,
        id: i64,
        state: &str,
        attempts: i64,
        last_error: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn alert_deliveries(
        &self,
        tenant: TenantId,
        page: sqlite::NewestFirst,
    ) -> Result<Vec<sqlite::AlertDelivery>, StoreError>;
}

/// What an audit listing asks for.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant: Option<TenantId>,
    pub before_seq: Option<i64>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Actions containing this text (e.g. `keys`).
    pub action: Option<String>,
    pub limit: u32,
}

/// The canonical JSON an audit entry's hash covers: its sequence number and every field, keys
/// sorted (serde_json's map is ordered), no whitespace.
pub fn audit_entry(
    seq: i64,
    at_ms: i64,
    tenant: Option<TenantId>,
    actor: &str,
    action: &str,
    status: i64,
    fields: &serde_json::Value,
) -> String {
    let mut m = serde_json::Map::new();
    if let serde_json::Value::Object(f) = fields {
        for (k, v) in f {
            m.insert(k.clone(), v.clone());
        }
    }
    m.insert("seq".into(), seq.into());
    m.insert("at_ms".into(), at_ms.into());
    m.insert("tenant_id".into(), tenant.map(|t| t.0).into());
    m.insert("actor".into(), actor.into());
    m.insert("action".into(), action.into());
    m.insert("status".into(), status.into());
    let sorted: std::collections::BTreeMap<String, serde_json::Value> = m.into_iter().collect();
    serde_json::to_string(&sorted).unwrap_or_default()
}

/// The audit trail: the PostgreSQL side of the same calls on `sqlite::Store`.
#[async_trait::async_trait]
pub trait Audit: Send + Sync {
    #[allow(clippy::too_many_arguments)]
    async fn append_audit(
        &self,
        at_ms: i64,
        tenant: Option<TenantId>,
        actor: &str,
        action: &str,
        status: i64,
        fields: &serde_json::Value,
    ) -> Result<sqlite::AuditRow, StoreError>;
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<sqlite::AuditRow>, StoreError>;
    async fn audit_chain(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<sqlite::AuditRow>, StoreError>;
}

/// Network allow-lists: the PostgreSQL side of the same calls on `sqlite::Store`.
#[async_trait::async_trait]
pub trait Network: Send + Sync {
    async fn set_allowed_cidrs(
        &self,
        subject: sqlite::LimitSubject,
        cidrs: &[String],
    ) -> Result<Vec<String>, StoreError>;
    async fn allowed_cidrs(&self, subject: sqlite::LimitSubject)
        -> Result<Vec<String>, StoreError>;
    async fn set_guardrails(
        &self,
        tenant: TenantId,
        policy: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn guardrails(&self, tenant: TenantId) -> Result<Option<String>, StoreError>;
}

/// Console single sign-on: the PostgreSQL side of the same calls on `sqlite::Store`.
#[async_trait::async_trait]
pub trait Sso: Send + Sync {
    async fn set_sso(&self, tenant: TenantId, settings: Option<&str>) -> Result<(), StoreError>;
    async fn sso(&self, tenant: TenantId) -> Result<Option<String>, StoreError>;
    async fn create_sso_flow(&self, state: &str, flow: &sqlite::SsoFlow) -> Result<(), StoreError>;
    async fn take_sso_flow(&self, state: &str) -> Result<Option<sqlite::SsoFlow>, StoreError>;
    async fn link_sso_subject(&self, user: UserId, subject: &str) -> Result<bool, StoreError>;
}

/// Console sign-in and sessions (`console_sessions`): the PostgreSQL side of the same calls
/// on `sqlite::Store`.
#[async_trait::async_trait]
pub trait Sessions: Send + Sync {
    async fn login_account(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<sqlite::LoginAccount>, StoreError>;
    async fn set_password(&self, user: UserId, hash: &str) -> Result<(), StoreError>;
    async fn login_failed(
        &self,
        user: UserId,
        lock_after: i64,
        lock_until: i64,
    ) -> Result<i64, StoreError>;
    async fn login_succeeded(&self, user: UserId) -> Result<(), StoreError>;
    async fn create_session(
        &self,
        user: Option<UserId>,
        ttl_secs: i64,
    ) -> Result<sqlite::NewSession, StoreError>;
    async fn session(&self, token: &str) -> Result<Option<sqlite::Session>, StoreError>;
    async fn end_session(&self, token: &str) -> Result<(), StoreError>;
    async fn update_group(
        &self,
        tenant: TenantId,
        id: GroupId,
        name: Option<&str>,
        budget_nano: Option<Option<i64>>,
    ) -> Result<Group, StoreError>;
    async fn create_password_reset(
        &self,
        user: UserId,
        ttl_secs: i64,
    ) -> Result<String, StoreError>;
    async fn use_password_reset(&self, token: &str, hash: &str) -> Result<UserId, StoreError>;
    /// What a reset link's token is now: `pending`, `used` or `expired`; `None`: no such link.
    async fn reset_state(&self, token: &str) -> Result<Option<&'static str>, StoreError>;
}

#[async_trait::async_trait]
impl Members for Store {
    async fn create_group(
        &self,
        tenant: TenantId,
        name: &str,
        budget_nano: Option<i64>,
    ) -> Result<Group, StoreError> {
        let name = name.to_string();
        blocking(self, move |s| s.create_group(tenant, &name, budget_nano)).await
    }
    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<Group>, StoreError> {
        blocking(self, move |s| s.list_groups(tenant)).await
    }
    async fn create_user(
        &self,
        tenant: TenantId,
        email: &str,
        name: &str,
        role: Role,
        group: Option<GroupId>,
        quota_nano: Option<i64>,
    ) -> Result<User, StoreError> {
        let (email, name) = (email.to_string(), name.to_string());
        blocking(self, move |s| {
            s.create_user(tenant, &email, &name, role, group, quota_nano)
        })
        .await
    }
    async fn get_user(&self, id: UserId) -> Result<User, StoreError> {
        blocking(self, move |s| s.get_user(id)).await
    }
    async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>, StoreError> {
        blocking(self, move |s| s.list_users(tenant)).await
    }
    async fn update_user(&self, id: UserId, patch: &UserPatch) -> Result<User, StoreError> {
        let p = patch.clone();
        blocking(self, move |s| {
            s.update_user(id, p.role, p.group, p.quota_nano, p.disabled)
        })
        .await
    }
    async fn create_user_token(&self, user: UserId) -> Result<String, StoreError> {
        blocking(self, move |s| s.create_user_token(user)).await
    }
    async fn user_by_token(&self, token: &str) -> Result<Option<UserPrincipal>, StoreError> {
        let token = token.to_string();
        blocking(self, move |s| s.user_by_token(&token)).await
    }
    async fn create_invite(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        group: Option<GroupId>,
        ttl_secs: i64,
    ) -> Result<String, StoreError> {
        let email = email.to_string();
        blocking(self, move |s| {
            s.create_invite(tenant, &email, role, group, ttl_secs)
        })
        .await
    }
    async fn accept_invite(&self, token: &str, name: &str) -> Result<(User, String), StoreError> {
        let (token, name) = (token.to_string(), name.to_string());
        blocking(self, move |s| s.accept_invite(&token, &name)).await
    }
    async fn invite_by_token(&self, token: &str) -> Result<Option<Invite>, StoreError> {
        let token = token.to_string();
        blocking(self, move |s| s.invite_by_token(&token)).await
    }
    async fn list_invites(&self, tenant: TenantId) -> Result<Vec<Invite>, StoreError> {
        blocking(self, move |s| s.list_invites(tenant)).await
    }
    async fn revoke_invite(&self, tenant: TenantId, id: i64) -> Result<Invite, StoreError> {
        blocking(self, move |s| s.revoke_invite(tenant, id)).await
    }
    async fn list_user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        blocking(self, move |s| s.list_user_tokens(user)).await
    }
    async fn revoke_user_token(&self, user: UserId, id: i64) -> Result<UserToken, StoreError> {
        blocking(self, move |s| s.revoke_user_token(user, id)).await
    }
    async fn set_router_override(
        &self,
        tenant: TenantId,
        json: Option<&str>,
    ) -> Result<(), StoreError> {
        let json = json.map(str::to_string);
        blocking(self, move |s| {
            s.set_router_override(tenant, json.as_deref())
        })
        .await
    }
    async fn router_override(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        blocking(self, move |s| s.router_override(tenant)).await
    }
}

/// The ledger: money in (top-ups, grants, redemptions, adjustments) in the journal, charges on
/// the usage records, idempotency keys, balances and statements, and the limits and quota
/// periods that decide what an account may spend.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    async fn set_quota_period(
        &self,
        tenant: TenantId,
        period: QuotaPeriod,
    ) -> Result<(), StoreError>;
    /// What a tenant's quotas and budgets count.
    async fn quota_period(&self, tenant: TenantId) -> Result<QuotaPeriod, StoreError>;
    /// Changes a tenant's, user's or key's rate limits; returns those now in force.
    async fn set_limits(
        &self,
        subject: LimitSubject,
        patch: LimitsPatch,
    ) -> Result<Limits, StoreError>;
    /// Commits a credit-side entry; an id used before is a `Conflict`.
    async fn credit(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
    ) -> Result<LedgerEntry, StoreError>;
    /// [`Ledger::credit`] under an idempotency key: a key used before commits nothing.
    async fn credit_idempotent(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        idem: &IdempotencyKey,
    ) -> Result<Credited, StoreError>;
    async fn idempotent_record(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotentRecord>, StoreError>;
    /// Keeps the first answer recorded for a key.
    async fn answer_idempotent(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;
    async fn entries_by_id(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Per tenant: credited (the journal) and charged (the usage records).
    async fn ledger_totals(&self) -> Result<Vec<LedgerTotals>, StoreError>;
    /// Journal entries after sequence number `after`, in order, at most `limit`.
    async fn credits_after(&self, after: i64, limit: usize) -> Result<Vec<CreditRow>, StoreError>;
    /// A tenant's credits up to sequence number `upto`, and all its charges.
    async fn tenant_record_upto(
        &self,
        tenant: TenantId,
        upto: i64,
    ) -> Result<(i64, i64), StoreError>;
    /// One key's, user's or group's charges since `since_ms`.
    async fn spent_by(
        &self,
        tenant: TenantId,
        account: Account,
        since_ms: i64,
    ) -> Result<i64, StoreError>;
    /// Per key, user and group: their charges (of the current period where the tenant has one).
    async fn account_spend(&self) -> Result<Vec<(TenantId, Account, i64)>, StoreError>;
    /// Every entry in time order with the running balance after it.
    async fn ledger_statement(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(LedgerEntry, i64)>, StoreError>;
    /// The balance from everything before `from_ms`.
    async fn balance_before(&self, tenant: TenantId, from_ms: i64) -> Result<i64, StoreError>;
    /// One page of the statement in `[from_ms, to_ms)` after `after`, at most `limit` rows.
    async fn statement_page(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
        after: Option<StatementPos>,
        limit: u32,
    ) -> Result<Vec<StatementRow>, StoreError>;
    /// Money in and adjustments (every journal entry but charges), newest first: with their
    /// journal sequence numbers (the listing's cursor).
    async fn money_entries(
        &self,
        tenant: TenantId,
        page: sqlite::NewestFirst,
    ) -> Result<Vec<(i64, LedgerEntry)>, StoreError>;
    /// Cluster mode's registry of nodes (`meta` rows `cluster_node:<id>`): `Some(since)`
    /// records the node as running, `None` removes it (a clean stop, or `cluster forget`).
    async fn set_cluster_node(&self, node: &str, running: Option<i64>) -> Result<(), StoreError>;
    /// The running nodes of the registry, with the time (unix s) they last said so.
    async fn cluster_nodes(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// The sequence number of the last credit entry (0: none): a rebuilt bank's cursor.
    async fn last_credit_seq(&self) -> Result<i64, StoreError>;
}

#[async_trait::async_trait]
impl Ledger for Store {
    async fn set_quota_period(
        &self,
        tenant: TenantId,
        period: QuotaPeriod,
    ) -> Result<(), StoreError> {
        blocking(self, move |s| s.set_quota_period(tenant, period)).await
    }
    async fn quota_period(&self, tenant: TenantId) -> Result<QuotaPeriod, StoreError> {
        blocking(self, move |s| s.quota_period(tenant)).await
    }
    async fn set_limits(
        &self,
        subject: LimitSubject,
        patch: LimitsPatch,
    ) -> Result<Limits, StoreError> {
        blocking(self, move |s| s.set_limits(subject, patch)).await
    }
    async fn credit(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
    ) -> Result<LedgerEntry, StoreError> {
        let (actor, note, id) = (
            actor.map(str::to_string),
            note.map(str::to_string),
            id.to_string(),
        );
        blocking(self, move |s| {
            s.credit(tenant, kind, amount, actor.as_deref(), note.as_deref(), &id)
        })
        .await
    }
    async fn credit_idempotent(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        idem: &IdempotencyKey,
    ) -> Result<Credited, StoreError> {
        let (actor, note, idem) = (
            actor.map(str::to_string),
            note.map(str::to_string),
            idem.clone(),
        );
        blocking(self, move |s| {
            s.credit_idempotent(
                tenant,
                kind,
                amount,
                actor.as_deref(),
                note.as_deref(),
                &idem,
            )
        })
        .await
    }
    async fn idempotent_record(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotentRecord>, StoreError> {
        let (scope, key) = (scope.to_string(), key.to_string());
        blocking(self, move |s| s.idempotent_record(tenant, &scope, &key)).await
    }
    async fn answer_idempotent(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let (scope, key, body) = (scope.to_string(), key.to_string(), body.to_string());
        blocking(self, move |s| {
            s.answer_idempotent(tenant, &scope, &key, status, &body)
        })
        .await
    }
    async fn entries_by_id(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let ids = ids.to_vec();
        blocking(self, move |s| s.entries_by_id(tenant, &ids)).await
    }
    async fn ledger_totals(&self) -> Result<Vec<LedgerTotals>, StoreError> {
        blocking(self, |s| s.ledger_totals()).await
    }
    async fn credits_after(&self, after: i64, limit: usize) -> Result<Vec<CreditRow>, StoreError> {
        blocking(self, move |s| s.credits_after(after, limit)).await
    }
    async fn tenant_record_upto(
        &self,
        tenant: TenantId,
        upto: i64,
    ) -> Result<(i64, i64), StoreError> {
        blocking(self, move |s| s.tenant_record_upto(tenant, upto)).await
    }
    async fn spent_by(
        &self,
        tenant: TenantId,
        account: Account,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        blocking(self, move |s| s.spent_by(tenant, account, since_ms)).await
    }
    async fn account_spend(&self) -> Result<Vec<(TenantId, Account, i64)>, StoreError> {
        blocking(self, |s| s.account_spend()).await
    }
    async fn ledger_statement(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(LedgerEntry, i64)>, StoreError> {
        blocking(self, move |s| s.ledger_statement(tenant)).await
    }
    async fn balance_before(&self, tenant: TenantId, from_ms: i64) -> Result<i64, StoreError> {
        blocking(self, move |s| s.balance_before(tenant, from_ms)).await
    }
    async fn statement_page(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
        after: Option<StatementPos>,
        limit: u32,
    ) -> Result<Vec<StatementRow>, StoreError> {
        blocking(self, move |s| {
            s.statement_page(tenant, from_ms, to_ms, after, limit)
        })
        .await
    }
    async fn money_entries(
        &self,
        tenant: TenantId,
        page: sqlite::NewestFirst,
    ) -> Result<Vec<(i64, LedgerEntry)>, StoreError> {
        blocking(self, move |s| s.money_entries(tenant, page)).await
    }
    async fn set_cluster_node(&self, node: &str, running: Option<i64>) -> Result<(), StoreError> {
        let node = node.to_string();
        blocking(self, move |s| s.set_cluster_node(&node, running)).await
    }
    async fn cluster_nodes(&self) -> Result<Vec<(String, i64)>, StoreError> {
        blocking(self, |s| s.cluster_nodes()).await
    }
    async fn last_credit_seq(&self) -> Result<i64, StoreError> {
        blocking(self, |s| s.last_credit_seq()).await
    }
}

/// A promotion campaign's code (upper-cased) and its bonus as stored (`fixed` nano-credits or
/// `percent` basis points), checked.
pub(crate) fn checked_promo(
    code: &str,
    bonus: PromoBonus,
) -> Result<(String, &'static str, i64), StoreError> {
    let code = code.trim().to_ascii_uppercase();
    if code.is_empty()
        || code.len() > 64
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(StoreError::Invalid(
            "a promo code is 1-64 letters, digits, - or _".into(),
        ));
    }
    match bonus {
        PromoBonus::Fixed(n) if n > 0 => Ok((code, "fixed", n)),
        PromoBonus::Percent(bp) if bp > 0 && bp <= 100_000 => Ok((code, "percent", bp)),
        _ => Err(StoreError::Invalid(
            "the bonus must be positive (percent at most 1000%)".into(),
        )),
    }
}

/// A stored campaign's bonus.
pub(crate) fn promo_bonus_of(kind: &str, value: i64) -> PromoBonus {
    if kind == "fixed" {
        PromoBonus::Fixed(value)
    } else {
        PromoBonus::Percent(value)
    }
}

/// Whether a campaign can still be claimed, and what it grants on a top-up of `topup` (None: a
/// claim without a top-up, for fixed bonuses only): basis points of the top-up rounded half
/// away from zero to the nano-credit.
pub(crate) fn promo_grant(
    kind: &str,
    value: i64,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
    uses: i64,
    topup: Option<i64>,
) -> Result<i64, StoreError> {
    if expires_at.is_some_and(|t| t <= crate::tenancy::unix_now()) {
        return Err(StoreError::Conflict("this promo code has expired".into()));
    }
    if max_uses.is_some_and(|m| uses >= m) {
        return Err(StoreError::Conflict(
            "this promo code has been used up".into(),
        ));
    }
    match (kind, topup) {
        ("fixed", _) => Ok(value),
        ("percent", Some(amount)) => {
            let x = i128::from(amount) * i128::from(value);
            i64::try_from((x + 5_000) / 10_000)
                .map_err(|_| StoreError::Invalid("bonus too large".into()))
        }
        _ => Err(StoreError::Invalid(
            "a percentage promo code applies to a top-up".into(),
        )),
    }
}

/// A redemption code's state for listings.
pub(crate) fn code_state(
    redeemed_by: Option<i64>,
    expires_at: Option<i64>,
    now: i64,
) -> &'static str {
    if redeemed_by.is_some() {
        "redeemed"
    } else if expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "unused"
    }
}

/// A money-in journal entry of `tenant` (no key, user or request), timed now.
pub(crate) fn money_in(
    tenant: TenantId,
    kind: EntryKind,
    amount: i64,
    id: String,
    actor: Option<&str>,
    note: Option<String>,
) -> LedgerEntry {
    LedgerEntry {
        id,
        tenant_id: tenant,
        kind,
        amount,
        key_id: None,
        user_id: None,
        group_id: None,
        request_id: None,
        actor: actor.map(str::to_string),
        note,
        uncollected: 0,
        created_ms: crate::store::sqlite::unix_now_ms(),
    }
}

/// Promotion campaigns and redemption codes: money in that tenants claim themselves.
#[async_trait::async_trait]
pub trait Codes: Send + Sync {
    async fn promo_preview(
        &self,
        code: &str,
        tenant: TenantId,
        topup: i64,
    ) -> Result<i64, StoreError>;
    async fn create_promo(
        &self,
        code: &str,
        bonus: PromoBonus,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<PromoCampaign, StoreError>;
    async fn list_promos(&self) -> Result<Vec<PromoCampaign>, StoreError>;
    /// A top-up and, with a promo code, its bonus, in one transaction; with an idempotency key
    /// a key used before commits nothing.
    #[allow(clippy::too_many_arguments)]
    async fn top_up(
        &self,
        tenant: TenantId,
        amount: i64,
        promo: Option<&str>,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
        idem: Option<&IdempotencyKey>,
    ) -> Result<Credited, StoreError>;
    /// A fixed-bonus promo code claimed without a top-up (once per tenant).
    async fn claim_fixed_promo(
        &self,
        tenant: TenantId,
        code: &str,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError>;
    /// `count` single-use codes worth `amount` each; the plaintexts are returned once.
    async fn create_codes(
        &self,
        batch: &str,
        amount: i64,
        count: u32,
        expires_at: Option<i64>,
    ) -> Result<Vec<String>, StoreError>;
    async fn list_codes(&self, batch: Option<&str>) -> Result<Vec<RedemptionCode>, StoreError>;
    /// Redeems a code once, whatever the concurrency.
    async fn redeem(
        &self,
        code: &str,
        tenant: TenantId,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError>;
}

#[async_trait::async_trait]
impl Codes for Store {
    async fn promo_preview(
        &self,
        code: &str,
        tenant: TenantId,
        topup: i64,
    ) -> Result<i64, StoreError> {
        let code = code.to_string();
        blocking(self, move |s| s.promo_preview(&code, tenant, topup)).await
    }

    async fn create_promo(
        &self,
        code: &str,
        bonus: PromoBonus,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<PromoCampaign, StoreError> {
        let code = code.to_string();
        blocking(self, move |s| {
            s.create_promo(&code, bonus, expires_at, max_uses)
        })
        .await
    }
    async fn list_promos(&self) -> Result<Vec<PromoCampaign>, StoreError> {
        blocking(self, |s| s.list_promos()).await
    }
    async fn top_up(
        &self,
        tenant: TenantId,
        amount: i64,
        promo: Option<&str>,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
        idem: Option<&IdempotencyKey>,
    ) -> Result<Credited, StoreError> {
        let (promo, actor, note) = (
            promo.map(str::to_string),
            actor.map(str::to_string),
            note.map(str::to_string),
        );
        let (id, idem) = (id.to_string(), idem.cloned());
        blocking(self, move |s| {
            s.top_up(
                tenant,
                amount,
                promo.as_deref(),
                actor.as_deref(),
                note.as_deref(),
                &id,
                idem.as_ref(),
            )
        })
        .await
    }
    async fn claim_fixed_promo(
        &self,
        tenant: TenantId,
        code: &str,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError> {
        let (code, actor) = (code.to_string(), actor.map(str::to_string));
        blocking(self, move |s| {
            s.claim_fixed_promo(tenant, &code, actor.as_deref())
        })
        .await
    }
    async fn create_codes(
        &self,
        batch: &str,
        amount: i64,
        count: u32,
        expires_at: Option<i64>,
    ) -> Result<Vec<String>, StoreError> {
        let batch = batch.to_string();
        blocking(self, move |s| {
            s.create_codes(&batch, amount, count, expires_at)
        })
        .await
    }
    async fn list_codes(&self, batch: Option<&str>) -> Result<Vec<RedemptionCode>, StoreError> {
        let batch = batch.map(str::to_string);
        blocking(self, move |s| s.list_codes(batch.as_deref())).await
    }
    async fn redeem(
        &self,
        code: &str,
        tenant: TenantId,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError> {
        let (code, actor) = (code.to_string(), actor.map(str::to_string));
        blocking(self, move |s| s.redeem(&code, tenant, actor.as_deref())).await
    }
}

/// Where an unfiltered analytics query reads the per-dimension roll-ups: the dimension's
/// number, the hour range `[from, to)` (unix seconds, whole hours), and the whole days
/// `[day_from, day_to)` read from the daily rows (the hours outside them from the hourly rows;
/// an hourly series reads hour rows only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RollupWindow {
    pub dim: i64,
    pub from: i64,
    pub to: i64,
    pub day_from: i64,
    pub day_to: i64,
}

/// The `usage_rollup` dimensions of routed calls by tier: what they were charged, and what the
/// strongest tier would have cost (only requests and cost are kept in these rows).
pub(crate) const ROUTE_TIER_DIMS: (i64, i64) = (6, 7);

/// The routing savings of a tenant from `ROUTE_TIER_DIMS` rows (`tier, dimension, calls, cost`).
pub(crate) fn routing_rows(rows: Vec<(String, i64, i64, i64)>) -> Vec<RoutingRow> {
    let mut out: Vec<RoutingRow> = Vec::new();
    for (tier, dim, calls, cost) in rows {
        let i = match out.iter().position(|r| r.tier == tier) {
            Some(i) => i,
            None => {
                out.push(RoutingRow {
                    tier,
                    calls: 0,
                    cost_nano: 0,
                    baseline_cost_nano: 0,
                });
                out.len() - 1
            }
        };
        if dim == ROUTE_TIER_DIMS.0 {
            out[i].calls = calls;
            out[i].cost_nano = cost;
        } else {
            out[i].baseline_cost_nano = cost;
        }
    }
    out.sort_by(|a, b| a.tier.cmp(&b.tier));
    out
}

/// The roll-up window of a routing-savings query: whole hours, like analytics.
pub(crate) fn routing_window(tenant: TenantId, from_ms: i64, to_ms: i64) -> RollupWindow {
    rollup_window(&AnalyticsQuery {
        tenant,
        from: from_ms.div_euclid(1000),
        to: to_ms.saturating_add(999).div_euclid(1000),
        granularity: Granularity::Total,
        group_by: Dimension::None,
        user: None,
        day_offset: 0,
    })
}

/// A reset link's state from its row.
pub(crate) fn reset_state_of(expires_at: i64, used_at: Option<i64>) -> &'static str {
    if used_at.is_some() {
        "used"
    } else if expires_at <= crate::tenancy::unix_now() {
        "expired"
    } else {
        "pending"
    }
}

/// The SQL expression of a bucket's start (unix seconds) of an analytics query, from `secs` (an
/// expression of an hour's start in unix seconds); `total` is the constant of the one bucket.
pub(crate) fn bucket_sql(q: &AnalyticsQuery, secs: &str, total: &str) -> String {
    match q.granularity {
        Granularity::Hour => secs.to_string(),
        Granularity::Day if q.day_offset == 0 => format!("(({secs}) / 86400) * 86400"),
        // A validated integer (the query's zone), never caller text.
        Granularity::Day => format!(
            "((({secs}) + ({off})) / 86400) * 86400 - ({off})",
            off = q.day_offset
        ),
        Granularity::Total => total.to_string(),
    }
}

pub(crate) fn rollup_window(q: &AnalyticsQuery) -> RollupWindow {
    let dim = match q.group_by {
        Dimension::None => 0,
        Dimension::User => 1,
        Dimension::Group => 2,
        Dimension::Key => 3,
        Dimension::Model => 4,
        Dimension::Channel => 5,
    };
    let from = q.from.div_euclid(3600) * 3600;
    let to = (q.to + 3599).div_euclid(3600) * 3600;
    // Daily rows are UTC days: a series of the viewer's days reads the hourly rows only.
    let (day_from, day_to) = if q.granularity == Granularity::Hour
        || (q.granularity == Granularity::Day && q.day_offset % 86_400 != 0)
    {
        (to, to)
    } else {
        let a = (from + 86_399).div_euclid(86_400) * 86_400;
        let b = to.div_euclid(86_400) * 86_400;
        if a < b {
            (a, b)
        } else {
            (to, to)
        }
    };
    RollupWindow {
        dim,
        from,
        to,
        day_from,
        day_to,
    }
}

/// Usage analytics and listings: roll-up reads, what routing saved, pages of usage records.
#[async_trait::async_trait]
pub trait Analytics: Send + Sync {
    /// Totals or a series, grouped by one dimension, from the roll-ups (never the raw records).
    async fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError>;
    /// Per routing tier: calls, cost, and what the strongest tier would have cost.
    async fn routing_savings(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RoutingRow>, StoreError>;
    /// One page of usage records, newest first, each with its position for the next page.
    async fn usage_page(&self, q: &UsageQuery) -> Result<Vec<(UsagePos, UsageEvent)>, StoreError>;
}

#[async_trait::async_trait]
impl Analytics for Store {
    async fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        let q = q.clone();
        blocking(self, move |s| s.analytics(&q)).await
    }
    async fn routing_savings(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RoutingRow>, StoreError> {
        blocking(self, move |s| s.routing_savings(tenant, from_ms, to_ms)).await
    }
    async fn usage_page(&self, q: &UsageQuery) -> Result<Vec<(UsagePos, UsageEvent)>, StoreError> {
        let q = q.clone();
        blocking(self, move |s| s.usage_page(&q)).await
    }
}
