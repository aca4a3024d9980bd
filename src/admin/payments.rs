//! Online payment on the admin port (issue 17): tenant admins place orders and are sent to the
//! provider's page; the provider's signed notification credits the order once.
//!
//! Exactly once: an order is credited through the same idempotent top-up as an operator's, with
//! the order's id as the idempotency key (scope `order`). The same notification delivered five
//! times, concurrently, or again after a crash between crediting and marking the order, commits
//! one ledger entry; the order is then marked paid (again: no change). A notification with a bad
//! signature, for an unknown order, another session, or another amount or currency, is refused
//! and counted (`tollgate_payment_notifications_total`). A payment that arrives after the order
//! expired is credited all the same and flagged `late`.

use super::auth::Principal;
use super::credits::apply_credits;
use super::wire::{
    bad_param, forbidden, not_found, time, ApiError, ApiResult, ErrorBody, JsonBody, PathParams,
};
use super::Admin;
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::payments::stripe;
use crate::store::sqlite::{Credited, IdempotencyKey, PaymentOrder};
use crate::tenancy::Role;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// An amount in fen, in RMB.
fn yuan(fen: i64) -> Decimal {
    Decimal::from(fen) / Decimal::from(100)
}

#[derive(Serialize, ToSchema)]
pub struct OrderOut {
    pub id: i64,
    pub tenant_id: i64,
    pub provider: String,
    /// The amount paid, in RMB (a decimal string).
    pub amount_rmb: String,
    pub currency: String,
    pub promo_code: Option<String>,
    /// `created`, `pending`, `paid`, `expired`, `failed` or `refunded`.
    pub state: String,
    pub provider_ref: Option<String>,
    pub created_by: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub paid_at: Option<String>,
    /// Paid after the order had expired (credited, flagged for review).
    pub late: bool,
    /// The ledger entry it was credited with.
    pub entry_id: Option<String>,
}

impl OrderOut {
    fn from(o: &PaymentOrder) -> OrderOut {
        OrderOut {
            id: o.id,
            tenant_id: o.tenant_id.0,
            provider: o.provider.clone(),
            amount_rmb: yuan(o.amount_minor).normalize().to_string(),
            currency: o.currency.clone(),
            promo_code: o.promo_code.clone(),
            state: o.state.clone(),
            provider_ref: o.provider_ref.clone(),
            created_by: o.created_by.clone(),
            created_at: time(o.created_at),
            expires_at: time(o.expires_at),
            paid_at: o.paid_at.map(time),
            late: o.late,
            entry_id: o.entry_id.clone(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// In RMB, within `[payments] min_rmb` and `max_rmb`, whole fen.
    #[schema(value_type = String, example = "100")]
    pub amount_rmb: Decimal,
    /// A promotion campaign code, applied when the payment is credited.
    #[serde(default)]
    pub promo_code: Option<String>,
    /// `stripe` (the default and, for now, the only one).
    #[serde(default)]
    pub provider: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NewOrder {
    pub order: OrderOut,
    /// Where to send the payer (the provider's payment page).
    pub pay_url: String,
}

/// Place an order to top up by paying online (tenant admin): answers the provider's page to
/// send the payer to. Credit arrives when the provider notifies the payment.
#[utoipa::path(post, path = "/admin/tenants/{t}/orders", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = CreateOrder,
    responses((status = 201, body = NewOrder), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The provider refused or could not be reached")))]
pub async fn create_order(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    headers: HeaderMap,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<CreateOrder>,
) -> ApiResult<(StatusCode, Json<NewOrder>)> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin])?;
    let cfg = admin.app.config();
    let Some(payments) = cfg.payments.clone() else {
        return Err(forbidden("Online payment is not set up on this gateway ([payments]).").into());
    };
    let provider = req.provider.as_deref().unwrap_or("stripe");
    let Some(stripe_cfg) = payments.stripe.clone().filter(|_| provider == "stripe") else {
        return Err(bad_param(
            "provider",
            format!("`{provider}` is not a configured payment provider"),
        )
        .into());
    };
    if req.amount_rmb < payments.min_rmb || req.amount_rmb > payments.max_rmb {
        return Err(bad_param(
            "amount_rmb",
            format!(
                "An order is {} to {} RMB.",
                payments.min_rmb, payments.max_rmb
            ),
        )
        .into());
    }
    let fen = req.amount_rmb * Decimal::from(100);
    if fen.fract() != Decimal::ZERO {
        return Err(bad_param(
            "amount_rmb",
            "The amount must be whole fen (two decimals at most).",
        )
        .into());
    }
    let amount_minor = rust_decimal::prelude::ToPrimitive::to_i64(&fen)
        .ok_or_else(|| bad_param("amount_rmb", "The amount is too large."))?;
    let (tid, promo, actor, ttl) = (
        tenant.id,
        req.promo_code.clone(),
        who.actor(),
        payments.order_secs,
    );
    let order = admin
        .blocking(move |a| {
            a.store.create_order(
                tid,
                "stripe",
                amount_minor,
                "cny",
                promo.as_deref(),
                Some(&actor),
                ttl,
            )
        })
        .await?;
    let back = format!(
        "{}/console/t/{}/topup?order={}",
        super::members::console_base(&admin, &headers),
        tenant.id.0,
        order.id
    );
    let session = stripe_cfg
        .create_session(&stripe::SessionRequest {
            order_id: order.id,
            tenant_id: tenant.id.0,
            amount_minor,
            currency: "cny",
            success_url: &back,
            cancel_url: &back,
            // Stripe takes 30 minutes at least.
            expires_at: order.expires_at.max(order.created_at + 1800),
        })
        .await;
    match session {
        Ok(checkout) => {
            let id = order.id;
            let order = admin
                .blocking(move |a| a.store.order_pending(id, &checkout.provider_ref))
                .await?;
            Ok((
                StatusCode::CREATED,
                Json(NewOrder {
                    order: OrderOut::from(&order),
                    pay_url: checkout.pay_url,
                }),
            ))
        }
        Err(e) => {
            let id = order.id;
            let _ = admin
                .blocking(move |a| a.store.order_closed(id, "failed"))
                .await;
            tracing::warn!(order = id, error = %e, "payment provider refused an order");
            Err(ApiError(GatewayError::UpstreamFailed(format!(
                "The payment provider did not take the order: {e}"
            ))))
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrderList {
    pub data: Vec<OrderOut>,
}

/// A tenant's payment orders, newest first (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/orders", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = OrderList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_orders(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<OrderList>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let orders = admin
        .blocking(move |a| a.store.list_orders(Some(tenant), 500))
        .await?;
    Ok(Json(OrderList {
        data: orders.iter().map(OrderOut::from).collect(),
    }))
}

/// Every tenant's payment orders, newest first (operator).
#[utoipa::path(get, path = "/admin/orders", tag = "credits", security(("bearer" = [])),
    responses((status = 200, body = OrderList), (status = 403, body = ErrorBody)))]
pub async fn all_orders(
    State(admin): State<Arc<Admin>>,
    who: Principal,
) -> ApiResult<Json<OrderList>> {
    who.require_operator()?;
    let orders = admin.blocking(|a| a.store.list_orders(None, 1000)).await?;
    Ok(Json(OrderList {
        data: orders.iter().map(OrderOut::from).collect(),
    }))
}

fn counted(outcome: &str) {
    METRICS
        .payment_notifications
        .with_label_values(&["stripe", outcome])
        .inc();
}

fn refuse(outcome: &str, message: impl Into<String>) -> ApiError {
    counted(outcome);
    let message = message.into();
    tracing::warn!(provider = "stripe", outcome, %message, "payment notification refused");
    ApiError(GatewayError::bad_request(message))
}

#[derive(Serialize, ToSchema)]
pub struct NotificationOut {
    /// `credited`, `duplicate` (credited before), `closed` or `ignored`.
    pub outcome: String,
    pub order_id: Option<i64>,
}

/// Stripe's webhook (no token: the `Stripe-Signature` header is checked with the endpoint's
/// signing secret). Point the Stripe endpoint at `https://<console address>/payments/stripe/webhook`
/// with the events `checkout.session.completed`, `checkout.session.async_payment_succeeded`,
/// `checkout.session.async_payment_failed` and `checkout.session.expired`.
#[utoipa::path(post, path = "/payments/stripe/webhook", tag = "credits",
    responses((status = 200, body = NotificationOut), (status = 400, body = ErrorBody, description = "Bad signature, unknown order, or an amount that does not match"),
        (status = 404, body = ErrorBody, description = "Stripe is not configured")))]
pub async fn stripe_webhook(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<NotificationOut>> {
    let Some(stripe_cfg) = admin
        .app
        .config()
        .payments
        .as_ref()
        .and_then(|p| p.stripe.clone())
    else {
        return Err(not_found("payment provider").into());
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Err(e) = stripe::verify(
        signature,
        &body,
        &stripe_cfg.webhook_secret,
        crate::tenancy::unix_now(),
    ) {
        return Err(refuse(
            "bad_signature",
            format!("The Stripe signature does not verify ({e:?})."),
        ));
    }
    let event: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| refuse("error", format!("The event is not JSON: {e}")))?;
    let kind = event["type"].as_str().unwrap_or("");
    let object = &event["data"]["object"];
    let handled = [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    ];
    if !handled.contains(&kind) {
        counted("ignored");
        return Ok(Json(NotificationOut {
            outcome: "ignored".into(),
            order_id: None,
        }));
    }
    let order_id = object["metadata"]["order_id"]
        .as_str()
        .or_else(|| object["client_reference_id"].as_str())
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| refuse("unknown_order", "The session names no order."))?;
    let order = admin
        .blocking(move |a| a.store.order(order_id))
        .await
        .map_err(|_| refuse("unknown_order", format!("Order {order_id} is unknown.")))?;
    if order.provider != "stripe" || order.provider_ref.as_deref() != object["id"].as_str() {
        return Err(refuse(
            "mismatch",
            format!("Order {order_id} belongs to another payment session."),
        ));
    }
    match kind {
        "checkout.session.expired" | "checkout.session.async_payment_failed" => {
            let state = if kind.ends_with("expired") {
                "expired"
            } else {
                "failed"
            };
            admin
                .blocking(move |a| a.store.order_closed(order_id, state))
                .await?;
            counted("ignored");
            return Ok(Json(NotificationOut {
                outcome: "closed".into(),
                order_id: Some(order_id),
            }));
        }
        "checkout.session.completed" if object["payment_status"].as_str() != Some("paid") => {
            // Paid later (a delayed method): `async_payment_succeeded` follows.
            counted("ignored");
            return Ok(Json(NotificationOut {
                outcome: "ignored".into(),
                order_id: Some(order_id),
            }));
        }
        _ => {}
    }
    let paid = object["amount_total"].as_i64();
    let currency = object["currency"].as_str().map(str::to_ascii_lowercase);
    if paid != Some(order.amount_minor) || currency.as_deref() != Some(order.currency.as_str()) {
        return Err(refuse(
            "mismatch",
            format!(
                "Order {order_id} is {} {}; the payment says {:?} {:?}.",
                order.amount_minor, order.currency, paid, currency
            ),
        ));
    }
    credit_order(&admin, order).await.map(Json)
}

/// Credits a paid order once (see the module's documentation).
async fn credit_order(admin: &Admin, order: PaymentOrder) -> Result<NotificationOut, ApiError> {
    use sha2::{Digest, Sha256};
    let per_rmb = admin.app.config().billing.credits_per_rmb;
    let credits = yuan(order.amount_minor) * per_rmb;
    let amount = super::wire::positive_nano(credits, "amount")?;
    let key = IdempotencyKey {
        scope: "order",
        key: order.id.to_string(),
        fingerprint: hex::encode(Sha256::digest(format!(
            "{}:{}",
            order.amount_minor, order.currency
        ))),
    };
    let entry_id = key.entry_id(order.tenant_id);
    let late = crate::tenancy::unix_now() > order.expires_at;
    let (tenant, promo, note, id) = (
        order.tenant_id,
        order.promo_code.clone(),
        format!(
            "stripe order {} ({})",
            order.id,
            order.provider_ref.clone().unwrap_or_default()
        ),
        entry_id.clone(),
    );
    let k = key.clone();
    let outcome = admin
        .blocking(move |a| {
            a.store.top_up(
                tenant,
                amount,
                promo.as_deref(),
                Some("payment:stripe"),
                Some(&note),
                &id,
                Some(&k),
            )
        })
        .await
        .map_err(|e| {
            counted("error");
            ApiError(e)
        })?;
    let fresh = match outcome {
        Credited::Committed(entries) => {
            apply_credits(admin, &entries).await;
            true
        }
        Credited::Replay(_) => false,
    };
    let oid = order.id;
    let marked = admin
        .blocking(move |a| a.store.order_paid(oid, &entry_id, late))
        .await?;
    counted(if fresh { "credited" } else { "duplicate" });
    if fresh {
        tracing::info!(
            order = oid,
            tenant = tenant.0,
            late = marked.late,
            "payment credited"
        );
    }
    Ok(NotificationOut {
        outcome: if fresh { "credited" } else { "duplicate" }.into(),
        order_id: Some(oid),
    })
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReconcileQuery {
    /// The UTC day, `YYYY-MM-DD` (default: yesterday).
    pub day: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ReconcileLine {
    pub order_id: i64,
    pub tenant_id: i64,
    pub provider: String,
    pub state: String,
    pub amount_rmb: String,
    /// The credits the order should have brought (amount × credits per RMB).
    pub expected_credits: String,
    /// What its top-up entry holds; absent: no entry.
    pub credited: Option<String>,
    /// `ok`, `paid_not_credited`, `credited_not_paid` or `amount_differs`.
    pub status: String,
    pub late: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Reconciliation {
    pub day: String,
    /// Orders paid that day, and orders of that day credited but not marked paid.
    pub orders: Vec<ReconcileLine>,
    pub paid_orders: usize,
    pub paid_rmb: String,
    pub credited_credits: String,
    /// Lines whose status is not `ok`.
    pub mismatches: usize,
}

/// The day's payments against the ledger (operator): every order paid that day with the
/// top-up it brought, and every order of that day the ledger credited but the order does not
/// say paid (a crash between the two). `format=csv` downloads the lines.
#[utoipa::path(get, path = "/admin/payments/reconciliation", tag = "credits", security(("bearer" = [])),
    params(ReconcileQuery),
    responses((status = 200, body = Reconciliation, description = "JSON, or the lines as text/csv"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn reconciliation(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    super::wire::QueryParams(q): super::wire::QueryParams<ReconcileQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    who.require_operator()?;
    let day = match q.day.as_deref() {
        Some(d) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| bad_param("day", "`day` is YYYY-MM-DD"))?,
        None => {
            let today = crate::tenancy::unix_now().div_euclid(86_400);
            chrono::DateTime::from_timestamp((today - 1) * 86_400, 0)
                .map(|t| t.date_naive())
                .unwrap_or_default()
        }
    };
    let start = day
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp())
        .unwrap_or_default();
    let end = start + 86_400;
    let per_rmb = admin.app.config().billing.credits_per_rmb;
    let lines = admin
        .blocking(move |a| {
            let mut out = Vec::new();
            for o in a.store.list_orders(None, 100_000)? {
                let paid_today = o.paid_at.is_some_and(|p| p >= start && p < end);
                let made_today = o.created_at >= start && o.created_at < end;
                // Paid that day, or placed that day and not (yet) paid.
                let unpaid_of_the_day = made_today && o.state != "paid";
                if !(paid_today || unpaid_of_the_day) {
                    continue;
                }
                let entry_id = format!("order:{}:{}", o.tenant_id.0, o.id);
                let entry = a
                    .store
                    .entries_by_id(o.tenant_id, std::slice::from_ref(&entry_id))?
                    .into_iter()
                    .next();
                if !paid_today && entry.is_none() {
                    continue;
                }
                out.push((o, entry));
            }
            Ok(out)
        })
        .await?;
    let mut orders = Vec::new();
    let (mut paid_minor, mut credited_nano, mut mismatches) = (0i64, 0i64, 0usize);
    for (o, entry) in lines {
        let expected = yuan(o.amount_minor) * per_rmb;
        let expected_nano = crate::billing::pricing::to_nano(expected).unwrap_or(i64::MAX);
        let status = match (&entry, o.state.as_str()) {
            (None, _) => "paid_not_credited",
            (Some(_), s) if s != "paid" => "credited_not_paid",
            (Some(e), _) if e.amount != expected_nano => "amount_differs",
            _ => "ok",
        };
        if o.state == "paid" {
            paid_minor += o.amount_minor;
        }
        if let Some(e) = &entry {
            credited_nano += e.amount;
        }
        if status != "ok" {
            mismatches += 1;
        }
        orders.push(ReconcileLine {
            order_id: o.id,
            tenant_id: o.tenant_id.0,
            provider: o.provider.clone(),
            state: o.state.clone(),
            amount_rmb: yuan(o.amount_minor).normalize().to_string(),
            expected_credits: expected.normalize().to_string(),
            credited: entry.map(|e| super::wire::credits(e.amount)),
            status: status.into(),
            late: o.late,
        });
    }
    let report = Reconciliation {
        day: day.format("%Y-%m-%d").to_string(),
        paid_orders: orders.iter().filter(|l| l.state == "paid").count(),
        paid_rmb: yuan(paid_minor).normalize().to_string(),
        credited_credits: super::wire::credits(credited_nano),
        mismatches,
        orders,
    };
    if q.format.as_deref() == Some("csv") {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "day",
            "order_id",
            "tenant_id",
            "provider",
            "state",
            "amount_rmb",
            "expected_credits",
            "credited",
            "status",
            "late",
        ]);
        for l in &report.orders {
            let _ = w.write_record([
                report.day.clone(),
                l.order_id.to_string(),
                l.tenant_id.to_string(),
                l.provider.clone(),
                l.state.clone(),
                l.amount_rmb.clone(),
                l.expected_credits.clone(),
                l.credited.clone().unwrap_or_default(),
                l.status.clone(),
                l.late.to_string(),
            ]);
        }
        let body = w.into_inner().unwrap_or_default();
        return Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/csv; charset=utf-8".to_string(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"payments-{}.csv\"", report.day),
                ),
            ],
            body,
        )
            .into_response());
    }
    Ok(Json(report).into_response())
}
