#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `model: "auto"` through the real gateway: the complexity router picks the tier, the response
//! says which and why, the usage event records it, a tenant override changes the policy, and
//! the savings report compares the cost with sending everything to the strong tier.

mod common;

use common::*;
use serde_json::{json, Value};

fn router_section() -> String {
    format!(
        r#"
[router]
model_file = "{}/conf/router/complexity-v2.json"
default_mode = "balanced"
allow_hints = false

[[router.tiers]]
name = "light"
model = "gpt-4o-mini"

[[router.tiers]]
name = "strong"
model = "gpt-4o"
"#,
        env!("CARGO_MANIFEST_DIR")
    )
}

async fn call(
    gw: &Gateway,
    body: Value,
    hint: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&body);
    if let Some(h) = hint {
        req = req.header("x-tollgate-tier", h);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn h<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn auto_routes_by_rules_and_score_and_reports_what_it_saved() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &router_section()).await;

    // A trivial request in cost mode goes to the light tier, decided by the score.
    let (s, hd, body) = call(
        &gw,
        json!({"model": "auto:cheap", "messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(h(&hd, "x-tollgate-route-tier"), Some("light"));
    assert_eq!(h(&hd, "x-tollgate-route-model"), Some("gpt-4o-mini"));
    assert_eq!(
        h(&hd, "x-tollgate-route-reason"),
        Some("score<threshold(cheap)")
    );
    assert_eq!(h(&hd, "x-tollgate-route-mode"), Some("cheap"));
    let score: f64 = h(&hd, "x-tollgate-route-score").unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&score));
    assert_eq!(
        body["model"], "mock-small",
        "the light tier's upstream model was called"
    );

    // Hard rules: a JSON schema answer needs the strong tier.
    let schema_req = json!({
        "model": "auto",
        "messages": [{"role": "system", "content": "You extract data."}, {"role": "user", "content": "Extract the names from: Ann met Bob."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "names", "schema": {"type": "object"}}}
    });
    let (s, hd, _) = call(&gw, schema_req, None).await;
    assert_eq!(s, 200);
    assert_eq!(h(&hd, "x-tollgate-route-tier"), Some("strong"));
    assert_eq!(h(&hd, "x-tollgate-route-reason"), Some("json_schema"));
    // The same conversation, continued without the schema, stays on the strong tier.
    let follow_up = json!({
        "model": "auto:cheap",
        "messages": [
            {"role": "system", "content": "You extract data."},
            {"role": "user", "content": "Extract the names from: Ann met Bob."},
            {"role": "assistant", "content": "{\"names\": [\"Ann\", \"Bob\"]}"},
            {"role": "user", "content": "thanks"}
        ]
    });
    let (_, hd, _) = call(&gw, follow_up, None).await;
    assert_eq!(h(&hd, "x-tollgate-route-tier"), Some("strong"));
    assert_eq!(h(&hd, "x-tollgate-route-reason"), Some("sticky"));

    // Images need the strong tier.
    let (_, hd, _) = call(
        &gw,
        json!({"model": "auto:cheap", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]}]}),
        None,
    )
    .await;
    assert_eq!(h(&hd, "x-tollgate-route-reason"), Some("images"));

    // Hints are ignored unless the tenant's policy allows them...
    let easy = json!({"model": "auto:cheap", "messages": [{"role": "user", "content": "say hello", }], "tollgate_tier": "strong"});
    let (_, hd, _) = call(&gw, easy.clone(), Some("strong")).await;
    assert_eq!(h(&hd, "x-tollgate-route-tier"), Some("light"));
    // ... which a tenant admin can change for their tenant.
    let o = gw
        .client
        .put(gw.admin_url("/admin/tenants/acme/router"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"allow_hints": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(o.status(), 200);
    let bad = gw
        .client
        .put(gw.admin_url("/admin/tenants/acme/router"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"tiers": [{"name": "light", "model": "no-such-model"}, {"name": "strong", "model": "gpt-4o"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "{}", bad.text().await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await; // key snapshot refresh
    let (_, hd, _) = call(&gw, easy, Some("strong")).await;
    assert_eq!(h(&hd, "x-tollgate-route-tier"), Some("strong"));
    assert_eq!(h(&hd, "x-tollgate-route-reason"), Some("hint"));

    // A concrete model bypasses the router.
    let (_, hd, _) = call(
        &gw,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .await;
    assert!(hd.get("x-tollgate-route-tier").is_none());

    // The usage events record the decisions; the savings report compares with the strong tier.
    let events = gw.usage_events(7).await;
    let routed: Vec<&Value> = events
        .iter()
        .filter(|e| !e["route_tier"].is_null())
        .collect();
    assert_eq!(routed.len(), 6);
    for e in &routed {
        assert_eq!(
            e["model_requested"].as_str().unwrap().split(':').next(),
            Some("auto")
        );
        assert!(e["route_reason"].is_string());
        assert!(e["baseline_cost"].nano() >= e["cost"].nano(), "{e}");
    }
    let light = routed.iter().find(|e| e["route_tier"] == "light").unwrap();
    assert!(light["baseline_cost"].nano() > light["cost"].nano());
    let report = gw.admin_get("/admin/tenants/acme/routing").await;
    assert_eq!(report["routed_calls"], 6, "{report}");
    let saved: f64 = report["saved"]
        .as_str()
        .map(|s| s.parse().unwrap())
        .unwrap_or_else(|| report["saved"].as_f64().unwrap());
    assert!(saved > 0.0, "{report}");
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "tollgate_router_decisions_total{reason=\"images\",tier=\"strong\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn auto_without_a_router_is_a_clear_404() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let (s, _, body) = call(
        &gw,
        json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("router"));
    assert_eq!(m.stats().chat_requests, 0);
}

#[tokio::test]
async fn replacing_the_model_file_reloads_it() {
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let original = format!(
        "{}/conf/router/complexity-v2.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(&original, &model).unwrap();
    let section = router_section().replace(&original, &model.display().to_string());
    let gw = Gateway::start(&[Up::mock("a", &m)], "", &section).await;
    let generation = |v: &Value| v["generation"].as_i64().unwrap();
    let before = generation(&gw.admin_get("/admin/config/status").await);
    // A broken model file is refused like any bad reload (the running one stays).
    std::fs::write(&model, "{\"version\": 1}").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let status = gw.admin_get("/admin/config/status").await;
    assert_eq!(generation(&status), before, "{status}");
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("router"),
        "{status}"
    );
    let (s, _, _) = call(
        &gw,
        json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    // The good model back: loaded.
    std::fs::copy(&original, &model).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let status = gw.admin_get("/admin/config/status").await;
    assert!(generation(&status) > before, "{status}");
}
