//! The gateway's one client-facing error type.
//!
//! Every failure a caller can see is built here, so its HTTP status, OpenAI error `type`/`code`
//! and metric label come from exhaustive matches rather than ad-hoc strings at call sites.

use crate::protocol::Dialect;
use bytes::Bytes;
use serde_json::json;

/// A failure answered to the API caller, rendered in OpenAI's error JSON shape.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    MissingKey(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    #[error("{0}")]
    ModelNotFound(String),
    /// The tenant's balance cannot cover the call's worst case.
    #[error("{0}")]
    InsufficientCredit(String),
    /// The key's (or user's) quota cannot cover the call's worst case.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The model has no price: it is never served free.
    #[error("{0}")]
    NotBillable(String),
    /// Cluster mode: the shared credit bank (Redis) cannot be reached and this node holds no
    /// allowance for the call (fail closed).
    #[error("{0}")]
    CreditUnavailable(String),
    /// Too many charged records wait for the store (it does not answer): calls are refused
    /// until it catches up (`billing.max_unstored_charges`).
    #[error("{0}")]
    StoreBacklog(String),
    /// A request or token rate limit (RPM/TPM) of the key, user or tenant.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request body came too slowly (`server.min_body_bytes_per_second`).
    #[error("{0}")]
    RequestTimeout(String),
    /// The gateway is at a resource budget (buffered request bodies): retry shortly.
    #[error("{message}")]
    Overloaded { message: String, retry_after: u64 },
    /// The request's headers exceed `server.max_header_bytes` or `server.max_headers`.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A WebSocket upgrade of the Responses API: served over HTTP only (426 makes Codex fall
    /// back to HTTP at once).
    #[error("{0}")]
    UpgradeRequired(String),
    #[error("request body is larger than the configured limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    LengthRequired(String),
    #[error("{message}")]
    UpstreamRateLimited {
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    NoUpstream(String),
    #[error("{0}")]
    UpstreamFailed(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        GatewayError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            GatewayError::MissingKey(_) | GatewayError::InvalidKey(_) => 401,
            GatewayError::Forbidden(_) | GatewayError::NotBillable(_) => 403,
            GatewayError::InsufficientCredit(_) => 402,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::QuotaExceeded(_) => 429,
            GatewayError::BadRequest { .. } => 400,
            GatewayError::ModelNotFound(_) | GatewayError::NotFound(_) => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::UpgradeRequired(_) => 426,
            GatewayError::HeadersTooLarge(_) => 431,
            GatewayError::RequestTimeout(_) => 408,
            GatewayError::Overloaded { .. } => 503,
            GatewayError::LengthRequired(_) => 411,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::UpstreamRateLimited { .. } => 429,
            GatewayError::UpstreamFailed(_) => 502,
            GatewayError::NoUpstream(_)
            | GatewayError::CreditUnavailable(_)
            | GatewayError::StoreBacklog(_) => 503,
            GatewayError::UpstreamTimeout(_) => 504,
            GatewayError::Internal(_) => 500,
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            GatewayError::MissingKey(_) | GatewayError::InvalidKey(_) => "authentication_error",
            GatewayError::Forbidden(_) | GatewayError::NotBillable(_) => "permission_error",
            GatewayError::InsufficientCredit(_) | GatewayError::QuotaExceeded(_) => {
                "insufficient_quota"
            }
            GatewayError::BadRequest { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::NotFound(_)
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::UpgradeRequired(_)
            | GatewayError::HeadersTooLarge(_)
            | GatewayError::RequestTimeout(_)
            | GatewayError::LengthRequired(_)
            | GatewayError::PayloadTooLarge { .. } => "invalid_request_error",
            GatewayError::UpstreamRateLimited { .. } | GatewayError::RateLimited { .. } => {
                "rate_limit_error"
            }
            GatewayError::NoUpstream(_)
            | GatewayError::CreditUnavailable(_)
            | GatewayError::StoreBacklog(_)
            | GatewayError::Overloaded { .. }
            | GatewayError::UpstreamFailed(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::Internal(_) => "api_error",
        }
    }

    /// OpenAI's `error.code`, also the bounded metric label of the error.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingKey(_) => "missing_api_key",
            GatewayError::InvalidKey(_) => "invalid_api_key",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::InsufficientCredit(_) | GatewayError::QuotaExceeded(_) => {
                "insufficient_quota"
            }
            GatewayError::NotBillable(_) => "model_not_priced",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
            GatewayError::BadRequest { .. } => "invalid_request",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::UpgradeRequired(_) => "websocket_not_supported",
            GatewayError::HeadersTooLarge(_) => "request_header_fields_too_large",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::LengthRequired(_) => "length_required",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::UpstreamRateLimited { .. } => "upstream_rate_limited",
            GatewayError::NoUpstream(_) => "no_upstream_available",
            GatewayError::CreditUnavailable(_) => "credit_bank_unavailable",
            GatewayError::StoreBacklog(_) => "store_unavailable",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::UpstreamFailed(_) => "upstream_error",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::UpstreamRateLimited { retry_after, .. } => *retry_after,
            GatewayError::RateLimited { retry_after, .. } => Some(*retry_after),
            GatewayError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            GatewayError::BadRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_body(&self) -> Bytes {
        let v = json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(v.to_string())
    }

    /// The body in the caller's protocol: OpenAI's shape, Anthropic's
    /// `{"type":"error","error":{"type","message"}}` (type from the status, as Anthropic
    /// assigns them), or Google's `{"error":{"code","message","status"}}`.
    pub fn body_for(&self, caller: Dialect) -> Bytes {
        match caller {
            Dialect::OpenAi | Dialect::Responses => self.openai_body(),
            Dialect::Anthropic => Bytes::from(crate::protocol::anthropic::error_body(
                crate::protocol::anthropic::error_type_for_status(self.status()),
                &self.to_string(),
            )),
            Dialect::Gemini => Bytes::from(crate::protocol::gemini::error_body(
                self.status(),
                &self.to_string(),
            )),
        }
    }

    /// The SSE event that ends a stream that already started, in the caller's protocol.
    pub fn sse_event_for(&self, caller: Dialect) -> Bytes {
        match caller {
            Dialect::Anthropic => Bytes::from(crate::protocol::anthropic::error_event(
                crate::protocol::anthropic::error_type_for_status(self.status()),
                &self.to_string(),
            )),
            Dialect::Responses => Bytes::from(crate::protocol::responses::error_events(
                &self.to_string(),
                self.code(),
                "error",
                "",
                0,
            )),
            Dialect::OpenAi | Dialect::Gemini => self.sse_event(),
        }
    }

    /// The same error as an SSE event, for a stream that already started.
    pub fn sse_event(&self) -> Bytes {
        let mut s = String::from("data: ");
        s.push_str(&String::from_utf8_lossy(&self.openai_body()));
        s.push_str("\n\n");
        Bytes::from(s)
    }
}

impl From<crate::protocol::TranslateError> for GatewayError {
    fn from(e: crate::protocol::TranslateError) -> Self {
        GatewayError::BadRequest {
            message: e.message,
            param: e.param,
        }
    }
}

impl From<crate::protocol::openai::RequestError> for GatewayError {
    fn from(e: crate::protocol::openai::RequestError) -> Self {
        GatewayError::BadRequest {
            param: e.param().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_shapes() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::MissingKey("x".into()), 401, "missing_api_key"),
            (GatewayError::InvalidKey("x".into()), 401, "invalid_api_key"),
            (GatewayError::bad_request("x"), 400, "invalid_request"),
            (
                GatewayError::ModelNotFound("x".into()),
                404,
                "model_not_found",
            ),
            (
                GatewayError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                GatewayError::NoUpstream("x".into()),
                503,
                "no_upstream_available",
            ),
            (
                GatewayError::UpstreamFailed("x".into()),
                502,
                "upstream_error",
            ),
            (
                GatewayError::UpstreamTimeout("x".into()),
                504,
                "upstream_timeout",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status(), status, "{e:?}");
            let v: serde_json::Value = serde_json::from_slice(&e.openai_body()).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["type"].is_string());
            let a: serde_json::Value =
                serde_json::from_slice(&e.body_for(Dialect::Anthropic)).unwrap();
            assert_eq!(a["type"], "error");
            assert_eq!(a["error"]["message"], v["error"]["message"]);
        }
        let a: serde_json::Value = serde_json::from_slice(
            &GatewayError::MissingKey("x".into()).body_for(Dialect::Anthropic),
        )
        .unwrap();
        assert_eq!(a["error"]["type"], "authentication_error");
        let a: serde_json::Value = serde_json::from_slice(
            &GatewayError::InsufficientCredit("x".into()).body_for(Dialect::Anthropic),
        )
        .unwrap();
        assert_eq!(a["error"]["type"], "billing_error");
    }
}
