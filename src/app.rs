//! The process-wide state shared by the gateway, the admin API and the background services.

use crate::billing::usage::UsageSink;
use crate::config::Config;
use crate::metrics::METRICS;
use crate::routing::upstream::{BreakerState, UpstreamStates};
use crate::store::sqlite::Store;
use crate::tenancy::keys::KeyRing;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct App {
    config: ArcSwap<Config>,
    pub config_path: Option<PathBuf>,
    pub states: UpstreamStates,
    pub keys: KeyRing,
    pub store: Store,
    pub usage: UsageSink,
    pub ledger: Arc<crate::billing::ledger::Ledger>,
    pub limiter: crate::tenancy::limits::RateLimiter,
    /// Operator token for the admin API.
    pub admin_token: Option<String>,
    generation: AtomicU64,
    /// When the running configuration was loaded (unix seconds).
    loaded_at: std::sync::atomic::AtomicI64,
    reload_error: ArcSwap<Option<String>>,
    /// Conversations the complexity router escalated (service-wide; sized at start).
    pub sticky: crate::router::StickyMap,
    /// Tenants' router policies with their override applied, per configuration generation.
    pub route_policies: dashmap::DashMap<
        crate::tenancy::TenantId,
        (
            u64,
            Arc<crate::router::TenantRouterOverride>,
            Arc<crate::router::RoutePolicy>,
        ),
    >,
}

impl App {
    pub fn new(
        config: Config,
        states: UpstreamStates,
        config_path: Option<PathBuf>,
        store: Store,
        usage: UsageSink,
        ledger: Arc<crate::billing::ledger::Ledger>,
        admin_token: Option<String>,
    ) -> Arc<App> {
        let sticky = match config.router.as_deref() {
            Some(r) => crate::router::StickyMap::new(r.sticky_capacity, r.sticky_ttl),
            None => crate::router::StickyMap::new(100_000, std::time::Duration::from_secs(3600)),
        };
        let app = Arc::new(App {
            sticky,
            route_policies: dashmap::DashMap::new(),
            config: ArcSwap::from_pointee(config),
            config_path,
            states,
            keys: KeyRing::default(),
            store,
            usage,
            ledger,
            limiter: Default::default(),
            admin_token,
            generation: AtomicU64::new(1),
            loaded_at: std::sync::atomic::AtomicI64::new(crate::tenancy::unix_now()),
            reload_error: ArcSwap::from_pointee(None),
        });
        METRICS.config_generation.set(1);
        app.export_upstream_health();
        app
    }

    /// The running configuration (cheap: an `Arc` clone).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn install(&self, cfg: Config) {
        self.config.store(Arc::new(cfg));
        self.loaded_at
            .store(crate::tenancy::unix_now(), Ordering::Release);
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        METRICS.config_generation.set(g as i64);
        self.export_upstream_health();
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// When the running configuration was loaded (unix seconds).
    pub fn loaded_at(&self) -> i64 {
        self.loaded_at.load(Ordering::Acquire)
    }

    pub fn set_reload_error(&self, e: Option<String>) {
        self.reload_error.store(Arc::new(e));
    }

    pub fn reload_error(&self) -> Option<String> {
        (**self.reload_error.load()).clone()
    }

    /// Refresh `tollgate_upstream_healthy` (called on scrape and on config change).
    pub fn export_upstream_health(&self) {
        let cfg = self.config();
        METRICS.upstream_healthy.reset();
        for up in cfg.upstreams() {
            let healthy = up.disabled.is_none()
                && up.state.has_addrs()
                && up.state.breaker_state() == BreakerState::Closed;
            METRICS
                .upstream_healthy
                .with_label_values(&[&up.id])
                .set(i64::from(healthy));
            // Exported at 0 from the start (a lookup of an existing series otherwise).
            METRICS.breaker_opened.with_label_values(&[&up.id]);
        }
    }

    /// Reload the key snapshot from the store when its generation moved.
    pub fn refresh_keys(&self) -> Result<bool, crate::store::sqlite::StoreError> {
        let generation = self.store.key_generation()?;
        if generation == self.keys.generation() {
            return Ok(false);
        }
        let snap = self.store.load_key_snapshot()?;
        self.keys.replace(snap);
        Ok(true)
    }
}

/// Polls the store for key changes made by other processes (the CLI) or the admin API.
pub struct KeyRefresher {
    pub app: Arc<App>,
    pub every: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let app = self.app.clone();
                    match tokio::task::spawn_blocking(move || app.refresh_keys()).await {
                        Ok(Ok(true)) => tracing::info!("API keys reloaded"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "key refresh failed"),
                        Err(e) => tracing::warn!(error = %e, "key refresh task failed"),
                    }
                }
            }
        }
    }
}
