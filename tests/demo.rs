//! The README's first command: `tollgate demo` on a fresh directory (no vendor account, no Redis,
//! no external database). What it prints works: the demo key on the data plane, the console's
//! sign-ins, a month of generated usage whose statement never shows a negative balance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::free_port;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// The value printed after `prefix` on a line of the demo's output.
    fn printed(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.split_once(prefix).map(|(_, v)| v.to_string()))
            .unwrap_or_else(|| panic!("`{prefix}` not printed: {:#?}", self.lines))
    }
}

fn start(dir: &std::path::Path, port: u16, admin_port: u16) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["demo", "--port", &port.to_string()])
        .args(["--admin-port", &admin_port.to_string()])
        .arg("--db")
        .arg(dir.join("demo.db"))
        .args(["--history-calls", "3000"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        let done = line.contains("export OPENAI_API_KEY=");
        lines.push(line);
        if done {
            break;
        }
    }
    Demo { child, lines }
}

async fn until_up(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_demo_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let demo = start(dir.path(), port, admin_port);
    let key = demo.printed("export OPENAI_API_KEY=").trim().to_string();
    let operator = demo
        .printed("with the token ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let console = demo.printed("Console: ");
    let console = console.split_whitespace().next().unwrap().to_string();
    let admin = format!("http://127.0.0.1:{admin_port}");
    assert_eq!(console, format!("{admin}/console"));
    let client = reqwest::Client::new();
    until_up(&client, &format!("{admin}/healthz")).await;

    // The demo key on the data plane, against the built-in mock vendor.
    let r = client
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");

    // The printed console sign-ins work.
    let admin_line = demo.printed("tenant admin:");
    let email = admin_line
        .split("email ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_string();
    let password = admin_line
        .split("password ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let r = client
        .post(format!("{admin}/admin/sessions"))
        .json(&json!({"tenant": "demo", "email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = client
        .post(format!("{admin}/admin/sessions"))
        .json(&json!({"operator_token": operator}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let page = client.get(format!("{console}/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);

    // A month of usage, paid for by money that came in before it: the statement starts with
    // the grant and its running balance never goes below zero.
    let read = |path: &str| {
        client
            .get(format!("{admin}{path}"))
            .bearer_auth(&operator)
            .send()
    };
    let ledger: Value = read("/admin/tenants/demo/ledger?limit=10000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines = ledger["data"].as_array().unwrap();
    assert!(lines.len() > 1000, "{}", lines.len());
    assert_eq!(lines[0]["entry"]["kind"], "grant", "{}", lines[0]);
    let negative: Vec<&Value> = lines
        .iter()
        .filter(|l| l["running_balance"].as_str().unwrap().starts_with('-'))
        .collect();
    assert!(negative.is_empty(), "{:?}", negative.first());
    let analytics: Value = read("/admin/tenants/demo/analytics?granularity=day")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        analytics["data"].as_array().unwrap().len() >= 28,
        "{analytics}"
    );
}
