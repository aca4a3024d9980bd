#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The gateway on PostgreSQL (issue 15): one node with its record in a real PostgreSQL, and a
//! fleet of three nodes with separate working directories (nothing shared on disk) on one
//! PostgreSQL and one Redis.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn hello(i: usize) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": format!("hello {i}")}]})
}

async fn call(gw: &Gateway, key: &str, i: usize) -> u16 {
    gw.chat_with_key(key, hello(i))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn one_node_keeps_its_record_in_postgresql() {
    let pg = Postgres::start();
    let url = pg.database("one");
    let m = mock().await;
    let mut gw = Gateway::spawn(&[Up::mock("a", &m)], "", "", "", Some(&url)).await;
    gw.admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    gw.admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "10"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    for i in 0..20 {
        assert_eq!(call(&gw, &key, i).await, 200);
    }
    // The usage records and charges land in PostgreSQL (batched): wait for all 20.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if sql_charges(&gw, "acme").await.1 == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "charges never reached the store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (charged, _) = sql_charges(&gw, "acme").await;
    let before = gw.balance("acme").await;
    assert_eq!(before["charged"].nano(), charged, "{before}");
    let usage = gw.admin_get("/admin/usage?tenant=acme&limit=100").await;
    assert_eq!(usage["data"].as_array().unwrap().len(), 20, "{usage}");
    let analytics = gw
        .admin_get("/admin/tenants/acme/analytics?group_by=model")
        .await;
    assert!(analytics.to_string().contains("gpt-4o-mini"), "{analytics}");

    // A restart (SIGKILL) recovers the books from PostgreSQL, and the key still works.
    gw.kill_and_restart().await;
    let after = gw.balance("acme").await;
    for field in ["available", "reserved", "charged", "credited"] {
        assert_eq!(
            after[field], before[field],
            "books after the restart: {field}"
        );
    }
    assert_eq!(call(&gw, &key, 99).await, 200);
    // Nothing of the record is in the node's directory: no SQLite file was made.
    assert!(!gw.dir.path().join("tollgate.db").exists());
}

fn cluster_extra(redis: &Redis, node: &str) -> String {
    format!(
        "\n[cluster]\nredis_url = \"{}\"\nnode_id = \"{node}\"\nflush_ms = 20\nlease_credits = \"0.2\"\nidle_return_seconds = 1\nop_timeout_ms = 300\n",
        redis.url()
    )
}

/// Three nodes, each with its own directory, on one PostgreSQL (`url`) and one Redis; tenant
/// `acme` topped up with `rmb`; a key every node has learnt. Returns the nodes, the key and its id.
async fn pg_fleet(
    m: &tollgate::mock::MockHandle,
    url: &str,
    redis: &Redis,
    rmb: &str,
) -> (Vec<Gateway>, String, i64) {
    let ups = [Up::mock("a", m)];
    let mut nodes = Vec::new();
    for n in ["n1", "n2", "n3"] {
        nodes.push(Gateway::spawn(&ups, "", &cluster_extra(redis, n), "", Some(url)).await);
    }
    nodes[0]
        .admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": rmb}))
        .await;
    let created = nodes[0]
        .admin_post(
            "/admin/keys",
            json!({"tenant": "acme", "name": "k", "default_channel": "main"}),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["record"]["id"].as_i64().unwrap();
    // Every node learns the key from PostgreSQL.
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in &nodes {
        while call(gw, &key, 0).await != 200 {
            assert!(Instant::now() < deadline, "a node never learnt the key");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (nodes, key, id)
}

#[tokio::test]
async fn three_nodes_on_one_postgresql_and_one_redis_never_overspend() {
    let pg = Postgres::start();
    let url = pg.database("fleet");
    let redis = Redis::start();
    let m = mock().await;
    // A small balance: about 60 calls' worth.
    let (mut nodes, key, id) = pg_fleet(&m, &url, &redis, "0.02").await;
    // 300 calls at once over the three nodes, far beyond the balance.
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let (c, url, key) = (
            nodes[i % 3].client.clone(),
            nodes[i % 3].url("/v1/chat/completions"),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .bearer_auth(key)
                .json(&hello(i))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 | 429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok > 10 && ok < 300, "{ok} served");
    // Conservation: the bank's spend, the PostgreSQL ledger's charges and the calls served agree.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = nodes[1].balance("acme").await;
        let bank = &b["bank"];
        let (charged, n) = sql_charges(&nodes[2], "acme").await;
        if bank["leases"] == "0" && bank["spent"].nano_opt() == Some(charged) && n == ok + 3 {
            assert!(charged <= bank["credited"].nano(), "overspent: {b}");
            assert_eq!(bank["credited"].nano(), 20_000_000, "{b}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: bank {b}, ledger {charged} in {n} charges, {ok} + 3 served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A key revoked through one node is refused by the others within the refresh interval.
    nodes[0]
        .admin_post(&format!("/admin/keys/{id}/revoke"), json!({}))
        .await;
    let t0 = Instant::now();
    for gw in &nodes[1..] {
        while call(gw, &key, 1).await != 401 {
            assert!(t0.elapsed() < Duration::from_secs(3), "revocation too slow");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "{ok} calls served; revocation reached every node after {:?}",
        t0.elapsed()
    );
    // Node SIGKILL and restart: the books stay exact.
    nodes[1].kill_and_restart().await;
    let b = nodes[1].balance("acme").await;
    let (charged, _) = sql_charges(&nodes[1], "acme").await;
    assert_eq!(b["bank"]["spent"].nano_opt(), Some(charged), "{b}");
}

/// PostgreSQL stopped (as by a crash) under load and started again: the node keeps serving
/// from what it holds (keys, balances), its usage records and charges wait and are written
/// when PostgreSQL is back, each once.
#[tokio::test]
async fn a_postgresql_restart_under_load_loses_and_doubles_nothing() {
    let mut pg = Postgres::start();
    let url = pg.database("restart");
    let m = mock().await;
    let gw = Gateway::spawn(&[Up::mock("a", &m)], "", "", "", Some(&url)).await;
    gw.admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    gw.admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "10"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    let mut served = 0usize;
    let mut i = 0usize;
    let run_for = |d: Duration| {
        let (gw, key) = (&gw, key.clone());
        let until = Instant::now() + d;
        async move {
            let mut n = 0;
            while Instant::now() < until {
                assert_eq!(
                    call(gw, &key, n).await,
                    200,
                    "a call failed while PostgreSQL was away"
                );
                n += 1;
            }
            n
        }
    };
    served += run_for(Duration::from_millis(800)).await;
    pg.kill();
    served += run_for(Duration::from_millis(1500)).await;
    pg.restart();
    served += run_for(Duration::from_millis(800)).await;
    i += served;
    // Every call charged once in PostgreSQL, once it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (charged, n) = sql_charges(&gw, "acme").await;
        if n == i {
            let b = gw.balance("acme").await;
            assert_eq!(b["charged"].nano(), charged, "{b}");
            break;
        }
        assert!(n < i, "{n} charges for {i} calls: doubled");
        assert!(Instant::now() < deadline, "{n} of {i} charges stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{i} calls served across a PostgreSQL restart, each charged once");
}

/// The charged records that wait for a store that does not answer are bounded
/// (`billing.max_unstored_charges`): beyond it calls are refused (503 `store_unavailable`) and
/// `/readyz` says so, until the store is back; nothing served is lost.
#[tokio::test]
async fn records_waiting_for_postgresql_are_bounded_and_calls_fail_closed_beyond() {
    let mut pg = Postgres::start();
    let url = pg.database("bounded");
    let m = mock().await;
    let gw = Gateway::spawn(
        &[Up::mock("a", &m)],
        "",
        "\n[billing]\nmax_unstored_charges = 30\n",
        "",
        Some(&url),
    )
    .await;
    gw.admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    gw.admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "10"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    let mut served = 0;
    for i in 0..5 {
        assert_eq!(call(&gw, &key, i).await, 200);
        served += 1;
    }
    pg.kill();
    let mut refused = None;
    for i in 0..200 {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&hello(i))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            served += 1;
            continue;
        }
        assert_eq!(r.status(), 503);
        refused = Some(r.json::<Value>().await.unwrap());
        break;
    }
    let body = refused.expect("never refused while PostgreSQL was away");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert!(served <= 5 + 30 + 1, "{served} served past the bound");
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["store"], "backlogged");
    pg.restart();
    // Back: the waiting records are stored, calls are served again, each charged once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&gw, &key, 999).await != 200 {
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    served += 1;
    loop {
        let (_, n) = sql_charges(&gw, "acme").await;
        if n == served {
            break;
        }
        assert!(n < served, "{n} charges for {served} calls");
        assert!(Instant::now() < deadline, "{n} of {served} charges stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fleet under load through a Redis restart and then a PostgreSQL restart (each stopped as
/// by a crash): calls fail closed while Redis is away, keep being served while PostgreSQL is,
/// and afterwards Redis, the PostgreSQL ledger and the calls served agree exactly.
/// Six clients calling round-robin over the nodes until `stop`; each returns its statuses.
fn pg_load(
    nodes: &[Gateway],
    key: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    let mut workers = Vec::new();
    for w in 0..6usize {
        let urls: Vec<String> = nodes
            .iter()
            .map(|g| g.url("/v1/chat/completions"))
            .collect();
        let (key, stop) = (key.to_string(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = Vec::new();
            let mut i = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = match c
                    .post(&urls[i % 3])
                    .bearer_auth(&key)
                    .json(&hello(i))
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                seen.push(s);
                i += 1;
            }
            seen
        }));
    }
    workers
}

/// Stops `pg_load`; every call was served or refused (503), and the 3 warm-up calls and the
/// calls served are each charged once, Redis agreeing with the ledger to the nano-credit.
async fn stop_with_exact_books(
    nodes: &[Gateway],
    stop: &std::sync::atomic::AtomicBool,
    workers: Vec<tokio::task::JoinHandle<Vec<u16>>>,
    what: &str,
) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for w in workers {
        statuses.extend(w.await.unwrap());
    }
    for s in &statuses {
        assert!(*s == 200 || *s == 503, "unexpected status {s}");
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(ok > 50, "only {ok} served");
    // 3 warm-up calls and `ok` calls: each charged once, and Redis agrees with the ledger.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = nodes[0].balance("acme").await;
        let (charged, n) = sql_charges(&nodes[1], "acme").await;
        if b["bank"]["leases"] == "0"
            && n == ok + 3
            && b["bank"]["spent"].nano_opt() == Some(charged)
        {
            assert_eq!(
                b["bank"]["credited"].nano_opt(),
                Some(50_000_000_000),
                "{b}"
            );
            break;
        }
        assert!(n <= ok + 3, "{n} charges for {} calls: doubled", ok + 3);
        assert!(
            Instant::now() < deadline,
            "never settled: bank {b}, ledger {charged} in {n} charges, {ok} + 3 served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{ok} of {} calls served through {what}", statuses.len());
}

#[tokio::test]
async fn the_fleet_keeps_exact_books_through_redis_and_postgresql_restarts() {
    let mut pg = Postgres::start();
    let url = pg.database("restarts");
    let mut redis = Redis::start();
    let m = mock().await;
    let (nodes, key, _) = pg_fleet(&m, &url, &redis, "50").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = pg_load(&nodes, &key, &stop);
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_with_exact_books(&nodes, &stop, workers, "a Redis and a PostgreSQL restart").await;
}

/// Redis loses the bank under load (FLUSHALL): the nodes drop their Redis-side state once
/// their charges are in PostgreSQL, one publishes a new bank, each tenant is seeded from the
/// record again, and the books stay exact.
#[tokio::test]
async fn a_bank_lost_under_load_is_rebuilt_from_postgresql_with_exact_books() {
    let pg = Postgres::start();
    let url = pg.database("rebuild");
    let redis = Redis::start();
    let m = mock().await;
    let (nodes, key, _) = pg_fleet(&m, &url, &redis, "50").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = pg_load(&nodes, &key, &stop);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop_with_exact_books(&nodes, &stop, workers, "a Redis that lost the bank").await;
    for gw in &nodes {
        assert!(
            gw.log().contains("credit bank rebuilt from the record"),
            "{}",
            gw.log()
        );
    }
}
