//! Choosing where a request goes: per-upstream live state (circuit breaker, latency, in-flight,
//! Retry-After parking, resolved addresses) and the balancer that orders a channel's upstreams.

pub mod balancer;
pub mod resolver;
pub mod upstream;
