//! `tollgate store migrate --from <sqlite file> --to postgres://...`: moves an embedded
//! installation's record into PostgreSQL, every row with its id, then checks that the two
//! stores agree (rows per table, and per tenant what was credited and charged).
//!
//! The target must be empty (no tenants): the copy is one transaction, so an interrupted run
//! leaves nothing behind and can simply be run again. The gateway should be stopped while it
//! runs (nothing written to the SQLite file after the copy would move).

use super::pg::PgStore;
use super::Ledger;
use crate::store::sqlite::{Store, StoreError};
use rusqlite::types::Value;
use sqlx::Row;

/// The tables in an order that satisfies the foreign keys, and the id column whose sequence
/// continues after the copied rows.
const TABLES: &[(&str, Option<&str>)] = &[
    ("tenants", Some("id")),
    ("groups", Some("id")),
    ("users", Some("id")),
    ("api_keys", Some("id")),
    ("user_tokens", Some("id")),
    ("invites", Some("id")),
    ("meta", None),
    ("ledger_entries", Some("seq")),
    ("idempotency_keys", None),
    ("redemption_codes", Some("id")),
    ("promo_campaigns", Some("id")),
    ("promo_uses", None),
    ("usage_events", Some("id")),
    ("usage_hourly", None),
    ("usage_rollup", None),
    ("charge_days", Some("id")),
    ("usage_archives", Some("id")),
    ("payment_orders", Some("id")),
    ("payment_refunds", Some("id")),
    ("alert_settings", None),
    ("alert_state", None),
    ("alert_deliveries", Some("id")),
    ("audit_log", None),
];

/// Rows per INSERT (PostgreSQL takes at most 65,535 parameters a statement).
const ROWS_PER_INSERT: usize = 500;

/// What the copy moved, per table, and the ledger totals both stores report afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub rows: Vec<(&'static str, u64)>,
    /// (tenant, credited, charged) in the SQLite store and in PostgreSQL.
    pub totals: Vec<(i64, i64, i64)>,
}

/// Copies everything; fails (and copies nothing) when the target holds tenants already or
/// when the two stores do not agree afterwards.
pub async fn sqlite_to_postgres(from: &Store, to: &PgStore) -> Result<CopyReport, StoreError> {
    let has_tenants: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants)")
        .fetch_one(to.pool())
        .await?;
    if has_tenants {
        return Err(StoreError::Conflict(
            "the PostgreSQL store already holds tenants; migrate into an empty database".into(),
        ));
    }
    let mut tx = to.pool().begin().await?;
    let mut rows = Vec::new();
    for (table, id) in TABLES {
        let types = column_types(&mut tx, table).await?;
        let (columns, data) = read_table(from, table).await?;
        for c in &columns {
            if !types.iter().any(|(n, _)| n == c) {
                return Err(StoreError::Invalid(format!(
                    "column {table}.{c} has no place in the PostgreSQL schema"
                )));
            }
        }
        if *table == "usage_events" {
            // Each record goes to its day's partition: create them first.
            let ts = columns.iter().position(|c| c == "ts_ms");
            let days: std::collections::BTreeSet<i64> = data
                .iter()
                .filter_map(|row| match ts.map(|i| &row[i]) {
                    Some(Value::Integer(t)) => Some(super::retention::day_of(*t)),
                    _ => None,
                })
                .collect();
            for day in days {
                sqlx::query("SELECT tollgate_usage_partition($1)")
                    .bind(day)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if *table == "meta" {
            // The schema seeds the key generation; the copy's value replaces it.
            sqlx::query("DELETE FROM meta").execute(&mut *tx).await?;
        }
        for chunk in data.chunks(ROWS_PER_INSERT) {
            insert_rows(&mut tx, table, &columns, &types, chunk)
                .await
                .map_err(|e| StoreError::Invalid(format!("copying {table}: {e}")))?;
        }
        if let Some(id) = id {
            // Ids go on after the copied ones.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{id}'),
                               COALESCE((SELECT MAX({id}) FROM {table}), 0) + 1, false)"
            )))
            .execute(&mut *tx)
            .await?;
        }
        rows.push((*table, data.len() as u64));
    }
    tx.commit().await?;

    // The two stores must now tell the same story.
    for (table, n) in &rows {
        let m: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(to.pool())
                .await?;
        if m != *n as i64 {
            return Err(StoreError::Invalid(format!(
                "{table}: {n} rows read from SQLite, {m} in PostgreSQL"
            )));
        }
    }
    let totals = |v: Vec<crate::store::sqlite::LedgerTotals>| {
        let mut v: Vec<(i64, i64, i64)> = v
            .into_iter()
            .map(|t| (t.tenant_id.0, t.credited, t.charged))
            .collect();
        v.sort_unstable();
        v
    };
    let a = totals(Ledger::ledger_totals(from).await?);
    let b = totals(Ledger::ledger_totals(to).await?);
    if a != b {
        return Err(StoreError::Invalid(format!(
            "ledger totals differ after the copy: SQLite {a:?}, PostgreSQL {b:?}"
        )));
    }
    Ok(CopyReport { rows, totals: b })
}

/// (column, PostgreSQL type) of a table.
async fn column_types(
    tx: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Every row of a SQLite table, with its column names.
async fn read_table(
    from: &Store,
    table: &'static str,
) -> Result<(Vec<String>, Vec<Vec<Value>>), StoreError> {
    let s = from.clone();
    tokio::task::spawn_blocking(move || s.dump_table(table))
        .await
        .map_err(|e| StoreError::Invalid(format!("store task failed: {e}")))?
}

async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    table: &str,
    columns: &[String],
    types: &[(String, String)],
    rows: &[Vec<Value>],
) -> Result<(), StoreError> {
    let ty = |c: &str| {
        types
            .iter()
            .find(|(n, _)| n == c)
            .map_or("text", |(_, t)| t.as_str())
            .to_string()
    };
    let col_types: Vec<String> = columns.iter().map(|c| ty(c)).collect();
    let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
        "INSERT INTO {table} ({}) ",
        columns.join(", ")
    ));
    // A value the column's type cannot hold stops the copy (nothing is ever dropped silently).
    for values in rows {
        for ((v, t), c) in values.iter().zip(&col_types).zip(columns) {
            let numeric = matches!(
                t.as_str(),
                "bigint" | "integer" | "smallint" | "boolean" | "double precision"
            );
            let fits = match v {
                Value::Null | Value::Integer(_) => true,
                Value::Real(_) => t == "double precision" || !numeric,
                Value::Text(s) => !numeric || s.parse::<i64>().is_ok(),
                Value::Blob(_) => !numeric,
            };
            if !fits {
                return Err(StoreError::Invalid(format!(
                    "{table}.{c}: a value of type {t} was expected, found {v:?}"
                )));
            }
        }
    }
    // Each value bound as the column's own type (no casts: a cast would retype the parameter).
    b.push_values(rows, |mut row, values| {
        for (v, t) in values.iter().zip(&col_types) {
            let int = match v {
                Value::Integer(i) => Some(*i),
                Value::Real(f) => Some(*f as i64),
                Value::Text(s) => s.parse().ok(),
                _ => None,
            };
            match t.as_str() {
                "bigint" => {
                    row.push_bind(int);
                }
                "integer" => {
                    row.push_bind(int.map(|i| i32::try_from(i).unwrap_or(i32::MAX)));
                }
                "smallint" => {
                    row.push_bind(int.map(|i| i16::try_from(i).unwrap_or(i16::MAX)));
                }
                "boolean" => {
                    row.push_bind(int.map(|i| i != 0));
                }
                "double precision" => {
                    row.push_bind(match v {
                        Value::Real(f) => Some(*f),
                        Value::Integer(i) => Some(*i as f64),
                        _ => None,
                    });
                }
                "bytea" => {
                    row.push_bind(match v {
                        Value::Blob(b) => Some(b.clone()),
                        Value::Text(s) => Some(s.clone().into_bytes()),
                        _ => None,
                    });
                }
                _ => {
                    row.push_bind(match v {
                        Value::Text(s) => Some(s.clone()),
                        Value::Integer(i) => Some(i.to_string()),
                        Value::Real(f) => Some(f.to_string()),
                        Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
                        Value::Null => None,
                    });
                }
            }
        }
    });
    b.build().execute(tx).await?;
    Ok(())
}
