//! Request and token rate limits (RPM, TPM) per API key, user and tenant.
//!
//! Each limited subject has a two-minute sliding window: the count of the current minute plus the
//! previous minute's count weighted by how much of it still overlaps the last 60 seconds. This is
//! the usual approximation of a true sliding window (within a few percent) at the cost of four
//! integers per subject and no per-request allocation. Requests are counted at admission; tokens
//! are counted when a call settles (its real usage), so a burst of concurrent calls can overshoot
//! a TPM limit by what those calls produce, never by more.

use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    minute: u64,
    requests: u64,
    prev_requests: u64,
    tokens: u64,
    prev_tokens: u64,
}

impl Window {
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        if minute == self.minute + 1 {
            self.prev_requests = self.requests;
            self.prev_tokens = self.tokens;
        } else {
            self.prev_requests = 0;
            self.prev_tokens = 0;
        }
        self.minute = minute;
        self.requests = 0;
        self.tokens = 0;
    }

    /// Weighted count over the last 60 s, given the fraction of the current minute elapsed.
    fn estimate(cur: u64, prev: u64, elapsed_ms: u64) -> u64 {
        cur + prev * (60_000 - elapsed_ms) / 60_000
    }
}

/// Which limit refused a request, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    pub tokens: bool,
    pub limit: u64,
    pub retry_after_secs: u64,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: DashMap<(Scope, i64), Window>,
}

impl RateLimiter {
    /// Admit one request for every subject, or none: all limits are checked before any count
    /// is taken.
    pub fn admit(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)]) -> Result<(), Limited> {
        let minute = now_ms / 60_000;
        let elapsed = now_ms % 60_000;
        let retry = (60_000 - elapsed).div_ceil(1000).max(1);
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
                if Window::estimate(w.requests, w.prev_requests, elapsed) + 1 > u64::from(rpm) {
                    return Err(Limited {
                        scope: *scope,
                        tokens: false,
                        limit: u64::from(rpm),
                        retry_after_secs: retry,
                    });
                }
            }
            if let Some(tpm) = limits.tpm {
                if Window::estimate(w.tokens, w.prev_tokens, elapsed) >= tpm {
                    return Err(Limited {
                        scope: *scope,
                        tokens: true,
                        limit: tpm,
                        retry_after_secs: retry,
                    });
                }
            }
        }
        for (scope, id, limits) in subjects {
            if limits.is_unlimited() {
                continue;
            }
            let mut w = self.windows.entry((*scope, *id)).or_default();
            w.roll(minute);
            w.requests += 1;
        }
        Ok(())
    }

    /// Count the tokens a call really used against every subject with a TPM limit.
    pub fn record_tokens(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)], tokens: u64) {
        let minute = now_ms / 60_000;
        for (scope, id, limits) in subjects {
            if limits.tpm.is_none() {
                continue;
            }
            let mut w = self.windows.entry((*scope, *id)).or_default();
            w.roll(minute);
            w.tokens += tokens;
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
}
