#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The management console in a real browser: Chromium (Debian's package) driven by Playwright
//! (PyPI) through tests/console/browser.py, against a real `tollgate run` with the mock vendor
//! and a local SMTP sink (aiosmtpd). Screenshots of every page in both languages go to
//! docs/console/. `scripts/test` installs what this needs.

mod common;

use common::*;
use std::process::{Command, Stdio};

struct Sink(std::process::Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let chromium = chromium();
    let mail_dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let mut sink = Command::new("python3")
        .arg("tests/console/smtp_sink.py")
        .arg(smtp_port.to_string())
        .arg(mail_dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd (scripts/test installs it)");
    {
        use std::io::BufRead;
        let mut line = String::new();
        let out = sink.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
    }
    let _sink = Sink(sink);
    let m = mock().await;
    let smtp = format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nfrom = \"tollgate <gateway@test.example>\"\ntls = \"none\"\n"
    );
    // Online payment through our mock Stripe (tests/common/stripe.rs).
    let (stripe_api, stripe_mock) = common::stripe::start().await;
    let extra = format!("{smtp}{}", common::stripe::config(&stripe_api));
    let gw = Gateway::spawn(&[Up::mock("a", &m)], "", &extra, "", None).await;
    *stripe_mock.webhook.lock().unwrap() = Some(gw.admin_url("/payments/stripe/webhook"));
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console");
    std::fs::create_dir_all(shots).unwrap();
    let out = tokio::task::spawn_blocking({
        let console = format!("http://127.0.0.1:{}", gw.admin_port);
        let gateway = format!("http://127.0.0.1:{}", gw.port);
        let mail = mail_dir.path().display().to_string();
        move || {
            Command::new("python3")
                .arg("tests/console/browser.py")
                .env("CONSOLE", console)
                .env("GATEWAY", gateway)
                .env("OPERATOR_TOKEN", ADMIN_TOKEN)
                .env("MAIL_DIR", mail)
                .env("SHOTS", shots)
                .env("CHROMIUM", chromium)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\n--- gateway log (tail) ---\n{}",
        gw.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stdout.contains("console browser test passed"), "{stdout}");
}
