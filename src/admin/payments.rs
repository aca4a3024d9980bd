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
    bad_param, forbidden, not_found, time, ApiError, ApiResult, ErrorBody, JsonBody, ListQuery,
    Page, PathParams, QueryParams,
};
use super::Admin;
use crate::config::PaymentSettings;
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::payments::stripe;
use crate::store::sqlite::{Credited, IdempotencyKey, NewestFirst, PaymentOrder, Refund};
use crate::tenancy::Role;
use crate::tenancy::TenantId;
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
    /// The tenant's name (in listings).
    pub tenant_name: Option<String>,
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
    /// What it brought (top-up and promotion bonus), in credits.
    pub credited: String,
    /// Refunded so far, in RMB.
    pub refunded_rmb: String,
}

impl OrderOut {
    fn from(o: &PaymentOrder) -> OrderOut {
        OrderOut {
            id: o.id,
            tenant_id: o.tenant_id.0,
            tenant_name: None,
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
            credited: super::wire::credits(o.credited_nano),
            refunded_rmb: yuan(o.refunded_minor).normalize().to_string(),
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
    /// `alipay`, `wechat` or `stripe` (default: the first configured, in that order).
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
    let configured = payments.providers();
    let provider = match req.provider.as_deref() {
        Some(p) => configured.iter().copied().find(|c| *c == p),
        None => configured.first().copied(),
    }
    .ok_or_else(|| {
        bad_param(
            "provider",
            format!(
                "`{}` is not a configured payment provider (configured: {})",
                req.provider.as_deref().unwrap_or(""),
                configured.join(", ")
            ),
        )
    })?;
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
    if !payments.amounts.is_empty() && !payments.amounts.contains(&req.amount_rmb) {
        let offered: Vec<String> = payments
            .amounts
            .iter()
            .map(|a| a.normalize().to_string())
            .collect();
        return Err(bad_param(
            "amount_rmb",
            format!(
                "Pick one of the amounts offered: {} RMB.",
                offered.join(", ")
            ),
        )
        .into());
    }
    let amount_minor = rust_decimal::prelude::ToPrimitive::to_i64(&fen)
        .ok_or_else(|| bad_param("amount_rmb", "The amount is too large."))?;
    // A promotion code that would not apply is refused before anyone pays.
    if let Some(code) = req.promo_code.clone().filter(|c| !c.trim().is_empty()) {
        let nano =
            super::wire::positive_nano(req.amount_rmb * cfg.billing.credits_per_rmb, "amount_rmb")?;
        let tid = tenant.id;
        admin
            .blocking(move |a| a.store.promo_preview(&code, tid, nano))
            .await
            .map_err(|e| match e {
                GatewayError::NotFound(_) => {
                    bad_param("promo_code", "This promotion code does not exist.")
                }
                other => other,
            })?;
    }
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
                provider,
                amount_minor,
                "cny",
                promo.as_deref(),
                Some(&actor),
                ttl,
            )
        })
        .await?;
    let base = super::members::console_base(&admin, &headers);
    let back = format!("{base}/console/t/{}/topup?order={}", tenant.id.0, order.id);
    let notify = format!("{base}/payments/{provider}/notify");
    let checkout = match provider {
        "alipay" => match &payments.alipay {
            Some(a) => a
                .checkout(order.id, amount_minor, order.expires_at, &notify, &back)
                .map_err(|e| e.to_string()),
            None => Err("Alipay is not configured".into()),
        },
        "wechat" => match &payments.wechat {
            Some(w) => w
                .checkout(order.id, amount_minor, order.expires_at, &notify)
                .await
                .map_err(|e| e.to_string()),
            None => Err("WeChat Pay is not configured".into()),
        },
        _ => match &payments.stripe {
            Some(s) => {
                s.create_session(&stripe::SessionRequest {
                    order_id: order.id,
                    tenant_id: tenant.id.0,
                    amount_minor,
                    currency: "cny",
                    success_url: &back,
                    cancel_url: &back,
                    // Stripe takes 30 minutes at least.
                    expires_at: order.expires_at.max(order.created_at + 1800),
                })
                .await
            }
            None => Err("Stripe is not configured".into()),
        },
    };
    match checkout {
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
            tracing::warn!(order = id, provider, error = %e, "payment provider refused an order");
            Err(ApiError(GatewayError::UpstreamFailed(format!(
                "The payment provider did not take the order: {e}"
            ))))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// The promotion code.
    pub code: String,
    /// The amount to pay, in RMB.
    pub amount_rmb: String,
}

#[derive(Serialize, ToSchema)]
pub struct PromoPreview {
    pub code: String,
    pub amount_rmb: String,
    /// What the payment credits (amount x credits per RMB).
    pub credits: String,
    /// The code's bonus on top (applied once per tenant, when the payment is credited).
    pub bonus: String,
}

/// The bonus a promotion code would add to a payment of this amount, before paying (tenant
/// admin): 404 for an unknown code, 400 for an expired, used-up or already-used one.
#[utoipa::path(get, path = "/admin/tenants/{t}/promos/preview", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), PreviewQuery),
    responses((status = 200, body = PromoPreview), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn promo_preview(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    super::wire::QueryParams(q): super::wire::QueryParams<PreviewQuery>,
) -> ApiResult<Json<PromoPreview>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin])?;
    let amount: Decimal = q
        .amount_rmb
        .trim()
        .parse()
        .map_err(|_| bad_param("amount_rmb", "an amount in RMB"))?;
    let credits = amount * admin.app.config().billing.credits_per_rmb;
    let nano = super::wire::positive_nano(credits, "amount_rmb")?;
    let code = q.code.clone();
    let bonus = admin
        .blocking(move |a| a.store.promo_preview(&code, tenant, nano))
        .await?;
    Ok(Json(PromoPreview {
        code: q.code.trim().to_ascii_uppercase(),
        amount_rmb: amount.normalize().to_string(),
        credits: super::wire::credits(nano),
        bonus: super::wire::credits(bonus),
    }))
}

/// A tenant's payment orders, newest first (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/orders", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ListQuery),
    responses((status = 200, body = Page<OrderOut>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_orders(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<OrderOut>>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    orders_page(&admin, Some(tenant), &q).await
}

/// Every tenant's payment orders, newest first (operator).
#[utoipa::path(get, path = "/admin/orders", tag = "credits", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = Page<OrderOut>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn all_orders(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<OrderOut>>> {
    who.require_operator()?;
    orders_page(&admin, None, &q).await
}

async fn orders_page(
    admin: &Admin,
    tenant: Option<TenantId>,
    q: &ListQuery,
) -> ApiResult<Json<Page<OrderOut>>> {
    let page = q.newest_first()?;
    let orders = admin
        .blocking(move |a| a.store.list_orders(tenant, page))
        .await?;
    let p = ListQuery::newest_page(page, orders, |o| o.id);
    let names = admin.names_of(p.data.iter().map(|o| o.tenant_id)).await?;
    Ok(Json(Page {
        data: p
            .data
            .iter()
            .map(|o| OrderOut {
                tenant_name: names.tenants.get(&o.tenant_id.0).cloned(),
                ..OrderOut::from(o)
            })
            .collect(),
        next_cursor: p.next_cursor,
    }))
}

fn counted(provider: &str, outcome: &str) {
    METRICS
        .payment_notifications
        .with_label_values(&[provider, outcome])
        .inc();
}

fn refuse_from(provider: &str, outcome: &str, message: impl Into<String>) -> ApiError {
    counted(provider, outcome);
    let message = message.into();
    tracing::warn!(provider, outcome, %message, "payment notification refused");
    ApiError(GatewayError::bad_request(message))
}

fn refuse(outcome: &str, message: impl Into<String>) -> ApiError {
    refuse_from("stripe", outcome, message)
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
        counted("stripe", "ignored");
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
            counted("stripe", "ignored");
            return Ok(Json(NotificationOut {
                outcome: "closed".into(),
                order_id: Some(order_id),
            }));
        }
        "checkout.session.completed" if object["payment_status"].as_str() != Some("paid") => {
            // Paid later (a delayed method): `async_payment_succeeded` follows.
            counted("stripe", "ignored");
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

/// Checks what a provider reports paid against the order, then credits it once.
async fn credit_paid(
    admin: &Admin,
    order: PaymentOrder,
    paid: &crate::payments::Paid,
) -> Result<NotificationOut, ApiError> {
    if paid.amount_minor != order.amount_minor || paid.currency != order.currency {
        return Err(refuse_from(
            &order.provider,
            "mismatch",
            format!(
                "Order {} is {} {}; the payment says {} {}.",
                order.id, order.amount_minor, order.currency, paid.amount_minor, paid.currency
            ),
        ));
    }
    credit_order(admin, order).await
}

/// The order a provider's notification names, of that provider.
async fn order_of(admin: &Admin, provider: &str, id: i64) -> Result<PaymentOrder, ApiError> {
    let order = admin
        .blocking(move |a| a.store.order(id))
        .await
        .map_err(|_| refuse_from(provider, "unknown_order", format!("Order {id} is unknown.")))?;
    if order.provider != provider {
        return Err(refuse_from(
            provider,
            "mismatch",
            format!("Order {id} is paid through another provider."),
        ));
    }
    Ok(order)
}

fn provider_refusal(provider: &str, e: crate::payments::ProviderError) -> ApiError {
    use crate::payments::ProviderError as P;
    let outcome = match &e {
        P::BadSignature => "bad_signature",
        P::UnknownOrder => "unknown_order",
        P::Mismatch(_) => "mismatch",
        _ => "error",
    };
    refuse_from(
        provider,
        outcome,
        format!("The notification is refused: {e}."),
    )
}

/// Alipay's asynchronous notification (no token: the RSA2 signature is checked with Alipay's
/// public key). Answers `success` (plain text) once handled, as Alipay expects; anything else
/// makes Alipay deliver it again.
#[utoipa::path(post, path = "/payments/alipay/notify", tag = "credits",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = String, content_type = "text/plain", description = "`success`"),
        (status = 400, body = String, content_type = "text/plain", description = "`fail`: bad signature, unknown order, or an amount that does not match"),
        (status = 404, body = ErrorBody, description = "Alipay is not configured")))]
pub async fn alipay_notify(
    State(admin): State<Arc<Admin>>,
    body: Bytes,
) -> ApiResult<axum::response::Response> {
    use crate::payments::alipay::NoticeState;
    use axum::response::IntoResponse;
    let Some(alipay) = admin
        .app
        .config()
        .payments
        .as_ref()
        .and_then(|p| p.alipay.clone())
    else {
        return Err(not_found("payment provider").into());
    };
    let fail = |e: ApiError| {
        tracing::debug!(error = ?e.0, "alipay notification refused");
        (StatusCode::BAD_REQUEST, "fail").into_response()
    };
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let notice = match alipay.notification(&fields) {
        Ok(n) => n,
        Err(e) => return Ok(fail(provider_refusal("alipay", e))),
    };
    let order = match order_of(&admin, "alipay", notice.order).await {
        Ok(o) => o,
        Err(e) => return Ok(fail(e)),
    };
    let done = match notice.state {
        NoticeState::Paid(paid) => credit_paid(&admin, order, &paid).await.map(|_| ()),
        NoticeState::Closed => {
            let id = order.id;
            counted("alipay", "ignored");
            admin
                .blocking(move |a| a.store.order_closed(id, "expired"))
                .await
                .map(|_| ())
                .map_err(ApiError)
        }
        NoticeState::Other => {
            counted("alipay", "ignored");
            Ok(())
        }
    };
    Ok(match done {
        Ok(()) => (StatusCode::OK, "success").into_response(),
        Err(e) => fail(e),
    })
}

/// WeChat Pay's notification (no token: the `Wechatpay-Signature` is checked with the platform
/// certificate it names, and the resource decrypted with the APIv3 key). Answers 204 once
/// handled; a 4xx with `{"code":"FAIL","message":..}` makes WeChat Pay deliver it again.
#[utoipa::path(post, path = "/payments/wechat/notify", tag = "credits",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 204, description = "Handled"),
        (status = 400, body = serde_json::Value, description = "`{\"code\":\"FAIL\"}`: bad signature, unknown order, or an amount that does not match"),
        (status = 404, body = ErrorBody, description = "WeChat Pay is not configured")))]
pub async fn wechat_notify(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::response::Response> {
    use crate::payments::wechat::{transaction_state, Signed};
    use crate::payments::QueryResult;
    use axum::response::IntoResponse;
    let Some(wechat) = admin
        .app
        .config()
        .payments
        .as_ref()
        .and_then(|p| p.wechat.clone())
    else {
        return Err(not_found("payment provider").into());
    };
    let fail = |e: ApiError| {
        let message = match &e.0 {
            GatewayError::BadRequest { message, .. } => message.clone(),
            other => other.to_string(),
        };
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"code": "FAIL", "message": message})),
        )
            .into_response()
    };
    let (event, resource) = match wechat
        .notification(&Signed::from_headers(&headers), &body)
        .await
    {
        Ok(n) => n,
        Err(e) => return Ok(fail(provider_refusal("wechat", e))),
    };
    if !event.starts_with("TRANSACTION.") {
        // Refund results and anything else: nothing to credit.
        counted("wechat", "ignored");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let Some(id) = resource["out_trade_no"]
        .as_str()
        .and_then(crate::payments::wechat::order_of)
    else {
        return Ok(fail(refuse_from(
            "wechat",
            "unknown_order",
            "The transaction names no order of ours.",
        )));
    };
    let order = match order_of(&admin, "wechat", id).await {
        Ok(o) => o,
        Err(e) => return Ok(fail(e)),
    };
    let done = match transaction_state(&resource) {
        Ok(QueryResult::Paid(paid)) => credit_paid(&admin, order, &paid).await.map(|_| ()),
        Ok(QueryResult::Closed) => {
            counted("wechat", "ignored");
            admin
                .blocking(move |a| a.store.order_closed(id, "failed"))
                .await
                .map(|_| ())
                .map_err(ApiError)
        }
        Ok(QueryResult::Unpaid) => {
            counted("wechat", "ignored");
            Ok(())
        }
        Err(e) => Err(provider_refusal("wechat", e)),
    };
    Ok(match done {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(e),
    })
}

#[derive(Serialize, ToSchema)]
pub struct SyncOut {
    /// `credited`, `duplicate` (credited before), `unpaid`, `closed`.
    pub outcome: String,
    pub order: OrderOut,
}

/// Ask the provider about an order now (the tenant's admin, or the operator) and credit it if
/// it is paid: for a notification that is late or lost. The console asks when the payer comes
/// back from the provider's page.
#[utoipa::path(post, path = "/admin/orders/{id}/sync", tag = "credits", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses((status = 200, body = SyncOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The provider could not be asked")))]
pub async fn sync_order(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Json<SyncOut>> {
    use crate::payments::QueryResult;
    let order = admin.blocking(move |a| a.store.order(id)).await?;
    who.require(order.tenant_id, &[Role::TenantAdmin])?;
    if order.state == "paid" || order.state == "refunded" {
        return Ok(Json(SyncOut {
            outcome: "duplicate".into(),
            order: OrderOut::from(&order),
        }));
    }
    let cfg = admin.app.config();
    let result = match (order.provider.as_str(), cfg.payments.as_ref()) {
        (
            "alipay",
            Some(PaymentSettings {
                alipay: Some(a), ..
            }),
        ) => a.query(order.id).await,
        (
            "wechat",
            Some(PaymentSettings {
                wechat: Some(w), ..
            }),
        ) => w.query(order.id).await,
        (
            "stripe",
            Some(PaymentSettings {
                stripe: Some(s), ..
            }),
        ) => match &order.provider_ref {
            Some(session) => s.query(session).await,
            None => Ok(QueryResult::Unpaid),
        },
        _ => return Err(not_found("payment provider").into()),
    };
    let result = result.map_err(|e| {
        ApiError(GatewayError::UpstreamFailed(format!(
            "The payment provider could not be asked: {e}"
        )))
    })?;
    let outcome = match result {
        QueryResult::Paid(paid) => credit_paid(&admin, order, &paid).await?.outcome,
        QueryResult::Closed => {
            admin
                .blocking(move |a| a.store.order_closed(id, "expired"))
                .await?;
            "closed".into()
        }
        QueryResult::Unpaid => "unpaid".into(),
    };
    let order = admin.blocking(move |a| a.store.order(id)).await?;
    Ok(Json(SyncOut {
        outcome,
        order: OrderOut::from(&order),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// In RMB (default: all that is left to refund).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "50")]
    pub amount_rmb: Option<Decimal>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RefundOut {
    pub id: i64,
    pub order_id: i64,
    pub tenant_id: i64,
    /// The tenant's name (in listings).
    pub tenant_name: Option<String>,
    pub amount_rmb: String,
    /// The credits debited for it.
    pub debited: String,
    /// `requested`, `processing`, `succeeded` or `failed` (the debit given back).
    pub state: String,
    pub provider_ref: Option<String>,
    pub reason: Option<String>,
    pub created_by: Option<String>,
    pub created_at: String,
}

impl RefundOut {
    fn from(r: &Refund) -> RefundOut {
        RefundOut {
            id: r.id,
            order_id: r.order_id,
            tenant_id: r.tenant_id.0,
            tenant_name: None,
            amount_rmb: yuan(r.amount_minor).normalize().to_string(),
            debited: super::wire::credits(r.debit_nano),
            state: r.state.clone(),
            provider_ref: r.provider_ref.clone(),
            reason: r.reason.clone(),
            created_by: r.created_by.clone(),
            created_at: time(r.created_at),
        }
    }
}

/// Refund part or all of a paid order (operator). The refunded share of what the order brought
/// (its top-up and promotion bonus) is debited first, and only if the tenant's available balance
/// covers it: a refund never takes back credit that was spent or is held for calls in flight
/// (400, saying what is available). If the provider then refuses, the debit is given back.
#[utoipa::path(post, path = "/admin/orders/{id}/refunds", tag = "credits", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")), request_body = RefundRequest,
    responses((status = 201, body = RefundOut), (status = 400, body = ErrorBody, description = "Not paid, already refunded, or the credit was spent"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The provider refused the refund (the debit was given back)")))]
pub async fn refund_order(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(id): PathParams<i64>,
    JsonBody(req): JsonBody<RefundRequest>,
) -> ApiResult<(StatusCode, Json<RefundOut>)> {
    use crate::billing::entry::EntryKind;
    who.require_operator()?;
    let order = admin.blocking(move |a| a.store.order(id)).await?;
    if order.state != "paid" {
        return Err(GatewayError::bad_request(format!(
            "Order {id} is {}: only a paid order is refunded.",
            order.state
        ))
        .into());
    }
    let left = order.amount_minor - order.refunded_minor;
    let amount_minor = match req.amount_rmb {
        None => left,
        Some(a) => {
            let fen = a * Decimal::from(100);
            if fen <= Decimal::ZERO || fen.fract() != Decimal::ZERO {
                return Err(
                    bad_param("amount_rmb", "A refund is a positive amount in whole fen.").into(),
                );
            }
            rust_decimal::prelude::ToPrimitive::to_i64(&fen)
                .ok_or_else(|| bad_param("amount_rmb", "The amount is too large."))?
        }
    };
    if amount_minor <= 0 || amount_minor > left {
        return Err(bad_param(
            "amount_rmb",
            format!(
                "Order {id} has {} RMB left to refund.",
                yuan(left).normalize()
            ),
        )
        .into());
    }
    // The refunded share of everything the order brought, rounded up to the nano-credit.
    let credited = if order.credited_nano > 0 {
        order.credited_nano
    } else {
        crate::billing::pricing::to_nano(
            yuan(order.amount_minor) * admin.app.config().billing.credits_per_rmb,
        )
        .unwrap_or(0)
    };
    let debit = ((i128::from(credited) * i128::from(amount_minor) + i128::from(order.amount_minor)
        - 1)
        / i128::from(order.amount_minor.max(1))) as i64;
    let tenant = order.tenant_id;
    let (reason, actor) = (req.reason.clone(), who.actor());
    let refund = admin
        .blocking(move |a| {
            a.store
                .create_refund(id, amount_minor, debit, reason.as_deref(), Some(&actor))
        })
        .await?;
    let rid = refund.id;
    let entry_id = format!("refund:{}:{rid}", tenant.0);
    let refusal = |available: i64| -> ApiError {
        GatewayError::bad_request(format!(
            "The tenant's available balance ({} credits) does not cover this refund ({} credits): a refund never takes back credit that was spent or is held for calls in flight.",
            super::wire::credits(available),
            super::wire::credits(debit)
        ))
        .into()
    };
    // 1. The debit: never below what is available.
    let fleet = admin.app.ledger.fleet().cloned();
    let taken = match &fleet {
        Some(f) => f
            .debit_first(tenant, -debit, &entry_id)
            .await
            .map_err(|e| match e {
                crate::billing::fleet::FleetError::Bank(
                    crate::billing::cluster::BankError::Insufficient { .. },
                ) => refusal(admin.app.ledger.balance(tenant).available),
                e => ApiError(GatewayError::CreditUnavailable(format!(
                    "The credit bank is unavailable: {e}"
                ))),
            }),
        None => admin.app.ledger.take(tenant, debit).map_err(refusal),
    };
    if let Err(e) = taken {
        admin
            .blocking(move |a| a.store.refund_settled(rid, "failed", None))
            .await?;
        return Err(e);
    }
    let note = format!("refund {rid} of {} order {id}", order.provider);
    let actor = format!("payment:{}", order.provider);
    let (n, a2, e2) = (note.clone(), actor.clone(), entry_id.clone());
    let recorded = admin
        .blocking(move |a| {
            a.store.credit(
                tenant,
                EntryKind::Adjustment,
                -debit,
                Some(&a2),
                Some(&n),
                &e2,
            )
        })
        .await;
    match recorded {
        Ok(e) => {
            if fleet.is_some() {
                apply_credits(&admin, std::slice::from_ref(&e)).await;
            }
        }
        Err(e) => {
            // Not recorded: give the books back (embedded; in cluster mode the bank's debit is
            // replayed against the store and finds no entry: see docs/payments.md).
            if fleet.is_none() {
                admin.app.ledger.apply_credit(tenant, debit);
            }
            let _ = admin
                .blocking(move |a| a.store.refund_settled(rid, "failed", None))
                .await;
            return Err(e.into());
        }
    }
    // 2. The provider.
    let cfg = admin.app.config();
    let refund_no = format!("tgr{rid}");
    let reason = req.reason.clone().unwrap_or_else(|| "refund".into());
    let unconfigured =
        || crate::payments::ProviderError::Config(format!("{} is not configured", order.provider));
    let result = match (order.provider.as_str(), cfg.payments.as_ref()) {
        (
            "alipay",
            Some(PaymentSettings {
                alipay: Some(a), ..
            }),
        ) => a.refund(id, &refund_no, amount_minor, &reason).await,
        (
            "wechat",
            Some(PaymentSettings {
                wechat: Some(w), ..
            }),
        ) => {
            w.refund(id, &refund_no, amount_minor, order.amount_minor, &reason)
                .await
        }
        (
            "stripe",
            Some(PaymentSettings {
                stripe: Some(s), ..
            }),
        ) => match &order.provider_ref {
            Some(session) => s.refund(session, &refund_no, amount_minor).await,
            None => Err(unconfigured()),
        },
        _ => Err(unconfigured()),
    };
    match result {
        Ok(r) => {
            let state = if r.done { "succeeded" } else { "processing" };
            let refund = admin
                .blocking(move |a| a.store.refund_settled(rid, state, Some(&r.provider_ref)))
                .await?;
            tracing::info!(
                order = id,
                refund = rid,
                tenant = tenant.0,
                debit,
                "payment refunded"
            );
            Ok((StatusCode::CREATED, Json(RefundOut::from(&refund))))
        }
        Err(e) => {
            // Give the debit back, once (its own entry id).
            let back = format!("refund-back:{}:{rid}", tenant.0);
            let n = format!("refund {rid} of order {id} refused by the provider: {e}");
            let given = admin
                .blocking(move |a| {
                    a.store.credit(
                        tenant,
                        EntryKind::Adjustment,
                        debit,
                        Some(&actor),
                        Some(&n),
                        &back,
                    )
                })
                .await;
            if let Ok(e) = &given {
                apply_credits(&admin, std::slice::from_ref(e)).await;
            }
            let _ = admin
                .blocking(move |a| a.store.refund_settled(rid, "failed", None))
                .await;
            tracing::warn!(order = id, refund = rid, error = %e, "the provider refused a refund; the debit was given back");
            Err(ApiError(GatewayError::UpstreamFailed(format!(
                "The payment provider refused the refund (the debit was given back): {e}"
            ))))
        }
    }
}

/// Refunds: of one order (`order`), or all (operator).
#[utoipa::path(get, path = "/admin/refunds", tag = "credits", security(("bearer" = [])),
    params(RefundQuery),
    responses((status = 200, body = Page<RefundOut>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_refunds(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    super::wire::QueryParams(q): super::wire::QueryParams<RefundQuery>,
) -> ApiResult<Json<Page<RefundOut>>> {
    who.require_operator()?;
    let order = q.order;
    let list = ListQuery {
        from: q.from,
        to: q.to,
        limit: q.limit,
        cursor: q.cursor,
    };
    let page = list.newest_first()?;
    let refunds = admin
        .blocking(move |a| a.store.list_refunds(order, page))
        .await?;
    let p = ListQuery::newest_page(page, refunds, |r| r.id);
    let names = admin.names_of(p.data.iter().map(|r| r.tenant_id)).await?;
    Ok(Json(Page {
        data: p
            .data
            .iter()
            .map(|r| RefundOut {
                tenant_name: names.tenants.get(&r.tenant_id.0).cloned(),
                ..RefundOut::from(r)
            })
            .collect(),
        next_cursor: p.next_cursor,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RefundQuery {
    /// Only this order's refunds.
    pub order: Option<i64>,
    /// Created at or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Created before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Rows per page, 1 to 10000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
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
            "{} order {} ({})",
            order.provider,
            order.id,
            order.provider_ref.clone().unwrap_or_default()
        ),
        entry_id.clone(),
    );
    let k = key.clone();
    let (provider, actor) = (
        order.provider.clone(),
        format!("payment:{}", order.provider),
    );
    let outcome = admin
        .blocking(move |a| {
            a.store.top_up(
                tenant,
                amount,
                promo.as_deref(),
                Some(&actor),
                Some(&note),
                &id,
                Some(&k),
            )
        })
        .await
        .map_err(|e| {
            counted(&provider, "error");
            ApiError(e)
        })?;
    let (fresh, credited_nano) = match outcome {
        Credited::Committed(entries) => {
            apply_credits(admin, &entries).await;
            (true, entries.iter().map(|e| e.amount).sum::<i64>())
        }
        Credited::Replay(first) => {
            let ids = first.entry_ids.clone();
            let entries = admin
                .blocking(move |a| a.store.entries_by_id(tenant, &ids))
                .await?;
            (false, entries.iter().map(|e| e.amount).sum::<i64>())
        }
    };
    let oid = order.id;
    let marked = admin
        .blocking(move |a| a.store.order_paid(oid, &entry_id, late, credited_nano))
        .await?;
    counted(&provider, if fresh { "credited" } else { "duplicate" });
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

/// One provider's day.
#[derive(Serialize, ToSchema)]
pub struct ProviderDay {
    pub provider: String,
    pub paid_orders: usize,
    pub paid_rmb: String,
    pub credited_credits: String,
    /// Refunds made that day (processing or done), in RMB, and the credits they debited.
    pub refunded_rmb: String,
    pub refund_debits: String,
    pub mismatches: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Reconciliation {
    pub day: String,
    /// Per provider (compare each with the provider's own daily report).
    pub providers: Vec<ProviderDay>,
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
    let refunds = admin
        .blocking(move |a| {
            Ok(a.store
                .list_refunds(
                    None,
                    NewestFirst {
                        from: start,
                        to: end,
                        ..NewestFirst::latest(100_000)
                    },
                )?
                .into_iter()
                .filter(|r| r.state == "processing" || r.state == "succeeded")
                .collect::<Vec<_>>())
        })
        .await?;
    let lines = admin
        .blocking(move |a| {
            let mut out = Vec::new();
            for o in a.store.list_orders(None, NewestFirst::latest(100_000))? {
                let paid_today = o.paid_at.is_some_and(|p| p >= start && p < end);
                let made_today = o.created_at >= start && o.created_at < end;
                // Paid that day, or placed that day and not (yet) paid.
                let unpaid_of_the_day = made_today && o.state != "paid" && o.state != "refunded";
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
            (Some(_), s) if s != "paid" && s != "refunded" => "credited_not_paid",
            (Some(e), _) if e.amount != expected_nano => "amount_differs",
            _ => "ok",
        };
        if o.state == "paid" || o.state == "refunded" {
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
    let mut providers: Vec<ProviderDay> = Vec::new();
    let mut names: Vec<String> = orders.iter().map(|l| l.provider.clone()).collect();
    let order_provider: std::collections::HashMap<i64, String> = admin
        .blocking(|a| a.store.list_orders(None, NewestFirst::latest(100_000)))
        .await?
        .into_iter()
        .map(|o| (o.id, o.provider))
        .collect();
    names.extend(
        refunds
            .iter()
            .filter_map(|r| order_provider.get(&r.order_id).cloned()),
    );
    names.sort();
    names.dedup();
    for name in names {
        let mine: Vec<&ReconcileLine> = orders.iter().filter(|l| l.provider == name).collect();
        let paid: Vec<&&ReconcileLine> = mine
            .iter()
            .filter(|l| l.state == "paid" || l.state == "refunded")
            .collect();
        let sum = |v: &[&&ReconcileLine], f: fn(&ReconcileLine) -> Option<&str>| -> Decimal {
            v.iter()
                .filter_map(|l| f(l))
                .filter_map(|x| x.parse::<Decimal>().ok())
                .sum()
        };
        let all: Vec<&&ReconcileLine> = mine.iter().collect();
        let theirs: Vec<&Refund> = refunds
            .iter()
            .filter(|r| order_provider.get(&r.order_id) == Some(&name))
            .collect();
        providers.push(ProviderDay {
            provider: name.clone(),
            paid_orders: paid.len(),
            paid_rmb: sum(&paid, |l| Some(l.amount_rmb.as_str()))
                .normalize()
                .to_string(),
            credited_credits: sum(&all, |l| l.credited.as_deref()).normalize().to_string(),
            refunded_rmb: yuan(theirs.iter().map(|r| r.amount_minor).sum())
                .normalize()
                .to_string(),
            refund_debits: super::wire::credits(theirs.iter().map(|r| r.debit_nano).sum()),
            mismatches: mine.iter().filter(|l| l.status != "ok").count(),
        });
    }
    let report = Reconciliation {
        providers,
        day: day.format("%Y-%m-%d").to_string(),
        paid_orders: orders
            .iter()
            .filter(|l| l.state == "paid" || l.state == "refunded")
            .count(),
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
