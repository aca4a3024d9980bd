//! Test harness: real processes on free ports. A mock vendor (our own, speaking OpenAI's wire
//! format) runs in the test; the gateway is the real `tollgate` binary with a generated config
//! and a fresh SQLite file; keys are created through the real admin API.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cnpay;
pub mod fleet;
pub mod sinks;
pub mod stripe;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate::mock::{MockHandle, MockVendor};

pub const ADMIN_TOKEN: &str = "test-operator-token";
/// The credential the gateway must present to upstreams (never the caller's key).
pub const UPSTREAM_KEY: &str = "upstream-secret";

/// Credits in the admin API are decimal strings ("12.5"); tests compare them exactly in
/// nano-credits (10^-9 credit), the ledger's own unit.
pub trait Credits {
    /// The value in nano-credits; panics unless it is a decimal string with at most 9 places.
    fn nano(&self) -> i64;
    /// `None` when the field is absent or null.
    fn nano_opt(&self) -> Option<i64>;
}

impl Credits for serde_json::Value {
    fn nano(&self) -> i64 {
        let text = self
            .as_str()
            .unwrap_or_else(|| panic!("credits must be a decimal string, got {self}"));
        let d: rust_decimal::Decimal = text
            .parse()
            .unwrap_or_else(|e| panic!("credits {text:?}: {e}"));
        let n = d * rust_decimal::Decimal::from(1_000_000_000i64);
        assert!(
            n.fract().is_zero(),
            "credits {text:?} finer than a nano-credit"
        );
        i64::try_from(n.trunc().mantissa() / 10i128.pow(n.trunc().scale())).unwrap()
    }
    fn nano_opt(&self) -> Option<i64> {
        (!self.is_null()).then(|| self.nano())
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn mock() -> MockHandle {
    MockVendor::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// One upstream line for a config: `name`, mock address, weight.
pub struct Up<'a> {
    pub name: &'a str,
    pub base_url: String,
    pub weight: u32,
}

impl<'a> Up<'a> {
    pub fn mock(name: &'a str, m: &MockHandle) -> Self {
        Up {
            name,
            base_url: m.base_url(),
            weight: 1,
        }
    }
}

/// A config with models `gpt-4o-mini` (-> upstream name `mock-small`), `gpt-4o` and an
/// embedding model, and one channel `main` over `ups`. `extra` is appended verbatim.
#[allow(clippy::too_many_arguments)]
pub fn config_text(
    port: u16,
    admin: u16,
    db: &str,
    dir: &str,
    ups: &[Up<'_>],
    channel_extra: &str,
    extra: &str,
    server_extra: &str,
) -> String {
    // A `postgres://` db puts the record in PostgreSQL (local files stay in the directory).
    let mut store = if db.starts_with("postgres://") {
        format!("url = \"{db}\"\nsqlite_path = \"{dir}/tollgate.db\"")
    } else {
        format!("sqlite_path = \"{db}\"")
    };
    // Lines of `server_extra` starting with `store.` go to `[store]`. Tests write records with
    // old timestamps straight into the store, so raw records are kept unless a test asks for
    // retention (`store.raw_usage_days = N`).
    let (store_lines, server_lines): (Vec<&str>, Vec<&str>) = server_extra
        .lines()
        .partition(|l| l.trim_start().starts_with("store."));
    let server_extra = server_lines.join("\n");
    if store_lines.is_empty() {
        store.push_str("\nraw_usage_days = 0");
    }
    for l in store_lines {
        store.push('\n');
        store.push_str(l.trim_start().trim_start_matches("store."));
    }
    let grace = if server_extra.contains("graceful_shutdown_seconds") {
        ""
    } else {
        "graceful_shutdown_seconds = 2\n"
    };
    let mut s = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
threads = 2
max_body_bytes = 40000000
log_format = "json"
{grace}upgrade_sock = "{dir}/upgrade.sock"
pid_file = "{dir}/tollgate.pid"
{server_extra}

[admin]
listen = "127.0.0.1:{admin}"
token_env = "TOLLGATE_TEST_ADMIN_TOKEN"

[store]
{store}

[[models]]
name = "gpt-4o-mini"
vendor = "openai"
max_output_tokens = 1000
price = {{ currency = "USD", input = "0.15", cached_input = "0.075", output = "0.60" }}

[[models]]
name = "gpt-4o"
vendor = "openai"
price = {{ currency = "USD", input = "2.50", cached_input = "1.25", output = "10.00" }}

[[models]]
name = "text-embedding-3-small"
vendor = "openai"
kind = "embedding"
price = {{ currency = "USD", input = "0.02", output = "0" }}

[[channels]]
name = "main"
multiplier = "7.2"
{channel_extra}
"#
    );
    for u in ups {
        s.push_str(&format!(
            "[[channels.upstreams]]\nname = \"{}\"\nbase_url = \"{}\"\nweight = {}\napi_key_env = \"TEST_UPSTREAM_KEY\"\nmodels = [\"gpt-4o-mini\", \"gpt-4o\", \"text-embedding-3-small\"]\nmodel_map = {{ \"gpt-4o-mini\" = \"mock-small\" }}\n",
            u.name, u.base_url, u.weight
        ));
    }
    s.push_str(extra);
    s
}

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub db: String,
    pub key: String,
    pub tenant_id: i64,
    pub client: reqwest::Client,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// Start with upstreams `ups` (and extra channel / config text), create tenant + key.
    pub async fn start(ups: &[Up<'_>], channel_extra: &str, extra: &str) -> Gateway {
        Gateway::start_with_server_extra(ups, channel_extra, extra, "").await
    }

    /// As `start`, with extra lines in the `[server]` section.
    pub async fn start_with_server_extra(
        ups: &[Up<'_>],
        channel_extra: &str,
        extra: &str,
        server_extra: &str,
    ) -> Gateway {
        let mut gw = Gateway::spawn(ups, channel_extra, extra, server_extra, None).await;
        let t: serde_json::Value = gw
            .admin_post("/admin/tenants", serde_json::json!({"name": "acme"}))
            .await;
        gw.tenant_id = t["id"].as_i64().unwrap();
        gw.admin_post(
            "/admin/tenants/acme/topups",
            serde_json::json!({"amount_rmb": "1000"}),
        )
        .await;
        gw.key = gw
            .create_key(
                serde_json::json!({"tenant": "acme", "name": "test", "default_channel": "main"}),
            )
            .await;
        gw
    }

    /// Start a gateway process without creating anything in its store. `db`: share another
    /// gateway's SQLite file (cluster tests), else a fresh one in the gateway's directory.
    pub async fn spawn(
        ups: &[Up<'_>],
        channel_extra: &str,
        extra: &str,
        server_extra: &str,
        db: Option<&str>,
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let db = db
            .map(str::to_string)
            .unwrap_or_else(|| dir.path().join("tollgate.db").display().to_string());
        let text = config_text(
            port,
            admin_port,
            &db,
            &dir.path().display().to_string(),
            ups,
            channel_extra,
            extra,
            server_extra,
        );
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("TOLLGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .build()
            .unwrap();
        let mut gw = Gateway {
            child,
            port,
            admin_port,
            dir,
            config_path,
            db,
            key: String::new(),
            tenant_id: 0,
            client,
        };
        gw.wait_ready().await;
        gw
    }

    /// SIGKILL the gateway and start it again on the same config and database.
    pub async fn kill_and_restart(&mut self) {
        self.kill_now();
        self.start_again().await;
    }

    /// SIGKILL the gateway (`start_again` starts it on the same config and database).
    pub fn kill_now(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Start a killed gateway again on the same config and database; waits until it is ready.
    pub async fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("TOLLGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wait_ready().await;
    }

    /// The tenant's balance. In cluster mode a node that cannot read the credit bank answers
    /// 503 (just after a failover or a restart): this asks again for up to 20 s.
    pub async fn balance(&self, tenant: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self
                .client
                .get(self.admin_url(&format!("/admin/tenants/{tenant}/balance")))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if status != 503 || Instant::now() > deadline {
                assert_eq!(status, 200, "balance of {tenant}");
                return r.json().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited early with {status}; log:\n{}", self.log());
            }
            let ready = self
                .client
                .get(self.admin_url("/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let listening = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if ready && listening {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub async fn admin_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .client
            .post(self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let r = self
            .client
            .get(self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn create_key(&self, body: serde_json::Value) -> String {
        let v = self.admin_post("/admin/keys", body).await;
        v["key"].as_str().unwrap().to_string()
    }

    /// A chat completion with another key than the gateway's own.
    pub fn chat_with_key(&self, key: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
    }

    pub fn chat(&self, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(&self.key)
            .json(&body)
    }

    /// Usage events stored so far (waits for the batched writer to catch up to `n`).
    pub async fn usage_events(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.admin_get("/admin/usage?limit=10000").await;
            let events = v["data"].as_array().cloned().unwrap_or_default();
            if events.len() >= n || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collect a streamed response: the raw text and the parsed `data:` JSON events.
pub async fn read_sse(resp: reqwest::Response) -> (String, Vec<serde_json::Value>) {
    let text = resp.text().await.unwrap_or_default();
    let events = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    (text, events)
}

pub fn metric_value(metrics: &str, name_and_labels_prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name_and_labels_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A redis-server of the test's own on a free port (append-only file fsynced on every write, so
/// a restart keeps its data); killed on drop.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With more redis-server arguments (e.g. `--replicaof host port`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL and start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three primaries, each with one replica (a silent node is failed over after
/// 1 s): Debian's redis-server, six processes on free ports (cluster bus ports too).
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..6)
            .map(|_| {
                let bus = free_port().to_string();
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install -y redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        // Ready when every node sees the cluster whole and every replica is in sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &c.nodes {
            loop {
                let ask = |what: &str, arg: &str| -> String {
                    redis::Client::open(n.url())
                        .and_then(|cl| cl.get_connection())
                        .and_then(|mut cn| redis::cmd(what).arg(arg).query(&mut cn))
                        .unwrap_or_default()
                };
                let info = ask("CLUSTER", "INFO");
                let repl = ask("INFO", "replication");
                if info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster never formed: {info}\n{repl}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }

    /// Three of the nodes: the client learns the rest from them.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The index of the node that is now the primary of `key`'s slot, asked of a live node.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        for n in &self.nodes {
            let Ok(mut c) = redis::Client::open(n.url()).and_then(|c| c.get_connection()) else {
                continue;
            };
            let Ok(slot) = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query::<i64>(&mut c)
            else {
                continue;
            };
            // CLUSTER SLOTS: [[start, end, [ip, port, id, ...], replicas...], ...]
            let Ok(redis::Value::Array(ranges)) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<redis::Value>(&mut c)
            else {
                continue;
            };
            let int = |v: Option<&redis::Value>| match v {
                Some(redis::Value::Int(i)) => Some(*i),
                _ => None,
            };
            for r in &ranges {
                let redis::Value::Array(r) = r else { continue };
                let (Some(a), Some(b)) = (int(r.first()), int(r.get(1))) else {
                    continue;
                };
                if !(a..=b).contains(&slot) {
                    continue;
                }
                let Some(redis::Value::Array(primary)) = r.get(2) else {
                    return None;
                };
                let port = int(primary.get(1))?;
                return self.nodes.iter().position(|n| i64::from(n.port) == port);
            }
            return None;
        }
        None
    }
}

/// A primary, a replica and three Sentinels watching them as master `tg` (quorum 2, a master
/// silent for 1 s is down): Debian's redis-server, started by the test on free ports.
pub struct RedisSentinels {
    pub primary: Redis,
    pub replica: Redis,
    sentinels: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    pub fn start() -> RedisSentinels {
        // No 5 s wait before the first full sync (Redis's default), so the replica is in sync
        // when the test starts.
        let primary = Redis::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::Client::open(replica.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never synced: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor tg 127.0.0.1 {} 2\nsentinel down-after-milliseconds tg 1000\nsentinel failover-timeout tg 10000\n",
                    primary.port
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install -y redis-server)");
            sentinels.push((port, child));
        }
        let s = RedisSentinels {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        // Ready when every Sentinel knows the replica (it learns it from the primary).
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, _) in &s.sentinels {
            loop {
                let known = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| {
                        redis::cmd("SENTINEL")
                            .arg("REPLICAS")
                            .arg("tg")
                            .query::<Vec<redis::Value>>(&mut c)
                    })
                    .map(|v| !v.is_empty())
                    .unwrap_or(false);
                if known {
                    break;
                }
                assert!(Instant::now() < deadline, "sentinels never saw the replica");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        s
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/tg", hosts.join(","))
    }

    /// The master the Sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        let (port, _) = self.sentinels.first()?;
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .ok()?
            .get_connection()
            .ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("tg")
            .query(&mut c)
            .ok()?;
        addr.get(1)?.parse().ok()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Fire `n` chat calls with `key` at once, spread over the nodes; returns (status, body) of each
/// (body `null` when it is not JSON).
pub async fn fire(
    nodes: &[Gateway],
    key: &str,
    n: usize,
    req: &serde_json::Value,
) -> Vec<(u16, serde_json::Value)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let gw = &nodes[i % nodes.len()];
        let (c, url, key, req) = (
            gw.client.clone(),
            gw.url("/v1/chat/completions"),
            key.to_string(),
            req.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .bearer_auth(key)
                .json(&req)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>()
                    .await
                    .unwrap_or(serde_json::Value::Null),
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The models each protocol's upstream serves in [`protocol_upstreams`].
pub struct ProtocolModels<'a> {
    /// OpenAI protocol, `responses = true`: `/v1/responses` passes through.
    pub native: &'a [&'a str],
    /// OpenAI chat completions only (gpt-4o-mini mapped to `mock-small` when listed).
    pub chat: &'a [&'a str],
    pub anthropic: &'a [&'a str],
    pub gemini: &'a [&'a str],
}

/// Channel upstreams named `native`, `chat`, `anth` and `gem`, one per protocol, on mock `m`.
pub fn protocol_upstreams(m: &MockHandle, models: &ProtocolModels<'_>) -> String {
    let list = |l: &[&str]| serde_json::to_string(l).unwrap();
    let up = |name: &str, base: String, protocol: &str, extra: &str, l: &[&str]| {
        format!(
            "[[channels.upstreams]]\nname = \"{name}\"\nbase_url = \"{base}\"\nprotocol = \"{protocol}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nmodels = {}\n{extra}",
            list(l)
        )
    };
    let map = if models.chat.contains(&"gpt-4o-mini") {
        "model_map = { \"gpt-4o-mini\" = \"mock-small\" }\n"
    } else {
        ""
    };
    [
        up(
            "native",
            m.base_url(),
            "openai",
            "responses = true\n",
            models.native,
        ),
        up("chat", m.base_url(), "openai", map, models.chat),
        up("anth", m.base_url(), "anthropic", "", models.anthropic),
        up("gem", m.gemini_base_url(), "gemini", "", models.gemini),
    ]
    .concat()
}

/// A PostgreSQL server of the test's own (Debian's postgresql package: `initdb` into a temporary
/// directory, `postgres` on a free port, trust authentication on 127.0.0.1, fsync off), run as
/// the `postgres` user when the tests run as root (PostgreSQL refuses root); stopped on drop.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Postgres {
    fn bin(name: &str) -> PathBuf {
        for dir in [
            "/usr/lib/postgresql/17/bin",
            "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/15/bin",
        ] {
            let p = PathBuf::from(dir).join(name);
            if p.exists() {
                return p;
            }
        }
        PathBuf::from(name)
    }

    /// The command, as the `postgres` user when we are root.
    fn command(name: &str) -> Command {
        let is_root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(Postgres::bin(name));
            c
        } else {
            Command::new(Postgres::bin(name))
        }
    }

    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pg")
            .tempdir()
            .unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = Postgres::command("initdb")
            .args([
                "-U",
                "tollgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb must be installed (apt-get install -y postgresql)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = Postgres {
            port,
            dir,
            child: None,
        };
        pg.spawn();
        pg
    }

    fn spawn(&mut self) {
        let (port, dir) = (self.port, self.dir.path());
        let child = Postgres::command("postgres")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres must be installed (apt-get install -y postgresql)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(Postgres::bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "tollgate"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop at once (as a crash would) and start again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A fresh, empty database on this server.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new(Postgres::bin("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "tollgate",
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://tollgate@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint; the data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Postgres::command("pg_ctl")
                .args(["stop", "-m", "immediate", "-D"])
                .arg(self.dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sum of the charges in the SQL ledger (positive nano-credits) and their count.
pub async fn sql_charges(gw: &Gateway, tenant: &str) -> (i64, usize) {
    let mut charges: Vec<i64> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => format!("/admin/tenants/{tenant}/ledger?limit=1000&cursor={c}"),
            None => format!("/admin/tenants/{tenant}/ledger?limit=1000"),
        };
        let v = gw.admin_get(&page).await;
        charges.extend(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["entry"]["kind"] == "charge")
                .map(|e| -e["entry"]["amount"].nano()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    (charges.iter().sum(), charges.len())
}

/// The Chromium binary Debian installs.
pub fn chromium() -> String {
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!("Chromium is not installed (apt-get install -y chromium); scripts/test installs it");
}

/// An admin API call with a bearer token (and a recognisable user agent, which the audit trail
/// records): the status and the JSON answer (`Null` when there is none).
pub async fn admin_call(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = gw
        .client
        .request(method.parse().unwrap(), gw.admin_url(path))
        .bearer_auth(token)
        .header("user-agent", "governance-test/1.0");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}
