#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Online payment through Stripe (issue 17), against a mock Stripe of our own that speaks its
//! wire format: Checkout Sessions created form-encoded with the secret key, and webhooks signed
//! the way Stripe signs them (`Stripe-Signature`, HMAC-SHA256) with a secret made up here.
//! Conservation: whatever is delivered, each paid order is credited exactly once.

mod common;

use common::stripe::{event, WEBHOOK_SECRET};
use common::*;
use serde_json::{json, Value};
use tollgate::payments::stripe;

fn now() -> i64 {
    tollgate::tenancy::unix_now()
}

async fn deliver(gw: &Gateway, body: &[u8], signature: &str) -> (u16, Value) {
    let r = gw
        .client
        .post(gw.admin_url("/payments/stripe/webhook"))
        .header("Stripe-Signature", signature)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn credited(gw: &Gateway) -> String {
    gw.balance("acme").await["credited"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn order(gw: &Gateway, amount: &str) -> (i64, String, Value) {
    let r = gw
        .client
        .post(gw.admin_url("/admin/tenants/acme/orders"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"amount_rmb": amount}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let id = v["order"]["id"].as_i64().unwrap();
    let session = v["order"]["provider_ref"].as_str().unwrap().to_string();
    (id, session, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_payments_credit_each_paid_order_exactly_once() {
    let (api, stripe_mock) = common::stripe::start().await;
    let m = mock().await;
    // The gateway reads its Stripe secrets from the environment it inherits.
    let extra = common::stripe::config(&api);
    // 1 credit per RMB in the test configuration.
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &extra).await;
    let start = credited(&gw).await;

    // An order: a Checkout Session with the amount in fen, CNY, the order's id; a pay URL.
    let (id, session, placed) = order(&gw, "100").await;
    assert_eq!(placed["order"]["state"], "pending");
    assert!(placed["pay_url"]
        .as_str()
        .unwrap()
        .contains("/c/pay/cs_test_"));
    {
        let sessions = stripe_mock.sessions.lock().unwrap();
        let form = sessions.last().unwrap();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("line_items[0][price_data][unit_amount]"), Some("10000"));
        assert_eq!(get("line_items[0][price_data][currency]"), Some("cny"));
        assert_eq!(get("metadata[order_id]"), Some(id.to_string().as_str()));
    }
    // Out of bounds and fractional fen are refused before Stripe is asked.
    for bad in ["0.5", "6000", "10.001"] {
        let r = gw
            .client
            .post(gw.admin_url("/admin/tenants/acme/orders"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"amount_rmb": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Paid: delivered five times at once, then again: credited once.
    let paid = event(
        "checkout.session.completed",
        &session,
        id,
        10_000,
        "cny",
        "paid",
    );
    let sig = stripe::sign(&paid, WEBHOOK_SECRET, now());
    let answers = futures_util::future::join_all((0..5).map(|_| deliver(&gw, &paid, &sig))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let outcomes: Vec<&str> = answers
        .iter()
        .map(|(_, v)| v["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "credited").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(deliver(&gw, &paid, &sig).await.1["outcome"], "duplicate");
    let after_one = credited(&gw).await;
    let delta = |a: &str, b: &str| a.parse::<f64>().unwrap() - b.parse::<f64>().unwrap();
    assert!(
        (delta(&after_one, &start) - 100.0).abs() < 1e-6,
        "{start} -> {after_one}"
    );
    let orders = gw.admin_get("/admin/tenants/acme/orders").await;
    assert_eq!(orders["data"][0]["state"], "paid");
    assert_eq!(orders["data"][0]["late"], false);

    // Forged (another secret), stale (signed 10 minutes ago), tampered: refused, nothing moves.
    let (id2, session2, _) = order(&gw, "50").await;
    let paid2 = event(
        "checkout.session.completed",
        &session2,
        id2,
        5_000,
        "cny",
        "paid",
    );
    let forged = stripe::sign(&paid2, "whsec_someone_else", now());
    assert_eq!(deliver(&gw, &paid2, &forged).await.0, 400);
    let stale = stripe::sign(&paid2, WEBHOOK_SECRET, now() - 600);
    assert_eq!(deliver(&gw, &paid2, &stale).await.0, 400);
    let mut tampered = paid2.clone();
    let pos = tampered.windows(4).position(|w| w == b"5000").unwrap();
    tampered[pos] = b'9';
    assert_eq!(deliver(&gw, &tampered, &sig_for(&paid2)).await.0, 400);
    // Signed right but for another amount, another currency, an unknown order, or another
    // order's session: refused.
    for body in [
        event(
            "checkout.session.completed",
            &session2,
            id2,
            4_999,
            "cny",
            "paid",
        ),
        event(
            "checkout.session.completed",
            &session2,
            id2,
            5_000,
            "usd",
            "paid",
        ),
        event(
            "checkout.session.completed",
            &session2,
            999_999,
            5_000,
            "cny",
            "paid",
        ),
        event(
            "checkout.session.completed",
            &session,
            id2,
            5_000,
            "cny",
            "paid",
        ),
    ] {
        assert_eq!(deliver(&gw, &body, &sig_for(&body)).await.0, 400);
    }
    assert_eq!(
        credited(&gw).await,
        after_one,
        "nothing refused was credited"
    );
    // A completed session not yet paid (a delayed method) credits nothing; its later success does.
    let unpaid = event(
        "checkout.session.completed",
        &session2,
        id2,
        5_000,
        "cny",
        "unpaid",
    );
    assert_eq!(
        deliver(&gw, &unpaid, &sig_for(&unpaid)).await.1["outcome"],
        "ignored"
    );
    let later = event(
        "checkout.session.async_payment_succeeded",
        &session2,
        id2,
        5_000,
        "cny",
        "paid",
    );
    assert_eq!(
        deliver(&gw, &later, &sig_for(&later)).await.1["outcome"],
        "credited"
    );
    let after_two = credited(&gw).await;
    assert!((delta(&after_two, &after_one) - 50.0).abs() < 1e-6);

    // The session expired, then a payment came after all: credited (once), the order paid. (An
    // order is flagged `late` when its own deadline has passed, which this test does not wait for.)
    let (id3, session3, _) = order(&gw, "10").await;
    let expired = event(
        "checkout.session.expired",
        &session3,
        id3,
        1_000,
        "cny",
        "unpaid",
    );
    assert_eq!(
        deliver(&gw, &expired, &sig_for(&expired)).await.1["outcome"],
        "closed"
    );
    let orders = gw.admin_get("/admin/tenants/acme/orders").await;
    assert_eq!(orders["data"][0]["state"], "expired");
    let late_paid = event(
        "checkout.session.completed",
        &session3,
        id3,
        1_000,
        "cny",
        "paid",
    );
    assert_eq!(
        deliver(&gw, &late_paid, &sig_for(&late_paid)).await.1["outcome"],
        "credited"
    );
    let orders = gw.admin_get("/admin/tenants/acme/orders").await;
    assert_eq!(orders["data"][0]["state"], "paid");
    assert!((delta(&credited(&gw).await, &after_two) - 10.0).abs() < 1e-6);

    // Counted by outcome.
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_payment_notifications_total{outcome=\"credited\",provider=\"stripe\"}"
        ),
        3.0
    );
    assert!(
        metric_value(
            &metrics,
            "tollgate_payment_notifications_total{outcome=\"bad_signature\",provider=\"stripe\"}"
        ) >= 3.0
    );
    assert!(
        metric_value(
            &metrics,
            "tollgate_payment_notifications_total{outcome=\"mismatch\",provider=\"stripe\"}"
        ) >= 3.0
    );
    // The statement shows one top-up per paid order, from the payment.
    let statement = gw.admin_get("/admin/tenants/acme/ledger?limit=100").await;
    let from_payments = statement["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["entry"]["actor"] == "payment:stripe")
        .count();
    assert_eq!(from_payments, 3);

    // The day's reconciliation: three orders paid, each with its top-up, nothing amiss.
    let today = chrono::DateTime::from_timestamp(now(), 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    let report = gw
        .admin_get(&format!("/admin/payments/reconciliation?day={today}"))
        .await;
    assert_eq!(report["paid_orders"], 3, "{report}");
    assert_eq!(report["paid_rmb"], "160", "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(report["orders"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["status"] == "ok"));
    let csv = gw
        .client
        .get(gw.admin_url(&format!(
            "/admin/payments/reconciliation?day={today}&format=csv"
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.contains(",ok,")), "{csv}");
}

fn sig_for(body: &[u8]) -> String {
    stripe::sign(body, WEBHOOK_SECRET, now())
}
