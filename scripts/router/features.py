"""Feature extraction of the complexity router, spec version 2.

This file and src/router/features.rs implement the same specification (docs/routing.md,
"Features"); tests/router/golden.jsonl pins them together. Change one, change the other, bump
`feature_version`, regenerate the golden file.

Everything works on bytes: ASCII-only lowercasing, digits mapped to '0', FNV-1a 64 hashing of
UTF-8 bytes, so Python and Rust agree bit for bit on which buckets fire.
"""

import math

FEATURE_VERSION = 2

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = 0xFFFFFFFFFFFFFFFF

# Default spec parameters (the model file carries its own copy; these are what train.py writes).
DEFAULT_SPEC = {
    "word_dim": 1 << 15,
    "char_dim": 1 << 15,
    "char_n": 4,
    "max_text_bytes": 2048,
}

MATH_BYTES = set(b"=+*/^<>%\\")
CODE_BYTES = set(b"{};`_")
WS = set(b" \t\n\r\x0b\x0c")

# Cue words (whole normalised tokens). Chosen by hand to describe the *kind* of task, not a
# subject: multi-step reasoning, proof, code, design, constraints (hard) versus lookup,
# rewording, small talk (easy).
HARD_CUES = frozenset(
    w.encode()
    for w in (
        "prove proof derive derivation theorem lemma implement algorithm optimize optimise "
        "complexity refactor debug concurrency concurrent architecture design tradeoffs "
        "tradeoff analyze analyse evaluate justify rigorous formally formal step steps "
        "calculate compute solve integral derivative equation equations probability "
        "expected estimate constraints constraint edge cases multi why compare contrast "
        "critique plan strategy"
    ).split()
)
EASY_CUES = frozenset(
    w.encode()
    for w in (
        "hi hello thanks thank translate synonym synonyms spell capital define definition "
        "rephrase rewrite summarize summarise summary list name joke haiku greeting "
        "birthday email short simple quick fix grammar typo"
    ).split()
)

DENSE_NAMES = [
    "log_bytes",  # log1p(full byte length of the last user turn) / 8
    "log_tokens",  # log1p(word tokens in the capped text) / 6
    "digit_frac",  # digits / bytes of the capped text
    "log_numbers",  # log1p(runs of digits) / 4
    "log_math",  # log1p(bytes in = + * / ^ < > % \) / 4
    "log_questions",  # log1p(count of '?' and full-width U+FF1F) / 2
    "log_lines",  # log1p(newline count) / 4
    "log_options",  # log1p(lines that start with A-D/a-d then '.' or ')') / 2
    "log_enum",  # log1p(lines that start with digits then '.'/')', or '- ', '* ') / 3
    "log_code",  # log1p(bytes in { } ; ` _) / 4
    "code_fence",  # 1 if "```" occurs
    "log_hard_cues",  # log1p(tokens in HARD_CUES) / 2
    "log_easy_cues",  # log1p(tokens in EASY_CUES) / 2
    "mean_word_len",  # mean byte length of alphanumeric tokens / 10 (0 if none)
    "log_messages",  # log1p(number of messages) / 3
    "log_user_turns",  # log1p(user messages - 1) / 3
    "log_system_bytes",  # log1p(bytes of system/developer messages) / 10
    "log_context_bytes",  # log1p(bytes of all message text except the last user turn) / 10
    "log_tools",  # log1p(number of tools) / 3
    "json_output",  # 1 if response_format.type is json_object or json_schema
]


def fnv1a(data: bytes, h: int = FNV_OFFSET) -> int:
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def content_text(content) -> str:
    """Text of a message's `content`: the string, or the `text` parts joined by '\n'."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    return ""


def is_boundary(b: bytes, i: int) -> bool:
    return i <= 0 or i >= len(b) or (b[i] & 0xC0) != 0x80


def cap_text(b: bytes, cap: int) -> bytes:
    """At most `cap` bytes: the whole text, or its head and tail (cap/2 bytes each, shrunk to
    char boundaries) joined by '\n'."""
    if len(b) <= cap:
        return b
    half = cap // 2
    h = half
    while not is_boundary(b, h):
        h -= 1
    t = len(b) - half
    while not is_boundary(b, t):
        t += 1
    return b[:h] + b"\n" + b[t:]


def normalise(b: bytes) -> bytes:
    out = bytearray(len(b))
    for i, c in enumerate(b):
        if 65 <= c <= 90:
            c += 32
        elif 48 <= c <= 57:
            c = 48
        out[i] = c
    return bytes(out)


def is_word_byte(c: int) -> bool:
    return (97 <= c <= 122) or c == 48 or c >= 0x80


def utf8_len(lead: int) -> int:
    """Bytes of the UTF-8 sequence that starts with `lead` (1 for ASCII or a stray byte)."""
    if lead >= 0xF0:
        return 4
    if lead >= 0xE0:
        return 3
    if lead >= 0xC0:
        return 2
    return 1


def cjk_at(n: bytes, i: int) -> int:
    """Byte length of the character at `i` if it is CJK (ideographs, kana, CJK punctuation,
    full-width forms), else 0. Such a character is a token of its own: Chinese and Japanese
    have no spaces, and a run of them read as one word would hash a whole sentence into one
    bucket (spec v2)."""
    c = n[i]
    if c < 0xE3 or c > 0xEF:
        return 0
    if i + 2 >= len(n):
        return 0
    cp = ((c & 0x0F) << 12) | ((n[i + 1] & 0x3F) << 6) | (n[i + 2] & 0x3F)
    if (
        0x3000 <= cp <= 0x30FF  # CJK punctuation, hiragana, katakana
        or 0x3400 <= cp <= 0x4DBF  # extension A
        or 0x4E00 <= cp <= 0x9FFF  # unified ideographs
        or 0xF900 <= cp <= 0xFAFF  # compatibility ideographs
        or 0xFF00 <= cp <= 0xFFEF  # full-width and half-width forms
    ):
        return 3
    return 0


def tokens(n: bytes):
    """Word tokens of normalised bytes: a CJK character (see `cjk_at`) alone; runs of [a-z0]
    or other non-ASCII characters; every other non-whitespace ASCII byte alone."""
    out = []
    i, L = 0, len(n)
    while i < L:
        c = n[i]
        k = cjk_at(n, i) if c >= 0x80 else 0
        if k:
            out.append(n[i : i + k])
            i += k
        elif is_word_byte(c):
            j = i + utf8_len(c) if c >= 0x80 else i + 1
            while j < L and is_word_byte(n[j]):
                if n[j] >= 0x80:
                    if cjk_at(n, j):
                        break
                    j += utf8_len(n[j])
                else:
                    j += 1
            j = min(j, L)
            out.append(n[i:j])
            i = j
        elif c in WS or c < 0x20 or c == 0x7F:
            i += 1
        else:
            out.append(n[i : i + 1])
            i += 1
    return out


def collapse_ws(n: bytes) -> bytes:
    out = bytearray()
    prev_ws = False
    for c in n:
        if c in WS:
            if not prev_ws:
                out.append(32)
            prev_ws = True
        else:
            out.append(c)
            prev_ws = False
    return bytes(out)


def line_starts(raw: bytes):
    """Each line's bytes after leading spaces/tabs."""
    for line in raw.split(b"\n"):
        yield line.lstrip(b" \t")


def extract(req, spec):
    """Returns (word_idx, char_idx, dense) for a chat request (a parsed JSON value).

    word_idx / char_idx: lists of bucket indices, one per occurrence (counts, not sets);
    dense: list of len(DENSE_NAMES) floats."""
    msgs = req.get("messages") if isinstance(req, dict) else None
    if not isinstance(msgs, list):
        msgs = []
    last_user = -1
    for i, m in enumerate(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            last_user = i
    n_user = 0
    sys_bytes = 0
    ctx_bytes = 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        nb = len(content_text(m.get("content")).encode("utf-8"))
        if role == "user":
            n_user += 1
        if role in ("system", "developer"):
            sys_bytes += nb
        elif i != last_user:
            ctx_bytes += nb
    full = content_text(msgs[last_user].get("content")).encode("utf-8") if last_user >= 0 else b""
    raw = cap_text(full, spec["max_text_bytes"])
    norm = normalise(raw)

    wd, cd, cn = spec["word_dim"], spec["char_dim"], spec["char_n"]
    toks = tokens(norm)
    word_idx = []
    for t in toks:
        word_idx.append(fnv1a(t, fnv1a(b"w")) % wd)
    for a, b in zip(toks, toks[1:]):
        word_idx.append(fnv1a(a + b" " + b, fnv1a(b"b")) % wd)
    col = collapse_ws(norm)
    char_idx = []
    hc = fnv1a(b"c")
    for i in range(0, len(col) - cn + 1):
        char_idx.append(fnv1a(col[i : i + cn], hc) % cd)

    nb = len(raw)
    digits = sum(1 for c in norm if c == 48)
    runs = 0
    prev = False
    for c in norm:
        d = c == 48
        if d and not prev:
            runs += 1
        prev = d
    math_n = sum(1 for c in raw if c in MATH_BYTES)
    code_n = sum(1 for c in raw if c in CODE_BYTES)
    q = raw.count(b"?") + raw.count("\uff1f".encode())  # '?' and the full-width '？' (v2)
    nl = raw.count(b"\n")
    opts = 0
    enum = 0
    for ls in line_starts(raw):
        if len(ls) >= 2 and (65 <= ls[0] <= 68 or 97 <= ls[0] <= 100) and ls[1] in b".)":
            opts += 1
        j = 0
        while j < len(ls) and 48 <= ls[j] <= 57:
            j += 1
        if (j > 0 and j < len(ls) and ls[j] in b".)") or ls[:2] in (b"- ", b"* "):
            enum += 1
    fence = 1.0 if b"```" in raw else 0.0
    hard = sum(1 for t in toks if t in HARD_CUES)
    easy = sum(1 for t in toks if t in EASY_CUES)
    alnum = [t for t in toks if is_word_byte(t[0])]
    mwl = (sum(len(t) for t in alnum) / len(alnum) / 10.0) if alnum else 0.0
    tools = req.get("tools") if isinstance(req, dict) else None
    n_tools = len(tools) if isinstance(tools, list) else 0
    rf = req.get("response_format") if isinstance(req, dict) else None
    json_out = (
        1.0
        if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")
        else 0.0
    )
    dense = [
        math.log1p(len(full)) / 8.0,
        math.log1p(len(toks)) / 6.0,
        (digits / nb) if nb else 0.0,
        math.log1p(runs) / 4.0,
        math.log1p(math_n) / 4.0,
        math.log1p(q) / 2.0,
        math.log1p(nl) / 4.0,
        math.log1p(opts) / 2.0,
        math.log1p(enum) / 3.0,
        math.log1p(code_n) / 4.0,
        fence,
        math.log1p(hard) / 2.0,
        math.log1p(easy) / 2.0,
        mwl,
        math.log1p(len(msgs)) / 3.0,
        math.log1p(max(n_user - 1, 0)) / 3.0,
        math.log1p(sys_bytes) / 10.0,
        math.log1p(ctx_bytes) / 10.0,
        math.log1p(n_tools) / 3.0,
        json_out,
    ]
    return word_idx, char_idx, dense


def score(model, req) -> float:
    """The model's score of a request, computed exactly as the Rust side does (f64 sums of the
    file's weights; sparse families scaled by 1/sqrt(occurrences))."""
    spec = model["features"]
    wi, ci, dense = extract(req, spec)
    ww, cw, dw = model["word_weights"], model["char_weights"], model["dense_weights"]
    z = model["bias"]
    if wi:
        s = 0.0
        for i in wi:
            s += ww[i]
        z += s / math.sqrt(len(wi))
    if ci:
        s = 0.0
        for i in ci:
            s += cw[i]
        z += s / math.sqrt(len(ci))
    for k, v in enumerate(dense):
        z += dw[k] * (v - model["dense_mean"][k]) / model["dense_scale"][k]
    z = min(max(z, -40.0), 40.0)
    return 1.0 / (1.0 + math.exp(-z))
