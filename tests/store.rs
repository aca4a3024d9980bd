#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The record's domains behave the same on SQLite and on PostgreSQL (issue 15): each behaviour
//! test runs against the embedded store and a real PostgreSQL started by the test.

mod common;

use common::{Credits, Postgres};
use tollgate::billing::usage::UsageEvent;
use tollgate::store::pg::PgStore;
use tollgate::store::sqlite::{NewKey, NewestFirst, Store, StoreError};
use tollgate::store::{Analytics, Codes, Directory, Ledger, Members, UsageLog, UserPatch};
use tollgate::tenancy::limits::Limits;
use tollgate::tenancy::{KeyId, TenantId};

fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    (dir, store)
}

fn new_key(tenant: TenantId, name: &str) -> NewKey {
    NewKey {
        tenant_id: tenant,
        name: name.into(),
        default_channel: "main".into(),
        allowed_channels: vec!["cheap".into()],
        allowed_models: vec!["gpt-4o-mini".into()],
        expires_at: None,
        quota_nano: Some(5_000),
        user_id: None,
        limits: Limits {
            rpm: Some(10),
            tpm: None,
        },
    }
}

async fn directory_behaviour(s: &dyn Directory, backend: &str) {
    let acme = s.create_tenant(" acme ").await.unwrap();
    assert_eq!(acme.name, "acme", "{backend}");
    assert!(
        matches!(s.create_tenant("acme").await, Err(StoreError::Conflict(_))),
        "{backend}"
    );
    assert!(
        matches!(s.create_tenant("  ").await, Err(StoreError::Invalid(_))),
        "{backend}"
    );
    let globex = s.create_tenant("Globex Corp").await.unwrap();
    let names: Vec<String> = s
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "Globex Corp"], "{backend}");
    assert_eq!(
        s.find_tenant("Globex Corp").await.unwrap().id,
        globex.id,
        "{backend}"
    );
    assert_eq!(
        s.find_tenant(&acme.id.0.to_string()).await.unwrap().name,
        "acme",
        "{backend}"
    );
    assert!(
        matches!(
            s.find_tenant("nobody").await,
            Err(StoreError::NotFound { what: "tenant", .. })
        ),
        "{backend}"
    );

    let g0 = s.key_generation().await.unwrap();
    let (key, plaintext) = s.create_key(&new_key(acme.id, "ci")).await.unwrap();
    assert!(plaintext.starts_with(&key.prefix), "{backend}");
    assert_eq!(key.tenant_name, "acme", "{backend}");
    assert_eq!(key.allowed_channels, ["cheap"], "{backend}");
    assert_eq!(key.allowed_models, ["gpt-4o-mini"], "{backend}");
    assert_eq!(
        (key.quota_nano, key.key_limits.rpm),
        (Some(5_000), Some(10)),
        "{backend}"
    );
    let g1 = s.key_generation().await.unwrap();
    assert!(g1 > g0, "{backend}: a new key moves the generation");
    let (other, _) = s.create_key(&new_key(globex.id, "other")).await.unwrap();
    assert!(
        matches!(
            s.create_key(&new_key(TenantId(9_999), "x")).await,
            Err(StoreError::NotFound { what: "tenant", .. })
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_key(&new_key(acme.id, " ")).await,
            Err(StoreError::Invalid(_))
        ),
        "{backend}"
    );

    let ids = |v: Vec<tollgate::tenancy::ApiKey>| v.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_keys(Some(acme.id)).await.unwrap()),
        [key.id],
        "{backend}"
    );
    assert_eq!(
        ids(s.list_keys(None).await.unwrap()),
        [key.id, other.id],
        "{backend}"
    );

    let snap = s.load_key_snapshot().await.unwrap();
    assert_eq!(
        snap.generation,
        s.key_generation().await.unwrap(),
        "{backend}"
    );
    let found = snap
        .by_hash
        .get(&tollgate::tenancy::keys::hash_key(&plaintext))
        .unwrap();
    assert_eq!(found.id, key.id, "{backend}");
    assert!(found.revoked_at.is_none(), "{backend}");

    let g2 = s.key_generation().await.unwrap();
    let revoked = s.revoke_key(key.id).await.unwrap();
    assert!(revoked.revoked_at.is_some(), "{backend}");
    assert!(
        s.key_generation().await.unwrap() > g2,
        "{backend}: a revocation moves the generation"
    );
    let again = s.revoke_key(key.id).await.unwrap();
    assert_eq!(
        again.revoked_at, revoked.revoked_at,
        "{backend}: revoking twice keeps the first time"
    );
    assert!(
        matches!(
            s.revoke_key(KeyId(9_999)).await,
            Err(StoreError::NotFound { what: "key", .. })
        ),
        "{backend}"
    );
    let snap = s.load_key_snapshot().await.unwrap();
    assert!(
        snap.by_hash
            .get(&tollgate::tenancy::keys::hash_key(&plaintext))
            .unwrap()
            .revoked_at
            .is_some(),
        "{backend}"
    );
    assert!(
        matches!(
            s.get_key(KeyId(9_999)).await,
            Err(StoreError::NotFound { what: "key", .. })
        ),
        "{backend}"
    );
}

#[tokio::test]
async fn the_directory_behaves_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    directory_behaviour(&lite, "sqlite").await;
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("directory"), 4)
        .await
        .unwrap();
    directory_behaviour(&store, "postgresql").await;
}

fn event(i: usize, tenant: TenantId, key: KeyId) -> UsageEvent {
    UsageEvent {
        request_id: format!("req_{i:06}"),
        // Spread over three hours and two days' boundary.
        ts_ms: 1_790_000_000_000 + (i as i64 % 3) * 3_600_000 + (i as i64 / 50) * 86_400_000,
        tenant_id: Some(tenant),
        key_id: Some(key),
        endpoint: "chat".into(),
        channel: Some(if i.is_multiple_of(2) { "main" } else { "cheap" }.into()),
        upstream: Some("main/a".into()),
        model_requested: Some(
            if i.is_multiple_of(5) {
                "gpt-4o"
            } else {
                "gpt-4o-mini"
            }
            .into(),
        ),
        model_used: Some("gpt-4o-mini-2024-07-18".into()),
        stream: i.is_multiple_of(3),
        status: if i.is_multiple_of(17) { 502 } else { 200 },
        prompt_tokens: 100 + i as u64,
        cached_tokens: (i % 4) as u64 * 10,
        completion_tokens: 20 + (i % 7) as u64,
        reasoning_tokens: (i % 2) as u64,
        cache_write_tokens: (i % 3) as u64,
        guardrails: i
            .is_multiple_of(11)
            .then(|| "email=2,keywords:codenames=1".into()),
        usage_source: "vendor".into(),
        attempts: 1,
        latency_ms: 40,
        ttft_ms: Some(12),
        cost_nano: 1_000 + i as i64 * 3,
        uncollected: 0,
        route_score: Some(0.25),
        ..Default::default()
    }
}

/// The roll-up tables' rows, sorted, as text (same shape from both stores).
fn lite_rollups(path: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT tenant_id, hour, key_id, user_id, group_id, model, channel, requests, errors, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens FROM usage_hourly",
        "SELECT tenant_id, dim, period, bucket, value, requests, errors, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens FROM usage_rollup",
    ] {
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap();
        out.extend(rows.map(|r| r.unwrap()));
    }
    out.sort();
    out
}

async fn pg_rollups(s: &PgStore) -> Vec<String> {
    let mut out: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', tenant_id, hour, key_id, user_id, group_id, model, channel, requests, errors, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens) FROM usage_hourly
         UNION ALL
         SELECT concat_ws('|', tenant_id, dim, period, bucket, value, requests, errors, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens) FROM usage_rollup",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    out.sort();
    out
}

#[tokio::test]
async fn usage_batches_are_stored_once_and_roll_up_the_same_on_both_stores() {
    let (dir, lite) = sqlite();
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("usage"), 4).await.unwrap();
    for (name, s, d) in [
        ("sqlite", &lite as &dyn UsageLog, &lite as &dyn Directory),
        (
            "postgresql",
            &store as &dyn UsageLog,
            &store as &dyn Directory,
        ),
    ] {
        let t = d.create_tenant("acme").await.unwrap();
        let (k, _) = d.create_key(&new_key(t.id, "k")).await.unwrap();
        let events: Vec<UsageEvent> = (0..150).map(|i| event(i, t.id, k.id)).collect();
        assert_eq!(s.record(&events[..100]).await.unwrap(), 100, "{name}");
        // The same batch again (a retried write) adds nothing; an overlapping one adds the rest.
        assert_eq!(s.record(&events[..100]).await.unwrap(), 0, "{name}");
        assert_eq!(s.record(&events[60..]).await.unwrap(), 50, "{name}");
        assert_eq!(s.record(&[]).await.unwrap(), 0, "{name}");
    }
    let a = lite_rollups(&dir.path().join("t.db"));
    let b = pg_rollups(&store).await;
    assert!(!a.is_empty());
    assert_eq!(a, b, "the roll-ups differ between the stores");
    // Every call once, with its charge.
    let (n, cost): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), SUM(cost_nano)::BIGINT FROM usage_events")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let want: i64 = (0..150).map(|i| 1_000 + i * 3).sum();
    assert_eq!((n, cost), (150, want));
    // What the guardrails found is kept as written, on both.
    let found: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM usage_events WHERE guardrails = 'email=2,keywords:codenames=1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let lite_found: i64 = rusqlite::Connection::open(dir.path().join("t.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM usage_events WHERE guardrails = 'email=2,keywords:codenames=1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((found, lite_found), (14, 14));
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let pg = Postgres::start();
    let url = pg.database("fleet");
    let starts = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PgStore::connect(&url, 2).await })
    });
    let stores: Vec<PgStore> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(stores[0].pool())
            .await
            .unwrap();
    let files = tollgate::store::pg::MIGRATOR.iter().count();
    assert_eq!(
        applied.len(),
        files,
        "each migration applied once: {applied:?}"
    );
    assert!(applied.iter().all(|(_, ok)| *ok));
    for s in &stores {
        assert_eq!(s.schema_version().await.unwrap(), applied.last().unwrap().0);
        assert_eq!(s.key_generation().await.unwrap(), 1);
    }
}

/// What one store sustains on the usage write path (the recorder's batches), in events per
/// second: `cargo test --release --test store -- --ignored --nocapture write_rate`. Results go to
/// bench/README.md; not a pass/fail test.
#[tokio::test]
#[ignore]
async fn write_rate() {
    let batch_size: usize = std::env::var("BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let batches_n: usize = 51_200 / batch_size;
    let (_dir, lite) = sqlite();
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("rate"), 4).await.unwrap();
    for (name, s, d) in [
        ("sqlite", &lite as &dyn UsageLog, &lite as &dyn Directory),
        (
            "postgresql",
            &store as &dyn UsageLog,
            &store as &dyn Directory,
        ),
    ] {
        let t = d.create_tenant("acme").await.unwrap();
        let (k, _) = d.create_key(&new_key(t.id, "k")).await.unwrap();
        // As a node writes them: the calls of the last minutes (one day partition), not the
        // 1,000 days `event` spreads its records over.
        let batches: Vec<Vec<UsageEvent>> = (0..batches_n)
            .map(|b| {
                (0..batch_size)
                    .map(|i| {
                        let n = b * batch_size + i;
                        let mut e = event(n, t.id, k.id);
                        e.ts_ms = 1_790_000_000_000 + n as i64 * 20;
                        e
                    })
                    .collect()
            })
            .collect();
        let t0 = std::time::Instant::now();
        let mut n = 0;
        for b in &batches {
            n += s.record(b).await.unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(n, batch_size * batches_n);
        eprintln!(
            "{name}: {n} usage records in batches of {batch_size}: {secs:.2} s, {:.0} records/s",
            n as f64 / secs
        );
        // The same without roll-ups (records of no tenant move none): the insert alone.
        let bare: Vec<Vec<UsageEvent>> = batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|e| UsageEvent {
                        request_id: format!("bare_{}", e.request_id),
                        tenant_id: None,
                        ..e.clone()
                    })
                    .collect()
            })
            .collect();
        let t0 = std::time::Instant::now();
        for b in &bare {
            s.record(b).await.unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("{name}: inserts alone: {:.0} records/s", n as f64 / secs);
    }
}

async fn members_behaviour(d: &dyn Directory, s: &dyn Members, backend: &str) {
    use tollgate::tenancy::{GroupId, Role, UserId};
    let acme = d.create_tenant("acme").await.unwrap();
    let other = d.create_tenant("other").await.unwrap();
    let eng = s
        .create_group(acme.id, " Engineering ", Some(1_000))
        .await
        .unwrap();
    assert_eq!(
        (eng.name.as_str(), eng.budget_nano),
        ("Engineering", Some(1_000)),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_group(acme.id, "Engineering", None).await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    let theirs = s.create_group(other.id, "Engineering", None).await.unwrap();
    assert_eq!(s.list_groups(acme.id).await.unwrap().len(), 1, "{backend}");

    let g0 = d.key_generation().await.unwrap();
    let ann = s
        .create_user(
            acme.id,
            " Ann@Example.COM ",
            "Ann",
            Role::Member,
            Some(eng.id),
            Some(500),
        )
        .await
        .unwrap();
    assert_eq!(
        (ann.email.as_str(), ann.group_id),
        ("ann@example.com", Some(eng.id)),
        "{backend}"
    );
    assert!(
        d.key_generation().await.unwrap() > g0,
        "{backend}: a user change moves the generation"
    );
    assert!(
        matches!(
            s.create_user(
                acme.id,
                "ann@example.com",
                "Again",
                Role::Member,
                None,
                None
            )
            .await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_user(acme.id, "no-at-sign", "X", Role::Member, None, None)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_user(acme.id, "op@example.com", "X", Role::Operator, None, None)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "{backend}"
    );
    // Another tenant's group is as missing as a group that does not exist.
    assert!(
        matches!(
            s.create_user(
                acme.id,
                "bob@example.com",
                "Bob",
                Role::Member,
                Some(theirs.id),
                None
            )
            .await,
            Err(StoreError::NotFound { what: "group", .. })
        ),
        "{backend}"
    );
    assert_eq!(s.get_user(ann.id).await.unwrap().name, "Ann", "{backend}");
    assert!(
        matches!(
            s.get_user(UserId(9_999)).await,
            Err(StoreError::NotFound { what: "user", .. })
        ),
        "{backend}"
    );

    let token = s.create_user_token(ann.id).await.unwrap();
    assert!(token.starts_with("tgu-"), "{backend}");
    let p = s.user_by_token(&token).await.unwrap().unwrap();
    assert_eq!(
        (p.user.id, p.tenant_name.as_str()),
        (ann.id, "acme"),
        "{backend}"
    );
    assert!(
        s.user_by_token("tgu-nothing").await.unwrap().is_none(),
        "{backend}"
    );

    let patch = UserPatch {
        role: Some(Role::TenantAdmin),
        group: Some(None),
        quota_nano: Some(None),
        disabled: None,
    };
    let ann2 = s.update_user(ann.id, &patch).await.unwrap();
    assert_eq!(
        (ann2.role, ann2.group_id, ann2.quota_nano),
        (Role::TenantAdmin, None, None),
        "{backend}"
    );
    let bad = UserPatch {
        group: Some(Some(GroupId(theirs.id.0))),
        ..Default::default()
    };
    assert!(
        matches!(
            s.update_user(ann.id, &bad).await,
            Err(StoreError::NotFound { what: "group", .. })
        ),
        "{backend}"
    );
    // Disabling revokes the user's tokens.
    let off = UserPatch {
        disabled: Some(true),
        ..Default::default()
    };
    assert!(
        s.update_user(ann.id, &off)
            .await
            .unwrap()
            .disabled_at
            .is_some(),
        "{backend}"
    );
    assert!(
        s.user_by_token(&token).await.unwrap().is_none(),
        "{backend}"
    );
    let on = UserPatch {
        disabled: Some(false),
        ..Default::default()
    };
    assert!(
        s.update_user(ann.id, &on)
            .await
            .unwrap()
            .disabled_at
            .is_none(),
        "{backend}"
    );
    assert!(
        s.user_by_token(&token).await.unwrap().is_none(),
        "{backend}: re-enabling does not revive old tokens"
    );

    let invite = s
        .create_invite(acme.id, "Cy@Example.com", Role::Viewer, Some(eng.id), 3_600)
        .await
        .unwrap();
    let (cy, cy_token) = s.accept_invite(&invite, " Cy ").await.unwrap();
    assert_eq!(
        (cy.email.as_str(), cy.name.as_str(), cy.role, cy.group_id),
        ("cy@example.com", "Cy", Role::Viewer, Some(eng.id)),
        "{backend}"
    );
    assert_eq!(
        s.user_by_token(&cy_token).await.unwrap().unwrap().user.id,
        cy.id,
        "{backend}"
    );
    assert!(
        matches!(
            s.accept_invite(&invite, "Cy").await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.accept_invite("inv-nothing", "X").await,
            Err(StoreError::NotFound { .. })
        ),
        "{backend}"
    );
    let expired = s
        .create_invite(acme.id, "dee@example.com", Role::Member, None, -1)
        .await
        .unwrap();
    assert!(
        matches!(
            s.accept_invite(&expired, "Dee").await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    let names: Vec<String> = s
        .list_users(acme.id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.email)
        .collect();
    assert_eq!(names, ["ann@example.com", "cy@example.com"], "{backend}");

    assert_eq!(s.router_override(acme.id).await.unwrap(), None, "{backend}");
    s.set_router_override(acme.id, Some(r#"{"mode":"cheap"}"#))
        .await
        .unwrap();
    assert_eq!(
        s.router_override(acme.id).await.unwrap().as_deref(),
        Some(r#"{"mode":"cheap"}"#),
        "{backend}"
    );
    s.set_router_override(acme.id, None).await.unwrap();
    assert_eq!(s.router_override(acme.id).await.unwrap(), None, "{backend}");
    assert!(
        matches!(
            s.router_override(TenantId(9_999)).await,
            Err(StoreError::NotFound { .. })
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.set_router_override(TenantId(9_999), None).await,
            Err(StoreError::NotFound { .. })
        ),
        "{backend}"
    );
}

#[tokio::test]
async fn members_behave_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    members_behaviour(&lite, &lite, "sqlite").await;
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("members"), 4).await.unwrap();
    members_behaviour(&store, &store, "postgresql").await;
}

async fn ledger_behaviour(s: &dyn LedgerBoth, backend: &str) {
    use tollgate::billing::ledger::{Account, EntryKind};
    use tollgate::store::sqlite::{Credited, IdempotencyKey, LimitSubject};
    use tollgate::tenancy::limits::LimitsPatch;
    use tollgate::tenancy::QuotaPeriod;
    let acme = s.create_tenant("acme").await.unwrap();
    let globex = s.create_tenant("globex").await.unwrap();
    let (k, _) = s.create_key(&new_key(acme.id, "k")).await.unwrap();

    let top = s
        .credit(
            acme.id,
            EntryKind::TopUp,
            1_000_000,
            Some("op"),
            Some("first"),
            "topup:1",
        )
        .await
        .unwrap();
    assert_eq!(
        (top.amount, top.actor.as_deref()),
        (1_000_000, Some("op")),
        "{backend}"
    );
    assert!(
        matches!(
            s.credit(acme.id, EntryKind::TopUp, 5, None, None, "topup:1")
                .await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}: an entry id is used once"
    );
    let credits = s.credits_after(0, 100).await.unwrap();
    assert_eq!(credits.len(), 1, "{backend}");
    assert_eq!(
        s.last_credit_seq().await.unwrap(),
        credits[0].seq,
        "{backend}"
    );
    // Cluster mode's registry of running nodes (a bank rebuild waits for each).
    assert!(s.cluster_nodes().await.unwrap().is_empty(), "{backend}");
    s.set_cluster_node("n1", Some(100)).await.unwrap();
    s.set_cluster_node("n_2", Some(200)).await.unwrap();
    s.set_cluster_node("n1", Some(150)).await.unwrap();
    assert_eq!(
        s.cluster_nodes().await.unwrap(),
        [("n1".to_string(), 150), ("n_2".to_string(), 200)],
        "{backend}"
    );
    s.set_cluster_node("n1", None).await.unwrap();
    assert_eq!(
        s.cluster_nodes().await.unwrap(),
        [("n_2".to_string(), 200)],
        "{backend}"
    );
    assert!(
        matches!(
            s.credit(TenantId(9_999), EntryKind::TopUp, 5, None, None, "x")
                .await,
            Err(StoreError::NotFound { what: "tenant", .. })
        ),
        "{backend}"
    );
    s.credit(globex.id, EntryKind::Grant, 7, None, None, "grant:g")
        .await
        .unwrap();

    let idem = IdempotencyKey {
        scope: "topup",
        key: "abc".into(),
        fingerprint: "f1".into(),
    };
    let Credited::Committed(first) = s
        .credit_idempotent(acme.id, EntryKind::TopUp, 500, None, None, &idem)
        .await
        .unwrap()
    else {
        panic!("{backend}: first use commits")
    };
    match s
        .credit_idempotent(acme.id, EntryKind::TopUp, 500, None, None, &idem)
        .await
        .unwrap()
    {
        Credited::Replay(r) => {
            assert_eq!(r.entry_ids, [first[0].id.clone()], "{backend}");
            assert_eq!(r.fingerprint, "f1", "{backend}");
        }
        Credited::Committed(_) => panic!("{backend}: a key used twice commits twice"),
    }
    // The same key on another tenant is another key.
    assert!(
        matches!(
            s.credit_idempotent(globex.id, EntryKind::TopUp, 1, None, None, &idem)
                .await
                .unwrap(),
            Credited::Committed(_)
        ),
        "{backend}"
    );
    s.answer_idempotent(acme.id, "topup", "abc", 201, "{\"first\":true}")
        .await
        .unwrap();
    s.answer_idempotent(acme.id, "topup", "abc", 500, "second")
        .await
        .unwrap();
    let rec = s
        .idempotent_record(acme.id, "topup", "abc")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.answer,
        Some((201, "{\"first\":true}".to_string())),
        "{backend}: the first answer stays"
    );
    assert!(
        s.idempotent_record(acme.id, "topup", "nope")
            .await
            .unwrap()
            .is_none(),
        "{backend}"
    );

    let ids = vec![
        first[0].id.clone(),
        "missing".to_string(),
        "topup:1".to_string(),
    ];
    let got: Vec<String> = s
        .entries_by_id(acme.id, &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        got,
        [first[0].id.clone(), "topup:1".to_string()],
        "{backend}"
    );
    assert!(
        s.entries_by_id(globex.id, &ids).await.unwrap().is_empty(),
        "{backend}: another tenant's entries are not found"
    );

    // Charges are usage records; yesterday's do not count against a daily quota period.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut charges = Vec::new();
    for i in 0..5usize {
        let mut e = event(i, acme.id, k.id);
        e.ts_ms = if i == 0 {
            now - 2 * 86_400_000
        } else {
            now - i as i64
        };
        e.user_id = None;
        charges.push(e);
    }
    s.record(&charges).await.unwrap();
    let charged: i64 = charges.iter().map(|e| e.cost_nano).sum();
    let totals = s.ledger_totals().await.unwrap();
    let t = totals.iter().find(|t| t.tenant_id == acme.id).unwrap();
    assert_eq!((t.credited, t.charged), (1_000_500, charged), "{backend}");
    let credits = s.credits_after(0, 10).await.unwrap();
    assert_eq!(credits.len(), 4, "{backend}");
    assert!(credits.windows(2).all(|w| w[0].seq < w[1].seq), "{backend}");
    assert_eq!(
        s.credits_after(credits[1].seq, 1).await.unwrap()[0].seq,
        credits[2].seq,
        "{backend}"
    );
    assert_eq!(
        s.tenant_record_upto(acme.id, credits[0].seq).await.unwrap(),
        (1_000_000, charged),
        "{backend}"
    );
    assert_eq!(
        s.spent_by(acme.id, Account::Key(k.id), 0).await.unwrap(),
        charged,
        "{backend}"
    );
    assert_eq!(
        s.spent_by(acme.id, Account::Key(k.id), now - 86_400_000)
            .await
            .unwrap(),
        charged - charges[0].cost_nano,
        "{backend}"
    );
    let spend = |v: Vec<(TenantId, Account, i64)>| {
        v.into_iter()
            .find(|(t, a, _)| *t == acme.id && *a == Account::Key(k.id))
            .map(|x| x.2)
    };
    assert_eq!(
        spend(s.account_spend().await.unwrap()),
        Some(charged),
        "{backend}"
    );
    s.set_quota_period(acme.id, QuotaPeriod::Day).await.unwrap();
    assert_eq!(
        spend(s.account_spend().await.unwrap()),
        Some(charged - charges[0].cost_nano),
        "{backend}"
    );
    assert_eq!(
        s.get_key(k.id).await.unwrap().quota_period,
        QuotaPeriod::Day,
        "{backend}"
    );
    assert!(
        matches!(
            s.set_quota_period(TenantId(9_999), QuotaPeriod::Day).await,
            Err(StoreError::NotFound { .. })
        ),
        "{backend}"
    );

    // The statement: every entry once, in time order, with the running balance.
    let st = s.ledger_statement(acme.id).await.unwrap();
    assert_eq!(st.len(), 2 + 5, "{backend}");
    assert_eq!(st.last().unwrap().1, 1_000_500 - charged, "{backend}");
    assert!(
        st.windows(2)
            .all(|w| w[0].0.created_ms <= w[1].0.created_ms),
        "{backend}"
    );
    assert_eq!(
        st.iter()
            .filter(|(e, _)| e.kind == EntryKind::Charge)
            .count(),
        5,
        "{backend}"
    );
    assert_eq!(
        s.balance_before(acme.id, i64::MAX).await.unwrap(),
        1_000_500 - charged,
        "{backend}"
    );
    assert_eq!(
        s.balance_before(acme.id, now - 86_400_000).await.unwrap(),
        -charges[0].cost_nano,
        "{backend}"
    );
    // Paged two rows at a time, it is the same statement.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .statement_page(acme.id, 0, i64::MAX, after, 2)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().pos);
        paged.extend(page);
    }
    let paged_ids: Vec<String> = paged.iter().map(|r| r.entry.id.clone()).collect();
    let all_ids: Vec<String> = st.iter().map(|(e, _)| e.id.clone()).collect();
    assert_eq!(paged_ids, all_ids, "{backend}");
    let call = paged.iter().find_map(|r| r.call.clone()).unwrap();
    assert_eq!(call.model.as_deref(), Some("gpt-4o"), "{backend}");

    // Limits: a patch changes what it names; `Some(None)` clears.
    let l = s
        .set_limits(
            LimitSubject::Key(k.id),
            LimitsPatch {
                rpm: Some(Some(7)),
                tpm: Some(Some(1_000)),
            },
        )
        .await
        .unwrap();
    assert_eq!((l.rpm, l.tpm), (Some(7), Some(1_000)), "{backend}");
    let l = s
        .set_limits(
            LimitSubject::Key(k.id),
            LimitsPatch {
                rpm: Some(None),
                tpm: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((l.rpm, l.tpm), (None, Some(1_000)), "{backend}");
    assert_eq!(
        s.get_key(k.id).await.unwrap().key_limits.tpm,
        Some(1_000),
        "{backend}"
    );
    let t = s
        .set_limits(
            LimitSubject::Tenant(acme.id),
            LimitsPatch {
                rpm: Some(Some(100)),
                tpm: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(t.rpm, Some(100), "{backend}");
    assert!(
        matches!(
            s.set_limits(
                LimitSubject::User(tollgate::tenancy::UserId(9_999)),
                LimitsPatch::default()
            )
            .await,
            Err(StoreError::NotFound { what: "user", .. })
        ),
        "{backend}"
    );
    // Money in, newest first, in pages (charges never among it), on a tenant of its own.
    let initech = s.create_tenant("initech").await.unwrap();
    for (kind, id) in [(EntryKind::TopUp, "i:1"), (EntryKind::Grant, "i:2")] {
        s.credit(initech.id, kind, 7, None, None, id).await.unwrap();
    }
    use tollgate::store::sqlite::NewestFirst;
    let first = s
        .money_entries(initech.id, NewestFirst::latest(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "{backend}");
    assert_eq!(first[0].1.id, "i:2", "{backend}");
    let rest = s
        .money_entries(
            initech.id,
            NewestFirst {
                before: Some(first[0].0),
                ..NewestFirst::latest(10)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(),
        ["i:1"],
        "{backend}"
    );
    let range = NewestFirst {
        from: 0,
        to: 1,
        ..NewestFirst::latest(10)
    };
    assert!(s.money_entries(initech.id, range).await.unwrap().is_empty());
}

/// The domains a ledger test needs, on one store.
trait LedgerBoth: Directory + Ledger + UsageLog {}
impl<T: Directory + Ledger + UsageLog> LedgerBoth for T {}

#[tokio::test]
async fn the_ledger_behaves_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    ledger_behaviour(&lite, "sqlite").await;
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("ledger"), 8).await.unwrap();
    ledger_behaviour(&store, "postgresql").await;
}

/// Ten requests with one idempotency key at once, on a pool of connections (as on several
/// nodes): one commits, the others are replays of it.
#[tokio::test]
async fn concurrent_uses_of_one_idempotency_key_commit_once_on_postgresql() {
    use tollgate::billing::ledger::EntryKind;
    use tollgate::store::sqlite::{Credited, IdempotencyKey};
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("idem"), 10).await.unwrap();
    let t = store.create_tenant("acme").await.unwrap();
    let runs = (0..10).map(|_| {
        let s = store.clone();
        tokio::spawn(async move {
            let idem = IdempotencyKey {
                scope: "topup",
                key: "same".into(),
                fingerprint: "f".into(),
            };
            s.credit_idempotent(t.id, EntryKind::TopUp, 100, None, None, &idem)
                .await
                .unwrap()
        })
    });
    let outcomes = futures_util::future::join_all(runs).await;
    let committed = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), Credited::Committed(_)))
        .count();
    assert_eq!(committed, 1);
    let totals = store.ledger_totals().await.unwrap();
    assert_eq!(totals[0].credited, 100);
}

trait CodesBoth: Directory + Ledger + Codes {}
impl<T: Directory + Ledger + Codes> CodesBoth for T {}

async fn codes_behaviour(s: &dyn CodesBoth, backend: &str) {
    use tollgate::billing::ledger::EntryKind;
    use tollgate::store::sqlite::{Credited, IdempotencyKey, PromoBonus};
    let acme = s.create_tenant("acme").await.unwrap();
    let globex = s.create_tenant("globex").await.unwrap();

    let p = s
        .create_promo(" spring-25 ", PromoBonus::Percent(2_500), None, Some(1))
        .await
        .unwrap();
    assert_eq!(
        (p.code.as_str(), p.bonus, p.uses),
        ("SPRING-25", PromoBonus::Percent(2_500), 0),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_promo("SPRING-25", PromoBonus::Fixed(1), None, None)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_promo("bad code!", PromoBonus::Fixed(1), None, None)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.create_promo("ZERO", PromoBonus::Fixed(0), None, None)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "{backend}"
    );
    s.create_promo("WELCOME", PromoBonus::Fixed(7_000), None, None)
        .await
        .unwrap();
    s.create_promo("OLD", PromoBonus::Fixed(1), Some(1), None)
        .await
        .unwrap();

    // A top-up with a 25% bonus (rounded half away from zero), once per tenant, capped at one use.
    let Credited::Committed(v) = s
        .top_up(
            acme.id,
            1_000_002,
            Some("spring-25"),
            Some("op"),
            Some("pay"),
            "topup:a1",
            None,
        )
        .await
        .unwrap()
    else {
        panic!("{backend}")
    };
    assert_eq!(
        v.iter().map(|e| (e.kind, e.amount)).collect::<Vec<_>>(),
        [(EntryKind::TopUp, 1_000_002), (EntryKind::Promo, 250_001)],
        "{backend}"
    );
    assert!(
        matches!(
            s.top_up(
                globex.id,
                10,
                Some("SPRING-25"),
                None,
                None,
                "topup:g1",
                None
            )
            .await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}: the campaign's one use is taken"
    );
    // A failed top-up commits nothing, not even its top-up entry.
    assert!(
        s.entries_by_id(globex.id, &["topup:g1".to_string()])
            .await
            .unwrap()
            .is_empty(),
        "{backend}"
    );
    assert!(
        matches!(
            s.claim_fixed_promo(acme.id, "spring-25", None).await,
            Err(StoreError::Conflict(_) | StoreError::Invalid(_))
        ),
        "{backend}"
    );
    let w = s
        .claim_fixed_promo(acme.id, "welcome", Some("admin"))
        .await
        .unwrap();
    assert_eq!((w.kind, w.amount), (EntryKind::Promo, 7_000), "{backend}");
    assert!(
        matches!(
            s.claim_fixed_promo(acme.id, "WELCOME", None).await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}: once per tenant"
    );
    assert_eq!(
        s.claim_fixed_promo(globex.id, "WELCOME", None)
            .await
            .unwrap()
            .amount,
        7_000,
        "{backend}"
    );
    assert!(
        matches!(
            s.claim_fixed_promo(acme.id, "OLD", None).await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}: expired"
    );
    assert!(
        matches!(
            s.claim_fixed_promo(acme.id, "NOPE", None).await,
            Err(StoreError::NotFound { .. })
        ),
        "{backend}"
    );
    let uses: Vec<(String, i64)> = s
        .list_promos()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.code, p.uses))
        .collect();
    assert_eq!(
        uses,
        [
            ("SPRING-25".to_string(), 1),
            ("WELCOME".to_string(), 2),
            ("OLD".to_string(), 0)
        ],
        "{backend}"
    );

    // Idempotent top-ups: a key used twice commits once.
    let idem = IdempotencyKey {
        scope: "topup",
        key: "pay-1".into(),
        fingerprint: "f".into(),
    };
    assert!(
        matches!(
            s.top_up(globex.id, 50, None, None, None, "unused", Some(&idem))
                .await
                .unwrap(),
            Credited::Committed(_)
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.top_up(globex.id, 50, None, None, None, "unused", Some(&idem))
                .await
                .unwrap(),
            Credited::Replay(_)
        ),
        "{backend}"
    );

    // Redemption codes: each once, whoever asks.
    let codes = s.create_codes("batch-1", 3_000, 3, None).await.unwrap();
    assert_eq!(codes.len(), 3, "{backend}");
    assert!(
        matches!(
            s.create_codes("x", 0, 1, None).await,
            Err(StoreError::Invalid(_))
        ),
        "{backend}"
    );
    let r = s.redeem(&codes[0], acme.id, Some("ann")).await.unwrap();
    assert_eq!(
        (r.kind, r.amount),
        (EntryKind::Redemption, 3_000),
        "{backend}"
    );
    assert!(
        matches!(
            s.redeem(&codes[0], globex.id, None).await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    assert!(
        matches!(
            s.redeem("RC-nothing", acme.id, None).await,
            Err(StoreError::NotFound { .. })
        ),
        "{backend}"
    );
    let expired = s.create_codes("batch-2", 5, 1, Some(1)).await.unwrap();
    assert!(
        matches!(
            s.redeem(&expired[0], acme.id, None).await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}"
    );
    let states: Vec<&str> = s
        .list_codes(Some("batch-1"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(states, ["redeemed", "unused", "unused"], "{backend}");
    assert_eq!(s.list_codes(None).await.unwrap().len(), 4, "{backend}");
    assert_eq!(
        s.list_codes(Some("batch-2")).await.unwrap()[0].state,
        "expired",
        "{backend}"
    );

    let totals = s.ledger_totals().await.unwrap();
    let credited = |t: TenantId| {
        totals
            .iter()
            .find(|x| x.tenant_id == t)
            .map_or(0, |x| x.credited)
    };
    assert_eq!(
        credited(acme.id),
        1_000_002 + 250_001 + 7_000 + 3_000,
        "{backend}"
    );
    assert_eq!(credited(globex.id), 7_000 + 50, "{backend}");
}

#[tokio::test]
async fn codes_and_promotions_behave_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    codes_behaviour(&lite, "sqlite").await;
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("codes"), 4).await.unwrap();
    codes_behaviour(&store, "postgresql").await;
}

/// Twenty tenants' redemptions of one code at once, and of one capped campaign: once each.
#[tokio::test]
async fn concurrent_redemptions_and_claims_credit_once_on_postgresql() {
    use tollgate::store::sqlite::PromoBonus;
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("race"), 20).await.unwrap();
    let mut tenants = Vec::new();
    for i in 0..20 {
        tenants.push(store.create_tenant(&format!("t{i}")).await.unwrap().id);
    }
    let code = store
        .create_codes("b", 100, 1, None)
        .await
        .unwrap()
        .remove(0);
    store
        .create_promo("CAP3", PromoBonus::Fixed(10), None, Some(3))
        .await
        .unwrap();
    let runs = tenants.iter().map(|t| {
        let (s, code, t) = (store.clone(), code.clone(), *t);
        tokio::spawn(async move {
            let r = s.redeem(&code, t, None).await.is_ok();
            let c = s.claim_fixed_promo(t, "CAP3", None).await.is_ok();
            (r, c)
        })
    });
    let outcomes: Vec<(bool, bool)> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(outcomes.iter().filter(|o| o.0).count(), 1, "one redemption");
    assert_eq!(
        outcomes.iter().filter(|o| o.1).count(),
        3,
        "the campaign's cap"
    );
    let credited: i64 = store
        .ledger_totals()
        .await
        .unwrap()
        .iter()
        .map(|t| t.credited)
        .sum();
    assert_eq!(credited, 100 + 3 * 10);
}

trait AnalyticsBoth: Directory + Members + UsageLog + Analytics {}
impl<T: Directory + Members + UsageLog + Analytics> AnalyticsBoth for T {}

/// Loads the same month of calls into a store: two keys (one a member's), three models, two
/// channels, some routed, over 40 days; returns the tenant, the member and a time range.
async fn load_month(s: &dyn AnalyticsBoth) -> (TenantId, tollgate::tenancy::UserId) {
    use tollgate::tenancy::Role;
    let t = s.create_tenant("acme").await.unwrap();
    let g = s.create_group(t.id, "eng", None).await.unwrap();
    let u = s
        .create_user(
            t.id,
            "ann@example.com",
            "Ann",
            Role::Member,
            Some(g.id),
            None,
        )
        .await
        .unwrap();
    let (k1, _) = s.create_key(&new_key(t.id, "ops")).await.unwrap();
    let mut nk = new_key(t.id, "ann");
    nk.user_id = Some(u.id);
    let (k2, _) = s.create_key(&nk).await.unwrap();
    let events: Vec<UsageEvent> = (0..2_000usize)
        .map(|i| {
            let mut e = event(i, t.id, if i % 3 == 0 { k2.id } else { k1.id });
            e.ts_ms = 1_790_000_000_000 + (i as i64) * 1_733_000; // ~40 days
            if i % 3 == 0 {
                e.user_id = Some(u.id);
                e.group_id = Some(g.id);
            }
            e.model_requested = Some(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"][i % 3].into());
            if i % 4 == 0 {
                e.route_tier = Some(if i % 8 == 0 { "light" } else { "strong" }.into());
                e.baseline_cost_nano = Some(e.cost_nano * 3);
            }
            e
        })
        .collect();
    for chunk in events.chunks(300) {
        s.record(chunk).await.unwrap();
    }
    (t.id, u.id)
}

#[tokio::test]
async fn analytics_answer_the_same_on_sqlite_and_postgresql() {
    use tollgate::store::sqlite::{AnalyticsQuery, Dimension, Granularity, UsageQuery};
    let (_dir, lite) = sqlite();
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("analytics"), 4)
        .await
        .unwrap();
    let (t, u) = load_month(&lite).await;
    let (t2, u2) = load_month(&store).await;
    assert_eq!((t, u), (t2, u2));
    let start = 1_790_000_000i64;
    let mut compared = 0;
    for (from, to) in [
        (start, start + 41 * 86_400),
        (start + 7_777, start + 3 * 86_400 + 11),
        (start + 86_400, start + 86_400 + 3_600),
    ] {
        for granularity in [Granularity::Hour, Granularity::Day, Granularity::Total] {
            for group_by in [
                Dimension::None,
                Dimension::User,
                Dimension::Group,
                Dimension::Key,
                Dimension::Model,
                Dimension::Channel,
            ] {
                for user in [None, Some(u)] {
                    let q = AnalyticsQuery {
                        tenant: t,
                        from,
                        to,
                        granularity,
                        group_by,
                        user,
                        day_offset: 0,
                    };
                    let a = Analytics::analytics(&lite, &q).await.unwrap();
                    let b = Analytics::analytics(&store, &q).await.unwrap();
                    assert!(!a.is_empty() || granularity == Granularity::Hour, "{q:?}");
                    assert_eq!(a, b, "{q:?}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 108);
    // Days of the viewer's zone: buckets start at its midnight, and hold what UTC days hold.
    for day_offset in [8 * 3600, -5 * 3600] {
        for group_by in [Dimension::None, Dimension::Model] {
            for user in [None, Some(u)] {
                let q = AnalyticsQuery {
                    tenant: t,
                    from: start,
                    to: start + 41 * 86_400,
                    granularity: Granularity::Day,
                    group_by,
                    user,
                    day_offset,
                };
                let a = Analytics::analytics(&lite, &q).await.unwrap();
                let b = Analytics::analytics(&store, &q).await.unwrap();
                assert_eq!(a, b, "{q:?}");
                assert!(a.len() > 1, "{q:?}");
                assert!(a
                    .iter()
                    .all(|r| (r.bucket + day_offset).rem_euclid(86_400) == 0));
                let utc = Analytics::analytics(
                    &lite,
                    &AnalyticsQuery {
                        day_offset: 0,
                        ..q.clone()
                    },
                )
                .await
                .unwrap();
                let sum = |rows: &[tollgate::store::sqlite::AnalyticsRow]| {
                    (
                        rows.iter().map(|r| r.requests).sum::<i64>(),
                        rows.iter().map(|r| r.cost_nano).sum::<i64>(),
                    )
                };
                assert_eq!(sum(&a), sum(&utc), "{q:?}");
            }
        }
    }
    let totals = Analytics::analytics(
        &store,
        &AnalyticsQuery {
            tenant: t,
            from: 0,
            to: i64::MAX / 2,
            granularity: Granularity::Total,
            group_by: Dimension::None,
            user: None,
            day_offset: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(totals[0].requests, 2_000);

    let a = Analytics::routing_savings(&lite, t, 0, i64::MAX)
        .await
        .unwrap();
    let b = Analytics::routing_savings(&store, t, 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(
        a.iter()
            .map(|r| (r.tier.clone(), r.calls, r.cost_nano, r.baseline_cost_nano))
            .collect::<Vec<_>>(),
        b.iter()
            .map(|r| (r.tier.clone(), r.calls, r.cost_nano, r.baseline_cost_nano))
            .collect::<Vec<_>>()
    );
    assert_eq!(b.iter().map(|r| r.calls).sum::<i64>(), 500);

    // Pages of 97 records, newest first, filtered by user and model, walk the same records.
    for (user, model) in [
        (None, None),
        (Some(u), None),
        (None, Some("gpt-4o".to_string())),
        (Some(u), Some("gpt-4o".to_string())),
    ] {
        let mut walked = Vec::new();
        for s in [&lite as &dyn Analytics, &store as &dyn Analytics] {
            let mut ids = Vec::new();
            let mut before = None;
            loop {
                let q = UsageQuery {
                    tenant: Some(t),
                    user,
                    model: model.clone(),
                    from_ms: 1_790_000_000_000 + 86_400_000,
                    to_ms: i64::MAX,
                    before,
                    limit: 97,
                };
                let page = s.usage_page(&q).await.unwrap();
                if page.is_empty() {
                    break;
                }
                before = Some(page.last().unwrap().0);
                ids.extend(
                    page.into_iter().map(|(_, e)| {
                        (e.request_id, e.ts_ms, e.cost_nano, e.user_id, e.route_tier)
                    }),
                );
            }
            assert!(ids.windows(2).all(|w| w[0].1 >= w[1].1), "newest first");
            walked.push(ids);
        }
        assert!(!walked[0].is_empty());
        assert_eq!(walked[0], walked[1], "{user:?} {model:?}");
    }
}

/// `tollgate store migrate`: an embedded installation's record moves into PostgreSQL whole
/// (the real command, on a store filled through the library), and both stores then answer alike.
#[tokio::test]
async fn an_embedded_store_migrates_into_postgresql_and_answers_alike() {
    use tollgate::billing::ledger::EntryKind;
    use tollgate::store::sqlite::{AnalyticsQuery, Dimension, Granularity, PromoBonus};
    let (dir, lite) = sqlite();
    let (t, u) = load_month(&lite).await;
    Ledger::credit(
        &lite,
        t,
        EntryKind::TopUp,
        9_000_000,
        Some("op"),
        None,
        "topup:m1",
    )
    .await
    .unwrap();
    Codes::create_promo(&lite, "WELCOME", PromoBonus::Fixed(5), None, None)
        .await
        .unwrap();
    Codes::claim_fixed_promo(&lite, t, "WELCOME", None)
        .await
        .unwrap();
    let codes = Codes::create_codes(&lite, "b", 77, 2, None).await.unwrap();
    Codes::redeem(&lite, &codes[0], t, None).await.unwrap();
    let token = Members::create_user_token(&lite, u).await.unwrap();
    let pg = Postgres::start();
    let url = pg.database("moved");
    let path = dir.path().join("t.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["store", "migrate", "--from"])
        .arg(&path)
        .args(["--to", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("usage_events"), "{stdout}");
    assert!(stdout.contains("the same in both stores"), "{stdout}");

    let store = PgStore::connect(&url, 4).await.unwrap();
    // Keys still authenticate (their hashes moved), with everything the snapshot carries.
    let a = Directory::load_key_snapshot(&lite).await.unwrap();
    let b = Directory::load_key_snapshot(&store).await.unwrap();
    assert_eq!(a.generation, b.generation);
    let mut ka: Vec<_> = a
        .by_hash
        .iter()
        .map(|(h, k)| (*h, k.id, k.name.clone(), k.user_id, k.key_limits.rpm))
        .collect();
    let mut kb: Vec<_> = b
        .by_hash
        .iter()
        .map(|(h, k)| (*h, k.id, k.name.clone(), k.user_id, k.key_limits.rpm))
        .collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    assert_eq!(
        Members::user_by_token(&store, &token)
            .await
            .unwrap()
            .unwrap()
            .user
            .id,
        u
    );
    // The books: statement, balances, analytics.
    let sa = Ledger::ledger_statement(&lite, t).await.unwrap();
    let sb = Ledger::ledger_statement(&store, t).await.unwrap();
    assert_eq!(sa.len(), sb.len());
    assert!(sa
        .iter()
        .zip(&sb)
        .all(|(x, y)| x.0.id == y.0.id && x.1 == y.1));
    let q = AnalyticsQuery {
        tenant: t,
        from: 0,
        to: i64::MAX / 2,
        granularity: Granularity::Day,
        group_by: Dimension::Model,
        user: None,
        day_offset: 0,
    };
    assert_eq!(
        Analytics::analytics(&lite, &q).await.unwrap(),
        Analytics::analytics(&store, &q).await.unwrap()
    );
    let states: Vec<&str> = Codes::list_codes(&store, Some("b"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(states, ["redeemed", "unused"]);
    assert!(matches!(
        Codes::redeem(&store, &codes[0], t, None).await,
        Err(StoreError::Conflict(_))
    ));
    // Ids go on after the copied ones.
    let next = Directory::create_tenant(&store, "after").await.unwrap();
    assert!(next.id.0 > t.0);
    // A second run into a database that holds tenants is refused.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["store", "migrate", "--from"])
        .arg(&path)
        .args(["--to", &url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds tenants"));
}

/// What the books say about a tenant, everything retention must leave unchanged.
async fn books(
    s: &dyn LedgerBoth,
    t: TenantId,
    k: KeyId,
) -> (i64, i64, i64, i64, Vec<(i64, String, i64)>, i64, i64) {
    use tollgate::billing::ledger::Account;
    use tollgate::tenancy::{GroupId, UserId};
    let charged = Ledger::ledger_totals(s)
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.tenant_id == t)
        .unwrap()
        .charged;
    let by_key = Ledger::spent_by(s, t, Account::Key(k), 0).await.unwrap();
    let by_user = Ledger::spent_by(s, t, Account::User(UserId(7)), 0)
        .await
        .unwrap();
    let by_group = Ledger::spent_by(s, t, Account::Group(GroupId(3)), 0)
        .await
        .unwrap();
    let mut accounts: Vec<(i64, String, i64)> = Ledger::account_spend(s)
        .await
        .unwrap()
        .into_iter()
        .map(|(t, a, v)| (t.0, format!("{a:?}"), v))
        .collect();
    accounts.sort();
    let statement = Ledger::ledger_statement(s, t).await.unwrap();
    let closing = statement.last().unwrap().1;
    // The statement read in pages ends at the same balance.
    let mut paged = Ledger::balance_before(s, t, 0).await.unwrap();
    let mut after = None;
    loop {
        let page = Ledger::statement_page(s, t, 0, i64::MAX, after, 7)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.pos);
        paged += page.iter().map(|r| r.entry.amount).sum::<i64>();
    }
    assert_eq!(paged, closing);
    (charged, by_key, by_user, by_group, accounts, closing, paged)
}

/// One retention pass on the named store, archiving into `archive`.
async fn prune(
    lite: &Store,
    pg: &PgStore,
    name: &str,
    cutoff: i64,
    archive: &std::path::Path,
) -> tollgate::store::retention::PruneReport {
    if name == "sqlite" {
        lite.prune_usage(cutoff, Some(archive), "test", 1_000_000)
            .unwrap()
    } else {
        pg.prune_usage(cutoff, Some(archive), "test").await.unwrap()
    }
}

#[tokio::test]
async fn pruned_usage_is_archived_and_the_books_do_not_move() {
    use tollgate::billing::ledger::EntryKind;
    use tollgate::store::retention::{day_of, read_archive};
    use tollgate::tenancy::{GroupId, UserId};
    let (dir, lite) = sqlite();
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("retention"), 4)
        .await
        .unwrap();
    for (name, s) in [
        ("sqlite", &lite as &dyn LedgerBoth),
        ("postgresql", &store as &dyn LedgerBoth),
    ] {
        let t = Directory::create_tenant(s, "acme").await.unwrap();
        let (k, _) = Directory::create_key(s, &new_key(t.id, "k")).await.unwrap();
        Ledger::credit(
            s,
            t.id,
            EntryKind::TopUp,
            10_000_000,
            Some("op"),
            None,
            "topup:r1",
        )
        .await
        .unwrap();
        // 150 calls over three days (50 a day); some with a user and a department, one with an
        // uncollected remainder.
        let events: Vec<UsageEvent> = (0..150)
            .map(|i| {
                let mut e = event(i, t.id, k.id);
                e.user_id = i.is_multiple_of(2).then_some(UserId(7));
                e.group_id = i.is_multiple_of(3).then_some(GroupId(3));
                if i == 10 {
                    e.uncollected = 77;
                }
                e
            })
            .collect();
        assert_eq!(UsageLog::record(s, &events).await.unwrap(), 150, "{name}");
        let last_day = day_of(events[149].ts_ms);
        let old = events.iter().filter(|e| e.ts_ms < last_day).count() as u64;
        assert_eq!(old, 100, "{name}");
        let before = books(s, t.id, k.id).await;
        let statement_rows = Ledger::ledger_statement(s, t.id).await.unwrap().len();
        let archive = dir.path().join(format!("archive-{name}"));

        let report = prune(&lite, &store, name, last_day, &archive).await;
        assert_eq!(report.rows, old, "{name}: {report:?}");
        assert_eq!(report.days.len(), 2, "{name}: {report:?}");
        assert_eq!(report.files.len(), 2, "{name}: {report:?}");
        // The archives hold every pruned record, with every column.
        let mut archived: Vec<serde_json::Value> = report
            .files
            .iter()
            .flat_map(|f| read_archive(std::path::Path::new(f)).unwrap())
            .collect();
        archived.sort_by_key(|v| v["request_id"].as_str().unwrap().to_string());
        assert_eq!(archived.len() as u64, old, "{name}");
        assert_eq!(archived[0]["request_id"], "req_000000", "{name}");
        assert_eq!(archived[0]["cost_nano"], 1_000, "{name}");
        assert_eq!(archived[0]["prompt_tokens"], 100, "{name}");
        assert_eq!(archived[0]["model_requested"], "gpt-4o", "{name}");
        let archived_cost: i64 = archived
            .iter()
            .map(|v| v["cost_nano"].as_i64().unwrap())
            .sum();
        let old_cost: i64 = events
            .iter()
            .filter(|e| e.ts_ms < last_day)
            .map(|e| e.cost_nano)
            .sum();
        assert_eq!(archived_cost, old_cost, "{name}");

        // Balances, quotas' spend, statements: the same numbers.
        assert_eq!(books(s, t.id, k.id).await, before, "{name}");
        let statement = Ledger::ledger_statement(s, t.id).await.unwrap();
        assert!(statement.len() < statement_rows, "{name}");
        let summaries: Vec<_> = statement
            .iter()
            .filter(|(e, _)| e.id.starts_with("charges:"))
            .collect();
        // Per day: (user 7 or none) x (group 3 or none) summaries.
        assert!(!summaries.is_empty(), "{name}");
        assert_eq!(
            summaries.iter().map(|(e, _)| e.uncollected).sum::<i64>(),
            77,
            "{name}"
        );
        assert!(
            summaries.iter().all(|(e, _)| e
                .note
                .as_deref()
                .unwrap()
                .contains("raw records pruned")),
            "{name}"
        );

        // Nothing left to prune; the kept day's batch written again still adds nothing.
        let again = prune(&lite, &store, name, last_day, &archive).await;
        assert_eq!(again.rows, 0, "{name}");
        assert_eq!(
            UsageLog::record(s, &events[100..]).await.unwrap(),
            0,
            "{name}"
        );
        assert_eq!(books(s, t.id, k.id).await, before, "{name}");
    }
    // PostgreSQL dropped the two days' partitions whole.
    let parts: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        !parts.iter().any(|p| p.as_str() < "usage_events_p20260923"),
        "{parts:?}"
    );
    assert!(
        parts.iter().any(|p| p == "usage_events_p20260923"),
        "{parts:?}"
    );
    let archives: i64 = sqlx::query_scalar("SELECT SUM(rows)::BIGINT FROM usage_archives")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(archives, 100);
}

#[tokio::test]
async fn the_gateway_prunes_old_usage_on_its_own_and_the_balance_stays() {
    use common::{metric_value, mock, Gateway, Up};
    use tollgate::billing::ledger::EntryKind;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("books.db");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let s = Store::open(&db).unwrap();
        let t = Directory::create_tenant(&s, "acme").await.unwrap();
        let (k, _) = Directory::create_key(&s, &new_key(t.id, "k"))
            .await
            .unwrap();
        Ledger::credit(
            &s,
            t.id,
            EntryKind::TopUp,
            1_000_000,
            Some("op"),
            None,
            "topup:g1",
        )
        .await
        .unwrap();
        // 30 calls 100 days ago (past the default 90 days), 10 yesterday.
        let events: Vec<UsageEvent> = (0..40)
            .map(|i| {
                let mut e = event(i, t.id, k.id);
                e.ts_ms = if i < 30 {
                    now - 100 * 86_400_000
                } else {
                    now - 86_400_000
                } + i as i64;
                e.cost_nano = 1_000;
                e
            })
            .collect();
        assert_eq!(UsageLog::record(&s, &events).await.unwrap(), 40);
    }
    let m = mock().await;
    // The default retention (90 days), as a user gets it.
    let gw = Gateway::spawn(
        &[Up::mock("a", &m)],
        "",
        "",
        "store.raw_usage_days = 90",
        Some(&db.display().to_string()),
    )
    .await;
    let before = gw.balance("acme").await;
    let mut pruned = 0.0;
    for _ in 0..100 {
        pruned = metric_value(&gw.metrics().await, "tollgate_usage_events_pruned_total");
        if pruned > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(pruned, 30.0, "{}", gw.log());
    assert_eq!(gw.balance("acme").await, before);
    assert_eq!(before["available"].nano(), 960_000, "{before}");
    // The default archive directory, next to the store.
    let archive = dir.path().join("books.db.archive");
    let files: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        tollgate::store::retention::read_archive(&files[0])
            .unwrap()
            .len(),
        30
    );
    assert!(gw
        .log()
        .contains("retention: raw usage records archived and pruned"));
}

/// Disk used per million calls: raw usage records (with their indexes and roll-ups) in SQLite
/// and in PostgreSQL, and the compressed archive of the same records:
/// `N=200000 cargo test --release --test store -- --ignored --nocapture disk_per_million_calls`.
/// Results go to docs/operations.md; not a pass/fail test.
#[tokio::test]
#[ignore]
async fn disk_per_million_calls() {
    use tollgate::store::retention::day_of;
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let per_million = |bytes: u64| bytes as f64 * 1e6 / n as f64 / 1e6;
    let gen = |t: TenantId, k: KeyId| -> Vec<UsageEvent> {
        (0..n)
            .map(|i| {
                let mut e = event(i, t, k);
                // One day, realistic ids and spread.
                e.request_id = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                e.ts_ms = 1_790_000_000_000 + i as i64 * 40;
                e.latency_ms = 200 + (i as u64 * 7919) % 3000;
                e.user_id = Some(tollgate::tenancy::UserId(1 + (i as i64 % 40)));
                e
            })
            .collect()
    };
    // SQLite
    let (dir, lite) = sqlite();
    let t = Directory::create_tenant(&lite, "acme").await.unwrap();
    let (k, _) = Directory::create_key(&lite, &new_key(t.id, "k"))
        .await
        .unwrap();
    let events = gen(t.id, k.id);
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let db = dir.path().join("t.db");
    let empty = size(&db) + size(&dir.path().join("t.db-wal"));
    for chunk in events.chunks(500) {
        UsageLog::record(&lite, chunk).await.unwrap();
    }
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let full = size(&db);
    let archive = dir.path().join("archive");
    let cutoff = day_of(events[n - 1].ts_ms) + 86_400_000;
    let r = lite
        .prune_usage(cutoff, Some(&archive), "bench", u64::MAX)
        .unwrap();
    assert_eq!(r.rows as usize, n);
    c.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let pruned = size(&db);
    let zst: u64 = r.files.iter().map(|f| size(std::path::Path::new(f))).sum();
    println!(
        "sqlite: {:.0} MB per million calls in the store ({} calls), {:.0} MB left after pruning them (roll-ups, summaries), archive {:.1} MB per million",
        per_million(full - empty),
        n,
        per_million(pruned),
        per_million(zst)
    );
    // PostgreSQL
    let pg = Postgres::start();
    let store = PgStore::connect(&pg.database("disk"), 4).await.unwrap();
    let t = Directory::create_tenant(&store, "acme").await.unwrap();
    let (k, _) = Directory::create_key(&store, &new_key(t.id, "k"))
        .await
        .unwrap();
    let events = gen(t.id, k.id);
    let db_size = || async {
        sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
            .fetch_one(store.pool())
            .await
            .unwrap() as u64
    };
    let empty = db_size().await;
    for chunk in events.chunks(500) {
        UsageLog::record(&store, chunk).await.unwrap();
    }
    sqlx::query("CHECKPOINT")
        .execute(store.pool())
        .await
        .unwrap();
    let full = db_size().await;
    let r = store
        .prune_usage(cutoff, Some(&archive), "bench")
        .await
        .unwrap();
    assert_eq!(r.rows as usize, n);
    let pruned = db_size().await;
    println!(
        "postgresql: {:.0} MB per million calls in the database, {:.0} MB given back by dropping the day",
        per_million(full - empty),
        per_million(full.saturating_sub(pruned)),
    );
}

/// Processes sharing one SQLite file (cluster mode on one host) prune one at a time, so that a
/// record is archived once; a lease left by a crashed pruner expires.
#[tokio::test]
async fn one_pruner_at_a_time_on_a_shared_sqlite_file() {
    let (dir, lite) = sqlite();
    let t = Directory::create_tenant(&lite, "acme").await.unwrap();
    let (k, _) = Directory::create_key(&lite, &new_key(t.id, "k"))
        .await
        .unwrap();
    let events: Vec<UsageEvent> = (0..10).map(|i| event(i, t.id, k.id)).collect();
    UsageLog::record(&lite, &events).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let other = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let hold = |until: i64| {
        other
            .execute(
                "INSERT INTO meta (k, v) VALUES ('prune_lease', ?1)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [until],
            )
            .unwrap();
    };
    let archive = dir.path().join("archive");
    // Another process holds the lease: this one skips its pass.
    hold(now + 600_000);
    let r = lite.prune_usage(now, Some(&archive), "b", 1_000).unwrap();
    assert!(r.skipped && r.rows == 0, "{r:?}");
    // Its lease expired (it crashed): this one takes over, and gives the lease back after.
    hold(now - 1);
    let r = lite.prune_usage(now, Some(&archive), "b", 1_000).unwrap();
    assert_eq!((r.skipped, r.rows), (false, 10), "{r:?}");
    let v: i64 = other
        .query_row("SELECT v FROM meta WHERE k = 'prune_lease'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, 0);
}

/// Console sign-in state: passwords, lockout counting, sessions that end at sign-out, on
/// expiry and when their user is disabled.
fn sessions_behaviour(s: &Store, backend: &str) {
    use tollgate::tenancy::Role;
    let t = s.create_tenant("Session Co").unwrap();
    let u = s
        .create_user(t.id, "Pat@Session.test", "Pat", Role::Member, None, None)
        .unwrap();
    let acct = s
        .login_account("Session Co", "pat@session.test")
        .unwrap()
        .unwrap();
    assert_eq!(acct.principal.user.id, u.id, "{backend}");
    assert!(acct.password_hash.is_none(), "{backend}");
    // A reset link's state, before and after its one use; a bogus one is none.
    let link = s.create_password_reset(u.id, 3600).unwrap();
    assert_eq!(s.reset_state(&link).unwrap(), Some("pending"), "{backend}");
    s.use_password_reset(
        &link,
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
    )
    .unwrap();
    assert_eq!(s.reset_state(&link).unwrap(), Some("used"), "{backend}");
    assert_eq!(s.reset_state("pwr-bogus").unwrap(), None, "{backend}");
    // An invitation found by its token, whatever its state.
    let inv = s
        .create_invite(t.id, "new@session.test", Role::Member, None, 3600)
        .unwrap();
    let seen = s.invite_by_token(&inv).unwrap().unwrap();
    assert_eq!(
        (seen.email.as_str(), seen.tenant_id),
        ("new@session.test", t.id),
        "{backend}"
    );
    assert!(
        s.invite_by_token("inv-bogus").unwrap().is_none(),
        "{backend}"
    );
    assert!(
        s.login_account(&t.id.0.to_string(), "PAT@session.test")
            .unwrap()
            .is_some(),
        "{backend}: by id, any case"
    );
    assert!(
        s.login_account("Other", "pat@session.test")
            .unwrap()
            .is_none(),
        "{backend}"
    );
    s.set_password(u.id, "$argon2id$fake").unwrap();
    assert_eq!(s.login_failed(u.id, 3, 999).unwrap(), 1, "{backend}");
    assert_eq!(s.login_failed(u.id, 3, 999).unwrap(), 2, "{backend}");
    assert_eq!(s.login_failed(u.id, 3, 999).unwrap(), 3, "{backend}");
    let acct = s
        .login_account("Session Co", "pat@session.test")
        .unwrap()
        .unwrap();
    assert_eq!(
        (acct.failed_logins, acct.locked_until),
        (0, Some(999)),
        "{backend}: locked, count restarted"
    );
    s.login_succeeded(u.id).unwrap();
    let acct = s
        .login_account("Session Co", "pat@session.test")
        .unwrap()
        .unwrap();
    assert_eq!(acct.locked_until, None, "{backend}");
    assert_eq!(
        acct.password_hash.as_deref(),
        Some("$argon2id$fake"),
        "{backend}"
    );

    let op = s.create_session(None, 3600).unwrap();
    let live = s.session(&op.token).unwrap().unwrap();
    assert!(
        live.user.is_none() && live.csrf == op.csrf,
        "{backend}: operator session"
    );
    let mine = s.create_session(Some(u.id), 3600).unwrap();
    assert_eq!(
        s.session(&mine.token)
            .unwrap()
            .unwrap()
            .user
            .unwrap()
            .user
            .id,
        u.id,
        "{backend}"
    );
    s.end_session(&mine.token).unwrap();
    assert!(
        s.session(&mine.token).unwrap().is_none(),
        "{backend}: signed out"
    );
    let expired = s.create_session(Some(u.id), -1).unwrap();
    assert!(
        s.session(&expired.token).unwrap().is_none(),
        "{backend}: expired"
    );
    let again = s.create_session(Some(u.id), 3600).unwrap();
    s.update_user(u.id, None, None, None, Some(true)).unwrap();
    assert!(
        s.session(&again.token).unwrap().is_none(),
        "{backend}: disabled user"
    );
    assert!(s.session("tgs-unknown").unwrap().is_none(), "{backend}");
}

#[test]
fn console_sessions_behave_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    sessions_behaviour(&lite, "sqlite");
    let pg = Postgres::start();
    let store = Store::open_postgres(&pg.database("sessions"), 4).unwrap();
    sessions_behaviour(&store, "postgresql");
}

/// Single sign-on: settings per tenant, a flow in flight works once and not after it expired,
/// and a user is linked to one subject of the provider.
fn sso_behaviour(s: &Store, backend: &str) {
    use tollgate::store::sqlite::SsoFlow;
    use tollgate::tenancy::Role;
    let t = s.create_tenant("SSO Co").unwrap();
    assert_eq!(s.sso(t.id).unwrap(), None, "{backend}");
    s.set_sso(
        t.id,
        Some(r#"{"issuer":"https://idp.example","client_id":"c"}"#),
    )
    .unwrap();
    assert!(
        s.sso(t.id).unwrap().unwrap().contains("idp.example"),
        "{backend}"
    );
    let now = tollgate::tenancy::unix_now();
    let flow = |expires_at| SsoFlow {
        tenant: t.id,
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        redirect_uri: "https://gw/console/sso/callback".into(),
        next: "/console/t/1".into(),
        expires_at,
    };
    s.create_sso_flow("state-1", &flow(now + 600)).unwrap();
    s.create_sso_flow("state-old", &flow(now - 1)).unwrap();
    let got = s.take_sso_flow("state-1").unwrap().unwrap();
    assert_eq!(
        (got.tenant, got.nonce.as_str(), got.pkce_verifier.as_str()),
        (t.id, "n", "v"),
        "{backend}"
    );
    assert!(
        s.take_sso_flow("state-1").unwrap().is_none(),
        "{backend}: used once"
    );
    assert!(
        s.take_sso_flow("state-old").unwrap().is_none(),
        "{backend}: expired"
    );
    assert!(s.take_sso_flow("never").unwrap().is_none(), "{backend}");
    let u = s
        .create_user(t.id, "sam@sso.test", "Sam", Role::Member, None, None)
        .unwrap();
    assert!(s.link_sso_subject(u.id, "sub-1").unwrap(), "{backend}");
    assert!(
        s.link_sso_subject(u.id, "sub-1").unwrap(),
        "{backend}: same subject again"
    );
    assert!(
        !s.link_sso_subject(u.id, "sub-2").unwrap(),
        "{backend}: another subject"
    );
    s.set_sso(t.id, None).unwrap();
    assert_eq!(s.sso(t.id).unwrap(), None, "{backend}");
}

#[test]
fn single_sign_on_behaves_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    sso_behaviour(&lite, "sqlite");
    let pg = Postgres::start();
    let store = Store::open_postgres(&pg.database("sso"), 4).unwrap();
    sso_behaviour(&store, "postgresql");
}

/// `balance_before` (the statement's opening balance) reads whole hours from the roll-ups; it
/// must equal its definition, the journal before the time less every charge before it, where
/// a pruned day's charges count at the day's last millisecond, for times inside hours, at hour
/// and day starts, and inside pruned and half-pruned days.
fn opening_balances_behaviour(s: &Store, backend: &str) {
    const DAY: i64 = 86_400_000;
    let t = s.create_tenant("Opening Co").unwrap();
    let (k, _) = s.create_key(&new_key(t.id, "k")).unwrap();
    let top_up = s
        .credit(
            t.id,
            tollgate::billing::ledger::EntryKind::TopUp,
            5_000_000,
            None,
            None,
            "open-1",
        )
        .unwrap();
    let day0 = (1_790_000_000_000i64 / DAY) * DAY;
    // Four days, calls every 37 minutes, each costing its own amount.
    let events: Vec<UsageEvent> = (0..4 * 39)
        .map(|i| UsageEvent {
            ts_ms: day0 + i as i64 * 37 * 60_000 + 1_234,
            cost_nano: 100 + i as i64,
            ..event(i, t.id, k.id)
        })
        .collect();
    s.record(&events).unwrap();
    // The first day is pruned whole; the second in part (a bounded batch of a pruner run).
    s.prune_usage(day0 + DAY, None, "n1", 1_000_000).unwrap();
    s.prune_usage(day0 + 2 * DAY, None, "n1", 10).unwrap();
    // What the statement holds now: raw charges at their times, pruned days' summaries at
    // their days' last millisecond. The opening balance before any time must agree with it.
    let rows = s.statement_page(t.id, 0, i64::MAX, None, 100_000).unwrap();
    let summaries = rows
        .iter()
        .filter(|r| r.entry.id.starts_with("charges:"))
        .count();
    let raw_left = rows
        .iter()
        .filter(|r| r.entry.id.starts_with("charge:"))
        .count();
    assert!(
        summaries >= 2 && raw_left < events.len() - 39,
        "{backend}: {summaries} summaries, {raw_left} raw"
    );
    let journal_before = |from: i64| {
        if top_up.created_ms < from {
            5_000_000
        } else {
            0
        }
    };
    let expected = |from: i64| {
        let charged: i64 = rows
            .iter()
            .filter(|r| {
                r.entry.kind == tollgate::billing::ledger::EntryKind::Charge
                    && r.entry.created_ms < from
            })
            .map(|r| r.entry.amount)
            .sum();
        journal_before(from) + charged
    };
    for from in [
        day0,
        day0 + 1,
        day0 + 3 * 3_600_000 + 5,
        day0 + DAY - 1,
        day0 + DAY,
        day0 + DAY + 7 * 3_600_000 + 999,
        day0 + 2 * DAY - 1,
        day0 + 2 * DAY,
        day0 + 2 * DAY + 3_600_000,
        day0 + 3 * DAY + 11 * 3_600_000 + 17,
        day0 + 5 * DAY,
        top_up.created_ms + 1,
    ] {
        assert_eq!(
            s.balance_before(t.id, from).unwrap(),
            expected(from),
            "{backend}: before {from}"
        );
    }
}

#[test]
fn opening_balances_agree_with_the_records_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    opening_balances_behaviour(&lite, "sqlite");
    let pg = Postgres::start();
    let store = Store::open_postgres(&pg.database("opening"), 4).unwrap();
    opening_balances_behaviour(&store, "postgresql");
}

/// Payment orders: created, pending with the provider's id, paid once (a second "paid" changes
/// nothing), closed only while unpaid; listed per tenant, newest first.
fn orders_behaviour(s: &Store, backend: &str) {
    let t = s.create_tenant("Pay Co").unwrap();
    let other = s.create_tenant("Other Pay Co").unwrap();
    let o = s
        .create_order(
            t.id,
            "stripe",
            10_000,
            "cny",
            Some("WELCOME"),
            Some("user:1"),
            1800,
        )
        .unwrap();
    assert_eq!(
        (o.state.as_str(), o.amount_minor, o.late),
        ("created", 10_000, false),
        "{backend}"
    );
    assert_eq!(o.expires_at - o.created_at, 1800, "{backend}");
    let o = s.order_pending(o.id, "cs_test_1").unwrap();
    assert_eq!(
        (o.state.as_str(), o.provider_ref.as_deref()),
        ("pending", Some("cs_test_1")),
        "{backend}"
    );
    let paid = s.order_paid(o.id, "order:1:1", true, 11_000).unwrap();
    assert_eq!(
        (
            paid.state.as_str(),
            paid.late,
            paid.entry_id.as_deref(),
            paid.credited_nano
        ),
        ("paid", true, Some("order:1:1"), 11_000),
        "{backend}"
    );
    let again = s.order_paid(o.id, "order:other", false, 1).unwrap();
    assert_eq!(again, paid, "{backend}: paid once");
    assert_eq!(
        s.order_closed(o.id, "expired").unwrap().state,
        "paid",
        "{backend}: a paid order stays paid"
    );
    // Unpaid orders past their deadline (plus the grace) expire; paid ones stay paid.
    let stale = s
        .create_order(t.id, "alipay", 300, "cny", None, None, 60)
        .unwrap();
    let now = tollgate::tenancy::unix_now();
    assert_eq!(s.expire_orders(now, 600).unwrap(), 0, "{backend}: not yet");
    assert_eq!(
        s.expire_orders(now + 61 + 600, 600).unwrap(),
        1,
        "{backend}"
    );
    assert_eq!(s.order(stale.id).unwrap().state, "expired", "{backend}");
    assert_eq!(s.order(o.id).unwrap().state, "paid", "{backend}");
    let second = s
        .create_order(t.id, "stripe", 500, "cny", None, None, 60)
        .unwrap();
    assert_eq!(
        s.order_closed(second.id, "expired").unwrap().state,
        "expired",
        "{backend}"
    );
    s.create_order(other.id, "stripe", 700, "cny", None, None, 60)
        .unwrap();
    let mine: Vec<i64> = s
        .list_orders(Some(t.id), NewestFirst::latest(10))
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(mine, vec![second.id, stale.id, o.id], "{backend}");
    assert_eq!(
        s.list_orders(None, NewestFirst::latest(10)).unwrap().len(),
        4,
        "{backend}"
    );
    // Newest first in pages: the second starts below the first's last id.
    let ids = |page: NewestFirst| -> Vec<i64> {
        s.list_orders(Some(t.id), page)
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect()
    };
    let first = ids(NewestFirst::latest(2));
    let rest = ids(NewestFirst {
        before: first.last().copied(),
        ..NewestFirst::latest(2)
    });
    assert_eq!([first, rest].concat(), mine, "{backend}");
    assert!(ids(NewestFirst {
        from: 0,
        to: 1,
        ..NewestFirst::latest(10)
    })
    .is_empty());
    assert!(
        matches!(s.order(999_999), Err(StoreError::NotFound { .. })),
        "{backend}"
    );
    assert!(
        s.create_order(
            tollgate::tenancy::TenantId(999_999),
            "stripe",
            1,
            "cny",
            None,
            None,
            60
        )
        .is_err(),
        "{backend}"
    );

    // Refunds: never more than was paid (failed ones do not count); the order's refunded
    // total follows the refunds that are processing or done, and it is `refunded` when whole.
    assert!(
        s.create_refund(second.id, 1, 1, None, None).is_err(),
        "{backend}: not paid"
    );
    let r1 = s
        .create_refund(o.id, 6_000, 6_600, Some("r"), Some("operator"))
        .unwrap();
    assert_eq!(
        (r1.state.as_str(), r1.debit_nano),
        ("requested", 6_600),
        "{backend}"
    );
    assert!(
        s.create_refund(o.id, 4_001, 1, None, None).is_err(),
        "{backend}: over what was paid"
    );
    let r2 = s.create_refund(o.id, 4_000, 4_400, None, None).unwrap();
    assert_eq!(
        s.refund_settled(r2.id, "failed", None).unwrap().state,
        "failed",
        "{backend}"
    );
    // A failed refund frees its share; a settled one stays as it is.
    let r3 = s.create_refund(o.id, 4_000, 4_400, None, None).unwrap();
    assert_eq!(
        s.refund_settled(r2.id, "succeeded", None).unwrap().state,
        "failed",
        "{backend}"
    );
    s.refund_settled(r1.id, "succeeded", Some("re_1")).unwrap();
    let half = s.order(o.id).unwrap();
    assert_eq!(
        (half.state.as_str(), half.refunded_minor),
        ("paid", 6_000),
        "{backend}"
    );
    assert_eq!(
        s.refund_settled(r3.id, "processing", Some("re_3"))
            .unwrap()
            .provider_ref
            .as_deref(),
        Some("re_3"),
        "{backend}"
    );
    let whole = s.order(o.id).unwrap();
    assert_eq!(
        (whole.state.as_str(), whole.refunded_minor),
        ("refunded", 10_000),
        "{backend}"
    );
    let listed: Vec<i64> = s
        .list_refunds(Some(o.id), NewestFirst::latest(100))
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![r3.id, r2.id, r1.id], "{backend}");
    assert!(
        s.list_refunds(Some(second.id), NewestFirst::latest(100))
            .unwrap()
            .is_empty(),
        "{backend}"
    );

    // Alerts: a level that rises fires once, however many callers record it; a fall re-arms.
    use tollgate::store::sqlite::{AlertMove, AlertSettings};
    let settings = AlertSettings {
        tenant_id: t.id,
        balance_below_nano: Some(5),
        balance_days: Some(3),
        quota_percents: vec![80, 100],
        emails: vec!["a@example.com".into()],
        webhook_url: Some("https://hooks.example.com/x".into()),
        webhook_secret: Some("whsec_x".into()),
        enabled: true,
        updated_at: 0,
    };
    let saved = s.set_alert_settings(&settings).unwrap();
    assert_eq!(
        AlertSettings {
            updated_at: 0,
            ..saved
        },
        settings,
        "{backend}"
    );
    assert_eq!(s.enabled_alert_settings().unwrap().len(), 1, "{backend}");
    assert!(s.alert_settings(other.id).unwrap().is_none(), "{backend}");
    assert_eq!(
        s.alert_level(t.id, "key:1", 0).unwrap(),
        AlertMove::Same,
        "{backend}"
    );
    assert_eq!(
        s.alert_level(t.id, "key:1", 1).unwrap(),
        AlertMove::Fired(0),
        "{backend}"
    );
    assert_eq!(
        s.alert_level(t.id, "key:1", 1).unwrap(),
        AlertMove::Same,
        "{backend}"
    );
    assert_eq!(
        s.alert_level(t.id, "key:1", 2).unwrap(),
        AlertMove::Fired(1),
        "{backend}"
    );
    assert_eq!(
        s.alert_level(t.id, "key:1", 0).unwrap(),
        AlertMove::Rearmed,
        "{backend}"
    );
    assert_eq!(
        s.alert_level(t.id, "key:1", 2).unwrap(),
        AlertMove::Fired(0),
        "{backend}"
    );
    // Concurrent callers (nodes): one of them fires.
    let fired = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.alert_level(t.id, "balance", 1).unwrap()))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|m| matches!(m, AlertMove::Fired(_)))
            .count()
    });
    assert_eq!(fired, 1, "{backend}");

    // Network allow-lists: stored per key and tenant, loaded with the keys, cleared by `[]`.
    use tollgate::store::sqlite::LimitSubject;
    let (k, _) = s
        .create_key(&tollgate::store::sqlite::NewKey {
            tenant_id: t.id,
            name: "net".into(),
            default_channel: "main".into(),
            allowed_channels: vec![],
            allowed_models: vec![],
            expires_at: None,
            quota_nano: None,
            user_id: None,
            limits: Default::default(),
        })
        .unwrap();
    let generation = s.key_generation().unwrap();
    let list = vec!["10.0.0.0/8".to_string()];
    assert_eq!(
        s.set_allowed_cidrs(LimitSubject::Key(k.id), &list).unwrap(),
        list,
        "{backend}"
    );
    assert!(
        s.key_generation().unwrap() > generation,
        "{backend}: keys reload"
    );
    s.set_allowed_cidrs(LimitSubject::Tenant(t.id), &["2001:db8::/32".to_string()])
        .unwrap();
    assert_eq!(
        s.allowed_cidrs(LimitSubject::Key(k.id)).unwrap(),
        list,
        "{backend}"
    );
    let rule = s.get_key(k.id).unwrap().network.expect("a rule");
    assert_eq!((rule.key.len(), rule.tenant.len()), (1, 1), "{backend}");
    s.set_allowed_cidrs(LimitSubject::Key(k.id), &[]).unwrap();
    s.set_allowed_cidrs(LimitSubject::Tenant(t.id), &[])
        .unwrap();
    assert!(s.get_key(k.id).unwrap().network.is_none(), "{backend}");
    assert!(
        s.allowed_cidrs(LimitSubject::Key(k.id)).unwrap().is_empty(),
        "{backend}"
    );
    assert!(
        s.set_allowed_cidrs(LimitSubject::Key(tollgate::tenancy::KeyId(999_999)), &list)
            .is_err(),
        "{backend}"
    );
}

#[test]
fn payment_orders_behave_the_same_on_sqlite_and_postgresql() {
    let (_dir, lite) = sqlite();
    orders_behaviour(&lite, "sqlite");
    let pg = Postgres::start();
    let store = Store::open_postgres(&pg.database("orders"), 4).unwrap();
    orders_behaviour(&store, "postgresql");
}
