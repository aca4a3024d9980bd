//! Console sign-in: sessions for tenant users (tenant, email and password) and for the
//! operator (the operator token), passwords set from an invitation, and sign-out.
//!
//! A session token (`tgs-…`) is a bearer credential of the admin API like a user token, but
//! expires (`admin.session_hours`), carries a CSRF token for the console's forms, and ends at
//! sign-out or when the user is disabled. Passwords are argon2id PHC strings (OWASP's
//! parameters: 19 MiB, 2 passes); wrong passwords count per account, and the
//! `LOCK_AFTER`-th in a row locks it for `LOCK_SECS`, besides the per-address throttle every
//! admin credential has.

use super::auth::{same_secret, ClientIp, Principal, Scope};
use super::wire::{time, ApiResult, ErrorBody, JsonBody, UserOut};
use super::Admin;
use crate::error::GatewayError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Wrong passwords in a row that lock an account...
pub const LOCK_AFTER: i64 = 5;
/// ...for this long.
pub const LOCK_SECS: i64 = 15 * 60;
/// Shortest and longest password accepted.
pub const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 256;

/// The CSRF token of the session a request was authenticated with (request extension).
#[derive(Debug, Clone)]
pub struct SessionCsrf(pub String);

/// An argon2id hash (PHC string) of a password.
pub fn hash_password(password: &str) -> Result<String, GatewayError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| GatewayError::Internal(format!("password hashing: {e}")))
}

/// Whether `password` matches a PHC string (false for a malformed one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(phc) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A password policy check with the API's error.
pub fn check_password(param: &str, password: &str) -> Result<(), GatewayError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(super::wire::bad_param(
            param,
            format!("A password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters."),
        ));
    }
    Ok(())
}

/// A hash verified when the account does not exist, so that a wrong tenant or email takes as
/// long to refuse as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// Tenant id or name (tenant users).
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The operator token, instead of the three above (operators).
    #[serde(default)]
    pub operator_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionOut {
    /// The session's bearer token (the console keeps it in an HttpOnly cookie).
    pub token: String,
    /// Sent back with every form of the session.
    pub csrf: String,
    pub expires_at: String,
    /// `operator`, `tenant_admin`, `member` or `viewer`.
    pub role: String,
    pub tenant_id: Option<i64>,
    pub tenant_name: Option<String>,
    pub user: Option<UserOut>,
}

/// The one answer to every refused sign-in (wrong tenant, email or password, or a locked
/// account): whether an account exists or is locked is not told apart.
fn refused() -> GatewayError {
    GatewayError::InvalidKey(format!(
        "The tenant, email or password is not right. After {LOCK_AFTER} failed sign-ins in a row an account is locked for {} minutes: reset the password to unlock it at once.",
        LOCK_SECS / 60
    ))
}

/// Sign in: a console session for a tenant user (tenant, email, password) or the operator
/// (operator token). Wrong credentials and a locked account answer the same 401, whatever was
/// wrong; too many failures from one address answer 429 with `Retry-After`.
#[utoipa::path(post, path = "/admin/sessions", tag = "members", request_body = SignIn,
    responses((status = 201, body = SessionOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn sign_in(
    State(admin): State<Arc<Admin>>,
    ip: Option<Extension<ClientIp>>,
    JsonBody(req): JsonBody<SignIn>,
) -> ApiResult<(StatusCode, Json<SessionOut>)> {
    let ip = ip.and_then(|Extension(c)| c.0);
    let now = crate::tenancy::unix_now();
    let now_ms = now.max(0) as u64 * 1000;
    // Operator tokens and each account's passwords are throttled apart (auth::Scope).
    let scopes = match (&req.operator_token, &req.tenant, &req.email) {
        (Some(_), _, _) => vec![Scope::Tokens],
        (None, Some(t), Some(e)) => vec![Scope::SignIns, Scope::account(t, e)],
        _ => vec![Scope::SignIns],
    };
    admin.auth_throttle.admit(ip, now_ms, &scopes, "sign-ins")?;
    let result = sign_in_checked(&admin, req, now).await;
    if let Err(GatewayError::InvalidKey(_)) = &result {
        admin
            .auth_throttle
            .refused(ip, now_ms, &scopes, "console sign-in");
    }
    Ok((StatusCode::CREATED, Json(result?)))
}

async fn sign_in_checked(
    admin: &Arc<Admin>,
    req: SignIn,
    now: i64,
) -> Result<SessionOut, GatewayError> {
    let ttl = admin.app.config().admin.session_hours as i64 * 3600;
    if let Some(token) = req.operator_token {
        let ok = admin
            .app
            .admin_token
            .as_deref()
            .is_some_and(|t| same_secret(token.trim(), t));
        if !ok {
            return Err(GatewayError::InvalidKey("Invalid operator token.".into()));
        }
        let s = admin
            .blocking(move |a| a.store.create_session(None, ttl))
            .await?;
        return Ok(SessionOut {
            token: s.token,
            csrf: s.csrf,
            expires_at: time(s.expires_at),
            role: "operator".into(),
            tenant_id: None,
            tenant_name: None,
            user: None,
        });
    }
    let (Some(tenant), Some(email), Some(password)) = (req.tenant, req.email, req.password) else {
        return Err(GatewayError::bad_request(
            "Sign in with `tenant`, `email` and `password`, or with `operator_token`.",
        ));
    };
    if !super::sso::passwords_allowed(admin, &tenant).await? {
        return Err(GatewayError::Forbidden(format!(
            "{tenant} signs in with single sign-on only: /console/sso/start?tenant={tenant}"
        )));
    }
    let account = admin
        .blocking(move |a| a.store.login_account(&tenant, &email))
        .await?;
    // Verified on the blocking pool: argon2 takes tens of milliseconds by design.
    let (account, matches) = tokio::task::spawn_blocking(move || {
        let phc = account
            .as_ref()
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_else(|| decoy_hash().to_string());
        let ok = verify_password(&password, &phc);
        (account, ok)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let Some(account) = account else {
        return Err(refused());
    };
    let user = account.principal.user.clone();
    if account.locked_until.is_some_and(|u| u > now) {
        return Err(refused());
    }
    if !matches || account.password_hash.is_none() || user.disabled_at.is_some() {
        if account.password_hash.is_some() && user.disabled_at.is_none() {
            admin
                .blocking(move |a| a.store.login_failed(user.id, LOCK_AFTER, now + LOCK_SECS))
                .await?;
        }
        return Err(refused());
    }
    let uid = user.id;
    let s = admin
        .blocking(move |a| {
            a.store.login_succeeded(uid)?;
            a.store.create_session(Some(uid), ttl)
        })
        .await?;
    let names = admin.names(&[user.tenant_id]).await?;
    let spend = admin.spend(user.tenant_id, crate::billing::entry::Account::User(uid));
    Ok(SessionOut {
        token: s.token,
        csrf: s.csrf,
        expires_at: time(s.expires_at),
        role: user.role.as_str().into(),
        tenant_id: Some(user.tenant_id.0),
        tenant_name: Some(account.principal.tenant_name),
        user: Some(UserOut::from(&user, &names, spend)),
    })
}

/// Sign out: ends the session the request is authenticated with.
#[utoipa::path(delete, path = "/admin/sessions/current", tag = "members", security(("bearer" = [])),
    responses((status = 204, description = "Signed out"), (status = 400, body = ErrorBody, description = "Not a session token"), (status = 401, body = ErrorBody)))]
pub async fn sign_out(
    State(admin): State<Arc<Admin>>,
    _who: Principal,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let token = super::auth::bearer(&headers).unwrap_or_default();
    if !token.starts_with("tgs-") {
        return Err(GatewayError::bad_request("Only a console session can be signed out.").into());
    }
    admin.blocking(move |a| a.store.end_session(&token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
}

/// Change one's own password (tenant users; the current one is checked).
#[utoipa::path(put, path = "/admin/me/password", tag = "members", security(("bearer" = [])),
    request_body = ChangePassword,
    responses((status = 204, description = "Changed"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn change_password(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    JsonBody(req): JsonBody<ChangePassword>,
) -> ApiResult<StatusCode> {
    let Some(u) = who.user() else {
        return Err(super::wire::forbidden(
            "The operator has no password; it signs in with the operator token.",
        )
        .into());
    };
    check_password("new_password", &req.new_password)?;
    let (tenant, email, uid) = (
        u.user.tenant_id.0.to_string(),
        u.user.email.clone(),
        u.user.id,
    );
    let account = admin
        .blocking(move |a| a.store.login_account(&tenant, &email))
        .await?;
    let current = account.and_then(|a| a.password_hash);
    let new = req.new_password;
    let hash = tokio::task::spawn_blocking(move || {
        if let Some(phc) = current {
            if !verify_password(&req.current_password, &phc) {
                return Err(super::wire::bad_param(
                    "current_password",
                    "The current password is not right.",
                ));
            }
        }
        hash_password(&new)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))??;
    admin
        .blocking(move |a| a.store.set_password(uid, &hash))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Hashes `password` (on the blocking pool) and sets it as the user's.
pub async fn set_password_hashed(
    admin: &Admin,
    user: crate::tenancy::UserId,
    password: String,
) -> Result<(), GatewayError> {
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))??;
    admin
        .blocking(move |a| a.store.set_password(user, &hash))
        .await
}

/// A password-reset link is valid this long when a user asks for it...
const RESET_SELF_SECS: i64 = 3600;
/// ...and this long when a tenant admin makes it for a member.
const RESET_ADMIN_SECS: i64 = 24 * 3600;

/// Emails a password-reset link; `Ok(false)` without `[smtp]`.
async fn mail_reset(admin: &Admin, to: &str, tenant: &str, url: &str) -> Result<bool, String> {
    let Some(smtp) = admin.app.config().smtp.clone() else {
        return Ok(false);
    };
    let body = format!(
        "Someone asked to reset your password for {tenant} on the tollgate LLM gateway.\n\n\
         Set a new password here (the link works once, for a limited time):\n\n{url}\n\n\
         If it was not you, ignore this mail: your password stays as it is.\n\n\
         有人请求重置你在 {tenant}（tollgate 大模型网关）的密码。请打开上面的链接设置新密码；如非本人操作，请忽略此邮件。\n"
    );
    crate::mail::send(&smtp, to, "Reset your tollgate password", body)
        .await
        .map(|()| true)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Tenant id or name.
    pub tenant: String,
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct ResetRequested {
    /// Always true: whether the account exists is not told.
    pub accepted: bool,
}

/// Ask for a password-reset link by email (no account needed). The answer is the same whether
/// or not the account exists; requests count against the address's sign-in throttle.
#[utoipa::path(post, path = "/admin/password-resets", tag = "members", request_body = ResetRequest,
    responses((status = 202, body = ResetRequested), (status = 429, body = ErrorBody)))]
pub async fn request_reset(
    State(admin): State<Arc<Admin>>,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ResetRequest>,
) -> ApiResult<(StatusCode, Json<ResetRequested>)> {
    let ip = ip.and_then(|Extension(c)| c.0);
    let now_ms = crate::tenancy::unix_now().max(0) as u64 * 1000;
    // Every request counts, so that nobody can mail-bomb an address through this form.
    let scopes = [Scope::SignIns, Scope::account(&req.tenant, &req.email)];
    admin.auth_throttle.admit(ip, now_ms, &scopes, "sign-ins")?;
    if let Some(ip) = ip {
        for s in scopes {
            admin.auth_throttle.failed(ip, s, now_ms);
        }
    }
    let account = admin
        .blocking(move |a| a.store.login_account(&req.tenant, &req.email))
        .await?;
    if let Some(acct) = account.filter(|a| a.principal.user.disabled_at.is_none()) {
        let uid = acct.principal.user.id;
        let token = admin
            .blocking(move |a| a.store.create_password_reset(uid, RESET_SELF_SECS))
            .await?;
        let url = format!(
            "{}/console/reset/{token}",
            super::members::console_base(&admin, &headers)
        );
        match mail_reset(
            &admin,
            &acct.principal.user.email,
            &acct.principal.tenant_name,
            &url,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                user = uid.0,
                "password reset asked for, but no [smtp] is configured to send it"
            ),
            Err(e) => {
                tracing::warn!(user = uid.0, error = %e, "the password-reset mail was not sent")
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetRequested { accepted: true }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct ResetLink {
    /// The single-use link (valid 24 h); give it to the user when it was not emailed.
    pub reset_url: String,
    pub expires_at: String,
    pub emailed: bool,
    pub email_error: Option<String>,
}

/// Make a password-reset link for a member (tenant admin): emailed to them when `[smtp]` is
/// configured, and answered so that it can be passed on otherwise.
#[utoipa::path(post, path = "/admin/users/{id}/password-reset", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses((status = 201, body = ResetLink), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn admin_reset(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    headers: HeaderMap,
    super::wire::PathParams(id): super::wire::PathParams<i64>,
) -> ApiResult<(StatusCode, Json<ResetLink>)> {
    let uid = crate::tenancy::UserId(id);
    let user = admin
        .blocking(move |a| a.store.get_user(uid))
        .await
        .map_err(|_| super::wire::not_found("user"))?;
    who.role_in(user.tenant_id)
        .map_err(|_| super::wire::not_found("user"))?;
    who.require(user.tenant_id, &[crate::tenancy::Role::TenantAdmin])?;
    let token = admin
        .blocking(move |a| a.store.create_password_reset(uid, RESET_ADMIN_SECS))
        .await?;
    let tenant = admin.tenant(&user.tenant_id.0.to_string()).await?;
    let url = format!(
        "{}/console/reset/{token}",
        super::members::console_base(&admin, &headers)
    );
    let (emailed, email_error) = match mail_reset(&admin, &user.email, &tenant.name, &url).await {
        Ok(sent) => (sent, None),
        Err(e) => (false, Some(e)),
    };
    Ok((
        StatusCode::CREATED,
        Json(ResetLink {
            reset_url: url,
            expires_at: time(crate::tenancy::unix_now() + RESET_ADMIN_SECS),
            emailed,
            email_error,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UseReset {
    pub token: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct ResetDone {
    pub user_id: i64,
    pub tenant_id: i64,
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetLookup {
    /// The reset link's token.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct ResetSeen {
    /// `pending` (usable), `used` or `expired`.
    pub state: String,
}

/// What a reset link is now, before a password is typed (the token is the credential).
#[utoipa::path(post, path = "/admin/password-resets/lookup", tag = "members", request_body = ResetLookup,
    responses((status = 200, body = ResetSeen), (status = 404, body = ErrorBody)))]
pub async fn lookup_reset(
    State(admin): State<Arc<Admin>>,
    JsonBody(req): JsonBody<ResetLookup>,
) -> ApiResult<Json<ResetSeen>> {
    let state = admin
        .blocking(move |a| a.store.reset_state(&req.token))
        .await?
        .ok_or_else(|| GatewayError::NotFound("password reset not found".into()))?;
    Ok(Json(ResetSeen {
        state: state.into(),
    }))
}

/// Set a new password with a reset link's token (once; it ends the user's console sessions).
#[utoipa::path(post, path = "/admin/password-resets/accept", tag = "members", request_body = UseReset,
    responses((status = 200, body = ResetDone), (status = 400, body = ErrorBody, description = "Used or expired"), (status = 404, body = ErrorBody)))]
pub async fn use_reset(
    State(admin): State<Arc<Admin>>,
    JsonBody(req): JsonBody<UseReset>,
) -> ApiResult<Json<ResetDone>> {
    check_password("password", &req.password)?;
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))??;
    let token = req.token;
    let user = admin
        .blocking(move |a| {
            let id = a.store.use_password_reset(&token, &hash)?;
            a.store.get_user(id)
        })
        .await?;
    Ok(Json(ResetDone {
        user_id: user.id.0,
        tenant_id: user.tenant_id.0,
        email: user.email,
    }))
}
