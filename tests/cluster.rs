#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Cluster mode end to end: three gateway processes share one real redis-server (and one SQLite
//! record); a balance and a quota are never overspent across nodes; totals in Redis, the SQL
//! ledger and the usage events agree exactly; a Redis restart mid-run and a node SIGKILLed
//! mid-run cost no credit and double-count nothing; a Redis that lost the bank is rebuilt from
//! the record (waiting for a dead node, or without a forgotten one).

mod common;

use common::fleet::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate::mock::Behavior;

/// How many calls were admitted; every other one must be an `insufficient_quota` refusal
/// with status `refused`.
fn admitted(results: &[(u16, Value)], refused: u16) -> usize {
    for (status, body) in results {
        assert!(
            *status == 200 || (*status == refused && body["error"]["code"] == "insufficient_quota"),
            "{status} {body}"
        );
    }
    results.iter().filter(|r| r.0 == 200).count()
}

#[tokio::test]
async fn three_nodes_never_overspend_a_shared_balance_or_quota() {
    let redis = Redis::start();
    let m = mock().await;
    m.set_behavior(Behavior::Delay { ms: 300 });
    let nodes = fleet(&m, &redis).await;
    // gpt-4o, 1000 output tokens: worst case ~0.0745 credits; 0.3 credits cover 4 holds.
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "0.3"}))
        .await;
    let key = nodes[1]
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // every node sees the new key
    let req = json!({"model": "gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "write a lot"}]});
    let results = fire(&nodes, &key, 45, &req).await;
    let ok = admitted(&results, 402);
    assert!(
        (1..=4).contains(&ok),
        "{ok} calls admitted against a balance that holds 4 worst cases"
    );
    assert_eq!(m.stats().chat_requests, ok as u64);

    // A quota of 0.2 credits covers two worst cases, whichever nodes the calls land on.
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "100"}))
        .await;
    let capped = nodes[2]
        .create_key(json!({"tenant": "acme", "name": "capped", "default_channel": "main", "quota_credits": "0.2"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // every node sees the new key
    let results = fire(&nodes, &capped, 30, &req).await;
    let ok_q = admitted(&results, 429);
    assert!(
        (1..=2).contains(&ok_q),
        "{ok_q} calls admitted under the quota"
    );

    // Everything settles: Redis, the SQL ledger and the usage events agree to the nano-credit.
    let bank = quiesce(&nodes[0], "acme").await;
    let (charged, n) = sql_charges(&nodes[0], "acme").await;
    assert_eq!(n, ok + ok_q);
    let events = nodes[0].usage_events(75).await;
    let cost: i64 = events.iter().map(|e| e["cost"].nano()).sum();
    assert_eq!(cost, charged);
    assert_eq!(bank["spent"].nano(), charged);
    assert_eq!(
        bank["credited"].nano(),
        100_300_000_000,
        "both top-ups replayed into redis once"
    );
}

#[tokio::test]
async fn a_redis_restart_mid_run_fails_closed_and_loses_or_doubles_nothing() {
    let mut redis = Redis::start();
    let m = mock().await;
    let (nodes, key, stop, tasks) = fleet_under_load(&m, &redis.url()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let ok = stop_load(&stop, tasks).await;
    assert!(ok > 20, "only {ok} calls succeeded");
    // After the restart every node serves again.
    serve_again_with_exact_books(&nodes, &key, ok).await;
}

#[tokio::test]
async fn a_node_killed_mid_run_restarts_and_its_leases_come_back() {
    let redis = Redis::start();
    let m = mock().await;
    let (mut nodes, key, stop, tasks) = fleet_under_load(&m, &redis.url()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[1].kill_and_restart().await; // SIGKILL, then the same node id starts again
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = join(tasks).await;
    for s in &statuses {
        assert!(
            // 0: the killed node refused connections; 503: the restarted node listens a moment
            // before its bank is connected and fails closed meanwhile.
            *s == 200 || *s == 0 || *s == 502 || *s == 503,
            "unexpected status {s}; logs:\n{}",
            nodes
                .iter()
                .flat_map(|n| n
                    .log()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .map(str::to_string)
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // No lease stays behind (the restarted node reclaimed the dead one's, the others give
    // theirs back when idle), Redis balances, and nothing was spent beyond the record.
    let deadline = Instant::now() + Duration::from_secs(20);
    let bank = loop {
        let b = bank_of(&nodes[0], "acme").await;
        if !b.is_null() {
            check_bank(&b);
        }
        if b["leases"] == "0" {
            break b;
        }
        assert!(Instant::now() < deadline, "leases never returned: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The killed node's charges not yet flushed or committed came back from its charge log:
    // Redis and the SQL record agree exactly (issue 12: a reclaim never returns spent credit).
    let (charged, _) = sql_charges(&nodes[0], "acme").await;
    assert!(charged <= bank["credited"].nano());
    assert_eq!(bank["spent"].nano(), charged, "{bank}");
    assert_eq!(bank["credited"].nano(), 50_000_000_000);
    // And the fleet still agrees exactly from here on.
    let before_spent = bank["spent"].nano();
    let results = fire(
        &nodes,
        &key,
        9,
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "again"}]}),
    )
    .await;
    assert!(results.iter().all(|r| r.0 == 200));
    let bank2 = loop {
        let b = bank_of(&nodes[2], "acme").await;
        if !b.is_null() {
            check_bank(&b);
        }
        let (c2, _) = sql_charges(&nodes[2], "acme").await;
        if b["leases"] == "0" && b["spent"].nano() - before_spent == c2 - charged {
            break b;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(20), "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(bank2["spent"].nano() > before_spent);
}

/// Cluster mode takes the same hold as embedded mode: a prompt of one token a byte ("x9!"
/// repeated) is covered by its hold or refused; ten concurrent calls against a balance of 3.5
/// calls serve at most three, nothing is uncollected, Redis and SQL agree.
#[tokio::test]
async fn dense_prompts_are_held_in_full_in_cluster_mode_too() {
    let redis = Redis::start();
    let m = mock().await;
    let mut nodes = fleet(&m, &redis).await;
    let body = json!({"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "x9!".repeat(1500)}]});
    // 4,500 prompt tokens + at most 16 output at gpt-4o x7.2: one call is about 0.0822 credits.
    let one: i64 = (4_500 * 25 + 16 * 100) * 720; // nano-credits, (2.5 in, 10 out) / 1e6 x 7.2
    let credit = one * 3 + one / 2;
    nodes[0]
        .admin_post(
            "/admin/tenants/acme/topups",
            json!({"amount_rmb": rust_decimal::Decimal::new(credit, 9).to_string()}),
        )
        .await;
    let key = nodes[0]
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    // Every node sees the key (refreshed every second) and the credit (replayed into Redis).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let results = fire(&nodes, &key, 10, &body).await;
    let served = admitted(&results, 402);
    assert!((1..=3).contains(&served), "{served} served");
    let bank = quiesce(&nodes[0], "acme").await;
    assert!(bank["spent"].nano() <= credit, "{bank}");
    for n in &nodes {
        let metrics = n.metrics().await;
        assert_eq!(
            metric_value(&metrics, "tollgate_uncollected_nanocredits_total"),
            0.0
        );
    }
    nodes.clear();
}

/// A node SIGKILLed right after serving calls, before its flush (a whole second here): on
/// restart it must charge them to Redis before it gives its lease back. Redis and the SQL
/// record then agree to the nano-credit and hold every served call.
#[tokio::test]
async fn a_killed_node_never_reclaims_credit_it_spent() {
    let redis = Redis::start();
    let m = mock().await;
    let extra = cluster_extra(&redis, "solo").replace("flush_ms = 20", "flush_ms = 1000");
    let mut gw = Gateway::spawn(&[Up::mock("a", &m)], "", &extra, "", None).await;
    gw.admin_post("/admin/tenants", json!({"name": "acme"}))
        .await;
    gw.admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "5"}))
        .await;
    let key = gw
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    let body = json!({"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "spend"}]});
    // The first call leases; wait out one flush so the next ones are the unflushed ones.
    assert_eq!(
        fire(std::slice::from_ref(&gw), &key, 1, &body).await[0].0,
        200
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..4 {
        assert_eq!(
            fire(std::slice::from_ref(&gw), &key, 1, &body).await[0].0,
            200
        );
    }
    gw.kill_and_restart().await;
    let bank = quiesce(&gw, "acme").await;
    let (charged, n) = sql_charges(&gw, "acme").await;
    assert_eq!(n, 5, "every served call is in the record");
    assert_eq!(
        bank["spent"].nano(),
        charged,
        "redis holds every charge: {bank}"
    );
    // The log is written out in batches: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .log()
        .contains("charges of a crashed run flushed to redis")
    {
        assert!(Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn negative_adjustments_need_unleased_cover_in_cluster_mode() {
    let redis = Redis::start();
    let m = mock().await;
    let nodes = fleet(&m, &redis).await;
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "10"}))
        .await;
    // More than the balance: refused, nothing recorded anywhere.
    let r = nodes[1]
        .client
        .post(nodes[1].admin_url("/admin/tenants/acme/adjustments"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"credits": "-11", "note": "too much"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = nodes[1]
        .admin_post(
            "/admin/tenants/acme/adjustments",
            json!({"credits": "-4", "note": "refund reversal", "idempotency_key": "adj-1"}),
        )
        .await;
    assert_eq!(
        r["balance"]["bank"]["credited"].nano(),
        6_000_000_000i64,
        "{r}"
    );
    let bank = quiesce(&nodes[2], "acme").await;
    assert_eq!(bank["unleased"].nano(), 6_000_000_000i64);
}

#[tokio::test]
async fn a_key_rate_limit_holds_across_nodes() {
    let redis = Redis::start();
    let m = mock().await;
    let nodes = fleet(&m, &redis).await;
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "10"}))
        .await;
    let key = nodes[0]
        .create_key(
            json!({"tenant": "acme", "name": "rpm", "default_channel": "main", "rpm_limit": 10}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Not across a minute's turn (the window's previous minute then counts a little less).
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    if ms > 55_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - ms)).await;
    }
    // 30 calls at once, 10 on each node: each node alone would admit all of its 10.
    let calls = (0..30).map(|i| {
        let gw = &nodes[i % 3];
        let key = key.clone();
        async move {
            let r = gw.chat_with_key(&key, json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if status == 429 {
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            }
            (status, body)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    // A 503 here is the fleet failing closed (the bank or the rate script not answering in
    // op_timeout_ms under a loaded machine): its message says which, for the next flake.
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    let refusals: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, b)| b)
        .take(3)
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // The fleet admits exactly the limit: admission is one atomic step on the shared counters.
    assert_eq!((ok, limited), (10, 20), "{statuses:?} {refusals:?}");
    // And the nodes have learnt it: a later call on any node is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for gw in &nodes {
        let r = gw
            .chat_with_key(
                &key,
                json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 429, "{body}");
    }
}

/// `/readyz` follows the credit bank with no traffic at all: a node that can only answer 503
/// is taken out of a load balancer's rotation, and back in when Redis answers again.
#[tokio::test]
async fn readiness_follows_the_credit_bank() {
    let mut redis = Redis::start();
    let m = mock().await;
    let nodes = fleet(&m, &redis).await;
    let ready = |gw: &Gateway| {
        let c = gw.client.clone();
        let url = gw.admin_url("/readyz");
        async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    async fn until<F, Fut>(what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f().await {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for gw in &nodes {
        let (s, body) = ready(gw).await;
        assert_eq!(
            (s, body["credit_bank"].as_str()),
            (200, Some("up")),
            "{body}"
        );
    }
    redis.kill();
    let t0 = std::time::Instant::now();
    for gw in &nodes {
        until("not ready while redis is down", || async {
            let (s, body) = ready(gw).await;
            s == 503 && body["credit_bank"] == "down"
        })
        .await;
    }
    let took = t0.elapsed();
    assert!(
        metric_value(&nodes[0].metrics().await, "tollgate_credit_bank_up") == 0.0,
        "gauge"
    );
    eprintln!("all nodes unready {took:?} after redis died");
    redis.restart();
    for gw in &nodes {
        until("ready again once redis answers", || async {
            ready(gw).await.0 == 200
        })
        .await;
    }
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "1"}))
        .await;
    let key = nodes[0]
        .create_key(json!({"tenant": "acme", "name": "k", "default_channel": "main"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = nodes[1]
        .chat_with_key(
            &key,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "back"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A key revoked through one node is refused by the others within the key refresh interval
/// (the nodes poll the store's key generation every second).
#[tokio::test]
async fn a_key_revoked_on_one_node_is_refused_by_the_others_within_a_second_or_two() {
    let redis = Redis::start();
    let m = mock().await;
    let nodes = fleet(&m, &redis).await;
    nodes[0]
        .admin_post("/admin/tenants/acme/topups", json!({"amount_rmb": "1"}))
        .await;
    let created = nodes[0]
        .admin_post(
            "/admin/keys",
            json!({"tenant": "acme", "name": "k", "default_channel": "main"}),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["record"]["id"].as_i64().unwrap();
    let call = |gw: &Gateway| {
        gw.chat_with_key(
            &key,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
    };
    // Every node knows the key.
    let deadline = Instant::now() + Duration::from_secs(5);
    for gw in &nodes {
        while call(gw).await.unwrap().status() != 200 {
            assert!(Instant::now() < deadline, "the key never reached a node");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes[0]
        .admin_post(&format!("/admin/keys/{id}/revoke"), json!({}))
        .await;
    let t0 = Instant::now();
    assert_eq!(
        call(&nodes[0]).await.unwrap().status(),
        401,
        "at once where revoked"
    );
    for gw in &nodes[1..] {
        loop {
            let s = call(gw).await.unwrap().status();
            if s == 401 {
                break;
            }
            assert_eq!(s, 200);
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "a revoked key still served after {:?}",
                t0.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("revocation reached every node after {:?}", t0.elapsed());
}

async fn flushall(redis: &Redis) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
}

fn logs(nodes: &[Gateway]) -> String {
    nodes.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n")
}

/// Waits (at most `within`) until every node logged that it serves on the rebuilt bank.
async fn wait_rebuilt(nodes: &[Gateway], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let log = logs(nodes);
        if log.matches("credit bank rebuilt from the record").count() >= nodes.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no rebuild within {within:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis loses its state under load (here: FLUSHALL, as a Redis restarted without persistence
/// would). Every node notices (its next probe, or the fence in every script), refuses calls,
/// drops its leases and unflushed batches once its calls have settled and its charges are in
/// the record, and the bank is rebuilt from the record: the fleet serves again on its own, and
/// Redis, the SQL ledger and the usage records agree to the nano-credit.
#[tokio::test]
async fn a_redis_that_lost_its_state_is_rebuilt_from_the_record_under_load() {
    let redis = Redis::start();
    let m = mock().await;
    let (nodes, key, stop, tasks) = fleet_under_load(&m, &redis.url()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    flushall(&redis).await;
    let lost = Instant::now();
    // Every node refuses until the bank is rebuilt, then serves again.
    wait_rebuilt(&nodes, Duration::from_secs(15)).await;
    eprintln!(
        "rebuilt on every node {:?} after the FLUSHALL",
        lost.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ok = stop_load(&stop, tasks).await;
    assert!(ok > 20, "only {ok} calls succeeded");
    let log = logs(&nodes);
    assert_eq!(log.matches("Redis lost its state").count(), 3, "{log}");
    // One node published the bank at the fleet's first start, one after the loss.
    assert_eq!(
        log.matches("published a new bank").count(),
        2,
        "one node publishes: {log}"
    );
    for gw in &nodes {
        let r = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "ready again after the rebuild");
    }
    serve_again_with_exact_books(&nodes, &key, ok).await;
}

/// Redis restarted from an older snapshot of the same bank (RDB only, no append-only file):
/// the bank's identity is unchanged, but its write clock is below what the nodes saw after
/// their own writes, so they mark it stale and rebuild it from the record; the books are exact.
#[tokio::test]
async fn a_redis_restored_from_an_older_snapshot_is_detected_and_rebuilt() {
    let mut redis = Redis::start_with(&["--appendonly", "no"]);
    let m = mock().await;
    let (nodes, key, stop, tasks) = fleet_under_load(&m, &redis.url()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await; // writes the snapshot lacks
    redis.restart(); // SIGKILL; starts again from the snapshot
    wait_rebuilt(&nodes, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ok = stop_load(&stop, tasks).await;
    assert!(logs(&nodes).contains("Redis went back in time"));
    serve_again_with_exact_books(&nodes, &key, ok).await;
}

/// A node SIGKILLed before Redis lost its state still has charges only in its own charge log:
/// the rebuild waits for it (it is in the record's registry of running nodes), the others keep
/// refusing; once it starts again and has put its charges into the record, the bank is rebuilt
/// and the books are exact.
#[tokio::test]
async fn a_bank_rebuild_waits_for_a_dead_node_then_the_books_are_exact() {
    let redis = Redis::start();
    let m = mock().await;
    let (mut nodes, key, stop, tasks) = fleet_under_load(&m, &redis.url()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nodes[2].kill_now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    flushall(&redis).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = join(tasks).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| [200, 503, 0].contains(s)),
        "{statuses:?}"
    );
    for gw in &nodes[..2] {
        let r = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503, "ready while the bank waits for n3");
        let call = gw
            .chat_with_key(
                &key,
                json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(call.status(), 503);
    }
    let log = logs(&nodes[..2]);
    assert!(log.contains(r#""waiting_for":"n3""#), "{log}");
    // Redis loses its state again while the rebuild waits (the ready set with it).
    flushall(&redis).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[2].start_again().await;
    let lost_calls = statuses.iter().filter(|s| **s == 0).count();
    for gw in &nodes {
        let r = gw
            .chat_with_key(
                &key,
                json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", gw.log());
    }
    // Exact books: Redis charged exactly what the record holds (n3's last charges included,
    // which reached the record only when it started again), the top-up credited once. The
    // calls cut by the SIGKILL may or may not have been charged (the client saw no answer).
    let bank = quiesce(&nodes[0], "acme").await;
    let (charged, n) = sql_charges(&nodes[0], "acme").await;
    assert!(
        n >= ok + 3 && n <= ok + 3 + lost_calls,
        "{n} charges for {ok} + 3 calls served ({lost_calls} cut)"
    );
    assert_eq!(bank["spent"].nano(), charged, "{bank}");
    assert_eq!(bank["credited"].nano(), 50_000_000_000);
}

/// A node gone for good is removed from the registry with `tollgate cluster forget`; the
/// rebuild then goes on without it.
#[tokio::test]
async fn a_forgotten_node_no_longer_holds_up_a_rebuild() {
    let redis = Redis::start();
    let m = mock().await;
    let (mut nodes, key) = funded_fleet(&m, &redis.url(), "50").await;
    nodes[2].kill_now();
    flushall(&redis).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let call = |gw: &Gateway| {
        gw.chat_with_key(
            &key,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
    };
    assert_eq!(call(&nodes[0]).await.unwrap().status(), 503);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(&nodes[0].config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let listed = cli(&["cluster", "nodes"]);
    for n in ["n1", "n2", "n3"] {
        assert!(listed.contains(n), "{listed}");
    }
    cli(&["cluster", "forget", "n3"]);
    assert!(!cli(&["cluster", "nodes"]).contains("n3"));
    for gw in &nodes[..2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while call(gw).await.unwrap().status() != 200 {
            assert!(
                Instant::now() < deadline,
                "no rebuild after forget:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
