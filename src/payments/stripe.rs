//! Stripe Checkout: a Checkout Session per order (`POST /v1/checkout/sessions`, form-encoded,
//! with the order's id as Stripe's idempotency key), and webhooks verified with the endpoint's
//! signing secret: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, within a
//! tolerance of five minutes (replays of old events are refused).

use super::{Checkout, Paid, ProviderError, QueryResult, RefundResult};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How old a signed webhook may be.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone)]
pub struct Stripe {
    pub secret_key: String,
    pub webhook_secret: String,
    /// `https://api.stripe.com` (a test points it at a mock).
    pub api_base: String,
}

/// What a Checkout Session for an order asks for.
pub struct SessionRequest<'a> {
    pub order_id: i64,
    pub tenant_id: i64,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    /// Unix seconds (Stripe takes 30 minutes to 24 hours from now).
    pub expires_at: i64,
}

impl Stripe {
    /// Creates the Checkout Session of an order.
    pub async fn create_session(&self, r: &SessionRequest<'_>) -> Result<Checkout, String> {
        let form: Vec<(&str, String)> = vec![
            ("mode", "payment".into()),
            ("client_reference_id", r.order_id.to_string()),
            ("metadata[order_id]", r.order_id.to_string()),
            ("metadata[tenant_id]", r.tenant_id.to_string()),
            ("line_items[0][quantity]", "1".into()),
            (
                "line_items[0][price_data][currency]",
                r.currency.to_string(),
            ),
            (
                "line_items[0][price_data][unit_amount]",
                r.amount_minor.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                "LLM gateway credits".into(),
            ),
            ("success_url", r.success_url.to_string()),
            ("cancel_url", r.cancel_url.to_string()),
            ("expires_at", r.expires_at.to_string()),
        ];
        let headers = [
            self.auth(),
            ("Idempotency-Key", format!("tollgate-order-{}", r.order_id)),
        ];
        let url = format!(
            "{}/v1/checkout/sessions",
            self.api_base.trim_end_matches('/')
        );
        let answer = super::post_form(&url, &headers, &form)
            .await
            .map_err(|e| format!("Stripe could not be reached: {e}"))?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("Stripe answered {} with no JSON: {e}", answer.status))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!(
                "Stripe refused the session ({}): {}",
                answer.status,
                body["error"]["message"].as_str().unwrap_or("no message")
            ));
        }
        match (body["id"].as_str(), body["url"].as_str()) {
            (Some(id), Some(url)) => Ok(Checkout {
                provider_ref: id.to_string(),
                pay_url: url.to_string(),
            }),
            _ => Err("Stripe's session has no id or url".into()),
        }
    }
}

impl Stripe {
    fn auth(&self) -> (&'static str, String) {
        ("Authorization", format!("Bearer {}", self.secret_key))
    }

    fn json(answer: super::Answer) -> Result<serde_json::Value, ProviderError> {
        let body: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| {
            ProviderError::Refused(format!(
                "Stripe answered {} with no JSON: {e}",
                answer.status
            ))
        })?;
        if !(200..300).contains(&answer.status) {
            return Err(ProviderError::Refused(format!(
                "Stripe refused ({}): {}",
                answer.status,
                body["error"]["message"].as_str().unwrap_or("no message")
            )));
        }
        Ok(body)
    }

    async fn session(&self, session_id: &str) -> Result<serde_json::Value, ProviderError> {
        if !session_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ProviderError::Mismatch("not a Checkout Session id".into()));
        }
        let url = format!(
            "{}/v1/checkout/sessions/{session_id}",
            self.api_base.trim_end_matches('/')
        );
        let answer = super::request("GET", &url, &[self.auth()], None)
            .await
            .map_err(ProviderError::Unreachable)?;
        Stripe::json(answer)
    }

    /// Asks Stripe about an order's Checkout Session (the answer comes over TLS from the API,
    /// asked with our secret key).
    pub async fn query(&self, session_id: &str) -> Result<QueryResult, ProviderError> {
        let s = self.session(session_id).await?;
        if s["id"].as_str() != Some(session_id) {
            return Err(ProviderError::Mismatch(
                "Stripe answered about another session".into(),
            ));
        }
        Ok(match (s["payment_status"].as_str(), s["status"].as_str()) {
            (Some("paid"), _) => QueryResult::Paid(Paid {
                amount_minor: s["amount_total"]
                    .as_i64()
                    .ok_or_else(|| ProviderError::Refused("no amount in the session".into()))?,
                currency: s["currency"].as_str().unwrap_or("").to_ascii_lowercase(),
                transaction: s["payment_intent"].as_str().unwrap_or("").to_string(),
            }),
            (_, Some("expired")) => QueryResult::Closed,
            _ => QueryResult::Unpaid,
        })
    }

    /// Refunds part or all of a paid session's payment (`POST /v1/refunds`, idempotent on
    /// `refund_no`).
    pub async fn refund(
        &self,
        session_id: &str,
        refund_no: &str,
        amount_minor: i64,
    ) -> Result<RefundResult, ProviderError> {
        let s = self.session(session_id).await?;
        let intent = s["payment_intent"]
            .as_str()
            .ok_or_else(|| ProviderError::Refused("the session has no payment".into()))?;
        let form: Vec<(&str, String)> = vec![
            ("payment_intent", intent.to_string()),
            ("amount", amount_minor.to_string()),
            ("metadata[refund]", refund_no.to_string()),
        ];
        let headers = [
            self.auth(),
            ("Idempotency-Key", format!("tollgate-{refund_no}")),
        ];
        let url = format!("{}/v1/refunds", self.api_base.trim_end_matches('/'));
        let answer = super::post_form(&url, &headers, &form)
            .await
            .map_err(ProviderError::Unreachable)?;
        let r = Stripe::json(answer)?;
        match r["status"].as_str() {
            Some("succeeded") | Some("pending") | Some("requires_action") => Ok(RefundResult {
                done: r["status"].as_str() == Some("succeeded"),
                provider_ref: r["id"].as_str().unwrap_or("").to_string(),
            }),
            other => Err(ProviderError::Refused(format!(
                "Stripe did not take the refund: {}",
                other.unwrap_or("no status")
            ))),
        }
    }
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

/// Checks a `Stripe-Signature` header against the raw body (`now`: unix seconds).
pub fn verify(header: &str, body: &[u8], secret: &str, now: i64) -> Result<(), SignatureError> {
    let mut t: Option<i64> = None;
    let mut v1: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => {
                if let Ok(bytes) = hex::decode(v) {
                    v1.push(bytes);
                }
            }
            _ => {}
        }
    }
    let Some(t) = t else {
        return Err(if header.is_empty() {
            SignatureError::Missing
        } else {
            SignatureError::Malformed
        });
    };
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    for sig in &v1 {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return Err(SignatureError::Mismatch);
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // verify_slice compares in constant time.
        if mac.verify_slice(sig).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The header Stripe would send for `body` at `t` (tests and the mock provider sign with it).
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_for_key_body_and_age() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(body, "whsec_test", 1_000_000);
        assert_eq!(verify(&h, body, "whsec_test", 1_000_100), Ok(()));
        assert_eq!(
            verify(&h, body, "whsec_other", 1_000_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&h, br#"{"id":"evt_2"}"#, "whsec_test", 1_000_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&h, body, "whsec_test", 1_000_000 + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("", body, "whsec_test", 1),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify("t=5", body, "whsec_test", 5),
            Err(SignatureError::Malformed)
        );
        // Several v1 values (a secret being rolled): any one may match.
        let two = format!("{h},v1={}", "00".repeat(32));
        assert_eq!(verify(&two, body, "whsec_test", 1_000_000), Ok(()));
    }
}
