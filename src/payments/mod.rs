//! Online payment (issue 17): tenants pay through a provider, and credit is granted only from
//! the provider's verified notification, once per order (the order's id is the top-up's
//! idempotency key, so a notification delivered five times, concurrently or after a crash
//! between crediting and marking the order, credits once).
//!
//! Providers speak their own protocols: `stripe` (Checkout Sessions, `Stripe-Signature`
//! webhooks), `alipay` (RSA2-signed page payments and notifications) and `wechat` (WeChat Pay
//! API v3: signed requests, AES-256-GCM notifications, platform certificates). docs/payments.md.

pub mod alipay;
pub mod keys;
pub mod stripe;
pub mod wechat;

/// Why a provider call or notification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// A signature that does not verify (or a payload that does not decrypt).
    BadSignature,
    /// It names no order of ours.
    UnknownOrder,
    /// Another app, merchant, amount or order than ours.
    Mismatch(String),
    /// The provider answered, and refused.
    Refused(String),
    /// The provider could not be reached.
    Unreachable(String),
    /// Our own keys are unusable.
    Config(String),
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::BadSignature => f.write_str("the signature does not verify"),
            ProviderError::UnknownOrder => f.write_str("it names no order of ours"),
            ProviderError::Mismatch(m)
            | ProviderError::Refused(m)
            | ProviderError::Unreachable(m)
            | ProviderError::Config(m) => f.write_str(m),
        }
    }
}

/// A payment the provider reports for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    pub amount_minor: i64,
    /// Lower case (`cny`).
    pub currency: String,
    /// The provider's transaction number.
    pub transaction: String,
}

/// What an active query of an order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    Paid(Paid),
    Unpaid,
    Closed,
}

/// A refund the provider took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundResult {
    /// The money is back with the payer (else the provider is still processing it).
    pub done: bool,
    pub provider_ref: String,
}

/// What a provider answers when an order is placed: its id for the payment and where to send
/// the payer.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub provider_ref: String,
    pub pay_url: String,
}

/// An HTTP(S) answer of a provider's API.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// POSTs a form to a provider's API.
pub async fn post_form(
    url: &str,
    headers: &[(&str, String)],
    form: &[(&str, String)],
) -> Result<Answer, String> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let mut all: Vec<(&str, String)> = vec![("Accept", "application/json".into())];
    all.extend(headers.iter().cloned());
    request(
        "POST",
        url,
        &all,
        Some((
            "application/x-www-form-urlencoded; charset=utf-8",
            bytes::Bytes::from(body),
        )),
    )
    .await
}

/// Sends a request to a provider's API (`url`: `https://host[:port]/path?query`, or `http://`
/// for a local mock) with Pingora's client (its TLS, its connection code: no second HTTP stack).
/// Answers at most 1 MiB of body; gives up after 20 s.
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
        .map_err(|_| "the provider did not answer within 20 s".to_string())?
        .map_err(err)?;
    session.shutdown().await;
    Ok(answer)
}
