//! WeChat Pay API v3: Native payment (`POST /v3/pay/transactions/native` answers a `code_url`
//! the payer scans with WeChat), notifications, order queries and refunds.
//!
//! Requests are signed by the merchant: `Authorization: WECHATPAY2-SHA256-RSA2048
//! mchid="..",nonce_str="..",signature="..",timestamp="..",serial_no=".."`, the signature being
//! RSA-SHA256 over `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`. Answers and notifications are
//! signed by WeChat Pay over `TIMESTAMP\nNONCE\nBODY\n` (headers `Wechatpay-Timestamp`, `-Nonce`,
//! `-Signature`, `-Serial`) with the platform certificate (or WeChat Pay public key) that
//! `Wechatpay-Serial` names; a notification's payload is AES-256-GCM encrypted with the
//! merchant's APIv3 key. Platform certificates are configured, and when a notification names
//! one we do not know, `GET /v3/certificates` is asked (at most once a minute): the certificates
//! it answers are decrypted with the APIv3 key and trusted only if that answer itself verifies
//! with a certificate we already trust.

use super::keys::{aes_gcm_open, nonce, Certificate, PrivateKey, PublicKey};
use super::{Checkout, Paid, ProviderError, QueryResult, RefundResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How far a signed timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Clone)]
pub struct Wechat {
    pub mchid: String,
    pub appid: String,
    /// The serial number of the merchant's API certificate.
    pub merchant_serial: String,
    pub private_key: Arc<PrivateKey>,
    /// The APIv3 key (32 bytes).
    pub api_v3_key: Arc<[u8]>,
    /// Serial (or WeChat Pay public key id) → key. Grows when certificates rotate.
    pub platform: Arc<Mutex<HashMap<String, PublicKey>>>,
    /// `https://api.mch.weixin.qq.com`.
    pub api_base: String,
    /// When the certificate list was last fetched: per unknown serial (at most once a minute
    /// each) and overall (at most once a second), so that forged serials cannot hammer it.
    fetched: Arc<Mutex<(i64, HashMap<String, i64>)>>,
}

impl std::fmt::Debug for Wechat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wechat")
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// The headers WeChat Pay signs an answer or notification with.
#[derive(Debug, Default, Clone)]
pub struct Signed {
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
    pub serial: String,
}

impl Signed {
    pub fn from_headers(h: &http::HeaderMap) -> Signed {
        let get = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Signed {
            timestamp: get("wechatpay-timestamp"),
            nonce: get("wechatpay-nonce"),
            signature: get("wechatpay-signature"),
            serial: get("wechatpay-serial"),
        }
    }
}

/// The text an answer or notification is signed over.
pub fn message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// The order number we give WeChat Pay for an order.
pub fn trade_no(order_id: i64) -> String {
    format!("tg{order_id}")
}

pub fn order_of(out_trade_no: &str) -> Option<i64> {
    out_trade_no.strip_prefix("tg")?.parse().ok()
}

/// RFC 3339 in Beijing time, as WeChat Pay writes times.
fn beijing_rfc3339(unix: i64) -> String {
    match (
        chrono::DateTime::from_timestamp(unix, 0),
        chrono::FixedOffset::east_opt(8 * 3600),
    ) {
        (Some(t), Some(tz)) => t
            .with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        _ => String::new(),
    }
}

/// What a payment notification or query says about an order.
pub fn transaction_state(t: &serde_json::Value) -> Result<QueryResult, ProviderError> {
    Ok(match t["trade_state"].as_str().unwrap_or("") {
        "SUCCESS" | "REFUND" => QueryResult::Paid(Paid {
            amount_minor: t["amount"]["total"]
                .as_i64()
                .ok_or_else(|| ProviderError::Refused("no amount in the transaction".into()))?,
            currency: t["amount"]["currency"]
                .as_str()
                .unwrap_or("CNY")
                .to_ascii_lowercase(),
            transaction: t["transaction_id"].as_str().unwrap_or("").to_string(),
        }),
        "CLOSED" | "REVOKED" | "PAYERROR" => QueryResult::Closed,
        _ => QueryResult::Unpaid,
    })
}

impl Wechat {
    pub fn new(
        mchid: String,
        appid: String,
        merchant_serial: String,
        private_key: PrivateKey,
        api_v3_key: Vec<u8>,
        platform: HashMap<String, PublicKey>,
        api_base: String,
    ) -> Wechat {
        Wechat {
            mchid,
            appid,
            merchant_serial,
            private_key: Arc::new(private_key),
            api_v3_key: api_v3_key.into(),
            platform: Arc::new(Mutex::new(platform)),
            api_base,
            fetched: Arc::new(Mutex::new((0, HashMap::new()))),
        }
    }

    fn authorization(&self, method: &str, path: &str, body: &str) -> Result<String, ProviderError> {
        let ts = crate::tenancy::unix_now().to_string();
        let nonce = nonce(32);
        let text = format!("{method}\n{path}\n{ts}\n{nonce}\n{body}\n");
        let signature = self
            .private_key
            .sign(text.as_bytes())
            .map_err(ProviderError::Config)?;
        Ok(format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{ts}\",serial_no=\"{}\"",
            self.mchid, self.merchant_serial
        ))
    }

    fn key_for(&self, serial: &str) -> Option<PublicKey> {
        let keys = self.platform.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(serial))
            .map(|(_, k)| k.clone())
    }

    /// Checks WeChat Pay's signature on an answer or notification; an unknown serial fetches
    /// the platform certificates once (rotation).
    pub async fn verify(&self, s: &Signed, body: &[u8]) -> Result<(), ProviderError> {
        let ts: i64 = s
            .timestamp
            .parse()
            .map_err(|_| ProviderError::BadSignature)?;
        if (crate::tenancy::unix_now() - ts).abs() > TOLERANCE_SECS {
            return Err(ProviderError::BadSignature);
        }
        let key = match self.key_for(&s.serial) {
            Some(k) => k,
            None => {
                self.refresh_certificates(&s.serial).await;
                self.key_for(&s.serial).ok_or(ProviderError::BadSignature)?
            }
        };
        if key.verify(&message(&s.timestamp, &s.nonce, body), &s.signature) {
            Ok(())
        } else {
            Err(ProviderError::BadSignature)
        }
    }

    /// `GET /v3/certificates`: adds the certificates it lists, if the answer verifies with a
    /// key already trusted. For one unknown serial at most once a minute, overall at most
    /// once a second.
    async fn refresh_certificates(&self, serial: &str) {
        {
            let mut f = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            let now = crate::tenancy::unix_now();
            let (last, per_serial) = &mut *f;
            if now - *last < 1 || per_serial.get(serial).is_some_and(|t| now - t < 60) {
                return;
            }
            if per_serial.len() >= 256 {
                per_serial.retain(|_, t| now - *t < 60);
            }
            if per_serial.len() >= 256 {
                return;
            }
            *last = now;
            per_serial.insert(serial.to_string(), now);
        }
        let answer = match self.send("GET", "/v3/certificates", None).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "WeChat Pay: the platform certificates could not be fetched");
                return;
            }
        };
        let (status, signed, body) = answer;
        let Some(key) = self.key_for(&signed.serial) else {
            tracing::warn!(serial = %signed.serial, "WeChat Pay: the certificate list is signed by an unknown certificate; configure the new one");
            return;
        };
        if status != 200
            || !key.verify(
                &message(&signed.timestamp, &signed.nonce, &body),
                &signed.signature,
            )
        {
            tracing::warn!(status, "WeChat Pay: the certificate list does not verify");
            return;
        }
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return;
        };
        for c in list["data"].as_array().into_iter().flatten() {
            let e = &c["encrypt_certificate"];
            let pem = aes_gcm_open(
                &self.api_v3_key,
                e["nonce"].as_str().unwrap_or(""),
                e["associated_data"].as_str().unwrap_or(""),
                e["ciphertext"].as_str().unwrap_or(""),
            );
            match pem.map(|p| Certificate::parse_pem(&String::from_utf8_lossy(&p))) {
                Ok(Ok((serial, key))) => {
                    tracing::info!(%serial, "WeChat Pay: platform certificate added");
                    self.platform
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(serial, key);
                }
                _ => tracing::warn!("WeChat Pay: a listed certificate does not decrypt"),
            }
        }
    }

    /// Sends a signed request; answers the status, the signature headers and the body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Signed, bytes::Bytes), ProviderError> {
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = self.authorization(method, path, &text)?;
        let url = format!("{}{path}", self.api_base.trim_end_matches('/'));
        let headers = [
            ("Authorization", auth),
            ("Accept", "application/json".to_string()),
            ("User-Agent", "tollgate".to_string()),
        ];
        let answer = super::request(
            method,
            &url,
            &headers,
            body.map(|_| ("application/json", bytes::Bytes::from(text))),
        )
        .await
        .map_err(ProviderError::Unreachable)?;
        Ok((
            answer.status,
            Signed::from_headers(&answer.headers),
            answer.body,
        ))
    }

    /// A signed request whose answer must carry WeChat Pay's valid signature.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ProviderError> {
        let (status, signed, raw) = self.send(method, path, body).await?;
        let value: serde_json::Value = if raw.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&raw).map_err(|e| {
                ProviderError::Refused(format!("WeChat Pay answered {status} with no JSON: {e}"))
            })?
        };
        if !(200..300).contains(&status) {
            // Errors are signed too, but nothing is granted from them.
            return Err(ProviderError::Refused(format!(
                "WeChat Pay refused ({status}): {} {}",
                value["code"].as_str().unwrap_or(""),
                value["message"].as_str().unwrap_or("")
            )));
        }
        self.verify(&signed, &raw).await?;
        Ok((status, value))
    }

    /// Places a Native order: its `code_url` is the payment link (shown as a QR code).
    pub async fn checkout(
        &self,
        order_id: i64,
        amount_minor: i64,
        expires_at: i64,
        notify_url: &str,
    ) -> Result<Checkout, ProviderError> {
        let body = serde_json::json!({
            "appid": self.appid,
            "mchid": self.mchid,
            "description": "LLM gateway credits",
            "out_trade_no": trade_no(order_id),
            "time_expire": beijing_rfc3339(expires_at),
            "notify_url": notify_url,
            "amount": { "total": amount_minor, "currency": "CNY" },
        });
        let (_, v) = self
            .call("POST", "/v3/pay/transactions/native", Some(&body))
            .await?;
        let code_url = v["code_url"]
            .as_str()
            .ok_or_else(|| ProviderError::Refused("WeChat Pay answered no code_url".into()))?;
        Ok(Checkout {
            provider_ref: trade_no(order_id),
            pay_url: code_url.to_string(),
        })
    }

    /// Checks a notification (signature, then decryption) and answers its event type and the
    /// decrypted resource.
    pub async fn notification(
        &self,
        signed: &Signed,
        body: &[u8],
    ) -> Result<(String, serde_json::Value), ProviderError> {
        self.verify(signed, body).await?;
        let n: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ProviderError::Refused(format!("not JSON: {e}")))?;
        let r = &n["resource"];
        if r["algorithm"].as_str() != Some("AEAD_AES_256_GCM") {
            return Err(ProviderError::Refused("unknown resource algorithm".into()));
        }
        let plain = aes_gcm_open(
            &self.api_v3_key,
            r["nonce"].as_str().unwrap_or(""),
            r["associated_data"].as_str().unwrap_or(""),
            r["ciphertext"].as_str().unwrap_or(""),
        )
        .map_err(|_| ProviderError::BadSignature)?;
        let resource: serde_json::Value = serde_json::from_slice(&plain)
            .map_err(|e| ProviderError::Refused(format!("the resource is not JSON: {e}")))?;
        if resource["mchid"].as_str().is_some_and(|m| m != self.mchid) {
            return Err(ProviderError::Mismatch(
                "the notification is for another merchant".into(),
            ));
        }
        Ok((n["event_type"].as_str().unwrap_or("").to_string(), resource))
    }

    /// Asks WeChat Pay about an order.
    pub async fn query(&self, order_id: i64) -> Result<QueryResult, ProviderError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            trade_no(order_id),
            self.mchid
        );
        match self.call("GET", &path, None).await {
            Ok((_, v)) => {
                if v["out_trade_no"].as_str() != Some(trade_no(order_id).as_str()) {
                    return Err(ProviderError::Mismatch(
                        "WeChat Pay answered about another order".into(),
                    ));
                }
                transaction_state(&v)
            }
            Err(ProviderError::Refused(m)) if m.contains("ORDER_NOT_EXIST") => {
                Ok(QueryResult::Unpaid)
            }
            Err(e) => Err(e),
        }
    }

    /// Refunds part or all of an order (idempotent on `refund_no`).
    pub async fn refund(
        &self,
        order_id: i64,
        refund_no: &str,
        amount_minor: i64,
        total_minor: i64,
        reason: &str,
    ) -> Result<RefundResult, ProviderError> {
        let body = serde_json::json!({
            "out_trade_no": trade_no(order_id),
            "out_refund_no": refund_no,
            "reason": reason,
            "amount": { "refund": amount_minor, "total": total_minor, "currency": "CNY" },
        });
        let (_, v) = self
            .call("POST", "/v3/refund/domestic/refunds", Some(&body))
            .await?;
        match v["status"].as_str().unwrap_or("") {
            "SUCCESS" | "PROCESSING" => Ok(RefundResult {
                done: v["status"].as_str() == Some("SUCCESS"),
                provider_ref: v["refund_id"].as_str().unwrap_or("").to_string(),
            }),
            other => Err(ProviderError::Refused(format!(
                "WeChat Pay did not take the refund: {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_beijing_rfc3339_and_messages_end_in_newlines() {
        assert_eq!(beijing_rfc3339(0), "1970-01-01T08:00:00+08:00");
        assert_eq!(message("1", "n", b"{}"), b"1\nn\n{}\n");
        assert_eq!(order_of(&trade_no(7)), Some(7));
    }
}
