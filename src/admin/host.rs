//! Pingora hosts the admin API: it reads each request (head and a bounded body) from the
//! connection, hands it to the axum router, and writes the answer back, whole or (CSV exports)
//! chunk by chunk as the handler's body yields it. Hosting it as a Pingora service keeps the
//! listener in the graceful-upgrade hand-over.

use super::auth::ClientIp;
use super::wire::ApiError;
use crate::app::App;
use crate::error::GatewayError;
use async_trait::async_trait;
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::BodyExt;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::sync::Arc;
use tower::ServiceExt;

/// The largest request body the admin API reads.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

pub struct AdminApi {
    router: axum::Router,
}

impl AdminApi {
    pub fn new(app: Arc<App>) -> AdminApi {
        AdminApi {
            router: super::router(app),
        }
    }
}

/// The request's body, read whole (it is small: JSON or a form), or the error that ends it.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, GatewayError> {
    let mut buf = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(GatewayError::PayloadTooLarge {
                        limit: MAX_ADMIN_BODY,
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(_) => {
                return Err(GatewayError::bad_request(
                    "The request body could not be read.",
                ))
            }
        }
    }
}

fn request(session: &ServerSession, body: Vec<u8>) -> Result<axum::extract::Request, GatewayError> {
    let head = session.req_header();
    let mut b = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.clone());
    for (k, v) in head.headers.iter() {
        b = b.header(k, v);
    }
    let mut req = b
        .body(axum::body::Body::from(body))
        .map_err(|e| GatewayError::bad_request(format!("Invalid request: {e}")))?;
    let ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    req.extensions_mut().insert(ClientIp(ip));
    Ok(req)
}

/// Writes a response; returns whether it was written to its end.
async fn write(session: &mut ServerSession, r: axum::response::Response) -> bool {
    let (parts, body) = r.into_parts();
    let mut header: ResponseHeader = parts.into();
    let exact = http_body::Body::size_hint(&body).exact();
    if let Some(len) = exact.filter(|n| *n <= MAX_ADMIN_BODY as u64 * 64) {
        let Ok(collected) = body.collect().await else {
            return false;
        };
        let bytes = collected.to_bytes();
        debug_assert_eq!(bytes.len() as u64, len);
        if header
            .insert_header(http::header::CONTENT_LENGTH, bytes.len())
            .is_err()
            || session
                .write_response_header(Box::new(header))
                .await
                .is_err()
        {
            return false;
        }
        return session.write_response_body(bytes, true).await.is_ok();
    }
    // A streamed body (a CSV export): chunked, written as the handler yields it. A body that
    // fails midway stops without its last chunk, so the client sees a truncated transfer rather
    // than a short file that looks complete.
    if header
        .insert_header(http::header::TRANSFER_ENCODING, "chunked")
        .is_err()
        || session
            .write_response_header(Box::new(header))
            .await
            .is_err()
    {
        return false;
    }
    let mut body = body;
    loop {
        match body.frame().await {
            None => {
                return session
                    .write_response_body(Bytes::new(), true)
                    .await
                    .is_ok()
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && session.write_response_body(data, false).await.is_err() {
                        return false;
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "an admin response stopped midway");
                return false;
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for AdminApi {
    /// Runs for each request on an admin connection: reads the request, answers, and hands the
    /// connection back for reuse when the answer was written whole and the body read to its end.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "admin request could not be read");
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let answer = match read_body(&mut session).await {
            Ok(body) => match request(&session, body) {
                Ok(req) => match self.router.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
                Err(e) => ApiError(e).into_response(),
            },
            Err(e) => {
                // The rest of the body is unread: the connection cannot be reused.
                session.set_keepalive(None);
                ApiError(e).into_response()
            }
        };
        if !write(&mut session, answer).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}
