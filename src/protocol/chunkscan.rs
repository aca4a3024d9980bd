//! A single-pass reader for the `data:` payload of a streamed OpenAI chat chunk: it walks the
//! bytes once, hands the meter the few values it needs (delta texts, finish reason, the raw
//! `usage` and `error` values) and skips everything else without building anything.
//!
//! It is the meter's fast path (the serde view in `openai.rs` costs about twice as much per
//! event, most of a streamed request's metering). It gives up (`Err`) on anything unusual:
//! malformed JSON, an escaped object key, nesting deeper than [`MAX_DEPTH`], invalid UTF-8 in a
//! string it reads. The caller then falls back to the serde path, so the fast path only has
//! to be right on what it accepts (a differential test checks it against the serde path).

/// Nesting deeper than this is left to the serde path (which has its own limit).
const MAX_DEPTH: usize = 64;

/// A JSON string as it appears in the input, quotes included.
#[derive(Debug, Clone, Copy)]
pub struct JsonStr<'a> {
    quoted: &'a [u8],
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The string's value; `None` if it is not valid (never for what the scanner accepted,
    /// except invalid UTF-8 in an escaped string).
    pub fn decode(&self) -> Option<std::borrow::Cow<'a, str>> {
        let inner = &self.quoted[1..self.quoted.len() - 1];
        if !self.escaped {
            return std::str::from_utf8(inner)
                .ok()
                .map(std::borrow::Cow::Borrowed);
        }
        serde_json::from_slice::<String>(self.quoted)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    fn is_empty(&self) -> bool {
        self.quoted.len() == 2
    }
}

/// What the meter needs from one chunk.
pub trait ChunkSink<'a> {
    /// A non-empty generated text (content, reasoning, refusal, tool call name or arguments),
    /// in the order the serde path reads them.
    fn text(&mut self, s: JsonStr<'a>) -> Result<(), GiveUp>;
}

#[derive(Debug, Default)]
pub struct ChunkFacts<'a> {
    /// `choices` was an array (even an empty one counts as "has choices" only if it had an
    /// element, as in the serde path).
    pub has_choices: bool,
    /// Last non-empty `finish_reason` string among the choices.
    pub finish_reason: Option<JsonStr<'a>>,
    /// The raw `usage` value, when present and not `null`.
    pub usage: Option<&'a [u8]>,
    /// The raw `error` value, when present and not `null`.
    pub error: Option<&'a [u8]>,
}

/// The reader gave up on a chunk: the serde path is to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveUp;

type R<T> = Result<T, GiveUp>;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                return Some(c);
            }
        }
        None
    }

    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    fn string(&mut self) -> R<JsonStr<'a>> {
        self.eat(b'"')?;
        let start = self.i - 1;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).ok_or(GiveUp)?;
            let k = memchr::memchr2(b'"', b'\\', rest).ok_or(GiveUp)?;
            self.i += k;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(JsonStr {
                    quoted: &self.b[start..self.i],
                    escaped,
                });
            }
            escaped = true;
            self.i += 2; // the backslash and the escaped byte (a \u's hex digits are plain)
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    fn number(&mut self) -> R<()> {
        let start = self.i;
        while let Some(c) = self.b.get(self.i) {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i > start {
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// Skips one value; returns whether it was `null`.
    fn skip(&mut self, depth: usize) -> R<bool> {
        if depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        match self.peek().ok_or(GiveUp)? {
            b'"' => self.string().map(|_| false),
            b'{' => self
                .object(depth, |s, _| s.skip(depth + 1).map(drop))
                .map(|_| false),
            b'[' => self
                .array(depth, |s| s.skip(depth + 1).map(drop))
                .map(|_| false),
            b't' => self.literal(b"true").map(|_| false),
            b'f' => self.literal(b"false").map(|_| false),
            b'n' => self.literal(b"null").map(|_| true),
            _ => self.number().map(|_| false),
        }
    }

    /// The raw bytes of one value, `None` for `null`.
    fn raw(&mut self, depth: usize) -> R<Option<&'a [u8]>> {
        self.peek();
        let start = self.i;
        let null = self.skip(depth)?;
        Ok((!null).then(|| &self.b[start..self.i]))
    }

    /// A string value; anything else (null, numbers, objects...) reads as absent, as the serde
    /// path's lenient strings do.
    fn lenient_str(&mut self, depth: usize) -> R<Option<JsonStr<'a>>> {
        if self.peek() == Some(b'"') {
            return self.string().map(Some);
        }
        self.skip(depth).map(|_| None)
    }

    /// Calls `f` after each key, with the scanner on the value. Keys with escapes give up.
    fn object(&mut self, depth: usize, mut f: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            if key.escaped {
                return Err(GiveUp);
            }
            self.eat(b':')?;
            f(self, &key.quoted[1..key.quoted.len() - 1])?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(GiveUp),
            }
        }
    }

    fn array(&mut self, depth: usize, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            f(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(GiveUp),
            }
        }
    }

    /// `{"name": .., "arguments": ..}` of a function call.
    fn function(&mut self, depth: usize, sink: &mut impl ChunkSink<'a>) -> R<()> {
        if self.peek() != Some(b'{') {
            return if self.skip(depth)? {
                Ok(())
            } else {
                Err(GiveUp)
            };
        }
        let (mut name, mut args) = (None, None);
        self.object(depth, |s, k| {
            match k {
                b"name" => name = s.lenient_str(depth + 1)?,
                b"arguments" => args = s.lenient_str(depth + 1)?,
                _ => {
                    s.skip(depth + 1)?;
                }
            }
            Ok(())
        })?;
        for t in [name, args].into_iter().flatten() {
            if !t.is_empty() {
                sink.text(t)?;
            }
        }
        Ok(())
    }

    fn delta(&mut self, depth: usize, sink: &mut impl ChunkSink<'a>) -> R<()> {
        let mut content = None;
        let mut reasoning_content = None;
        let mut reasoning = None;
        let mut refusal = None;
        // Function calls come after the texts in the serde path; they are read in a second
        // pass over their raw bytes, which is rare (tool-call deltas only).
        let mut tool_calls: Option<&'a [u8]> = None;
        let mut function_call: Option<&'a [u8]> = None;
        self.object(depth, |s, k| {
            match k {
                b"content" => content = s.lenient_str(depth + 1)?,
                b"reasoning_content" => reasoning_content = s.lenient_str(depth + 1)?,
                b"reasoning" => reasoning = s.lenient_str(depth + 1)?,
                b"refusal" => refusal = s.lenient_str(depth + 1)?,
                b"tool_calls" => tool_calls = s.raw(depth + 1)?,
                b"function_call" => function_call = s.raw(depth + 1)?,
                _ => {
                    s.skip(depth + 1)?;
                }
            }
            Ok(())
        })?;
        let reasoning = reasoning_content.filter(|s| !s.is_empty()).or(reasoning);
        for t in [content, reasoning, refusal].into_iter().flatten() {
            if !t.is_empty() {
                sink.text(t)?;
            }
        }
        if let Some(raw) = tool_calls {
            let mut s = Scanner { b: raw, i: 0 };
            if s.peek() != Some(b'[') {
                return Err(GiveUp);
            }
            s.array(depth + 1, |s| {
                if s.peek() != Some(b'{') {
                    return Err(GiveUp);
                }
                s.object(depth + 2, |s, k| {
                    if k == b"function" {
                        s.function(depth + 3, sink)
                    } else {
                        s.skip(depth + 3).map(drop)
                    }
                })
            })?;
        }
        if let Some(raw) = function_call {
            let mut s = Scanner { b: raw, i: 0 };
            s.function(depth + 1, sink)?;
        }
        Ok(())
    }
}

/// Reads one chunk. Texts go to `sink` as they are found (a caller that gets `Err` must undo
/// what the sink did for this chunk).
pub fn scan<'a>(data: &'a [u8], sink: &mut impl ChunkSink<'a>) -> R<ChunkFacts<'a>> {
    let mut s = Scanner { b: data, i: 0 };
    let mut facts = ChunkFacts::default();
    if s.peek() != Some(b'{') {
        return Err(GiveUp);
    }
    // A repeated key is left to the serde path (which reads the last one).
    let mut seen = [false; 3];
    let mut once = |i: usize| -> R<()> {
        if std::mem::replace(&mut seen[i], true) {
            Err(GiveUp)
        } else {
            Ok(())
        }
    };
    s.object(0, |s, k| {
        match k {
            b"choices" => {
                once(0)?;
                match s.peek() {
                    Some(b'[') => s.array(1, |s| {
                        facts.has_choices = true;
                        if s.peek() != Some(b'{') {
                            return Err(GiveUp); // the serde path decides what a non-object choice means
                        }
                        let mut delta_seen = false;
                        s.object(2, |s, k| {
                            match k {
                                b"delta" if std::mem::replace(&mut delta_seen, true) => {
                                    return Err(GiveUp)
                                }
                                b"delta" => match s.peek() {
                                    Some(b'{') => s.delta(3, sink)?,
                                    _ => {
                                        if !s.skip(3)? {
                                            return Err(GiveUp);
                                        }
                                    }
                                },
                                b"finish_reason" => {
                                    if let Some(r) = s.lenient_str(3)? {
                                        if !r.is_empty() {
                                            facts.finish_reason = Some(r);
                                        }
                                    }
                                }
                                _ => {
                                    s.skip(3)?;
                                }
                            }
                            Ok(())
                        })
                    })?,
                    _ => {
                        if !s.skip(1)? {
                            return Err(GiveUp);
                        }
                    }
                }
            }
            b"usage" => {
                once(1)?;
                facts.usage = s.raw(1)?
            }
            b"error" => {
                once(2)?;
                facts.error = s.raw(1)?
            }
            _ => {
                s.skip(1)?;
            }
        }
        Ok(())
    })?;
    if s.peek().is_some() {
        return Err(GiveUp); // trailing bytes
    }
    Ok(facts)
}

impl<'a> Scanner<'a> {
    /// A count: a number as `count_field` reads it; anything else reads as absent.
    fn count(&mut self, depth: usize) -> R<Option<u64>> {
        match self.peek() {
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.number()?;
                let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| GiveUp)?;
                Ok(super::openai::count_from_number(text))
            }
            _ => self.skip(depth).map(|_| None),
        }
    }

    /// `obj.<key>` as a count when the value is an object, else absent.
    fn nested_count(&mut self, depth: usize, key: &[u8]) -> R<Option<u64>> {
        if self.peek() != Some(b'{') {
            return self.skip(depth).map(|_| None);
        }
        let mut found = None;
        self.object(depth, |s, k| {
            if k == key {
                found = s.count(depth + 1)?;
            } else {
                s.skip(depth + 1)?;
            }
            Ok(())
        })?;
        Ok(found)
    }
}

/// A `usage` object read without a value tree: what `openai::parse_usage` returns for it.
/// Gives up on anything but an object.
pub fn usage(raw: &[u8]) -> R<Option<super::openai::Usage>> {
    let mut s = Scanner { b: raw, i: 0 };
    if s.peek() != Some(b'{') {
        return Err(GiveUp);
    }
    let mut f = super::openai::UsageFields::default();
    s.object(0, |s, k| {
        match k {
            b"prompt_tokens" => f.prompt = s.count(1)?,
            b"input_tokens" => f.input = s.count(1)?,
            b"prompt_cache_hit_tokens" => f.hit = s.count(1)?,
            b"prompt_cache_miss_tokens" => f.miss = s.count(1)?,
            b"completion_tokens" => f.completion = s.count(1)?,
            b"output_tokens" => f.output = s.count(1)?,
            b"cached_tokens" => f.cached = s.count(1)?,
            b"prompt_tokens_details" => {
                f.prompt_details_cached = s.nested_count(1, b"cached_tokens")?
            }
            b"input_tokens_details" => {
                f.input_details_cached = s.nested_count(1, b"cached_tokens")?
            }
            b"completion_tokens_details" => {
                f.completion_details_reasoning = s.nested_count(1, b"reasoning_tokens")?
            }
            b"output_tokens_details" => {
                f.output_details_reasoning = s.nested_count(1, b"reasoning_tokens")?
            }
            _ => {
                s.skip(1)?;
            }
        }
        Ok(())
    })?;
    if s.peek().is_some() {
        return Err(GiveUp);
    }
    Ok(f.usage())
}

/// The raw value of a top-level `key` of a JSON object (`None` when absent or `null`; the
/// last one when repeated), skipping everything else.
pub fn top_level<'a>(data: &'a [u8], key: &[u8]) -> R<Option<&'a [u8]>> {
    let mut s = Scanner { b: data, i: 0 };
    if s.peek() != Some(b'{') {
        return Err(GiveUp);
    }
    let mut found = None;
    s.object(0, |s, k| {
        if k == key {
            found = s.raw(1)?;
        } else {
            s.skip(1)?;
        }
        Ok(())
    })?;
    if s.peek().is_some() {
        return Err(GiveUp);
    }
    Ok(found)
}
