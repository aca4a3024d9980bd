#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The ledger against process deaths and upgrades (issue 12): a crash loses no charge of an
//! answered call, a graceful upgrade under load spends no credit twice, a stop with nothing in
//! flight is quick.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate::mock::Behavior;

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The charged usage records in the store: request id -> cost.
fn charges(db: &str) -> HashMap<String, i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT request_id, cost_nano FROM usage_events WHERE cost_nano > 0")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// What the store says the tenant was credited.
fn credited(db: &str, tenant: i64) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE tenant_id = ?1",
        [tenant],
        |r| r.get(0),
    )
    .unwrap()
}

/// Calls in a loop from `workers` clients until `stop`; every 200's request id is kept.
fn load(
    gw: &Gateway,
    key: &str,
    workers: usize,
    body: serde_json::Value,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (served, stop, body) = (served.clone(), stop.clone(), body.clone());
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (url, key) = (gw.url("/v1/chat/completions"), key.to_string());
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(r) = client.post(&url).bearer_auth(&key).json(&body).send().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let id = r
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let status = r.status().as_u16();
                // A 200 counts only once the whole answer arrived.
                if r.bytes().await.is_ok() && status == 200 {
                    served.lock().unwrap().push(id.unwrap());
                } else if status == 402 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    (served, handles)
}

/// Tenant `tight` with 1.2 credits (gpt-4o with 200 output tokens holds ~0.015 a call: about
/// 80 calls) and a key; returns its id and the key.
async fn tight_tenant(gw: &Gateway) -> (i64, String) {
    let id = gw
        .admin_post("/admin/tenants", json!({"name": "tight"}))
        .await["id"]
        .as_i64()
        .unwrap();
    gw.admin_post("/admin/tenants/tight/topups", json!({"amount_rmb": "1.2"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "tight", "name": "k", "default_channel": "main"}))
        .await;
    (id, key)
}

/// A graceful upgrade in systemd's order (systemd/tollgate.service, ExecReload): the old
/// process is told first (SIGQUIT), the new one started after with `--upgrade`.
fn upgrade(gw: &Gateway) -> std::process::Child {
    assert!(std::process::Command::new("kill")
        .args(["-QUIT", &gw.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let log = std::fs::File::create(gw.dir.path().join("gateway-new.log")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--upgrade", "--config"])
        .arg(&gw.config_path)
        .env("TOLLGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap()
}

/// SIGKILL under load, with a journal flush interval of a whole second so that many answered
/// calls are not in the store yet: after a restart every 200 the clients got has exactly one
/// charge (from the charge log where the store had none), and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_charge_of_an_answered_call() {
    let m = mock().await;
    m.set_behavior(Behavior::Delay { ms: 5 });
    let mut gw = Gateway::start(
        &[Up::mock("a", &m)],
        "",
        "[billing]\njournal_flush_ms = 1000\n",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "count my charge"}]});
    let (served, handles) = load(&gw, &gw.key.clone(), 8, body, stop.clone());
    wait_until("answered calls", 20, || served.lock().unwrap().len() >= 150).await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let answered: Vec<String> = served.lock().unwrap().clone();
    let before = charges(&gw.db);
    let missing_before = answered
        .iter()
        .filter(|id| !before.contains_key(*id))
        .count();

    gw.kill_and_restart().await;
    let after = charges(&gw.db);
    for id in &answered {
        assert!(after.contains_key(id), "answered call {id} has no charge after the crash ({missing_before} of {} were not in the store at the kill)", answered.len());
    }
    // Nothing charged twice: one row per request id (the key of the map), and the books are
    // the store's: available + charged = credited, charged = the sum of the charges.
    let b = gw.balance("acme").await;
    let total: i64 = after.values().sum();
    assert_eq!(b["charged"].nano(), total, "{b}");
    assert_eq!(b["reserved"], "0");
    assert_eq!(
        b["available"].nano() + total,
        credited(&gw.db, gw.tenant_id)
    );
    assert!(
        missing_before > 0,
        "the kill was meant to find answered calls not yet in the store"
    );
    // The log is written out in batches: wait for the line.
    wait_until("the replay's log line", 10, || {
        gw.log().contains("charge log: replayed")
    })
    .await;
}

/// A graceful upgrade while calls run against a tenant whose credit runs out during it: the
/// old and the new process never spend the same credit twice (total charged <= credited), the
/// new process's books equal the store once the old one is gone, and every answered call is
/// charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_spends_no_credit_twice() {
    let m = mock().await;
    // Calls long enough to be in flight in the old process while it hands over and drains.
    m.set_behavior(Behavior::Delay { ms: 150 });
    let mut gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let (tenant_id, key) = tight_tenant(&gw).await;
    let stop = Arc::new(AtomicBool::new(false));
    let body = json!({"model": "gpt-4o", "max_tokens": 200, "messages": [{"role": "user", "content": "spend it"}]});
    let (served, handles) = load(&gw, &key, 8, body, stop.clone());
    wait_until("calls served", 20, || served.lock().unwrap().len() >= 10).await;

    let mut new = upgrade(&gw);
    let mut old = std::mem::replace(
        &mut gw.child,
        std::process::Command::new("true").spawn().unwrap(),
    );
    let old_exit = tokio::task::spawn_blocking(move || old.wait());
    tokio::time::timeout(Duration::from_secs(30), old_exit)
        .await
        .expect("the old process exits")
        .unwrap()
        .unwrap();
    // The credit runs out on the new process; keep calling a while after.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let new_log =
        || std::fs::read_to_string(gw.dir.path().join("gateway-new.log")).unwrap_or_default();
    let answered = served.lock().unwrap().clone();
    // Let the new process's recorder catch up, then compare its books with the store.
    let credit = credited(&gw.db, tenant_id);
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let b = gw.balance("tight").await;
        let stored: i64 = charges(&gw.db).values().sum();
        if b["charged"].nano_opt() == Some(stored) && b["reserved"] == "0" {
            last = b;
            break;
        }
        last = b;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = charges(&gw.db);
    let total: i64 = all.values().sum();
    assert_eq!(
        last["charged"].nano(),
        total,
        "the new process's books miss charges: {last}\nold:\n{}\nnew:\n{}",
        gw.log(),
        new_log()
    );
    assert!(total <= credit, "overspent: charged {total} of {credit}");
    assert_eq!(last["available"].nano() + total, credit, "{last}");
    assert!(last["available"].nano() >= 0);
    for id in &answered {
        assert!(all.contains_key(id), "answered call {id} not charged");
    }
    assert!(
        answered.len() as i64 * 10_000_000 > credit / 2,
        "the credit was meant to run out: {} calls",
        answered.len()
    );
    wait_until("the hand-over's log line", 10, || {
        gw.log().contains("handed over to the new process")
    })
    .await;
    let _ = new.kill();
    let _ = new.wait();
}

/// SIGTERM with nothing in flight ends the process at once (not after the 30 s grace period),
/// and says so in the log.
#[tokio::test]
async fn sigterm_with_nothing_in_flight_stops_at_once() {
    let m = mock().await;
    let mut gw = Gateway::start_with_server_extra(
        &[Up::mock("a", &m)],
        "",
        "",
        "graceful_shutdown_seconds = 30",
    )
    .await;
    let r = gw
        .chat(json!({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut child = std::mem::replace(
        &mut gw.child,
        std::process::Command::new("true").spawn().unwrap(),
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let log = gw.log();
    assert!(log.contains("shutdown complete"), "{log}");
    // The call's charge is stored, not lost with the process.
    assert_eq!(charges(&gw.db).len(), 1);
}

/// Money in under a crash: concurrent top-ups and a redemption, SIGKILL right after the
/// answers; after a restart every top-up that was answered 200 is credited exactly once (a
/// replay of its idempotency key credits nothing more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_top_ups_loses_no_acknowledged_credit() {
    let m = mock().await;
    let mut gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (
            gw.client.clone(),
            gw.admin_url("/admin/tenants/acme/topups"),
        );
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"amount_rmb": "1.5", "idempotency_key": format!("crash-{i}")}))
                .send()
                .await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let mut acknowledged = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let status = t.await.unwrap();
        if (200..300).contains(&status) {
            acknowledged.push(i);
        }
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    gw.kill_and_restart().await;
    let want = 1_000 * 1_000_000_000 + acknowledged.len() as i64 * 1_500_000_000;
    assert_eq!(credited(&gw.db, gw.tenant_id), want);
    assert_eq!(gw.balance("acme").await["credited"].nano(), want);
    // Replaying every key after the crash credits nothing new.
    for i in 0..20 {
        let r = gw
            .client
            .post(gw.admin_url("/admin/tenants/acme/topups"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"amount_rmb": "1.5", "idempotency_key": format!("crash-{i}")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let all = 1_000 * 1_000_000_000 + 20 * 1_500_000_000;
    assert_eq!(gw.balance("acme").await["credited"].nano(), all);
}

/// Cluster mode through an upgrade (systemd's order) while calls run on a tenant whose credit
/// runs out during it: the two processes share the node's Redis state, so nothing is spent
/// twice; afterwards Redis conserves (`bal + leases + spent = credited`), spent equals the
/// SQL record and never exceeds the credit, and every answered call is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_in_cluster_mode_spends_no_credit_twice() {
    let redis = Redis::start();
    let m = mock().await;
    m.set_behavior(Behavior::Delay { ms: 150 });
    let extra = format!(
        "\n[cluster]\nredis_url = \"{}\"\nnode_id = \"up\"\nflush_ms = 20\nlease_credits = \"0.2\"\nidle_return_seconds = 1\nop_timeout_ms = 300\n",
        redis.url()
    );
    let mut gw = Gateway::spawn(&[Up::mock("a", &m)], "", &extra, "", None).await;
    let (tenant_id, key) = tight_tenant(&gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let body = json!({"model": "gpt-4o", "max_tokens": 200, "messages": [{"role": "user", "content": "spend it"}]});
    let (served, handles) = load(&gw, &key, 8, body, stop.clone());
    wait_until("calls served", 20, || served.lock().unwrap().len() >= 10).await;
    let mut new = upgrade(&gw);
    let mut old = std::mem::replace(
        &mut gw.child,
        std::process::Command::new("true").spawn().unwrap(),
    );
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || old.wait()),
    )
    .await
    .expect("the old process exits")
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let answered = served.lock().unwrap().clone();
    let credit = credited(&gw.db, tenant_id);
    // Allowance comes back when idle; then Redis and SQL must agree exactly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let bank = loop {
        let b = gw.balance("tight").await["bank"].clone();
        let (bal, leases, spent, cred) = (
            b["unleased"].nano(),
            b["leases"].nano(),
            b["spent"].nano(),
            b["credited"].nano(),
        );
        assert_eq!(bal + leases + spent, cred, "conservation in redis: {b}");
        let sql: i64 = charges(&gw.db).values().sum();
        if leases == 0 && spent == sql {
            break b;
        }
        assert!(Instant::now() < deadline, "never settled: {b}, SQL {sql}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all = charges(&gw.db);
    let total: i64 = all.values().sum();
    assert!(total <= credit, "overspent: {total} of {credit}");
    assert_eq!(bank["credited"].nano(), credit);
    for id in &answered {
        assert!(all.contains_key(id), "answered call {id} not charged");
    }
    let _ = new.kill();
    let _ = new.wait();
}
