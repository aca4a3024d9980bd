#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Tenancy through the admin API: roles, isolation between tenants, invitations, and the
//! spending limits of users and departments.

mod common;

use common::*;
use serde_json::json;

struct Caller<'a> {
    gw: &'a Gateway,
    token: String,
}

impl Caller<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut rb = self
            .gw
            .client
            .request(method, self.gw.admin_url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }
    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Create a user in `tenant` with `role` as the operator; returns (user id, token).
async fn user(
    gw: &Gateway,
    tenant: &str,
    email: &str,
    role: &str,
    extra: serde_json::Value,
) -> (i64, String) {
    let mut body = json!({"email": email, "name": email, "role": role});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let v = gw
        .admin_post(&format!("/admin/tenants/{tenant}/users"), body)
        .await;
    (
        v["user"]["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_tenant_admin_of_a_cannot_read_or_change_anything_of_b() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    // Tenant "acme" exists (with a key and traffic); add tenant "globex" with its own admin.
    gw.admin_post("/admin/tenants", json!({"name": "globex"}))
        .await;
    gw.admin_post("/admin/tenants/globex/topups", json!({"amount_rmb": "10"}))
        .await;
    let (_, acme_admin) = user(&gw, "acme", "boss@acme.test", "tenant_admin", json!({})).await;
    let (globex_user, globex_admin) =
        user(&gw, "globex", "boss@globex.test", "tenant_admin", json!({})).await;
    let globex_key = gw
        .create_key(json!({"tenant": "globex", "name": "g", "default_channel": "main"}))
        .await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&globex_key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let globex_keys = gw.admin_get("/admin/keys?tenant=globex").await;
    let globex_key_id = globex_keys["data"][0]["id"].as_i64().unwrap();
    let _ = gw.usage_events(1).await;

    let a = Caller {
        gw: &gw,
        token: acme_admin,
    };
    // Reads of B: every one answers 404, the same as for a tenant that does not exist.
    for path in [
        "/admin/tenants/globex/balance",
        "/admin/tenants/globex/ledger",
        "/admin/tenants/globex/users",
        "/admin/tenants/globex/groups",
        "/admin/keys?tenant=globex",
        "/admin/usage?tenant=2",
    ] {
        let (s, v) = a.get(path).await;
        assert_eq!(s, 404, "{path}: {v}");
    }
    // Writes to B.
    let writes = [
        (
            "/admin/keys",
            json!({"tenant": "globex", "name": "x", "default_channel": "main"}),
        ),
        (
            "/admin/tenants/globex/users",
            json!({"email": "spy@acme.test", "role": "member"}),
        ),
        ("/admin/tenants/globex/groups", json!({"name": "ops"})),
        (
            "/admin/tenants/globex/invites",
            json!({"email": "spy@acme.test", "role": "tenant_admin"}),
        ),
        (
            "/admin/tenants/globex/redeem",
            json!({"code": "RC-whatever"}),
        ),
        (
            &format!("/admin/keys/{globex_key_id}/revoke") as &str,
            json!({}),
        ),
        (
            &format!("/admin/users/{globex_user}/tokens") as &str,
            json!({}),
        ),
    ];
    for (path, body) in writes {
        let (s, v) = a.post(path, body).await;
        assert_eq!(s, 404, "{path}: {v}");
    }
    let (s, _) = a
        .send(
            reqwest::Method::PATCH,
            &format!("/admin/users/{globex_user}"),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = a
        .send(
            reqwest::Method::PUT,
            "/admin/tenants/globex/quota-period",
            Some(json!({"period": "day"})),
        )
        .await;
    assert_eq!(s, 404);
    // A tenant admin sets their own tenant's quota period (monthly budgets); bad values are 400.
    let (s, v) = a
        .send(
            reqwest::Method::PUT,
            "/admin/tenants/acme/quota-period",
            Some(json!({"period": "month"})),
        )
        .await;
    assert_eq!((s, &v["quota_period"]), (200, &json!("month")), "{v}");
    let (s, v) = a
        .send(
            reqwest::Method::PUT,
            "/admin/tenants/acme/quota-period",
            Some(json!({"period": "fortnight"})),
        )
        .await;
    assert_eq!((s, &v["error"]["param"]), (400, &json!("period")), "{v}");
    // Listings only ever show A.
    let (_, tenants) = a.get("/admin/tenants").await;
    let names: Vec<&str> = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["acme"]);
    let (_, keys) = a.get("/admin/keys").await;
    assert!(keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["tenant_name"] == "acme"));
    let (_, usage) = a.get("/admin/usage").await;
    assert!(
        usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] == gw.tenant_id),
        "{usage}"
    );
    // Operator-only actions are refused to tenant admins even in their own tenant.
    for (path, body) in [
        ("/admin/tenants/acme/topups", json!({"amount_rmb": "1000"})),
        (
            "/admin/tenants/acme/adjustments",
            json!({"credits": "5", "note": "x"}),
        ),
        ("/admin/codes", json!({"credits": "5", "count": 1})),
        ("/admin/tenants", json!({"name": "evil"})),
        ("/admin/reload", json!({})),
    ] {
        let (s, v) = a.post(path, body).await;
        assert_eq!(s, 403, "{path}: {v}");
    }
    for path in ["/admin/codes", "/admin/channels", "/admin/config/status"] {
        let (s, _) = a.get(path).await;
        assert!(s == 403 || s == 404, "{path}: {s}");
    }
    // B's key still works and B's data is untouched.
    let g = Caller {
        gw: &gw,
        token: globex_admin,
    };
    let (s, keys) = g.get("/admin/keys").await;
    assert_eq!(s, 200);
    assert!(keys["data"][0]["revoked_at"].is_null());
    let (s, _) = g.get("/admin/tenants/acme/balance").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn roles_members_viewers_and_invitations() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let (_, admin) = user(&gw, "acme", "admin@acme.test", "tenant_admin", json!({})).await;
    let admin = Caller {
        gw: &gw,
        token: admin,
    };

    // Invitation: accepted once, then refused.
    let (s, v) = admin
        .post(
            "/admin/tenants/acme/invites",
            json!({"email": "dev@acme.test", "role": "member"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let invite = v["invite_token"].as_str().unwrap().to_string();
    let r = gw
        .client
        .post(gw.admin_url("/admin/invites/accept"))
        .json(&json!({"token": invite, "name": "Dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let member = Caller {
        gw: &gw,
        token: accepted["token"].as_str().unwrap().to_string(),
    };
    let again = gw
        .client
        .post(gw.admin_url("/admin/invites/accept"))
        .json(&json!({"token": invite}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let (_, me) = member.get("/admin/me").await;
    assert_eq!(me["role"], "member");

    // A member creates keys for themselves only, sees only their own keys and usage.
    let (s, v) = member
        .post(
            "/admin/keys",
            json!({"name": "mine", "default_channel": "main"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let member_key = v["key"].as_str().unwrap().to_string();
    assert_eq!(v["record"]["user_id"], accepted["user"]["id"]);
    let (s, _) = member
        .post(
            "/admin/keys",
            json!({"name": "theirs", "default_channel": "main", "user_id": 9999}),
        )
        .await;
    assert_eq!(s, 403);
    let (_, keys) = member.get("/admin/keys").await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
    let (s, _) = member.get("/admin/tenants/acme/balance").await;
    assert_eq!(s, 403);
    // The tenant's shared key was used; the member's usage view shows only the member's calls.
    assert_eq!(
        gw.chat(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&member_key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = gw.usage_events(2).await;
    let (_, usage) = member.get("/admin/usage").await;
    assert_eq!(usage["data"].as_array().unwrap().len(), 1, "{usage}");

    // A viewer reads money but changes nothing.
    let (_, viewer) = user(&gw, "acme", "cfo@acme.test", "viewer", json!({})).await;
    let viewer = Caller {
        gw: &gw,
        token: viewer,
    };
    let (s, _) = viewer.get("/admin/tenants/acme/ledger").await;
    assert_eq!(s, 200);
    let (s, _) = viewer
        .post(
            "/admin/keys",
            json!({"name": "v", "default_channel": "main"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = viewer
        .post(
            "/admin/tenants/acme/users",
            json!({"email": "x@acme.test", "role": "member"}),
        )
        .await;
    assert_eq!(s, 403);

    // Disabling the member turns their keys and admin token off at once.
    let uid = accepted["user"]["id"].as_i64().unwrap();
    let (s, _) = admin
        .send(
            reqwest::Method::PATCH,
            &format!("/admin/users/{uid}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, 200);
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&member_key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = member.get("/admin/me").await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn department_budgets_and_user_quotas_limit_spending() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    // gpt-4o-mini with 1000 max output tokens: worst case ~0.0045 credits, real ~0.00011.
    let g = gw
        .admin_post(
            "/admin/tenants/acme/groups",
            json!({"name": "research", "budget_credits": "0.006"}),
        )
        .await;
    let gid = g["id"].as_i64().unwrap();
    let (alice, _) = user(
        &gw,
        "acme",
        "alice@acme.test",
        "member",
        json!({"group_id": gid}),
    )
    .await;
    let (bob, _) = user(
        &gw,
        "acme",
        "bob@acme.test",
        "member",
        json!({"group_id": gid}),
    )
    .await;
    let (carol, _) = user(
        &gw,
        "acme",
        "carol@acme.test",
        "member",
        json!({"quota_credits": "0.005"}),
    )
    .await;
    let key = |uid: i64| {
        gw.create_key(json!({"tenant": "acme", "name": format!("k{uid}"), "default_channel": "main", "user_id": uid}))
    };
    let (ka, kb, kc) = (key(alice).await, key(bob).await, key(carol).await);
    let req = json!({"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]});
    let call = |k: String| {
        let (c, url, req) = (
            gw.client.clone(),
            gw.url("/v1/chat/completions"),
            req.clone(),
        );
        async move {
            let r = c.post(url).bearer_auth(k).json(&req).send().await.unwrap();
            let s = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap();
            (s, v)
        }
    };
    // The department's budget is shared: alice and bob together run out.
    let mut refused = None;
    for i in 0..40 {
        let (s, v) = call(if i % 2 == 0 { ka.clone() } else { kb.clone() }).await;
        if s == 429 {
            refused = Some(v);
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let refused = refused.expect("the department budget must run out");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("department/project budget"),
        "{refused}"
    );
    // Carol is outside the department: her own quota, not the budget, limits her.
    let (s, _) = call(kc.clone()).await;
    assert_eq!(s, 200);
    let mut carol_refused = false;
    for _ in 0..60 {
        let (s, v) = call(kc.clone()).await;
        if s == 429 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("user quota"),
                "{v}"
            );
            carol_refused = true;
            break;
        }
    }
    assert!(carol_refused);
    let groups = gw.admin_get("/admin/tenants/acme/groups").await;
    let spent: rust_decimal::Decimal = groups["data"][0]["spent"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        spent > rust_decimal::Decimal::ZERO && spent <= "0.006".parse().unwrap(),
        "{groups}"
    );
}

#[tokio::test]
async fn rate_limits_per_key_user_and_tenant() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let req = json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let call = |key: String| {
        let (c, url, req) = (
            gw.client.clone(),
            gw.url("/v1/chat/completions"),
            req.clone(),
        );
        async move {
            let r = c
                .post(url)
                .bearer_auth(key)
                .json(&req)
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let s = r.status().as_u16();
            (s, retry, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Key RPM.
    let key = gw
        .create_key(
            json!({"tenant": "acme", "name": "rpm", "default_channel": "main", "rpm_limit": 3}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(call(key.clone()).await.0, 200);
    }
    let (s, retry, v) = call(key.clone()).await;
    assert_eq!(s, 429);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("API key"),
        "{v}"
    );
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        m.stats().chat_requests,
        3,
        "limited calls never reach the vendor"
    );
    // Other keys of the tenant are not limited by that key's RPM.
    assert_eq!(call(gw.key.clone()).await.0, 200);

    // User RPM covers all of a user's keys.
    let (uid, _) = user(&gw, "acme", "eve@acme.test", "member", json!({})).await;
    let k1 = gw
        .create_key(
            json!({"tenant": "acme", "name": "e1", "default_channel": "main", "user_id": uid}),
        )
        .await;
    let k2 = gw
        .create_key(
            json!({"tenant": "acme", "name": "e2", "default_channel": "main", "user_id": uid}),
        )
        .await;
    let r = gw
        .client
        .put(gw.admin_url(&format!("/admin/users/{uid}/limits")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"rpm_limit": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(call(k1.clone()).await.0, 200);
    assert_eq!(call(k2.clone()).await.0, 200);
    let (s, _, v) = call(k1.clone()).await;
    assert_eq!(s, 429, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("user"));

    // Tenant TPM counts the tokens calls really used.
    let r = gw
        .client
        .put(gw.admin_url("/admin/tenants/acme/limits"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"tpm_limit": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(gw.key.clone()).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 200);
    // A tenant admin cannot raise their own tenant's limits.
    let (_, admin) = user(&gw, "acme", "root@acme.test", "tenant_admin", json!({})).await;
    let r = gw
        .client
        .put(gw.admin_url("/admin/tenants/acme/limits"))
        .bearer_auth(admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn the_openapi_description_is_served_and_matches_the_routes() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let doc: serde_json::Value = gw
        .client
        .get(gw.admin_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // The served document passes the reference validator (installed by scripts/test).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doc.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every response and every schema is typed: no bare objects.
    let text = doc.to_string();
    assert!(!text.contains(r#""required":[]"#), "empty required lists");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25);
    // Every documented operation exists: the router never answers "Unknown admin path" for it.
    for (path, ops) in paths {
        let concrete = path.replace("{t}", "acme").replace("{id}", "1");
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = gw
                .client
                .request(m, gw.admin_url(&concrete))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(
                !text.contains("Unknown admin path") && !text.contains("Unknown path"),
                "{method} {path}: {status} {text}"
            );
        }
    }
}

/// Every admin route that takes a tenant, key, user or group id (in the path, the query or the
/// body), called with a tenant admin's token, answers another tenant's record exactly as it
/// answers one that does not exist: same status, same body.
#[tokio::test]
async fn another_tenants_records_answer_exactly_like_missing_ones() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let globex = gw
        .admin_post("/admin/tenants", json!({"name": "globex"}))
        .await["id"]
        .as_i64()
        .unwrap();
    gw.admin_post("/admin/tenants/globex/topups", json!({"amount_rmb": "10"}))
        .await;
    let group = gw
        .admin_post("/admin/tenants/globex/groups", json!({"name": "ops"}))
        .await["id"]
        .as_i64()
        .unwrap();
    let (globex_user, _) = user(&gw, "globex", "bob@globex.test", "member", json!({})).await;
    gw.create_key(json!({"tenant": "globex", "name": "g", "default_channel": "main"}))
        .await;
    let key = gw.admin_get("/admin/keys?tenant=globex").await["data"][0]["id"]
        .as_i64()
        .unwrap();
    let (own_user, acme_admin) =
        user(&gw, "acme", "boss@acme.test", "tenant_admin", json!({})).await;
    let a = Caller {
        gw: &gw,
        token: acme_admin,
    };
    const MISSING: i64 = 987_654;
    use reqwest::Method as M;
    // (method, path, body, expected status), with `{T}` a tenant (name or id), `{K}` a key,
    // `{U}` a user and `{G}` a group; 403 for operator-only routes, refused before any lookup.
    let routes: Vec<(M, &str, serde_json::Value, u16)> = vec![
        (M::GET, "/admin/tenants/{T}/balance", json!(null), 404),
        (M::GET, "/admin/tenants/{T}/ledger", json!(null), 404),
        (
            M::GET,
            "/admin/tenants/{T}/ledger?format=csv",
            json!(null),
            404,
        ),
        (M::GET, "/admin/tenants/{T}/users", json!(null), 404),
        (
            M::POST,
            "/admin/tenants/{T}/users",
            json!({"email": "x@y.test", "role": "member"}),
            404,
        ),
        (M::GET, "/admin/tenants/{T}/groups", json!(null), 404),
        (
            M::POST,
            "/admin/tenants/{T}/groups",
            json!({"name": "spies"}),
            404,
        ),
        (
            M::POST,
            "/admin/tenants/{T}/invites",
            json!({"email": "x@y.test", "role": "viewer"}),
            404,
        ),
        (
            M::POST,
            "/admin/tenants/{T}/redeem",
            json!({"code": "RC-nothing"}),
            404,
        ),
        (
            M::POST,
            "/admin/tenants/{T}/promo",
            json!({"code": "NOTHING"}),
            404,
        ),
        (M::GET, "/admin/tenants/{T}/analytics", json!(null), 404),
        (M::GET, "/admin/tenants/{T}/routing", json!(null), 404),
        (M::GET, "/admin/tenants/{T}/router", json!(null), 404),
        (M::PUT, "/admin/tenants/{T}/router", json!({}), 404),
        (M::DELETE, "/admin/tenants/{T}/router", json!(null), 404),
        (
            M::PUT,
            "/admin/tenants/{T}/quota-period",
            json!({"period": "day"}),
            404,
        ),
        (
            M::PUT,
            "/admin/tenants/{T}/limits",
            json!({"rpm_limit": 1}),
            403,
        ),
        (
            M::POST,
            "/admin/tenants/{T}/topups",
            json!({"amount_rmb": "1"}),
            403,
        ),
        (
            M::POST,
            "/admin/tenants/{T}/adjustments",
            json!({"credits": "1", "note": "x"}),
            403,
        ),
        (M::GET, "/admin/keys?tenant={T}", json!(null), 404),
        (
            M::POST,
            "/admin/keys",
            json!({"tenant": "{T}", "name": "x", "default_channel": "main"}),
            404,
        ),
        (M::GET, "/admin/usage?tenant={T}", json!(null), 404),
        (
            M::GET,
            "/admin/usage?tenant={T}&format=csv",
            json!(null),
            404,
        ),
        (M::POST, "/admin/keys/{K}/revoke", json!({}), 404),
        (M::DELETE, "/admin/keys/{K}", json!(null), 404),
        (
            M::PUT,
            "/admin/keys/{K}/limits",
            json!({"rpm_limit": 1}),
            404,
        ),
        (
            M::PATCH,
            "/admin/keys/{K}/limits",
            json!({"rpm_limit": 1}),
            404,
        ),
        (
            M::PUT,
            "/admin/users/{U}/limits",
            json!({"rpm_limit": 1}),
            404,
        ),
        (
            M::PATCH,
            "/admin/users/{U}/limits",
            json!({"rpm_limit": 1}),
            404,
        ),
        (M::PATCH, "/admin/users/{U}", json!({"role": "viewer"}), 404),
        (M::POST, "/admin/users/{U}/tokens", json!({}), 404),
        // Ids of the other tenant's records inside the body of a call on one's own tenant.
        (
            M::POST,
            "/admin/keys",
            json!({"tenant": "acme", "name": "x", "default_channel": "main", "user_id": "{U}"}),
            404,
        ),
        (
            M::POST,
            "/admin/tenants/acme/users",
            json!({"email": "g@acme.test", "role": "member", "group_id": "{G}"}),
            404,
        ),
        (
            M::PATCH,
            "/admin/users/{OWN}",
            json!({"group_id": "{G}"}),
            404,
        ),
        (
            M::POST,
            "/admin/tenants/acme/invites",
            json!({"email": "g@acme.test", "role": "member", "group_id": "{G}"}),
            404,
        ),
    ];
    let fill = |text: &str, t: &str, k: i64, u: i64, g: i64| {
        text.replace("{T}", t)
            .replace("{K}", &k.to_string())
            .replace("{U}", &u.to_string())
            .replace("{G}", &g.to_string())
            .replace("{OWN}", &own_user.to_string())
    };
    // Ids in bodies are numbers: `"{U}"` becomes `123`, not `"123"`.
    let body =
        |v: &serde_json::Value, t: &str, k: i64, u: i64, g: i64| -> Option<serde_json::Value> {
            if v.is_null() {
                return None;
            }
            let text = fill(&v.to_string(), t, k, u, g);
            let text = [k, u, g, own_user].iter().fold(text, |s, id| {
                s.replace(&format!("\"{id}\""), &id.to_string())
            });
            Some(serde_json::from_str(&text).unwrap())
        };
    let mut checked = 0;
    for (method, path, b, want) in &routes {
        let path: &str = path;
        for (other_t, missing_t) in [
            ("globex".to_string(), "nosuch".to_string()),
            (globex.to_string(), MISSING.to_string()),
        ] {
            let other = a
                .send(
                    method.clone(),
                    &fill(path, &other_t, key, globex_user, group),
                    body(b, &other_t, key, globex_user, group),
                )
                .await;
            let missing = a
                .send(
                    method.clone(),
                    &fill(path, &missing_t, MISSING, MISSING, MISSING),
                    body(b, &missing_t, MISSING, MISSING, MISSING),
                )
                .await;
            assert_eq!(
                other.0, *want,
                "{method} {path} (another tenant's): {}",
                other.1
            );
            assert_eq!(
                other, missing,
                "{method} {path}: another tenant's vs a missing one"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * 2);
    // Nothing of globex changed.
    let keys = gw.admin_get("/admin/keys?tenant=globex").await;
    assert!(keys["data"][0]["revoked_at"].is_null(), "{keys}");
    assert_eq!(
        json!([keys["data"][0]["rpm_limit"], keys["data"][0]["tpm_limit"]]),
        json!([null, null])
    );
    let users = gw.admin_get("/admin/tenants/globex/users").await;
    assert_eq!(users["data"][0]["role"], "member", "{users}");
}

/// Changing limits changes only the fields sent (absent: kept; `null`: unlimited), with PUT and
/// PATCH alike, for keys, users and tenants.
#[tokio::test]
async fn limit_updates_change_only_the_fields_sent() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let op = Caller {
        gw: &gw,
        token: ADMIN_TOKEN.to_string(),
    };
    gw.create_key(json!({"tenant": "acme", "name": "lim", "default_channel": "main", "rpm_limit": 10, "tpm_limit": 1000}))
        .await;
    let key = gw.admin_get("/admin/keys?tenant=acme").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "lim")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (uid, _) = user(&gw, "acme", "lim@acme.test", "member", json!({})).await;
    let key_limits = || async {
        gw.admin_get("/admin/keys?tenant=acme").await["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == key)
            .map(|k| json!({"rpm": k["rpm_limit"], "tpm": k["tpm_limit"]}))
            .unwrap()
    };
    use reqwest::Method as M;
    let key_path = format!("/admin/keys/{key}/limits");
    let user_path = format!("/admin/users/{uid}/limits");
    // (method, path, body, limits answered): each step starts where the last one left off.
    let steps: Vec<(M, &str, serde_json::Value, serde_json::Value)> = vec![
        (
            M::PUT,
            key_path.as_str(),
            json!({"rpm_limit": 20}),
            json!([20, 1000]),
        ),
        (
            M::PATCH,
            key_path.as_str(),
            json!({"tpm_limit": 500}),
            json!([20, 500]),
        ),
        (M::PATCH, key_path.as_str(), json!({}), json!([20, 500])),
        (
            M::PUT,
            key_path.as_str(),
            json!({"rpm_limit": null}),
            json!([null, 500]),
        ),
        (
            M::PATCH,
            key_path.as_str(),
            json!({"rpm_limit": 7, "tpm_limit": null}),
            json!([7, null]),
        ),
        (
            M::PUT,
            user_path.as_str(),
            json!({"rpm_limit": 5, "tpm_limit": 50}),
            json!([5, 50]),
        ),
        (
            M::PATCH,
            user_path.as_str(),
            json!({"tpm_limit": 60}),
            json!([5, 60]),
        ),
        (
            M::PUT,
            user_path.as_str(),
            json!({"rpm_limit": null}),
            json!([null, 60]),
        ),
        (
            M::PUT,
            "/admin/tenants/acme/limits",
            json!({"rpm_limit": 100, "tpm_limit": 9000}),
            json!([100, 9000]),
        ),
        (
            M::PUT,
            "/admin/tenants/acme/limits",
            json!({"rpm_limit": 200}),
            json!([200, 9000]),
        ),
        (
            M::PATCH,
            "/admin/tenants/acme/limits",
            json!({"tpm_limit": null}),
            json!([200, null]),
        ),
    ];
    for (method, path, body, want) in steps {
        let (s, v) = op.send(method.clone(), path, Some(body.clone())).await;
        assert_eq!(s, 200, "{method} {path} {body}: {v}");
        assert_eq!(
            json!([v["rpm_limit"], v["tpm_limit"]]),
            want,
            "{method} {path} {body}: {v}"
        );
    }
    // What the gateway enforces is what was answered.
    assert_eq!(key_limits().await, json!({"rpm": 7, "tpm": null}));
    // The member's limits are part of the member (the console shows them in its form).
    let (s, u) = op.send(M::GET, &format!("/admin/users/{uid}"), None).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(
        json!([u["rpm_limit"], u["tpm_limit"]]),
        json!([null, 60]),
        "{u}"
    );
    let t = gw.admin_get("/admin/tenants/acme").await;
    assert_eq!(
        json!([t["rpm_limit"], t["tpm_limit"]]),
        json!([200, null]),
        "{t}"
    );
    // A wrong type is refused and changes nothing.
    let (s, _) = op
        .send(
            M::PATCH,
            key_path.as_str(),
            Some(json!({"rpm_limit": "many"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(key_limits().await, json!({"rpm": 7, "tpm": null}));
}
