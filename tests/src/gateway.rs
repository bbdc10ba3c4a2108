//! Gateways under test: configurations, the gateway running in this process, and the binary as
//! a child process.

use std::path::{Path, PathBuf};

use crate::{Client, TEST_ADMIN_TOKEN, TEST_SECRET, free_port, mongo_url, redis_url, repo_root};

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

/// A gateway configuration for tests: the run's Redis and SecantusDB, a key prefix and a
/// database of its own, fast retries.
pub fn gateway_config(plugins_dir: &Path) -> switchyard_gateway::Config {
    switchyard_gateway::Config {
        redis_url: Some(redis_url()),
        mongo_url: Some(mongo_url()),
        ..base_config(plugins_dir)
    }
}

/// Test settings without a backend (embedded unless URLs are added).
fn base_config(plugins_dir: &Path) -> switchyard_gateway::Config {
    let name = unique("t");
    switchyard_gateway::Config {
        listen_host: "127.0.0.1".into(),
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
        ..switchyard_gateway::Config::default()
    }
}

/// A gateway configuration on the embedded store in `data_dir` (no Redis, no MongoDB).
pub fn embedded_config(plugins_dir: &Path, data_dir: &Path) -> switchyard_gateway::Config {
    switchyard_gateway::Config {
        data_dir: data_dir.to_path_buf(),
        ..base_config(plugins_dir)
    }
}

/// A gateway running in this process (the same `run` as the binary) on a free loopback port.
pub struct Gateway {
    pub url: String,
    pub config: switchyard_gateway::Config,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    pub async fn start(config: switchyard_gateway::Config) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(switchyard_gateway::run(
            config.clone(),
            listener,
            stop.clone(),
        ));
        let client = Client::new(&url);
        let t = std::time::Instant::now();
        loop {
            if let Ok(r) = client.http.get(format!("{url}/health")).send().await
                && r.status() == 200
            {
                break;
            }
            if task.is_finished() {
                match task.await {
                    Ok(Err(e)) => panic!("the gateway exited at start-up: {e:#}"),
                    other => panic!("the gateway exited at start-up: {other:?}"),
                }
            }
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

/// The environment that makes the binary serve `config` (the same settings as [`Gateway`]):
/// every setting, as the upper-case variable the gateway reads.
pub fn gateway_env(config: &switchyard_gateway::Config, port: u16) -> Vec<(String, String)> {
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
    pub async fn start(config: &switchyard_gateway::Config, log: &Path) -> GatewayProcess {
        Self::start_with_env(config, log, &[]).await
    }

    /// [`Self::start`] with extra environment variables (fault injection, for one).
    pub async fn start_with_env(
        config: &switchyard_gateway::Config,
        log: &Path,
        extra: &[(&str, &str)],
    ) -> GatewayProcess {
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
            .envs(extra.iter().copied())
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
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                panic!(
                    "switchyard exited at start-up ({status}); the end of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
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

    /// Waits for the process to exit by itself (a crash point, say); panics after `timeout`.
    pub fn wait_exit(mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let t = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                t.elapsed() < timeout,
                "switchyard still running after {timeout:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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
