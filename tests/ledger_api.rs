#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The ledger through the admin API: idempotent money in, and listings of the statement and of
//! usage by time range and cursor, with CSV exports that stream.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Send as the operator; the status and the body exactly as it came.
async fn raw(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut rb = gw
        .client
        .request(method, gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(gw: &Gateway, path: &str, body: Value) -> (u16, String) {
    raw(gw, reqwest::Method::POST, path, Some(body)).await
}

async fn credited(gw: &Gateway, tenant: &str) -> i64 {
    gw.balance(tenant).await["credited"].nano()
}

#[tokio::test]
async fn idempotency_keys_are_per_tenant_and_a_replay_answers_the_first_result() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    gw.admin_post("/admin/tenants", json!({"name": "globex"}))
        .await;
    let acme0 = credited(&gw, "acme").await;

    // A top-up, then the same request again: the first answer, byte for byte, credited once.
    let topup = json!({"amount_rmb": "5", "note": "invoice 1", "idempotency_key": "inv-1"});
    let first = post(&gw, "/admin/tenants/acme/topups", topup.clone()).await;
    assert_eq!(first.0, 201, "{}", first.1);
    let acme1 = credited(&gw, "acme").await;
    assert!(acme1 > acme0);
    let again = post(&gw, "/admin/tenants/acme/topups", topup.clone()).await;
    assert_eq!(again, first);
    assert_eq!(credited(&gw, "acme").await, acme1);

    // The same key on another tenant is that tenant's own key: credited in full.
    let g = post(
        &gw,
        "/admin/tenants/globex/topups",
        json!({"amount_rmb": "7", "idempotency_key": "inv-1"}),
    )
    .await;
    assert_eq!(g.0, 201, "{}", g.1);
    assert_eq!(
        credited(&gw, "globex").await,
        acme1 - acme0 + (acme1 - acme0) * 2 / 5
    );
    assert_eq!(credited(&gw, "acme").await, acme1);

    // The key with other parameters is refused, and nothing moves.
    let other = post(
        &gw,
        "/admin/tenants/acme/topups",
        json!({"amount_rmb": "50", "note": "invoice 1", "idempotency_key": "inv-1"}),
    )
    .await;
    assert_eq!(other.0, 400, "{}", other.1);
    let v: Value = serde_json::from_str(&other.1).unwrap();
    assert_eq!(v["error"]["param"], "idempotency_key");
    assert_eq!(credited(&gw, "acme").await, acme1);

    // Twenty concurrent sends of one new key: one credit, twenty identical answers.
    let topup = json!({"amount_rmb": "3", "idempotency_key": "inv-2"});
    let answers = futures_util::future::join_all(
        (0..20).map(|_| post(&gw, "/admin/tenants/acme/topups", topup.clone())),
    )
    .await;
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 201);
    let acme2 = credited(&gw, "acme").await;
    assert_eq!(acme2 - acme1, (acme1 - acme0) * 3 / 5);

    // Adjustments: the same rules.
    let adj = json!({"credits": "-1.5", "note": "refund", "idempotency_key": "adj-1"});
    let answers = futures_util::future::join_all(
        (0..10).map(|_| post(&gw, "/admin/tenants/acme/adjustments", adj.clone())),
    )
    .await;
    assert_eq!(answers[0].0, 201, "{}", answers[0].1);
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(credited(&gw, "acme").await, acme2 - 1_500_000_000);
    let g = post(
        &gw,
        "/admin/tenants/globex/adjustments",
        json!({"credits": "2", "note": "gift", "idempotency_key": "adj-1"}),
    )
    .await;
    assert_eq!(g.0, 201, "{}", g.1);

    // The journal holds one entry per key and tenant.
    let ledger = gw.admin_get("/admin/tenants/acme/ledger").await;
    let ids: Vec<&str> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["entry"]["id"].as_str().unwrap())
        .collect();
    for key in ["inv-1", "inv-2", "adj-1"] {
        assert_eq!(
            ids.iter()
                .filter(|id| id.ends_with(&format!(":{key}")))
                .count(),
            1,
            "{key}: {ids:?}"
        );
    }
}

/// Make `n` calls alternating two models and two keys (the second owned by a user); returns
/// that user's id.
async fn traffic(gw: &Gateway, n: usize) -> i64 {
    let v = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "dev@acme.test", "role": "member"}),
        )
        .await;
    let uid = v["user"]["id"].as_i64().unwrap();
    let dev_key = gw
        .create_key(
            json!({"tenant": "acme", "name": "dev", "default_channel": "main", "user_id": uid}),
        )
        .await;
    for i in 0..n {
        let model = if i % 2 == 0 { "gpt-4o-mini" } else { "gpt-4o" };
        let key = if i % 3 == 0 { &dev_key } else { &gw.key };
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": format!("call {i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    uid
}

/// Every row of a listing, following `next_cursor` from `path` (which has a `?`).
async fn all_pages(gw: &Gateway, path: &str) -> (Vec<Value>, usize) {
    let (mut rows, mut pages) = (Vec::new(), 0);
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_string(),
        };
        let v = gw.admin_get(&url).await;
        pages += 1;
        rows.extend(v["data"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (rows, pages),
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn csv(gw: &Gateway, path: &str) -> (Option<String>, Vec<Vec<String>>) {
    let r = gw
        .client
        .get(gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let te = r
        .headers()
        .get("transfer-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    let rows = text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (te, rows)
}

#[tokio::test]
async fn listings_page_by_time_range_and_cursor_and_exports_carry_the_call() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let uid = traffic(&gw, 24).await;
    let events = gw.usage_events(24).await;
    assert_eq!(events.len(), 24);

    // The statement read in pages of 5 is the statement read at once, running balance included.
    let whole = gw.admin_get("/admin/tenants/acme/ledger").await["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(whole.len(), 1 + 24, "the top-up and one charge per call");
    let (paged, pages) = all_pages(&gw, "/admin/tenants/acme/ledger?limit=5").await;
    assert_eq!(paged, whole);
    assert_eq!(pages, 5 + 1);
    // A time range: the rows from the 10th on (RFC 3339 to the millisecond), opening at the
    // balance the whole statement had there.
    let ms = |r: &Value| {
        chrono::DateTime::parse_from_rfc3339(r["entry"]["created_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let t10 = ms(&whole[10]);
    let from_10: Vec<&Value> = whole.iter().filter(|r| ms(r) >= t10).collect();
    let (ranged, _) = all_pages(
        &gw,
        &format!("/admin/tenants/acme/ledger?limit=4&from={}", rfc3339(t10)),
    )
    .await;
    assert_eq!(ranged.iter().collect::<Vec<_>>(), from_10);
    let until = gw
        .admin_get(&format!(
            "/admin/tenants/acme/ledger?to={}",
            rfc3339(t10).replace('Z', "%2B00:00")
        ))
        .await;
    assert_eq!(
        until["data"].as_array().unwrap().len(),
        whole.len() - from_10.len()
    );
    let none = gw.admin_get("/admin/tenants/acme/ledger?from=0&to=1").await;
    assert_eq!(none["data"], json!([]));
    assert!(none["next_cursor"].is_null());

    // The CSV statement: chunked, every row, and each charge names its call.
    let (te, rows) = csv(&gw, "/admin/tenants/acme/ledger?format=csv").await;
    assert_eq!(te.as_deref(), Some("chunked"));
    let header = &rows[0];
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows.len(), 1 + whole.len());
    for (row, json_row) in rows[1..].iter().zip(&whole) {
        assert_eq!(row[col("id")], json_row["entry"]["id"].as_str().unwrap());
        if row[col("kind")] == "charge" {
            assert!(
                ["gpt-4o-mini", "gpt-4o"].contains(&row[col("model")].as_str()),
                "{row:?}"
            );
            assert_eq!(row[col("channel")], "main");
            assert!(!row[col("key_id")].is_empty());
            assert!(row[col("prompt_tokens")].parse::<u64>().unwrap() > 0);
            assert!(row[col("completion_tokens")].parse::<u64>().unwrap() > 0);
        }
    }
    let dev_rows = rows[1..]
        .iter()
        .filter(|r| r[col("user_id")] == uid.to_string())
        .count();
    assert_eq!(
        dev_rows, 8,
        "calls 0, 3, ..., 21 were made with the user's key"
    );
    let (_, ranged_csv) = csv(
        &gw,
        &format!(
            "/admin/tenants/acme/ledger?format=csv&from={}",
            rfc3339(t10)
        ),
    )
    .await;
    assert_eq!(ranged_csv.len(), 1 + from_10.len());
    let first = whole.len() - from_10.len();
    assert_eq!(
        ranged_csv[1][col("running_balance_credits")],
        rows[1 + first][col("running_balance_credits")]
    );

    // Usage: pages, filters by user and model, and the CSV.
    let (paged, _) = all_pages(&gw, "/admin/usage?tenant=acme&limit=7").await;
    assert_eq!(paged, events);
    let (mine, _) = all_pages(&gw, &format!("/admin/usage?tenant=acme&user={uid}&limit=3")).await;
    assert_eq!(mine.len(), 8);
    let (big, _) = all_pages(&gw, "/admin/usage?tenant=acme&model=gpt-4o&limit=5").await;
    assert_eq!(big.len(), 12);
    assert!(big.iter().all(|e| e["model_requested"] == "gpt-4o"));
    let at = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let ts = at(&events[5]);
    let (recent, _) = all_pages(
        &gw,
        &format!("/admin/usage?tenant=acme&from={}", rfc3339(ts)),
    )
    .await;
    assert_eq!(recent.len(), events.iter().filter(|e| at(e) >= ts).count());
    let (te, rows) = csv(&gw, "/admin/usage?tenant=acme&format=csv&model=gpt-4o-mini").await;
    assert_eq!(te.as_deref(), Some("chunked"));
    assert_eq!(rows.len(), 1 + 12);
    let c = rows[0].iter().position(|h| h == "model_requested").unwrap();
    assert!(rows[1..].iter().all(|r| r[c] == "gpt-4o-mini"));
    // A bad cursor or time is a 400 naming the parameter.
    for (q, param) in [
        ("cursor=zz", "cursor"),
        ("from=soon", "from"),
        ("limit=0", "limit"),
    ] {
        let (s, body) = raw(
            &gw,
            reqwest::Method::GET,
            &format!("/admin/usage?{q}"),
            None,
        )
        .await;
        assert_eq!(s, 400, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["param"], param, "{q}");
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// An export of a long history is written while it is read: the gateway's memory stays flat
/// while hundreds of thousands of rows go out.
#[tokio::test]
async fn a_large_export_streams_in_constant_memory() {
    const ROWS: i64 = 200_000;
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    // A month of calls, written straight into the store (as the recorder would have).
    {
        let mut db = rusqlite::Connection::open(&gw.db).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO usage_events (request_id, ts_ms, tenant_id, key_id, endpoint, channel,
                        model_requested, stream, status, prompt_tokens, cached_tokens, completion_tokens,
                        reasoning_tokens, usage_source, attempts, latency_ms, cost_nano)
                     VALUES (?1, ?2, ?3, 1, 'chat', 'main', 'gpt-4o-mini', 0, 200, 1200, 0, 300, 0,
                        'vendor', 1, 40, 2000000)",
                )
                .unwrap();
            let start = 1_735_689_600_000i64; // 2025-01-01
            for i in 0..ROWS {
                st.execute(rusqlite::params![
                    format!("req-{i:012}"),
                    start + i * 13_000,
                    gw.tenant_id
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let pid = gw.child.id();
    let before = rss(pid);
    for path in [
        "/admin/tenants/acme/ledger?format=csv&from=2025-01-01T00:00:00Z&to=2025-02-01T00:00:00Z",
        "/admin/usage?tenant=acme&format=csv&from=2025-01-01T00:00:00Z&to=2025-02-01T00:00:00Z",
    ] {
        let mut r = gw
            .client
            .get(gw.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (mut bytes, mut lines, mut peak) = (0usize, 0usize, before);
        let started = Instant::now();
        while let Some(chunk) = r.chunk().await.unwrap() {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
            peak = peak.max(rss(pid));
        }
        // One every 13 s: all of them fall in January 2025.
        assert_eq!(lines as i64, 1 + ROWS, "{path}");
        assert!(bytes > 15_000_000, "{path}: {bytes} bytes");
        let grew = peak.saturating_sub(before);
        assert!(
            grew < 24 * 1024 * 1024,
            "{path}: memory grew {} MB while {} MB went out in {:?}",
            grew / (1024 * 1024),
            bytes / (1024 * 1024),
            started.elapsed()
        );
    }
}
