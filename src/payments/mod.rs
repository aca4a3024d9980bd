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

pub use crate::outbound::{request, Answer};

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
