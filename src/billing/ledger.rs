//! The prepaid ledger (embedded mode): balances in memory, every entry journaled in SQLite.
//!
//! Each tenant has one `Book` behind its own mutex, held only for a few arithmetic operations
//! (never across an await). A call reserves its worst-case cost from the tenant's balance and,
//! when the key has a quota, from the key's remaining quota, all under that one lock: either
//! every account has room or nothing is taken. Settlement releases the reservation and charges
//! the real cost, capped by what the accounts can still pay, so no balance or quota is ever
//! overspent (a shortfall is recorded as `uncollected` on the entry, never as a negative
//! balance).
//!
//! Money in (top-ups, redemptions, grants, adjustments) is committed to the journal
//! (`ledger_entries`) first and then applied in memory. Charges are applied in memory at
//! settlement; the call's usage record, which carries the charge (`cost_nano`, `uncollected`),
//! goes to the recorder through an unbounded queue ([`Ledger::journal_call`]) and is committed
//! in a group commit every few milliseconds, off the request path. One row per call: the usage
//! record is the charge, idempotent on the request id, so a replayed batch is applied once. On
//! start the books are rebuilt from the store: balance = sum of the journal - sum of charges,
//! key spend = sum of the key's charges.
//!
//! Invariant, per tenant, at every moment:
//! `available + reserved + charged = credited`, where `credited` sums top-ups, grants,
//! redemptions and adjustments, and `charged` sums settled charges.

use crate::billing::chargelog::ChargeLog;
use crate::billing::fleet::Fleet;
use crate::billing::handover::{Remote, Reply, Request};
use crate::billing::usage::UsageEvent;
use crate::store::sqlite::{Store, StoreError};
use crate::tenancy::{ApiKey, TenantId};
use dashmap::DashMap;
use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

pub use super::entry::{Account, EntryKind, LedgerEntry};

#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize)]
struct Spend {
    /// Charged in the current quota period (the whole lifetime without a period).
    spent: i64,
    reserved: i64,
    /// The quota period `spent` belongs to (`QuotaPeriod::index`); None: as recovered from the
    /// journal, which summed the current period already.
    period: Option<i64>,
}

impl Spend {
    /// Start counting afresh when a new quota period began.
    fn roll(&mut self, period: i64) {
        if self.period.is_some_and(|p| p != period) {
            self.spent = 0;
        }
        self.period = Some(period);
    }
}

/// The accounts a key's calls touch, with their limits (None: unlimited, tracked only).
pub(crate) fn accounts_of(key: &ApiKey) -> Vec<(Account, Option<i64>)> {
    let mut v = vec![(Account::Key(key.id), key.quota_nano)];
    if let Some(u) = key.user_id {
        v.push((Account::User(u), key.user_quota_nano));
    }
    if let Some(g) = key.group_id {
        v.push((Account::Group(g), key.group_budget_nano));
    }
    v
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
struct Book {
    /// Credited minus charged: what the tenant owns, reservations not yet deducted.
    balance: i64,
    reserved: i64,
    charged: i64,
    credited: i64,
    #[serde(with = "account_map")]
    accounts: crate::FastMap<Account, Spend>,
}

/// Books as handed over during an upgrade (`handover`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct BooksState(Vec<(TenantId, Book)>);

/// JSON object keys must be strings: the accounts map goes as a list of pairs.
mod account_map {
    use super::{Account, Spend};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &crate::FastMap<Account, Spend>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<(&Account, &Spend)> = m.iter().collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<crate::FastMap<Account, Spend>, D::Error> {
        Ok(Vec::<(Account, Spend)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// A tenant's balance as reported by the admin API, in nano-credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BalanceView {
    pub available: i64,
    pub reserved: i64,
    pub charged: i64,
    pub credited: i64,
}

/// Credit held for one call until it settles.
#[derive(Debug)]
pub struct Reservation {
    pub tenant: TenantId,
    pub amount: i64,
    accounts: Vec<Account>,
    /// Cluster mode: the Redis buckets holding the amount (empty in embedded mode).
    buckets: Vec<i64>,
}

impl Reservation {
    /// Cluster mode: the Redis buckets the hold was taken from (empty in embedded mode).
    pub fn buckets(&self) -> &[i64] {
        &self.buckets
    }

    /// A hold of the embedded books, as the old process of an upgrade describes it.
    pub(crate) fn from_parts(tenant: TenantId, amount: i64, accounts: Vec<Account>) -> Self {
        Reservation {
            tenant,
            amount,
            accounts,
            buckets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Refusal {
    /// The tenant's balance cannot cover the worst case.
    Balance { available: i64, needed: i64 },
    /// A quota or budget (key, user, department) cannot cover the worst case.
    Quota {
        account: &'static str,
        remaining: i64,
        needed: i64,
    },
    /// Cluster mode: Redis is unreachable and this node holds no allowance for the call.
    Unavailable,
    /// Too many charged records wait for the store (it does not answer): fail closed.
    Backlog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct Settlement {
    pub charged: i64,
    pub uncollected: i64,
}

pub struct Ledger {
    books: DashMap<TenantId, Arc<Mutex<Book>>, crate::FastHasher>,
    /// Usage records of charged calls, to the recorder (never dropped).
    journal: mpsc::UnboundedSender<UsageEvent>,
    /// Cluster mode: balances and quotas live in Redis (see `fleet.rs`); the books then only
    /// track this process's calls.
    fleet: OnceLock<Arc<Fleet>>,
    /// Cluster mode is configured: until the fleet is attached, calls are refused.
    cluster_pending: std::sync::atomic::AtomicBool,
    /// Where charges are appended before a response completes (`chargelog`).
    charge_log: Option<Arc<ChargeLog>>,
    /// Records handed to the journal queue, and records the recorder stored (both queues).
    journaled: std::sync::atomic::AtomicU64,
    stored: Arc<std::sync::atomic::AtomicU64>,
    /// Charged calls' records handed to the recorder and not yet stored (they wait in memory
    /// and in the charge log while the store does not answer), and the most allowed: beyond it
    /// new calls are refused (503) until the store catches up (`billing.max_unstored_charges`).
    unstored: Arc<std::sync::atomic::AtomicU64>,
    max_unstored: std::sync::atomic::AtomicU64,
    /// Upgrade hand-over (`handover`), old side: once set, the books live in the new process
    /// and every operation is forwarded there. The gate orders the switch against operations
    /// in progress (read: one book operation; write: the switch).
    remote: OnceLock<Arc<Remote>>,
    gate: std::sync::RwLock<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Ledger {
    /// Rebuild the books from the journal. Returns the ledger and the journal writer to run.
    pub fn recover(store: &Store) -> Result<(Arc<Ledger>, JournalWriter), StoreError> {
        Ledger::recover_with_log(store, None)
    }

    /// As [`Ledger::recover`], with a charge log: the caller has replayed the orphaned
    /// segments into `store` already (`chargelog::orphaned`).
    pub fn recover_with_log(
        store: &Store,
        charge_log: Option<Arc<ChargeLog>>,
    ) -> Result<(Arc<Ledger>, JournalWriter), StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ledger = Ledger {
            books: DashMap::with_hasher(Default::default()),
            journal: tx,
            fleet: OnceLock::new(),
            cluster_pending: std::sync::atomic::AtomicBool::new(false),
            charge_log: charge_log.clone(),
            journaled: Default::default(),
            unstored: Default::default(),
            max_unstored: std::sync::atomic::AtomicU64::new(u64::MAX),
            stored: Default::default(),
            remote: OnceLock::new(),
            gate: Default::default(),
        };
        let stored = ledger.stored.clone();
        let unstored = ledger.unstored.clone();
        for t in store.ledger_totals()? {
            let book = ledger.book(t.tenant_id);
            let mut b = book.lock().map_err(|_| StoreError::Poisoned)?;
            b.balance = t.credited - t.charged;
            b.credited = t.credited;
            b.charged = t.charged;
        }
        for (tenant, account, spent) in store.account_spend()? {
            let book = ledger.book(tenant);
            let mut b = book.lock().map_err(|_| StoreError::Poisoned)?;
            b.accounts.entry(account).or_default().spent = spent;
        }
        Ok((
            Arc::new(ledger),
            JournalWriter {
                store: store.clone(),
                rx,
                charge_log,
                stored,
                unstored,
            },
        ))
    }

    /// Whether the recorder has stored every record handed to it: the charged ones and
    /// `usage_queued` others (`UsageSink::queued`). For a shutdown that waits for it.
    pub fn all_stored(&self, usage_queued: u64) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.stored.load(Acquire) >= self.journaled.load(Acquire) + usage_queued
    }

    pub fn charge_log(&self) -> Option<&Arc<ChargeLog>> {
        self.charge_log.as_ref()
    }

    /// Upgrade, old side: with every book operation stopped, hand the books to `send`; when
    /// it answers `Done`, forward every later operation to `remote`.
    pub(crate) fn freeze<T>(
        &self,
        remote: Arc<Remote>,
        send: impl FnOnce(BooksState) -> Result<Reply, T>,
    ) -> Result<Reply, T> {
        let _stop = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let books = self
            .books
            .iter()
            .map(|e| {
                let b = e.value().lock().unwrap_or_else(|p| p.into_inner()).clone();
                (*e.key(), b)
            })
            .collect();
        let r = send(BooksState(books));
        if matches!(r, Ok(Reply::Done)) {
            let _ = self.remote.set(remote);
        }
        r
    }

    /// Upgrade, new side: the old process's books replace the ones recovered from the store
    /// (they hold its calls in flight and its charges not yet committed).
    pub(crate) fn install(&self, state: BooksState) {
        self.books.clear();
        for (t, b) in state.0 {
            self.books.insert(t, Arc::new(Mutex::new(b)));
        }
    }

    /// The forwarding connection while this process drains after an upgrade hand-over.
    fn forwarded(&self) -> Option<&Arc<Remote>> {
        self.remote.get()
    }

    /// Switch to cluster mode (once, at start, before any call).
    pub fn attach_fleet(&self, fleet: Arc<Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// Cluster mode is configured: refuse calls (503) until [`Ledger::attach_fleet`].
    pub fn expect_fleet(&self) {
        self.cluster_pending
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Embedded mode, or cluster mode with the bank connected.
    pub fn ready(&self) -> bool {
        self.fleet.get().is_some()
            || !self
                .cluster_pending
                .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.get()
    }

    /// Hold `amount` for a call of `key`: in this process's books (embedded mode) or in the
    /// shared Redis buckets (cluster mode). `generation`: the key snapshot's.
    pub async fn reserve_call(
        &self,
        key: &ApiKey,
        amount: i64,
        generation: i64,
    ) -> Result<Reservation, Refusal> {
        if self.backlogged() {
            return Err(Refusal::Backlog);
        }
        let Some(fleet) = self.fleet.get() else {
            if !self.ready() {
                return Err(Refusal::Unavailable);
            }
            return self.reserve(key, amount);
        };
        let amount = amount.max(0);
        let accounts = accounts_of(key);
        let buckets = fleet.reserve(key, &accounts, amount, generation).await?;
        Ok(Reservation {
            tenant: key.tenant_id,
            amount,
            accounts: accounts.into_iter().map(|(a, _)| a).collect(),
            buckets,
        })
    }

    fn book(&self, tenant: TenantId) -> Arc<Mutex<Book>> {
        self.books.entry(tenant).or_default().clone()
    }

    /// Hold `amount` for a call of `key`: from the tenant's balance and the key's quota.
    pub fn reserve(&self, key: &ApiKey, amount: i64) -> Result<Reservation, Refusal> {
        let amount = amount.max(0);
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.forwarded() {
            return match remote.call(&Request::Reserve {
                key: key.id,
                amount,
            }) {
                Ok(Reply::Reserved(Ok(amount))) => Ok(Reservation {
                    tenant: key.tenant_id,
                    amount,
                    accounts: accounts_of(key).into_iter().map(|(a, _)| a).collect(),
                    buckets: Vec::new(),
                }),
                Ok(Reply::Reserved(Err(r))) => Err(r.into()),
                other => {
                    tracing::warn!(result = ?other, "upgrade: the new process cannot hold credit for this call");
                    Err(Refusal::Unavailable)
                }
            };
        }
        let book = self.book(key.tenant_id);
        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
        let available = b.balance - b.reserved;
        if available < amount {
            return Err(Refusal::Balance {
                available: available.max(0),
                needed: amount,
            });
        }
        let accounts = accounts_of(key);
        let period = key.quota_period.index(now_ms());
        for (account, _) in &accounts {
            b.accounts.entry(*account).or_default().roll(period);
        }
        for (account, limit) in &accounts {
            if let Some(limit) = limit {
                let s = b.accounts.get(account).copied().unwrap_or_default();
                let remaining = limit - s.spent - s.reserved;
                if remaining < amount {
                    return Err(Refusal::Quota {
                        account: account.what(),
                        remaining: remaining.max(0),
                        needed: amount,
                    });
                }
            }
        }
        b.reserved += amount;
        for (account, _) in &accounts {
            b.accounts.entry(*account).or_default().reserved += amount;
        }
        Ok(Reservation {
            tenant: key.tenant_id,
            amount,
            accounts: accounts.into_iter().map(|(a, _)| a).collect(),
            buckets: Vec::new(),
        })
    }

    /// Release the hold and charge the real cost, capped by what the tenant and the key can
    /// still pay. `key` carries the current limits (quotas may change while a call runs).
    /// When `actual > 0` the caller must record the call with [`Ledger::journal_call`]: its usage
    /// record is the durable charge.
    #[must_use = "a settled charge must be journaled with Ledger::journal_call"]
    pub fn settle(&self, r: Reservation, actual: i64, key: &ApiKey) -> Settlement {
        self.settle_logged(r, actual, key, None)
    }

    /// As [`Ledger::settle`], for a charge already in the charge log under `ticket` (cluster
    /// mode flushes the ticket with the charge).
    #[must_use = "a settled charge must be journaled with Ledger::journal_call"]
    pub fn settle_logged(
        &self,
        r: Reservation,
        actual: i64,
        key: &ApiKey,
        ticket: Option<u64>,
    ) -> Settlement {
        let actual = actual.max(0);
        let charged = match self.fleet.get() {
            Some(fleet) if !r.buckets.is_empty() => {
                fleet.settle(&r.buckets, r.amount, actual, ticket)
            }
            _ => {
                let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
                match self.forwarded() {
                    Some(remote) => return forward_settle(remote, r, actual, key),
                    None => self.settle_in_book(&r, actual, key),
                }
            }
        };
        Settlement {
            charged,
            uncollected: actual - charged,
        }
    }

    /// The count of charged records handed to the recorder and not yet stored (cluster mode's
    /// bank rebuild waits for it to reach zero).
    pub fn unstored_handle(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.unstored.clone()
    }

    /// The most charged records allowed to wait for the store before calls are refused.
    pub fn set_max_unstored(&self, n: u64) {
        self.max_unstored
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the charged records waiting for the store reached their bound.
    pub fn backlogged(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.unstored.load(Relaxed) >= self.max_unstored.load(Relaxed)
    }

    /// Hand a charged call's usage record (`cost_nano` = charged, `uncollected`) to the recorder.
    /// Never dropped: the queue is unbounded and a failed commit is retried.
    pub fn journal_call(&self, e: UsageEvent) {
        if self.journal.send(e).is_ok() {
            self.journaled
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.unstored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            // Only when the recorder has stopped (shutdown): nothing can be written any more.
            tracing::error!("recorder stopped; a charge could not be journaled");
        }
    }

    /// Embedded-mode settlement in the tenant's book; returns the amount charged.
    fn settle_in_book(&self, r: &Reservation, actual: i64, key: &ApiKey) -> i64 {
        let limits = accounts_of(key);
        let period = key.quota_period.index(now_ms());
        let book = self.book(r.tenant);
        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
        b.reserved -= r.amount;
        for a in &r.accounts {
            let s = b.accounts.entry(*a).or_default();
            s.reserved -= r.amount;
            s.roll(period);
        }
        // What is free once this call's own hold is released; the holds of other calls in
        // flight stay untouched so they can settle too.
        let mut cap = (b.balance - b.reserved).max(0);
        for a in &r.accounts {
            if let Some(Some(limit)) = limits.iter().find(|(x, _)| x == a).map(|(_, l)| *l) {
                let s = b.accounts.get(a).copied().unwrap_or_default();
                cap = cap.min((limit - s.spent - s.reserved).max(0));
            }
        }
        // The call's own hold is always payable (it was taken from every account when the
        // call was admitted, even if a quota was lowered since); only a cost above the hold is
        // capped by what is free.
        let charged = actual.min(cap.max(r.amount));
        b.balance -= charged;
        b.charged += charged;
        for a in &r.accounts {
            b.accounts.entry(*a).or_default().spent += charged;
        }
        charged
    }

    /// Replace a tenant's per-account spend with what the journal says for the current quota
    /// period (after the tenant's quota period changed).
    pub fn restore_spend(&self, tenant: TenantId, spend: &[(Account, i64)]) {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.forwarded() {
            let _ = remote.call(&Request::RestoreSpend(tenant, spend.to_vec()));
            return;
        }
        let book = self.book(tenant);
        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
        for s in b.accounts.values_mut() {
            s.spent = 0;
            s.period = None;
        }
        for (a, v) in spend {
            let s = b.accounts.entry(*a).or_default();
            s.spent = *v;
            s.period = None;
        }
    }

    /// Apply a credit (or negative adjustment) that is already committed to the journal.
    pub fn apply_committed(&self, e: &LedgerEntry) {
        self.apply_credit(e.tenant_id, e.amount);
    }

    /// Apply a committed credit of `amount` (negative: a debit) to the tenant's books.
    pub(crate) fn apply_credit(&self, tenant: TenantId, amount: i64) {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.forwarded() {
            if let Err(e) = remote.call(&Request::Apply { tenant, amount }) {
                tracing::error!(error = %e, tenant = tenant.0, amount, "upgrade: a committed credit could not reach the new process's books; it is in the store and counted on its next start");
            }
            return;
        }
        let book = self.book(tenant);
        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
        b.balance += amount;
        b.credited += amount;
    }

    /// Takes `amount` (> 0) off the tenant's books now if it is available (never into what is
    /// held for calls in flight): the first half of a refund's debit, whose entry is committed
    /// next (then not applied again); `apply_credit(tenant, amount)` gives it back if that
    /// fails. Answers the available balance when it does not cover `amount`.
    pub fn take(&self, tenant: TenantId, amount: i64) -> Result<(), i64> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.forwarded() {
            // Upgrading: the new process holds the books; ask it, then apply there.
            let available = match remote.call(&Request::Balance(tenant)) {
                Ok(Reply::Balance(v)) => v.available,
                _ => 0,
            };
            if available < amount {
                return Err(available);
            }
            return remote
                .call(&Request::Apply {
                    tenant,
                    amount: -amount,
                })
                .map(|_| ())
                .map_err(|_| 0);
        }
        let book = self.book(tenant);
        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
        let available = b.balance - b.reserved;
        if available < amount {
            return Err(available);
        }
        b.balance -= amount;
        b.credited -= amount;
        Ok(())
    }

    pub fn balance(&self, tenant: TenantId) -> BalanceView {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.forwarded() {
            if let Ok(Reply::Balance(v)) = remote.call(&Request::Balance(tenant)) {
                return v;
            }
        }
        let book = self.book(tenant);
        let b = book.lock().unwrap_or_else(|p| p.into_inner());
        BalanceView {
            available: b.balance - b.reserved,
            reserved: b.reserved,
            charged: b.charged,
            credited: b.credited,
        }
    }

    /// A key's spend so far and what it holds now, in nano-credits.
    pub fn account_spend(&self, tenant: TenantId, account: Account) -> (i64, i64) {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.forwarded() {
            if let Ok(Reply::Spend(s, r)) = remote.call(&Request::AccountSpend(tenant, account)) {
                return (s, r);
            }
        }
        let book = self.book(tenant);
        let b = book.lock().unwrap_or_else(|p| p.into_inner());
        let s = b.accounts.get(&account).copied().unwrap_or_default();
        (s.spent, s.reserved)
    }
}

/// Settles a hold of the old process of an upgrade in the new process's books. If the new
/// process cannot be reached the charge still goes to the store with the call's usage record
/// (and is counted from there on the next start).
fn forward_settle(remote: &Remote, r: Reservation, actual: i64, key: &ApiKey) -> Settlement {
    match remote.call(&Request::Settle {
        tenant: r.tenant,
        amount: r.amount,
        accounts: r.accounts,
        actual,
        key: key.id,
    }) {
        Ok(Reply::Settled(s)) => s,
        other => {
            tracing::error!(result = ?other, tenant = r.tenant.0, actual, "upgrade: a settlement could not reach the new process's books");
            Settlement {
                charged: actual,
                uncollected: 0,
            }
        }
    }
}

/// The recorder: every `flush_every`, commits the usage records queued since the last round in
/// one transaction: those of charged calls (unbounded queue, never dropped) and the others
/// (bounded queue). It sleeps between rounds instead of waiting on its queues, so the data plane
/// never has to wake it. A failed commit is retried with the same rows (request ids make it
/// idempotent). A full bounded queue is counted in `tollgate_usage_events_dropped_total`.
pub struct JournalWriter {
    store: Store,
    rx: mpsc::UnboundedReceiver<UsageEvent>,
    charge_log: Option<Arc<ChargeLog>>,
    stored: Arc<std::sync::atomic::AtomicU64>,
    unstored: Arc<std::sync::atomic::AtomicU64>,
}

impl JournalWriter {
    pub async fn run(
        mut self,
        flush_every: Duration,
        mut usage: Option<mpsc::Receiver<UsageEvent>>,
    ) {
        let mut events: Vec<UsageEvent> = Vec::with_capacity(256);
        loop {
            tokio::time::sleep(flush_every).await;
            self.report_queues(usage.as_ref());
            let mut closed = false;
            loop {
                match self.rx.try_recv() {
                    Ok(e) => events.push(e),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let charged = events.len();
            if let Some(rx) = usage.as_mut() {
                while events.len() < charged + 65_536 {
                    match rx.try_recv() {
                        Ok(e) => events.push(e),
                        Err(_) => break,
                    }
                }
            }
            if !events.is_empty() {
                self.commit(&mut events, charged, usage.as_ref()).await;
            } else if let Some(log) = self.charge_log.clone() {
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    log.upkeep(|| store.sync_committed().is_ok())
                })
                .await;
            }
            if closed {
                return;
            }
        }
    }

    /// What waits in the queues, for `tollgate_recorder_queued` (sampled once a round, and on
    /// every retry while the store refuses writes).
    fn report_queues(&self, usage: Option<&mpsc::Receiver<UsageEvent>>) {
        let m = &crate::metrics::METRICS.recorder_queued;
        m.with_label_values(&["charged"]).set(self.rx.len() as i64);
        m.with_label_values(&["usage"])
            .set(usage.map_or(0, |u| u.len()) as i64);
    }

    /// `charged`: how many of `events` (the first ones) carry a charge.
    async fn commit(
        &self,
        events: &mut Vec<UsageEvent>,
        charged: usize,
        usage: Option<&mpsc::Receiver<UsageEvent>>,
    ) {
        let mut u = std::mem::take(events);
        let n = u.len();
        let mut attempt = 0u32;
        loop {
            let store = self.store.clone();
            let log = self.charge_log.clone();
            let res = tokio::task::spawn_blocking(move || {
                let r = store.record(&u);
                if let (Ok(_), Some(log)) = (&r, log) {
                    log.committed(u.iter().filter_map(|e| e.charge_ticket));
                    log.upkeep(|| store.sync_committed().is_ok());
                }
                (r, u)
            })
            .await;
            match res {
                Ok((Ok(_), mut back)) => {
                    crate::metrics::METRICS
                        .ledger_entries_written
                        .inc_by(charged as u64);
                    crate::metrics::METRICS
                        .usage_events_written
                        .inc_by(n as u64);
                    self.stored
                        .fetch_add(n as u64, std::sync::atomic::Ordering::AcqRel);
                    self.unstored
                        .fetch_sub(charged as u64, std::sync::atomic::Ordering::Relaxed);
                    back.clear();
                    *events = back; // keep the allocation
                    return;
                }
                Ok((Err(err), back)) => {
                    // Never drop a charge: keep retrying (request ids make replays harmless).
                    attempt += 1;
                    crate::metrics::METRICS.recorder_commit_failures.inc();
                    self.report_queues(usage);
                    tracing::error!(error = %err, attempt, charges = charged, events = n, "recorder commit failed; retrying");
                    u = back;
                    tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(6)).min(5_000)))
                        .await;
                }
                Err(err) => {
                    tracing::error!(error = %err, charges = charged, events = n, "recorder task failed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::NewKey;

    fn setup(credit: i64, quota: Option<i64>) -> (Store, Arc<Ledger>, ApiKey) {
        let (store, l, key, _writer) = setup_with_writer(credit, quota);
        (store, l, key)
    }

    fn setup_with_writer(
        credit: i64,
        quota: Option<i64>,
    ) -> (Store, Arc<Ledger>, ApiKey, JournalWriter) {
        setup_in(Store::open_in_memory().unwrap(), credit, quota)
    }

    /// A tenant with one key and `credit` topped up, in `store`.
    fn setup_in(
        store: Store,
        credit: i64,
        quota: Option<i64>,
    ) -> (Store, Arc<Ledger>, ApiKey, JournalWriter) {
        let t = store.create_tenant("t").unwrap();
        let (mut key, _) = store
            .create_key(&NewKey {
                tenant_id: t.id,
                name: "k".into(),
                default_channel: "c".into(),
                allowed_channels: vec![],
                allowed_models: vec![],
                expires_at: None,
                quota_nano: quota,
                user_id: None,
                limits: Default::default(),
            })
            .unwrap();
        key.quota_nano = quota;
        let (ledger, writer) = Ledger::recover(&store).unwrap();
        let e = store
            .credit(t.id, EntryKind::TopUp, credit, Some("op"), None, "topup:1")
            .unwrap();
        ledger.apply_committed(&e);
        (store, ledger, key, writer)
    }

    /// The usage record that carries a settled charge.
    fn charged_record(key: &ApiKey, request_id: String, s: Settlement) -> UsageEvent {
        UsageEvent {
            request_id,
            ts_ms: now_ms(),
            tenant_id: Some(key.tenant_id),
            key_id: Some(key.id),
            endpoint: "chat".into(),
            path: None,
            status: 200,
            usage_source: "vendor".into(),
            cost_nano: s.charged,
            uncollected: s.uncollected,
            ..Default::default()
        }
    }

    fn invariant(v: BalanceView) {
        assert_eq!(v.available + v.reserved + v.charged, v.credited, "{v:?}");
        assert!(v.available >= 0, "{v:?}");
    }

    #[test]
    fn reserve_then_settle_charges_the_actual_cost() {
        let (_, l, key) = setup(1_000, None);
        let r = l.reserve(&key, 600).unwrap();
        invariant(l.balance(key.tenant_id));
        assert_eq!(
            l.reserve(&key, 500).unwrap_err(),
            Refusal::Balance {
                available: 400,
                needed: 500
            }
        );
        let s = l.settle(r, 250, &key);
        assert_eq!(
            s,
            Settlement {
                charged: 250,
                uncollected: 0
            }
        );
        let v = l.balance(key.tenant_id);
        assert_eq!(
            v,
            BalanceView {
                available: 750,
                reserved: 0,
                charged: 250,
                credited: 1_000
            }
        );
        invariant(v);
    }

    #[test]
    fn a_charge_above_the_hold_never_takes_other_calls_holds_or_goes_negative() {
        let (_, l, key) = setup(1_000, None);
        let a = l.reserve(&key, 300).unwrap();
        let b = l.reserve(&key, 600).unwrap();
        // a used far more than its worst case: it may take the free 100, not b's 600.
        let s = l.settle(a, 5_000, &key);
        assert_eq!(
            s,
            Settlement {
                charged: 400,
                uncollected: 4_600
            }
        );
        invariant(l.balance(key.tenant_id));
        let s = l.settle(b, 600, &key);
        assert_eq!(s.charged, 600);
        let v = l.balance(key.tenant_id);
        assert_eq!(v.available, 0);
        invariant(v);
    }

    #[test]
    fn a_new_quota_period_starts_from_zero_and_keeps_holds() {
        let mut s = Spend {
            spent: 900,
            reserved: 40,
            period: None,
        };
        s.roll(7); // as recovered: the journal already summed the current period
        assert_eq!((s.spent, s.reserved), (900, 40));
        s.roll(7);
        assert_eq!(s.spent, 900);
        s.roll(8); // a new day or month
        assert_eq!((s.spent, s.reserved, s.period), (0, 40, Some(8)));
    }

    #[test]
    fn key_quota_limits_reservations_and_charges() {
        let (_, l, key) = setup(10_000, Some(500));
        let r = l.reserve(&key, 400).unwrap();
        assert_eq!(
            l.reserve(&key, 200).unwrap_err(),
            Refusal::Quota {
                account: "API key quota",
                remaining: 100,
                needed: 200
            }
        );
        let s = l.settle(r, 450, &key);
        assert_eq!(s.charged, 450);
        assert_eq!(
            l.account_spend(key.tenant_id, Account::Key(key.id)),
            (450, 0)
        );
        assert!(l.reserve(&key, 60).is_err());
        invariant(l.balance(key.tenant_id));
    }

    #[test]
    fn failed_calls_release_everything_and_write_nothing() {
        let (_, l, key) = setup(1_000, None);
        let r = l.reserve(&key, 1_000).unwrap();
        let s = l.settle(r, 0, &key);
        assert_eq!(s, Settlement::default());
        assert_eq!(l.balance(key.tenant_id).available, 1_000);
    }

    /// The store refuses writes for a while (its table is renamed away under the recorder):
    /// the failures are counted, nothing is dropped, and once the store is back every charge
    /// is committed once.
    #[tokio::test]
    async fn charges_wait_out_a_store_that_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (store, l, key, writer) = setup_in(Store::open(&path).unwrap(), 1_000_000, None);
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("ALTER TABLE usage_events RENAME TO usage_events_away")
            .unwrap();
        let failures = || crate::metrics::METRICS.recorder_commit_failures.get();
        let before = failures();
        let writer = tokio::spawn(writer.run(Duration::from_millis(5), None));
        for i in 0..20 {
            let r = l.reserve(&key, 1_000).unwrap();
            let s = l.settle(r, 100 + i, &key);
            l.journal_call(charged_record(&key, format!("down{i}"), s));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while failures() == before {
            assert!(std::time::Instant::now() < deadline, "no failed commit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        other
            .execute_batch("ALTER TABLE usage_events_away RENAME TO usage_events")
            .unwrap();
        let want: i64 = (0..20).map(|i| 100 + i).sum();
        loop {
            let charged = store
                .ledger_totals()
                .unwrap()
                .first()
                .map_or(0, |t| t.charged);
            if charged == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "charged {charged}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(l);
        writer.await.unwrap();
        let (recovered, _) = Ledger::recover(&store).unwrap();
        assert_eq!(recovered.balance(key.tenant_id).charged, want);
        assert_eq!(recovered.balance(key.tenant_id).available, 1_000_000 - want);
    }

    #[tokio::test]
    async fn journal_replays_to_the_same_books() {
        let (store, l, key, writer) = setup_with_writer(1_000_000, Some(900_000));
        let writer = tokio::spawn(writer.run(Duration::from_millis(5), None));
        for i in 0..50 {
            let r = l.reserve(&key, 10_000).unwrap();
            let s = l.settle(r, 1_000 + i, &key);
            l.journal_call(charged_record(&key, format!("req{i}"), s));
        }
        let before = l.balance(key.tenant_id);
        assert_eq!(before.charged, (0..50).map(|i| 1_000 + i).sum::<i64>());
        // Dropping the ledger closes the journal; the writer commits what is left and exits.
        drop(l);
        writer.await.unwrap();

        let (recovered, _) = Ledger::recover(&store).unwrap();
        let v = recovered.balance(key.tenant_id);
        assert_eq!(
            v,
            BalanceView {
                reserved: 0,
                ..before
            }
        );
        assert_eq!(
            recovered
                .account_spend(key.tenant_id, Account::Key(key.id))
                .0,
            v.charged
        );
        // Replaying the same records changes nothing: request ids are unique.
        let again: Vec<UsageEvent> = (0..50)
            .map(|i| UsageEvent {
                request_id: format!("req{i}"),
                tenant_id: Some(key.tenant_id),
                endpoint: "chat".into(),
                path: None,
                usage_source: "vendor".into(),
                cost_nano: 1_000 + i,
                ..Default::default()
            })
            .collect();
        assert_eq!(store.record(&again).unwrap(), 0);
        let (again, _) = Ledger::recover(&store).unwrap();
        assert_eq!(again.balance(key.tenant_id), v);
    }
}
