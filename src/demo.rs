//! `tollgate demo`: the whole product on one machine with no vendor account. A built-in mock
//! vendor (OpenAI wire format, streaming included) stands in for the vendors; the gateway runs
//! on an embedded configuration with a SQLite file, and a demo tenant gets a fresh API key.

use crate::billing::ledger::EntryKind;
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

/// The demo's console sign-ins (tenant `demo`).
pub const DEMO_ADMIN_EMAIL: &str = "admin@demo.example";
pub const DEMO_VIEWER_EMAIL: &str = "finance@demo.example";
pub const DEMO_PASSWORD: &str = "demo-password";

/// A new demo tenant's people and a month of calls: two departments, an admin, a finance
/// viewer and three members with a key each, and `calls` calls over the last 30 days
/// written as usage records, which are the calls' charges (so balance, statement and analytics
/// agree, as they would after real traffic).
fn seed_month(
    store: &Store,
    config: &Config,
    tenant: &crate::tenancy::Tenant,
    calls: u64,
) -> Result<i64, String> {
    use crate::tenancy::Role;
    use rand::{Rng, SeedableRng};
    let e = |e: crate::store::sqlite::StoreError| e.to_string();
    let research = store
        .create_group(
            tenant.id,
            "Research",
            Some(400 * crate::billing::pricing::NANO),
        )
        .map_err(e)?;
    let support = store
        .create_group(
            tenant.id,
            "Support",
            Some(200 * crate::billing::pricing::NANO),
        )
        .map_err(e)?;
    let hash = crate::admin::hash_password(DEMO_PASSWORD).map_err(|e| e.to_string())?;
    let admin = store
        .create_user(
            tenant.id,
            DEMO_ADMIN_EMAIL,
            "Avery Admin",
            Role::TenantAdmin,
            None,
            None,
        )
        .map_err(e)?;
    let viewer = store
        .create_user(
            tenant.id,
            DEMO_VIEWER_EMAIL,
            "Fei Finance",
            Role::Viewer,
            None,
            None,
        )
        .map_err(e)?;
    store.set_password(admin.id, &hash).map_err(e)?;
    store.set_password(viewer.id, &hash).map_err(e)?;
    let mut people = Vec::new();
    for (email, name, group, quota) in [
        ("li.wei@demo.example", "Li Wei", research.id, Some(150)),
        ("sam.ortiz@demo.example", "Sam Ortiz", research.id, None),
        ("zhang.min@demo.example", "Zhang Min", support.id, Some(80)),
    ] {
        let u = store
            .create_user(
                tenant.id,
                email,
                name,
                Role::Member,
                Some(group),
                quota.map(|q| q * crate::billing::pricing::NANO),
            )
            .map_err(e)?;
        store.set_password(u.id, &hash).map_err(e)?;
        let (key, _) = store
            .create_key(&NewKey {
                tenant_id: tenant.id,
                name: format!("{}-laptop", email.split('@').next().unwrap_or("member")),
                default_channel: "standard".into(),
                allowed_channels: vec![],
                allowed_models: vec![],
                expires_at: None,
                quota_nano: None,
                user_id: Some(u.id),
                limits: Default::default(),
            })
            .map_err(e)?;
        people.push((u, key));
    }
    let Some(channel) = config.channel("standard") else {
        return Err("the demo channel is missing".into());
    };
    let models: Vec<_> = [
        "gpt-4o-mini",
        "gpt-4o",
        "claude-sonnet-4",
        "gemini-2.5-flash",
    ]
    .iter()
    .filter_map(|m| config.model(m).cloned())
    .collect();
    let (Some(light), Some(strong)) = (
        config.model("gpt-4o-mini").cloned(),
        config.model("gpt-4o").cloned(),
    ) else {
        return Err("the demo's router models are missing".into());
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(tenant.id.0 as u64);
    let now_ms = crate::tenancy::unix_now() * 1000;
    let per_day = (calls / 30) as i64;
    let mut events = Vec::new();
    let mut spent = 0i64;
    for day in (1..=30).rev() {
        // Weekdays busier than weekends, and a slow ramp-up over the month.
        let calls = per_day * (85 + (30 - day)) / 100 + if day % 7 < 2 { 0 } else { per_day / 4 };
        for i in 0..calls {
            let (user, key) = &people[rng.random_range(0..people.len())];
            let model = &models[rng.random_range(0..models.len())];
            let prompt = rng.random_range(200..4000u64);
            let cached = if rng.random_bool(0.3) { prompt / 2 } else { 0 };
            let output = rng.random_range(50..1200u64);
            let t = crate::billing::pricing::TokenCounts {
                input: prompt - cached,
                cached_input: cached,
                cache_write: 0,
                output,
            };
            // A third of the calls say `model: "auto"`: the router sent them to the light or
            // the strong tier, and the routing-savings page compares with the strong tier.
            let routed = rng.random_bool(0.3);
            let model = match (routed, rng.random_bool(0.7)) {
                (true, true) => &light,
                (true, false) => &strong,
                (false, _) => model,
            };
            let per_rmb = config.billing.credits_per_rmb;
            let cost = crate::billing::pricing::cost_nano(model, channel, per_rmb, &t)
                .map_err(|e| e.to_string())?;
            let baseline = crate::billing::pricing::cost_nano(&strong, channel, per_rmb, &t)
                .map_err(|e| e.to_string())?;
            let ts_ms = now_ms - day * 86_400_000 + rng.random_range(8 * 3_600_000..20 * 3_600_000);
            let failed = rng.random_bool(0.01);
            events.push(crate::billing::usage::UsageEvent {
                request_id: format!("demo-{day}-{i}"),
                ts_ms,
                tenant_id: Some(tenant.id),
                key_id: Some(key.id),
                user_id: Some(user.id),
                group_id: user.group_id,
                endpoint: "chat".into(),
                path: Some("/v1/chat/completions".into()),
                channel: Some("standard".into()),
                upstream: Some("standard/mock-a".into()),
                model_requested: Some(if routed {
                    "auto".into()
                } else {
                    model.name.clone()
                }),
                model_used: Some(model.name.clone()),
                status: if failed { 502 } else { 200 },
                prompt_tokens: if failed { 0 } else { prompt },
                cached_tokens: if failed { 0 } else { cached },
                completion_tokens: if failed { 0 } else { output },
                usage_source: "vendor".into(),
                attempts: 1,
                latency_ms: rng.random_range(300..4000),
                cost_nano: if failed { 0 } else { cost },
                route_tier: routed.then(|| {
                    if model.name == light.name {
                        "light"
                    } else {
                        "strong"
                    }
                    .to_string()
                }),
                route_reason: routed.then(|| "complexity".to_string()),
                baseline_cost_nano: (routed && !failed).then_some(baseline),
                ..Default::default()
            });
            if !failed {
                spent += cost;
            }
            if events.len() >= 20_000 {
                store.record(&events).map_err(e)?;
                events.clear();
            }
        }
    }
    store.record(&events).map_err(e)?;
    Ok(spent)
}

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

pub fn run(port: Option<u16>, admin_port: Option<u16>, db: PathBuf, history_calls: u64) -> i32 {
    match try_run(port, admin_port, db, history_calls) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn try_run(
    port: Option<u16>,
    admin_port: Option<u16>,
    db: PathBuf,
    history_calls: u64,
) -> Result<(), String> {
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
            let spent = seed_month(&store, &config, &t, history_calls)
                .map_err(|e| format!("demo data: {e}"))?;
            // The month's money, dated before the calls it paid for: a starting grant (1,000
            // credits, or more when the generated month spends more) and a mid-month top-up,
            // so the statement's running balance never goes below zero.
            let nano = crate::billing::pricing::NANO;
            let grant = (spent * 12 / 10 / (1000 * nano) + 1).max(1) * 1000 * nano;
            let now_ms = crate::tenancy::unix_now() * 1000;
            for (kind, amount, note, days_ago) in [
                (EntryKind::Grant, grant, "demo starting credit", 31),
                (EntryKind::TopUp, 500 * nano, "demo top-up", 15),
            ] {
                store
                    .credit_dated(
                        t.id,
                        kind,
                        amount,
                        Some("demo"),
                        Some(note),
                        &format!("demo-{}:{}", kind.as_str(), t.id.0),
                        now_ms - days_ago * 86_400_000 - 3_600_000,
                    )
                    .map_err(|e| e.to_string())?;
            }
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
    println!(
        "Console: http://127.0.0.1:{admin_port}/console  (a month of generated usage is in it)"
    );
    println!("  tenant admin:   tenant demo, email {DEMO_ADMIN_EMAIL}, password {DEMO_PASSWORD}");
    println!("  finance viewer: tenant demo, email {DEMO_VIEWER_EMAIL}, password {DEMO_PASSWORD}");
    println!("  operator:       \"Platform operator sign-in\" with the token {admin_token}");
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
