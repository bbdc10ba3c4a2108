//! The gateway's configuration: defaults, then an optional TOML file (`SWITCHYARD_CONFIG`), then
//! environment variables (the seed's names: `PORT`, `HMAC_SECRET`, `QUEUE_CONCURRENCY`, ...).
//! Loaded once at start-up, validated, and passed down.

use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::plugin::Limits;

/// Every setting, with the environment variable that sets it (upper-case field name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `HOST`: address to listen on.
    pub host: String,
    /// `PORT`: TCP port to listen on.
    pub port: u16,
    /// `PLUGINS_DIR`: directory of `.wasm` routing plugins (and `switchyard.toml`), watched live.
    pub plugins_dir: PathBuf,
    /// `QUEUE_CONCURRENCY`: routing calls in flight at most (worker pool size).
    pub queue_concurrency: u32,
    /// `PLUGIN_TIMEOUT_MS`: wall-clock limit of one routing call.
    pub plugin_timeout_ms: u64,
    /// `PLUGIN_MEMORY_MB`: linear memory cap of one plugin instance.
    pub plugin_memory_mb: u64,
    /// `LOG_FORMAT`: `json` or `pretty` (default: pretty on a terminal, json otherwise).
    pub log_format: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 3000,
            plugins_dir: PathBuf::from("plugins/dist"),
            queue_concurrency: 512,
            plugin_timeout_ms: 10_000,
            plugin_memory_mb: 64,
            log_format: None,
        }
    }
}

const ENV_KEYS: &[&str] = &[
    "host",
    "port",
    "plugins_dir",
    "queue_concurrency",
    "plugin_timeout_ms",
    "plugin_memory_mb",
    "log_format",
];

impl Config {
    /// Defaults → `SWITCHYARD_CONFIG` file (if set) → environment; then validated.
    pub fn load() -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Ok(path) = std::env::var("SWITCHYARD_CONFIG") {
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(
                Env::raw().filter(|k| ENV_KEYS.contains(&k.as_str().to_ascii_lowercase().as_str())),
            )
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.queue_concurrency >= 1,
            "QUEUE_CONCURRENCY must be at least 1"
        );
        anyhow::ensure!(
            self.queue_concurrency <= 20_000,
            "QUEUE_CONCURRENCY must be at most 20000"
        );
        anyhow::ensure!(
            self.plugin_timeout_ms >= 10,
            "PLUGIN_TIMEOUT_MS must be at least 10"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.plugin_memory_mb),
            "PLUGIN_MEMORY_MB must be between 1 and 4096"
        );
        if let Some(f) = &self.log_format {
            anyhow::ensure!(
                f == "json" || f == "pretty",
                "LOG_FORMAT must be `json` or `pretty`"
            );
        }
        Ok(())
    }

    /// The plugin sandbox limits these settings describe.
    pub fn plugin_limits(&self) -> Limits {
        Limits {
            call_timeout: Duration::from_millis(self.plugin_timeout_ms),
            memory_bytes: self.plugin_memory_mb << 20,
            max_concurrent_calls: self.queue_concurrency,
            ..Limits::default()
        }
    }
}
