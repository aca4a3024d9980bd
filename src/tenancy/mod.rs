//! Tenants and API keys: the SQL store (`store`) and the in-memory key snapshot the data plane
//! authenticates against without I/O (`keys`).

pub mod keys;
pub mod limits;
pub mod store;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct TenantId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct KeyId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A department or project: a group of users with an optional budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct GroupId(pub i64);

/// What a person may do through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the platform: every tenant, money in, configuration.
    Operator,
    /// Manages one tenant: members, groups, keys, quotas; reads its spend.
    TenantAdmin,
    /// Uses the gateway: manages their own keys, reads their own usage.
    Member,
    /// Read-only finance: balances, statements and analytics of one tenant.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::TenantAdmin => "tenant_admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Roles a tenant's users can hold (the operator is not a tenant user).
    pub fn parse_tenant_role(s: &str) -> Option<Role> {
        match s {
            "tenant_admin" => Some(Role::TenantAdmin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub group_id: Option<GroupId>,
    pub quota_nano: Option<i64>,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub id: GroupId,
    pub tenant_id: TenantId,
    pub name: String,
    pub budget_nano: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: i64,
}

/// An API key as the gateway sees it: who it belongs to and what it may use. Never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub name: String,
    /// First characters of the key, for display.
    pub prefix: String,
    pub default_channel: String,
    /// Channels the key may select with the `x-tollgate-channel` header (the default is implied).
    pub allowed_channels: Vec<String>,
    /// Canonical model names the key may use; empty means every model its channels serve.
    pub allowed_models: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Lifetime spending cap in nano-credits (None: only the tenant's balance limits it).
    pub quota_nano: Option<i64>,
    /// The member the key belongs to (keys made by operators for a tenant may have none).
    pub user_id: Option<UserId>,
    pub user_quota_nano: Option<i64>,
    pub group_id: Option<GroupId>,
    pub group_budget_nano: Option<i64>,
    pub user_disabled: bool,
    pub key_limits: limits::Limits,
    pub user_limits: limits::Limits,
    pub tenant_limits: limits::Limits,
}

impl ApiKey {
    /// The rate-limited subjects a call with this key counts against.
    pub fn rate_subjects(&self) -> Vec<(limits::Scope, i64, limits::Limits)> {
        let mut v = Vec::with_capacity(3);
        if !self.key_limits.is_unlimited() {
            v.push((limits::Scope::Key, self.id.0, self.key_limits));
        }
        if let (Some(u), false) = (self.user_id, self.user_limits.is_unlimited()) {
            v.push((limits::Scope::User, u.0, self.user_limits));
        }
        if !self.tenant_limits.is_unlimited() {
            v.push((limits::Scope::Tenant, self.tenant_id.0, self.tenant_limits));
        }
        v
    }
}

impl ApiKey {
    pub fn may_use_channel(&self, channel: &str) -> bool {
        self.default_channel == channel || self.allowed_channels.iter().any(|c| c == channel)
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
