//! The servers `scripts/test.sh` started (Redis, SecantusDB), private ones for tests that stop or
//! restart theirs, and where the API checkers are installed.

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the test servers are started by scripts/test.sh; run the suite with it")
    })
}

/// URL of the Redis server started for this test run.
pub fn redis_url() -> String {
    required_env("SWITCHYARD_TEST_REDIS_URL")
}

/// Seed URLs of the Redis Cluster (three masters, one replica each) started for this test run.
pub fn redis_cluster_url() -> String {
    required_env("SWITCHYARD_TEST_REDIS_CLUSTER_URL")
}

/// URL of the MongoDB-wire server (SecantusDB) started for this test run.
pub fn mongo_url() -> String {
    required_env("SWITCHYARD_TEST_MONGO_URL")
}

/// The venv holding Schemathesis and openapi-spec-validator (`scripts/setup.sh` installs it).
pub fn api_venv() -> std::path::PathBuf {
    required_env("SWITCHYARD_TEST_API_VENV").into()
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A private Redis Cluster (`scripts/redis-cluster.sh`: masters with one replica each, a 1 s
/// node timeout) for a test that kills its nodes; every node is killed when dropped.
pub struct RedisCluster {
    pub dir: tempfile::TempDir,
    /// Seed URLs (every node), comma-separated: what `REDIS_URL` takes.
    pub url: String,
    /// `(port, pid)` of every node.
    pub nodes: Vec<(u16, u32)>,
}

impl RedisCluster {
    /// Starts `masters` masters and as many replicas; waits until all are in sync.
    pub fn start(masters: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("bash")
            .arg(crate::repo_root().join("scripts/redis-cluster.sh"))
            .arg(dir.path())
            .arg(masters.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/redis-cluster.sh");
        let nodes = std::fs::read_to_string(dir.path().join("nodes"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (port, pid) = l.split_once(' ')?;
                Some((port.parse().ok()?, pid.parse().ok()?))
            })
            .collect();
        let cluster = RedisCluster {
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
            nodes,
        };
        assert!(out.status.success(), "the Redis Cluster did not start");
        cluster
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let ports: Vec<u16> = self.nodes.iter().map(|(port, _)| *port).collect();
        slot_and_master(&ports, key).1
    }

    /// SIGKILL to the node on `port` (a crash: no failover handshake, no last sync).
    pub fn kill9(&self, port: u16) {
        let (_, pid) = self
            .nodes
            .iter()
            .find(|(p, _)| *p == port)
            .expect("a node of this cluster");
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, pid) in &self.nodes {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// `key`'s slot and the port of the master serving it now, as the first of `ports` that
/// answers sees the cluster (`CLUSTER KEYSLOT`, `CLUSTER NODES`).
pub fn slot_and_master(ports: &[u16], key: &str) -> (u16, u16) {
    let cli = |port: u16, args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let alive = *ports
        .iter()
        .find(|port| cli(**port, &["ping"]).trim() == "PONG")
        .expect("a node that answers");
    let slot: u16 = cli(alive, &["cluster", "keyslot", key])
        .trim()
        .parse()
        .expect("a slot");
    // `CLUSTER NODES`: id addr flags master ping pong epoch state slot-ranges...
    for line in cli(alive, &["cluster", "nodes"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let serves = f[8..].iter().any(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
        });
        if serves {
            let port = f[1].split('@').next().and_then(|a| a.rsplit(':').next());
            return (slot, port.and_then(|p| p.parse().ok()).expect("a port"));
        }
    }
    panic!("no master serves slot {slot}");
}
