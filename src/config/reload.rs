//! Hot reload. Triggers: SIGHUP, a change of the file's contents (polled once a second, so it
//! works on every filesystem and with editors that replace the file), and `POST /admin/reload`.
//! A new configuration is built beside the running one and swapped in atomically; requests in
//! flight keep the `Arc<Config>` they started with, so nothing is dropped. A file that fails to
//! validate leaves the running configuration in place and its error is logged, exported as
//! `tollgate_config_reloads_total{result="error"}` and shown by `GET /admin/config/status`.

use super::{Config, ConfigError};
use crate::app::App;
use crate::metrics::METRICS;
use crate::routing::resolver;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Load the file, resolve its hosts, and swap it in. Blocking; call off the async workers.
pub fn reload_blocking(app: &App) -> Result<(), ConfigError> {
    let Some(path) = app.config_path.as_ref() else {
        return Err(ConfigError::Read {
            path: "(embedded)".into(),
            reason: "this gateway runs on an embedded configuration; there is no file to reload"
                .into(),
        });
    };
    let result = Config::load(path, &app.states).map(|cfg| {
        let failures = resolver::resolve_all(&cfg);
        (cfg, failures)
    });
    match result {
        Ok((cfg, dns_failures)) => {
            for w in cfg.warnings.iter().chain(dns_failures.iter()) {
                tracing::warn!(warning = %w, "configuration warning");
            }
            let keep: HashSet<String> = cfg.upstreams().map(|u| u.id.clone()).collect();
            app.install(cfg);
            app.states.retain(&keep);
            METRICS.config_reloads.with_label_values(&["ok"]).inc();
            app.set_reload_error(None);
            tracing::info!(path = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            METRICS.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "configuration reload failed; keeping the running configuration");
            app.set_reload_error(Some(e.to_string()));
            Err(e)
        }
    }
}

pub async fn reload(app: Arc<App>) -> Result<(), ConfigError> {
    match tokio::task::spawn_blocking(move || reload_blocking(&app)).await {
        Ok(r) => r,
        Err(e) => Err(ConfigError::Read {
            path: "(reload task)".into(),
            reason: e.to_string(),
        }),
    }
}

/// A reload not made through the admin API (those are recorded there) goes into the audit
/// trail with actor `system`.
async fn audit_reload(app: &Arc<App>, trigger: &'static str, r: &Result<(), ConfigError>) {
    let (app, error) = (app.clone(), r.as_ref().err().map(|e| e.to_string()));
    let status = if error.is_none() { 200 } else { 400 };
    let _ = tokio::task::spawn_blocking(move || {
        let fields = serde_json::json!({
            "trigger": trigger,
            "path": app.config_path.as_ref().map(|p| p.display().to_string()),
            "error": error,
        });
        if let Err(e) = crate::audit::record(&app.store, None, "system", "reload configuration", status, &fields) {
            tracing::error!(target: "audit", error = %e, "a configuration reload could not be recorded in the audit trail");
        }
    })
    .await;
}

fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// What the watcher compares: the configuration file's contents, plus the size and
/// modification time of the router's model file (replacing the model alone reloads too).
fn watched_digest(app: &App, path: &std::path::Path) -> Option<[u8; 32]> {
    let config = file_digest(path)?;
    let mut h = Sha256::new();
    h.update(config);
    if let Some(r) = app.config().router.as_deref() {
        if let Ok(m) = std::fs::metadata(&r.model_file) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified() {
                let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                h.update(d.as_nanos().to_le_bytes());
            }
        }
    }
    Some(h.finalize().into())
}

/// Watches SIGHUP and the configuration file; also refreshes DNS of upstream hosts.
pub struct ConfigWatcher {
    pub app: Arc<App>,
    pub poll: Duration,
}

#[async_trait::async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let app = self.app.clone();
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let path = app.config_path.clone();
        let mut last = path.as_deref().and_then(|p| watched_digest(&app, p));
        let mut tick = tokio::time::interval(self.poll);
        let mut dns = tokio::time::interval(resolver::REFRESH_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => {
                    tracing::info!("SIGHUP received: reloading configuration");
                    let r = reload(app.clone()).await;
                    audit_reload(&app, "SIGHUP", &r).await;
                    last = path.as_deref().and_then(|p| watched_digest(&app, p));
                }
                _ = tick.tick() => {
                    let Some(p) = path.as_deref() else { continue };
                    let now = watched_digest(&app, p);
                    if now.is_some() && now != last {
                        tracing::info!(path = %p.display(), "configuration or router model file changed: reloading");
                        let r = reload(app.clone()).await;
                        audit_reload(&app, "file changed", &r).await;
                        // After the reload: a new router section may watch another model file.
                        last = watched_digest(&app, p).or(now);
                    }
                }
                _ = dns.tick() => {
                    let cfg = app.config();
                    let failures = tokio::task::spawn_blocking(move || resolver::resolve_all(&cfg)).await.unwrap_or_default();
                    for f in failures {
                        tracing::warn!(failure = %f, "DNS refresh");
                    }
                }
            }
        }
    }
}
