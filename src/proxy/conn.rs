//! A client connection whose request heads must arrive whole within a deadline (nginx's
//! `client_header_timeout`): Pingora times each read of a head, not the whole head, so a
//! client sending one header byte every few seconds would keep a connection forever.
//!
//! The deadline runs from the connection's start for its first request, and from the first
//! byte of each later request head (a read that starts with a method's capital letter after
//! an answer was written: an idle keep-alive connection is `keepalive_timeout_seconds`' business,
//! and a request body never starts with a capital letter). It ends at the head's blank line.
//! When it has passed, the next read fails with `TimedOut` and Pingora closes the connection.
//! The deadline is checked on each read, not by a timer (a timer a request cost ~600
//! instructions): a client that trickles bytes is cut at its first byte after the deadline,
//! and one that stops sending is Pingora's per-read timeout's.
//!
//! The same wrapper gives the answers that Pingora's HTTP layer writes by itself (a 400 for a
//! request head it cannot parse, a 405 for CONNECT) what every other answer of the gateway has:
//! an `x-request-id`, a log line with it, and an OpenAI-shaped error body. Pingora writes them
//! from a fixed template (`Server: Pingora` right after the status line, `Content-Length: 0`),
//! which the gateway's own answers never carry (the proxy removes `Server`), so a write that
//! starts with that template is recognised by its first bytes and replaced; the connection is
//! closing (Pingora sends `Connection: close`), and whatever Pingora writes after it is dropped.

use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    limit: Duration,
    /// Set while a head is being read.
    deadline: Option<Instant>,
    /// How much of "\r\n\r\n" the bytes read so far end with.
    matched: usize,
    /// An answer was written since the last head: the next head arms the deadline.
    answered: bool,
    /// The replacement of one of Pingora's own error answers, while it is being written:
    /// the bytes, how many are written, and the length of Pingora's write that it stands for.
    rewrite: Option<Rewrite>,
    /// A replacement was written: Pingora's further writes are dropped (it closes next).
    rewritten: bool,
}

#[derive(Debug)]
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    stands_for: usize,
}

impl HeadDeadline {
    pub fn new(inner: Stream, limit: Duration) -> Self {
        HeadDeadline {
            inner,
            limit,
            deadline: Some(Instant::now() + limit),
            matched: 0,
            answered: false,
            rewrite: None,
            rewritten: false,
        }
    }

    /// Writes the pending replacement; `Ready(Ok(n))` with the length of the write it stands
    /// for once it is all out.
    fn drive_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some(r) = &mut self.rewrite {
            if r.written == r.bytes.len() {
                let n = r.stands_for;
                self.rewrite = None;
                self.rewritten = true;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => r.written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }

    /// Recognises one of Pingora's own error answers at the start of a write and prepares its
    /// replacement; whether it did.
    fn intercept(&mut self, buf: &[u8]) -> bool {
        let Some(status) = pingora_error_status(buf) else {
            return false;
        };
        let id = crate::proxy::ctx::new_request_id();
        crate::metrics::METRICS.malformed_requests.inc();
        tracing::warn!(
            request_id = %id,
            status,
            peer = %self.peer(),
            "request refused by the HTTP layer (malformed request head or unsupported method)"
        );
        self.rewrite = Some(Rewrite {
            bytes: error_answer(status, &id),
            written: 0,
            stands_for: buf.len(),
        });
        true
    }

    fn peer(&self) -> String {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()))
            .unwrap_or_default()
    }
}

/// What starts an error answer written by Pingora itself: after the status line, `Server:
/// Pingora` (`pingora_core::protocols::http::error_resp::gen_error_response`).
const PINGORA_SERVER: &[u8] = b"\r\nServer: Pingora\r\n";

/// The status of an error answer written by Pingora's own template, if `buf` starts one.
fn pingora_error_status(buf: &[u8]) -> Option<u16> {
    // "HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\n"
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let code = rest.get(..3)?;
    if !matches!(code[0], b'4' | b'5') {
        return None;
    }
    let line_end = memchr::memchr(b'\r', rest.get(..64.min(rest.len()))?)?;
    if !rest[line_end..].starts_with(PINGORA_SERVER) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The gateway's answer in place of Pingora's: same status, an `x-request-id`, an OpenAI-shaped
/// error (the request could not be read, so its protocol is unknown; OpenAI's is the default).
fn error_answer(status: u16, request_id: &str) -> Vec<u8> {
    let (message, code) = match status {
        405 => ("this method is not supported", "method_not_allowed"),
        400 => ("malformed HTTP request", "bad_request"),
        _ => ("the request could not be read", "bad_request"),
    };
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}
    })
    .to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const END: &[u8] = b"\r\n\r\n";

/// The searcher for `END`, built once (building it costs more than a head's search).
static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(END));

/// Follows the bytes of a head until its blank line (`matched`: how much of "\r\n\r\n" the
/// bytes so far end with); returns whether it ended.
fn head_ends(matched: &mut usize, bytes: &[u8]) -> bool {
    // The blank line split across reads: what the last read ended with, completed here.
    if *matched > 0 {
        let need = &END[*matched..];
        if bytes.len() >= need.len() && bytes.starts_with(need) {
            *matched = 0;
            return true;
        }
    }
    if FINDER.find(bytes).is_some() {
        *matched = 0;
        return true;
    }
    // How much of the blank line the bytes end with, for the next read: a short read may
    // continue a partial match ("\r", then "\n", then "\r").
    let k = *matched + bytes.len();
    *matched = if *matched > 0 && k < 4 && bytes == &END[*matched..k] {
        k
    } else {
        (1..=3)
            .rev()
            .find(|&k| bytes.ends_with(&END[..k]))
            .unwrap_or(0)
    };
    false
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = this.deadline {
            if Instant::now() >= d {
                crate::metrics::METRICS.header_timeouts.inc();
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request head did not arrive in time",
                )));
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            if this.deadline.is_none()
                && this.answered
                && new.first().is_some_and(u8::is_ascii_uppercase)
            {
                this.answered = false;
                this.matched = 0;
                this.deadline = Some(Instant::now() + this.limit);
            }
            if this.deadline.is_some() && head_ends(&mut this.matched, &buf.filled()[before..]) {
                this.deadline = None;
            }
        }
        res
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_some() || (buf.first() == Some(&b'H') && this.intercept(buf)) {
            return this.drive_rewrite(cx);
        }
        if this.rewritten {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.deadline.is_none() {
            this.answered = true;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let first = bufs.iter().find(|b| !b.is_empty());
        if this.rewrite.is_some()
            || first.is_some_and(|b| b.first() == Some(&b'H') && this.intercept(b))
        {
            return this.drive_rewrite(cx);
        }
        if this.rewritten {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        if this.deadline.is_none() {
            this.answered = true;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait::async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, d: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait::async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The longest PROXY protocol header taken (v1 is at most 107 bytes; v2 with its TLVs is
/// usually well under this).
const MAX_PROXY_HEADER: usize = 4096;

/// Reads the PROXY protocol header (v1 or v2, by `ppp`) that starts a connection from a load
/// balancer, and makes the source address it names the connection's client address (what
/// allow-lists, logs and the audit trail see). A `LOCAL` or `UNKNOWN` header (the balancer's
/// own health check) keeps the socket's address. `None` (close the connection): the peer is
/// not a trusted proxy (when any are listed), the header is missing or malformed, or it did not
/// arrive within `timeout`. Bytes read past the header are put back for the HTTP parser.
pub async fn read_proxy_header(
    stream: Stream,
    timeout: Duration,
    trusted: &[ipnet::IpNet],
) -> Option<Stream> {
    use pingora_core::protocols::l4::socket::SocketAddr;
    use pingora_core::protocols::l4::stream::Stream as L4;
    use ppp::{HeaderResult, PartialResult};
    use std::os::unix::io::AsRawFd;
    use tokio::io::AsyncReadExt;
    let mut l4 = match stream.into_any().downcast::<L4>() {
        Ok(s) => s,
        Err(_) => {
            tracing::warn!("server.proxy_protocol: not a plain TCP connection; closed");
            return None;
        }
    };
    let peer = l4
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    let refuse = |why: &str| {
        crate::metrics::METRICS.proxy_protocol_refusals.inc();
        tracing::debug!(peer = ?peer, why, "PROXY protocol header refused; connection closed");
    };
    if !trusted.is_empty() && !peer.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip))) {
        refuse("the peer is not in server.trusted_proxies");
        return None;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 512];
            let n = l4.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let parsed = HeaderResult::parse(&buf);
            // More bytes can only help a v2 header still arriving, or a v1 line not yet ended;
            // anything else is refused at once (not after the header timeout).
            const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
            let waiting = if buf.starts_with(b"PROXY ") {
                memchr::memchr(b'\n', &buf[..buf.len().min(108)]).is_none() && buf.len() < 108
            } else {
                let head = &buf[..buf.len().min(12)];
                V2.starts_with(head) || b"PROXY ".starts_with(&buf[..buf.len().min(6)])
            };
            if parsed.is_incomplete() && waiting && buf.len() < MAX_PROXY_HEADER {
                continue;
            }
            return match parsed {
                HeaderResult::V1(Ok(h)) => Some((
                    h.header.len(),
                    match h.addresses {
                        ppp::v1::Addresses::Tcp4(a) => Some(std::net::SocketAddr::from((
                            a.source_address,
                            a.source_port,
                        ))),
                        ppp::v1::Addresses::Tcp6(a) => Some(std::net::SocketAddr::from((
                            a.source_address,
                            a.source_port,
                        ))),
                        ppp::v1::Addresses::Unknown => None,
                    },
                )),
                HeaderResult::V2(Ok(h)) => Some((
                    h.len(),
                    match (h.command, h.addresses) {
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Some(
                            std::net::SocketAddr::from((a.source_address, a.source_port)),
                        ),
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Some(
                            std::net::SocketAddr::from((a.source_address, a.source_port)),
                        ),
                        _ => None,
                    },
                )),
                _ => None,
            };
        }
    };
    let Ok(Some((len, source))) = tokio::time::timeout(timeout, read).await else {
        refuse("missing, malformed or late");
        return None;
    };
    if let Some(rest) = buf.get(len..) {
        l4.rewind(rest);
    }
    if let Some(addr) = source {
        let digest = pingora_core::protocols::SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(SocketAddr::Inet(addr)));
        l4.set_socket_digest(digest);
    }
    Some(l4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blank_line_is_found_across_reads() {
        let mut m = 0;
        assert!(!head_ends(&mut m, b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!head_ends(&mut m, b"\n"));
        assert!(head_ends(&mut m, b"\r\n{\"body\""));
        assert!(!head_ends(&mut m, b"\r\r\n\n"));
        let mut m = 0;
        for (i, piece) in [&b"GET / HTTP/1.1\r\nA: b"[..], b"\r", b"\n", b"\r"]
            .iter()
            .enumerate()
        {
            assert!(!head_ends(&mut m, piece), "piece {i}");
        }
        assert!(head_ends(&mut m, b"\n"));
    }

    #[test]
    fn only_pingoras_own_error_template_is_recognised() {
        let pingora =
            b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(pingora_error_status(pingora), Some(400));
        let connect = b"HTTP/1.1 405 Method Not Allowed\r\nServer: Pingora\r\n";
        assert_eq!(pingora_error_status(connect), Some(405));
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"[..],
            b"HTTP/1.1 200 OK\r\nServer: Pingora\r\n",
            b"HTTP/1.1 400",
            b"data: HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\n",
            b"",
        ] {
            assert_eq!(
                pingora_error_status(ours),
                None,
                "{:?}",
                String::from_utf8_lossy(ours)
            );
        }
        let answer = String::from_utf8(error_answer(400, "req_1")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains("x-request-id: req_1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
}
