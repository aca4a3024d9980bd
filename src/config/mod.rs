//! Configuration: the file schema (`schema`), its validation into runtime types (this module)
//! and hot reload (`reload`). A configuration is immutable once built; a reload builds a new
//! one and swaps it in atomically, carrying each upstream's live state (breaker, latency) over.

pub mod reload;
pub mod schema;

use crate::routing::upstream::{UpstreamState, UpstreamStates};
use rust_decimal::Decimal;
use schema::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A configuration error that names the offending path, e.g. `channels[0].upstreams[1].base_url`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: String,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub graceful_shutdown: Duration,
    pub upgrade_sock: String,
    pub pid_file: String,
    pub ca_file: Option<String>,
    /// Idle time between requests after which a client connection is closed (seconds).
    pub keepalive_timeout_seconds: u64,
    pub keepalive_requests: u32,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_buffered_body_bytes: usize,
    pub header_timeout: Duration,
    pub min_body_rate: crate::proxy::body::MinRate,
    /// Proxies whose `X-Forwarded-For` (and PROXY protocol header) is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections start with a PROXY protocol header (`proxy::conn::read_proxy_header`).
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: String,
    pub token_env: String,
    pub session_hours: u32,
    pub public_url: Option<String>,
    pub secure_cookies: bool,
}

/// Online payment (`[payments]`).
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    pub min_rmb: Decimal,
    pub max_rmb: Decimal,
    /// The amounts offered (RMB); empty: any from min to max.
    pub amounts: Vec<Decimal>,
    pub order_secs: i64,
    /// Stripe, when configured and its secrets are set.
    pub stripe: Option<crate::payments::stripe::Stripe>,
    pub alipay: Option<crate::payments::alipay::Alipay>,
    pub wechat: Option<crate::payments::wechat::Wechat>,
}

impl PaymentSettings {
    /// The providers configured, in the order the console offers them.
    pub fn providers(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.alipay.is_some() {
            out.push("alipay");
        }
        if self.wechat.is_some() {
            out.push("wechat");
        }
        if self.stripe.is_some() {
            out.push("stripe");
        }
        out
    }
}

/// A key or certificate from a file or an environment variable (exactly one of the two).
fn key_text(
    section: &str,
    file: &Option<String>,
    var: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match (file, var) {
        (Some(f), None) => {
            std::fs::read_to_string(f).map_err(|e| format!("{section}: cannot read {f}: {e}"))
        }
        (None, Some(v)) => env(v).ok_or_else(|| format!("{section}: ${v} is not set")),
        _ => Err(format!(
            "{section}: set exactly one of the file and the environment variable"
        )),
    }
}

fn alipay_settings(
    a: schema::AlipaySection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::payments::alipay::Alipay, String> {
    use crate::payments::keys::{PrivateKey, PublicKey};
    let private = key_text(
        "payments.alipay private key",
        &a.private_key_file,
        &a.private_key_env,
        env,
    )?;
    let public = key_text(
        "payments.alipay public key",
        &a.alipay_public_key_file,
        &a.alipay_public_key_env,
        env,
    )?;
    Ok(crate::payments::alipay::Alipay {
        app_id: a.app_id,
        private_key: std::sync::Arc::new(
            PrivateKey::parse(&private).map_err(|e| format!("payments.alipay private key: {e}"))?,
        ),
        alipay_public_key: PublicKey::parse(&public)
            .map_err(|e| format!("payments.alipay public key: {e}"))?,
        gateway: a.gateway,
    })
}

fn wechat_settings(
    w: schema::WechatSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::payments::wechat::Wechat, String> {
    use crate::payments::keys::{Certificate, PrivateKey, PublicKey};
    let private = key_text(
        "payments.wechat private key",
        &w.private_key_file,
        &w.private_key_env,
        env,
    )?;
    let private =
        PrivateKey::parse(&private).map_err(|e| format!("payments.wechat private key: {e}"))?;
    let v3 = env(&w.api_v3_key_env)
        .ok_or_else(|| format!("payments.wechat: ${} is not set", w.api_v3_key_env))?;
    if v3.len() != 32 {
        return Err("payments.wechat: the APIv3 key must be 32 characters".into());
    }
    let mut platform = std::collections::HashMap::new();
    for f in &w.platform_cert_files {
        let pem = std::fs::read_to_string(f)
            .map_err(|e| format!("payments.wechat: cannot read {f}: {e}"))?;
        let (serial, key) =
            Certificate::parse_pem(&pem).map_err(|e| format!("payments.wechat: {f}: {e}"))?;
        platform.insert(serial, key);
    }
    match (&w.public_key_id, &w.public_key_file) {
        (Some(id), Some(f)) => {
            let pem = std::fs::read_to_string(f)
                .map_err(|e| format!("payments.wechat: cannot read {f}: {e}"))?;
            let key = PublicKey::parse(&pem).map_err(|e| format!("payments.wechat: {f}: {e}"))?;
            platform.insert(id.clone(), key);
        }
        (None, None) => {}
        _ => return Err("payments.wechat: public_key_id and public_key_file go together".into()),
    }
    if platform.is_empty() {
        return Err("payments.wechat: needs platform_cert_files or public_key_id/public_key_file (to check WeChat Pay's signatures)".into());
    }
    Ok(crate::payments::wechat::Wechat::new(
        w.mchid,
        w.appid,
        w.merchant_serial,
        private,
        v3.into_bytes(),
        platform,
        w.api_base,
    ))
}

/// Outgoing mail (`[smtp]`).
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub username: Option<String>,
    /// Read from `password_env` at load time.
    pub password: Option<String>,
    pub tls: SmtpTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct BillingSettings {
    pub enabled: bool,
    pub credits_per_rmb: Decimal,
    pub default_max_output_tokens: u64,
    pub journal_flush: Duration,
    pub image_token_bound: u64,
    pub attachment_token_bound: u64,
    pub charge_log_sync: Duration,
    /// Charged records that may wait for the store before calls are refused.
    pub max_unstored_charges: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embedding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Currency {
    Usd,
    Rmb,
}

#[derive(Debug, Clone)]
pub struct Price {
    pub currency: Currency,
    pub input: Decimal,
    pub cached_input: Decimal,
    pub cache_write: Decimal,
    pub output: Decimal,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub vendor: String,
    pub kind: ModelKind,
    pub aliases: Vec<String>,
    pub max_output_tokens: Option<u64>,
    pub context_window: Option<u64>,
    pub tokenizer: Tokenizer,
    pub image_tokens: Option<u64>,
    /// `Some(false)`: reasoning settings are dropped from translated requests.
    pub reasoning: Option<bool>,
    pub price: Option<Price>,
}

/// A tokenizer the gateway can count a model's prompts with exactly (the credit hold's second
/// step, docs/billing.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    O200k,
    /// Unknown to the gateway: only the byte bound holds.
    None,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub open_for: Duration,
}

/// An upstream's wire protocol (`openai`, `anthropic` or `gemini` in the file).
pub type Protocol = crate::protocol::Dialect;

/// Where an upstream lives, parsed once at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. "/v1".
    pub path: String,
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<BaseUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("has no host".into());
        }
        if authority.contains('@') || path.contains('?') || path.contains('#') {
            return Err("must not carry credentials, a query or a fragment".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            // IPv6 literal: [::1]:8080
            let end = stripped
                .find(']')
                .ok_or("has an unterminated IPv6 literal")?;
            let host = &stripped[..end];
            let after = &stripped[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse::<u16>().map_err(|_| "has an invalid port")?,
                None if after.is_empty() => default_port,
                None => return Err("has garbage after the IPv6 literal".into()),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse::<u16>().map_err(|_| "has an invalid port")?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(BaseUrl {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// Value for the Host header.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One vendor endpoint + credential inside a channel.
#[derive(Debug)]
pub struct Upstream {
    /// `channel/name`, unique in the configuration, used as a metric label.
    pub id: String,
    pub name: String,
    pub base: BaseUrl,
    pub protocol: Protocol,
    pub api_key_env: Option<String>,
    /// The credential, read from the environment at load time.
    pub api_key: Option<String>,
    pub weight: u32,
    pub models: crate::FastSet<String>,
    pub model_map: BTreeMap<String, String>,
    /// Why this upstream cannot be used (e.g. its key variable is unset); `None` when usable.
    pub disabled: Option<String>,
    /// Live state that survives reloads (breaker, latency, resolved addresses).
    pub state: Arc<UpstreamState>,
    /// Request pieces prepared once per configuration, not per request.
    pub host_header: http::HeaderValue,
    /// The credential header: `Authorization: Bearer` (OpenAI), `x-api-key` (Anthropic) or
    /// `x-goog-api-key` (Gemini).
    pub auth_name: http::header::HeaderName,
    pub auth_header: Option<http::HeaderValue>,
    /// `<base>/chat/completions` (OpenAI) or `<base>/messages` (Anthropic); Gemini paths are
    /// built per request (the model is in the path).
    pub chat_path: String,
    pub embeddings_path: String,
    /// `<base>/responses` when the upstream speaks the Responses API (`responses = true`).
    pub responses_path: Option<String>,
    /// OpenAI-protocol upstreams: the chat request header without its per-request parts
    /// (`Content-Length`, `x-request-id`), for a JSON answer and for a stream; cloned per
    /// request instead of built (building validates and hashes every header again).
    pub chat_header_templates: Option<Box<[pingora_http::RequestHeader; 2]>>,
    /// `tollgate_upstream_attempts_total{outcome="ok"}` of this upstream, resolved once.
    pub attempts_ok: prometheus::IntCounter,
}

/// The header every upstream request starts from: method, path, Host, credential, content
/// type, accept and user agent (the per-request `Content-Length` and `x-request-id`, and the
/// Anthropic version headers, are added by the proxy).
fn request_header(
    path: &str,
    host: &http::HeaderValue,
    auth: Option<(&http::header::HeaderName, &http::HeaderValue)>,
    stream: bool,
) -> pingora_error::Result<pingora_http::RequestHeader> {
    let mut req = pingora_http::RequestHeader::build_no_case("POST", path.as_bytes(), Some(10))?;
    req.insert_header(http::header::HOST, host.clone())?;
    if let Some((name, value)) = auth {
        req.insert_header(name.clone(), value.clone())?;
    }
    req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    req.insert_header(
        http::header::ACCEPT,
        if stream {
            "text/event-stream"
        } else {
            "application/json"
        },
    )?;
    req.insert_header(
        http::header::USER_AGENT,
        concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(req)
}

impl Upstream {
    /// The protocol this upstream is spoken to in for a caller speaking `caller`: a Responses
    /// caller's request passes through to an upstream that speaks it, else the upstream's own.
    pub fn dialect_for(&self, caller: Protocol) -> Protocol {
        if caller == Protocol::Responses && self.responses_path.is_some() {
            Protocol::Responses
        } else {
            self.protocol
        }
    }

    /// The start of a request to this upstream at `path` (see `request_header`); chat calls to
    /// OpenAI-protocol upstreams clone `chat_header_templates` instead.
    pub fn request_header(
        &self,
        path: &str,
        stream: bool,
    ) -> pingora_error::Result<pingora_http::RequestHeader> {
        let auth = self.auth_header.as_ref().map(|v| (&self.auth_name, v));
        request_header(path, &self.host_header, auth, stream)
    }

    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map
            .get(model)
            .map(String::as_str)
            .unwrap_or(model)
    }
}

/// A service tier: a price multiplier over a pool of upstreams.
#[derive(Debug)]
pub struct Channel {
    pub name: String,
    pub description: String,
    pub multiplier: Decimal,
    pub rmb_multiplier: Decimal,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    pub upstreams: Vec<Arc<Upstream>>,
    /// The per-request metrics of this channel, resolved once.
    pub metrics: crate::metrics::ChannelMetrics,
}

impl Channel {
    pub fn serves(&self, model: &str) -> bool {
        self.upstreams.iter().any(|u| u.models.contains(model))
    }
}

/// Retention of raw usage records (`store::retention`).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Days kept, today included; 0: forever.
    pub raw_days: u32,
    /// Where pruned days are archived; `None`: removed without an archive.
    pub archive: Option<std::path::PathBuf>,
    /// Time between passes.
    pub every: Duration,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub sqlite_path: String,
    /// The record in PostgreSQL (`[store] url`), and its pool size.
    pub postgres: Option<(String, u32)>,
    /// Retention of raw usage records (`[store] raw_usage_days`, `archive_dir`).
    pub retention: Retention,
    pub models: Vec<Arc<Model>>,
    model_index: crate::FastMap<String, Arc<Model>>,
    pub channels: Vec<Arc<Channel>>,
    channel_index: crate::FastMap<String, Arc<Channel>>,
    pub billing: BillingSettings,
    /// Cluster mode (Redis-backed shared balances); `None`: embedded mode. Read at start only.
    pub cluster: Option<ClusterSettings>,
    /// The complexity router (`model: "auto"`), when the file has a `[router]` section.
    pub router: Option<Arc<crate::router::RouterSettings>>,
    /// Outgoing mail for console invitations.
    pub smtp: Option<SmtpSettings>,
    /// Online payment.
    pub payments: Option<PaymentSettings>,
    /// How often alert thresholds are checked (`[alerts] check_seconds`).
    pub alert_check: std::time::Duration,
    /// Non-fatal findings (e.g. an upstream whose key variable is unset).
    pub warnings: Vec<String>,
}

impl Config {
    /// Resolve a model name or alias.
    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.model_index.get(name)
    }

    pub fn channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channel_index.get(name)
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.channels.iter().flat_map(|c| c.upstreams.iter())
    }

    /// Read, parse and validate a file. `states` carries live upstream state across reloads.
    pub fn load(path: &Path, states: &UpstreamStates) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::from_toml(&text, &path.display().to_string(), states)
    }

    pub fn from_toml(
        text: &str,
        origin: &str,
        states: &UpstreamStates,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        Config::build(file, states, &|name| std::env::var(name).ok())
    }

    /// Validate a parsed file. `env` looks up credential variables (a parameter so tests and
    /// `check-config` can run without real secrets).
    pub fn build(
        file: FileConfig,
        states: &UpstreamStates,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // Destructured without `..`: a new section fails to compile until it is handled here.
        let FileConfig {
            server,
            admin,
            store,
            timeouts,
            retry,
            breaker,
            billing,
            cluster,
            models,
            channels,
            router,
            smtp,
            payments,
            alerts,
        } = file;
        if !(1..=3600).contains(&alerts.check_seconds) {
            return Err(invalid("alerts.check_seconds", "must be 1 to 3600"));
        }
        let mut warnings = Vec::new();

        let server = build_server(server)?;
        let listen_port = server
            .listen
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        if admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "admin.listen",
                "must be an address like 127.0.0.1:8081",
            ));
        }
        if !(1..=24 * 90).contains(&admin.session_hours) {
            return Err(invalid("admin.session_hours", "must be 1 to 2160"));
        }
        if let Some(u) = &admin.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid(
                    "admin.public_url",
                    "must be an http:// or https:// address",
                ));
            }
        }
        let admin = AdminSettings {
            listen: admin.listen,
            token_env: admin.token_env,
            session_hours: admin.session_hours,
            public_url: admin
                .public_url
                .map(|u| u.trim_end_matches('/').to_string()),
            secure_cookies: admin.secure_cookies,
        };
        let payments = match payments {
            None => None,
            Some(p) => {
                if p.min_rmb <= Decimal::ZERO || p.max_rmb < p.min_rmb {
                    return Err(invalid("payments", "needs 0 < min_rmb <= max_rmb"));
                }
                if !(1..=1440).contains(&p.order_minutes) {
                    return Err(invalid("payments.order_minutes", "must be 1 to 1440"));
                }
                let stripe = match p.stripe {
                    None => None,
                    Some(s) => match (env(&s.secret_key_env), env(&s.webhook_secret_env)) {
                        (Some(secret_key), Some(webhook_secret)) => {
                            Some(crate::payments::stripe::Stripe {
                                secret_key,
                                webhook_secret,
                                api_base: s.api_base,
                            })
                        }
                        _ => {
                            warnings.push(format!(
                                "payments.stripe: ${} or ${} is not set; Stripe is off",
                                s.secret_key_env, s.webhook_secret_env
                            ));
                            None
                        }
                    },
                };
                // A provider whose keys are missing or unusable is off, with a warning (as for
                // Stripe's secrets): the rest of the gateway still starts.
                let alipay = p.alipay.and_then(|a| {
                    alipay_settings(a, env)
                        .map_err(|e| warnings.push(format!("{e}; Alipay is off")))
                        .ok()
                });
                let wechat = p.wechat.and_then(|w| {
                    wechat_settings(w, env)
                        .map_err(|e| warnings.push(format!("{e}; WeChat Pay is off")))
                        .ok()
                });
                if p.amounts.iter().any(|a| {
                    *a < p.min_rmb
                        || *a > p.max_rmb
                        || (*a * Decimal::from(100)).fract() != Decimal::ZERO
                }) {
                    return Err(invalid(
                        "payments.amounts",
                        "each amount is within min_rmb..max_rmb, in whole fen",
                    ));
                }
                Some(PaymentSettings {
                    amounts: p.amounts.clone(),
                    min_rmb: p.min_rmb,
                    max_rmb: p.max_rmb,
                    order_secs: i64::from(p.order_minutes) * 60,
                    stripe,
                    alipay,
                    wechat,
                })
            }
        };
        let smtp = match smtp {
            None => None,
            Some(m) => {
                let tls = match m.tls.as_deref().unwrap_or("starttls") {
                    "starttls" => SmtpTls::StartTls,
                    "tls" => SmtpTls::Tls,
                    "none" => SmtpTls::None,
                    _ => return Err(invalid("smtp.tls", "must be starttls, tls or none")),
                };
                if m.host.trim().is_empty() || !m.from.contains('@') {
                    return Err(invalid("smtp", "needs `host` and a `from` address"));
                }
                let password = match &m.password_env {
                    Some(var) => match env(var) {
                        Some(p) => Some(p),
                        None => {
                            warnings.push(format!(
                                "smtp.password_env: ${var} is not set; mail is sent without a password"
                            ));
                            None
                        }
                    },
                    None => None,
                };
                Some(SmtpSettings {
                    host: m.host,
                    port: m.port.unwrap_or(match tls {
                        SmtpTls::StartTls => 587,
                        SmtpTls::Tls => 465,
                        SmtpTls::None => 25,
                    }),
                    from: m.from,
                    username: m.username,
                    password,
                    tls,
                })
            }
        };
        let default_timeouts = build_timeouts(timeouts, "timeouts")?;
        let default_retry = build_retry(retry, "retry")?;
        let default_breaker = build_breaker(breaker, "breaker")?;
        let billing = build_billing(billing)?;

        let mut model_list = Vec::new();
        let mut model_index: crate::FastMap<String, Arc<Model>> = Default::default();
        for (i, m) in models.into_iter().enumerate() {
            let at = format!("models[{i}]");
            let model = Arc::new(build_model(m, &at)?);
            for key in std::iter::once(&model.name).chain(model.aliases.iter()) {
                if model_index.insert(key.clone(), model.clone()).is_some() {
                    return Err(invalid(
                        at.clone(),
                        format!("model name or alias `{key}` is defined twice"),
                    ));
                }
            }
            if model.price.is_none() {
                warnings.push(format!(
                    "{at} (`{}`) has no price: calls to it are refused",
                    model.name
                ));
            }
            model_list.push(model);
        }

        let mut channel_list = Vec::new();
        let mut channel_index = crate::FastMap::default();
        for (ci, c) in channels.into_iter().enumerate() {
            let at = format!("channels[{ci}]");
            let ChannelSection {
                name,
                description,
                multiplier,
                rmb_multiplier,
                timeouts,
                retry,
                breaker,
                upstreams,
            } = c;
            check_name(&name, &format!("{at}.name"))?;
            if channel_index.contains_key(&name) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("channel `{name}` is defined twice"),
                ));
            }
            if multiplier.is_sign_negative() {
                return Err(invalid(format!("{at}.multiplier"), "must not be negative"));
            }
            if rmb_multiplier.is_sign_negative() {
                return Err(invalid(
                    format!("{at}.rmb_multiplier"),
                    "must not be negative",
                ));
            }
            let timeouts = match timeouts {
                Some(t) => build_timeouts(t, &format!("{at}.timeouts"))?,
                None => default_timeouts,
            };
            let retry = match retry {
                Some(r) => build_retry(r, &format!("{at}.retry"))?,
                None => default_retry,
            };
            let breaker = match breaker {
                Some(b) => build_breaker(b, &format!("{at}.breaker"))?,
                None => default_breaker,
            };
            if upstreams.is_empty() {
                return Err(invalid(
                    format!("{at}.upstreams"),
                    "a channel needs at least one upstream",
                ));
            }
            let mut ups = Vec::new();
            let mut seen = HashSet::new();
            for (ui, u) in upstreams.into_iter().enumerate() {
                let uat = format!("{at}.upstreams[{ui}]");
                let up = build_upstream(u, &name, &uat, &model_index, states, env, &mut warnings)?;
                if !seen.insert(up.name.clone()) {
                    return Err(invalid(
                        format!("{uat}.name"),
                        format!("upstream `{}` is defined twice in this channel", up.name),
                    ));
                }
                ups.push(Arc::new(up));
            }
            let channel = Arc::new(Channel {
                name: name.clone(),
                description,
                multiplier,
                rmb_multiplier,
                timeouts,
                retry,
                breaker,
                metrics: crate::metrics::ChannelMetrics::new(
                    &name,
                    ups.iter()
                        .flat_map(|u| u.models.iter().map(String::as_str))
                        .collect::<HashSet<_>>(),
                ),
                upstreams: ups,
            });
            channel_index.insert(name, channel.clone());
            channel_list.push(channel);
        }
        if channel_list.is_empty() {
            return Err(invalid("channels", "at least one channel is required"));
        }
        let router = match router {
            Some(section) => Some(Arc::new(crate::router::build_router(
                section,
                &|name| {
                    model_index
                        .get(name)
                        .filter(|m| m.kind == ModelKind::Chat)
                        .map(|m| (m.name.clone(), m.context_window))
                },
                &|name| channel_index.contains_key(name),
            )?)),
            None => None,
        };

        Ok(Config {
            server,
            admin,
            postgres: match (store.url, store.url_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "store.url",
                        "set at most one of `url` and `url_env`",
                    ))
                }
                (Some(u), None) => Some(u),
                (None, Some(var)) => Some(std::env::var(&var).map_err(|_| {
                    invalid(
                        "store.url_env",
                        format!("environment variable {var} is not set"),
                    )
                })?),
                (None, None) => None,
            }
            .map(|u| {
                if u.starts_with("postgres://") || u.starts_with("postgresql://") {
                    Ok((u, store.max_connections.max(1)))
                } else {
                    Err(invalid("store.url", "must start with postgres://"))
                }
            })
            .transpose()?,
            retention: Retention {
                raw_days: match store.raw_usage_days {
                    1 => {
                        return Err(invalid(
                            "store.raw_usage_days",
                            "keep at least 2 days (today and yesterday), or 0 for forever",
                        ))
                    }
                    d => d,
                },
                archive: match store.archive_dir.as_deref() {
                    None => Some(std::path::PathBuf::from(format!(
                        "{}.archive",
                        store.sqlite_path
                    ))),
                    Some("") => None,
                    Some(d) => Some(std::path::PathBuf::from(d)),
                },
                every: Duration::from_secs(store.prune_every_minutes.max(1) * 60),
            },
            sqlite_path: store.sqlite_path,
            models: model_list,
            model_index,
            channels: channel_list,
            channel_index,
            billing,
            cluster: match cluster {
                Some(c) => Some(build_cluster(c, &listen_port, env)?),
                None => None,
            },
            router,
            smtp,
            payments,
            alert_check: std::time::Duration::from_secs(alerts.check_seconds),
            warnings,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub node_id: String,
    pub key_prefix: String,
    pub flush: Duration,
    /// Nano-credits.
    pub lease_chunk: i64,
    pub idle_return: Duration,
    pub op_timeout: Duration,
}

fn build_cluster(
    c: ClusterSection,
    listen_port: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClusterSettings, ConfigError> {
    let ClusterSection {
        redis_url,
        redis_url_env,
        node_id,
        key_prefix,
        flush_ms,
        lease_credits,
        idle_return_seconds,
        op_timeout_ms,
    } = c;
    let redis_url = match (redis_url, redis_url_env) {
        (Some(u), None) => u,
        (None, Some(var)) => env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
            invalid(
                "cluster.redis_url_env",
                format!("environment variable {var} is not set"),
            )
        })?,
        _ => {
            return Err(invalid(
                "cluster",
                "set exactly one of `redis_url` and `redis_url_env`",
            ))
        }
    };
    if !(redis_url.starts_with("redis://")
        || redis_url.starts_with("rediss://")
        || redis_url.starts_with("redis+sentinel://")
        || redis_url.starts_with("redis+cluster://"))
    {
        return Err(invalid(
            "cluster.redis_url",
            "must start with redis://, rediss://, redis+sentinel:// or redis+cluster://",
        ));
    }
    let node_id = match node_id {
        Some(n) => n,
        None => {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".to_string());
            format!("{host}-{listen_port}")
        }
    };
    check_name(&node_id, "cluster.node_id")?;
    // A Redis Cluster keeps the bank in the slot of the prefix's hash tag.
    let key_prefix = if redis_url.starts_with("redis+cluster://") {
        crate::billing::cluster::cluster_prefix(&key_prefix)
    } else {
        key_prefix
    };
    if key_prefix.chars().any(char::is_whitespace) || key_prefix.len() > 64 {
        return Err(invalid(
            "cluster.key_prefix",
            "must be at most 64 characters without whitespace",
        ));
    }
    if !(1..=10_000).contains(&flush_ms) {
        return Err(invalid("cluster.flush_ms", "must be between 1 and 10000"));
    }
    let lease_chunk = crate::billing::pricing::to_nano(lease_credits)
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid("cluster.lease_credits", "must be a positive amount"))?;
    if !(1..=3600).contains(&idle_return_seconds) {
        return Err(invalid(
            "cluster.idle_return_seconds",
            "must be between 1 and 3600",
        ));
    }
    if !(10..=60_000).contains(&op_timeout_ms) {
        return Err(invalid(
            "cluster.op_timeout_ms",
            "must be between 10 and 60000",
        ));
    }
    Ok(ClusterSettings {
        redis_url,
        node_id,
        key_prefix,
        flush: Duration::from_millis(flush_ms),
        lease_chunk,
        idle_return: Duration::from_secs(idle_return_seconds),
        op_timeout: Duration::from_millis(op_timeout_ms),
    })
}

fn build_billing(b: BillingSection) -> Result<BillingSettings, ConfigError> {
    let BillingSection {
        enabled,
        credits_per_rmb,
        default_max_output_tokens,
        journal_flush_ms,
        image_token_bound,
        attachment_token_bound,
        charge_log_sync_ms,
        max_unstored_charges,
    } = b;
    if credits_per_rmb <= Decimal::ZERO {
        return Err(invalid("billing.credits_per_rmb", "must be positive"));
    }
    if default_max_output_tokens == 0 {
        return Err(invalid(
            "billing.default_max_output_tokens",
            "must be positive",
        ));
    }
    if !(1..=1000).contains(&journal_flush_ms) {
        return Err(invalid(
            "billing.journal_flush_ms",
            "must be between 1 and 1000",
        ));
    }
    if image_token_bound == 0 || attachment_token_bound == 0 {
        return Err(invalid(
            if image_token_bound == 0 {
                "billing.image_token_bound"
            } else {
                "billing.attachment_token_bound"
            },
            "must be positive",
        ));
    }
    Ok(BillingSettings {
        enabled,
        credits_per_rmb,
        default_max_output_tokens,
        journal_flush: Duration::from_millis(journal_flush_ms),
        image_token_bound,
        attachment_token_bound,
        charge_log_sync: Duration::from_millis(charge_log_sync_ms.clamp(1, 60_000)),
        max_unstored_charges: max_unstored_charges.max(1),
    })
}

fn check_name(name: &str, at: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(at, "must be 1-64 characters of [A-Za-z0-9-_.:]"))
    }
}

fn build_server(s: ServerSection) -> Result<ServerSettings, ConfigError> {
    let ServerSection {
        listen,
        threads,
        max_body_bytes,
        log_format,
        graceful_shutdown_seconds,
        upgrade_sock,
        pid_file,
        ca_file,
        keepalive_timeout_seconds,
        keepalive_requests,
        max_header_bytes,
        max_headers,
        max_buffered_body_bytes,
        header_timeout_seconds,
        min_body_bytes_per_second,
        body_rate_grace_seconds,
        trusted_proxies,
        proxy_protocol,
    } = s;
    let trusted_proxies = trusted_proxies
        .iter()
        .map(|c| crate::tenancy::parse_cidr(c).map_err(|e| invalid("server.trusted_proxies", e)))
        .collect::<Result<Vec<_>, _>>()?;
    if body_rate_grace_seconds > 3600 {
        return Err(invalid(
            "server.body_rate_grace_seconds",
            "must be at most 3600",
        ));
    }
    if header_timeout_seconds == 0 || header_timeout_seconds > 3600 {
        return Err(invalid(
            "server.header_timeout_seconds",
            "must be between 1 and 3600",
        ));
    }
    if max_buffered_body_bytes < max_body_bytes.saturating_mul(2) {
        return Err(invalid(
            "server.max_buffered_body_bytes",
            "must be at least twice server.max_body_bytes (one largest body must fit)",
        ));
    }
    if !(1024..=1_048_575).contains(&max_header_bytes) {
        return Err(invalid(
            "server.max_header_bytes",
            "must be between 1024 and 1048575 (Pingora reads at most 1 MiB of headers)",
        ));
    }
    if !(8..=256).contains(&max_headers) {
        return Err(invalid(
            "server.max_headers",
            "must be between 8 and 256 (Pingora parses at most 256)",
        ));
    }
    if keepalive_timeout_seconds == 0 || keepalive_timeout_seconds > 86_400 {
        return Err(invalid(
            "server.keepalive_timeout_seconds",
            "must be between 1 and 86400",
        ));
    }
    if keepalive_requests == 0 {
        return Err(invalid("server.keepalive_requests", "must be at least 1"));
    }
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "server.listen",
            "must be an address like 0.0.0.0:8080",
        ));
    }
    if threads == 0 || threads > 1024 {
        return Err(invalid("server.threads", "must be between 1 and 1024"));
    }
    if max_body_bytes < 1024 {
        return Err(invalid("server.max_body_bytes", "must be at least 1024"));
    }
    if let Some(ca) = &ca_file {
        if !std::path::Path::new(ca).is_file() {
            return Err(invalid(
                "server.ca_file",
                format!("`{ca}` is not a readable file"),
            ));
        }
    }
    let log_format = match log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        _ => return Err(invalid("server.log_format", "must be \"json\" or \"text\"")),
    };
    Ok(ServerSettings {
        trusted_proxies,
        proxy_protocol,
        listen,
        threads,
        max_body_bytes,
        log_format,
        graceful_shutdown: Duration::from_secs(graceful_shutdown_seconds),
        upgrade_sock: upgrade_sock.unwrap_or_else(|| "/tmp/tollgate_upgrade.sock".into()),
        pid_file: pid_file.unwrap_or_else(|| "/tmp/tollgate.pid".into()),
        ca_file,
        keepalive_timeout_seconds,
        keepalive_requests,
        max_header_bytes,
        max_headers,
        max_buffered_body_bytes,
        header_timeout: Duration::from_secs(header_timeout_seconds),
        min_body_rate: crate::proxy::body::MinRate {
            bytes_per_second: min_body_bytes_per_second,
            grace: Duration::from_secs(body_rate_grace_seconds),
        },
    })
}

fn build_timeouts(t: TimeoutsSection, at: &str) -> Result<Timeouts, ConfigError> {
    let TimeoutsSection {
        connect_ms,
        first_byte_ms,
        idle_ms,
        total_ms,
    } = t;
    for (v, f) in [
        (connect_ms, "connect_ms"),
        (first_byte_ms, "first_byte_ms"),
        (idle_ms, "idle_ms"),
        (total_ms, "total_ms"),
    ] {
        if v == 0 {
            return Err(invalid(format!("{at}.{f}"), "must be greater than 0"));
        }
    }
    if total_ms < first_byte_ms.min(idle_ms) {
        return Err(invalid(
            format!("{at}.total_ms"),
            "must not be shorter than first_byte_ms or idle_ms",
        ));
    }
    Ok(Timeouts {
        connect: Duration::from_millis(connect_ms),
        first_byte: Duration::from_millis(first_byte_ms),
        idle: Duration::from_millis(idle_ms),
        total: Duration::from_millis(total_ms),
    })
}

fn build_retry(r: RetrySection, at: &str) -> Result<RetryPolicy, ConfigError> {
    let RetrySection {
        max_attempts,
        max_retry_after_seconds,
    } = r;
    if !(1..=10).contains(&max_attempts) {
        return Err(invalid(
            format!("{at}.max_attempts"),
            "must be between 1 and 10",
        ));
    }
    Ok(RetryPolicy {
        max_attempts,
        max_retry_after: Duration::from_secs(max_retry_after_seconds),
    })
}

fn build_breaker(b: BreakerSection, at: &str) -> Result<BreakerPolicy, ConfigError> {
    let BreakerSection {
        failure_threshold,
        open_ms,
    } = b;
    if failure_threshold == 0 {
        return Err(invalid(
            format!("{at}.failure_threshold"),
            "must be at least 1",
        ));
    }
    Ok(BreakerPolicy {
        failure_threshold,
        open_for: Duration::from_millis(open_ms),
    })
}

fn build_model(m: ModelSection, at: &str) -> Result<Model, ConfigError> {
    let ModelSection {
        name,
        vendor,
        aliases,
        kind,
        max_output_tokens,
        context_window,
        tokenizer,
        image_tokens,
        reasoning,
        price,
    } = m;
    let tokenizer = match tokenizer.as_deref() {
        Some("o200k" | "o200k_base") => Tokenizer::O200k,
        Some("none") => Tokenizer::None,
        None if matches!(vendor.as_str(), "openai" | "mock") => Tokenizer::O200k,
        None => Tokenizer::None,
        Some(_) => {
            return Err(invalid(
                format!("{at}.tokenizer"),
                "must be \"o200k\" or \"none\"",
            ))
        }
    };
    if name.is_empty() || name.len() > 128 || name.contains(char::is_whitespace) {
        return Err(invalid(
            format!("{at}.name"),
            "must be 1-128 characters without spaces",
        ));
    }
    let kind = match kind.as_str() {
        "chat" => ModelKind::Chat,
        "embedding" => ModelKind::Embedding,
        _ => {
            return Err(invalid(
                format!("{at}.kind"),
                "must be \"chat\" or \"embedding\"",
            ))
        }
    };
    let price = match price {
        None => None,
        Some(p) => {
            let PriceSection {
                currency,
                input,
                cached_input,
                cache_write,
                output,
            } = p;
            let currency = match currency.to_ascii_uppercase().as_str() {
                "USD" => Currency::Usd,
                "RMB" | "CNY" => Currency::Rmb,
                _ => {
                    return Err(invalid(
                        format!("{at}.price.currency"),
                        "must be \"USD\" or \"RMB\"",
                    ))
                }
            };
            let cached_input = cached_input.unwrap_or(input);
            let cache_write = cache_write.unwrap_or(input);
            for (v, f) in [
                (input, "input"),
                (cached_input, "cached_input"),
                (cache_write, "cache_write"),
                (output, "output"),
            ] {
                if v.is_sign_negative() {
                    return Err(invalid(format!("{at}.price.{f}"), "must not be negative"));
                }
            }
            Some(Price {
                currency,
                input,
                cached_input,
                cache_write,
                output,
            })
        }
    };
    Ok(Model {
        name,
        vendor,
        kind,
        aliases,
        max_output_tokens,
        context_window,
        tokenizer,
        image_tokens,
        reasoning,
        price,
    })
}

#[allow(clippy::too_many_arguments)]
fn build_upstream(
    u: UpstreamSection,
    channel: &str,
    at: &str,
    models: &crate::FastMap<String, Arc<Model>>,
    states: &UpstreamStates,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Upstream, ConfigError> {
    let UpstreamSection {
        name,
        base_url,
        protocol,
        api_key_env,
        weight,
        models: served,
        model_map,
        responses,
    } = u;
    check_name(&name, &format!("{at}.name"))?;
    let base = BaseUrl::parse(&base_url)
        .map_err(|r| invalid(format!("{at}.base_url"), format!("`{base_url}` {r}")))?;
    let protocol = match protocol.as_str() {
        "openai" => Protocol::OpenAi,
        "anthropic" => Protocol::Anthropic,
        "gemini" => Protocol::Gemini,
        other => {
            return Err(invalid(
                format!("{at}.protocol"),
                format!(
                    "unknown protocol `{other}` (supported: \"openai\", \"anthropic\", \"gemini\")"
                ),
            ))
        }
    };
    let responses_path = match (protocol, responses) {
        (Protocol::OpenAi, Some(true)) => Some(format!("{}/responses", base.path)),
        (Protocol::OpenAi, None) if base.host == "api.openai.com" => {
            Some(format!("{}/responses", base.path))
        }
        (_, Some(true)) => {
            return Err(invalid(
                format!("{at}.responses"),
                "only an upstream of protocol \"openai\" can speak the Responses API",
            ))
        }
        _ => None,
    };
    if weight == 0 || weight > 10_000 {
        return Err(invalid(
            format!("{at}.weight"),
            "must be between 1 and 10000",
        ));
    }
    if served.is_empty() {
        return Err(invalid(
            format!("{at}.models"),
            "an upstream must serve at least one model",
        ));
    }
    let mut set = crate::FastSet::default();
    for (i, m) in served.iter().enumerate() {
        // Aliases are resolved to canonical names so routing compares one spelling.
        let model = models.get(m).ok_or_else(|| {
            invalid(
                format!("{at}.models[{i}]"),
                format!("model `{m}` is not defined in [[models]]"),
            )
        })?;
        set.insert(model.name.clone());
    }
    let mut map = BTreeMap::new();
    for (k, v) in model_map {
        let model = models.get(&k).ok_or_else(|| {
            invalid(
                format!("{at}.model_map.{k}"),
                format!("model `{k}` is not defined in [[models]]"),
            )
        })?;
        if v.is_empty() {
            return Err(invalid(format!("{at}.model_map.{k}"), "must not be empty"));
        }
        map.insert(model.name.clone(), v);
    }
    let mut disabled = None;
    let api_key = match &api_key_env {
        Some(var) => match env(var) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                let why = format!("environment variable {var} is not set");
                warnings.push(format!(
                    "{at} ({channel}/{name}): {why}; the upstream is disabled"
                ));
                disabled = Some(why);
                None
            }
        },
        None => None,
    };
    let id = format!("{channel}/{name}");
    let state = states.get_or_create(&id, &base);
    let host_header = http::HeaderValue::from_str(&base.authority()).map_err(|_| {
        invalid(
            format!("{at}.base_url"),
            "has a host that cannot be sent in a Host header",
        )
    })?;
    let auth_name = match protocol {
        Protocol::OpenAi | Protocol::Responses => http::header::AUTHORIZATION,
        Protocol::Anthropic => http::header::HeaderName::from_static("x-api-key"),
        Protocol::Gemini => http::header::HeaderName::from_static("x-goog-api-key"),
    };
    let auth_value = |k: &str| match protocol {
        Protocol::OpenAi | Protocol::Responses => format!("Bearer {k}"),
        Protocol::Anthropic | Protocol::Gemini => k.to_string(),
    };
    let auth_header = match api_key.as_deref() {
        Some(k) => {
            let mut v = http::HeaderValue::from_str(&auth_value(k)).map_err(|_| {
                invalid(
                    format!("{at}.api_key_env"),
                    "the key in this variable contains characters not allowed in a header",
                )
            })?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let chat_path = match protocol {
        Protocol::Anthropic => format!("{}/messages", base.path),
        Protocol::OpenAi | Protocol::Gemini | Protocol::Responses => {
            format!("{}/chat/completions", base.path)
        }
    };
    let embeddings_path = format!("{}/embeddings", base.path);
    let chat_header_templates = match protocol {
        Protocol::OpenAi => {
            let auth = auth_header.as_ref().map(|v| (&auth_name, v));
            request_header(&chat_path, &host_header, auth, false)
                .ok()
                .zip(request_header(&chat_path, &host_header, auth, true).ok())
                .map(|(json, stream)| Box::new([json, stream]))
        }
        Protocol::Anthropic | Protocol::Gemini | Protocol::Responses => None,
    };
    Ok(Upstream {
        attempts_ok: crate::metrics::METRICS
            .attempts
            .with_label_values(&[&id, "ok"]),
        chat_header_templates,
        host_header,
        auth_name,
        auth_header,
        chat_path,
        embeddings_path,
        responses_path,
        id,
        name,
        base,
        protocol,
        api_key_env,
        api_key,
        weight,
        models: set,
        model_map: map,
        disabled,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[models]]
        name = "gpt-4o-mini"
        aliases = ["mini"]
        [[channels]]
        name = "official"
        multiplier = "7.2"
        [[channels.upstreams]]
        name = "a"
        base_url = "https://api.example.com/v1/"
        api_key_env = "K"
        models = ["mini"]
        model_map = { "gpt-4o-mini" = "gpt-4o-mini-2024-07-18" }
    "#;

    fn build(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            reason: e.to_string(),
        })?;
        Config::build(file, &UpstreamStates::default(), &|v| {
            (v == "K").then(|| "secret".to_string())
        })
    }

    #[test]
    fn good_config_builds() {
        let c = build(GOOD).unwrap();
        let ch = c.channel("official").unwrap();
        let up = &ch.upstreams[0];
        assert_eq!(up.base.host, "api.example.com");
        assert_eq!(up.base.port, 443);
        assert_eq!(up.base.path, "/v1");
        assert!(
            up.models.contains("gpt-4o-mini"),
            "alias resolved to canonical name"
        );
        assert_eq!(up.upstream_model("gpt-4o-mini"), "gpt-4o-mini-2024-07-18");
        assert_eq!(up.api_key.as_deref(), Some("secret"));
        assert_eq!(c.model("mini").unwrap().name, "gpt-4o-mini");
    }

    #[test]
    fn protocol_sets_credential_header_and_paths() {
        let cases = [
            (
                "openai",
                "authorization",
                "Bearer secret",
                "/v1/chat/completions",
            ),
            ("anthropic", "x-api-key", "secret", "/v1/messages"),
            ("gemini", "x-goog-api-key", "secret", "/v1/chat/completions"),
        ];
        for (protocol, header, value, path) in cases {
            let text = GOOD.replace(
                "api_key_env = \"K\"",
                &format!("api_key_env = \"K\"\nprotocol = \"{protocol}\""),
            );
            let c = build(&text).unwrap();
            let up = &c.channel("official").unwrap().upstreams[0];
            assert_eq!(up.protocol.as_str(), protocol);
            assert_eq!(up.auth_name.as_str(), header);
            assert_eq!(up.auth_header.as_ref().unwrap().to_str().unwrap(), value);
            assert_eq!(up.chat_path, path);
        }
        let e = build(&GOOD.replace(
            "api_key_env = \"K\"",
            "api_key_env = \"K\"\nprotocol = \"grpc\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("channels[0].upstreams[0].protocol") && e.contains("gemini"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_bad_path() {
        let cases = [
            (
                GOOD.replace("https://api", "ftp://api"),
                "channels[0].upstreams[0].base_url",
            ),
            (
                GOOD.replace("models = [\"mini\"]", "models = [\"nope\"]"),
                "channels[0].upstreams[0].models[0]",
            ),
            (
                GOOD.replace("name = \"a\"", "name = \"a b\""),
                "channels[0].upstreams[0].name",
            ),
            (
                GOOD.replace("multiplier = \"7.2\"", "multiplier = \"-1\""),
                "channels[0].multiplier",
            ),
            (
                format!("[server]\nlisten = \"nope\"\n{GOOD}"),
                "server.listen",
            ),
            (
                format!("[retry]\nmax_attempts = 0\n{GOOD}"),
                "retry.max_attempts",
            ),
            (
                GOOD.replace("api_key_env", "api_kye_env"),
                "unknown field `api_kye_env`",
            ),
        ];
        for (text, want) in cases {
            let err = build(&text).unwrap_err().to_string();
            assert!(err.contains(want), "expected `{want}` in `{err}`");
        }
    }

    #[test]
    fn missing_key_env_disables_upstream_with_warning() {
        let c = build(&GOOD.replace("api_key_env = \"K\"", "api_key_env = \"UNSET\"")).unwrap();
        let up = &c.channels[0].upstreams[0];
        assert!(up.disabled.is_some());
        assert_eq!(
            c.warnings
                .iter()
                .filter(|w| w.contains("is not set"))
                .count(),
            1
        );
    }

    #[test]
    fn base_url_parsing() {
        let cases = [
            (
                "http://127.0.0.1:9000/v1",
                Some((false, "127.0.0.1", 9000, "/v1")),
            ),
            ("https://x.y", Some((true, "x.y", 443, ""))),
            ("http://[::1]:81/a/b/", Some((false, "::1", 81, "/a/b"))),
            ("http://:80/", None),
            ("http://h:notaport/", None),
            ("h:80", None),
        ];
        for (s, want) in cases {
            let got = BaseUrl::parse(s)
                .ok()
                .map(|b| (b.tls, b.host, b.port, b.path));
            let want = want.map(|(a, b, c, d)| (a, b.to_string(), c, d.to_string()));
            assert_eq!(got, want, "{s}");
        }
    }

    #[test]
    fn shipped_configs_validate() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let file: FileConfig =
                    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                Config::build(file, &UpstreamStates::default(), &|_| Some("x".into()))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}
