//! Token counting with OpenAI's `o200k_base`, used when a vendor reports no usage and to
//! estimate prompt size before a request is sent. Counts are estimates for non-OpenAI
//! models, whose tokenizers differ.
//!
//! The encoder is our own reader of a vocabulary table compiled into the binary
//! (`protocol::o200k`, laid out by build.rs from the `tiktoken` crate's data): same counts as
//! OpenAI's tiktoken and tiktoken-rs (checked in the tests), nothing built at run time, and only
//! the pages a count touches become resident, where the `tiktoken` crate's tables cost ~24 MB
//! of heap for good after the first local count (issue 14).

use serde_json::{Map, Value};

/// The shared `o200k_base` encoder (its regex is compiled the first time text that is not all
/// ASCII is counted).
pub fn o200k() -> &'static super::o200k::O200k {
    static ENC: std::sync::LazyLock<super::o200k::O200k> =
        std::sync::LazyLock::new(super::o200k::O200k::new);
    &ENC
}

/// `text` cut into the strings of its o200k tokens (a token that ends inside a character is
/// joined with the next ones until the bytes are whole characters): what the mock vendor streams.
pub fn split_tokens(text: &str) -> Vec<String> {
    let enc = o200k();
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for id in enc.encode(text) {
        pending.extend_from_slice(&enc.decode(&[id]));
        if let Ok(s) = std::str::from_utf8(&pending) {
            out.push(s.to_string());
            pending.clear();
        }
    }
    if !pending.is_empty() {
        out.push(String::from_utf8_lossy(&pending).into_owned());
    }
    out
}

use super::openai::floor_char_boundary;

/// Text examined per estimate. Tokenising is CPU-bound (roughly tens of MB/s), so beyond
/// this the rest is estimated at 4 bytes per token.
const MAX_EXAMINED_BYTES: usize = 4 * 1024 * 1024;

/// Longest run without ASCII whitespace tokenised in one piece (see `TokenCounter::count`).
const MAX_RUN: usize = 64;

/// OpenAI chat framing: tokens per message and for priming the reply (see the OpenAI
/// cookbook "How to count tokens with tiktoken").
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const TOKENS_PER_CALL: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// Flat charge for an image: what OpenAI bills a 1024x1024 image at `detail: high`
/// (85 base + 4 tiles x 170); `detail: low` is a flat 85. Real cost depends on the image
/// size, which the gateway does not fetch.
const IMAGE_TOKENS: u64 = 765;
const IMAGE_TOKENS_LOW: u64 = 85;

/// Counts with the shared `o200k_base` encoder.
pub struct TokenCounter;

impl TokenCounter {
    /// Builds the encoder (~0.5 s) so the first request does not pay for it.
    pub fn warm_up() {
        let _ = o200k().count("warm up");
    }

    /// Tokens of `text`, special-token text counted as ordinary text, in time linear in its
    /// length: BPE merges within one pre-tokenised piece cost quadratic time, and a run of one
    /// letter is one piece (4 MiB of "a" took 3 s), so runs without whitespace longer than
    /// `MAX_RUN` bytes are counted in `MAX_RUN`-byte parts (a cut can only split a token in
    /// two: at most one more token per cut, never fewer).
    pub fn count(text: &str) -> u64 {
        let bpe = o200k();
        let bytes = text.as_bytes();
        let mut total = 0u64;
        let mut start = 0;
        let mut run = 0usize;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_whitespace() {
                run = 0;
            } else {
                run += 1;
                if run > MAX_RUN && text.is_char_boundary(i) {
                    let piece = text.get(start..i).unwrap_or("");
                    total += bpe.count(piece) as u64;
                    start = i;
                    run = 1;
                }
            }
            i += 1;
        }
        total + bpe.count(text.get(start..).unwrap_or("")) as u64
    }

    /// Estimated prompt tokens of a chat request: o200k count of every message's role,
    /// string content, `text` parts, name, refusal and tool call names/arguments, plus the
    /// JSON of tool/function definitions and of a `response_format` schema; 3 tokens per
    /// message, 1 per name or call, 3 for reply priming. Images count 765 each (85 at
    /// `detail: low`); audio and file parts count nothing. At most 4 MiB of text is
    /// tokenised, the rest counts as 4 bytes per token.
    pub fn estimate_chat_prompt(obj: &Map<String, Value>) -> u64 {
        estimate_chat(obj, &Rules::estimate(MAX_EXAMINED_BYTES))
    }

    /// An upper bound of what an o200k vendor counts for this chat request's prompt, for the
    /// credit hold (docs/billing.md): the estimate's count with every image at `image_tokens`,
    /// text beyond the tokenised 4 MiB at one token per byte, and a margin per tool definition
    /// (the vendor renders them in its own syntax) and per message (pieces counted apart may
    /// tokenise differently once joined).
    pub fn bound_chat_prompt(obj: &Map<String, Value>, image_tokens: u64) -> u64 {
        estimate_chat(obj, &Rules::bound(MAX_EXAMINED_BYTES, image_tokens))
    }

    /// An upper bound of an embeddings input's tokens (text beyond 4 MiB at one per byte).
    pub fn bound_embedding_input(obj: &Map<String, Value>) -> u64 {
        estimate_embedding(obj, &Rules::bound(MAX_EXAMINED_BYTES, 0))
    }

    /// Estimated tokens of an embeddings `input`: strings are tokenised (same 4 MiB cap),
    /// token id arrays count their length.
    pub fn estimate_embedding_input(obj: &Map<String, Value>) -> u64 {
        estimate_embedding(obj, &Rules::estimate(MAX_EXAMINED_BYTES))
    }
}

/// How a count is made: an estimate (what the vendor most likely counts) or a bound (never
/// below it).
struct Rules {
    /// Text tokenised at most; the rest is counted per byte.
    cap: usize,
    /// Bytes per token of text beyond `cap`.
    unexamined_bytes_per_token: u64,
    image_high: u64,
    image_low: u64,
    /// Added per message and per tool definition.
    margin: u64,
}

/// Tool-definition tokens the margin covers: OpenAI renders each function in a TypeScript-like
/// namespace whose keywords may outnumber a small schema's JSON.
const TOOL_MARGIN: u64 = 16;

impl Rules {
    fn estimate(cap: usize) -> Rules {
        Rules {
            cap,
            unexamined_bytes_per_token: 4,
            image_high: IMAGE_TOKENS,
            image_low: IMAGE_TOKENS_LOW,
            margin: 0,
        }
    }

    fn bound(cap: usize, image_tokens: u64) -> Rules {
        Rules {
            cap,
            unexamined_bytes_per_token: 1,
            image_high: image_tokens,
            image_low: image_tokens,
            margin: 1,
        }
    }
}

/// Sums token counts of text pieces while bounding how much text is tokenised.
struct Tally<'r> {
    tokens: u64,
    examined: usize,
    rules: &'r Rules,
    unexamined_bytes: u64,
}

impl<'r> Tally<'r> {
    fn new(rules: &'r Rules) -> Self {
        Tally {
            tokens: 0,
            examined: 0,
            rules,
            unexamined_bytes: 0,
        }
    }

    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let room = self.rules.cap.saturating_sub(self.examined);
        let cut = floor_char_boundary(s, room);
        if let Some(head) = s.get(..cut).filter(|h| !h.is_empty()) {
            self.tokens = self.tokens.saturating_add(TokenCounter::count(head));
            self.examined += cut;
        }
        self.unexamined_bytes = self.unexamined_bytes.saturating_add((s.len() - cut) as u64);
    }

    fn json(&mut self, v: &Value) {
        if self.examined >= self.rules.cap {
            // Serialising only to measure the length would be wasted work at this point.
            self.unexamined_bytes = self.unexamined_bytes.saturating_add(json_len_hint(v));
            return;
        }
        if let Ok(s) = serde_json::to_string(v) {
            self.text(&s);
        }
    }

    fn add(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_add(n);
    }

    fn total(&self) -> u64 {
        self.tokens.saturating_add(
            self.unexamined_bytes
                .div_ceil(self.rules.unexamined_bytes_per_token),
        )
    }
}

/// Rough serialised size of a value, without serialising it.
fn json_len_hint(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 5,
        Value::String(s) => s.len() as u64 + 2,
        Value::Array(a) => a.iter().map(json_len_hint).sum::<u64>() + a.len() as u64 + 2,
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| k.len() as u64 + 4 + json_len_hint(v))
            .sum::<u64>()
            .saturating_add(2),
    }
}

fn content_tokens(t: &mut Tally, content: &Value) {
    match content {
        Value::String(s) => t.text(s),
        Value::Array(parts) => {
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("image_url" | "input_image" | "image") => {
                        let detail = p
                            .get("image_url")
                            .and_then(|i| i.get("detail"))
                            .or_else(|| p.get("detail"))
                            .and_then(Value::as_str);
                        t.add(if detail == Some("low") {
                            t.rules.image_low
                        } else {
                            t.rules.image_high
                        });
                    }
                    _ => {
                        for key in ["text", "refusal"] {
                            if let Some(s) = p.get(key).and_then(Value::as_str) {
                                t.text(s);
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn call_tokens(t: &mut Tally, func: &Value) {
    for key in ["name", "arguments"] {
        if let Some(s) = func.get(key).and_then(Value::as_str) {
            t.text(s);
        }
    }
    t.add(TOKENS_PER_CALL);
}

fn estimate_chat(obj: &Map<String, Value>, rules: &Rules) -> u64 {
    let mut t = Tally::new(rules);
    if let Some(Value::Array(messages)) = obj.get("messages") {
        for m in messages {
            let Some(m) = m.as_object() else { continue };
            t.add(TOKENS_PER_MESSAGE + rules.margin);
            if let Some(role) = m.get("role").and_then(Value::as_str) {
                t.text(role);
            }
            if let Some(c) = m.get("content") {
                content_tokens(&mut t, c);
            }
            if let Some(name) = m.get("name").and_then(Value::as_str) {
                t.text(name);
                t.add(TOKENS_PER_NAME);
            }
            if let Some(r) = m.get("refusal").and_then(Value::as_str) {
                t.text(r);
            }
            if let Some(Value::Array(calls)) = m.get("tool_calls") {
                for f in calls.iter().filter_map(|c| c.get("function")) {
                    call_tokens(&mut t, f);
                }
            }
            if let Some(f) = m.get("function_call").filter(|f| f.is_object()) {
                call_tokens(&mut t, f);
            }
        }
    }
    for key in ["tools", "functions"] {
        if let Some(Value::Array(defs)) = obj.get(key) {
            for d in defs {
                t.json(d);
                t.add(rules.margin * TOOL_MARGIN);
            }
        }
    }
    if let Some(schema) = obj
        .get("response_format")
        .and_then(|rf| rf.get("json_schema"))
    {
        t.json(schema);
    }
    t.add(REPLY_PRIMING);
    t.total()
}

fn estimate_embedding(obj: &Map<String, Value>, rules: &Rules) -> u64 {
    let mut t = Tally::new(rules);
    match obj.get("input") {
        Some(Value::String(s)) => t.text(s),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => t.text(s),
                    Value::Number(_) => t.add(1),
                    Value::Array(ids) => t.add(ids.len() as u64),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    t.total()
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
    use serde_json::json;
    use tiktoken_rs::{
        num_tokens_from_messages, o200k_base_singleton, ChatCompletionRequestMessage, FunctionCall,
    };

    /// The compact encoder counts exactly as the reference (tiktoken-rs, a port of OpenAI's).
    #[test]
    fn counts_agree_with_the_reference_tokenizer() {
        let mut texts: Vec<String> = vec![
            "Hello, world! How are you today?".into(),
            "证明√2是无理数。请用中文写一首关于秋天的诗，然后翻译成英文。".repeat(20),
            "x9!".repeat(1500),
            "\u{20000}".repeat(300),
            " \n\n  \t hello   world\r\n\r\n".repeat(50),
            "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n".repeat(30),
            "<|endoftext|> is text here, and so is <|fim_prefix|>".into(),
            "ཀུན་ལ་བདེ་བ་ཡོད་པར་ཤོག ".repeat(40),
            "Ünïcödé — “quotes” ‘and’ dashes… 12345678901234 3.14159".repeat(10),
            "I'M HERE, you're there; they'LL go. DON'T".repeat(10),
        ];
        texts.push(prose(20_000));
        for t in &texts {
            assert_eq!(
                o200k().count(t),
                o200k_base_singleton().count_ordinary(t),
                "{:?}",
                &t[..floor_char_boundary(t, 60)]
            );
        }
        let pieces = split_tokens("这是一个测试 with mixed text 🦀!");
        assert_eq!(pieces.concat(), "这是一个测试 with mixed text 🦀!");
    }

    /// Our table-driven o200k against the reference on a corpus: the repository's documents
    /// (English, the console's Chinese, code, JSON), and thousands of generated strings that mix
    /// whitespace runs, line breaks, contractions, digits, CJK, combining marks and emoji (the
    /// places where pre-tokenisation is subtle). Same counts, same tokens, and decoding gives
    /// the text back.
    #[test]
    fn the_compiled_in_table_tokenizes_exactly_as_the_reference() {
        let reference = o200k_base_singleton();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts: Vec<String> = Vec::new();
        let mut files = vec![
            root.join("README.md"),
            root.join("src/console/i18n.toml"),
            root.join("tests/router/golden.jsonl"),
            root.join("src/protocol/tokens.rs"),
        ];
        for e in std::fs::read_dir(root.join("docs")).unwrap() {
            files.push(e.unwrap().path());
        }
        for f in &files {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            texts.extend(text.split("\n\n").map(str::to_string));
            texts.push(text);
        }
        let pool: Vec<&str> = vec![
            " ",
            "  ",
            "   ",
            "\t",
            "\n",
            "\r\n",
            "\n\n",
            " \n",
            "\u{3000}",
            "\u{a0}",
            "a",
            "The",
            "hello",
            "WORLD",
            "'s",
            "'LL",
            "'re",
            "don't",
            "1",
            "42",
            "12345",
            "3.14",
            "!",
            "?!",
            "...",
            "/",
            "//",
            "(",
            ")",
            "{",
            "}",
            "\"",
            "-",
            "_",
            "中文",
            "测试。",
            "，",
            "日本語",
            "한국어",
            "é",
            "e\u{301}",
            "🦀",
            "👍🏽",
            "\u{20000}",
            "ཀུན་",
            "Ünï",
            "CamelCase",
            "snake_case",
            "x9",
            "@",
            "#",
            "$",
            "%",
            "\\",
            "<|endoftext|>",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // ASCII alone (the tokenizer's fast path): every kind of whitespace, control bytes,
        // contractions in any case, digit runs, slashes after punctuation.
        let ascii: Vec<&str> = vec![
            " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", " \n ", "a", "Z", "word", "Word",
            "WORD", "wOrD", "'", "'s", "'S", "'re", "'RE", "'ll", "'Ll", "'ve", "'m", "'d", "'t",
            "'x", "0", "12", "345", "6789", ".", ",", "!", "?", "/", "//", ".\n/", "(", ")", "[",
            "]", "{", "}", "-", "_", "*", "#", "@", "\"", "\\", "\x00", "\x01", "\x1f", "\x7f",
            "~", "`",
        ];
        for (pieces, longest) in [(&pool, 24), (&ascii, 16)] {
            for _ in 0..4000 {
                let len = 1 + next() % longest;
                let t: String = (0..len)
                    .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                    .collect();
                texts.push(t);
            }
        }
        let ours = o200k();
        for t in &texts {
            let want = reference.encode_ordinary(t);
            let got = ours.encode(t);
            assert_eq!(got.len(), want.len(), "count of {t:?}");
            assert_eq!(got, want, "tokens of {t:?}");
            assert_eq!(ours.count(t), want.len(), "{t:?}");
            assert_eq!(ours.decode(&got), t.as_bytes());
        }
        assert!(texts.len() > 8500, "{}", texts.len());
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn counting_is_linear_and_never_below_the_whole_count() {
        // A single-letter run, a base64-like run and CJK without spaces: each takes
        // milliseconds per MiB, not seconds (no timing asserted: the counts are compared).
        let runs = [
            "a".repeat(1 << 20),
            "QmFzZTY0IHRleHQgd2l0aG91dCBzcGFjZXM".repeat(20_000),
            "\u{4e2d}\u{6587}".repeat(100_000),
        ];
        for r in &runs {
            let n = TokenCounter::count(r);
            assert!(n > 0);
            // Not below the count of the unsplit text, for a size where that is affordable.
            let small = &r[..floor_char_boundary(r, 4096)];
            let whole = o200k_base_singleton().count_ordinary(small) as u64;
            assert!(
                TokenCounter::count(small) >= whole,
                "{} < {whole}",
                TokenCounter::count(small)
            );
        }
        // Ordinary prose is counted exactly as before (no run reaches the cut).
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(1000);
        assert_eq!(
            TokenCounter::count(&prose),
            o200k_base_singleton().count_ordinary(&prose) as u64
        );
    }

    #[test]
    fn count_basic() {
        assert_eq!(TokenCounter::count(""), 0);
        assert_eq!(TokenCounter::count("hello world"), 2);
        // Special-token text is ordinary text, never an error or a panic.
        assert!(TokenCounter::count("<|endoftext|>") > 1);
    }

    #[test]
    fn chat_estimate_matches_cookbook_count() {
        let req = obj(json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant that answers in French."},
                {"role": "user", "name": "alice", "content": "What is the capital of Germany? Explain briefly."},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"city\":\"Berlin\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "Berlin is the capital."}
            ]
        }));
        let reference = num_tokens_from_messages(
            "gpt-4o",
            &[
                ChatCompletionRequestMessage {
                    role: "system".into(),
                    content: Some("You are a helpful assistant that answers in French.".into()),
                    ..Default::default()
                },
                ChatCompletionRequestMessage {
                    role: "user".into(),
                    name: Some("alice".into()),
                    content: Some("What is the capital of Germany? Explain briefly.".into()),
                    ..Default::default()
                },
                ChatCompletionRequestMessage {
                    role: "assistant".into(),
                    tool_calls: vec![FunctionCall {
                        name: "lookup".into(),
                        arguments: "{\"city\":\"Berlin\"}".into(),
                    }],
                    ..Default::default()
                },
                ChatCompletionRequestMessage {
                    role: "tool".into(),
                    content: Some("Berlin is the capital.".into()),
                    ..Default::default()
                },
            ],
        )
        .unwrap() as u64;
        assert_eq!(TokenCounter::estimate_chat_prompt(&req), reference);
    }

    #[test]
    fn chat_estimate_table() {
        let text_only = TokenCounter::estimate_chat_prompt(&obj(json!({
            "messages": [{"role": "user", "content": "Describe this picture in detail."}]
        })));
        let cases: Vec<(Value, u64)> = vec![
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Describe this picture in detail."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]}]}),
                text_only + 765,
            ),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Describe this picture in detail."},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
                ]}]}),
                text_only + 85,
            ),
            (json!({"messages": []}), 3),
            (json!({"messages": "nope"}), 3),
            (
                json!({"messages": [42, {"role": "user", "content": 7}]}),
                3 + 3 + 1,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(
                TokenCounter::estimate_chat_prompt(&obj(req.clone())),
                want,
                "{req}"
            );
        }
        let with_tools = obj(json!({
            "messages": [{"role": "user", "content": "Describe this picture in detail."}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "Get the weather for a city", "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
        }));
        let extra = TokenCounter::estimate_chat_prompt(&with_tools) - text_only;
        assert!((20..80).contains(&extra), "tool definition tokens: {extra}");
    }

    fn prose(bytes: usize) -> String {
        let words = [
            "the",
            "gateway",
            "forwards",
            "streamed",
            "completions",
            "while",
            "metering",
            "tokens",
            "for",
            "each",
            "tenant",
            "and",
            "channel",
            "with",
            "care",
        ];
        let mut s = String::with_capacity(bytes + 16);
        let mut i = 0usize;
        while s.len() < bytes {
            s.push_str(words[i % words.len()]);
            s.push(if i % 11 == 10 { '.' } else { ' ' });
            i = i.wrapping_mul(31).wrapping_add(7) % 1009;
        }
        s
    }

    #[test]
    fn cap_scales_by_bytes_per_token() {
        let text = prose(200_000);
        let req = obj(json!({"messages": [{"role": "user", "content": text}]}));
        let exact = estimate_chat(&req, &Rules::estimate(usize::MAX));
        let capped = estimate_chat(&req, &Rules::estimate(20_000));
        assert!(
            capped < exact * 2 && capped * 2 > exact,
            "{capped} vs {exact}"
        );
        // Only the first 20 000 bytes (4 of them the role) are tokenised; the rest is len/4.
        let head = TokenCounter::count(&text[..19_996]);
        let rest = (text.len() as u64 - 19_996).div_ceil(4);
        assert_eq!(capped, head + rest + 3 + 1 + 3);
        // Multi-byte text cut at the cap never splits a char (would panic if it did).
        let cjk = "统一网关".repeat(1000);
        let req = obj(json!({"messages": [{"role": "user", "content": cjk}]}));
        assert!(estimate_chat(&req, &Rules::estimate(1001)) > 0);
    }

    #[test]
    fn embedding_estimate_table() {
        let cases: Vec<(Value, u64)> = vec![
            (json!({"input": "hello world"}), 2),
            (json!({"input": ["hello world", "hello"]}), 3),
            (json!({"input": [1, 2, 3]}), 3),
            (json!({"input": [[1, 2], [3, 4, 5]]}), 5),
            (json!({"input": null}), 0),
        ];
        for (req, want) in cases {
            assert_eq!(
                TokenCounter::estimate_embedding_input(&obj(req.clone())),
                want,
                "{req}"
            );
        }
    }

    fn rss_kib() -> i64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Speed and resident memory of our table-driven o200k against the `tiktoken` crate (what
    /// the gateway used before) and tiktoken-rs, on prose, Chinese and code:
    /// `cargo test --release --lib bench_count -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_count_throughput() {
        let start = rss_kib();
        let ours = o200k();
        let _ = ours.count("warm up");
        let after_ours = rss_kib();
        let texts = [
            ("prose", prose(4 * 1024 * 1024)),
            (
                "chinese",
                "证明√2是无理数。请用中文写一首关于秋天的诗，然后翻译成英文。".repeat(40_000),
            ),
            (
                "code",
                std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/proxy/mod.rs"))
                    .unwrap()
                    .repeat(8),
            ),
        ];
        for (name, text) in &texts {
            let t = std::time::Instant::now();
            let n = ours.count(text);
            let el = t.elapsed();
            println!(
                "ours     {name:8} {:5.1} MiB: {n} tokens in {el:?} ({:.1} MB/s)",
                text.len() as f64 / 1_048_576.0,
                text.len() as f64 / 1e6 / el.as_secs_f64()
            );
        }
        let after_ours_counts = rss_kib();
        let crate_enc = tiktoken::encoding::o200k_base();
        let _ = crate_enc.count("warm up");
        let after_crate = rss_kib();
        for (name, text) in &texts {
            let t = std::time::Instant::now();
            let n = crate_enc.count(text);
            let el = t.elapsed();
            assert_eq!(n, ours.count(text), "{name}");
            println!(
                "tiktoken {name:8} {:5.1} MiB: {n} tokens in {el:?} ({:.1} MB/s)",
                text.len() as f64 / 1_048_576.0,
                text.len() as f64 / 1e6 / el.as_secs_f64()
            );
        }
        println!(
            "resident: start {start} KiB; ours built +{} KiB, after its counts +{} KiB; \
             tiktoken crate built +{} KiB",
            after_ours - start,
            after_ours_counts - start,
            after_crate - after_ours_counts
        );
    }
}
