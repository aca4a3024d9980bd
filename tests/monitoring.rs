#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The operations pack (issue 18): the Prometheus rules in conf/monitoring/ load in promtool and
//! in a real Prometheus, every query of the Grafana dashboard answers data from a real
//! Prometheus scraping a running gateway, and every series docs/operations.md documents is
//! exported from start-up (at zero), so alerts see it before the first event.

mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The series names in docs/operations.md's metrics table.
fn documented() -> Vec<String> {
    let doc = std::fs::read_to_string(repo("docs/operations.md")).unwrap();
    let mut out = Vec::new();
    for line in doc
        .lines()
        .filter(|l| l.starts_with("| `tollgate_") || l.starts_with("| `process_"))
    {
        let first = line.split('|').nth(1).unwrap_or("");
        for name in first
            .split('`')
            .filter(|s| s.starts_with("tollgate_") || s.starts_with("process_"))
        {
            out.push(name.trim().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_load_and_every_dashboard_query_answers_from_a_real_prometheus() {
    let rules = repo("conf/monitoring/prometheus-rules.yml");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool is installed (Debian's prometheus package; .ci/run installs it)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    // Every documented series is there before the first call.
    let metrics = gw.metrics().await;
    let exported: std::collections::HashSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut missing = Vec::new();
    // Its tier labels come from `[router]`, which this gateway does not configure.
    let from_config = ["tollgate_router_decisions_total"];
    for name in documented()
        .into_iter()
        .filter(|n| !from_config.contains(&n.as_str()))
    {
        let present = exported.contains(name.as_str())
            || ["_bucket", "_count", "_sum"]
                .iter()
                .any(|s| exported.contains(format!("{name}{s}").as_str()));
        if !present {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not exported at start-up: {missing:?}"
    );
    assert!(metrics.contains("tollgate_build_info{"), "no build info");
    assert_eq!(gw.chat(serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})).send().await.unwrap().status(), 200);

    // A real Prometheus scraping the gateway's admin port every second, with the rules loaded.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            rules.display(),
            gw.admin_port
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is installed");
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let client = reqwest::Client::new();
    let query = |q: String| {
        let (client, api) = (client.clone(), api.clone());
        async move {
            let encoded: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
            let r = client
                .get(format!("{api}/query?query={encoded}"))
                .send()
                .await
                .ok()?;
            r.json::<Value>().await.ok()
        }
    };
    // Wait for several scrapes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(
            "count_over_time(up{job=\"tollgate\"}[1m]) > 4 and up{job=\"tollgate\"} == 1".into(),
        )
        .await;
        if up.is_some_and(|v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the gateway: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("conf/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$__range", "5m");
            let v = query(expr.clone()).await.expect("Prometheus answers");
            assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
            if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries with no data: {empty:#?}"
    );

    // Every rule evaluates without error.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = client
            .get(format!("{api}/rules"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), 12, "{v}");
        let unhealthy: Vec<&Value> = rules
            .iter()
            .copied()
            .filter(|r| r["health"] != "ok")
            .collect();
        if unhealthy.is_empty() {
            // No alert fires for a healthy gateway.
            let firing: Vec<&Value> = rules
                .iter()
                .copied()
                .filter(|r| r["state"] == "firing")
                .collect();
            assert!(firing.is_empty(), "{firing:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not healthy: {unhealthy:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = prom.kill();
    let _ = prom.wait();
}
