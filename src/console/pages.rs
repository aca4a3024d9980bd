//! The console's pages: one GET handler per page and one POST handler per form. Each renders
//! from admin API answers (`Console::call`) with the signed-in session's token.
// A refused request's answer is a whole page, returned as the `Err` of the checks (sign-in,
// CSRF) that refuse it; boxing it would only add an allocation to every refusal.
#![allow(clippy::result_large_err)]

use super::{charts, i18n, Console, Ctx, Failure, LANG_COOKIE, SESSION_COOKIE};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, Response, StatusCode};
use axum::routing::{get, post};
use minijinja::value::Value as MjValue;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Map, Value};
use std::sync::Arc;

type C = State<Arc<Console>>;
type Page = Response<Body>;

/// Every template, compiled into the binary.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("invite.html", include_str!("templates/invite.html")),
    ("reset.html", include_str!("templates/reset.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("members.html", include_str!("templates/members.html")),
    (
        "departments.html",
        include_str!("templates/departments.html"),
    ),
    ("keys.html", include_str!("templates/keys.html")),
    ("usage.html", include_str!("templates/usage.html")),
    ("records.html", include_str!("templates/records.html")),
    ("redeem.html", include_str!("templates/redeem.html")),
    ("alerts.html", include_str!("templates/alerts.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("sso.html", include_str!("templates/sso.html")),
    ("security.html", include_str!("templates/security.html")),
    ("topup.html", include_str!("templates/topup.html")),
    ("op_orders.html", include_str!("templates/op_orders.html")),
    ("prices.html", include_str!("templates/prices.html")),
    ("routing.html", include_str!("templates/routing.html")),
    ("account.html", include_str!("templates/account.html")),
    ("op_tenants.html", include_str!("templates/op_tenants.html")),
    ("op_codes.html", include_str!("templates/op_codes.html")),
    ("op_promos.html", include_str!("templates/op_promos.html")),
    ("op_health.html", include_str!("templates/op_health.html")),
];

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

pub fn routes() -> axum::Router<Arc<Console>> {
    axum::Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_page).post(login_user))
        .route("/console/login/operator", post(login_operator))
        .route("/console/logout", post(logout))
        .route("/console/lang/{lang}", get(set_lang))
        .route(
            "/console/invite/{token}",
            get(invite_page).post(invite_accept),
        )
        .route(
            "/console/reset",
            get(reset_request_page).post(reset_request),
        )
        .route("/console/reset/{token}", get(reset_page).post(reset_use))
        .route("/console/sso/start", get(sso_start))
        .route("/console/sso/callback", get(sso_callback))
        .route("/console/static/{file}", get(static_file))
        .route("/console/account", get(account_page).post(account_post))
        .route("/console/t/{t}", get(overview))
        .route(
            "/console/t/{t}/members",
            get(members_page).post(members_invite),
        )
        .route("/console/t/{t}/members/{id}", post(members_update))
        .route("/console/t/{t}/quota-period", post(quota_period_post))
        .route("/console/t/{t}/members/{id}/reset", post(members_reset))
        .route("/console/t/{t}/invites/{id}/revoke", post(invite_revoke))
        .route(
            "/console/t/{t}/departments",
            get(departments_page).post(departments_create),
        )
        .route("/console/t/{t}/departments/{id}", post(departments_update))
        .route("/console/t/{t}/keys", get(keys_page).post(keys_create))
        .route("/console/t/{t}/keys/{id}/{action}", post(keys_action))
        .route("/console/t/{t}/usage", get(usage_page))
        .route("/console/t/{t}/usage.csv", get(usage_csv))
        .route("/console/t/{t}/records", get(records_page))
        .route("/console/t/{t}/records.csv", get(records_csv))
        .route("/console/t/{t}/redeem", get(redeem_page).post(redeem_post))
        .route("/console/t/{t}/topup", get(topup_page).post(topup_post))
        .route("/console/t/{t}/alerts", get(alerts_page).post(alerts_post))
        .route("/console/t/{t}/audit", get(audit_page))
        .route(
            "/console/t/{t}/security",
            get(security_page).post(security_post),
        )
        .route("/console/t/{t}/audit.csv", get(tenant_audit_csv))
        .route("/console/op/audit", get(op_audit))
        .route("/console/op/audit.csv", get(op_audit_csv))
        .route("/console/t/{t}/prices", get(prices_page))
        .route("/console/t/{t}/routing", get(routing_page))
        .route(
            "/console/op/tenants",
            get(op_tenants).post(op_tenant_create),
        )
        .route("/console/op/tenants/{t}/topup", post(op_topup))
        .route("/console/op/codes", get(op_codes).post(op_codes_create))
        .route("/console/op/promos", get(op_promos).post(op_promos_create))
        .route("/console/op/health", get(op_health))
        .route("/console/op/orders", get(op_orders))
        .route("/console/op/orders/{id}/refund", post(op_refund))
        .route("/console/op/reconciliation.csv", get(op_reconciliation_csv))
        .route("/console/op/reload", post(op_reload))
        .route("/console/{*rest}", get(not_found).post(not_found))
        // A form's address opened as a page (or any other method) looks like a missing page.
        .method_not_allowed_fallback(not_found)
}

// ---------------------------------------------------------------------------------------------
// Templates and formatting

pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    for (name, text) in TEMPLATES {
        if let Err(e) = env.add_template(name, text) {
            tracing::error!(template = name, error = %e, "console template does not compile");
        }
    }
    env.add_filter("cr", |v: MjValue| credits_text(&v, 2));
    env.add_filter("cr4", |v: MjValue| credits_text(&v, 4));
    env.add_filter("rmb", |state: &minijinja::State, v: MjValue| {
        let rate = state
            .lookup("rate")
            .and_then(|r| f64::try_from(r).ok())
            .filter(|r| *r > 0.0)
            .unwrap_or(1.0);
        let yuan = number(&v) / rate;
        let decimals = if yuan != 0.0 && yuan.abs() < 0.01 {
            6
        } else {
            2
        };
        let sign = if yuan < 0.0 { "-" } else { "" };
        format!("{sign}¥{}", group_digits(yuan.abs(), decimals))
    });
    env.add_filter("num", |v: MjValue| group_digits(number(&v), 0));
    env.add_filter("pct", |v: MjValue| format!("{:.1}%", number(&v) * 100.0));
    env.add_filter("lt", |state: &minijinja::State, v: MjValue| {
        let tz = state
            .lookup("tz")
            .and_then(|r| i64::try_from(r).ok())
            .unwrap_or(0);
        local_time(v.as_str().unwrap_or(""), tz as i32)
    });
    env
}

fn number(v: &MjValue) -> f64 {
    if let Some(s) = v.as_str() {
        return s.trim().parse().unwrap_or(0.0);
    }
    f64::try_from(v.clone()).unwrap_or(0.0)
}

fn credits_text(v: &MjValue, decimals: usize) -> String {
    if v.is_none() || v.is_undefined() {
        return "—".into();
    }
    let n = number(v);
    if n != 0.0 && n.abs() < 0.01 {
        return group_digits(n, 6);
    }
    group_digits(n, decimals)
}

/// `1234567.891` -> `1,234,567.89`.
pub fn group_digits(n: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, n.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s.clone(), None),
    };
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    if n < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.insert(0, '-');
    }
    out
}

/// An RFC 3339 time in the viewer's zone (`tz` minutes east of UTC): `2026-12-03 09:41`.
pub fn local_time(rfc3339: &str, tz: i32) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_string();
    };
    t.with_timezone(&zone(tz))
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

fn tz_label(tz: i32) -> String {
    let sign = if tz < 0 { '-' } else { '+' };
    format!("UTC{sign}{:02}:{:02}", tz.abs() / 60, tz.abs() % 60)
}

/// Local midnight (in the viewer's zone) `days_ago` days before today, as RFC 3339.
fn local_midnight(tz: i32, days_ago: i64) -> String {
    let now = now_utc();
    let offset = zone(tz);
    let local = now.with_timezone(&offset).date_naive() - chrono::Duration::days(days_ago);
    format!("{}T00:00:00{}", local.format("%Y-%m-%d"), offset_text(tz))
}

fn now_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(crate::tenancy::unix_now(), 0).unwrap_or_default()
}

/// The viewer's offset from UTC (UTC itself for an impossible value).
fn zone(tz: i32) -> chrono::FixedOffset {
    use chrono::Offset;
    chrono::FixedOffset::east_opt(tz * 60).unwrap_or_else(|| chrono::Utc.fix())
}

fn offset_text(tz: i32) -> String {
    let sign = if tz < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", tz.abs() / 60, tz.abs() % 60)
}

/// The first day of the viewer's current month, local midnight, as RFC 3339.
fn local_month_start(tz: i32) -> String {
    let now = now_utc();
    let offset = zone(tz);
    let d = now.with_timezone(&offset).date_naive();
    format!("{}-01T00:00:00{}", d.format("%Y-%m"), offset_text(tz))
}

/// A `YYYY-MM-DD` from a form (local day) as RFC 3339 at local midnight, `plus_days` later.
fn day_to_rfc3339(day: &str, tz: i32, plus_days: i64) -> Option<String> {
    let d = chrono::NaiveDate::parse_from_str(day.trim(), "%Y-%m-%d").ok()?
        + chrono::Duration::days(plus_days);
    Some(format!(
        "{}T00:00:00{}",
        d.format("%Y-%m-%d"),
        offset_text(tz)
    ))
}

/// The last second of a `YYYY-MM-DD` from a form (local day), as RFC 3339: an expiry picked as
/// a date lasts through that day.
fn day_end_rfc3339(day: &str, tz: i32) -> Option<String> {
    let d = chrono::NaiveDate::parse_from_str(day.trim(), "%Y-%m-%d").ok()?;
    Some(format!(
        "{}T23:59:59{}",
        d.format("%Y-%m-%d"),
        offset_text(tz)
    ))
}

fn local_day(tz: i32, days_ago: i64) -> String {
    let now = now_utc();
    let offset = zone(tz);
    (now.with_timezone(&offset).date_naive() - chrono::Duration::days(days_ago))
        .format("%Y-%m-%d")
        .to_string()
}

/// Percent-encodes a query value.
fn q(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Rendering, sessions and forms

/// A message shown above a page's content.
#[derive(Default)]
struct Flash {
    ok: Option<String>,
    err: Option<String>,
    /// Shown once (a new key's secret, an invitation link, new codes).
    extra: Value,
}

impl Flash {
    fn err(f: &Failure) -> Flash {
        Flash {
            err: Some(f.message.clone()),
            ..Default::default()
        }
    }

    /// The failure, with what the form held (shown again in its fields, so nothing typed is
    /// lost; never passwords or the CSRF token).
    fn err_with(f: &Failure, form: &Form) -> Flash {
        let mut held = Map::new();
        for (k, v) in &form.0 {
            if k == "_csrf" || k.contains("password") || k.contains("secret") || k == "confirm" {
                continue;
            }
            match held.get_mut(k) {
                Some(Value::Array(a)) => a.push(json!(v)),
                Some(one) => *one = json!([one.clone(), v]),
                None => {
                    held.insert(k.clone(), json!(v));
                }
            }
        }
        Flash {
            err: Some(f.message.clone()),
            extra: json!({ "form": held }),
            ..Default::default()
        }
    }
}

impl Console {
    fn render(
        &self,
        cx: &Ctx,
        me: &Value,
        name: &str,
        status: StatusCode,
        mut vars: Map<String, Value>,
    ) -> Page {
        let rate = rust_decimal::prelude::ToPrimitive::to_f64(
            &self.admin().app.config().billing.credits_per_rmb,
        )
        .unwrap_or(1.0);
        let role = me["role"].as_str().unwrap_or("").to_string();
        // Messages from the API in the viewer's language.
        for k in ["err", "error", "message"] {
            if let Some(m) = vars.get(k).and_then(Value::as_str) {
                let m = i18n::api_message(cx.lang, m);
                vars.insert(k.into(), json!(m));
            }
        }
        // A posted form shown again with what was wrong in it is a page like any other (a 4xx
        // would be a failed load to the browser); refusals (403), missing pages and throttles
        // keep their status.
        let status = match status.as_u16() {
            400 | 401 | 404 | 409 | 422 if cx.posted && name != "error.html" => StatusCode::OK,
            _ => status,
        };
        vars.insert("lang".into(), json!(cx.lang.code()));
        vars.insert("lang_html".into(), json!(cx.lang.html()));
        vars.insert("me".into(), me.clone());
        vars.insert("role".into(), json!(role));
        vars.insert("is_operator".into(), json!(role == "operator"));
        vars.insert(
            "can_manage".into(),
            json!(role == "operator" || role == "tenant_admin"),
        );
        vars.insert("can_see_tenant".into(), json!(role != "member"));
        vars.insert("csrf".into(), me["csrf"].clone());
        vars.insert("rate".into(), json!(rate));
        vars.insert(
            "mail".into(),
            json!(self.admin().app.config().smtp.is_some()),
        );
        vars.insert("tz".into(), json!(cx.tz));
        vars.insert("tz_label".into(), json!(tz_label(cx.tz)));
        vars.insert("path".into(), json!(cx.path));
        vars.insert("here".into(), json!(here(cx)));
        let ctx =
            minijinja::context! { tr => i18n::value(cx.lang), ..MjValue::from_serialize(&vars) };
        let html = self.env.get_template(name).and_then(|t| t.render(ctx));
        match html {
            Ok(html) => {
                let mut r = Response::new(Body::from(html));
                *r.status_mut() = status;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            Err(e) => {
                tracing::error!(template = name, error = %e, "console page failed to render");
                let mut r = Response::new(Body::from("The page could not be drawn."));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
        }
    }

    /// The error page (for a failed API call the page depends on: 404 looks like any missing page).
    fn failure(&self, cx: &Ctx, me: &Value, f: &Failure) -> Page {
        let mut vars = Map::new();
        vars.insert("status".into(), json!(f.status.as_u16()));
        vars.insert("message".into(), json!(f.message));
        self.render(cx, me, "error.html", f.status, vars)
    }

    /// The signed-in user (`GET /admin/me`), or the answer that sends the browser to sign in.
    async fn session(&self, cx: &Ctx) -> Result<Value, Page> {
        if cx.token.is_none() {
            return Err(to_login(cx));
        }
        match self.call(cx, Method::GET, "/admin/me", None).await {
            Ok(me) => Ok(me),
            Err(f) if f.status == StatusCode::UNAUTHORIZED => {
                let mut r = to_login(cx);
                clear_session_cookie(&mut r);
                Err(r)
            }
            Err(f) => Err(self.failure(cx, &Value::Null, &f)),
        }
    }

    /// A form's CSRF token must be the session's.
    fn check_csrf(&self, cx: &Ctx, me: &Value, form: &Form) -> Result<(), Page> {
        let sent = form.get("_csrf");
        let expected = me["csrf"].as_str().unwrap_or("");
        if expected.is_empty() || !crate::admin::same_secret(sent, expected) {
            return Err(self.failure(
                cx,
                me,
                &Failure {
                    status: StatusCode::FORBIDDEN,
                    message: "This form has expired or did not come from the console. Reload the page and try again.".into(),
                },
            ));
        }
        Ok(())
    }

    async fn get(&self, cx: &Ctx, path: &str) -> Result<Value, Failure> {
        self.call(cx, Method::GET, path, None).await
    }

    /// A record (`path`) of the tenant in the URL: the API checks the caller may touch it; this
    /// checks it is that tenant's, so that a tenant's page never acts on another's record (which
    /// answers like a missing one).
    async fn of_tenant(
        &self,
        cx: &Ctx,
        me: &Value,
        t: &str,
        path: &str,
        what: &str,
    ) -> Result<Value, Page> {
        let record = self
            .get(cx, path)
            .await
            .map_err(|f| self.failure(cx, me, &f))?;
        let tenant = self
            .get(cx, &format!("/admin/tenants/{}", tp(t)))
            .await
            .map_err(|f| self.failure(cx, me, &f))?;
        if record["tenant_id"] != tenant["id"] {
            return Err(self.failure(
                cx,
                me,
                &Failure {
                    status: StatusCode::NOT_FOUND,
                    message: format!("{what} not found"),
                },
            ));
        }
        Ok(record)
    }

    /// A page that lists one API listing's `data` as `name`.
    async fn list_page(
        &self,
        cx: &Ctx,
        me: &Value,
        mut vars: Map<String, Value>,
        (template, status): (&str, StatusCode),
        path: &str,
        name: &str,
    ) -> Page {
        // The page's own `cursor` picks the listing's page; the next one is linked.
        let path = match params(cx).opt("cursor") {
            Some(cur) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}cursor={}", q(&cur))
            }
            None => path.to_string(),
        };
        let page = match self.get(cx, &path).await {
            Ok(p) => p,
            Err(f) => return self.failure(cx, me, &f),
        };
        vars.insert(name.into(), page["data"].clone());
        let next = page["next_cursor"]
            .as_str()
            .map(|cur| format!("{}?cursor={}", cx.path, q(cur)));
        vars.insert("next_page".into(), json!(next));
        self.render(cx, me, template, status, vars)
    }
}

/// A CSV download straight from the API: its answer, or the console's failure page naming
/// `what` could not be exported.
async fn download(c: &Console, cx: &Ctx, me: &Value, path: &str, what: &str) -> Result<Page, Page> {
    let r = c.raw(cx, Method::GET, path, None).await;
    if r.status().is_success() {
        return Ok(r);
    }
    Err(c.failure(
        cx,
        me,
        &Failure {
            status: r.status(),
            message: format!("{what} could not be exported."),
        },
    ))
}

/// The page's path and query, for links that come back to it.
fn here(cx: &Ctx) -> String {
    if cx.query.is_empty() {
        cx.path.clone()
    } else {
        format!("{}?{}", cx.path, cx.query)
    }
}

fn to_login(cx: &Ctx) -> Page {
    let next = here(cx);
    let target = if next.starts_with("/console/t/")
        || next.starts_with("/console/op/")
        || next.starts_with("/console/account")
    {
        format!("/console/login?next={}", q(&next))
    } else {
        "/console/login".into()
    };
    redirect(&target)
}

/// After a change with something to show once (a new secret, codes, an invitation or reset
/// link): the browser goes to the page `to` with a GET, so that reloading it changes nothing
/// again, and the message rides along in a cookie for that page's path only (HttpOnly,
/// SameSite=Strict, two minutes; dropped by the page that shows it). `None` when the message is
/// too big for a cookie: the page is then the POST's own answer.
fn flash_redirect(c: &Console, to: &str, flash: &Flash) -> Option<Page> {
    use base64::Engine;
    let text = json!({"ok": flash.ok, "extra": flash.extra}).to_string();
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    if value.len() > 3000 {
        return None;
    }
    let path = to.split('?').next().unwrap_or(to);
    let secure = if c.admin().app.config().admin.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={value}; Max-Age=120; Path={path}; HttpOnly; SameSite=Strict{secure}",
        super::FLASH_COOKIE
    );
    let mut r = redirect(to);
    r.headers_mut()
        .append(header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?);
    Some(r)
}

/// A carried one-time message, if the cookie holds one.
fn read_flash(value: &str) -> Option<Flash> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(Flash {
        ok: v["ok"].as_str().map(str::to_string),
        err: None,
        extra: v["extra"].clone(),
    })
}

fn redirect(to: &str) -> Page {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn cookie_attrs(secure: bool) -> &'static str {
    if secure {
        "; Path=/console; HttpOnly; SameSite=Lax; Secure"
    } else {
        "; Path=/console; HttpOnly; SameSite=Lax"
    }
}

fn clear_session_cookie(r: &mut Page) {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Max-Age=0; Path=/console; HttpOnly; SameSite=Lax"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A posted form's fields (repeated names kept in order).
#[derive(Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    }
    /// A field as typed (passwords are not trimmed).
    fn raw(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
    fn opt(&self, name: &str) -> Option<String> {
        Some(self.get(name))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

async fn read_form(req: Request) -> (Ctx, Form) {
    let (parts, body) = req.into_parts();
    let mut cx = Ctx::new(&parts.headers, &parts.uri, &parts.extensions);
    cx.posted = true;
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let fields = form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (cx, Form(fields))
}

fn ctx_of(req: &Request) -> Ctx {
    Ctx::new(req.headers(), req.uri(), req.extensions())
}

/// Query parameters of the page's own URL.
fn params(cx: &Ctx) -> Form {
    Form(
        form_urlencoded::parse(cx.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

/// Whole numbers typed in forms: empty is absent; anything else must parse. `label` is the
/// field's label key (or its text), named in the message.
fn num_field(cx: &Ctx, form: &Form, name: &str, label: &str) -> Result<Option<Value>, Failure> {
    match form.opt(name) {
        None => Ok(None),
        Some(v) => match v.replace(',', "").parse::<u64>() {
            Ok(n) if n <= 1_000_000_000_000 => Ok(Some(json!(n))),
            _ => Err(field_failure(cx, label, "bad_whole_number")),
        },
    }
}

/// Amounts typed in forms (credits or RMB): empty is absent; else a decimal number from 0 to
/// 10^12 (thousands separators allowed), sent on as the API's decimal string.
fn amount_field(cx: &Ctx, form: &Form, name: &str, label: &str) -> Result<Option<String>, Failure> {
    let Some(v) = form.opt(name) else {
        return Ok(None);
    };
    match v.replace(',', "").parse::<rust_decimal::Decimal>() {
        Ok(d)
            if !d.is_sign_negative() && d <= rust_decimal::Decimal::from(1_000_000_000_000i64) =>
        {
            Ok(Some(d.normalize().to_string()))
        }
        _ => Err(field_failure(cx, label, "bad_amount")),
    }
}

/// "<label>: <what is wrong>", in the viewer's language.
fn field_failure(cx: &Ctx, label: &str, what: &str) -> Failure {
    let name = match i18n::text(cx.lang, label) {
        t if t.is_empty() => label.to_string(),
        t => t,
    };
    Failure {
        status: StatusCode::BAD_REQUEST,
        message: format!("{name}: {}", i18n::text(cx.lang, what)),
    }
}

/// Runs a form's field checks; the first failure is answered by `$render` (the page again).
macro_rules! field {
    ($check:expr, $fail:expr) => {
        match $check {
            Ok(v) => v,
            Err(f) => return $fail(f).await,
        }
    };
}

macro_rules! signed_in {
    ($c:expr, $cx:expr) => {
        match $c.session(&$cx).await {
            Ok(me) => me,
            Err(page) => return page,
        }
    };
}

/// Operator pages answer like missing pages to anyone else.
macro_rules! operator_only {
    ($c:expr, $cx:expr) => {{
        let me = signed_in!($c, $cx);
        if me["role"] != "operator" {
            return $c.failure(
                &$cx,
                &me,
                &Failure {
                    status: StatusCode::NOT_FOUND,
                    message: "page not found".into(),
                },
            );
        }
        me
    }};
}

/// A posted form of a signed-in user (`signed_in`) or the operator (`operator_only`), with
/// the session's CSRF token checked: `(ctx, form, me)`, or the page that refuses it.
macro_rules! posted {
    ($c:expr, $req:expr, $who:ident) => {{
        let (cx, form) = read_form($req).await;
        let me = $who!($c, cx);
        if let Err(p) = $c.check_csrf(&cx, &me, &form) {
            return p;
        }
        (cx, form, me)
    }};
}

macro_rules! try_api {
    ($c:expr, $cx:expr, $me:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(f) => return $c.failure(&$cx, &$me, &f),
        }
    };
}

/// Tenant path values are ids or names; they go to the API as one percent-encoded path
/// segment (a name with a space is `Acme%20Corp`, not the query form's `Acme+Corp`).
fn tp(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sign-in, sign-out, language, invitations, static files

async fn home(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    match me["tenant_id"].as_i64() {
        Some(t) => redirect(&format!("/console/t/{t}")),
        None => redirect("/console/op/tenants"),
    }
}

async fn login_page(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let p = params(&cx);
    let mut vars = Map::new();
    vars.insert("next".into(), json!(safe_next(p.get("next"))));
    vars.insert("tenant".into(), json!(p.get("tenant")));
    vars.insert("error".into(), Value::Null);
    c.render(&cx, &Value::Null, "login.html", StatusCode::OK, vars)
}

/// Only console paths are followed after sign-in (no open redirect).
fn safe_next(next: &str) -> String {
    // Only a path of the console's own: no dot segments (plain or percent-encoded), no
    // backslashes, no scheme, no control characters.
    let path = next.split(['?', '#']).next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    let dot_segment = path
        .split('/')
        .any(|seg| seg == "." || seg == ".." || seg.contains("%2e") || seg.contains("%2E"));
    if next.starts_with("/console/")
        && !next.starts_with("//")
        && !next.contains("://")
        && !next.contains('\\')
        && !lower.contains("%2f")
        && !lower.contains("%5c")
        && !next.chars().any(char::is_control)
        && !dot_segment
    {
        next.to_string()
    } else {
        "/console".into()
    }
}

async fn signed_in_answer(c: &Console, cx: &Ctx, form: &Form, body: Value) -> Page {
    match c
        .call(cx, Method::POST, "/admin/sessions", Some(body))
        .await
    {
        Ok(s) => {
            let mut r = redirect(&safe_next(form.get("next")));
            set_session_cookie(c, &mut r, &s);
            r
        }
        Err(f) => {
            let mut vars = Map::new();
            vars.insert("next".into(), json!(safe_next(form.get("next"))));
            vars.insert("tenant".into(), json!(form.get("tenant")));
            vars.insert("email".into(), json!(form.get("email")));
            vars.insert("error".into(), json!(f.message));
            c.render(cx, &Value::Null, "login.html", f.status, vars)
        }
    }
}

/// Sets the cookie of a session the API opened (`s`: its answer).
fn set_session_cookie(c: &Console, r: &mut Page, s: &Value) {
    let token = s["token"].as_str().unwrap_or_default();
    let secure = c.admin().app.config().admin.secure_cookies;
    let hours = c.admin().app.config().admin.session_hours as u64;
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Max-Age={}{}",
        hours * 3600,
        cookie_attrs(secure)
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The cookie that binds a single sign-on in flight to the browser that started it.
const SSO_COOKIE: &str = "tg_sso";

fn sso_cookie(c: &Console, r: &mut Page, state: &str, max_age: i64) {
    let secure = if c.admin().app.config().admin.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SSO_COOKIE}={state}; Max-Age={max_age}; Path=/console/sso; HttpOnly; SameSite=Lax{secure}"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn login_error(c: &Console, cx: &Ctx, tenant: &str, next: &str, f: &Failure) -> Page {
    let mut vars = Map::new();
    vars.insert("next".into(), json!(safe_next(next)));
    vars.insert("tenant".into(), json!(tenant));
    vars.insert("error".into(), json!(f.message));
    c.render(cx, &Value::Null, "login.html", f.status, vars)
}

/// Starts a single sign-on: the provider's URL, reached by a page that refreshes to it (a form
/// may not redirect to another origin under the console's `form-action 'self'`), and a cookie
/// with the flow's state so that only this browser can finish it.
async fn sso_start(State(c): C, req: Request) -> Page {
    let mut cx = ctx_of(&req);
    cx.token = None;
    let p = params(&cx);
    let (tenant, next) = (p.get("tenant").to_string(), p.get("next").to_string());
    let body =
        json!({"tenant": tenant, "next": Some(safe_next(&next)).filter(|n| n != "/console")});
    match c
        .call(&cx, Method::POST, "/admin/sso/start", Some(body))
        .await
    {
        Ok(v) => {
            let url = v["authorization_url"].as_str().unwrap_or_default();
            let mut vars = Map::new();
            vars.insert("url".into(), json!(url));
            let mut r = c.render(&cx, &Value::Null, "sso.html", StatusCode::OK, vars);
            sso_cookie(
                &c,
                &mut r,
                v["state"].as_str().unwrap_or_default(),
                crate::sso::FLOW_SECS,
            );
            r
        }
        Err(f) => login_error(&c, &cx, &tenant, &next, &f),
    }
}

/// The provider sends the browser back here: the state must be the one this browser started
/// with; the API finishes the sign-in and opens the session.
async fn sso_callback(State(c): C, req: Request) -> Page {
    let bound = super::cookies(req.headers())
        .into_iter()
        .find(|(k, _)| k == SSO_COOKIE)
        .map(|(_, v)| v);
    let mut cx = ctx_of(&req);
    cx.token = None;
    let p = params(&cx);
    let state = p.get("state").to_string();
    if state.is_empty() || bound.as_deref() != Some(state.as_str()) {
        let f = Failure {
            status: StatusCode::BAD_REQUEST,
            message: i18n::text(cx.lang, "sso_not_bound"),
        };
        return login_error(&c, &cx, "", "", &f);
    }
    let body = json!({
        "state": state, "code": p.opt("code"), "error": p.opt("error"),
        "error_description": p.opt("error_description"), "iss": p.opt("iss"),
    });
    let mut r = match c
        .call(&cx, Method::POST, "/admin/sso/callback", Some(body))
        .await
    {
        Ok(s) => {
            let mut r = redirect(&safe_next(s["next"].as_str().unwrap_or_default()));
            set_session_cookie(&c, &mut r, &s);
            r
        }
        Err(f) => login_error(&c, &cx, "", "", &f),
    };
    sso_cookie(&c, &mut r, "", 0);
    r
}

async fn login_user(State(c): C, req: Request) -> Page {
    let (mut cx, form) = read_form(req).await;
    cx.token = None;
    let body = json!({"tenant": form.get("tenant"), "email": form.get("email"), "password": form.raw("password")});
    signed_in_answer(&c, &cx, &form, body).await
}

async fn login_operator(State(c): C, req: Request) -> Page {
    let (mut cx, form) = read_form(req).await;
    cx.token = None;
    let body = json!({"operator_token": form.get("operator_token")});
    signed_in_answer(&c, &cx, &form, body).await
}

async fn logout(State(c): C, req: Request) -> Page {
    let (cx, form) = read_form(req).await;
    if let Ok(me) = c.session(&cx).await {
        if c.check_csrf(&cx, &me, &form).is_ok() {
            let _ = c
                .call(&cx, Method::DELETE, "/admin/sessions/current", None)
                .await;
        }
    }
    let mut r = redirect("/console/login");
    clear_session_cookie(&mut r);
    r
}

async fn set_lang(Path(lang): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let lang = i18n::Lang::parse(&lang).unwrap_or(i18n::Lang::En);
    let back = safe_next(params(&cx).get("back"));
    let mut r = redirect(&back);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={}; Max-Age=31536000; Path=/console; SameSite=Lax",
        lang.code()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn invite_page(State(c): C, Path(token): Path<String>, req: Request) -> Page {
    let mut cx = ctx_of(&req);
    cx.token = None;
    let mut vars = Map::new();
    vars.insert("token".into(), json!(token));
    vars.insert("error".into(), Value::Null);
    vars.insert("min".into(), json!(crate::admin::MIN_PASSWORD));
    // Who it is for and whether it can still be used, before anything is typed.
    let seen = c
        .call(
            &cx,
            Method::POST,
            "/admin/invites/lookup",
            Some(json!({ "token": token })),
        )
        .await;
    // A link that can no longer be used opens a page saying so (a page, not a failed load).
    let state = match seen {
        Ok(v) => {
            let state = v["state"].as_str().unwrap_or("unknown").to_string();
            vars.insert("invite".into(), v);
            state
        }
        Err(_) => "unknown".to_string(),
    };
    if state != "pending" {
        let msg = i18n::text(cx.lang, &format!("invite_state_{state}"));
        vars.insert("error".into(), json!(msg));
        vars.insert("closed".into(), json!(true));
    }
    c.render(&cx, &Value::Null, "invite.html", StatusCode::OK, vars)
}

async fn invite_accept(State(c): C, Path(token): Path<String>, req: Request) -> Page {
    let (mut cx, form) = read_form(req).await;
    cx.token = None;
    let (password, confirm) = (form.raw("password"), form.raw("confirm"));
    let fail = |msg: String, status: StatusCode| {
        let mut vars = Map::new();
        vars.insert("token".into(), json!(token));
        vars.insert("error".into(), json!(msg));
        vars.insert("min".into(), json!(crate::admin::MIN_PASSWORD));
        vars.insert("name".into(), json!(form.get("name")));
        c.render(&cx, &Value::Null, "invite.html", status, vars)
    };
    if password != confirm {
        let msg = i18n::text(cx.lang, "passwords_differ");
        return fail(msg, StatusCode::BAD_REQUEST);
    }
    let body = json!({"token": token, "name": form.get("name"), "password": password});
    match c
        .call(&cx, Method::POST, "/admin/invites/accept", Some(body))
        .await
    {
        Ok(v) => {
            let user = &v["user"];
            let tenant = user["tenant_id"].as_i64().unwrap_or(0);
            let sign_in =
                json!({"tenant": tenant.to_string(), "email": user["email"], "password": password});
            let f = Form(vec![("next".into(), format!("/console/t/{tenant}"))]);
            signed_in_answer(&c, &cx, &f, sign_in).await
        }
        Err(f) => fail(f.message, f.status),
    }
}

fn reset_vars(token: Option<&str>, sent: bool, error: Option<String>) -> Map<String, Value> {
    let mut vars = Map::new();
    vars.insert("token".into(), json!(token));
    vars.insert("sent".into(), json!(sent));
    vars.insert("error".into(), json!(error));
    vars.insert("min".into(), json!(crate::admin::MIN_PASSWORD));
    vars
}

async fn reset_request_page(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    c.render(
        &cx,
        &Value::Null,
        "reset.html",
        StatusCode::OK,
        reset_vars(None, false, None),
    )
}

async fn reset_request(State(c): C, req: Request) -> Page {
    let (mut cx, form) = read_form(req).await;
    cx.token = None;
    let body = json!({"tenant": form.get("tenant"), "email": form.get("email")});
    match c
        .call(&cx, Method::POST, "/admin/password-resets", Some(body))
        .await
    {
        Ok(_) => c.render(
            &cx,
            &Value::Null,
            "reset.html",
            StatusCode::OK,
            reset_vars(None, true, None),
        ),
        Err(f) => c.render(
            &cx,
            &Value::Null,
            "reset.html",
            f.status,
            reset_vars(None, false, Some(f.message)),
        ),
    }
}

async fn reset_page(State(c): C, Path(token): Path<String>, req: Request) -> Page {
    let mut cx = ctx_of(&req);
    cx.token = None;
    // A link that can no longer be used says so at once (and offers a new one), not after a
    // password was typed.
    let seen = c
        .call(
            &cx,
            Method::POST,
            "/admin/password-resets/lookup",
            Some(json!({ "token": token })),
        )
        .await;
    let state = seen
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let vars = if state == "pending" {
        reset_vars(Some(&token), false, None)
    } else {
        let msg = i18n::text(cx.lang, &format!("reset_state_{state}"));
        reset_vars(None, false, Some(msg))
    };
    c.render(&cx, &Value::Null, "reset.html", StatusCode::OK, vars)
}

async fn reset_use(State(c): C, Path(token): Path<String>, req: Request) -> Page {
    let (mut cx, form) = read_form(req).await;
    cx.token = None;
    let (password, confirm) = (form.raw("password"), form.raw("confirm"));
    if password != confirm {
        let msg = Some(i18n::text(cx.lang, "passwords_differ"));
        return c.render(
            &cx,
            &Value::Null,
            "reset.html",
            StatusCode::BAD_REQUEST,
            reset_vars(Some(&token), false, msg),
        );
    }
    let body = json!({"token": token, "password": password});
    match c
        .call(
            &cx,
            Method::POST,
            "/admin/password-resets/accept",
            Some(body),
        )
        .await
    {
        Ok(v) => {
            let tenant = v["tenant_id"].as_i64().unwrap_or(0);
            let sign_in =
                json!({"tenant": tenant.to_string(), "email": v["email"], "password": password});
            let f = Form(vec![("next".into(), format!("/console/t/{tenant}"))]);
            signed_in_answer(&c, &cx, &f, sign_in).await
        }
        Err(f) => c.render(
            &cx,
            &Value::Null,
            "reset.html",
            f.status,
            reset_vars(Some(&token), false, Some(f.message)),
        ),
    }
}

async fn static_file(Path(file): Path<String>) -> Page {
    let (body, kind) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        _ => return plain_not_found(),
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

fn plain_not_found() -> Page {
    let mut r = Response::new(Body::from("Not found"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

async fn not_found(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = c.session(&cx).await.unwrap_or(Value::Null);
    c.failure(
        &cx,
        &me,
        &Failure {
            status: StatusCode::NOT_FOUND,
            message: "page not found".into(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Account

async fn account_page(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    account_render(&c, &cx, &me, Flash::default(), StatusCode::OK)
}

fn account_render(c: &Console, cx: &Ctx, me: &Value, flash: Flash, status: StatusCode) -> Page {
    let mut vars = Map::new();
    vars.insert("ok".into(), json!(flash.ok));
    vars.insert("err".into(), json!(flash.err));
    vars.insert("min".into(), json!(crate::admin::MIN_PASSWORD));
    c.render(cx, me, "account.html", status, vars)
}

async fn account_post(State(c): C, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    if form.raw("new_password") != form.raw("confirm") {
        let msg = Some(i18n::text(cx.lang, "passwords_differ"));
        return account_render(
            &c,
            &cx,
            &me,
            Flash {
                err: msg,
                ..Default::default()
            },
            StatusCode::BAD_REQUEST,
        );
    }
    let body = json!({"current_password": form.raw("current_password"), "new_password": form.raw("new_password")});
    match c
        .call(&cx, Method::PUT, "/admin/me/password", Some(body))
        .await
    {
        Ok(_) => account_render(
            &c,
            &cx,
            &me,
            Flash {
                ok: Some("password_changed".into()),
                ..Default::default()
            },
            StatusCode::OK,
        ),
        Err(f) => account_render(&c, &cx, &me, Flash::err(&f), f.status),
    }
}

// ---------------------------------------------------------------------------------------------
// Tenant pages

/// Variables every tenant page has: the tenant's record and id for links.
async fn tenant_vars(c: &Console, cx: &Ctx, t: &str) -> Result<Map<String, Value>, Failure> {
    let tenant = c.get(cx, &format!("/admin/tenants/{}", tp(t))).await?;
    let mut vars = Map::new();
    vars.insert("t".into(), tenant["id"].clone());
    vars.insert("tenant".into(), tenant);
    vars.insert("ok".into(), Value::Null);
    vars.insert("err".into(), Value::Null);
    vars.insert("extra".into(), Value::Null);
    Ok(vars)
}

fn apply_flash(vars: &mut Map<String, Value>, cx: &Ctx, flash: Flash) {
    let done = params(cx).opt("done");
    // The one-time message a change's redirect carried here (only when the page shows no
    // answer of its own).
    let flash = match (&flash, cx.flash.as_deref().and_then(read_flash)) {
        (
            Flash {
                ok: None,
                err: None,
                extra: Value::Null,
            },
            Some(carried),
        ) => carried,
        _ => flash,
    };
    vars.insert("ok".into(), json!(flash.ok.or(done)));
    vars.insert("err".into(), json!(flash.err));
    vars.insert("extra".into(), flash.extra);
}

/// Sorted by credits, largest first, at most `n`.
fn top(rows: &Value, n: usize) -> Value {
    let mut v: Vec<Value> = rows["data"].as_array().cloned().unwrap_or_default();
    v.sort_by(|a, b| {
        let f = |x: &Value| {
            x["credits"]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        f(b).partial_cmp(&f(a)).unwrap_or(std::cmp::Ordering::Equal)
    });
    v.truncate(n);
    Value::Array(v)
}

/// A bar per bucket of the window `[from, to)` (RFC 3339; buckets of an hour or of the viewer's
/// day), zero where the API answered no row, so that the chart's time axis is even.
fn series_chart(rows: &Value, tz: i32, from: &str, to: &str, hourly: bool) -> charts::BarChart {
    let secs = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.timestamp())
    };
    let mut by_bucket = std::collections::HashMap::new();
    for r in rows["data"].as_array().into_iter().flatten() {
        if let Some(b) = r["bucket"].as_str().and_then(secs) {
            let v = r["credits"]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            *by_bucket.entry(b).or_insert(0.0) += v;
        }
    }
    let step = if hourly { 3600 } else { 86_400 };
    let mut points = Vec::new();
    if let (Some(from), Some(to)) = (secs(from), secs(to)) {
        let mut b = if hourly {
            from.div_euclid(3600) * 3600
        } else {
            from
        };
        // At most ~2 months of hours (the range's own limit keeps it far below).
        while b < to && points.len() < 24 * 62 {
            let label = chrono::DateTime::from_timestamp(b, 0)
                .map(|t| {
                    let local = t.with_timezone(&zone(tz));
                    if hourly {
                        local.format("%Y-%m-%d %H:%M").to_string()
                    } else {
                        local.format("%Y-%m-%d").to_string()
                    }
                })
                .unwrap_or_default();
            points.push((label, by_bucket.get(&b).copied().unwrap_or(0.0)));
            b += step;
        }
    }
    charts::bars(&points, axis_number)
}

/// An axis label: whole numbers plain, small ones with enough decimals to differ.
fn axis_number(v: f64) -> String {
    if v == 0.0 || v.fract() == 0.0 {
        group_digits(v, 0)
    } else if v.abs() >= 1.0 {
        group_digits(v, 2)
    } else {
        let decimals = (-v.abs().log10()).ceil() as usize + 1;
        group_digits(v, decimals.min(9))
    }
}

fn sum_credits(rows: &Value) -> f64 {
    rows["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["credits"].as_str()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

async fn overview(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let mut vars = try_api!(c, cx, me, tenant_vars(&c, &cx, &t).await);
    apply_flash(&mut vars, &cx, Flash::default());
    let tid = vars["t"].to_string();
    let base = format!("/admin/tenants/{tid}/analytics");
    let month = local_month_start(cx.tz);
    let thirty = local_midnight(cx.tz, 29);
    let today = local_midnight(cx.tz, 0);
    let tomorrow = local_midnight(cx.tz, -1);
    let daily = try_api!(
        c,
        cx,
        me,
        c.get(
            &cx,
            &format!(
                "{base}?granularity=day&from={}&to={}&tz_offset={}",
                q(&thirty),
                q(&tomorrow),
                cx.tz
            )
        )
        .await
    );
    let month_models = try_api!(
        c,
        cx,
        me,
        c.get(&cx, &format!("{base}?group_by=model&from={}", q(&month)))
            .await
    );
    let today_total = try_api!(
        c,
        cx,
        me,
        c.get(&cx, &format!("{base}?from={}", q(&today))).await
    );
    let member = me["role"] == "member";
    if !member {
        let balance = try_api!(
            c,
            cx,
            me,
            c.get(&cx, &format!("/admin/tenants/{tid}/balance")).await
        );
        let users = try_api!(
            c,
            cx,
            me,
            c.get(&cx, &format!("{base}?group_by=user&from={}", q(&month)))
                .await
        );
        let keys = try_api!(
            c,
            cx,
            me,
            c.get(&cx, &format!("{base}?group_by=key&from={}", q(&month)))
                .await
        );
        let avg_daily = sum_credits(&daily) / 30.0;
        let available = balance["available"]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        let low = available <= 0.0 || (avg_daily > 0.0 && available < 7.0 * avg_daily);
        vars.insert("balance".into(), balance);
        vars.insert("top_users".into(), top(&users, 5));
        vars.insert("top_keys".into(), top(&keys, 5));
        vars.insert("low_balance".into(), json!(low));
        vars.insert(
            "days_left".into(),
            json!(if avg_daily > 0.0 {
                (available / avg_daily).floor().max(0.0)
            } else {
                -1.0
            }),
        );
    }
    vars.insert("top_models".into(), top(&month_models, 5));
    vars.insert(
        "month_credits".into(),
        json!(sum_credits(&month_models).to_string()),
    );
    vars.insert(
        "month_requests".into(),
        json!(month_models["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["requests"].as_i64()).sum::<i64>())
            .unwrap_or(0)),
    );
    vars.insert(
        "today".into(),
        today_total["data"].get(0).cloned().unwrap_or(Value::Null),
    );
    vars.insert(
        "chart".into(),
        json!(series_chart(&daily, cx.tz, &thirty, &tomorrow, false)),
    );
    c.render(&cx, &me, "overview.html", StatusCode::OK, vars)
}

async fn members_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    members_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn members_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    let tid = vars["t"].to_string();
    let users = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/tenants/{tid}/users?limit=500"))
            .await
    );
    let groups = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/tenants/{tid}/groups?limit=500"))
            .await
    );
    let invites = if me["role"] == "operator" || me["role"] == "tenant_admin" {
        try_api!(
            c,
            cx,
            me,
            c.get(cx, &format!("/admin/tenants/{tid}/invites?limit=100"))
                .await
        )
    } else {
        json!({"data": []})
    };
    vars.insert("users".into(), users["data"].clone());
    vars.insert("groups".into(), groups["data"].clone());
    vars.insert("invites".into(), invites["data"].clone());
    c.render(cx, me, "members.html", status, vars)
}

async fn members_invite(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let mut body = json!({"email": form.get("email"), "role": form.get("role")});
    if let Some(g) = form.opt("group_id").and_then(|g| g.parse::<i64>().ok()) {
        body["group_id"] = json!(g);
    }
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/tenants/{}/invites", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(v) => {
            let flash = Flash {
                ok: Some("invite_created".into()),
                extra: json!({"invite_url": v["accept_url"], "emailed": v["emailed"], "email": v["invite"]["email"], "email_error": v["email_error"]}),
                ..Default::default()
            };
            let to = format!("/console/t/{}/members", tp(&t));
            match flash_redirect(&c, &to, &flash) {
                Some(r) => r,
                None => members_render(&c, &cx, &me, &t, flash, StatusCode::CREATED).await,
            }
        }
        Err(f) => members_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn members_update(State(c): C, Path((t, id)): Path<(String, i64)>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let fail = |f: Failure| members_render(&c, &cx, &me, &t, Flash::err(&f), f.status);
    let quota = field!(amount_field(&cx, &form, "quota", "quota"), fail);
    let rpm = field!(num_field(&cx, &form, "rpm_limit", "RPM"), fail);
    let tpm = field!(num_field(&cx, &form, "tpm_limit", "TPM"), fail);
    let body = json!({
        "role": form.get("role"),
        "disabled": form.get("disabled") == "on",
        "group_id": form.opt("group_id").and_then(|g| g.parse::<i64>().ok()),
        "quota_credits": quota,
    });
    let path = format!("/admin/users/{id}");
    let mut result = c.call(&cx, Method::PATCH, &path, Some(body)).await;
    if result.is_ok() {
        let body = json!({"rpm_limit": rpm, "tpm_limit": tpm});
        result = c
            .call(&cx, Method::PUT, &format!("{path}/limits"), Some(body))
            .await;
    }
    match result {
        Ok(_) => redirect(&format!("/console/t/{}/members?done=saved", tp(&t))),
        Err(f) => members_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

/// What quotas and budgets count: all time, a day or a month.
async fn quota_period_post(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let body = json!({"period": form.get("period")});
    match c
        .call(
            &cx,
            Method::PUT,
            &format!("/admin/tenants/{}/quota-period", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(_) => redirect(&format!("/console/t/{}/members?done=saved", tp(&t))),
        Err(f) => members_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn members_reset(State(c): C, Path((t, id)): Path<(String, i64)>, req: Request) -> Page {
    let (cx, _form, me) = posted!(c, req, signed_in);
    let user = match c
        .of_tenant(&cx, &me, &t, &format!("/admin/users/{id}"), "user")
        .await
    {
        Ok(u) => u,
        Err(page) => return page,
    };
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/users/{id}/password-reset"),
            None,
        )
        .await
    {
        Ok(v) => {
            let flash = Flash {
                ok: Some("reset_created".into()),
                extra: json!({"reset_url": v["reset_url"], "emailed": v["emailed"], "email": user["email"], "email_error": v["email_error"]}),
                ..Default::default()
            };
            let to = format!("/console/t/{}/members", tp(&t));
            match flash_redirect(&c, &to, &flash) {
                Some(r) => r,
                None => members_render(&c, &cx, &me, &t, flash, StatusCode::CREATED).await,
            }
        }
        Err(f) => members_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn invite_revoke(State(c): C, Path((t, id)): Path<(String, i64)>, req: Request) -> Page {
    let (cx, _form, me) = posted!(c, req, signed_in);
    match c
        .call(
            &cx,
            Method::DELETE,
            &format!("/admin/tenants/{}/invites/{id}", tp(&t)),
            None,
        )
        .await
    {
        Ok(_) => redirect(&format!(
            "/console/t/{}/members?done=invite_was_revoked",
            tp(&t)
        )),
        Err(f) => members_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn departments_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    departments_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn departments_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    let path = format!("/admin/tenants/{}/groups?limit=500", vars["t"]);
    c.list_page(cx, me, vars, ("departments.html", status), &path, "groups")
        .await
}

async fn departments_create(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let fail = |f: Failure| departments_render(&c, &cx, &me, &t, Flash::err(&f), f.status);
    let budget = field!(amount_field(&cx, &form, "budget", "budget"), fail);
    let body = json!({"name": form.get("name"), "budget_credits": budget});
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/tenants/{}/groups", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(_) => redirect(&format!("/console/t/{}/departments?done=saved", tp(&t))),
        Err(f) => departments_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn departments_update(State(c): C, Path((t, id)): Path<(String, i64)>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let fail = |f: Failure| departments_render(&c, &cx, &me, &t, Flash::err(&f), f.status);
    let budget = field!(amount_field(&cx, &form, "budget", "budget"), fail);
    let body = json!({"name": form.opt("name"), "budget_credits": budget});
    match c
        .call(
            &cx,
            Method::PATCH,
            &format!("/admin/tenants/{}/groups/{id}", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(_) => redirect(&format!("/console/t/{}/departments?done=saved", tp(&t))),
        Err(f) => departments_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn keys_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    keys_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn keys_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    let tid = vars["t"].to_string();
    let keys = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/keys?tenant={tid}&limit=500"))
            .await
    );
    let prices = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/tenants/{tid}/prices")).await
    );
    let users = if me["role"] == "operator" || me["role"] == "tenant_admin" {
        try_api!(
            c,
            cx,
            me,
            c.get(cx, &format!("/admin/tenants/{tid}/users?limit=500"))
                .await
        )["data"]
            .clone()
    } else {
        json!([])
    };
    vars.insert("keys".into(), keys["data"].clone());
    vars.insert("channels".into(), prices["channels"].clone());
    vars.insert("users".into(), users);
    vars.insert("can_create".into(), json!(me["role"] != "viewer"));
    c.render(cx, me, "keys.html", status, vars)
}

async fn keys_create(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let models: Vec<String> = form
        .get("allowed_models")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let fail = |f: Failure| keys_render(&c, &cx, &me, &t, Flash::err_with(&f, &form), f.status);
    let rpm = field!(num_field(&cx, &form, "rpm_limit", "RPM"), fail);
    let tpm = field!(num_field(&cx, &form, "tpm_limit", "TPM"), fail);
    let quota = field!(amount_field(&cx, &form, "quota", "quota"), fail);
    let expires = form.opt("expires").and_then(|d| day_end_rfc3339(&d, cx.tz));
    let body = json!({
        "tenant": t,
        "name": form.get("name"),
        "user_id": form.opt("user_id").and_then(|u| u.parse::<i64>().ok()),
        "default_channel": form.get("default_channel"),
        "allowed_channels": form.all("allowed_channels"),
        "allowed_models": models,
        "quota_credits": quota,
        "rpm_limit": rpm,
        "tpm_limit": tpm,
        "expires_at": expires,
    });
    match c.call(&cx, Method::POST, "/admin/keys", Some(body)).await {
        Ok(v) => {
            let flash = Flash {
                ok: Some("key_created".into()),
                extra: json!({"secret": v["key"], "name": v["record"]["name"]}),
                ..Default::default()
            };
            let to = format!("/console/t/{}/keys", tp(&t));
            match flash_redirect(&c, &to, &flash) {
                Some(r) => r,
                None => keys_render(&c, &cx, &me, &t, flash, StatusCode::CREATED).await,
            }
        }
        Err(f) => keys_render(&c, &cx, &me, &t, Flash::err_with(&f, &form), f.status).await,
    }
}

async fn keys_action(
    State(c): C,
    Path((t, id, action)): Path<(String, i64, String)>,
    req: Request,
) -> Page {
    let (cx, _form, me) = posted!(c, req, signed_in);
    let key = match c
        .of_tenant(&cx, &me, &t, &format!("/admin/keys/{id}"), "key")
        .await
    {
        Ok(k) => k,
        Err(page) => return page,
    };
    match action.as_str() {
        "rotate" => match c
            .call(&cx, Method::POST, &format!("/admin/keys/{id}/rotate"), None)
            .await
        {
            Ok(v) => {
                let flash = Flash {
                    ok: Some("key_rotated".into()),
                    extra: json!({"secret": v["key"], "name": key["name"]}),
                    ..Default::default()
                };
                let to = format!("/console/t/{}/keys", tp(&t));
                match flash_redirect(&c, &to, &flash) {
                    Some(r) => r,
                    None => keys_render(&c, &cx, &me, &t, flash, StatusCode::OK).await,
                }
            }
            Err(f) => keys_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
        },
        "revoke" => match c
            .call(&cx, Method::POST, &format!("/admin/keys/{id}/revoke"), None)
            .await
        {
            Ok(_) => redirect(&format!("/console/t/{}/keys?done=key_was_revoked", tp(&t))),
            Err(f) => keys_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
        },
        _ => c.failure(
            &cx,
            &me,
            &Failure {
                status: StatusCode::NOT_FOUND,
                message: "page not found".into(),
            },
        ),
    }
}

/// The usage page's filters, from its query (local days, dimension, granularity).
struct UsageFilter {
    from_day: String,
    to_day: String,
    group_by: String,
    granularity: String,
    /// A date typed in the query was not a date, or the range ran backwards: the default
    /// range is shown instead, with a message.
    bad_range: bool,
}

impl UsageFilter {
    fn of(cx: &Ctx) -> UsageFilter {
        let p = params(cx);
        let pick = |v: &str, allowed: &[&str], default: &str| {
            if allowed.contains(&v) {
                v.to_string()
            } else {
                default.to_string()
            }
        };
        let day = |d: &str| chrono::NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok();
        let (from, to) = (p.get("from"), p.get("to"));
        let typed_bad =
            (!from.is_empty() && day(from).is_none()) || (!to.is_empty() && day(to).is_none());
        let (mut from_day, mut to_day) = (
            day(from).map_or_else(
                || local_day(cx.tz, 29),
                |d| d.format("%Y-%m-%d").to_string(),
            ),
            day(to).map_or_else(|| local_day(cx.tz, 0), |d| d.format("%Y-%m-%d").to_string()),
        );
        let backwards = from_day > to_day;
        if backwards {
            (from_day, to_day) = (local_day(cx.tz, 29), local_day(cx.tz, 0));
        }
        UsageFilter {
            from_day,
            to_day,
            group_by: pick(
                p.get("group_by"),
                &["user", "group", "key", "model", "channel"],
                "model",
            ),
            granularity: pick(p.get("granularity"), &["day", "hour"], "day"),
            bad_range: typed_bad || backwards,
        }
    }

    /// The page's message about the range, if it had to be replaced.
    fn note(&self, vars: &mut Map<String, Value>, cx: &Ctx) {
        if self.bad_range {
            vars.insert("err".into(), json!(i18n::text(cx.lang, "bad_range")));
        }
    }

    /// The range's start: the first day's local midnight (RFC 3339).
    fn from(&self, tz: i32) -> String {
        day_to_rfc3339(&self.from_day, tz, 0).unwrap_or_default()
    }

    /// The range's end: the midnight after the last day (the `to` day is included).
    fn to(&self, tz: i32) -> String {
        day_to_rfc3339(&self.to_day, tz, 1).unwrap_or_default()
    }

    /// The API query for this range.
    fn range(&self, tz: i32) -> String {
        format!("from={}&to={}", q(&self.from(tz)), q(&self.to(tz)))
    }
}

async fn usage_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let mut vars = try_api!(c, cx, me, tenant_vars(&c, &cx, &t).await);
    apply_flash(&mut vars, &cx, Flash::default());
    let tid = vars["t"].to_string();
    let f = UsageFilter::of(&cx);
    f.note(&mut vars, &cx);
    let range = f.range(cx.tz);
    let base = format!("/admin/tenants/{tid}/analytics?{range}");
    let series = try_api!(
        c,
        cx,
        me,
        c.get(
            &cx,
            &format!("{base}&granularity={}&tz_offset={}", f.granularity, cx.tz)
        )
        .await
    );
    let grouped = try_api!(
        c,
        cx,
        me,
        c.get(&cx, &format!("{base}&group_by={}", f.group_by)).await
    );
    let total = try_api!(c, cx, me, c.get(&cx, &base).await);
    vars.insert(
        "chart".into(),
        json!(series_chart(
            &series,
            cx.tz,
            &f.from(cx.tz),
            &f.to(cx.tz),
            f.granularity == "hour"
        )),
    );
    vars.insert("rows".into(), top(&grouped, usize::MAX));
    vars.insert(
        "total".into(),
        total["data"].get(0).cloned().unwrap_or(Value::Null),
    );
    vars.insert("from".into(), json!(f.from_day));
    vars.insert("to".into(), json!(f.to_day));
    vars.insert("group_by".into(), json!(f.group_by));
    vars.insert("granularity".into(), json!(f.granularity));
    vars.insert("query".into(), json!(cx.query));
    c.render(&cx, &me, "usage.html", StatusCode::OK, vars)
}

fn csv_answer(name: &str, body: String) -> Page {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// The usage page's table as CSV: one row per bucket and dimension value, the API's numbers.
async fn usage_csv(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let f = UsageFilter::of(&cx);
    let tenant = try_api!(
        c,
        cx,
        me,
        c.get(&cx, &format!("/admin/tenants/{}", tp(&t))).await
    );
    let path = format!(
        "/admin/tenants/{}/analytics?{}&granularity={}&group_by={}&tz_offset={}",
        tenant["id"],
        f.range(cx.tz),
        f.granularity,
        f.group_by,
        cx.tz
    );
    let rows = try_api!(c, cx, me, c.get(&cx, &path).await);
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "bucket",
        "local_time",
        "dimension",
        "key",
        "name",
        "requests",
        "errors",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "credits",
    ]);
    for r in rows["data"].as_array().into_iter().flatten() {
        let s = |k: &str| match &r[k] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        let _ = w.write_record([
            s("bucket"),
            // The bucket's start in the viewer's zone (the day a finance sheet files it under).
            local_time(&s("bucket"), cx.tz),
            f.group_by.clone(),
            s("key"),
            s("name"),
            s("requests"),
            s("errors"),
            s("prompt_tokens"),
            s("cached_tokens"),
            s("completion_tokens"),
            s("reasoning_tokens"),
            s("credits"),
        ]);
    }
    let body = String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default();
    csv_answer(
        &format!("usage-{}-{}-{}.csv", tenant["id"], f.from_day, f.to_day),
        body,
    )
}

async fn records_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let mut vars = try_api!(c, cx, me, tenant_vars(&c, &cx, &t).await);
    apply_flash(&mut vars, &cx, Flash::default());
    let tid = vars["t"].to_string();
    let f = UsageFilter::of(&cx);
    f.note(&mut vars, &cx);
    let cursor = params(&cx).opt("cursor");
    let mut path = format!("/admin/tenants/{tid}/ledger?{}&limit=100", f.range(cx.tz));
    if let Some(cur) = &cursor {
        path.push_str(&format!("&cursor={}", q(cur)));
    }
    let page = try_api!(c, cx, me, c.get(&cx, &path).await);
    // Where the money came from in the range, newest first, above the statement (which runs
    // oldest first with every charge).
    let money = try_api!(
        c,
        cx,
        me,
        c.get(
            &cx,
            &format!("/admin/tenants/{tid}/credits?{}&limit=20", f.range(cx.tz))
        )
        .await
    );
    // Who made each entry, by email rather than `user:<id>`.
    let mut actors = Map::new();
    if let Ok(users) = c
        .get(&cx, &format!("/admin/tenants/{tid}/users?limit=1000"))
        .await
    {
        for u in users["data"].as_array().into_iter().flatten() {
            actors.insert(format!("user:{}", u["id"]), u["email"].clone());
        }
    }
    vars.insert("actors".into(), Value::Object(actors));
    vars.insert("money".into(), money["data"].clone());
    vars.insert("more_money".into(), json!(!money["next_cursor"].is_null()));
    vars.insert("lines".into(), page["data"].clone());
    vars.insert("next_cursor".into(), page["next_cursor"].clone());
    vars.insert("from".into(), json!(f.from_day));
    vars.insert("to".into(), json!(f.to_day));
    c.render(&cx, &me, "records.html", StatusCode::OK, vars)
}

/// The statement CSV, straight from the API (streamed).
async fn records_csv(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let f = UsageFilter::of(&cx);
    let tenant = try_api!(
        c,
        cx,
        me,
        c.get(&cx, &format!("/admin/tenants/{}", tp(&t))).await
    );
    let path = format!(
        "/admin/tenants/{}/ledger?{}&format=csv",
        tenant["id"],
        f.range(cx.tz)
    );
    let r = match download(&c, &cx, &me, &path, "The statement").await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let (mut parts, body) = r.into_parts();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"statement-{}-{}-{}.csv\"",
        tenant["id"], f.from_day, f.to_day
    )) {
        parts.headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Response::from_parts(parts, body)
}

async fn redeem_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    redeem_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn redeem_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    c.render(cx, me, "redeem.html", status, vars)
}

async fn redeem_post(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let kind = if form.get("kind") == "promo" {
        "promo"
    } else {
        "redeem"
    };
    let body = json!({"code": form.get("code")});
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/tenants/{}/{kind}", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(v) => {
            let flash = Flash {
                ok: Some("redeemed".into()),
                extra: json!({"amount": v["entry"]["amount"], "available": v["balance"]["available"]}),
                ..Default::default()
            };
            let to = format!("/console/t/{}/redeem", tp(&t));
            match flash_redirect(&c, &to, &flash) {
                Some(r) => r,
                None => redeem_render(&c, &cx, &me, &t, flash, StatusCode::CREATED).await,
            }
        }
        Err(f) => redeem_render(&c, &cx, &me, &t, Flash::err_with(&f, &form), f.status).await,
    }
}

async fn alerts_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    alerts_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn alerts_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    let settings = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/tenants/{}/alerts", tp(t))).await
    );
    let log = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/tenants/{}/alerts/deliveries", tp(t)))
            .await
    );
    vars.insert("settings".into(), settings);
    vars.insert("deliveries".into(), log["data"].clone());
    c.render(cx, me, "alerts.html", status, vars)
}

/// Saves the alert settings (or sends a test alert).
async fn alerts_post(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    if form.get("action") == "test" {
        return match c
            .call(
                &cx,
                Method::POST,
                &format!("/admin/tenants/{}/alerts/test", tp(&t)),
                None,
            )
            .await
        {
            Ok(_) => redirect(&format!(
                "/console/t/{}/alerts?done=alert_test_sent",
                tp(&t)
            )),
            Err(f) => alerts_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
        };
    }
    let list = |name: &str| -> Vec<String> {
        form.get(name)
            .split([',', '\n', ' ', ';'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let fail = |f: Failure| alerts_render(&c, &cx, &me, &t, Flash::err_with(&f, &form), f.status);
    let below = field!(
        amount_field(&cx, &form, "balance_below", "balance_below"),
        fail
    );
    let days = field!(num_field(&cx, &form, "balance_days", "balance_days"), fail);
    let mut percents = Vec::new();
    for p in list("quota_percents") {
        match p.trim_end_matches('%').parse::<u64>() {
            Ok(n) => percents.push(json!(n)),
            Err(_) => return fail(field_failure(&cx, "quota_percents", "bad_whole_number")).await,
        }
    }
    let body = json!({
        "balance_below": below,
        "balance_days": days,
        "quota_percents": percents,
        "emails": list("emails"),
        "webhook_url": form.opt("webhook_url"),
        "enabled": form.get("enabled") == "on",
        "rotate_secret": form.get("rotate_secret") == "on",
    });
    match c
        .call(
            &cx,
            Method::PUT,
            &format!("/admin/tenants/{}/alerts", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(_) => redirect(&format!("/console/t/{}/alerts?done=saved", tp(&t))),
        Err(f) => fail(f).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Security: single sign-on, the network allow-list, prompt guardrails

/// The built-in guardrail detectors, in the order the page lists them.
const DETECTORS: &[&str] = &["secrets", "email", "phone", "cn_id", "bank_card"];

async fn security_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    security_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn security_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    let base = format!("/admin/tenants/{}", tp(t));
    let sso = try_api!(c, cx, me, c.get(cx, &format!("{base}/sso")).await);
    let network = try_api!(c, cx, me, c.get(cx, &format!("{base}/network")).await);
    let guardrails = try_api!(c, cx, me, c.get(cx, &format!("{base}/guardrails")).await);
    let mut rows = guardrails["keywords"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.push(json!({"name": "", "words": [], "action": "block"}));
    vars.insert("sso".into(), sso);
    vars.insert("network".into(), network);
    vars.insert("guardrails".into(), guardrails);
    vars.insert("keyword_rows".into(), Value::Array(rows));
    vars.insert("detectors".into(), json!(DETECTORS));
    c.render(cx, me, "security.html", status, vars)
}

/// Saves one of the page's three forms (`action`), or turns single sign-on off.
async fn security_post(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let base = format!("/admin/tenants/{}", tp(&t));
    let list = |name: &str, seps: &[char]| -> Vec<String> {
        form.get(name)
            .split(seps)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let call = match form.get("action") {
        "sso_off" => (Method::DELETE, format!("{base}/sso"), None),
        "sso_save" => {
            let role_map: Map<String, Value> = form
                .get("role_map")
                .lines()
                .filter_map(|l| l.split_once(['=', ':']))
                .map(|(g, r)| (g.trim().to_string(), json!(r.trim())))
                .filter(|(g, _)| !g.is_empty())
                .collect();
            let body = json!({
                "issuer": form.get("issuer"),
                "client_id": form.get("client_id"),
                "client_secret": form.opt("client_secret"),
                "allowed_domains": list("allowed_domains", &[',', ' ', '\n', ';']),
                "groups_claim": form.opt("groups_claim").unwrap_or_else(|| "groups".into()),
                "role_map": role_map,
                "default_role": form.opt("default_role"),
                "jit_users": form.get("jit_users") == "on",
                "password_sign_in": form.get("password_sign_in") == "on",
                "extra_scopes": list("extra_scopes", &[',', ' ']),
            });
            (Method::PUT, format!("{base}/sso"), Some(body))
        }
        "network_save" => {
            let cidrs = list("allowed_cidrs", &[',', ' ', '\n', '\r', ';']);
            (
                Method::PUT,
                format!("{base}/network"),
                Some(json!({"allowed_cidrs": cidrs})),
            )
        }
        "guardrails_save" => {
            let detectors: Map<String, Value> = DETECTORS
                .iter()
                .map(|d| {
                    (
                        d.to_string(),
                        json!(form
                            .opt(&format!("detector_{d}"))
                            .unwrap_or_else(|| "off".into())),
                    )
                })
                .filter(|(_, a)| a != "off")
                .collect();
            let keywords: Vec<Value> = (0..21)
                .filter_map(|i| {
                    let name = form.opt(&format!("kw_name_{i}"))?;
                    let words = list(&format!("kw_words_{i}"), &['\n', '\r']);
                    let action = form
                        .opt(&format!("kw_action_{i}"))
                        .unwrap_or_else(|| "block".into());
                    Some(json!({"name": name, "words": words, "action": action}))
                })
                .collect();
            let body = json!({"detectors": detectors, "keywords": keywords});
            (Method::PUT, format!("{base}/guardrails"), Some(body))
        }
        _ => {
            let f = Failure {
                status: StatusCode::BAD_REQUEST,
                message: "Unknown action.".into(),
            };
            return security_render(&c, &cx, &me, &t, Flash::err_with(&f, &form), f.status).await;
        }
    };
    match c.call(&cx, call.0, &call.1, call.2).await {
        Ok(_) => redirect(&format!("/console/t/{}/security?done=saved", tp(&t))),
        Err(f) => security_render(&c, &cx, &me, &t, Flash::err_with(&f, &form), f.status).await,
    }
}

/// The audit trail's filters as the API's query (actor, action, from, to, cursor).
fn audit_query(cx: &Ctx) -> (String, Map<String, Value>) {
    let p = params(cx);
    let mut out = Vec::new();
    let mut filters = Map::new();
    for k in ["actor", "action", "from", "to", "cursor"] {
        if let Some(v) = p.opt(k) {
            out.push(format!("{k}={}", q(&v)));
            filters.insert(k.into(), json!(v));
        }
    }
    (out.join("&"), filters)
}

async fn audit_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    api_path: &str,
    mut vars: Map<String, Value>,
) -> Page {
    let (query, filters) = audit_query(cx);
    let page = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("{api_path}?limit=100&{query}")).await
    );
    let csv_query = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("cursor="))
        .collect::<Vec<_>>()
        .join("&");
    vars.insert("entries".into(), page["data"].clone());
    vars.insert("next_cursor".into(), page["next_cursor"].clone());
    vars.insert("filters".into(), Value::Object(filters));
    vars.insert("csv_query".into(), json!(csv_query));
    c.render(cx, me, "audit.html", StatusCode::OK, vars)
}

async fn audit_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let mut vars = try_api!(c, cx, me, tenant_vars(&c, &cx, &t).await);
    apply_flash(&mut vars, &cx, Flash::default());
    let api = format!("/admin/tenants/{}/audit", tp(&t));
    vars.insert(
        "csv_base".into(),
        json!(format!("/console/t/{}/audit.csv", tp(&t))),
    );
    audit_render(&c, &cx, &me, &api, vars).await
}

async fn op_audit(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    let mut vars = op_vars(&cx, Flash::default());
    vars.insert("csv_base".into(), json!("/console/op/audit.csv"));
    audit_render(&c, &cx, &me, "/admin/audit", vars).await
}

/// The audit page's entries as CSV, straight from the API.
async fn audit_csv(c: &Console, cx: &Ctx, me: &Value, api_path: &str) -> Page {
    let (query, _) = audit_query(cx);
    let path = format!("{api_path}?limit=1000&format=csv&{query}");
    download(c, cx, me, &path, "The audit trail")
        .await
        .unwrap_or_else(|page| page)
}

async fn tenant_audit_csv(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    audit_csv(&c, &cx, &me, &format!("/admin/tenants/{}/audit", tp(&t))).await
}

async fn op_audit_csv(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    audit_csv(&c, &cx, &me, "/admin/audit").await
}

async fn topup_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    topup_render(&c, &cx, &me, &t, Flash::default(), StatusCode::OK).await
}

async fn topup_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    t: &str,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = try_api!(c, cx, me, tenant_vars(c, cx, t).await);
    apply_flash(&mut vars, cx, flash);
    let payments = c.admin().app.config().payments.clone();
    vars.insert(
        "payments".into(),
        match payments {
            Some(p) => json!({
                "min_rmb": p.min_rmb.to_string(),
                "max_rmb": p.max_rmb.to_string(),
                "amounts": p.amounts.iter().map(|a| a.normalize().to_string()).collect::<Vec<_>>(),
                "providers": p.providers(),
            }),
            None => Value::Null,
        },
    );
    // A promotion code's bonus, shown before paying (the form's "Show bonus" button).
    let p = params(cx);
    if let (Some(code), Some(amount)) = (p.opt("promo_code"), p.opt("amount_rmb")) {
        let preview = c
            .get(
                cx,
                &format!(
                    "/admin/tenants/{}/promos/preview?code={}&amount_rmb={}",
                    vars["t"],
                    q(&code),
                    q(&amount)
                ),
            )
            .await;
        vars.insert(
            "preview".into(),
            match preview {
                Ok(v) => v,
                Err(f) => json!({"error": f.message, "code": code, "amount_rmb": amount}),
            },
        );
    }
    let path = format!("/admin/tenants/{}/orders", vars["t"]);
    // The order the provider sent the payer back about, if any: asked about at the provider
    // now, so that the credit shows even when the notification is late.
    let returned = params(cx).opt("order").and_then(|o| o.parse::<i64>().ok());
    if let Some(id) = returned {
        let synced = c
            .call(cx, Method::POST, &format!("/admin/orders/{id}/sync"), None)
            .await;
        vars.insert(
            "returned".into(),
            match synced {
                Ok(v) => json!({"id": id, "outcome": v["outcome"], "state": v["order"]["state"]}),
                Err(_) => json!({"id": id, "outcome": "unknown"}),
            },
        );
    }
    let mut page = c
        .list_page(cx, me, vars, ("topup.html", status), &path, "orders")
        .await;
    // The form's answer redirects to the provider's payment page, and CSP's `form-action`
    // covers a submitted form's redirects: this page allows the provider's origins.
    let origins = provider_origins(c);
    let csp = super::CSP.replace(
        "form-action 'self'",
        &format!("form-action 'self' {origins}"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        page.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    page
}

/// Where payers are sent: Stripe Checkout and Alipay's gateway, and the configured APIs' own
/// origins (a sandbox or a test's mock serves both).
fn provider_origins(c: &Console) -> String {
    let mut out = vec!["https://checkout.stripe.com".to_string()];
    let cfg = c.admin().app.config();
    let bases = cfg.payments.as_ref().map_or_else(Vec::new, |p| {
        [
            p.stripe.as_ref().map(|s| s.api_base.clone()),
            p.alipay.as_ref().map(|a| a.gateway.clone()),
        ]
        .into_iter()
        .flatten()
        .collect()
    });
    for base in bases {
        let origin = base.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        if !origin.is_empty() && !origin.contains(['\'', ';', ' ']) && !out.contains(&origin) {
            out.push(origin);
        }
    }
    out.join(" ")
}

/// A payment link as a QR code (SVG) for a phone to scan (WeChat Pay's Native `code_url`).
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(220, 220)
            .quiet_zone(true)
            .build(),
    )
}

/// Places an order and sends the browser to the provider's payment page.
async fn topup_post(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, signed_in);
    let fail = |f: Failure| topup_render(&c, &cx, &me, &t, Flash::err(&f), f.status);
    let amount = field!(amount_field(&cx, &form, "amount_rmb", "amount_rmb"), fail);
    let body = json!({
        "amount_rmb": amount,
        "promo_code": form.opt("promo_code"),
        "provider": form.opt("provider"),
    });
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/tenants/{}/orders", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(v) => match v["pay_url"].as_str() {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => redirect(url),
            // WeChat Pay's Native link: shown as a QR code to scan with the phone.
            Some(url) if url.starts_with("weixin://") => {
                let flash = Flash {
                    extra: json!({"qr": qr_svg(url), "order": v["order"]["id"], "amount_rmb": v["order"]["amount_rmb"]}),
                    ..Default::default()
                };
                topup_render(&c, &cx, &me, &t, flash, StatusCode::CREATED).await
            }
            _ => topup_render(&c, &cx, &me, &t, Flash::default(), StatusCode::BAD_GATEWAY).await,
        },
        Err(f) => topup_render(&c, &cx, &me, &t, Flash::err(&f), f.status).await,
    }
}

async fn op_orders(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    op_orders_render(&c, &cx, &me, Flash::default(), StatusCode::OK).await
}

/// Refunds a paid order (all of it, or the amount given) and says how it went.
async fn op_refund(State(c): C, Path(id): Path<i64>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, operator_only);
    let fail = |f: Failure| op_orders_render(&c, &cx, &me, Flash::err(&f), f.status);
    let amount = field!(amount_field(&cx, &form, "amount_rmb", "amount_rmb"), fail);
    let body = json!({"amount_rmb": amount, "reason": form.opt("reason")});
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/orders/{id}/refunds"),
            Some(body),
        )
        .await
    {
        Ok(_) => redirect("/console/op/orders?done=refund_done"),
        Err(f) => op_orders_render(&c, &cx, &me, Flash::err(&f), f.status).await,
    }
}

async fn op_orders_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let day = Some(params(cx).get("day"))
        .filter(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok())
        .map(str::to_string)
        .unwrap_or_else(|| now_utc().format("%Y-%m-%d").to_string());
    let report = try_api!(
        c,
        cx,
        me,
        c.get(cx, &format!("/admin/payments/reconciliation?day={day}"))
            .await
    );
    let mut vars = op_vars(cx, flash);
    vars.insert("report".into(), report);
    vars.insert("day".into(), json!(day));
    c.list_page(
        cx,
        me,
        vars,
        ("op_orders.html", status),
        "/admin/orders",
        "orders",
    )
    .await
}

/// The day's reconciliation as CSV, straight from the API.
async fn op_reconciliation_csv(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    let day = params(&cx).get("day").to_string();
    let path = format!("/admin/payments/reconciliation?day={}&format=csv", q(&day));
    download(&c, &cx, &me, &path, "The reconciliation")
        .await
        .unwrap_or_else(|page| page)
}

async fn prices_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let mut vars = try_api!(c, cx, me, tenant_vars(&c, &cx, &t).await);
    let tid = vars["t"].to_string();
    let prices = try_api!(
        c,
        cx,
        me,
        c.get(&cx, &format!("/admin/tenants/{tid}/prices")).await
    );
    vars.insert("prices".into(), prices);
    c.render(&cx, &me, "prices.html", StatusCode::OK, vars)
}

async fn routing_page(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = signed_in!(c, cx);
    let mut vars = try_api!(c, cx, me, tenant_vars(&c, &cx, &t).await);
    let tid = vars["t"].to_string();
    let f = UsageFilter::of(&cx);
    f.note(&mut vars, &cx);
    let routing = try_api!(
        c,
        cx,
        me,
        c.get(
            &cx,
            &format!("/admin/tenants/{tid}/routing?{}", f.range(cx.tz))
        )
        .await
    );
    vars.insert("routing".into(), routing);
    vars.insert("from".into(), json!(f.from_day));
    vars.insert("to".into(), json!(f.to_day));
    c.render(&cx, &me, "routing.html", StatusCode::OK, vars)
}

// ---------------------------------------------------------------------------------------------
// Operator pages

fn op_vars(cx: &Ctx, flash: Flash) -> Map<String, Value> {
    let mut vars = Map::new();
    apply_flash(&mut vars, cx, flash);
    vars
}

async fn op_tenants(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    op_tenants_render(&c, &cx, &me, Flash::default(), StatusCode::OK).await
}

async fn op_tenants_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = op_vars(cx, flash);
    let cursor = params(cx).opt("cursor");
    let mut path = "/admin/tenants?limit=50".to_string();
    if let Some(cur) = &cursor {
        path.push_str(&format!("&cursor={}", q(cur)));
    }
    let page = try_api!(c, cx, me, c.get(cx, &path).await);
    let mut tenants = Vec::new();
    for t in page["data"].as_array().into_iter().flatten() {
        let balance = c
            .get(cx, &format!("/admin/tenants/{}/balance", t["id"]))
            .await
            .unwrap_or(Value::Null);
        tenants.push(json!({"tenant": t, "balance": balance}));
    }
    vars.insert("tenants".into(), Value::Array(tenants));
    vars.insert("next_cursor".into(), page["next_cursor"].clone());
    vars.insert(
        "idempotency".into(),
        json!(crate::tenancy::keys::generate_key().replacen("tg-", "console-", 1)),
    );
    c.render(cx, me, "op_tenants.html", status, vars)
}

async fn op_tenant_create(State(c): C, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, operator_only);
    match c
        .call(
            &cx,
            Method::POST,
            "/admin/tenants",
            Some(json!({"name": form.get("name")})),
        )
        .await
    {
        Ok(_) => redirect("/console/op/tenants?done=saved"),
        Err(f) => op_tenants_render(&c, &cx, &me, Flash::err(&f), f.status).await,
    }
}

async fn op_topup(State(c): C, Path(t): Path<String>, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, operator_only);
    let fail = |f: Failure| op_tenants_render(&c, &cx, &me, Flash::err(&f), f.status);
    let amount = field!(amount_field(&cx, &form, "amount_rmb", "amount_rmb"), fail);
    let body = json!({
        "amount_rmb": amount,
        "note": form.opt("note"),
        "promo_code": form.opt("promo_code"),
        "idempotency_key": form.opt("idempotency_key"),
    });
    match c
        .call(
            &cx,
            Method::POST,
            &format!("/admin/tenants/{}/topups", tp(&t)),
            Some(body),
        )
        .await
    {
        Ok(_) => redirect("/console/op/tenants?done=topped_up"),
        Err(f) => op_tenants_render(&c, &cx, &me, Flash::err(&f), f.status).await,
    }
}

async fn op_codes(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    op_codes_render(&c, &cx, &me, Flash::default(), StatusCode::OK).await
}

async fn op_codes_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    flash: Flash,
    status: StatusCode,
) -> Page {
    c.list_page(
        cx,
        me,
        op_vars(cx, flash),
        ("op_codes.html", status),
        "/admin/codes?limit=200",
        "codes",
    )
    .await
}

async fn op_codes_create(State(c): C, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, operator_only);
    let fail = |f: Failure| op_codes_render(&c, &cx, &me, Flash::err(&f), f.status);
    let count = field!(num_field(&cx, &form, "count", "count"), fail).unwrap_or(json!(1));
    let credits = field!(amount_field(&cx, &form, "credits", "credits"), fail);
    let body = json!({
        "credits": credits,
        "count": count,
        "batch": form.opt("batch"),
        "expires_at": form.opt("expires").and_then(|d| day_end_rfc3339(&d, cx.tz)),
    });
    match c.call(&cx, Method::POST, "/admin/codes", Some(body)).await {
        Ok(v) => {
            let flash = Flash {
                ok: Some("codes_created".into()),
                extra: json!({"codes": v["codes"], "batch": v["batch"]}),
                ..Default::default()
            };
            match flash_redirect(&c, "/console/op/codes", &flash) {
                Some(r) => r,
                None => op_codes_render(&c, &cx, &me, flash, StatusCode::CREATED).await,
            }
        }
        Err(f) => op_codes_render(&c, &cx, &me, Flash::err(&f), f.status).await,
    }
}

async fn op_promos(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    op_promos_render(&c, &cx, &me, Flash::default(), StatusCode::OK).await
}

async fn op_promos_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    flash: Flash,
    status: StatusCode,
) -> Page {
    c.list_page(
        cx,
        me,
        op_vars(cx, flash),
        ("op_promos.html", status),
        "/admin/promos?limit=200",
        "promos",
    )
    .await
}

async fn op_promos_create(State(c): C, req: Request) -> Page {
    let (cx, form, me) = posted!(c, req, operator_only);
    let fail = |f: Failure| op_promos_render(&c, &cx, &me, Flash::err(&f), f.status);
    let max_uses = field!(num_field(&cx, &form, "max_uses", "max_uses"), fail);
    let credits = field!(amount_field(&cx, &form, "credits", "bonus_credits"), fail);
    let percent = field!(amount_field(&cx, &form, "percent", "bonus_percent"), fail);
    let body = json!({
        "code": form.get("code"),
        "credits": credits,
        "percent": percent,
        "max_uses": max_uses,
        "expires_at": form.opt("expires").and_then(|d| day_end_rfc3339(&d, cx.tz)),
    });
    match c.call(&cx, Method::POST, "/admin/promos", Some(body)).await {
        Ok(_) => redirect("/console/op/promos?done=saved"),
        Err(f) => op_promos_render(&c, &cx, &me, Flash::err(&f), f.status).await,
    }
}

async fn op_health(State(c): C, req: Request) -> Page {
    let cx = ctx_of(&req);
    let me = operator_only!(c, cx);
    op_health_render(&c, &cx, &me, Flash::default(), StatusCode::OK).await
}

async fn op_health_render(
    c: &Console,
    cx: &Ctx,
    me: &Value,
    flash: Flash,
    status: StatusCode,
) -> Page {
    let mut vars = op_vars(cx, flash);
    let channels = try_api!(c, cx, me, c.get(cx, "/admin/channels").await);
    let config = try_api!(c, cx, me, c.get(cx, "/admin/config/status").await);
    vars.insert("channels".into(), channels["data"].clone());
    vars.insert("config".into(), config);
    c.render(cx, me, "op_health.html", status, vars)
}

async fn op_reload(State(c): C, req: Request) -> Page {
    let (cx, _form, me) = posted!(c, req, operator_only);
    match c.call(&cx, Method::POST, "/admin/reload", None).await {
        Ok(_) => redirect("/console/op/health?done=reloaded"),
        Err(f) => op_health_render(&c, &cx, &me, Flash::err(&f), f.status).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_and_times_shown_in_the_viewers_zone() {
        assert_eq!(group_digits(1234567.891, 2), "1,234,567.89");
        assert_eq!(group_digits(-0.5, 2), "-0.50");
        assert_eq!(group_digits(0.0, 2), "0.00");
        assert_eq!(group_digits(999.0, 0), "999");
        assert_eq!(local_time("2026-12-03T01:30:00Z", 480), "2026-12-03 09:30");
        assert_eq!(local_time("2026-12-03T01:30:00Z", -300), "2026-12-02 20:30");
        assert_eq!(safe_next("//evil.example/x"), "/console");
        assert_eq!(safe_next("https://evil.example"), "/console");
        assert_eq!(safe_next("/console/t/3/keys"), "/console/t/3/keys");
        assert_eq!(safe_next("/console/../metrics"), "/console");
        assert_eq!(safe_next("/console/%2e%2e/metrics"), "/console");
        assert_eq!(
            safe_next("/console/t/3/usage?from=2026-12-01"),
            "/console/t/3/usage?from=2026-12-01"
        );
        assert_eq!(
            day_to_rfc3339("2026-12-03", 480, 1).as_deref(),
            Some("2026-12-04T00:00:00+08:00")
        );
    }

    #[test]
    fn every_template_compiles() {
        let env = environment();
        for (name, _) in TEMPLATES {
            assert!(env.get_template(name).is_ok(), "{name}");
        }
    }
}
