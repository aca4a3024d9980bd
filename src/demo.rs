//! `tollgate demo`: the whole product on one machine with no vendor account. A built-in mock
//! vendor (OpenAI wire format, streaming included) stands in for the vendors; the gateway runs
//! on an embedded configuration with a SQLite file, and a demo tenant gets a fresh API key.

use crate::config::Config;
use crate::routing::upstream::UpstreamStates;
use crate::server::{self, Launch};
use crate::store::sqlite::{NewKey, Store};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// The demo's configuration; `{MOCK}` is replaced by the mock vendor's address.
pub const DEMO_CONFIG: &str = r#"
[server]
listen = "{LISTEN}"
threads = 2

[admin]
listen = "{ADMIN}"

[store]
sqlite_path = "{DB}"

[[models]]
name = "gpt-4o-mini"
vendor = "mock"
aliases = ["mock-small"]
max_output_tokens = 4096
price = { currency = "USD", input = "0.15", cached_input = "0.075", output = "0.60" }

[[models]]
name = "gpt-4o"
vendor = "mock"
# The default model names of Codex CLI, the OpenAI Agents SDK and friends.
aliases = ["mock-large", "gpt-6.2-sol", "gpt-5.6-luna", "gpt-5.5", "gpt-5"]
max_output_tokens = 4096
price = { currency = "USD", input = "2.50", cached_input = "1.25", output = "10.00" }

[[models]]
name = "claude-sonnet-4"
vendor = "mock"
# Claude Code's default model names.
aliases = ["claude-opus-5-5", "claude-sonnet-4-6", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]
max_output_tokens = 4096
price = { currency = "USD", input = "3.00", cached_input = "0.30", cache_write = "3.75", output = "15.00" }

[[models]]
name = "gemini-2.5-flash"
vendor = "mock"
max_output_tokens = 4096
price = { currency = "USD", input = "0.30", cached_input = "0.075", output = "2.50" }

[[models]]
name = "text-embedding-3-small"
vendor = "mock"
kind = "embedding"
price = { currency = "USD", input = "0.02", output = "0" }

[[channels]]
name = "standard"
description = "Demo tier: two upstream keys on the built-in mock vendor"
multiplier = "7.2"
  [[channels.upstreams]]
  name = "mock-a"
  base_url = "http://{MOCK}/v1"
  models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
  model_map = { "gpt-4o-mini" = "mock-small", "gpt-4o" = "mock-large" }
  # Speaks the Responses API too: /v1/responses passes through (mock-b gets it translated).
  responses = true
  [[channels.upstreams]]
  name = "mock-b"
  base_url = "http://{MOCK}/v1"
  models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
  model_map = { "gpt-4o-mini" = "mock-small", "gpt-4o" = "mock-large" }
  # The same mock, spoken to in Anthropic's and Gemini's own protocols: any caller (OpenAI SDK,
  # Anthropic SDK) reaches any of them; the gateway translates.
  [[channels.upstreams]]
  name = "mock-anthropic"
  base_url = "http://{MOCK}/v1"
  protocol = "anthropic"
  models = ["claude-sonnet-4"]
  [[channels.upstreams]]
  name = "mock-gemini"
  base_url = "http://{MOCK}/v1beta"
  protocol = "gemini"
  models = ["gemini-2.5-flash"]

# model: "auto" picks gpt-4o-mini or gpt-4o from the request's complexity (docs/routing.md).
[router]
model_file = "{ROUTER_MODEL}"
default_mode = "balanced"

[[router.tiers]]
name = "light"
model = "gpt-4o-mini"

[[router.tiers]]
name = "strong"
model = "gpt-4o"
"#;

/// The router model shipped in the repository, embedded so the demo runs from any directory.
const ROUTER_MODEL: &str = include_str!("../conf/router/complexity-v2.json");

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Option<u16> {
    TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

fn choose(port: Option<u16>, preferred: u16) -> Option<u16> {
    match port {
        Some(p) => Some(p),
        None if port_free(preferred) => Some(preferred),
        None => free_port(),
    }
}

/// Start the mock vendor on its own runtime thread and return its address.
fn start_mock() -> Result<SocketAddr, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("mock-vendor".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match crate::mock::MockVendor::start(
                    "127.0.0.1:0"
                        .parse()
                        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
                )
                .await
                {
                    Ok(handle) => {
                        let _ = tx.send(Ok(handle.addr()));
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

pub fn run(port: Option<u16>, admin_port: Option<u16>, db: PathBuf) -> i32 {
    match try_run(port, admin_port, db) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn try_run(port: Option<u16>, admin_port: Option<u16>, db: PathBuf) -> Result<(), String> {
    let mock = start_mock()?;
    let port = choose(port, 8080).ok_or("no free port for the gateway")?;
    let admin_port = choose(admin_port, 8081)
        .filter(|p| *p != port)
        .or_else(free_port)
        .ok_or("no free admin port")?;
    let router_model = db.with_file_name("tollgate-demo-router-model.json");
    std::fs::write(&router_model, ROUTER_MODEL)
        .map_err(|e| format!("cannot write {}: {e}", router_model.display()))?;
    let text = DEMO_CONFIG
        .replace("{MOCK}", &mock.to_string())
        .replace("{LISTEN}", &format!("127.0.0.1:{port}"))
        .replace("{ADMIN}", &format!("127.0.0.1:{admin_port}"))
        .replace("{DB}", &db.display().to_string().replace('\\', "/"))
        .replace(
            "{ROUTER_MODEL}",
            &router_model.display().to_string().replace('\\', "/"),
        );
    let states = UpstreamStates::default();
    let config =
        Config::from_toml(&text, "(demo configuration)", &states).map_err(|e| e.to_string())?;

    let store = Store::open(&db).map_err(|e| e.to_string())?;
    let tenant = match store.find_tenant("demo") {
        Ok(t) => t,
        Err(_) => {
            let t = store.create_tenant("demo").map_err(|e| e.to_string())?;
            // A starting grant so the demo key can spend: 100 credits, once per database.
            store
                .credit(
                    t.id,
                    crate::billing::ledger::EntryKind::Grant,
                    100 * crate::billing::pricing::NANO,
                    Some("demo"),
                    Some("demo starting credit"),
                    &format!("demo-grant:{}", t.id.0),
                )
                .map_err(|e| e.to_string())?;
            t
        }
    };
    let (_, key) = store
        .create_key(&NewKey {
            tenant_id: tenant.id,
            name: "demo".into(),
            default_channel: "standard".into(),
            allowed_channels: vec![],
            allowed_models: vec![],
            expires_at: None,
            quota_nano: None,
            user_id: None,
            limits: Default::default(),
        })
        .map_err(|e| e.to_string())?;
    drop(store);
    let admin_token = crate::tenancy::keys::generate_key().replacen("tg-", "adm-", 1);

    println!("tollgate demo: gateway on 127.0.0.1:{port}, admin API on 127.0.0.1:{admin_port}, mock vendor on {mock}");
    println!();
    println!("Paste these into another shell (the OpenAI SDKs read them):");
    println!("  export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1");
    println!("  export OPENAI_API_KEY={key}");
    println!();
    println!("Try it:");
    println!(
        "  curl -s http://127.0.0.1:{port}/v1/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" \\\n    -H 'Content-Type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    println!(
        "  curl -sN http://127.0.0.1:{port}/v1/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" \\\n    -H 'Content-Type: application/json' -d '{{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    println!(
        "  # model auto: the complexity router picks the tier (see the x-tollgate-route-* headers)\n  curl -si http://127.0.0.1:{port}/v1/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" \\\n    -H 'Content-Type: application/json' -d '{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"Prove that there are infinitely many primes.\"}}]}}'"
    );
    println!(
        "  # Anthropic Messages API (also for the Anthropic SDK: ANTHROPIC_BASE_URL=http://127.0.0.1:{port}), any model\n  curl -s http://127.0.0.1:{port}/v1/messages -H \"x-api-key: $OPENAI_API_KEY\" -H 'anthropic-version: 2023-06-01' \\\n    -H 'Content-Type: application/json' -d '{{\"model\":\"gemini-2.5-flash\",\"max_tokens\":100,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    println!("  curl -s http://127.0.0.1:{admin_port}/metrics | grep tollgate_requests_total");
    println!("  curl -s http://127.0.0.1:{admin_port}/admin/usage -H 'Authorization: Bearer {admin_token}'");
    println!("  curl -s http://127.0.0.1:{admin_port}/admin/tenants/demo/balance -H 'Authorization: Bearer {admin_token}'");
    println!();

    crate::cli::init_logging(crate::config::LogFormat::Text);
    server::run(Launch {
        config,
        states,
        config_path: None,
        upgrade: false,
        daemon: false,
        admin_token: Some(admin_token),
    })
    .map_err(|e| e.to_string())
}
