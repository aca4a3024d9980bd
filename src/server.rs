//! Assembling the Pingora `Server`: the gateway, the admin API and the background services.

use crate::admin::AdminApi;
use crate::app::{App, KeyRefresher};
use crate::billing::ledger::Ledger;
use crate::billing::usage::{self, UsageSink};
use crate::config::reload::ConfigWatcher;
use crate::config::{Config, ConfigError};
use crate::proxy::Gateway;
use crate::routing::resolver;
use crate::routing::upstream::UpstreamStates;
use crate::tenancy::store::Store;
use pingora_core::apps::ServerApp;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] crate::tenancy::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// What `tollgate run` and `tollgate demo` need to start.
pub struct Launch {
    pub config: Config,
    pub states: UpstreamStates,
    pub config_path: Option<PathBuf>,
    /// Take over listeners from a running instance (Pingora graceful upgrade).
    pub upgrade: bool,
    /// Fork into the background (systemd `Type=forking`).
    pub daemon: bool,
    pub admin_token: Option<String>,
}

type WriterFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the recorder (charges + usage events to the store) for the life of the process.
struct Recorder {
    run: Mutex<Option<WriterFuture>>,
}

#[async_trait::async_trait]
impl BackgroundService for Recorder {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Deliberately not stopped by the shutdown signal: the gateway keeps finishing
        // in-flight requests during the grace period and their events must still be written.
        // The writer flushes every 100 ms until Pingora tears the runtime down.
        let fut = self.run.lock().ok().and_then(|mut g| g.take());
        if let Some(fut) = fut {
            fut.await;
        }
    }
}

/// The gateway's proxy app with a delayed clean-up. When the listener stops (shutdown, or the
/// hand-over of a graceful upgrade), Pingora's proxy immediately drops every connection still
/// waiting for its first request, including ones accepted an instant before whose request bytes
/// are on their way: those clients saw a connection accepted and then closed, and fail. Waiting
/// `settle` before that clean-up lets such requests arrive and be served (with keep-alive off,
/// as Pingora does during shutdown); idle keep-alive connections are closed after it.
struct Draining<A> {
    inner: Arc<A>,
    settle: Duration,
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Draining<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: pingora_core::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora_core::protocols::Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.settle).await;
        self.inner.cleanup().await;
    }
}

/// Cluster mode: connects to Redis (retrying until it answers), gives back the leases a
/// previous run of this node left (not after a graceful upgrade: the old process is still
/// draining and returns its own), attaches the fleet to the ledger, then runs the credit
/// replay and the allowance flusher until shutdown (which flushes and gives everything back).
struct ClusterService {
    app: Arc<App>,
    settings: crate::config::ClusterSettings,
    reclaim: bool,
}

#[async_trait::async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, shutdown: ShutdownWatch) {
        use crate::billing::cluster::{AllowanceConfig, Allowances, Bank, BankConfig};
        let s = &self.settings;
        let bank_cfg = BankConfig {
            op_timeout: s.op_timeout,
            ..BankConfig::default()
        };
        let mut logged = false;
        let bank = loop {
            match Bank::connect_with(&s.redis_url, &s.node_id, &s.key_prefix, bank_cfg.clone())
                .await
            {
                Ok(b) => break Arc::new(b),
                Err(e) => {
                    if !logged {
                        tracing::error!(error = %e, "cluster mode: cannot reach redis; calls are refused until it answers");
                        logged = true;
                    }
                    if *shutdown.borrow() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        if self.reclaim {
            while let Err(e) = bank.reclaim_own_leases().await {
                tracing::error!(error = %e, "cluster mode: cannot reclaim this node's leases; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let mut cfg = AllowanceConfig::new(s.lease_chunk);
        cfg.idle_return_after = s.idle_return;
        let allowances = Allowances::with_config(bank, cfg);
        let fleet = crate::billing::fleet::Fleet::new(allowances, self.app.store.clone());
        if let Err(e) = fleet.replay_credits().await {
            tracing::warn!(error = %e, "cluster mode: first credit replay failed; retrying in the background");
        }
        self.app.ledger.attach_fleet(fleet.clone());
        tracing::info!(node = %s.node_id, "cluster mode: credit bank connected");
        tokio::spawn(sync_rate_limits(
            self.app.clone(),
            fleet.allowances().bank().clone(),
            s.flush,
            shutdown.clone(),
        ));
        fleet
            .run(s.flush, Duration::from_millis(250), shutdown)
            .await;
    }
}

/// Cluster mode: every `every`, push this node's rate-limit counts to Redis and learn the
/// other nodes' (one round trip for all active subjects). While Redis is unreachable each node
/// enforces the limits on what it sees itself.
async fn sync_rate_limits(
    app: Arc<App>,
    bank: Arc<crate::billing::cluster::Bank>,
    every: Duration,
    shutdown: ShutdownWatch,
) {
    let mut failing = false;
    while !*shutdown.borrow() {
        tokio::time::sleep(every).await;
        let deltas = app.limiter.take_deltas(crate::proxy::now_ms());
        if deltas.is_empty() {
            continue;
        }
        match bank.sync_rates(&deltas).await {
            Ok(totals) => {
                app.limiter.apply_totals(&deltas, &totals);
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cluster mode: rate-limit sync failed; limits are per node until redis answers");
                }
                failing = true;
            }
        }
    }
}

/// Open the store, build the services and run until a shutdown signal. Never returns early
/// on success (Pingora exits the process).
pub fn run(launch: Launch) -> Result<(), StartError> {
    let Launch {
        config,
        states,
        config_path,
        upgrade,
        daemon,
        admin_token,
    } = launch;

    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    for f in resolver::resolve_all(&config) {
        tracing::warn!(failure = %f, "DNS");
    }

    let store = Store::open(std::path::Path::new(&config.sqlite_path))?;
    let (sink, usage_rx): (UsageSink, _) = usage::queue();
    let (ledger, journal) = Ledger::recover(&store)?;
    let journal_flush = config.billing.journal_flush;
    let cluster = config.cluster.clone();
    if cluster.is_some() {
        ledger.expect_fleet();
    }
    let server_settings = config.server.clone();
    let admin_listen = config.admin.listen.clone();
    let app = App::new(
        config,
        states,
        config_path,
        store,
        sink,
        ledger,
        admin_token,
    );
    app.refresh_keys()?;

    let conf = ServerConf {
        threads: server_settings.threads,
        daemon,
        upgrade_sock: server_settings.upgrade_sock.clone(),
        pid_file: server_settings.pid_file.clone(),
        ca_file: server_settings.ca_file.clone(),
        grace_period_seconds: Some(server_settings.graceful_shutdown.as_secs()),
        graceful_shutdown_timeout_seconds: Some(server_settings.graceful_shutdown.as_secs().max(1)),
        // Failover is decided by the gateway (bounded per channel); this only caps Pingora's loop.
        max_retries: 16,
        ..Default::default()
    };
    let opt = Opt {
        upgrade,
        daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut gateway = Service::new(
        "tollgate gateway".to_string(),
        Draining {
            inner: Arc::new(pingora_proxy::http_proxy(
                &server.configuration,
                Gateway::new(app.clone()),
            )),
            settle: (server_settings.graceful_shutdown / 2).min(Duration::from_secs(1)),
        },
    );
    gateway.add_tcp(&server_settings.listen);

    let mut admin = Service::new("tollgate admin".to_string(), AdminApi { app: app.clone() });
    admin.add_tcp(&admin_listen);

    let watcher = background_service(
        "config watcher",
        ConfigWatcher {
            app: app.clone(),
            poll: Duration::from_secs(1),
        },
    );
    let keys = background_service(
        "key refresher",
        KeyRefresher {
            app: app.clone(),
            every: Duration::from_secs(1),
        },
    );
    let journal = background_service(
        "recorder",
        Recorder {
            run: Mutex::new(Some(Box::pin(journal.run(journal_flush, Some(usage_rx))))),
        },
    );

    server.add_service(gateway);
    server.add_service(admin);
    server.add_service(watcher);
    server.add_service(keys);
    server.add_service(journal);
    if let Some(settings) = cluster {
        server.add_service(background_service(
            "cluster",
            ClusterService {
                app: app.clone(),
                settings,
                reclaim: !upgrade,
            },
        ));
    }
    tracing::info!(listen = %server_settings.listen, admin = %admin_listen, "tollgate starting");
    server.run(pingora_core::server::RunArgs::default());
    // Pingora returns once every service has stopped: write out what the log buffer holds.
    crate::logbuf::flush();
    std::process::exit(0);
}

/// A shared handle for in-process use (tests of the library itself).
pub type SharedApp = Arc<App>;
