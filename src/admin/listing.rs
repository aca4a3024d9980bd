//! Listings of the admin API: query parameters, time ranges, cursor pagination, and CSV
//! exports written page by page as the store yields them.
//!
//! Every listing takes `from`/`to` (unix seconds or RFC 3339; `from` inclusive, `to`
//! exclusive), `limit` (rows per page) and `cursor` (the `next_cursor` of the previous page,
//! opaque to clients). Pages are keyset pages over the store's time indexes, so a page costs its
//! own rows however deep into a history it is. `format=csv` streams the whole range (from the
//! cursor on, if one is given) as chunked CSV: the store is read `EXPORT_PAGE` rows at a time
//! and each page is written out before the next is read, so an export's memory is one page,
//! whatever its length.

use crate::app::App;
use crate::billing::pricing;
use crate::error::GatewayError;
use crate::store::sqlite::{StatementPos, StatementRow, UsagePos, UsageQuery};
use crate::tenancy::TenantId;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;
use std::sync::Arc;

/// Rows per page of a JSON listing when `limit` is not given, and the most a page may hold.
pub(super) const MAX_PAGE: u32 = 10_000;
/// Rows read from the store per chunk of a CSV export.
const EXPORT_PAGE: u32 = 1_000;

/// The query string's parameters, percent-decoded.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn parse(query: Option<&str>) -> Params {
        Params(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn is_csv(&self) -> bool {
        self.get("format") == Some("csv")
    }

    /// `limit`: rows per page, 1 to `MAX_PAGE` (`default` when not given).
    pub(super) fn limit(&self, default: u32) -> Result<u32, GatewayError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
                _ => Err(bad_param(
                    "limit",
                    format!("`limit` must be a number from 1 to {MAX_PAGE}"),
                )),
            },
        }
    }

    /// `from` and `to` in unix milliseconds; `defaults` (ms) for the ones not given.
    pub(super) fn time_range_ms(&self, defaults: (i64, i64)) -> Result<(i64, i64), GatewayError> {
        let from = self.instant_ms("from")?.unwrap_or(defaults.0);
        let to = self.instant_ms("to")?.unwrap_or(defaults.1);
        if to <= from {
            return Err(bad_param("to", "`to` must be after `from`"));
        }
        Ok((from, to))
    }

    /// An instant: unix seconds (`1735689600`) or RFC 3339 (`2025-01-01T00:00:00Z`, any
    /// offset, fractions of a second kept to the millisecond).
    fn instant_ms(&self, name: &str) -> Result<Option<i64>, GatewayError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let ms = match v.parse::<i64>() {
            Ok(secs) => secs.checked_mul(1000),
            Err(_) => chrono::DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.timestamp_millis()),
        };
        ms.map(Some).ok_or_else(|| {
            bad_param(
                name,
                format!("`{name}` must be unix seconds or an RFC 3339 time"),
            )
        })
    }

    /// The `cursor` parameter, as `n` integers.
    fn cursor(&self, kind: &str, n: usize) -> Result<Option<Vec<i64>>, GatewayError> {
        let Some(c) = self.get("cursor") else {
            return Ok(None);
        };
        decode_cursor(c, kind, n)
            .map(Some)
            .ok_or_else(|| bad_param("cursor", "`cursor` is not a cursor of this listing"))
    }

    pub(super) fn usage_cursor(&self) -> Result<Option<UsagePos>, GatewayError> {
        Ok(self.cursor("u", 2)?.map(|v| UsagePos {
            ts_ms: v[0],
            id: v[1],
        }))
    }

    pub(super) fn statement_cursor(&self) -> Result<Option<StatementCursor>, GatewayError> {
        Ok(self.cursor("l", 5)?.map(|v| StatementCursor {
            pos: StatementPos {
                ts_ms: v[0],
                src: v[1],
                ord: v[2],
            },
            running: v[3],
            row: v[4],
        }))
    }
}

fn bad_param(name: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        message: message.into(),
        param: Some(name.into()),
    }
}

/// A cursor: the listing's kind and the position's integers, hex-encoded so that clients treat
/// it as the opaque token it is (its layout may change between versions).
fn encode_cursor(kind: &str, parts: &[i64]) -> String {
    let text = std::iter::once(kind.to_string())
        .chain(parts.iter().map(i64::to_string))
        .collect::<Vec<_>>()
        .join(":");
    hex::encode(text)
}

fn decode_cursor(c: &str, kind: &str, n: usize) -> Option<Vec<i64>> {
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

fn credits(nano: i64) -> String {
    pricing::to_credits(nano).normalize().to_string()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

const STATEMENT_HEADER: [&str; 20] = [
    "seq",
    "created_ms",
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
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "reasoning_tokens",
];

/// A statement row's CSV fields; `row` and `running` are its number and the balance after it.
fn statement_record(r: &StatementRow, row: i64, running: i64) -> [String; 20] {
    let e = &r.entry;
    let call = r.call.as_ref();
    [
        row.to_string(),
        e.created_ms.to_string(),
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
        opt(call.map(|c| c.prompt_tokens)),
        opt(call.map(|c| c.cached_tokens)),
        opt(call.map(|c| c.cache_write_tokens)),
        opt(call.map(|c| c.completion_tokens)),
        opt(call.map(|c| c.reasoning_tokens)),
    ]
}

const USAGE_HEADER: [&str; 26] = [
    "request_id",
    "ts_ms",
    "tenant_id",
    "key_id",
    "user_id",
    "group_id",
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
];

fn usage_record(e: &crate::billing::usage::UsageEvent) -> [String; 26] {
    [
        e.request_id.clone(),
        e.ts_ms.to_string(),
        opt(e.tenant_id.map(|t| t.0)),
        opt(e.key_id.map(|k| k.0)),
        opt(e.user_id.map(|u| u.0)),
        opt(e.group_id.map(|g| g.0)),
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

impl Export {
    fn filename(&self) -> &'static str {
        match self {
            Export::Statement { .. } => "statement.csv",
            Export::Usage(_) => "usage.csv",
        }
    }

    /// Write the export as a chunked `text/csv` response. Returns whether it was written to
    /// its end; an export that fails midway stops without its last chunk, so the client sees a
    /// truncated transfer rather than a short file that looks complete.
    pub(super) async fn stream(self, app: &Arc<App>, session: &mut ServerSession) -> bool {
        let mut header = ResponseHeader::build(200, Some(4)).ok();
        if let Some(h) = header.as_mut() {
            let disposition = format!("attachment; filename=\"{}\"", self.filename());
            let ok = h
                .insert_header(http::header::CONTENT_TYPE, "text/csv; charset=utf-8")
                .and_then(|_| h.insert_header(http::header::TRANSFER_ENCODING, "chunked"))
                .and_then(|_| h.insert_header(http::header::CONTENT_DISPOSITION, disposition))
                .and_then(|_| h.insert_header(http::header::CACHE_CONTROL, "no-store"));
            if ok.is_err() {
                header = None;
            }
        }
        let Some(header) = header else {
            return false;
        };
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return false;
        }
        let result = match self {
            Export::Statement {
                tenant,
                from_ms,
                to_ms,
                start,
            } => stream_statement(app, session, tenant, from_ms, to_ms, start).await,
            Export::Usage(q) => stream_usage(app, session, q).await,
        };
        match result {
            Ok(()) => session
                .write_response_body(Bytes::new(), true)
                .await
                .is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "a CSV export stopped midway");
                false
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App) -> Result<T, crate::store::sqlite::StoreError> + Send + 'static,
) -> Result<T, GatewayError> {
    let app = app.clone();
    match tokio::task::spawn_blocking(move || f(&app)).await {
        Ok(r) => r.map_err(|e| GatewayError::Internal(e.to_string())),
        Err(e) => Err(GatewayError::Internal(e.to_string())),
    }
}

async fn send(session: &mut ServerSession, chunk: Vec<u8>) -> Result<(), GatewayError> {
    session
        .write_response_body(Bytes::from(chunk), false)
        .await
        .map_err(|e| GatewayError::Internal(format!("client went away: {e}")))
}

/// Where a statement starting at `from_ms` (or at `start`) opens.
pub(super) async fn statement_start(
    app: &Arc<App>,
    tenant: TenantId,
    from_ms: i64,
    start: Option<StatementCursor>,
) -> Result<(Option<StatementPos>, i64, i64), GatewayError> {
    match start {
        Some(c) => Ok((Some(c.pos), c.running, c.row)),
        None if from_ms == i64::MIN => Ok((None, 0, 0)),
        None => {
            let opening = blocking(app, move |a| a.store.balance_before(tenant, from_ms)).await?;
            Ok((None, opening, 0))
        }
    }
}

async fn stream_statement(
    app: &Arc<App>,
    session: &mut ServerSession,
    tenant: TenantId,
    from_ms: i64,
    to_ms: i64,
    start: Option<StatementCursor>,
) -> Result<(), GatewayError> {
    let (mut after, mut running, mut row) = statement_start(app, tenant, from_ms, start).await?;
    send(
        session,
        csv_chunk(Some(&STATEMENT_HEADER), std::iter::empty())?,
    )
    .await?;
    loop {
        let page = blocking(app, move |a| {
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
            statement_record(r, row, running)
        });
        send(session, csv_chunk(None, records)?).await?;
        if !full {
            return Ok(());
        }
    }
}

async fn stream_usage(
    app: &Arc<App>,
    session: &mut ServerSession,
    mut q: UsageQuery,
) -> Result<(), GatewayError> {
    send(session, csv_chunk(Some(&USAGE_HEADER), std::iter::empty())?).await?;
    q.limit = EXPORT_PAGE;
    loop {
        let query = q.clone();
        let page = blocking(app, move |a| a.store.usage_page(&query)).await?;
        let full = page.len() == EXPORT_PAGE as usize;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        q.before = Some(*last);
        send(
            session,
            csv_chunk(None, page.iter().map(|(_, e)| usage_record(e)))?,
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
            ("from=1735689600", Some(1_735_689_600_000)),
            ("from=2025-01-01T00:00:00Z", Some(1_735_689_600_000)),
            ("from=2025-01-01T08:00:00%2B08:00", Some(1_735_689_600_000)),
            ("from=2025-01-01T00:00:00.250Z", Some(1_735_689_600_250)),
            ("from=yesterday", None),
            ("from=2025-01-01", None),
        ];
        for (q, want) in cases {
            let got = Params::parse(Some(q)).instant_ms("from").ok().flatten();
            assert_eq!(got, want, "{q}");
        }
        assert!(Params::parse(Some("from=10&to=5"))
            .time_range_ms((0, 1))
            .is_err());
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
        let p = Params::parse(Some(format!("cursor={}", c.encode()).as_str()));
        assert_eq!(p.statement_cursor().ok().flatten(), Some(c));
        assert!(p.usage_cursor().is_err());
        for bad in ["zz", "", "6c3a31"] {
            let p = Params::parse(Some(format!("cursor={bad}").as_str()));
            assert!(p.statement_cursor().is_err(), "{bad}");
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
