#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The command line: config validation and key management against a running gateway.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

#[test]
fn check_config_accepts_the_shipped_example_and_points_at_bad_fields() {
    for file in ["conf/tollgate.toml", "conf/presets/domestic.toml"] {
        let out = tollgate()
            .arg("check-config")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("OK"), "{file}: {stdout}");
    }

    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[models]]\nname = \"m\"\n[[channels]]\nname = \"c\"\n[[channels.upstreams]]\nname = \"u\"\nbase_url = \"ftp://x\"\nmodels = [\"m\"]\n", "channels[0].upstreams[0].base_url"),
        ("[server]\nlisten = \"0.0.0.0:8080\"\nthreds = 2\n", "unknown field `threds`"),
        ("[[models]]\nname = \"m\"\n[[channels]]\nname = \"c\"\n[[channels.upstreams]]\nname = \"u\"\nbase_url = \"http://x\"\nmodels = [\"n\"]\n", "channels[0].upstreams[0].models[0]"),
        ("this is not toml", "TOML"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = tollgate().arg("check-config").arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.to_lowercase().contains(&want.to_lowercase()),
            "want `{want}` in: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_key_created_with_the_cli_works_on_the_running_gateway() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let out = tollgate()
        .args([
            "keys",
            "create",
            "--tenant",
            "cli-co",
            "--create-tenant",
            "--name",
            "ops",
            "--channel",
            "main",
            "--config",
        ])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["key"].as_str().unwrap().to_string();
    assert_eq!(v["record"]["tenant_name"], "cli-co");
    // Credit is added through the running gateway (it owns the balances).
    gw.admin_post(
        "/admin/tenants/cli-co/topups",
        serde_json::json!({"amount_rmb": "10"}),
    )
    .await;

    // The gateway polls the store's key generation; the key works within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 401);
        assert!(Instant::now() < deadline, "CLI key never became valid");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unknown channel is refused by the CLI with a clear message.
    let out = tollgate()
        .args([
            "keys",
            "create",
            "--tenant",
            "cli-co",
            "--channel",
            "nope",
            "--config",
        ])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("channel `nope` is not configured"));
}
