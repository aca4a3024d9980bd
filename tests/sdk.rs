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

/// The official `openai` and `anthropic` SDKs against a gateway whose upstream speaks
/// `protocol` (tests/sdk/protocols_client.py): text, streams, tool round trips, images,
/// count_tokens, models and errors.
async fn both_sdks_against(protocol: &str) {
    let m = mock().await;
    m.require_key(Some(UPSTREAM_KEY.into()));
    let base = match protocol {
        "gemini" => m.gemini_base_url(),
        _ => m.base_url(),
    };
    let extra = format!(
        "[[channels.upstreams]]\nname = \"{protocol}\"\nbase_url = \"{base}\"\nprotocol = \"{protocol}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nmodels = [\"gpt-4o-mini\", \"gpt-4o\"]\nmodel_map = {{ \"gpt-4o-mini\" = \"mock-small\" }}\n"
    );
    let gw = Gateway::start(&[], "", &extra).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/protocols_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("TOLLGATE_URL", gw.url(""))
        .env("TOLLGATE_KEY", &gw.key)
        .env("UPSTREAM", protocol)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "SDK script failed (are `openai` and `anthropic` installed? scripts/test installs them)\nstdout:\n{stdout}\nstderr:\n{stderr}\ngateway log:\n{}",
        gw.log()
    );
}

#[tokio::test]
async fn official_sdks_with_an_openai_upstream() {
    both_sdks_against("openai").await;
}

#[tokio::test]
async fn official_sdks_with_an_anthropic_upstream() {
    both_sdks_against("anthropic").await;
}

#[tokio::test]
async fn official_sdks_with_a_gemini_upstream() {
    both_sdks_against("gemini").await;
}
