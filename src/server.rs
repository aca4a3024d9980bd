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
use crate::store::sqlite::Store;
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
    Store(#[from] crate::store::sqlite::StoreError),
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
    /// Request heads must arrive within this (`proxy::conn::HeadDeadline`); read at start.
    header_timeout: Duration,
    /// `server.proxy_protocol` and the proxies it is taken from; read at start.
    proxy_protocol: bool,
    trusted_proxies: Vec<ipnet::IpNet>,
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Draining<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: pingora_core::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora_core::protocols::Stream> {
        let session =
            if self.proxy_protocol && !session.as_any().is::<crate::proxy::conn::HeadDeadline>() {
                crate::proxy::conn::read_proxy_header(
                    session,
                    self.header_timeout,
                    &self.trusted_proxies,
                )
                .await?
            } else {
                session
            };
        let session: pingora_core::protocols::Stream =
            if session.as_any().is::<crate::proxy::conn::HeadDeadline>() {
                session
            } else {
                Box::new(crate::proxy::conn::HeadDeadline::new(
                    session,
                    self.header_timeout,
                ))
            };
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.settle).await;
        self.inner.cleanup().await;
    }
}

/// Pingora's signals (SIGQUIT: upgrade, SIGTERM: graceful stop, SIGINT: fast stop), with the
/// ledger hand-over on SIGQUIT in embedded mode, before the listeners go to the new process
/// (`billing::handover`).
struct Signals {
    app: Arc<App>,
    upgrade_sock: Option<String>,
}

#[async_trait::async_trait]
impl pingora_core::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora_core::server::ShutdownSignal {
        use pingora_core::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot watch signals; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: graceful upgrade; handing over to the new process");
                if let Some(sock) = self.upgrade_sock.clone() {
                    let app = self.app.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::billing::handover::give(&app, &sock)
                    })
                    .await;
                }
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: graceful stop");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: fast stop");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// Ends the process as soon as a graceful stop (SIGTERM) or the old side of an upgrade
/// (SIGQUIT) has nothing left to do. Pingora itself would sleep its whole grace period
/// (`graceful_shutdown_seconds`) even with nothing in flight; that stays the upper bound.
/// Order: the listener is closed (Pingora), connections accepted just before it get `settle` to
/// bring their request, in-flight requests finish, the recorder stores every record (the
/// charge log is synced), cluster mode gives its allowance back, the log is written out.
struct Exit {
    app: Arc<App>,
    settle: Duration,
    cluster_stopped: Option<Arc<std::sync::atomic::AtomicBool>>,
}

#[async_trait::async_trait]
impl BackgroundService for Exit {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use crate::metrics::METRICS;
        use std::sync::atomic::Ordering;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let begun = std::time::Instant::now();
        tracing::info!(
            in_flight = METRICS.inflight.get(),
            "shutdown: listener closed; draining requests in flight"
        );
        tokio::time::sleep(self.settle).await;
        let poll = Duration::from_millis(10);
        while METRICS.inflight.get() > 0 {
            tokio::time::sleep(poll).await;
        }
        while !self.app.ledger.all_stored(self.app.usage.queued()) {
            tokio::time::sleep(poll).await;
        }
        if let Some(log) = self.app.ledger.charge_log() {
            log.sync();
        }
        if let Some(done) = &self.cluster_stopped {
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(poll).await;
            }
        }
        tracing::info!(
            after_ms = begun.elapsed().as_millis() as u64,
            "shutdown complete: every request answered, every charge stored"
        );
        crate::logbuf::flush();
        std::process::exit(0);
    }
}

/// Budget and balance alerts (`alerts`): every `[alerts] check_seconds`, on every node (the
/// store's compare-and-set makes one of them fire each crossing); then unpaid payment orders
/// ten minutes past their deadline are marked expired.
struct AlertService {
    app: Arc<App>,
}

#[async_trait::async_trait]
impl BackgroundService for AlertService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let wait = self.app.config().alert_check;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            crate::alerts::check_all(&self.app).await;
            // Unpaid orders past their deadline (and a grace for payments in flight) expire.
            let store = self.app.store.clone();
            let now = crate::tenancy::unix_now();
            if let Ok(Ok(n)) =
                tokio::task::spawn_blocking(move || store.expire_orders(now, 600)).await
            {
                if n > 0 {
                    tracing::info!(orders = n, "unpaid payment orders expired");
                }
            }
        }
    }
}

/// Retention of raw usage records (`store::retention`): a pass shortly after start-up, then
/// every `store.prune_every_minutes`, on the blocking pool (the SQLite store's batches hold its
/// lock for a few milliseconds each; PostgreSQL passes run on one node at a time).
struct RetentionService {
    app: Arc<App>,
    retention: crate::config::Retention,
    node: String,
}

#[async_trait::async_trait]
impl BackgroundService for RetentionService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use crate::metrics::METRICS;
        use crate::store::retention::{cutoff, day_name, PASS_ROWS};
        if self.retention.raw_days == 0 {
            return;
        }
        let mut wait = Duration::from_secs(5);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let store = self.app.store.clone();
            let archive = self.retention.archive.clone();
            let node = self.node.clone();
            let cut = cutoff(crate::store::sqlite::unix_now_ms(), self.retention.raw_days);
            let pass = tokio::task::spawn_blocking(move || {
                store.prune_usage(cut, archive.as_deref(), &node, PASS_ROWS)
            })
            .await;
            wait = self.retention.every;
            match pass {
                Ok(Ok(r)) => {
                    METRICS.usage_events_pruned.inc_by(r.rows);
                    if r.rows > 0 {
                        tracing::info!(
                            rows = r.rows,
                            days = ?r.days.iter().map(|d| day_name(*d)).collect::<Vec<_>>(),
                            files = ?r.files,
                            "retention: raw usage records archived and pruned"
                        );
                    }
                    if r.rows >= PASS_ROWS {
                        // More is waiting: go on soon, leaving room to the request path.
                        wait = Duration::from_secs(1);
                    }
                }
                Ok(Err(e)) => {
                    METRICS.retention_failures.inc();
                    tracing::error!(error = %e, "retention: pass failed; records kept, retried at the next pass");
                }
                Err(e) => {
                    METRICS.retention_failures.inc();
                    tracing::error!(error = %e, "retention: pass did not finish");
                }
            }
        }
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
    /// Segments of a previous run of this host, replayed into SQL at start-up: their charges
    /// not in Redis yet are flushed before the leases are reclaimed.
    orphans: Mutex<Option<crate::billing::chargelog::Orphans>>,
    charge_log: Arc<crate::billing::chargelog::ChargeLog>,
    /// Set once the allowance is flushed and given back after shutdown.
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, shutdown: ShutdownWatch) {
        use crate::billing::cluster::{AllowanceConfig, Allowances, Bank, BankConfig};
        let s = &self.settings;
        let bank_cfg = BankConfig {
            op_timeout: s.op_timeout,
            create_bank: false,
            ..BankConfig::default()
        };
        let bank_file = self.charge_log.dir().join("bank.id");
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
        let orphans = self.orphans.lock().ok().and_then(|mut o| o.take());
        // A crashed run's batches belong to the bank it served on: sent to Redis only if Redis
        // still holds that bank. Otherwise (the bank was lost or rebuilt meanwhile) their
        // charges are in the record already (replayed at start) and the bank is, or will be,
        // seeded from it.
        let marker = bank.marker();
        let same_bank = !bank.state_lost()
            && crate::billing::fleet::read_bank_file(&bank_file).is_none_or(|m| m == marker);
        let orphans = match orphans {
            Some(o) if !same_bank => {
                let unflushed: i64 = o
                    .unflushed()
                    .iter()
                    .flat_map(|(_, c)| c.iter().map(|x| x.1))
                    .sum();
                if unflushed != 0 {
                    tracing::warn!(unflushed, "cluster mode: a crashed run's unflushed charges belong to a credit bank Redis no longer holds; they are in the record, not sent to Redis");
                }
                if let Err(e) = o.remove() {
                    tracing::warn!(error = %e, "charge log: cannot delete replayed segments");
                }
                None
            }
            o => o,
        };
        if !bank.state_lost() {
            crate::billing::fleet::write_bank_file(&bank_file, &marker);
        }
        if let Some(orphans) = orphans {
            // A crashed run's charges that did not reach Redis: spent from its lease, so they
            // must be charged before that lease is given back (never return spent credit).
            for (id, charges) in orphans.unflushed() {
                loop {
                    match bank.flush(&id, &charges).await {
                        Ok(()) => break,
                        Err(e) if e.is_unavailable() || e.is_ambiguous() => {
                            tracing::warn!(error = %e, batch = %id, "cluster mode: replaying a crashed run's charges; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, batch = %id, "cluster mode: a crashed run's charges could not be applied in redis");
                            break;
                        }
                    }
                }
                tracing::info!(batch = %id, buckets = charges.len(), "cluster mode: charges of a crashed run flushed to redis");
            }
            if let Err(e) = orphans.remove() {
                tracing::warn!(error = %e, "charge log: cannot delete replayed segments");
            }
        }
        if self.reclaim && same_bank {
            while let Err(e) = bank.reclaim_own_leases().await {
                tracing::error!(error = %e, "cluster mode: cannot reclaim this node's leases; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let mut cfg = AllowanceConfig::new(s.lease_chunk);
        cfg.idle_return_after = s.idle_return;
        let allowances = Allowances::with_config(bank, cfg);
        allowances.set_charge_log(self.charge_log.clone());
        let fleet = crate::billing::fleet::Fleet::new(
            allowances,
            self.app.store.clone(),
            self.app.ledger.unstored_handle(),
            Some(bank_file),
        );
        if let Err(e) = fleet.replay_credits().await {
            tracing::warn!(error = %e, "cluster mode: first credit replay failed; retrying in the background");
        }
        self.app.ledger.attach_fleet(fleet.clone());
        tracing::info!(node = %s.node_id, "cluster mode: credit bank connected");
        tokio::spawn(watch_bank(
            fleet.allowances().bank().clone(),
            Duration::from_millis(500),
            shutdown.clone(),
        ));
        tokio::spawn(sync_rate_limits(
            self.app.clone(),
            fleet.allowances().bank().clone(),
            s.flush,
            shutdown.clone(),
        ));
        fleet
            .run(s.flush, Duration::from_millis(250), shutdown)
            .await;
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Cluster mode: asks the credit bank for a PING every `every`, so that readiness (`/readyz`)
/// and `tollgate_credit_bank_up` follow Redis whether or not calls are flowing: a load balancer
/// stops sending traffic to a node that can only answer 503.
async fn watch_bank(
    bank: Arc<crate::billing::cluster::Bank>,
    every: Duration,
    shutdown: ShutdownWatch,
) {
    let mut was_up = true;
    while !*shutdown.borrow() {
        let up = bank.probe().await;
        crate::metrics::METRICS.credit_bank_up.set(i64::from(up));
        if up != was_up {
            if up {
                tracing::info!("cluster mode: credit bank reachable again; ready");
            } else {
                tracing::error!("cluster mode: credit bank unreachable; not ready (calls get 503)");
            }
            was_up = up;
        }
        tokio::time::sleep(every).await;
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

/// Replays the charge log segments no live process holds (a previous run that crashed: the
/// charges it served and had not committed yet) into the store, each charge once by its
/// request id, then opens this process's own log (`billing::chargelog`). In cluster mode the
/// old segments are returned, still locked: their charges may be missing in Redis too, which
/// the cluster service settles before it reclaims the old run's leases.
fn open_charge_log(
    store: &Store,
    store_path: &std::path::Path,
    cluster_node: Option<&str>,
    sync_every: Duration,
) -> Result<
    (
        Arc<crate::billing::chargelog::ChargeLog>,
        Option<crate::billing::chargelog::Orphans>,
    ),
    StartError,
> {
    use crate::billing::chargelog::{self, ChargeLog};
    // Cluster nodes on one host share the store file: each replays only its own segments
    // (their unflushed charges were spent from its own Redis lease).
    let dir = match cluster_node {
        Some(node) => ChargeLog::dir_for(store_path).join(node),
        None => ChargeLog::dir_for(store_path),
    };
    let cluster = cluster_node.is_some();
    let io = |e: std::io::Error| StartError::Other(format!("charge log {}: {e}", dir.display()));
    let orphans = chargelog::orphaned(&dir).map_err(io)?;
    let mut kept = None;
    if !orphans.files.is_empty() {
        let events = orphans.events();
        let new = store.record(&events)?;
        store.checkpoint()?;
        tracing::info!(
            segments = orphans.files.len(),
            charges = events.len(),
            recovered = new,
            "charge log: replayed the segments of a previous run (charges it had not committed)"
        );
        if cluster {
            kept = Some(orphans);
        } else {
            orphans.remove().map_err(io)?;
        }
    }
    let log = ChargeLog::open(&dir, cluster, sync_every)
        .map(Arc::new)
        .map_err(io)?;
    Ok((log, kept))
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

    // Embedded mode, new side of an upgrade: listen for the old process's books first thing
    // (systemd signals the old process before it starts this one; it waits for this socket).
    let embedded = config.cluster.is_none();
    let taker = if upgrade && embedded {
        match crate::billing::handover::Taker::bind(&config.server.upgrade_sock) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: cannot listen for the ledger hand-over; starting from the store");
                None
            }
        }
    } else {
        None
    };
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    for f in resolver::resolve_all(&config) {
        tracing::warn!(failure = %f, "DNS");
    }

    let store = match &config.postgres {
        Some((url, connections)) => {
            let s = Store::open_postgres(url, *connections)?;
            tracing::info!("store: PostgreSQL");
            s
        }
        None => Store::open(std::path::Path::new(&config.sqlite_path))?,
    };
    let (sink, usage_rx): (UsageSink, _) = usage::queue();
    let (charge_log, orphans) = open_charge_log(
        &store,
        std::path::Path::new(&config.sqlite_path),
        config.cluster.as_ref().map(|c| c.node_id.as_str()),
        config.billing.charge_log_sync,
    )?;
    let (ledger, journal) = Ledger::recover_with_log(&store, Some(charge_log.clone()))?;
    ledger.set_max_unstored(config.billing.max_unstored_charges);
    let journal_flush = config.billing.journal_flush;
    let cluster = config.cluster.clone();
    if cluster.is_some() {
        ledger.expect_fleet();
    }
    let server_settings = config.server.clone();
    let retention = config.retention.clone();
    let node = match &config.cluster {
        Some(c) => c.node_id.clone(),
        None => config.server.listen.clone(),
    };
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
    let handover = taker.map(|t| t.serve(app.clone()));
    server.bootstrap();
    if let Some(installed) = handover {
        // The old process sends its books before it sends the listeners: they are here now,
        // unless it is a version without the hand-over.
        match installed.recv_timeout(Duration::from_secs(2)) {
            Ok(()) => tracing::info!("upgrade: books taken over from the old process"),
            Err(_) => tracing::warn!(
                "upgrade: the old process handed over no books; balances are as the store had them"
            ),
        }
    }

    let settle = (server_settings.graceful_shutdown / 2).min(Duration::from_secs(1));
    let mut gateway = Service::new(
        "tollgate gateway".to_string(),
        Draining {
            inner: Arc::new({
                let mut proxy =
                    pingora_proxy::http_proxy(&server.configuration, Gateway::new(app.clone()));
                let mut options = pingora_core::apps::HttpServerOptions::default();
                // Pingora counts reuses: the first request plus `limit` more.
                options.keepalive_request_limit =
                    Some(server_settings.keepalive_requests.saturating_sub(1));
                proxy.server_options = Some(options);
                proxy
            }),
            settle,
            header_timeout: server_settings.header_timeout,
            proxy_protocol: server_settings.proxy_protocol,
            trusted_proxies: server_settings.trusted_proxies.clone(),
        },
    );
    gateway.add_tcp(&server_settings.listen);

    let mut admin = Service::new("tollgate admin".to_string(), AdminApi::new(app.clone()));
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
    server.add_service(background_service(
        "retention",
        RetentionService {
            app: app.clone(),
            retention,
            node,
        },
    ));
    server.add_service(background_service(
        "alerts",
        AlertService { app: app.clone() },
    ));
    let cluster_stopped = cluster
        .as_ref()
        .map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    if let (Some(settings), Some(stopped)) = (cluster, cluster_stopped.clone()) {
        server.add_service(background_service(
            "cluster",
            ClusterService {
                app: app.clone(),
                settings,
                reclaim: !upgrade,
                stopped,
                orphans: Mutex::new(orphans),
                charge_log: charge_log.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "exit",
        Exit {
            app: app.clone(),
            settle,
            cluster_stopped,
        },
    ));
    tracing::info!(listen = %server_settings.listen, admin = %admin_listen, "tollgate starting");
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(Signals {
            app: app.clone(),
            upgrade_sock: embedded.then(|| server_settings.upgrade_sock.clone()),
        }),
    });
    // Pingora returns once every service has stopped: write out what the log buffer holds.
    crate::logbuf::flush();
    std::process::exit(0);
}

/// A shared handle for in-process use (tests of the library itself).
pub type SharedApp = Arc<App>;
