#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Budget and balance alerts (issue 17): thresholds chosen by the tenant admin, each firing once
//! per crossing (and again only after a recovery), by email (a real SMTP conversation with a
//! sink) and by an HMAC-signed webhook retried after a failure; one alert per crossing in a
//! fleet too.

mod common;

use common::sinks::{self, Hook};
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn alerts_extra(smtp_port: u16) -> String {
    format!(
        "\n[alerts]\ncheck_seconds = 1\n\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\nfrom = \"tollgate@gateway.test\"\n"
    )
}

async fn put_alerts(gw: &Gateway, body: Value) -> Value {
    let r = gw
        .client
        .put(gw.admin_url("/admin/tenants/acme/alerts"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

async fn available(gw: &Gateway) -> f64 {
    gw.balance("acme").await["available"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn adjust(gw: &Gateway, credits: f64) {
    gw.admin_post(
        "/admin/tenants/acme/adjustments",
        json!({"credits": format!("{credits:.6}"), "note": "test"}),
    )
    .await;
}

/// Waits until `n` alerts of `kind` arrived (verified) at the hook; then a little longer to see
/// that no more come.
async fn wait_alerts(hook: &Hook, kind: &str, n: usize) -> Vec<Value> {
    let of_kind = || -> Vec<Value> {
        hook.received
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == kind)
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while of_kind().len() < n {
        assert!(
            Instant::now() < deadline,
            "{kind}: {} of {n} alerts arrived",
            of_kind().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three more checks: nothing new.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let got = of_kind();
    assert_eq!(got.len(), n, "{kind}: once per crossing: {got:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_once_per_crossing_by_email_and_signed_webhook() {
    let (smtp_port, mailbox) = sinks::smtp().await;
    let (hook_url, hook) = sinks::webhook().await;
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &alerts_extra(smtp_port)).await;

    // What one call costs: the quota of a key is ten of them.
    let before = available(&gw).await;
    let req = json!({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(gw.chat(req.clone()).send().await.unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let cost = loop {
        let now = available(&gw).await;
        if now < before {
            break before - now;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let quota = cost * 20.0;
    let key = gw
        .create_key(json!({"tenant": "acme", "name": "ci-bot", "default_channel": "main", "quota_credits": format!("{quota:.9}")}))
        .await;

    // Settings: bad ones are refused in the caller's error shape.
    for bad in [
        json!({"quota_percents": [0]}),
        json!({"quota_percents": [10, 20, 30, 40, 50, 60]}),
        json!({"emails": ["not-an-address"]}),
        json!({"webhook_url": "ftp://x"}),
        json!({"balance_below": "-1"}),
        json!({"balance_days": 0}),
        json!({"unknown": 1}),
    ] {
        let r = gw
            .client
            .put(gw.admin_url("/admin/tenants/acme/alerts"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 400 || r.status() == 422,
            "{bad}: {}",
            r.status()
        );
    }
    let now = available(&gw).await;
    let threshold = now - 1.0;
    let saved = put_alerts(
        &gw,
        json!({
            "balance_below": format!("{threshold:.6}"),
            "quota_percents": [80, 50],
            "emails": ["finance@acme.test"],
            "webhook_url": hook_url,
        }),
    )
    .await;
    assert_eq!(saved["quota_percents"], json!([50, 80]));
    let secret = saved["webhook_secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{saved}");
    *hook.secret.lock().unwrap() = secret;
    // The first delivery fails: retried.
    hook.fail_first.store(1, Ordering::SeqCst);

    // Nothing is crossed yet.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(hook.received.lock().unwrap().is_empty());

    // The balance crosses: one alert, however many checks and further debits follow.
    adjust(&gw, -1.5).await;
    let low = wait_alerts(&hook, "balance_low", 1).await;
    assert_eq!(low[0]["tenant"]["name"], "acme");
    assert!(
        low[0]["message"].as_str().unwrap().contains("below"),
        "{}",
        low[0]
    );
    adjust(&gw, -0.1).await;
    wait_alerts(&hook, "balance_low", 1).await;
    // Recovers (a top-up): armed again, nothing sent; crosses again: a second alert.
    adjust(&gw, 5.0).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    adjust(&gw, -5.0).await;
    wait_alerts(&hook, "balance_low", 2).await;

    // The key's quota under concurrent load: calls in bursts of four at once. Each threshold
    // alerts once (two crossed between two checks make one alert naming the higher).
    let mut served = 0;
    // Three bursts (about 60% of the quota: concurrent holds refuse earlier), then one call at
    // a time until the quota refuses.
    for _ in 0..3 {
        let burst = futures_util::future::join_all(
            (0..4).map(|_| gw.chat_with_key(&key, req.clone()).send()),
        )
        .await;
        for r in burst {
            let status = r.unwrap().status();
            assert!(status == 200 || status == 429, "{status}");
            served += usize::from(status == 200);
        }
    }
    for _ in 0..30 {
        let status = gw
            .chat_with_key(&key, req.clone())
            .send()
            .await
            .unwrap()
            .status();
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        served += 1;
    }
    assert!(served >= 16, "served {served}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let key_alerts = loop {
        let got: Vec<Value> = hook
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "key_quota")
            .cloned()
            .collect();
        if got.last().is_some_and(|a| a["threshold"] == "80%") {
            break got;
        }
        assert!(Instant::now() < deadline, "no 80% alert: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let after: usize = hook
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "key_quota")
        .count();
    assert_eq!(after, key_alerts.len(), "a threshold alerted twice");
    let thresholds: Vec<&str> = key_alerts
        .iter()
        .map(|a| a["threshold"].as_str().unwrap())
        .collect();
    assert!(
        thresholds == ["50%", "80%"] || thresholds == ["80%"],
        "{thresholds:?}"
    );
    assert!(key_alerts.iter().all(|a| a["subject"]["name"] == "ci-bot"));
    let n_key = key_alerts.len();
    // Every webhook delivery was signed (none refused for its signature); the failed first
    // attempt is in the log with its retry.
    assert_eq!(hook.bad.load(Ordering::SeqCst), 0);
    let log = gw.admin_get("/admin/tenants/acme/alerts/deliveries").await;
    let rows = log["data"].as_array().unwrap();
    let hooks: Vec<&Value> = rows.iter().filter(|d| d["channel"] == "webhook").collect();
    let mails: Vec<&Value> = rows.iter().filter(|d| d["channel"] == "email").collect();
    assert_eq!(hooks.len(), 2 + n_key, "{log}");
    assert_eq!(mails.len(), 2 + n_key, "{log}");
    assert!(rows.iter().all(|d| d["state"] == "delivered"), "{log}");
    let first = hooks.last().unwrap();
    assert_eq!(first["attempts"], 2, "{first}");

    // The emails went through the SMTP relay to the address.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mailbox.messages.lock().unwrap().len() < 2 + n_key {
        assert!(Instant::now() < deadline, "mail did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = mailbox.messages.lock().unwrap().clone();
    assert!(messages
        .iter()
        .all(|(to, _)| to == &vec!["finance@acme.test".to_string()]));
    assert!(messages.iter().any(|(_, text)| text.contains("ci-bot")));

    // A test alert goes to both destinations.
    let r = gw
        .client
        .post(gw.admin_url("/admin/tenants/acme/alerts/test"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_alerts(&hook, "test", 1).await;

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_alerts_fired_total{kind=\"balance_low\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(&metrics, "tollgate_alerts_fired_total{kind=\"key_quota\"}"),
        n_key as f64
    );
    assert_eq!(
        metric_value(&metrics, "tollgate_alerts_active{kind=\"balance_low\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "tollgate_alerts_active{kind=\"key_quota\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_alert_deliveries_total{channel=\"webhook\",outcome=\"retried\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sends_one_alert_per_crossing() {
    let redis = Redis::start();
    let (hook_url, hook) = sinks::webhook().await;
    let m = mock().await;
    let ups = [Up::mock("a", &m)];
    let extra = |node: &str| {
        format!(
            "{}\n[alerts]\ncheck_seconds = 1\n",
            common::fleet::cluster_extra(&redis, node)
        )
    };
    let n1 = Gateway::spawn(&ups, "", &extra("n1"), "", None).await;
    let db = n1.db.clone();
    let n2 = Gateway::spawn(&ups, "", &extra("n2"), "", Some(&db)).await;
    let n3 = Gateway::spawn(&ups, "", &extra("n3"), "", Some(&db)).await;
    n1.admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    n1.admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "10"}))
        .await;
    let saved = put_alerts(&n2, json!({"balance_below": "5", "webhook_url": hook_url})).await;
    *hook.secret.lock().unwrap() = saved["webhook_secret"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    adjust(&n3, -6.0).await;
    let got = wait_alerts(&hook, "balance_low", 1).await;
    assert_eq!(got[0]["value"], "4");
    assert_eq!(hook.bad.load(Ordering::SeqCst), 0);
    drop((n1, n2, n3));
}
