//! Single sign-on for the console (issue 18): OpenID Connect's authorization code flow with
//! PKCE, per tenant.
//!
//! The protocol is the `openidconnect` crate's: discovery, the authorization request (state,
//! nonce, S256 code challenge), the code exchange, and every check of the ID token (signature
//! against the provider's JWKS, issuer, audience, expiry, nonce). What is ours is the policy
//! around it: which tenant, which email domains, which IdP groups make which role, whether a
//! user is created on first sign-in, and that a flow is used once. HTTP goes through
//! `crate::outbound` (Pingora's client; redirects are never followed).
//!
//! Provider metadata and keys are cached per issuer for `METADATA_TTL`; a token signed with a key
//! the cache does not know fetches the JWKS again (at most once per `JWKS_REFRESH_MIN`), so a
//! provider's key rotation needs no restart.

use dashmap::DashMap;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthType, AuthorizationCode, ClaimsVerificationError, Client, ClientId,
    ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, SignatureVerificationError, StandardErrorResponse, StandardTokenResponse,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// Provider metadata (and keys) are fetched again after this long.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A token signed with an unknown key fetches the JWKS again, at most this often per issuer
/// (tokens come from the provider's own token endpoint, so this only bounds a broken provider).
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(2);
/// A sign-in must come back from the identity provider within this many seconds.
pub const FLOW_SECS: i64 = 600;

/// A tenant's single sign-on settings, as stored (the client secret included) and as set through
/// the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The provider's issuer URL (discovery is read from `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// Write-only: never shown again (left out on an update: the stored one is kept).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Emails of these domains may sign in (empty: any the provider vouches for).
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// The claim that lists the user's groups (a dotted path reaches into objects, e.g.
    /// `realm_access.roles`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// IdP group -> tenant role (`tenant_admin`, `member`, `viewer`); a user in several mapped
    /// groups gets the strongest role.
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    /// The role of a user in no mapped group (`None`: such a user is refused).
    #[serde(default)]
    pub default_role: Option<String>,
    /// Create the user at their first sign-in (otherwise only invited users may sign in).
    #[serde(default = "yes")]
    pub jit_users: bool,
    /// Whether the tenant's users may still sign in with a password.
    #[serde(default = "yes")]
    pub password_sign_in: bool,
    /// Scopes asked for besides `openid email profile`.
    #[serde(default)]
    pub extra_scopes: Vec<String>,
    /// The redirect URI registered at the provider (default: the console's
    /// `/console/sso/callback` under `[admin] public_url` or the request's host).
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn yes() -> bool {
    true
}

impl Settings {
    /// Checks and normalises settings before they are stored.
    pub fn checked(mut self) -> Result<Settings, (&'static str, String)> {
        self.issuer = self.issuer.trim().trim_end_matches('/').to_string();
        check_url(&self.issuer).map_err(|e| ("issuer", e))?;
        if self.client_id.trim().is_empty() || self.client_id.len() > 256 {
            return Err(("client_id", "a client id of 1 to 256 characters".into()));
        }
        if let Some(u) = &self.redirect_uri {
            check_url(u).map_err(|e| ("redirect_uri", e))?;
        }
        for r in self.role_map.values().chain(self.default_role.iter()) {
            if crate::tenancy::Role::parse_tenant_role(r).is_none() {
                return Err((
                    "role_map",
                    format!("`{r}` is not a tenant role (tenant_admin, member, viewer)"),
                ));
            }
        }
        if self.groups_claim.trim().is_empty() {
            return Err(("groups_claim", "name the claim that lists groups".into()));
        }
        self.allowed_domains = self
            .allowed_domains
            .iter()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        Ok(self)
    }

    /// The role the provider's groups give, strongest first; `None`: no mapped group and no
    /// default role.
    pub fn role_for(&self, groups: &[String]) -> Option<crate::tenancy::Role> {
        use crate::tenancy::Role;
        let rank = |r: &Role| match r {
            Role::TenantAdmin => 3,
            Role::Member => 2,
            Role::Viewer => 1,
            Role::Operator => 0,
        };
        groups
            .iter()
            .filter_map(|g| self.role_map.get(g))
            .filter_map(|r| Role::parse_tenant_role(r))
            .max_by_key(rank)
            .or_else(|| {
                self.default_role
                    .as_deref()
                    .and_then(Role::parse_tenant_role)
            })
    }

    /// Whether `email` is of an allowed domain.
    pub fn domain_allowed(&self, email: &str) -> bool {
        let domain = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        self.allowed_domains.is_empty() || self.allowed_domains.contains(&domain)
    }
}

/// Provider URLs must be https, except on a loopback host (a provider on the same machine, and
/// tests).
fn check_url(u: &str) -> Result<(), String> {
    let Some((scheme, rest)) = u.split_once("://") else {
        return Err(format!("`{u}` is not a URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "::1");
    match scheme {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "`{u}` must be an https URL (http only on a loopback host)"
        )),
    }
}

/// Claims beyond the standard ones (the groups claim, whatever its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extra {
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl AdditionalClaims for Extra {}

type Fields = IdTokenFields<
    Extra,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type OidcClient = Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in failed: `Refused` is the user's or the provider's answer (401/403), `Provider`
/// a provider that could not be reached or answered nonsense (502).
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the identity provider: {0}")]
    Provider(String),
}

/// The HTTP error of the outbound client, as the crate wants it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

async fn http(req: openidconnect::HttpRequest) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let url = parts.uri.to_string();
    let mut headers: Vec<(&str, String)> = Vec::new();
    let mut content_type = "application/x-www-form-urlencoded";
    for (k, v) in &parts.headers {
        let v = v.to_str().map_err(|e| HttpError(e.to_string()))?;
        if k == http::header::CONTENT_TYPE {
            content_type = if v.starts_with("application/json") {
                "application/json"
            } else {
                "application/x-www-form-urlencoded"
            };
            continue;
        }
        headers.push((k.as_str(), v.to_string()));
    }
    let body =
        (parts.method != http::Method::GET).then(|| (content_type, bytes::Bytes::from(body)));
    let answer = crate::outbound::request(parts.method.as_str(), &url, &headers, body)
        .await
        .map_err(HttpError)?;
    let mut r = http::Response::new(answer.body.to_vec());
    *r.status_mut() =
        http::StatusCode::from_u16(answer.status).map_err(|e| HttpError(e.to_string()))?;
    *r.headers_mut() = answer.headers;
    Ok(r)
}

struct Cached {
    metadata: CoreProviderMetadata,
    fetched: Instant,
    jwks_fetched: Instant,
}

/// Provider metadata and keys, per issuer.
#[derive(Default)]
pub struct Providers {
    cache: DashMap<String, Arc<Cached>>,
}

/// A started sign-in: where to send the browser, and what to keep until it comes back.
pub struct Started {
    pub authorization_url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Who the provider says signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl Providers {
    /// The provider's metadata, fetched (discovery) when not cached or stale.
    async fn metadata(&self, issuer: &str) -> Result<Arc<Cached>, SsoError> {
        if let Some(c) = self.cache.get(issuer) {
            if c.fetched.elapsed() < METADATA_TTL {
                return Ok(c.clone());
            }
        }
        let url =
            IssuerUrl::new(issuer.to_string()).map_err(|e| SsoError::Provider(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(url, &http)
            .await
            .map_err(|e| {
                SsoError::Provider(format!("discovery at {issuer} failed: {}", chain(&e)))
            })?;
        let c = Arc::new(Cached {
            metadata,
            fetched: Instant::now(),
            jwks_fetched: Instant::now(),
        });
        self.cache.insert(issuer.to_string(), c.clone());
        Ok(c)
    }

    /// Fetches the provider's keys again (a token named a key the cache does not know).
    async fn refresh_keys(&self, issuer: &str, old: &Cached) -> Result<Arc<Cached>, SsoError> {
        if old.jwks_fetched.elapsed() < JWKS_REFRESH_MIN {
            return Err(SsoError::Refused(
                "The ID token is signed with a key the identity provider does not publish.".into(),
            ));
        }
        let jwks = CoreJsonWebKeySet::fetch_async(old.metadata.jwks_uri(), &http)
            .await
            .map_err(|e| SsoError::Provider(format!("fetching its keys failed: {}", chain(&e))))?;
        let c = Arc::new(Cached {
            metadata: old.metadata.clone().set_jwks(jwks),
            fetched: old.fetched,
            jwks_fetched: Instant::now(),
        });
        self.cache.insert(issuer.to_string(), c.clone());
        Ok(c)
    }

    /// Checks that the issuer answers discovery (settings are checked before they are stored).
    pub async fn check(&self, s: &Settings) -> Result<(), SsoError> {
        self.cache.remove(&s.issuer);
        self.metadata(&s.issuer).await.map(|_| ())
    }

    fn client(s: &Settings, c: &Cached, redirect_uri: &str) -> Result<OidcClient, SsoError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| SsoError::Provider(e.to_string()))?;
        Ok(OidcClient::from_provider_metadata(
            c.metadata.clone(),
            ClientId::new(s.client_id.clone()),
            s.client_secret.clone().map(ClientSecret::new),
        )
        .set_auth_type(auth_type(
            c.metadata.token_endpoint_auth_methods_supported(),
        ))
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the provider's authorization URL (code flow, S256 PKCE, state, nonce).
    pub async fn start(&self, s: &Settings, redirect_uri: &str) -> Result<Started, SsoError> {
        let c = self.metadata(&s.issuer).await?;
        let client = Providers::client(s, &c, redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge);
        for scope in &s.extra_scopes {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = req.url();
        Ok(Started {
            authorization_url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in: exchanges the code (with the PKCE verifier), verifies the ID token
    /// (signature, issuer, audience, expiry, nonce) and reads who signed in, asking the userinfo
    /// endpoint for what the ID token does not carry.
    pub async fn finish(
        &self,
        s: &Settings,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Identity, SsoError> {
        let mut c = self.metadata(&s.issuer).await?;
        let client = Providers::client(s, &c, redirect_uri)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| SsoError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&http)
            .await
            .map_err(|e| {
                SsoError::Refused(format!(
                    "The identity provider refused the sign-in code: {}",
                    chain(&e)
                ))
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| SsoError::Provider("its token answer has no ID token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        let claims = loop {
            let client = Providers::client(s, &c, redirect_uri)?;
            let verifier = client.id_token_verifier();
            let checked = id_token.clone().into_claims(&verifier, &nonce);
            match checked {
                Ok(claims) => break claims,
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) => c = self.refresh_keys(&s.issuer, &c).await?,
                Err(e) => {
                    return Err(SsoError::Refused(format!(
                        "The ID token was refused: {}",
                        chain(&e)
                    )))
                }
            }
        };
        let mut extra = claims.additional_claims().rest.clone();
        let mut email = claims.email().map(|e| e.as_str().to_string());
        let mut verified = claims.email_verified();
        let mut name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string());
        let subject = claims.subject().as_str().to_string();
        if email.is_none() || lookup(&extra, &s.groups_claim).is_none() {
            // Providers that follow the spec's default keep scope claims out of the ID token:
            // the userinfo endpoint has them (for the same subject, which the crate checks).
            let client = Providers::client(s, &c, redirect_uri)?;
            if let Ok(req) = client.user_info(
                tokens.access_token().clone(),
                Some(claims.subject().clone()),
            ) {
                let info: openidconnect::UserInfoClaims<Extra, CoreGenderClaim> = req
                    .request_async(&http)
                    .await
                    .map_err(|e| SsoError::Provider(format!("userinfo: {}", chain(&e))))?;
                email = email.or_else(|| info.email().map(|e| e.as_str().to_string()));
                verified = verified.or(info.email_verified());
                name = name.or_else(|| {
                    info.name()
                        .and_then(|n| n.get(None))
                        .map(|n| n.as_str().to_string())
                });
                for (k, v) in &info.additional_claims().rest {
                    extra.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        let Some(email) = email.map(|e| e.trim().to_ascii_lowercase()) else {
            return Err(SsoError::Refused(
                "The identity provider did not give an email address (ask for the `email` scope)."
                    .into(),
            ));
        };
        if verified == Some(false) {
            return Err(SsoError::Forbidden(format!(
                "The identity provider says {email} is not verified."
            )));
        }
        let groups = match lookup(&extra, &s.groups_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(g)) => g
                .split([',', ' '])
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            subject,
            name: name.unwrap_or_else(|| email.split('@').next().unwrap_or("").to_string()),
            email,
            groups,
        })
    }
}

/// How the client secret is sent to the token endpoint: in a Basic header (the spec's default),
/// unless the provider's discovery offers only the request body.
fn auth_type(offered: Option<&Vec<CoreClientAuthMethod>>) -> AuthType {
    match offered {
        Some(m)
            if m.contains(&CoreClientAuthMethod::ClientSecretPost)
                && !m.contains(&CoreClientAuthMethod::ClientSecretBasic) =>
        {
            AuthType::RequestBody
        }
        _ => AuthType::BasicAuth,
    }
}

/// A claim by dotted path (`realm_access.roles`).
fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// A tenant's SSO settings as the admin API shows them: never the client secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsOut {
    /// Whether single sign-on is configured.
    pub enabled: bool,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    /// Whether a client secret is stored (it is never shown).
    pub client_secret_set: bool,
    pub allowed_domains: Vec<String>,
    pub groups_claim: String,
    pub role_map: BTreeMap<String, String>,
    pub default_role: Option<String>,
    pub jit_users: bool,
    pub password_sign_in: bool,
    pub extra_scopes: Vec<String>,
    /// The redirect URI to register at the provider.
    pub redirect_uri: String,
    /// Where a user of the tenant starts signing in.
    pub sign_in_url: String,
}

impl SettingsOut {
    pub fn of(s: Option<&Settings>, redirect_uri: String, sign_in_url: String) -> SettingsOut {
        match s {
            Some(s) => SettingsOut {
                enabled: true,
                issuer: Some(s.issuer.clone()),
                client_id: Some(s.client_id.clone()),
                client_secret_set: s.client_secret.is_some(),
                allowed_domains: s.allowed_domains.clone(),
                groups_claim: s.groups_claim.clone(),
                role_map: s.role_map.clone(),
                default_role: s.default_role.clone(),
                jit_users: s.jit_users,
                password_sign_in: s.password_sign_in,
                extra_scopes: s.extra_scopes.clone(),
                redirect_uri: s.redirect_uri.clone().unwrap_or(redirect_uri),
                sign_in_url,
            },
            None => SettingsOut {
                enabled: false,
                issuer: None,
                client_id: None,
                client_secret_set: false,
                allowed_domains: Vec::new(),
                groups_claim: default_groups_claim(),
                role_map: BTreeMap::new(),
                default_role: None,
                jit_users: true,
                password_sign_in: true,
                extra_scopes: Vec::new(),
                redirect_uri,
                sign_in_url,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        serde_json::from_value(serde_json::json!({
            "issuer": "https://idp.example/",
            "client_id": "tollgate",
            "allowed_domains": ["@Acme.example"],
            "role_map": {"llm-admins": "tenant_admin", "llm-users": "member", "finance": "viewer"}
        }))
        .unwrap()
    }

    #[test]
    fn settings_are_normalised_and_checked() {
        let s = settings().checked().unwrap();
        assert_eq!(s.issuer, "https://idp.example");
        assert_eq!(s.allowed_domains, vec!["acme.example"]);
        assert!(s.jit_users && s.password_sign_in);
        assert_eq!(s.groups_claim, "groups");
        let mut bad = settings();
        bad.issuer = "http://idp.example".into();
        assert_eq!(bad.checked().err().map(|e| e.0), Some("issuer"));
        let mut local = settings();
        local.issuer = "http://127.0.0.1:4000".into();
        assert!(local.checked().is_ok());
        let mut bad = settings();
        bad.role_map.insert("x".into(), "operator".into());
        assert_eq!(bad.checked().err().map(|e| e.0), Some("role_map"));
    }

    #[test]
    fn the_strongest_mapped_role_wins() {
        use crate::tenancy::Role;
        let s = settings();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            s.role_for(&g(&["finance", "llm-admins"])),
            Some(Role::TenantAdmin)
        );
        assert_eq!(
            s.role_for(&g(&["llm-users", "finance"])),
            Some(Role::Member)
        );
        assert_eq!(s.role_for(&g(&["everyone"])), None);
        let mut d = settings();
        d.default_role = Some("viewer".into());
        assert_eq!(d.role_for(&g(&["everyone"])), Some(Role::Viewer));
        let s = settings().checked().unwrap();
        assert!(s.domain_allowed("bob@ACME.example"));
        assert!(!s.domain_allowed("bob@acme.example.evil"));
        assert!(!s.domain_allowed("bob@sub.acme.example"));
    }

    #[test]
    fn the_secret_goes_in_the_body_only_when_that_is_all_the_provider_offers() {
        use CoreClientAuthMethod::{ClientSecretBasic, ClientSecretPost, PrivateKeyJwt};
        let is_body = |m: Option<Vec<CoreClientAuthMethod>>| {
            matches!(auth_type(m.as_ref()), AuthType::RequestBody)
        };
        assert!(!is_body(None), "not advertised: Basic, the default");
        assert!(!is_body(Some(vec![ClientSecretBasic, ClientSecretPost])));
        assert!(is_body(Some(vec![ClientSecretPost, PrivateKeyJwt])));
        assert!(!is_body(Some(vec![PrivateKeyJwt])));
    }

    #[test]
    fn groups_are_found_by_dotted_path() {
        let m: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "realm_access": {"roles": ["a", "b"]}, "groups": ["c"]
        }))
        .unwrap_or_default();
        assert_eq!(
            lookup(&m, "realm_access.roles"),
            Some(&serde_json::json!(["a", "b"]))
        );
        assert_eq!(lookup(&m, "groups"), Some(&serde_json::json!(["c"])));
        assert_eq!(lookup(&m, "nope.x"), None);
    }
}
