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

use super::cluster::{Allowances, BankError, TenantTotals};
use super::ledger::{Account, Refusal};
use crate::store::sqlite::{Store, StoreError};
use crate::tenancy::{ApiKey, QuotaPeriod, TenantId};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;

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
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("allowances", &self.allowances)
            .finish()
    }
}

impl Fleet {
    pub fn new(allowances: Arc<Allowances>, store: Store) -> Arc<Fleet> {
        Arc::new(Fleet {
            allowances,
            store,
            ready: DashMap::new(),
            limits: DashMap::new(),
            replay: tokio::sync::Mutex::new(()),
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
        let mut stop = shutdown;
        let mut failing = false;
        loop {
            match self.replay_credits().await {
                Ok(_) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "credit replay failed; retrying");
                    }
                    failing = true;
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
        let _ = flusher.await;
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
