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
}

impl HeadDeadline {
    pub fn new(inner: Stream, limit: Duration) -> Self {
        HeadDeadline {
            inner,
            limit,
            deadline: Some(Instant::now() + limit),
            matched: 0,
            answered: false,
        }
    }
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
}
