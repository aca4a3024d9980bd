//! The admin API: a small HTTP service on its own port (loopback by default), hosted as a
//! Pingora service so that graceful upgrades hand its listener over like the gateway's.
//!
//! Unauthenticated: `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text format).
//! Operator token (`Authorization: Bearer $TOLLGATE_ADMIN_TOKEN`): everything under `/admin/`.
//! Errors use the same JSON shape as the data plane.

use crate::app::App;
use crate::billing::ledger::{BalanceView, EntryKind};
use crate::billing::pricing;
use crate::config::reload;
use crate::error::GatewayError;
use crate::metrics;
use crate::routing::upstream::BreakerState;
use crate::tenancy::store::{NewKey, StoreError};
use crate::tenancy::{KeyId, TenantId};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

const MAX_ADMIN_BODY: usize = 1024 * 1024;

pub struct AdminApi {
    pub app: Arc<App>,
}

fn reply(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error_reply(e: &GatewayError) -> Response<Vec<u8>> {
    let v: serde_json::Value =
        serde_json::from_slice(&e.openai_body()).unwrap_or(serde_json::Value::Null);
    reply(e.status(), v)
}

fn store_error(e: StoreError) -> GatewayError {
    match e {
        StoreError::NotFound(m) => GatewayError::NotFound(format!("{m} not found")),
        StoreError::Conflict(m) => GatewayError::BadRequest {
            message: m,
            param: None,
        },
        StoreError::Invalid(m) => GatewayError::bad_request(m),
        other => GatewayError::Internal(other.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// Tenant id or name.
    tenant: serde_json::Value,
    name: String,
    default_channel: String,
    #[serde(default)]
    allowed_channels: Vec<String>,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    /// Lifetime spending cap of the key, in credits.
    #[serde(default)]
    quota_credits: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    /// Money received, in RMB; converted at the configured credits per RMB.
    amount_rmb: Decimal,
    #[serde(default)]
    note: Option<String>,
    /// Optional idempotency key: the same top-up sent twice is applied once.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Adjustment {
    /// Signed, in credits.
    credits: Decimal,
    note: String,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCodes {
    credits: Decimal,
    count: u32,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Redeem {
    code: String,
}

fn credits_json(nano: i64) -> serde_json::Value {
    json!(pricing::to_credits(nano).normalize().to_string())
}

fn balance_json(tenant: TenantId, v: BalanceView) -> serde_json::Value {
    json!({
        "tenant_id": tenant,
        "available": credits_json(v.available),
        "reserved": credits_json(v.reserved),
        "charged": credits_json(v.charged),
        "credited": credits_json(v.credited),
        "nano": v,
    })
}

fn positive_nano(credits: Decimal, field: &str) -> Result<i64, GatewayError> {
    match pricing::to_nano(credits) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(GatewayError::BadRequest {
            message: format!("`{field}` must be a positive amount"),
            param: Some(field.into()),
        }),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

impl AdminApi {
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = self.app.admin_token.as_deref() else {
            return false;
        };
        let presented = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            // Constant-time comparison of the token digests.
            Some(p) => {
                use sha2::{Digest, Sha256};
                let a = Sha256::digest(p.as_bytes());
                let b = Sha256::digest(expected.as_bytes());
                a.iter()
                    .zip(b.iter())
                    .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                    == 0
            }
            None => false,
        }
    }

    async fn read_json<T: for<'de> Deserialize<'de>>(
        session: &mut ServerSession,
    ) -> Result<T, GatewayError> {
        let mut buf = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_ADMIN_BODY {
                        return Err(GatewayError::PayloadTooLarge {
                            limit: MAX_ADMIN_BODY,
                        });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    return Err(GatewayError::bad_request(
                        "The request body could not be read.",
                    ))
                }
            }
        }
        serde_json::from_slice(&buf)
            .map_err(|e| GatewayError::bad_request(format!("Invalid JSON body: {e}")))
    }

    async fn tenant(&self, id_or_name: &str) -> Result<TenantId, GatewayError> {
        let t = id_or_name.to_string();
        Ok(self.blocking(move |a| a.store.find_tenant(&t)).await?.id)
    }

    /// Run a store call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&App) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let app = self.app.clone();
        match tokio::task::spawn_blocking(move || f(&app)).await {
            Ok(r) => r.map_err(store_error),
            Err(e) => Err(GatewayError::Internal(e.to_string())),
        }
    }

    async fn route(&self, session: &mut ServerSession) -> Result<Response<Vec<u8>>, GatewayError> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().map(str::to_string);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();

        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return Ok(reply(200, json!({"status": "ok"}))),
            (&Method::GET, ["readyz"]) => {
                let ready = self.app.keys.generation() > 0;
                return Ok(reply(
                    if ready { 200 } else { 503 },
                    json!({"ready": ready, "config_generation": self.app.generation()}),
                ));
            }
            (&Method::GET, ["metrics"]) => {
                self.app.export_upstream_health();
                let body = metrics::render();
                return Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .map_err(|e| GatewayError::Internal(e.to_string()));
            }
            _ => {}
        }

        if segments.first() != Some(&"admin") {
            return Err(GatewayError::NotFound(format!("Unknown path `{path}`.")));
        }
        if !self.authorized(session) {
            return Err(GatewayError::InvalidKey(
                "The admin API needs `Authorization: Bearer <operator token>` (TOLLGATE_ADMIN_TOKEN).".into(),
            ));
        }

        match (&method, &segments[1..]) {
            (&Method::GET, ["tenants"]) => {
                let tenants = self.blocking(|a| a.store.list_tenants()).await?;
                Ok(reply(200, json!({"data": tenants})))
            }
            (&Method::POST, ["tenants"]) => {
                let req: CreateTenant = Self::read_json(session).await?;
                let t = self
                    .blocking(move |a| a.store.create_tenant(&req.name))
                    .await?;
                Ok(reply(201, json!(t)))
            }
            (&Method::GET, ["keys"]) => {
                let tenant = match query_param(query.as_deref(), "tenant") {
                    Some(t) => {
                        let t = t.to_string();
                        Some(self.blocking(move |a| a.store.find_tenant(&t)).await?.id)
                    }
                    None => None,
                };
                let keys = self.blocking(move |a| a.store.list_keys(tenant)).await?;
                Ok(reply(200, json!({"data": keys})))
            }
            (&Method::POST, ["keys"]) => {
                let req: CreateKey = Self::read_json(session).await?;
                let cfg = self.app.config();
                for c in std::iter::once(&req.default_channel).chain(req.allowed_channels.iter()) {
                    if cfg.channel(c).is_none() {
                        return Err(GatewayError::BadRequest {
                            message: format!("Channel `{c}` is not configured."),
                            param: Some("default_channel".into()),
                        });
                    }
                }
                let mut models = Vec::new();
                for m in &req.allowed_models {
                    match cfg.model(m) {
                        Some(model) => models.push(model.name.clone()),
                        None => {
                            return Err(GatewayError::BadRequest {
                                message: format!("Model `{m}` is not configured."),
                                param: Some("allowed_models".into()),
                            })
                        }
                    }
                }
                let quota_nano = match req.quota_credits {
                    Some(q) => Some(positive_nano(q, "quota_credits")?),
                    None => None,
                };
                let tenant_ref = match &req.tenant {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(GatewayError::bad_request(
                            "`tenant` must be a tenant id or name.",
                        ))
                    }
                };
                let (key, plaintext) = self
                    .blocking(move |a| {
                        let tenant = a.store.find_tenant(&tenant_ref)?;
                        let out = a.store.create_key(&NewKey {
                            tenant_id: tenant.id,
                            name: req.name,
                            default_channel: req.default_channel,
                            allowed_channels: req.allowed_channels,
                            allowed_models: models,
                            expires_at: req.expires_at,
                            quota_nano,
                        })?;
                        // Usable as soon as this call returns.
                        a.refresh_keys()?;
                        Ok(out)
                    })
                    .await?;
                Ok(reply(201, json!({"key": plaintext, "record": key})))
            }
            (&Method::POST, ["keys", id, "revoke"]) | (&Method::DELETE, ["keys", id]) => {
                let id: i64 = id
                    .parse()
                    .map_err(|_| GatewayError::bad_request("Key id must be a number."))?;
                let key = self
                    .blocking(move |a| {
                        let k = a.store.revoke_key(KeyId(id))?;
                        a.refresh_keys()?;
                        Ok(k)
                    })
                    .await?;
                Ok(reply(200, json!(key)))
            }
            (&Method::GET, ["tenants", t, "balance"]) => {
                let tenant = self.tenant(t).await?;
                Ok(reply(
                    200,
                    balance_json(tenant, self.app.ledger.balance(tenant)),
                ))
            }
            (&Method::POST, ["tenants", t, "topups"]) => {
                let tenant = self.tenant(t).await?;
                let req: TopUp = Self::read_json(session).await?;
                let credits = req.amount_rmb * self.app.config().billing.credits_per_rmb;
                let amount = positive_nano(credits, "amount_rmb")?;
                let id = format!(
                    "topup:{}",
                    req.idempotency_key
                        .unwrap_or_else(crate::tenancy::keys::generate_key)
                );
                let note = req.note;
                let entry = self
                    .blocking(move |a| {
                        a.store.credit(
                            tenant,
                            EntryKind::TopUp,
                            amount,
                            Some("operator"),
                            note.as_deref(),
                            &id,
                        )
                    })
                    .await?;
                self.app.ledger.apply_committed(&entry);
                Ok(reply(
                    201,
                    json!({"entry": entry, "balance": balance_json(tenant, self.app.ledger.balance(tenant))}),
                ))
            }
            (&Method::POST, ["tenants", t, "adjustments"]) => {
                let tenant = self.tenant(t).await?;
                let req: Adjustment = Self::read_json(session).await?;
                let amount = pricing::to_nano(req.credits)
                    .filter(|n| *n != 0)
                    .ok_or_else(|| {
                        GatewayError::bad_request("`credits` must be a non-zero amount")
                    })?;
                if amount < 0 && self.app.ledger.balance(tenant).available < -amount {
                    return Err(GatewayError::bad_request(
                        "A negative adjustment cannot exceed the available balance.",
                    ));
                }
                let id = format!(
                    "adjust:{}",
                    req.idempotency_key
                        .unwrap_or_else(crate::tenancy::keys::generate_key)
                );
                let note = req.note;
                let entry = self
                    .blocking(move |a| {
                        a.store.credit(
                            tenant,
                            EntryKind::Adjustment,
                            amount,
                            Some("operator"),
                            Some(&note),
                            &id,
                        )
                    })
                    .await?;
                self.app.ledger.apply_committed(&entry);
                Ok(reply(
                    201,
                    json!({"entry": entry, "balance": balance_json(tenant, self.app.ledger.balance(tenant))}),
                ))
            }
            (&Method::GET, ["tenants", t, "ledger"]) => {
                let tenant = self.tenant(t).await?;
                let rows = self
                    .blocking(move |a| a.store.ledger_statement(tenant))
                    .await?;
                if query_param(query.as_deref(), "format") == Some("csv") {
                    let mut csv = String::from("seq,created_ms,id,kind,amount_credits,running_balance_credits,key_id,request_id,actor,note,uncollected_credits\n");
                    for (i, (e, running)) in rows.iter().enumerate() {
                        let esc =
                            |s: &Option<String>| s.as_deref().unwrap_or("").replace('"', "\"\"");
                        csv.push_str(&format!(
                            "{},{},{},{},{},{},{},{},\"{}\",\"{}\",{}\n",
                            i + 1,
                            e.created_ms,
                            e.id,
                            e.kind.as_str(),
                            pricing::to_credits(e.amount).normalize(),
                            pricing::to_credits(*running).normalize(),
                            e.key_id.map(|k| k.0.to_string()).unwrap_or_default(),
                            e.request_id.as_deref().unwrap_or(""),
                            esc(&e.actor),
                            esc(&e.note),
                            pricing::to_credits(e.uncollected).normalize(),
                        ));
                    }
                    return Response::builder()
                        .status(200)
                        .header(http::header::CONTENT_TYPE, "text/csv")
                        .header(http::header::CONTENT_LENGTH, csv.len())
                        .body(csv.into_bytes())
                        .map_err(|e| GatewayError::Internal(e.to_string()));
                }
                let data: Vec<_> = rows
                    .into_iter()
                    .map(|(e, running)| json!({"entry": e, "amount": credits_json(e.amount), "running_balance": credits_json(running)}))
                    .collect();
                Ok(reply(200, json!({"data": data})))
            }
            (&Method::POST, ["tenants", t, "redeem"]) => {
                let tenant = self.tenant(t).await?;
                let req: Redeem = Self::read_json(session).await?;
                let entry = self
                    .blocking(move |a| a.store.redeem(&req.code, tenant, Some("operator")))
                    .await?;
                self.app.ledger.apply_committed(&entry);
                Ok(reply(
                    201,
                    json!({"entry": entry, "balance": balance_json(tenant, self.app.ledger.balance(tenant))}),
                ))
            }
            (&Method::POST, ["codes"]) => {
                let req: CreateCodes = Self::read_json(session).await?;
                let amount = positive_nano(req.credits, "credits")?;
                let batch = req
                    .batch
                    .unwrap_or_else(|| format!("batch-{}", crate::tenancy::unix_now()));
                let b2 = batch.clone();
                let codes = self
                    .blocking(move |a| a.store.create_codes(&b2, amount, req.count, req.expires_at))
                    .await?;
                Ok(reply(
                    201,
                    json!({"batch": batch, "credits": credits_json(amount), "codes": codes}),
                ))
            }
            (&Method::GET, ["codes"]) => {
                let batch = query_param(query.as_deref(), "batch").map(str::to_string);
                let codes = self
                    .blocking(move |a| a.store.list_codes(batch.as_deref()))
                    .await?;
                Ok(reply(200, json!({"data": codes})))
            }
            (&Method::GET, ["channels"]) => {
                let cfg = self.app.config();
                let channels: Vec<_> = cfg
                    .channels
                    .iter()
                    .map(|c| {
                        json!({
                            "name": c.name,
                            "description": c.description,
                            "multiplier": c.multiplier.to_string(),
                            "upstreams": c.upstreams.iter().map(|u| json!({
                                "id": u.id,
                                "base_url": format!("{}://{}{}", if u.base.tls {"https"} else {"http"}, u.base.authority(), u.base.path),
                                "weight": u.weight,
                                "models": u.models,
                                "disabled": u.disabled,
                                "breaker": u.state.breaker_state().as_str(),
                                "healthy": u.disabled.is_none() && u.state.breaker_state() == BreakerState::Closed,
                                "inflight": u.state.inflight(),
                                "ewma_ms": u.state.ewma_us() as f64 / 1000.0,
                                "requests": u.state.requests.load(std::sync::atomic::Ordering::Relaxed),
                                "failures": u.state.failures.load(std::sync::atomic::Ordering::Relaxed),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                Ok(reply(200, json!({"data": channels})))
            }
            (&Method::POST, ["reload"]) => match reload::reload(self.app.clone()).await {
                Ok(()) => Ok(reply(
                    200,
                    json!({"reloaded": true, "generation": self.app.generation()}),
                )),
                Err(e) => Err(GatewayError::bad_request(format!(
                    "Reload failed, running configuration kept: {e}"
                ))),
            },
            (&Method::GET, ["config", "status"]) => Ok(reply(
                200,
                json!({
                    "generation": self.app.generation(),
                    "path": self.app.config_path.as_ref().map(|p| p.display().to_string()),
                    "last_reload_error": self.app.reload_error(),
                    "warnings": self.app.config().warnings,
                }),
            )),
            (&Method::GET, ["usage"]) => {
                let tenant = query_param(query.as_deref(), "tenant")
                    .and_then(|t| t.parse::<i64>().ok())
                    .map(TenantId);
                let limit = query_param(query.as_deref(), "limit")
                    .and_then(|t| t.parse::<u32>().ok())
                    .unwrap_or(100)
                    .min(10_000);
                let events = self
                    .blocking(move |a| a.store.recent_usage(tenant, limit))
                    .await?;
                Ok(reply(200, json!({"data": events})))
            }
            _ => Err(GatewayError::NotFound(format!(
                "Unknown admin path `{method} {path}`."
            ))),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match self.route(session).await {
            Ok(r) => r,
            Err(e) => error_reply(&e),
        }
    }
}
