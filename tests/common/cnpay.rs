//! Mock Alipay and WeChat Pay of our own, speaking their wire formats with real keys made by
//! `openssl` for the test: Alipay's RSA2-signed `gateway.do` (page payments, `trade.query`,
//! `trade.refund`, asynchronous notifications as signed forms) and WeChat Pay API v3 (requests
//! signed by the merchant and checked here, answers and notifications signed with a platform
//! certificate, notification resources AES-256-GCM encrypted with the APIv3 key, the
//! certificate list for rotation).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tollgate::payments::keys::{aes_gcm_seal, nonce, PrivateKey, PublicKey};
use tollgate::payments::{alipay, wechat};

pub const ALIPAY_APP_ID: &str = "2021000000000001";
pub const WECHAT_MCHID: &str = "1900000109";
pub const WECHAT_APPID: &str = "wxd678efh567hg6787";
pub const MERCHANT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
pub const API_V3_KEY: &str = "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6";

fn openssl(args: &[&str]) {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(ok.success(), "openssl {args:?}");
}

/// An RSA key pair in `dir`: (private PEM path, public PEM path).
pub fn rsa_pair(dir: &FsPath, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

/// A self-signed certificate with `serial` (hex) over a new key: (key path, certificate path).
pub fn certificate(dir: &FsPath, name: &str, serial: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.cert.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
        "-days",
        "30",
        "-subj",
        "/CN=Tenpay.com Root CA test",
        "-set_serial",
        &format!("0x{serial}"),
    ]);
    (key, cert)
}

fn read(p: &FsPath) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn now() -> i64 {
    tollgate::tenancy::unix_now()
}

// ----------------------------------------------------------------------------------- Alipay

/// A page payment's fields and whether it is paid.
pub type Trade = (HashMap<String, String>, bool);

pub struct MockAlipay {
    /// Alipay's own key (signs answers and notifications).
    pub key: PrivateKey,
    /// The merchant's public key (checks our requests).
    pub merchant: PublicKey,
    /// out_trade_no → (fields of the page payment, paid?).
    pub trades: Mutex<HashMap<String, Trade>>,
    pub refunds: Mutex<Vec<HashMap<String, String>>>,
    pub refuse_refunds: AtomicBool,
    /// Requests whose signature did not verify.
    pub bad_requests: Mutex<u32>,
}

impl MockAlipay {
    /// A signed notification form for a trade, with `overrides` applied before signing.
    pub fn notification(
        &self,
        out_trade_no: &str,
        status: &str,
        amount: &str,
    ) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = vec![
            ("notify_time".into(), alipay::beijing(now())),
            ("notify_type".into(), "trade_status_sync".into()),
            ("notify_id".into(), nonce(24)),
            ("app_id".into(), ALIPAY_APP_ID.into()),
            ("charset".into(), "utf-8".into()),
            ("version".into(), "1.0".into()),
            (
                "trade_no".into(),
                format!("2026120322001{}", &out_trade_no[2..]),
            ),
            ("out_trade_no".into(), out_trade_no.into()),
            ("trade_status".into(), status.into()),
            ("total_amount".into(), amount.into()),
            ("receipt_amount".into(), amount.into()),
            ("subject".into(), "LLM gateway credits".into()),
        ];
        self.sign_form(&mut f);
        f
    }

    /// Signs a notification form as Alipay does (leaving out `sign` and `sign_type`).
    pub fn sign_form(&self, f: &mut Vec<(String, String)>) {
        f.retain(|(k, _)| k != "sign" && k != "sign_type");
        let text = alipay::signing_text(f.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        f.push(("sign_type".into(), "RSA2".into()));
        f.push(("sign".into(), self.key.sign(text.as_bytes()).unwrap()));
    }

    fn verify_request(&self, fields: &[(String, String)]) -> bool {
        let sign = fields
            .iter()
            .find(|(k, _)| k == "sign")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let text = alipay::signing_text(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let ok = self.merchant.verify(text.as_bytes(), &sign);
        if !ok {
            *self.bad_requests.lock().unwrap() += 1;
        }
        ok
    }

    fn answer(&self, method: &str, body: Value) -> axum::response::Response {
        let name = format!("{}_response", method.replace('.', "_"));
        let text = body.to_string();
        let sign = self.key.sign(text.as_bytes()).unwrap();
        let raw = format!("{{\"{name}\":{text},\"sign\":\"{sign}\"}}");
        ([("content-type", "application/json;charset=utf-8")], raw).into_response()
    }
}

/// Alipay's config section for the gateway, keys in files.
pub fn alipay_config(gateway: &str, merchant_key: &FsPath, alipay_public: &FsPath) -> String {
    format!(
        "\n[payments.alipay]\napp_id = \"{ALIPAY_APP_ID}\"\nprivate_key_file = \"{}\"\nalipay_public_key_file = \"{}\"\ngateway = \"{gateway}\"\n",
        merchant_key.display(),
        alipay_public.display()
    )
}

async fn alipay_page(
    State(m): State<Arc<MockAlipay>>,
    Query(q): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    if !m.verify_request(&q) {
        return (StatusCode::BAD_REQUEST, "invalid-signature").into_response();
    }
    let get = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if get("method") != "alipay.trade.page.pay" {
        return (StatusCode::BAD_REQUEST, "unknown method").into_response();
    }
    let biz: Value = serde_json::from_str(&get("biz_content")).unwrap_or(Value::Null);
    let no = biz["out_trade_no"].as_str().unwrap_or("").to_string();
    let mut fields: HashMap<String, String> = q.iter().cloned().collect();
    fields.insert(
        "total_amount".into(),
        biz["total_amount"].as_str().unwrap_or("").into(),
    );
    m.trades
        .lock()
        .unwrap()
        .entry(no.clone())
        .or_insert((fields, false));
    axum::response::Html(format!(
        "<!doctype html><html><head><title>Mock Alipay</title><link rel=\"icon\" href=\"data:,\"></head><body><h1>Mock Alipay cashier</h1><p>¥{}</p>\
         <form method=\"post\" action=\"/pay/{no}\"><button id=\"alipay-pay\" type=\"submit\">Pay</button></form></body></html>",
        biz["total_amount"].as_str().unwrap_or("")
    ))
    .into_response()
}

/// `gateway.do` API calls (`trade.query`, `trade.refund`), form-encoded and signed.
async fn alipay_api(State(m): State<Arc<MockAlipay>>, body: Bytes) -> axum::response::Response {
    let q: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let method = get("method");
    if !m.verify_request(&q) {
        // Gateway errors come unsigned, as Alipay's do.
        let name = format!("{}_response", method.replace('.', "_"));
        return axum::Json(json!({name: {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature", "sub_msg": "验签出错"}})).into_response();
    }
    let biz: Value = serde_json::from_str(&get("biz_content")).unwrap_or(Value::Null);
    let no = biz["out_trade_no"].as_str().unwrap_or("").to_string();
    let trade = m.trades.lock().unwrap().get(&no).cloned();
    match method.as_str() {
        "alipay.trade.query" => match trade {
            None => m.answer(&method, json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})),
            Some((f, paid)) => m.answer(
                &method,
                json!({"code": "10000", "msg": "Success", "out_trade_no": no, "trade_no": format!("2026120322001{}", &no[2..]),
                       "trade_status": if paid { "TRADE_SUCCESS" } else { "WAIT_BUYER_PAY" }, "total_amount": f["total_amount"]}),
            ),
        },
        "alipay.trade.refund" => {
            if m.refuse_refunds.load(Ordering::SeqCst) || !trade.as_ref().is_some_and(|t| t.1) {
                return m.answer(&method, json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_STATUS_ERROR", "sub_msg": "交易状态不合法"}));
            }
            let mut r: HashMap<String, String> = HashMap::new();
            for k in ["out_trade_no", "refund_amount", "out_request_no"] {
                r.insert(k.into(), biz[k].as_str().unwrap_or("").into());
            }
            m.refunds.lock().unwrap().push(r);
            m.answer(&method, json!({"code": "10000", "msg": "Success", "out_trade_no": no, "trade_no": format!("2026120322001{}", &no[2..]),
                                     "fund_change": "Y", "refund_fee": biz["refund_amount"]}))
        }
        _ => m.answer(&method, json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.METHOD_NOT_SUPPORTED"})),
    }
}

/// The payer pays: the notification goes to the gateway, then the payer back to the shop.
async fn alipay_pay(
    State(m): State<Arc<MockAlipay>>,
    Path(no): Path<String>,
) -> axum::response::Response {
    let Some((fields, _)) = m.trades.lock().unwrap().get(&no).cloned() else {
        return (StatusCode::NOT_FOUND, "no such trade").into_response();
    };
    m.trades.lock().unwrap().get_mut(&no).unwrap().1 = true;
    let form = m.notification(&no, "TRADE_SUCCESS", &fields["total_amount"]);
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let _ = reqwest::Client::new()
        .post(&fields["notify_url"])
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await;
    (
        StatusCode::SEE_OTHER,
        [("location", fields["return_url"].clone())],
    )
        .into_response()
}

/// Starts a mock Alipay: its `gateway.do` address, its state, and the paths of the merchant's
/// private key and Alipay's public key for the gateway's config.
pub async fn start_alipay(dir: &FsPath) -> (String, Arc<MockAlipay>, PathBuf, PathBuf) {
    let (merchant_key, merchant_pub) = rsa_pair(dir, "alipay-merchant");
    let (alipay_key, alipay_pub) = rsa_pair(dir, "alipay-platform");
    let m = Arc::new(MockAlipay {
        key: PrivateKey::parse(&read(&alipay_key)).unwrap(),
        merchant: PublicKey::parse(&read(&merchant_pub)).unwrap(),
        trades: Mutex::default(),
        refunds: Mutex::default(),
        refuse_refunds: AtomicBool::new(false),
        bad_requests: Mutex::default(),
    });
    let app = axum::Router::new()
        .route(
            "/gateway.do",
            axum::routing::get(alipay_page).post(alipay_api),
        )
        .route("/pay/{no}", axum::routing::post(alipay_pay))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (
        format!("http://{addr}/gateway.do"),
        m,
        merchant_key,
        alipay_pub,
    )
}

// ------------------------------------------------------------------------------- WeChat Pay

pub struct MockWechat {
    /// The platform certificate's key and serial (signs answers and notifications).
    pub key: Mutex<(PrivateKey, String)>,
    /// Certificates to list at `/v3/certificates` (PEM, serial), for rotation.
    pub listed: Mutex<Vec<(String, String)>>,
    /// The first platform key, which signs the certificate list (a certificate the gateway
    /// already trusts vouches for the new one).
    pub list_signer: (PrivateKey, String),
    pub merchant: PublicKey,
    /// out_trade_no → (order body, paid?).
    pub trades: Mutex<HashMap<String, (Value, bool)>>,
    pub refunds: Mutex<Vec<Value>>,
    pub refuse_refunds: AtomicBool,
    pub bad_requests: Mutex<u32>,
}

impl MockWechat {
    /// The headers that sign `body`, with the current platform key.
    pub fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let (key, serial) = &*self.key.lock().unwrap();
        sign_with(key, serial, body)
    }

    fn answer(&self, status: StatusCode, body: Value) -> axum::response::Response {
        let text = body.to_string();
        let headers = self.sign(text.as_bytes());
        signed_response(status, text, headers)
    }

    /// A notification about a trade (the resource encrypted with `key`).
    pub fn notification(&self, event: &str, transaction: &Value, key: &str) -> Vec<u8> {
        let n = nonce(12);
        let ciphertext = aes_gcm_seal(
            key.as_bytes(),
            &n,
            "transaction",
            transaction.to_string().as_bytes(),
        )
        .unwrap();
        json!({
            "id": format!("EV-{}", nonce(16)),
            "create_time": "2026-12-03T10:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event,
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "associated_data": "transaction",
                "nonce": n,
            }
        })
        .to_string()
        .into_bytes()
    }

    /// The transaction WeChat Pay reports for a trade.
    pub fn transaction(&self, no: &str, total: i64, state: &str) -> Value {
        json!({
            "mchid": WECHAT_MCHID, "appid": WECHAT_APPID, "out_trade_no": no,
            "transaction_id": format!("42000012{}", &no[2..]), "trade_type": "NATIVE",
            "trade_state": state, "trade_state_desc": "支付成功", "bank_type": "OTHERS",
            "success_time": "2026-12-03T10:00:00+08:00", "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
        })
    }

    fn verify_request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> bool {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(rest) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
            *self.bad_requests.lock().unwrap() += 1;
            return false;
        };
        let field = |k: &str| {
            rest.split(',')
                .filter_map(|p| p.split_once('='))
                .find(|(n, _)| n.trim() == k)
                .map(|(_, v)| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let text = format!(
            "{method}\n{path_and_query}\n{}\n{}\n{}\n",
            field("timestamp"),
            field("nonce_str"),
            String::from_utf8_lossy(body)
        );
        let ok = field("mchid") == WECHAT_MCHID
            && field("serial_no") == MERCHANT_SERIAL
            && self.merchant.verify(text.as_bytes(), &field("signature"));
        if !ok {
            *self.bad_requests.lock().unwrap() += 1;
        }
        ok
    }
}

/// The `Wechatpay-*` headers signing `body` with `key`.
pub fn sign_with(key: &PrivateKey, serial: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = now().to_string();
    let n = nonce(32);
    let sig = key.sign(&wechat::message(&ts, &n, body)).unwrap();
    vec![
        ("Wechatpay-Timestamp", ts),
        ("Wechatpay-Nonce", n),
        ("Wechatpay-Signature", sig),
        ("Wechatpay-Serial", serial.to_string()),
    ]
}

fn signed_response(
    status: StatusCode,
    text: String,
    headers: Vec<(&'static str, String)>,
) -> axum::response::Response {
    let mut r = (status, [("content-type", "application/json")], text).into_response();
    for (k, v) in headers {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

fn wechat_unsigned() -> axum::response::Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"code": "SIGN_ERROR", "message": "签名错误"})),
    )
        .into_response()
}

async fn wechat_native(
    State(m): State<Arc<MockWechat>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if !m.verify_request("POST", "/v3/pay/transactions/native", &headers, &body) {
        return wechat_unsigned();
    }
    let order: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let no = order["out_trade_no"].as_str().unwrap_or("").to_string();
    if order["mchid"] != WECHAT_MCHID
        || order["amount"]["total"].as_i64().is_none()
        || order["notify_url"].as_str().is_none()
    {
        return m.answer(
            StatusCode::BAD_REQUEST,
            json!({"code": "PARAM_ERROR", "message": "参数错误"}),
        );
    }
    m.trades
        .lock()
        .unwrap()
        .entry(no.clone())
        .or_insert((order, false));
    m.answer(
        StatusCode::OK,
        json!({"code_url": format!("weixin://wxpay/bizpayurl?pr={no}")}),
    )
}

async fn wechat_query(
    State(m): State<Arc<MockWechat>>,
    Path(no): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let path = format!(
        "/v3/pay/transactions/out-trade-no/{no}?mchid={}",
        q.get("mchid").cloned().unwrap_or_default()
    );
    if !m.verify_request("GET", &path, &headers, b"") {
        return wechat_unsigned();
    }
    let trade = m.trades.lock().unwrap().get(&no).cloned();
    match trade {
        None => m.answer(
            StatusCode::NOT_FOUND,
            json!({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}),
        ),
        Some((o, paid)) => {
            let total = o["amount"]["total"].as_i64().unwrap_or(0);
            m.answer(
                StatusCode::OK,
                m.transaction(&no, total, if paid { "SUCCESS" } else { "NOTPAY" }),
            )
        }
    }
}

async fn wechat_refund(
    State(m): State<Arc<MockWechat>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if !m.verify_request("POST", "/v3/refund/domestic/refunds", &headers, &body) {
        return wechat_unsigned();
    }
    let r: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let no = r["out_trade_no"].as_str().unwrap_or("").to_string();
    let paid = m.trades.lock().unwrap().get(&no).is_some_and(|t| t.1);
    if m.refuse_refunds.load(Ordering::SeqCst) || !paid {
        return m.answer(
            StatusCode::FORBIDDEN,
            json!({"code": "NOT_ENOUGH", "message": "基本账户余额不足"}),
        );
    }
    m.refunds.lock().unwrap().push(r.clone());
    m.answer(
        StatusCode::OK,
        json!({"refund_id": format!("50000000{}", nonce(10)), "out_refund_no": r["out_refund_no"], "out_trade_no": no,
               "status": "SUCCESS", "amount": r["amount"]}),
    )
}

async fn wechat_certificates(
    State(m): State<Arc<MockWechat>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !m.verify_request("GET", "/v3/certificates", &headers, b"") {
        return wechat_unsigned();
    }
    let data: Vec<Value> = m
        .listed
        .lock()
        .unwrap()
        .iter()
        .map(|(pem, serial)| {
            let n = nonce(12);
            json!({"serial_no": serial, "effective_time": "2026-12-01T00:00:00+08:00", "expire_time": "2031-12-01T00:00:00+08:00",
                   "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": n, "associated_data": "certificate",
                   "ciphertext": aes_gcm_seal(API_V3_KEY.as_bytes(), &n, "certificate", pem.as_bytes()).unwrap()}})
        })
        .collect();
    let text = json!({"data": data}).to_string();
    let headers = sign_with(&m.list_signer.0, &m.list_signer.1, text.as_bytes());
    signed_response(StatusCode::OK, text, headers)
}

/// The payer scans and pays: the mock marks the trade paid and notifies the gateway; answers
/// the gateway's status.
pub async fn wechat_pay(m: &MockWechat, no: &str) -> u16 {
    let (order, _) = m
        .trades
        .lock()
        .unwrap()
        .get(no)
        .cloned()
        .expect("a placed trade");
    m.trades.lock().unwrap().get_mut(no).unwrap().1 = true;
    let total = order["amount"]["total"].as_i64().unwrap();
    let body = m.notification(
        "TRANSACTION.SUCCESS",
        &m.transaction(no, total, "SUCCESS"),
        API_V3_KEY,
    );
    deliver_wechat(m, order["notify_url"].as_str().unwrap(), &body).await
}

/// Delivers a notification body, signed now with the platform key.
pub async fn deliver_wechat(m: &MockWechat, url: &str, body: &[u8]) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in m.sign(body) {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Starts a mock WeChat Pay: its API base, its state, and the config section's files.
pub async fn start_wechat(dir: &FsPath) -> (String, Arc<MockWechat>, PathBuf, PathBuf) {
    let (merchant_key, merchant_pub) = rsa_pair(dir, "wechat-merchant");
    let serial = "3A1F2B8C9D0E4F5A6B7C8D9E0F1A2B3C4D5E6F70";
    let (platform_key, platform_cert) = certificate(dir, "wechat-platform", serial);
    let m = Arc::new(MockWechat {
        key: Mutex::new((
            PrivateKey::parse(&read(&platform_key)).unwrap(),
            serial.to_string(),
        )),
        list_signer: (
            PrivateKey::parse(&read(&platform_key)).unwrap(),
            serial.to_string(),
        ),
        listed: Mutex::new(vec![(read(&platform_cert), serial.to_string())]),
        merchant: PublicKey::parse(&read(&merchant_pub)).unwrap(),
        trades: Mutex::default(),
        refunds: Mutex::default(),
        refuse_refunds: AtomicBool::new(false),
        bad_requests: Mutex::default(),
    });
    let app = axum::Router::new()
        .route(
            "/v3/pay/transactions/native",
            axum::routing::post(wechat_native),
        )
        .route(
            "/v3/pay/transactions/out-trade-no/{no}",
            axum::routing::get(wechat_query),
        )
        .route(
            "/v3/refund/domestic/refunds",
            axum::routing::post(wechat_refund),
        )
        .route("/v3/certificates", axum::routing::get(wechat_certificates))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), m, merchant_key, platform_cert)
}

/// WeChat Pay's config section for the gateway (the APIv3 key from the environment).
pub fn wechat_config(api: &str, merchant_key: &FsPath, platform_cert: &FsPath) -> String {
    std::env::set_var("TEST_WECHAT_V3", API_V3_KEY);
    format!(
        "\n[payments.wechat]\nmchid = \"{WECHAT_MCHID}\"\nappid = \"{WECHAT_APPID}\"\nmerchant_serial = \"{MERCHANT_SERIAL}\"\nprivate_key_file = \"{}\"\napi_v3_key_env = \"TEST_WECHAT_V3\"\nplatform_cert_files = [\"{}\"]\napi_base = \"{api}\"\n",
        merchant_key.display(),
        platform_cert.display()
    )
}
