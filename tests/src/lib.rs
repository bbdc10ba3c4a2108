//! Harness for the end-to-end tests: the real plugins built from `plugins/`, scratch plugin
//! directories, and the real servers `scripts/test.sh` started (Redis, SecantusDB).
//!
//! A test that needs a server and does not find it fails: run the suite with `scripts/test.sh`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchyard::plugin::{Limits, MANIFEST_FILE, PluginHost, RouteRequest, Sandbox, SharedContext};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A plugin component built by `scripts/build-plugins.sh`: `default-router`, `content-router`,
/// or a fixture (`chaos`, `noop`, `wrong-world`).
pub fn plugin(name: &str) -> PathBuf {
    let dist = repo_root().join("plugins/dist");
    [
        dist.join(format!("{name}.wasm")),
        dist.join("fixtures").join(format!("{name}.wasm")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| {
        panic!("plugin {name} is not built: run scripts/build-plugins.sh (or scripts/test.sh)")
    })
}

/// A scratch plugins directory.
pub struct PluginDir {
    pub dir: tempfile::TempDir,
}

impl PluginDir {
    /// An empty directory, with `manifest` as its `switchyard.toml` when given.
    pub fn new(manifest: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(m) = manifest {
            std::fs::write(dir.path().join(MANIFEST_FILE), m).expect("write manifest");
        }
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory holding only `default-router`, configured with the given simulated latency
    /// and transient-failure fraction.
    pub fn default_router(delay_ms: u64, failure_rate: f64) -> Self {
        let dir = PluginDir::new(Some(&format!(
            "[config.default-router]\ndelay_ms = {delay_ms}\nfailure_rate = {failure_rate}\n"
        )));
        dir.install("default-router", "default-router");
        dir
    }

    /// Path of `<name>.wasm` inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.wasm"))
    }

    /// Copies the built plugin `source` in as `<name>.wasm` (write to a temp name, then rename,
    /// as a deploy tool would).
    pub fn install(&self, name: &str, source: &str) -> PathBuf {
        let target = self.file(name);
        let tmp = self.dir.path().join(format!(".{name}.partial"));
        std::fs::copy(plugin(source), &tmp).expect("copy plugin");
        std::fs::rename(&tmp, &target).expect("rename plugin");
        target
    }

    /// A host over this directory with everything in it loaded.
    pub async fn host(&self, limits: Limits, context: SharedContext) -> PluginHost {
        let host = PluginHost::new(
            Sandbox::new(limits).expect("sandbox"),
            Some(self.path().to_path_buf()),
            context,
        );
        host.load_dir().await.expect("load plugins dir");
        host
    }
}

/// A routing request for tests.
pub fn request(event_id: &str, event_type: &str, payload: serde_json::Value) -> RouteRequest {
    RouteRequest {
        event_id: event_id.to_string(),
        event_type: event_type.to_string(),
        correlation_id: format!("corr-{event_id}"),
        payload: payload.to_string(),
        received_at_ms: 1_700_000_000_000,
        attempt: 1,
    }
}

/// Small limits for tests: a short timeout and a few call slots unless a test needs more.
pub fn test_limits() -> Limits {
    Limits {
        call_timeout: std::time::Duration::from_secs(5),
        max_concurrent_calls: 64,
        ..Limits::default()
    }
}

/// A shared no-op context.
pub fn no_context() -> SharedContext {
    Arc::new(switchyard::plugin::NoContext)
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the test servers are started by scripts/test.sh; run the suite with it")
    })
}

/// URL of the Redis server started for this test run.
pub fn redis_url() -> String {
    required_env("SWITCHYARD_TEST_REDIS_URL")
}

/// URL of the MongoDB-wire server (SecantusDB) started for this test run.
pub fn mongo_url() -> String {
    required_env("SWITCHYARD_TEST_MONGO_URL")
}

/// A name unique to this test process and call, for key prefixes and database names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The signing secret of test gateways.
pub const TEST_SECRET: &str = "switchyard-test-signing-secret";
/// The admin token of test gateways.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// A gateway configuration for tests: the run's Redis and SecantusDB, a key prefix and a
/// database of its own, fast retries.
pub fn gateway_config(plugins_dir: &Path) -> switchyard::Config {
    switchyard::Config {
        redis_url: Some(redis_url()),
        mongo_url: Some(mongo_url()),
        ..base_config(plugins_dir)
    }
}

/// Test settings without a backend (embedded unless URLs are added).
fn base_config(plugins_dir: &Path) -> switchyard::Config {
    let name = unique("t");
    switchyard::Config {
        host: "127.0.0.1".into(),
        port: 0,
        plugins_dir: plugins_dir.to_path_buf(),
        queue_concurrency: 256,
        plugin_timeout_ms: 5_000,
        hmac_secret: TEST_SECRET.into(),
        admin_token: Some(TEST_ADMIN_TOKEN.into()),
        queue_prefix: name.clone(),
        mongo_database: name,
        visibility_timeout_ms: 30_000,
        backend_retry_ms: 200,
        retry_base_ms: 200,
        retry_cap_ms: 2_000,
        rate_limit_max_requests: 0,
        shutdown_grace_ms: 5_000,
        ..switchyard::Config::default()
    }
}

/// A gateway configuration on the embedded store in `data_dir` (no Redis, no MongoDB).
pub fn embedded_config(plugins_dir: &Path, data_dir: &Path) -> switchyard::Config {
    switchyard::Config {
        data_dir: data_dir.to_path_buf(),
        ..base_config(plugins_dir)
    }
}

/// A gateway running in this process (the same `run` as the binary) on a free loopback port.
pub struct Gateway {
    pub url: String,
    pub config: switchyard::Config,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    pub async fn start(config: switchyard::Config) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(switchyard::run(config.clone(), listener, stop.clone()));
        let client = Client::new(&url);
        let t = std::time::Instant::now();
        loop {
            if let Ok(r) = client.http.get(format!("{url}/health")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(!task.is_finished(), "the gateway exited at start-up");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "gateway did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Gateway {
            url,
            config,
            stop,
            task,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.expect("gateway task")
    }

    /// The state database of this gateway (to seed `orders` / `shipments`).
    pub async fn database(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(mongo_url())
            .await
            .expect("mongo")
            .database(&self.config.mongo_database)
    }
}

/// An HTTP client that signs like a producer.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response: status, headers, JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn answer(r: reqwest::Response) -> Answer {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        }
    }

    /// POSTs raw bytes with the given headers (no signature added).
    pub async fn post_raw(&self, body: Vec<u8>, headers: &[(&str, String)]) -> Answer {
        let mut req = self.http.post(format!("{}/events", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        Client::answer(req.send().await.expect("POST /events")).await
    }

    /// POSTs an event signed with `x-hmac-signature`.
    pub async fn send(&self, event: &serde_json::Value) -> Answer {
        self.try_send(event).await.expect("POST /events")
    }

    /// POSTs an event signed the Standard Webhooks way, with message id `id` at time `ts`.
    pub async fn send_webhook(&self, event: &serde_json::Value, id: &str, ts: u64) -> Answer {
        let body = serde_json::to_vec(event).unwrap();
        let sig = switchyard::http::signature::sign_webhook(TEST_SECRET.as_bytes(), id, ts, &body);
        let headers = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ];
        self.post_raw(body, &headers).await
    }

    /// Like [`Self::send`], `None` when the connection fails (the gateway died mid-request).
    pub async fn try_send(&self, event: &serde_json::Value) -> Option<Answer> {
        let body = serde_json::to_vec(event).unwrap();
        let sig = switchyard::http::signature::sign_hex(TEST_SECRET.as_bytes(), &body);
        let r = self
            .http
            .post(format!("{}/events", self.base))
            .header("content-type", "application/json")
            .header("x-hmac-signature", sig)
            .body(body)
            .send()
            .await
            .ok()?;
        Some(Client::answer(r).await)
    }

    pub async fn get(&self, path: &str) -> Answer {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .send()
            .await
            .expect("GET");
        Client::answer(r).await
    }

    pub async fn post_admin(&self, path: &str, body: serde_json::Value) -> Answer {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST");
        Client::answer(r).await
    }

    /// Any admin request: `method` on `path` with the admin token and an optional raw body;
    /// `token: None` sends none.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        Client::answer(req.send().await.expect("admin request")).await
    }

    /// Polls `GET /events/{id}` until every id is `ROUTED` or `FAILED`; returns the records.
    pub async fn wait_final(
        &self,
        ids: &[String],
        timeout: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let t = std::time::Instant::now();
        let mut done: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
        loop {
            for id in ids
                .iter()
                .filter(|i| !done.contains_key(*i))
                .cloned()
                .collect::<Vec<_>>()
            {
                let a = self.get(&format!("/events/{id}")).await;
                if a.status == 200 && matches!(a.body["state"].as_str(), Some("ROUTED" | "FAILED"))
                {
                    done.insert(id, a.body);
                }
            }
            if done.len() == ids.len() {
                return ids.iter().map(|i| done[i].clone()).collect();
            }
            assert!(
                t.elapsed() < timeout,
                "{} of {} events not final after {timeout:?}",
                ids.len() - done.len(),
                ids.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Polls `/events/stats` until nothing is ready, in flight or delayed.
    pub async fn wait_idle(&self, timeout: std::time::Duration) -> serde_json::Value {
        let t = std::time::Instant::now();
        loop {
            let s = self.get("/events/stats").await.body;
            if s["ready"] == 0 && s["inFlight"] == 0 && s["delayed"] == 0 {
                return s;
            }
            assert!(
                t.elapsed() < timeout,
                "queue not idle after {timeout:?}: {s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The `switchyard` binary of this build (`cargo test --workspace` builds it for the host's
/// integration tests; `scripts/test.sh` builds everything before running).
pub fn switchyard_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug/switchyard");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p switchyard` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The text of `GET /metrics`.
pub async fn metrics(client: &Client) -> String {
    client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the first sample of `series` (a metric name with its labels, as printed) in a
/// metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment that makes the binary serve `config` (the same settings as [`Gateway`]):
/// every setting, as the upper-case variable the gateway reads.
pub fn gateway_env(config: &switchyard::Config, port: u16) -> Vec<(String, String)> {
    let serde_json::Value::Object(fields) = serde_json::to_value(config).expect("config as JSON")
    else {
        panic!("the config serialises as an object");
    };
    let mut env: Vec<(String, String)> = fields
        .into_iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            Some((k.to_ascii_uppercase(), v))
        })
        .collect();
    env.retain(|(k, _)| k != "PORT" && k != "HOST" && k != "LOG_FORMAT");
    env.push(("HOST".into(), "127.0.0.1".into()));
    env.push(("PORT".into(), port.to_string()));
    env.push(("LOG_FORMAT".into(), "json".into()));
    env
}

/// The gateway binary running as a child process (killed when dropped).
pub struct GatewayProcess {
    pub url: String,
    pub child: std::process::Child,
}

impl GatewayProcess {
    /// Starts the binary with `config` on a free port and waits until it answers `/health`.
    pub async fn start(config: &switchyard::Config, log: &Path) -> GatewayProcess {
        let port = free_port();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = std::process::Command::new(switchyard_bin())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(gateway_env(config, port))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn switchyard");
        let mut p = GatewayProcess {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let client = Client::new(&p.url);
        let t = std::time::Instant::now();
        loop {
            if let Ok(r) = client.http.get(format!("{}/health", p.url)).send().await
                && r.status() == 200
            {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "switchyard exited at start-up ({status}); see {}",
                    log.display()
                );
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "switchyard did not start; see {}",
                log.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// SIGKILL: no shutdown, no draining.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for a clean exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private redis-server for a test that stops or restarts it (killed when dropped).
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    persistence: bool,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port, with AOF persistence (fsync always) in a temp dir.
    pub fn start() -> RedisServer {
        Self::start_with(true)
    }

    /// Starts redis-server on a free port, with AOF persistence on or off.
    pub fn start_with(persistence: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            persistence,
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and data directory; waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(if self.persistence {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup.sh)");
        self.child = Some(child);
        let t = std::time::Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .map(|n| buf[..n].starts_with(b"+PONG"))
                        .unwrap_or(false)
                {
                    return;
                }
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL: like a crash; AOF keeps what was acknowledged).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private SecantusDB (MongoDB wire) server for a test that stops and restarts it.
pub struct MongoServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl MongoServer {
    /// Starts SecantusDB on a free port with its storage in a temp dir.
    pub fn start() -> MongoServer {
        let mut s = MongoServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// (Re)starts on the same port and storage; waits until it accepts connections.
    pub fn restart(&mut self) {
        let bin = std::env::var("SWITCHYARD_TEST_SECANTUSD").unwrap_or_else(|_| {
            format!(
                "{}/.cache/switchyard/secantus-venv/bin/secantusd-py",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let child = std::process::Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--log-level",
                "WARNING",
                "--storage-path",
            ])
            .arg(self.dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (scripts/setup.sh installs it): {e}"));
        self.child = Some(child);
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "SecantusDB did not start on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills the server (like a crash or an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many attempts in an event record's history routed it.
pub fn routed_count(record: &serde_json::Value) -> usize {
    record["history"]
        .as_array()
        .map(|h| h.iter().filter(|a| a["outcome"] == "routed").count())
        .unwrap_or(0)
}

/// Every record is final (`ROUTED` or `FAILED`), none was routed twice, and each `ROUTED` one was
/// routed exactly once.
pub fn assert_final_once(records: &[serde_json::Value]) {
    for r in records {
        assert!(
            matches!(r["state"].as_str(), Some("ROUTED" | "FAILED")),
            "not final: {r}"
        );
        let routed = routed_count(r);
        assert!(routed <= 1, "routed twice: {r}");
        if r["state"] == "ROUTED" {
            assert_eq!(routed, 1, "{r}");
        }
    }
}
