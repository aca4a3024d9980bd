//! Admin API v2 endpoints a tenant admin needed: percent-decoded tenant names, reading and
//! changing one key, key rotation, invitation listing and revocation, and revoking one user
//! token. All through the real binary's admin port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use serde_json::{json, Value};

async fn send(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = gw
        .client
        .request(method, gw.admin_url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn hello() -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_tenant_named_with_a_space_is_reachable_by_its_encoded_name() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let t = gw
        .admin_post("/admin/tenants", json!({"name": "Acme Corp"}))
        .await;
    let (s, v) = send(
        &gw,
        reqwest::Method::GET,
        "/admin/tenants/Acme%20Corp",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], t["id"]);
    assert_eq!(v["name"], "Acme Corp");
    assert_eq!(
        (v["rpm_limit"].clone(), v["tpm_limit"].clone()),
        (Value::Null, Value::Null)
    );
    let (s, v) = send(
        &gw,
        reqwest::Method::GET,
        "/admin/tenants/Acme%20Corp/balance",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["available"], "0");
    assert_eq!(v["tenant_name"], "Acme Corp");
}

#[tokio::test]
async fn a_key_is_read_patched_and_rotated_and_its_old_secret_stops_working() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let created = gw
        .admin_post(
            "/admin/keys",
            json!({"tenant": "acme", "name": "ci", "default_channel": "main"}),
        )
        .await;
    let id = created["record"]["id"].as_i64().unwrap();
    let old = created["key"].as_str().unwrap().to_string();
    let path = format!("/admin/keys/{id}");
    let (s, k) = send(&gw, reqwest::Method::GET, &path, ADMIN_TOKEN, None).await;
    assert_eq!(s, 200, "{k}");
    assert_eq!(
        (
            k["name"].as_str(),
            k["tenant_name"].as_str(),
            k["state"].as_str()
        ),
        (Some("ci"), Some("acme"), Some("active"))
    );
    assert_eq!(
        (k["quota"].clone(), k["spent"].clone()),
        (Value::Null, json!("0"))
    );

    // PATCH changes only what is sent.
    let (s, k) = send(
        &gw,
        reqwest::Method::PATCH,
        &path,
        ADMIN_TOKEN,
        Some(json!({"quota_credits": "2.5", "allowed_models": ["gpt-4o-mini"], "expires_at": "2099-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(s, 200, "{k}");
    assert_eq!(k["quota"], "2.5");
    assert_eq!(k["remaining"], "2.5");
    assert_eq!(k["allowed_models"], json!(["gpt-4o-mini"]));
    assert_eq!(k["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(k["name"], "ci");
    // A bad field is a 400 naming nothing changed.
    let (s, _) = send(
        &gw,
        reqwest::Method::PATCH,
        &path,
        ADMIN_TOKEN,
        Some(json!({"quota_credits": "-1"})),
    )
    .await;
    assert_eq!(s, 400);
    // An expiry already past is a mistake, not a way to revoke.
    let (s, v) = send(
        &gw,
        reqwest::Method::PATCH,
        &path,
        ADMIN_TOKEN,
        Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].clone()),
        (400, json!("expires_at")),
        "{v}"
    );
    let (s, _) = send(
        &gw,
        reqwest::Method::PATCH,
        &path,
        ADMIN_TOKEN,
        Some(json!({"colour": "red"})),
    )
    .await;
    assert_eq!(s, 400);
    let (_, k) = send(&gw, reqwest::Method::GET, &path, ADMIN_TOKEN, None).await;
    assert_eq!(k["quota"], "2.5");

    // The old secret works until the rotation, the new one after it, the old one never again.
    let wait_for = |key: String, want: u16| {
        let gw = &gw;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let s = gw
                    .chat_with_key(&key, hello())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                if s == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{key}: {s}, want {want}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(old.clone(), 200).await;
    let (s, rotated) = send(
        &gw,
        reqwest::Method::POST,
        &format!("{path}/rotate"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(rotated["record"]["id"], id);
    assert_eq!(rotated["record"]["quota"], "2.5", "settings kept");
    wait_for(new.clone(), 200).await;
    wait_for(old.clone(), 401).await;

    // A revoked key cannot be rotated or changed.
    let (s, k) = send(&gw, reqwest::Method::DELETE, &path, ADMIN_TOKEN, None).await;
    assert_eq!((s, k["state"].as_str()), (200, Some("revoked")));
    let (s, _) = send(
        &gw,
        reqwest::Method::POST,
        &format!("{path}/rotate"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = send(
        &gw,
        reqwest::Method::PATCH,
        &path,
        ADMIN_TOKEN,
        Some(json!({"name": "x"})),
    )
    .await;
    assert!(s == 400 || s == 409, "{s}");
    wait_for(new, 401).await;
}

#[tokio::test]
async fn invitations_are_listed_and_revoked_and_one_user_token_is_revoked() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let inv = gw
        .admin_post(
            "/admin/tenants/acme/invites",
            json!({"email": "new@acme.test", "role": "member"}),
        )
        .await;
    let inv_id = inv["invite"]["id"].as_i64().unwrap();
    let token = inv["invite_token"].as_str().unwrap().to_string();
    assert!(inv["accept_path"].as_str().unwrap().contains(&token));
    let list = gw.admin_get("/admin/tenants/acme/invites").await;
    assert_eq!(list["data"][0]["state"], "pending", "{list}");
    assert_eq!(list["data"][0]["email"], "new@acme.test");
    // A second invitation while one is pending, or one to a member, is refused at once.
    for email in ["New@acme.test", "owner@acme.test"] {
        if email.starts_with("owner") {
            gw.admin_post(
                "/admin/tenants/acme/users",
                json!({"email": email, "role": "member"}),
            )
            .await;
        }
        let (s, v) = send(
            &gw,
            reqwest::Method::POST,
            "/admin/tenants/acme/invites",
            ADMIN_TOKEN,
            Some(json!({"email": email, "role": "member"})),
        )
        .await;
        assert_eq!(s, 400, "{email}: {v}");
    }
    let (s, v) = send(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/tenants/acme/invites/{inv_id}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    let (s, _) = send(
        &gw,
        reqwest::Method::POST,
        "/admin/invites/accept",
        "",
        Some(json!({"token": token, "name": "New"})),
    )
    .await;
    assert!(
        s == 400 || s == 409 || s == 404,
        "a revoked invitation is refused: {s}"
    );
    let list = gw.admin_get("/admin/tenants/acme/invites").await;
    assert_eq!(list["data"][0]["state"], "revoked");

    // A user's token: listed, revoked alone; the other token keeps working.
    let u = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "a@acme.test", "name": "A", "role": "tenant_admin"}),
        )
        .await;
    let uid = u["user"]["id"].as_i64().unwrap();
    let first = u["token"].as_str().unwrap().to_string();
    // The tenant's only admin cannot demote or disable themselves.
    for change in [json!({"role": "member"}), json!({"disabled": true})] {
        let (s, v) = send(
            &gw,
            reqwest::Method::PATCH,
            &format!("/admin/users/{uid}"),
            &first,
            Some(change.clone()),
        )
        .await;
        assert_eq!(s, 400, "{change}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("only admin"),
            "{v}"
        );
    }
    let second = gw
        .admin_post(&format!("/admin/users/{uid}/tokens"), json!({}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens = gw.admin_get(&format!("/admin/users/{uid}/tokens")).await;
    let ids: Vec<i64> = tokens["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{tokens}");
    let first_id = tokens["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| first.starts_with(t["prefix"].as_str().unwrap()))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (s, _) = send(&gw, reqwest::Method::GET, "/admin/me", &first, None).await;
    assert_eq!(s, 200);
    let (s, v) = send(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/users/{uid}/tokens/{first_id}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    let (s, _) = send(&gw, reqwest::Method::GET, "/admin/me", &first, None).await;
    assert_eq!(s, 401);
    let (s, _) = send(&gw, reqwest::Method::GET, "/admin/me", &second, None).await;
    assert_eq!(s, 200);
}
