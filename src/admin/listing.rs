//! Statement and usage listings of the admin API: keyset cursors, and CSV exports written page
//! by page as the store yields them.
//!
//! Listings take `from`/`to` (RFC 3339 or unix seconds; `from` inclusive, `to` exclusive),
//! `limit` (rows per page) and `cursor` (the `next_cursor` of the previous page, opaque to
//! clients). Statement and usage pages are keyset pages over the store's time indexes, so a
//! page costs its own rows however deep into a history it is. `format=csv` streams the whole
//! range (from the cursor on, if one is given) as chunked CSV: the store is read `EXPORT_PAGE`
//! rows at a time and each page is sent before the next is read, so an export's memory is one
//! page, whatever its length.

use super::wire::{bad_param, credits, time_ms, Names};
use super::Admin;
use crate::error::GatewayError;
use crate::store::sqlite::{StatementPos, StatementRow, UsagePos, UsageQuery};
use crate::tenancy::TenantId;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Rows read from the store per chunk of a CSV export.
const EXPORT_PAGE: u32 = 1_000;

/// The statement cursor of a `cursor` parameter.
pub(super) fn statement_cursor(c: Option<&str>) -> Result<Option<StatementCursor>, GatewayError> {
    let Some(c) = c else { return Ok(None) };
    let v = decode_cursor(c, "l", 5)
        .ok_or_else(|| bad_param("cursor", "`cursor` is not a cursor of this listing"))?;
    Ok(Some(StatementCursor {
        pos: StatementPos {
            ts_ms: v[0],
            src: v[1],
            ord: v[2],
        },
        running: v[3],
        row: v[4],
    }))
}

/// The usage cursor of a `cursor` parameter.
pub(super) fn usage_cursor(c: Option<&str>) -> Result<Option<UsagePos>, GatewayError> {
    let Some(c) = c else { return Ok(None) };
    let v = decode_cursor(c, "u", 2)
        .ok_or_else(|| bad_param("cursor", "`cursor` is not a cursor of this listing"))?;
    Ok(Some(UsagePos {
        ts_ms: v[0],
        id: v[1],
    }))
}

/// A cursor: the listing's kind and the position's integers, hex-encoded so that clients treat
/// it as the opaque token it is (its layout may change between versions).
pub(super) fn encode_cursor(kind: &str, parts: &[i64]) -> String {
    let text = std::iter::once(kind.to_string())
        .chain(parts.iter().map(i64::to_string))
        .collect::<Vec<_>>()
        .join(":");
    hex::encode(text)
}

pub(super) fn decode_cursor(c: &str, kind: &str, n: usize) -> Option<Vec<i64>> {
    let text = String::from_utf8(hex::decode(c).ok()?).ok()?;
    let mut it = text.split(':');
    if it.next()? != kind {
        return None;
    }
    let v: Vec<i64> = it.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    (v.len() == n).then_some(v)
}

pub(super) fn usage_next_cursor(last: UsagePos) -> String {
    encode_cursor("u", &[last.ts_ms, last.id])
}

/// Where a statement stands: the last row's position, the running balance after it and its
/// row number (so a statement read in pages numbers and sums like one read at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatementCursor {
    pub pos: StatementPos,
    pub running: i64,
    pub row: i64,
}

impl StatementCursor {
    pub(super) fn encode(&self) -> String {
        encode_cursor(
            "l",
            &[
                self.pos.ts_ms,
                self.pos.src,
                self.pos.ord,
                self.running,
                self.row,
            ],
        )
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

const STATEMENT_HEADER: [&str; 23] = [
    "seq",
    "created_at",
    "id",
    "kind",
    "amount_credits",
    "running_balance_credits",
    "key_id",
    "request_id",
    "actor",
    "note",
    "uncollected_credits",
    "user_id",
    "group_id",
    "model",
    "channel",
    "key_name",
    "user_email",
    "group_name",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "reasoning_tokens",
];

/// A statement row's CSV fields; `row` and `running` are its number and the balance after it.
fn statement_record(r: &StatementRow, row: i64, running: i64, names: &Names) -> [String; 23] {
    let e = &r.entry;
    let call = r.call.as_ref();
    [
        row.to_string(),
        time_ms(e.created_ms),
        e.id.clone(),
        e.kind.as_str().to_string(),
        credits(e.amount),
        credits(running),
        opt(e.key_id.map(|k| k.0)),
        e.request_id.clone().unwrap_or_default(),
        e.actor.clone().unwrap_or_default(),
        e.note.clone().unwrap_or_default(),
        credits(e.uncollected),
        opt(e.user_id.map(|u| u.0)),
        opt(e.group_id.map(|g| g.0)),
        opt(call.and_then(|c| c.model.clone())),
        opt(call.and_then(|c| c.channel.clone())),
        opt(names.key(e.key_id.map(|k| k.0))),
        opt(names.user_email(e.user_id.map(|u| u.0))),
        opt(names.group(e.group_id.map(|g| g.0))),
        opt(call.map(|c| c.prompt_tokens)),
        opt(call.map(|c| c.cached_tokens)),
        opt(call.map(|c| c.cache_write_tokens)),
        opt(call.map(|c| c.completion_tokens)),
        opt(call.map(|c| c.reasoning_tokens)),
    ]
}

const USAGE_HEADER: [&str; 31] = [
    "request_id",
    "time",
    "tenant_id",
    "tenant_name",
    "key_id",
    "key_name",
    "user_id",
    "user_email",
    "group_id",
    "group_name",
    "endpoint",
    "channel",
    "upstream",
    "model_requested",
    "model_used",
    "stream",
    "status",
    "error_code",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_credits",
    "uncollected_credits",
    "usage_source",
    "attempts",
    "latency_ms",
    "ttft_ms",
    "route_tier",
    "guardrails",
];

fn usage_record(e: &crate::billing::usage::UsageEvent, names: &Names) -> [String; 31] {
    let (t, k, u, g) = (
        e.tenant_id.map(|t| t.0),
        e.key_id.map(|k| k.0),
        e.user_id.map(|u| u.0),
        e.group_id.map(|g| g.0),
    );
    [
        e.request_id.clone(),
        time_ms(e.ts_ms),
        opt(t),
        opt(names.tenant(t)),
        opt(k),
        opt(names.key(k)),
        opt(u),
        opt(names.user_email(u)),
        opt(g),
        opt(names.group(g)),
        e.endpoint.clone(),
        opt(e.channel.clone()),
        opt(e.upstream.clone()),
        opt(e.model_requested.clone()),
        opt(e.model_used.clone()),
        e.stream.to_string(),
        e.status.to_string(),
        opt(e.error_code.clone()),
        e.prompt_tokens.to_string(),
        e.cached_tokens.to_string(),
        e.cache_write_tokens.to_string(),
        e.completion_tokens.to_string(),
        e.reasoning_tokens.to_string(),
        credits(e.cost_nano),
        credits(e.uncollected),
        e.usage_source.clone(),
        e.attempts.to_string(),
        e.latency_ms.to_string(),
        opt(e.ttft_ms),
        opt(e.route_tier.clone()),
        opt(e.guardrails.clone()),
    ]
}

/// CSV text of `records` (and the header first, if given).
fn csv_chunk<const N: usize>(
    header: Option<&[&str; N]>,
    records: impl Iterator<Item = [String; N]>,
) -> Result<Vec<u8>, GatewayError> {
    let internal = |e: &dyn std::fmt::Display| GatewayError::Internal(format!("csv: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    if let Some(h) = header {
        w.write_record(h).map_err(|e| internal(&e))?;
    }
    for r in records {
        w.write_record(&r).map_err(|e| internal(&e))?;
    }
    w.into_inner().map_err(|e| internal(&e))
}

/// A CSV export, planned (tenant, range, filters checked) before anything is written.
pub(super) enum Export {
    /// A tenant's statement, oldest first.
    Statement {
        tenant: TenantId,
        from_ms: i64,
        to_ms: i64,
        /// Where to start: a cursor, or none (the range's start).
        start: Option<StatementCursor>,
    },
    /// Usage records, newest first.
    Usage(UsageQuery),
}

/// A response body fed by a task: each message is a chunk; an error ends the body midway.
struct ChannelBody(mpsc::Receiver<Result<Bytes, GatewayError>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = GatewayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, GatewayError>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|r| r.map(http_body::Frame::data)))
    }
}

impl Export {
    fn filename(&self) -> &'static str {
        match self {
            Export::Statement { .. } => "statement.csv",
            Export::Usage(_) => "usage.csv",
        }
    }

    /// The export as a chunked `text/csv` response, read from the store page by page while it
    /// is written (at most two pages wait in memory). An export that fails midway stops without
    /// its last chunk, so the client sees a truncated transfer rather than a short file that
    /// looks complete; a client that goes away stops the reading.
    pub(super) fn response(self, admin: Arc<Admin>) -> Response {
        let disposition = format!("attachment; filename=\"{}\"", self.filename());
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let result = match self {
                Export::Statement {
                    tenant,
                    from_ms,
                    to_ms,
                    start,
                } => stream_statement(&admin, &tx, tenant, from_ms, to_ms, start).await,
                Export::Usage(q) => stream_usage(&admin, &tx, q).await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "a CSV export stopped midway");
                let _ = tx.send(Err(e)).await;
            }
        });
        (
            [
                (
                    http::header::CONTENT_TYPE,
                    "text/csv; charset=utf-8".to_string(),
                ),
                (http::header::CONTENT_DISPOSITION, disposition),
                (http::header::CACHE_CONTROL, "no-store".to_string()),
            ],
            axum::body::Body::new(ChannelBody(rx)),
        )
            .into_response()
    }
}

type Chunks = mpsc::Sender<Result<Bytes, GatewayError>>;

async fn send(tx: &Chunks, chunk: Vec<u8>) -> Result<(), GatewayError> {
    tx.send(Ok(Bytes::from(chunk)))
        .await
        .map_err(|_| GatewayError::Internal("the client went away".into()))
}

/// Where a statement starting at `from_ms` (or at `start`) opens.
pub(super) async fn statement_start(
    admin: &Admin,
    tenant: TenantId,
    from_ms: i64,
    start: Option<StatementCursor>,
) -> Result<(Option<StatementPos>, i64, i64), GatewayError> {
    match start {
        Some(c) => Ok((Some(c.pos), c.running, c.row)),
        None if from_ms == i64::MIN => Ok((None, 0, 0)),
        None => {
            let opening = admin
                .blocking(move |a| a.store.balance_before(tenant, from_ms))
                .await?;
            Ok((None, opening, 0))
        }
    }
}

async fn stream_statement(
    admin: &Admin,
    tx: &Chunks,
    tenant: TenantId,
    from_ms: i64,
    to_ms: i64,
    start: Option<StatementCursor>,
) -> Result<(), GatewayError> {
    let (mut after, mut running, mut row) = statement_start(admin, tenant, from_ms, start).await?;
    let names = admin.names(&[tenant]).await?;
    send(tx, csv_chunk(Some(&STATEMENT_HEADER), std::iter::empty())?).await?;
    loop {
        let page = admin
            .blocking(move |a| {
                a.store
                    .statement_page(tenant, from_ms, to_ms, after, EXPORT_PAGE)
            })
            .await?;
        let full = page.len() == EXPORT_PAGE as usize;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.pos);
        let records = page.iter().map(|r| {
            running += r.entry.amount;
            row += 1;
            statement_record(r, row, running, &names)
        });
        send(tx, csv_chunk(None, records)?).await?;
        if !full {
            return Ok(());
        }
    }
}

async fn stream_usage(admin: &Admin, tx: &Chunks, mut q: UsageQuery) -> Result<(), GatewayError> {
    send(tx, csv_chunk(Some(&USAGE_HEADER), std::iter::empty())?).await?;
    q.limit = EXPORT_PAGE;
    let mut names = Names::default();
    let mut known: std::collections::HashSet<i64> = Default::default();
    loop {
        let query = q.clone();
        let page = admin.blocking(move |a| a.store.usage_page(&query)).await?;
        let full = page.len() == EXPORT_PAGE as usize;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        q.before = Some(*last);
        let new: Vec<TenantId> = page
            .iter()
            .filter_map(|(_, e)| e.tenant_id)
            .filter(|t| known.insert(t.0))
            .collect();
        if !new.is_empty() {
            names.merge(admin.names(&new).await?);
        }
        send(
            tx,
            csv_chunk(None, page.iter().map(|(_, e)| usage_record(e, &names)))?,
        )
        .await?;
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_unix_seconds_or_rfc3339() {
        let cases = [
            ("1735689600", Some(1_735_689_600_000)),
            ("2025-01-01T00:00:00Z", Some(1_735_689_600_000)),
            ("2025-01-01T08:00:00+08:00", Some(1_735_689_600_000)),
            ("2025-01-01T00:00:00.250Z", Some(1_735_689_600_250)),
            ("yesterday", None),
            ("2025-01-01", None),
        ];
        for (v, want) in cases {
            assert_eq!(
                super::super::wire::parse_instant_ms("from", v).ok(),
                want,
                "{v}"
            );
        }
        assert!(super::super::wire::range_ms(Some("10"), Some("5"), (0, 1)).is_err());
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_listings() {
        let c = StatementCursor {
            pos: StatementPos {
                ts_ms: 5,
                src: 1,
                ord: -3,
            },
            running: -42,
            row: 7,
        };
        let text = c.encode();
        assert_eq!(statement_cursor(Some(&text)).ok().flatten(), Some(c));
        assert!(usage_cursor(Some(&text)).is_err());
        for bad in ["zz", "", "6c3a31"] {
            assert!(statement_cursor(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let out = csv_chunk(
            Some(&["a", "b"]),
            [["x,y".to_string(), "say \"hi\"".to_string()]].into_iter(),
        )
        .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n"
        );
    }
}
