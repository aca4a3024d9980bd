//! An OpenAI chat body read without building its JSON tree, and its upstream body spliced from
//! the caller's bytes.
//!
//! The common call (an OpenAI caller, OpenAI-protocol upstreams, a concrete model) needs a
//! handful of facts from the body (`ChatRequestInfo`) and one edit for the upstream: the model
//! name, plus `stream_options.include_usage` on streams. Building a `serde_json::Value` for
//! that allocates every string of every message (a long conversation is megabytes of them) and
//! serialising it back copies it all again. [`scan`] validates the whole body with serde_json
//! (`RawValue` spans, nothing allocated for message text), reads the small top-level fields as
//! values with the same checks as `openai::parse_chat_request`, and records where the edits
//! go; [`splice`] writes the upstream body as the caller's bytes with those edits.
//!
//! The scan accepts only what the tree reading accepts, with the same result: for anything it
//! is not sure about (an invalid field, a duplicate key, a key written with escapes, a
//! `\uD800`-style escape in message text, a number the tree reading would refuse) it returns
//! `None` and the caller reads the tree, which then gives the precise error or the result.

use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::openai::{self, ChatRequestInfo};

/// Where the upstream body's `stream_options.include_usage: true` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UsageEdit {
    /// No `stream_options`: add the member before the object's closing brace (at this offset).
    Add { close: usize },
    /// `"stream_options": null`: this span becomes the object.
    ReplaceNull(Range<usize>),
    /// The value span of an existing `include_usage`: becomes `true`.
    SetValue(Range<usize>),
    /// A `stream_options` object without `include_usage`: insert it after its `{`.
    Insert { after_brace: usize, empty: bool },
}

/// A chat body's facts and where its edits go (offsets into the scanned bytes).
#[derive(Debug, Clone)]
pub struct ChatScan {
    pub info: ChatRequestInfo,
    model: Range<usize>,
    usage: UsageEdit,
}

/// The members of a JSON object in order, values as raw spans of the input.
struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                // A key with escapes cannot be borrowed: an error here, the tree reading then.
                while let Some((k, v)) = map.next_entry::<&'de str, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The tree keeps the last of duplicate keys; rather than mimic that, the tree reading decides.
fn has_duplicates(keys: &[(&str, &RawValue)]) -> bool {
    if keys.len() <= 16 {
        keys.iter()
            .enumerate()
            .any(|(i, (k, _))| keys[..i].iter().any(|(j, _)| j == k))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        !keys.iter().all(|(k, _)| seen.insert(*k))
    }
}

/// A chat body in one pass: its top-level members but `messages` as raw spans, and each
/// message's members as raw spans (message text is validated, not copied).
struct Body<'a> {
    members: Vec<(&'a str, &'a RawValue)>,
    messages: Vec<Members<'a>>,
    messages_seen: usize,
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut body = Body {
                    members: Vec::new(),
                    messages: Vec::new(),
                    messages_seen: 0,
                };
                while let Some(k) = map.next_key::<&'de str>()? {
                    if k == "messages" {
                        // Not an array of objects: an error here, the tree reading then.
                        body.messages = map.next_value()?;
                        body.messages_seen += 1;
                    } else {
                        body.members.push((k, map.next_value()?));
                    }
                }
                Ok(body)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let m: Members = serde_json::from_str(text).ok()?;
        (!has_duplicates(&m.0)).then_some(m)
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// `raw` as a value, read as the tree reading reads it `depth` containers deep (serde_json
/// refuses nesting past 127 containers, counted from the top of the body).
fn value(raw: &RawValue, depth: usize) -> Option<Value> {
    let text = raw.get();
    if depth == 0 || !text.starts_with(['[', '{']) {
        return serde_json::from_str(text).ok();
    }
    let mut v: Value =
        serde_json::from_str(&format!("{}{text}{}", "[".repeat(depth), "]".repeat(depth))).ok()?;
    for _ in 0..depth {
        v = match v {
            Value::Array(mut a) if a.len() == 1 => a.pop()?,
            _ => return None,
        };
    }
    Some(v)
}

/// The span of `part` (a slice of `whole`) in `whole`.
fn span(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Reads a chat body as `openai::parse_chat_request` does, without its tree; `None` when the
/// tree reading must decide (see the module).
pub fn scan(body: &[u8]) -> Option<ChatScan> {
    let text = std::str::from_utf8(body).ok()?;
    let body: Body = serde_json::from_str(text).ok()?;
    if body.messages_seen != 1 || body.messages.is_empty() || has_duplicates(&body.members) {
        return None;
    }
    let top = Members(body.members);
    // Every top-level member but `messages` is small: read as values, checked as the tree
    // reading checks them.
    let mut small = Map::new();
    for (k, v) in &top.0 {
        small.insert((*k).to_owned(), value(v, 1)?);
    }
    let model = openai::required_model(&small).ok()?;
    let model_span = span(text, top.get("model")?.get());

    let mut media = super::Media::default();
    for m in &body.messages {
        if has_duplicates(&m.0) {
            return None;
        }
        let mut has_role = false;
        for (k, v) in &m.0 {
            match *k {
                "content" if v.get().starts_with('"') => {
                    // Text: validated by the scan already, except that escaped lone surrogates
                    // pass it and not the tree reading. Escaped pairs are common (emoji from
                    // ASCII-only serialisers): those bodies take the tree reading.
                    let t = v.get().as_bytes();
                    if memchr::memmem::find(t, b"\\ud").is_some()
                        || memchr::memmem::find(t, b"\\uD").is_some()
                    {
                        return None;
                    }
                }
                "content" => {
                    if let Value::Array(parts) = value(v, 3)? {
                        parts.iter().for_each(|p| media.add(p));
                    }
                }
                "role" => has_role = matches!(value(v, 3)?, Value::String(_)),
                // Other members (name, tool calls...) are read as values: the tree reading
                // refuses what they could hide (a number out of range).
                _ => {
                    value(v, 3)?;
                }
            }
        }
        if !has_role {
            return None;
        }
    }
    let info = openai::chat_fields(&small, model, media).ok()?;

    let usage = match top.get("stream_options") {
        None => {
            let close = text.trim_end().len().checked_sub(1)?;
            UsageEdit::Add { close }
        }
        Some(so) if so.get() == "null" => UsageEdit::ReplaceNull(span(text, so.get())),
        Some(so) => {
            let members = Members::parse(so.get())?;
            match members.get("include_usage") {
                Some(v) => UsageEdit::SetValue(span(text, v.get())),
                None => UsageEdit::Insert {
                    after_brace: span(text, so.get()).start + 1,
                    empty: members.0.is_empty(),
                },
            }
        }
    };
    Some(ChatScan {
        info,
        model: model_span,
        usage,
    })
}

/// The upstream body: the scanned `body` with `model` set to `upstream_model` and, for a
/// stream, `stream_options.include_usage` set to true (what `openai::rewrite_chat_request`
/// does to the tree; members keep the caller's order and formatting).
pub fn splice(body: &[u8], scan: &ChatScan, upstream_model: &str, stream: bool) -> Vec<u8> {
    // A string serialises infallibly.
    let model = serde_json::to_vec(upstream_model).unwrap_or_default();
    let mut edits: Vec<(Range<usize>, &[u8])> = vec![(scan.model.clone(), &model)];
    if stream {
        edits.push(match &scan.usage {
            UsageEdit::Add { close } => (
                *close..*close,
                b",\"stream_options\":{\"include_usage\":true}",
            ),
            UsageEdit::ReplaceNull(r) => (r.clone(), b"{\"include_usage\":true}"),
            UsageEdit::SetValue(r) => (r.clone(), b"true"),
            UsageEdit::Insert { after_brace, empty } => (
                *after_brace..*after_brace,
                if *empty {
                    b"\"include_usage\":true"
                } else {
                    b"\"include_usage\":true,"
                },
            ),
        });
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0;
    for (r, with) in edits {
        out.extend_from_slice(&body[at..r.start]);
        out.extend_from_slice(with);
        at = r.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The scan agrees with the tree reading on `body`: where it answers, the tree reading
    /// succeeds with the same facts, and the spliced upstream body is the rewritten tree.
    fn check(body: &[u8]) -> bool {
        let tree = openai::parse_chat_request(body);
        let Some(sc) = scan(body) else {
            return false;
        };
        let (mut obj, info) = match tree {
            Ok(t) => t,
            Err(e) => panic!(
                "scan accepted what the tree refuses ({e}): {}",
                String::from_utf8_lossy(body)
            ),
        };
        assert_eq!(sc.info, info, "{}", String::from_utf8_lossy(body));
        for stream in [false, true] {
            let spliced = splice(body, &sc, "up/model-\"x\"", stream);
            let rewritten =
                openai::rewrite_chat_request(&mut obj.clone(), "up/model-\"x\"", stream);
            let a: Value = serde_json::from_slice(&spliced).unwrap_or_else(|e| {
                panic!(
                    "spliced body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&spliced)
                )
            });
            let b: Value = serde_json::from_slice(&rewritten).unwrap();
            assert_eq!(a, b, "{}", String::from_utf8_lossy(body));
        }
        obj.clear();
        true
    }

    #[test]
    fn common_bodies_are_scanned_and_spliced_like_the_tree() {
        let cases: &[&str] = &[
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","stream":true,"messages":[{"role":"system","content":"be \"terse\"\n"},{"role":"user","content":"hé 😀"}]}"#,
            r#" { "messages" : [ {"content":"x","role":"user","name":"bob"} ] , "model" : "m" , "stream" : true } "#,
            r#"{"model":"m","stream":true,"stream_options":null,"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","stream":true,"stream_options":{},"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","stream":true,"stream_options":{ },"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1},"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","stream":true,"stream_options":{"x":[1,2]},"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","max_tokens":100.0,"n":2,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#,
            r#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required","response_format":{"type":"json_schema"},"messages":[{"role":"user","content":null},{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"tab\tand \u00e9 escaped"}],"max_completion_tokens":5,"max_tokens":7}"#,
        ];
        for c in cases {
            assert!(check(c.as_bytes()), "not scanned: {c}");
        }
    }

    #[test]
    fn nesting_is_limited_as_in_the_tree() {
        // serde_json refuses more than 127 nested containers, counted from the top.
        for depth in [120usize, 124, 125, 126, 130] {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for body in [
                format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":"x","extra":{deep}}}]}}"#
                ),
                format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"extra":{deep}}}"#
                ),
            ] {
                let tree_ok = openai::parse_chat_request(body.as_bytes()).is_ok();
                assert_eq!(scan(body.as_bytes()).is_some(), tree_ok, "depth {depth}");
                if tree_ok {
                    assert!(check(body.as_bytes()));
                }
            }
        }
    }

    #[test]
    fn doubtful_bodies_are_left_to_the_tree() {
        let cases: &[&[u8]] = &[
            br#"{"model":"m","model":"n","messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","role":"system","content":"x"}]}"#,
            br#"{"mod\u0065l":"m","messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"\ud83d\ude00"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x","n":1e400}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e400}"#,
            br#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","messages":[{"content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":1,"content":"x"}]}"#,
            br#"{"model":"m","messages":["x"]}"#,
            br#"{"model":"m","messages":{}}"#,
            br#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","stream_options":[],"messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","n":0,"messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]} x"#,
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
            br#"[1]"#,
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\x01b\"}]}",
        ];
        for c in cases {
            assert!(scan(c).is_none(), "scanned: {}", String::from_utf8_lossy(c));
        }
    }

    /// Random bodies assembled from valid and invalid pieces: the scan never accepts what the
    /// tree refuses, never disagrees with it, and takes most of the valid ones.
    #[test]
    fn scan_agrees_with_the_tree_on_random_bodies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let texts = [
            r#""hello""#,
            r#""line\nbreak \"q\" \\ \/ \u00e9""#,
            r#""😀 unicode""#,
            r#""\ud83d\ude00""#,
            r#""""#,
            "null",
            r#"[{"type":"text","text":"a"}]"#,
            r#"[{"type":"image_url","image_url":{"url":"u"}}]"#,
            r#"[{"type":"input_image"}, 3]"#,
            "12",
            r#"{"a":1}"#,
        ];
        let roles = [r#""user""#, r#""system""#, "7", "null", r#""""#];
        let scalars = [
            "true",
            "false",
            "null",
            "0",
            "1",
            "16",
            "-1",
            "2.0",
            "2.5",
            "1e3",
            "1e400",
            r#""s""#,
            "[]",
            "{}",
            "4294967296",
            "18446744073709551616",
        ];
        let optional = [
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "temperature",
            "user",
        ];
        let (mut accepted, mut valid) = (0, 0);
        for _ in 0..4000 {
            let mut members: Vec<String> = Vec::new();
            if rng.random_bool(0.95) {
                let m = [r#""gpt-4o""#, r#""a\"b""#, r#""""#, "3"]
                    [rng.random_range(0..4).min(rng.random_range(0..4))];
                members.push(format!(r#""model":{m}"#));
            }
            if rng.random_bool(0.95) {
                let n = rng.random_range(0..4);
                let msgs: Vec<String> = (0..n)
                    .map(|_| {
                        let mut fields = Vec::new();
                        if rng.random_bool(0.95) {
                            let r = if rng.random_bool(0.8) {
                                0
                            } else {
                                rng.random_range(0..roles.len())
                            };
                            fields.push(format!(r#""role":{}"#, roles[r]));
                        }
                        if rng.random_bool(0.9) {
                            fields.push(format!(
                                r#""content":{}"#,
                                texts[rng.random_range(0..texts.len())]
                            ));
                        }
                        if rng.random_bool(0.1) {
                            fields.push(format!(
                                r#""name":{}"#,
                                scalars[rng.random_range(0..scalars.len())]
                            ));
                        }
                        if rng.random_bool(0.03) {
                            fields.push(r#""role":"user""#.to_string());
                        }
                        format!("{{{}}}", fields.join(","))
                    })
                    .collect();
                members.push(format!(r#""messages":[{}]"#, msgs.join(",")));
            }
            for k in optional {
                if rng.random_bool(0.25) {
                    // Mostly values every field takes, sometimes anything.
                    let v = if rng.random_bool(0.6) {
                        ["null", "1", "16"][rng.random_range(0..3)]
                    } else {
                        scalars[rng.random_range(0..scalars.len())]
                    };
                    members.push(format!(r#""{k}":{v}"#));
                }
            }
            if rng.random_bool(0.3) {
                let v = [
                    "null",
                    "{}",
                    r#"{"include_usage":true}"#,
                    r#"{"include_usage":false,"x":1}"#,
                    r#"{"x":{"y":[]}}"#,
                    "[]",
                ][rng.random_range(0..6)];
                members.push(format!(r#""stream_options":{v}"#));
            }
            if rng.random_bool(0.2) {
                let v = [r#"[{"type":"function"}]"#, "[]", "null", "3"][rng.random_range(0..4)];
                members.push(format!(r#""tools":{v}"#));
            }
            if rng.random_bool(0.1) {
                let v = [
                    r#"{"type":"json_schema"}"#,
                    r#"{"type":"text"}"#,
                    "null",
                    "1",
                ][rng.random_range(0..4)];
                members.push(format!(r#""response_format":{v}"#));
            }
            if rng.random_bool(0.03) {
                members.push(r#""stream":true"#.to_string());
            }
            // Member order and spacing vary.
            for i in (1..members.len()).rev() {
                members.swap(i, rng.random_range(0..=i));
            }
            let sep = [",", " , ", ",\n  "][rng.random_range(0..3)];
            let mut body = format!("{{{}}}", members.join(sep));
            if rng.random_bool(0.3) {
                body = format!(" \n{body}\t ");
            }
            if rng.random_bool(0.03) {
                body.pop();
            }
            let ok = openai::parse_chat_request(body.as_bytes()).is_ok();
            valid += usize::from(ok);
            if check(body.as_bytes()) {
                accepted += 1;
            }
        }
        assert!(
            valid > 300,
            "the generator made too few valid bodies: {valid}"
        );
        assert!(
            accepted * 10 > valid * 7,
            "scanned {accepted} of {valid} valid bodies"
        );
    }
}
