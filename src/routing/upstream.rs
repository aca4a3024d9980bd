//! Live state of one upstream. It outlives configurations: a reload that keeps an upstream
//! (same `channel/name` and address) keeps its breaker and latency history.

use crate::config::{BaseUrl, BreakerPolicy};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Monotonic milliseconds since the process started; cheap to store in atomics.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What a request may do with an upstream right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed breaker: go.
    Normal,
    /// Half-open: this request is the single probe.
    Probe,
    /// Ejected, parked by Retry-After, or unresolved.
    Refused,
}

#[derive(Debug)]
pub struct UpstreamState {
    pub base: BaseUrl,
    addrs: ArcSwap<Vec<SocketAddr>>,
    rr: AtomicU64,
    consecutive_failures: AtomicU32,
    /// 0 when closed; otherwise the time (now_ms) the breaker opened until.
    open_until_ms: AtomicU64,
    /// Set while the half-open probe is in flight.
    probing: AtomicBool,
    /// Retry-After parking: no new requests before this time.
    parked_until_ms: AtomicU64,
    inflight: AtomicI64,
    /// EWMA of time to first byte, in microseconds.
    ewma_us: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

impl UpstreamState {
    fn new(base: BaseUrl) -> Self {
        let literal: Vec<SocketAddr> = base
            .host
            .parse::<std::net::IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, base.port)])
            .unwrap_or_default();
        UpstreamState {
            base,
            addrs: ArcSwap::from_pointee(literal),
            rr: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            parked_until_ms: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            // Start optimistic and equal, so fresh upstreams get traffic and learn.
            ewma_us: AtomicU64::new(50_000),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn needs_resolution(&self) -> bool {
        self.base.host.parse::<std::net::IpAddr>().is_err()
    }

    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        self.addrs.store(Arc::new(addrs));
    }

    /// An address to connect to, rotating over what DNS returned.
    pub fn pick_addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        if addrs.is_empty() {
            return None;
        }
        let i = self.rr.fetch_add(1, Ordering::Relaxed) as usize % addrs.len();
        addrs.get(i).copied()
    }

    pub fn has_addrs(&self) -> bool {
        !self.addrs.load().is_empty()
    }

    pub fn breaker_state(&self) -> BreakerState {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            BreakerState::Closed
        } else if now_ms() < until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    /// Whether a request may be sent here now; a half-open upstream admits exactly one probe.
    pub fn admit(&self) -> Admission {
        if !self.has_addrs() || now_ms() < self.parked_until_ms.load(Ordering::Acquire) {
            return Admission::Refused;
        }
        match self.breaker_state() {
            BreakerState::Closed => Admission::Normal,
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen => {
                if self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }

    /// Whether the balancer should consider this upstream (no side effect).
    pub fn looks_available(&self) -> bool {
        if !self.has_addrs() || now_ms() < self.parked_until_ms.load(Ordering::Acquire) {
            return false;
        }
        match self.breaker_state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => !self.probing.load(Ordering::Acquire),
        }
    }

    pub fn on_start(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn on_end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed).max(0)
    }

    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// The upstream answered usefully (a 2xx/4xx header arrived): close the breaker, learn latency.
    pub fn record_success(&self, ttfb: Duration) {
        self.consecutive_failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        let sample = ttfb.as_micros().min(u64::MAX as u128) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        // alpha = 1/4: reacts within a handful of requests, smooths single outliers.
        let new = old - old / 4 + sample / 4;
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// A connect error, timeout, 5xx or broken response. Opens the breaker after `threshold`
    /// consecutive failures, or at once when the failed request was the half-open probe.
    /// Returns true when this failure opened the breaker.
    pub fn record_failure(&self, policy: &BreakerPolicy, was_probe: bool) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        // Penalise latency so the balancer drifts away even before ejection.
        let old = self.ewma_us.load(Ordering::Relaxed);
        self.ewma_us
            .store(old.saturating_mul(2).min(60_000_000), Ordering::Relaxed);
        if was_probe || n >= policy.failure_threshold {
            let until = now_ms() + policy.open_for.as_millis() as u64;
            let prev = self.open_until_ms.swap(until, Ordering::AcqRel);
            self.probing.store(false, Ordering::Release);
            return prev == 0 || was_probe;
        }
        false
    }

    /// The probe ended without a verdict (e.g. client went away): let another probe through.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Honour an upstream's Retry-After (or a 429 without one, briefly).
    pub fn park_for(&self, d: Duration) {
        let until = now_ms() + d.as_millis() as u64;
        self.parked_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    pub fn parked_for(&self) -> Option<Duration> {
        let until = self.parked_until_ms.load(Ordering::Acquire);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// Registry of live states by upstream id, shared by successive configurations.
#[derive(Debug, Default)]
pub struct UpstreamStates {
    map: DashMap<String, Arc<UpstreamState>>,
}

impl UpstreamStates {
    /// The state of `id`, kept when its address is unchanged, fresh otherwise.
    pub fn get_or_create(&self, id: &str, base: &BaseUrl) -> Arc<UpstreamState> {
        if let Some(s) = self.map.get(id) {
            if &s.base == base {
                return s.clone();
            }
        }
        let s = Arc::new(UpstreamState::new(base.clone()));
        self.map.insert(id.to_string(), s.clone());
        s
    }

    /// Forget upstreams that are no longer configured.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        self.map.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> UpstreamState {
        UpstreamState::new(BaseUrl::parse("http://127.0.0.1:1/v1").unwrap())
    }

    #[test]
    fn breaker_opens_after_threshold_and_admits_one_probe() {
        let s = state();
        let policy = BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_millis(0),
        };
        assert_eq!(s.admit(), Admission::Normal);
        assert!(!s.record_failure(&policy, false));
        assert!(!s.record_failure(&policy, false));
        assert!(s.record_failure(&policy, false));
        // open_for = 0: immediately half-open, one probe only.
        assert_eq!(s.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(s.admit(), Admission::Probe);
        assert_eq!(s.admit(), Admission::Refused);
        s.record_success(Duration::from_millis(5));
        assert_eq!(s.breaker_state(), BreakerState::Closed);
        assert_eq!(s.admit(), Admission::Normal);
    }

    #[test]
    fn failed_probe_reopens() {
        let s = state();
        let policy = BreakerPolicy {
            failure_threshold: 1,
            open_for: Duration::from_secs(60),
        };
        s.record_failure(&policy, false);
        assert_eq!(s.admit(), Admission::Refused);
        assert_eq!(s.breaker_state(), BreakerState::Open);
    }

    #[test]
    fn parking_refuses_until_expiry() {
        let s = state();
        s.park_for(Duration::from_secs(30));
        assert_eq!(s.admit(), Admission::Refused);
        assert!(s.parked_for().is_some());
    }
}
