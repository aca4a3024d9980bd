//! Receivers for what the gateway sends out: a minimal SMTP server (the conversation lettre
//! holds with a relay: EHLO, MAIL, RCPT, DATA) that keeps each message, and a webhook endpoint
//! that checks the `Tollgate-Signature` and can fail its first deliveries.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Default)]
pub struct Mailbox {
    /// (recipients, the message's text).
    pub messages: Mutex<Vec<(Vec<String>, String)>>,
}

/// Starts the SMTP sink: its port and mailbox.
pub async fn smtp() -> (u16, Arc<Mailbox>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mailbox = Arc::new(Mailbox::default());
    let mb = mailbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let mb = mb.clone();
            tokio::spawn(async move {
                let (r, mut w) = socket.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                let (mut to, mut data, mut in_data) = (Vec::new(), String::new(), false);
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            mb.messages
                                .lock()
                                .unwrap()
                                .push((std::mem::take(&mut to), std::mem::take(&mut data)));
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                            data.push('\n');
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "MAIL" => b"250 ok\r\n",
                        "RCPT" => {
                            to.push(line[8..].trim().trim_matches(['<', '>']).to_string());
                            b"250 ok\r\n"
                        }
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = w.write_all(answer).await;
                }
            });
        }
    });
    (port, mailbox)
}

#[derive(Default)]
pub struct Hook {
    /// The signing secret (set once the tenant's settings are saved).
    pub secret: Mutex<String>,
    /// Answer 500 to this many deliveries first.
    pub fail_first: AtomicUsize,
    /// Deliveries whose signature verified (the JSON bodies), and ones that did not.
    pub received: Mutex<Vec<serde_json::Value>>,
    pub bad: AtomicUsize,
    pub attempts: AtomicUsize,
}

async fn receive(State(h): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    h.attempts.fetch_add(1, Ordering::SeqCst);
    let sig = headers
        .get("tollgate-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let secret = h.secret.lock().unwrap().clone();
    if tollgate::payments::stripe::verify(sig, &body, &secret, tollgate::tenancy::unix_now())
        .is_err()
    {
        h.bad.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    if h.fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    h.received
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::NO_CONTENT
}

/// Starts the webhook receiver: its URL and state.
pub async fn webhook() -> (String, Arc<Hook>) {
    let hook = Arc::new(Hook::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), hook)
}
