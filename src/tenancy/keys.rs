//! API key material and the lookup snapshot.
//!
//! Keys are `tg-` + 40 random base62 characters. Only their SHA-256 is stored; the data plane
//! hashes the presented key and looks it up in an immutable map swapped in by a background
//! refresher, so authentication costs one hash and one map probe, with no I/O or lock.

use super::ApiKey;
use arc_swap::ArcSwap;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub type KeyHash = [u8; 32];

pub fn hash_key(key: &str) -> KeyHash {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.finalize().into()
}

pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(43);
    s.push_str("tg-");
    for _ in 0..40 {
        let i = rng.random_range(0..ALPHABET.len());
        s.push(ALPHABET[i] as char);
    }
    s
}

pub fn display_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

#[derive(Debug, Default)]
pub struct KeySnapshot {
    pub by_hash: crate::FastMap<KeyHash, Arc<ApiKey>>,
    /// The store's key generation this snapshot reflects.
    pub generation: i64,
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Unknown,
    Revoked,
    Expired,
}

/// The current snapshot; readers never block writers.
#[derive(Debug, Default)]
pub struct KeyRing {
    current: ArcSwap<KeySnapshot>,
}

impl KeyRing {
    pub fn replace(&self, snap: KeySnapshot) {
        self.current.store(Arc::new(snap));
    }

    pub fn generation(&self) -> i64 {
        self.current.load().generation
    }

    /// The key with this id, by a scan of the snapshot: for the rare paths that have an id and
    /// not the key (an upgrade's hand-over), never for a request's authentication.
    pub fn by_id(&self, id: crate::tenancy::KeyId) -> Option<Arc<ApiKey>> {
        self.current
            .load()
            .by_hash
            .values()
            .find(|k| k.id == id)
            .cloned()
    }

    pub fn authenticate(&self, presented: &str, now: i64) -> Result<Arc<ApiKey>, AuthFailure> {
        let h = hash_key(presented);
        let snap = self.current.load();
        let key = snap.by_hash.get(&h).ok_or(AuthFailure::Unknown)?;
        if key.revoked_at.is_some() || key.user_disabled {
            return Err(AuthFailure::Revoked);
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthFailure::Expired);
        }
        Ok(key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::{KeyId, TenantId};

    #[test]
    fn generated_keys_are_unique_and_well_formed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.starts_with("tg-"));
        assert_eq!(display_prefix(&a).len(), 10);
    }

    #[test]
    fn authenticate_checks_revocation_and_expiry() {
        let ring = KeyRing::default();
        let mk = |revoked: Option<i64>, expires: Option<i64>| {
            Arc::new(ApiKey {
                id: KeyId(1),
                tenant_id: TenantId(1),
                tenant_name: "t".into(),
                name: "k".into(),
                prefix: "tg-".into(),
                default_channel: "c".into(),
                allowed_channels: vec![],
                allowed_models: vec![],
                created_at: 0,
                expires_at: expires,
                revoked_at: revoked,
                quota_nano: None,
                user_id: None,
                user_quota_nano: None,
                group_id: None,
                group_budget_nano: None,
                user_disabled: false,
                quota_period: Default::default(),
                router_override: None,
                key_limits: Default::default(),
                user_limits: Default::default(),
                tenant_limits: Default::default(),
                network: None,
                guardrails: None,
            })
        };
        let mut snap = KeySnapshot::default();
        snap.by_hash.insert(hash_key("good"), mk(None, None));
        snap.by_hash.insert(hash_key("revoked"), mk(Some(1), None));
        snap.by_hash.insert(hash_key("expired"), mk(None, Some(10)));
        ring.replace(snap);
        assert!(ring.authenticate("good", 100).is_ok());
        assert_eq!(
            ring.authenticate("nope", 100).unwrap_err(),
            AuthFailure::Unknown
        );
        assert_eq!(
            ring.authenticate("revoked", 100).unwrap_err(),
            AuthFailure::Revoked
        );
        assert_eq!(
            ring.authenticate("expired", 100).unwrap_err(),
            AuthFailure::Expired
        );
        assert!(ring.authenticate("expired", 5).is_ok());
    }
}
