//! Request and token rate limits (RPM, TPM) per API key, user and tenant.
//!
//! Each limited subject has a two-minute sliding window: the count of the current minute plus the
//! previous minute's count weighted by how much of it still overlaps the last 60 seconds. This is
//! the usual approximation of a true sliding window (within a few percent) at the cost of four
//! integers per subject and no per-request allocation. Requests are counted at admission; tokens
//! are counted when a call settles (its real usage), so a burst of concurrent calls can overshoot
//! a TPM limit by what those calls produce, never by more.

use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    Key,
    User,
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "API key",
            Scope::User => "user",
            Scope::Tenant => "tenant",
        }
    }
}

/// Limits of one subject; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// A change to a subject's limits: `None` keeps a field, `Some(None)` clears it (unlimited),
/// `Some(Some(n))` sets it. Updates through the admin API change only the fields they name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsPatch {
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u64>>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// Counts of one minute: this node's own, what of them was pushed to Redis (cluster mode), and
/// the other nodes' as of the last sync.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Counts {
    requests: u64,
    tokens: u64,
    pushed_requests: u64,
    pushed_tokens: u64,
    remote_requests: u64,
    remote_tokens: u64,
}

/// One subject's counts, this minute and the last.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Window {
    minute: u64,
    cur: Counts,
    prev: Counts,
}

impl Window {
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        self.prev = if minute == self.minute + 1 {
            self.cur
        } else {
            Counts::default()
        };
        self.minute = minute;
        self.cur = Counts::default();
    }

    fn requests(&self, elapsed_ms: u64) -> u64 {
        Window::estimate(
            self.cur.requests + self.cur.remote_requests,
            self.prev.requests + self.prev.remote_requests,
            elapsed_ms,
        )
    }

    fn tokens(&self, elapsed_ms: u64) -> u64 {
        Window::estimate(
            self.cur.tokens + self.cur.remote_tokens,
            self.prev.tokens + self.prev.remote_tokens,
            elapsed_ms,
        )
    }

    /// Weighted count over the last 60 s, given the fraction of the current minute elapsed.
    fn estimate(cur: u64, prev: u64, elapsed_ms: u64) -> u64 {
        cur + prev * (60_000 - elapsed_ms) / 60_000
    }
}

/// Which limit refused a request, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limited {
    pub scope: Scope,
    pub tokens: bool,
    pub limit: u64,
    pub retry_after_secs: u64,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: DashMap<(Scope, i64), Window>,
    /// Upgrade hand-over (`billing::handover`): once set, this process's counts live in the new
    /// process and every admission is asked there. The gate orders the switch against
    /// admissions in progress (read: an admission; write: the switch).
    remote: std::sync::OnceLock<std::sync::Arc<dyn Forward>>,
    gate: std::sync::RwLock<()>,
}

/// Where a limiter sends its admissions once its counts went to the new process of an upgrade
/// (implemented by `billing::handover`'s connection to it).
pub trait Forward: Send + Sync + std::fmt::Debug {
    /// The new process's answer; `None` when it did not give one.
    fn admit(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)]) -> Option<Result<(), Limited>>;
    /// Count the tokens a call used, there.
    fn tokens(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)], tokens: u64);
}

/// A limiter's windows, handed over during an upgrade.
pub type WindowsState = Vec<((Scope, i64), Window)>;

impl RateLimiter {
    /// Upgrade, old side: with admissions stopped, hand the windows to `send`; when its answer
    /// is `taken`, forward every later admission to `remote`.
    pub(crate) fn freeze<R>(
        &self,
        remote: std::sync::Arc<dyn Forward>,
        send: impl FnOnce(WindowsState) -> R,
        taken: impl FnOnce(&R) -> bool,
    ) -> R {
        let _stop = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let state: WindowsState = self
            .windows
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect();
        let r = send(state);
        if taken(&r) {
            let _ = self.remote.set(remote);
        }
        r
    }

    /// Upgrade, new side: the old process's counts join this one's.
    pub(crate) fn install(&self, state: WindowsState) {
        for (k, theirs) in state {
            let mut mine = self.windows.entry(k).or_default();
            let minute = mine.minute.max(theirs.minute);
            let mut theirs = theirs;
            theirs.roll(minute);
            mine.roll(minute);
            mine.cur.requests += theirs.cur.requests;
            mine.cur.tokens += theirs.cur.tokens;
            mine.prev.requests += theirs.prev.requests;
            mine.prev.tokens += theirs.prev.tokens;
        }
    }

    /// Admit one request for every subject, or none: all limits are checked before any count
    /// is taken.
    pub fn admit(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)]) -> Result<(), Limited> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.remote.get() {
            // The new process gone: nothing to count against; admit.
            return remote.admit(now_ms, subjects).unwrap_or(Ok(()));
        }
        self.check(now_ms, subjects)?;
        self.count(now_ms, subjects, false);
        Ok(())
    }

    /// Whether admissions are forwarded to the new process of an upgrade.
    pub fn is_handed_over(&self) -> bool {
        self.remote.get().is_some()
    }

    /// Whether one more request fits every subject's limits, as far as this node knows (its
    /// own counts and the fleet's as of the last sync); nothing is counted.
    pub fn check(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)]) -> Result<(), Limited> {
        let minute = now_ms / 60_000;
        let elapsed = now_ms % 60_000;
        let retry = retry_after(now_ms);
        for (scope, id, limits) in subjects {
            if limits.is_unlimited() {
                continue;
            }
            let mut w = self
                .windows
                .get(&(*scope, *id))
                .map(|w| *w)
                .unwrap_or_default();
            w.roll(minute);
            if let Some(rpm) = limits.rpm {
                if w.requests(elapsed) + 1 > u64::from(rpm) {
                    return Err(Limited {
                        scope: *scope,
                        tokens: false,
                        limit: u64::from(rpm),
                        retry_after_secs: retry,
                    });
                }
            }
            if let Some(tpm) = limits.tpm {
                if w.tokens(elapsed) >= tpm {
                    return Err(Limited {
                        scope: *scope,
                        tokens: true,
                        limit: tpm,
                        retry_after_secs: retry,
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts one request against every limited subject. `pushed`: it is already counted in
    /// the fleet's totals in Redis (admitted there, cluster mode), so a sync does not push it.
    pub fn count(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)], pushed: bool) {
        let minute = now_ms / 60_000;
        for (scope, id, limits) in subjects {
            if limits.is_unlimited() {
                continue;
            }
            let mut w = self.windows.entry((*scope, *id)).or_default();
            w.roll(minute);
            w.cur.requests += 1;
            if pushed {
                w.cur.pushed_requests += 1;
            }
        }
    }

    /// Count the tokens a call really used against every subject with a TPM limit.
    pub fn record_tokens(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)], tokens: u64) {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = self.remote.get() {
            remote.tokens(now_ms, subjects, tokens);
            return;
        }
        let minute = now_ms / 60_000;
        for (scope, id, limits) in subjects {
            if limits.tpm.is_none() {
                continue;
            }
            let mut w = self.windows.entry((*scope, *id)).or_default();
            w.roll(minute);
            w.cur.tokens += tokens;
        }
    }
}

/// Seconds until the current minute ends (what a refused caller is told to wait).
pub fn retry_after(now_ms: u64) -> u64 {
    (60_000 - now_ms % 60_000).div_ceil(1000).max(1)
}

/// One subject's counts for cluster sync: the minute, then (requests, tokens) not yet pushed
/// for the previous and the current minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDelta {
    pub scope: Scope,
    pub id: i64,
    pub minute: u64,
    pub prev: (u64, u64),
    pub cur: (u64, u64),
}

/// Fleet-wide totals (all nodes, pushes included) for a subject's previous and current minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateTotals {
    pub prev: (u64, u64),
    pub cur: (u64, u64),
}

impl RateDelta {
    /// The subject's name in Redis keys.
    pub fn subject(&self) -> String {
        subject_name(self.scope, self.id)
    }
}

/// A subject's name in Redis keys: `k12`, `u3`, `t1`.
pub fn subject_name(scope: Scope, id: i64) -> String {
    let s = match scope {
        Scope::Key => 'k',
        Scope::User => 'u',
        Scope::Tenant => 't',
    };
    format!("{s}{id}")
}

impl RateLimiter {
    /// Cluster mode, step 1 of a sync: what this node counted since its last push, per active
    /// subject (marked pushed). Subjects idle for two minutes are dropped.
    pub fn take_deltas(&self, now_ms: u64) -> Vec<RateDelta> {
        let minute = now_ms / 60_000;
        self.windows.retain(|_, w| w.minute + 1 >= minute);
        let mut out = Vec::new();
        for mut e in self.windows.iter_mut() {
            let (scope, id) = *e.key();
            let w = e.value_mut();
            w.roll(minute);
            let prev = (
                w.prev.requests - w.prev.pushed_requests.min(w.prev.requests),
                w.prev.tokens - w.prev.pushed_tokens.min(w.prev.tokens),
            );
            let cur = (
                w.cur.requests - w.cur.pushed_requests.min(w.cur.requests),
                w.cur.tokens - w.cur.pushed_tokens.min(w.cur.tokens),
            );
            w.prev.pushed_requests = w.prev.requests;
            w.prev.pushed_tokens = w.prev.tokens;
            w.cur.pushed_requests = w.cur.requests;
            w.cur.pushed_tokens = w.cur.tokens;
            out.push(RateDelta {
                scope,
                id,
                minute,
                prev,
                cur,
            });
        }
        out
    }

    /// Cluster mode, step 2: the fleet's totals after the push; the other nodes' share is the
    /// total minus what this node pushed.
    pub fn apply_totals(&self, deltas: &[RateDelta], totals: &[RateTotals]) {
        for (d, t) in deltas.iter().zip(totals) {
            let Some(mut w) = self.windows.get_mut(&(d.scope, d.id)) else {
                continue;
            };
            if w.minute == d.minute {
                w.prev.remote_requests = t.prev.0.saturating_sub(w.prev.pushed_requests);
                w.prev.remote_tokens = t.prev.1.saturating_sub(w.prev.pushed_tokens);
                w.cur.remote_requests = t.cur.0.saturating_sub(w.cur.pushed_requests);
                w.cur.remote_tokens = t.cur.1.saturating_sub(w.cur.pushed_tokens);
            } else if w.minute == d.minute + 1 {
                // The minute turned since the push: the pushed "current" is now the previous.
                w.prev.remote_requests = t.cur.0.saturating_sub(w.prev.pushed_requests);
                w.prev.remote_tokens = t.cur.1.saturating_sub(w.prev.pushed_tokens);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000 * 60_000; // start of a minute

    fn rpm(n: u32) -> Limits {
        Limits {
            rpm: Some(n),
            tpm: None,
        }
    }

    #[test]
    fn rpm_admits_up_to_the_limit_then_refuses_with_retry_after() {
        let l = RateLimiter::default();
        let s = [(Scope::Key, 1, rpm(3))];
        for _ in 0..3 {
            assert!(l.admit(T0 + 10_000, &s).is_ok());
        }
        let e = l.admit(T0 + 10_000, &s).unwrap_err();
        assert_eq!(
            (e.scope, e.tokens, e.limit, e.retry_after_secs),
            (Scope::Key, false, 3, 50)
        );
        // Half a minute into the next minute, half of the previous minute still counts
        // (1.5 rounds down to 1), so two more fit under the limit of 3.
        assert!(l.admit(T0 + 90_000, &s).is_ok());
        assert!(l.admit(T0 + 90_000, &s).is_ok());
        assert!(l.admit(T0 + 90_000, &s).is_err());
        // Two minutes later everything has expired.
        for _ in 0..3 {
            assert!(l.admit(T0 + 200_000, &s).is_ok());
        }
    }

    #[test]
    fn all_or_nothing_across_subjects_and_independent_subjects() {
        let l = RateLimiter::default();
        let key_a = [(Scope::Key, 1, rpm(10)), (Scope::Tenant, 9, rpm(2))];
        let key_b = [(Scope::Key, 2, rpm(10)), (Scope::Tenant, 9, rpm(2))];
        assert!(l.admit(T0, &key_a).is_ok());
        assert!(l.admit(T0, &key_b).is_ok());
        let e = l.admit(T0, &key_a).unwrap_err();
        assert_eq!(e.scope, Scope::Tenant);
        // The refused request took no count from the key.
        let other_tenant = [(Scope::Key, 1, rpm(2)), (Scope::Tenant, 8, rpm(10))];
        assert!(l.admit(T0, &other_tenant).is_ok());
        assert!(
            l.admit(T0, &other_tenant).is_err(),
            "key 1 has 2 counted: the refused one did not count"
        );
    }

    #[test]
    fn tpm_counts_real_tokens() {
        let l = RateLimiter::default();
        let s = [(
            Scope::User,
            5,
            Limits {
                rpm: None,
                tpm: Some(1_000),
            },
        )];
        assert!(l.admit(T0, &s).is_ok());
        l.record_tokens(T0, &s, 999);
        assert!(l.admit(T0, &s).is_ok());
        l.record_tokens(T0, &s, 1);
        let e = l.admit(T0, &s).unwrap_err();
        assert!(e.tokens);
        assert!(l.admit(T0 + 130_000, &s).is_ok());
    }

    /// Two nodes sharing totals through a stand-in for Redis: together they admit the limit,
    /// not twice it (the Redis round trip itself is tested in tests/cluster.rs).
    #[test]
    fn synced_nodes_share_one_limit() {
        use std::collections::HashMap;
        let nodes = [RateLimiter::default(), RateLimiter::default()];
        let mut redis: HashMap<(Scope, i64, u64), (u64, u64)> = HashMap::new();
        let s = [(Scope::Key, 7, rpm(10))];
        let mut admitted = 0;
        for i in 0..40u64 {
            let now = T0 + 1_000 + i * 100;
            if nodes[(i % 2) as usize].admit(now, &s).is_ok() {
                admitted += 1;
            }
            // Sync both nodes after every request (twice: the first node to sync learns of
            // the second's count in the second round, as a real node does one tick later).
            for n in nodes.iter().chain(nodes.iter()) {
                let deltas = n.take_deltas(now);
                let totals: Vec<RateTotals> = deltas
                    .iter()
                    .map(|d| {
                        let p = redis.entry((d.scope, d.id, d.minute - 1)).or_default();
                        p.0 += d.prev.0;
                        p.1 += d.prev.1;
                        let prev = *p;
                        let c = redis.entry((d.scope, d.id, d.minute)).or_default();
                        c.0 += d.cur.0;
                        c.1 += d.cur.1;
                        RateTotals { prev, cur: *c }
                    })
                    .collect();
                n.apply_totals(&deltas, &totals);
            }
        }
        assert_eq!(admitted, 10);
    }
}
