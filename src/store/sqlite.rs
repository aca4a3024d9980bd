//! The record on SQLite (one file, WAL), the embedded default, and `Store`, the synchronous
//! face of the record the gateway calls: each method answers from SQLite or, with `[store] url`,
//! from the PostgreSQL implementation (`store::pg`) of the same domain.
//!
//! The store is only touched off the request path: by the admin API, the CLI, the key snapshot
//! refresher and the batched usage writer.

use crate::billing::entry::{Account, EntryKind, LedgerEntry};
use crate::billing::usage::UsageEvent;
use crate::store::retention::{day_of, ArchiveWriter, PruneReport};
use crate::store::{Invite, KeyPatch, UserToken};
use crate::tenancy::keys::{display_prefix, generate_key, hash_key, KeySnapshot};
use crate::tenancy::limits::{Limits, LimitsPatch};
use crate::tenancy::{
    unix_now, ApiKey, Group, GroupId, KeyId, QuotaPeriod, Role, Tenant, TenantId, User, UserId,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// `what` names the kind of record (tenant, key, user, group, ...), `id` the one asked for.
    /// The admin API answers with `what` alone, so that another tenant's record and a missing
    /// one cannot be told apart.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the store lock is poisoned")]
    Poisoned,
    #[error("database error: {0}")]
    Postgres(String),
}

impl StoreError {
    pub fn not_found(what: &'static str, id: impl std::fmt::Display) -> StoreError {
        StoreError::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

/// The `meta` key prefix of cluster mode's node registry.
pub const CLUSTER_NODE: &str = "cluster_node:";

/// Ordered schema migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    // 1: tenants, keys, usage events
    "CREATE TABLE tenants (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        key_hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        default_channel TEXT NOT NULL,
        allowed_channels TEXT NOT NULL DEFAULT '[]',
        allowed_models TEXT NOT NULL DEFAULT '[]',
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
     );
     CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
     CREATE TABLE usage_events (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL UNIQUE,
        ts_ms INTEGER NOT NULL,
        tenant_id INTEGER,
        key_id INTEGER,
        endpoint TEXT NOT NULL,
        channel TEXT,
        upstream TEXT,
        model_requested TEXT,
        model_used TEXT,
        stream INTEGER NOT NULL,
        status INTEGER NOT NULL,
        error_code TEXT,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        usage_source TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER
     );
     CREATE INDEX usage_events_tenant_ts ON usage_events(tenant_id, ts_ms);
     CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
     INSERT INTO meta (k, v) VALUES ('key_generation', 1);",
    // 2: the ledger journal, key quotas, redemption codes, cost on usage events
    "CREATE TABLE ledger_entries (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL,
        key_id INTEGER,
        request_id TEXT,
        actor TEXT,
        note TEXT,
        uncollected INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
     );
     CREATE INDEX ledger_entries_tenant ON ledger_entries(tenant_id, seq);
     CREATE INDEX ledger_entries_key ON ledger_entries(key_id) WHERE key_id IS NOT NULL;
     ALTER TABLE api_keys ADD COLUMN quota_nano INTEGER;
     ALTER TABLE usage_events ADD COLUMN cost_nano INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE redemption_codes (
        id INTEGER PRIMARY KEY,
        code_hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        batch TEXT NOT NULL,
        amount INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_at INTEGER,
        redeemed_by INTEGER REFERENCES tenants(id),
        redeemed_ms INTEGER
     );",
    // 3: users, roles, departments/projects (groups), user tokens, invitations
    "CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        budget_nano INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (tenant_id, name)
     );
     CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        email TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        group_id INTEGER REFERENCES groups(id),
        quota_nano INTEGER,
        created_at INTEGER NOT NULL,
        disabled_at INTEGER,
        UNIQUE (tenant_id, email)
     );
     CREATE TABLE user_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        token_hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
     );
     CREATE TABLE invites (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        email TEXT NOT NULL,
        role TEXT NOT NULL,
        group_id INTEGER REFERENCES groups(id),
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        accepted_user_id INTEGER REFERENCES users(id)
     );
     ALTER TABLE api_keys ADD COLUMN user_id INTEGER REFERENCES users(id);
     ALTER TABLE ledger_entries ADD COLUMN user_id INTEGER;
     ALTER TABLE ledger_entries ADD COLUMN group_id INTEGER;",
    // 4: hourly usage roll-ups for analytics
    "ALTER TABLE usage_events ADD COLUMN user_id INTEGER;
     ALTER TABLE usage_events ADD COLUMN group_id INTEGER;
     CREATE TABLE usage_hourly (
        tenant_id INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        group_id INTEGER NOT NULL,
        model TEXT NOT NULL,
        channel TEXT NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nano INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, hour, key_id, user_id, group_id, model, channel)
     ) WITHOUT ROWID;",
    // 5: promotion campaigns
    "CREATE TABLE promo_campaigns (
        id INTEGER PRIMARY KEY,
        code TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        value INTEGER NOT NULL,
        expires_at INTEGER,
        max_uses INTEGER,
        uses INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE promo_uses (
        campaign_id INTEGER NOT NULL REFERENCES promo_campaigns(id),
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        used_ms INTEGER NOT NULL,
        PRIMARY KEY (campaign_id, tenant_id)
     );",
    // 6: rate limits
    "ALTER TABLE api_keys ADD COLUMN rpm_limit INTEGER;
     ALTER TABLE api_keys ADD COLUMN tpm_limit INTEGER;
     ALTER TABLE users ADD COLUMN rpm_limit INTEGER;
     ALTER TABLE users ADD COLUMN tpm_limit INTEGER;
     ALTER TABLE tenants ADD COLUMN rpm_limit INTEGER;
     ALTER TABLE tenants ADD COLUMN tpm_limit INTEGER;",
    // 7: per-dimension hourly and daily roll-ups (one dimension per row: few rows per query)
    "CREATE TABLE usage_rollup (
        tenant_id INTEGER NOT NULL,
        dim INTEGER NOT NULL,
        period INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        value TEXT NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nano INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, dim, period, bucket, value)
     ) WITHOUT ROWID;
     INSERT INTO usage_rollup
        SELECT tenant_id, d.dim, p.period, (hour * 3600 / p.period) * p.period,
               CASE d.dim WHEN 0 THEN '' WHEN 1 THEN CAST(user_id AS TEXT) WHEN 2 THEN CAST(group_id AS TEXT)
                          WHEN 3 THEN CAST(key_id AS TEXT) WHEN 4 THEN model ELSE channel END,
               SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens),
               SUM(reasoning_tokens), SUM(cost_nano)
        FROM usage_hourly,
             (SELECT 0 AS dim UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5) d,
             (SELECT 3600 AS period UNION ALL SELECT 86400) p
        GROUP BY 1, 2, 3, 4, 5;",
    // 8: cluster mode replays credit entries to Redis in sequence order
    "CREATE INDEX ledger_entries_credits ON ledger_entries(seq) WHERE kind != 'charge';",
    // 9: quotas and budgets that start again every day or month
    "ALTER TABLE tenants ADD COLUMN quota_period TEXT NOT NULL DEFAULT 'none';",
    // 10: per-tenant override of the complexity router's policy (JSON), and what routing did
    "ALTER TABLE tenants ADD COLUMN router_override TEXT;
     ALTER TABLE usage_events ADD COLUMN route_tier TEXT;
     ALTER TABLE usage_events ADD COLUMN route_reason TEXT;
     ALTER TABLE usage_events ADD COLUMN route_score REAL;
     ALTER TABLE usage_events ADD COLUMN baseline_cost_nano INTEGER;",
    // 11: Anthropic cache writes (priced apart) on usage events
    "ALTER TABLE usage_events ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;",
    // 12: cache writes in the roll-ups, filled in from the events recorded since 11
    "ALTER TABLE usage_hourly ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE usage_rollup ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
     UPDATE usage_hourly SET cache_write_tokens = w.n
     FROM (SELECT tenant_id AS t, ts_ms / 3600000 AS h, COALESCE(key_id, 0) AS k,
                  COALESCE(user_id, 0) AS u, COALESCE(group_id, 0) AS g,
                  COALESCE(model_requested, '') AS m, COALESCE(channel, '') AS c,
                  SUM(cache_write_tokens) AS n
           FROM usage_events WHERE cache_write_tokens > 0 AND tenant_id IS NOT NULL
           GROUP BY 1, 2, 3, 4, 5, 6, 7) w
     WHERE usage_hourly.tenant_id = w.t AND usage_hourly.hour = w.h AND usage_hourly.key_id = w.k
       AND usage_hourly.user_id = w.u AND usage_hourly.group_id = w.g
       AND usage_hourly.model = w.m AND usage_hourly.channel = w.c;
     UPDATE usage_rollup SET cache_write_tokens = w.n
     FROM (SELECT tenant_id AS t, d.dim AS dim, p.period AS period,
                  (hour * 3600 / p.period) * p.period AS b,
                  CASE d.dim WHEN 0 THEN '' WHEN 1 THEN CAST(user_id AS TEXT) WHEN 2 THEN CAST(group_id AS TEXT)
                             WHEN 3 THEN CAST(key_id AS TEXT) WHEN 4 THEN model ELSE channel END AS v,
                  SUM(cache_write_tokens) AS n
           FROM usage_hourly,
                (SELECT 0 AS dim UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5) d,
                (SELECT 3600 AS period UNION ALL SELECT 86400) p
           WHERE cache_write_tokens > 0
           GROUP BY 1, 2, 3, 4, 5) w
     WHERE usage_rollup.tenant_id = w.t AND usage_rollup.dim = w.dim AND usage_rollup.period = w.period
       AND usage_rollup.bucket = w.b AND usage_rollup.value = w.v;",
    // 13: one row per call: a call's charge lives on its usage record (`cost_nano` = charged,
    // `uncollected` = what its accounts could not pay); the journal keeps money in only.
    // Charges journaled before this version move over (a charge whose usage record was dropped
    // gets a minimal record of its own), then leave the journal.
    "ALTER TABLE usage_events ADD COLUMN uncollected INTEGER NOT NULL DEFAULT 0;
     UPDATE usage_events SET cost_nano = -l.amount, uncollected = l.uncollected
     FROM ledger_entries l
     WHERE l.kind = 'charge' AND l.request_id IS NOT NULL AND l.request_id = usage_events.request_id;
     INSERT OR IGNORE INTO usage_events (request_id, ts_ms, tenant_id, key_id, user_id, group_id, endpoint,
        stream, status, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, usage_source,
        attempts, latency_ms, cost_nano, uncollected)
     SELECT COALESCE(request_id, substr(id, 8)), created_ms, tenant_id, key_id, user_id, group_id, 'chat',
            0, 200, 0, 0, 0, 0, 'journal', 0, 0, -amount, uncollected
     FROM ledger_entries WHERE kind = 'charge';
     DELETE FROM ledger_entries WHERE kind = 'charge';
     DROP INDEX IF EXISTS ledger_entries_key;",
    // 14: idempotency keys of top-ups and adjustments, per tenant, with the first answer.
    // Keys sent before this version were global (the entry id was `topup:<key>`); each becomes
    // its tenant's key, without a recorded answer (a replay is answered from its entry).
    "CREATE TABLE idempotency_keys (
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        entry_ids TEXT NOT NULL,
        status INTEGER,
        body TEXT,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, scope, key)
     ) WITHOUT ROWID;
     INSERT OR IGNORE INTO idempotency_keys (tenant_id, scope, key, fingerprint, entry_ids, created_ms)
        SELECT tenant_id, 'topup', substr(id, 7), '', json_array(id), created_ms
        FROM ledger_entries WHERE kind = 'top_up' AND id LIKE 'topup:%';
     INSERT OR IGNORE INTO idempotency_keys (tenant_id, scope, key, fingerprint, entry_ids, created_ms)
        SELECT tenant_id, 'adjust', substr(id, 8), '', json_array(id), created_ms
        FROM ledger_entries WHERE kind = 'adjustment' AND id LIKE 'adjust:%';",
    // 15: the request path of a usage record (unknown paths are recorded too)
    "ALTER TABLE usage_events ADD COLUMN path TEXT;",
    // 16: retention (`store::retention`): a pruned day's charges per tenant, key, user and
    // group (0: none), and the archives written before raw records were removed
    "CREATE TABLE charge_days (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL,
        day_ms INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        group_id INTEGER NOT NULL,
        calls INTEGER NOT NULL,
        cost_nano INTEGER NOT NULL,
        uncollected INTEGER NOT NULL,
        UNIQUE (tenant_id, day_ms, key_id, user_id, group_id)
     );
     CREATE TABLE usage_archives (
        id INTEGER PRIMARY KEY,
        day_ms INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        file TEXT,
        node TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );",
    // 17: the console and admin API v2 (migrations/postgres/0003_console.sql says why)
    "ALTER TABLE invites ADD COLUMN revoked_at INTEGER;
     ALTER TABLE users ADD COLUMN password_hash TEXT;
     ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE users ADD COLUMN locked_until INTEGER;
     CREATE TABLE console_sessions (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER REFERENCES users(id),
        csrf TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX console_sessions_user ON console_sessions(user_id);",
    // 18: password resets; routed calls by tier in the roll-ups (dimensions 6 and 7) for the
    // routing-savings page
    // (migrations/postgres/0004_password_resets.sql)
    "CREATE TABLE password_resets (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
     );
     CREATE INDEX password_resets_user ON password_resets(user_id);
     INSERT INTO usage_rollup (tenant_id, dim, period, bucket, value, requests, errors, prompt_tokens,
            cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens)
        SELECT tenant_id, d.dim, p.period, (ts_ms / 1000 / p.period) * p.period, route_tier, COUNT(*), 0, 0, 0, 0, 0,
               SUM(CASE d.dim WHEN 6 THEN cost_nano ELSE COALESCE(baseline_cost_nano, cost_nano) END), 0
        FROM usage_events, (SELECT 6 AS dim UNION ALL SELECT 7) d, (SELECT 3600 AS period UNION ALL SELECT 86400) p
        WHERE route_tier IS NOT NULL AND tenant_id IS NOT NULL
        GROUP BY tenant_id, d.dim, p.period, 4, route_tier;",
    // 19: online payment orders (issue 17; migrations/postgres/0005_payment_orders.sql)
    "CREATE TABLE payment_orders (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        provider TEXT NOT NULL,
        amount_minor INTEGER NOT NULL,
        currency TEXT NOT NULL,
        promo_code TEXT,
        state TEXT NOT NULL,
        provider_ref TEXT,
        created_by TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        paid_at INTEGER,
        late INTEGER NOT NULL DEFAULT 0,
        entry_id TEXT
     );
     CREATE INDEX payment_orders_tenant ON payment_orders(tenant_id, id);
     CREATE UNIQUE INDEX payment_orders_ref ON payment_orders(provider, provider_ref);",
    // 20: refunds of paid orders (issue 17; migrations/postgres/0006_refunds.sql)
    "ALTER TABLE payment_orders ADD COLUMN credited_nano INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE payment_orders ADD COLUMN refunded_minor INTEGER NOT NULL DEFAULT 0;
     UPDATE payment_orders SET credited_nano =
        COALESCE((SELECT amount FROM ledger_entries WHERE ledger_entries.id = payment_orders.entry_id), 0);
     CREATE TABLE payment_refunds (
        id INTEGER PRIMARY KEY,
        order_id INTEGER NOT NULL REFERENCES payment_orders(id),
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        amount_minor INTEGER NOT NULL,
        debit_nano INTEGER NOT NULL,
        state TEXT NOT NULL,
        provider_ref TEXT,
        reason TEXT,
        created_by TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE INDEX payment_refunds_order ON payment_refunds(order_id);",
    // 21: budget and balance alerts (issue 17; migrations/postgres/0007_alerts.sql)
    "CREATE TABLE alert_settings (
        tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id),
        balance_below_nano INTEGER,
        balance_days INTEGER,
        quota_percents TEXT NOT NULL DEFAULT '[]',
        emails TEXT NOT NULL DEFAULT '[]',
        webhook_url TEXT,
        webhook_secret TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE alert_state (
        tenant_id INTEGER NOT NULL,
        subject TEXT NOT NULL,
        level INTEGER NOT NULL,
        changed_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, subject)
     );
     CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL,
        alert_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        payload TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE INDEX alert_deliveries_tenant ON alert_deliveries(tenant_id, id);",
    // 22: the audit trail (issue 18; migrations/postgres/0008_audit.sql)
    "CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        tenant_id INTEGER,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        status INTEGER NOT NULL,
        entry TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
     );
     CREATE INDEX audit_log_tenant ON audit_log(tenant_id, seq);",
    // 23: network allow-lists (issue 18; migrations/postgres/0009_network.sql)
    "ALTER TABLE api_keys ADD COLUMN allowed_cidrs TEXT;
     ALTER TABLE tenants ADD COLUMN allowed_cidrs TEXT;",
    // 24: prompt guardrails (issue 18; migrations/postgres/0010_guardrails.sql)
    "ALTER TABLE tenants ADD COLUMN guardrails TEXT;",
    // 25: console single sign-on (issue 18; migrations/postgres/0011_sso.sql)
    "ALTER TABLE tenants ADD COLUMN sso TEXT;
     ALTER TABLE users ADD COLUMN sso_subject TEXT;
     CREATE TABLE sso_flows (
        state_hash BLOB PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        nonce TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        next TEXT NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX sso_flows_expiry ON sso_flows(expires_at);",
    // 26: what prompt guardrails found, per usage record (issue 18;
    // migrations/postgres/0012_guardrail_hits.sql)
    "ALTER TABLE usage_events ADD COLUMN guardrails TEXT;",
];

/// Minus the charges before a time (the part of `balance_before` after the journal), with
/// placeholders 1 tenant, 2 the time (ms), 3 the time less a day (a pruned day's summary counts
/// at its day's last millisecond), 4 the hour the time falls in, 5 that hour's start (ms).
/// Equal to summing the raw records before the time plus the summaries of pruned days: whole
/// hours of days not pruned come from `usage_hourly` (which holds exactly their records), the
/// rest from the raw records that remain.
macro_rules! charges_before {
    ("?") => {
        " - (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_hourly
              WHERE tenant_id = ?1 AND hour < ?4
                AND (hour * 3600000 / 86400000) * 86400000 NOT IN
                    (SELECT day_ms FROM charge_days WHERE tenant_id = ?1))
          - (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_events
              WHERE tenant_id = ?1 AND ts_ms >= ?5 AND ts_ms < ?2)
          - (SELECT COALESCE(SUM(e.cost_nano), 0)
              FROM (SELECT DISTINCT day_ms FROM charge_days WHERE tenant_id = ?1 AND day_ms < ?5) d
              JOIN usage_events e ON e.tenant_id = ?1 AND e.ts_ms >= d.day_ms
                AND e.ts_ms < MIN(d.day_ms + 86400000, ?5))
          - (SELECT COALESCE(SUM(cost_nano), 0) FROM charge_days
              WHERE tenant_id = ?1 AND day_ms < ?3)"
    };
    ("$") => {
        " - (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_hourly
              WHERE tenant_id = $1 AND hour < $4
                AND (hour * 3600000 / 86400000) * 86400000 NOT IN
                    (SELECT day_ms FROM charge_days WHERE tenant_id = $1))::BIGINT
          - (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_events
              WHERE tenant_id = $1 AND ts_ms >= $5 AND ts_ms < $2)::BIGINT
          - (SELECT COALESCE(SUM(e.cost_nano), 0)
              FROM (SELECT DISTINCT day_ms FROM charge_days WHERE tenant_id = $1 AND day_ms < $5) d
              JOIN usage_events e ON e.tenant_id = $1 AND e.ts_ms >= d.day_ms
                AND e.ts_ms < LEAST(d.day_ms + 86400000, $5))::BIGINT
          - (SELECT COALESCE(SUM(cost_nano), 0) FROM charge_days
              WHERE tenant_id = $1 AND day_ms < $3)::BIGINT"
    };
}
pub(crate) use charges_before;

/// A pruned day's charge summary (`charge_days`) as a statement entry: the columns
/// `Store::entry_from_row` reads, then its position (source 2, ordered by the summary's id); it
/// counts at its day's last millisecond.
macro_rules! charge_day_entry {
    () => {
        "'charges:' || strftime('%Y-%m-%d', day_ms / 1000, 'unixepoch') || ':' || id,
         'charge', -cost_nano, NULLIF(key_id, 0), NULL, NULL,
         calls || ' calls (raw records pruned)', uncollected, day_ms + 86399999,
         NULLIF(user_id, 0), NULLIF(group_id, 0), 2, id"
    };
}

/// The columns of a usage record as the recorder writes them, and one row's placeholders.
const EVENT_COLUMNS: &str = "request_id, ts_ms, tenant_id, key_id, endpoint, channel, upstream,
    model_requested, model_used, stream, status, error_code, prompt_tokens, cached_tokens,
    completion_tokens, reasoning_tokens, usage_source, attempts, latency_ms, ttft_ms, cost_nano,
    user_id, group_id, route_tier, route_reason, route_score, baseline_cost_nano,
    cache_write_tokens, uncollected, path, guardrails";
const EVENT_ROW_SLOTS: &str =
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
/// Usage records per INSERT statement in the recorder.
const EVENT_ROWS: usize = 32;

/// A usage record's values that SQLite takes in another type than the event holds them.
struct EventValues {
    ints: [Option<i64>; 11],
    route_score: Option<f64>,
}

impl EventValues {
    fn of(e: &UsageEvent) -> EventValues {
        EventValues {
            ints: [
                e.tenant_id.map(|t| t.0),
                e.key_id.map(|k| k.0),
                Some(e.prompt_tokens as i64),
                Some(e.cached_tokens as i64),
                Some(e.completion_tokens as i64),
                Some(e.reasoning_tokens as i64),
                Some(e.latency_ms as i64),
                e.ttft_ms.map(|v| v as i64),
                e.user_id.map(|u| u.0),
                e.group_id.map(|g| g.0),
                Some(e.cache_write_tokens as i64),
            ],
            route_score: e.route_score.map(f64::from),
        }
    }

    /// The row's parameters in `EVENT_COLUMNS` order.
    fn push_params<'a>(&'a self, e: &'a UsageEvent, out: &mut Vec<&'a dyn rusqlite::ToSql>) {
        let i = &self.ints;
        out.extend_from_slice(&[
            &e.request_id as &dyn rusqlite::ToSql,
            &e.ts_ms,
            &i[0],
            &i[1],
            &e.endpoint,
            &e.channel,
            &e.upstream,
            &e.model_requested,
            &e.model_used,
            &e.stream,
            &e.status,
            &e.error_code,
            &i[2],
            &i[3],
            &i[4],
            &i[5],
            &e.usage_source,
            &e.attempts,
            &i[6],
            &i[7],
            &e.cost_nano,
            &i[8],
            &i[9],
            &e.route_tier,
            &e.route_reason,
            &self.route_score,
            &e.baseline_cost_nano,
            &i[10],
            &e.uncollected,
            &e.path,
            &e.guardrails,
        ]);
    }
}

/// One tier's share of routed calls (see `Store::routing_savings`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoutingRow {
    pub tier: String,
    pub calls: i64,
    pub cost_nano: i64,
    /// What the same calls would have cost on the strongest tier.
    pub baseline_cost_nano: i64,
}

/// A credit entry (anything but a charge) with its journal sequence number.
#[derive(Debug, Clone)]
pub struct CreditRow {
    pub seq: i64,
    pub id: String,
    pub tenant_id: TenantId,
    pub amount: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct LedgerTotals {
    pub tenant_id: TenantId,
    pub credited: i64,
    pub charged: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedemptionCode {
    pub id: i64,
    pub prefix: String,
    pub batch: String,
    pub amount_nano: i64,
    pub created_ms: i64,
    pub expires_at: Option<i64>,
    pub redeemed_by: Option<TenantId>,
    pub redeemed_ms: Option<i64>,
    pub state: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    None,
    User,
    Group,
    Key,
    Model,
    Channel,
}

/// A newest-first page of a listing: rows created in `[from, to)` (unix seconds) with ids below
/// `before` (the previous page's last id), at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewestFirst {
    pub from: i64,
    pub to: i64,
    pub before: Option<i64>,
    pub limit: u32,
}

impl NewestFirst {
    /// The newest `limit` rows of any time.
    pub fn latest(limit: u32) -> NewestFirst {
        NewestFirst {
            from: i64::MIN,
            to: i64::MAX,
            before: None,
            limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AnalyticsQuery {
    pub tenant: TenantId,
    /// Unix seconds, inclusive (rounded down to the hour).
    pub from: i64,
    /// Unix seconds, exclusive (rounded up to the hour).
    pub to: i64,
    pub granularity: Granularity,
    pub group_by: Dimension,
    /// Restrict to one user's calls.
    pub user: Option<UserId>,
    /// Seconds east of UTC of the viewer's zone: `Day` buckets start at its midnight (to the
    /// hour: the roll-ups are hourly). 0 = UTC days.
    pub day_offset: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalyticsRow {
    /// Start of the bucket (unix seconds); 0 for totals.
    pub bucket: i64,
    /// The dimension's value ("" when not grouped; 0 for "no user/group/key").
    pub key: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_nano: i64,
    /// Prompt tokens written to the vendor's cache (Anthropic), part of `prompt_tokens`.
    pub cache_write_tokens: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum PromoBonus {
    /// Nano-credits granted once per tenant.
    Fixed(i64),
    /// Basis points (1/100 of a percent) of the top-up it is applied to.
    Percent(i64),
}

#[derive(Debug, Clone, Serialize)]
pub struct PromoCampaign {
    pub id: i64,
    pub code: String,
    pub bonus: PromoBonus,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub created_at: i64,
}

/// Where a usage listing (newest first) stands: the last record returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsagePos {
    pub ts_ms: i64,
    pub id: i64,
}

/// A usage listing: the filters, the time range `[from_ms, to_ms)` and the page.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub tenant: Option<TenantId>,
    /// The calls made with this user's keys.
    pub user: Option<UserId>,
    /// The calls for this model (as asked for, or as the upstream named it).
    pub model: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only records before this position (the previous page's last).
    pub before: Option<UsagePos>,
    pub limit: u32,
}

/// Where a statement (oldest first) stands: time, source (0 journal, 1 charge) and row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementPos {
    pub ts_ms: i64,
    pub src: i64,
    pub ord: i64,
}

/// What a charge row of a statement says about its call.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CallDetail {
    pub model: Option<String>,
    pub channel: Option<String>,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
}

/// One row of a statement page.
#[derive(Debug, Clone)]
pub struct StatementRow {
    pub entry: LedgerEntry,
    pub pos: StatementPos,
    /// Charge rows: the call's model, channel and tokens.
    pub call: Option<CallDetail>,
}

/// An idempotency key sent with a money-in request. Keys are scoped to their tenant and kind of
/// request (`scope`: `topup`, `adjust`): the same key on two tenants is two keys.
/// `fingerprint` digests the request's parameters, so that a key reused for a different
/// request is refused rather than answered with the first request's result.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub scope: &'static str,
    pub key: String,
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// The journal id of the (first) entry the request commits: unique per tenant, scope, key.
    pub fn entry_id(&self, tenant: TenantId) -> String {
        format!("{}:{}:{}", self.scope, tenant.0, self.key)
    }
}

/// What an idempotency key recorded: the entries its first request committed and, once given,
/// that request's answer.
#[derive(Debug, Clone)]
pub struct IdempotentRecord {
    /// Empty for keys recorded before fingerprints existed (schema 14): any request matches.
    pub fingerprint: String,
    pub entry_ids: Vec<String>,
    /// (status, body) of the first answer.
    pub answer: Option<(u16, String)>,
    pub created_ms: i64,
}

/// The outcome of a money-in request.
#[derive(Debug, Clone)]
pub enum Credited {
    /// Committed now.
    Committed(Vec<LedgerEntry>),
    /// The idempotency key was used before: nothing was committed.
    Replay(IdempotentRecord),
}

#[derive(Debug, Clone, Copy)]
pub enum LimitSubject {
    Tenant(TenantId),
    User(UserId),
    Key(KeyId),
}

/// A statement whose UNIQUE-constraint failure means "already exists" to the caller.
fn unique(r: rusqlite::Result<usize>, what: impl FnOnce() -> String) -> Result<usize, StoreError> {
    match r {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(what()))
        }
        other => Ok(other?),
    }
}

/// The (rpm, tpm) limit columns starting at `i`; NULL or out of range means unlimited.
fn limits_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Limits> {
    Ok(Limits {
        rpm: r
            .get::<_, Option<i64>>(i)?
            .and_then(|v| u32::try_from(v).ok()),
        tpm: r
            .get::<_, Option<i64>>(i + 1)?
            .and_then(|v| u64::try_from(v).ok()),
    })
}

/// (fingerprint, entry ids as JSON, status, body, created_ms) of an idempotency key.
type IdempotencyRow = (String, String, Option<i64>, Option<String>, i64);

/// (id, kind, value, expires_at, max_uses, uses) of a promotion campaign.
type PromoRow = (i64, String, i64, Option<i64>, Option<i64>, i64);

/// (id, tenant, email, role, group, expires_at, accepted_user_id) of an invitation.
type InviteRow = (
    i64,
    i64,
    String,
    String,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
);
type MakeAccount = fn(i64) -> Account;

pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub tenant_id: TenantId,
    pub name: String,
    pub default_channel: String,
    pub allowed_channels: Vec<String>,
    pub allowed_models: Vec<String>,
    pub expires_at: Option<i64>,
    /// Lifetime spending cap of the key, in nano-credits.
    pub quota_nano: Option<i64>,
    /// The member who owns the key, if any.
    pub user_id: Option<UserId>,
    pub limits: Limits,
}

/// An online payment order (`Store::create_order`): money a tenant admin is paying through a
/// provider, credited once when the provider says it is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentOrder {
    pub id: i64,
    pub tenant_id: TenantId,
    /// `stripe`, `alipay` or `wechat`.
    pub provider: String,
    /// In the currency's minor unit (fen for CNY).
    pub amount_minor: i64,
    pub currency: String,
    pub promo_code: Option<String>,
    /// `created`, `pending`, `paid`, `expired`, `failed` or `refunded`.
    pub state: String,
    /// The provider's id for it (a Checkout Session, a trade number).
    pub provider_ref: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub paid_at: Option<i64>,
    /// Paid after it had expired (credited all the same, and flagged).
    pub late: bool,
    /// The top-up entry it was credited with.
    pub entry_id: Option<String>,
    /// What it brought: the top-up and its promotion bonus, in nano-credits.
    pub credited_nano: i64,
    /// Refunded so far (processing or done), in fen.
    pub refunded_minor: i64,
}

/// A tenant's alert thresholds and where alerts go (`Store::set_alert_settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    pub tenant_id: TenantId,
    /// Alert when the available balance is below this (nano-credits).
    pub balance_below_nano: Option<i64>,
    /// Alert when the available balance covers fewer days than this of the last 7 days'
    /// average daily spend.
    pub balance_days: Option<i64>,
    /// Percent thresholds of every department budget, user quota and key quota (e.g. 80, 100).
    pub quota_percents: Vec<u32>,
    pub emails: Vec<String>,
    pub webhook_url: Option<String>,
    /// The HMAC secret webhooks are signed with.
    pub webhook_secret: Option<String>,
    pub enabled: bool,
    pub updated_at: i64,
}

/// What a new reading of an alert's level did to its stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertMove {
    /// Rose from the level given: this caller (one in the whole fleet) sends the alert.
    Fired(i64),
    /// Fell (a top-up, a new quota period): armed again, nothing sent.
    Rearmed,
    Same,
}

/// One delivery of an alert to one email address or webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDelivery {
    pub id: i64,
    pub tenant_id: TenantId,
    pub alert_id: String,
    pub kind: String,
    pub subject: String,
    /// `email` or `webhook`.
    pub channel: String,
    pub target: String,
    /// `pending`, `delivered` or `failed` (after the last retry).
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub payload: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of the audit trail: what the chain covers is `entry` (canonical JSON of every
/// field), `hash = sha256(prev_hash + "\n" + entry)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub at_ms: i64,
    pub tenant_id: Option<TenantId>,
    pub actor: String,
    pub action: String,
    pub status: i64,
    pub entry: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of an audit entry after `prev_hash` (hex SHA-256).
pub fn audit_hash(prev_hash: &str, entry: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(entry.as_bytes());
    hex::encode(h.finalize())
}

/// The hash before the first entry.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A refund of (part of) a paid order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: i64,
    pub order_id: i64,
    pub tenant_id: TenantId,
    pub amount_minor: i64,
    /// The credits debited for it (the refunded share of what the order brought).
    pub debit_nano: i64,
    /// `requested`, `processing`, `succeeded` or `failed` (the debit given back).
    pub state: String,
    pub provider_ref: Option<String>,
    pub reason: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A console sign-in's account (`Store::login_account`).
#[derive(Debug, Clone)]
pub struct LoginAccount {
    pub principal: UserPrincipal,
    /// argon2id PHC string; `None` until the user sets a password.
    pub password_hash: Option<String>,
    pub failed_logins: i64,
    /// Unix seconds until which sign-in is refused.
    pub locked_until: Option<i64>,
}

/// A console session just created: the token (the cookie's value, stored hashed) and the CSRF
/// token every form of the session carries.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token: String,
    pub csrf: String,
    pub expires_at: i64,
}

impl NewSession {
    pub fn generate(ttl_secs: i64) -> NewSession {
        NewSession {
            token: generate_key().replacen("tg-", "tgs-", 1),
            csrf: generate_key().replacen("tg-", "", 1),
            expires_at: unix_now() + ttl_secs,
        }
    }
}

/// A single sign-on in flight (`Store::create_sso_flow`): what the callback needs besides the
/// provider's code.
#[derive(Debug, Clone)]
pub struct SsoFlow {
    pub tenant: TenantId,
    pub nonce: String,
    pub pkce_verifier: String,
    pub redirect_uri: String,
    /// The console page to open after signing in.
    pub next: String,
    pub expires_at: i64,
}

/// A live console session (`Store::session`): its user (`None`: the operator).
#[derive(Debug, Clone)]
pub struct Session {
    pub user: Option<UserPrincipal>,
    pub csrf: String,
    pub expires_at: i64,
}

/// Who is calling the admin API.
#[derive(Debug, Clone)]
pub struct UserPrincipal {
    pub user: User,
    pub tenant_name: String,
}

/// The record: one SQLite file (the embedded default), or PostgreSQL (`Store::open_postgres`),
/// behind the same synchronous calls. On PostgreSQL every call runs the `store::pg` domain
/// implementation on the store's own runtime (`store::backend`).
#[derive(Clone)]
pub struct Store {
    conn: Option<Arc<Mutex<Connection>>>,
    pg: Option<Arc<crate::store::backend::PgBackend>>,
}

/// On PostgreSQL, answers the call from the `store::pg` implementation: `pg!(self, { owned
/// copies of the arguments; } s => future on s)`.
macro_rules! pg {
    ($self:ident, { $($prep:tt)* } $s:ident => $body:expr) => {
        if let Some(pg) = &$self.pg {
            $($prep)*
            return pg.run(move |$s| Box::pin(async move { $body }));
        }
    };
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        Store::init(conn)
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        // WAL lets the CLI and the gateway use the file at once; busy_timeout rides out the
        // short write locks of batched inserts.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Transactions take the write lock when they begin (BEGIN IMMEDIATE), where the busy
        // timeout applies. A deferred one that reads first fails at once with "database is
        // locked" when it then writes after another process (a cluster node on the same file)
        // committed in between, whatever the timeout.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let store = Store {
            conn: Some(Arc::new(Mutex::new(conn))),
            pg: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The record on PostgreSQL (`postgres://...`): connects with `max_connections` pooled
    /// connections and brings the schema up to date (`store::pg`).
    pub fn open_postgres(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let backend = crate::store::backend::PgBackend::open(url, max_connections)?;
        Ok(Store {
            conn: None,
            pg: Some(Arc::new(backend)),
        })
    }

    /// One retention pass (`store::retention`): raw usage records of the days before
    /// `cutoff_ms` (a UTC midnight) are written to `archive` (when set), then removed in bounded
    /// batches, each batch adding its charges to the day summaries in the same transaction. At
    /// most `max_rows` records per pass; the rest waits for the next one. Records are taken in
    /// insertion order up to the first batch with nothing old in it, so a record stored late
    /// for an old day goes with a later pass.
    pub fn prune_usage(
        &self,
        cutoff_ms: i64,
        archive: Option<&Path>,
        node: &str,
        max_rows: u64,
    ) -> Result<PruneReport, StoreError> {
        pg!(self, {
            let archive = archive.map(Path::to_path_buf);
            let node = node.to_string();
        } s => s.prune_usage(cutoff_ms, archive.as_deref(), &node).await);
        // Processes sharing the file (cluster mode on one host) prune one at a time, so that a
        // record is archived once: a lease in `meta` (its expiry), taken when free or expired.
        let lease = unix_now_ms() + 3_600_000;
        let got = self.with(|c| {
            Ok(c.execute(
                "INSERT INTO meta (k, v) VALUES ('prune_lease', ?1)
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v WHERE meta.v < ?2",
                params![lease, unix_now_ms()],
            )? == 1)
        })?;
        if !got {
            return Ok(PruneReport {
                skipped: true,
                ..PruneReport::default()
            });
        }
        let out = self.prune_usage_leased(cutoff_ms, archive, node, max_rows);
        let _ = self.with(|c| {
            c.execute(
                "UPDATE meta SET v = 0 WHERE k = 'prune_lease' AND v = ?1",
                params![lease],
            )?;
            Ok(())
        });
        out
    }

    fn prune_usage_leased(
        &self,
        cutoff_ms: i64,
        archive: Option<&Path>,
        node: &str,
        max_rows: u64,
    ) -> Result<PruneReport, StoreError> {
        const READ_BATCH: i64 = 5_000;
        const DELETE_BATCH: usize = 2_000;
        let json = format!(
            "json_object({})",
            EVENT_COLUMNS
                .split(',')
                .map(str::trim)
                .chain(["id"])
                .map(|c| format!("'{c}', {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A record is turned into JSON only when it is old and an archive is written.
        let read = format!(
            "SELECT CASE WHEN ts_ms < ?2 AND ?3 THEN {json} END, id, ts_ms FROM usage_events
             WHERE id > ?1 ORDER BY id LIMIT {READ_BATCH}"
        );
        let mut writers: std::collections::BTreeMap<i64, ArchiveWriter> = Default::default();
        // The old records: (id, day).
        let mut old: Vec<(i64, i64)> = Vec::new();
        let mut after = 0i64;
        loop {
            let page: Vec<(Option<String>, i64, i64)> = self.with(|c| {
                let mut st = c.prepare_cached(&read)?;
                let rows = st.query_map(params![after, cutoff_ms, archive.is_some()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })?;
            let Some(&(_, last, _)) = page.last() else {
                break;
            };
            after = last;
            let before = old.len();
            for (line, id, ts) in &page {
                if *ts >= cutoff_ms {
                    continue;
                }
                if let Some(dir) = archive {
                    let day = day_of(*ts);
                    let w = match writers.entry(day) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(ArchiveWriter::create(dir, day)?)
                        }
                    };
                    w.line(line.as_deref().unwrap_or("{}"))?;
                }
                old.push((*id, day_of(*ts)));
            }
            if old.len() == before || old.len() as u64 >= max_rows {
                break;
            }
        }
        let mut report = PruneReport::default();
        if old.is_empty() {
            return Ok(report);
        }
        // The archives are durable before anything is removed.
        let now = unix_now_ms();
        for (day, w) in writers {
            let (path, rows) = w.finish()?;
            let file = path.display().to_string();
            self.with(|c| {
                c.execute(
                    "INSERT INTO usage_archives (day_ms, rows, file, node, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![day, rows as i64, file, node, now],
                )?;
                Ok(())
            })?;
            report.files.push(file);
        }
        let mut days = std::collections::BTreeSet::new();
        for chunk in old.chunks(DELETE_BATCH) {
            let (lo, hi) = (chunk[0].0, chunk[chunk.len() - 1].0);
            let gone = self.with(|c| {
                let tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO charge_days (tenant_id, day_ms, key_id, user_id, group_id, calls,
                        cost_nano, uncollected)
                     SELECT tenant_id, ts_ms - ts_ms % 86400000, COALESCE(key_id, 0),
                            COALESCE(user_id, 0), COALESCE(group_id, 0), COUNT(*), SUM(cost_nano),
                            SUM(uncollected)
                     FROM usage_events
                     WHERE id BETWEEN ?1 AND ?2 AND ts_ms < ?3 AND tenant_id IS NOT NULL
                       AND (cost_nano != 0 OR uncollected != 0)
                     GROUP BY 1, 2, 3, 4, 5
                     ON CONFLICT (tenant_id, day_ms, key_id, user_id, group_id) DO UPDATE SET
                        calls = calls + excluded.calls,
                        cost_nano = cost_nano + excluded.cost_nano,
                        uncollected = uncollected + excluded.uncollected",
                    params![lo, hi, cutoff_ms],
                )?;
                let n = tx.execute(
                    "DELETE FROM usage_events WHERE id BETWEEN ?1 AND ?2 AND ts_ms < ?3",
                    params![lo, hi, cutoff_ms],
                )?;
                if n != chunk.len() {
                    // Someone else pruned these (another process on the same file): leave them.
                    return Ok(None);
                }
                tx.commit()?;
                Ok(Some(n))
            })?;
            match gone {
                Some(n) => {
                    report.rows += n as u64;
                    days.extend(chunk.iter().map(|(_, day)| *day));
                }
                None => {
                    tracing::warn!(
                        "retention: records changed while they were pruned; stopping this pass"
                    );
                    break;
                }
            }
        }
        report.days = days.into_iter().collect();
        Ok(report)
    }

    /// Whether the record is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(conn) = &self.conn else {
            return Err(StoreError::Invalid(
                "this operation needs the SQLite store".into(),
            ));
        };
        let mut guard = conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut guard)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
            )?;
            let current: i64 = c.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
            for (i, sql) in MIGRATIONS.iter().enumerate() {
                let version = i as i64 + 1;
                if version <= current {
                    continue;
                }
                let tx = c.transaction()?;
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, unix_now()],
                )?;
                tx.commit()?;
            }
            Ok(())
        })
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        pg!(self, {} s => s.schema_version().await);
        self.with(|c| {
            Ok(
                c.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }

    pub fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        pg!(self, { let n = name.to_string(); } s => crate::store::Directory::create_tenant(&s, &n).await);
        let name = crate::store::checked_name(name, "tenant")?;
        self.with(|c| {
            let now = unix_now();
            match c.execute(
                "INSERT INTO tenants (name, created_at) VALUES (?1, ?2)",
                params![name, now],
            ) {
                Ok(_) => Ok(Tenant {
                    id: TenantId(c.last_insert_rowid()),
                    name: name.to_string(),
                    created_at: now,
                    limits: Limits::default(),
                }),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::Conflict(format!(
                        "tenant `{name}` already exists"
                    )))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    pub fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        pg!(self, {} s => crate::store::Directory::list_tenants(&s).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, name, created_at, rpm_limit, tpm_limit FROM tenants ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Tenant {
                    id: TenantId(r.get(0)?),
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    limits: limits_at(r, 3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// A tenant by numeric id or by name.
    pub fn find_tenant(&self, id_or_name: &str) -> Result<Tenant, StoreError> {
        pg!(self, { let q = id_or_name.to_string(); } s => crate::store::Directory::find_tenant(&s, &q).await);
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT id, name, created_at, rpm_limit, tpm_limit FROM tenants WHERE name = ?1 OR CAST(id AS TEXT) = ?1",
                    params![id_or_name],
                    |r| {
                        Ok(Tenant {
                            id: TenantId(r.get(0)?),
                            name: r.get(1)?,
                            created_at: r.get(2)?,
                            limits: limits_at(r, 3)?,
                        })
                    },
                )
                .optional()?;
            row.ok_or_else(|| StoreError::not_found("tenant", format!("`{id_or_name}`")))
        })
    }

    fn bump_generation(c: &Connection) -> Result<(), StoreError> {
        c.execute("UPDATE meta SET v = v + 1 WHERE k = 'key_generation'", [])?;
        Ok(())
    }

    /// Create a key; returns its record and the plaintext, which is shown once and never stored.
    pub fn create_key(&self, new: &NewKey) -> Result<(ApiKey, String), StoreError> {
        pg!(self, { let new = new.clone(); } s => crate::store::Directory::create_key(&s, &new).await);
        crate::store::checked_name(&new.name, "key")?;
        let plaintext = generate_key();
        let hash = hash_key(&plaintext);
        let prefix = display_prefix(&plaintext);
        let allowed_channels = serde_json::to_string(&new.allowed_channels)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let allowed_models = serde_json::to_string(&new.allowed_models)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let id = self.with(|c| {
            let tx = c.transaction()?;
            let exists: Option<i64> = tx
                .query_row("SELECT id FROM tenants WHERE id = ?1", params![new.tenant_id.0], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::not_found("tenant", new.tenant_id.0));
            }
            if let Some(u) = new.user_id {
                let owner: Option<i64> = tx
                    .query_row("SELECT tenant_id FROM users WHERE id = ?1", params![u.0], |r| r.get(0))
                    .optional()?;
                if owner != Some(new.tenant_id.0) {
                    return Err(StoreError::not_found("user", u.0));
                }
            }
            tx.execute(
                "INSERT INTO api_keys (tenant_id, name, key_hash, prefix, default_channel, allowed_channels, allowed_models, created_at, expires_at, quota_nano, user_id, rpm_limit, tpm_limit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    new.tenant_id.0,
                    new.name.trim(),
                    &hash[..],
                    prefix,
                    new.default_channel,
                    allowed_channels,
                    allowed_models,
                    unix_now(),
                    new.expires_at,
                    new.quota_nano,
                    new.user_id.map(|u| u.0),
                    new.limits.rpm,
                    new.limits.tpm.map(|t| t as i64)
                ],
            )?;
            let id = tx.last_insert_rowid();
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(id)
        })?;
        let key = self.get_key(KeyId(id))?;
        Ok((key, plaintext))
    }

    const KEY_COLUMNS: &'static str = "k.id, k.tenant_id, t.name, k.name, k.prefix, k.default_channel, k.allowed_channels, k.allowed_models, k.created_at, k.expires_at, k.revoked_at, k.quota_nano, k.user_id, u.quota_nano, u.group_id, g.budget_nano, u.disabled_at, k.rpm_limit, k.tpm_limit, u.rpm_limit, u.tpm_limit, t.rpm_limit, t.tpm_limit, t.quota_period, t.router_override, k.allowed_cidrs, t.allowed_cidrs, t.guardrails";
    const KEY_FROM: &'static str = "api_keys k JOIN tenants t ON t.id = k.tenant_id LEFT JOIN users u ON u.id = k.user_id LEFT JOIN groups g ON g.id = u.group_id";

    fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
        let channels: String = r.get(6)?;
        let models: String = r.get(7)?;
        Ok(ApiKey {
            id: KeyId(r.get(0)?),
            tenant_id: TenantId(r.get(1)?),
            tenant_name: r.get(2)?,
            name: r.get(3)?,
            prefix: r.get(4)?,
            default_channel: r.get(5)?,
            allowed_channels: serde_json::from_str(&channels).unwrap_or_default(),
            allowed_models: serde_json::from_str(&models).unwrap_or_default(),
            created_at: r.get(8)?,
            expires_at: r.get(9)?,
            revoked_at: r.get(10)?,
            quota_nano: r.get(11)?,
            user_id: r.get::<_, Option<i64>>(12)?.map(UserId),
            user_quota_nano: r.get(13)?,
            group_id: r.get::<_, Option<i64>>(14)?.map(GroupId),
            group_budget_nano: r.get(15)?,
            user_disabled: r.get::<_, Option<i64>>(16)?.is_some(),
            key_limits: limits_at(r, 17)?,
            user_limits: limits_at(r, 19)?,
            tenant_limits: limits_at(r, 21)?,
            quota_period: QuotaPeriod::parse(&r.get::<_, String>(23)?).unwrap_or_default(),
            // Validated when it was set; a row that no longer parses routes with the defaults.
            router_override: r
                .get::<_, Option<String>>(24)?
                .and_then(|j| serde_json::from_str(&j).ok())
                .map(std::sync::Arc::new),
            network: crate::tenancy::NetworkRule::from_lists(
                r.get::<_, Option<String>>(25)?.as_deref(),
                r.get::<_, Option<String>>(26)?.as_deref(),
            ),
            guardrails: r
                .get::<_, Option<String>>(27)?
                .and_then(|t| crate::guardrails::Compiled::cached(&t)),
        })
    }

    pub fn get_key(&self, id: KeyId) -> Result<ApiKey, StoreError> {
        pg!(self, {} s => crate::store::Directory::get_key(&s, id).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM {} WHERE k.id = ?1",
                Store::KEY_COLUMNS,
                Store::KEY_FROM
            );
            c.query_row(&sql, params![id.0], Store::key_from_row)
                .optional()?
                .ok_or_else(|| StoreError::not_found("key", id.0))
        })
    }

    pub fn list_keys(&self, tenant: Option<TenantId>) -> Result<Vec<ApiKey>, StoreError> {
        pg!(self, {} s => crate::store::Directory::list_keys(&s, tenant).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM {} WHERE (?1 IS NULL OR k.tenant_id = ?1) ORDER BY k.id",
                Store::KEY_COLUMNS,
                Store::KEY_FROM
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![tenant.map(|t| t.0)], Store::key_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn revoke_key(&self, id: KeyId) -> Result<ApiKey, StoreError> {
        pg!(self, {} s => crate::store::Directory::revoke_key(&s, id).await);
        self.with(|c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.0, unix_now()],
            )?;
            if n == 0 {
                let exists: Option<i64> = c
                    .query_row(
                        "SELECT id FROM api_keys WHERE id = ?1",
                        params![id.0],
                        |r| r.get(0),
                    )
                    .optional()?;
                if exists.is_none() {
                    return Err(StoreError::not_found("key", id.0));
                }
            }
            Store::bump_generation(c)?;
            Ok(())
        })?;
        self.get_key(id)
    }

    pub fn update_key(&self, id: KeyId, patch: &KeyPatch) -> Result<ApiKey, StoreError> {
        pg!(self, { let patch = patch.clone(); } s => crate::store::Directory::update_key(&s, id, &patch).await);
        if let Some(name) = &patch.name {
            crate::store::checked_name(name, "key")?;
        }
        let json = |v: &Option<Vec<String>>| -> Result<Option<String>, StoreError> {
            v.as_ref()
                .map(|v| serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string())))
                .transpose()
        };
        let (channels, models) = (json(&patch.allowed_channels)?, json(&patch.allowed_models)?);
        self.with(|c| {
            let tx = c.transaction()?;
            let revoked: Option<Option<i64>> = tx
                .query_row(
                    "SELECT revoked_at FROM api_keys WHERE id = ?1",
                    params![id.0],
                    |r| r.get(0),
                )
                .optional()?;
            match revoked {
                None => return Err(StoreError::not_found("key", id.0)),
                Some(Some(_)) => {
                    return Err(StoreError::Conflict(
                        "a revoked key cannot be changed".into(),
                    ))
                }
                Some(None) => {}
            }
            tx.execute(
                "UPDATE api_keys SET
                    name = COALESCE(?2, name),
                    default_channel = COALESCE(?3, default_channel),
                    allowed_channels = COALESCE(?4, allowed_channels),
                    allowed_models = COALESCE(?5, allowed_models),
                    expires_at = CASE WHEN ?6 THEN ?7 ELSE expires_at END,
                    quota_nano = CASE WHEN ?8 THEN ?9 ELSE quota_nano END
                 WHERE id = ?1",
                params![
                    id.0,
                    patch.name.as_deref().map(str::trim),
                    patch.default_channel,
                    channels,
                    models,
                    patch.expires_at.is_some(),
                    patch.expires_at.flatten(),
                    patch.quota_nano.is_some(),
                    patch.quota_nano.flatten()
                ],
            )?;
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(())
        })?;
        self.get_key(id)
    }

    pub fn rotate_key(&self, id: KeyId) -> Result<(ApiKey, String), StoreError> {
        pg!(self, {} s => crate::store::Directory::rotate_key(&s, id).await);
        let plaintext = generate_key();
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE api_keys SET key_hash = ?2, prefix = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.0, &hash_key(&plaintext)[..], display_prefix(&plaintext)],
            )?;
            if n == 0 {
                let exists: Option<i64> = tx
                    .query_row("SELECT id FROM api_keys WHERE id = ?1", params![id.0], |r| r.get(0))
                    .optional()?;
                return Err(match exists {
                    None => StoreError::not_found("key", id.0),
                    Some(_) => StoreError::Conflict("a revoked key cannot be rotated".into()),
                });
            }
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok((self.get_key(id)?, plaintext))
    }

    /// Every row of one of the store's tables, with its column names (`store migrate`).
    /// `table` is one of the schema's table names, never input.
    pub(crate) fn dump_table(
        &self,
        table: &str,
    ) -> Result<(Vec<String>, Vec<Vec<rusqlite::types::Value>>), StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT * FROM {table}"))?;
            let columns: Vec<String> = st.column_names().iter().map(|n| n.to_string()).collect();
            let n = columns.len();
            let rows = st.query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?;
            Ok((columns, rows.collect::<Result<Vec<_>, _>>()?))
        })
    }

    pub fn key_generation(&self) -> Result<i64, StoreError> {
        pg!(self, {} s => crate::store::Directory::key_generation(&s).await);
        self.with(|c| {
            Ok(
                c.query_row("SELECT v FROM meta WHERE k = 'key_generation'", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }

    /// Every key by hash, revoked ones included (so a revoked key gets a precise error).
    pub fn load_key_snapshot(&self) -> Result<KeySnapshot, StoreError> {
        pg!(self, {} s => crate::store::Directory::load_key_snapshot(&s).await);
        self.with(|c| {
            let generation: i64 =
                c.query_row("SELECT v FROM meta WHERE k = 'key_generation'", [], |r| {
                    r.get(0)
                })?;
            let sql = format!(
                "SELECT {}, k.key_hash FROM {}",
                Store::KEY_COLUMNS,
                Store::KEY_FROM
            );
            let mut st = c.prepare(&sql)?;
            let mut rows = st.query([])?;
            let mut snap = KeySnapshot {
                by_hash: Default::default(),
                generation,
            };
            while let Some(r) = rows.next()? {
                let key = Store::key_from_row(r)?;
                let hash: Vec<u8> = r.get(28)?;
                if let Ok(h) = <[u8; 32]>::try_from(hash.as_slice()) {
                    snap.by_hash.insert(h, Arc::new(key));
                }
            }
            Ok(snap)
        })
    }

    /// Insert a batch in one transaction. Idempotent on request id: a replayed batch is a no-op.
    pub fn insert_usage_events(&self, events: &[UsageEvent]) -> Result<usize, StoreError> {
        self.record(events)
    }

    /// Commit usage records, with the charges they carry, in one transaction (the recorder's
    /// group commit), and move the roll-ups with them. Idempotent on request id.
    /// Makes every commit so far durable: in WAL mode with `synchronous = NORMAL` a commit is
    /// synced to disk only with a checkpoint, which syncs the WAL first. The charge log keeps a
    /// charge until this has run after its commit.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        pg!(self, {} s => { let _ = s; Ok(()) });
        self.with(|c| {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
    }

    /// Makes every committed transaction durable without a checkpoint: SQLite runs with
    /// `synchronous = NORMAL`, whose commits are on disk once the write-ahead log is synced, so
    /// syncing the log file is enough (a checkpoint would also copy pages into the database
    /// file, work SQLite's own automatic checkpoints do anyway). PostgreSQL commits are durable
    /// when they return.
    pub fn sync_committed(&self) -> Result<(), StoreError> {
        pg!(self, {} s => { let _ = s; Ok(()) });
        let path = self.with(|c| Ok(c.path().map(|p| format!("{p}-wal"))))?;
        match path.map(std::fs::File::open) {
            Some(Ok(wal)) => wal
                .sync_data()
                .map_err(|e| StoreError::Invalid(format!("sync {e}"))),
            // No log file: nothing committed since the last checkpoint removed it.
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => self.checkpoint(),
            Some(Err(e)) => Err(StoreError::Invalid(format!("open the log: {e}"))),
            None => Ok(()), // in memory
        }
    }

    pub fn record(&self, events: &[UsageEvent]) -> Result<usize, StoreError> {
        pg!(self, { let events = events.to_vec(); } s => crate::store::UsageLog::record(&s, &events).await);
        self.with(|c| {
            let tx = c.transaction()?;
            let mut n = 0;
            {
                let mut st = tx.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO usage_events ({EVENT_COLUMNS}) VALUES {EVENT_ROW_SLOTS}"
                ))?;
                // The roll-up moves with the event in the same transaction, and only for events
                // that were new, so a replayed batch is counted once.
                let mut roll = tx.prepare_cached(
                    "INSERT INTO usage_hourly (tenant_id, hour, key_id, user_id, group_id, model, channel, requests, errors,
                        prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (tenant_id, hour, key_id, user_id, group_id, model, channel) DO UPDATE SET
                        requests = requests + excluded.requests,
                        errors = errors + excluded.errors,
                        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                        cached_tokens = cached_tokens + excluded.cached_tokens,
                        completion_tokens = completion_tokens + excluded.completion_tokens,
                        reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
                        cost_nano = cost_nano + excluded.cost_nano,
                        cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens",
                )?;
                // Rows go in EVENT_ROWS per statement (a statement per row costs about as much
                // again as the row). A replayed batch (rows already there) is rare: that chunk
                // is rolled back and redone row by row, to know which rows were new.
                let mut fresh: Vec<bool> = Vec::with_capacity(events.len());
                let mut bulk = tx.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO usage_events ({EVENT_COLUMNS}) VALUES {}",
                    vec![EVENT_ROW_SLOTS; EVENT_ROWS].join(", ")
                ))?;
                let all: Vec<EventValues> = events.iter().map(EventValues::of).collect();
                for (chunk, values) in events.chunks(EVENT_ROWS).zip(all.chunks(EVENT_ROWS)) {
                    let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(30 * EVENT_ROWS);
                    if chunk.len() == EVENT_ROWS {
                        tx.prepare_cached("SAVEPOINT usage_chunk")?.execute([])?;
                        params.clear();
                        for (e, v) in chunk.iter().zip(values) {
                            v.push_params(e, &mut params);
                        }
                        let k = bulk.execute(params.as_slice())?;
                        if k == chunk.len() {
                            tx.prepare_cached("RELEASE usage_chunk")?.execute([])?;
                            n += k;
                            fresh.extend(std::iter::repeat_n(true, k));
                            continue;
                        }
                        tx.prepare_cached("ROLLBACK TO usage_chunk")?.execute([])?;
                        tx.prepare_cached("RELEASE usage_chunk")?.execute([])?;
                    }
                    for (e, v) in chunk.iter().zip(values) {
                        params.clear();
                        v.push_params(e, &mut params);
                        let inserted = st.execute(params.as_slice())?;
                        n += inserted;
                        fresh.push(inserted == 1);
                    }
                }
                let (deltas, dims) = crate::store::rollup_deltas(events, &fresh);
                let mut up = tx.prepare_cached(
                    "INSERT INTO usage_rollup (tenant_id, dim, period, bucket, value, requests, errors, prompt_tokens,
                        cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (tenant_id, dim, period, bucket, value) DO UPDATE SET
                        requests = requests + excluded.requests,
                        errors = errors + excluded.errors,
                        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                        cached_tokens = cached_tokens + excluded.cached_tokens,
                        completion_tokens = completion_tokens + excluded.completion_tokens,
                        reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
                        cost_nano = cost_nano + excluded.cost_nano,
                        cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens",
                )?;
                for ((tenant, dim, period, bucket, value), d) in &dims {
                    up.execute(params![tenant, dim, period, bucket, value, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])?;
                }
                for ((tenant, hour, key, user, group, model, channel), d) in &deltas {
                    roll.execute(params![tenant, hour, key, user, group, model, channel, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])?;
                }
            }
            tx.commit()?;
            Ok(n)
        })
    }

    /// Totals or a time series from the hourly roll-ups, grouped by one dimension.
    /// Reads only `usage_hourly`, so its cost grows with hours x dimension values, not calls.
    pub fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        pg!(self, { let q = q.clone(); } s => crate::store::Analytics::analytics(&s, &q).await);
        if q.user.is_none() {
            return self.analytics_by_dimension(q);
        }
        self.analytics_fine(q)
    }

    /// Unfiltered queries read the per-dimension roll-ups: whole days from the daily rows, the
    /// partial days at either end from the hourly rows, so a month is ~30 rows per value.
    fn analytics_by_dimension(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        let crate::store::RollupWindow {
            dim,
            from,
            to,
            day_from,
            day_to,
        } = crate::store::rollup_window(q);
        let bucket = crate::store::bucket_sql(q, "bucket", "0");
        let sql = format!(
            "SELECT {bucket} AS b, value, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(cached_tokens),
                    SUM(completion_tokens), SUM(reasoning_tokens), SUM(cost_nano), SUM(cache_write_tokens)
             FROM usage_rollup
             WHERE tenant_id = ?1 AND dim = ?2 AND (
                   (period = 86400 AND bucket >= ?3 AND bucket < ?4)
                OR (period = 3600 AND bucket >= ?5 AND bucket < ?6 AND (bucket < ?3 OR bucket >= ?4)))
             GROUP BY b, value ORDER BY b, value"
        );
        self.with(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![q.tenant.0, dim, day_from, day_to, from, to],
                Store::analytics_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn analytics_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AnalyticsRow> {
        Ok(AnalyticsRow {
            bucket: r.get(0)?,
            key: r.get(1)?,
            requests: r.get(2)?,
            errors: r.get(3)?,
            prompt_tokens: r.get(4)?,
            cached_tokens: r.get(5)?,
            completion_tokens: r.get(6)?,
            reasoning_tokens: r.get(7)?,
            cost_nano: r.get(8)?,
            cache_write_tokens: r.get(9)?,
        })
    }

    /// One user's calls (members' own view): from the fine-grained hourly roll-up.
    fn analytics_fine(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        let bucket = crate::store::bucket_sql(q, "hour * 3600", "0");
        let dim = match q.group_by {
            Dimension::None => "''",
            Dimension::User => "CAST(user_id AS TEXT)",
            Dimension::Group => "CAST(group_id AS TEXT)",
            Dimension::Key => "CAST(key_id AS TEXT)",
            Dimension::Model => "model",
            Dimension::Channel => "channel",
        };
        let sql = format!(
            "SELECT {bucket} AS bucket, {dim} AS dim, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(cached_tokens),
                    SUM(completion_tokens), SUM(reasoning_tokens), SUM(cost_nano), SUM(cache_write_tokens)
             FROM usage_hourly
             WHERE tenant_id = ?1 AND hour >= ?2 AND hour < ?3 AND (?4 IS NULL OR user_id = ?4)
             GROUP BY bucket, dim ORDER BY bucket, dim"
        );
        self.with(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![
                    q.tenant.0,
                    q.from.div_euclid(3600),
                    (q.to + 3599).div_euclid(3600),
                    q.user.map(|u| u.0)
                ],
                |r| {
                    Ok(AnalyticsRow {
                        bucket: r.get(0)?,
                        key: r.get(1)?,
                        requests: r.get(2)?,
                        errors: r.get(3)?,
                        prompt_tokens: r.get(4)?,
                        cached_tokens: r.get(5)?,
                        completion_tokens: r.get(6)?,
                        reasoning_tokens: r.get(7)?,
                        cost_nano: r.get(8)?,
                        cache_write_tokens: r.get(9)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Most recent usage events, newest first (tests).
    pub fn recent_usage(
        &self,
        tenant: Option<TenantId>,
        user: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        Ok(self
            .usage_page(&UsageQuery {
                tenant,
                user,
                model: None,
                from_ms: i64::MIN,
                to_ms: i64::MAX,
                before: None,
                limit,
            })?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// One page of usage records, newest first: those in `[from_ms, to_ms)` (and of the tenant,
    /// user, model asked for) before the position `before`, at most `limit`, each with its
    /// position for the next page. Pages walk the (tenant, time) index: a page costs its own
    /// rows, however deep into a tenant's history it is.
    pub fn usage_page(&self, q: &UsageQuery) -> Result<Vec<(UsagePos, UsageEvent)>, StoreError> {
        pg!(self, { let q = q.clone(); } s => crate::store::Analytics::usage_page(&s, &q).await);
        let (before_ts, before_id) = q.before.map_or((i64::MAX, i64::MAX), |p| (p.ts_ms, p.id));
        // The upper time bound includes the cursor's, so that the index range starts there.
        let upper = q.to_ms.min(before_ts.saturating_add(1));
        let mut sql = format!(
            "SELECT {EVENT_COLUMNS}, id FROM usage_events
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (ts_ms < ?3 OR (ts_ms = ?3 AND id < ?4))"
        );
        let mut args: Vec<rusqlite::types::Value> = vec![
            q.from_ms.into(),
            upper.into(),
            before_ts.into(),
            before_id.into(),
            i64::from(q.limit).into(),
        ];
        if let Some(t) = q.tenant {
            args.push(t.0.into());
            sql.push_str(&format!(" AND tenant_id = ?{}", args.len()));
        }
        if let Some(u) = q.user {
            args.push(u.0.into());
            let n = args.len();
            sql.push_str(&format!(
                " AND key_id IN (SELECT id FROM api_keys WHERE user_id = ?{n})"
            ));
        }
        if let Some(m) = &q.model {
            args.push(m.clone().into());
            let n = args.len();
            sql.push_str(&format!(
                " AND (model_requested = ?{n} OR model_used = ?{n})"
            ));
        }
        sql.push_str(" ORDER BY ts_ms DESC, id DESC LIMIT ?5");
        self.with(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
                let e = Store::event_from_row(r)?;
                let pos = UsagePos {
                    ts_ms: e.ts_ms,
                    id: r.get(31)?,
                };
                Ok((pos, e))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// A usage record from the `EVENT_COLUMNS` of a row.
    fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageEvent> {
        Ok(UsageEvent {
            request_id: r.get(0)?,
            ts_ms: r.get(1)?,
            tenant_id: r.get::<_, Option<i64>>(2)?.map(TenantId),
            key_id: r.get::<_, Option<i64>>(3)?.map(KeyId),
            endpoint: r.get(4)?,
            channel: r.get(5)?,
            upstream: r.get(6)?,
            model_requested: r.get(7)?,
            model_used: r.get(8)?,
            stream: r.get(9)?,
            status: r.get(10)?,
            error_code: r.get(11)?,
            prompt_tokens: r.get::<_, i64>(12)? as u64,
            cached_tokens: r.get::<_, i64>(13)? as u64,
            completion_tokens: r.get::<_, i64>(14)? as u64,
            reasoning_tokens: r.get::<_, i64>(15)? as u64,
            usage_source: r.get(16)?,
            attempts: r.get(17)?,
            latency_ms: r.get::<_, i64>(18)? as u64,
            ttft_ms: r.get::<_, Option<i64>>(19)?.map(|v| v as u64),
            cost_nano: r.get(20)?,
            user_id: r.get::<_, Option<i64>>(21)?.map(UserId),
            group_id: r.get::<_, Option<i64>>(22)?.map(GroupId),
            route_tier: r.get(23)?,
            route_reason: r.get(24)?,
            route_score: r.get::<_, Option<f64>>(25)?.map(|v| v as f32),
            baseline_cost_nano: r.get(26)?,
            cache_write_tokens: r.get::<_, i64>(27)? as u64,
            uncollected: r.get(28)?,
            path: r.get::<_, Option<String>>(29)?.or_else(|| {
                let endpoint: String = r.get(4).ok()?;
                crate::billing::usage::canonical_path(&endpoint).map(str::to_owned)
            }),
            guardrails: r.get(30)?,
            charge_ticket: None,
        })
    }

    // ---------------------------------------------------------------- users, groups, tokens

    const USER_COLUMNS: &'static str =
        "u.id, u.tenant_id, u.email, u.name, u.role, u.group_id, u.quota_nano, u.created_at, u.disabled_at, u.rpm_limit, u.tpm_limit, u.locked_until";

    fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
        let role: String = r.get(4)?;
        Ok(User {
            id: UserId(r.get(0)?),
            tenant_id: TenantId(r.get(1)?),
            email: r.get(2)?,
            name: r.get(3)?,
            role: Role::parse_tenant_role(&role).unwrap_or(Role::Viewer),
            group_id: r.get::<_, Option<i64>>(5)?.map(GroupId),
            quota_nano: r.get(6)?,
            created_at: r.get(7)?,
            disabled_at: r.get(8)?,
            limits: crate::tenancy::limits::Limits {
                rpm: r
                    .get::<_, Option<i64>>(9)?
                    .map(|v| v.clamp(0, u32::MAX as i64) as u32),
                tpm: r.get::<_, Option<i64>>(10)?.map(|v| v.max(0) as u64),
            },
            locked_until: r.get(11)?,
        })
    }

    fn check_group(
        c: &Connection,
        tenant: TenantId,
        group: Option<GroupId>,
    ) -> Result<(), StoreError> {
        if let Some(g) = group {
            let owner: Option<i64> = c
                .query_row(
                    "SELECT tenant_id FROM groups WHERE id = ?1",
                    params![g.0],
                    |r| r.get(0),
                )
                .optional()?;
            if owner != Some(tenant.0) {
                return Err(StoreError::not_found("group", g.0));
            }
        }
        Ok(())
    }

    pub fn create_group(
        &self,
        tenant: TenantId,
        name: &str,
        budget_nano: Option<i64>,
    ) -> Result<Group, StoreError> {
        pg!(self, { let name = name.to_string(); } s => crate::store::Members::create_group(&s, tenant, &name, budget_nano).await);
        let name = crate::store::checked_name(name, "group")?;
        self.with(|c| {
            let now = unix_now();
            unique(
                c.execute(
                    "INSERT INTO groups (tenant_id, name, budget_nano, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![tenant.0, name, budget_nano, now],
                ),
                || format!("group `{name}` already exists"),
            )?;
            let id = c.last_insert_rowid();
            Store::bump_generation(c)?;
            Ok(Group {
                id: GroupId(id),
                tenant_id: tenant,
                name: name.to_string(),
                budget_nano,
                created_at: now,
            })
        })
    }

    pub fn list_groups(&self, tenant: TenantId) -> Result<Vec<Group>, StoreError> {
        pg!(self, {} s => crate::store::Members::list_groups(&s, tenant).await);
        self.with(|c| {
            let mut st = c.prepare("SELECT id, tenant_id, name, budget_nano, created_at FROM groups WHERE tenant_id = ?1 ORDER BY id")?;
            let rows = st.query_map(params![tenant.0], |r| {
                Ok(Group {
                    id: GroupId(r.get(0)?),
                    tenant_id: TenantId(r.get(1)?),
                    name: r.get(2)?,
                    budget_nano: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    const ORDER_COLUMNS: &'static str =
        "id, tenant_id, provider, amount_minor, currency, promo_code, state, provider_ref,
         created_by, created_at, expires_at, paid_at, late, entry_id, credited_nano, refunded_minor";

    fn order_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PaymentOrder> {
        Ok(PaymentOrder {
            id: r.get(0)?,
            tenant_id: TenantId(r.get(1)?),
            provider: r.get(2)?,
            amount_minor: r.get(3)?,
            currency: r.get(4)?,
            promo_code: r.get(5)?,
            state: r.get(6)?,
            provider_ref: r.get(7)?,
            created_by: r.get(8)?,
            created_at: r.get(9)?,
            expires_at: r.get(10)?,
            paid_at: r.get(11)?,
            late: r.get::<_, i64>(12)? != 0,
            entry_id: r.get(13)?,
            credited_nano: r.get(14)?,
            refunded_minor: r.get(15)?,
        })
    }

    // ---------------------------------------------------------------- alerts

    fn alert_settings_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertSettings> {
        let percents: String = r.get(3)?;
        let emails: String = r.get(4)?;
        Ok(AlertSettings {
            tenant_id: TenantId(r.get(0)?),
            balance_below_nano: r.get(1)?,
            balance_days: r.get(2)?,
            quota_percents: serde_json::from_str(&percents).unwrap_or_default(),
            emails: serde_json::from_str(&emails).unwrap_or_default(),
            webhook_url: r.get(5)?,
            webhook_secret: r.get(6)?,
            enabled: r.get::<_, i64>(7)? != 0,
            updated_at: r.get(8)?,
        })
    }

    const ALERT_SETTINGS_COLUMNS: &'static str = "tenant_id, balance_below_nano, balance_days, quota_percents, emails, webhook_url, webhook_secret, enabled, updated_at";

    /// Replaces a tenant's alert settings.
    pub fn set_alert_settings(&self, a: &AlertSettings) -> Result<AlertSettings, StoreError> {
        pg!(self, { let a = a.clone(); } s => crate::store::Alerts::set_alert_settings(&s, &a).await);
        let percents = serde_json::to_string(&a.quota_percents).unwrap_or_else(|_| "[]".into());
        let emails = serde_json::to_string(&a.emails).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            let tx = c.transaction()?;
            Store::require_tenant(&tx, a.tenant_id)?;
            tx.execute(
                "INSERT INTO alert_settings (tenant_id, balance_below_nano, balance_days, quota_percents, emails, webhook_url, webhook_secret, enabled, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (tenant_id) DO UPDATE SET balance_below_nano = excluded.balance_below_nano,
                    balance_days = excluded.balance_days, quota_percents = excluded.quota_percents,
                    emails = excluded.emails, webhook_url = excluded.webhook_url,
                    webhook_secret = excluded.webhook_secret, enabled = excluded.enabled, updated_at = excluded.updated_at",
                params![a.tenant_id.0, a.balance_below_nano, a.balance_days, percents, emails, a.webhook_url, a.webhook_secret, a.enabled as i64, unix_now()],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        self.alert_settings(a.tenant_id)?
            .ok_or_else(|| StoreError::not_found("alert settings", a.tenant_id.0))
    }

    pub fn alert_settings(&self, tenant: TenantId) -> Result<Option<AlertSettings>, StoreError> {
        pg!(self, {} s => crate::store::Alerts::alert_settings(&s, tenant).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM alert_settings WHERE tenant_id = ?1",
                Store::ALERT_SETTINGS_COLUMNS
            );
            Ok(
                c.query_row(&sql, params![tenant.0], Store::alert_settings_from_row)
                    .optional()?,
            )
        })
    }

    /// Every tenant's enabled alert settings.
    pub fn enabled_alert_settings(&self) -> Result<Vec<AlertSettings>, StoreError> {
        pg!(self, {} s => crate::store::Alerts::enabled_alert_settings(&s).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM alert_settings WHERE enabled = 1 ORDER BY tenant_id",
                Store::ALERT_SETTINGS_COLUMNS
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map([], Store::alert_settings_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records the level an alert's subject is at now (0: below every threshold). Across
    /// processes sharing the store, exactly one caller sees a given rise (`Fired`).
    pub fn alert_level(
        &self,
        tenant: TenantId,
        subject: &str,
        level: i64,
    ) -> Result<AlertMove, StoreError> {
        pg!(self, { let subject = subject.to_string(); } s => crate::store::Alerts::alert_level(&s, tenant, &subject, level).await);
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: i64 = tx
                .query_row(
                    "SELECT level FROM alert_state WHERE tenant_id = ?1 AND subject = ?2",
                    params![tenant.0, subject],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if before == level {
                return Ok(AlertMove::Same);
            }
            tx.execute(
                "INSERT INTO alert_state (tenant_id, subject, level, changed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, subject) DO UPDATE SET level = excluded.level, changed_at = excluded.changed_at",
                params![tenant.0, subject, level, unix_now()],
            )?;
            tx.commit()?;
            Ok(if level > before {
                AlertMove::Fired(before)
            } else {
                AlertMove::Rearmed
            })
        })
    }

    /// Average daily charges of a tenant over the last `days` full days and today so far, in
    /// nano-credits.
    pub fn daily_spend(&self, tenant: TenantId, days: i64) -> Result<i64, StoreError> {
        pg!(self, {} s => crate::store::Alerts::daily_spend(&s, tenant, days).await);
        let from_hour = (unix_now() - days * 86_400).div_euclid(3600);
        let spent: i64 = self.with(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(SUM(cost_nano), 0) FROM usage_hourly WHERE tenant_id = ?1 AND hour >= ?2",
                params![tenant.0, from_hour],
                |r| r.get(0),
            )?)
        })?;
        Ok(spent / days.max(1))
    }

    pub fn add_alert_delivery(&self, d: &AlertDelivery) -> Result<i64, StoreError> {
        pg!(self, { let d = d.clone(); } s => crate::store::Alerts::add_alert_delivery(&s, &d).await);
        self.with(|c| {
            c.execute(
                "INSERT INTO alert_deliveries (tenant_id, alert_id, kind, subject, channel, target, state, attempts, last_error, payload, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                params![d.tenant_id.0, d.alert_id, d.kind, d.subject, d.channel, d.target, d.state, d.attempts, d.last_error, d.payload, unix_now()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn update_alert_delivery(
        &self,
        id: i64,
        state: &str,
        attempts: i64,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        pg!(self, { let state = state.to_string(); let last_error = last_error.map(str::to_string); } s => crate::store::Alerts::update_alert_delivery(&s, id, &state, attempts, last_error.as_deref()).await);
        self.with(|c| {
            c.execute(
                "UPDATE alert_deliveries SET state = ?2, attempts = ?3, last_error = ?4, updated_at = ?5 WHERE id = ?1",
                params![id, state, attempts, last_error, unix_now()],
            )?;
            Ok(())
        })
    }

    /// A tenant's alert deliveries, newest first.
    pub fn alert_deliveries(
        &self,
        tenant: TenantId,
        page: NewestFirst,
    ) -> Result<Vec<AlertDelivery>, StoreError> {
        pg!(self, {} s => crate::store::Alerts::alert_deliveries(&s, tenant, page).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, tenant_id, alert_id, kind, subject, channel, target, state, attempts, last_error, payload, created_at, updated_at
                 FROM alert_deliveries WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3
                   AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = st.query_map(params![tenant.0, page.from, page.to, page.before, page.limit], |r| {
                Ok(AlertDelivery {
                    id: r.get(0)?,
                    tenant_id: TenantId(r.get(1)?),
                    alert_id: r.get(2)?,
                    kind: r.get(3)?,
                    subject: r.get(4)?,
                    channel: r.get(5)?,
                    target: r.get(6)?,
                    state: r.get(7)?,
                    attempts: r.get(8)?,
                    last_error: r.get(9)?,
                    payload: r.get(10)?,
                    created_at: r.get(11)?,
                    updated_at: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    // ---------------------------------------------------------------- audit trail

    /// Appends an entry to the audit trail, chained to the last one (under the store's write
    /// lock, so that concurrent writers, processes included, chain in one order). `entry` is
    /// the canonical JSON of the event without its sequence number; the stored entry adds it.
    pub fn append_audit(
        &self,
        at_ms: i64,
        tenant: Option<TenantId>,
        actor: &str,
        action: &str,
        status: i64,
        fields: &serde_json::Value,
    ) -> Result<AuditRow, StoreError> {
        pg!(self, { let actor = actor.to_string(); let action = action.to_string(); let fields = fields.clone(); } s => crate::store::Audit::append_audit(&s, at_ms, tenant, &actor, &action, status, &fields).await);
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let last: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (seq, prev) = match last {
                Some((s, h)) => (s + 1, h),
                None => (1, AUDIT_GENESIS.to_string()),
            };
            let entry = crate::store::audit_entry(seq, at_ms, tenant, actor, action, status, fields);
            let hash = audit_hash(&prev, &entry);
            tx.execute(
                "INSERT INTO audit_log (seq, at_ms, tenant_id, actor, action, status, entry, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![seq, at_ms, tenant.map(|t| t.0), actor, action, status, entry, prev, hash],
            )?;
            tx.commit()?;
            Ok(AuditRow {
                seq,
                at_ms,
                tenant_id: tenant,
                actor: actor.to_string(),
                action: action.to_string(),
                status,
                entry,
                prev_hash: prev,
                hash,
            })
        })
    }

    /// Audit entries, newest first: of one tenant (`None`: all), before `before_seq`, in a time
    /// range, at most `limit`.
    pub fn list_audit(&self, q: &crate::store::AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        pg!(self, { let q = q.clone(); } s => crate::store::Audit::list_audit(&s, &q).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT seq, at_ms, tenant_id, actor, action, status, entry, prev_hash, hash FROM audit_log
                 WHERE (?1 IS NULL OR tenant_id = ?1) AND seq < ?2 AND at_ms >= ?3 AND at_ms < ?4
                   AND (?5 IS NULL OR actor = ?5) AND (?6 IS NULL OR action LIKE ?6)
                 ORDER BY seq DESC LIMIT ?7",
            )?;
            let rows = st.query_map(
                params![
                    q.tenant.map(|t| t.0),
                    q.before_seq.unwrap_or(i64::MAX),
                    q.from_ms.unwrap_or(i64::MIN),
                    q.to_ms.unwrap_or(i64::MAX),
                    q.actor,
                    q.action.as_ref().map(|a| format!("%{a}%")),
                    q.limit
                ],
                Store::audit_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Audit entries in chain order from `after_seq` on (verification walks them).
    pub fn audit_chain(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        pg!(self, {} s => crate::store::Audit::audit_chain(&s, after_seq, limit).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT seq, at_ms, tenant_id, actor, action, status, entry, prev_hash, hash FROM audit_log
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after_seq, limit], Store::audit_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
        Ok(AuditRow {
            seq: r.get(0)?,
            at_ms: r.get(1)?,
            tenant_id: r.get::<_, Option<i64>>(2)?.map(TenantId),
            actor: r.get(3)?,
            action: r.get(4)?,
            status: r.get(5)?,
            entry: r.get(6)?,
            prev_hash: r.get(7)?,
            hash: r.get(8)?,
        })
    }

    /// Sets the client networks a key (or every key of a tenant) may be used from (CIDRs,
    /// validated by the caller; empty: anywhere), and bumps the key generation so that every
    /// node reloads its keys.
    pub fn set_allowed_cidrs(
        &self,
        subject: LimitSubject,
        cidrs: &[String],
    ) -> Result<Vec<String>, StoreError> {
        pg!(self, { let cidrs = cidrs.to_vec(); } s => crate::store::Network::set_allowed_cidrs(&s, subject, &cidrs).await);
        let (table, what, id) = match subject {
            LimitSubject::Tenant(t) => ("tenants", "tenant", t.0),
            LimitSubject::Key(k) => ("api_keys", "key", k.0),
            LimitSubject::User(u) => ("users", "user", u.0),
        };
        if table == "users" {
            return Err(StoreError::Invalid(
                "allow-lists are per tenant or per key".into(),
            ));
        }
        let text = (!cidrs.is_empty()).then(|| serde_json::to_string(cidrs).unwrap_or_default());
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                &format!("UPDATE {table} SET allowed_cidrs = ?2 WHERE id = ?1"),
                params![id, text],
            )?;
            if n == 0 {
                return Err(StoreError::not_found(what, id));
            }
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(cidrs.to_vec())
        })
    }

    /// Sets a tenant's guardrail policy (JSON, validated by the caller; `None`: none) and bumps
    /// the key generation so that every node reloads it with the keys.
    pub fn set_guardrails(&self, tenant: TenantId, policy: Option<&str>) -> Result<(), StoreError> {
        pg!(self, { let policy = policy.map(str::to_string); } s => crate::store::Network::set_guardrails(&s, tenant, policy.as_deref()).await);
        self.set_tenant_setting(tenant, "guardrails", &policy)
    }

    pub fn guardrails(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        pg!(self, {} s => crate::store::Network::guardrails(&s, tenant).await);
        self.tenant_setting(tenant, "guardrails")
    }

    /// Sets a tenant's single sign-on settings (JSON with the client secret, checked by the
    /// caller; `None`: off).
    pub fn set_sso(&self, tenant: TenantId, settings: Option<&str>) -> Result<(), StoreError> {
        pg!(self, { let settings = settings.map(str::to_string); } s => crate::store::Sso::set_sso(&s, tenant, settings.as_deref()).await);
        self.set_tenant_setting(tenant, "sso", &settings)
    }

    pub fn sso(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        pg!(self, {} s => crate::store::Sso::sso(&s, tenant).await);
        self.tenant_setting(tenant, "sso")
    }

    /// Keeps a sign-in in flight until the provider sends the browser back (the state is
    /// stored hashed); expired ones are dropped.
    pub fn create_sso_flow(&self, state: &str, flow: &SsoFlow) -> Result<(), StoreError> {
        pg!(self, { let state = state.to_string(); let flow = flow.clone(); } s => crate::store::Sso::create_sso_flow(&s, &state, &flow).await);
        self.with(|c| {
            c.execute("DELETE FROM sso_flows WHERE expires_at <= ?1", params![unix_now()])?;
            c.execute(
                "INSERT INTO sso_flows (state_hash, tenant_id, nonce, pkce_verifier, redirect_uri, next, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![&hash_key(state)[..], flow.tenant.0, flow.nonce, flow.pkce_verifier, flow.redirect_uri, flow.next, flow.expires_at],
            )?;
            Ok(())
        })
    }

    /// The sign-in in flight with this state, removed: a state works once, and not after it
    /// expired.
    pub fn take_sso_flow(&self, state: &str) -> Result<Option<SsoFlow>, StoreError> {
        pg!(self, { let state = state.to_string(); } s => crate::store::Sso::take_sso_flow(&s, &state).await);
        self.with(|c| {
            Ok(c.query_row(
                "DELETE FROM sso_flows WHERE state_hash = ?1 RETURNING tenant_id, nonce, pkce_verifier, redirect_uri, next, expires_at",
                params![&hash_key(state)[..]],
                |r| {
                    Ok(SsoFlow {
                        tenant: TenantId(r.get(0)?),
                        nonce: r.get(1)?,
                        pkce_verifier: r.get(2)?,
                        redirect_uri: r.get(3)?,
                        next: r.get(4)?,
                        expires_at: r.get(5)?,
                    })
                },
            )
            .optional()?
            .filter(|f| f.expires_at > unix_now()))
        })
    }

    /// Links a user to the provider's subject at their first single sign-on; `false` when the
    /// user is linked to another subject already.
    pub fn link_sso_subject(&self, user: UserId, subject: &str) -> Result<bool, StoreError> {
        pg!(self, { let subject = subject.to_string(); } s => crate::store::Sso::link_sso_subject(&s, user, &subject).await);
        self.with(|c| {
            let n = c.execute(
                "UPDATE users SET sso_subject = ?2 WHERE id = ?1 AND (sso_subject IS NULL OR sso_subject = ?2)",
                params![user.0, subject],
            )?;
            Ok(n == 1)
        })
    }

    /// The allow-list of a tenant or key (empty: anywhere).
    pub fn allowed_cidrs(&self, subject: LimitSubject) -> Result<Vec<String>, StoreError> {
        pg!(self, {} s => crate::store::Network::allowed_cidrs(&s, subject).await);
        let (table, what, id) = match subject {
            LimitSubject::Tenant(t) => ("tenants", "tenant", t.0),
            LimitSubject::Key(k) => ("api_keys", "key", k.0),
            LimitSubject::User(u) => ("users", "user", u.0),
        };
        self.with(|c| {
            let text: Option<Option<String>> = c
                .query_row(
                    &format!("SELECT allowed_cidrs FROM {table} WHERE id = ?1"),
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            let text = text.ok_or_else(|| StoreError::not_found(what, id))?;
            Ok(text
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default())
        })
    }

    const REFUND_COLUMNS: &'static str =
        "id, order_id, tenant_id, amount_minor, debit_nano, state, provider_ref, reason, created_by, created_at, updated_at";

    fn refund_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Refund> {
        Ok(Refund {
            id: r.get(0)?,
            order_id: r.get(1)?,
            tenant_id: TenantId(r.get(2)?),
            amount_minor: r.get(3)?,
            debit_nano: r.get(4)?,
            state: r.get(5)?,
            provider_ref: r.get(6)?,
            reason: r.get(7)?,
            created_by: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
        })
    }

    /// Records a refund of `amount_minor` of a paid order (state `requested`): refused when the
    /// order is not paid or its refunds (but failed ones) would exceed what was paid.
    pub fn create_refund(
        &self,
        order_id: i64,
        amount_minor: i64,
        debit_nano: i64,
        reason: Option<&str>,
        created_by: Option<&str>,
    ) -> Result<Refund, StoreError> {
        pg!(self, { let reason = reason.map(str::to_string); let created_by = created_by.map(str::to_string); } s => crate::store::Orders::create_refund(&s, order_id, amount_minor, debit_nano, reason.as_deref(), created_by.as_deref()).await);
        let id = self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (tenant, state, paid): (i64, String, i64) = tx
                .query_row(
                    "SELECT tenant_id, state, amount_minor FROM payment_orders WHERE id = ?1",
                    params![order_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
                .ok_or_else(|| StoreError::not_found("order", order_id))?;
            if state != "paid" {
                return Err(StoreError::Conflict(format!(
                    "order {order_id} is {state}, not paid: there is nothing to refund"
                )));
            }
            let taken: i64 = tx.query_row(
                "SELECT COALESCE(SUM(amount_minor), 0) FROM payment_refunds WHERE order_id = ?1 AND state != 'failed'",
                params![order_id],
                |r| r.get(0),
            )?;
            if taken + amount_minor > paid {
                return Err(StoreError::Conflict(format!(
                    "order {order_id} has {} fen left to refund",
                    paid - taken
                )));
            }
            let now = unix_now();
            tx.execute(
                "INSERT INTO payment_refunds (order_id, tenant_id, amount_minor, debit_nano, state, reason, created_by, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'requested', ?5, ?6, ?7, ?7)",
                params![order_id, tenant, amount_minor, debit_nano, reason, created_by, now],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        })?;
        self.refund(id)
    }

    pub fn refund(&self, id: i64) -> Result<Refund, StoreError> {
        pg!(self, {} s => crate::store::Orders::refund(&s, id).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM payment_refunds WHERE id = ?1",
                Store::REFUND_COLUMNS
            );
            c.query_row(&sql, params![id], Store::refund_from_row)
                .optional()?
                .ok_or_else(|| StoreError::not_found("refund", id))
        })
    }

    /// Refunds, newest first: of one order, or of every order (`None`).
    pub fn list_refunds(
        &self,
        order_id: Option<i64>,
        page: NewestFirst,
    ) -> Result<Vec<Refund>, StoreError> {
        pg!(self, {} s => crate::store::Orders::list_refunds(&s, order_id, page).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM payment_refunds WHERE (?1 IS NULL OR order_id = ?1)
                   AND created_at >= ?2 AND created_at < ?3 AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5",
                Store::REFUND_COLUMNS
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(
                params![order_id, page.from, page.to, page.before, page.limit],
                Store::refund_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Moves a `requested` refund to `processing`, `succeeded` or `failed` (a settled one stays
    /// as it is), and the order's refunded total with it (`refunded` once all of it is).
    pub fn refund_settled(
        &self,
        id: i64,
        state: &str,
        provider_ref: Option<&str>,
    ) -> Result<Refund, StoreError> {
        pg!(self, { let state = state.to_string(); let provider_ref = provider_ref.map(str::to_string); } s => crate::store::Orders::refund_settled(&s, id, &state, provider_ref.as_deref()).await);
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE payment_refunds SET state = ?2, provider_ref = COALESCE(?3, provider_ref), updated_at = ?4
                 WHERE id = ?1 AND state IN ('requested', 'processing')",
                params![id, state, provider_ref, unix_now()],
            )?;
            tx.execute(
                "UPDATE payment_orders SET
                    refunded_minor = (SELECT COALESCE(SUM(amount_minor), 0) FROM payment_refunds
                                      WHERE order_id = payment_orders.id AND state IN ('processing', 'succeeded')),
                    state = CASE WHEN (SELECT COALESCE(SUM(amount_minor), 0) FROM payment_refunds
                                       WHERE order_id = payment_orders.id AND state IN ('processing', 'succeeded')) >= amount_minor
                                 THEN 'refunded' ELSE state END
                 WHERE id = (SELECT order_id FROM payment_refunds WHERE id = ?1)",
                params![id],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        self.refund(id)
    }

    /// A new payment order in state `created`, valid `ttl_secs`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_order(
        &self,
        tenant: TenantId,
        provider: &str,
        amount_minor: i64,
        currency: &str,
        promo_code: Option<&str>,
        created_by: Option<&str>,
        ttl_secs: i64,
    ) -> Result<PaymentOrder, StoreError> {
        pg!(self, { let provider = provider.to_string(); let currency = currency.to_string(); let promo_code = promo_code.map(str::to_string); let created_by = created_by.map(str::to_string); } s => crate::store::Orders::create_order(&s, tenant, &provider, amount_minor, &currency, promo_code.as_deref(), created_by.as_deref(), ttl_secs).await);
        let id = self.with(|c| {
            let tx = c.transaction()?;
            Store::require_tenant(&tx, tenant)?;
            let now = unix_now();
            tx.execute(
                "INSERT INTO payment_orders (tenant_id, provider, amount_minor, currency, promo_code, state, created_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'created', ?6, ?7, ?8)",
                params![tenant.0, provider, amount_minor, currency, promo_code, created_by, now, now + ttl_secs],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        })?;
        self.order(id)
    }

    pub fn order(&self, id: i64) -> Result<PaymentOrder, StoreError> {
        pg!(self, {} s => crate::store::Orders::order(&s, id).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM payment_orders WHERE id = ?1",
                Store::ORDER_COLUMNS
            );
            c.query_row(&sql, params![id], Store::order_from_row)
                .optional()?
                .ok_or_else(|| StoreError::not_found("order", id))
        })
    }

    /// A tenant's orders (all tenants': `None`), newest first, at most `limit`.
    pub fn list_orders(
        &self,
        tenant: Option<TenantId>,
        page: NewestFirst,
    ) -> Result<Vec<PaymentOrder>, StoreError> {
        pg!(self, {} s => crate::store::Orders::list_orders(&s, tenant, page).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM payment_orders WHERE (?1 IS NULL OR tenant_id = ?1)
                   AND created_at >= ?2 AND created_at < ?3 AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5",
                Store::ORDER_COLUMNS
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(
                params![
                    tenant.map(|t| t.0),
                    page.from,
                    page.to,
                    page.before,
                    page.limit
                ],
                Store::order_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The provider has the order (its id for it): `created` becomes `pending`.
    pub fn order_pending(&self, id: i64, provider_ref: &str) -> Result<PaymentOrder, StoreError> {
        pg!(self, { let provider_ref = provider_ref.to_string(); } s => crate::store::Orders::order_pending(&s, id, &provider_ref).await);
        self.with(|c| {
            c.execute(
                "UPDATE payment_orders SET state = 'pending', provider_ref = ?2 WHERE id = ?1 AND state = 'created'",
                params![id, provider_ref],
            )?;
            Ok(())
        })?;
        self.order(id)
    }

    /// Marks orders still unpaid `grace_secs` after their deadline `expired` (a payment that
    /// still arrives is credited and flagged late); answers how many.
    pub fn expire_orders(&self, now: i64, grace_secs: i64) -> Result<u64, StoreError> {
        pg!(self, {} s => crate::store::Orders::expire_orders(&s, now, grace_secs).await);
        self.with(|c| {
            Ok(c.execute(
                "UPDATE payment_orders SET state = 'expired' WHERE state IN ('created', 'pending') AND expires_at < ?1",
                params![now - grace_secs],
            )? as u64)
        })
    }

    /// Moves an order that is not paid to `expired` or `failed` (a paid one stays paid).
    pub fn order_closed(&self, id: i64, state: &str) -> Result<PaymentOrder, StoreError> {
        pg!(self, { let state = state.to_string(); } s => crate::store::Orders::order_closed(&s, id, &state).await);
        self.with(|c| {
            c.execute(
                "UPDATE payment_orders SET state = ?2 WHERE id = ?1 AND state IN ('created', 'pending')",
                params![id, state],
            )?;
            Ok(())
        })?;
        self.order(id)
    }

    /// Records that an order was paid and credited with `entry_id` (once: a second call
    /// changes nothing). `late`: the payment came after the order expired.
    pub fn order_paid(
        &self,
        id: i64,
        entry_id: &str,
        late: bool,
        credited_nano: i64,
    ) -> Result<PaymentOrder, StoreError> {
        pg!(self, { let entry_id = entry_id.to_string(); } s => crate::store::Orders::order_paid(&s, id, &entry_id, late, credited_nano).await);
        self.with(|c| {
            c.execute(
                "UPDATE payment_orders SET state = 'paid', paid_at = ?2, entry_id = ?3, late = ?4, credited_nano = ?5
                 WHERE id = ?1 AND state != 'paid' AND state != 'refunded'",
                params![id, unix_now(), entry_id, late as i64, credited_nano],
            )?;
            Ok(())
        })?;
        self.order(id)
    }

    /// Renames a tenant's group or changes its budget (`Some(None)` removes it).
    pub fn update_group(
        &self,
        tenant: TenantId,
        id: GroupId,
        name: Option<&str>,
        budget_nano: Option<Option<i64>>,
    ) -> Result<Group, StoreError> {
        pg!(self, { let name = name.map(str::to_string); } s => crate::store::Sessions::update_group(&s, tenant, id, name.as_deref(), budget_nano).await);
        let name = name
            .map(|n| crate::store::checked_name(n, "group"))
            .transpose()?;
        self.with(|c| {
            let tx = c.transaction()?;
            let found: Option<i64> = tx
                .query_row(
                    "SELECT id FROM groups WHERE id = ?1 AND tenant_id = ?2",
                    params![id.0, tenant.0],
                    |r| r.get(0),
                )
                .optional()?;
            if found.is_none() {
                return Err(StoreError::not_found("group", id.0));
            }
            if let Some(n) = name {
                unique(
                    tx.execute(
                        "UPDATE groups SET name = ?2 WHERE id = ?1",
                        params![id.0, n],
                    ),
                    || format!("group `{n}` already exists"),
                )?;
            }
            if let Some(b) = budget_nano {
                tx.execute(
                    "UPDATE groups SET budget_nano = ?2 WHERE id = ?1",
                    params![id.0, b],
                )?;
            }
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(())
        })?;
        self.list_groups(tenant)?
            .into_iter()
            .find(|g| g.id == id)
            .ok_or_else(|| StoreError::not_found("group", id.0))
    }

    /// A single-use password-reset token for a user, valid `ttl_secs`.
    pub fn create_password_reset(&self, user: UserId, ttl_secs: i64) -> Result<String, StoreError> {
        pg!(self, {} s => crate::store::Sessions::create_password_reset(&s, user, ttl_secs).await);
        let token = generate_key().replacen("tg-", "pwr-", 1);
        self.with(|c| {
            let now = unix_now();
            c.execute(
                "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&hash_key(&token)[..], user.0, now, now + ttl_secs],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Uses a password-reset token once: sets the password (an argon2id PHC string), clears a
    /// lockout and ends the user's console sessions. Returns the user.
    /// What a reset link's token is now: `pending`, `used` or `expired`; `None`: no such link.
    pub fn reset_state(&self, token: &str) -> Result<Option<&'static str>, StoreError> {
        pg!(self, { let token = token.to_string(); } s => crate::store::Sessions::reset_state(&s, &token).await);
        let th = hash_key(token.trim());
        self.with(|c| {
            let row: Option<(i64, Option<i64>)> = c
                .query_row(
                    "SELECT expires_at, used_at FROM password_resets WHERE token_hash = ?1",
                    params![&th[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.map(|(expires_at, used_at)| crate::store::reset_state_of(expires_at, used_at)))
        })
    }

    pub fn use_password_reset(&self, token: &str, hash: &str) -> Result<UserId, StoreError> {
        pg!(self, { let token = token.to_string(); let hash = hash.to_string(); } s => crate::store::Sessions::use_password_reset(&s, &token, &hash).await);
        let th = hash_key(token.trim());
        self.with(|c| {
            let tx = c.transaction()?;
            let now = unix_now();
            let row: Option<(i64, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT user_id, expires_at, used_at FROM password_resets WHERE token_hash = ?1",
                    params![&th[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((user, expires_at, used_at)) = row else {
                return Err(StoreError::not_found("password reset", ""));
            };
            if used_at.is_some() {
                return Err(StoreError::Conflict("this link has already been used".into()));
            }
            if expires_at <= now {
                return Err(StoreError::Conflict("this link has expired".into()));
            }
            let n = tx.execute(
                "UPDATE password_resets SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
                params![&th[..], now],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict("this link has already been used".into()));
            }
            tx.execute(
                "UPDATE users SET password_hash = ?2, failed_logins = 0, locked_until = NULL WHERE id = ?1",
                params![user, hash],
            )?;
            tx.execute("DELETE FROM console_sessions WHERE user_id = ?1", params![user])?;
            tx.commit()?;
            Ok(UserId(user))
        })
    }

    /// Create a user of a tenant (operators and tenant admins do this; invitations too).
    pub fn create_user(
        &self,
        tenant: TenantId,
        email: &str,
        name: &str,
        role: Role,
        group: Option<GroupId>,
        quota_nano: Option<i64>,
    ) -> Result<User, StoreError> {
        pg!(self, { let email = email.to_string(); let name = name.to_string(); } s => crate::store::Members::create_user(&s, tenant, &email, &name, role, group, quota_nano).await);
        let email = crate::store::checked_email(email)?;
        let role = crate::store::checked_role(role)?;
        self.with(|c| {
            Store::check_group(c, tenant, group)?;
            let now = unix_now();
            unique(
                c.execute(
                    "INSERT INTO users (tenant_id, email, name, role, group_id, quota_nano, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![tenant.0, email, name.trim(), role.as_str(), group.map(|g| g.0), quota_nano, now],
                ),
                || format!("user `{email}` already exists in this tenant"),
            )?;
            let id = c.last_insert_rowid();
            Store::bump_generation(c)?;
            Ok(User {
                id: UserId(id),
                tenant_id: tenant,
                email: email.clone(),
                name: name.trim().to_string(),
                role,
                group_id: group,
                quota_nano,
                created_at: now,
                disabled_at: None,
                limits: Default::default(),
                locked_until: None,
            })
        })
    }

    pub fn get_user(&self, id: UserId) -> Result<User, StoreError> {
        pg!(self, {} s => crate::store::Members::get_user(&s, id).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM users u WHERE u.id = ?1",
                Store::USER_COLUMNS
            );
            c.query_row(&sql, params![id.0], Store::user_from_row)
                .optional()?
                .ok_or_else(|| StoreError::not_found("user", id.0))
        })
    }

    pub fn list_users(&self, tenant: TenantId) -> Result<Vec<User>, StoreError> {
        pg!(self, {} s => crate::store::Members::list_users(&s, tenant).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM users u WHERE u.tenant_id = ?1 ORDER BY u.id",
                Store::USER_COLUMNS
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![tenant.0], Store::user_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Change a user's role, group, quota or disabled state. `None` leaves a field unchanged;
    /// `Some(None)` clears an optional one.
    pub fn update_user(
        &self,
        id: UserId,
        role: Option<Role>,
        group: Option<Option<GroupId>>,
        quota_nano: Option<Option<i64>>,
        disabled: Option<bool>,
    ) -> Result<User, StoreError> {
        pg!(self, { let patch = crate::store::UserPatch { role, group, quota_nano, disabled }; } s => crate::store::Members::update_user(&s, id, &patch).await);
        let user = self.get_user(id)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some(r) = role {
                let r = crate::store::checked_role(r)?;
                tx.execute("UPDATE users SET role = ?2 WHERE id = ?1", params![id.0, r.as_str()])?;
            }
            if let Some(g) = group {
                Store::check_group(&tx, user.tenant_id, g)?;
                tx.execute("UPDATE users SET group_id = ?2 WHERE id = ?1", params![id.0, g.map(|g| g.0)])?;
            }
            if let Some(q) = quota_nano {
                tx.execute("UPDATE users SET quota_nano = ?2 WHERE id = ?1", params![id.0, q])?;
            }
            if let Some(d) = disabled {
                let at = d.then(unix_now);
                tx.execute("UPDATE users SET disabled_at = ?2 WHERE id = ?1", params![id.0, at])?;
                if d {
                    tx.execute(
                        "UPDATE user_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                        params![id.0, unix_now()],
                    )?;
                    tx.execute("DELETE FROM console_sessions WHERE user_id = ?1", params![id.0])?;
                }
            }
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(())
        })?;
        self.get_user(id)
    }

    /// A new admin-API token for a user; the plaintext is returned once.
    pub fn create_user_token(&self, user: UserId) -> Result<String, StoreError> {
        pg!(self, {} s => crate::store::Members::create_user_token(&s, user).await);
        let token = generate_key().replacen("tg-", "tgu-", 1);
        self.with(|c| {
            c.execute(
                "INSERT INTO user_tokens (user_id, token_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![user.0, &hash_key(&token)[..], display_prefix(&token), unix_now()],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    /// The enabled user behind an admin-API token.
    pub fn user_by_token(&self, token: &str) -> Result<Option<UserPrincipal>, StoreError> {
        pg!(self, { let token = token.to_string(); } s => crate::store::Members::user_by_token(&s, &token).await);
        let hash = hash_key(token);
        self.with(|c| {
            let sql = format!(
                "SELECT {}, t.name FROM user_tokens ut JOIN users u ON u.id = ut.user_id JOIN tenants t ON t.id = u.tenant_id
                 WHERE ut.token_hash = ?1 AND ut.revoked_at IS NULL AND u.disabled_at IS NULL",
                Store::USER_COLUMNS
            );
            Ok(c.query_row(&sql, params![&hash[..]], |r| {
                Ok(UserPrincipal {
                    user: Store::user_from_row(r)?,
                    tenant_name: r.get(12)?,
                })
            })
            .optional()?)
        })
    }

    /// Invite someone by email; returns the single-use invitation token.
    pub fn create_invite(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        group: Option<GroupId>,
        ttl_secs: i64,
    ) -> Result<String, StoreError> {
        pg!(self, { let email = email.to_string(); } s => crate::store::Members::create_invite(&s, tenant, &email, role, group, ttl_secs).await);
        let role = crate::store::checked_role(role)?;
        let email = crate::store::checked_email(email)?;
        let token = generate_key().replacen("tg-", "inv-", 1);
        self.with(|c| {
            Store::check_group(c, tenant, group)?;
            c.execute(
                "INSERT INTO invites (tenant_id, email, role, group_id, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![tenant.0, email, role.as_str(), group.map(|g| g.0), &hash_key(&token)[..], unix_now(), unix_now() + ttl_secs],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Accept an invitation once: creates the user and returns it with a fresh admin token.
    pub fn accept_invite(&self, token: &str, name: &str) -> Result<(User, String), StoreError> {
        pg!(self, { let token = token.to_string(); let name = name.to_string(); } s => crate::store::Members::accept_invite(&s, &token, &name).await);
        let hash = hash_key(token.trim());
        let now = unix_now();
        let user = self.with(|c| {
            let tx = c.transaction()?;
            let row: Option<InviteRow> = tx
                .query_row(
                    "SELECT id, tenant_id, email, role, group_id, expires_at, accepted_user_id, revoked_at FROM invites WHERE token_hash = ?1",
                    params![&hash[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
                )
                .optional()?;
            let Some((id, tenant, email, role, group, expires_at, accepted, revoked)) = row else {
                return Err(StoreError::not_found("invitation", ""));
            };
            if accepted.is_some() {
                return Err(StoreError::Conflict("this invitation has already been accepted".into()));
            }
            if revoked.is_some() {
                return Err(StoreError::Conflict("this invitation has been revoked".into()));
            }
            if expires_at <= now {
                return Err(StoreError::Conflict("this invitation has expired".into()));
            }
            let role = Role::parse_tenant_role(&role).unwrap_or(Role::Member);
            unique(
                tx.execute(
                    "INSERT INTO users (tenant_id, email, name, role, group_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![tenant, email, name.trim(), role.as_str(), group, now],
                ),
                || format!("user `{email}` already exists in this tenant"),
            )?;
            let uid = tx.last_insert_rowid();
            let n = tx.execute(
                "UPDATE invites SET accepted_user_id = ?2 WHERE id = ?1 AND accepted_user_id IS NULL",
                params![id, uid],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict("this invitation has already been accepted".into()));
            }
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(UserId(uid))
        })?;
        let user = self.get_user(user)?;
        let token = self.create_user_token(user.id)?;
        Ok((user, token))
    }

    fn invite_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Invite> {
        Ok(Invite {
            id: r.get(0)?,
            tenant_id: TenantId(r.get(1)?),
            email: r.get(2)?,
            role: Role::parse_tenant_role(&r.get::<_, String>(3)?).unwrap_or(Role::Member),
            group_id: r.get::<_, Option<i64>>(4)?.map(GroupId),
            created_at: r.get(5)?,
            expires_at: r.get(6)?,
            accepted_user_id: r.get::<_, Option<i64>>(7)?.map(UserId),
            revoked_at: r.get(8)?,
        })
    }

    const INVITE_COLUMNS: &'static str =
        "id, tenant_id, email, role, group_id, created_at, expires_at, accepted_user_id, revoked_at";

    pub fn list_invites(&self, tenant: TenantId) -> Result<Vec<Invite>, StoreError> {
        pg!(self, {} s => crate::store::Members::list_invites(&s, tenant).await);
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM invites WHERE tenant_id = ?1 ORDER BY id DESC",
                Store::INVITE_COLUMNS
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![tenant.0], Store::invite_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The invitation a link's token opens, whatever its state.
    pub fn invite_by_token(&self, token: &str) -> Result<Option<Invite>, StoreError> {
        pg!(self, { let token = token.to_string(); } s => crate::store::Members::invite_by_token(&s, &token).await);
        let hash = hash_key(token.trim());
        self.with(|c| {
            let sql = format!(
                "SELECT {} FROM invites WHERE token_hash = ?1",
                Store::INVITE_COLUMNS
            );
            Ok(
                c.query_row(&sql, params![&hash[..]], Store::invite_from_row)
                    .optional()?,
            )
        })
    }

    pub fn revoke_invite(&self, tenant: TenantId, id: i64) -> Result<Invite, StoreError> {
        pg!(self, {} s => crate::store::Members::revoke_invite(&s, tenant, id).await);
        self.with(|c| {
            let tx = c.transaction()?;
            let sql = format!(
                "SELECT {} FROM invites WHERE id = ?1 AND tenant_id = ?2",
                Store::INVITE_COLUMNS
            );
            let Some(invite) = tx
                .query_row(&sql, params![id, tenant.0], Store::invite_from_row)
                .optional()?
            else {
                return Err(StoreError::not_found("invitation", id));
            };
            if invite.accepted_user_id.is_some() {
                return Err(StoreError::Conflict(
                    "this invitation has already been accepted".into(),
                ));
            }
            if invite.revoked_at.is_some() {
                return Ok(invite);
            }
            let now = unix_now();
            tx.execute(
                "UPDATE invites SET revoked_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            tx.commit()?;
            Ok(Invite {
                revoked_at: Some(now),
                ..invite
            })
        })
    }

    fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserToken> {
        Ok(UserToken {
            id: r.get(0)?,
            user_id: UserId(r.get(1)?),
            prefix: r.get(2)?,
            created_at: r.get(3)?,
            revoked_at: r.get(4)?,
        })
    }

    pub fn list_user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        pg!(self, {} s => crate::store::Members::list_user_tokens(&s, user).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, user_id, prefix, created_at, revoked_at FROM user_tokens WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map(params![user.0], Store::token_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn revoke_user_token(&self, user: UserId, id: i64) -> Result<UserToken, StoreError> {
        pg!(self, {} s => crate::store::Members::revoke_user_token(&s, user, id).await);
        self.with(|c| {
            c.execute(
                "UPDATE user_tokens SET revoked_at = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                params![id, user.0, unix_now()],
            )?;
            c.query_row(
                "SELECT id, user_id, prefix, created_at, revoked_at FROM user_tokens WHERE id = ?1 AND user_id = ?2",
                params![id, user.0],
                Store::token_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found("token", id))
        })
    }

    /// The account behind a console sign-in: tenant (id or name) and email, enabled or not.
    pub fn login_account(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<LoginAccount>, StoreError> {
        pg!(self, { let tenant = tenant.to_string(); let email = email.to_string(); } s => crate::store::Sessions::login_account(&s, &tenant, &email).await);
        let email = email.trim().to_ascii_lowercase();
        let tenant = tenant.trim().to_string();
        self.with(|c| {
            let sql = format!(
                "SELECT {}, t.name, u.password_hash, u.failed_logins, u.locked_until
                   FROM users u JOIN tenants t ON t.id = u.tenant_id
                  WHERE (t.name = ?1 OR CAST(t.id AS TEXT) = ?1) AND u.email = ?2",
                Store::USER_COLUMNS
            );
            Ok(c.query_row(&sql, params![tenant, email], |r| {
                Ok(LoginAccount {
                    principal: UserPrincipal {
                        user: Store::user_from_row(r)?,
                        tenant_name: r.get(12)?,
                    },
                    password_hash: r.get(13)?,
                    failed_logins: r.get(14)?,
                    locked_until: r.get(15)?,
                })
            })
            .optional()?)
        })
    }

    /// Sets a user's password (an argon2id PHC string) and clears any lockout.
    pub fn set_password(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        pg!(self, { let hash = hash.to_string(); } s => crate::store::Sessions::set_password(&s, user, &hash).await);
        self.with(|c| {
            let n = c.execute(
                "UPDATE users SET password_hash = ?2, failed_logins = 0, locked_until = NULL WHERE id = ?1",
                params![user.0, hash],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("user", user.0));
            }
            Ok(())
        })
    }

    /// Counts a failed sign-in; the `lock_after`-th in a row locks the account until
    /// `lock_until` (and starts the count again). Returns the failures counted so far.
    pub fn login_failed(
        &self,
        user: UserId,
        lock_after: i64,
        lock_until: i64,
    ) -> Result<i64, StoreError> {
        pg!(self, {} s => crate::store::Sessions::login_failed(&s, user, lock_after, lock_until).await);
        self.with(|c| {
            let n: i64 = c.query_row(
                "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ?1 RETURNING failed_logins",
                params![user.0],
                |r| r.get(0),
            )?;
            if n >= lock_after {
                c.execute(
                    "UPDATE users SET failed_logins = 0, locked_until = ?2 WHERE id = ?1",
                    params![user.0, lock_until],
                )?;
            }
            Ok(n)
        })
    }

    /// A successful sign-in: the failure count starts again.
    pub fn login_succeeded(&self, user: UserId) -> Result<(), StoreError> {
        pg!(self, {} s => crate::store::Sessions::login_succeeded(&s, user).await);
        self.with(|c| {
            c.execute(
                "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?1",
                params![user.0],
            )?;
            Ok(())
        })
    }

    /// A new console session for a user (`None`: the operator), valid `ttl_secs`.
    pub fn create_session(
        &self,
        user: Option<UserId>,
        ttl_secs: i64,
    ) -> Result<NewSession, StoreError> {
        pg!(self, {} s => crate::store::Sessions::create_session(&s, user, ttl_secs).await);
        let new = NewSession::generate(ttl_secs);
        self.with(|c| {
            let now = unix_now();
            c.execute("DELETE FROM console_sessions WHERE expires_at <= ?1", params![now])?;
            c.execute(
                "INSERT INTO console_sessions (token_hash, user_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&hash_key(&new.token)[..], user.map(|u| u.0), new.csrf, now, new.expires_at],
            )?;
            Ok(())
        })?;
        Ok(new)
    }

    /// The live session behind a token: who (`None` user: the operator) and its CSRF token.
    /// Expired sessions and those of disabled users are not found.
    pub fn session(&self, token: &str) -> Result<Option<Session>, StoreError> {
        pg!(self, { let token = token.to_string(); } s => crate::store::Sessions::session(&s, &token).await);
        let hash = hash_key(token);
        self.with(|c| {
            let Some((user_id, csrf, expires_at)) = c
                .query_row(
                    "SELECT user_id, csrf, expires_at FROM console_sessions WHERE token_hash = ?1 AND expires_at > ?2",
                    params![&hash[..], unix_now()],
                    |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let user = match user_id {
                None => None,
                Some(id) => {
                    let sql = format!(
                        "SELECT {}, t.name FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE u.id = ?1 AND u.disabled_at IS NULL",
                        Store::USER_COLUMNS
                    );
                    let found = c
                        .query_row(&sql, params![id], |r| {
                            Ok(UserPrincipal { user: Store::user_from_row(r)?, tenant_name: r.get(12)? })
                        })
                        .optional()?;
                    match found {
                        Some(u) => Some(u),
                        None => return Ok(None),
                    }
                }
            };
            Ok(Some(Session { user, csrf, expires_at }))
        })
    }

    /// Ends a session (signed out); an unknown token is no error.
    pub fn end_session(&self, token: &str) -> Result<(), StoreError> {
        pg!(self, { let token = token.to_string(); } s => crate::store::Sessions::end_session(&s, &token).await);
        self.with(|c| {
            c.execute(
                "DELETE FROM console_sessions WHERE token_hash = ?1",
                params![&hash_key(token)[..]],
            )?;
            Ok(())
        })
    }

    /// Store (or clear) the tenant's router override (JSON, validated by the caller).
    pub fn set_router_override(
        &self,
        tenant: TenantId,
        json: Option<&str>,
    ) -> Result<(), StoreError> {
        pg!(self, { let json = json.map(str::to_string); } s => crate::store::Members::set_router_override(&s, tenant, json.as_deref()).await);
        self.set_tenant_setting(tenant, "router_override", &json)
    }

    /// Update one column of a tenant that the key snapshot carries (and publish a new one).
    /// A tenant's JSON setting (`router_override`, `guardrails`, `sso`); `None`: not set.
    fn tenant_setting(&self, tenant: TenantId, column: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {column} FROM tenants WHERE id = ?1"),
                params![tenant.0],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found("tenant", tenant.0))
        })
    }

    fn set_tenant_setting(
        &self,
        tenant: TenantId,
        column: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c.execute(
                &format!("UPDATE tenants SET {column} = ?2 WHERE id = ?1"),
                params![tenant.0, value],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("tenant", tenant.0));
            }
            Store::bump_generation(c)?;
            Ok(())
        })
    }

    pub fn router_override(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        pg!(self, {} s => crate::store::Members::router_override(&s, tenant).await);
        self.tenant_setting(tenant, "router_override")
    }

    /// What routing did for a tenant's `model: "auto"` calls in `[from_ms, to_ms)`: per tier,
    /// calls, cost and what the same tokens would have cost on the strongest tier.
    pub fn routing_savings(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RoutingRow>, StoreError> {
        pg!(self, {} s => crate::store::Analytics::routing_savings(&s, tenant, from_ms, to_ms).await);
        // From the roll-ups (whole hours, like analytics): a month of a busy tenant is a few
        // dozen rows, where the raw records were hundreds of thousands.
        let w = crate::store::routing_window(tenant, from_ms, to_ms);
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT value, dim, SUM(requests), SUM(cost_nano)
                 FROM usage_rollup
                 WHERE tenant_id = ?1 AND dim IN (?2, ?3) AND (
                       (period = 86400 AND bucket >= ?4 AND bucket < ?5)
                    OR (period = 3600 AND bucket >= ?6 AND bucket < ?7 AND (bucket < ?4 OR bucket >= ?5)))
                 GROUP BY value, dim",
            )?;
            let (d0, d1) = crate::store::ROUTE_TIER_DIMS;
            let rows = st.query_map(
                params![tenant.0, d0, d1, w.day_from, w.day_to, w.from, w.to],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            Ok(crate::store::routing_rows(rows.collect::<Result<Vec<_>, _>>()?))
        })
    }

    /// Set how often the tenant's quotas and budgets start again.
    /// What a tenant's quotas and budgets count.
    pub fn quota_period(&self, tenant: TenantId) -> Result<QuotaPeriod, StoreError> {
        pg!(self, {} s => crate::store::Ledger::quota_period(&s, tenant).await);
        Ok(self
            .tenant_setting(tenant, "quota_period")?
            .and_then(|p| QuotaPeriod::parse(&p))
            .unwrap_or_default())
    }

    pub fn set_quota_period(
        &self,
        tenant: TenantId,
        period: QuotaPeriod,
    ) -> Result<(), StoreError> {
        pg!(self, {} s => crate::store::Ledger::set_quota_period(&s, tenant, period).await);
        self.set_tenant_setting(tenant, "quota_period", &period.as_str())
    }

    /// Change the rate limits of a tenant, user or key. A field of `patch` that is `None` keeps
    /// its value; `Some(None)` clears it (unlimited). Returns the limits now in force.
    pub fn set_limits(
        &self,
        subject: LimitSubject,
        patch: LimitsPatch,
    ) -> Result<Limits, StoreError> {
        pg!(self, {} s => crate::store::Ledger::set_limits(&s, subject, patch).await);
        let (table, what, id) = match subject {
            LimitSubject::Tenant(t) => ("tenants", "tenant", t.0),
            LimitSubject::User(u) => ("users", "user", u.0),
            LimitSubject::Key(k) => ("api_keys", "key", k.0),
        };
        let tpm = match patch.tpm {
            Some(Some(t)) => Some(
                i64::try_from(t)
                    .map_err(|_| StoreError::Invalid("`tpm_limit` is too large".into()))?,
            ),
            _ => None,
        };
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                &format!(
                    "UPDATE {table} SET rpm_limit = CASE WHEN ?2 THEN ?3 ELSE rpm_limit END,
                                        tpm_limit = CASE WHEN ?4 THEN ?5 ELSE tpm_limit END
                     WHERE id = ?1"
                ),
                params![
                    id,
                    patch.rpm.is_some(),
                    patch.rpm.flatten(),
                    patch.tpm.is_some(),
                    tpm
                ],
            )?;
            if n == 0 {
                return Err(StoreError::not_found(what, id));
            }
            let limits = tx.query_row(
                &format!("SELECT rpm_limit, tpm_limit FROM {table} WHERE id = ?1"),
                params![id],
                |r| limits_at(r, 0),
            )?;
            Store::bump_generation(&tx)?;
            tx.commit()?;
            Ok(limits)
        })
    }

    // ---------------------------------------------------------------- ledger

    /// Commit a credit-side entry (top-up, grant, redemption, promo, adjustment) now.
    /// Idempotent on `id`: a repeated call returns the entry already committed.
    pub fn credit(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
    ) -> Result<LedgerEntry, StoreError> {
        pg!(self, { let actor = actor.map(str::to_string); let note = note.map(str::to_string); let id = id.to_string(); } s => crate::store::Ledger::credit(&s, tenant, kind, amount, actor.as_deref(), note.as_deref(), &id).await);
        self.commit_credit(Store::credit_entry(
            id.to_string(),
            tenant,
            kind,
            amount,
            actor,
            note,
        ))
    }

    /// Commits a credit-side entry once (its id used before: `Conflict`).
    fn commit_credit(&self, e: LedgerEntry) -> Result<LedgerEntry, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            Store::require_tenant(&tx, e.tenant_id)?;
            let n = Store::insert_entry(&tx, &e)?;
            tx.commit()?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "ledger entry `{}` already exists",
                    e.id
                )));
            }
            Ok(())
        })?;
        Ok(e)
    }

    /// [`Store::credit`] dated `created_ms` (the demo's generated month: its money comes in
    /// before its calls). On PostgreSQL, dated now.
    #[allow(clippy::too_many_arguments)]
    pub fn credit_dated(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
        created_ms: i64,
    ) -> Result<LedgerEntry, StoreError> {
        pg!(self, { let actor = actor.map(str::to_string); let note = note.map(str::to_string); let id = id.to_string(); } s => crate::store::Ledger::credit(&s, tenant, kind, amount, actor.as_deref(), note.as_deref(), &id).await);
        let mut e = Store::credit_entry(id.to_string(), tenant, kind, amount, actor, note);
        e.created_ms = created_ms;
        self.commit_credit(e)
    }

    /// [`Store::credit`] under an idempotency key: the entry id is the key's, and a key used
    /// before commits nothing and returns what it recorded.
    pub fn credit_idempotent(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        idem: &IdempotencyKey,
    ) -> Result<Credited, StoreError> {
        pg!(self, { let actor = actor.map(str::to_string); let note = note.map(str::to_string); let idem = idem.clone(); } s => crate::store::Ledger::credit_idempotent(&s, tenant, kind, amount, actor.as_deref(), note.as_deref(), &idem).await);
        let e = Store::credit_entry(idem.entry_id(tenant), tenant, kind, amount, actor, note);
        self.with(|c| {
            let tx = c.transaction()?;
            Store::require_tenant(&tx, tenant)?;
            if let Some(first) = Store::claim_idempotency(&tx, tenant, idem)? {
                return Ok(Credited::Replay(first));
            }
            if Store::insert_entry(&tx, &e)? == 0 {
                return Err(StoreError::Conflict(format!(
                    "ledger entry `{}` already exists",
                    e.id
                )));
            }
            let out = vec![e];
            Store::record_idempotent_entries(&tx, tenant, idem, &out)?;
            tx.commit()?;
            Ok(Credited::Committed(out))
        })
    }

    /// Claim `k` for a request about to commit inside `tx`; when it was claimed before, returns
    /// what it recorded instead. The claim is the insert itself, so concurrent requests with
    /// one key (in this process or another on the same database) commit once.
    fn claim_idempotency(
        tx: &Connection,
        tenant: TenantId,
        k: &IdempotencyKey,
    ) -> Result<Option<IdempotentRecord>, StoreError> {
        let n = tx.execute(
            "INSERT OR IGNORE INTO idempotency_keys (tenant_id, scope, key, fingerprint, entry_ids, created_ms)
             VALUES (?1, ?2, ?3, ?4, '[]', ?5)",
            params![tenant.0, k.scope, k.key, k.fingerprint, unix_now_ms()],
        )?;
        if n == 1 {
            return Ok(None);
        }
        Store::read_idempotency(tx, tenant, k.scope, &k.key)
    }

    fn record_idempotent_entries(
        tx: &Connection,
        tenant: TenantId,
        k: &IdempotencyKey,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError> {
        let ids = crate::store::entry_ids_json(entries)?;
        tx.execute(
            "UPDATE idempotency_keys SET entry_ids = ?4 WHERE tenant_id = ?1 AND scope = ?2 AND key = ?3",
            params![tenant.0, k.scope, k.key, ids],
        )?;
        Ok(())
    }

    fn read_idempotency(
        c: &Connection,
        tenant: TenantId,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotentRecord>, StoreError> {
        let row: Option<IdempotencyRow> = c
            .query_row(
                "SELECT fingerprint, entry_ids, status, body, created_ms FROM idempotency_keys
                 WHERE tenant_id = ?1 AND scope = ?2 AND key = ?3",
                params![tenant.0, scope, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        Ok(row.map(
            |(fingerprint, ids, status, body, created_ms)| IdempotentRecord {
                fingerprint,
                entry_ids: serde_json::from_str(&ids).unwrap_or_default(),
                answer: status.and_then(|s| u16::try_from(s).ok()).zip(body),
                created_ms,
            },
        ))
    }

    /// What `key` recorded for `tenant`, if it was used.
    pub fn idempotent_record(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotentRecord>, StoreError> {
        pg!(self, { let scope = scope.to_string(); let key = key.to_string(); } s => crate::store::Ledger::idempotent_record(&s, tenant, &scope, &key).await);
        self.with(|c| Store::read_idempotency(c, tenant, scope, key))
    }

    /// Record the first answer to a request with an idempotency key (kept if one is recorded).
    pub fn answer_idempotent(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        pg!(self, { let scope = scope.to_string(); let key = key.to_string(); let body = body.to_string(); } s => crate::store::Ledger::answer_idempotent(&s, tenant, &scope, &key, status, &body).await);
        self.with(|c| {
            c.execute(
                "UPDATE idempotency_keys SET status = ?4, body = ?5
                 WHERE tenant_id = ?1 AND scope = ?2 AND key = ?3 AND body IS NULL",
                params![tenant.0, scope, key, status, body],
            )?;
            Ok(())
        })
    }

    /// A tenant's journal entries by id, in journal order.
    pub fn entries_by_id(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        pg!(self, { let ids = ids.to_vec(); } s => crate::store::Ledger::entries_by_id(&s, tenant, &ids).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms, user_id, group_id
                 FROM ledger_entries WHERE tenant_id = ?1 AND id = ?2",
            )?;
            let mut out = Vec::new();
            for id in ids {
                let row = st
                    .query_row(params![tenant.0, id], |r| Store::entry_from_row(tenant, r))
                    .optional()?;
                out.extend(row);
            }
            Ok(out)
        })
    }

    /// A statement row (id, kind, amount, key, request, actor, note, uncollected, time, user,
    /// group, in that order) of `tenant`.
    fn entry_from_row(tenant: TenantId, r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerEntry> {
        let kind: String = r.get(1)?;
        Ok(LedgerEntry {
            id: r.get(0)?,
            tenant_id: tenant,
            kind: EntryKind::parse(&kind).unwrap_or(EntryKind::Adjustment),
            amount: r.get(2)?,
            key_id: r.get::<_, Option<i64>>(3)?.map(KeyId),
            request_id: r.get(4)?,
            actor: r.get(5)?,
            note: r.get(6)?,
            uncollected: r.get(7)?,
            created_ms: r.get(8)?,
            user_id: r.get::<_, Option<i64>>(9)?.map(UserId),
            group_id: r.get::<_, Option<i64>>(10)?.map(GroupId),
        })
    }

    /// A credit or adjustment entry (money in: no key, user or request).
    pub(crate) fn credit_entry(
        id: String,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
    ) -> LedgerEntry {
        crate::store::money_in(tenant, kind, amount, id, actor, note.map(str::to_string))
    }

    /// Inside a transaction: the tenant exists, else `tenant not found`.
    fn require_tenant(tx: &rusqlite::Transaction<'_>, tenant: TenantId) -> Result<(), StoreError> {
        let exists: Option<i64> = tx
            .query_row(
                "SELECT id FROM tenants WHERE id = ?1",
                params![tenant.0],
                |r| r.get(0),
            )
            .optional()?;
        match exists {
            Some(_) => Ok(()),
            None => Err(StoreError::not_found("tenant", tenant.0)),
        }
    }

    fn insert_entry(c: &Connection, e: &LedgerEntry) -> Result<usize, StoreError> {
        let mut st = c.prepare_cached(
            "INSERT OR IGNORE INTO ledger_entries (id, tenant_id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms, user_id, group_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        Ok(st.execute(params![
            e.id,
            e.tenant_id.0,
            e.kind.as_str(),
            e.amount,
            e.key_id.map(|k| k.0),
            e.request_id,
            e.actor,
            e.note,
            e.uncollected,
            e.created_ms,
            e.user_id.map(|u| u.0),
            e.group_id.map(|g| g.0)
        ])?)
    }

    /// Per tenant: credited (sum of the journal: money in and adjustments) and charged (sum of
    /// the charges on usage records).
    pub fn ledger_totals(&self) -> Result<Vec<LedgerTotals>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::ledger_totals(&s).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT tenant_id, SUM(credited), SUM(charged) FROM (
                    SELECT tenant_id, amount AS credited, 0 AS charged FROM ledger_entries
                    UNION ALL
                    SELECT tenant_id, 0, cost_nano FROM usage_events
                    WHERE tenant_id IS NOT NULL AND cost_nano != 0
                    UNION ALL
                    SELECT tenant_id, 0, cost_nano FROM charge_days)
                 GROUP BY tenant_id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(LedgerTotals {
                    tenant_id: TenantId(r.get(0)?),
                    credited: r.get(1)?,
                    charged: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Journal entries (money in and adjustments) after sequence number `after`, in order (at
    /// most `limit`).
    pub fn credits_after(&self, after: i64, limit: usize) -> Result<Vec<CreditRow>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::credits_after(&s, after, limit).await);
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, id, tenant_id, amount FROM ledger_entries
                 WHERE kind != 'charge' AND seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after, limit as i64], |r| {
                Ok(CreditRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    tenant_id: TenantId(r.get(2)?),
                    amount: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Cluster mode's registry of nodes: `Some(since)` (unix s) records `node` as running,
    /// `None` removes it (a clean stop, or `tollgate cluster forget`). A bank rebuild waits
    /// for every running node (docs/billing.md).
    pub fn set_cluster_node(&self, node: &str, running: Option<i64>) -> Result<(), StoreError> {
        pg!(self, { let node = node.to_string(); } s => crate::store::Ledger::set_cluster_node(&s, &node, running).await);
        let k = format!("{CLUSTER_NODE}{node}");
        self.with(|c| {
            match running {
                Some(at) => c.execute(
                    "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    params![k, at],
                )?,
                None => c.execute("DELETE FROM meta WHERE k = ?1", params![k])?,
            };
            Ok(())
        })
    }

    /// The running nodes of the registry, with the time (unix s) they last said so.
    pub fn cluster_nodes(&self) -> Result<Vec<(String, i64)>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::cluster_nodes(&s).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT k, v FROM meta WHERE k LIKE 'cluster\\_node:%' ESCAPE '\\' ORDER BY k",
            )?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (k, v) = row?;
                if let Some(node) = k.strip_prefix(CLUSTER_NODE) {
                    out.push((node.to_string(), v));
                }
            }
            Ok(out)
        })
    }

    /// The sequence number of the last credit entry (0: none): a rebuilt bank's cursor.
    pub fn last_credit_seq(&self) -> Result<i64, StoreError> {
        pg!(self, {} s => crate::store::Ledger::last_credit_seq(&s).await);
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM ledger_entries WHERE kind != 'charge'",
                [],
                |r| r.get(0),
            )?)
        })
    }

    /// A tenant's credits with a sequence number up to `upto`, and all its charges.
    pub fn tenant_record_upto(
        &self,
        tenant: TenantId,
        upto: i64,
    ) -> Result<(i64, i64), StoreError> {
        pg!(self, {} s => crate::store::Ledger::tenant_record_upto(&s, tenant, upto).await);
        self.with(|c| {
            let credited: i64 = c.query_row(
                "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE tenant_id = ?1 AND seq <= ?2",
                params![tenant.0, upto],
                |r| r.get(0),
            )?;
            let charged: i64 = c.query_row(
                "SELECT (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_events WHERE tenant_id = ?1)
                      + (SELECT COALESCE(SUM(cost_nano), 0) FROM charge_days WHERE tenant_id = ?1)",
                params![tenant.0],
                |r| r.get(0),
            )?;
            Ok((credited, charged))
        })
    }

    /// One key's, user's or group's charges since `since_ms`.
    pub fn spent_by(
        &self,
        tenant: TenantId,
        account: Account,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        pg!(self, {} s => crate::store::Ledger::spent_by(&s, tenant, account, since_ms).await);
        let (col, id) = match account {
            Account::Key(k) => ("key_id", k.0),
            Account::User(u) => ("user_id", u.0),
            Account::Group(g) => ("group_id", g.0),
        };
        let sql = format!(
            "SELECT (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_events
                     WHERE tenant_id = ?1 AND ts_ms >= ?3 AND {col} = ?2)
                  + (SELECT COALESCE(SUM(cost_nano), 0) FROM charge_days
                     WHERE tenant_id = ?1 AND day_ms >= ?3 AND {col} = ?2)"
        );
        self.with(|c| Ok(c.query_row(&sql, params![tenant.0, id, since_ms], |r| r.get(0))?))
    }

    /// Per key, user and group: the sum of their charges.
    pub fn account_spend(&self) -> Result<Vec<(TenantId, Account, i64)>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::account_spend(&s).await);
        self.with(|c| {
            let mut out = Vec::new();
            let kinds: [(&str, MakeAccount); 3] = [
                ("key_id", |v| Account::Key(KeyId(v))),
                ("user_id", |v| Account::User(UserId(v))),
                ("group_id", |v| Account::Group(GroupId(v))),
            ];
            for (col, make) in kinds {
                // Only the current period's charges count for tenants with a quota period
                // (the same UTC boundaries as `QuotaPeriod::start_ms`).
                // A pruned day's charges count from their day's summary.
                let sql = format!(
                    "SELECT x.tenant_id, x.acct, SUM(x.cost) FROM (
                        SELECT tenant_id, {col} AS acct, cost_nano AS cost, ts_ms AS ts
                        FROM usage_events WHERE cost_nano != 0 AND {col} IS NOT NULL
                        UNION ALL
                        SELECT tenant_id, {col}, cost_nano, day_ms
                        FROM charge_days WHERE cost_nano != 0 AND {col} != 0) x
                     JOIN tenants t ON t.id = x.tenant_id
                     WHERE x.ts >= CASE t.quota_period
                           WHEN 'month' THEN ?1 WHEN 'day' THEN ?2 ELSE 0 END
                     GROUP BY x.tenant_id, x.acct"
                );
                let mut st = c.prepare(&sql)?;
                let now = unix_now_ms();
                let rows = st.query_map(
                    params![
                        QuotaPeriod::Month.start_ms(now),
                        QuotaPeriod::Day.start_ms(now)
                    ],
                    |r| Ok((TenantId(r.get(0)?), make(r.get(1)?), r.get(2)?)),
                )?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
    }

    /// A tenant's entries in time order with the running balance after each: the journal's
    /// entries (money in, adjustments) and one `charge:<request id>` entry per charged call
    /// (from its usage record).
    pub fn ledger_statement(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(LedgerEntry, i64)>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::ledger_statement(&s, tenant).await);
        self.with(|c| {
            let mut st = c.prepare(concat!(
                "SELECT id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms,
                        user_id, group_id, 0 AS src, seq AS ord
                 FROM ledger_entries WHERE tenant_id = ?1
                 UNION ALL
                 SELECT 'charge:' || request_id, 'charge', -cost_nano, key_id, request_id, NULL, NULL,
                        uncollected, ts_ms, user_id, group_id, 1, id
                 FROM usage_events WHERE tenant_id = ?1 AND (cost_nano != 0 OR uncollected != 0)
                 UNION ALL
                 SELECT ",
                charge_day_entry!(),
                "
                 FROM charge_days WHERE tenant_id = ?1
                 ORDER BY created_ms, src, ord"
            ),
            )?;
            let rows = st.query_map(params![tenant.0], |r| Store::entry_from_row(tenant, r))?;
            let mut running = 0i64;
            let mut out = Vec::new();
            for row in rows {
                let e = row?;
                running += e.amount;
                out.push((e, running));
            }
            Ok(out)
        })
    }

    /// A tenant's balance from everything before `from_ms`: where a statement starting there
    /// opens.
    pub fn balance_before(&self, tenant: TenantId, from_ms: i64) -> Result<i64, StoreError> {
        pg!(self, {} s => crate::store::Ledger::balance_before(&s, tenant, from_ms).await);
        // Charges before `from_ms` are read from the hourly roll-ups for whole hours, and from
        // the raw records only for the hour `from_ms` falls in (and for days whose raw records
        // are being pruned), so that the balance before a date costs the same on a tenant with
        // a million calls as on a new one (summing the raw records took seconds).
        let hour = from_ms.div_euclid(3_600_000);
        self.with(|c| {
            Ok(c.query_row(
                concat!(
                    "SELECT (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries
                         WHERE tenant_id = ?1 AND created_ms < ?2)",
                    charges_before!("?"),
                ),
                params![
                    tenant.0,
                    from_ms,
                    from_ms.saturating_sub(86_399_999),
                    hour,
                    hour * 3_600_000
                ],
                |r| r.get(0),
            )?)
        })
    }

    /// One page of a tenant's statement in time order: journal entries (money in,
    /// adjustments) and one `charge:<request id>` row per charged call, with the call's model,
    /// channel and tokens; those in `[from_ms, to_ms)` after the position `after`, at most
    /// `limit`. Each side walks its own index from the position on, so a page costs its own
    /// rows however deep into the statement it is.
    /// Money in and adjustments (every journal entry but charges) created in the page's range,
    /// newest first, with their sequence numbers.
    pub fn money_entries(
        &self,
        tenant: TenantId,
        page: NewestFirst,
    ) -> Result<Vec<(i64, LedgerEntry)>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::money_entries(&s, tenant, page).await);
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms,
                        user_id, group_id, seq
                 FROM ledger_entries
                 WHERE tenant_id = ?1 AND kind <> 'charge' AND created_ms >= ?2 AND created_ms < ?3
                   AND (?4 IS NULL OR seq < ?4)
                 ORDER BY seq DESC LIMIT ?5",
            )?;
            let rows = st.query_map(
                params![
                    tenant.0,
                    page.from.saturating_mul(1000),
                    page.to.saturating_mul(1000),
                    page.before,
                    page.limit
                ],
                |r| Ok((r.get(11)?, Store::entry_from_row(tenant, r)?)),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn statement_page(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
        after: Option<StatementPos>,
        limit: u32,
    ) -> Result<Vec<StatementRow>, StoreError> {
        pg!(self, {} s => crate::store::Ledger::statement_page(&s, tenant, from_ms, to_ms, after, limit).await);
        let after = after.unwrap_or(StatementPos {
            ts_ms: i64::MIN,
            src: 0,
            ord: i64::MIN,
        });
        let lower = from_ms.max(after.ts_ms);
        // One lower bound on time for the planner: a cursor before the range start becomes
        // "everything from the start" (else SQLite walked the index from the cursor's time, not
        // the range's: 100 ms for a range starting a month into a million calls).
        let after = if after.ts_ms < lower {
            StatementPos {
                ts_ms: lower,
                src: -1,
                ord: i64::MIN,
            }
        } else {
            after
        };
        self.with(|c| {
            let mut st = c.prepare_cached(concat!(
                "SELECT * FROM (
                    SELECT id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms,
                           user_id, group_id, 0 AS src, seq AS ord, NULL AS model, NULL AS channel,
                           NULL AS pt, NULL AS ct, NULL AS cw, NULL AS comp, NULL AS rt
                    FROM ledger_entries
                    WHERE tenant_id = ?1 AND created_ms >= ?2 AND created_ms < ?3
                      AND (created_ms > ?4 OR (created_ms = ?4 AND (0 > ?5 OR (0 = ?5 AND seq > ?6))))
                    ORDER BY created_ms, seq LIMIT ?7)
                 UNION ALL
                 SELECT * FROM (
                    SELECT 'charge:' || request_id, 'charge', -cost_nano, key_id, request_id, NULL, NULL,
                           uncollected, ts_ms, user_id, group_id, 1, id, model_requested, channel,
                           prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens, reasoning_tokens
                    FROM usage_events
                    WHERE tenant_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND (cost_nano != 0 OR uncollected != 0)
                      AND (ts_ms > ?4 OR (ts_ms = ?4 AND (1 > ?5 OR (1 = ?5 AND id > ?6))))
                    ORDER BY ts_ms, id LIMIT ?7)
                 UNION ALL
                 SELECT * FROM (
                    SELECT ",
                charge_day_entry!(),
                ", NULL, NULL, NULL, NULL, NULL, NULL, NULL
                    FROM charge_days
                    WHERE tenant_id = ?1 AND day_ms >= ?8 AND day_ms < ?9
                      AND (day_ms + 86399999 > ?4
                           OR (day_ms + 86399999 = ?4 AND (2 > ?5 OR (2 = ?5 AND id > ?6))))
                    ORDER BY day_ms, id LIMIT ?7)
                 ORDER BY 9, 12, 13 LIMIT ?7"
            ))?;
            let rows = st.query_map(
                params![
                    tenant.0,
                    lower,
                    to_ms,
                    after.ts_ms,
                    after.src,
                    after.ord,
                    limit,
                    // The days whose summaries (at their last millisecond) fall in the range.
                    lower.saturating_sub(86_399_999),
                    to_ms.saturating_sub(86_399_999)
                ],
                                |r| {
                    let entry = Store::entry_from_row(tenant, r)?;
                    let pos = StatementPos {
                        ts_ms: entry.created_ms,
                        src: r.get(11)?,
                        ord: r.get(12)?,
                    };
                    let call = match pos.src {
                        1 => Some(CallDetail {
                            model: r.get(13)?,
                            channel: r.get(14)?,
                            prompt_tokens: r.get(15)?,
                            cached_tokens: r.get(16)?,
                            cache_write_tokens: r.get(17)?,
                            completion_tokens: r.get(18)?,
                            reasoning_tokens: r.get(19)?,
                        }),
                        _ => None,
                    };
                    Ok(StatementRow { entry, pos, call })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    // ---------------------------------------------------------------- promotions

    /// A campaign: `Fixed(nano)` grants that much once per tenant; `Percent(basis points)` adds
    /// that share of a top-up it is applied to.
    pub fn create_promo(
        &self,
        code: &str,
        bonus: PromoBonus,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<PromoCampaign, StoreError> {
        pg!(self, { let code = code.to_string(); } s => crate::store::Codes::create_promo(&s, &code, bonus, expires_at, max_uses).await);
        let (code, kind, value) = crate::store::checked_promo(code, bonus)?;
        self.with(|c| {
            unique(
                c.execute(
                    "INSERT INTO promo_campaigns (code, kind, value, expires_at, max_uses, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![code, kind, value, expires_at, max_uses, unix_now()],
                ),
                || format!("promo code `{code}` already exists"),
            )?;
            Ok(())
        })?;
        self.list_promos().and_then(|v| {
            v.into_iter()
                .find(|p| p.code == code)
                .ok_or_else(|| StoreError::not_found("promo", ""))
        })
    }

    pub fn list_promos(&self) -> Result<Vec<PromoCampaign>, StoreError> {
        pg!(self, {} s => crate::store::Codes::list_promos(&s).await);
        self.with(|c| {
            let mut st = c.prepare("SELECT id, code, kind, value, expires_at, max_uses, uses, created_at FROM promo_campaigns ORDER BY id")?;
            let rows = st.query_map([], |r| {
                let kind: String = r.get(2)?;
                let value: i64 = r.get(3)?;
                Ok(PromoCampaign {
                    id: r.get(0)?,
                    code: r.get(1)?,
                    bonus: crate::store::promo_bonus_of(&kind, value),
                    expires_at: r.get(4)?,
                    max_uses: r.get(5)?,
                    uses: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Claim a campaign for a tenant inside `tx`: valid, not expired, under its cap and not used
    /// by this tenant before. Returns the bonus for a top-up of `topup` (None: a plain claim).
    fn claim_promo(
        tx: &Connection,
        code: &str,
        tenant: TenantId,
        topup: Option<i64>,
    ) -> Result<(i64, i64), StoreError> {
        let code = code.trim().to_ascii_uppercase();
        let row: Option<PromoRow> = tx
            .query_row(
                "SELECT id, kind, value, expires_at, max_uses, uses FROM promo_campaigns WHERE code = ?1",
                params![code],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let Some((id, kind, value, expires_at, max_uses, uses)) = row else {
            return Err(StoreError::not_found("promo code", ""));
        };
        let bonus = crate::store::promo_grant(&kind, value, expires_at, max_uses, uses, topup)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO promo_uses (campaign_id, tenant_id, used_ms) VALUES (?1, ?2, ?3)",
            params![id, tenant.0, unix_now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(
                "this tenant has already used this promo code".into(),
            ));
        }
        // The cap is re-checked in the update itself, so concurrent claims cannot exceed it.
        let n = tx.execute(
            "UPDATE promo_campaigns SET uses = uses + 1 WHERE id = ?1 AND (max_uses IS NULL OR uses < max_uses)",
            params![id],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(
                "this promo code has been used up".into(),
            ));
        }
        Ok((id, bonus))
    }

    /// The bonus a promotion code would give this tenant on a top-up of `topup` nano-credits,
    /// without claiming it: refused as a claim would be (unknown, expired, used up, used by
    /// this tenant already).
    pub fn promo_preview(
        &self,
        code: &str,
        tenant: TenantId,
        topup: i64,
    ) -> Result<i64, StoreError> {
        pg!(self, { let code = code.to_string(); } s => crate::store::Codes::promo_preview(&s, &code, tenant, topup).await);
        self.with(|c| {
            let code = code.trim().to_ascii_uppercase();
            let row: Option<PromoRow> = c
                .query_row(
                    "SELECT id, kind, value, expires_at, max_uses, uses FROM promo_campaigns WHERE code = ?1",
                    params![code],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()?;
            let Some((id, kind, value, expires_at, max_uses, uses)) = row else {
                return Err(StoreError::not_found("promo code", ""));
            };
            let bonus = crate::store::promo_grant(&kind, value, expires_at, max_uses, uses, Some(topup))?;
            let used: Option<i64> = c
                .query_row(
                    "SELECT 1 FROM promo_uses WHERE campaign_id = ?1 AND tenant_id = ?2",
                    params![id, tenant.0],
                    |r| r.get(0),
                )
                .optional()?;
            if used.is_some() {
                return Err(StoreError::Conflict("this tenant has already used this promo code".into()));
            }
            Ok(bonus)
        })
    }

    /// A top-up (and, with a promo code, its bonus) committed in one transaction. With an
    /// idempotency key, the entry id is the key's and a key used before commits nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn top_up(
        &self,
        tenant: TenantId,
        amount: i64,
        promo: Option<&str>,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
        idem: Option<&IdempotencyKey>,
    ) -> Result<Credited, StoreError> {
        pg!(self, { let promo = promo.map(str::to_string); let actor = actor.map(str::to_string); let note = note.map(str::to_string); let id = id.to_string(); let idem = idem.cloned(); } s => crate::store::Codes::top_up(&s, tenant, amount, promo.as_deref(), actor.as_deref(), note.as_deref(), &id, idem.as_ref()).await);
        self.with(|c| {
            let tx = c.transaction()?;
            Store::require_tenant(&tx, tenant)?;
            if let Some(k) = idem {
                if let Some(first) = Store::claim_idempotency(&tx, tenant, k)? {
                    return Ok(Credited::Replay(first));
                }
            }
            let id = idem.map_or_else(|| id.to_string(), |k| k.entry_id(tenant));
            let entry = |kind, amount, id: String, note: Option<String>| {
                crate::store::money_in(tenant, kind, amount, id, actor, note)
            };
            let mut out = vec![entry(
                EntryKind::TopUp,
                amount,
                id.clone(),
                note.map(str::to_string),
            )];
            if Store::insert_entry(&tx, &out[0])? == 0 {
                return Err(StoreError::Conflict(format!(
                    "ledger entry `{id}` already exists"
                )));
            }
            if let Some(code) = promo {
                let (campaign, bonus) = Store::claim_promo(&tx, code, tenant, Some(amount))?;
                let e = entry(
                    EntryKind::Promo,
                    bonus,
                    format!("promo:{campaign}:{}", tenant.0),
                    Some(format!("promo {}", code.trim().to_ascii_uppercase())),
                );
                Store::insert_entry(&tx, &e)?;
                out.push(e);
            }
            if let Some(k) = idem {
                Store::record_idempotent_entries(&tx, tenant, k, &out)?;
            }
            tx.commit()?;
            Ok(Credited::Committed(out))
        })
    }

    /// Claim a fixed-bonus promo code without a top-up.
    pub fn claim_fixed_promo(
        &self,
        tenant: TenantId,
        code: &str,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError> {
        pg!(self, { let code = code.to_string(); let actor = actor.map(str::to_string); } s => crate::store::Codes::claim_fixed_promo(&s, tenant, &code, actor.as_deref()).await);
        self.with(|c| {
            let tx = c.transaction()?;
            let (campaign, bonus) = Store::claim_promo(&tx, code, tenant, None)?;
            let e = crate::store::money_in(
                tenant,
                EntryKind::Promo,
                bonus,
                format!("promo:{campaign}:{}", tenant.0),
                actor,
                Some(format!("promo {}", code.trim().to_ascii_uppercase())),
            );
            Store::insert_entry(&tx, &e)?;
            tx.commit()?;
            Ok(e)
        })
    }

    // ---------------------------------------------------------------- redemption codes

    /// Generate `count` single-use codes worth `amount` nano-credits each. The plaintext codes
    /// are returned once; only their hashes are stored.
    pub fn create_codes(
        &self,
        batch: &str,
        amount: i64,
        count: u32,
        expires_at: Option<i64>,
    ) -> Result<Vec<String>, StoreError> {
        pg!(self, { let batch = batch.to_string(); } s => crate::store::Codes::create_codes(&s, &batch, amount, count, expires_at).await);
        if amount <= 0 || count == 0 || count > 10_000 {
            return Err(StoreError::Invalid(
                "amount must be positive and count between 1 and 10000".into(),
            ));
        }
        let codes: Vec<String> = (0..count)
            .map(|_| crate::tenancy::keys::generate_key().replacen("tg-", "RC-", 1))
            .collect();
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare(
                    "INSERT INTO redemption_codes (code_hash, prefix, batch, amount, created_ms, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for code in &codes {
                    st.execute(params![&hash_key(code)[..], display_prefix(code), batch, amount, unix_now_ms(), expires_at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })?;
        Ok(codes)
    }

    pub fn list_codes(&self, batch: Option<&str>) -> Result<Vec<RedemptionCode>, StoreError> {
        pg!(self, { let batch = batch.map(str::to_string); } s => crate::store::Codes::list_codes(&s, batch.as_deref()).await);
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, prefix, batch, amount, created_ms, expires_at, redeemed_by, redeemed_ms
                 FROM redemption_codes WHERE (?1 IS NULL OR batch = ?1) ORDER BY id",
            )?;
            let now = unix_now();
            let rows = st.query_map(params![batch], |r| {
                let expires_at: Option<i64> = r.get(5)?;
                let redeemed_by: Option<i64> = r.get(6)?;
                let state = crate::store::code_state(redeemed_by, expires_at, now);
                Ok(RedemptionCode {
                    id: r.get(0)?,
                    prefix: r.get(1)?,
                    batch: r.get(2)?,
                    amount_nano: r.get(3)?,
                    created_ms: r.get(4)?,
                    expires_at,
                    redeemed_by: redeemed_by.map(TenantId),
                    redeemed_ms: r.get(7)?,
                    state,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Redeem a code for a tenant: marks it used and journals the credit in one transaction,
    /// so two concurrent redemptions of one code credit exactly once.
    pub fn redeem(
        &self,
        code: &str,
        tenant: TenantId,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError> {
        pg!(self, { let code = code.to_string(); let actor = actor.map(str::to_string); } s => crate::store::Codes::redeem(&s, &code, tenant, actor.as_deref()).await);
        let hash = hash_key(code.trim());
        let now = unix_now();
        self.with(|c| {
            let tx = c.transaction()?;
            let row: Option<(i64, i64, Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT id, amount, expires_at, redeemed_by FROM redemption_codes WHERE code_hash = ?1",
                    params![&hash[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((id, amount, expires_at, redeemed_by)) = row else {
                return Err(StoreError::not_found("redemption code", ""));
            };
            if redeemed_by.is_some() {
                return Err(StoreError::Conflict("this code has already been redeemed".into()));
            }
            if expires_at.is_some_and(|t| t <= now) {
                return Err(StoreError::Conflict("this code has expired".into()));
            }
            let n = tx.execute(
                "UPDATE redemption_codes SET redeemed_by = ?2, redeemed_ms = ?3 WHERE id = ?1 AND redeemed_by IS NULL",
                params![id, tenant.0, unix_now_ms()],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict("this code has already been redeemed".into()));
            }
            let e = crate::store::money_in(
                tenant,
                EntryKind::Redemption,
                amount,
                format!("redeem:{id}"),
                actor,
                Some(format!("code {}", display_prefix(code.trim()))),
            );
            Store::insert_entry(&tx, &e)?;
            tx.commit()?;
            Ok(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cost of the recorder's group commit per usage event (and per charge), on a file:
    /// `cargo test --release --lib record_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn record_cost() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).unwrap();
        let t = s.create_tenant("acme").unwrap();
        let mk = |i: usize| UsageEvent {
            request_id: format!("01JABCDEFGH{i:012}"),
            ts_ms: 1_700_000_000_000 + i as i64,
            tenant_id: Some(t.id),
            key_id: Some(KeyId(1)),
            endpoint: "chat".into(),
            path: None,
            channel: Some("bench".into()),
            upstream: Some("bench/mock".into()),
            model_requested: Some("gpt-4o-mini".into()),
            model_used: Some("gpt-4o-mini".into()),
            status: 200,
            prompt_tokens: 20,
            completion_tokens: 16,
            usage_source: "vendor".into(),
            attempts: 1,
            latency_ms: 1,
            cost_nano: 12_345,
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let batches = 200;
        let mut i = 0;
        for _ in 0..batches {
            let ev: Vec<_> = (0..500).map(|k| mk(i + k)).collect();
            i += 500;
            s.record(&ev).unwrap();
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / (batches * 500) as f64;
        println!("usage record with its charge: {per:.2} us per call");
    }

    #[test]
    fn a_large_batch_of_charges_is_journaled_once() {
        let s = Store::open_in_memory().unwrap();
        let t = s.create_tenant("acme").unwrap();
        s.credit(
            t.id,
            EntryKind::TopUp,
            1_000_000,
            Some("op"),
            None,
            "topup:1",
        )
        .unwrap();
        let events: Vec<UsageEvent> = (0..130)
            .map(|i| UsageEvent {
                request_id: format!("r{i}"),
                ts_ms: unix_now_ms() + i,
                tenant_id: Some(t.id),
                key_id: Some(KeyId(3)),
                group_id: Some(GroupId(2)),
                endpoint: "chat".into(),
                path: None,
                usage_source: "vendor".into(),
                status: 200,
                cost_nano: i + 1,
                uncollected: i % 2,
                ..Default::default()
            })
            .collect();
        // Some were committed before (a retried commit that had in fact landed): only the new
        // ones count, in the records and in the roll-ups.
        assert_eq!(s.record(&events[10..50]).unwrap(), 40);
        assert_eq!(s.record(&events).unwrap(), 90);
        // Replayed again: nothing twice.
        assert_eq!(s.record(&events).unwrap(), 0);
        for group_by in [Dimension::None, Dimension::Key] {
            let total = s
                .analytics(&AnalyticsQuery {
                    tenant: t.id,
                    from: 0,
                    to: unix_now() + 7_200,
                    granularity: Granularity::Total,
                    group_by,
                    user: None,
                    day_offset: 0,
                })
                .unwrap();
            assert_eq!(
                (total[0].requests, total[0].cost_nano),
                (130, (1..=130).sum::<i64>())
            );
        }

        let totals = s.ledger_totals().unwrap();
        assert_eq!(totals[0].charged, (1..=130).sum::<i64>());
        assert_eq!(totals[0].credited, 1_000_000);
        let rows = s.ledger_statement(t.id).unwrap();
        assert_eq!(rows.len(), 131);
        assert_eq!(rows[0].0.kind, EntryKind::TopUp);
        let (e, running) = &rows[130];
        assert_eq!(
            (
                e.id.as_str(),
                e.kind,
                e.amount,
                e.key_id,
                e.group_id,
                e.uncollected,
                e.request_id.as_deref()
            ),
            (
                "charge:r129",
                EntryKind::Charge,
                -130,
                Some(KeyId(3)),
                Some(GroupId(2)),
                1,
                Some("r129")
            )
        );
        assert_eq!(*running, 1_000_000 - (1..=130).sum::<i64>());
    }

    #[test]
    fn quota_periods_count_only_the_current_period() {
        let s = Store::open_in_memory().unwrap();
        let t = s.create_tenant("acme").unwrap();
        let (k, _) = s
            .create_key(&NewKey {
                tenant_id: t.id,
                name: "q".into(),
                default_channel: "main".into(),
                allowed_channels: vec![],
                allowed_models: vec![],
                expires_at: None,
                quota_nano: Some(1_000),
                user_id: None,
                limits: Limits::default(),
            })
            .unwrap();
        let now = unix_now_ms();
        let month_start = QuotaPeriod::Month.start_ms(now);
        let charge = |id: &str, amount: i64, at: i64| UsageEvent {
            request_id: id.into(),
            ts_ms: at,
            tenant_id: Some(t.id),
            key_id: Some(k.id),
            endpoint: "chat".into(),
            path: None,
            usage_source: "vendor".into(),
            status: 200,
            cost_nano: amount,
            ..Default::default()
        };
        s.record(&[charge("old", 700, month_start - 1), charge("new", 50, now)])
            .unwrap();
        let spend = |s: &Store| {
            s.account_spend()
                .unwrap()
                .into_iter()
                .find(|(_, a, _)| *a == Account::Key(k.id))
                .map(|(_, _, v)| v)
        };
        assert_eq!(spend(&s), Some(750), "lifetime by default");
        s.set_quota_period(t.id, QuotaPeriod::Month).unwrap();
        assert_eq!(spend(&s), Some(50), "this month only");
        assert_eq!(s.get_key(k.id).unwrap().quota_period, QuotaPeriod::Month);
        assert_eq!(
            s.spent_by(t.id, Account::Key(k.id), month_start).unwrap(),
            50
        );
        assert_eq!(s.spent_by(t.id, Account::Key(k.id), 0).unwrap(), 750);
    }

    #[test]
    fn tenants_keys_and_generation() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let t = s.create_tenant("acme").unwrap();
        assert!(matches!(
            s.create_tenant("acme"),
            Err(StoreError::Conflict(_))
        ));
        let g0 = s.key_generation().unwrap();
        let (k, plain) = s
            .create_key(&NewKey {
                tenant_id: t.id,
                name: "ci".into(),
                default_channel: "official".into(),
                allowed_channels: vec!["cheap".into()],
                allowed_models: vec![],
                expires_at: None,
                quota_nano: None,
                user_id: None,
                limits: Limits::default(),
            })
            .unwrap();
        assert!(s.key_generation().unwrap() > g0);
        let snap = s.load_key_snapshot().unwrap();
        let found = snap.by_hash.get(&hash_key(&plain)).unwrap();
        assert_eq!(found.id, k.id);
        assert_eq!(found.tenant_name, "acme");
        assert!(
            found.may_use_channel("cheap")
                && found.may_use_channel("official")
                && !found.may_use_channel("x")
        );
        let revoked = s.revoke_key(k.id).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(matches!(
            s.revoke_key(KeyId(999)),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(s.find_tenant("acme").unwrap().id, t.id);
        assert_eq!(s.find_tenant(&t.id.0.to_string()).unwrap().name, "acme");
    }

    #[test]
    fn usage_insert_is_idempotent() {
        let s = Store::open_in_memory().unwrap();
        let e = UsageEvent {
            request_id: "r1".into(),
            endpoint: "chat".into(),
            path: None,
            prompt_tokens: 3,
            ..Default::default()
        };
        assert_eq!(s.insert_usage_events(&[e.clone(), e.clone()]).unwrap(), 1);
        assert_eq!(s.insert_usage_events(&[e]).unwrap(), 0);
        assert_eq!(s.recent_usage(None, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn rollups_match_the_raw_events_and_ignore_replays() {
        let s = Store::open_in_memory().unwrap();
        let t = s.create_tenant("t").unwrap();
        let mut events = Vec::new();
        for i in 0..500i64 {
            events.push(UsageEvent {
                request_id: format!("r{i}"),
                ts_ms: 1_700_000_000_000 + i * 600_000, // every 10 minutes: ~83 hours
                tenant_id: Some(t.id),
                key_id: Some(KeyId(1 + i % 3)),
                user_id: (i % 2 == 0).then_some(UserId(7)),
                endpoint: "chat".into(),
                path: None,
                model_requested: Some(if i % 5 == 0 { "big" } else { "small" }.into()),
                channel: Some("main".into()),
                status: if i % 50 == 0 { 502 } else { 200 },
                prompt_tokens: 10 + i as u64,
                completion_tokens: 3,
                cost_nano: 1_000 + i,
                cache_write_tokens: (i % 4) as u64,
                ..Default::default()
            });
        }
        assert_eq!(s.insert_usage_events(&events).unwrap(), 500);
        assert_eq!(s.insert_usage_events(&events[..100]).unwrap(), 0, "replay");
        let q = |granularity, group_by, user| AnalyticsQuery {
            tenant: t.id,
            from: 1_700_000_000,
            to: 1_700_000_000 + 500 * 600,
            granularity,
            group_by,
            user,
            day_offset: 0,
        };
        let total = s
            .analytics(&q(Granularity::Total, Dimension::None, None))
            .unwrap();
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].requests, 500);
        assert_eq!(total[0].errors, 10);
        assert_eq!(
            total[0].cost_nano,
            events.iter().map(|e| e.cost_nano).sum::<i64>()
        );
        assert_eq!(
            total[0].prompt_tokens as u64,
            events.iter().map(|e| e.prompt_tokens).sum::<u64>()
        );
        let cache_writes = events.iter().map(|e| e.cache_write_tokens).sum::<u64>() as i64;
        assert_eq!(total[0].cache_write_tokens, cache_writes);
        // Every way of reading the roll-ups sums to the same cache writes.
        for g in [Granularity::Hour, Granularity::Day, Granularity::Total] {
            for d in [
                Dimension::None,
                Dimension::User,
                Dimension::Key,
                Dimension::Model,
            ] {
                let rows = s.analytics(&q(g, d, None)).unwrap();
                let sum: i64 = rows.iter().map(|r| r.cache_write_tokens).sum();
                assert_eq!(sum, cache_writes, "{g:?} by {d:?}");
            }
        }
        let mine_writes: i64 = events
            .iter()
            .filter(|e| e.user_id == Some(UserId(7)))
            .map(|e| e.cache_write_tokens as i64)
            .sum();
        let mine_rows = s
            .analytics(&q(Granularity::Day, Dimension::Model, Some(UserId(7))))
            .unwrap();
        assert_eq!(
            mine_rows.iter().map(|r| r.cache_write_tokens).sum::<i64>(),
            mine_writes
        );
        let by_model = s
            .analytics(&q(Granularity::Total, Dimension::Model, None))
            .unwrap();
        let big = by_model.iter().find(|r| r.key == "big").unwrap();
        assert_eq!(big.requests, 100);
        let hourly = s
            .analytics(&q(Granularity::Hour, Dimension::None, None))
            .unwrap();
        assert_eq!(hourly.iter().map(|r| r.requests).sum::<i64>(), 500);
        assert!(hourly.len() >= 83 && hourly.iter().all(|r| r.bucket % 3600 == 0));
        let daily_keys = s
            .analytics(&q(Granularity::Day, Dimension::Key, None))
            .unwrap();
        assert_eq!(
            daily_keys.iter().map(|r| r.cost_nano).sum::<i64>(),
            total[0].cost_nano
        );
        let mine = s
            .analytics(&q(Granularity::Total, Dimension::None, Some(UserId(7))))
            .unwrap();
        assert_eq!(mine[0].requests, 250);
        // A window that excludes everything.
        let none = s
            .analytics(&AnalyticsQuery {
                from: 0,
                to: 3600,
                ..q(Granularity::Total, Dimension::None, None)
            })
            .unwrap();
        assert!(none.is_empty());
    }

    /// An in-memory database with the first `version` migrations applied.
    fn at_schema(version: usize) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
        )
        .unwrap();
        for (i, sql) in MIGRATIONS[..version].iter().enumerate() {
            c.execute_batch(sql).unwrap();
            c.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
                params![i as i64 + 1],
            )
            .unwrap();
        }
        c
    }

    /// A database at schema 12 journaled each charge twice (a `charge:` entry and the usage
    /// record's cost). Migration 13 keeps one: the charge moves onto the usage record (with its
    /// uncollected part), a charge whose record was dropped gets one, and balances, spend and the
    /// statement are what they were.
    #[test]
    fn migration_13_moves_charges_onto_usage_records() {
        let c = at_schema(12);
        c.execute_batch(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', 0);
             INSERT INTO ledger_entries (id, tenant_id, kind, amount, created_ms) VALUES ('topup:1', 1, 'top_up', 10000, 1000);
             INSERT INTO ledger_entries (id, tenant_id, kind, amount, key_id, request_id, uncollected, created_ms)
                VALUES ('charge:a', 1, 'charge', -300, 3, 'a', 0, 2000),
                       ('charge:b', 1, 'charge', -200, 3, 'b', 50, 3000),
                       ('charge:c', 1, 'charge', -100, 3, 'c', 0, 4000);
             INSERT INTO usage_events (request_id, ts_ms, tenant_id, key_id, endpoint, stream, status, prompt_tokens,
                cached_tokens, completion_tokens, reasoning_tokens, usage_source, attempts, latency_ms, cost_nano)
                VALUES ('a', 2000, 1, 3, 'chat', 0, 200, 10, 0, 5, 0, 'vendor', 1, 3, 300),
                       ('b', 3000, 1, 3, 'chat', 0, 200, 10, 0, 5, 0, 'vendor', 1, 3, 200),
                       ('x', 3500, 1, 3, 'chat', 0, 502, 0, 0, 0, 0, 'none', 2, 3, 0);",
        )
        .unwrap();
        let s = Store::init(c).unwrap();
        let t = &s.ledger_totals().unwrap()[0];
        assert_eq!((t.credited, t.charged), (10_000, 600));
        assert_eq!(
            s.spent_by(TenantId(1), Account::Key(KeyId(3)), 0).unwrap(),
            600
        );
        let rows = s.ledger_statement(TenantId(1)).unwrap();
        let got: Vec<(&str, i64, i64, i64)> = rows
            .iter()
            .map(|(e, run)| (e.id.as_str(), e.amount, e.uncollected, *run))
            .collect();
        assert_eq!(
            got,
            vec![
                ("topup:1", 10_000, 0, 10_000),
                ("charge:a", -300, 0, 9_700),
                ("charge:b", -200, 50, 9_500),
                ("charge:c", -100, 0, 9_400),
            ]
        );
        let journal: i64 = s
            .with(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'charge'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(journal, 0);
        let c_event = s
            .recent_usage(Some(TenantId(1)), None, 10)
            .unwrap()
            .into_iter()
            .find(|e| e.request_id == "c")
            .expect("a record for the charge whose usage record was dropped");
        assert_eq!(
            (c_event.cost_nano, c_event.usage_source.as_str()),
            (100, "journal")
        );
    }

    /// A database at schema 11 (cache writes on events only) gets them into its roll-ups when
    /// migration 12 runs, so analytics over older hours agree with the events too.
    #[test]
    fn migration_12_fills_cache_writes_into_existing_rollups() {
        let c = at_schema(11);
        // Two events in one hour (one with a user), one in the next day; as schema 11 recorded
        // them: cache writes on the events, not in the roll-ups.
        let hour = 1_700_000_000_000i64 / 3_600_000;
        for (id, ts_hour, user, writes) in [
            ("a", hour, None, 5i64),
            ("b", hour, Some(7i64), 2),
            ("c", hour + 24, None, 11),
        ] {
            c.execute(
                "INSERT INTO usage_events (request_id, ts_ms, tenant_id, key_id, endpoint, channel, model_requested,
                    stream, status, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, usage_source,
                    attempts, latency_ms, cost_nano, user_id, cache_write_tokens)
                 VALUES (?1, ?2, 1, 3, 'chat', 'main', 'm', 0, 200, 20, 0, 4, 0, 'vendor', 1, 5, 100, ?3, ?4)",
                params![id, ts_hour * 3_600_000 + 1_000, user, writes],
            )
            .unwrap();
            c.execute(
                "INSERT INTO usage_hourly (tenant_id, hour, key_id, user_id, group_id, model, channel, requests, errors,
                    prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_nano)
                 VALUES (1, ?1, 3, ?2, 0, 'm', 'main', 1, 0, 20, 0, 4, 0, 100)",
                params![ts_hour, user.unwrap_or(0)],
            )
            .unwrap();
        }
        c.execute_batch(
            "INSERT INTO usage_rollup
                SELECT tenant_id, d.dim, p.period, (hour * 3600 / p.period) * p.period,
                       CASE d.dim WHEN 0 THEN '' WHEN 1 THEN CAST(user_id AS TEXT) WHEN 2 THEN CAST(group_id AS TEXT)
                                  WHEN 3 THEN CAST(key_id AS TEXT) WHEN 4 THEN model ELSE channel END,
                       SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens),
                       SUM(reasoning_tokens), SUM(cost_nano)
                FROM usage_hourly,
                     (SELECT 0 AS dim UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5) d,
                     (SELECT 3600 AS period UNION ALL SELECT 86400) p
                GROUP BY 1, 2, 3, 4, 5;",
        )
        .unwrap();
        let s = Store::init(c).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let q = |granularity, group_by, user| AnalyticsQuery {
            tenant: TenantId(1),
            from: (hour - 48) * 3600,
            to: (hour + 48) * 3600,
            granularity,
            group_by,
            user,
            day_offset: 0,
        };
        for g in [Granularity::Hour, Granularity::Day, Granularity::Total] {
            for d in [
                Dimension::None,
                Dimension::User,
                Dimension::Key,
                Dimension::Model,
            ] {
                let rows = s.analytics(&q(g, d, None)).unwrap();
                let sum: i64 = rows.iter().map(|r| r.cache_write_tokens).sum();
                assert_eq!(sum, 18, "{g:?} by {d:?}");
            }
        }
        let by_user = s
            .analytics(&q(Granularity::Total, Dimension::User, None))
            .unwrap();
        let seven = by_user.iter().find(|r| r.key == "7").unwrap();
        assert_eq!(seven.cache_write_tokens, 2);
        let mine = s
            .analytics(&q(Granularity::Total, Dimension::None, Some(UserId(7))))
            .unwrap();
        assert_eq!(mine[0].cache_write_tokens, 2);
    }

    /// Routed calls recorded before schema 18 get into the routing roll-ups when it runs, so
    /// the routing-savings page (read from the roll-ups since) still shows them.
    #[test]
    fn migration_18_rolls_up_routed_calls_already_recorded() {
        let c = at_schema(17);
        let hour = 1_700_000_000_000i64 / 3_600_000;
        for (id, at, tier, cost, baseline) in [
            ("a", hour, Some("light"), 10i64, Some(40i64)),
            ("b", hour, Some("light"), 5, None),
            ("c", hour + 30, Some("strong"), 40, Some(40)),
            ("d", hour + 30, None, 99, None),
        ] {
            c.execute(
                "INSERT INTO usage_events (request_id, ts_ms, tenant_id, key_id, endpoint, channel, model_requested,
                    stream, status, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, usage_source,
                    attempts, latency_ms, cost_nano, route_tier, baseline_cost_nano)
                 VALUES (?1, ?2, 1, 3, 'chat', 'main', 'auto', 0, 200, 20, 0, 4, 0, 'vendor', 1, 5, ?3, ?4, ?5)",
                params![id, at * 3_600_000 + 1_000, cost, tier, baseline],
            )
            .unwrap();
        }
        let s = Store::init(c).unwrap();
        let rows = s
            .routing_savings(TenantId(1), (hour - 1) * 3_600_000, (hour + 48) * 3_600_000)
            .unwrap();
        assert_eq!(
            rows,
            vec![
                RoutingRow {
                    tier: "light".into(),
                    calls: 2,
                    cost_nano: 15,
                    baseline_cost_nano: 45
                },
                RoutingRow {
                    tier: "strong".into(),
                    calls: 1,
                    cost_nano: 40,
                    baseline_cost_nano: 40
                },
            ]
        );
        // And calls recorded from then on add to them.
        let mut e = crate::billing::usage::UsageEvent {
            request_id: "e".into(),
            ts_ms: (hour + 31) * 3_600_000,
            tenant_id: Some(TenantId(1)),
            cost_nano: 7,
            baseline_cost_nano: Some(9),
            route_tier: Some("light".into()),
            ..Default::default()
        };
        s.record(std::slice::from_ref(&e)).unwrap();
        e.request_id = "e".into();
        s.record(&[e]).unwrap();
        let light = s
            .routing_savings(TenantId(1), (hour - 1) * 3_600_000, (hour + 48) * 3_600_000)
            .unwrap()
            .remove(0);
        assert_eq!(
            (light.calls, light.cost_nano, light.baseline_cost_nano),
            (3, 22, 54),
            "a replayed record counts once"
        );
    }

    /// `cargo test --release --lib analytics_over_a_million_calls -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn analytics_over_a_million_calls() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        let t = s.create_tenant("big").unwrap();
        let start = std::time::Instant::now();
        for batch in 0..1000i64 {
            let events: Vec<UsageEvent> = (0..1000i64)
                .map(|i| {
                    let n = batch * 1000 + i;
                    UsageEvent {
                        request_id: format!("r{n}"),
                        ts_ms: 1_700_000_000_000 + n * 2_600, // a month of traffic
                        tenant_id: Some(t.id),
                        key_id: Some(KeyId(n % 200)),
                        user_id: Some(UserId(n % 100)),
                        group_id: Some(GroupId(n % 10)),
                        endpoint: "chat".into(),
                        path: None,
                        model_requested: Some(format!("model-{}", n % 8)),
                        channel: Some(format!("ch-{}", n % 3)),
                        status: 200,
                        prompt_tokens: 100,
                        completion_tokens: 50,
                        cost_nano: 12_345,
                        ..Default::default()
                    }
                })
                .collect();
            s.insert_usage_events(&events).unwrap();
        }
        println!("inserted 1,000,000 events in {:?}", start.elapsed());
        for (g, d) in [
            (Granularity::Total, Dimension::None),
            (Granularity::Total, Dimension::User),
            (Granularity::Day, Dimension::Model),
            (Granularity::Day, Dimension::Group),
            (Granularity::Hour, Dimension::None),
        ] {
            let q = AnalyticsQuery {
                tenant: t.id,
                from: 1_700_000_000,
                to: 1_700_000_000 + 31 * 86_400,
                granularity: g,
                group_by: d,
                user: None,
                day_offset: 0,
            };
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                rows = s.analytics(&q).unwrap().len();
                times.push(t0.elapsed());
            }
            times.sort();
            println!("{g:?} by {d:?}: {rows} rows, median {:?}", times[2]);
        }
    }

    #[test]
    fn migration_14_makes_old_idempotency_keys_their_tenants() {
        let c = at_schema(13);
        c.execute_batch(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', 0), (2, 'globex', 0);
             INSERT INTO ledger_entries (id, tenant_id, kind, amount, created_ms)
                VALUES ('topup:inv-1', 1, 'top_up', 10000, 1000),
                       ('adjust:a-1', 2, 'adjustment', -5, 2000);",
        )
        .unwrap();
        let s = Store::init(c).unwrap();
        let old = s
            .idempotent_record(TenantId(1), "topup", "inv-1")
            .unwrap()
            .unwrap();
        assert_eq!(old.entry_ids, vec!["topup:inv-1".to_string()]);
        assert!(old.fingerprint.is_empty() && old.answer.is_none());
        assert!(s
            .idempotent_record(TenantId(2), "topup", "inv-1")
            .unwrap()
            .is_none());
        assert!(s
            .idempotent_record(TenantId(2), "adjust", "a-1")
            .unwrap()
            .is_some());
        // Replaying the old key credits nothing; the key on another tenant is that tenant's.
        let key = |k: &str| IdempotencyKey {
            scope: "topup",
            key: k.to_string(),
            fingerprint: "f".into(),
        };
        let again = s
            .top_up(
                TenantId(1),
                10_000,
                None,
                None,
                None,
                "topup:x",
                Some(&key("inv-1")),
            )
            .unwrap();
        assert!(matches!(again, Credited::Replay(_)));
        let other = s
            .top_up(
                TenantId(2),
                7,
                None,
                None,
                None,
                "topup:y",
                Some(&key("inv-1")),
            )
            .unwrap();
        assert!(matches!(other, Credited::Committed(ref e) if e[0].id == "topup:2:inv-1"));
        let t: Vec<(i64, i64)> = s
            .ledger_totals()
            .unwrap()
            .iter()
            .map(|t| (t.tenant_id.0, t.credited))
            .collect();
        assert_eq!(t, vec![(1, 10_000), (2, 2)]);
    }

    #[test]
    fn limit_patches_change_only_the_fields_given() {
        let s = Store::open_in_memory().unwrap();
        let t = s.create_tenant("acme").unwrap();
        let set = |rpm, tpm| {
            s.set_limits(LimitSubject::Tenant(t.id), LimitsPatch { rpm, tpm })
                .unwrap()
        };
        let cases = [
            (Some(Some(5)), Some(Some(50)), (Some(5), Some(50))),
            (Some(Some(6)), None, (Some(6), Some(50))),
            (None, None, (Some(6), Some(50))),
            (None, Some(None), (Some(6), None)),
            (Some(None), Some(Some(1)), (None, Some(1))),
        ];
        for (rpm, tpm, (want_rpm, want_tpm)) in cases {
            let got = set(rpm, tpm);
            assert_eq!((got.rpm, got.tpm), (want_rpm, want_tpm), "{rpm:?} {tpm:?}");
        }
        assert!(matches!(
            s.set_limits(LimitSubject::Key(KeyId(99)), LimitsPatch::default()),
            Err(StoreError::NotFound { what: "key", .. })
        ));
    }

    #[test]
    fn statement_pages_walk_the_statement_in_order() {
        let s = Store::open_in_memory().unwrap();
        let t = s.create_tenant("acme").unwrap();
        s.with(|c| {
            c.execute_batch(
                "INSERT INTO ledger_entries (id, tenant_id, kind, amount, created_ms)
                    VALUES ('topup:a', 1, 'top_up', 1000, 10), ('topup:b', 1, 'top_up', 500, 30);
                 INSERT INTO usage_events (request_id, ts_ms, tenant_id, key_id, endpoint, channel, model_requested,
                    stream, status, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, usage_source,
                    attempts, latency_ms, cost_nano)
                    VALUES ('r1', 10, 1, 1, 'chat', 'main', 'm', 0, 200, 7, 0, 3, 0, 'vendor', 1, 1, 100),
                           ('r2', 30, 1, 1, 'chat', 'main', 'm', 0, 200, 7, 0, 3, 0, 'vendor', 1, 1, 200),
                           ('r3', 30, 1, 1, 'chat', 'main', 'm', 0, 200, 7, 0, 3, 0, 'vendor', 1, 1, 300),
                           ('r4', 50, 1, 1, 'chat', 'main', 'm', 0, 500, 0, 0, 0, 0, 'none', 1, 1, 0);",
            )?;
            Ok(())
        })
        .unwrap();
        let whole: Vec<String> = s
            .statement_page(t.id, i64::MIN, i64::MAX, None, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.entry.id)
            .collect();
        assert_eq!(
            whole,
            ["topup:a", "charge:r1", "topup:b", "charge:r2", "charge:r3"]
        );
        for size in 1..=5 {
            let (mut after, mut got) = (None, Vec::new());
            loop {
                let page = s
                    .statement_page(t.id, i64::MIN, i64::MAX, after, size)
                    .unwrap();
                let Some(last) = page.last() else { break };
                after = Some(last.pos);
                got.extend(page.into_iter().map(|r| r.entry.id));
            }
            assert_eq!(got, whole, "pages of {size}");
        }
        let from_30 = s.statement_page(t.id, 30, i64::MAX, None, 100).unwrap();
        assert_eq!(from_30.len(), 3);
        assert_eq!(s.balance_before(t.id, 30).unwrap(), 1000 - 100);
        let charge = &from_30[1];
        assert_eq!(
            charge.call.as_ref().map(|c| (
                c.model.as_deref(),
                c.prompt_tokens,
                c.completion_tokens
            )),
            Some((Some("m"), 7, 3))
        );
    }
}
