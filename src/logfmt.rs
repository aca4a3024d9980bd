//! A lean JSON line formatter for `tracing` (the `log_format = "json"` output).
//!
//! The per-request access line is written at every call, so its cost is on the hot path:
//! tracing-subscriber's JSON formatter goes through serde and intermediate maps; this one writes
//! the line directly into one reused buffer. The output has the same shape as the subscriber's
//! flattened JSON: `{"timestamp": RFC 3339 UTC with microseconds, "level", "target",
//! "message", <fields>}` on one line.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|cell| {
            let Ok(mut line) = cell.try_borrow_mut() else {
                // Re-entered (a field's Debug logged something): format without the buffer.
                let mut own = String::with_capacity(512);
                write_line(&mut own, event);
                return writer.write_str(&own);
            };
            line.clear();
            write_line(&mut line, event);
            writer.write_str(&line)
        })
    }
}

fn write_line(out: &mut String, event: &Event<'_>) {
    let meta = event.metadata();
    out.push_str("{\"timestamp\":\"");
    push_timestamp(out, SystemTime::now());
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push_str("\",\"target\":");
    push_str(out, meta.target());
    event.record(&mut Fields { out });
    out.push_str("}\n");
}

struct Fields<'a> {
    out: &'a mut String,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        // Field names are Rust identifiers (or `message`): nothing to escape.
        self.out.push_str(",\"");
        self.out.push_str(field.name());
        self.out.push_str("\":");
    }

    fn int(&mut self, negative: bool, mut v: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if negative {
            self.out.push('-');
        }
        // Only ASCII digits were written.
        self.out
            .push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_str(self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.int(false, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.int(value < 0, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaping(self.out), "{value}");
        self.out.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaping(self.out), "{value:?}");
        self.out.push('"');
    }
}

/// A JSON string literal.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// `s` escaped for the inside of a JSON string.
fn push_escaped(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Formats straight into the line, escaping as it goes (no intermediate string).
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = crate::tenancy::civil_from_days(days);
    // Written digit by digit: `write!` with widths costs more than the rest of a log line's
    // numbers together.
    let mut buf = [0u8; 27];
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, m as u64);
    put(8, 2, day as u64);
    put(11, 2, (rem / 3600) as u64);
    put(14, 2, (rem / 60 % 60) as u64);
    put(17, 2, (rem % 60) as u64);
    put(20, 6, u64::from(d.subsec_micros()));
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        buf[i] = c;
    }
    // Only ASCII was written.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn strings_are_escaped_and_timestamps_are_rfc3339() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
        let mut t = String::new();
        // 2026-11-23T20:43:10.554785Z
        push_timestamp(
            &mut t,
            UNIX_EPOCH + Duration::from_micros(1_795_466_590_554_785),
        );
        assert_eq!(t, "2026-11-23T20:43:10.554785Z");
        let mut t = String::new();
        push_timestamp(&mut t, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day 2000
        assert_eq!(t, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn an_event_is_one_json_line_with_its_fields() {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let err = std::io::Error::other("disk \"full\"\n");
            tracing::info!(request_id = %"r-1", status = 200u16, ok = true, ttft_ms = Option::<u64>::None, note = "say \"hi\"", shown = %"a\\b\t\u{1}", dbg = ?["x\"y"], error = &err as &(dyn std::error::Error + 'static), zero = 0u64, neg = -42i64, min = i64::MIN, max = u64::MAX, "request {}", 7);
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request 7");
        assert_eq!(v["shown"], "a\\b\t\u{1}");
        assert_eq!(v["dbg"], "[\"x\\\"y\"]");
        assert_eq!(v["error"], "disk \"full\"\n");
        assert_eq!(v["zero"], 0);
        assert_eq!(v["neg"], -42);
        assert_eq!(v["min"], i64::MIN);
        assert_eq!(v["max"], u64::MAX);
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["ok"], true);
        assert_eq!(v["note"], "say \"hi\"");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
