#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Failover of the credit bank under load, in a test binary of its own (the binaries run one
//! after another, so these heavy tests do not starve the timing-sensitive ones of
//! tests/cluster.rs): Redis behind Sentinel and Redis Cluster, each primary killed while three
//! gateway nodes serve; afterwards every node serves and the books are exact.

mod common;

use common::fleet::*;
use common::*;
use std::time::{Duration, Instant};

/// The two failovers run one after the other: each loads two cores by itself.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Redis behind Sentinel: the primary is killed under load; the Sentinels promote the replica,
/// every node follows the new master, and the books are exact afterwards (no overspend, Redis and
/// the SQL ledger agree).
#[tokio::test]
async fn a_sentinel_failover_under_load_keeps_serving_with_exact_books() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut set = RedisSentinels::start();
    let m = mock().await;
    let (nodes, key) = funded_fleet(&m, &set.url(), "50").await;
    let old = set.master_port();
    assert_eq!(old, Some(set.primary.port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(&nodes, &key, 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    set.primary.kill();
    let t0 = Instant::now();
    while set.master_port() != Some(set.replica.port) {
        assert!(t0.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("sentinel failover took {:?}", t0.elapsed());
    // Calls keep coming for a while on the new master.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let ok = stop_load(&stop, tasks).await;
    // Every node serves on the new master.
    serve_again_with_exact_books(&nodes, &key, ok).await;
    no_rebuild(&nodes);
}

/// Redis Cluster: the bank lives in the slot of the prefix's hash tag (`tg:` becomes `{tg}:`);
/// the primary of that slot is killed under load, the cluster promotes its replica, every node
/// follows, and the books are exact afterwards (no overspend, Redis and the SQL ledger agree).
#[tokio::test]
async fn a_redis_cluster_failover_under_load_keeps_serving_with_exact_books() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut rc = RedisCluster::start();
    let m = mock().await;
    let (nodes, key) = funded_fleet(&m, &rc.url(), "50").await;
    let primary = rc.primary_of("{tg}:bank").unwrap();
    // Every key of the bank is on that primary (one slot).
    let mut c = redis::Client::open(rc.nodes[primary].url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(keys.iter().any(|k| k.starts_with("{tg}:bal:")), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("{tg}:")), "{keys:?}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Three callers: lighter than the other failover tests, as it runs beside them on two cores.
    let tasks = load(&nodes, &key, 3, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    rc.nodes[primary].kill();
    let t0 = Instant::now();
    loop {
        match rc.primary_of("{tg}:bank") {
            Some(p) if p != primary => break,
            _ => {}
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("cluster failover took {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let ok = stop_load(&stop, tasks).await;
    assert!(ok > 20, "only {ok} calls succeeded");
    serve_again_with_exact_books(&nodes, &key, ok).await;
    no_rebuild(&nodes);
}

/// Every write a node was told was done reached the promoted replica: no node saw the bank go
/// back in time or lose its state, and none had to rebuild it.
fn no_rebuild(nodes: &[Gateway]) {
    for gw in nodes {
        let log = gw.log();
        assert!(!log.contains("Redis went back in time"), "{log}");
        assert!(!log.contains("Redis lost its state"), "{log}");
    }
}
