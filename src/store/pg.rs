//! The record on PostgreSQL (issue 15), through sqlx. The schema is the versioned files in
//! `migrations/postgres/`, built into the binary and applied by [`PgStore::connect`] under
//! PostgreSQL's advisory lock (sqlx's migrator takes it), so that nodes starting together
//! migrate once and the others wait, then find the schema current.
//!
//! Statements are written for PostgreSQL (not translated from SQLite's); rows are read by
//! column name into the same domain types as the SQLite store's.

use super::retention::{day_name, day_of, ArchiveWriter, PruneReport, DAY_MS};
use super::{
    checked_email, checked_name, checked_promo, checked_role, code_state, money_in, promo_bonus_of,
    promo_grant, rollup_window, Analytics, Codes, Directory, Invite, KeyPatch, Ledger, Members,
    UsageLog, UserPatch, UserToken,
};
use crate::billing::entry::{Account, EntryKind, LedgerEntry};
use crate::billing::usage::UsageEvent;
use crate::store::sqlite::{
    AnalyticsQuery, AnalyticsRow, CallDetail, CreditRow, Credited, Dimension, IdempotencyKey,
    IdempotentRecord, LedgerTotals, LimitSubject, PromoBonus, PromoCampaign, RedemptionCode,
    RoutingRow, StatementPos, StatementRow, UsagePos, UsageQuery,
};
use crate::store::sqlite::{NewKey, StoreError, UserPrincipal, CLUSTER_NODE};
use crate::tenancy::keys::{display_prefix, generate_key, hash_key, KeySnapshot};
use crate::tenancy::limits::Limits;
use crate::tenancy::limits::LimitsPatch;
use crate::tenancy::{
    unix_now, ApiKey, Group, GroupId, KeyId, QuotaPeriod, Role, Tenant, TenantId, User, UserId,
};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use std::sync::Arc;

/// The migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Postgres(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Postgres(format!("migration: {e}"))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A pruned day's charge summary (`charge_days`) as a statement entry: the columns
/// `entry_from_row` reads, then its position (source 2, ordered by the summary's id); it counts
/// at its day's last millisecond.
macro_rules! charge_day_entry {
    () => {
        "'charges:' || to_char(to_timestamp(day_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
            || ':' || id, 'charge', -cost_nano, NULLIF(key_id, 0), NULL::TEXT, NULL::TEXT,
         calls::TEXT || ' calls (raw records pruned)', uncollected, day_ms + 86399999,
         NULLIF(user_id, 0), NULLIF(group_id, 0), 2::BIGINT, id"
    };
}

/// A pool of connections to one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Day partitions of `usage_events` known to exist (see `ensure_partitions`).
    days: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

impl PgStore {
    /// Updates one column of a tenant that the key snapshot carries, and publishes a new
    /// snapshot generation (`column` is one of ours, never input).
    /// A tenant's JSON setting (`router_override`, `guardrails`, `sso`); `None`: not set.
    async fn tenant_setting(
        &self,
        tenant: TenantId,
        column: &'static str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {column} FROM tenants WHERE id = $1"
        )))
        .bind(tenant.0)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| StoreError::not_found("tenant", tenant.0))
    }

    async fn set_tenant_setting(
        &self,
        tenant: TenantId,
        column: &'static str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE tenants SET {column} = $2 WHERE id = $1"
        )))
        .bind(tenant.0)
        .bind(value)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("tenant", tenant.0));
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Connects (`postgres://user:password@host:port/db`) and brings the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            // A commit must be durable when it returns, whatever the server's default: the
            // recorder lets the charge log forget a charge once its commit returned, so an
            // asynchronous commit lost in a server crash would lose that charge.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET synchronous_commit TO on")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore {
            pool,
            days: Arc::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the day partitions of `usage_events` that hold `days` (UTC midnights) unless
    /// already seen by this process.
    async fn ensure_partitions(&self, days: impl Iterator<Item = i64>) -> Result<(), StoreError> {
        let missing: std::collections::BTreeSet<i64> = {
            let known = self.days.lock().unwrap_or_else(|e| e.into_inner());
            days.filter(|d| !known.contains(d)).collect()
        };
        for day in missing {
            sqlx::query("SELECT tollgate_usage_partition($1)")
                .bind(day)
                .execute(&self.pool)
                .await?;
            self.days
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(day);
        }
        Ok(())
    }

    fn forget_partitions(&self) {
        self.days.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// One retention pass (`store::retention`): every day partition that ends at or before
    /// `cutoff_ms` is archived into `archive` (when set), its charges are added to the day
    /// summaries and it is dropped, in one transaction that first locks the partition and checks
    /// that it holds exactly what was archived. One node at a time (an advisory lock); the
    /// others skip the pass.
    pub async fn prune_usage(
        &self,
        cutoff_ms: i64,
        archive: Option<&std::path::Path>,
        node: &str,
    ) -> Result<PruneReport, StoreError> {
        let mut lock = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7461626, 2)")
            .fetch_one(&mut *lock)
            .await?;
        if !got {
            return Ok(PruneReport {
                skipped: true,
                ..PruneReport::default()
            });
        }
        let out = self.prune_locked(&mut lock, cutoff_ms, archive, node).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(7461626, 2)")
            .execute(&mut *lock)
            .await;
        out
    }

    async fn prune_locked(
        &self,
        lock: &mut sqlx::PgConnection,
        cutoff_ms: i64,
        archive: Option<&std::path::Path>,
        node: &str,
    ) -> Result<PruneReport, StoreError> {
        // Today's and tomorrow's partitions exist before anyone needs them.
        let today = day_of(now_ms());
        self.ensure_partitions([today, today + DAY_MS].into_iter())
            .await?;
        let parts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.relname::TEXT,
                    (extract(epoch FROM to_date(substr(c.relname, 15), 'YYYYMMDD')) * 1000)::BIGINT
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'usage_events'::regclass AND c.relname ~ '^usage_events_p[0-9]{8}$'
             ORDER BY 2",
        )
        .fetch_all(&mut *lock)
        .await?;
        let mut report = PruneReport::default();
        for (part, day) in parts {
            if day + DAY_MS > cutoff_ms {
                break;
            }
            // `part` is a partition name matched above, never input.
            let archived = match archive {
                Some(dir) => {
                    let mut w = ArchiveWriter::create(dir, day)?;
                    let mut after = i64::MIN;
                    loop {
                        let page: Vec<(String, i64)> =
                            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                "SELECT row_to_json(u)::TEXT, u.id FROM {part} u
                             WHERE u.id > $1 ORDER BY u.id LIMIT 5000"
                            )))
                            .bind(after)
                            .fetch_all(&self.pool)
                            .await?;
                        let Some((_, last)) = page.last() else { break };
                        after = *last;
                        for (line, _) in &page {
                            w.line(line)?;
                        }
                    }
                    Some(w.finish()?)
                }
                None => None,
            };
            let mut tx = sqlx::Connection::begin(&mut *lock).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE"
            )))
            .execute(&mut *tx)
            .await?;
            let rows: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {part}")))
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some((path, n)) = &archived {
                if *n != rows as u64 {
                    // Written to while it was archived: leave the day for the next pass.
                    tx.rollback().await?;
                    let _ = std::fs::remove_file(path);
                    tracing::warn!(day = %day_name(day), "retention: records arrived while the day was archived; retrying later");
                    continue;
                }
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO charge_days (tenant_id, day_ms, key_id, user_id, group_id, calls,
                    cost_nano, uncollected)
                 SELECT tenant_id, $1, COALESCE(key_id, 0), COALESCE(user_id, 0),
                        COALESCE(group_id, 0), COUNT(*), SUM(cost_nano), SUM(uncollected)
                 FROM {part}
                 WHERE tenant_id IS NOT NULL AND (cost_nano <> 0 OR uncollected <> 0)
                 GROUP BY tenant_id, COALESCE(key_id, 0), COALESCE(user_id, 0), COALESCE(group_id, 0)
                 ON CONFLICT (tenant_id, day_ms, key_id, user_id, group_id) DO UPDATE SET
                    calls = charge_days.calls + EXCLUDED.calls,
                    cost_nano = charge_days.cost_nano + EXCLUDED.cost_nano,
                    uncollected = charge_days.uncollected + EXCLUDED.uncollected"
            )))
            .bind(day)
            .execute(&mut *tx)
            .await?;
            let file = archived.as_ref().map(|(p, _)| p.display().to_string());
            sqlx::query(
                "INSERT INTO usage_archives (day_ms, rows, file, node, created_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(day)
            .bind(rows)
            .bind(&file)
            .bind(node)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {part}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.days
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&day);
            report.rows += rows as u64;
            report.days.push(day);
            report.files.extend(file);
        }
        Ok(report)
    }

    /// The newest migration applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    async fn bump_generation(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        sqlx::query("UPDATE meta SET v = v + 1 WHERE k = 'key_generation'")
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// The key columns and joins (a macro, so that statements built on it stay literals).
macro_rules! key_select {
    () => {
        "SELECT k.id, k.tenant_id, t.name AS tenant_name, k.name, k.prefix,
        k.default_channel, k.allowed_channels, k.allowed_models, k.created_at, k.expires_at,
        k.revoked_at, k.quota_nano, k.user_id, u.quota_nano AS user_quota_nano, u.group_id,
        g.budget_nano, u.disabled_at, k.rpm_limit, k.tpm_limit, u.rpm_limit AS user_rpm,
        u.tpm_limit AS user_tpm, t.rpm_limit AS tenant_rpm, t.tpm_limit AS tenant_tpm,
        t.quota_period, t.router_override, k.allowed_cidrs, t.allowed_cidrs AS tenant_cidrs, t.guardrails, k.key_hash
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
    LEFT JOIN users u ON u.id = k.user_id LEFT JOIN groups g ON g.id = u.group_id"
    };
}

fn limits(r: &PgRow, rpm: &str, tpm: &str) -> Result<Limits, sqlx::Error> {
    Ok(Limits {
        rpm: r
            .try_get::<Option<i64>, _>(rpm)?
            .and_then(|v| u32::try_from(v).ok()),
        tpm: r
            .try_get::<Option<i64>, _>(tpm)?
            .and_then(|v| u64::try_from(v).ok()),
    })
}

fn key_from_row(r: &PgRow) -> Result<ApiKey, sqlx::Error> {
    let channels: String = r.try_get("allowed_channels")?;
    let models: String = r.try_get("allowed_models")?;
    Ok(ApiKey {
        id: KeyId(r.try_get("id")?),
        tenant_id: TenantId(r.try_get("tenant_id")?),
        tenant_name: r.try_get("tenant_name")?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        default_channel: r.try_get("default_channel")?,
        allowed_channels: serde_json::from_str(&channels).unwrap_or_default(),
        allowed_models: serde_json::from_str(&models).unwrap_or_default(),
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        quota_nano: r.try_get("quota_nano")?,
        user_id: r.try_get::<Option<i64>, _>("user_id")?.map(UserId),
        user_quota_nano: r.try_get("user_quota_nano")?,
        group_id: r.try_get::<Option<i64>, _>("group_id")?.map(GroupId),
        group_budget_nano: r.try_get("budget_nano")?,
        user_disabled: r.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
        key_limits: limits(r, "rpm_limit", "tpm_limit")?,
        user_limits: limits(r, "user_rpm", "user_tpm")?,
        tenant_limits: limits(r, "tenant_rpm", "tenant_tpm")?,
        quota_period: QuotaPeriod::parse(&r.try_get::<String, _>("quota_period")?)
            .unwrap_or_default(),
        // Validated when it was set; a row that no longer parses routes with the defaults.
        router_override: r
            .try_get::<Option<String>, _>("router_override")?
            .and_then(|j| serde_json::from_str(&j).ok())
            .map(Arc::new),
        network: crate::tenancy::NetworkRule::from_lists(
            r.try_get::<Option<String>, _>("allowed_cidrs")?.as_deref(),
            r.try_get::<Option<String>, _>("tenant_cidrs")?.as_deref(),
        ),
        guardrails: r
            .try_get::<Option<String>, _>("guardrails")?
            .and_then(|t| crate::guardrails::Compiled::cached(&t)),
    })
}

/// Whether a key with this id exists (revoked or not).
async fn key_exists(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: KeyId,
) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(found.is_some())
}

fn tenant_from_row(r: &PgRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: TenantId(r.try_get("id")?),
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        limits: limits(r, "rpm_limit", "tpm_limit")?,
    })
}

#[async_trait::async_trait]
impl Directory for PgStore {
    async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let name = checked_name(name, "tenant")?;
        let now = unix_now();
        let r = sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES ($1, $2) RETURNING id, name, created_at, rpm_limit, tpm_limit",
        )
        .bind(name)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match r {
            Ok(row) => Ok(tenant_from_row(&row)?),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "tenant `{name}` already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, rpm_limit, tpm_limit FROM tenants ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(tenant_from_row).collect::<Result<_, _>>()?)
    }

    async fn find_tenant(&self, id_or_name: &str) -> Result<Tenant, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, created_at, rpm_limit, tpm_limit FROM tenants WHERE name = $1 OR CAST(id AS TEXT) = $1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(tenant_from_row(&r)?),
            None => Err(StoreError::not_found("tenant", format!("`{id_or_name}`"))),
        }
    }

    async fn create_key(&self, new: &NewKey) -> Result<(ApiKey, String), StoreError> {
        let name = checked_name(&new.name, "key")?;
        let plaintext = generate_key();
        let hash = hash_key(&plaintext);
        let allowed_channels = serde_json::to_string(&new.allowed_channels)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let allowed_models = serde_json::to_string(&new.allowed_models)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
            .bind(new.tenant_id.0)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::not_found("tenant", new.tenant_id.0));
        }
        if let Some(u) = new.user_id {
            let owner: Option<i64> =
                sqlx::query_scalar("SELECT tenant_id FROM users WHERE id = $1")
                    .bind(u.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            if owner != Some(new.tenant_id.0) {
                return Err(StoreError::not_found("user", u.0));
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_keys (tenant_id, name, key_hash, prefix, default_channel,
                allowed_channels, allowed_models, created_at, expires_at, quota_nano, user_id,
                rpm_limit, tpm_limit)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(new.tenant_id.0)
        .bind(name)
        .bind(&hash[..])
        .bind(display_prefix(&plaintext))
        .bind(&new.default_channel)
        .bind(allowed_channels)
        .bind(allowed_models)
        .bind(unix_now())
        .bind(new.expires_at)
        .bind(new.quota_nano)
        .bind(new.user_id.map(|u| u.0))
        .bind(new.limits.rpm.map(i64::from))
        .bind(new.limits.tpm.and_then(|t| i64::try_from(t).ok()))
        .fetch_one(&mut *tx)
        .await?;
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok((self.get_key(KeyId(id)).await?, plaintext))
    }

    async fn get_key(&self, id: KeyId) -> Result<ApiKey, StoreError> {
        let row = sqlx::query(concat!(key_select!(), " WHERE k.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(key_from_row(&r)?),
            None => Err(StoreError::not_found("key", id.0)),
        }
    }

    async fn list_keys(&self, tenant: Option<TenantId>) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(concat!(
            key_select!(),
            " WHERE ($1::BIGINT IS NULL OR k.tenant_id = $1) ORDER BY k.id"
        ))
        .bind(tenant.map(|t| t.0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
    }

    async fn revoke_key(&self, id: KeyId) -> Result<ApiKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n =
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id.0)
                .bind(unix_now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 0 && !key_exists(&mut tx, id).await? {
            return Err(StoreError::not_found("key", id.0));
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        self.get_key(id).await
    }

    async fn update_key(&self, id: KeyId, patch: &KeyPatch) -> Result<ApiKey, StoreError> {
        if let Some(name) = &patch.name {
            checked_name(name, "key")?;
        }
        let json = |v: &Option<Vec<String>>| -> Result<Option<String>, StoreError> {
            v.as_ref()
                .map(|v| serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string())))
                .transpose()
        };
        let mut tx = self.pool.begin().await?;
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
        match revoked {
            None => return Err(StoreError::not_found("key", id.0)),
            Some(Some(_)) => {
                return Err(StoreError::Conflict(
                    "a revoked key cannot be changed".into(),
                ))
            }
            Some(None) => {}
        }
        sqlx::query(
            "UPDATE api_keys SET
                name = COALESCE($2, name),
                default_channel = COALESCE($3, default_channel),
                allowed_channels = COALESCE($4, allowed_channels),
                allowed_models = COALESCE($5, allowed_models),
                expires_at = CASE WHEN $6 THEN $7 ELSE expires_at END,
                quota_nano = CASE WHEN $8 THEN $9 ELSE quota_nano END
             WHERE id = $1",
        )
        .bind(id.0)
        .bind(patch.name.as_deref().map(str::trim))
        .bind(patch.default_channel.as_deref())
        .bind(json(&patch.allowed_channels)?)
        .bind(json(&patch.allowed_models)?)
        .bind(patch.expires_at.is_some())
        .bind(patch.expires_at.flatten())
        .bind(patch.quota_nano.is_some())
        .bind(patch.quota_nano.flatten())
        .execute(&mut *tx)
        .await?;
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        self.get_key(id).await
    }

    async fn rotate_key(&self, id: KeyId) -> Result<(ApiKey, String), StoreError> {
        let plaintext = generate_key();
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE api_keys SET key_hash = $2, prefix = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.0)
        .bind(&hash_key(&plaintext)[..])
        .bind(display_prefix(&plaintext))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(if key_exists(&mut tx, id).await? {
                StoreError::Conflict("a revoked key cannot be rotated".into())
            } else {
                StoreError::not_found("key", id.0)
            });
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok((self.get_key(id).await?, plaintext))
    }

    async fn key_generation(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT v FROM meta WHERE k = 'key_generation'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn load_key_snapshot(&self) -> Result<KeySnapshot, StoreError> {
        // One snapshot: the generation and the keys as of the same moment.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query_scalar("SELECT v FROM meta WHERE k = 'key_generation'")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(key_select!()).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut snap = KeySnapshot {
            by_hash: Default::default(),
            generation,
        };
        for r in &rows {
            let key = key_from_row(r)?;
            let hash: Vec<u8> = r.try_get("key_hash")?;
            if let Ok(h) = <[u8; 32]>::try_from(hash.as_slice()) {
                snap.by_hash.insert(h, Arc::new(key));
            }
        }
        Ok(snap)
    }
}

/// `Some(v as i64)` for counters held unsigned.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl UsageLog for PgStore {
    async fn record(&self, events: &[UsageEvent]) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        // One statement for the whole batch (a column an array), answering which request ids
        // were new: a batch written again inserts nothing and moves no roll-up.
        macro_rules! col {
            ($f:expr) => {
                events.iter().map($f).collect::<Vec<_>>()
            };
        }
        self.ensure_partitions(events.iter().map(|e| day_of(e.ts_ms)))
            .await?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query_scalar(
            "INSERT INTO usage_events (request_id, ts_ms, tenant_id, key_id, endpoint, channel,
                upstream, model_requested, model_used, stream, status, error_code, prompt_tokens,
                cached_tokens, completion_tokens, reasoning_tokens, usage_source, attempts,
                latency_ms, ttft_ms, cost_nano, user_id, group_id, route_tier, route_reason,
                route_score, baseline_cost_nano, cache_write_tokens, uncollected, path, guardrails)
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
                $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BOOLEAN[],
                $11::INTEGER[], $12::TEXT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[],
                $16::BIGINT[], $17::TEXT[], $18::INTEGER[], $19::BIGINT[], $20::BIGINT[],
                $21::BIGINT[], $22::BIGINT[], $23::BIGINT[], $24::TEXT[], $25::TEXT[],
                $26::DOUBLE PRECISION[], $27::BIGINT[], $28::BIGINT[], $29::BIGINT[], $30::TEXT[],
                $31::TEXT[])
             ON CONFLICT (request_id, ts_ms) DO NOTHING
             RETURNING request_id",
        )
        .bind(col!(|e| e.request_id.clone()))
        .bind(col!(|e| e.ts_ms))
        .bind(col!(|e| e.tenant_id.map(|t| t.0)))
        .bind(col!(|e| e.key_id.map(|k| k.0)))
        .bind(col!(|e| e.endpoint.clone()))
        .bind(col!(|e| e.channel.clone()))
        .bind(col!(|e| e.upstream.clone()))
        .bind(col!(|e| e.model_requested.clone()))
        .bind(col!(|e| e.model_used.clone()))
        .bind(col!(|e| e.stream))
        .bind(col!(|e| i32::from(e.status)))
        .bind(col!(|e| e.error_code.clone()))
        .bind(col!(|e| int(e.prompt_tokens)))
        .bind(col!(|e| int(e.cached_tokens)))
        .bind(col!(|e| int(e.completion_tokens)))
        .bind(col!(|e| int(e.reasoning_tokens)))
        .bind(col!(|e| e.usage_source.clone()))
        .bind(col!(|e| i32::try_from(e.attempts).unwrap_or(i32::MAX)))
        .bind(col!(|e| int(e.latency_ms)))
        .bind(col!(|e| e.ttft_ms.map(int)))
        .bind(col!(|e| e.cost_nano))
        .bind(col!(|e| e.user_id.map(|u| u.0)))
        .bind(col!(|e| e.group_id.map(|g| g.0)))
        .bind(col!(|e| e.route_tier.clone()))
        .bind(col!(|e| e.route_reason.clone()))
        .bind(col!(|e| e.route_score.map(f64::from)))
        .bind(col!(|e| e.baseline_cost_nano))
        .bind(col!(|e| int(e.cache_write_tokens)))
        .bind(col!(|e| e.uncollected))
        .bind(col!(|e| e.path.clone()))
        .bind(col!(|e| e.guardrails.clone()))
        .fetch_all(&mut *tx)
        .await;
        let new_ids: Vec<String> = match inserted {
            Ok(ids) => ids,
            Err(e) => {
                // Perhaps a day partition was dropped by a pruning pass since it was seen: the
                // retried batch creates it again.
                self.forget_partitions();
                return Err(e.into());
            }
        };
        let fresh: std::collections::HashSet<&str> = new_ids.iter().map(String::as_str).collect();
        let flags: Vec<bool> = events
            .iter()
            .map(|e| fresh.contains(e.request_id.as_str()))
            .collect();
        let (hourly, dims) = super::rollup_deltas(events, &flags);
        if !hourly.is_empty() {
            let mut c: [Vec<i64>; 13] = Default::default();
            let (mut models, mut channels) = (Vec::new(), Vec::new());
            for ((t, h, k, u, g, m, ch), d) in &hourly {
                for (col, v) in c
                    .iter_mut()
                    .zip([*t, *h, *k, *u, *g].iter().chain(d.iter()))
                {
                    col.push(*v);
                }
                models.push(m.to_string());
                channels.push(ch.to_string());
            }
            // $1 models, $2 channels, then the 13 integer columns in order.
            let mut up = sqlx::query(
                "INSERT INTO usage_hourly AS h (tenant_id, hour, key_id, user_id, group_id, model,
                    channel, requests, errors, prompt_tokens, cached_tokens, completion_tokens,
                    reasoning_tokens, cost_nano, cache_write_tokens)
                 SELECT * FROM UNNEST($3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[],
                    $7::BIGINT[], $1::TEXT[], $2::TEXT[], $8::BIGINT[], $9::BIGINT[],
                    $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], $14::BIGINT[],
                    $15::BIGINT[])
                 ON CONFLICT (tenant_id, hour, key_id, user_id, group_id, model, channel) DO UPDATE SET
                    requests = h.requests + excluded.requests,
                    errors = h.errors + excluded.errors,
                    prompt_tokens = h.prompt_tokens + excluded.prompt_tokens,
                    cached_tokens = h.cached_tokens + excluded.cached_tokens,
                    completion_tokens = h.completion_tokens + excluded.completion_tokens,
                    reasoning_tokens = h.reasoning_tokens + excluded.reasoning_tokens,
                    cost_nano = h.cost_nano + excluded.cost_nano,
                    cache_write_tokens = h.cache_write_tokens + excluded.cache_write_tokens",
            )
            .bind(models)
            .bind(channels);
            for col in &c {
                up = up.bind(col);
            }
            up.execute(&mut *tx).await?;
            let mut c: [Vec<i64>; 12] = Default::default();
            let mut values = Vec::new();
            for ((t, dim, period, bucket, value), d) in &dims {
                for (col, v) in c
                    .iter_mut()
                    .zip([*t, *dim, *period, *bucket].iter().chain(d.iter()))
                {
                    col.push(*v);
                }
                values.push(value.clone());
            }
            // $1 values, then the 12 integer columns in order.
            let mut up = sqlx::query(
                "INSERT INTO usage_rollup AS r (tenant_id, dim, period, bucket, value, requests,
                    errors, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens,
                    cost_nano, cache_write_tokens)
                 SELECT t, d::SMALLINT, p::INTEGER, b, v, r1, r2, r3, r4, r5, r6, r7, r8
                 FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $1::TEXT[],
                    $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[],
                    $11::BIGINT[], $12::BIGINT[], $13::BIGINT[])
                    AS x(t, d, p, b, v, r1, r2, r3, r4, r5, r6, r7, r8)
                 ON CONFLICT (tenant_id, dim, period, bucket, value) DO UPDATE SET
                    requests = r.requests + excluded.requests,
                    errors = r.errors + excluded.errors,
                    prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
                    cached_tokens = r.cached_tokens + excluded.cached_tokens,
                    completion_tokens = r.completion_tokens + excluded.completion_tokens,
                    reasoning_tokens = r.reasoning_tokens + excluded.reasoning_tokens,
                    cost_nano = r.cost_nano + excluded.cost_nano,
                    cache_write_tokens = r.cache_write_tokens + excluded.cache_write_tokens",
            )
            .bind(values);
            for col in &c {
                up = up.bind(col);
            }
            up.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(new_ids.len())
    }
}

const USER_COLUMNS: &str =
    "u.id, u.tenant_id, u.email, u.name, u.role, u.group_id, u.quota_nano, u.created_at, u.disabled_at, u.rpm_limit, u.tpm_limit, u.locked_until";

fn user_from_row(r: &PgRow) -> Result<User, sqlx::Error> {
    let role: String = r.try_get("role")?;
    Ok(User {
        id: UserId(r.try_get("id")?),
        tenant_id: TenantId(r.try_get("tenant_id")?),
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        role: Role::parse_tenant_role(&role).unwrap_or(Role::Viewer),
        group_id: r.try_get::<Option<i64>, _>("group_id")?.map(GroupId),
        quota_nano: r.try_get("quota_nano")?,
        created_at: r.try_get("created_at")?,
        disabled_at: r.try_get("disabled_at")?,
        limits: crate::tenancy::limits::Limits {
            rpm: r
                .try_get::<Option<i64>, _>("rpm_limit")?
                .map(|v| v.clamp(0, u32::MAX as i64) as u32),
            tpm: r
                .try_get::<Option<i64>, _>("tpm_limit")?
                .map(|v| v.max(0) as u64),
        },
        locked_until: r.try_get("locked_until")?,
    })
}

/// `Conflict(what())` for a unique violation, else the error itself.
fn unique<T>(r: Result<T, sqlx::Error>, what: impl FnOnce() -> String) -> Result<T, StoreError> {
    match r {
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(what())),
        other => Ok(other?),
    }
}

/// A group of another tenant is as missing as a group that does not exist.
async fn check_group(
    c: &mut sqlx::PgConnection,
    tenant: TenantId,
    group: Option<GroupId>,
) -> Result<(), StoreError> {
    if let Some(g) = group {
        let owner: Option<i64> = sqlx::query_scalar("SELECT tenant_id FROM groups WHERE id = $1")
            .bind(g.0)
            .fetch_optional(c)
            .await?;
        if owner != Some(tenant.0) {
            return Err(StoreError::not_found("group", g.0));
        }
    }
    Ok(())
}

/// The invitation columns (a macro, so that statements built on it stay literals).
macro_rules! invite_select {
    () => {
        "SELECT id, tenant_id, email, role, group_id, created_at, expires_at, accepted_user_id,
         revoked_at FROM invites"
    };
}

fn invite_from_row(r: &PgRow) -> Result<Invite, sqlx::Error> {
    Ok(Invite {
        id: r.try_get("id")?,
        tenant_id: TenantId(r.try_get("tenant_id")?),
        email: r.try_get("email")?,
        role: Role::parse_tenant_role(&r.try_get::<String, _>("role")?).unwrap_or(Role::Member),
        group_id: r.try_get::<Option<i64>, _>("group_id")?.map(GroupId),
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        accepted_user_id: r.try_get::<Option<i64>, _>("accepted_user_id")?.map(UserId),
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn token_from_row(r: &PgRow) -> Result<UserToken, sqlx::Error> {
    Ok(UserToken {
        id: r.try_get("id")?,
        user_id: UserId(r.try_get("user_id")?),
        prefix: r.try_get("prefix")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

#[async_trait::async_trait]
impl Members for PgStore {
    async fn create_group(
        &self,
        tenant: TenantId,
        name: &str,
        budget_nano: Option<i64>,
    ) -> Result<Group, StoreError> {
        let name = checked_name(name, "group")?;
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        let id: i64 = unique(
            sqlx::query_scalar(
                "INSERT INTO groups (tenant_id, name, budget_nano, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(tenant.0)
            .bind(name)
            .bind(budget_nano)
            .bind(now)
            .fetch_one(&mut *tx)
            .await,
            || format!("group `{name}` already exists"),
        )?;
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(Group {
            id: GroupId(id),
            tenant_id: tenant,
            name: name.to_string(),
            budget_nano,
            created_at: now,
        })
    }

    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, budget_nano, created_at FROM groups WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Group {
                    id: GroupId(r.try_get("id")?),
                    tenant_id: TenantId(r.try_get("tenant_id")?),
                    name: r.try_get("name")?,
                    budget_nano: r.try_get("budget_nano")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn create_user(
        &self,
        tenant: TenantId,
        email: &str,
        name: &str,
        role: Role,
        group: Option<GroupId>,
        quota_nano: Option<i64>,
    ) -> Result<User, StoreError> {
        let email = checked_email(email)?;
        let role = checked_role(role)?;
        let mut tx = self.pool.begin().await?;
        check_group(&mut tx, tenant, group).await?;
        let now = unix_now();
        let id: i64 = unique(
            sqlx::query_scalar(
                "INSERT INTO users (tenant_id, email, name, role, group_id, quota_nano, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(tenant.0)
            .bind(&email)
            .bind(name.trim())
            .bind(role.as_str())
            .bind(group.map(|g| g.0))
            .bind(quota_nano)
            .bind(now)
            .fetch_one(&mut *tx)
            .await,
            || format!("user `{email}` already exists in this tenant"),
        )?;
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(User {
            id: UserId(id),
            tenant_id: tenant,
            email,
            name: name.trim().to_string(),
            role,
            group_id: group,
            quota_nano,
            created_at: now,
            disabled_at: None,
            limits: Default::default(),
            locked_until: None,
        })
    }

    async fn get_user(&self, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(user_from_row(&r)?),
            None => Err(StoreError::not_found("user", id.0)),
        }
    }

    async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant_id = $1 ORDER BY u.id"
        )))
        .bind(tenant.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn update_user(&self, id: UserId, patch: &UserPatch) -> Result<User, StoreError> {
        let user = self.get_user(id).await?;
        let mut tx = self.pool.begin().await?;
        if let Some(r) = patch.role {
            let r = checked_role(r)?;
            sqlx::query("UPDATE users SET role = $2 WHERE id = $1")
                .bind(id.0)
                .bind(r.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(g) = patch.group {
            check_group(&mut tx, user.tenant_id, g).await?;
            sqlx::query("UPDATE users SET group_id = $2 WHERE id = $1")
                .bind(id.0)
                .bind(g.map(|g| g.0))
                .execute(&mut *tx)
                .await?;
        }
        if let Some(q) = patch.quota_nano {
            sqlx::query("UPDATE users SET quota_nano = $2 WHERE id = $1")
                .bind(id.0)
                .bind(q)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(d) = patch.disabled {
            sqlx::query("UPDATE users SET disabled_at = $2 WHERE id = $1")
                .bind(id.0)
                .bind(d.then(unix_now))
                .execute(&mut *tx)
                .await?;
            if d {
                sqlx::query(
                    "UPDATE user_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
                )
                .bind(id.0)
                .bind(unix_now())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        self.get_user(id).await
    }

    async fn create_user_token(&self, user: UserId) -> Result<String, StoreError> {
        let token = generate_key().replacen("tg-", "tgu-", 1);
        sqlx::query(
            "INSERT INTO user_tokens (user_id, token_hash, prefix, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user.0)
        .bind(&hash_key(&token)[..])
        .bind(display_prefix(&token))
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    async fn user_by_token(&self, token: &str) -> Result<Option<UserPrincipal>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS}, t.name AS tenant_name FROM user_tokens ut
               JOIN users u ON u.id = ut.user_id JOIN tenants t ON t.id = u.tenant_id
             WHERE ut.token_hash = $1 AND ut.revoked_at IS NULL AND u.disabled_at IS NULL"
        )))
        .bind(&hash_key(token)[..])
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(UserPrincipal {
                user: user_from_row(&r)?,
                tenant_name: r.try_get("tenant_name")?,
            })),
        }
    }

    async fn create_invite(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        group: Option<GroupId>,
        ttl_secs: i64,
    ) -> Result<String, StoreError> {
        let role = checked_role(role)?;
        let email = checked_email(email)?;
        let token = generate_key().replacen("tg-", "inv-", 1);
        let mut tx = self.pool.begin().await?;
        check_group(&mut tx, tenant, group).await?;
        sqlx::query(
            "INSERT INTO invites (tenant_id, email, role, group_id, token_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant.0)
        .bind(email)
        .bind(role.as_str())
        .bind(group.map(|g| g.0))
        .bind(&hash_key(&token)[..])
        .bind(unix_now())
        .bind(unix_now() + ttl_secs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    async fn accept_invite(&self, token: &str, name: &str) -> Result<(User, String), StoreError> {
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        // Locked: two acceptances of one invitation at once create one user.
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, group_id, expires_at, accepted_user_id, revoked_at
             FROM invites WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(&hash_key(token.trim())[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else {
            return Err(StoreError::not_found("invitation", ""));
        };
        if r.try_get::<Option<i64>, _>("accepted_user_id")?.is_some() {
            return Err(StoreError::Conflict(
                "this invitation has already been accepted".into(),
            ));
        }
        if r.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Err(StoreError::Conflict(
                "this invitation has been revoked".into(),
            ));
        }
        if r.try_get::<i64, _>("expires_at")? <= now {
            return Err(StoreError::Conflict("this invitation has expired".into()));
        }
        let invite: i64 = r.try_get("id")?;
        let email: String = r.try_get("email")?;
        let role =
            Role::parse_tenant_role(&r.try_get::<String, _>("role")?).unwrap_or(Role::Member);
        let uid: i64 = unique(
            sqlx::query_scalar(
                "INSERT INTO users (tenant_id, email, name, role, group_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(r.try_get::<i64, _>("tenant_id")?)
            .bind(&email)
            .bind(name.trim())
            .bind(role.as_str())
            .bind(r.try_get::<Option<i64>, _>("group_id")?)
            .bind(now)
            .fetch_one(&mut *tx)
            .await,
            || format!("user `{email}` already exists in this tenant"),
        )?;
        sqlx::query("UPDATE invites SET accepted_user_id = $2 WHERE id = $1")
            .bind(invite)
            .bind(uid)
            .execute(&mut *tx)
            .await?;
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        let user = self.get_user(UserId(uid)).await?;
        let token = self.create_user_token(user.id).await?;
        Ok((user, token))
    }

    async fn list_invites(&self, tenant: TenantId) -> Result<Vec<Invite>, StoreError> {
        let rows = sqlx::query(concat!(
            invite_select!(),
            " WHERE tenant_id = $1 ORDER BY id DESC"
        ))
        .bind(tenant.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(invite_from_row).collect::<Result<_, _>>()?)
    }

    async fn invite_by_token(&self, token: &str) -> Result<Option<Invite>, StoreError> {
        let row = sqlx::query(concat!(invite_select!(), " WHERE token_hash = $1"))
            .bind(&hash_key(token.trim())[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(invite_from_row).transpose()?)
    }

    async fn revoke_invite(&self, tenant: TenantId, id: i64) -> Result<Invite, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            invite_select!(),
            " WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
        ))
        .bind(id)
        .bind(tenant.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::not_found("invitation", id));
        };
        let invite = invite_from_row(&row)?;
        if invite.accepted_user_id.is_some() {
            return Err(StoreError::Conflict(
                "this invitation has already been accepted".into(),
            ));
        }
        if invite.revoked_at.is_some() {
            return Ok(invite);
        }
        let now = unix_now();
        sqlx::query("UPDATE invites SET revoked_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Invite {
            revoked_at: Some(now),
            ..invite
        })
    }

    async fn list_user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, prefix, created_at, revoked_at FROM user_tokens WHERE user_id = $1 ORDER BY id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(token_from_row).collect::<Result<_, _>>()?)
    }

    async fn revoke_user_token(&self, user: UserId, id: i64) -> Result<UserToken, StoreError> {
        sqlx::query(
            "UPDATE user_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(user.0)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT id, user_id, prefix, created_at, revoked_at FROM user_tokens WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(token_from_row(&r)?),
            None => Err(StoreError::not_found("token", id)),
        }
    }

    async fn set_router_override(
        &self,
        tenant: TenantId,
        json: Option<&str>,
    ) -> Result<(), StoreError> {
        self.set_tenant_setting(tenant, "router_override", json)
            .await
    }

    async fn router_override(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        self.tenant_setting(tenant, "router_override").await
    }
}

/// A journal or statement row: id, kind, amount, key, request, actor, note, uncollected, time,
/// user, group (columns 0-10), of `tenant`.
fn entry_from_row(tenant: TenantId, r: &PgRow) -> Result<LedgerEntry, sqlx::Error> {
    let kind: String = r.try_get(1)?;
    Ok(LedgerEntry {
        id: r.try_get(0)?,
        tenant_id: tenant,
        kind: EntryKind::parse(&kind).unwrap_or(EntryKind::Adjustment),
        amount: r.try_get(2)?,
        key_id: r.try_get::<Option<i64>, _>(3)?.map(KeyId),
        request_id: r.try_get(4)?,
        actor: r.try_get(5)?,
        note: r.try_get(6)?,
        uncollected: r.try_get(7)?,
        created_ms: r.try_get(8)?,
        user_id: r.try_get::<Option<i64>, _>(9)?.map(UserId),
        group_id: r.try_get::<Option<i64>, _>(10)?.map(GroupId),
    })
}

const ENTRY_COLUMNS: &str =
    "id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms, user_id, group_id";

async fn require_tenant(c: &mut sqlx::PgConnection, tenant: TenantId) -> Result<(), StoreError> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant.0)
        .fetch_optional(c)
        .await?;
    match exists {
        Some(_) => Ok(()),
        None => Err(StoreError::not_found("tenant", tenant.0)),
    }
}

/// Inserts a journal entry unless its id is taken; whether it was inserted.
async fn insert_entry(c: &mut sqlx::PgConnection, e: &LedgerEntry) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "INSERT INTO ledger_entries (id, tenant_id, kind, amount, key_id, request_id, actor, note,
            uncollected, created_ms, user_id, group_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&e.id)
    .bind(e.tenant_id.0)
    .bind(e.kind.as_str())
    .bind(e.amount)
    .bind(e.key_id.map(|k| k.0))
    .bind(&e.request_id)
    .bind(&e.actor)
    .bind(&e.note)
    .bind(e.uncollected)
    .bind(e.created_ms)
    .bind(e.user_id.map(|u| u.0))
    .bind(e.group_id.map(|g| g.0))
    .execute(c)
    .await?
    .rows_affected();
    Ok(n == 1)
}

async fn read_idempotency(
    c: &mut sqlx::PgConnection,
    tenant: TenantId,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotentRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT fingerprint, entry_ids, status, body, created_ms FROM idempotency_keys
         WHERE tenant_id = $1 AND scope = $2 AND key = $3",
    )
    .bind(tenant.0)
    .bind(scope)
    .bind(key)
    .fetch_optional(c)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let ids: String = r.try_get("entry_ids")?;
    let status: Option<i32> = r.try_get("status")?;
    let body: Option<String> = r.try_get("body")?;
    Ok(Some(IdempotentRecord {
        fingerprint: r.try_get("fingerprint")?,
        entry_ids: serde_json::from_str(&ids).unwrap_or_default(),
        answer: status.and_then(|s| u16::try_from(s).ok()).zip(body),
        created_ms: r.try_get("created_ms")?,
    }))
}

use crate::store::sqlite::unix_now_ms as now_ms;

/// Claims `k` for a request about to commit in `tx`; when it was claimed before, what it
/// recorded. The claim is the insert: a concurrent request with the same key waits on it and
/// then finds it taken, in this node or another.
async fn claim_idempotency(
    tx: &mut sqlx::PgConnection,
    tenant: TenantId,
    k: &IdempotencyKey,
) -> Result<Option<IdempotentRecord>, StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, scope, key, fingerprint, entry_ids, created_ms)
         VALUES ($1, $2, $3, $4, '[]', $5) ON CONFLICT DO NOTHING",
    )
    .bind(tenant.0)
    .bind(k.scope)
    .bind(&k.key)
    .bind(&k.fingerprint)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(None);
    }
    match read_idempotency(tx, tenant, k.scope, &k.key).await? {
        Some(r) => Ok(Some(r)),
        None => Err(StoreError::Conflict("idempotency key in use".into())),
    }
}

/// The entries a claimed key committed, for its replays.
async fn record_idempotent_entries(
    tx: &mut sqlx::PgConnection,
    tenant: TenantId,
    k: &IdempotencyKey,
    entries: &[LedgerEntry],
) -> Result<(), StoreError> {
    let ids = crate::store::entry_ids_json(entries)?;
    sqlx::query(
        "UPDATE idempotency_keys SET entry_ids = $4 WHERE tenant_id = $1 AND scope = $2 AND key = $3",
    )
    .bind(tenant.0)
    .bind(k.scope)
    .bind(&k.key)
    .bind(ids)
    .execute(tx)
    .await?;
    Ok(())
}

/// The usage-record column that names an account.
fn account_column(account: Account) -> (&'static str, i64) {
    match account {
        Account::Key(k) => ("key_id", k.0),
        Account::User(u) => ("user_id", u.0),
        Account::Group(g) => ("group_id", g.0),
    }
}

#[async_trait::async_trait]
impl Ledger for PgStore {
    async fn quota_period(&self, tenant: TenantId) -> Result<QuotaPeriod, StoreError> {
        Ok(self
            .tenant_setting(tenant, "quota_period")
            .await?
            .and_then(|p| QuotaPeriod::parse(&p))
            .unwrap_or_default())
    }

    async fn set_quota_period(
        &self,
        tenant: TenantId,
        period: QuotaPeriod,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("UPDATE tenants SET quota_period = $2 WHERE id = $1")
            .bind(tenant.0)
            .bind(period.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("tenant", tenant.0));
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_limits(
        &self,
        subject: LimitSubject,
        patch: LimitsPatch,
    ) -> Result<Limits, StoreError> {
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
        let mut tx = self.pool.begin().await?;
        // `table` is one of three names above, never input.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET rpm_limit = CASE WHEN $2 THEN $3 ELSE rpm_limit END,
                                tpm_limit = CASE WHEN $4 THEN $5 ELSE tpm_limit END
             WHERE id = $1 RETURNING rpm_limit, tpm_limit"
        )))
        .bind(id)
        .bind(patch.rpm.is_some())
        .bind(patch.rpm.flatten().map(i64::from))
        .bind(patch.tpm.is_some())
        .bind(tpm)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else {
            return Err(StoreError::not_found(what, id));
        };
        let limits = limits(&r, "rpm_limit", "tpm_limit")?;
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(limits)
    }

    async fn credit(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
    ) -> Result<LedgerEntry, StoreError> {
        let e = crate::store::sqlite::Store::credit_entry(
            id.to_string(),
            tenant,
            kind,
            amount,
            actor,
            note,
        );
        let mut tx = self.pool.begin().await?;
        require_tenant(&mut tx, tenant).await?;
        if !insert_entry(&mut tx, &e).await? {
            return Err(StoreError::Conflict(format!(
                "ledger entry `{id}` already exists"
            )));
        }
        tx.commit().await?;
        Ok(e)
    }

    async fn credit_idempotent(
        &self,
        tenant: TenantId,
        kind: EntryKind,
        amount: i64,
        actor: Option<&str>,
        note: Option<&str>,
        idem: &IdempotencyKey,
    ) -> Result<Credited, StoreError> {
        let e = crate::store::sqlite::Store::credit_entry(
            idem.entry_id(tenant),
            tenant,
            kind,
            amount,
            actor,
            note,
        );
        let mut tx = self.pool.begin().await?;
        require_tenant(&mut tx, tenant).await?;
        if let Some(first) = claim_idempotency(&mut tx, tenant, idem).await? {
            return Ok(Credited::Replay(first));
        }
        if !insert_entry(&mut tx, &e).await? {
            return Err(StoreError::Conflict(format!(
                "ledger entry `{}` already exists",
                e.id
            )));
        }
        let out = vec![e];
        record_idempotent_entries(&mut tx, tenant, idem, &out).await?;
        tx.commit().await?;
        Ok(Credited::Committed(out))
    }

    async fn idempotent_record(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotentRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        read_idempotency(&mut c, tenant, scope, key).await
    }

    async fn answer_idempotent(
        &self,
        tenant: TenantId,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $4, body = $5
             WHERE tenant_id = $1 AND scope = $2 AND key = $3 AND body IS NULL",
        )
        .bind(tenant.0)
        .bind(scope)
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn entries_by_id(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE tenant_id = $1 AND id = ANY($2)"
        )))
        .bind(tenant.0)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut found: std::collections::HashMap<String, LedgerEntry> = rows
            .iter()
            .map(|r| entry_from_row(tenant, r).map(|e| (e.id.clone(), e)))
            .collect::<Result<_, _>>()?;
        // In the order asked for, as the SQLite store answers.
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn ledger_totals(&self) -> Result<Vec<LedgerTotals>, StoreError> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT tenant_id, SUM(credited)::BIGINT, SUM(charged)::BIGINT FROM (
                SELECT tenant_id, amount AS credited, 0::BIGINT AS charged FROM ledger_entries
                UNION ALL
                SELECT tenant_id, 0, cost_nano FROM usage_events
                WHERE tenant_id IS NOT NULL AND cost_nano <> 0
                UNION ALL
                SELECT tenant_id, 0, cost_nano FROM charge_days) x
             GROUP BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(t, credited, charged)| LedgerTotals {
                tenant_id: TenantId(t),
                credited,
                charged,
            })
            .collect())
    }

    async fn credits_after(&self, after: i64, limit: usize) -> Result<Vec<CreditRow>, StoreError> {
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT seq, id, tenant_id, amount FROM ledger_entries
             WHERE kind <> 'charge' AND seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, id, t, amount)| CreditRow {
                seq,
                id,
                tenant_id: TenantId(t),
                amount,
            })
            .collect())
    }

    async fn tenant_record_upto(
        &self,
        tenant: TenantId,
        upto: i64,
    ) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT (SELECT COALESCE(SUM(amount), 0)::BIGINT FROM ledger_entries
                     WHERE tenant_id = $1 AND seq <= $2),
                    (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_events WHERE tenant_id = $1)::BIGINT
                    + (SELECT COALESCE(SUM(cost_nano), 0) FROM charge_days WHERE tenant_id = $1)::BIGINT",
        )
        .bind(tenant.0)
        .bind(upto)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn spent_by(
        &self,
        tenant: TenantId,
        account: Account,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        let (col, id) = account_column(account);
        // `col` is one of three column names, never input.
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT COALESCE(SUM(cost_nano), 0) FROM usage_events
                     WHERE tenant_id = $1 AND ts_ms >= $3 AND {col} = $2)::BIGINT
                  + (SELECT COALESCE(SUM(cost_nano), 0) FROM charge_days
                     WHERE tenant_id = $1 AND day_ms >= $3 AND {col} = $2)::BIGINT"
        )))
        .bind(tenant.0)
        .bind(id)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn account_spend(&self) -> Result<Vec<(TenantId, Account, i64)>, StoreError> {
        let now = now_ms();
        let mut out = Vec::new();
        for col in ["key_id", "user_id", "group_id"] {
            // Only the current period's charges count for tenants with a quota period (the
            // same UTC boundaries as `QuotaPeriod::start_ms`).
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT x.tenant_id, x.acct, SUM(x.cost)::BIGINT FROM (
                    SELECT tenant_id, {col} AS acct, cost_nano AS cost, ts_ms AS ts
                    FROM usage_events WHERE cost_nano <> 0 AND {col} IS NOT NULL
                    UNION ALL
                    SELECT tenant_id, {col}, cost_nano, day_ms
                    FROM charge_days WHERE cost_nano <> 0 AND {col} <> 0) x
                 JOIN tenants t ON t.id = x.tenant_id
                 WHERE x.ts >= CASE t.quota_period
                       WHEN 'month' THEN $1 WHEN 'day' THEN $2 ELSE 0 END
                 GROUP BY x.tenant_id, x.acct"
            )))
            .bind(QuotaPeriod::Month.start_ms(now))
            .bind(QuotaPeriod::Day.start_ms(now))
            .fetch_all(&self.pool)
            .await?;
            for (t, v, sum) in rows {
                let account = match col {
                    "key_id" => Account::Key(KeyId(v)),
                    "user_id" => Account::User(UserId(v)),
                    _ => Account::Group(GroupId(v)),
                };
                out.push((TenantId(t), account, sum));
            }
        }
        Ok(out)
    }

    async fn ledger_statement(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(LedgerEntry, i64)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms,
                    user_id, group_id, 0 AS src, seq AS ord
             FROM ledger_entries WHERE tenant_id = $1
             UNION ALL
             SELECT 'charge:' || request_id, 'charge', -cost_nano, key_id, request_id, NULL, NULL,
                    uncollected, ts_ms, user_id, group_id, 1, id
             FROM usage_events WHERE tenant_id = $1 AND (cost_nano <> 0 OR uncollected <> 0)
             UNION ALL
             SELECT ",
            charge_day_entry!(),
            "
             FROM charge_days WHERE tenant_id = $1
             ORDER BY created_ms, src, ord"
        ))
        .bind(tenant.0)
        .fetch_all(&self.pool)
        .await?;
        let mut running = 0i64;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let e = entry_from_row(tenant, r)?;
            running += e.amount;
            out.push((e, running));
        }
        Ok(out)
    }

    async fn balance_before(&self, tenant: TenantId, from_ms: i64) -> Result<i64, StoreError> {
        // As on SQLite: whole hours from the roll-ups (`charges_before!`).
        let hour = from_ms.div_euclid(3_600_000);
        Ok(sqlx::query_scalar(concat!(
            "SELECT (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries
                     WHERE tenant_id = $1 AND created_ms < $2)::BIGINT",
            crate::store::sqlite::charges_before!("$"),
        ))
        .bind(tenant.0)
        .bind(from_ms)
        // A pruned day's summary counts at its day's last millisecond.
        .bind(from_ms.saturating_sub(86_399_999))
        .bind(hour)
        .bind(hour * 3_600_000)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn money_entries(
        &self,
        tenant: TenantId,
        page: super::sqlite::NewestFirst,
    ) -> Result<Vec<(i64, LedgerEntry)>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS}, seq FROM ledger_entries
             WHERE tenant_id = $1 AND kind <> 'charge' AND created_ms >= $2 AND created_ms < $3
               AND ($4::BIGINT IS NULL OR seq < $4)
             ORDER BY seq DESC LIMIT $5"
        )))
        .bind(tenant.0)
        .bind(page.from.saturating_mul(1000))
        .bind(page.to.saturating_mul(1000))
        .bind(page.before)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(11)?, entry_from_row(tenant, r)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn statement_page(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
        after: Option<StatementPos>,
        limit: u32,
    ) -> Result<Vec<StatementRow>, StoreError> {
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
        // Each side walks its own index from the position on, as in the SQLite store.
        let rows = sqlx::query(concat!(
            "SELECT * FROM (
                SELECT * FROM (
                    SELECT id, kind, amount, key_id, request_id, actor, note, uncollected, created_ms,
                           user_id, group_id, 0::BIGINT AS src, seq AS ord, NULL::TEXT AS model,
                           NULL::TEXT AS channel, NULL::BIGINT AS pt, NULL::BIGINT AS ct,
                           NULL::BIGINT AS cw, NULL::BIGINT AS comp, NULL::BIGINT AS rt
                    FROM ledger_entries
                    WHERE tenant_id = $1 AND created_ms >= $2 AND created_ms < $3
                      AND (created_ms > $4 OR (created_ms = $4 AND (0 > $5 OR (0 = $5 AND seq > $6))))
                    ORDER BY created_ms, seq LIMIT $7) a
                UNION ALL
                SELECT * FROM (
                    SELECT 'charge:' || request_id, 'charge', -cost_nano, key_id, request_id, NULL, NULL,
                           uncollected, ts_ms, user_id, group_id, 1::BIGINT, id, model_requested, channel,
                           prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens, reasoning_tokens
                    FROM usage_events
                    WHERE tenant_id = $1 AND ts_ms >= $2 AND ts_ms < $3 AND (cost_nano <> 0 OR uncollected <> 0)
                      AND (ts_ms > $4 OR (ts_ms = $4 AND (1 > $5 OR (1 = $5 AND id > $6))))
                    ORDER BY ts_ms, id LIMIT $7) b
                UNION ALL
                SELECT * FROM (
                    SELECT ",
            charge_day_entry!(),
            ", NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT,
                           NULL::BIGINT
                    FROM charge_days
                    WHERE tenant_id = $1 AND day_ms >= $8 AND day_ms < $9
                      AND (day_ms + 86399999 > $4
                           OR (day_ms + 86399999 = $4 AND (2 > $5 OR (2 = $5 AND id > $6))))
                    ORDER BY day_ms, id LIMIT $7) c
             ) s ORDER BY 9, 12, 13 LIMIT $7"
        ))
        .bind(tenant.0)
        .bind(lower)
        .bind(to_ms)
        .bind(after.ts_ms)
        .bind(after.src)
        .bind(after.ord)
        .bind(i64::from(limit))
        // The days whose summaries (at their last millisecond) fall in the range.
        .bind(lower.saturating_sub(86_399_999))
        .bind(to_ms.saturating_sub(86_399_999))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let entry = entry_from_row(tenant, r)?;
                let pos = StatementPos {
                    ts_ms: entry.created_ms,
                    src: r.try_get(11)?,
                    ord: r.try_get(12)?,
                };
                let call = match pos.src {
                    1 => Some(CallDetail {
                        model: r.try_get(13)?,
                        channel: r.try_get(14)?,
                        prompt_tokens: r.try_get(15)?,
                        cached_tokens: r.try_get(16)?,
                        cache_write_tokens: r.try_get(17)?,
                        completion_tokens: r.try_get(18)?,
                        reasoning_tokens: r.try_get(19)?,
                    }),
                    _ => None,
                };
                Ok(StatementRow { entry, pos, call })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn set_cluster_node(&self, node: &str, running: Option<i64>) -> Result<(), StoreError> {
        let k = format!("{CLUSTER_NODE}{node}");
        match running {
            Some(at) => {
                sqlx::query(
                    "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                )
                .bind(&k)
                .bind(at)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM meta WHERE k = $1")
                    .bind(&k)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn cluster_nodes(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT k, v FROM meta WHERE k LIKE 'cluster\\_node:%' ORDER BY k")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(CLUSTER_NODE)?.to_string(), v)))
            .collect())
    }

    async fn last_credit_seq(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM ledger_entries WHERE kind <> 'charge'")
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }
}

/// (id, kind, value, expires_at, max_uses, uses) of a promotion campaign.
type PromoRow = (i64, String, i64, Option<i64>, Option<i64>, i64);

/// Claims a campaign for a tenant inside a transaction (the campaign row locked, so the cap
/// holds whatever the concurrency): its id and the bonus for a top-up of `topup`.
async fn claim_promo(
    tx: &mut sqlx::PgConnection,
    code: &str,
    tenant: TenantId,
    topup: Option<i64>,
) -> Result<(i64, i64), StoreError> {
    let code = code.trim().to_ascii_uppercase();
    let row: Option<PromoRow> = sqlx::query_as(
        "SELECT id, kind, value, expires_at, max_uses, uses FROM promo_campaigns
         WHERE code = $1 FOR UPDATE",
    )
    .bind(&code)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, kind, value, expires_at, max_uses, uses)) = row else {
        return Err(StoreError::not_found("promo code", ""));
    };
    let bonus = promo_grant(&kind, value, expires_at, max_uses, uses, topup)?;
    let n = sqlx::query(
        "INSERT INTO promo_uses (campaign_id, tenant_id, used_ms) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(tenant.0)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::Conflict(
            "this tenant has already used this promo code".into(),
        ));
    }
    sqlx::query("UPDATE promo_campaigns SET uses = uses + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok((id, bonus))
}

fn promo_from_row(r: &PgRow) -> Result<PromoCampaign, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    Ok(PromoCampaign {
        id: r.try_get("id")?,
        code: r.try_get("code")?,
        bonus: promo_bonus_of(&kind, r.try_get("value")?),
        expires_at: r.try_get("expires_at")?,
        max_uses: r.try_get("max_uses")?,
        uses: r.try_get("uses")?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait::async_trait]
impl Codes for PgStore {
    async fn promo_preview(
        &self,
        code: &str,
        tenant: TenantId,
        topup: i64,
    ) -> Result<i64, StoreError> {
        let code = code.trim().to_ascii_uppercase();
        let row: Option<PromoRow> = sqlx::query_as(
            "SELECT id, kind, value, expires_at, max_uses, uses FROM promo_campaigns WHERE code = $1",
        )
        .bind(&code)
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, kind, value, expires_at, max_uses, uses)) = row else {
            return Err(StoreError::not_found("promo code", ""));
        };
        let bonus = promo_grant(&kind, value, expires_at, max_uses, uses, Some(topup))?;
        let used: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM promo_uses WHERE campaign_id = $1 AND tenant_id = $2",
        )
        .bind(id)
        .bind(tenant.0)
        .fetch_optional(&self.pool)
        .await?;
        if used.is_some() {
            return Err(StoreError::Conflict(
                "this tenant has already used this promo code".into(),
            ));
        }
        Ok(bonus)
    }

    async fn create_promo(
        &self,
        code: &str,
        bonus: PromoBonus,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<PromoCampaign, StoreError> {
        let (code, kind, value) = checked_promo(code, bonus)?;
        let row = unique(
            sqlx::query(
                "INSERT INTO promo_campaigns (code, kind, value, expires_at, max_uses, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 RETURNING id, code, kind, value, expires_at, max_uses, uses, created_at",
            )
            .bind(&code)
            .bind(kind)
            .bind(value)
            .bind(expires_at)
            .bind(max_uses)
            .bind(unix_now())
            .fetch_one(&self.pool)
            .await,
            || format!("promo code `{code}` already exists"),
        )?;
        Ok(promo_from_row(&row)?)
    }

    async fn list_promos(&self) -> Result<Vec<PromoCampaign>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, code, kind, value, expires_at, max_uses, uses, created_at
             FROM promo_campaigns ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(promo_from_row).collect::<Result<_, _>>()?)
    }

    async fn top_up(
        &self,
        tenant: TenantId,
        amount: i64,
        promo: Option<&str>,
        actor: Option<&str>,
        note: Option<&str>,
        id: &str,
        idem: Option<&IdempotencyKey>,
    ) -> Result<Credited, StoreError> {
        let mut tx = self.pool.begin().await?;
        require_tenant(&mut tx, tenant).await?;
        if let Some(k) = idem {
            if let Some(first) = claim_idempotency(&mut tx, tenant, k).await? {
                return Ok(Credited::Replay(first));
            }
        }
        let id = idem.map_or_else(|| id.to_string(), |k| k.entry_id(tenant));
        let mut out = vec![money_in(
            tenant,
            EntryKind::TopUp,
            amount,
            id.clone(),
            actor,
            note.map(str::to_string),
        )];
        if !insert_entry(&mut tx, &out[0]).await? {
            return Err(StoreError::Conflict(format!(
                "ledger entry `{id}` already exists"
            )));
        }
        if let Some(code) = promo {
            let (campaign, bonus) = claim_promo(&mut tx, code, tenant, Some(amount)).await?;
            let e = money_in(
                tenant,
                EntryKind::Promo,
                bonus,
                format!("promo:{campaign}:{}", tenant.0),
                actor,
                Some(format!("promo {}", code.trim().to_ascii_uppercase())),
            );
            insert_entry(&mut tx, &e).await?;
            out.push(e);
        }
        if let Some(k) = idem {
            record_idempotent_entries(&mut tx, tenant, k, &out).await?;
        }
        tx.commit().await?;
        Ok(Credited::Committed(out))
    }

    async fn claim_fixed_promo(
        &self,
        tenant: TenantId,
        code: &str,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError> {
        let mut tx = self.pool.begin().await?;
        require_tenant(&mut tx, tenant).await?;
        let (campaign, bonus) = claim_promo(&mut tx, code, tenant, None).await?;
        let e = money_in(
            tenant,
            EntryKind::Promo,
            bonus,
            format!("promo:{campaign}:{}", tenant.0),
            actor,
            Some(format!("promo {}", code.trim().to_ascii_uppercase())),
        );
        insert_entry(&mut tx, &e).await?;
        tx.commit().await?;
        Ok(e)
    }

    async fn create_codes(
        &self,
        batch: &str,
        amount: i64,
        count: u32,
        expires_at: Option<i64>,
    ) -> Result<Vec<String>, StoreError> {
        if amount <= 0 || count == 0 || count > 10_000 {
            return Err(StoreError::Invalid(
                "amount must be positive and count between 1 and 10000".into(),
            ));
        }
        let codes: Vec<String> = (0..count)
            .map(|_| generate_key().replacen("tg-", "RC-", 1))
            .collect();
        let hashes: Vec<Vec<u8>> = codes.iter().map(|c| hash_key(c).to_vec()).collect();
        let prefixes: Vec<String> = codes.iter().map(|c| display_prefix(c)).collect();
        sqlx::query(
            "INSERT INTO redemption_codes (code_hash, prefix, batch, amount, created_ms, expires_at)
             SELECT h, p, $3, $4, $5, $6 FROM UNNEST($1::BYTEA[], $2::TEXT[]) AS x(h, p)",
        )
        .bind(hashes)
        .bind(prefixes)
        .bind(batch)
        .bind(amount)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(codes)
    }

    async fn list_codes(&self, batch: Option<&str>) -> Result<Vec<RedemptionCode>, StoreError> {
        let rows: Vec<(
            i64,
            String,
            String,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        )> = sqlx::query_as(
            "SELECT id, prefix, batch, amount, created_ms, expires_at, redeemed_by, redeemed_ms
                 FROM redemption_codes WHERE ($1::TEXT IS NULL OR batch = $1) ORDER BY id",
        )
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        let now = unix_now();
        Ok(rows
            .into_iter()
            .map(
                |(id, prefix, batch, amount, created_ms, expires_at, redeemed_by, redeemed_ms)| {
                    RedemptionCode {
                        id,
                        prefix,
                        batch,
                        amount_nano: amount,
                        created_ms,
                        expires_at,
                        redeemed_by: redeemed_by.map(TenantId),
                        redeemed_ms,
                        state: code_state(redeemed_by, expires_at, now),
                    }
                },
            )
            .collect())
    }

    async fn redeem(
        &self,
        code: &str,
        tenant: TenantId,
        actor: Option<&str>,
    ) -> Result<LedgerEntry, StoreError> {
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        require_tenant(&mut tx, tenant).await?;
        // Locked: two redemptions of one code at once credit once.
        let row: Option<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT id, amount, expires_at, redeemed_by FROM redemption_codes
             WHERE code_hash = $1 FOR UPDATE",
        )
        .bind(&hash_key(code.trim())[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, amount, expires_at, redeemed_by)) = row else {
            return Err(StoreError::not_found("redemption code", ""));
        };
        if redeemed_by.is_some() {
            return Err(StoreError::Conflict(
                "this code has already been redeemed".into(),
            ));
        }
        if expires_at.is_some_and(|t| t <= now) {
            return Err(StoreError::Conflict("this code has expired".into()));
        }
        sqlx::query("UPDATE redemption_codes SET redeemed_by = $2, redeemed_ms = $3 WHERE id = $1")
            .bind(id)
            .bind(tenant.0)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let e = money_in(
            tenant,
            EntryKind::Redemption,
            amount,
            format!("redeem:{id}"),
            actor,
            Some(format!("code {}", display_prefix(code.trim()))),
        );
        insert_entry(&mut tx, &e).await?;
        tx.commit().await?;
        Ok(e)
    }
}

fn analytics_row(r: &PgRow) -> Result<AnalyticsRow, sqlx::Error> {
    Ok(AnalyticsRow {
        bucket: r.try_get(0)?,
        key: r.try_get(1)?,
        requests: r.try_get(2)?,
        errors: r.try_get(3)?,
        prompt_tokens: r.try_get(4)?,
        cached_tokens: r.try_get(5)?,
        completion_tokens: r.try_get(6)?,
        reasoning_tokens: r.try_get(7)?,
        cost_nano: r.try_get(8)?,
        cache_write_tokens: r.try_get(9)?,
    })
}

/// The sums an analytics row carries, as BIGINT (PostgreSQL sums BIGINT into NUMERIC).
const ANALYTICS_SUMS: &str = "SUM(requests)::BIGINT, SUM(errors)::BIGINT,
    SUM(prompt_tokens)::BIGINT, SUM(cached_tokens)::BIGINT, SUM(completion_tokens)::BIGINT,
    SUM(reasoning_tokens)::BIGINT, SUM(cost_nano)::BIGINT, SUM(cache_write_tokens)::BIGINT";

const EVENT_SELECT: &str = "SELECT request_id, ts_ms, tenant_id, key_id, endpoint, channel,
    upstream, model_requested, model_used, stream, status, error_code, prompt_tokens,
    cached_tokens, completion_tokens, reasoning_tokens, usage_source, attempts, latency_ms,
    ttft_ms, cost_nano, user_id, group_id, route_tier, route_reason, route_score,
    baseline_cost_nano, cache_write_tokens, uncollected, path, guardrails, id FROM usage_events WHERE ";

fn event_from_row(r: &PgRow) -> Result<UsageEvent, sqlx::Error> {
    let count = |c: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(r.try_get::<i64, _>(c)?).unwrap_or(0))
    };
    let endpoint: String = r.try_get("endpoint")?;
    let path: Option<String> = r.try_get("path")?;
    Ok(UsageEvent {
        request_id: r.try_get("request_id")?,
        ts_ms: r.try_get("ts_ms")?,
        tenant_id: r.try_get::<Option<i64>, _>("tenant_id")?.map(TenantId),
        key_id: r.try_get::<Option<i64>, _>("key_id")?.map(KeyId),
        path: path.or_else(|| crate::billing::usage::canonical_path(&endpoint).map(str::to_owned)),
        endpoint,
        channel: r.try_get("channel")?,
        upstream: r.try_get("upstream")?,
        model_requested: r.try_get("model_requested")?,
        model_used: r.try_get("model_used")?,
        stream: r.try_get("stream")?,
        status: u16::try_from(r.try_get::<i32, _>("status")?).unwrap_or(0),
        error_code: r.try_get("error_code")?,
        prompt_tokens: count("prompt_tokens")?,
        cached_tokens: count("cached_tokens")?,
        completion_tokens: count("completion_tokens")?,
        reasoning_tokens: count("reasoning_tokens")?,
        usage_source: r.try_get("usage_source")?,
        attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
        latency_ms: count("latency_ms")?,
        ttft_ms: r
            .try_get::<Option<i64>, _>("ttft_ms")?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        cost_nano: r.try_get("cost_nano")?,
        user_id: r.try_get::<Option<i64>, _>("user_id")?.map(UserId),
        group_id: r.try_get::<Option<i64>, _>("group_id")?.map(GroupId),
        route_tier: r.try_get("route_tier")?,
        route_reason: r.try_get("route_reason")?,
        route_score: r
            .try_get::<Option<f64>, _>("route_score")?
            .map(|v| v as f32),
        baseline_cost_nano: r.try_get("baseline_cost_nano")?,
        cache_write_tokens: count("cache_write_tokens")?,
        uncollected: r.try_get("uncollected")?,
        guardrails: r.try_get("guardrails")?,
        charge_ticket: None,
    })
}

#[async_trait::async_trait]
impl Analytics for PgStore {
    async fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        let rows = if q.user.is_none() {
            // The per-dimension roll-ups: whole days from the daily rows, the hours at either
            // end from the hourly rows.
            let w = rollup_window(q);
            let bucket = crate::store::bucket_sql(q, "bucket", "0::BIGINT");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {bucket} AS b, value, {ANALYTICS_SUMS}
                 FROM usage_rollup
                 WHERE tenant_id = $1 AND dim = $2 AND (
                       (period = 86400 AND bucket >= $3 AND bucket < $4)
                    OR (period = 3600 AND bucket >= $5 AND bucket < $6 AND (bucket < $3 OR bucket >= $4)))
                 GROUP BY b, value ORDER BY b, value"
            )))
            .bind(q.tenant.0)
            .bind(w.dim as i16)
            .bind(w.day_from)
            .bind(w.day_to)
            .bind(w.from)
            .bind(w.to)
            .fetch_all(&self.pool)
            .await?
        } else {
            // One user's calls: the fine-grained hourly roll-up.
            let bucket = crate::store::bucket_sql(q, "hour * 3600", "0::BIGINT");
            let dim = match q.group_by {
                Dimension::None => "''",
                Dimension::User => "CAST(user_id AS TEXT)",
                Dimension::Group => "CAST(group_id AS TEXT)",
                Dimension::Key => "CAST(key_id AS TEXT)",
                Dimension::Model => "model",
                Dimension::Channel => "channel",
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {bucket} AS bucket, {dim} AS dim, {ANALYTICS_SUMS}
                 FROM usage_hourly
                 WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 AND ($4::BIGINT IS NULL OR user_id = $4)
                 GROUP BY 1, 2 ORDER BY 1, 2"
            )))
            .bind(q.tenant.0)
            .bind(q.from.div_euclid(3600))
            .bind((q.to + 3599).div_euclid(3600))
            .bind(q.user.map(|u| u.0))
            .fetch_all(&self.pool)
            .await?
        };
        Ok(rows.iter().map(analytics_row).collect::<Result<_, _>>()?)
    }

    async fn routing_savings(
        &self,
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RoutingRow>, StoreError> {
        // From the roll-ups, as on SQLite.
        let w = crate::store::routing_window(tenant, from_ms, to_ms);
        let (d0, d1) = crate::store::ROUTE_TIER_DIMS;
        let rows: Vec<(String, i16, i64, i64)> = sqlx::query_as(
            "SELECT value, dim, SUM(requests)::BIGINT, SUM(cost_nano)::BIGINT
             FROM usage_rollup
             WHERE tenant_id = $1 AND dim IN ($2, $3) AND (
                   (period = 86400 AND bucket >= $4 AND bucket < $5)
                OR (period = 3600 AND bucket >= $6 AND bucket < $7 AND (bucket < $4 OR bucket >= $5)))
             GROUP BY value, dim",
        )
        .bind(tenant.0)
        .bind(d0 as i16)
        .bind(d1 as i16)
        .bind(w.day_from)
        .bind(w.day_to)
        .bind(w.from)
        .bind(w.to)
        .fetch_all(&self.pool)
        .await?;
        Ok(crate::store::routing_rows(
            rows.into_iter()
                .map(|(t, d, n, c)| (t, i64::from(d), n, c))
                .collect(),
        ))
    }

    async fn usage_page(&self, q: &UsageQuery) -> Result<Vec<(UsagePos, UsageEvent)>, StoreError> {
        let (before_ts, before_id) = q.before.map_or((i64::MAX, i64::MAX), |p| (p.ts_ms, p.id));
        // The upper time bound includes the cursor's, so that the index range starts there.
        let upper = q.to_ms.min(before_ts.saturating_add(1));
        let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(EVENT_SELECT);
        b.push("ts_ms >= ")
            .push_bind(q.from_ms)
            .push(" AND ts_ms < ")
            .push_bind(upper)
            .push(" AND (ts_ms < ")
            .push_bind(before_ts)
            .push(" OR (ts_ms = ")
            .push_bind(before_ts)
            .push(" AND id < ")
            .push_bind(before_id)
            .push("))");
        if let Some(t) = q.tenant {
            b.push(" AND tenant_id = ").push_bind(t.0);
        }
        if let Some(u) = q.user {
            b.push(" AND key_id IN (SELECT id FROM api_keys WHERE user_id = ")
                .push_bind(u.0)
                .push(")");
        }
        if let Some(m) = &q.model {
            b.push(" AND (model_requested = ")
                .push_bind(m.clone())
                .push(" OR model_used = ")
                .push_bind(m.clone())
                .push(")");
        }
        b.push(" ORDER BY ts_ms DESC, id DESC LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let e = event_from_row(r)?;
                Ok((
                    UsagePos {
                        ts_ms: e.ts_ms,
                        id: r.try_get("id")?,
                    },
                    e,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

#[async_trait::async_trait]
impl super::Sessions for PgStore {
    async fn login_account(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<super::sqlite::LoginAccount>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS}, t.name AS tenant_name, u.password_hash, u.failed_logins, u.locked_until
               FROM users u JOIN tenants t ON t.id = u.tenant_id
              WHERE (t.name = $1 OR t.id::text = $1) AND u.email = $2"
        )))
        .bind(tenant.trim())
        .bind(email.trim().to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(super::sqlite::LoginAccount {
                principal: UserPrincipal {
                    user: user_from_row(&r)?,
                    tenant_name: r.try_get("tenant_name")?,
                },
                password_hash: r.try_get("password_hash")?,
                failed_logins: r.try_get("failed_logins")?,
                locked_until: r.try_get("locked_until")?,
            })),
        }
    }

    async fn set_password(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        let n = sqlx::query(
            "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL WHERE id = $1",
        )
        .bind(user.0)
        .bind(hash)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("user", user.0));
        }
        Ok(())
    }

    async fn login_failed(
        &self,
        user: UserId,
        lock_after: i64,
        lock_until: i64,
    ) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
        )
        .bind(user.0)
        .fetch_one(&self.pool)
        .await?;
        if n >= lock_after {
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = $2 WHERE id = $1")
                .bind(user.0)
                .bind(lock_until)
                .execute(&self.pool)
                .await?;
        }
        Ok(n)
    }

    async fn login_succeeded(&self, user: UserId) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(user.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        user: Option<UserId>,
        ttl_secs: i64,
    ) -> Result<super::sqlite::NewSession, StoreError> {
        let new = super::sqlite::NewSession::generate(ttl_secs);
        let now = unix_now();
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&hash_key(&new.token)[..])
        .bind(user.map(|u| u.0))
        .bind(&new.csrf)
        .bind(now)
        .bind(new.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(new)
    }

    async fn session(&self, token: &str) -> Result<Option<super::sqlite::Session>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, csrf, expires_at FROM console_sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(&hash_key(token)[..])
        .bind(unix_now())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let user_id: Option<i64> = r.try_get("user_id")?;
        let csrf: String = r.try_get("csrf")?;
        let expires_at: i64 = r.try_get("expires_at")?;
        let user = match user_id {
            None => None,
            Some(id) => {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS}, t.name AS tenant_name FROM users u JOIN tenants t ON t.id = u.tenant_id
                      WHERE u.id = $1 AND u.disabled_at IS NULL"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    None => return Ok(None),
                    Some(r) => Some(UserPrincipal {
                        user: user_from_row(&r)?,
                        tenant_name: r.try_get("tenant_name")?,
                    }),
                }
            }
        };
        Ok(Some(super::sqlite::Session {
            user,
            csrf,
            expires_at,
        }))
    }

    async fn update_group(
        &self,
        tenant: TenantId,
        id: GroupId,
        name: Option<&str>,
        budget_nano: Option<Option<i64>>,
    ) -> Result<Group, StoreError> {
        let name = name.map(|n| checked_name(n, "group")).transpose()?;
        let mut tx = self.pool.begin().await?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT id FROM groups WHERE id = $1 AND tenant_id = $2")
                .bind(id.0)
                .bind(tenant.0)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::not_found("group", id.0));
        }
        if let Some(n) = name {
            unique(
                sqlx::query("UPDATE groups SET name = $2 WHERE id = $1")
                    .bind(id.0)
                    .bind(n)
                    .execute(&mut *tx)
                    .await,
                || format!("group `{n}` already exists"),
            )?;
        }
        if let Some(b) = budget_nano {
            sqlx::query("UPDATE groups SET budget_nano = $2 WHERE id = $1")
                .bind(id.0)
                .bind(b)
                .execute(&mut *tx)
                .await?;
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        crate::store::Members::list_groups(self, tenant)
            .await?
            .into_iter()
            .find(|g| g.id == id)
            .ok_or_else(|| StoreError::not_found("group", id.0))
    }

    async fn create_password_reset(
        &self,
        user: UserId,
        ttl_secs: i64,
    ) -> Result<String, StoreError> {
        let token = generate_key().replacen("tg-", "pwr-", 1);
        let now = unix_now();
        sqlx::query(
            "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&hash_key(&token)[..])
        .bind(user.0)
        .bind(now)
        .bind(now + ttl_secs)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    async fn reset_state(&self, token: &str) -> Result<Option<&'static str>, StoreError> {
        let row: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT expires_at, used_at FROM password_resets WHERE token_hash = $1")
                .bind(&hash_key(token.trim())[..])
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(expires_at, used_at)| super::reset_state_of(expires_at, used_at)))
    }

    async fn use_password_reset(&self, token: &str, hash: &str) -> Result<UserId, StoreError> {
        let th = hash_key(token.trim());
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT user_id, expires_at, used_at FROM password_resets WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(&th[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else {
            return Err(StoreError::not_found("password reset", ""));
        };
        let user: i64 = r.try_get("user_id")?;
        let expires_at: i64 = r.try_get("expires_at")?;
        let used_at: Option<i64> = r.try_get("used_at")?;
        if used_at.is_some() {
            return Err(StoreError::Conflict(
                "this link has already been used".into(),
            ));
        }
        if expires_at <= now {
            return Err(StoreError::Conflict("this link has expired".into()));
        }
        sqlx::query("UPDATE password_resets SET used_at = $2 WHERE token_hash = $1")
            .bind(&th[..])
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL WHERE id = $1",
        )
        .bind(user)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(UserId(user))
    }

    async fn end_session(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(&hash_key(token)[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn order_from_pg(r: &PgRow) -> Result<super::sqlite::PaymentOrder, sqlx::Error> {
    Ok(super::sqlite::PaymentOrder {
        id: r.try_get("id")?,
        tenant_id: TenantId(r.try_get("tenant_id")?),
        provider: r.try_get("provider")?,
        amount_minor: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        promo_code: r.try_get("promo_code")?,
        state: r.try_get("state")?,
        provider_ref: r.try_get("provider_ref")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        paid_at: r.try_get("paid_at")?,
        late: r.try_get::<i64, _>("late")? != 0,
        entry_id: r.try_get("entry_id")?,
        credited_nano: r.try_get("credited_nano")?,
        refunded_minor: r.try_get("refunded_minor")?,
    })
}

const ORDER_COLUMNS: &str =
    "id, tenant_id, provider, amount_minor, currency, promo_code, state, provider_ref,
     created_by, created_at, expires_at, paid_at, late, entry_id, credited_nano, refunded_minor";

fn refund_from_pg(r: &PgRow) -> Result<super::sqlite::Refund, sqlx::Error> {
    Ok(super::sqlite::Refund {
        id: r.try_get("id")?,
        order_id: r.try_get("order_id")?,
        tenant_id: TenantId(r.try_get("tenant_id")?),
        amount_minor: r.try_get("amount_minor")?,
        debit_nano: r.try_get("debit_nano")?,
        state: r.try_get("state")?,
        provider_ref: r.try_get("provider_ref")?,
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const REFUND_COLUMNS: &str = "id, order_id, tenant_id, amount_minor, debit_nano, state, provider_ref, reason, created_by, created_at, updated_at";

#[async_trait::async_trait]
impl super::Orders for PgStore {
    async fn create_order(
        &self,
        tenant: TenantId,
        provider: &str,
        amount_minor: i64,
        currency: &str,
        promo_code: Option<&str>,
        created_by: Option<&str>,
        ttl_secs: i64,
    ) -> Result<super::sqlite::PaymentOrder, StoreError> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant.0)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(StoreError::not_found("tenant", tenant.0));
        }
        let now = unix_now();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO payment_orders (tenant_id, provider, amount_minor, currency, promo_code, state, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, 'created', $6, $7, $8) RETURNING {ORDER_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(provider)
        .bind(amount_minor)
        .bind(currency)
        .bind(promo_code)
        .bind(created_by)
        .bind(now)
        .bind(now + ttl_secs)
        .fetch_one(&self.pool)
        .await?;
        Ok(order_from_pg(&row)?)
    }

    async fn order(&self, id: i64) -> Result<super::sqlite::PaymentOrder, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(order_from_pg(&r)?),
            None => Err(StoreError::not_found("order", id)),
        }
    }

    async fn list_orders(
        &self,
        tenant: Option<TenantId>,
        page: super::sqlite::NewestFirst,
    ) -> Result<Vec<super::sqlite::PaymentOrder>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE ($1::BIGINT IS NULL OR tenant_id = $1)
               AND created_at >= $2 AND created_at < $3 AND ($4::BIGINT IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5"
        )))
        .bind(tenant.map(|t| t.0))
        .bind(page.from)
        .bind(page.to)
        .bind(page.before)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(order_from_pg)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn order_pending(
        &self,
        id: i64,
        provider_ref: &str,
    ) -> Result<super::sqlite::PaymentOrder, StoreError> {
        sqlx::query(
            "UPDATE payment_orders SET state = 'pending', provider_ref = $2 WHERE id = $1 AND state = 'created'",
        )
        .bind(id)
        .bind(provider_ref)
        .execute(&self.pool)
        .await?;
        super::Orders::order(self, id).await
    }

    async fn expire_orders(&self, now: i64, grace_secs: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE payment_orders SET state = 'expired' WHERE state IN ('created', 'pending') AND expires_at < $1",
        )
        .bind(now - grace_secs)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn order_closed(
        &self,
        id: i64,
        state: &str,
    ) -> Result<super::sqlite::PaymentOrder, StoreError> {
        sqlx::query(
            "UPDATE payment_orders SET state = $2 WHERE id = $1 AND state IN ('created', 'pending')",
        )
        .bind(id)
        .bind(state)
        .execute(&self.pool)
        .await?;
        super::Orders::order(self, id).await
    }

    async fn order_paid(
        &self,
        id: i64,
        entry_id: &str,
        late: bool,
        credited_nano: i64,
    ) -> Result<super::sqlite::PaymentOrder, StoreError> {
        sqlx::query(
            "UPDATE payment_orders SET state = 'paid', paid_at = $2, entry_id = $3, late = $4, credited_nano = $5
             WHERE id = $1 AND state != 'paid' AND state != 'refunded'",
        )
        .bind(id)
        .bind(unix_now())
        .bind(entry_id)
        .bind(late as i64)
        .bind(credited_nano)
        .execute(&self.pool)
        .await?;
        super::Orders::order(self, id).await
    }

    async fn create_refund(
        &self,
        order_id: i64,
        amount_minor: i64,
        debit_nano: i64,
        reason: Option<&str>,
        created_by: Option<&str>,
    ) -> Result<super::sqlite::Refund, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The order's row lock serialises refunds of one order.
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, state, amount_minor FROM payment_orders WHERE id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (tenant, state, paid) = row.ok_or_else(|| StoreError::not_found("order", order_id))?;
        if state != "paid" {
            return Err(StoreError::Conflict(format!(
                "order {order_id} is {state}, not paid: there is nothing to refund"
            )));
        }
        let taken: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount_minor), 0)::BIGINT FROM payment_refunds WHERE order_id = $1 AND state != 'failed'",
        )
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await?;
        if taken + amount_minor > paid {
            return Err(StoreError::Conflict(format!(
                "order {order_id} has {} fen left to refund",
                paid - taken
            )));
        }
        let now = unix_now();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO payment_refunds (order_id, tenant_id, amount_minor, debit_nano, state, reason, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'requested', $5, $6, $7, $7) RETURNING {REFUND_COLUMNS}"
        )))
        .bind(order_id)
        .bind(tenant)
        .bind(amount_minor)
        .bind(debit_nano)
        .bind(reason)
        .bind(created_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let refund = refund_from_pg(&row)?;
        tx.commit().await?;
        Ok(refund)
    }

    async fn refund(&self, id: i64) -> Result<super::sqlite::Refund, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFUND_COLUMNS} FROM payment_refunds WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(refund_from_pg(&r)?),
            None => Err(StoreError::not_found("refund", id)),
        }
    }

    async fn list_refunds(
        &self,
        order_id: Option<i64>,
        page: super::sqlite::NewestFirst,
    ) -> Result<Vec<super::sqlite::Refund>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFUND_COLUMNS} FROM payment_refunds WHERE ($1::BIGINT IS NULL OR order_id = $1)
               AND created_at >= $2 AND created_at < $3 AND ($4::BIGINT IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5"
        )))
        .bind(order_id)
        .bind(page.from)
        .bind(page.to)
        .bind(page.before)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(refund_from_pg)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn refund_settled(
        &self,
        id: i64,
        state: &str,
        provider_ref: Option<&str>,
    ) -> Result<super::sqlite::Refund, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE payment_refunds SET state = $2, provider_ref = COALESCE($3, provider_ref), updated_at = $4
             WHERE id = $1 AND state IN ('requested', 'processing')",
        )
        .bind(id)
        .bind(state)
        .bind(provider_ref)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE payment_orders o SET refunded_minor = r.total,
                    state = CASE WHEN r.total >= o.amount_minor THEN 'refunded' ELSE o.state END
             FROM (SELECT COALESCE(SUM(amount_minor), 0)::BIGINT AS total FROM payment_refunds
                   WHERE order_id = (SELECT order_id FROM payment_refunds WHERE id = $1)
                     AND state IN ('processing', 'succeeded')) r
             WHERE o.id = (SELECT order_id FROM payment_refunds WHERE id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        super::Orders::refund(self, id).await
    }
}

fn alert_settings_from_pg(r: &PgRow) -> Result<super::sqlite::AlertSettings, sqlx::Error> {
    let percents: String = r.try_get("quota_percents")?;
    let emails: String = r.try_get("emails")?;
    Ok(super::sqlite::AlertSettings {
        tenant_id: TenantId(r.try_get("tenant_id")?),
        balance_below_nano: r.try_get("balance_below_nano")?,
        balance_days: r.try_get("balance_days")?,
        quota_percents: serde_json::from_str(&percents).unwrap_or_default(),
        emails: serde_json::from_str(&emails).unwrap_or_default(),
        webhook_url: r.try_get("webhook_url")?,
        webhook_secret: r.try_get("webhook_secret")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        updated_at: r.try_get("updated_at")?,
    })
}

const ALERT_SETTINGS_COLUMNS: &str = "tenant_id, balance_below_nano, balance_days, quota_percents, emails, webhook_url, webhook_secret, enabled, updated_at";

#[async_trait::async_trait]
impl super::Alerts for PgStore {
    async fn set_alert_settings(
        &self,
        a: &super::sqlite::AlertSettings,
    ) -> Result<super::sqlite::AlertSettings, StoreError> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
            .bind(a.tenant_id.0)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(StoreError::not_found("tenant", a.tenant_id.0));
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO alert_settings ({ALERT_SETTINGS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id) DO UPDATE SET balance_below_nano = EXCLUDED.balance_below_nano,
                balance_days = EXCLUDED.balance_days, quota_percents = EXCLUDED.quota_percents,
                emails = EXCLUDED.emails, webhook_url = EXCLUDED.webhook_url,
                webhook_secret = EXCLUDED.webhook_secret, enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at
             RETURNING {ALERT_SETTINGS_COLUMNS}"
        )))
        .bind(a.tenant_id.0)
        .bind(a.balance_below_nano)
        .bind(a.balance_days)
        .bind(serde_json::to_string(&a.quota_percents).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&a.emails).unwrap_or_else(|_| "[]".into()))
        .bind(&a.webhook_url)
        .bind(&a.webhook_secret)
        .bind(a.enabled as i64)
        .bind(unix_now())
        .fetch_one(&self.pool)
        .await?;
        Ok(alert_settings_from_pg(&row)?)
    }

    async fn alert_settings(
        &self,
        tenant: TenantId,
    ) -> Result<Option<super::sqlite::AlertSettings>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_SETTINGS_COLUMNS} FROM alert_settings WHERE tenant_id = $1"
        )))
        .bind(tenant.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(alert_settings_from_pg).transpose()?)
    }

    async fn enabled_alert_settings(
        &self,
    ) -> Result<Vec<super::sqlite::AlertSettings>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_SETTINGS_COLUMNS} FROM alert_settings WHERE enabled = 1 ORDER BY tenant_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(alert_settings_from_pg)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn alert_level(
        &self,
        tenant: TenantId,
        subject: &str,
        level: i64,
    ) -> Result<super::sqlite::AlertMove, StoreError> {
        use super::sqlite::AlertMove;
        let mut tx = self.pool.begin().await?;
        // The row, created at level 0 if new, locked: concurrent nodes serialise on it.
        sqlx::query(
            "INSERT INTO alert_state (tenant_id, subject, level, changed_at) VALUES ($1, $2, 0, $3)
             ON CONFLICT (tenant_id, subject) DO NOTHING",
        )
        .bind(tenant.0)
        .bind(subject)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        let before: i64 = sqlx::query_scalar(
            "SELECT level FROM alert_state WHERE tenant_id = $1 AND subject = $2 FOR UPDATE",
        )
        .bind(tenant.0)
        .bind(subject)
        .fetch_one(&mut *tx)
        .await?;
        if before == level {
            tx.commit().await?;
            return Ok(AlertMove::Same);
        }
        sqlx::query(
            "UPDATE alert_state SET level = $3, changed_at = $4 WHERE tenant_id = $1 AND subject = $2",
        )
        .bind(tenant.0)
        .bind(subject)
        .bind(level)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if level > before {
            AlertMove::Fired(before)
        } else {
            AlertMove::Rearmed
        })
    }

    async fn daily_spend(&self, tenant: TenantId, days: i64) -> Result<i64, StoreError> {
        let from_hour = (unix_now() - days * 86_400).div_euclid(3600);
        let spent: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(cost_nano), 0)::BIGINT FROM usage_hourly WHERE tenant_id = $1 AND hour >= $2",
        )
        .bind(tenant.0)
        .bind(from_hour)
        .fetch_one(&self.pool)
        .await?;
        Ok(spent / days.max(1))
    }

    async fn add_alert_delivery(
        &self,
        d: &super::sqlite::AlertDelivery,
    ) -> Result<i64, StoreError> {
        let now = unix_now();
        Ok(sqlx::query_scalar(
            "INSERT INTO alert_deliveries (tenant_id, alert_id, kind, subject, channel, target, state, attempts, last_error, payload, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
        )
        .bind(d.tenant_id.0)
        .bind(&d.alert_id)
        .bind(&d.kind)
        .bind(&d.subject)
        .bind(&d.channel)
        .bind(&d.target)
        .bind(&d.state)
        .bind(d.attempts)
        .bind(&d.last_error)
        .bind(&d.payload)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn update_alert_delivery(
        &self,
        id: i64,
        state: &str,
        attempts: i64,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE alert_deliveries SET state = $2, attempts = $3, last_error = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(attempts)
        .bind(last_error)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn alert_deliveries(
        &self,
        tenant: TenantId,
        page: super::sqlite::NewestFirst,
    ) -> Result<Vec<super::sqlite::AlertDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, alert_id, kind, subject, channel, target, state, attempts, last_error, payload, created_at, updated_at
             FROM alert_deliveries WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
               AND ($4::BIGINT IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(tenant.0)
        .bind(page.from)
        .bind(page.to)
        .bind(page.before)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(super::sqlite::AlertDelivery {
                    id: r.try_get("id")?,
                    tenant_id: TenantId(r.try_get("tenant_id")?),
                    alert_id: r.try_get("alert_id")?,
                    kind: r.try_get("kind")?,
                    subject: r.try_get("subject")?,
                    channel: r.try_get("channel")?,
                    target: r.try_get("target")?,
                    state: r.try_get("state")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    payload: r.try_get("payload")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

fn audit_from_pg(r: &PgRow) -> Result<super::sqlite::AuditRow, sqlx::Error> {
    Ok(super::sqlite::AuditRow {
        seq: r.try_get("seq")?,
        at_ms: r.try_get("at_ms")?,
        tenant_id: r.try_get::<Option<i64>, _>("tenant_id")?.map(TenantId),
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        status: r.try_get("status")?,
        entry: r.try_get("entry")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

#[async_trait::async_trait]
impl super::Audit for PgStore {
    async fn append_audit(
        &self,
        at_ms: i64,
        tenant: Option<TenantId>,
        actor: &str,
        action: &str,
        status: i64,
        fields: &serde_json::Value,
    ) -> Result<super::sqlite::AuditRow, StoreError> {
        use super::sqlite::{audit_hash, AUDIT_GENESIS};
        let mut tx = self.pool.begin().await?;
        // One writer at a time across the fleet: the chain has one order.
        sqlx::query("SELECT pg_advisory_xact_lock(7310018)")
            .execute(&mut *tx)
            .await?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let (seq, prev) = match last {
            Some((s, h)) => (s + 1, h),
            None => (1, AUDIT_GENESIS.to_string()),
        };
        let entry = super::audit_entry(seq, at_ms, tenant, actor, action, status, fields);
        let hash = audit_hash(&prev, &entry);
        sqlx::query(
            "INSERT INTO audit_log (seq, at_ms, tenant_id, actor, action, status, entry, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq)
        .bind(at_ms)
        .bind(tenant.map(|t| t.0))
        .bind(actor)
        .bind(action)
        .bind(status)
        .bind(&entry)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(super::sqlite::AuditRow {
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
    }

    async fn list_audit(
        &self,
        q: &super::AuditQuery,
    ) -> Result<Vec<super::sqlite::AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, tenant_id, actor, action, status, entry, prev_hash, hash FROM audit_log
             WHERE ($1::BIGINT IS NULL OR tenant_id = $1) AND seq < $2 AND at_ms >= $3 AND at_ms < $4
               AND ($5::TEXT IS NULL OR actor = $5) AND ($6::TEXT IS NULL OR action LIKE $6)
             ORDER BY seq DESC LIMIT $7",
        )
        .bind(q.tenant.map(|t| t.0))
        .bind(q.before_seq.unwrap_or(i64::MAX))
        .bind(q.from_ms.unwrap_or(i64::MIN))
        .bind(q.to_ms.unwrap_or(i64::MAX))
        .bind(&q.actor)
        .bind(q.action.as_ref().map(|a| format!("%{a}%")))
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(audit_from_pg)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn audit_chain(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<super::sqlite::AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, tenant_id, actor, action, status, entry, prev_hash, hash FROM audit_log
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(audit_from_pg)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

#[async_trait::async_trait]
impl super::Sso for PgStore {
    async fn set_sso(&self, tenant: TenantId, settings: Option<&str>) -> Result<(), StoreError> {
        self.set_tenant_setting(tenant, "sso", settings).await
    }

    async fn sso(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        self.tenant_setting(tenant, "sso").await
    }

    async fn create_sso_flow(
        &self,
        state: &str,
        flow: &super::sqlite::SsoFlow,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sso_flows WHERE expires_at <= $1")
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO sso_flows (state_hash, tenant_id, nonce, pkce_verifier, redirect_uri, next, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&hash_key(state)[..])
        .bind(flow.tenant.0)
        .bind(&flow.nonce)
        .bind(&flow.pkce_verifier)
        .bind(&flow.redirect_uri)
        .bind(&flow.next)
        .bind(flow.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_sso_flow(
        &self,
        state: &str,
    ) -> Result<Option<super::sqlite::SsoFlow>, StoreError> {
        let row: Option<(i64, String, String, String, String, i64)> = sqlx::query_as(
            "DELETE FROM sso_flows WHERE state_hash = $1 RETURNING tenant_id, nonce, pkce_verifier, redirect_uri, next, expires_at",
        )
        .bind(&hash_key(state)[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(
                |(tenant, nonce, pkce_verifier, redirect_uri, next, expires_at)| {
                    super::sqlite::SsoFlow {
                        tenant: TenantId(tenant),
                        nonce,
                        pkce_verifier,
                        redirect_uri,
                        next,
                        expires_at,
                    }
                },
            )
            .filter(|f| f.expires_at > unix_now()))
    }

    async fn link_sso_subject(&self, user: UserId, subject: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE users SET sso_subject = $2 WHERE id = $1 AND (sso_subject IS NULL OR sso_subject = $2)",
        )
        .bind(user.0)
        .bind(subject)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

#[async_trait::async_trait]
impl super::Network for PgStore {
    async fn set_allowed_cidrs(
        &self,
        subject: super::sqlite::LimitSubject,
        cidrs: &[String],
    ) -> Result<Vec<String>, StoreError> {
        use super::sqlite::LimitSubject;
        let text = (!cidrs.is_empty()).then(|| serde_json::to_string(cidrs).unwrap_or_default());
        let mut tx = self.pool.begin().await?;
        let (n, what, id) = match subject {
            LimitSubject::Tenant(t) => (
                sqlx::query("UPDATE tenants SET allowed_cidrs = $2 WHERE id = $1")
                    .bind(t.0)
                    .bind(&text)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                "tenant",
                t.0,
            ),
            LimitSubject::Key(k) => (
                sqlx::query("UPDATE api_keys SET allowed_cidrs = $2 WHERE id = $1")
                    .bind(k.0)
                    .bind(&text)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                "key",
                k.0,
            ),
            LimitSubject::User(_) => {
                return Err(StoreError::Invalid(
                    "allow-lists are per tenant or per key".into(),
                ))
            }
        };
        if n == 0 {
            return Err(StoreError::not_found(what, id));
        }
        PgStore::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(cidrs.to_vec())
    }

    async fn set_guardrails(
        &self,
        tenant: TenantId,
        policy: Option<&str>,
    ) -> Result<(), StoreError> {
        self.set_tenant_setting(tenant, "guardrails", policy).await
    }

    async fn guardrails(&self, tenant: TenantId) -> Result<Option<String>, StoreError> {
        self.tenant_setting(tenant, "guardrails").await
    }

    async fn allowed_cidrs(
        &self,
        subject: super::sqlite::LimitSubject,
    ) -> Result<Vec<String>, StoreError> {
        use super::sqlite::LimitSubject;
        let (sql, what, id) = match subject {
            LimitSubject::Tenant(t) => (
                "SELECT allowed_cidrs FROM tenants WHERE id = $1",
                "tenant",
                t.0,
            ),
            LimitSubject::Key(k) => (
                "SELECT allowed_cidrs FROM api_keys WHERE id = $1",
                "key",
                k.0,
            ),
            LimitSubject::User(u) => ("SELECT NULL::TEXT FROM users WHERE id = $1", "user", u.0),
        };
        let row: Option<(Option<String>,)> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let (text,) = row.ok_or_else(|| StoreError::not_found(what, id))?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }
}
