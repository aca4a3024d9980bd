//! Feature extraction and scoring, spec version 2 (docs/routing.md, "Features").
//!
//! The same specification is implemented in `scripts/router/features.py`, which trains the
//! model and writes `tests/router/golden.jsonl`; the golden test pins the two together. Work is
//! on bytes (ASCII-only lowercasing, digits mapped to `0`, FNV-1a 64), and only a capped part of
//! the last user turn is scanned, so the cost per request is bounded whatever the prompt size.

use super::model::RouterModel;
use serde_json::Value;

/// Version of the feature specification this code implements (the model file must match).
pub const FEATURE_VERSION: u32 = 2;

/// Names of the dense features, in the model file's order (checked when a model loads).
pub const DENSE_NAMES: [&str; DENSE_COUNT] = [
    "log_bytes",
    "log_tokens",
    "digit_frac",
    "log_numbers",
    "log_math",
    "log_questions",
    "log_lines",
    "log_options",
    "log_enum",
    "log_code",
    "code_fence",
    "log_hard_cues",
    "log_easy_cues",
    "mean_word_len",
    "log_messages",
    "log_user_turns",
    "log_system_bytes",
    "log_context_bytes",
    "log_tools",
    "json_output",
];
pub const DENSE_COUNT: usize = 20;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Seeds of the three hashed families: FNV-1a of the tag byte.
const SEED_WORD: u64 = 12638202593718436950; // fnv1a(b"w")
const SEED_BIGRAM: u64 = 12638190499090526629; // fnv1a(b"b")
const SEED_CHAR: u64 = 12638189399578898418; // fnv1a(b"c")

fn is_hard_cue(t: &[u8]) -> bool {
    matches!(
        t,
        b"algorithm"
            | b"analyse"
            | b"analyze"
            | b"architecture"
            | b"calculate"
            | b"cases"
            | b"compare"
            | b"complexity"
            | b"compute"
            | b"concurrency"
            | b"concurrent"
            | b"constraint"
            | b"constraints"
            | b"contrast"
            | b"critique"
            | b"debug"
            | b"derivation"
            | b"derivative"
            | b"derive"
            | b"design"
            | b"edge"
            | b"equation"
            | b"equations"
            | b"estimate"
            | b"evaluate"
            | b"expected"
            | b"formal"
            | b"formally"
            | b"implement"
            | b"integral"
            | b"justify"
            | b"lemma"
            | b"multi"
            | b"optimise"
            | b"optimize"
            | b"plan"
            | b"probability"
            | b"proof"
            | b"prove"
            | b"refactor"
            | b"rigorous"
            | b"solve"
            | b"step"
            | b"steps"
            | b"strategy"
            | b"theorem"
            | b"tradeoff"
            | b"tradeoffs"
            | b"why"
    )
}

fn is_easy_cue(t: &[u8]) -> bool {
    matches!(
        t,
        b"birthday"
            | b"capital"
            | b"define"
            | b"definition"
            | b"email"
            | b"fix"
            | b"grammar"
            | b"greeting"
            | b"haiku"
            | b"hello"
            | b"hi"
            | b"joke"
            | b"list"
            | b"name"
            | b"quick"
            | b"rephrase"
            | b"rewrite"
            | b"short"
            | b"simple"
            | b"spell"
            | b"summarise"
            | b"summarize"
            | b"summary"
            | b"synonym"
            | b"synonyms"
            | b"thank"
            | b"thanks"
            | b"translate"
            | b"typo"
    )
}

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[inline]
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_lowercase() || c == b'0' || c >= 0x80
}

/// Bytes of the UTF-8 sequence that starts with `lead` (1 for ASCII or a stray byte).
#[inline]
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Byte length of the character at `i` if it is CJK (ideographs, kana, CJK punctuation,
/// full-width forms), else 0. Such a character is a token of its own (spec v2): Chinese and
/// Japanese have no spaces, and a run of them read as one word would hash a whole sentence
/// into one bucket.
#[inline]
fn cjk_at(n: &[u8], i: usize) -> usize {
    let (Some(&c), Some(&c1), Some(&c2)) = (n.get(i), n.get(i + 1), n.get(i + 2)) else {
        return 0;
    };
    if !(0xE3..=0xEF).contains(&c) {
        return 0;
    }
    let cp = (u32::from(c & 0x0F) << 12) | (u32::from(c1 & 0x3F) << 6) | u32::from(c2 & 0x3F);
    if (0x3000..=0x30FF).contains(&cp)
        || (0x3400..=0x4DBF).contains(&cp)
        || (0x4E00..=0x9FFF).contains(&cp)
        || (0xF900..=0xFAFF).contains(&cp)
        || (0xFF00..=0xFFEF).contains(&cp)
    {
        3
    } else {
        0
    }
}

/// End (exclusive) of the token that starts at `i` of the normalised text, or `None` when
/// the byte at `i` is whitespace or a control byte (skipped). A CJK character alone; a run of
/// `[a-z0]` and other non-ASCII characters; any other ASCII byte alone.
#[inline]
fn token_end(n: &[u8], i: usize) -> Option<usize> {
    let c = n.get(i).copied()?;
    if c >= 0x80 {
        let k = cjk_at(n, i);
        if k > 0 {
            return Some(i + k);
        }
    }
    if is_word_byte(c) {
        let mut j = if c >= 0x80 { i + utf8_len(c) } else { i + 1 };
        while let Some(&d) = n.get(j) {
            if !is_word_byte(d) {
                break;
            }
            if d >= 0x80 {
                if cjk_at(n, j) > 0 {
                    break;
                }
                j += utf8_len(d);
            } else {
                j += 1;
            }
        }
        Some(j.min(n.len()))
    } else if is_ws(c) || c < 0x20 || c == 0x7f {
        None
    } else {
        Some(i + 1)
    }
}

/// The text parts of a message `content`: the string itself, or the `text` of each part of
/// type `text` (joined by `\n` when read as one text).
fn text_parts(content: Option<&Value>) -> TextParts<'_> {
    let mut parts = TextParts::default();
    match content {
        Some(Value::String(s)) => parts.push(s),
        Some(Value::Array(items)) => {
            for p in items {
                if p.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        parts.push(t);
                    }
                }
            }
        }
        _ => {}
    }
    parts
}

/// Byte length of a `content` read as one text (no allocation).
fn content_len(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(items)) => {
            let mut n = 0usize;
            let mut k = 0usize;
            for p in items {
                if p.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        n += t.len();
                        k += 1;
                    }
                }
            }
            n + k.saturating_sub(1)
        }
        _ => 0,
    }
}

/// Text parts read as one string joined by `\n`, without copying it.
#[derive(Default)]
struct TextParts<'a> {
    parts: Vec<&'a str>,
}

impl<'a> TextParts<'a> {
    fn push(&mut self, s: &'a str) {
        self.parts.push(s);
    }

    fn len(&self) -> usize {
        let n: usize = self.parts.iter().map(|p| p.len()).sum();
        n + self.parts.len().saturating_sub(1)
    }

    /// Byte `i` of the joined text (`i < len`).
    fn byte(&self, mut i: usize) -> u8 {
        for (k, p) in self.parts.iter().enumerate() {
            if k > 0 {
                if i == 0 {
                    return b'\n';
                }
                i -= 1;
            }
            if i < p.len() {
                return p.as_bytes().get(i).copied().unwrap_or(0);
            }
            i -= p.len();
        }
        0
    }

    fn is_boundary(&self, i: usize) -> bool {
        i == 0 || i >= self.len() || (self.byte(i) & 0xC0) != 0x80
    }

    /// Appends bytes `start..end` of the joined text to `out`.
    fn copy_range(&self, start: usize, end: usize, out: &mut Vec<u8>) {
        let mut pos = 0usize;
        for (k, p) in self.parts.iter().enumerate() {
            if k > 0 {
                if pos >= start && pos < end {
                    out.push(b'\n');
                }
                pos += 1;
            }
            let (a, b) = (pos, pos + p.len());
            let lo = start.max(a);
            let hi = end.min(b);
            if lo < hi {
                if let Some(slice) = p.as_bytes().get(lo - a..hi - a) {
                    out.extend_from_slice(slice);
                }
            }
            pos = b;
            if pos >= end {
                break;
            }
        }
    }

    /// The text capped to `cap` bytes: whole, or head and tail of `cap / 2` bytes each (shrunk
    /// to char boundaries) joined by `\n`.
    fn capped(&self, cap: usize, out: &mut Vec<u8>) {
        let len = self.len();
        if len <= cap {
            self.copy_range(0, len, out);
            return;
        }
        let half = cap / 2;
        let mut h = half;
        while !self.is_boundary(h) {
            h -= 1;
        }
        let mut t = len - half;
        while !self.is_boundary(t) {
            t += 1;
        }
        self.copy_range(0, h, out);
        out.push(b'\n');
        self.copy_range(t, len, out);
    }
}

/// Conversation-level facts used by the features and by the rules.
pub(crate) struct Conversation<'a> {
    pub messages: usize,
    pub user_turns: usize,
    pub system_bytes: usize,
    pub context_bytes: usize,
    pub last_user: Option<&'a Value>,
}

pub(crate) fn conversation(req: &Value) -> Conversation<'_> {
    let msgs: &[Value] = match req.get("messages") {
        Some(Value::Array(a)) => a,
        _ => &[],
    };
    let last_user_idx = msgs
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let mut c = Conversation {
        messages: msgs.len(),
        user_turns: 0,
        system_bytes: 0,
        context_bytes: 0,
        last_user: last_user_idx.and_then(|i| msgs.get(i)),
    };
    for (i, m) in msgs.iter().enumerate() {
        if !m.is_object() {
            continue;
        }
        let role = m.get("role").and_then(Value::as_str);
        let nb = content_len(m.get("content"));
        if role == Some("user") {
            c.user_turns += 1;
        }
        if matches!(role, Some("system") | Some("developer")) {
            c.system_bytes += nb;
        } else if Some(i) != last_user_idx {
            c.context_bytes += nb;
        }
    }
    c
}

/// The score of a request in [0, 1] (higher = needs the stronger model). Never fails: any
/// JSON value is a valid input (a non-object scores as an empty conversation).
pub fn score(model: &RouterModel, req: &Value) -> f32 {
    score_f64(model, req) as f32
}

/// [`score`] before the final narrowing to `f32` (what the golden test compares).
pub fn score_f64(model: &RouterModel, req: &Value) -> f64 {
    let spec = &model.spec;
    let conv = conversation(req);
    let full = text_parts(conv.last_user.and_then(|m| m.get("content")));
    let full_len = full.len();
    let mut raw = Vec::with_capacity(spec.max_text_bytes.min(full_len) + 1);
    full.capped(spec.max_text_bytes, &mut raw);
    let norm: Vec<u8> = raw
        .iter()
        .map(|&c| match c {
            b'A'..=b'Z' => c + 32,
            b'0'..=b'9' => b'0',
            _ => c,
        })
        .collect();

    let wdim = spec.word_dim as u64;
    let cdim = spec.char_dim as u64;

    // Word uni- and bigrams, and the token-level dense features.
    let mut word_sum = 0.0f64;
    let mut word_n = 0usize;
    let mut n_tokens = 0usize;
    let mut hard = 0usize;
    let mut easy = 0usize;
    let mut alnum_tokens = 0usize;
    let mut alnum_bytes = 0usize;
    let mut prev: Option<&[u8]> = None;
    let mut i = 0usize;
    let len = norm.len();
    while i < len {
        let Some(j) = token_end(&norm, i) else {
            i += 1;
            continue;
        };
        let tok: &[u8] = norm.get(i..j).unwrap_or(&[]);
        i = j;
        n_tokens += 1;
        word_sum += f64::from(model.word_weight((fnv1a(SEED_WORD, tok) % wdim) as usize));
        word_n += 1;
        if let Some(p) = prev {
            let h = fnv1a(fnv1a(fnv1a(SEED_BIGRAM, p), b" "), tok);
            word_sum += f64::from(model.word_weight((h % wdim) as usize));
            word_n += 1;
        }
        prev = Some(tok);
        if tok.first().copied().is_some_and(is_word_byte) {
            alnum_tokens += 1;
            alnum_bytes += tok.len();
            if is_hard_cue(tok) {
                hard += 1;
            } else if is_easy_cue(tok) {
                easy += 1;
            }
        }
    }

    // Character n-grams over the normalised text with whitespace runs collapsed to one space.
    let mut col: Vec<u8> = Vec::with_capacity(len);
    let mut prev_ws = false;
    for &c in &norm {
        if is_ws(c) {
            if !prev_ws {
                col.push(b' ');
            }
            prev_ws = true;
        } else {
            col.push(c);
            prev_ws = false;
        }
    }
    let mut char_sum = 0.0f64;
    let mut char_n = 0usize;
    for g in col.windows(spec.char_n) {
        char_sum += f64::from(model.char_weight((fnv1a(SEED_CHAR, g) % cdim) as usize));
        char_n += 1;
    }

    // Byte-level dense features of the capped text.
    let nb = raw.len();
    let mut digits = 0usize;
    let mut runs = 0usize;
    let mut prev_digit = false;
    for &c in &norm {
        let d = c == b'0';
        if d {
            digits += 1;
            if !prev_digit {
                runs += 1;
            }
        }
        prev_digit = d;
    }
    let mut math = 0usize;
    let mut code = 0usize;
    let mut questions = 0usize;
    let mut newlines = 0usize;
    for &c in &raw {
        match c {
            b'=' | b'+' | b'*' | b'/' | b'^' | b'<' | b'>' | b'%' | b'\\' => math += 1,
            b'{' | b'}' | b';' | b'`' | b'_' => code += 1,
            b'?' => questions += 1,
            b'\n' => newlines += 1,
            _ => {}
        }
    }
    // The full-width question mark U+FF1F (EF BC 9F) counts as a question too (spec v2).
    questions += raw.windows(3).filter(|w| *w == [0xEF, 0xBC, 0x9F]).count();
    let mut options = 0usize;
    let mut enums = 0usize;
    for line in raw.split(|&c| c == b'\n') {
        let start = line
            .iter()
            .position(|&c| c != b' ' && c != b'\t')
            .unwrap_or(line.len());
        let ls = line.get(start..).unwrap_or(&[]);
        if let [a, b, ..] = ls {
            if (matches!(a, b'A'..=b'D') || matches!(a, b'a'..=b'd')) && matches!(b, b'.' | b')') {
                options += 1;
            }
        }
        let j = ls.iter().take_while(|c| c.is_ascii_digit()).count();
        let numbered = j > 0 && ls.get(j).is_some_and(|c| matches!(c, b'.' | b')'));
        if numbered || ls.starts_with(b"- ") || ls.starts_with(b"* ") {
            enums += 1;
        }
    }
    let fence = if raw.windows(3).any(|w| w == b"```") {
        1.0
    } else {
        0.0
    };
    let tools = match req.get("tools") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    let json_out = if is_json_output(req) { 1.0 } else { 0.0 };

    let l = |x: usize| (x as f64).ln_1p();
    let dense: [f64; DENSE_COUNT] = [
        l(full_len) / 8.0,
        l(n_tokens) / 6.0,
        if nb > 0 {
            digits as f64 / nb as f64
        } else {
            0.0
        },
        l(runs) / 4.0,
        l(math) / 4.0,
        l(questions) / 2.0,
        l(newlines) / 4.0,
        l(options) / 2.0,
        l(enums) / 3.0,
        l(code) / 4.0,
        fence,
        l(hard) / 2.0,
        l(easy) / 2.0,
        if alnum_tokens > 0 {
            alnum_bytes as f64 / alnum_tokens as f64 / 10.0
        } else {
            0.0
        },
        l(conv.messages) / 3.0,
        l(conv.user_turns.saturating_sub(1)) / 3.0,
        l(conv.system_bytes) / 10.0,
        l(conv.context_bytes) / 10.0,
        l(tools) / 3.0,
        json_out,
    ];

    let mut z = model.bias;
    if word_n > 0 {
        z += word_sum / (word_n as f64).sqrt();
    }
    if char_n > 0 {
        z += char_sum / (char_n as f64).sqrt();
    }
    for (k, v) in dense.iter().enumerate() {
        z += model.dense_term(k, *v);
    }
    let z = z.clamp(-40.0, 40.0);
    1.0 / (1.0 + (-z).exp())
}

/// `response_format.type` is `json_object` or `json_schema`.
pub(crate) fn is_json_output(req: &Value) -> bool {
    matches!(
        req.get("response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str),
        Some("json_object") | Some("json_schema")
    )
}

/// Total bytes of message text in the request (all messages, text parts joined).
pub(crate) fn total_text_bytes(req: &Value) -> usize {
    match req.get("messages") {
        Some(Value::Array(msgs)) => msgs.iter().map(|m| content_len(m.get("content"))).sum(),
        _ => 0,
    }
}

/// FNV-1a 64 of up to `cap` head bytes and `cap` tail bytes of a message's text plus its
/// length: a bounded-cost fingerprint (used for the sticky conversation key).
pub(crate) fn fingerprint(h: u64, content: Option<&Value>, cap: usize) -> u64 {
    let parts = text_parts(content);
    let mut buf = Vec::with_capacity(2 * cap + 1);
    parts.capped(2 * cap, &mut buf);
    let h = fnv1a(h, &(parts.len() as u64).to_le_bytes());
    fnv1a(h, &buf)
}

pub(crate) fn fnv(data: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv_seeds_match_the_tags() {
        assert_eq!(fnv(b"w"), SEED_WORD);
        assert_eq!(fnv(b"b"), SEED_BIGRAM);
        assert_eq!(fnv(b"c"), SEED_CHAR);
        // Reference vector of FNV-1a 64.
        assert_eq!(fnv(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn capping_keeps_head_and_tail_on_char_boundaries() {
        let s = "é".repeat(10); // 20 bytes
        let v = json!(s);
        let parts = text_parts(Some(&v));
        let mut out = Vec::new();
        parts.capped(7, &mut out); // half = 3: head shrinks to 2 bytes, tail to 2 bytes
        assert_eq!(String::from_utf8(out).unwrap(), "é\né");
        let mut out = Vec::new();
        parts.capped(100, &mut out);
        assert_eq!(out.len(), 20);
    }

    fn tokens(text: &str) -> Vec<String> {
        let n: Vec<u8> = text.bytes().map(|c| c.to_ascii_lowercase()).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < n.len() {
            match token_end(&n, i) {
                Some(j) => {
                    out.push(String::from_utf8_lossy(&n[i..j]).into_owned());
                    i = j;
                }
                None => i += 1,
            }
        }
        out
    }

    #[test]
    fn cjk_characters_are_tokens_of_their_own() {
        let cases: &[(&str, &[&str])] = &[
            (
                "请证明：根号是无理数。",
                &[
                    "请", "证", "明", "：", "根", "号", "是", "无", "理", "数", "。",
                ],
            ),
            ("用Rust实现", &["用", "rust", "实", "现"]),
            (
                "日本語テキスト",
                &["日", "本", "語", "テ", "キ", "ス", "ト"],
            ),
            ("ＡＢ？", &["Ａ", "Ｂ", "？"]),
            // Other non-ASCII text still forms words: accents, Hangul (spaced), emoji.
            (
                "naïve café 한국어 🙂🙂",
                &["naïve", "café", "한국어", "🙂🙂"],
            ),
            ("x=1, y", &["x", "=", "1", ",", "y"]),
        ];
        for (text, want) in cases {
            assert_eq!(tokens(text), *want, "{text}");
        }
    }

    #[test]
    fn multi_part_content_reads_as_one_text() {
        let v = json!([{"type": "text", "text": "ab"}, {"type": "image_url"}, {"type": "text", "text": "cd"}]);
        let parts = text_parts(Some(&v));
        assert_eq!(parts.len(), 5);
        let mut out = Vec::new();
        parts.capped(100, &mut out);
        assert_eq!(out, b"ab\ncd");
        let mut out = Vec::new();
        parts.copy_range(1, 4, &mut out);
        assert_eq!(out, b"b\nc");
        assert_eq!(parts.byte(2), b'\n');
    }
}
