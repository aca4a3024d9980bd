//! HTTP requests the gateway makes on its own behalf (payment providers, identity providers,
//! alert webhooks), with Pingora's client: its TLS and connection code, no second HTTP stack.

/// An HTTP(S) answer.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// Sends a request (`url`: `https://host[:port]/path?query`, or `http://` for a local mock).
/// Answers at most 1 MiB of body; gives up after 20 s. Redirects are not followed.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<(&str, bytes::Bytes)>,
) -> Result<Answer, String> {
    use pingora::connectors::http::Connector;
    use pingora::upstreams::peer::HttpPeer;
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("`{url}` is not an http(s) address"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in `{url}`"))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let err = |e: Box<pingora::Error>| e.to_string();
    let peer = HttpPeer::new(addr, tls, host.to_string());
    let connector = Connector::new(None);
    let (mut session, _) = connector.get_http_session(&peer).await.map_err(err)?;
    let mut req = pingora_http::RequestHeader::build(method, path.as_bytes(), None).map_err(err)?;
    req.insert_header("Host", authority).map_err(err)?;
    if let Some((content_type, b)) = &body {
        req.insert_header("Content-Type", *content_type)
            .map_err(err)?;
        req.insert_header("Content-Length", b.len().to_string())
            .map_err(err)?;
    }
    for (k, v) in headers {
        req.insert_header(k.to_string(), v.as_str()).map_err(err)?;
    }
    let exchange = async {
        session.write_request_header(Box::new(req)).await?;
        if let Some((_, b)) = body {
            session.write_request_body(b, true).await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let (status, headers) = session.response_header().map_or_else(
            || (0, http::HeaderMap::new()),
            |h| (h.status.as_u16(), h.headers.clone()),
        );
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            if out.len() + chunk.len() > 1 << 20 {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok::<_, Box<pingora::Error>>(Answer {
            status,
            headers,
            body: out.freeze(),
        })
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
        .map_err(err)?;
    session.shutdown().await;
    Ok(answer)
}
