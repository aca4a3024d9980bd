//! Incremental Server-Sent Events splitter.
//!
//! Upstream bodies arrive in arbitrary chunks, so an event can be cut anywhere (inside
//! `data:`, inside its JSON, between the two newlines of the blank line, or between the
//! `\r` and `\n` of a CRLF). The splitter re-assembles complete events and hands each one
//! out both as its raw bytes (for byte-exact pass-through) and as its parsed `data`
//! payload (for metering). Events fully contained in one chunk are borrowed from that
//! chunk without copying; only the bytes of an event that straddles chunks are buffered.

use bytes::Bytes;

/// Default cap on one buffered, incomplete event. An upstream that never sends a blank line
/// must not make the gateway buffer without bound.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// A buffer that grew beyond this is shrunk back after use, so one huge event does not pin
/// megabytes per connection for the rest of the stream.
const SHRINK_ABOVE: usize = 256 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One complete event (or, when [`SseEvent::oversized`] is set, a piece of an event that
/// exceeded the buffer cap).
#[derive(Debug, Clone, Copy)]
pub struct SseEvent<'a> {
    /// Exactly the bytes received for this event, including its terminating blank line.
    pub raw: &'a [u8],
    /// The `data:` lines' values joined with `\n` (one leading space stripped from each).
    /// `None` when the event had no `data` field (comment-only, keep-alive, oversized).
    pub data: Option<&'a [u8]>,
    /// Value of the last `event:` field, if any.
    pub event: Option<&'a [u8]>,
    /// Set when this is a piece of an event larger than the cap: the raw bytes are passed
    /// on in pieces and the event is not parsed.
    pub oversized: bool,
    /// False only for the unterminated tail handed out by [`SseSplitter::finish`], which is
    /// parsed as if its blank line had arrived.
    pub terminated: bool,
}

/// Line-terminator state carried across chunks so that an event cut between `\r` and `\n`
/// (or between the two newlines of its blank line) is recognised the same way as an
/// uncut one.
#[derive(Debug, Clone, Copy)]
struct ScanState {
    /// No byte other than line terminators since the last line break (or event start).
    at_line_start: bool,
    /// The last byte was a `\r` that ended a non-blank line; a following `\n` belongs to it.
    prev_cr: bool,
    /// The blank line ended with `\r` at the very end of the available data: the event is
    /// complete, but a `\n` arriving next still belongs to it.
    await_lf: bool,
}

impl ScanState {
    const START: ScanState = ScanState {
        at_line_start: true,
        prev_cr: false,
        await_lf: false,
    };
}

/// Scans `bytes` for the end of the current event, continuing from `st`.
/// Returns the offset just past the event's terminating blank line, or `None` when the
/// event is not complete yet (with `st` updated to cover all of `bytes`).
fn scan(st: &mut ScanState, bytes: &[u8]) -> Option<usize> {
    if st.await_lf {
        return match bytes.first() {
            None => None,
            Some(b'\n') => Some(1),
            Some(_) => Some(0),
        };
    }
    let mut i = 0;
    while let Some(off) = bytes
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'\n', b'\r', rest))
    {
        let p = i + off;
        if off > 0 {
            st.at_line_start = false;
            st.prev_cr = false;
        }
        let is_cr = bytes.get(p) == Some(&b'\r');
        if !is_cr && st.prev_cr {
            // The `\n` of a CRLF whose `\r` already ended the line.
            st.prev_cr = false;
            i = p + 1;
            continue;
        }
        if st.at_line_start {
            // An empty line: the event ends here.
            if !is_cr {
                return Some(p + 1);
            }
            return match bytes.get(p + 1) {
                Some(b'\n') => Some(p + 2),
                Some(_) => Some(p + 1),
                None => {
                    st.await_lf = true;
                    None
                }
            };
        }
        st.at_line_start = true;
        st.prev_cr = is_cr;
        i = p + 1;
    }
    if i < bytes.len() {
        st.at_line_start = false;
        st.prev_cr = false;
    }
    None
}

/// Splits a byte stream into SSE events. See the module docs.
#[derive(Debug)]
pub struct SseSplitter {
    /// Bytes of the incomplete event at the end of the data fed so far.
    pending: Vec<u8>,
    /// Scratch space for joining multi-line `data` fields; reused across events.
    scratch: Vec<u8>,
    state: ScanState,
    max_event: usize,
    /// The current event already overflowed; its remaining bytes are passed on unparsed.
    overflowing: bool,
    overflow_count: u64,
    /// Nothing has been emitted yet, so a leading UTF-8 BOM is ignored when parsing.
    at_stream_start: bool,
}

impl Default for SseSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl SseSplitter {
    /// A splitter with the default 16 MiB per-event cap.
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A splitter that buffers at most `max` bytes of one incomplete event.
    pub fn with_max_event_bytes(max: usize) -> Self {
        SseSplitter {
            pending: Vec::new(),
            scratch: Vec::new(),
            state: ScanState::START,
            max_event: max.max(1),
            overflowing: false,
            overflow_count: 0,
            at_stream_start: true,
        }
    }

    /// Feeds a chunk and calls `f` for every event it completes, in order. The raw bytes
    /// of all events emitted, followed by [`take_pending`](Self::take_pending), always
    /// reproduce the input exactly.
    ///
    /// An event that grows beyond the cap is not buffered further: its bytes are emitted
    /// in pieces with [`SseEvent::oversized`] set and no data, until its blank line.
    pub fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(SseEvent<'_>)) {
        let mut rest = chunk;
        // Complete the event begun in an earlier chunk.
        if !self.pending.is_empty() || self.state.await_lf {
            match scan(&mut self.state, rest) {
                Some(end) => {
                    let (head, tail) = rest.split_at(end.min(rest.len()));
                    self.pending.extend_from_slice(head);
                    let pending = std::mem::take(&mut self.pending);
                    self.emit(&pending, &mut f);
                    self.pending = pending;
                    self.reset_pending();
                    rest = tail;
                }
                None => {
                    self.hold(rest, &mut f);
                    return;
                }
            }
        }
        // Events wholly inside this chunk: borrowed, no copy.
        while !rest.is_empty() {
            match scan(&mut self.state, rest) {
                Some(end) => {
                    let (event, tail) = rest.split_at(end.min(rest.len()));
                    self.emit(event, &mut f);
                    self.state = ScanState::START;
                    rest = tail;
                }
                None => {
                    self.hold(rest, &mut f);
                    return;
                }
            }
        }
    }

    /// End of stream, keeping only what is complete: emits an event whose blank line ended
    /// in a lone `\r` (held back in case a `\n` followed). Any unterminated tail stays
    /// pending for [`take_pending`](Self::take_pending).
    pub fn flush(&mut self, mut f: impl FnMut(SseEvent<'_>)) {
        if self.state.await_lf {
            let pending = std::mem::take(&mut self.pending);
            self.emit(&pending, &mut f);
            self.pending = pending;
            self.reset_pending();
        }
    }

    /// End of stream: [`flush`](Self::flush), then hands out any unterminated tail as a last
    /// event with `terminated == false`, parsed as if its blank line had arrived (upstreams
    /// sometimes end with `data: [DONE]` and no blank line). Leaves the splitter empty.
    pub fn finish(&mut self, mut f: impl FnMut(SseEvent<'_>)) {
        self.flush(&mut f);
        if !self.pending.is_empty() {
            let skip_bom = self.at_stream_start;
            let (data, event) = parse_fields(&self.pending, &mut self.scratch, skip_bom);
            f(SseEvent {
                raw: &self.pending,
                data,
                event,
                oversized: false,
                terminated: false,
            });
            self.at_stream_start = false;
        }
        self.reset_pending();
        self.overflowing = false;
    }

    /// Takes the raw bytes of the incomplete trailing event, unparsed, leaving the splitter
    /// empty.
    pub fn take_pending(&mut self) -> Bytes {
        self.state = ScanState::START;
        self.overflowing = false;
        Bytes::from(std::mem::take(&mut self.pending))
    }

    /// Length of the buffered incomplete event.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// True while the bytes of an over-cap event are being passed through: the receiver has
    /// seen part of an event, so anything appended must first end it with a blank line.
    pub fn in_oversized_event(&self) -> bool {
        self.overflowing
    }

    /// How many events exceeded the cap and were passed on unparsed.
    pub fn overflow_count(&self) -> u64 {
        self.overflow_count
    }

    fn reset_pending(&mut self) {
        self.pending.clear();
        if self.pending.capacity() > SHRINK_ABOVE {
            self.pending.shrink_to(4096);
        }
        self.state = ScanState::START;
    }

    /// Buffers the incomplete tail of a chunk, or passes it on if the event is too big.
    fn hold(&mut self, rest: &[u8], f: &mut impl FnMut(SseEvent<'_>)) {
        if rest.is_empty() {
            return;
        }
        if self.overflowing {
            f(SseEvent {
                raw: rest,
                data: None,
                event: None,
                oversized: true,
                terminated: true,
            });
            self.at_stream_start = false;
            return;
        }
        if self.pending.len().saturating_add(rest.len()) > self.max_event {
            self.overflowing = true;
            self.overflow_count += 1;
            if !self.pending.is_empty() {
                f(SseEvent {
                    raw: &self.pending,
                    data: None,
                    event: None,
                    oversized: true,
                    terminated: true,
                });
                self.pending.clear();
                if self.pending.capacity() > SHRINK_ABOVE {
                    self.pending.shrink_to(4096);
                }
            }
            f(SseEvent {
                raw: rest,
                data: None,
                event: None,
                oversized: true,
                terminated: true,
            });
            self.at_stream_start = false;
            return;
        }
        self.pending.extend_from_slice(rest);
    }

    fn emit(&mut self, raw: &[u8], f: &mut impl FnMut(SseEvent<'_>)) {
        if self.overflowing {
            self.overflowing = false;
            if !raw.is_empty() {
                f(SseEvent {
                    raw,
                    data: None,
                    event: None,
                    oversized: true,
                    terminated: true,
                });
            }
        } else {
            let skip_bom = self.at_stream_start;
            let (data, event) = parse_fields(raw, &mut self.scratch, skip_bom);
            f(SseEvent {
                raw,
                data,
                event,
                oversized: false,
                terminated: true,
            });
        }
        self.at_stream_start = false;
    }
}

/// Extracts the `data` payload and `event` name from one event's bytes.
/// A single `data` line is borrowed from `raw`; several are joined into `scratch`.
fn parse_fields<'a>(
    raw: &'a [u8],
    scratch: &'a mut Vec<u8>,
    skip_bom: bool,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let mut rest = raw;
    if skip_bom {
        rest = rest.strip_prefix(BOM).unwrap_or(rest);
    }
    let mut first: Option<&'a [u8]> = None;
    let mut joined = false;
    let mut event: Option<&'a [u8]> = None;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr2(b'\n', b'\r', rest) {
            Some(p) => {
                let (line, after) = rest.split_at(p);
                let skip = if after.starts_with(b"\r\n") { 2 } else { 1 };
                (line, after.get(skip..).unwrap_or_default())
            }
            None => (rest, &[][..]),
        };
        rest = next;
        if line.is_empty() || line.first() == Some(&b':') {
            // Blank line or comment.
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let (name, v) = line.split_at(c);
                let v = v.get(1..).unwrap_or_default();
                (name, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => match first {
                None => first = Some(value),
                Some(f) => {
                    if !joined {
                        scratch.clear();
                        scratch.extend_from_slice(f);
                        joined = true;
                    }
                    scratch.push(b'\n');
                    scratch.extend_from_slice(value);
                }
            },
            b"event" => event = Some(value),
            // `id` and `retry` carry nothing the gateway meters; unknown fields are ignored
            // as the SSE spec requires.
            _ => {}
        }
    }
    if joined {
        (Some(scratch.as_slice()), event)
    } else {
        (first, event)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    struct Ev {
        raw: Vec<u8>,
        data: Option<Vec<u8>>,
        event: Option<Vec<u8>>,
        oversized: bool,
        terminated: bool,
    }

    fn collect(out: &mut Vec<Ev>) -> impl FnMut(SseEvent<'_>) + '_ {
        |e| {
            out.push(Ev {
                raw: e.raw.to_vec(),
                data: e.data.map(<[u8]>::to_vec),
                event: e.event.map(<[u8]>::to_vec),
                oversized: e.oversized,
                terminated: e.terminated,
            })
        }
    }

    /// Feeds `pieces` in order, returns the events and the trailing pending bytes.
    fn run(pieces: &[&[u8]]) -> (Vec<Ev>, Vec<u8>) {
        let mut s = SseSplitter::new();
        let mut evs = Vec::new();
        for p in pieces {
            s.feed(p, collect(&mut evs));
        }
        s.flush(collect(&mut evs));
        let rest = s.take_pending();
        (evs, rest.to_vec())
    }

    fn concat(evs: &[Ev], rest: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = evs.iter().flat_map(|e| e.raw.clone()).collect();
        v.extend_from_slice(rest);
        v
    }

    pub(crate) const OPENAI_STREAM: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
: keep-alive\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\nlo\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn whole_stream_events() {
        let (evs, rest) = run(&[OPENAI_STREAM]);
        assert!(rest.is_empty());
        assert_eq!(evs.len(), 6);
        assert_eq!(evs[1].data, None);
        assert_eq!(evs[1].raw, b": keep-alive\n\n");
        assert_eq!(evs[5].data.as_deref(), Some(&b"[DONE]"[..]));
        assert!(evs[0].data.as_ref().unwrap().starts_with(b"{\"id\""));
        assert_eq!(concat(&evs, &rest), OPENAI_STREAM);
    }

    fn check_all_splits(stream: &[u8]) {
        let (reference, rest) = run(&[stream]);
        assert!(rest.is_empty());
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let (evs, rest) = run(&[a, b]);
            assert_eq!(evs, reference, "split at {cut}");
            assert!(rest.is_empty(), "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (evs, rest) = run(&bytes);
        assert_eq!(evs, reference, "byte at a time");
        assert!(rest.is_empty());
        assert_eq!(concat(&evs, &rest), stream);
    }

    #[test]
    fn every_split_point_lf() {
        check_all_splits(OPENAI_STREAM);
    }

    #[test]
    fn every_split_point_crlf_and_cr() {
        let crlf: Vec<u8> = String::from_utf8_lossy(OPENAI_STREAM)
            .replace('\n', "\r\n")
            .into_bytes();
        check_all_splits(&crlf);
        let (evs, _) = run(&[&crlf]);
        assert_eq!(evs.len(), 6);
        assert_eq!(evs[5].data.as_deref(), Some(&b"[DONE]"[..]));
        let cr: Vec<u8> = String::from_utf8_lossy(OPENAI_STREAM)
            .replace('\n', "\r")
            .into_bytes();
        check_all_splits(&cr);
        let (evs, _) = run(&[&cr]);
        assert_eq!(evs.len(), 6);
    }

    #[test]
    fn every_split_point_mixed_terminators() {
        let s = b"event: a\r\ndata: 1\r\n\ndata: 2\n\r\n: c\r\rid: 7\nretry: 10\ndata:3\r\ndata:  4\n\r";
        check_all_splits(s);
        let (evs, rest) = run(&[s]);
        assert!(rest.is_empty());
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.data.clone(), e.event.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(b"1".to_vec()), Some(b"a".to_vec())),
                (Some(b"2".to_vec()), None),
                (None, None),
                (Some(b"3\n 4".to_vec()), None),
            ]
        );
    }

    #[test]
    fn field_parsing_table() {
        type Case<'a> = (&'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);
        let cases: &[Case] = &[
            (b"data: x\n\n", Some(b"x"), None),
            (b"data:x\n\n", Some(b"x"), None),
            (b"data:  x\n\n", Some(b" x"), None),
            (b"data\n\n", Some(b""), None),
            (b"data: a\ndata: b\ndata: c\n\n", Some(b"a\nb\nc"), None),
            (b": only a comment\n\n", None, None),
            (b":\n\n", None, None),
            (b"event: ping\n\n", None, Some(b"ping")),
            (b"event: x\nevent: y\ndata: z\n\n", Some(b"z"), Some(b"y")),
            (b"id: 1\nretry: 5\ndata: q\n\n", Some(b"q"), None),
            (b"dataa: no\n\n", None, None),
            (b" data: no\n\n", None, None),
            (b"\xEF\xBB\xBFdata: bom\n\n", Some(b"bom"), None),
            (b"\n", None, None),
        ];
        for (input, data, event) in cases {
            let (evs, rest) = run(&[input]);
            assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(input));
            assert_eq!(evs.len(), 1, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(
                evs[0].data.as_deref(),
                *data,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(evs[0].event.as_deref(), *event);
            assert_eq!(evs[0].raw, *input);
        }
    }

    #[test]
    fn bom_only_skipped_at_stream_start() {
        let (evs, _) = run(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(evs[0].data.as_deref(), Some(&b"a"[..]));
        assert_eq!(evs[1].data, None);
    }

    #[test]
    fn incomplete_tail_is_pending() {
        let mut s = SseSplitter::new();
        let mut evs = Vec::new();
        s.feed(b"data: 1\n\ndata: {\"par", collect(&mut evs));
        assert_eq!(evs.len(), 1);
        assert_eq!(s.pending_len(), 11);
        s.finish(collect(&mut evs));
        assert_eq!(s.pending_len(), 0);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].raw, b"data: {\"par");
        assert_eq!(evs[1].data.as_deref(), Some(&b"{\"par"[..]));
        assert!(!evs[1].terminated && evs[0].terminated);
        s.feed(b"data: x\n\ndata: y", collect(&mut evs));
        assert_eq!(s.take_pending(), Bytes::from_static(b"data: y"));
    }

    #[test]
    fn trailing_cr_held_until_next_byte_or_finish() {
        let mut s = SseSplitter::new();
        let mut evs = Vec::new();
        s.feed(b"data: 1\r\r", collect(&mut evs));
        assert!(evs.is_empty(), "a \\n might still belong to this event");
        s.feed(b"data: 2\r\r", collect(&mut evs));
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].raw, b"data: 1\r\r");
        s.flush(collect(&mut evs));
        assert_eq!(s.pending_len(), 0);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].data.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn oversized_event_passed_through_in_pieces() {
        let mut s = SseSplitter::with_max_event_bytes(16);
        let mut evs = Vec::new();
        let input: &[u8] = b"data: 0123456789abcdef\n\ndata: ok\n\n";
        let mut i = 0;
        for piece in [&input[..5], &input[5..12], &input[12..20], &input[20..]] {
            s.feed(piece, collect(&mut evs));
            i += piece.len();
        }
        assert_eq!(i, input.len());
        assert_eq!(s.overflow_count(), 1);
        let last = evs.last().unwrap();
        assert_eq!(last.data.as_deref(), Some(&b"ok"[..]));
        assert!(!last.oversized);
        assert!(evs[..evs.len() - 1]
            .iter()
            .all(|e| e.oversized && e.data.is_none()));
        assert_eq!(concat(&evs, &s.take_pending()), input);
        assert!(s.pending.capacity() <= 16 + 8);
    }

    #[test]
    fn long_event_fed_byte_by_byte_is_linear() {
        // A quadratic rescan of a 2 MiB event fed in 1 KiB pieces would take far too long.
        let mut big = b"data: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 2 << 20));
        big.extend_from_slice(b"\n\n");
        let mut s = SseSplitter::new();
        let mut n = 0;
        let t = std::time::Instant::now();
        for c in big.chunks(1024) {
            s.feed(c, |e| {
                n += 1;
                assert_eq!(e.data.map(<[u8]>::len), Some(2 << 20));
            });
        }
        assert_eq!(n, 1);
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
