#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Security governance (issue 18): the audit trail of every admin change (who, from where,
//! what, before and after, secrets never stored), chained by hash and verified by `tollgate
//! audit verify`, seen by a tenant admin for their tenant only and by the operator for all.

mod common;

use common::admin_call as call;
use common::*;
use serde_json::{json, Value};

/// A new key of tenant acme on channel main: its secret and id.
async fn new_key(gw: &Gateway, name: &str) -> (String, i64) {
    let (s, created) = call(
        gw,
        "POST",
        "/admin/keys",
        ADMIN_TOKEN,
        Some(json!({"tenant": "acme", "name": name, "default_channel": "main"})),
    )
    .await;
    assert_eq!(s, 201);
    (
        created["key"].as_str().unwrap().to_string(),
        created["record"]["id"].as_i64().unwrap(),
    )
}

fn verify(gw: &Gateway) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["audit", "verify", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_in_a_hash_chained_trail_without_secrets() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    gw.admin_post("/admin/tenants", json!({"name": "globex"}))
        .await;
    // A tenant admin of acme with a password, and a member.
    let v = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "ada@acme.test", "name": "Ada", "role": "tenant_admin"}),
        )
        .await;
    let (ada_id, ada) = (
        v["user"]["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_string(),
    );
    let v = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "mo@acme.test", "name": "Mo", "role": "member"}),
        )
        .await;
    let mo = v["token"].as_str().unwrap().to_string();
    let (s, _) = call(
        &gw,
        "PUT",
        "/admin/me/password",
        &ada,
        Some(json!({"current_password": "", "new_password": "correct horse battery"})),
    )
    .await;
    assert!(s == 200 || s == 204, "{s}");

    // A key (its secret is in the answer, never in the trail), renamed by Ada.
    let (s, created) = call(
        &gw,
        "POST",
        "/admin/keys",
        &ada,
        Some(json!({"tenant": "acme", "name": "ci", "default_channel": "main"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let secret = created["key"].as_str().unwrap().to_string();
    let kid = created["record"]["id"].as_i64().unwrap();
    let (s, _) = call(
        &gw,
        "PATCH",
        &format!("/admin/keys/{kid}"),
        &ada,
        Some(json!({"name": "ci-renamed"})),
    )
    .await;
    assert_eq!(s, 200);
    // A failed sign-in and a good one (through the sign-in route anyone may call).
    let r = gw
        .client
        .post(gw.admin_url("/admin/sessions"))
        .json(&json!({"tenant": "acme", "email": "ada@acme.test", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = gw
        .client
        .post(gw.admin_url("/admin/sessions"))
        .json(&json!({"tenant": "acme", "email": "ada@acme.test", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The operator signing in to the console is the operator in the trail.
    let r = gw
        .client
        .post(gw.admin_url("/admin/sessions"))
        .json(&json!({"operator_token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Something in another tenant, by the operator.
    gw.admin_post("/admin/tenants/globex/topups", json!({"amount_rmb": "10"}))
        .await;

    // The operator sees everything; the key's secret and the passwords appear nowhere.
    let (s, all) = call(&gw, "GET", "/admin/audit?limit=1000", ADMIN_TOKEN, None).await;
    assert_eq!(s, 200);
    let text = all.to_string();
    assert!(!text.contains(&secret), "the key's secret is in the trail");
    assert!(
        !text.contains("correct horse battery"),
        "a password is in the trail"
    );
    assert!(
        !text.contains(ADMIN_TOKEN),
        "the operator token is in the trail"
    );
    let entries = all["data"].as_array().unwrap();
    let find = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    let create: Vec<&Value> = find("POST /admin/keys")
        .into_iter()
        .filter(|e| e["actor"].as_str().unwrap().contains("ada@"))
        .collect();
    assert_eq!(create.len(), 1, "{text}");
    let create = create[0];
    assert_eq!(create["actor"], format!("user:{ada_id} ada@acme.test"));
    assert_eq!(create["status"], 201);
    assert_eq!(create["entry"]["ip"], "127.0.0.1");
    assert_eq!(create["entry"]["user_agent"], "governance-test/1.0");
    assert_eq!(create["entry"]["after"]["key"], "[redacted]");
    assert_eq!(create["entry"]["request"]["name"], "ci");
    assert!(create["entry"]["request_id"].as_str().unwrap().len() > 8);
    assert!(create["entry"]["token"].as_str().unwrap().len() == 12);
    let rename = find("PATCH /admin/keys/{id}");
    assert_eq!(rename.len(), 1);
    assert_eq!(rename[0]["entry"]["before"]["name"], "ci");
    assert_eq!(rename[0]["entry"]["after"]["name"], "ci-renamed");
    let sign_ins = find("POST /admin/sessions");
    assert_eq!(sign_ins.len(), 3, "{text}");
    assert_eq!(sign_ins[0]["actor"], "operator", "the newest: {text}");
    assert_eq!(sign_ins[2]["status"], 401, "the failed one (oldest)");
    assert_eq!(sign_ins[2]["actor"], "anonymous ada@acme.test");
    assert_eq!(sign_ins[1]["status"], 201);
    assert_eq!(sign_ins[1]["actor"], format!("user:{ada_id} ada@acme.test"));
    assert_eq!(sign_ins[1]["entry"]["request"]["password"], "[redacted]");

    // Ada sees acme's trail and nothing of globex's; a member may not read it.
    let (s, mine) = call(
        &gw,
        "GET",
        "/admin/tenants/acme/audit?limit=1000",
        &ada,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let mine = mine["data"].as_array().unwrap();
    assert!(
        mine.iter().all(|e| e["tenant_id"] == gw.tenant_id),
        "{mine:?}"
    );
    assert!(mine.iter().any(|e| e["action"] == "POST /admin/keys"));
    assert!(!mine
        .iter()
        .any(|e| e["entry"]["path"] == "/admin/tenants/globex/topups"));
    let (s, _) = call(&gw, "GET", "/admin/tenants/globex/audit", &ada, None).await;
    assert_eq!(s, 404);
    let (s, _) = call(&gw, "GET", "/admin/tenants/acme/audit", &mo, None).await;
    assert_eq!(s, 403);
    // Filters and CSV.
    let (_, only) = call(
        &gw,
        "GET",
        "/admin/tenants/acme/audit?action=keys",
        &ada,
        None,
    )
    .await;
    assert!(only["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"].as_str().unwrap().contains("keys")));
    let csv = gw
        .client
        .get(gw.admin_url("/admin/audit?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("seq,at,tenant_id,actor,action,status"));
    assert!(!csv.contains(&secret));
    // Each entry is in the structured log for a SIEM.
    let head = entries[0]["hash"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.log().contains(&head) {
        assert!(
            std::time::Instant::now() < deadline,
            "the audit entry is not in the log"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The chain verifies; an edited row and a deleted row are found.
    let (code, out) = verify(&gw);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
    let db = gw.db.clone();
    // Someone with write access to the database file edits it behind the gateway's back.
    let sql = |q: &str| {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(q)
            .unwrap();
    };
    sql("UPDATE audit_log SET actor = 'nobody' WHERE seq = 3");
    let (code, out) = verify(&gw);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("entry 3"), "{out}");
    sql("UPDATE audit_log SET actor = (SELECT json_extract(entry, '$.actor') FROM audit_log a WHERE a.seq = 3) WHERE seq = 3");
    assert_eq!(verify(&gw).0, 0);
    sql("DELETE FROM audit_log WHERE seq = 4");
    let (code, out) = verify(&gw);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("entry 5") && out.contains("missing"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tenants_are_limited_to_their_networks() {
    let m = mock().await;
    // The test client connects from 127.0.0.1, here a trusted proxy: the address it forwards
    // counts.
    let gw = Gateway::start_with_server_extra(
        &[Up::mock("a", &m)],
        "",
        "",
        "trusted_proxies = [\"127.0.0.1\"]",
    )
    .await;
    let (key, kid) = new_key(&gw, "office").await;
    let chat = |from: Option<&'static str>| {
        let mut r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(f) = from {
            r = r.header("x-forwarded-for", f);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(chat(None).await.0, 200, "no list: anywhere");

    // Bad lists are refused; a good one is normalised.
    let (s, v) = call(
        &gw,
        "PUT",
        &format!("/admin/keys/{kid}/network"),
        ADMIN_TOKEN,
        Some(json!({"allowed_cidrs": ["10.0.0.0/33"]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        &gw,
        "PUT",
        &format!("/admin/keys/{kid}/network"),
        ADMIN_TOKEN,
        Some(json!({"allowed_cidrs": ["10.1.2.3/8", "2001:db8::/32"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["allowed_cidrs"], json!(["10.0.0.0/8", "2001:db8::/32"]));

    // From 127.0.0.1 itself (nothing forwarded): refused, in OpenAI's error shape.
    let (s, v) = chat(None).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{v}"
    );
    // In Anthropic's shape on the Messages API.
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    // Forwarded by the trusted proxy from inside the network: served; a spoofed left-most
    // entry does not help an outside client.
    assert_eq!(chat(Some("10.1.2.3")).await.0, 200);
    assert_eq!(chat(Some("2001:db8::7")).await.0, 200);
    assert_eq!(chat(Some("10.1.2.3, 203.0.113.5")).await.0, 403);

    // The tenant's list applies to every key too.
    let (s, _) = call(
        &gw,
        "PUT",
        "/admin/tenants/acme/network",
        ADMIN_TOKEN,
        Some(json!({"allowed_cidrs": ["10.9.0.0/16"]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = chat(Some("10.1.2.3")).await;
    assert_eq!(s, 403);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tenant"),
        "{v}"
    );
    assert_eq!(chat(Some("10.9.8.7")).await.0, 200);
    // Cleared: anywhere again.
    for path in [
        format!("/admin/keys/{kid}/network"),
        "/admin/tenants/acme/network".to_string(),
    ] {
        let (s, _) = call(
            &gw,
            "PUT",
            &path,
            ADMIN_TOKEN,
            Some(json!({"allowed_cidrs": []})),
        )
        .await;
        assert_eq!(s, 200);
    }
    assert_eq!(chat(None).await.0, 200);

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tollgate_network_refusals_total{scope=\"key\"}"),
        3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_network_refusals_total{scope=\"tenant\"}"
        ),
        1.0
    );
    // The changes are audited, with the list before and after.
    let (_, trail) = call(&gw, "GET", "/admin/audit?action=network", ADMIN_TOKEN, None).await;
    let changes = trail["data"].as_array().unwrap();
    assert_eq!(changes.len(), 5, "{trail}");
    let first_ok = changes.iter().rev().find(|e| e["status"] == 200).unwrap();
    assert_eq!(first_ok["entry"]["before"]["allowed_cidrs"], json!([]));
    assert_eq!(
        first_ok["entry"]["after"]["allowed_cidrs"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_block_redact_or_log_on_every_protocol() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    // Bad policies are refused.
    for bad in [
        json!({"detectors": {"ssn": "block"}}),
        json!({"detectors": {"email": "shout"}}),
        json!({"keywords": [{"name": "", "words": ["x"], "action": "block"}]}),
    ] {
        let (s, v) = call(
            &gw,
            "PUT",
            "/admin/tenants/acme/guardrails",
            ADMIN_TOKEN,
            Some(bad.clone()),
        )
        .await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
    }
    let (s, v) = call(
        &gw,
        "PUT",
        "/admin/tenants/acme/guardrails",
        ADMIN_TOKEN,
        Some(json!({
            "detectors": {"secrets": "block", "email": "redact", "cn_id": "redact", "phone": "log"},
            "keywords": [{"name": "codenames", "words": ["Project Falcon"], "action": "block"}],
        })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let openai = |content: &str| {
        let req = gw.chat(json!({"model": "gpt-4o-mini", "max_tokens": 200, "messages": [{"role": "user", "content": content}]}));
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Blocked: 400 naming the detector, never the text; nothing reaches the vendor.
    let before = m.stats().chat_requests;
    let (s, v) = openai("here is my key sk-proj-abcdefghijklmnopqrstuvwxyz123").await;
    assert_eq!(s, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`secrets`") && !message.contains("sk-proj"),
        "{v}"
    );
    let (s, v) = openai("what is the status of project falcon?").await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("keywords:codenames"));
    assert_eq!(
        m.stats().chat_requests,
        before,
        "a blocked request reached the vendor"
    );
    // Redacted: the vendor gets (and its echo shows) the placeholder, never the address.
    // (The mock echoes the first 40 characters of the prompt.)
    for (text, secret, label) in [
        (
            "mail bob@corp.example",
            "bob@corp.example",
            "[REDACTED:email]",
        ),
        (
            "id 11010519491231002X",
            "11010519491231002X",
            "[REDACTED:cn_id]",
        ),
    ] {
        let (s, v) = openai(text).await;
        assert_eq!(s, 200, "{v}");
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(reply.contains(label) && !reply.contains(secret), "{reply}");
    }
    // The same on the Anthropic Messages API (translated to the OpenAI upstream).
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 60, "messages": [{"role": "user", "content": "mail carol@corp.example"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let reply = v["content"][0]["text"].as_str().unwrap();
    assert!(
        reply.contains("[REDACTED:email]") && !reply.contains("carol@"),
        "{reply}"
    );
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 60, "messages": [{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    // Logged only: served unchanged, counted.
    let (s, v) = openai("call me on 13812345678").await;
    assert_eq!(s, 200);
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("13812345678"));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_guardrail_hits_total{action=\"block\",detector=\"secrets\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_guardrail_hits_total{action=\"log\",detector=\"phone\"}"
        ),
        1.0
    );
    assert!(
        metric_value(
            &metrics,
            "tollgate_guardrail_hits_total{action=\"redact\",detector=\"email\"}"
        ) >= 2.0
    );
    // The usage records carry what was found (detector and count), never the text.
    let mut found: Vec<(u64, String)> = Vec::new();
    for _ in 0..100 {
        found = gw
            .usage_events(1)
            .await
            .iter()
            .filter_map(|e| Some((e["status"].as_u64()?, e["guardrails"].as_str()?.to_string())))
            .collect();
        if found.iter().any(|(_, g)| g == "phone=1") && found.iter().any(|(s, _)| *s == 400) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found.contains(&(200, "phone=1".to_string())), "{found:?}");
    assert!(
        found.contains(&(400, "secrets=1".to_string())),
        "a blocked call's record: {found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(s, g)| *s == 200 && g.contains("email=1")),
        "{found:?}"
    );
    let csv = gw
        .client
        .get(gw.admin_url("/admin/usage?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.lines().next().unwrap().ends_with(",guardrails"),
        "{csv}"
    );
    assert!(csv.contains("phone=1") && !csv.contains("13812345678"));
    // The matched text is nowhere in the log.
    let log = gw.log();
    assert!(
        !log.contains("bob@corp.example")
            && !log.contains("sk-proj-abcdefghij")
            && !log.contains("11010519491231002X")
    );
    // Cleared: the text passes.
    let (s, _) = call(
        &gw,
        "PUT",
        "/admin/tenants/acme/guardrails",
        ADMIN_TOKEN,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(openai("about project falcon").await.0, 200);
}

/// Raw HTTP/1.1 on one connection: `preamble` (a PROXY header) and the request in one write,
/// then a second request on the same connection; the status lines answered, in order.
async fn proxied(gw: &Gateway, preamble: &[u8], key: &str, requests: usize) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut first = preamble.to_vec();
    first.extend_from_slice(request.as_bytes());
    s.write_all(&first).await.unwrap();
    let mut statuses = Vec::new();
    let mut seen = Vec::new();
    for i in 0..requests {
        if i > 0 {
            s.write_all(request.as_bytes()).await.unwrap();
        }
        // Read one whole answer (Content-Length bodies from the gateway).
        loop {
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len: usize = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if seen.len() >= head_end + 4 + len {
                    statuses.push(format!(
                        "{} {}",
                        text.lines().next().unwrap_or(""),
                        &text[head_end + 4..head_end + 4 + len]
                    ));
                    seen.drain(..head_end + 4 + len);
                    break;
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                return statuses;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    }
    statuses
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4 or IPv6).
fn proxy_v2(src: std::net::SocketAddr, local: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    let mut addrs = Vec::new();
    match src {
        std::net::SocketAddr::V4(a) => {
            h.push(0x11);
            addrs.extend_from_slice(&a.ip().octets());
            addrs.extend_from_slice(&[127, 0, 0, 1]);
        }
        std::net::SocketAddr::V6(a) => {
            h.push(0x21);
            addrs.extend_from_slice(&a.ip().octets());
            addrs.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&8080u16.to_be_bytes());
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_gives_allow_lists_the_client_behind_a_load_balancer() {
    let m = mock().await;
    let gw = Gateway::start_with_server_extra(
        &[Up::mock("a", &m)],
        "",
        "",
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
    )
    .await;
    let (key, kid) = new_key(&gw, "behind-lb").await;
    let (s, _) = call(
        &gw,
        "PUT",
        &format!("/admin/keys/{kid}/network"),
        ADMIN_TOKEN,
        Some(json!({"allowed_cidrs": ["10.1.2.0/24", "2001:db8::/32"]})),
    )
    .await;
    assert_eq!(s, 200);

    // v1 from an allowed client: served, and the connection stays open for a second request
    // (the header is read once; the bytes after it in the same packet are the request).
    let ok = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        proxied(&gw, b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8080\r\n", &key, 2),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer; log:\n{}", gw.log()));
    assert_eq!(ok.len(), 2, "{ok:?}");
    assert!(ok.iter().all(|s| s.starts_with("HTTP/1.1 200")), "{ok:?}");
    // v1 from a client outside the list: 403 naming that client.
    let no = proxied(&gw, b"PROXY TCP4 10.9.9.9 127.0.0.1 5555 8080\r\n", &key, 1).await;
    assert!(
        no[0].starts_with("HTTP/1.1 403") && no[0].contains("10.9.9.9"),
        "{no:?}"
    );
    // v2, IPv6 inside and outside.
    let v6_ok = proxied(
        &gw,
        &proxy_v2("[2001:db8::7]:4000".parse().unwrap(), false),
        &key,
        1,
    )
    .await;
    assert!(v6_ok[0].starts_with("HTTP/1.1 200"), "{v6_ok:?}");
    let v4_no = proxied(
        &gw,
        &proxy_v2("192.0.2.1:4000".parse().unwrap(), false),
        &key,
        1,
    )
    .await;
    assert!(
        v4_no[0].starts_with("HTTP/1.1 403") && v4_no[0].contains("192.0.2.1"),
        "{v4_no:?}"
    );
    // v2 LOCAL (the balancer's own health check): the socket's address, 127.0.0.1, not listed.
    let local = proxied(
        &gw,
        &proxy_v2("10.1.2.3:4000".parse().unwrap(), true),
        &key,
        1,
    )
    .await;
    assert!(
        local[0].starts_with("HTTP/1.1 403") && local[0].contains("127.0.0.1"),
        "{local:?}"
    );
    // No header, or a broken one: the connection is closed without an answer, and counted.
    let bare = proxied(&gw, b"", &key, 1).await;
    assert!(bare.is_empty(), "{bare:?}");
    let broken = proxied(&gw, b"PROXY TCP4 not-an-address\r\n", &key, 1).await;
    assert!(broken.is_empty(), "{broken:?}");
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "tollgate_proxy_protocol_refusals_total") >= 2.0);
    let refused = metric_value(&metrics, "tollgate_network_refusals_total{scope=\"key\"}");
    assert_eq!(refused, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_from_an_untrusted_peer_is_refused() {
    let m = mock().await;
    let gw = Gateway::start_with_server_extra(
        &[Up::mock("a", &m)],
        "",
        "",
        "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]",
    )
    .await;
    // The test connects from 127.0.0.1, not a trusted proxy: whatever it claims, it is closed.
    let key = gw.key.clone();
    let r = proxied(&gw, b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8080\r\n", &key, 1).await;
    assert!(r.is_empty(), "{r:?}");
    // (The harness's readiness probe, a bare connect, is refused too.)
    let refused = metric_value(
        &gw.metrics().await,
        "tollgate_proxy_protocol_refusals_total",
    );
    assert!(refused >= 1.0, "{refused}");
}
