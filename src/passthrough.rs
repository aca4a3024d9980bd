//! A bare Pingora pass-through proxy, for the benchmark's baseline: the same Pingora, connection
//! pooling and HTTP/1 handling as the gateway, with none of the gateway's work (no auth, parsing,
//! routing, metering, billing or logging). Comparing the two isolates what tollgate itself costs.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;

pub struct PassThrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Serve on `listen`, forwarding everything to `upstream`, with `threads` worker threads.
pub fn run(listen: &str, upstream: SocketAddr, threads: usize) -> ! {
    let conf = ServerConf {
        threads,
        upgrade_sock: format!("/tmp/tollgate-passthrough-{}.sock", std::process::id()),
        pid_file: format!("/tmp/tollgate-passthrough-{}.pid", std::process::id()),
        ..Default::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut svc =
        pingora_proxy::http_proxy_service(&server.configuration, PassThrough { upstream });
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever()
}
