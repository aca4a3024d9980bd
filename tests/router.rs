#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `tollgate router score`: the audit CLI, run as a user would, with good and bad lines, and a
//! configuration's `[router]` section checked by `check-config`.

use std::io::Write;
use std::process::{Command, Stdio};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/conf/router/complexity-v2.json"
);

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

fn run_with_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = tollgate()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn score_writes_one_line_per_input_and_survives_bad_lines() {
    let input = [
        r#"{"id": "easy", "model": "auto", "messages": [{"role": "user", "content": "Say hello in French."}]}"#,
        r#"{"id": "img", "model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}"#,
        r#"this is not json"#,
        r#"{"id": 7, "messages": "nope"}"#,
        r#"[1, 2, 3]"#,
        "",
        r#"{"id": "hard", "model": "auto:cheap", "messages": [{"role": "user", "content": "Prove rigorously that every bounded monotone sequence converges, then derive the rate for a contraction mapping step by step."}]}"#,
    ]
    .join("\n");
    let (code, stdout, stderr) = run_with_stdin(&["router", "score", "--model", MODEL], &input);
    assert_eq!(code, 0, "{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 6, "{stdout}"); // the empty line is skipped
    assert_eq!(out[0]["id"], "easy");
    assert_eq!(out[0]["tier"], "light");
    assert_eq!(out[0]["reason"], "score<threshold(balanced)");
    let s = out[0]["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&s));
    assert_eq!(out[1]["id"], "img");
    assert_eq!(out[1]["tier"], "strong");
    assert_eq!(out[1]["reason"], "images");
    assert!(out[2]["error"].as_str().unwrap().contains("not JSON"));
    assert_eq!(out[3]["id"], 7);
    assert!(out[3]["error"].as_str().unwrap().contains("messages"));
    assert!(out[4]["error"].is_string());
    assert_eq!(out[5]["id"], "hard");
    assert!(out[5]["reason"].as_str().unwrap().ends_with("(cheap)"));
    assert!(out[5]["score"].as_f64().unwrap() > s);

    // --mode moves the threshold: quality sends at least as much to strong as cheap.
    let many: String = (0..40)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "messages": [{{"role": "user", "content": "Question {i}: what is {i} times {i}, and why?"}}]}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let strong = |mode: &str| {
        let (code, stdout, _) = run_with_stdin(
            &["router", "score", "--model", MODEL, "--mode", mode],
            &many,
        );
        assert_eq!(code, 0);
        lines(&stdout)
            .iter()
            .filter(|v| v["tier"] == "strong")
            .count()
    };
    assert!(strong("cheap") <= strong("quality"));
}

#[test]
fn a_bad_model_file_or_mode_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.json");
    std::fs::write(&p, r#"{"format": "x"}"#).unwrap();
    let (code, _, stderr) =
        run_with_stdin(&["router", "score", "--model", p.to_str().unwrap()], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("m.json"), "{stderr}");
    let (code, _, stderr) = run_with_stdin(
        &["router", "score", "--model", MODEL, "--mode", "turbo"],
        "",
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown mode"), "{stderr}");
}

const BASE: &str = r#"
[[models]]
name = "small"
context_window = 1000
[[models]]
name = "big"
[[channels]]
name = "main"
[[channels.upstreams]]
name = "u"
base_url = "http://127.0.0.1:9"
models = ["small", "big"]
"#;

#[test]
fn the_router_section_is_validated_and_used_by_score() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "{BASE}\n[router]\nmodel_file = \"{MODEL}\"\ndefault_mode = \"quality\"\n\
         [[router.tiers]]\nname = \"light\"\nmodel = \"small\"\n\
         [[router.tiers]]\nname = \"strong\"\nmodel = \"big\"\nchannel = \"main\"\n"
    );
    let p = dir.path().join("good.toml");
    std::fs::write(&p, &good).unwrap();
    let out = tollgate().arg("check-config").arg(&p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The light tier's context window (1000 tokens, from the model) drives the context rule.
    let long = format!(
        r#"{{"id": "long", "model": "auto", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "word ".repeat(2000)
    );
    let (code, stdout, stderr) =
        run_with_stdin(&["router", "score", "--config", p.to_str().unwrap()], &long);
    assert_eq!(code, 0, "{stderr}");
    let v = &lines(&stdout)[0];
    assert_eq!(v["tier"], "strong");
    assert_eq!(v["model"], "big");
    assert_eq!(v["reason"], "context");

    let cases = [
        (
            good.replace("model = \"small\"", "model = \"tiny\""),
            "router.tiers[0].model",
        ),
        (
            good.replace("channel = \"main\"", "channel = \"gold\""),
            "router.tiers[1].channel",
        ),
        (
            good.replace("default_mode = \"quality\"", "default_mode = \"max\""),
            "router.default_mode",
        ),
        (
            good.replace(MODEL, "/nonexistent.json"),
            "router.model_file",
        ),
        (
            good.replace("default_mode", "defualt_mode"),
            "unknown field `defualt_mode`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = tollgate().arg("check-config").arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{want}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "want `{want}` in: {stderr}");
    }
}
