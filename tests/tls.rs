#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! HTTPS upstreams: certificate verification against a configured CA, and pooled reuse of TLS
//! connections. The vendor side is the mock behind a small TLS-terminating forwarder.

mod common;

use common::*;
use std::process::{Command, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn https_upstream_verified_with_the_configured_ca_and_connections_reused() {
    let m = mock().await;
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let (ca, ca_key, cert, key) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let (csr, ext) = (dir.join("leaf.csr"), dir.join("ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    // A private CA and a leaf certificate for 127.0.0.1 signed by it.
    let steps: [Vec<std::ffi::OsString>; 3] = [
        vec![
            "req".into(),
            "-x509".into(),
            "-newkey".into(),
            "rsa:2048".into(),
            "-nodes".into(),
            "-days".into(),
            "1".into(),
            "-subj".into(),
            "/CN=tollgate-test-ca".into(),
            "-keyout".into(),
            ca_key.clone().into(),
            "-out".into(),
            ca.clone().into(),
        ],
        vec![
            "req".into(),
            "-newkey".into(),
            "rsa:2048".into(),
            "-nodes".into(),
            "-subj".into(),
            "/CN=127.0.0.1".into(),
            "-keyout".into(),
            key.clone().into(),
            "-out".into(),
            csr.clone().into(),
        ],
        vec![
            "x509".into(),
            "-req".into(),
            "-in".into(),
            csr.into(),
            "-CA".into(),
            ca.clone().into(),
            "-CAkey".into(),
            ca_key.into(),
            "-CAcreateserial".into(),
            "-days".into(),
            "1".into(),
            "-extfile".into(),
            ext.into(),
            "-out".into(),
            cert.clone().into(),
        ],
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(&args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(ok.success(), "openssl {args:?}");
    }

    let mut fwd = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tls/forwarder.py"
        ))
        .arg(&cert)
        .arg(&key)
        .arg(m.addr().port().to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(fwd.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap().unwrap();
    let port: u16 = ready.strip_prefix("READY ").unwrap().parse().unwrap();

    let up = Up {
        name: "tls",
        base_url: format!("https://127.0.0.1:{port}/v1"),
        weight: 1,
    };
    let ca_line = format!("ca_file = \"{}\"\n", ca.display());
    let gw = Gateway::start_with_server_extra(&[up], "", "", &ca_line).await;
    for i in 0..10 {
        let mut req = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        if i % 2 == 0 {
            req["stream"] = serde_json::json!(true);
        }
        let resp = gw.chat(req).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", gw.log());
        let _ = resp.bytes().await.unwrap();
    }
    assert_eq!(m.stats().completed, 10);
    // Every TLS connection the forwarder accepted became one mock connection.
    assert!(
        m.stats().connections <= 2,
        "{} TLS connections for 10 sequential calls",
        m.stats().connections
    );

    // Without the CA the same upstream fails verification: the gateway must not connect.
    let gw2 = Gateway::start(
        &[Up {
            name: "tls",
            base_url: format!("https://127.0.0.1:{port}/v1"),
            weight: 1,
        }],
        "",
        "",
    )
    .await;
    let resp = gw2.chat(serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(m.stats().completed, 10);
}
