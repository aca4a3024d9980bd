//! tollgate: an enterprise LLM gateway on Pingora.
//!
//! Layout follows the architecture (docs/architecture.md): `proxy` is the thin `ProxyHttp`
//! implementation, `routing` chooses upstreams, `router` chooses the model tier of `auto`
//! (docs/routing.md), `protocol` speaks the vendors' wire formats, `billing` meters, `tenancy`
//! holds tenants and keys, `admin` is the control plane, `config` loads and reloads the files
//! in conf/.

pub mod admin;
pub mod app;
pub mod billing;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod logbuf;
pub mod logfmt;
pub mod metrics;
pub mod mock;
pub mod passthrough;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod routing;
pub mod server;
pub mod tenancy;
