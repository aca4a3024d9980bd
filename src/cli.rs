//! Command line: `run`, `demo`, `check-config`, `keys`, `tenants`, `router`, `mock-vendor`.

use crate::config::{Config, LogFormat};
use crate::routing::upstream::UpstreamStates;
use crate::server::{self, Launch};
use crate::store::sqlite::{NewKey, Store};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Enterprise LLM gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        #[arg(short, long, default_value = "conf/tollgate.toml")]
        config: PathBuf,
        /// Take over the listening sockets of a running instance (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Fork into the background (writes pid_file; used by the systemd unit).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Start a self-contained demo: built-in mock vendor, SQLite, a demo tenant and key.
    Demo {
        /// Gateway port (default 8080, or a free one if taken).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        admin_port: Option<u16>,
        /// SQLite file of the demo.
        #[arg(long, default_value = "tollgate-demo.db")]
        db: PathBuf,
        /// Calls of generated history (over the last 30 days) a new demo database starts with.
        #[arg(long, default_value_t = 6000)]
        history_calls: u64,
    },
    /// Validate a configuration file and exit (non-zero with the bad field on error).
    CheckConfig { file: PathBuf },
    /// Manage API keys in the store.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        target: StoreTarget,
    },
    /// Manage tenants in the store.
    Tenants {
        #[command(subcommand)]
        action: TenantsAction,
        #[command(flatten)]
        target: StoreTarget,
    },
    /// The record's store: move an embedded installation into PostgreSQL.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Cluster mode's registry of running nodes, which a rebuild of the credit bank waits for
    /// (docs/billing.md).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        #[command(flatten)]
        target: StoreTarget,
    },
    /// The audit trail of admin changes (docs/security.md).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        #[command(flatten)]
        target: StoreTarget,
    },
    /// The complexity router behind `model: "auto"` (docs/routing.md).
    Router {
        #[command(subcommand)]
        action: RouterAction,
    },
    /// A bare Pingora pass-through proxy (the benchmark's baseline; no gateway logic).
    #[command(hide = true)]
    Passthrough {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: std::net::SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Run the mock vendor (OpenAI, Anthropic and Gemini wire formats) on its own, for benchmarks
    /// and experiments.
    MockVendor {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// The nodes the record holds as running (each removes itself on a clean stop).
    Nodes,
    /// Remove a node that is gone for good (its host lost) from the registry, so that a bank
    /// rebuild stops waiting for it. Charges that node had not put into the record are not
    /// subtracted by the rebuilt bank (at most the allowance it held; it records and logs them
    /// if it ever starts again).
    Forget { node: String },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check every entry's hash and its link to the one before: exits 0 if the trail is
    /// intact (printing the entries and the head hash to compare with the last one logged),
    /// 3 naming the first entry that was edited or deleted.
    Verify,
}

#[derive(clap::Args)]
struct StoreTarget {
    /// Configuration whose store to use (and whose channels/models keys are checked against).
    #[arg(long, global = true, default_value = "conf/tollgate.toml")]
    config: PathBuf,
    /// Use this SQLite file instead of the configuration's.
    #[arg(long, global = true)]
    db: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; prints the key once (it is stored only as a hash).
    Create {
        #[arg(long)]
        tenant: String,
        /// Create the tenant if it does not exist.
        #[arg(long)]
        create_tenant: bool,
        #[arg(long, default_value = "default")]
        name: String,
        /// Default channel of the key.
        #[arg(long)]
        channel: String,
        /// Further channels the key may select with the x-tollgate-channel header.
        #[arg(long = "allow-channel")]
        allow_channels: Vec<String>,
        /// Restrict the key to these models (default: all models of its channels).
        #[arg(long = "allow-model")]
        allow_models: Vec<String>,
        /// Expiry as a unix timestamp.
        #[arg(long)]
        expires_at: Option<i64>,
        /// Lifetime spending cap of the key, in credits.
        #[arg(long)]
        quota: Option<rust_decimal::Decimal>,
    },
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    Revoke {
        id: i64,
    },
}

#[derive(Subcommand)]
enum RouterAction {
    /// Read OpenAI chat request bodies (JSON lines with an `id`) on stdin; write
    /// `{"id", "score", "tier", "model", "reason"}` per line, through the gateway's decision code.
    Score {
        /// Model file (default conf/router/complexity-v2.json, or the configuration's).
        #[arg(long)]
        model: Option<PathBuf>,
        /// cheap, balanced or quality (default: balanced, or the configuration's).
        #[arg(long)]
        mode: Option<String>,
        /// Take tiers, rules and the model from this configuration's [router] section.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Time `decide` over the requests on stdin plus huge synthetic prompts (p50/p99).
    #[command(hide = true)]
    Bench {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Synthetic prompts of 1 to 8 MB added to the input.
        #[arg(long, default_value_t = 16)]
        huge: usize,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy every row of a SQLite store into an empty PostgreSQL database (schema created
    /// there), in one transaction, then check that both report the same rows and, per tenant,
    /// the same credited and charged totals. Stop the gateway first.
    Migrate {
        /// The SQLite file (`path` or `sqlite://path`).
        #[arg(long)]
        from: String,
        /// `postgres://user:password@host:port/db`.
        #[arg(long, conflicts_with = "to_env")]
        to: Option<String>,
        /// The name of an environment variable holding the PostgreSQL URL (for a password).
        #[arg(long)]
        to_env: Option<String>,
    },
    /// One retention pass now (the gateway runs one every `store.prune_every_minutes`): raw
    /// usage records older than the kept days are archived (zstd JSON lines), their charges
    /// kept as day summaries, and removed. Prints what was done as JSON.
    Prune {
        #[command(flatten)]
        target: StoreTarget,
        /// Days kept, today included (default: `store.raw_usage_days` of the configuration).
        #[arg(long)]
        days: Option<u32>,
        /// Archive directory (default: `store.archive_dir` of the configuration, else
        /// `<db>.archive`); `--no-archive` removes without one.
        #[arg(long, conflicts_with = "no_archive")]
        archive_dir: Option<PathBuf>,
        #[arg(long)]
        no_archive: bool,
    },
}

#[derive(Subcommand)]
enum TenantsAction {
    Create { name: String },
    List,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logbuf::BufferedStderr);
    let _ = match format {
        LogFormat::Json => builder.event_format(crate::logfmt::JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            let states = UpstreamStates::default();
            let cfg = match Config::load(&config, &states) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
            init_logging(cfg.server.log_format);
            let admin_token = std::env::var(&cfg.admin.token_env)
                .ok()
                .filter(|t| !t.is_empty());
            if admin_token.is_none() {
                tracing::warn!(var = %cfg.admin.token_env, "no admin token set: the /admin API refuses every call");
            }
            let launch = Launch {
                config: cfg,
                states,
                config_path: Some(config),
                upgrade,
                daemon,
                admin_token,
            };
            match server::run(launch) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Command::Demo {
            port,
            admin_port,
            db,
            history_calls,
        } => crate::demo::run(port, admin_port, db, history_calls),
        Command::CheckConfig { file } => {
            let states = UpstreamStates::default();
            match Config::load(&file, &states) {
                Ok(cfg) => {
                    for w in &cfg.warnings {
                        println!("warning: {w}");
                    }
                    println!(
                        "{}: OK ({} models, {} channels, {} upstreams)",
                        file.display(),
                        cfg.models.len(),
                        cfg.channels.len(),
                        cfg.upstreams().count()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Command::Keys { action, target } => {
            with_store(&target, |store, cfg| keys(store, cfg, action))
        }
        Command::Tenants { action, target } => with_store(&target, |store, _| match action {
            TenantsAction::Create { name } => {
                let t = store.create_tenant(&name).map_err(|e| e.to_string())?;
                println!("{}", serde_json::json!(t));
                Ok(())
            }
            TenantsAction::List => {
                for t in store.list_tenants().map_err(|e| e.to_string())? {
                    println!("{}", serde_json::json!(t));
                }
                Ok(())
            }
        }),
        Command::Store {
            action: StoreAction::Migrate { from, to, to_env },
        } => store_migrate(&from, to, to_env),
        Command::Cluster { action, target } => with_store(&target, |store, _| {
            match action {
                ClusterAction::Nodes => {
                    for (node, since) in store.cluster_nodes().map_err(|e| e.to_string())? {
                        println!("{node}\trunning (registered {since})");
                    }
                }
                ClusterAction::Forget { node } => {
                    let known = store
                        .cluster_nodes()
                        .map_err(|e| e.to_string())?
                        .iter()
                        .any(|(n, _)| *n == node);
                    if !known {
                        return Err(format!("no running node {node:?} in the registry"));
                    }
                    store
                        .set_cluster_node(&node, None)
                        .map_err(|e| e.to_string())?;
                    println!("node {node} removed from the registry");
                }
            }
            Ok(())
        }),
        Command::Audit {
            action: AuditAction::Verify,
            target,
        } => {
            let mut broken = false;
            let code = with_store(&target, |store, _| {
                match crate::audit::verify(store).map_err(|e| e.to_string())? {
                    crate::audit::Verdict::Intact { entries, head } => {
                        println!("audit trail intact: {entries} entries, head {head}");
                    }
                    crate::audit::Verdict::Broken { seq, why } => {
                        println!("audit trail BROKEN at entry {seq}: {why}");
                        broken = true;
                    }
                }
                Ok(())
            });
            if broken {
                3
            } else {
                code
            }
        }
        Command::Store {
            action:
                StoreAction::Prune {
                    target,
                    days,
                    archive_dir,
                    no_archive,
                },
        } => {
            let db = target.db.clone();
            with_store(&target, |store, cfg| {
                let days = days.or(cfg.map(|c| c.retention.raw_days)).unwrap_or(90);
                if days < 2 {
                    return Err("keep at least 2 days (today and yesterday)".into());
                }
                let archive = if no_archive {
                    None
                } else if let Some(d) = archive_dir {
                    Some(d)
                } else {
                    match (&db, cfg) {
                        (Some(db), _) => Some(PathBuf::from(format!("{}.archive", db.display()))),
                        (None, Some(c)) => c.retention.archive.clone(),
                        (None, None) => None,
                    }
                };
                let now = crate::store::sqlite::unix_now_ms();
                let cutoff = crate::store::retention::cutoff(now, days);
                let mut total = crate::store::retention::PruneReport::default();
                loop {
                    let r = store
                        .prune_usage(
                            cutoff,
                            archive.as_deref(),
                            "cli",
                            crate::store::retention::PASS_ROWS,
                        )
                        .map_err(|e| e.to_string())?;
                    total.skipped |= r.skipped;
                    total.files.extend(r.files);
                    total.days.extend(r.days);
                    total.rows += r.rows;
                    if r.rows < crate::store::retention::PASS_ROWS {
                        break;
                    }
                }
                total.days.sort_unstable();
                total.days.dedup();
                println!(
                    "{}",
                    serde_json::json!({
                        "rows": total.rows,
                        "days": total.days.iter().map(|d| crate::store::retention::day_name(*d)).collect::<Vec<_>>(),
                        "files": total.files,
                        "skipped": total.skipped,
                    })
                );
                Ok(())
            })
        }
        Command::Router { action } => {
            let (config, model, mode) = match &action {
                RouterAction::Score {
                    model,
                    mode,
                    config,
                } => (config, model, mode.as_deref()),
                RouterAction::Bench { model, config, .. } => (config, model, None),
            };
            let (model, policy) =
                match crate::router::cli::load(config.as_deref(), model.as_deref(), mode) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                };
            match action {
                RouterAction::Score { .. } => crate::router::cli::run_score(&model, &policy),
                RouterAction::Bench { rounds, huge, .. } => {
                    crate::router::cli::run_bench(&model, &policy, rounds, huge)
                }
            }
        }
        Command::Passthrough {
            listen,
            upstream,
            threads,
        } => crate::passthrough::run(&listen, upstream, threads),
        Command::MockVendor { listen } => {
            init_logging(LogFormat::Text);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            };
            match rt.block_on(crate::mock::run_standalone(listen)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}

fn with_store(
    target: &StoreTarget,
    f: impl FnOnce(&Store, Option<&Config>) -> Result<(), String>,
) -> i32 {
    let states = UpstreamStates::default();
    let cfg = Config::load(&target.config, &states).ok();
    let db: PathBuf = match (&target.db, &cfg) {
        (Some(db), _) => db.clone(),
        (None, Some(c)) => PathBuf::from(&c.sqlite_path),
        (None, None) => {
            eprintln!(
                "error: cannot read {} (pass --db FILE or --config FILE)",
                target.config.display()
            );
            return 2;
        }
    };
    // The configuration's PostgreSQL record, unless a SQLite file was named.
    let postgres = match (&target.db, &cfg) {
        (None, Some(c)) => c.postgres.clone(),
        _ => None,
    };
    let opened = match postgres {
        Some((url, _)) => Store::open_postgres(&url, 2),
        None => Store::open(Path::new(&db)),
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match f(&store, cfg.as_ref()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn keys(store: &Store, cfg: Option<&Config>, action: KeysAction) -> Result<(), String> {
    match action {
        KeysAction::Create {
            tenant,
            create_tenant,
            name,
            channel,
            allow_channels,
            allow_models,
            expires_at,
            quota,
        } => {
            let quota_nano = match quota {
                Some(q) => Some(
                    crate::billing::pricing::to_nano(q)
                        .filter(|n| *n > 0)
                        .ok_or("--quota must be a positive number of credits")?,
                ),
                None => None,
            };
            let mut models = Vec::new();
            if let Some(cfg) = cfg {
                for c in std::iter::once(&channel).chain(allow_channels.iter()) {
                    if cfg.channel(c).is_none() {
                        return Err(format!("channel `{c}` is not configured"));
                    }
                }
                for m in &allow_models {
                    models.push(
                        cfg.model(m)
                            .ok_or_else(|| format!("model `{m}` is not configured"))?
                            .name
                            .clone(),
                    );
                }
            } else {
                models = allow_models;
            }
            let t = match store.find_tenant(&tenant) {
                Ok(t) => t,
                Err(_) if create_tenant => {
                    store.create_tenant(&tenant).map_err(|e| e.to_string())?
                }
                Err(e) => return Err(format!("{e} (add --create-tenant to create it)")),
            };
            let (key, plaintext) = store
                .create_key(&NewKey {
                    tenant_id: t.id,
                    name,
                    default_channel: channel,
                    allowed_channels: allow_channels,
                    allowed_models: models,
                    expires_at,
                    quota_nano,
                    user_id: None,
                    limits: Default::default(),
                })
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!({"key": plaintext, "record": key}));
            Ok(())
        }
        KeysAction::List { tenant } => {
            let tenant_id = match tenant {
                Some(t) => Some(store.find_tenant(&t).map_err(|e| e.to_string())?.id),
                None => None,
            };
            for k in store.list_keys(tenant_id).map_err(|e| e.to_string())? {
                println!("{}", serde_json::json!(k));
            }
            Ok(())
        }
        KeysAction::Revoke { id } => {
            let k = store
                .revoke_key(crate::tenancy::KeyId(id))
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!(k));
            Ok(())
        }
    }
}

fn store_migrate(from: &str, to: Option<String>, to_env: Option<String>) -> i32 {
    let url = match (to, to_env) {
        (Some(u), _) => u,
        (None, Some(var)) => match std::env::var(&var) {
            Ok(u) if !u.is_empty() => u,
            _ => {
                eprintln!("error: environment variable {var} is not set");
                return 2;
            }
        },
        (None, None) => {
            eprintln!("error: give --to postgres://... or --to-env VAR");
            return 2;
        }
    };
    let path = from.strip_prefix("sqlite://").unwrap_or(from);
    if !Path::new(path).exists() {
        eprintln!("error: no SQLite store at {path}");
        return 2;
    }
    let store = match Store::open(Path::new(path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        let pg = crate::store::pg::PgStore::connect(&url, 2).await?;
        crate::store::copy::sqlite_to_postgres(&store, &pg).await
    });
    match result {
        Ok(report) => {
            for (table, n) in &report.rows {
                println!("{table:<18} {n:>12} rows");
            }
            for (tenant, credited, charged) in &report.totals {
                println!("tenant {tenant}: credited {credited} nano-credits, charged {charged}: the same in both stores");
            }
            println!("migrated {path} into PostgreSQL");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
