//! Who is calling the admin API: the operator (the configured token) or a tenant user (a user
//! token), and what each may do. Every handler takes a [`Principal`] and checks role and tenant;
//! another tenant's resources answer 404 exactly like missing ones.

use super::wire::{forbidden, not_found, ApiError};
use super::Admin;
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::store::sqlite::UserPrincipal;
use crate::tenancy::{Role, TenantId};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::Arc;

/// The client's address, put in each request's extensions by the host.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

/// Failed credentials of one kind from one address within this window...
const AUTH_WINDOW_MS: u64 = 60_000;
/// Addresses and kinds remembered at most (the oldest windows are dropped first when full).
const AUTH_MAX_ENTRIES: usize = 10_000;

/// What a failed credential was, so that one kind of failure never locks out another: wrong
/// passwords for one account do not stop its colleagues behind the same NAT from signing in,
/// nor the operator's token from working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Admin API bearer tokens that were not valid (the operator token guessed).
    Tokens,
    /// Sign-ins of any account from the address (password spraying across accounts).
    SignIns,
    /// Sign-ins of one account (tenant and email, hashed) from the address.
    Account(u64),
}

impl Scope {
    /// The scope of one account's sign-ins.
    pub fn account(tenant: &str, email: &str) -> Scope {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.trim().to_lowercase().hash(&mut h);
        email.trim().to_lowercase().hash(&mut h);
        Scope::Account(h.finish())
    }

    /// Failures allowed within the window before the scope is refused (429).
    fn limit(self) -> u32 {
        match self {
            Scope::Tokens | Scope::Account(_) => 10,
            Scope::SignIns => 50,
        }
    }
}

/// Failed credentials per source address and [`Scope`]: a token or password cannot be guessed
/// at speed (without it, 300 tries took 0.1 s).
#[derive(Default)]
pub struct AuthThrottle {
    failures: std::sync::Mutex<crate::FastMap<(std::net::IpAddr, Scope), (u64, u32)>>,
}

impl AuthThrottle {
    /// `Err(seconds to wait)` while `ip` is refused in `scope`.
    pub fn check(&self, ip: std::net::IpAddr, scope: Scope, now_ms: u64) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&(ip, scope)) {
            Some(&(start, n)) if n >= scope.limit() && now_ms < start + AUTH_WINDOW_MS => {
                Err((start + AUTH_WINDOW_MS - now_ms).div_ceil(1000))
            }
            _ => Ok(()),
        }
    }

    /// The 429 to answer an address refused in any of `scopes` (`what`: "admin tokens",
    /// "sign-ins"), counted; `Ok` otherwise (or for an unknown address).
    pub fn admit(
        &self,
        ip: Option<std::net::IpAddr>,
        now_ms: u64,
        scopes: &[Scope],
        what: &str,
    ) -> Result<(), GatewayError> {
        let Some(ip) = ip else { return Ok(()) };
        let refused = scopes
            .iter()
            .filter_map(|s| self.check(ip, *s, now_ms).err().map(|w| (w, *s)))
            .max_by_key(|(w, _)| *w);
        match refused {
            None => Ok(()),
            Some((wait, scope)) => {
                METRICS
                    .admin_auth_failures
                    .with_label_values(&["throttled"])
                    .inc();
                let message = match scope {
                    Scope::Account(_) => format!(
                        "Too many failed sign-ins for this account from this address. Retry in {wait} s."
                    ),
                    _ => format!("Too many failed {what} from this address. Retry in {wait} s."),
                };
                Err(GatewayError::RateLimited {
                    message,
                    retry_after: wait,
                })
            }
        }
    }

    /// Counts a refused credential of an address in `scopes`, and logs it.
    pub fn refused(&self, ip: Option<std::net::IpAddr>, now_ms: u64, scopes: &[Scope], what: &str) {
        if let Some(ip) = ip {
            let n = scopes
                .iter()
                .map(|s| self.failed(ip, *s, now_ms))
                .max()
                .unwrap_or(0);
            METRICS
                .admin_auth_failures
                .with_label_values(&["invalid"])
                .inc();
            tracing::warn!(client = %ip, failures = n, "invalid {what}");
        }
    }

    pub fn failed(&self, ip: std::net::IpAddr, scope: Scope, now_ms: u64) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ip, scope);
        if map.len() >= AUTH_MAX_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, (start, _)| now_ms < *start + AUTH_WINDOW_MS);
            if map.len() >= AUTH_MAX_ENTRIES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(key).or_insert((now_ms, 0));
        if now_ms >= e.0 + AUTH_WINDOW_MS {
            *e = (now_ms, 0);
        }
        e.1 += 1;
        e.1
    }
}

/// Who is calling.
pub enum Principal {
    Operator,
    User(UserPrincipal),
}

impl Principal {
    pub fn require_operator(&self) -> Result<(), GatewayError> {
        match self {
            Principal::Operator => Ok(()),
            Principal::User(_) => Err(forbidden("Only platform operators may do this.")),
        }
    }

    /// The caller's role for `tenant`: Operator everywhere; a user only in their own tenant
    /// (any other tenant is "not found").
    pub fn role_in(&self, tenant: TenantId) -> Result<Role, GatewayError> {
        match self {
            Principal::Operator => Ok(Role::Operator),
            Principal::User(u) if u.user.tenant_id == tenant => Ok(u.user.role),
            Principal::User(_) => Err(not_found("tenant")),
        }
    }

    /// Operator, or a user of `tenant` holding one of `roles`.
    pub fn require(&self, tenant: TenantId, roles: &[Role]) -> Result<Role, GatewayError> {
        let role = self.role_in(tenant)?;
        if role == Role::Operator || roles.contains(&role) {
            Ok(role)
        } else {
            Err(forbidden(&format!(
                "The {} role may not do this.",
                role.as_str()
            )))
        }
    }

    pub fn actor(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::User(u) => format!("user:{}", u.user.id.0),
        }
    }

    /// The calling user, if not the operator.
    pub fn user(&self) -> Option<&UserPrincipal> {
        match self {
            Principal::Operator => None,
            Principal::User(u) => Some(u),
        }
    }
}

impl FromRequestParts<Arc<Admin>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, admin: &Arc<Admin>) -> Result<Self, ApiError> {
        let ip = parts.extensions.get::<ClientIp>().and_then(|c| c.0);
        let now_ms = crate::tenancy::unix_now().max(0) as u64 * 1000;
        let refused_here = ip.is_some_and(|ip| {
            admin
                .auth_throttle
                .check(ip, Scope::Tokens, now_ms)
                .is_err()
        });
        if refused_here {
            // Sessions and user tokens are random (never guessed): a valid one still works
            // while the address is refused; the operator token (chosen by a person) is not
            // even compared.
            let random = bearer(&parts.headers)
                .is_some_and(|t| t.starts_with("tgs-") || t.starts_with("tgu-"));
            if random {
                if let Ok(p) = check_token(admin, parts, false).await {
                    return Ok(p);
                }
            }
        }
        admin
            .auth_throttle
            .admit(ip, now_ms, &[Scope::Tokens], "admin tokens")?;
        let result = check_token(admin, parts, true).await;
        if let Err(GatewayError::InvalidKey(_)) = &result {
            admin
                .auth_throttle
                .refused(ip, now_ms, &[Scope::Tokens], "admin token");
        }
        result.map_err(ApiError)
    }
}

/// Constant-time equality of two secrets (of their digests, so lengths leak nothing either).
pub fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub(super) async fn check_token(
    admin: &Arc<Admin>,
    parts: &mut Parts,
    operator: bool,
) -> Result<Principal, GatewayError> {
    let presented = bearer(&parts.headers)
        .ok_or_else(|| {
            GatewayError::MissingKey(
                "The admin API needs `Authorization: Bearer <token>`: the operator token or a user token.".into(),
            )
        })?;
    if let Some(expected) = admin.app.admin_token.as_deref().filter(|_| operator) {
        if same_secret(&presented, expected) {
            return Ok(Principal::Operator);
        }
    }
    if presented.starts_with("tgs-") {
        // A console session (admin/sessions.rs): the operator's ends with the operator token.
        let session = admin
            .blocking(move |a| a.store.session(&presented))
            .await?
            .ok_or_else(|| {
                GatewayError::InvalidKey("The session has ended; sign in again.".into())
            })?;
        parts
            .extensions
            .insert(super::sessions::SessionCsrf(session.csrf));
        return match session.user {
            Some(u) => Ok(Principal::User(u)),
            None if admin.app.admin_token.is_some() => Ok(Principal::Operator),
            None => Err(GatewayError::InvalidKey(
                "The session has ended; sign in again.".into(),
            )),
        };
    }
    match admin
        .blocking(move |a| a.store.user_by_token(&presented))
        .await?
    {
        Some(u) => Ok(Principal::User(u)),
        None => Err(GatewayError::InvalidKey("Invalid admin token.".into())),
    }
}
