//! Cluster-mode helpers shared by tests/cluster.rs and tests/failover.rs: a fleet of gateway
//! processes on one Redis (or Sentinel, or Redis Cluster), load in a loop, and the checks that
//! the books are exact afterwards.

use super::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub fn cluster_extra(redis: &Redis, node: &str) -> String {
    cluster_extra_url(&redis.url(), node)
}

pub fn cluster_extra_url(url: &str, node: &str) -> String {
    format!(
        "\n[cluster]\nredis_url = \"{url}\"\nnode_id = \"{node}\"\nflush_ms = 20\nlease_credits = \"0.2\"\nidle_return_seconds = 1\nop_timeout_ms = 1000\n"
    )
}

/// Three nodes on one Redis and one SQLite file; tenant `acme` created through node 1.
pub async fn fleet(m: &tollgate::mock::MockHandle, redis: &Redis) -> Vec<Gateway> {
    fleet_on(m, &redis.url()).await
}

pub async fn fleet_on(m: &tollgate::mock::MockHandle, url: &str) -> Vec<Gateway> {
    let ups = [Up::mock("a", m)];
    let n1 = Gateway::spawn(&ups, "", &cluster_extra_url(url, "n1"), "", None).await;
    let db = n1.db.clone();
    let n2 = Gateway::spawn(&ups, "", &cluster_extra_url(url, "n2"), "", Some(&db)).await;
    let n3 = Gateway::spawn(&ups, "", &cluster_extra_url(url, "n3"), "", Some(&db)).await;
    n1.admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    vec![n1, n2, n3]
}

/// After an outage: every node serves `key` again, and the books are exact: the `ok` calls
/// served plus this one on each of the three nodes, each charged once, Redis equal to the
/// ledger, the 50 RMB top-up credited.
pub async fn serve_again_with_exact_books(nodes: &[Gateway], key: &str, ok: usize) {
    // A node may still be failing closed for a moment after the outage (its next probe of the
    // bank has not run yet): each node gets 10 s to serve, and a refused call is a 503 that
    // charges nothing, so the books below stay exact.
    for gw in nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = gw
                .chat_with_key(
                    key,
                    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after"}]}),
                )
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503, "only a fail-closed refusal is expected");
            assert!(
                Instant::now() < deadline,
                "a node never served again after the outage"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let bank = quiesce(&nodes[0], "acme").await;
    let (charged, n) = sql_charges(&nodes[0], "acme").await;
    assert_eq!(n, ok + 3, "one charge per successful call");
    assert_eq!(bank["spent"].nano(), charged);
    assert_eq!(bank["credited"].nano(), 50_000_000_000);
}

pub fn check_bank(bank: &Value) {
    let (bal, leases, spent, credited) = (
        bank["unleased"].nano(),
        bank["leases"].nano(),
        bank["spent"].nano(),
        bank["credited"].nano(),
    );
    assert_eq!(
        bal + leases + spent,
        credited,
        "conservation in redis: {bank}"
    );
    assert!(spent <= credited, "overspent: {bank}");
}

/// Wait until every node gave its allowance back and Redis recorded exactly the charges of
/// the SQL ledger; returns the bank's totals.
/// A node's view of the tenant's bank, or `Null` while the node cannot read it (the balance
/// answers 503 then, e.g. just after a failover or a restart).
pub async fn bank_of(gw: &Gateway, tenant: &str) -> Value {
    let r = gw
        .client
        .get(gw.admin_url(&format!("/admin/tenants/{tenant}/balance")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => r.json::<Value>().await.unwrap()["bank"].clone(),
        503 => Value::Null,
        s => panic!(
            "balance of {tenant}: {s} {}",
            r.text().await.unwrap_or_default()
        ),
    }
}

pub async fn quiesce(gw: &Gateway, tenant: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bank = bank_of(gw, tenant).await;
        // Just after a failover the node may not read the bank yet: ask again.
        let read = bank["unleased"].is_string();
        if read {
            check_bank(&bank);
        }
        let (charged, _) = sql_charges(gw, tenant).await;
        if read && bank["leases"] == "0" && bank["spent"].nano() == charged {
            return bank;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: bank {bank}, SQL charges {charged}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keep `workers` clients calling round-robin over the nodes until `stop`; count statuses.
pub fn load(
    nodes: &[Gateway],
    key: &str,
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    let urls: Vec<String> = nodes
        .iter()
        .map(|g| g.url("/v1/chat/completions"))
        .collect();
    (0..workers)
        .map(|w| {
            let (urls, key, stop) = (urls.clone(), key.to_string(), stop.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                let mut seen = Vec::new();
                let mut i = w;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let req = json!({"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": format!("hello {i}")}]});
                    let status = match c.post(&urls[i % urls.len()]).bearer_auth(&key).json(&req).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            if s != 200 {
                                eprintln!("status {s}: {}", r.text().await.unwrap_or_default());
                            }
                            s
                        }
                        Err(_) => 0, // the node itself was killed
                    };
                    seen.push(status);
                    i += 1;
                }
                seen
            })
        })
        .collect()
}

pub async fn join(tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The fleet on `url` with a top-up of `rmb` on `acme` and a key every node knows.
pub async fn funded_fleet(
    m: &tollgate::mock::MockHandle,
    url: &str,
    rmb: &str,
) -> (Vec<Gateway>, String) {
    let nodes = fleet_on(m, url).await;
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": rmb}))
        .await;
    let key = nodes[0]
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    (nodes, key)
}

/// The fleet on `url` with 50 RMB on `acme` (`funded_fleet`), and six clients calling it
/// round-robin until the flag is set (`load`).
pub async fn fleet_under_load(
    m: &tollgate::mock::MockHandle,
    url: &str,
) -> (
    Vec<Gateway>,
    String,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<tokio::task::JoinHandle<Vec<u16>>>,
) {
    let (nodes, key) = funded_fleet(m, url, "50").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(&nodes, &key, 6, stop.clone());
    (nodes, key, stop, tasks)
}

/// Stops the load of `load`: every call got 200 or 503 (failed closed); how many were served.
pub async fn stop_load(
    stop: &std::sync::atomic::AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>,
) -> usize {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = join(tasks).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    for s in &statuses {
        assert!(*s == 200 || *s == 503, "unexpected status {s}");
    }
    eprintln!("{ok} of {} calls served", statuses.len());
    ok
}
