//! The configuration file as written by operators (TOML). Loose on purpose: defaults are filled
//! here, meaning is checked in `runtime.rs`. Unknown keys are rejected so that a typo never
//! silently disables a setting.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub retry: RetrySection,
    #[serde(default)]
    pub breaker: BreakerSection,
    #[serde(default)]
    pub billing: BillingSection,
    /// Cluster mode: several gateway processes share balances through one Redis.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    #[serde(default)]
    pub channels: Vec<ChannelSection>,
    /// The complexity router behind `model: "auto"` (docs/routing.md); absent: no `auto`.
    #[serde(default)]
    pub router: Option<RouterSection>,
    /// Outgoing mail (console invitations); absent: the console shows links to copy.
    #[serde(default)]
    pub smtp: Option<SmtpSection>,
    /// Online payment (docs/payments.md); absent: only operators credit tenants.
    #[serde(default)]
    pub payments: Option<PaymentsSection>,
    /// Budget and balance alerts (docs/payments.md "Alerts").
    #[serde(default)]
    pub alerts: AlertsSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// How often every node reads the tenants' balances and quotas against their thresholds.
    #[serde(default = "default_alert_check")]
    pub check_seconds: u64,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            check_seconds: default_alert_check(),
        }
    }
}

fn default_alert_check() -> u64 {
    15
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsSection {
    /// Smallest and largest order, in RMB.
    #[serde(default = "default_min_rmb")]
    pub min_rmb: Decimal,
    #[serde(default = "default_max_rmb")]
    pub max_rmb: Decimal,
    /// How long an order can be paid (minutes; Stripe needs 30 to 1440).
    #[serde(default = "default_order_minutes")]
    pub order_minutes: u32,
    /// The amounts (RMB) a tenant admin may pick; empty: any amount from min to max.
    #[serde(default)]
    pub amounts: Vec<Decimal>,
    #[serde(default)]
    pub stripe: Option<StripeSection>,
    #[serde(default)]
    pub alipay: Option<AlipaySection>,
    #[serde(default)]
    pub wechat: Option<WechatSection>,
}

/// Alipay (open platform, RSA2 keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipaySection {
    pub app_id: String,
    /// The application's private key: a PEM file, or the environment variable holding it
    /// (PEM or the bare base64 Alipay's key tool writes).
    #[serde(default)]
    pub private_key_file: Option<String>,
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// Alipay's public key (PEM or bare base64), a file or an environment variable.
    #[serde(default)]
    pub alipay_public_key_file: Option<String>,
    #[serde(default)]
    pub alipay_public_key_env: Option<String>,
    #[serde(default = "default_alipay_gateway")]
    pub gateway: String,
}

fn default_alipay_gateway() -> String {
    "https://openapi.alipay.com/gateway.do".into()
}

/// WeChat Pay API v3 (Native payment).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSection {
    pub mchid: String,
    pub appid: String,
    /// The serial number of the merchant API certificate.
    pub merchant_serial: String,
    /// `apiclient_key.pem`, or the environment variable holding it.
    #[serde(default)]
    pub private_key_file: Option<String>,
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// The environment variable holding the APIv3 key (32 characters).
    pub api_v3_key_env: String,
    /// Platform certificates (PEM files); more are fetched when one rotates.
    #[serde(default)]
    pub platform_cert_files: Vec<String>,
    /// Or WeChat Pay's public key (`PUB_KEY_ID_...` and its PEM file).
    #[serde(default)]
    pub public_key_id: Option<String>,
    #[serde(default)]
    pub public_key_file: Option<String>,
    #[serde(default = "default_wechat_api")]
    pub api_base: String,
}

fn default_wechat_api() -> String {
    "https://api.mch.weixin.qq.com".into()
}

fn default_min_rmb() -> Decimal {
    Decimal::from(10)
}
fn default_max_rmb() -> Decimal {
    Decimal::from(100_000)
}
fn default_order_minutes() -> u32 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSection {
    /// Environment variable holding the secret API key (`sk_live_...`).
    pub secret_key_env: String,
    /// Environment variable holding the webhook endpoint's signing secret (`whsec_...`).
    pub webhook_secret_env: String,
    #[serde(default = "default_stripe_api")]
    pub api_base: String,
}

fn default_stripe_api() -> String {
    "https://api.stripe.com".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Worker threads of the gateway service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Largest accepted request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// "json" or "text".
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Seconds a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_seconds: u64,
    /// Path of Pingora's upgrade socket (for zero-downtime restarts).
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    #[serde(default)]
    pub pid_file: Option<String>,
    /// Extra CA certificates (PEM) trusted for upstream TLS, besides the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// A client connection idle between requests this long is closed (nginx
    /// `keepalive_timeout`: 75 s).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_seconds: u64,
    /// Requests served on one client connection before it is closed (nginx
    /// `keepalive_requests`: 1000); read at start.
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Largest request head (request line and headers) accepted, in bytes (431 beyond;
    /// nginx 32 KiB, Envoy 60 KiB).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers accepted (431 beyond; Envoy 100).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Memory all request bodies over 64 KiB may take at once (each counts twice its length);
    /// a body that does not fit is answered 503 with Retry-After.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_body_bytes: usize,
    /// A request head (line and headers) must arrive whole within this many seconds (nginx
    /// `client_header_timeout`: 60), from the connection's start or the head's first byte.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// The slowest a request body may arrive once `body_rate_grace_seconds` have passed (408
    /// and the connection closed below it).
    #[serde(default = "default_min_body_rate")]
    pub min_body_bytes_per_second: u64,
    #[serde(default = "default_body_grace")]
    pub body_rate_grace_seconds: u64,
    /// Load balancers and proxies in front of the gateway (CIDRs): only from these is the
    /// client address taken from `X-Forwarded-For` (network allow-lists, logs, the audit trail).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Every connection to the gateway starts with a PROXY protocol header (v1 or v2, as sent by
    /// HAProxy `send-proxy`, AWS NLB, ...), whose source address becomes the client's; only from
    /// `trusted_proxies` when any are listed. Read at start.
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_min_body_rate() -> u64 {
    1024
}

fn default_body_grace() -> u64 {
    10
}

fn default_header_timeout() -> u64 {
    60
}

fn default_max_buffered() -> usize {
    256 * 1024 * 1024
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_keepalive_timeout() -> u64 {
    75
}

fn default_keepalive_requests() -> u32 {
    1000
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            threads: default_threads(),
            max_body_bytes: default_max_body(),
            log_format: default_log_format(),
            graceful_shutdown_seconds: default_grace(),
            upgrade_sock: None,
            pid_file: None,
            ca_file: None,
            keepalive_timeout_seconds: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_buffered_body_bytes: default_max_buffered(),
            header_timeout_seconds: default_header_timeout(),
            min_body_bytes_per_second: default_min_body_rate(),
            body_rate_grace_seconds: default_body_grace(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Environment variable holding the operator token for the admin API.
    #[serde(default = "default_admin_token_env")]
    pub token_env: String,
    /// How long a console sign-in lasts (hours).
    #[serde(default = "default_session_hours")]
    pub session_hours: u32,
    /// The console's address as users reach it (e.g. `https://llm.example.com`), for links in
    /// invitation emails; absent: the address the request came to.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Mark console cookies `Secure` (set when the console is reached over HTTPS through a
    /// proxy that terminates TLS).
    #[serde(default)]
    pub secure_cookies: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            token_env: default_admin_token_env(),
            session_hours: default_session_hours(),
            public_url: None,
            secure_cookies: false,
        }
    }
}

fn default_session_hours() -> u32 {
    12
}

/// Outgoing mail for invitations (the console): an SMTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    /// Default: 587 with STARTTLS, 465 with TLS, 25 without.
    #[serde(default)]
    pub port: Option<u16>,
    /// The sender, e.g. `Tollgate <llm-gateway@example.com>`.
    pub from: String,
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the SMTP password (never the password itself).
    #[serde(default)]
    pub password_env: Option<String>,
    /// `starttls` (default), `tls` or `none` (a relay on the local network only).
    #[serde(default)]
    pub tls: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// SQLite database file. With `url`, the record is in PostgreSQL and this path only names
    /// where the process keeps its local files (the charge log: `<sqlite_path>.charges/`).
    #[serde(default = "default_db")]
    pub sqlite_path: String,
    /// The record in PostgreSQL (`postgres://user:password@host:port/db`) instead of SQLite;
    /// use `url_env` when it carries a password.
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the PostgreSQL URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Pooled PostgreSQL connections of this process.
    #[serde(default = "default_pg_connections")]
    pub max_connections: u32,
    /// Days raw usage records are kept (today included; at least 2); 0 keeps them forever.
    /// Roll-ups and the ledger (a pruned day's charges as day summaries) are kept forever.
    #[serde(default = "default_raw_usage_days")]
    pub raw_usage_days: u32,
    /// Where pruned days are archived (zstd JSON lines) before they are removed; relative paths
    /// are relative to the working directory; "" removes without archiving. Default:
    /// `<sqlite_path>.archive/`.
    #[serde(default)]
    pub archive_dir: Option<String>,
    /// Minutes between retention passes of this node.
    #[serde(default = "default_prune_minutes")]
    pub prune_every_minutes: u64,
}

fn default_raw_usage_days() -> u32 {
    90
}

fn default_prune_minutes() -> u64 {
    60
}

fn default_pg_connections() -> u32 {
    8
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            sqlite_path: default_db(),
            url: None,
            url_env: None,
            max_connections: default_pg_connections(),
            raw_usage_days: default_raw_usage_days(),
            archive_dir: None,
            prune_every_minutes: default_prune_minutes(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    #[serde(default = "d_connect")]
    pub connect_ms: u64,
    #[serde(default = "d_first_byte")]
    pub first_byte_ms: u64,
    #[serde(default = "d_idle")]
    pub idle_ms: u64,
    #[serde(default = "d_total")]
    pub total_ms: u64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            connect_ms: d_connect(),
            first_byte_ms: d_first_byte(),
            idle_ms: d_idle(),
            total_ms: d_total(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Upstream attempts per request, the first one included.
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// Longest Retry-After the gateway honours by parking an upstream; longer values are capped.
    #[serde(default = "d_max_retry_after")]
    pub max_retry_after_seconds: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            max_attempts: d_attempts(),
            max_retry_after_seconds: d_max_retry_after(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// Consecutive failures that eject an upstream.
    #[serde(default = "d_failures")]
    pub failure_threshold: u32,
    /// How long an ejected upstream waits before one probe request is let through.
    #[serde(default = "d_open_ms")]
    pub open_ms: u64,
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection {
            failure_threshold: d_failures(),
            open_ms: d_open_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSection {
    /// `false`: metering only (usage is recorded, no credit is held or charged). For internal
    /// deployments without prepaid balances, and to measure what billing costs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Credits bought by one RMB (fixed ratio).
    #[serde(default = "one")]
    pub credits_per_rmb: Decimal,
    /// Output tokens reserved when neither the request nor the model caps them.
    #[serde(default = "d_default_max_output")]
    pub default_max_output_tokens: u64,
    /// How often settled charges are committed to the journal (group commit).
    #[serde(default = "d_journal_flush")]
    pub journal_flush_ms: u64,
    /// Charged calls' records that may wait for the store (while it does not answer) before
    /// new calls are refused with 503 `store_unavailable` (~0.5 KB of memory each).
    #[serde(default = "d_max_unstored")]
    pub max_unstored_charges: u64,
    /// Prompt tokens held per attached image when the model sets no `image_tokens`: the most
    /// any documented vendor counts for one image (docs/billing.md, "Holds").
    #[serde(default = "d_image_token_bound")]
    pub image_token_bound: u64,
    /// Prompt tokens held for a request carrying a file or document of unknown size (a PDF by
    /// URL or file id) when the model sets no `context_window`.
    #[serde(default = "d_attachment_token_bound")]
    pub attachment_token_bound: u64,
    /// How often the charge log is synced to disk: what a power loss may lose at most.
    #[serde(default = "d_charge_log_sync")]
    pub charge_log_sync_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://host:port/db`; use `redis_url_env` when the URL carries a password.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Name of an environment variable holding the Redis URL.
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// This process's id in the fleet, stable across restarts (its leases are reclaimed on
    /// start). Default: `<hostname>-<listen port>`.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default = "d_key_prefix")]
    pub key_prefix: String,
    /// How often charges are flushed to Redis (batched, one round trip per flush).
    #[serde(default = "d_cluster_flush")]
    pub flush_ms: u64,
    /// Smallest allowance taken from a tenant's shared balance at a time, in credits.
    #[serde(default = "d_lease_credits")]
    pub lease_credits: Decimal,
    /// Allowance unused this long goes back to the shared balance.
    #[serde(default = "d_idle_return")]
    pub idle_return_seconds: u64,
    /// Every Redis call is abandoned after this (then the call fails closed).
    #[serde(default = "d_op_timeout")]
    pub op_timeout_ms: u64,
}

fn d_max_unstored() -> u64 {
    1_000_000
}

fn d_key_prefix() -> String {
    "tg:".to_string()
}
fn d_cluster_flush() -> u64 {
    50
}
fn d_lease_credits() -> Decimal {
    Decimal::ONE
}
fn d_idle_return() -> u64 {
    5
}
fn d_op_timeout() -> u64 {
    2000
}

impl Default for BillingSection {
    fn default() -> Self {
        BillingSection {
            enabled: true,
            credits_per_rmb: one(),
            default_max_output_tokens: d_default_max_output(),
            journal_flush_ms: d_journal_flush(),
            max_unstored_charges: d_max_unstored(),
            image_token_bound: d_image_token_bound(),
            attachment_token_bound: d_attachment_token_bound(),
            charge_log_sync_ms: d_charge_log_sync(),
        }
    }
}

fn yes() -> bool {
    true
}
fn d_default_max_output() -> u64 {
    4096
}
fn d_journal_flush() -> u64 {
    25
}
fn d_charge_log_sync() -> u64 {
    1000
}
fn d_image_token_bound() -> u64 {
    8_192
}
fn d_attachment_token_bound() -> u64 {
    2_097_152
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// "chat" (default) or "embedding".
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Cap on output tokens when the request gives none (used to reserve credits).
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// The prompt cannot exceed it (the vendor refuses longer ones): it caps the credit hold,
    /// so it must not be set below the vendor's real window.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// The vendor's tokenizer when the gateway has it (`"o200k"`), else `"none"`. Default:
    /// `o200k` for vendors `openai` and `mock`, `none` otherwise. With a tokenizer, a call whose
    /// byte bound does not fit the remaining credit is counted exactly before it is refused.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Most prompt tokens one image may cost on this model (default
    /// `billing.image_token_bound`).
    #[serde(default)]
    pub image_tokens: Option<u64>,
    /// Whether the model takes a reasoning effort or thinking budget. `false`: one a caller's
    /// request carries (Claude Code always sends `thinking`) is dropped when the request is
    /// translated for this model, since vendors refuse it on models that do not reason.
    /// Unset: passed on.
    #[serde(default)]
    pub reasoning: Option<bool>,
    #[serde(default)]
    pub price: Option<PriceSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    /// "USD" or "RMB".
    pub currency: String,
    /// Per 1M tokens.
    pub input: Decimal,
    #[serde(default)]
    pub cached_input: Option<Decimal>,
    #[serde(default)]
    pub cache_write: Option<Decimal>,
    #[serde(default)]
    pub output: Decimal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Price multiplier for USD-priced models (carries the exchange ratio).
    #[serde(default = "one")]
    pub multiplier: Decimal,
    /// Multiplier for RMB-priced models.
    #[serde(default = "one")]
    pub rmb_multiplier: Decimal,
    #[serde(default)]
    pub timeouts: Option<TimeoutsSection>,
    #[serde(default)]
    pub retry: Option<RetrySection>,
    #[serde(default)]
    pub breaker: Option<BreakerSection>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: String,
    /// e.g. "https://api.openai.com/v1"; requests go to `<base_url>/chat/completions`.
    pub base_url: String,
    /// Wire protocol: "openai" (OpenAI-compatible), "anthropic" (Messages) or "gemini".
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Environment variable holding this upstream's API key; never the key itself.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "d_weight")]
    pub weight: u32,
    /// Gateway model names this upstream serves.
    pub models: Vec<String>,
    /// Gateway model name -> the upstream's own model name.
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// OpenAI-protocol upstreams: the vendor also speaks the Responses API at
    /// `<base_url>/responses`, so `/v1/responses` calls pass through unchanged (built-in tools,
    /// reasoning items). Default: true for api.openai.com, false otherwise (Responses calls
    /// are then translated to chat completions).
    #[serde(default)]
    pub responses: Option<bool>,
}

/// `[router]`: tiers for `model: "auto"` and how requests are spread over them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// The complexity model (JSON written by scripts/router/train.py), relative to the
    /// working directory.
    #[serde(default = "d_router_model")]
    pub model_file: String,
    /// Mode of plain `auto`: "cheap" (~20% strong), "balanced" (~50%) or "quality" (~80%).
    #[serde(default = "d_router_mode")]
    pub default_mode: String,
    /// Tier used when the router fails (default: the last, strongest tier).
    #[serde(default)]
    pub fallback_tier: Option<String>,
    /// Let callers raise the tier with the `x-tollgate-tier` header or `tollgate_tier` field.
    #[serde(default)]
    pub allow_hints: bool,
    /// Requests with more tools than this go to the strong tier.
    #[serde(default = "d_max_light_tools")]
    pub max_light_tools: usize,
    /// Conversations remembered as escalated (0 disables stickiness).
    #[serde(default = "d_sticky_capacity")]
    pub sticky_capacity: usize,
    /// How long an escalated conversation stays on its tier after its last request.
    #[serde(default = "d_sticky_ttl")]
    pub sticky_ttl_seconds: u64,
    /// Cheapest first: `[[router.tiers]]` name = "light" ..., then name = "strong" ...
    pub tiers: Vec<TierSection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierSection {
    pub name: String,
    /// A configured chat model (name or alias).
    pub model: String,
    /// Route through this channel instead of the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Context window in tokens (default: the model's `context_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u64>,
}

fn d_router_model() -> String {
    "conf/router/complexity-v2.json".into()
}
fn d_router_mode() -> String {
    "balanced".into()
}
fn d_max_light_tools() -> usize {
    8
}
fn d_sticky_capacity() -> usize {
    100_000
}
fn d_sticky_ttl() -> u64 {
    3_600
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:8081".into()
}
fn default_admin_token_env() -> String {
    "TOLLGATE_ADMIN_TOKEN".into()
}
fn default_threads() -> usize {
    2
}
fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_log_format() -> String {
    "text".into()
}
fn default_grace() -> u64 {
    30
}
fn default_db() -> String {
    "tollgate.db".into()
}
fn default_kind() -> String {
    "chat".into()
}
fn default_protocol() -> String {
    "openai".into()
}
fn d_connect() -> u64 {
    5_000
}
fn d_first_byte() -> u64 {
    120_000
}
fn d_idle() -> u64 {
    60_000
}
fn d_total() -> u64 {
    900_000
}
fn d_attempts() -> u32 {
    3
}
fn d_max_retry_after() -> u64 {
    60
}
fn d_failures() -> u32 {
    5
}
fn d_open_ms() -> u64 {
    30_000
}
fn d_weight() -> u32 {
    1
}
fn one() -> Decimal {
    Decimal::ONE
}
