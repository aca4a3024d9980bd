//! The management console: server-rendered pages under `/console` on the admin port, built
//! into the binary (templates and static files are compiled in; nothing is fetched at run
//! time).
//!
//! The admin API is the console's only back end: every page is rendered from the JSON the API
//! answers to the signed-in user's session token, through the same router that serves
//! `/admin/…` (in process, no socket), so the console can do nothing the API would refuse, and
//! role and tenant checks live in one place. Forms post here, are checked for the session's
//! CSRF token, and become API calls; an API error is shown on the page with its status.
//!
//! Templates are minijinja (auto-escaped HTML) rendered from the API's own JSON, rather than
//! a compile-time engine over a second set of view types: the console shows exactly the
//! documented API fields, and a field renamed in the API breaks a test (templates render in
//! strict mode) rather than drifting silently. Charts are SVG drawn by the templates from
//! geometry computed here. The only JavaScript (static/app.js) copies secrets, submits the
//! chart filters and records the browser's time zone in a cookie; every page works without it.

mod charts;
mod i18n;
mod pages;

use crate::admin::Admin;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use minijinja::Environment;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

/// The session cookie (HttpOnly, SameSite=Lax, path /console).
pub const SESSION_COOKIE: &str = "tg_session";
const LANG_COOKIE: &str = "tg_lang";
const TZ_COOKIE: &str = "tg_tz";

/// Every console answer carries these: no framing, no inline script, no third-party origin.
pub(crate) const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console's handlers share.
pub struct Console {
    /// The admin API (without the console), called in process.
    api: axum::Router,
    env: Environment<'static>,
    admin: Arc<Admin>,
}

/// An answer of the admin API that was not a success.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

/// The cookie of a page's one-time message (see `Ctx::flash`).
pub const FLASH_COOKIE: &str = "tg_flash";

/// One browser request's context: language, time zone, session token, client address.
#[derive(Clone)]
pub struct Ctx {
    pub lang: i18n::Lang,
    /// Minutes east of UTC (the browser's, from its cookie; 0 before it is known).
    pub tz: i32,
    pub token: Option<String>,
    pub ip: Option<crate::admin::ClientIp>,
    pub host: Option<HeaderValue>,
    /// The browser's user agent (the audit trail records it for changes made here).
    pub user_agent: Option<HeaderValue>,
    pub path: String,
    pub query: String,
    /// What the page shows once after a change (a new secret, codes, a link), carried from the
    /// change's redirect in a short-lived cookie of this page's path (`pages::flash_redirect`).
    pub flash: Option<String>,
    /// A posted form is being answered (its page shown again with what was wrong is a page
    /// like any other).
    pub posted: bool,
}

impl Ctx {
    pub fn new(
        headers: &HeaderMap,
        uri: &axum::http::Uri,
        extensions: &axum::http::Extensions,
    ) -> Ctx {
        let cookies = cookies(headers);
        let lang = cookies
            .iter()
            .find(|(k, _)| k == LANG_COOKIE)
            .and_then(|(_, v)| i18n::Lang::parse(v))
            .unwrap_or_else(|| i18n::Lang::from_accept(headers));
        let tz = cookies
            .iter()
            .find(|(k, _)| k == TZ_COOKIE)
            .and_then(|(_, v)| v.parse::<i32>().ok())
            .filter(|m| (-14 * 60..=14 * 60).contains(m))
            .unwrap_or(0);
        let token = cookies
            .iter()
            .find(|(k, _)| k == SESSION_COOKIE)
            .map(|(_, v)| v.clone())
            .filter(|v| v.starts_with("tgs-") && v.len() < 100);
        Ctx {
            lang,
            tz,
            token,
            ip: extensions.get::<crate::admin::ClientIp>().copied(),
            host: headers.get(header::HOST).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            flash: cookies
                .iter()
                .find(|(k, _)| k == FLASH_COOKIE)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty()),
            posted: false,
        }
    }
}

/// The request's cookies, as name/value pairs.
fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

impl Console {
    pub fn new(api: axum::Router, admin: Arc<Admin>) -> Console {
        Console {
            api,
            env: pages::environment(),
            admin,
        }
    }

    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Calls the admin API in process with the session's token: the JSON answer, or why not.
    pub async fn call(
        &self,
        cx: &Ctx,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let r = self.raw(cx, method, path, body).await;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 64 << 20)
            .await
            .map_err(|e| Failure {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: e.to_string(),
            })?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            Ok(json)
        } else {
            Err(Failure {
                status,
                message: json["error"]["message"]
                    .as_str()
                    .unwrap_or("The request failed.")
                    .to_string(),
            })
        }
    }

    /// The API's answer as it is (CSV downloads pass through).
    pub async fn raw(
        &self,
        cx: &Ctx,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response<Body> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = &cx.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(h) = &cx.host {
            b = b.header(header::HOST, h.clone());
        }
        if let Some(ua) = &cx.user_agent {
            b = b.header(header::USER_AGENT, ua.clone());
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let Ok(mut req) = b.body(body) else {
            return plain(StatusCode::BAD_REQUEST, "Invalid request.");
        };
        if let Some(ip) = cx.ip {
            req.extensions_mut().insert(ip);
        }
        match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(text.to_string()));
    *r.status_mut() = status;
    r
}

/// The console's routes (under `/console`), with its security headers on every answer.
pub fn router(api: axum::Router, admin: Arc<Admin>) -> axum::Router {
    let console = Arc::new(Console::new(api, admin));
    pages::routes()
        .with_state(console)
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::from_fn(flash_once))
        .layer(axum::middleware::map_response(security_headers))
}

/// Forms are only taken from the console's own pages: a POST that the browser says comes from
/// another site (`Sec-Fetch-Site`, or an `Origin` naming another host) is refused before
/// anything runs. This covers the sign-in forms too, which have no session (and so no CSRF
/// token) yet: no other site can sign a browser into an account of its choosing.
async fn same_origin_posts(req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    if req.method() == Method::POST && !same_origin(req.headers()) {
        return plain(
            StatusCode::FORBIDDEN,
            "This form did not come from the console. / 此表单并非来自控制台。",
        );
    }
    next.run(req).await
}

/// A page shown with its one-time message drops the message's cookie: a reload shows the page
/// alone (the secret or link is not shown twice, and no change is made again).
async fn flash_once(req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let carried = req.method() == Method::GET
        && cookies(req.headers())
            .iter()
            .any(|(k, v)| k == FLASH_COOKIE && !v.is_empty());
    let path = req.uri().path().to_string();
    let mut r = next.run(req).await;
    if carried {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{FLASH_COOKIE}=; Max-Age=0; Path={path}; HttpOnly; SameSite=Strict"
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        }
    }
}

async fn security_headers(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    // A page may widen `form-action` for its own answer (a form redirected to a payment
    // provider's page, `pages::topup_post`); every other answer gets the console's policy.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_from_other_sites_are_told_apart() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
                    HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
                );
            }
            m
        };
        assert!(
            same_origin(&h(&[("host", "gw:8081")])),
            "no Origin: curl, old browsers"
        );
        assert!(same_origin(&h(&[
            ("host", "gw:8081"),
            ("origin", "http://gw:8081"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "gw:8081"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "gw:8081"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&h(&[("host", "gw:8081"), ("origin", "null")])));
    }
}
