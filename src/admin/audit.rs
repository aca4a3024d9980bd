//! The audit trail on the admin API (issue 18; the chain itself is `crate::audit`): a layer that
//! records every change (any method but GET/HEAD/OPTIONS, whatever its outcome, sign-ins and
//! failed sign-ins included) with who, from where, what, before and after; and the listings.

use super::auth::{check_token, ClientIp, Principal};
use super::wire::{bad_param, ApiResult, ErrorBody, PathParams};
use super::Admin;
use crate::store::sqlite::AuditRow;
use crate::store::AuditQuery;
use crate::tenancy::Role;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;
use utoipa::ToSchema;

/// Bodies larger than this are summarised by size (the admin API takes 1 MiB at most).
const KEEP_BYTES: usize = 64 * 1024;

fn as_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if bytes.len() > KEEP_BYTES {
        return json!({"bytes": bytes.len()});
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => crate::audit::redact(&v),
        Err(_) => {
            // A form (the provider callbacks are not audited; console forms reach the API as
            // JSON): keep the field names only.
            json!({"bytes": bytes.len()})
        }
    }
}

/// Records a change made through the admin API (the console's pages call the API, so their
/// changes are here too, with the browser's address and user agent).
pub async fn layer(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        || path.starts_with("/payments/")
        || !path.starts_with("/admin")
        || path == "/admin/invites/lookup"
        || path == "/admin/password-resets/lookup"
    {
        // Reads (a look at an invitation is one, posted to keep its token out of URLs), and
        // providers' payment callbacks (whose effect is in the ledger, actor
        // `payment:<provider>`).
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_string());
    let ip = req
        .extensions()
        .get::<ClientIp>()
        .and_then(|c| c.0)
        .map(|ip| ip.to_string());
    let user_agent = header_text(req.headers(), header::USER_AGENT.as_str());
    let request_id = header_text(req.headers(), "x-request-id")
        .unwrap_or_else(|| format!("adm-{}", crate::payments::keys::nonce(16)));
    // Who: the token's principal (without the throttle's side effects: the handler applies
    // them), or for a sign-in, the account named in the body.
    let (mut parts, body) = req.into_parts();
    let who = check_token(&admin, &mut parts, true).await.ok();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let request = as_json(&bytes);
    let (mut actor, mut tenant) = match &who {
        Some(Principal::Operator) => ("operator".to_string(), None),
        Some(Principal::User(u)) => (
            format!("user:{} {}", u.user.id.0, u.user.email),
            Some(u.user.tenant_id),
        ),
        None => match request["email"].as_str() {
            Some(email) => (format!("anonymous {email}"), None),
            None => ("anonymous".to_string(), None),
        },
    };
    let token = super::auth::bearer(&parts.headers).map(|t| token_id(&t));
    // The value before, for a change of an existing resource: the same path read as the caller.
    let before = if matches!(method, Method::PUT | Method::PATCH | Method::DELETE) {
        read_as(&admin, &parts, &path).await
    } else {
        Value::Null
    };
    let req = Request::from_parts(parts.clone(), Body::from(bytes));
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let (rparts, rbody) = response.into_parts();
    let rbytes = axum::body::to_bytes(rbody, 8 << 20)
        .await
        .unwrap_or_default();
    let after = if (200..300).contains(&status) {
        as_json(&rbytes)
    } else {
        Value::Null
    };
    let error = if status >= 400 {
        serde_json::from_slice::<Value>(&rbytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
    } else {
        None
    };
    if who.is_none() {
        // A sign-in (or an invitation/reset accepted): the account it opened acts.
        if let (Some(id), Some(email)) = (
            after["user"]["id"].as_i64(),
            after["user"]["email"].as_str(),
        ) {
            actor = format!("user:{id} {email}");
        } else if after["role"] == "operator" {
            // The operator signed in to the console with the operator token.
            actor = "operator".into();
        }
    }
    if tenant.is_none() {
        tenant = tenant_of(&admin, &path, &request, &after).await;
    }
    let fields = json!({
        "method": method.as_str(),
        "route": route,
        "path": path,
        "ip": ip,
        "user_agent": user_agent,
        "request_id": request_id,
        "token": token,
        "request": request,
        "before": before,
        "after": after,
        "error": error,
    });
    let action = format!("{} {}", method.as_str(), route);
    let store_actor = actor.clone();
    let recorded = admin
        .blocking(move |a| {
            crate::audit::record(
                &a.store,
                tenant,
                &store_actor,
                &action,
                i64::from(status),
                &fields,
            )
        })
        .await;
    if let Err(e) = recorded {
        // The change is made; the trail must say it is missing.
        tracing::error!(target: "audit", error = %e, actor, %path, status, "an admin change could not be recorded in the audit trail");
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

fn header_text(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(300).collect::<String>())
}

/// A short, stable id of a token (never the token): its SHA-256's first 12 hex digits.
fn token_id(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(token.as_bytes())[..6])
}

/// The resource at `path` as the caller sees it now (GET through the same API), if any.
async fn read_as(admin: &Arc<Admin>, parts: &axum::http::request::Parts, path: &str) -> Value {
    let Some(api) = admin.api.get() else {
        return Value::Null;
    };
    let mut b = Request::builder().method(Method::GET).uri(path);
    if let Some(a) = parts.headers.get(header::AUTHORIZATION) {
        b = b.header(header::AUTHORIZATION, a);
    }
    let Ok(mut req) = b.body(Body::empty()) else {
        return Value::Null;
    };
    if let Some(ip) = parts.extensions.get::<ClientIp>() {
        req.extensions_mut().insert(*ip);
    }
    match api.clone().oneshot(req).await {
        Ok(r) if r.status().is_success() => {
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            as_json(&bytes)
        }
        _ => Value::Null,
    }
}

/// The tenant a change concerns: from the path (`/admin/tenants/{t}/...`), the request or the
/// answer (`tenant_id`, `tenant`).
async fn tenant_of(
    admin: &Arc<Admin>,
    path: &str,
    request: &Value,
    after: &Value,
) -> Option<crate::tenancy::TenantId> {
    let named = path
        .strip_prefix("/admin/tenants/")
        .and_then(|r| r.split('/').next())
        .filter(|t| !t.is_empty())
        .map(percent_encoding_decode)
        .or_else(|| after["tenant_id"].as_i64().map(|i| i.to_string()))
        .or_else(|| request["tenant"].as_str().map(str::to_string))
        .or_else(|| request["tenant_id"].as_i64().map(|i| i.to_string()))
        .or_else(|| {
            after["id"]
                .as_i64()
                .filter(|_| path == "/admin/tenants")
                .map(|i| i.to_string())
        })?;
    admin.tenant(&named).await.ok().map(|t| t.id)
}

fn percent_encoding_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[derive(Serialize, ToSchema)]
pub struct AuditOut {
    pub seq: i64,
    pub at: String,
    pub tenant_id: Option<i64>,
    pub actor: String,
    /// `METHOD /route/{template}`.
    pub action: String,
    pub status: i64,
    /// Everything recorded (method, route, path, ip, user_agent, request_id, token id, request,
    /// before, after, error), secrets redacted.
    #[schema(value_type = Object)]
    pub entry: Value,
    /// The hash of this entry, chained to the previous one's.
    pub hash: String,
}

impl AuditOut {
    fn from(r: &AuditRow) -> AuditOut {
        AuditOut {
            seq: r.seq,
            at: super::wire::time_ms(r.at_ms),
            tenant_id: r.tenant_id.map(|t| t.0),
            actor: r.actor.clone(),
            action: r.action.clone(),
            status: r.status,
            entry: serde_json::from_str(&r.entry).unwrap_or(Value::Null),
            hash: r.hash.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub data: Vec<AuditOut>,
    /// Pass as `cursor` for the next (older) page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// At or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Exactly this actor (e.g. `operator`, `user:3 alice@acme.example`).
    pub actor: Option<String>,
    /// Actions containing this text (e.g. `keys`, `DELETE`).
    pub action: Option<String>,
    /// Tenant id or name (operator's listing only).
    pub tenant: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `csv` downloads the page.
    pub format: Option<String>,
}

async fn listing(
    admin: &Arc<Admin>,
    tenant: Option<crate::tenancy::TenantId>,
    p: AuditParams,
) -> ApiResult<Response> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad_param("limit", "1 to 1000").into());
    }
    let ms = |v: &Option<String>, name: &str| -> Result<Option<i64>, crate::error::GatewayError> {
        v.as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| super::wire::parse_instant_ms(name, t))
            .transpose()
    };
    let q = AuditQuery {
        tenant,
        before_seq: p
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| bad_param("cursor", "not a cursor"))
            })
            .transpose()?,
        from_ms: ms(&p.from, "from")?,
        to_ms: ms(&p.to, "to")?,
        actor: p.actor.clone().filter(|a| !a.is_empty()),
        action: p.action.clone().filter(|a| !a.is_empty()),
        limit,
    };
    let rows = admin.blocking(move |a| a.store.list_audit(&q)).await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.seq.to_string()))
        .flatten();
    let data: Vec<AuditOut> = rows.iter().map(AuditOut::from).collect();
    if p.format.as_deref() == Some("csv") {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "seq",
            "at",
            "tenant_id",
            "actor",
            "action",
            "status",
            "ip",
            "request_id",
            "entry",
            "hash",
        ]);
        for d in &data {
            let _ = w.write_record([
                d.seq.to_string(),
                d.at.clone(),
                d.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                d.actor.clone(),
                d.action.clone(),
                d.status.to_string(),
                d.entry["ip"].as_str().unwrap_or("").to_string(),
                d.entry["request_id"].as_str().unwrap_or("").to_string(),
                d.entry.to_string(),
                d.hash.clone(),
            ]);
        }
        let body = w.into_inner().unwrap_or_default();
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"audit.csv\"".to_string(),
                ),
            ],
            body,
        )
            .into_response());
    }
    Ok(Json(AuditList { data, next_cursor }).into_response())
}

/// The whole audit trail, newest first (operator). `format=csv` downloads the page.
#[utoipa::path(get, path = "/admin/audit", tag = "ops", security(("bearer" = [])),
    params(AuditParams),
    responses((status = 200, body = AuditList, description = "JSON, or text/csv"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn all_audit(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    super::wire::QueryParams(p): super::wire::QueryParams<AuditParams>,
) -> ApiResult<Response> {
    who.require_operator()?;
    let tenant = match p.tenant.as_deref() {
        Some(t) if !t.is_empty() => Some(admin.tenant(t).await?.id),
        _ => None,
    };
    listing(&admin, tenant, p).await
}

/// A tenant's audit trail, newest first (tenant admin). `format=csv` downloads the page.
#[utoipa::path(get, path = "/admin/tenants/{t}/audit", tag = "tenants", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), AuditParams),
    responses((status = 200, body = AuditList, description = "JSON, or text/csv"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tenant_audit(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    super::wire::QueryParams(p): super::wire::QueryParams<AuditParams>,
) -> ApiResult<Response> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    listing(&admin, Some(tenant), p).await
}
