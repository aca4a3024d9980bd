#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Credits end to end: holds before forwarding, settlement to the real cost, the conservation
//! invariant, concurrency against a small balance, quotas, redemption races and recovery of
//! the books from the journal after SIGKILL.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tollgate::mock::Behavior;

/// Prices of the test config, x7.2 channel multiplier, in nano-credits per token (x1e-6 USD).
fn cost_nano(model: &str, prompt: u64, cached: u64, completion: u64) -> i64 {
    let (input, cached_p, output) = match model {
        "gpt-4o-mini" => (0.15, 0.075, 0.60),
        "gpt-4o" => (2.50, 1.25, 10.00),
        "text-embedding-3-small" => (0.02, 0.02, 0.0),
        _ => panic!("{model}"),
    };
    // nano-credits = tokens x USD/1M x 7.2 x 1e9 / 1e6 = tokens x price x 7200
    let exact =
        ((prompt - cached) as f64 * input + cached as f64 * cached_p + completion as f64 * output)
            * 7200.0;
    exact.round() as i64
}

fn check_invariant(b: &serde_json::Value) {
    let (available, reserved, charged, credited) = (
        b["available"].nano(),
        b["reserved"].nano(),
        b["charged"].nano(),
        b["credited"].nano(),
    );
    assert_eq!(available + reserved + charged, credited, "{b}");
    assert!(available >= 0, "{b}");
}

/// The journal is written in group commits; wait until it holds `n` charges.
async fn wait_for_charges(gw: &Gateway, tenant: &str, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let v = gw
            .admin_get(&format!("/admin/tenants/{tenant}/ledger"))
            .await;
        let charges: Vec<_> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["entry"]["kind"] == "charge")
            .cloned()
            .collect();
        if charges.len() >= n {
            return charges;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("journal never reached {n} charges");
}

#[tokio::test]
async fn every_call_is_charged_its_exact_price_and_the_books_balance() {
    let m = mock().await;
    m.set_cached_tokens(3);
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let mut calls = 0;
    for (i, model) in ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o"]
        .iter()
        .enumerate()
    {
        for stream in [false, true] {
            let mut req = json!({"model": model, "max_tokens": 10 + i, "messages": [{"role": "user", "content": format!("question number {i} about billing")}]});
            if stream {
                req["stream"] = json!(true);
            }
            let r = gw.chat(req).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
            calls += 1;
        }
    }
    let r = gw
        .client
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "text-embedding-3-small", "input": "some text to embed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    calls += 1;

    let events = gw.usage_events(calls).await;
    assert_eq!(events.len(), calls);
    let charges = wait_for_charges(&gw, "acme", calls).await;
    let mut total = 0i64;
    for e in &events {
        let want = cost_nano(
            e["model_requested"].as_str().unwrap(),
            e["prompt_tokens"].as_u64().unwrap(),
            e["cached_tokens"].as_u64().unwrap(),
            e["completion_tokens"].as_u64().unwrap(),
        );
        assert_eq!(e["cost"].nano(), want, "{e}");
        assert!(want > 0);
        let charge = charges
            .iter()
            .find(|c| c["entry"]["request_id"] == e["request_id"])
            .expect("one charge per request");
        assert_eq!(charge["entry"]["amount"].nano(), -want);
        total += want;
    }
    let b = gw.balance("acme").await;
    check_invariant(&b);
    assert_eq!(b["reserved"], "0");
    assert_eq!(
        b["charged"].nano(),
        total,
        "per-request charges sum exactly to the total"
    );
    assert_eq!(b["credited"].nano(), 1000 * 1_000_000_000);

    // The CSV statement carries a running balance that ends at the available balance.
    let csv = gw
        .client
        .get(gw.admin_url("/admin/tenants/acme/ledger?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last = csv.lines().last().unwrap();
    let running: rust_decimal::Decimal = last.split(',').nth(5).unwrap().parse().unwrap();
    assert_eq!(
        running * rust_decimal::Decimal::from(1_000_000_000i64),
        rust_decimal::Decimal::from(b["available"].nano())
    );
}

/// Prompts that tokenise far denser than two bytes a token ("x9!" repeated: one token a byte;
/// CJK extension characters; Tibetan) on both callers' paths. Each is sent by ten concurrent
/// calls of a tenant whose credit covers about three of them: a call is either covered by its
/// hold or refused with 402 before the vendor sees it, the tenant is never served beyond its
/// credit, every served call is charged its exact price and nothing is `uncollected`.
#[tokio::test]
async fn dense_prompts_are_covered_by_their_hold_or_refused() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let texts = [
        "x9!".repeat(1500),
        "\u{20000}".repeat(1000),
        // Tibetan subjoined letters, which no vocabulary merges: a token a byte or so.
        (0..1500u32)
            .map(|i| char::from_u32(0x0f90 + (i * 7) % 45).unwrap())
            .collect::<String>(),
    ];
    for (i, text) in texts.iter().enumerate() {
        for anthropic in [false, true] {
            let body = json!({"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": text}]});
            let path = if anthropic {
                "/v1/messages"
            } else {
                "/v1/chat/completions"
            };
            // The real cost of one call, from a call on the rich tenant.
            let r = gw
                .client
                .post(gw.url(path))
                .bearer_auth(&gw.key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            let (prompt, completion) = if anthropic {
                (
                    v["usage"]["input_tokens"].as_u64().unwrap(),
                    v["usage"]["output_tokens"].as_u64().unwrap(),
                )
            } else {
                (
                    v["usage"]["prompt_tokens"].as_u64().unwrap(),
                    v["usage"]["completion_tokens"].as_u64().unwrap(),
                )
            };
            let old_bound = serde_json::to_vec(&body).unwrap().len() as u64 / 2 + 64;
            assert!(
                prompt > old_bound,
                "text {i}: {prompt} tokens vs the old bound {old_bound}"
            );
            let one = cost_nano("gpt-4o", prompt, 0, 16);
            // Three calls' worst case and a bit: three at most may be served.
            let tenant = format!("dense{i}{anthropic}");
            gw.admin_post("/admin/tenants", json!({"name": tenant}))
                .await;
            let credit = one * 3 + one / 2;
            gw.admin_post(
                &format!("/admin/tenants/{tenant}/topups"),
                json!({"amount_rmb": rust_decimal::Decimal::new(credit, 9).to_string()}),
            )
            .await;
            let key = gw
                .create_key(json!({"tenant": tenant, "name": "k", "default_channel": "main"}))
                .await;
            let before = m.stats().chat_requests;
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let req = gw.client.post(gw.url(path)).bearer_auth(&key).json(&body);
                tasks.push(tokio::spawn(async move {
                    let r = req.send().await.unwrap();
                    let status = r.status().as_u16();
                    (status, r.json::<serde_json::Value>().await.unwrap())
                }));
            }
            let mut served = 0;
            for t in tasks {
                let (status, v) = t.await.unwrap();
                match status {
                    200 => served += 1,
                    402 => {
                        let code = if anthropic {
                            &v["error"]["type"]
                        } else {
                            &v["error"]["code"]
                        };
                        assert!(
                            code == "insufficient_quota" || code == "billing_error",
                            "{v}"
                        );
                    }
                    s => panic!("text {i}: unexpected {s}: {v}"),
                }
            }
            assert!((1..=3).contains(&served), "text {i}: {served} served");
            assert_eq!(
                m.stats().chat_requests - before,
                served as u64,
                "refused calls never reach the vendor"
            );
            wait_for_charges(&gw, &tenant, served).await;
            let b = gw.balance(&tenant).await;
            check_invariant(&b);
            assert_eq!(b["reserved"], "0");
            assert_eq!(
                b["charged"].nano(),
                served as i64 * cost_nano("gpt-4o", prompt, 0, completion),
                "text {i}: every served call charged its exact price"
            );
            assert!(b["charged"].nano() <= credit);
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_uncollected_nanocredits_total"),
        0.0
    );
    assert!(
        metric_value(
            &metrics,
            "tollgate_hold_exact_counts_total{outcome=\"held\"}"
        ) > 0.0
    );
}

#[tokio::test]
async fn fifty_concurrent_calls_against_a_balance_that_covers_one() {
    let m = mock().await;
    m.set_behavior(Behavior::Delay { ms: 300 });
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    gw.admin_post("/admin/tenants", json!({"name": "poor"}))
        .await;
    // gpt-4o, 1000 output tokens: worst case ~0.0745 credits; 0.1 covers one, not two.
    gw.admin_post("/admin/tenants/poor/topups", json!({"amount_rmb": "0.1"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "poor", "name": "k", "default_channel": "main"}))
        .await;
    let req = json!({"model": "gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "write a lot"}]});
    let mut ok = 0;
    let mut refused = 0;
    for (status, body) in fire(std::slice::from_ref(&gw), &key, 50, &req).await {
        match status {
            200 => {
                assert!(!body.is_null(), "a JSON answer");
                ok += 1
            }
            402 => {
                assert_eq!(body["error"]["code"], "insufficient_quota");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, refused), (1, 49));
    assert_eq!(
        m.stats().chat_requests,
        1,
        "refused calls never reach the vendor"
    );
    wait_for_charges(&gw, "poor", 1).await;
    let b = gw.balance("poor").await;
    check_invariant(&b);
    assert_eq!(b["reserved"], "0");
    assert!(b["charged"].nano() > 0);
}

#[tokio::test]
async fn key_quota_is_enforced_and_unpriced_models_are_refused() {
    let m = mock().await;
    let extra = format!(
        "[[models]]\nname = \"free-lunch\"\n[[channels.upstreams]]\nname = \"free\"\nbase_url = \"{}\"\nmodels = [\"free-lunch\"]\n",
        m.base_url()
    );
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &extra).await;
    // ~0.0002 credits per small call on gpt-4o-mini; the worst case of 1000 output tokens is
    // ~0.0045, so a 0.01 quota admits a couple of calls and then refuses.
    let key = gw
        .create_key(json!({"tenant": "acme", "name": "capped", "default_channel": "main", "quota_credits": "0.01"}))
        .await;
    let req = json!({"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&req)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == 429 {
            assert_eq!(body["error"]["code"], "insufficient_quota");
            assert!(body["error"]["message"].as_str().unwrap().contains("quota"));
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    let first_refusal = statuses.iter().position(|s| *s == 429).unwrap();
    assert!(
        statuses[first_refusal..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // The tenant's other key is not affected.
    assert_eq!(gw.chat(req.clone()).send().await.unwrap().status(), 200);

    // A model without a price is never served free.
    let mut free = req.clone();
    free["model"] = json!("free-lunch");
    let r = gw.chat(free).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_priced");
}

#[tokio::test]
async fn a_redemption_code_raced_from_many_clients_credits_once() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let v = gw
        .admin_post(
            "/admin/codes",
            json!({"credits": "25", "count": 2, "batch": "promo-nov"}),
        )
        .await;
    let code = v["codes"][0].as_str().unwrap().to_string();
    let before = gw.balance("acme").await["credited"].nano();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, url, code) = (
            gw.client.clone(),
            gw.admin_url("/admin/tenants/acme/redeem"),
            code.clone(),
        );
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"code": code}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 400),
        "{statuses:?}"
    );
    let b = gw.balance("acme").await;
    assert_eq!(b["credited"].nano() - before, 25 * 1_000_000_000);
    check_invariant(&b);
    let codes = gw.admin_get("/admin/codes?batch=promo-nov").await;
    let states: Vec<&str> = codes["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["redeemed", "unused"]);
}

#[tokio::test]
async fn books_are_recovered_exactly_from_the_journal_after_sigkill() {
    let m = mock().await;
    let mut gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    gw.admin_post(
        "/admin/tenants/acme/adjustments",
        json!({"credits": "-3.5", "note": "refund reversal"}),
    )
    .await;
    for i in 0..20 {
        let mut req = json!({"model": "gpt-4o", "max_tokens": 5 + i, "messages": [{"role": "user", "content": "hello"}]});
        if i % 2 == 0 {
            req["stream"] = json!(true);
        }
        let r = gw.chat(req).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    wait_for_charges(&gw, "acme", 20).await;
    let before = gw.balance("acme").await;
    check_invariant(&before);

    gw.kill_and_restart().await;
    let after = gw.balance("acme").await;
    assert_eq!(before, after, "balances rebuilt from the journal");
    // And the restarted gateway keeps charging on top of the recovered books.
    let r = gw.chat(json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    wait_for_charges(&gw, "acme", 21).await;
    let later = gw.balance("acme").await;
    check_invariant(&later);
    assert!(later["charged"].nano() > after["charged"].nano());
}

#[tokio::test]
async fn analytics_group_spend_by_model_and_match_the_ledger() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    for (model, n) in [("gpt-4o-mini", 3), ("gpt-4o", 2)] {
        for _ in 0..n {
            let r = gw.chat(json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }
    }
    let _ = gw
        .chat(json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let events = gw.usage_events(6).await;
    assert_eq!(
        events.len(),
        6,
        "every authenticated call is recorded, refused ones too"
    );
    wait_for_charges(&gw, "acme", 5).await;

    let v = gw
        .admin_get("/admin/tenants/acme/analytics?group_by=model")
        .await;
    let rows = v["data"].as_array().unwrap();
    let row = |k: &str| rows.iter().find(|r| r["key"] == k).unwrap().clone();
    assert_eq!(row("gpt-4o-mini")["requests"], 3);
    assert_eq!(row("gpt-4o")["requests"], 2);
    assert_eq!(
        (
            row("nope")["requests"].as_i64(),
            row("nope")["errors"].as_i64(),
            row("nope")["credits"].nano_opt()
        ),
        (Some(1), Some(1), Some(0))
    );
    let total: i64 = rows.iter().map(|r| r["credits"].nano()).sum();
    assert_eq!(
        total,
        gw.balance("acme").await["charged"].nano(),
        "analytics agree with the ledger"
    );
    let hourly = gw
        .admin_get("/admin/tenants/acme/analytics?granularity=hour")
        .await;
    assert_eq!(
        hourly["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum::<i64>(),
        6
    );
    // Days of the viewer's zone: Shanghai's days start at 16:00 UTC.
    let local = gw
        .admin_get("/admin/tenants/acme/analytics?granularity=day&tz_offset=480")
        .await;
    let rows = local["data"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum::<i64>(),
        6
    );
    assert!(rows
        .iter()
        .all(|r| r["bucket"].as_str().unwrap().ends_with("T16:00:00Z")));
    for bad in ["group_by=color", "tz_offset=900", "tz_offset=east"] {
        let r = gw
            .client
            .get(gw.admin_url(&format!("/admin/tenants/acme/analytics?{bad}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn promo_campaigns_bonus_once_per_tenant_within_their_cap() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    for t in ["t1", "t2", "t3"] {
        gw.admin_post("/admin/tenants", json!({"name": t})).await;
    }
    gw.admin_post(
        "/admin/promos",
        json!({"code": "double11", "percent": "20", "max_uses": 2}),
    )
    .await;
    gw.admin_post("/admin/promos", json!({"code": "WELCOME", "credits": "5"}))
        .await;
    let post = |path: String, body: serde_json::Value| {
        let c = gw.client.clone();
        let url = gw.admin_url(&path);
        async move {
            let r = c
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // 20% on a 100 RMB top-up: 120 credits in, as two entries.
    let (s, v) = post(
        "/admin/tenants/t1/topups".into(),
        json!({"amount_rmb": "100", "promo_code": "DOUBLE11"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["entries"][1]["kind"], "promo");
    assert_eq!(
        gw.balance("t1").await["credited"].nano(),
        120 * 1_000_000_000
    );
    // Once per tenant: the second use by t1 is refused and nothing is credited (not even the top-up).
    let (s, _) = post(
        "/admin/tenants/t1/topups".into(),
        json!({"amount_rmb": "50", "promo_code": "double11"}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        gw.balance("t1").await["credited"].nano(),
        120 * 1_000_000_000
    );
    // The cap of 2 uses holds even when tenants race for the last one.
    let (a, b) = tokio::join!(
        post(
            "/admin/tenants/t2/topups".into(),
            json!({"amount_rmb": "10", "promo_code": "DOUBLE11"})
        ),
        post(
            "/admin/tenants/t3/topups".into(),
            json!({"amount_rmb": "10", "promo_code": "DOUBLE11"})
        ),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 400], "{a:?} {b:?}");
    let promos = gw.admin_get("/admin/promos").await;
    assert_eq!(promos["data"][0]["uses"], 2);
    // A fixed bonus is claimed without a top-up, once.
    let (s, _) = post("/admin/tenants/t3/promo".into(), json!({"code": "welcome"})).await;
    assert_eq!(s, 201);
    let (s, _) = post("/admin/tenants/t3/promo".into(), json!({"code": "welcome"})).await;
    assert_eq!(s, 400);
    for t in ["t1", "t2", "t3"] {
        check_invariant(&gw.balance(t).await);
    }
}

#[tokio::test]
async fn metering_only_mode_records_usage_and_charges_nothing() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "[billing]\nenabled = false\n").await;
    gw.admin_post("/admin/tenants", json!({"name": "free"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "free", "name": "k", "default_channel": "main"}))
        .await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "no balance needed");
    let events = gw.usage_events(1).await;
    assert_eq!(events[0]["cost"], "0");
    assert!(events[0]["completion_tokens"].as_u64().unwrap() > 0);
    let b = gw.balance("free").await;
    assert_eq!(
        (b["charged"].nano_opt(), b["credited"].nano_opt()),
        (Some(0), Some(0))
    );
}
