//! tollgate: an enterprise LLM gateway on Pingora.
//!
//! Layout follows the architecture (docs/architecture.md): `proxy` is the thin `ProxyHttp`
//! implementation, `routing` chooses upstreams, `router` chooses the model tier of `auto`
//! (docs/routing.md), `protocol` speaks the vendors' wire formats, `billing` meters, `tenancy`
//! holds tenants and keys, `admin` is the control plane, `config` loads and reloads the files
//! in conf/.

pub mod admin;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod billing;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod error;
pub mod guardrails;
pub mod logbuf;
pub mod logfmt;
pub mod mail;
pub mod metrics;
pub mod mock;
pub mod outbound;
pub mod passthrough;
pub mod payments;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod routing;
pub mod server;
pub mod sso;
pub mod store;
pub mod tenancy;

/// Hash maps read on every request (models, channels, keys, books, quota accounts): keyed by
/// small values the gateway itself controls, so they need speed, not SipHash's resistance to
/// chosen keys (std's default cost ~2,000 instructions a call in `bench/callgrind.sh`).
pub type FastHasher = foldhash::fast::RandomState;
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;
pub type FastSet<T> = std::collections::HashSet<T, FastHasher>;
