#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Configuration reload and process upgrade while traffic flows: nothing may be dropped.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn hello() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
}

/// Background load: `workers` clients in a loop until stopped; returns (ok, failed) counters.
fn load(
    gw: &Gateway,
    workers: usize,
    keepalive: bool,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..workers {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let client = if keepalive {
            reqwest::Client::new()
        } else {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        };
        let url = gw.url("/v1/chat/completions");
        let key = gw.key.clone();
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut body = hello();
                if i % 2 == 1 {
                    body["stream"] = json!(true);
                }
                let r = client.post(&url).bearer_auth(&key).json(&body).send().await;
                let good = match r {
                    Ok(r) if r.status() == 200 => {
                        let text = r.text().await.unwrap_or_default();
                        let complete = i % 2 == 0 || text.ends_with("data: [DONE]\n\n");
                        if !complete {
                            eprintln!("LOAD: incomplete stream: {text}");
                        }
                        complete
                    }
                    Ok(r) => {
                        eprintln!(
                            "LOAD: status {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                        false
                    }
                    Err(e) => {
                        eprintln!("LOAD: error {e:?}");
                        false
                    }
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    (ok, failed, handles)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rewrite_upstream(gw: &Gateway, from: &str, to: &str) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(text.contains(from));
    std::fs::write(&gw.config_path, text.replace(from, to)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_change_reload_without_dropping_requests() {
    let a = mock().await;
    let b = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &a)], "", "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&gw, 4, true, stop.clone());
    wait_until("traffic on a", || a.stats().completed > 20).await;

    // 1. SIGHUP: point the channel at b.
    rewrite_upstream(&gw, &a.base_url(), &b.base_url());
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("traffic on b", || b.stats().completed > 20).await;
    let a_after = a.stats().chat_requests;

    // 2. A plain file save (no signal) is picked up too: back to a.
    rewrite_upstream(&gw, &b.base_url(), &a.base_url());
    wait_until("traffic back on a", || {
        a.stats().chat_requests > a_after + 20
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads; log:\n{}",
        gw.log()
    );
    assert!(ok.load(Ordering::Relaxed) > 60);
    let status = gw.admin_get("/admin/config/status").await;
    assert!(status["generation"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["last_reload_error"].is_null());
}

#[tokio::test]
async fn a_bad_file_keeps_the_running_config_and_says_why() {
    let a = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &a)], "", "").await;
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, good.replace("weight = 1", "weight = 0")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = gw.admin_get("/admin/config/status").await;
        if s["last_reload_error"].is_string() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = status["last_reload_error"]
        .as_str()
        .expect("reload error reported");
    assert!(err.contains("channels[0].upstreams[0].weight"), "{err}");
    assert_eq!(status["generation"], 1);
    // Still serving on the old configuration.
    assert_eq!(gw.chat(hello()).send().await.unwrap().status(), 200);
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "tollgate_config_reloads_total{result=\"error\"}") >= 1.0);

    // The admin endpoint reports the same failure synchronously.
    let r = gw
        .client
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Fixing the file is picked up.
    std::fs::write(&gw.config_path, good).unwrap();
    let r = gw
        .client
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Pingora's graceful upgrade, as the systemd unit drives it: a new process started with
/// `--upgrade` takes the listening sockets over from the old one, which drains and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_the_sockets_without_dropping_requests() {
    let a = mock().await;
    let mut gw = Gateway::start(&[Up::mock("a", &a)], "", "").await;
    let stop = Arc::new(AtomicBool::new(false));
    // A new connection per request: an idle keep-alive connection that the old process closes
    // as it exits can race with a client reusing it (inherent to HTTP/1.1; SDKs retry such
    // "closed before any response" errors). What must hold is that the listening socket never
    // goes away and every request that reached a process is answered.
    let (ok, failed, handles) = load(&gw, 4, false, stop.clone());
    wait_until("traffic", || a.stats().completed > 20).await;

    let log = std::fs::File::create(gw.dir.path().join("gateway-new.log")).unwrap();
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--upgrade", "--config"])
        .arg(&gw.config_path)
        .env("TOLLGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .stderr(log)
        .spawn()
        .unwrap();
    // Once the new process listens on the upgrade socket, tell the old one to hand over.
    let sock = gw.dir.path().join("upgrade.sock");
    wait_until("the upgrade socket", || sock.exists()).await;
    let status = std::process::Command::new("kill")
        .args(["-QUIT", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let old_exit = tokio::task::spawn_blocking({
        let mut child = std::mem::replace(
            &mut gw.child,
            std::process::Command::new("true").spawn().unwrap(),
        );
        move || child.wait()
    });
    let old_status = tokio::time::timeout(Duration::from_secs(20), old_exit)
        .await
        .expect("old process exits")
        .unwrap()
        .unwrap();
    assert!(
        old_status.success() || old_status.code().is_some(),
        "{old_status:?}"
    );
    let served_before = ok.load(Ordering::Relaxed);
    wait_until("traffic on the new process", || {
        ok.load(Ordering::Relaxed) > served_before + 40
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let _ = new.kill();
    let _ = new.wait();
    let new_log =
        std::fs::read_to_string(gw.dir.path().join("gateway-new.log")).unwrap_or_default();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the upgrade\nold:\n{}\nnew:\n{new_log}",
        gw.log()
    );
}
