//! Reading the caller's request body so that bodies of any size (up to the configured limit)
//! reach the upstream, on every attempt.
//!
//! Pingora forwards a body that a filter already read only from its retry buffer, which holds
//! 64 KiB; past that the buffer is marked truncated and Pingora never calls
//! `request_body_filter`, so the upstream would get headers and no body. Instead of copying
//! Pingora's code, we switch its retry buffering on only for the *tail* of the body: with a
//! Content-Length we know how much is left, and once at most 64 KiB remain we enable the
//! buffer. The buffer then holds a non-empty, untruncated tail, which makes Pingora call
//! `request_body_filter` on every attempt, where the gateway substitutes the whole (rewritten)
//! body it kept in the request context. A chunked body's length is unknown in advance, so it
//! is buffered from the start and may not exceed 64 KiB (411 Length Required beyond that;
//! every mainstream SDK sends Content-Length).

use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

/// Pingora's retry buffer capacity (`BODY_BUF_LIMIT` in pingora-core).
pub const RETRY_BUFFER: usize = 64 * 1024;

/// Bytes of request bodies held in memory right now, as counted by [`BodyHold`]s.
static BUFFERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A request body's share of the global budget (`server.max_buffered_body_bytes`), given back
/// when the request ends. A body is held about twice while it is sent (the caller's bytes and
/// the rewritten or translated copy), so it counts twice its length. Bodies up to 64 KiB
/// (every chunked body, and the common call) are not counted: their memory is bounded by the
/// connections.
#[derive(Debug)]
pub struct BodyHold(usize);

impl BodyHold {
    fn take(bytes: usize, budget: usize) -> Result<BodyHold, GatewayError> {
        use std::sync::atomic::Ordering;
        let mut cur = BUFFERED.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(bytes) > budget {
                crate::metrics::METRICS.body_budget_refusals.inc();
                return Err(GatewayError::Overloaded {
                    message: "The gateway is holding as many request bodies as its memory budget allows; retry shortly.".into(),
                    retry_after: 1,
                });
            }
            match BUFFERED.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(BodyHold(bytes)),
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes of request bodies held now (for the gauge).
    pub fn in_use() -> usize {
        BUFFERED.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Reads the whole body (at most `limit` bytes). A body above 64 KiB first takes its share of
/// `budget` (503 when the budget is spent), kept in the returned hold until the request ends.
/// The slowest a request body may arrive, after a grace period.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_second: u64,
    pub grace: std::time::Duration,
}

pub async fn read_bounded(
    session: &mut Session,
    limit: usize,
    budget: usize,
    min_rate: MinRate,
) -> Result<(Bytes, Option<BodyHold>), GatewayError> {
    let content_length = match session.get_header(http::header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| GatewayError::bad_request("Invalid Content-Length header."))?,
        ),
    };
    if content_length.is_some_and(|cl| cl > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let hold = match content_length {
        Some(cl) if cl > RETRY_BUFFER => Some(BodyHold::take(cl.saturating_mul(2), budget)?),
        _ => None,
    };
    let expects_continue = session
        .get_header(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    // Pingora turns keep-alive off when any response header, even the interim 100, goes out
    // before the request body is read; it is restored once the whole body has been read.
    let keepalive = session.as_mut().get_keepalive();
    if expects_continue {
        // Without this, clients such as curl wait a second before sending a large body.
        session
            .as_mut()
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::bad_request("The request could not be read."))?;
    }
    let mut buf = BytesMut::with_capacity(content_length.unwrap_or(16 * 1024).min(limit));
    let mut buffering = false;
    let started = std::time::Instant::now();
    let mut chunks = 0u32;
    loop {
        if !buffering {
            let tail_fits = match content_length {
                Some(cl) => cl.saturating_sub(buf.len()) <= RETRY_BUFFER,
                None => true,
            };
            if tail_fits {
                session.as_mut().enable_retry_buffering();
                buffering = true;
            }
        }
        match session.as_mut().read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
                // A body trickled in (each read on time, the whole never): refused once it has
                // had its grace and still comes slower than the minimum rate. The common body
                // arrives in one chunk and is never timed.
                chunks += 1;
                if chunks > 1 {
                    let elapsed = started.elapsed();
                    if elapsed > min_rate.grace
                        && (buf.len() as u64)
                            < (min_rate.bytes_per_second as f64 * elapsed.as_secs_f64()) as u64
                    {
                        crate::metrics::METRICS.slow_bodies.inc();
                        return Err(GatewayError::RequestTimeout(format!(
                            "The request body arrived slower than {} bytes a second; send it faster.",
                            min_rate.bytes_per_second
                        )));
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(GatewayError::bad_request(match e.etype() {
                    pingora_error::ErrorType::InvalidHTTPHeader
                    | pingora_error::ErrorType::Custom(_) => {
                        "The request body is not valid: its framing (chunked encoding or length) is broken."
                    }
                    _ => "The request body could not be read.",
                }));
            }
        }
    }
    if content_length.is_none() && session.as_ref().retry_buffer_truncated() {
        return Err(GatewayError::LengthRequired(format!(
            "Request bodies over {} KiB must be sent with a Content-Length header.",
            RETRY_BUFFER / 1024
        )));
    }
    if expects_continue && keepalive.is_some() {
        session.as_mut().set_keepalive(keepalive);
    }
    Ok((buf.freeze(), hold))
}
