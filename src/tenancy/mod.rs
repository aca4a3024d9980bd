//! Tenants and API keys: the SQL store (`store`) and the in-memory key snapshot the data plane
//! authenticates against without I/O (`keys`).

pub mod keys;
pub mod store;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct TenantId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct KeyId(pub i64);

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
