//! Alipay (open platform, `gateway.do`): computer-website payment (`alipay.trade.page.pay`: the
//! payer is sent to a signed URL of Alipay's), asynchronous notifications, `alipay.trade.query`
//! and `alipay.trade.refund`.
//!
//! Signing (RSA2): every parameter but `sign` with a non-empty value, sorted by name, joined as
//! `name=value&...` (values not URL-encoded), signed RSA-SHA256 with the merchant's private key,
//! base64. A notification is checked the same way with Alipay's public key, leaving out `sign`
//! and `sign_type`. An API answer is signed over the exact text of its `*_response` object.

use super::keys::{PrivateKey, PublicKey};
use super::{Checkout, Paid, ProviderError, QueryResult, RefundResult};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Alipay {
    pub app_id: String,
    pub private_key: std::sync::Arc<PrivateKey>,
    pub alipay_public_key: PublicKey,
    /// `https://openapi.alipay.com/gateway.do` (sandbox: `https://openapi-sandbox.dl.alipaydev.com/gateway.do`).
    pub gateway: String,
}

/// The text a set of parameters is signed over.
pub fn signing_text<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let sorted: BTreeMap<&str, &str> = params
        .into_iter()
        .filter(|(k, v)| !v.is_empty() && *k != "sign")
        .collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Alipay's timestamps: Beijing time, `yyyy-MM-dd HH:mm:ss`.
pub fn beijing(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix + 8 * 3600, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// `12345` fen as Alipay writes amounts: `123.45`.
pub fn yuan_text(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Alipay's amount text in fen (`"88.8"` → 8880); `None` when it is not an amount.
pub fn fen_of(text: &str) -> Option<i64> {
    let d: rust_decimal::Decimal = text.trim().parse().ok()?;
    let fen = d * rust_decimal::Decimal::from(100);
    if fen.fract() != rust_decimal::Decimal::ZERO {
        return None;
    }
    rust_decimal::prelude::ToPrimitive::to_i64(&fen)
}

/// The order number we give Alipay for an order.
pub fn trade_no(order_id: i64) -> String {
    format!("tg{order_id}")
}

/// The order an `out_trade_no` of ours names.
pub fn order_of(out_trade_no: &str) -> Option<i64> {
    out_trade_no.strip_prefix("tg")?.parse().ok()
}

impl Alipay {
    fn signed(
        &self,
        method: &str,
        biz: serde_json::Value,
        extra: &[(&str, String)],
    ) -> Result<Vec<(String, String)>, ProviderError> {
        let mut params: Vec<(String, String)> = vec![
            ("app_id".into(), self.app_id.clone()),
            ("method".into(), method.into()),
            ("format".into(), "JSON".into()),
            ("charset".into(), "utf-8".into()),
            ("sign_type".into(), "RSA2".into()),
            ("timestamp".into(), beijing(crate::tenancy::unix_now())),
            ("version".into(), "1.0".into()),
            ("biz_content".into(), biz.to_string()),
        ];
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let text = signing_text(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let sign = self
            .private_key
            .sign(text.as_bytes())
            .map_err(ProviderError::Config)?;
        params.push(("sign".into(), sign));
        Ok(params)
    }

    /// The signed page-payment URL of an order (nothing is sent to Alipay until the payer
    /// opens it).
    pub fn checkout(
        &self,
        order_id: i64,
        amount_minor: i64,
        expires_at: i64,
        notify_url: &str,
        return_url: &str,
    ) -> Result<Checkout, ProviderError> {
        let out_trade_no = trade_no(order_id);
        let biz = serde_json::json!({
            "out_trade_no": out_trade_no,
            "total_amount": yuan_text(amount_minor),
            "subject": "LLM gateway credits",
            "product_code": "FAST_INSTANT_TRADE_PAY",
            "time_expire": beijing(expires_at),
        });
        let params = self.signed(
            "alipay.trade.page.pay",
            biz,
            &[
                ("notify_url", notify_url.into()),
                ("return_url", return_url.into()),
            ],
        )?;
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        Ok(Checkout {
            provider_ref: out_trade_no,
            pay_url: format!("{}?{query}", self.gateway),
        })
    }

    /// Checks an asynchronous notification (its form fields, decoded) and says what it
    /// reports. Errors are refusals: a bad signature, another app's notification.
    pub fn notification(&self, fields: &[(String, String)]) -> Result<Notice, ProviderError> {
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let sign = get("sign").ok_or(ProviderError::BadSignature)?;
        let text = signing_text(
            fields
                .iter()
                .filter(|(k, _)| k != "sign_type")
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if !self.alipay_public_key.verify(text.as_bytes(), sign) {
            return Err(ProviderError::BadSignature);
        }
        if get("app_id") != Some(self.app_id.as_str()) {
            return Err(ProviderError::Mismatch(
                "the notification is for another app".into(),
            ));
        }
        let order = get("out_trade_no")
            .and_then(order_of)
            .ok_or(ProviderError::UnknownOrder)?;
        let status = get("trade_status").unwrap_or("");
        Ok(Notice {
            order,
            state: match status {
                "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                    let amount = get("total_amount").and_then(fen_of).ok_or_else(|| {
                        ProviderError::Mismatch("the notification has no amount".into())
                    })?;
                    NoticeState::Paid(Paid {
                        amount_minor: amount,
                        currency: "cny".into(),
                        transaction: get("trade_no").unwrap_or("").to_string(),
                    })
                }
                "TRADE_CLOSED" => NoticeState::Closed,
                _ => NoticeState::Other,
            },
        })
    }

    /// Calls an API method and answers its verified `*_response` object.
    async fn call(
        &self,
        method: &str,
        biz: serde_json::Value,
    ) -> Result<serde_json::Value, ProviderError> {
        let params = self.signed(method, biz, &[])?;
        let form: Vec<(&str, String)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let answer = super::post_form(&self.gateway, &[], &form)
            .await
            .map_err(ProviderError::Unreachable)?;
        // The envelope's values as their exact text: the signature covers the response
        // object's bytes as sent.
        let fields: BTreeMap<String, &RawValue> =
            serde_json::from_slice(&answer.body).map_err(|e| {
                ProviderError::Refused(format!(
                    "Alipay answered {} with no JSON: {e}",
                    answer.status
                ))
            })?;
        let name = format!("{}_response", method.replace('.', "_"));
        let body = fields
            .get(&name)
            .ok_or_else(|| ProviderError::Refused(format!("Alipay's answer has no `{name}`")))?;
        let sign: Option<String> = fields
            .get("sign")
            .and_then(|s| serde_json::from_str(s.get()).ok());
        let value: serde_json::Value =
            serde_json::from_str(body.get()).map_err(|e| ProviderError::Refused(e.to_string()))?;
        // A gateway error (bad app id or signature of ours) comes unsigned; a business answer
        // must be signed, or it is not trusted.
        match sign {
            Some(sign) if self.alipay_public_key.verify(body.get().as_bytes(), &sign) => Ok(value),
            Some(_) => Err(ProviderError::BadSignature),
            None => Err(ProviderError::Refused(format!(
                "Alipay refused: {} {}",
                value["code"].as_str().unwrap_or(""),
                value["sub_msg"]
                    .as_str()
                    .or(value["msg"].as_str())
                    .unwrap_or("")
            ))),
        }
    }

    /// Asks Alipay about an order (`alipay.trade.query`).
    pub async fn query(&self, order_id: i64) -> Result<QueryResult, ProviderError> {
        let v = self
            .call(
                "alipay.trade.query",
                serde_json::json!({ "out_trade_no": trade_no(order_id) }),
            )
            .await?;
        if v["code"].as_str() != Some("10000") {
            return if v["sub_code"].as_str() == Some("ACQ.TRADE_NOT_EXIST") {
                Ok(QueryResult::Unpaid)
            } else {
                Err(ProviderError::Refused(format!(
                    "Alipay: {} {}",
                    v["sub_code"].as_str().unwrap_or(""),
                    v["sub_msg"].as_str().unwrap_or("")
                )))
            };
        }
        if v["out_trade_no"].as_str() != Some(trade_no(order_id).as_str()) {
            return Err(ProviderError::Mismatch(
                "Alipay answered about another order".into(),
            ));
        }
        Ok(match v["trade_status"].as_str().unwrap_or("") {
            "TRADE_SUCCESS" | "TRADE_FINISHED" => QueryResult::Paid(Paid {
                amount_minor: v["total_amount"]
                    .as_str()
                    .and_then(fen_of)
                    .ok_or_else(|| ProviderError::Refused("no amount in the answer".into()))?,
                currency: "cny".into(),
                transaction: v["trade_no"].as_str().unwrap_or("").to_string(),
            }),
            "TRADE_CLOSED" => QueryResult::Closed,
            _ => QueryResult::Unpaid,
        })
    }

    /// Refunds part or all of an order (`alipay.trade.refund`, idempotent on `refund_no`).
    pub async fn refund(
        &self,
        order_id: i64,
        refund_no: &str,
        amount_minor: i64,
        reason: &str,
    ) -> Result<RefundResult, ProviderError> {
        let v = self
            .call(
                "alipay.trade.refund",
                serde_json::json!({
                    "out_trade_no": trade_no(order_id),
                    "refund_amount": yuan_text(amount_minor),
                    "out_request_no": refund_no,
                    "refund_reason": reason,
                }),
            )
            .await?;
        if v["code"].as_str() != Some("10000") {
            return Err(ProviderError::Refused(format!(
                "Alipay refused the refund: {} {}",
                v["sub_code"].as_str().unwrap_or(""),
                v["sub_msg"].as_str().unwrap_or("")
            )));
        }
        Ok(RefundResult {
            done: v["fund_change"].as_str() == Some("Y"),
            provider_ref: v["trade_no"].as_str().unwrap_or("").to_string(),
        })
    }
}

/// What a notification reports about an order.
#[derive(Debug)]
pub struct Notice {
    pub order: i64,
    pub state: NoticeState,
}

#[derive(Debug)]
pub enum NoticeState {
    Paid(Paid),
    Closed,
    /// Waiting for the payer, a refund, or anything else that changes nothing here.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_text_sorts_and_skips_empty_values_and_the_signature() {
        let text = signing_text([
            ("timestamp", "2026-12-03 10:00:00"),
            ("app_id", "2021"),
            ("sign", "xyz"),
            ("notify_url", ""),
            ("biz_content", "{\"a\":\"b c\"}"),
        ]);
        assert_eq!(
            text,
            "app_id=2021&biz_content={\"a\":\"b c\"}&timestamp=2026-12-03 10:00:00"
        );
    }

    #[test]
    fn amounts_and_times_are_written_as_alipay_writes_them() {
        assert_eq!(yuan_text(8880), "88.80");
        assert_eq!(yuan_text(5), "0.05");
        assert_eq!(fen_of("88.8"), Some(8880));
        assert_eq!(fen_of("0.001"), None);
        assert_eq!(fen_of("x"), None);
        assert_eq!(beijing(0), "1970-01-01 08:00:00");
        assert_eq!(order_of(&trade_no(42)), Some(42));
        assert_eq!(order_of("42"), None);
    }
}
