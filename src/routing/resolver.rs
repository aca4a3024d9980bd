//! DNS for upstream hosts, off the request path. Pingora's `HttpPeer::new("host:443")` would
//! resolve with a blocking call on the request path; instead every configured host is resolved
//! here at load time and refreshed in the background, and peers are built from socket addresses.

use crate::config::Config;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// Resolve every hostname upstream of `config` (blocking; call from a blocking context).
/// Returns the failures as messages; an upstream keeps its previous addresses on failure.
pub fn resolve_all(config: &Config) -> Vec<String> {
    let mut failures = Vec::new();
    for up in config.upstreams() {
        let st = &up.state;
        if !st.needs_resolution() {
            continue;
        }
        match (st.base.host.as_str(), st.base.port).to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                if addrs.is_empty() {
                    failures.push(format!(
                        "{}: {} resolved to no address",
                        up.id, st.base.host
                    ));
                } else {
                    st.set_addrs(addrs);
                }
            }
            Err(e) => failures.push(format!("{}: cannot resolve {}: {e}", up.id, st.base.host)),
        }
    }
    failures
}

pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
