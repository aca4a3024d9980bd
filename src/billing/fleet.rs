//! Cluster mode, wired: the ledger's view of the Redis credit bank ([`super::cluster`]).
//!
//! Every gateway process ("node") of a fleet shares one Redis and one SQL store. What lives
//! where:
//! - **Redis** holds what must be shared to never overspend: each tenant's balance and each
//!   limited account's remaining quota, as *buckets* of the bank. A node leases allowance from a
//!   bucket in chunks and spends it locally; charges go back in batched flushes
//!   ([`Allowances::run_flusher`], every `cluster.flush_ms`).
//! - **SQL** stays the record: every top-up, grant, redemption, promo, adjustment and charge is a
//!   ledger entry there, exactly as in embedded mode.
//!
//! Buckets: a tenant's balance is bucket `tenant id` (positive). A key quota, user quota or
//! group budget is a negative bucket id: `-(4 id + 1)`, `-(4 id + 2)`, `-(4 id + 3)`, plus the
//! quota period's index shifted left by 36 bits (each day or month is a bucket of its own). A quota
//! bucket's balance is its limit minus what was spent under it; when an operator changes the
//! limit, the first node to see the new key snapshot moves the bucket by the difference
//! (`Bank::set_limit`, ordered by the snapshot generation so a stale node cannot undo it).
//!
//! Money in reaches Redis through the **credit replay**: entries are written to SQL first (by
//! the admin API, the CLI, a redemption), then every node replays the credit entries past the
//! fleet's cursor into the bank, each once by its entry id, and moves the cursor. A tenant the
//! bank does not know yet is *seeded* from the SQL record first (credits up to the cursor minus
//! every charge), so enabling cluster mode on an existing database, or a Redis that lost its
//! data, is rebuilt from the record. Negative adjustments are applied to Redis first (refused
//! when the unleased balance cannot cover them), then recorded.
//!
//! A call's hold is taken from every bucket it touches (tenant, and each limited account) before
//! it is forwarded; settlement charges the same amount to each, capped by the one that can pay
//! least. When Redis is unreachable a node serves only from allowance it already holds, then
//! refuses with 503 (fail closed).

use super::cluster::{Allowances, BankError, Publish, TenantTotals};
use super::ledger::{Account, Refusal};
use crate::store::sqlite::{Store, StoreError};
use crate::tenancy::{ApiKey, QuotaPeriod, TenantId};
use dashmap::DashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most credit entries replayed per round.
const REPLAY_BATCH: usize = 500;

/// The Redis bucket of a tenant's balance (`None`) or of one of its limited accounts in one
/// quota period (`QuotaPeriod::index`; 0 for lifetime limits): a new period is a new bucket.
/// Account ids must stay below 2^34 and period indexes below 2^24 (they are, by far).
pub fn bucket(tenant: TenantId, account: Option<Account>, period: i64) -> i64 {
    let base = match account {
        None => return tenant.0,
        Some(Account::Key(k)) => k.0 * 4 + 1,
        Some(Account::User(u)) => u.0 * 4 + 2,
        Some(Account::Group(g)) => g.0 * 4 + 3,
    };
    -(base + (period << 36))
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Bank(#[from] BankError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Task(String),
}

/// The ledger's handle on the shared bank.
pub struct Fleet {
    allowances: Arc<Allowances>,
    store: Store,
    /// Tenants this process knows are initialised in Redis.
    ready: DashMap<i64, ()>,
    /// Per limited account (keyed by its period-0 bucket): the current period's bucket and the
    /// limit last applied to it. One entry per account, whatever the number of periods.
    limits: DashMap<i64, (i64, i64)>,
    /// Serialises credit replays of this process.
    replay: tokio::sync::Mutex<()>,
    /// Charged records handed to the recorder and not yet in the store (`Ledger`): a bank
    /// rebuild waits until this node's charges are all in the record.
    unstored: Arc<AtomicU64>,
    /// Where the identity of the bank this node serves on is kept (next to its charge log),
    /// so that a restart knows whether its unflushed batches belong to the bank Redis holds.
    bank_file: Option<PathBuf>,
}

/// A rebuild of the bank in progress on this node (`Fleet::rebuild_step`).
#[derive(Debug)]
struct Rebuild {
    since: Instant,
    /// This node's calls have settled and its Redis-side state is dropped.
    abandoned: bool,
    /// ... and every charge is in the record: it said so in Redis (`rebuild:ready`).
    ready: bool,
    last_log: Option<Instant>,
}

impl Rebuild {
    /// Whether a waiting message is due (at most one every 10 s).
    fn log_due(&mut self) -> bool {
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            self.last_log = Some(Instant::now());
        }
        due
    }
}

/// The identity of the bank a node last served on (`bank_file`), if it was recorded.
pub fn read_bank_file(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Records the bank a node serves on (written whole, then renamed over the old file).
pub fn write_bank_file(path: &std::path::Path, marker: &str) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, marker).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(error = %e, path = %path.display(), "cluster mode: cannot record the bank's identity");
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("allowances", &self.allowances)
            .finish()
    }
}

impl Fleet {
    /// `unstored`: the ledger's count of charged records not yet stored; `bank_file`: where
    /// the identity of the bank this node serves on is recorded.
    pub fn new(
        allowances: Arc<Allowances>,
        store: Store,
        unstored: Arc<AtomicU64>,
        bank_file: Option<PathBuf>,
    ) -> Arc<Fleet> {
        Arc::new(Fleet {
            allowances,
            store,
            ready: DashMap::new(),
            limits: DashMap::new(),
            replay: tokio::sync::Mutex::new(()),
            unstored,
            bank_file,
        })
    }

    pub fn allowances(&self) -> &Arc<Allowances> {
        &self.allowances
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(FleetError::Task(e.to_string())),
        }
    }

    /// Make sure Redis knows the tenant, seeding it from the SQL record when it does not.
    async fn ensure_tenant(&self, tenant: TenantId) -> Result<(), FleetError> {
        if self.ready.contains_key(&tenant.0) {
            return Ok(());
        }
        let bank = self.allowances.bank();
        if !bank.is_known(tenant.0).await? {
            loop {
                let cursor = bank.cursor().await?;
                let (credited, spent) = self
                    .blocking(move |s| s.tenant_record_upto(tenant, cursor))
                    .await?;
                if bank.seed(tenant.0, credited, spent, cursor).await? {
                    break;
                }
                // The cursor moved while we summed: sum again.
            }
        }
        self.ready.insert(tenant.0, ());
        Ok(())
    }

    /// Make sure the quota bucket carries `limit` (generation: the key snapshot's).
    async fn ensure_limit(
        &self,
        tenant: TenantId,
        account: Account,
        limit: i64,
        generation: i64,
        period: QuotaPeriod,
    ) -> Result<i64, FleetError> {
        let now = crate::tenancy::unix_now() * 1000;
        let b = bucket(tenant, Some(account), period.index(now));
        let slot = bucket(tenant, Some(account), 0);
        if self.limits.get(&slot).is_some_and(|v| *v == (b, limit)) {
            return Ok(b);
        }
        let since = period.start_ms(now);
        let spent = self
            .blocking(move |s| s.spent_by(tenant, account, since))
            .await?;
        // A day's bucket lives 3 days, a month's 62 (well past its end, for late flushes).
        let expire = match period {
            QuotaPeriod::None => None,
            QuotaPeriod::Day => Some(Duration::from_secs(3 * 86_400)),
            QuotaPeriod::Month => Some(Duration::from_secs(62 * 86_400)),
        };
        self.allowances
            .bank()
            .set_limit(b, limit, spent, generation, expire)
            .await?;
        self.allowances.notify_credit(b);
        self.limits.insert(slot, (b, limit));
        Ok(b)
    }

    /// Hold `amount` for a call of `key` in every bucket it touches. Returns the buckets held.
    pub async fn reserve(
        &self,
        key: &ApiKey,
        accounts: &[(Account, Option<i64>)],
        amount: i64,
        generation: i64,
    ) -> Result<Vec<i64>, Refusal> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "credit bank unavailable; refusing the call");
            Refusal::Unavailable
        };
        self.ensure_tenant(key.tenant_id)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut wanted: Vec<(i64, Option<Account>)> = vec![(key.tenant_id.0, None)];
        for (account, limit) in accounts {
            if let Some(limit) = limit {
                let b = self
                    .ensure_limit(
                        key.tenant_id,
                        *account,
                        *limit,
                        generation,
                        key.quota_period,
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                wanted.push((b, Some(*account)));
            }
        }
        let mut held: Vec<(i64, i64)> = Vec::with_capacity(wanted.len());
        for (b, account) in wanted {
            match self.allowances.reserve(b, amount).await {
                Ok(()) => held.push((b, amount)),
                Err(e) => {
                    self.allowances.settle_many(&held, 0, None);
                    return Err(match (e, account) {
                        (BankError::Insufficient { available }, None) => Refusal::Balance {
                            available: available.max(0),
                            needed: amount,
                        },
                        (BankError::Insufficient { available }, Some(a)) => Refusal::Quota {
                            account: a.what(),
                            remaining: available.max(0),
                            needed: amount,
                        },
                        (e, _) => unavailable(&e),
                    });
                }
            }
        }
        Ok(held.into_iter().map(|(b, _)| b).collect())
    }

    /// Settle a call held in `buckets`; returns the amount charged.
    pub fn settle(&self, buckets: &[i64], held: i64, actual: i64, ticket: Option<u64>) -> i64 {
        let holds: Vec<(i64, i64)> = buckets.iter().map(|b| (*b, held)).collect();
        self.allowances.settle_many(&holds, actual, ticket)
    }

    /// Replay credit entries past the fleet's cursor into the bank (each once, by entry id)
    /// until none is left. Returns how many were replayed by this call.
    pub async fn replay_credits(&self) -> Result<usize, FleetError> {
        let _one = self.replay.lock().await;
        let bank = self.allowances.bank().clone();
        let mut n = 0;
        loop {
            let cursor = bank.cursor().await?;
            let rows = self
                .blocking(move |s| s.credits_after(cursor, REPLAY_BATCH))
                .await?;
            let Some(last) = rows.last().map(|r| r.seq) else {
                return Ok(n);
            };
            for r in &rows {
                self.ensure_tenant(r.tenant_id).await?;
                match bank.credit(r.tenant_id.0, r.amount, &r.id).await {
                    Ok(_) => {}
                    Err(BankError::Insufficient { available }) => {
                        // A debit recorded in SQL that the unleased balance no longer covers
                        // (written by a path that did not debit Redis first): the record wins.
                        tracing::error!(entry = %r.id, tenant = r.tenant_id.0, amount = r.amount, available,
                            "credit replay: applying a debit the unleased balance cannot cover");
                        bank.credit_forced(r.tenant_id.0, r.amount, &r.id).await?;
                    }
                    Err(BankError::IdConflict { id }) => {
                        tracing::error!(entry = %id, "credit replay: id already used with other parameters; skipped");
                    }
                    Err(e) => return Err(e.into()),
                }
                self.allowances.notify_credit(r.tenant_id.0);
                n += 1;
            }
            bank.advance_cursor(last).await?;
            if rows.len() < REPLAY_BATCH {
                return Ok(n);
            }
        }
    }

    /// Debit the shared balance first (refused when its unleased part cannot cover it), for a
    /// negative adjustment about to be recorded under `entry_id`.
    pub async fn debit_first(
        &self,
        tenant: TenantId,
        amount: i64,
        entry_id: &str,
    ) -> Result<(), FleetError> {
        self.ensure_tenant(tenant).await?;
        self.allowances
            .bank()
            .credit(tenant.0, -amount.abs(), entry_id)
            .await?;
        Ok(())
    }

    /// The tenant's totals in Redis.
    pub async fn totals(&self, tenant: TenantId) -> Result<TenantTotals, FleetError> {
        self.ensure_tenant(tenant).await?;
        Ok(self.allowances.bank().snapshot(tenant.0).await?)
    }

    /// Background work of cluster mode: replays credits every `replay_every` and runs the
    /// allowance flusher (flush charges, give back idle allowance, resolve lost answers) until
    /// `shutdown`, then gives everything back.
    pub async fn run(
        self: Arc<Self>,
        flush_every: Duration,
        replay_every: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let flusher = tokio::spawn(
            self.allowances
                .clone()
                .run_flusher(flush_every, shutdown.clone()),
        );
        tokio::spawn(heartbeat(self.allowances.bank().clone(), shutdown.clone()));
        let mut stop = shutdown;
        let mut failing = false;
        let mut rebuild: Option<Rebuild> = None;
        let mut registered: Option<Instant> = None;
        loop {
            if registered.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                // In the record's registry of running nodes until a clean stop (a rebuild of
                // the bank waits for every node there), said again every 10 s: an old process
                // of the same node id that stopped after an upgrade hand-over removed it.
                registered = Some(Instant::now());
                self.register(true).await;
            }
            if self.allowances.bank().state_lost() {
                let r = rebuild.get_or_insert_with(|| Rebuild {
                    since: Instant::now(),
                    abandoned: false,
                    ready: false,
                    last_log: None,
                });
                match self.rebuild_step(r).await {
                    Ok(true) => rebuild = None,
                    Ok(false) => {}
                    Err(e) => {
                        if r.log_due() {
                            tracing::warn!(error = %e, "credit bank rebuild: a step failed; retrying");
                        }
                    }
                }
            } else {
                rebuild = None;
                match self.replay_credits().await {
                    Ok(_) => failing = false,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "credit replay failed; retrying");
                        }
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(replay_every) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        if let Ok(left) = flusher.await {
            if left.is_clean() && !self.allowances.bank().state_lost() {
                // Everything given back and flushed: a rebuild need not wait for this node.
                self.register(false).await;
            }
        }
    }

    /// Records this node in the registry as running, or removes it.
    async fn register(&self, running: bool) {
        let node = self.allowances.bank().node().to_string();
        let at = running.then(crate::tenancy::unix_now);
        if let Err(e) = self.blocking(move |s| s.set_cluster_node(&node, at)).await {
            tracing::warn!(error = %e, "cluster mode: cannot update the node registry");
        }
    }

    /// One step of rebuilding the bank after Redis lost it (called every few hundred ms while
    /// `Bank::state_lost`). Returns `Ok(true)` once this node serves on the rebuilt bank.
    ///
    /// 1. Wait until this node's calls in flight have settled (calls are refused meanwhile),
    ///    then drop its Redis-side state (`Allowances::abandon`): its charges are in the
    ///    record, and the new bank is seeded from the record.
    /// 2. Wait until the recorder has stored every charge, then say so in Redis
    ///    (`rebuild:ready`).
    /// 3. Any ready node publishes a new bank once every node of the registry (the record's
    ///    list of running nodes) and every process alive in Redis is ready (`Bank::publish`).
    /// 4. Each ready node adopts the new bank, forgets what it knew of the old one, and the
    ///    credit replay goes on from the new bank's cursor (the record's last credit entry
    ///    when it was published); tenants are seeded from the record as they are used.
    async fn rebuild_step(&self, r: &mut Rebuild) -> Result<bool, FleetError> {
        let bank = self.allowances.bank().clone();
        let first = bank.marker().is_empty();
        if !r.abandoned {
            if self.allowances.busy() {
                if r.log_due() {
                    tracing::warn!(
                        held = self.allowances.held(),
                        "credit bank rebuild: waiting for this node's calls in flight to settle"
                    );
                }
                return Ok(false);
            }
            let dropped = self.allowances.abandon().await;
            r.abandoned = true;
            tracing::warn!(
                charges_in_record = dropped,
                "credit bank rebuild: this node dropped its leases and unflushed batches (their charges are in the record)"
            );
            return Ok(false);
        }
        if !r.ready {
            let unstored = self.unstored.load(Ordering::Acquire);
            if unstored != 0 || self.allowances.busy() {
                if r.log_due() {
                    tracing::warn!(
                        unstored,
                        "credit bank rebuild: waiting for this node's charges to reach the record"
                    );
                }
                return Ok(false);
            }
            bank.rebuild_ready().await?;
            r.ready = true;
            tracing::info!("credit bank rebuild: this node's charges are all in the record; ready");
        } else {
            // Again at every step (idempotent): Redis may have lost the ready set too.
            bank.rebuild_ready().await?;
        }
        let current = bank.current_marker().await?;
        if let Some(m) = current.as_deref().filter(|m| *m != bank.marker()) {
            if bank.adopt(m).await? {
                self.adopted(m, r.since, first);
                return Ok(true);
            }
        }
        let seen = current.unwrap_or_default();
        let (required, cursor) = self
            .blocking(|s| Ok((s.cluster_nodes()?, s.last_credit_seq()?)))
            .await?;
        let required: Vec<String> = required.into_iter().map(|(n, _)| n).collect();
        match bank.publish(&seen, &required, cursor).await? {
            Publish::Published(id) => {
                tracing::warn!(bank = %id, nodes = ?required, "credit bank rebuild: published a new bank; it is seeded from the record");
                if bank.adopt(&id).await? {
                    self.adopted(&id, r.since, first);
                    return Ok(true);
                }
            }
            Publish::Waiting(who) => {
                if r.log_due() {
                    tracing::warn!(
                        waiting_for = %who,
                        after_s = r.since.elapsed().as_secs(),
                        "credit bank rebuild: waiting for a node of the registry or a live process to be ready; a node that is gone for good can be removed with `tollgate cluster forget <node>` (docs/billing.md)"
                    );
                }
            }
            Publish::Moved(_) => {}
        }
        Ok(false)
    }

    /// This node serves on the rebuilt bank `marker`: what it knew of the old one goes.
    /// `first`: this process had no bank before (Redis held none when it started).
    fn adopted(&self, marker: &str, since: Instant, first: bool) {
        self.ready.clear();
        self.limits.clear();
        if let Some(path) = &self.bank_file {
            write_bank_file(path, marker);
        }
        if first {
            tracing::info!(bank = %marker, "credit bank: Redis held none; this node serves on a new one, seeded from the record");
        } else {
            tracing::warn!(bank = %marker, after_ms = since.elapsed().as_millis() as u64,
                "credit bank rebuilt from the record; this node serves again");
        }
    }
}

/// Cluster mode: tells Redis every 250 ms that this process is alive, so that a bank rebuild
/// waits for it (`Bank::publish`).
async fn heartbeat(
    bank: Arc<super::cluster::Bank>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let _ = bank.heartbeat().await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::{GroupId, KeyId, UserId};
    use std::collections::HashSet;

    #[test]
    fn buckets_never_collide_across_tenants_kinds_and_periods() {
        let mut seen = HashSet::new();
        for id in [1i64, 2, 3, 1_000_000, (1 << 34) - 1] {
            assert!(seen.insert(bucket(TenantId(id), None, 0)));
            for period in [0i64, 1, 20_781, 24_310, (1 << 24) - 1] {
                for a in [
                    Account::Key(KeyId(id)),
                    Account::User(UserId(id)),
                    Account::Group(GroupId(id)),
                ] {
                    let b = bucket(TenantId(7), Some(a), period);
                    assert!(b < 0, "account buckets are negative, tenants positive");
                    assert!(seen.insert(b), "{a:?} period {period} collides");
                }
            }
        }
    }
}
