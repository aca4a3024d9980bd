//! Prompt guardrails (issue 18): a tenant's policy on what its requests may carry. Detectors
//! for secrets (vendors' API keys, private keys, cloud credentials), personal data (email
//! addresses, Chinese and international phone numbers, PRC resident identity numbers with their
//! check digit, bank card numbers with Luhn's check) and the tenant's own keyword lists; each
//! with an action: `block` (400 in the caller's protocol, naming the detector, never the text),
//! `redact` (the match replaced by `[REDACTED:<detector>]` in the request as received, so every
//! protocol and translation path forwards the redacted text) or `log` (counted only).
//!
//! The scan runs on the request body as received, before it is parsed. Each detector has a gate,
//! a test at memchr speed of something every match contains (`@` for email; a run of 8 or more
//! digits for phone, ID and card numbers, found eight bytes at a time); its regex runs only when
//! the gate passes, and the secrets regex finds its literal prefixes (`sk-`, `AKIA`, ...) with the
//! regex crate's own SIMD prefilter. The common prompt (no `@`, no long number, no key) costs
//! those tests only. Matches are then checked (check digits) and counted or acted on.
//! Matched text is never logged or stored; `tollgate_guardrail_hits_total{detector, action}`
//! counts hits.

use regex::bytes::Regex;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What to do with a detector's hits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Off,
    Log,
    Redact,
    Block,
}

/// A tenant's policy as stored and as the admin API takes it.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Detector name → action: `secrets`, `email`, `phone`, `cn_id`, `bank_card`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub detectors: std::collections::BTreeMap<String, Action>,
    /// The tenant's own keyword lists (matched case-insensitively as whole text, not words).
    #[serde(default)]
    pub keywords: Vec<KeywordList>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeywordList {
    /// Shown in a block's message and the metrics (`keywords:<name>`).
    pub name: String,
    pub words: Vec<String>,
    pub action: Action,
}

/// The built-in detectors: name and pattern.
const DETECTORS: &[(&str, &str)] = &[
    (
        "secrets",
        r"(?:sk-ant-[A-Za-z0-9_\-]{20,}|sk-(?:proj-)?[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{35}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}|xox[baprs]-[A-Za-z0-9\-]{10,}|-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----)",
    ),
    (
        "email",
        r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}",
    ),
    // CN mobile numbers (optionally +86), and international numbers written with a `+`.
    (
        "phone",
        r"(?:(?:\+|00)86[ \-]?)?(?-u:\b)1[3-9][0-9]{9}(?-u:\b)|\+[1-9][0-9]{0,2}[ \-]?(?:[0-9][ \-]?){6,13}[0-9]",
    ),
    (
        "cn_id",
        r"(?-u:\b)[1-9][0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?-u:\b)",
    ),
    (
        "bank_card",
        r"(?-u:\b)[2-6][0-9]{3}(?:[ \-]?[0-9]{4}){2,3}(?:[ \-]?[0-9]{1,3})?(?-u:\b)",
    ),
];

/// The detector names, for validation.
pub fn detector_names() -> impl Iterator<Item = &'static str> {
    DETECTORS.iter().map(|(n, _)| *n)
}

/// A policy compiled for scanning.
pub struct Compiled {
    /// The built-in detectors in use, with their action, in `DETECTORS` order.
    active: Vec<(&'static str, Action, &'static Regex)>,
    keywords: Vec<(String, Action, aho_corasick::AhoCorasick)>,
}

/// What a detector's match cannot do without: a cheap test of the whole body that skips the
/// detector's regex when it fails (most prompts have no `@` and no long number).
#[derive(Clone, Copy)]
enum Gate {
    /// The regex's own literal prefilter is enough (`secrets`: `sk-`, `AKIA`, `-----BEGIN`...).
    None,
    /// A byte that every match contains (`@` for email).
    Byte(u8),
    /// A run of at least this many digits, single spaces or dashes allowed between them (phone
    /// numbers, ID numbers and card numbers all have 8 or more).
    Digits(u32),
}

fn gate_of(name: &str) -> Gate {
    match name {
        "email" => Gate::Byte(b'@'),
        "phone" | "cn_id" | "bank_card" => Gate::Digits(8),
        _ => Gate::None,
    }
}

/// Whether a 64-bit word has an ASCII digit byte (bytes strictly between 0x2F and 0x3A; the
/// "has between" test of Bit Twiddling Hacks, no carries for these bounds).
fn has_digit(x: u64) -> bool {
    const L: u64 = 0x0101_0101_0101_0101;
    const H: u64 = 0x8080_8080_8080_8080;
    let low7 = x & L.wrapping_mul(127);
    let below = L.wrapping_mul(127 + 0x3A).wrapping_sub(low7);
    let above = low7.wrapping_add(L.wrapping_mul(127 - 0x2F));
    below & !x & above & H != 0
}

/// Whether `body` has a run of `min` digits or more, with at most one space or dash between
/// two digits. Eight bytes at a time: a word with no digit ends any run.
fn has_digit_run(body: &[u8], min: u32) -> bool {
    let mut run = DigitRun::default();
    let mut words = body.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        if !has_digit(u64::from_le_bytes(a)) {
            run = DigitRun::default();
            continue;
        }
        if w.iter().any(|b| run.step(*b) >= min) {
            return true;
        }
    }
    words.remainder().iter().any(|b| run.step(*b) >= min)
}

/// Digits seen in a run so far, and whether the last byte was a separator.
#[derive(Default)]
struct DigitRun {
    count: u32,
    sep: bool,
}

impl DigitRun {
    fn step(&mut self, b: u8) -> u32 {
        if b.is_ascii_digit() {
            self.count += 1;
            self.sep = false;
        } else if (b == b' ' || b == b'-') && self.count > 0 && !self.sep {
            self.sep = true;
        } else {
            *self = DigitRun::default();
        }
        self.count
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field(
                "detectors",
                &self.active.iter().map(|a| a.0).collect::<Vec<_>>(),
            )
            .field("keyword_lists", &self.keywords.len())
            .finish()
    }
}

fn regexes() -> &'static Vec<Regex> {
    static R: OnceLock<Vec<Regex>> = OnceLock::new();
    R.get_or_init(|| {
        DETECTORS
            .iter()
            .filter_map(|(_, p)| Regex::new(p).ok())
            .collect()
    })
}

/// What a scan found: detector label and matches, in the order first found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hits(Vec<(String, u32)>);

impl Hits {
    fn add(&mut self, label: &str) {
        match self.0.iter_mut().find(|(l, _)| l == label) {
            Some((_, n)) => *n += 1,
            None => self.0.push((label.to_string(), 1)),
        }
    }

    /// `email=2,keywords:codenames=1` (the usage record's `guardrails`); `None`: no hit.
    pub fn summary(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(l, n)| format!("{l}={n}"))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// What a scan decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Blocked by this detector (`keywords:<list>` for a keyword list).
    Block(String),
    /// The body with the matches replaced.
    Redacted(Vec<u8>),
}

/// The check digit of an 18-digit PRC resident identity number (ISO 7064 MOD 11-2).
fn cn_id_valid(s: &[u8]) -> bool {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    if s.len() != 18 {
        return false;
    }
    let sum: u32 = s[..17]
        .iter()
        .zip(W)
        .map(|(d, w)| u32::from(d.wrapping_sub(b'0')) * w)
        .sum();
    C[(sum % 11) as usize] == s[17].to_ascii_uppercase()
}

/// Luhn's check over the digits of `s` (separators ignored), 13 to 19 digits.
fn luhn_valid(s: &[u8]) -> bool {
    let digits: Vec<u32> = s
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

impl Compiled {
    pub fn new(p: &Policy) -> Result<Compiled, String> {
        let all = regexes();
        let mut active = Vec::new();
        for (i, (name, _)) in DETECTORS.iter().enumerate() {
            match p.detectors.get(*name).copied().unwrap_or(Action::Off) {
                Action::Off => {}
                a => {
                    let re = all.get(i).ok_or("a detector did not compile")?;
                    active.push((*name, a, re));
                }
            }
        }
        for k in p.detectors.keys() {
            if !DETECTORS.iter().any(|(n, _)| n == k) {
                return Err(format!("unknown detector `{k}`"));
            }
        }
        let mut keywords = Vec::new();
        for list in &p.keywords {
            let words: Vec<&str> = list
                .words
                .iter()
                .map(|w| w.trim())
                .filter(|w| !w.is_empty())
                .collect();
            if list.action == Action::Off || words.is_empty() {
                continue;
            }
            let ac = aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&words)
                .map_err(|e| e.to_string())?;
            keywords.push((list.name.clone(), list.action, ac));
        }
        Ok(Compiled { active, keywords })
    }

    /// A policy once compiled (tenants share keys' compiled policies by text).
    pub fn cached(text: &str) -> Option<Arc<Compiled>> {
        static CACHE: OnceLock<Mutex<HashMap<String, Arc<Compiled>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = c.get(text) {
            return Some(hit.clone());
        }
        let policy: Policy = serde_json::from_str(text).ok()?;
        let compiled = Arc::new(Compiled::new(&policy).ok()?);
        if compiled.active.is_empty() && compiled.keywords.is_empty() {
            return None;
        }
        if c.len() > 10_000 {
            c.clear();
        }
        c.insert(text.to_string(), compiled.clone());
        Some(compiled)
    }

    /// Scans a request body; `hits` gets one entry per detector that matched (its label and
    /// how often: what the usage record keeps, never the text).
    pub fn scan(&self, body: &[u8], hits: &mut Hits) -> Verdict {
        // (start, end, label) of matches to redact.
        let mut cuts: Vec<(usize, usize, String)> = Vec::new();
        // Each gate is computed once per body, when a detector that needs it is on.
        let mut digits: Option<bool> = None;
        // Where the body's text is (string values of content fields), found on the first match.
        let mut texts: Option<Texts> = None;
        for (name, action, re) in &self.active {
            let maybe = match gate_of(name) {
                Gate::None => true,
                Gate::Byte(b) => memchr::memchr(b, body).is_some(),
                Gate::Digits(n) => *digits.get_or_insert_with(|| has_digit_run(body, n)),
            };
            if !maybe {
                continue;
            }
            for m in re.find_iter(body) {
                let text = m.as_bytes();
                let real = match *name {
                    "cn_id" => cn_id_valid(text),
                    "bank_card" => luhn_valid(text),
                    _ => true,
                };
                if !real
                    || !texts
                        .get_or_insert_with(|| Texts::of(body))
                        .holds(m.start(), m.end())
                {
                    continue;
                }
                crate::metrics::METRICS
                    .guardrail_hits
                    .with_label_values(&[name, action_name(*action)])
                    .inc();
                hits.add(name);
                match action {
                    Action::Block => return Verdict::Block((*name).to_string()),
                    Action::Redact => cuts.push((m.start(), m.end(), (*name).to_string())),
                    _ => {}
                }
            }
        }
        for (name, action, ac) in &self.keywords {
            for m in ac.find_iter(body) {
                if !texts
                    .get_or_insert_with(|| Texts::of(body))
                    .holds(m.start(), m.end())
                {
                    continue;
                }
                let label = format!("keywords:{name}");
                crate::metrics::METRICS
                    .guardrail_hits
                    .with_label_values(&["keywords", action_name(*action)])
                    .inc();
                hits.add(&label);
                match action {
                    Action::Block => return Verdict::Block(label),
                    Action::Redact => cuts.push((m.start(), m.end(), label)),
                    _ => {}
                }
            }
        }
        if cuts.is_empty() {
            return Verdict::Pass;
        }
        cuts.sort_by_key(|c| (c.0, std::cmp::Reverse(c.1)));
        let mut out = Vec::with_capacity(body.len());
        let mut at = 0;
        for (start, end, label) in cuts {
            if start < at {
                continue; // overlaps a longer match already cut
            }
            out.extend_from_slice(&body[at..start]);
            out.extend_from_slice(format!("[REDACTED:{label}]").as_bytes());
            at = end;
        }
        out.extend_from_slice(&body[at..]);
        Verdict::Redacted(out)
    }
}

/// Fields whose string values are identifiers or encoded data, not text a person wrote: a
/// match there is not acted on (a keyword list with "user" must not block every chat request
/// for its `"role": "user"`, nor a digit run inside an image's base64 be "redacted").
const NOT_TEXT: &[&[u8]] = &[
    b"model",
    b"role",
    b"type",
    b"id",
    b"object",
    b"name",
    b"tool_call_id",
    b"tool_use_id",
    b"call_id",
    b"url",
    b"data",
    b"media_type",
    b"mime_type",
    b"detail",
    b"format",
    b"encoding_format",
    b"stop_reason",
    b"finish_reason",
    b"service_tier",
    b"reasoning_effort",
    b"file_id",
    b"signature",
    b"cache_control",
    b"previous_response_id",
];

/// The string values of a JSON body that carry text (content, prompts, tool arguments and
/// results, descriptions...): byte ranges between the quotes, in order. Keys and the values of
/// `NOT_TEXT` fields are left out. Built only when a detector matched somewhere (rare), by one
/// pass over the bytes; a body that is not JSON has no text (the request is refused later).
struct Texts(Vec<(usize, usize)>);

impl Texts {
    fn of(body: &[u8]) -> Texts {
        let mut spans = Vec::new();
        // Per open container: the key its values are named by (an array's items take the key
        // that named the array).
        let mut names: Vec<Option<(usize, usize)>> = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'"' => {
                    let start = i + 1;
                    i = start;
                    // To the closing quote, a memchr jump at a time (text is most of a body).
                    while let Some(k) = body.get(i..).and_then(|r| memchr::memchr2(b'"', b'\\', r))
                    {
                        i += k;
                        if body[i] == b'"' {
                            break;
                        }
                        i += 2;
                    }
                    if body.get(i) != Some(&b'"') {
                        i = body.len();
                    }
                    let end = i.min(body.len());
                    i += 1;
                    let mut j = i;
                    while j < body.len() && body[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if body.get(j) == Some(&b':') {
                        if let Some(top) = names.last_mut() {
                            *top = Some((start, end));
                        }
                    } else {
                        let named = names.last().copied().flatten();
                        let text = named.is_none_or(|(a, b)| !NOT_TEXT.contains(&&body[a..b]));
                        if text {
                            spans.push((start, end));
                        }
                    }
                    continue;
                }
                b'{' => names.push(None),
                b'[' => {
                    let named = names.last().copied().flatten();
                    names.push(named);
                }
                b'}' | b']' => {
                    names.pop();
                }
                _ => {}
            }
            i += 1;
        }
        Texts(spans)
    }

    /// Whether `start..end` lies inside one text value.
    fn holds(&self, start: usize, end: usize) -> bool {
        let i = self.0.partition_point(|(s, _)| *s <= start);
        i > 0 && self.0[i - 1].1 >= end
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Off => "off",
        Action::Log => "log",
        Action::Redact => "redact",
        Action::Block => "block",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(action: Action) -> Compiled {
        let mut p = Policy::default();
        for n in detector_names() {
            p.detectors.insert(n.to_string(), action);
        }
        p.keywords.push(KeywordList {
            name: "projects".into(),
            words: vec!["Project Falcon".into()],
            action,
        });
        Compiled::new(&p).unwrap()
    }

    #[test]
    fn check_digits_are_checked() {
        assert!(cn_id_valid(b"11010519491231002X"));
        assert!(!cn_id_valid(b"110105194912310021"));
        assert!(luhn_valid(b"4111 1111 1111 1111"));
        assert!(!luhn_valid(b"4111 1111 1111 1112"));
    }

    #[test]
    fn each_detector_finds_its_kind_and_not_look_alikes() {
        let c = policy(Action::Block);
        // Each text as a user message's content (what is scanned is the body's text).
        let blocked = |s: &str| {
            let body = serde_json::json!({"messages": [{"role": "user", "content": s}]});
            match c.scan(body.to_string().as_bytes(), &mut Hits::default()) {
                Verdict::Block(d) => Some(d),
                _ => None,
            }
        };
        assert_eq!(
            blocked(r#"{"content":"my key is sk-proj-abcdefghijklmnopqrstuvwx"}"#).as_deref(),
            Some("secrets")
        );
        assert_eq!(blocked("AKIAIOSFODNN7EXAMPLE").as_deref(), Some("secrets"));
        assert_eq!(
            blocked("-----BEGIN RSA PRIVATE KEY-----\\nMIIE").as_deref(),
            Some("secrets")
        );
        assert_eq!(
            blocked("write to alice@example.com").as_deref(),
            Some("email")
        );
        assert_eq!(blocked("call 13812345678 now").as_deref(), Some("phone"));
        assert_eq!(blocked("call +44 20 7946 0958").as_deref(), Some("phone"));
        assert_eq!(
            blocked("身份证 11010519491231002X 号").as_deref(),
            Some("cn_id")
        );
        assert_eq!(
            blocked("card 4111 1111 1111 1111").as_deref(),
            Some("bank_card")
        );
        assert_eq!(
            blocked("about project falcon").as_deref(),
            Some("keywords:projects")
        );
        // Look-alikes: a wrong check digit, a failing Luhn, an ordinary number, plain text.
        assert_eq!(blocked("id 110105194912310021"), None);
        assert_eq!(blocked("order 4111 1111 1111 1112"), None);
        assert_eq!(blocked("the year 2026 had 365 days; 12345678"), None);
        assert_eq!(
            blocked(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#),
            None
        );
    }

    #[test]
    fn redaction_replaces_only_the_matches_and_keeps_json_valid() {
        let c = policy(Action::Redact);
        let body = r#"{"messages":[{"role":"user","content":"mail bob@corp.cn, card 4111-1111-1111-1111, key sk-ant-api03-abcdefghijklmnopqrstu"}]}"#;
        let Verdict::Redacted(out) = c.scan(body.as_bytes(), &mut Hits::default()) else {
            panic!("nothing redacted")
        };
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let content = v["messages"][0]["content"].as_str().unwrap();
        assert_eq!(
            content,
            "mail [REDACTED:email], card [REDACTED:bank_card], key [REDACTED:secrets]"
        );
        let mut hits = Hits::default();
        assert_eq!(
            policy(Action::Log).scan(body.as_bytes(), &mut hits),
            Verdict::Pass
        );
        assert_eq!(
            hits.summary().as_deref(),
            Some("secrets=1,email=1,bank_card=1"),
            "counts per detector, never the text"
        );
        let twice = r#"{"content":"a@b.cn and c@d.cn, Project Falcon"}"#;
        let mut hits = Hits::default();
        policy(Action::Log).scan(twice.as_bytes(), &mut hits);
        assert_eq!(
            hits.summary().as_deref(),
            Some("email=2,keywords:projects=1")
        );
        assert_eq!(Hits::default().summary(), None);
    }

    /// Cost of a scan (bench/README.md): `cargo test --release --lib scan_cost -- --ignored
    /// --nocapture`. Prints medians; asserts nothing about time.
    #[test]
    #[ignore]
    fn scan_cost() {
        let c = policy(Action::Redact);
        let bench = br#"{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Summarise the quarterly numbers for the board in three bullet points."}]}"#.to_vec();
        let sentence =
            "The committee reviewed the budget, the hiring plan and the roadmap for next year; ";
        let mut big = String::from(r#"{"model":"gpt-4o","messages":[{"role":"user","content":""#);
        while big.len() < 10_240 {
            big.push_str(sentence);
        }
        big.push_str(r#""}]}"#);
        // The same prompt with a contact line in the middle: every gate passes, the regexes run.
        let mid = big.len() / 2;
        let mut hit = big.clone();
        hit.insert_str(mid, "Write to ops@example.com or call 138 1234 5678. ");
        for (name, body, pass) in [
            ("bench body", bench, true),
            ("10 KB", big.into_bytes(), true),
            (
                "10 KB with an email and a phone number",
                hit.into_bytes(),
                false,
            ),
        ] {
            let mut times = Vec::new();
            for _ in 0..21 {
                let t = std::time::Instant::now();
                for _ in 0..1000 {
                    let v = c.scan(std::hint::black_box(&body), &mut Hits::default());
                    assert_eq!(v == Verdict::Pass, pass);
                }
                times.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{name} ({} bytes): median {:.0} ns per scan ({:.0} ns per KB)",
                body.len(),
                times[10],
                times[10] * 1024.0 / body.len() as f64
            );
        }
    }

    #[test]
    fn only_text_is_scanned_not_json_structure_or_identifiers() {
        let mut p = Policy::default();
        p.detectors.insert("bank_card".into(), Action::Block);
        p.keywords.push(KeywordList {
            name: "words".into(),
            words: vec!["user".into(), "gpt".into()],
            action: Action::Block,
        });
        let c = Compiled::new(&p).unwrap();
        let scan = |b: &str| c.scan(b.as_bytes(), &mut Hits::default());
        // Keys, roles and the model name are not text.
        assert_eq!(
            scan(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#),
            Verdict::Pass
        );
        // The same words in a message are.
        assert_eq!(
            scan(r#"{"model":"x","messages":[{"role":"user","content":"ask the user"}]}"#),
            Verdict::Block("keywords:words".into())
        );
        assert_eq!(
            scan(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a gpt"}]}]}"#),
            Verdict::Block("keywords:words".into())
        );
        // A card number inside an image's base64 is not acted on; in text it is.
        assert_eq!(
            scan(
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA4111111111111111AAAA"}}]}]}"#
            ),
            Verdict::Pass
        );
        assert_eq!(
            scan(r#"{"messages":[{"role":"user","content":"card 4111111111111111"}]}"#),
            Verdict::Block("bank_card".into())
        );
        // Escaped quotes do not end a string; tool arguments and system prompts are text.
        assert_eq!(
            scan(r#"{"system":"say \"hi\" to the user","messages":[]}"#),
            Verdict::Block("keywords:words".into())
        );
        // Bodies cut anywhere (an unterminated string, a trailing backslash) do not panic.
        for cut in [
            &br#"{"content":"ab\"#[..],
            br#"{"content":"ab"#,
            br#"{"#,
            b"\"",
            b"",
        ] {
            let _ = Texts::of(cut);
            let _ = scan(std::str::from_utf8(cut).unwrap_or(""));
        }
        let t = Texts::of(br#"{"a":"xy","model":"m","b":["p","q"]}"#);
        assert_eq!(t.0.len(), 3, "xy, p, q");
        assert!(t.holds(6, 8) && !t.holds(6, 9));
    }

    #[test]
    fn the_digit_gate_finds_runs_across_words_and_separators() {
        for b in 0u8..=255 {
            let word = u64::from_le_bytes([b'a', b'b', b, b'c', b'd', b'e', b'f', b'g']);
            assert_eq!(has_digit(word), b.is_ascii_digit(), "byte {b}");
        }
        assert!(!has_digit(u64::from_le_bytes(*b"\xff\x80/:;~ A")));
        let run = |s: &str| has_digit_run(s.as_bytes(), 8);
        assert!(run("call 13812345678 now"));
        assert!(
            run("xxxxxx1234 5678xxxxxxxxx"),
            "across an 8-byte word, one space"
        );
        assert!(run("+1 415-555-0100"));
        assert!(run("4111-1111-1111-1111"));
        assert!(!run("in 2026, 1234567 of them"));
        assert!(!run("12  345678 9"), "two separators end a run");
        assert!(!run("1234--5678"));
        assert!(run("12345678"), "a whole short body");
        assert!(!run(""));
    }

    #[test]
    fn unknown_detectors_are_refused() {
        let mut p = Policy::default();
        p.detectors.insert("ssn".into(), Action::Block);
        assert!(Compiled::new(&p).is_err());
    }
}
