//! A mock Stripe of our own, speaking Stripe's wire format: Checkout Sessions created
//! form-encoded with the secret key (`POST /v1/checkout/sessions`), a payment page per session
//! (`/c/pay/{id}`: a "Pay" button), and, when paid, the `checkout.session.completed` webhook
//! signed as Stripe signs it, sent to the gateway before the payer is sent back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

pub const SECRET_KEY: &str = "sk_test_made_up_for_the_test";
pub const WEBHOOK_SECRET: &str = "whsec_made_up_for_the_test";

#[derive(Default)]
pub struct MockStripe {
    /// The sessions asked for, as their form fields.
    pub sessions: Mutex<Vec<Vec<(String, String)>>>,
    /// Where paid sessions are notified (the gateway's webhook), once it is known.
    pub webhook: Mutex<Option<String>>,
    /// Sessions paid through the payment page (or marked by a test).
    pub paid: Mutex<std::collections::HashSet<String>>,
    /// Refunds made, as their form fields.
    pub refunds: Mutex<Vec<Vec<(String, String)>>>,
}

impl MockStripe {
    fn field(&self, id: &str, name: &str) -> Option<String> {
        let n: usize = id.strip_prefix("cs_test_")?.parse().ok()?;
        let sessions = self.sessions.lock().unwrap();
        let form = sessions.get(n.checked_sub(1)?)?;
        form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

/// The `[payments]` section pointing the gateway at this mock (secrets from the environment).
pub fn config(api: &str) -> String {
    std::env::set_var("TEST_STRIPE_KEY", SECRET_KEY);
    std::env::set_var("TEST_STRIPE_WHSEC", WEBHOOK_SECRET);
    format!(
        "\n[payments]\nmin_rmb = \"1\"\nmax_rmb = \"5000\"\n[payments.stripe]\nsecret_key_env = \"TEST_STRIPE_KEY\"\nwebhook_secret_env = \"TEST_STRIPE_WHSEC\"\napi_base = \"{api}\"\n"
    )
}

async fn create_session(
    State(m): State<Arc<MockStripe>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {SECRET_KEY}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}),
            ),
        );
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(amount) =
        get("line_items[0][price_data][unit_amount]").and_then(|a| a.parse::<i64>().ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"type": "invalid_request_error", "message": "Missing required param: line_items[0][price_data][unit_amount]."}}),
            ),
        );
    };
    if get("mode").as_deref() != Some("payment") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"type": "invalid_request_error", "message": "Missing required param: mode."}}),
            ),
        );
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let mut sessions = m.sessions.lock().unwrap();
    sessions.push(form.clone());
    let id = format!("cs_test_{}", sessions.len());
    (
        StatusCode::OK,
        axum::Json(json!({
            "id": id,
            "object": "checkout.session",
            "url": format!("http://{host}/c/pay/{id}"),
            "amount_total": amount,
            "currency": get("line_items[0][price_data][currency]"),
            "payment_status": "unpaid",
            "client_reference_id": get("client_reference_id"),
        })),
    )
}

/// A Stripe event about a session.
pub fn event(
    kind: &str,
    session: &str,
    order: i64,
    amount: i64,
    currency: &str,
    status: &str,
) -> Vec<u8> {
    json!({
        "id": format!("evt_{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()),
        "object": "event",
        "type": kind,
        "data": {"object": {
            "id": session,
            "object": "checkout.session",
            "amount_total": amount,
            "currency": currency,
            "payment_status": status,
            "client_reference_id": order.to_string(),
            "metadata": {"order_id": order.to_string()},
        }},
    })
    .to_string()
    .into_bytes()
}

async fn pay_page(Path(id): Path<String>) -> axum::response::Html<String> {
    axum::response::Html(format!(
        "<!doctype html><html><head><title>Mock Stripe</title><link rel=\"icon\" href=\"data:,\"></head><body><h1>Mock Stripe Checkout</h1>\
         <form method=\"post\" action=\"/c/pay/{id}\"><button id=\"stripe-pay\" type=\"submit\">Pay</button></form></body></html>"
    ))
}

/// Pays a session: the signed webhook first (as Stripe does, it may arrive before or after the
/// payer returns), then the payer is sent back to the success URL.
async fn pay(State(m): State<Arc<MockStripe>>, Path(id): Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (Some(order), Some(amount), Some(currency), Some(back)) = (
        m.field(&id, "metadata[order_id]")
            .and_then(|o| o.parse::<i64>().ok()),
        m.field(&id, "line_items[0][price_data][unit_amount]")
            .and_then(|a| a.parse::<i64>().ok()),
        m.field(&id, "line_items[0][price_data][currency]"),
        m.field(&id, "success_url"),
    ) else {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    };
    let body = event(
        "checkout.session.completed",
        &id,
        order,
        amount,
        &currency,
        "paid",
    );
    let sig =
        tollgate::payments::stripe::sign(&body, WEBHOOK_SECRET, tollgate::tenancy::unix_now());
    m.paid.lock().unwrap().insert(id.clone());
    let webhook = m.webhook.lock().unwrap().clone();
    if let Some(url) = webhook {
        let _ = reqwest::Client::new()
            .post(url)
            .header("Stripe-Signature", sig)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
    }
    (StatusCode::SEE_OTHER, [("location", back)]).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SECRET_KEY}"))
}

/// `GET /v1/checkout/sessions/{id}`.
async fn get_session(
    State(m): State<Arc<MockStripe>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"message": "Invalid API Key provided"}})),
        );
    }
    let (Some(amount), Some(currency)) = (
        m.field(&id, "line_items[0][price_data][unit_amount]")
            .and_then(|a| a.parse::<i64>().ok()),
        m.field(&id, "line_items[0][price_data][currency]"),
    ) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"error": {"type": "invalid_request_error", "message": format!("No such checkout.session: '{id}'")}}),
            ),
        );
    };
    let paid = m.paid.lock().unwrap().contains(&id);
    (
        StatusCode::OK,
        axum::Json(json!({
            "id": id, "object": "checkout.session", "amount_total": amount, "currency": currency,
            "status": if paid { "complete" } else { "open" },
            "payment_status": if paid { "paid" } else { "unpaid" },
            "payment_intent": if paid { Value::String(format!("pi_{id}")) } else { Value::Null },
            "metadata": {"order_id": m.field(&id, "metadata[order_id]")},
        })),
    )
}

/// `POST /v1/refunds` (form: payment_intent, amount).
async fn create_refund(
    State(m): State<Arc<MockStripe>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"message": "Invalid API Key provided"}})),
        );
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let n = {
        let mut refunds = m.refunds.lock().unwrap();
        refunds.push(form.clone());
        refunds.len()
    };
    let amount = form
        .iter()
        .find(|(k, _)| k == "amount")
        .map(|(_, v)| v.clone());
    (
        StatusCode::OK,
        axum::Json(
            json!({"id": format!("re_test_{n}"), "object": "refund", "amount": amount, "status": "succeeded"}),
        ),
    )
}

/// Starts the mock; its base URL and state.
pub async fn start() -> (String, Arc<MockStripe>) {
    let m = Arc::new(MockStripe::default());
    let app = axum::Router::new()
        .route("/v1/checkout/sessions", axum::routing::post(create_session))
        .route("/c/pay/{id}", axum::routing::get(pay_page).post(pay))
        .route(
            "/v1/checkout/sessions/{id}",
            axum::routing::get(get_session),
        )
        .route("/v1/refunds", axum::routing::post(create_refund))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), m)
}
