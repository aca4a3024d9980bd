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

/// An admin API call as the operator: (status, JSON).
async fn api(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = gw
        .client
        .request(method.parse().unwrap(), gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn available(gw: &Gateway) -> f64 {
    gw.balance("acme").await["available"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn credited_of(v: &Value) -> f64 {
    v["credited"].as_str().unwrap().parse().unwrap()
}

async fn place(gw: &Gateway, provider: &str, amount: &str) -> (i64, Value) {
    let (s, v) = api(
        gw,
        "POST",
        "/admin/tenants/acme/orders",
        Some(json!({"amount_rmb": amount, "provider": provider})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    (v["order"]["id"].as_i64().unwrap(), v)
}

async fn alipay_notify(gw: &Gateway, form: &[(String, String)]) -> (u16, String) {
    let r = gw
        .client
        .post(gw.admin_url("/payments/alipay/notify"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter())
                .finish(),
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn metric(text: &str, provider: &str, outcome: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with("tollgate_payment_notifications_total")
                && l.contains(&format!("provider=\"{provider}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_payments_are_verified_credited_once_queried_and_refunded_never_below_spent() {
    use common::cnpay;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, ali, merchant_key, alipay_pub) = cnpay::start_alipay(dir.path()).await;
    let (stripe_api, _stripe) = common::stripe::start().await;
    let m = mock().await;
    let extra = format!(
        "{}{}",
        common::stripe::config(&stripe_api),
        cnpay::alipay_config(&gateway, &merchant_key, &alipay_pub)
    );
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &extra).await;
    let start = credited_of(&gw.balance("acme").await);

    // An order: a signed page-payment URL of Alipay's; the mock checks our RSA2 signature.
    let (a, placed) = place(&gw, "alipay", "10").await;
    let pay_url = placed["pay_url"].as_str().unwrap().to_string();
    assert!(pay_url.starts_with(&gateway), "{pay_url}");
    assert!(pay_url.contains("method=alipay.trade.page.pay"));
    assert_eq!(placed["order"]["provider_ref"], format!("tg{a}"));
    let page = reqwest::get(&pay_url).await.unwrap();
    assert_eq!(page.status(), 200, "the mock refused our signature");
    assert_eq!(*ali.bad_requests.lock().unwrap(), 0);
    // A tampered URL (another amount) fails Alipay's check of our signature.
    let tampered = pay_url.replace("10.00", "0.01");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 400);

    // The notification, five times at once and again: `success` each time, credited once.
    let no = format!("tg{a}");
    // The payer pays (at the mock), and Alipay notifies.
    ali.trades.lock().unwrap().get_mut(&no).unwrap().1 = true;
    let form = ali.notification(&no, "TRADE_SUCCESS", "10.00");
    let answers = futures_util::future::join_all((0..5).map(|_| alipay_notify(&gw, &form))).await;
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "success"),
        "{answers:?}"
    );
    assert_eq!(
        alipay_notify(&gw, &form).await,
        (200, "success".to_string())
    );
    let after = credited_of(&gw.balance("acme").await);
    assert!((after - start - 10.0).abs() < 1e-9, "{start} -> {after}");

    // Refused and counted: a changed field (signature no longer verifies), another amount
    // correctly signed, an unknown order, a signature by another key, another app.
    let mut changed = form.clone();
    for f in changed.iter_mut() {
        if f.0 == "total_amount" {
            f.1 = "1000.00".into();
        }
    }
    assert_eq!(
        alipay_notify(&gw, &changed).await,
        (400, "fail".to_string())
    );
    let (stranger, _) = cnpay::rsa_pair(dir.path(), "stranger");
    let stranger =
        tollgate::payments::keys::PrivateKey::parse(&std::fs::read_to_string(stranger).unwrap())
            .unwrap();
    let mut forged: Vec<(String, String)> = form
        .iter()
        .filter(|(k, _)| k != "sign" && k != "sign_type")
        .cloned()
        .collect();
    let text = tollgate::payments::alipay::signing_text(
        forged.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    forged.push(("sign_type".into(), "RSA2".into()));
    forged.push(("sign".into(), stranger.sign(text.as_bytes()).unwrap()));
    assert_eq!(alipay_notify(&gw, &forged).await, (400, "fail".to_string()));
    let other_amount = ali.notification(&no, "TRADE_SUCCESS", "11.00");
    assert_eq!(alipay_notify(&gw, &other_amount).await.0, 400);
    let unknown = ali.notification("tg999999", "TRADE_SUCCESS", "10.00");
    assert_eq!(alipay_notify(&gw, &unknown).await.0, 400);
    let mut other_app = ali.notification(&no, "TRADE_SUCCESS", "10.00");
    for f in other_app.iter_mut() {
        if f.0 == "app_id" {
            f.1 = "2021999999999999".into();
        }
    }
    ali.sign_form(&mut other_app);
    assert_eq!(alipay_notify(&gw, &other_app).await.0, 400);
    assert_eq!(
        credited_of(&gw.balance("acme").await),
        after,
        "nothing more credited"
    );
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "alipay", "credited"), 1.0);
    assert_eq!(metric(&metrics, "alipay", "duplicate"), 5.0);
    assert_eq!(metric(&metrics, "alipay", "bad_signature"), 2.0);
    assert!(metric(&metrics, "alipay", "mismatch") >= 2.0);
    assert_eq!(metric(&metrics, "alipay", "unknown_order"), 1.0);

    // An active query: order B is paid at Alipay but its notification is lost; asking Alipay
    // (signed query, signed answer) credits it, once.
    let (b, placed_b) = place(&gw, "alipay", "20").await;
    reqwest::get(placed_b["pay_url"].as_str().unwrap())
        .await
        .unwrap();
    let (s, v) = api(&gw, "POST", &format!("/admin/orders/{b}/sync"), None).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("unpaid")), "{v}");
    ali.trades
        .lock()
        .unwrap()
        .get_mut(&format!("tg{b}"))
        .unwrap()
        .1 = true;
    let (s, v) = api(&gw, "POST", &format!("/admin/orders/{b}/sync"), None).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("credited")), "{v}");
    assert_eq!(v["order"]["state"], "paid");
    let (_, v) = api(&gw, "POST", &format!("/admin/orders/{b}/sync"), None).await;
    assert_eq!(v["outcome"], "duplicate");
    assert!((credited_of(&gw.balance("acme").await) - start - 30.0).abs() < 1e-9);

    // Refunds never take back what was spent: with 5 credits available, refunding order B
    // (20) is refused before Alipay is asked; 3 RMB of order A is refunded.
    let base = available(&gw).await;
    let (s, _) = api(
        &gw,
        "POST",
        "/admin/tenants/acme/adjustments",
        Some(json!({"credits": format!("-{}", base - 5.0), "note": "spent elsewhere"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{b}/refunds"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("available balance"),
        "{v}"
    );
    assert!(ali.refunds.lock().unwrap().is_empty());
    assert!((available(&gw).await - 5.0).abs() < 1e-9);
    let (s, v) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{a}/refunds"),
        Some(json!({"amount_rmb": "3", "reason": "test"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["debited"], "3");
    {
        let refunds = ali.refunds.lock().unwrap();
        assert_eq!(refunds.len(), 1);
        assert_eq!(refunds[0]["refund_amount"], "3.00");
        assert_eq!(refunds[0]["out_trade_no"], format!("tg{a}"));
    }
    assert!((available(&gw).await - 2.0).abs() < 1e-9);
    let (_, o) = api(&gw, "GET", "/admin/orders", None).await;
    let order_a = o["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == a)
        .unwrap()
        .clone();
    assert_eq!(order_a["refunded_rmb"], "3");
    assert_eq!(order_a["state"], "paid");
    // More than is left of the order, or than is available: refused.
    let (s, _) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{a}/refunds"),
        Some(json!({"amount_rmb": "8"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{a}/refunds"),
        Some(json!({"amount_rmb": "7"})),
    )
    .await;
    assert_eq!(s, 400);
    // The provider refuses: the debit is given back.
    ali.refuse_refunds
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, v) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{a}/refunds"),
        Some(json!({"amount_rmb": "1"})),
    )
    .await;
    assert_eq!(s, 502, "{v}");
    assert!((available(&gw).await - 2.0).abs() < 1e-9);
    let (_, r) = api(&gw, "GET", &format!("/admin/refunds?order={a}"), None).await;
    let states: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    // Newest first: the provider's refusal, the one the balance did not cover, the 3 RMB.
    assert_eq!(states, ["failed", "failed", "succeeded"]);
    assert!(!gw
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("tollgate_uncollected_nanocredits_total") && !l.ends_with(" 0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_pay_notifications_are_verified_decrypted_credited_once_and_certificates_rotate() {
    use common::cnpay::{self, deliver_wechat, wechat_pay, API_V3_KEY};
    use tollgate::payments::keys::PrivateKey;
    let dir = tempfile::tempdir().unwrap();
    let (api_base, wx, merchant_key, platform_cert) = cnpay::start_wechat(dir.path()).await;
    let (stripe_api, _stripe) = common::stripe::start().await;
    let m = mock().await;
    let extra = format!(
        "{}{}",
        common::stripe::config(&stripe_api),
        cnpay::wechat_config(&api_base, &merchant_key, &platform_cert)
    );
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &extra).await;
    let start = credited_of(&gw.balance("acme").await);
    let notify = gw.admin_url("/payments/wechat/notify");

    // A Native order: signed by the merchant (the mock checks it), answered with a code_url
    // whose signature the gateway checks with the platform certificate.
    let (a, placed) = place(&gw, "wechat", "10").await;
    assert_eq!(
        placed["pay_url"],
        format!("weixin://wxpay/bizpayurl?pr=tg{a}")
    );
    assert_eq!(*wx.bad_requests.lock().unwrap(), 0);
    {
        let trades = wx.trades.lock().unwrap();
        let (order, _) = &trades[&format!("tg{a}")];
        assert_eq!(order["amount"]["total"], 1000);
        assert_eq!(order["amount"]["currency"], "CNY");
        assert_eq!(order["notify_url"], notify);
        assert!(order["time_expire"].as_str().unwrap().ends_with("+08:00"));
    }

    // Paid: the encrypted, signed notification credits once, however often it comes.
    assert_eq!(wechat_pay(&wx, &format!("tg{a}")).await, 204);
    let body = wx.notification(
        "TRANSACTION.SUCCESS",
        &wx.transaction(&format!("tg{a}"), 1000, "SUCCESS"),
        API_V3_KEY,
    );
    let answers =
        futures_util::future::join_all((0..5).map(|_| deliver_wechat(&wx, &notify, &body))).await;
    assert!(answers.iter().all(|s| *s == 204), "{answers:?}");
    let after = credited_of(&gw.balance("acme").await);
    assert!((after - start - 10.0).abs() < 1e-9, "{start} -> {after}");

    // Refused: a resource encrypted with another APIv3 key, another amount, a body changed
    // after signing, a stale signature, an unknown order.
    let wrong_key = wx.notification(
        "TRANSACTION.SUCCESS",
        &wx.transaction(&format!("tg{a}"), 1000, "SUCCESS"),
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    );
    assert_eq!(deliver_wechat(&wx, &notify, &wrong_key).await, 400);
    let (b, _) = place(&gw, "wechat", "20").await;
    let other_amount = wx.notification(
        "TRANSACTION.SUCCESS",
        &wx.transaction(&format!("tg{b}"), 1, "SUCCESS"),
        API_V3_KEY,
    );
    assert_eq!(deliver_wechat(&wx, &notify, &other_amount).await, 400);
    let r = gw
        .client
        .post(&notify)
        .header("content-type", "application/json");
    let mut tampered = r.body(other_amount.clone());
    for (k, v) in wx.sign(&body) {
        tampered = tampered.header(k, v);
    }
    let tampered = tampered.send().await.unwrap();
    assert_eq!(tampered.status(), 400);
    let fail: Value = tampered.json().await.unwrap();
    assert_eq!(fail["code"], "FAIL");
    let mut stale = gw
        .client
        .post(&notify)
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in wx.sign(&body) {
        stale = stale.header(
            k,
            if k == "Wechatpay-Timestamp" {
                (now() - 3600).to_string()
            } else {
                v
            },
        );
    }
    assert_eq!(stale.send().await.unwrap().status(), 400);
    let unknown = wx.notification(
        "TRANSACTION.SUCCESS",
        &wx.transaction("tg999999", 1000, "SUCCESS"),
        API_V3_KEY,
    );
    assert_eq!(deliver_wechat(&wx, &notify, &unknown).await, 400);
    assert_eq!(credited_of(&gw.balance("acme").await), after);

    // A key nobody vouches for is refused even after the gateway asks for the certificates.
    let (stranger_key, _) = cnpay::certificate(dir.path(), "stranger", "0BADC0DE");
    let stranger = PrivateKey::parse(&std::fs::read_to_string(&stranger_key).unwrap()).unwrap();
    let pay_b = wx.notification(
        "TRANSACTION.SUCCESS",
        &wx.transaction(&format!("tg{b}"), 2000, "SUCCESS"),
        API_V3_KEY,
    );
    let mut forged = gw
        .client
        .post(&notify)
        .header("content-type", "application/json")
        .body(pay_b.clone());
    for (k, v) in cnpay::sign_with(&stranger, "0BADC0DE", &pay_b) {
        forged = forged.header(k, v);
    }
    assert_eq!(forged.send().await.unwrap().status(), 400);
    assert_eq!(credited_of(&gw.balance("acme").await), after);

    // Rotation: WeChat Pay starts signing with a new certificate, which its certificate list
    // (signed with the one the gateway trusts) carries. The first notification signed with it
    // makes the gateway fetch the list, and it is credited.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (new_key, new_cert) = cnpay::certificate(dir.path(), "rotated", "7E57AB1E");
    wx.listed.lock().unwrap().push((
        std::fs::read_to_string(&new_cert).unwrap(),
        "7E57AB1E".into(),
    ));
    *wx.key.lock().unwrap() = (
        PrivateKey::parse(&std::fs::read_to_string(&new_key).unwrap()).unwrap(),
        "7E57AB1E".into(),
    );
    assert_eq!(wechat_pay(&wx, &format!("tg{b}")).await, 204);
    let after_b = credited_of(&gw.balance("acme").await);
    assert!(
        (after_b - after - 20.0).abs() < 1e-9,
        "{after} -> {after_b}"
    );

    // An active query (its answer signed with the new certificate): order C is paid, its
    // notification lost; asking credits it once.
    let (c, _) = place(&gw, "wechat", "30").await;
    let (s, v) = api(&gw, "POST", &format!("/admin/orders/{c}/sync"), None).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("unpaid")), "{v}");
    wx.trades
        .lock()
        .unwrap()
        .get_mut(&format!("tg{c}"))
        .unwrap()
        .1 = true;
    let (s, v) = api(&gw, "POST", &format!("/admin/orders/{c}/sync"), None).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("credited")), "{v}");
    assert!((credited_of(&gw.balance("acme").await) - after_b - 30.0).abs() < 1e-9);

    // Refunds: a signed request, the mock's signed answer; a refusal gives the debit back.
    let before = available(&gw).await;
    let (s, v) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{a}/refunds"),
        Some(json!({"amount_rmb": "4"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "succeeded");
    {
        let refunds = wx.refunds.lock().unwrap();
        assert_eq!(refunds[0]["amount"]["refund"], 400);
        assert_eq!(refunds[0]["amount"]["total"], 1000);
        assert_eq!(refunds[0]["out_trade_no"], format!("tg{a}"));
    }
    assert!((available(&gw).await - (before - 4.0)).abs() < 1e-9);
    wx.refuse_refunds
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, _) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{a}/refunds"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 502);
    assert!((available(&gw).await - (before - 4.0)).abs() < 1e-9);
    assert_eq!(
        *wx.bad_requests.lock().unwrap(),
        0,
        "every request we sent verified"
    );
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "wechat", "credited"), 3.0);
    assert!(metric(&metrics, "wechat", "bad_signature") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_orders_are_queried_and_refunded() {
    let (api_base, stripe_mock) = common::stripe::start().await;
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &common::stripe::config(&api_base)).await;
    let start = credited_of(&gw.balance("acme").await);
    // Paid on Stripe's page; the webhook never arrives (the mock knows no endpoint).
    let (id, session, placed) = order(&gw, "50").await;
    let pay = placed["pay_url"].as_str().unwrap().to_string();
    let (s, v) = api(&gw, "POST", &format!("/admin/orders/{id}/sync"), None).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("unpaid")), "{v}");
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(&pay)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(stripe_mock.paid.lock().unwrap().contains(&session));
    let (s, v) = api(&gw, "POST", &format!("/admin/orders/{id}/sync"), None).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("credited")), "{v}");
    assert!((credited_of(&gw.balance("acme").await) - start - 50.0).abs() < 1e-9);
    // Refunded in full (the default): Stripe is asked for the payment's refund, idempotently.
    let (s, v) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{id}/refunds"),
        Some(json!({"reason": "duplicate"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["amount_rmb"], "50");
    {
        let refunds = stripe_mock.refunds.lock().unwrap();
        let get = |k: &str| {
            refunds[0]
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("amount").as_deref(), Some("5000"));
        assert_eq!(get("payment_intent"), Some(format!("pi_{session}")));
    }
    let (_, o) = api(&gw, "GET", "/admin/orders", None).await;
    assert_eq!(o["data"][0]["state"], "refunded");
    assert!((credited_of(&gw.balance("acme").await) - start).abs() < 1e-9);
    // Nothing is left to refund.
    let (s, _) = api(
        &gw,
        "POST",
        &format!("/admin/orders/{id}/refunds"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_offered_amounts_can_be_ordered_when_they_are_configured() {
    let (api_base, _stripe) = common::stripe::start().await;
    let m = mock().await;
    let extra = common::stripe::config(&api_base).replace(
        "[payments.stripe]",
        "amounts = [\"50\", \"100\"]\n[payments.stripe]",
    );
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &extra).await;
    let (s, v) = api(
        &gw,
        "POST",
        "/admin/tenants/acme/orders",
        Some(json!({"amount_rmb": "60"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("50, 100"),
        "{v}"
    );
    let (s, v) = api(
        &gw,
        "POST",
        "/admin/tenants/acme/orders",
        Some(json!({"amount_rmb": "100"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_bonus_is_shown_before_paying_and_a_bad_code_refused_before_the_provider() {
    let (api_base, stripe_mock) = common::stripe::start().await;
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &common::stripe::config(&api_base)).await;
    let (s, v) = api(
        &gw,
        "POST",
        "/admin/promos",
        Some(json!({"code": "spring10", "percent": "10"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api(
        &gw,
        "GET",
        "/admin/tenants/acme/promos/preview?code=SPRING10&amount_rmb=200",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["credits"].as_str(), v["bonus"].as_str()),
        (Some("200"), Some("20")),
        "{v}"
    );
    let (s, _) = api(
        &gw,
        "GET",
        "/admin/tenants/acme/promos/preview?code=NOPE&amount_rmb=200",
        None,
    )
    .await;
    assert_eq!(s, 404);
    // An unknown code is refused before Stripe is asked for a session.
    let sessions = stripe_mock.sessions.lock().unwrap().len();
    let (s, v) = api(
        &gw,
        "POST",
        "/admin/tenants/acme/orders",
        Some(json!({"amount_rmb": "200", "promo_code": "NOPE"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(stripe_mock.sessions.lock().unwrap().len(), sessions);
    // The code is credited once with the payment; then the preview says it is used.
    let (id, session, _) = {
        let (s, v) = api(
            &gw,
            "POST",
            "/admin/tenants/acme/orders",
            Some(json!({"amount_rmb": "200", "promo_code": "spring10"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        (
            v["order"]["id"].as_i64().unwrap(),
            v["order"]["provider_ref"].as_str().unwrap().to_string(),
            v,
        )
    };
    let start = credited_of(&gw.balance("acme").await);
    let paid = event(
        "checkout.session.completed",
        &session,
        id,
        20_000,
        "cny",
        "paid",
    );
    let sig = stripe::sign(&paid, WEBHOOK_SECRET, now());
    assert_eq!(deliver(&gw, &paid, &sig).await.0, 200);
    assert!((credited_of(&gw.balance("acme").await) - start - 220.0).abs() < 1e-9);
    let (s, _) = api(
        &gw,
        "GET",
        "/admin/tenants/acme/promos/preview?code=spring10&amount_rmb=200",
        None,
    )
    .await;
    assert_eq!(s, 400);
}
