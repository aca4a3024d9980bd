//! OpenAI's `o200k_base` tokenizer, read in place from a table compiled into the binary.
//!
//! The vocabulary (about 200,000 byte strings and their ranks) is laid out by build.rs as flat
//! arrays in the executable's read-only data: nothing is built at run time, and only the pages
//! a count touches become resident (the pages are the file's, shared and reclaimable). The
//! `tiktoken` crate, whose tables cost ~24 MB of heap once built (~34 MB while building), is
//! only the build script's source of the vocabulary and the tests' reference.
//!
//! Counting is the standard byte-pair encoding: the text is cut into pieces by o200k's
//! pre-tokenisation pattern, and each piece is either one token or merged pair by pair, lowest
//! rank first. The pattern's `\s+(?!\S)` (a run of whitespace gives its last character to the
//! word after it) has no lookahead in the `regex` crate: the run is matched whole and its last
//! character handed back, which is what the lookahead does.

use super::bpe_hash;

static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k.bin"));

/// o200k's pre-tokenisation pattern, with `\s+(?!\S)|\s+` as `\s+` (see the module docs).
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// Pieces longer than this (long runs of whitespace, in practice) are merged in parts of
/// `LONG_PART` bytes: merging is quadratic in a piece's length. A cut can only split a token
/// in two, so a count can only grow by one per cut.
const LONG_PIECE: usize = 512;
const LONG_PART: usize = 256;

const ABSENT: u32 = u32::MAX;

/// ASCII classes of the pattern: letter, upper case, lower case, digit, whitespace (`\s`).
fn is_ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

fn is_other(b: u8) -> bool {
    b < 0x80 && !is_ws(b) && !b.is_ascii_alphanumeric()
}

/// Length of the run from `i` of bytes satisfying `f`, and the byte after it (`None` at the end).
fn run(b: &[u8], i: usize, f: impl Fn(u8) -> bool) -> (usize, Option<u8>) {
    let n = b
        .get(i..)
        .map_or(0, |r| r.iter().take_while(|c| f(**c)).count());
    (n, b.get(i + n).copied())
}

/// The end of o200k's piece starting at `at` when the answer depends on ASCII bytes only (most
/// text: prose, code, JSON); `None` when a byte of 0x80 or more could change it, and the regex
/// decides. The same alternatives in the same order as `PATTERN`, for ASCII's classes.
fn ascii_piece(b: &[u8], at: usize) -> Option<usize> {
    let c = *b.get(at)?;
    if c >= 0x80 {
        return None;
    }
    let high = |x: Option<u8>| x.is_some_and(|x| x >= 0x80);
    // Letters, with one optional leading character that is neither a line break, a letter nor a
    // digit: upper case* lower case+, else upper case+ lower case*; then a contraction.
    let q = if c != b'\r' && c != b'\n' && !c.is_ascii_alphanumeric() {
        at + 1
    } else {
        at
    };
    let (upper, after_upper) = run(b, q, |x| x.is_ascii_uppercase());
    if high(after_upper) {
        return None;
    }
    let (lower, after_lower) = run(b, q + upper, |x| x.is_ascii_lowercase());
    if high(after_lower) {
        return None;
    }
    if upper + lower > 0 {
        let end = q + upper + lower;
        return Some(end + contraction(b, end)?);
    }
    if c.is_ascii_digit() {
        let (digits, next) = run(b, at, |x| x.is_ascii_digit());
        if digits < 3 && high(next) {
            return None;
        }
        return Some(at + digits.min(3));
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    let q = if c == b' ' { at + 1 } else { at };
    let (other, next) = run(b, q, is_other);
    if high(next) {
        return None;
    }
    if other > 0 {
        let (tail, _) = run(b, q + other, |x| matches!(x, b'\r' | b'\n' | b'/'));
        return Some(q + other + tail);
    }
    // Whitespace: up to its last line break, else all of it, less its last character when
    // something other than whitespace follows.
    let (ws, next) = run(b, at, is_ws);
    if ws == 0 || high(next) {
        return None;
    }
    let span = b.get(at..at + ws)?;
    if let Some(last) = span.iter().rposition(|x| matches!(x, b'\r' | b'\n')) {
        return Some(at + last + 1);
    }
    Some(if next.is_some() && ws > 1 {
        at + ws - 1
    } else {
        at + ws
    })
}

/// Length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`, any case) at `i`, 0 if
/// none; `None` when a byte of 0x80 or more follows the apostrophe (Unicode case folding makes
/// `ſ` an `s`: the regex decides).
fn contraction(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'\'') {
        return Some(0);
    }
    let lower = |k: usize| b.get(i + k).map(u8::to_ascii_lowercase);
    let n = match (lower(1), lower(2)) {
        (Some(b's' | b't' | b'm' | b'd'), _) => 2,
        (Some(b'r'), Some(b'e')) | (Some(b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
        (Some(x), _) if x >= 0x80 => return None,
        _ => 0,
    };
    Some(n)
}

/// The compiled-in vocabulary and the pre-tokeniser.
pub struct O200k {
    offsets: &'static [u8],
    singles: &'static [u8],
    pairs: &'static [u8],
    table: &'static [u8],
    mask: usize,
    arena: &'static [u8],
    /// o200k's pre-tokeniser for what the ASCII fast path leaves to it, compiled the first time
    /// it is needed (~4 MB once used: text that is all ASCII never pays for it). `None` if the
    /// pattern did not compile (it does; the text would be one piece).
    pieces: std::sync::OnceLock<Option<regex::Regex>>,
}

fn word(bytes: &[u8], i: usize) -> u32 {
    bytes
        .get(i * 4..i * 4 + 4)
        .and_then(|w| w.try_into().ok())
        .map_or(ABSENT, u32::from_le_bytes)
}

impl Default for O200k {
    fn default() -> O200k {
        O200k::new()
    }
}

impl O200k {
    /// Reads the table's layout (no copy). A table that is not the one build.rs writes (it
    /// always is; the tests check) would count one token per byte, an upper bound.
    pub fn new() -> O200k {
        O200k::layout().unwrap_or_else(|| {
            tracing::error!("o200k table unreadable: counting one token per byte");
            O200k {
                offsets: &[],
                singles: &[],
                pairs: &[],
                table: &[],
                mask: 0,
                arena: &[],
                pieces: std::sync::OnceLock::new(),
            }
        })
    }

    fn layout() -> Option<O200k> {
        let head = TABLE.get(..16)?;
        if head.get(..4)? != bpe_hash::MAGIC {
            return None;
        }
        let n = word(head, 1) as usize;
        let bits = word(head, 2);
        if bits != bpe_hash::TABLE_BITS {
            return None;
        }
        let arena_len = word(head, 3) as usize;
        let slots = 1usize.checked_shl(bits)?;
        let (offsets, rest) = TABLE.get(16..)?.split_at_checked((n + 1) * 4)?;
        let (singles, rest) = rest.split_at_checked(256 * 4)?;
        let (pairs, rest) = rest.split_at_checked((1 << 16) * 4)?;
        let (table, arena) = rest.split_at_checked(slots * 4)?;
        if arena.len() != arena_len {
            return None;
        }
        Some(O200k {
            offsets,
            singles,
            pairs,
            table,
            mask: slots - 1,
            arena,
            pieces: std::sync::OnceLock::new(),
        })
    }

    /// The bytes of token `rank` (empty for an unknown rank).
    pub fn token(&self, rank: u32) -> &'static [u8] {
        let r = rank as usize;
        let (a, b) = (word(self.offsets, r), word(self.offsets, r + 1));
        if a == ABSENT || b == ABSENT || b < a {
            return &[];
        }
        self.arena.get(a as usize..b as usize).unwrap_or(&[])
    }

    /// The rank of the token whose bytes are `key`, if there is one.
    fn rank(&self, key: &[u8]) -> Option<u32> {
        match key {
            [] => None,
            // Every byte is a token of its own (byte-level BPE); its rank is never compared.
            [_] => Some(0),
            [a, b] => Some(word(self.pairs, usize::from(*a) << 8 | usize::from(*b)))
                .filter(|r| *r != ABSENT),
            _ => {
                let mut i = bpe_hash::hash(key) as usize & self.mask;
                loop {
                    let slot = word(self.table, i);
                    if slot == 0 || slot == ABSENT {
                        return None;
                    }
                    if self.token(slot - 1) == key {
                        return Some(slot - 1);
                    }
                    i = (i + 1) & self.mask;
                }
            }
        }
    }

    /// The next piece of `text` from `at`: start and end.
    fn next_piece(&self, text: &str, at: usize) -> Option<(usize, usize)> {
        if let Some(end) = ascii_piece(text.as_bytes(), at) {
            return Some((at, end));
        }
        let compiled = self.pieces.get_or_init(|| regex::Regex::new(PATTERN).ok());
        let Some(re) = compiled else {
            return (at < text.len()).then_some((at, text.len()));
        };
        let m = re.find_at(text, at)?;
        let (start, mut end) = (m.start(), m.end());
        let piece = m.as_str();
        // `\s+(?!\S)`: a run of whitespace that a non-whitespace character follows keeps all
        // but its last character, which goes with what follows. A run ending in a line break
        // is the `\s*[\r\n]+` branch's and keeps everything.
        if end < text.len()
            && piece.len() > 1
            && !piece.ends_with(['\r', '\n'])
            && piece.chars().all(char::is_whitespace)
            && text
                .get(end..)
                .and_then(|t| t.chars().next())
                .is_some_and(|c| !c.is_whitespace())
        {
            let last = piece.chars().next_back().map_or(0, char::len_utf8);
            if end - last > start {
                end -= last;
            }
        }
        Some((start, end))
    }

    /// Byte-pair merge of one piece: the token boundaries (first 0, last the piece's length).
    fn merge(&self, piece: &[u8], bounds: &mut Vec<usize>) {
        bounds.clear();
        // (start of part, rank of the part merged with the next one)
        let mut parts: Vec<(usize, u32)> = Vec::with_capacity(piece.len() + 1);
        for i in 0..piece.len() {
            let r = piece
                .get(i..i + 2)
                .and_then(|p| self.rank(p))
                .unwrap_or(ABSENT);
            parts.push((i, r));
        }
        parts.push((piece.len(), ABSENT));
        let rank_at = |parts: &[(usize, u32)], i: usize| -> u32 {
            match (parts.get(i), parts.get(i + 3)) {
                (Some(a), Some(b)) => piece
                    .get(a.0..b.0)
                    .and_then(|k| self.rank(k))
                    .unwrap_or(ABSENT),
                _ => ABSENT,
            }
        };
        loop {
            let mut best = (ABSENT, 0usize);
            for (i, p) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
                if p.1 < best.0 {
                    best = (p.1, i);
                }
            }
            if best.0 == ABSENT {
                break;
            }
            let i = best.1;
            let merged = rank_at(&parts, i);
            if i > 0 {
                let before = rank_at(&parts, i - 1);
                if let Some(p) = parts.get_mut(i - 1) {
                    p.1 = before;
                }
            }
            if let Some(p) = parts.get_mut(i) {
                p.1 = merged;
            }
            parts.remove(i + 1);
        }
        bounds.extend(parts.iter().map(|p| p.0));
    }

    /// Calls `each` with every piece's token boundaries.
    fn pieces(&self, text: &str, mut each: impl FnMut(&[u8], &[usize])) {
        let mut bounds = Vec::with_capacity(16);
        let mut at = 0;
        while let Some((start, end)) = self.next_piece(text, at) {
            let piece = text.get(start..end).unwrap_or("");
            if self.rank(piece.as_bytes()).is_some() {
                bounds.clear();
                bounds.extend([0, piece.len()]);
                each(piece.as_bytes(), &bounds);
            } else if piece.len() > LONG_PIECE {
                let mut from = 0;
                while from < piece.len() {
                    let mut to = (from + LONG_PART).min(piece.len());
                    while !piece.is_char_boundary(to) {
                        to += 1;
                    }
                    let part = piece.get(from..to).unwrap_or("").as_bytes();
                    self.merge(part, &mut bounds);
                    each(part, &bounds);
                    from = to;
                }
            } else {
                self.merge(piece.as_bytes(), &mut bounds);
                each(piece.as_bytes(), &bounds);
            }
            at = end.max(at + 1);
        }
    }

    /// Tokens of `text` (special-token text counted as ordinary text).
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        self.pieces(text, |_, b| n += b.len().saturating_sub(1));
        n
    }

    /// The token ranks of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.pieces(text, |piece, b| {
            for w in b.windows(2) {
                if let [a, z] = w {
                    out.extend(piece.get(*a..*z).and_then(|k| self.rank_or_byte(k)));
                }
            }
        });
        out
    }

    /// A token's rank, single bytes included.
    fn rank_or_byte(&self, key: &[u8]) -> Option<u32> {
        match key {
            [b] => Some(word(self.singles, usize::from(*b))).filter(|r| *r != ABSENT),
            _ => self.rank(key),
        }
    }

    /// The bytes of `tokens`, one after the other.
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(tokens.len() * 4);
        for t in tokens {
            out.extend_from_slice(self.token(*t));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ascii_piece;

    /// The fast path answers for ASCII and hands anything a wider character could change to the
    /// regex (exactness against the reference is tested in `protocol::tokens`).
    #[test]
    fn ascii_pieces_are_cut_without_the_regex_and_the_rest_is_left_to_it() {
        let cases: [(&str, Option<usize>); 12] = [
            ("hello world", Some(5)),
            (" world", Some(6)),
            ("HelloWorld", Some(5)),
            ("don't", Some(5)),
            ("it's", Some(4)),
            ("12345", Some(3)),
            ("  x", Some(1)),
            (" \n\n x", Some(3)),
            ("...\n/x", Some(5)),
            ("café", None),
            ("x²", None),
            (" \u{3000}x", None),
        ];
        for (text, want) in cases {
            assert_eq!(ascii_piece(text.as_bytes(), 0), want, "{text:?}");
        }
    }
}
