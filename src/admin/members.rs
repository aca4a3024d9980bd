//! A tenant's members: users (with their admin-API tokens), departments/projects and
//! invitations.

use super::auth::Principal;
use super::tenants::{set_limits_of, LimitsOut, SetLimits};
use super::wire::{
    bad_param, double_option, forbidden, not_found, opt_time, positive_nano, time, ApiResult,
    ErrorBody, GroupOut, JsonBody, ListQuery, Names, Page, PathParams, QueryParams, UserOut,
};
use super::Admin;
use crate::billing::entry::Account;
use crate::error::GatewayError;
use crate::store::sqlite::LimitSubject;
use crate::store::{Invite, UserPatch, UserToken};
use crate::tenancy::{GroupId, Role, TenantId, User, UserId};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

fn parse_role(s: &str) -> Result<Role, GatewayError> {
    Role::parse_tenant_role(s)
        .ok_or_else(|| bad_param("role", "`role` must be tenant_admin, member or viewer"))
}

/// A user the caller may see, with the caller's role in their tenant. Another tenant's user
/// and a missing one are both "user not found".
async fn visible_user(
    admin: &Admin,
    who: &Principal,
    id: i64,
) -> Result<(User, Role), GatewayError> {
    let user = admin
        .blocking(move |a| a.store.get_user(UserId(id)))
        .await?;
    let role = who.role_in(user.tenant_id).map_err(|_| not_found("user"))?;
    Ok((user, role))
}

fn user_out(admin: &Admin, u: &User, names: &Names) -> UserOut {
    UserOut::from(u, names, admin.spend(u.tenant_id, Account::User(u.id)))
}

/// A tenant's users, with their spend in the current quota period (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/users", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ListQuery),
    responses((status = 200, body = Page<UserOut>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_users(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<UserOut>>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let users = admin.blocking(move |a| a.store.list_users(tenant)).await?;
    let names = admin.names(&[tenant]).await?;
    let page = q.page(users, |u| u.id.0, |u| u.created_at)?;
    Ok(Json(Page {
        data: page
            .data
            .iter()
            .map(|u| user_out(&admin, u, &names))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    #[serde(default)]
    pub name: String,
    /// `tenant_admin`, `member` or `viewer`.
    pub role: String,
    #[serde(default)]
    pub group_id: Option<i64>,
    /// Spending cap per quota period, in credits.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "100")]
    pub quota_credits: Option<Decimal>,
}

#[derive(Serialize, ToSchema)]
pub struct UserWithToken {
    pub user: UserOut,
    /// An admin-API token for the user, shown once.
    pub token: String,
}

/// Add a user with an admin-API token (tenant admin). Prefer an invitation, which lets the
/// person set their own console password.
#[utoipa::path(post, path = "/admin/tenants/{t}/users", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = CreateUser,
    responses((status = 201, body = UserWithToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_user(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserWithToken>)> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let role = parse_role(&req.role)?;
    let quota = req
        .quota_credits
        .map(|q| positive_nano(q, "quota_credits"))
        .transpose()?;
    let (user, token) = admin
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
    let names = admin.names(&[tenant]).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserWithToken {
            user: user_out(&admin, &user, &names),
            token,
        }),
    ))
}

/// One user (tenant admin, viewer; a member may read their own record).
#[utoipa::path(get, path = "/admin/users/{id}", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses((status = 200, body = UserOut), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<UserOut>> {
    let (user, role) = visible_user(&admin, &who, id).await?;
    let own = who.user().is_some_and(|u| u.user.id == user.id);
    if role == Role::Member && !own {
        return Err(not_found("user").into());
    }
    let names = admin.names(&[user.tenant_id]).await?;
    Ok(Json(user_out(&admin, &user, &names)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// `tenant_admin`, `member` or `viewer`.
    #[serde(default)]
    pub role: Option<String>,
    /// `null` removes the user from their group.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub group_id: Option<Option<i64>>,
    /// Credits per quota period; `null` removes the quota.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub quota_credits: Option<Option<Decimal>>,
    /// Disabling also revokes the user's admin tokens and console sessions.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Change a user's role, group, quota or state (tenant admin): only the fields sent change.
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")), request_body = UpdateUser,
    responses((status = 200, body = UserOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_user(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    JsonBody(req): JsonBody<UpdateUser>,
) -> ApiResult<Json<UserOut>> {
    let (user, _) = visible_user(&admin, &who, id).await?;
    who.require(user.tenant_id, &[Role::TenantAdmin])?;
    let patch = UserPatch {
        role: req.role.as_deref().map(parse_role).transpose()?,
        group: req.group_id.map(|g| g.map(GroupId)),
        quota_nano: match req.quota_credits {
            None => None,
            Some(None) => Some(None),
            Some(Some(q)) => Some(Some(positive_nano(q, "quota_credits")?)),
        },
        disabled: req.disabled,
    };
    // A tenant never loses its last administrator by its own hand (the operator may still
    // disable one, for an account taken over).
    let demoted =
        patch.role.is_some_and(|r| r != Role::TenantAdmin) || patch.disabled == Some(true);
    if demoted
        && user.role == Role::TenantAdmin
        && user.disabled_at.is_none()
        && who.user().is_some()
    {
        let (tenant, uid) = (user.tenant_id, user.id);
        let others = admin
            .blocking(move |a| {
                Ok(a.store
                    .list_users(tenant)?
                    .iter()
                    .filter(|u| {
                        u.id != uid && u.role == Role::TenantAdmin && u.disabled_at.is_none()
                    })
                    .count())
            })
            .await?;
        if others == 0 {
            return Err(bad_param(
                "role",
                format!(
                    "`{}` is the tenant's only admin: make another member a tenant admin first.",
                    user.email
                ),
            )
            .into());
        }
    }
    let uid = user.id;
    let updated = admin
        .blocking(move |a| {
            let u = a.store.update_user(
                uid,
                patch.role,
                patch.group,
                patch.quota_nano,
                patch.disabled,
            )?;
            a.refresh_keys()?;
            Ok(u)
        })
        .await?;
    let names = admin.names(&[updated.tenant_id]).await?;
    Ok(Json(user_out(&admin, &updated, &names)))
}

/// Change a user's rate limits (tenant admin).
#[utoipa::path(patch, path = "/admin/users/{id}/limits", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")), request_body = SetLimits,
    responses((status = 200, body = LimitsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_user_limits(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    JsonBody(req): JsonBody<SetLimits>,
) -> ApiResult<Json<LimitsOut>> {
    let (user, _) = visible_user(&admin, &who, id).await?;
    who.require(user.tenant_id, &[Role::TenantAdmin])?;
    set_limits_of(&admin, LimitSubject::User(user.id), id, req).await
}

/// The same as `PATCH` (kept for clients of the first version).
#[utoipa::path(put, path = "/admin/users/{id}/limits", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")), request_body = SetLimits,
    responses((status = 200, body = LimitsOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_user_limits_put(
    state: State<Arc<Admin>>,
    who: Principal,
    id: PathParams<i64>,
    req: JsonBody<SetLimits>,
) -> ApiResult<Json<LimitsOut>> {
    set_user_limits(state, who, id, req).await
}

/// An admin-API token of a user, never the token itself.
#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    pub id: i64,
    pub user_id: i64,
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl TokenOut {
    fn from(t: &UserToken) -> TokenOut {
        TokenOut {
            id: t.id,
            user_id: t.user_id.0,
            prefix: t.prefix.clone(),
            created_at: time(t.created_at),
            revoked_at: opt_time(t.revoked_at),
        }
    }
}

/// Who may manage `user`'s tokens: a tenant admin of their tenant, or the user themselves.
fn may_manage_tokens(who: &Principal, user: &User, role: Role) -> Result<(), GatewayError> {
    let own = who.user().is_some_and(|u| u.user.id == user.id);
    if matches!(role, Role::Operator | Role::TenantAdmin) || own {
        Ok(())
    } else {
        Err(forbidden(
            "Only a tenant admin or the user may manage a user's tokens.",
        ))
    }
}

/// A user's admin-API tokens (tenant admin, or the user).
#[utoipa::path(get, path = "/admin/users/{id}/tokens", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id"), ListQuery),
    responses((status = 200, body = Page<TokenOut>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_tokens(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<TokenOut>>> {
    let (user, role) = visible_user(&admin, &who, id).await?;
    may_manage_tokens(&who, &user, role)?;
    let tokens = admin
        .blocking(move |a| a.store.list_user_tokens(user.id))
        .await?;
    let page = q.page(tokens, |t| t.id, |t| t.created_at)?;
    Ok(Json(Page {
        data: page.data.iter().map(TokenOut::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct NewToken {
    /// The token, shown once.
    pub token: String,
}

/// A new admin-API token for a user (tenant admin).
#[utoipa::path(post, path = "/admin/users/{id}/tokens", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses((status = 201, body = NewToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_token(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let (user, _) = visible_user(&admin, &who, id).await?;
    who.require(user.tenant_id, &[Role::TenantAdmin])?;
    let token = admin
        .blocking(move |a| a.store.create_user_token(user.id))
        .await?;
    Ok((StatusCode::CREATED, Json(NewToken { token })))
}

/// Revoke one of a user's admin-API tokens (tenant admin, or the user).
#[utoipa::path(delete, path = "/admin/users/{id}/tokens/{token_id}", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id"), ("token_id" = i64, Path, description = "Token id")),
    responses((status = 200, body = TokenOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams((id, token)): PathParams<(i64, i64)>,
) -> ApiResult<Json<TokenOut>> {
    let (user, role) = visible_user(&admin, &who, id).await?;
    may_manage_tokens(&who, &user, role)?;
    let t = admin
        .blocking(move |a| a.store.revoke_user_token(user.id, token))
        .await?;
    Ok(Json(TokenOut::from(&t)))
}

/// A tenant's departments/projects with their spend in the current quota period (tenant
/// admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/groups", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ListQuery),
    responses((status = 200, body = Page<GroupOut>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_groups(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<GroupOut>>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let (groups, users) = admin
        .blocking(move |a| Ok((a.store.list_groups(tenant)?, a.store.list_users(tenant)?)))
        .await?;
    let page = q.page(groups, |g| g.id.0, |g| g.created_at)?;
    Ok(Json(Page {
        data: page
            .data
            .iter()
            .map(|g| {
                let members = users.iter().filter(|u| u.group_id == Some(g.id)).count();
                GroupOut::from(g, admin.spend(tenant, Account::Group(g.id)), members)
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    /// Budget per quota period, in credits.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "500")]
    pub budget_credits: Option<Decimal>,
}

/// Create a department/project (tenant admin).
#[utoipa::path(post, path = "/admin/tenants/{t}/groups", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = CreateGroup,
    responses((status = 201, body = GroupOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_group(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<CreateGroup>,
) -> ApiResult<(StatusCode, Json<GroupOut>)> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let budget = req
        .budget_credits
        .map(|b| positive_nano(b, "budget_credits"))
        .transpose()?;
    let g = admin
        .blocking(move |a| a.store.create_group(tenant, &req.name, budget))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GroupOut::from(&g, Default::default(), 0)),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    #[serde(default)]
    pub name: Option<String>,
    /// Budget per quota period, in credits; `null` removes it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, example = "500")]
    pub budget_credits: Option<Option<Decimal>>,
}

/// Rename a department/project or change its budget (tenant admin).
#[utoipa::path(patch, path = "/admin/tenants/{t}/groups/{id}", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ("id" = i64, Path, description = "Group id")),
    request_body = UpdateGroup,
    responses((status = 200, body = GroupOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_group(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams((t, id)): PathParams<(String, i64)>,
    JsonBody(req): JsonBody<UpdateGroup>,
) -> ApiResult<Json<GroupOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let budget = match req.budget_credits {
        None => None,
        Some(None) => Some(None),
        Some(Some(b)) => Some(Some(positive_nano(b, "budget_credits")?)),
    };
    let (g, members) = admin
        .blocking(move |a| {
            let g = a
                .store
                .update_group(tenant, GroupId(id), req.name.as_deref(), budget)?;
            let members = a
                .store
                .list_users(tenant)?
                .iter()
                .filter(|u| u.group_id == Some(g.id))
                .count();
            Ok((g, members))
        })
        .await?;
    Ok(Json(GroupOut::from(
        &g,
        admin.spend(tenant, Account::Group(g.id)),
        members,
    )))
}

/// An invitation, never its token.
#[derive(Serialize, ToSchema)]
pub struct InviteOut {
    pub id: i64,
    pub tenant_id: i64,
    pub email: String,
    pub role: String,
    pub group_id: Option<i64>,
    pub group_name: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    /// `pending`, `accepted`, `expired` or `revoked`.
    pub state: String,
    pub accepted_user_id: Option<i64>,
    pub revoked_at: Option<String>,
}

impl InviteOut {
    fn from(i: &Invite, names: &Names, now: i64) -> InviteOut {
        InviteOut {
            id: i.id,
            tenant_id: i.tenant_id.0,
            email: i.email.clone(),
            role: i.role.as_str().into(),
            group_id: i.group_id.map(|g| g.0),
            group_name: names.group(i.group_id.map(|g| g.0)),
            created_at: time(i.created_at),
            expires_at: time(i.expires_at),
            state: i.state(now).into(),
            accepted_user_id: i.accepted_user_id.map(|u| u.0),
            revoked_at: opt_time(i.revoked_at),
        }
    }
}

/// A tenant's invitations, newest first (tenant admin).
#[utoipa::path(get, path = "/admin/tenants/{t}/invites", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ListQuery),
    responses((status = 200, body = Page<InviteOut>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_invites(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<InviteOut>>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let mut invites = admin
        .blocking(move |a| a.store.list_invites(tenant))
        .await?;
    // Paged in id order like every listing; shown newest first.
    invites.sort_by_key(|i| i.id);
    let names = admin.names(&[tenant]).await?;
    let now = crate::tenancy::unix_now();
    let page = q.page(invites, |i| i.id, |i| i.created_at)?;
    Ok(Json(Page {
        data: page
            .data
            .iter()
            .rev()
            .map(|i| InviteOut::from(i, &names, now))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvite {
    pub email: String,
    /// `tenant_admin`, `member` or `viewer`.
    pub role: String,
    #[serde(default)]
    pub group_id: Option<i64>,
    /// Hours the invitation stays valid (1 to 720; default 72).
    #[serde(default)]
    pub ttl_hours: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct NewInvite {
    pub invite: InviteOut,
    /// The single-use invitation token, shown once.
    pub invite_token: String,
    /// Where the invitee sets a password and signs in (the console).
    pub accept_path: String,
    /// The same as a full link (`admin.public_url`, else the address this request came to).
    pub accept_url: String,
    /// Whether the invitation was emailed (`[smtp]` is configured and the relay took it).
    pub emailed: bool,
    /// Why it was not emailed, when `[smtp]` is configured but sending failed.
    pub email_error: Option<String>,
}

/// The console's base address for links: `admin.public_url`, else the request's `Host`.
pub fn console_base(admin: &Admin, headers: &axum::http::HeaderMap) -> String {
    if let Some(u) = &admin.app.config().admin.public_url {
        return u.clone();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| admin.app.config().admin.listen.clone());
    format!("http://{host}")
}

/// Invite someone by email (tenant admin).
#[utoipa::path(post, path = "/admin/tenants/{t}/invites", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = CreateInvite,
    responses((status = 201, body = NewInvite), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_invite(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    headers: axum::http::HeaderMap,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<CreateInvite>,
) -> ApiResult<(StatusCode, Json<NewInvite>)> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin])?;
    let (token, invite) = invite(&admin, tenant.id, req).await?;
    let names = admin.names(&[tenant.id]).await?;
    let accept_path = format!("/console/invite/{token}");
    let accept_url = format!("{}{accept_path}", console_base(&admin, &headers));
    let (mut emailed, mut email_error) = (false, None);
    if let Some(smtp) = admin.app.config().smtp.clone() {
        let body = format!(
            "You are invited to {tenant} on the tollgate LLM gateway as {role}.\n\n\
             Set your password and sign in here (the link works once, until {expires}):\n\n{accept_url}\n\n\
             你被邀请加入 {tenant}（tollgate 大模型网关），角色：{role}。请打开上面的链接设置密码并登录。\n",
            tenant = tenant.name,
            role = invite.role.as_str(),
            expires = super::wire::time(invite.expires_at),
        );
        let subject = format!("Invitation to {} on tollgate", tenant.name);
        match crate::mail::send(&smtp, &invite.email, &subject, body).await {
            Ok(()) => emailed = true,
            Err(e) => {
                tracing::warn!(error = %e, invite = invite.id, "the invitation email was not sent");
                email_error = Some(e);
            }
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(NewInvite {
            invite: InviteOut::from(&invite, &names, crate::tenancy::unix_now()),
            accept_path,
            accept_url,
            invite_token: token,
            emailed,
            email_error,
        }),
    ))
}

/// Creates an invitation; its token and record.
pub async fn invite(
    admin: &Admin,
    tenant: TenantId,
    req: CreateInvite,
) -> Result<(String, Invite), GatewayError> {
    let role = parse_role(&req.role)?;
    let ttl = req.ttl_hours.unwrap_or(72).clamp(1, 24 * 30) * 3600;
    admin
        .blocking(move |a| {
            // Refused now rather than when the link is used: someone who is already a member,
            // or an invitation already on its way.
            let email = req.email.trim().to_lowercase();
            let now = crate::tenancy::unix_now();
            if a.store
                .list_users(tenant)?
                .iter()
                .any(|u| u.email.to_lowercase() == email)
            {
                return Err(crate::store::sqlite::StoreError::Conflict(format!(
                    "`{}` is already a member of this tenant",
                    req.email.trim()
                )));
            }
            if a.store
                .list_invites(tenant)?
                .iter()
                .any(|i| i.email.to_lowercase() == email && i.state(now) == "pending")
            {
                return Err(crate::store::sqlite::StoreError::Conflict(format!(
                    "an invitation to `{}` is already pending",
                    req.email.trim()
                )));
            }
            let token =
                a.store
                    .create_invite(tenant, &req.email, role, req.group_id.map(GroupId), ttl)?;
            let invite = a
                .store
                .list_invites(tenant)?
                .into_iter()
                .next()
                .ok_or_else(|| crate::store::sqlite::StoreError::not_found("invitation", ""))?;
            Ok((token, invite))
        })
        .await
}

/// Revoke a pending invitation (tenant admin).
#[utoipa::path(delete, path = "/admin/tenants/{t}/invites/{id}", tag = "members", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ("id" = i64, Path, description = "Invitation id")),
    responses((status = 200, body = InviteOut), (status = 400, body = ErrorBody, description = "Already accepted"), (status = 404, body = ErrorBody)))]
pub async fn revoke_invite(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams((t, id)): PathParams<(String, i64)>,
) -> ApiResult<Json<InviteOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let invite = admin
        .blocking(move |a| a.store.revoke_invite(tenant, id))
        .await?;
    let names = admin.names(&[tenant]).await?;
    Ok(Json(InviteOut::from(
        &invite,
        &names,
        crate::tenancy::unix_now(),
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvite {
    /// The invitation token.
    pub token: String,
    #[serde(default)]
    pub name: String,
    /// The console password to set (10 to 256 characters); absent: API token only.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteLookup {
    /// The invitation token (from its link).
    pub token: String,
}

/// What an invitation link opens, before it is used.
#[derive(Serialize, ToSchema)]
pub struct InviteSeen {
    pub tenant_name: String,
    pub email: String,
    /// `tenant_admin`, `member` or `viewer`.
    pub role: String,
    /// `pending`, `accepted`, `revoked` or `expired`.
    pub state: String,
    pub expires_at: String,
}

/// Look at an invitation by its token (no account needed: the token is the credential), so
/// that the page it opens can say to whom, for which tenant, and whether it can still be used.
#[utoipa::path(post, path = "/admin/invites/lookup", tag = "members",
    request_body = InviteLookup,
    responses((status = 200, body = InviteSeen), (status = 404, body = ErrorBody)))]
pub async fn lookup_invite(
    State(admin): State<Arc<Admin>>,
    JsonBody(req): JsonBody<InviteLookup>,
) -> ApiResult<Json<InviteSeen>> {
    let invite = admin
        .blocking(move |a| a.store.invite_by_token(&req.token))
        .await?
        .ok_or_else(|| not_found("invitation"))?;
    let names = admin.names(&[invite.tenant_id]).await?;
    Ok(Json(InviteSeen {
        tenant_name: names
            .tenants
            .get(&invite.tenant_id.0)
            .cloned()
            .unwrap_or_default(),
        email: invite.email.clone(),
        role: invite.role.as_str().into(),
        state: invite.state(crate::tenancy::unix_now()).into(),
        expires_at: super::wire::time(invite.expires_at),
    }))
}

/// Accept an invitation (no account needed: the invitation token is the credential). Returns
/// the new user and an admin-API token; with `password`, the user can also sign in to the
/// console.
#[utoipa::path(post, path = "/admin/invites/accept", tag = "members",
    request_body = AcceptInvite,
    responses((status = 201, body = UserWithToken), (status = 400, body = ErrorBody, description = "Expired, revoked or already accepted"), (status = 404, body = ErrorBody)))]
pub async fn accept_invite(
    State(admin): State<Arc<Admin>>,
    JsonBody(req): JsonBody<AcceptInvite>,
) -> ApiResult<(StatusCode, Json<UserWithToken>)> {
    if let Some(p) = &req.password {
        super::sessions::check_password("password", p)?;
    }
    let password = req.password;
    let (user, token) = admin
        .blocking(move |a| a.store.accept_invite(&req.token, &req.name))
        .await?;
    if let Some(p) = password {
        super::sessions::set_password_hashed(&admin, user.id, p).await?;
    }
    let _ = admin.blocking(|a| a.refresh_keys()).await;
    let names = admin.names(&[user.tenant_id]).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserWithToken {
            user: user_out(&admin, &user, &names),
            token,
        }),
    ))
}
