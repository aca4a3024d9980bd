//! The PostgreSQL store behind the synchronous `store::sqlite::Store` the gateway calls: the
//! store's futures run on a small runtime of their own, and the caller waits on a channel. That
//! works from any thread (an admin handler, the recorder thread, the blocking pool, the CLI),
//! as a SQLite call does, without nesting one tokio runtime in another.

use super::pg::PgStore;
use crate::store::sqlite::StoreError;
use std::future::Future;
use std::pin::Pin;

/// A future of the PostgreSQL store, boxed to cross to the store's runtime.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

pub struct PgBackend {
    rt: Option<tokio::runtime::Runtime>,
    store: PgStore,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgBackend")
    }
}

impl PgBackend {
    /// Connects (and migrates) with `max_connections` pooled connections.
    pub fn open(url: &str, max_connections: u32) -> Result<PgBackend, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tollgate-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("store runtime: {e}")))?;
        let url = url.to_string();
        let store = wait(
            &rt,
            Box::pin(async move { PgStore::connect(&url, max_connections).await }),
        )?;
        Ok(PgBackend {
            rt: Some(rt),
            store,
        })
    }

    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Runs `f` on the store's runtime and waits for its answer.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(PgStore) -> StoreFuture<T>,
    ) -> Result<T, StoreError> {
        let Some(rt) = &self.rt else {
            return Err(StoreError::Postgres("the store is closed".into()));
        };
        wait(rt, f(self.store.clone()))
    }
}

fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: StoreFuture<T>,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Postgres("the store's task ended without an answer".into()))?
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // Allowed from any context, unlike dropping a runtime inside another one.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
