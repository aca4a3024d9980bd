#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The official OpenAI Python SDK against the gateway (installed by scripts/test).

mod common;

use common::*;

#[tokio::test]
async fn official_openai_python_sdk_works_streaming_and_not() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("OPENAI_BASE_URL", gw.url("/v1"))
        .env("OPENAI_API_KEY", &gw.key)
        .env("OPENAI_MAX_RETRIES", "0")
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "SDK script failed (is the `openai` package installed? scripts/test installs it)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
