//! Single sign-on over the admin API: a tenant's OpenID Connect settings (tenant admin), and the
//! two unauthenticated steps of a sign-in (`start` answers the provider's URL; `callback` takes
//! the code the provider sent back and opens a console session). The protocol is `crate::sso`.
//!
//! A sign-in in flight is kept in the store (hashed state, nonce, PKCE verifier), so the browser
//! may come back to any node of a fleet, and a state works once. A user is matched by email in
//! the tenant and linked to the provider's subject at the first sign-in (the same email from
//! another subject is refused afterwards); their role follows the provider's groups at every
//! sign-in; a disabled user stays out whatever the provider says.

use super::auth::{ClientIp, Principal, Scope};
use super::sessions::SessionOut;
use super::wire::{bad_param, time, ApiResult, ErrorBody, JsonBody, PathParams, UserOut};
use super::Admin;
use crate::error::GatewayError;
use crate::sso::{Settings, SettingsOut, SsoError};
use crate::store::sqlite::SsoFlow;
use crate::tenancy::{Role, Tenant, TenantId};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// The console page that takes the provider's answer.
const CALLBACK_PATH: &str = "/console/sso/callback";

fn redirect_uri(admin: &Admin, headers: &HeaderMap, s: Option<&Settings>) -> String {
    s.and_then(|s| s.redirect_uri.clone()).unwrap_or_else(|| {
        format!(
            "{}{CALLBACK_PATH}",
            super::members::console_base(admin, headers)
        )
    })
}

fn sign_in_url(admin: &Admin, headers: &HeaderMap, tenant: &Tenant) -> String {
    let name: String = form_urlencoded::byte_serialize(tenant.name.as_bytes()).collect();
    format!(
        "{}/console/sso/start?tenant={name}",
        super::members::console_base(admin, headers)
    )
}

/// A tenant's stored settings (`None`: single sign-on is off).
pub async fn settings_of(
    admin: &Admin,
    tenant: TenantId,
) -> Result<Option<Settings>, GatewayError> {
    let text = admin.blocking(move |a| a.store.sso(tenant)).await?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// A tenant's single sign-on settings (tenant admin, viewer): never the client secret; with the
/// redirect URI to register at the provider and the tenant's sign-in link.
#[utoipa::path(get, path = "/admin/tenants/{t}/sso", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = SettingsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_sso(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    headers: HeaderMap,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<SettingsOut>> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin, Role::Viewer])?;
    let s = settings_of(&admin, tenant.id).await?;
    Ok(Json(SettingsOut::of(
        s.as_ref(),
        redirect_uri(&admin, &headers, s.as_ref()),
        sign_in_url(&admin, &headers, &tenant),
    )))
}

/// Set a tenant's single sign-on (tenant admin): the provider's issuer (its discovery document
/// must answer), client id and secret (left out: the stored one is kept for the same issuer and
/// client), allowed email domains, the groups claim and group-to-role map, the role of users in
/// no mapped group (none: refused), whether users are created at their first sign-in, and
/// whether passwords still work. The operator token always signs in, whatever is set here.
#[utoipa::path(put, path = "/admin/tenants/{t}/sso", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = Settings,
    responses((status = 200, body = SettingsOut), (status = 400, body = ErrorBody, description = "Invalid settings, or the issuer's discovery failed"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_sso(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    headers: HeaderMap,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<Settings>,
) -> ApiResult<Json<SettingsOut>> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin])?;
    let mut s = req.checked().map_err(|(p, m)| bad_param(p, m))?;
    if s.client_secret.is_none() {
        if let Some(old) = settings_of(&admin, tenant.id).await? {
            if old.issuer == s.issuer && old.client_id == s.client_id {
                s.client_secret = old.client_secret;
            }
        }
    }
    let issuer = s.issuer.clone();
    admin.sso.check(&s).await.map_err(|e| {
        bad_param(
            "issuer",
            format!(
                "The identity provider at {issuer} could not be reached or did not describe itself: check the issuer URL (its /.well-known/openid-configuration must answer). Detail: {e}"
            ),
        )
    })?;
    let text = serde_json::to_string(&s).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let id = tenant.id;
    admin
        .blocking(move |a| a.store.set_sso(id, Some(&text)))
        .await?;
    Ok(Json(SettingsOut::of(
        Some(&s),
        redirect_uri(&admin, &headers, Some(&s)),
        sign_in_url(&admin, &headers, &tenant),
    )))
}

/// Turn a tenant's single sign-on off (tenant admin): passwords work again.
#[utoipa::path(delete, path = "/admin/tenants/{t}/sso", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 204, description = "Off"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_sso(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<StatusCode> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    admin
        .blocking(move |a| a.store.set_sso(tenant, None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSso {
    /// Tenant id or name.
    pub tenant: String,
    /// The console page to open after signing in.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SsoStarted {
    /// Send the browser here.
    pub authorization_url: String,
    /// The flow's state: the caller binds it to the browser (the console keeps it in a cookie)
    /// and checks it when the provider sends the browser back.
    pub state: String,
    pub expires_at: String,
}

/// Start a single sign-on (no credentials): the identity provider's authorization URL for the
/// tenant (code flow with PKCE S256, state and nonce). The sign-in must come back within 10 min.
#[utoipa::path(post, path = "/admin/sso/start", tag = "members", request_body = StartSso,
    responses((status = 201, body = SsoStarted), (status = 400, body = ErrorBody, description = "Single sign-on is off for the tenant, or no such tenant"), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody, description = "The identity provider did not answer")))]
pub async fn start(
    State(admin): State<Arc<Admin>>,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<StartSso>,
) -> ApiResult<(StatusCode, Json<SsoStarted>)> {
    let ip = ip.and_then(|Extension(c)| c.0);
    let now = crate::tenancy::unix_now();
    admin
        .auth_throttle
        .admit(ip, now.max(0) as u64 * 1000, &[Scope::SignIns], "sign-ins")?;
    // An unknown tenant answers like one without single sign-on (no tenant enumeration).
    let not_set_up = || {
        let name: String = req.tenant.chars().take(64).collect();
        bad_param(
            "tenant",
            format!("Single sign-on is not set up for `{name}`."),
        )
    };
    let Ok(tenant) = admin.tenant(&req.tenant).await else {
        return Err(not_set_up().into());
    };
    let Some(s) = settings_of(&admin, tenant.id).await? else {
        return Err(not_set_up().into());
    };
    let redirect_uri = redirect_uri(&admin, &headers, Some(&s));
    let started = admin
        .sso
        .start(&s, &redirect_uri)
        .await
        .map_err(sso_error)?;
    let flow = SsoFlow {
        tenant: tenant.id,
        nonce: started.nonce,
        pkce_verifier: started.pkce_verifier,
        redirect_uri,
        next: req
            .next
            .filter(|n| n.starts_with("/console/") && n.len() < 500)
            .unwrap_or_else(|| format!("/console/t/{}", tenant.id.0)),
        expires_at: now + crate::sso::FLOW_SECS,
    };
    let state = started.state.clone();
    admin
        .blocking(move |a| a.store.create_sso_flow(&state, &flow))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SsoStarted {
            authorization_url: started.authorization_url,
            state: started.state,
            expires_at: time(now + crate::sso::FLOW_SECS),
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoCallback {
    /// `state` as the provider sent it back.
    pub state: String,
    /// `code` as the provider sent it back (absent when it sent an error).
    #[serde(default)]
    pub code: Option<String>,
    /// The provider's `error` and `error_description`, when it refused.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
    /// The provider's `iss` parameter (RFC 9207), checked when present.
    #[serde(default)]
    pub iss: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SsoSession {
    #[serde(flatten)]
    pub session: SessionOut,
    /// The console page the sign-in was started for.
    pub next: String,
}

fn sso_error(e: SsoError) -> GatewayError {
    match e {
        SsoError::Refused(m) => GatewayError::InvalidKey(m),
        SsoError::Forbidden(m) => GatewayError::Forbidden(m),
        SsoError::Provider(m) => {
            GatewayError::UpstreamFailed(format!("The identity provider: {m}"))
        }
    }
}

/// Finish a single sign-on (no credentials): the provider's code is exchanged and its ID token
/// verified (signature, issuer, audience, expiry, nonce), the email domain and group mapping
/// checked, the user found (or created when `jit_users`), linked to the provider's subject,
/// given the mapped role, and a console session opened. A state works once: a replayed or
/// expired one answers 400. Refusals answer 401 (the provider's tokens) or 403 (policy).
#[utoipa::path(post, path = "/admin/sso/callback", tag = "members", request_body = SsoCallback,
    responses((status = 201, body = SsoSession), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn callback(
    State(admin): State<Arc<Admin>>,
    ip: Option<Extension<ClientIp>>,
    JsonBody(req): JsonBody<SsoCallback>,
) -> ApiResult<(StatusCode, Json<SsoSession>)> {
    let ip = ip.and_then(|Extension(c)| c.0);
    let now_ms = crate::tenancy::unix_now().max(0) as u64 * 1000;
    admin
        .auth_throttle
        .admit(ip, now_ms, &[Scope::SignIns], "sign-ins")?;
    let result = finish(&admin, req).await;
    if let Err(GatewayError::InvalidKey(_) | GatewayError::Forbidden(_)) = &result {
        admin
            .auth_throttle
            .refused(ip, now_ms, &[Scope::SignIns], "single sign-on");
    }
    Ok((StatusCode::CREATED, Json(result?)))
}

async fn finish(admin: &Arc<Admin>, req: SsoCallback) -> Result<SsoSession, GatewayError> {
    let state = req.state;
    let flow = admin
        .blocking(move |a| a.store.take_sso_flow(&state))
        .await?
        .ok_or_else(|| {
            bad_param(
                "state",
                "This sign-in was already used, has expired or was not started here: start again.",
            )
        })?;
    if let Some(error) = req.error {
        let detail = req.error_description.unwrap_or_default();
        return Err(GatewayError::InvalidKey(format!(
            "The identity provider refused the sign-in: {error} {detail}"
        )));
    }
    let Some(code) = req.code else {
        return Err(bad_param("code", "The provider's answer has no code."));
    };
    let tenant = flow.tenant;
    let Some(s) = settings_of(admin, tenant).await? else {
        return Err(GatewayError::Forbidden(
            "Single sign-on was turned off for this tenant.".into(),
        ));
    };
    if let Some(iss) = req.iss.filter(|i| i.trim_end_matches('/') != s.issuer) {
        return Err(GatewayError::InvalidKey(format!(
            "The answer came from another issuer ({iss})."
        )));
    }
    let who = admin
        .sso
        .finish(
            &s,
            &flow.redirect_uri,
            &code,
            &flow.pkce_verifier,
            &flow.nonce,
        )
        .await
        .map_err(sso_error)?;
    if !s.domain_allowed(&who.email) {
        return Err(GatewayError::Forbidden(format!(
            "{} is not of a domain allowed to sign in to this tenant.",
            who.email
        )));
    }
    let Some(role) = s.role_for(&who.groups) else {
        return Err(GatewayError::Forbidden(format!(
            "None of your groups at the identity provider ({}) has a role in this tenant; ask its admin.",
            if who.groups.is_empty() { "none".to_string() } else { who.groups.join(", ") }
        )));
    };
    let (email, jit) = (who.email.clone(), s.jit_users);
    let user = admin
        .blocking(move |a| {
            let account = a.store.login_account(&tenant.0.to_string(), &email)?;
            let user = match account {
                Some(acct) => acct.principal.user,
                None if jit => a
                    .store
                    .create_user(tenant, &who.email, &who.name, role, None, None)?,
                None => {
                    return Ok(Err(format!(
                        "{email} has no account in this tenant; ask its admin for an invitation."
                    )))
                }
            };
            if user.disabled_at.is_some() {
                return Ok(Err("This account is disabled.".to_string()));
            }
            if !a.store.link_sso_subject(user.id, &who.subject)? {
                return Ok(Err(format!(
                    "{email} is linked to another identity at the provider."
                )));
            }
            let user = if user.role != role {
                a.store.update_user(user.id, Some(role), None, None, None)?
            } else {
                user
            };
            a.store.login_succeeded(user.id)?;
            Ok(Ok(user))
        })
        .await?
        .map_err(GatewayError::Forbidden)?;
    let ttl = admin.app.config().admin.session_hours as i64 * 3600;
    let uid = user.id;
    let session = admin
        .blocking(move |a| a.store.create_session(Some(uid), ttl))
        .await?;
    let names = admin.names(&[user.tenant_id]).await?;
    let spend = admin.spend(user.tenant_id, crate::billing::entry::Account::User(uid));
    let tenant_name = names.tenants.get(&tenant.0).cloned();
    Ok(SsoSession {
        session: SessionOut {
            token: session.token,
            csrf: session.csrf,
            expires_at: time(session.expires_at),
            role: user.role.as_str().into(),
            tenant_id: Some(tenant.0),
            tenant_name,
            user: Some(UserOut::from(&user, &names, spend)),
        },
        next: flow.next,
    })
}

/// Whether the tenant (id or name) still takes passwords (`sessions::sign_in` asks).
pub async fn passwords_allowed(admin: &Admin, tenant: &str) -> Result<bool, GatewayError> {
    let t = tenant.to_string();
    let text = admin
        .blocking(move |a| match a.store.find_tenant(&t) {
            Ok(t) => a.store.sso(t.id),
            Err(_) => Ok(None),
        })
        .await?;
    Ok(text
        .and_then(|t| serde_json::from_str::<Settings>(&t).ok())
        .is_none_or(|s| s.password_sign_in))
}
