//! Retention of raw usage records (issue 15).
//!
//! Every call leaves a usage record of ~200 bytes; at edge rates that is hundreds of GB a day,
//! so raw records are kept for `store.raw_usage_days` only. What must outlive them does:
//!
//! - the hourly and daily roll-ups (analytics) are kept forever, as they are;
//! - a pruned call's charge stays in the ledger as its day's summary per tenant, key, user and
//!   group (`charge_days`), so balances, quotas and statements add up to the same numbers before
//!   and after (a statement shows one `charges:<day>` line per summary for a pruned day);
//! - before a day is removed its rows are written to a zstd-compressed JSON-lines file
//!   (`usage-YYYY-MM-DD[.N].jsonl.zst`, one object per record with every column), fsynced, and
//!   recorded in `usage_archives`; a failed archive leaves the day in place.
//!
//! PostgreSQL keeps one partition per UTC day and drops a closed day's partition whole;
//! SQLite deletes in bounded batches off the request path. Both are run by the gateway's
//! retention service (`server.rs`) and by `tollgate store prune`.

use crate::store::sqlite::StoreError;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DAY_MS: i64 = 86_400_000;

/// Raw records one pass removes at most (the rest waits for the next pass).
pub const PASS_ROWS: u64 = 1_000_000;

/// The UTC midnight (ms) of the day holding `ms`.
pub fn day_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a UTC day.
pub fn day_name(day_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day_ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day_ms.to_string())
}

/// The first day that is kept when raw records are kept for `days` days (today included):
/// every record before it may be pruned.
pub fn cutoff(now_ms: i64, days: u32) -> i64 {
    day_of(now_ms) - (i64::from(days) - 1).max(0) * DAY_MS
}

/// What one pruning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Raw records removed (and archived, when an archive directory is set).
    pub rows: u64,
    /// Days (UTC midnights) some records of which were removed.
    pub days: Vec<i64>,
    /// Archive files written.
    pub files: Vec<String>,
    /// Another node held the pruning lock (PostgreSQL): nothing was done.
    pub skipped: bool,
}

/// A compressed archive being written: a temporary file renamed into place by `finish`, removed
/// if dropped unfinished (a failed pass leaves nothing half-written behind).
pub struct ArchiveWriter {
    tmp: PathBuf,
    path: PathBuf,
    enc: Option<zstd::stream::write::Encoder<'static, std::io::BufWriter<std::fs::File>>>,
    rows: u64,
}

impl ArchiveWriter {
    /// A new file for `day_ms` in `dir` (created if missing); a day archived before gets the next
    /// free `.N` suffix, so that no archive is ever overwritten.
    pub fn create(dir: &Path, day_ms: i64) -> Result<ArchiveWriter, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let day = day_name(day_ms);
        let mut n = 1;
        let path = loop {
            let name = if n == 1 {
                format!("usage-{day}.jsonl.zst")
            } else {
                format!("usage-{day}.{n}.jsonl.zst")
            };
            let p = dir.join(name);
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let tmp = path.with_extension("zst.tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| io_error(&tmp, &e))?;
        let enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), 3)
            .map_err(|e| io_error(&tmp, &e))?;
        Ok(ArchiveWriter {
            tmp,
            path,
            enc: Some(enc),
            rows: 0,
        })
    }

    /// One record (a JSON object on one line).
    pub fn line(&mut self, json: &str) -> Result<(), StoreError> {
        let Some(enc) = self.enc.as_mut() else {
            return Err(StoreError::Invalid("archive already finished".into()));
        };
        enc.write_all(json.as_bytes())
            .and_then(|()| enc.write_all(b"\n"))
            .map_err(|e| io_error(&self.tmp, &e))?;
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Completes the file, makes it durable and gives it its name: (path, records).
    pub fn finish(mut self) -> Result<(PathBuf, u64), StoreError> {
        let Some(enc) = self.enc.take() else {
            return Err(StoreError::Invalid("archive already finished".into()));
        };
        let buf = enc.finish().map_err(|e| io_error(&self.tmp, &e))?;
        let file = buf
            .into_inner()
            .map_err(|e| io_error(&self.tmp, e.error()))?;
        file.sync_all().map_err(|e| io_error(&self.tmp, &e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io_error(&self.path, &e))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok((self.path.clone(), self.rows))
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if self.enc.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Invalid(format!("archive {}: {e}", path.display()))
}

/// Reads an archive back: its records as JSON values (for `tollgate store archive --check` and
/// the tests).
pub fn read_archive(path: &Path) -> Result<Vec<serde_json::Value>, StoreError> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let dec = zstd::stream::read::Decoder::new(file).map_err(|e| io_error(path, &e))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(dec).lines() {
        let line = line.map_err(|e| io_error(path, &e))?;
        if line.is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| StoreError::Invalid(format!("archive {}: {e}", path.display())))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_cutoffs_are_utc() {
        // 2026-11-23T10:00:00Z
        let t = 1_795_428_000_000;
        assert_eq!(day_name(day_of(t)), "2026-11-23");
        assert_eq!(day_of(t) % DAY_MS, 0);
        // Keeping 1 day keeps today only; keeping 3 keeps today and the two days before.
        assert_eq!(cutoff(t, 1), day_of(t));
        assert_eq!(day_name(cutoff(t, 3)), "2026-11-21");
        assert_eq!(day_of(-1), -DAY_MS);
    }

    #[test]
    fn archives_are_never_overwritten_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let day = 1_795_392_000_000;
        let mut a = ArchiveWriter::create(dir.path(), day).unwrap();
        a.line(r#"{"request_id":"r1"}"#).unwrap();
        a.line(r#"{"request_id":"r2"}"#).unwrap();
        let (p1, n) = a.finish().unwrap();
        assert_eq!(n, 2);
        assert!(p1.ends_with("usage-2026-11-23.jsonl.zst"));
        let mut b = ArchiveWriter::create(dir.path(), day).unwrap();
        b.line(r#"{"request_id":"r3"}"#).unwrap();
        let (p2, _) = b.finish().unwrap();
        assert!(p2.ends_with("usage-2026-11-23.2.jsonl.zst"));
        assert_eq!(read_archive(&p1).unwrap().len(), 2);
        assert_eq!(read_archive(&p2).unwrap()[0]["request_id"], "r3");
        // An unfinished archive leaves nothing behind.
        let mut c = ArchiveWriter::create(dir.path(), day).unwrap();
        c.line("{}").unwrap();
        drop(c);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
