#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real clients against a real gateway: Claude Code, Codex, the OpenAI Agents SDK, the Vercel AI
//! SDK and the official openai Python SDK, run non-interactively (their pinned versions, put in
//! `.clients/` and python3 by `scripts/install-clients`) against `tollgate run` over the mock
//! vendor, each with its DEFAULT model (an alias in the config) and with models the gateway
//! serves through another protocol. A missing client fails the test: run scripts/install-clients.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tollgate::mock::MockHandle;

const TIMEOUT: Duration = Duration::from_secs(120);
const INSTALL: &str = "run scripts/install-clients";

/// Channel `main` over four upstreams of the mock: `native` (OpenAI, speaks Responses: passed
/// through), `chat` (OpenAI chat completions only), `anth` (Anthropic Messages), `gem` (Gemini).
/// The clients' default model names are aliases: Claude's of `claude-x`, OpenAI's of `gpt-x`;
/// two more of Codex's catalog ("responses lite") names are aliases of `gpt-chat`/`claude-x`.
async fn gateway(m: &MockHandle) -> Gateway {
    let ups = protocol_upstreams(
        m,
        &ProtocolModels {
            native: &["gpt-x"],
            chat: &["gpt-chat"],
            anthropic: &["claude-x"],
            gemini: &["gemini-x"],
        },
    );
    let extra = format!(
        r#"
{ups}[[models]]
name = "claude-x"
vendor = "anthropic"
aliases = ["claude-opus-5-5", "claude-sonnet-4-6", "claude-sonnet-4-5", "claude-haiku-4-5-20251001", "gpt-6-astra"]
max_output_tokens = 128000
price = {{ currency = "USD", input = "3", cached_input = "0.3", cache_write = "3.75", output = "15" }}

[[models]]
name = "gpt-x"
vendor = "openai"
aliases = ["gpt-6.2-sol", "gpt-5.5", "gpt-5.6-luna"]
max_output_tokens = 128000
price = {{ currency = "USD", input = "1.25", cached_input = "0.125", output = "10" }}

[[models]]
name = "gpt-chat"
vendor = "openai"
aliases = ["gpt-6.1-sol"]
max_output_tokens = 128000
price = {{ currency = "USD", input = "2.50", cached_input = "1.25", output = "10.00" }}

[[models]]
name = "gemini-x"
vendor = "google"
max_output_tokens = 65536
price = {{ currency = "USD", input = "0.3", cached_input = "0.075", output = "2.5" }}
"#
    );
    Gateway::start(&[], "", &extra).await
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An npm-installed client binary under `.clients/node_modules/.bin`.
fn npm_bin(name: &str) -> PathBuf {
    let p = root().join(".clients/node_modules/.bin").join(name);
    assert!(
        p.exists(),
        "{name} is not installed ({} is missing): {INSTALL}",
        p.display()
    );
    p
}

/// An executable on the test's PATH, by name.
fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: install it, then {INSTALL}"))
}

/// The python3 interpreter that has `openai` and `openai-agents` (resolved with the test's own
/// environment: a pyenv shim needs the real HOME, the clients run with a temporary one).
fn python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys, openai, agents; print(sys.executable)"])
            .output()
            .unwrap_or_else(|e| panic!("python3 cannot be run ({e}): {INSTALL}"));
        assert!(
            out.status.success(),
            "python3 lacks the openai / openai-agents packages: {INSTALL}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A client command with a clean environment: PATH, a temporary HOME (also the working
/// directory), nothing inherited else; stdin is /dev/null.
/// PATH for the clients: the node that `scripts/install-clients` put in `.clients/` (when the
/// system's is older than the clients need) comes first.
fn client_path() -> std::ffi::OsString {
    let mut dirs = vec![root().join(".clients/node_modules/.bin")];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The node the clients run on: `.clients`' own when there is one, else the system's.
fn node() -> PathBuf {
    let own = root().join(".clients/node_modules/.bin/node");
    if own.is_file() {
        own
    } else {
        on_path("node")
    }
}

fn client(program: &Path, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", client_path())
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    c
}

/// Runs a client to completion (its process group is killed after `TIMEOUT`) and requires exit
/// status 0; on failure the message has its output and the gateway's log.
async fn run(label: &str, mut cmd: Command, gw: &Gateway) -> Output {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{label}: cannot start ({e}): {INSTALL}"));
    let pid = child.id().unwrap();
    let out = match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!(
                "{label}: no exit after {TIMEOUT:?}; gateway log:\n{}",
                log_tail(gw)
            );
        }
    };
    assert!(
        out.status.success(),
        "{label}: {}\n--- stdout:\n{}\n--- stderr:\n{}\n--- gateway log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 60),
        log_tail(gw)
    );
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn log_tail(gw: &Gateway) -> String {
    tail(&gw.log(), 40)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The usage events of the calls that asked for `model`: exactly `n`, each a 200 on `endpoint`,
/// served by `upstream`, metered and charged.
async fn check_events(
    gw: &Gateway,
    model: &str,
    n: usize,
    endpoint: &str,
    upstream: &str,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let evs = loop {
        let v = gw.admin_get("/admin/usage?limit=10000").await;
        let evs: Vec<Value> = v["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["model_requested"] == model)
            .collect();
        if evs.len() >= n || Instant::now() > deadline {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(evs.len(), n, "{model}: usage events {evs:?}");
    for e in &evs {
        assert_eq!(e["endpoint"], endpoint, "{model}: {e}");
        assert_eq!(e["status"], 200, "{model}: {e}");
        assert_eq!(e["upstream"], format!("main/{upstream}"), "{model}: {e}");
        assert!(e["cost"].nano_opt().unwrap_or(0) > 0, "{model}: {e}");
        assert!(e["prompt_tokens"].as_u64().unwrap_or(0) > 0, "{model}: {e}");
    }
    evs
}

/// A driver that runs its tool loop once plainly and once streamed: as many calls each way.
fn half_streamed(label: &str, evs: &[Value]) {
    let streamed = evs.iter().filter(|e| e["stream"] == true).count();
    assert!(
        streamed > 0 && streamed * 2 == evs.len(),
        "{label}: {streamed} of {} calls streamed: {evs:?}",
        evs.len()
    );
}

/// Claude Code `-p "say hi"` (one streamed /v1/messages call) with `model` (its default when
/// None), served by `upstream`.
async fn claude_code(model: Option<&str>, upstream: &str) {
    let claude = npm_bin("claude");
    let m = mock().await;
    let gw = gateway(&m).await;
    let label = format!("claude -p (model {})", model.unwrap_or("default"));
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client(&claude, home.path());
    cmd.args(["-p", "say hi", "--output-format", "json"])
        .env("ANTHROPIC_BASE_URL", gw.url(""))
        .env("ANTHROPIC_API_KEY", &gw.key)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1");
    if let Some(model) = model {
        cmd.env("ANTHROPIC_MODEL", model);
    }
    let out = run(&label, cmd, &gw).await;
    let text = stdout(&out);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{label}: stdout is not JSON ({e}): {text}"));
    assert_eq!(v["is_error"], false, "{label}: {v}");
    assert!(
        v["result"].as_str().unwrap_or("").contains("mock reply"),
        "{label}: {v}"
    );
    check_events(
        &gw,
        model.unwrap_or("claude-opus-5-5"),
        1,
        "messages",
        upstream,
    )
    .await;
}

/// Claude Code's default model is an alias of the Anthropic model.
#[tokio::test]
async fn claude_code_default_model() {
    claude_code(None, "anth").await;
}

/// Claude Code on a GPT model: Anthropic Messages translated to chat completions.
#[tokio::test]
async fn claude_code_gpt() {
    claude_code(Some("gpt-chat"), "chat").await;
}

/// Claude Code on a Gemini model: Anthropic Messages translated to Gemini.
#[tokio::test]
async fn claude_code_gemini() {
    claude_code(Some("gemini-x"), "gem").await;
}

/// Codex `exec` (custom provider, wire_api responses, stdin /dev/null) with `model` (its
/// default when None) and `prompt`; `calls` Responses calls served by `upstream` expected.
async fn codex(model: Option<&str>, prompt: &str, upstream: &str, calls: usize) {
    let codex = npm_bin("codex");
    node();
    let m = mock().await;
    let gw = gateway(&m).await;
    let label = format!("codex exec (model {})", model.unwrap_or("default"));
    let home = tempfile::tempdir().unwrap();
    let codex_home = home.path().join("codex");
    std::fs::create_dir(&codex_home).unwrap();
    let model_line = model
        .map(|m| format!("model = \"{m}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            r#"model_provider = "tollgate"
{model_line}check_for_update_on_startup = false
[analytics]
enabled = false
[features]
plugins = false
[model_providers.tollgate]
name = "tollgate"
base_url = "{}"
env_key = "TOLLGATE_KEY"
wire_api = "responses"
"#,
            gw.url("/v1")
        ),
    )
    .unwrap();
    let mut cmd = client(&codex, home.path());
    cmd.args(["exec", "--skip-git-repo-check", prompt])
        .env("CODEX_HOME", &codex_home)
        .env("TOLLGATE_KEY", &gw.key);
    let out = run(&label, cmd, &gw).await;
    let text = stdout(&out);
    assert!(
        text.contains("mock reply"),
        "{label}: stdout {text:?}\nstderr:\n{}\ngateway log:\n{}",
        tail(&String::from_utf8_lossy(&out.stderr), 30),
        log_tail(&gw)
    );
    let evs = check_events(
        &gw,
        model.unwrap_or("gpt-6.2-sol"),
        calls,
        "responses",
        upstream,
    )
    .await;
    assert!(evs.iter().all(|e| e["stream"] == true), "{label}: {evs:?}");
}

/// Codex's default model is a "responses lite" one (its tools ride in an `additional_tools`
/// input item), here an alias of a model on an upstream that speaks Responses: passed through.
#[tokio::test]
async fn codex_default_model() {
    codex(None, "say hi", "native", 1).await;
}

/// A Codex "lite" catalog model served by a chat-completions upstream: `additional_tools`
/// (namespaced function and custom tools) translated; the mock calls a tool, Codex answers
/// with its output, the mock ends the turn.
#[tokio::test]
async fn codex_lite_model_on_chat() {
    codex(
        Some("gpt-6.1-sol"),
        "What is the weather in Paris?",
        "chat",
        2,
    )
    .await;
}

/// A Codex "lite" catalog model served by an Anthropic upstream, with a tool round trip.
#[tokio::test]
async fn codex_lite_model_on_anthropic() {
    codex(
        Some("gpt-6-astra"),
        "What is the weather in Paris?",
        "anth",
        2,
    )
    .await;
}

/// Codex with a model it does not know (function tools, a `namespace` tool, hosted
/// `web_search`) served by an Anthropic upstream, with a tool round trip.
#[tokio::test]
async fn codex_on_anthropic() {
    codex(Some("claude-x"), "What is the weather in Paris?", "anth", 2).await;
}

/// The same on a chat-completions upstream.
#[tokio::test]
async fn codex_on_chat() {
    codex(Some("gpt-chat"), "What is the weather in Paris?", "chat", 2).await;
}

/// The same on a Gemini upstream.
#[tokio::test]
async fn codex_on_gemini() {
    codex(Some("gemini-x"), "What is the weather in Paris?", "gem", 2).await;
}

/// A Python driver in tests/clients/ with TOLLGATE_* set (model: the driver's default if None).
fn py_driver(script: &str, gw: &Gateway, home: &Path, model: Option<&str>) -> Command {
    let mut cmd = client(python(), home);
    cmd.arg(root().join("tests/clients").join(script))
        .env("TOLLGATE_BASE_URL", gw.url("/v1"))
        .env("TOLLGATE_KEY", &gw.key)
        .env("TOLLGATE_EXPECT_TOOL", "1")
        .env("OPENAI_AGENTS_DISABLE_TRACING", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(m) = model {
        cmd.env("TOLLGATE_MODEL", m);
    }
    cmd
}

/// The OpenAI Agents SDK with its default model: Runner.run and Runner.run_streamed, each a
/// weather question answered through one function-tool call (two Responses calls per run).
#[tokio::test]
async fn agents_sdk() {
    python();
    let m = mock().await;
    let gw = gateway(&m).await;
    let home = tempfile::tempdir().unwrap();
    let out = run(
        "agents_sdk.py",
        py_driver("agents_sdk.py", &gw, home.path(), None),
        &gw,
    )
    .await;
    assert!(stdout(&out).contains("mock reply"), "{}", stdout(&out));
    let evs = check_events(&gw, "gpt-5.6-luna", 4, "responses", "native").await;
    half_streamed("agents_sdk.py", &evs);
}

/// The openai Python SDK's responses.create, plain and streamed, each a function-tool loop,
/// on the pass-through model and on an Anthropic one (translated).
#[tokio::test]
async fn openai_responses_sdk() {
    python();
    let m = mock().await;
    let gw = gateway(&m).await;
    for (model, upstream) in [("gpt-5.5", "native"), ("claude-x", "anth")] {
        let home = tempfile::tempdir().unwrap();
        let label = format!("responses_sdk.py ({model})");
        let cmd = py_driver("responses_sdk.py", &gw, home.path(), Some(model));
        tool_loop_driver(&label, cmd, &gw, model, upstream).await;
    }
}

/// Runs a driver that does its tool loop once plainly and once streamed (two calls each) on
/// `model`, and checks its answer and the four Responses calls `upstream` served.
async fn tool_loop_driver(label: &str, cmd: Command, gw: &Gateway, model: &str, upstream: &str) {
    let out = run(label, cmd, gw).await;
    assert!(
        stdout(&out).contains("mock reply"),
        "{label}: {}",
        stdout(&out)
    );
    let evs = check_events(gw, model, 4, "responses", upstream).await;
    half_streamed(label, &evs);
}

/// The openai Node SDK's responses.create, plain and streamed, each a function-tool loop, on the
/// pass-through model and on a Gemini one (translated).
#[tokio::test]
async fn openai_node_responses_sdk() {
    let node = node();
    let clients = root().join(".clients");
    assert!(
        clients.join("node_modules/openai/package.json").exists(),
        "npm package openai is missing: {INSTALL}"
    );
    let m = mock().await;
    let gw = gateway(&m).await;
    for (model, upstream) in [("gpt-5.5", "native"), ("gemini-x", "gem")] {
        let home = tempfile::tempdir().unwrap();
        let label = format!("responses_node.mjs ({model})");
        let mut cmd = client(&node, home.path());
        cmd.arg(root().join("tests/clients/responses_node.mjs"))
            .env("TOLLGATE_BASE_URL", gw.url("/v1"))
            .env("TOLLGATE_KEY", &gw.key)
            .env("TOLLGATE_MODEL", model)
            .env("TOLLGATE_EXPECT_TOOL", "1")
            .env("TOLLGATE_CLIENTS_DIR", &clients);
        tool_loop_driver(&label, cmd, &gw, model, upstream).await;
    }
}

/// The Vercel AI SDK: generateText and streamText with a tool through the OpenAI provider's
/// default (Responses API, default model) and through the Anthropic provider (Messages).
#[tokio::test]
async fn vercel_ai_sdk() {
    let node = node();
    let clients = root().join(".clients");
    for pkg in ["ai", "@ai-sdk/openai", "@ai-sdk/anthropic"] {
        let p = clients.join("node_modules").join(pkg).join("package.json");
        assert!(p.exists(), "npm package {pkg} is missing: {INSTALL}");
    }
    let m = mock().await;
    let gw = gateway(&m).await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client(&node, home.path());
    cmd.arg(root().join("tests/clients/vercel_ai.mjs"))
        .env("TOLLGATE_BASE_URL", gw.url("/v1"))
        .env("TOLLGATE_KEY", &gw.key)
        .env("TOLLGATE_EXPECT_TOOL", "1")
        .env("TOLLGATE_CLIENTS_DIR", &clients);
    let out = run("vercel_ai.mjs", cmd, &gw).await;
    assert!(stdout(&out).contains("mock reply"), "{}", stdout(&out));
    let evs = check_events(&gw, "gpt-5.5", 4, "responses", "native").await;
    half_streamed("vercel_ai.mjs (openai)", &evs);
    let evs = check_events(&gw, "claude-sonnet-4-5", 4, "messages", "anth").await;
    half_streamed("vercel_ai.mjs (anthropic)", &evs);
}

/// Codex with its built-in `openai` provider pointed at the gateway (`openai_base_url` and
/// `codex login --with-api-key`, the setup most users try first): it asks for the Responses
/// API's WebSocket mode first (`GET /v1/responses` with `Upgrade: websocket`); the gateway's
/// 426 makes it fall back to HTTP at once (a 400 would be fatal, a 404/405 costs ~7 s of
/// retries), and the call is served and recorded.
#[tokio::test]
async fn codex_builtin_provider_falls_back_from_websocket_to_http() {
    let codex = npm_bin("codex");
    node();
    let m = mock().await;
    let gw = gateway(&m).await;
    let label = "codex exec (built-in openai provider)";
    let home = tempfile::tempdir().unwrap();
    let codex_home = home.path().join("codex");
    std::fs::create_dir(&codex_home).unwrap();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "openai_base_url = \"{}\"\ncheck_for_update_on_startup = false\n[analytics]\nenabled = false\n[features]\nplugins = false\n",
            gw.url("/v1")
        ),
    )
    .unwrap();
    let mut login = client(&codex, home.path());
    login
        .args(["login", "--with-api-key"])
        .env("CODEX_HOME", &codex_home)
        .stdin(Stdio::piped());
    let mut child = login.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(gw.key.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
    }
    let st = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "codex login: {st}");
    let mut cmd = client(&codex, home.path());
    cmd.args(["exec", "--skip-git-repo-check", "say hi"])
        .env("CODEX_HOME", &codex_home);
    let out = run(label, cmd, &gw).await;
    let text = stdout(&out);
    assert!(
        text.contains("mock reply"),
        "{label}: stdout {text:?}\n{}",
        log_tail(&gw)
    );
    let evs = gw.usage_events(2).await;
    let upgrades: Vec<&Value> = evs.iter().filter(|e| e["status"] == 426).collect();
    assert!(
        !upgrades.is_empty(),
        "{label}: no WebSocket attempt recorded: {evs:?}"
    );
    assert!(upgrades.iter().all(|e| e["endpoint"] == "responses"));
    assert!(
        upgrades.len() <= 2,
        "{label}: the 426 is final, not retried: {upgrades:?}"
    );
    let served: Vec<&Value> = evs.iter().filter(|e| e["status"] == 200).collect();
    assert_eq!(served.len(), 1, "{label}: {evs:?}");
    assert_eq!(served[0]["upstream"], "main/native");
}
