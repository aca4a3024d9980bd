"""Static token embedding of the complexity router (issue 19, fourth round): tokeniser and
sentence vector, experiments only (docs/routing.md, "Issue 19, fourth round"; not shipped).

The tokeniser is WordPiece over the vocabulary of all-MiniLM-L6-v2 (an uncased BERT
vocabulary), with a normalisation and pre-tokenisation written down here (close to BERT's but
defined by explicit character ranges, so that the gateway can do exactly the same without
Unicode category tables):

1. Per character: NUL, U+FFFD, control characters (Cc) other than whitespace, and the format
   characters in FORMAT_DROP are dropped; White_Space characters become a space; CJK ideographs
   (CJK_RANGES) are surrounded by spaces (one token each, as BERT does).
2. Per remaining character: canonical decomposition (NFD), characters with a non-zero canonical
   combining class dropped (accents), then each character lower-cased on its own.
3. Words: split on spaces; every punctuation character (`punct_ranges`) is a word of its own.
4. WordPiece: greedy longest match from the start of the word, continuation pieces prefixed
   `##`; a word longer than 100 characters or with an unmatched rest is `[UNK]`.

The sentence vector is the mean of the (weight-folded) vectors of the known tokens of the first
MAX_TOKENS tokens of the capped last user message; `[UNK]` tokens are skipped (counted in
`known_share`).
"""

import unicodedata

MAX_TOKENS = 512
MAX_WORD_CHARS = 100

# White_Space property (Unicode), as Rust's char::is_whitespace.
WHITESPACE = set(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)
FORMAT_DROP = {0x00AD, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF}
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def punct_ranges():
    """BERT's punctuation: ASCII 33-47, 58-64, 91-96, 123-126 and every code point whose
    Unicode general category is P* (this Python's Unicode database), as inclusive [first, last]
    ranges. A shipped embedding would store them in its model file, so that the gateway reads
    the same ranges whatever its Unicode version (nothing was shipped: docs/routing.md, "Issue
    19, fourth round")."""
    import unicodedata as u

    s = set(range(33, 48)) | set(range(58, 65)) | set(range(91, 97)) | set(range(123, 127))
    s |= {c for c in range(0x30000) if u.category(chr(c)).startswith("P")}
    out = []
    for c in sorted(s):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


PUNCT_RANGES = tuple(tuple(r) for r in punct_ranges())


def _in(ranges, cp):
    for a, b in ranges:
        if a <= cp <= b:
            return True
    return False


def is_cjk(cp):
    return _in(CJK_RANGES, cp)


def is_punct(cp, ranges=PUNCT_RANGES):
    """Binary search in the sorted, disjoint inclusive ranges."""
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        if ranges[mid][1] < cp:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(ranges) and ranges[lo][0] <= cp


def is_control(ch):
    cp = ord(ch)
    return cp < 0x20 or 0x7F <= cp < 0xA0  # Cc (whitespace ones are handled before)


def words(text):
    """Steps 1-3: the list of words of `text`."""
    out = []
    cur = []

    def flush():
        if cur:
            out.append("".join(cur))
            cur.clear()

    for ch in text:
        cp = ord(ch)
        if ch in WHITESPACE:
            flush()
            continue
        if cp == 0 or cp == 0xFFFD or is_control(ch) or cp in FORMAT_DROP:
            continue
        if is_cjk(cp):
            flush()
            out.append(ch)
            continue
        for d in unicodedata.normalize("NFD", ch):
            if unicodedata.combining(d):
                continue
            for low in d.lower():
                lcp = ord(low)
                if is_punct(lcp):
                    flush()
                    out.append(low)
                else:
                    cur.append(low)
    flush()
    return out


def wordpiece(word, vocab, unk):
    if len(word) > MAX_WORD_CHARS:
        return [unk]
    ids = []
    start = 0
    n = len(word)
    while start < n:
        end = n
        found = None
        while start < end:
            piece = word[start:end]
            if start > 0:
                piece = "##" + piece
            i = vocab.get(piece)
            if i is not None:
                found = i
                break
            end -= 1
        if found is None:
            return [unk]
        ids.append(found)
        start = end
    return ids


def tokenize(text, vocab, unk, limit=MAX_TOKENS):
    """Token ids of `text` (at most `limit`)."""
    ids = []
    for w in words(text):
        ids.extend(wordpiece(w, vocab, unk))
        if len(ids) >= limit:
            return ids[:limit]
    return ids
