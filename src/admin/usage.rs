//! Usage: one record per call (JSON pages or CSV), analytics from the hourly roll-ups, and what
//! the complexity router saved.

use super::auth::Principal;
use super::listing::{self, Export};
use super::wire::{
    bad_param, credits, not_found, page_limit, range_ms, time, time_ms, ApiResult, ErrorBody,
    Names, Page, PathParams, QueryParams,
};
use super::Admin;
use crate::billing::usage::UsageEvent;
use crate::error::GatewayError;
use crate::store::sqlite::{AnalyticsQuery, Dimension, Granularity, UsageQuery};
use crate::tenancy::{Role, UserId};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Tenant id or name (operator: default every tenant; users: their own).
    pub tenant: Option<String>,
    /// Only this user's calls (members: always their own).
    pub user: Option<String>,
    /// Only calls that asked for this model.
    pub model: Option<String>,
    /// At or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Rows per page, 1 to 10000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `csv`: the whole range (from the cursor on) as one CSV download.
    pub format: Option<String>,
}

/// One call.
#[derive(Serialize, ToSchema)]
pub struct UsageOut {
    pub request_id: String,
    pub time: String,
    pub tenant_id: Option<i64>,
    pub tenant_name: Option<String>,
    pub key_id: Option<i64>,
    pub key_name: Option<String>,
    pub user_id: Option<i64>,
    pub user_email: Option<String>,
    pub group_id: Option<i64>,
    pub group_name: Option<String>,
    /// `chat`, `messages`, `responses`, `count_tokens`, `embeddings` or `other`.
    pub endpoint: String,
    pub path: Option<String>,
    pub channel: Option<String>,
    /// `channel/upstream` of the attempt that answered.
    pub upstream: Option<String>,
    pub model_requested: Option<String>,
    pub model_used: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub error_code: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    /// `vendor` (reported by the upstream), `counted` or `none`.
    pub usage_source: String,
    pub attempts: u32,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// What the call was charged.
    pub cost: String,
    /// What the call cost beyond what its accounts could pay (never charged).
    pub uncollected: String,
    pub route_tier: Option<String>,
    pub route_reason: Option<String>,
    pub route_score: Option<f32>,
    /// `model: "auto"` calls: what the same tokens would have cost on the strongest tier.
    pub baseline_cost: Option<String>,
    /// What the tenant's prompt guardrails found: detector and count (`email=2,secrets=1`),
    /// never the text.
    pub guardrails: Option<String>,
}

fn usage_out(e: UsageEvent, names: &Names) -> UsageOut {
    let (t, k, u, g) = (
        e.tenant_id.map(|t| t.0),
        e.key_id.map(|k| k.0),
        e.user_id.map(|u| u.0),
        e.group_id.map(|g| g.0),
    );
    UsageOut {
        time: time_ms(e.ts_ms),
        tenant_id: t,
        tenant_name: names.tenant(t),
        key_id: k,
        key_name: names.key(k),
        user_id: u,
        user_email: names.user_email(u),
        group_id: g,
        group_name: names.group(g),
        cost: credits(e.cost_nano),
        uncollected: credits(e.uncollected),
        baseline_cost: e.baseline_cost_nano.map(credits),
        request_id: e.request_id,
        endpoint: e.endpoint,
        path: e.path,
        channel: e.channel,
        upstream: e.upstream,
        model_requested: e.model_requested,
        model_used: e.model_used,
        stream: e.stream,
        status: e.status,
        error_code: e.error_code,
        prompt_tokens: e.prompt_tokens,
        cached_tokens: e.cached_tokens,
        cache_write_tokens: e.cache_write_tokens,
        completion_tokens: e.completion_tokens,
        reasoning_tokens: e.reasoning_tokens,
        usage_source: e.usage_source,
        attempts: e.attempts,
        latency_ms: e.latency_ms,
        ttft_ms: e.ttft_ms,
        route_tier: e.route_tier,
        route_reason: e.route_reason,
        route_score: e.route_score,
        guardrails: e.guardrails,
    }
}

/// The usage query, checked for the caller: users see their own tenant only, members their own
/// calls only.
async fn usage_query(
    admin: &Admin,
    who: &Principal,
    q: &UsageParams,
    limit: u32,
) -> Result<UsageQuery, GatewayError> {
    let requested = match q.tenant.as_deref() {
        Some(t) => Some(admin.tenant(t).await?.id),
        None => None,
    };
    let asked_user = q
        .user
        .as_deref()
        .map(|u| {
            u.parse::<i64>()
                .map(UserId)
                .map_err(|_| bad_param("user", "`user` must be a user id"))
        })
        .transpose()?;
    let (tenant, user) = match who.user() {
        None => (requested, asked_user),
        Some(u) => {
            if requested.is_some_and(|t| t != u.user.tenant_id) {
                return Err(not_found("tenant"));
            }
            let user = if u.user.role == Role::Member {
                Some(u.user.id)
            } else {
                asked_user
            };
            (Some(u.user.tenant_id), user)
        }
    };
    let (from_ms, to_ms) = range_ms(q.from.as_deref(), q.to.as_deref(), (i64::MIN, i64::MAX))?;
    Ok(UsageQuery {
        tenant,
        user,
        model: q.model.clone(),
        from_ms,
        to_ms,
        before: listing::usage_cursor(q.cursor.as_deref())?,
        limit,
    })
}

/// Usage records, newest first: a tenant's (tenant admin, viewer), a member's own, or every
/// tenant's (operator). `format=csv` downloads the range.
#[utoipa::path(get, path = "/admin/usage", tag = "usage", security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = Page<UsageOut>, description = "A page (JSON) or the whole range (text/csv)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_usage(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    QueryParams(q): QueryParams<UsageParams>,
) -> ApiResult<Response> {
    match q.format.as_deref() {
        None | Some("json") => {}
        Some("csv") => {
            let query = usage_query(&admin, &who, &q, crate::admin::wire::MAX_PAGE).await?;
            return Ok(Export::Usage(query).response(admin));
        }
        Some(_) => return Err(bad_param("format", "`format` must be json or csv").into()),
    }
    let limit = page_limit(q.limit, 100)?;
    let query = usage_query(&admin, &who, &q, limit).await?;
    let page = admin.blocking(move |a| a.store.usage_page(&query)).await?;
    let next_cursor = page
        .last()
        .filter(|_| page.len() == limit as usize)
        .map(|(p, _)| listing::usage_next_cursor(*p));
    let names = admin
        .names_of(page.iter().filter_map(|(_, e)| e.tenant_id))
        .await?;
    let data = page
        .into_iter()
        .map(|(_, e)| usage_out(e, &names))
        .collect();
    Ok(Json(Page { data, next_cursor }).into_response())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsParams {
    /// At or after (RFC 3339 or unix seconds; default 30 days ago).
    pub from: Option<String>,
    /// Before (RFC 3339 or unix seconds; default now).
    pub to: Option<String>,
    /// `hour`, `day` or `total` (default).
    pub granularity: Option<String>,
    /// `none` (default), `user`, `group` (also `department`, `project`), `key`, `model` or
    /// `channel`.
    pub group_by: Option<String>,
    /// Only this user's calls (members: always their own).
    pub user: Option<i64>,
    /// The viewer's zone, minutes east of UTC (-840 to 840; default 0): `day` buckets start at
    /// its midnight (to the hour, as the roll-ups are hourly).
    pub tz_offset: Option<i32>,
}

/// One bucket of analytics.
#[derive(Serialize, ToSchema)]
pub struct AnalyticsRowOut {
    /// Start of the bucket; absent for totals.
    pub bucket: Option<String>,
    /// The dimension's value: an id (user, group, key), a model or a channel; empty when not
    /// grouped, `0` for calls without one.
    pub key: String,
    /// The name of the user (email), group or key, when grouped by one.
    pub name: Option<String>,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
    pub credits: String,
}

#[derive(Serialize, ToSchema)]
pub struct AnalyticsOut {
    pub tenant_id: i64,
    pub from: String,
    pub to: String,
    pub data: Vec<AnalyticsRowOut>,
}

/// `from` and `to` (unix seconds) of an analytics query; default: the last 30 days.
fn window_secs(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), GatewayError> {
    let now_ms = crate::tenancy::unix_now().saturating_mul(1000);
    let (from, to) = range_ms(from, to, (now_ms - 30 * 86_400_000, now_ms + 1000))?;
    Ok((
        from.div_euclid(1000),
        to.saturating_add(999).div_euclid(1000),
    ))
}

/// Requests, tokens and credits over time, by user, department, key, model or channel, from
/// the hourly roll-ups (tenant admin, viewer; members their own calls).
#[utoipa::path(get, path = "/admin/tenants/{t}/analytics", tag = "usage", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), AnalyticsParams),
    responses((status = 200, body = AnalyticsOut), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn analytics(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<AnalyticsParams>,
) -> ApiResult<Json<AnalyticsOut>> {
    let tenant = admin.tenant(&t).await?.id;
    let role = who.role_in(tenant)?;
    let (from, to) = window_secs(q.from.as_deref(), q.to.as_deref())?;
    let granularity = match q.granularity.as_deref().unwrap_or("total") {
        "hour" => Granularity::Hour,
        "day" => Granularity::Day,
        "total" => Granularity::Total,
        _ => {
            return Err(bad_param("granularity", "`granularity` must be hour, day or total").into())
        }
    };
    let group_by = match q.group_by.as_deref().unwrap_or("none") {
        "none" => Dimension::None,
        "user" => Dimension::User,
        "group" | "department" | "project" => Dimension::Group,
        "key" => Dimension::Key,
        "model" => Dimension::Model,
        "channel" => Dimension::Channel,
        _ => {
            return Err(bad_param(
                "group_by",
                "`group_by` must be none, user, group, key, model or channel",
            )
            .into())
        }
    };
    let day_offset = match q.tz_offset.unwrap_or(0) {
        m @ -840..=840 => i64::from(m) * 60,
        _ => {
            return Err(bad_param(
                "tz_offset",
                "`tz_offset` must be minutes east of UTC, from -840 to 840",
            )
            .into())
        }
    };
    // Members see their own calls only.
    let user = match (who.user(), role) {
        (Some(u), Role::Member) => Some(u.user.id),
        _ => q.user.map(UserId),
    };
    let query = AnalyticsQuery {
        tenant,
        from,
        to,
        granularity,
        group_by,
        user,
        day_offset,
    };
    let rows = admin.blocking(move |a| a.store.analytics(&query)).await?;
    let names = match group_by {
        Dimension::User | Dimension::Group | Dimension::Key => admin.names(&[tenant]).await?,
        _ => Names::default(),
    };
    let name = |key: &str| {
        let id = key.parse::<i64>().ok();
        match group_by {
            Dimension::User => names.user_email(id),
            Dimension::Group => names.group(id),
            Dimension::Key => names.key(id),
            _ => None,
        }
    };
    let data = rows
        .into_iter()
        .map(|r| AnalyticsRowOut {
            bucket: (granularity != Granularity::Total).then(|| time(r.bucket)),
            name: name(&r.key),
            key: r.key,
            requests: r.requests,
            errors: r.errors,
            prompt_tokens: r.prompt_tokens,
            cached_tokens: r.cached_tokens,
            cache_write_tokens: r.cache_write_tokens,
            completion_tokens: r.completion_tokens,
            reasoning_tokens: r.reasoning_tokens,
            credits: credits(r.cost_nano),
        })
        .collect();
    Ok(Json(AnalyticsOut {
        tenant_id: tenant.0,
        from: time(from),
        to: time(to),
        data,
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    /// At or after (RFC 3339 or unix seconds; default 30 days ago).
    pub from: Option<String>,
    /// Before (RFC 3339 or unix seconds; default now).
    pub to: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TierSavings {
    pub tier: String,
    pub calls: i64,
    pub cost: String,
    /// What the same calls would have cost on the strongest tier.
    pub baseline_cost: String,
}

#[derive(Serialize, ToSchema)]
pub struct RoutingOut {
    pub tenant_id: i64,
    pub from: String,
    pub to: String,
    pub routed_calls: i64,
    pub cost: String,
    pub strong_tier_cost: String,
    pub saved: String,
    /// `saved / strong_tier_cost`, 0 to 1.
    pub saved_share: f64,
    pub by_tier: Vec<TierSavings>,
}

/// What `model: "auto"` routing cost against sending every routed call to the strongest tier
/// (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/routing", tag = "usage", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), RangeParams),
    responses((status = 200, body = RoutingOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn routing(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<RangeParams>,
) -> ApiResult<Json<RoutingOut>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let (from, to) = window_secs(q.from.as_deref(), q.to.as_deref())?;
    let rows = admin
        .blocking(move |a| a.store.routing_savings(tenant, from * 1000, to * 1000))
        .await?;
    let (cost, baseline, calls) = rows.iter().fold((0i64, 0i64, 0i64), |acc, r| {
        (
            acc.0 + r.cost_nano,
            acc.1 + r.baseline_cost_nano,
            acc.2 + r.calls,
        )
    });
    Ok(Json(RoutingOut {
        tenant_id: tenant.0,
        from: time(from),
        to: time(to),
        routed_calls: calls,
        cost: credits(cost),
        strong_tier_cost: credits(baseline),
        saved: credits(baseline - cost),
        saved_share: if baseline > 0 {
            (baseline - cost) as f64 / baseline as f64
        } else {
            0.0
        },
        by_tier: rows
            .iter()
            .map(|r| TierSavings {
                tier: r.tier.clone(),
                calls: r.calls,
                cost: credits(r.cost_nano),
                baseline_cost: credits(r.baseline_cost_nano),
            })
            .collect(),
    }))
}
