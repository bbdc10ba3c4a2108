//! The gateway's configuration: defaults, then an optional TOML file (`SWITCHYARD_CONFIG`), then
//! environment variables (the seed's names: `PORT`, `HMAC_SECRET`, `QUEUE_CONCURRENCY`, ...).
//! Loaded once at start-up, validated, and passed down.

use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use switchyard_model::retry::RetryPolicy;
use switchyard_runtime::rollout::RolloutPolicy;
use switchyard_stores::backend::Backend;
use switchyard_stores::mongo::MongoConfig;
use switchyard_stores::queue::{Lane, Limits};
use switchyard_stores::redis::RedisQueueConfig;

/// Shortest accepted signing secret or admin token, in bytes (a `whsec_` key after decoding).
pub const MIN_SECRET_BYTES: usize = 16;
/// The longest `DELIVERY_CIRCUIT_MAX_COOLDOWN_MS` may be (a day): an open circuit is looked at
/// again at least that often.
const MAX_CIRCUIT_COOLDOWN_MS: u64 = 24 * 3600 * 1000;

/// Values that are somebody's example, never a secret.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "secret",
    "test",
    "password",
    "example",
];

/// Refuses a secret that is short or an obvious placeholder, with one line saying what to set.
/// `n` is the secret's position in a comma-separated list of `count`.
fn check_secret(name: &str, n: usize, count: usize, secret: &str) -> anyhow::Result<()> {
    let which = if count > 1 {
        format!("{name} (secret {} of {count})", n + 1)
    } else {
        name.to_string()
    };
    let fix = "set it to at least 16 random bytes, e.g. `openssl rand -hex 32`";
    let bytes = match secret.strip_prefix("whsec_") {
        Some(b64) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| {
                    anyhow::anyhow!("{which} is a whsec_ key that is not valid base64; {fix}")
                })?
                .len()
        }
        None => secret.len(),
    };
    let lowered = secret.trim().to_ascii_lowercase();
    anyhow::ensure!(
        !PLACEHOLDERS.contains(&lowered.as_str()),
        "{which} is a placeholder ({secret:?}), not a secret; {fix}"
    );
    anyhow::ensure!(
        bytes >= MIN_SECRET_BYTES,
        "{which} is {bytes} bytes long, shorter than {MIN_SECRET_BYTES}; {fix}"
    );
    Ok(())
}

/// Every setting, with the environment variable that sets it (upper-case field name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `HOST`: address to listen on.
    #[serde(rename = "host")]
    pub listen_host: String,
    /// `PORT`: TCP port to listen on.
    pub port: u16,
    /// `PLUGINS_DIR`: directory of `.wasm` routing plugins (and `switchyard.toml`), watched live.
    /// When it holds no plugin, the bundled ones are installed into it.
    pub plugins_dir: PathBuf,
    /// `DATA_DIR`: the embedded store (used when neither `REDIS_URL` nor `MONGO_URL` is set) and
    /// generated secrets.
    pub data_dir: PathBuf,
    /// `QUEUE_CONCURRENCY`: routing calls in flight at most (worker pool size).
    pub queue_concurrency: u32,
    /// `PLUGIN_TIMEOUT_MS`: wall-clock limit of one routing call.
    pub plugin_timeout_ms: u64,
    /// `PLUGIN_MEMORY_MB`: linear memory cap of one plugin instance.
    pub plugin_memory_mb: u64,
    /// `PLUGIN_MEMORY_TOTAL_MB`: linear memory of all plugin instances together; a growth past it
    /// is refused and the call deferred (host-side memory pressure, no attempt spent).
    pub plugin_memory_total_mb: u64,
    /// `CONTEXT_LOOKUPS_MAX`: `context.lookup` calls one routing call may make.
    pub context_lookups_max: u32,
    /// `ORDERING_MAX_WAITING`: keyed deliveries held in memory while they wait for their key (or
    /// for their holder's retry); at the limit, fetching pauses.
    pub ordering_max_waiting: u32,
    /// `SIDE_CALLS_MAX`: plugin calls beside live traffic at once (shadow comparisons, dry runs,
    /// what-if replays), in instance slots of their own; a shadow call finding none is skipped.
    pub side_calls_max: u32,
    /// `SHADOW_SAMPLE_RATE`: fraction of live events a candidate shadows (chosen by event id).
    pub shadow_sample_rate: f64,
    /// `ROLLBACK_WINDOW_MS`: how long a newly swapped plugin version is watched (0 = off).
    pub rollback_window_ms: u64,
    /// `ROLLBACK_MIN_CALLS`: calls in the window before its failure rate is judged.
    pub rollback_min_calls: u64,
    /// `ROLLBACK_MAX_FAILURE_RATE`: failed / all calls above which the version is rolled back
    /// to the previous one (1 = off).
    pub rollback_max_failure_rate: f64,
    /// `ROLLBACK_COUNT_ROUTE_ERRORS`: count a plugin's own `transient` / `permanent` answers as
    /// failures of the version (by default only traps, timeouts, memory and invalid output do).
    pub rollback_count_route_errors: bool,
    /// `LOG_FORMAT`: `json` or `pretty` (default: pretty on a terminal, json otherwise).
    pub log_format: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: an OpenTelemetry collector's OTLP/HTTP base URL (e.g.
    /// `http://localhost:4318`; traces go to `/v1/traces`). Tracing is off without it (or with
    /// it empty).
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (default) or `http/json`.
    pub otel_exporter_otlp_protocol: String,
    /// `OTEL_SERVICE_NAME`: the `service.name` of the gateway's spans.
    pub otel_service_name: String,
    /// `OTEL_TRACES_SAMPLER_ARG`: the fraction of new traces recorded (0 to 1); a request that
    /// carries a `traceparent` follows its sampled flag.
    pub otel_traces_sampler_arg: f64,
    /// `HMAC_SECRET`: the producers' signing secret; several, comma-separated, during rotation.
    /// A `whsec_` prefix marks a base64 key (Standard Webhooks).
    pub hmac_secret: String,
    /// `SIGNATURE_TOLERANCE_SECS`: accepted age (either way) of a `webhook-timestamp`.
    pub signature_tolerance_secs: u64,
    /// `REQUIRE_TIMESTAMPED_SIGNATURES`: refuse the untimestamped `x-hmac-signature` scheme;
    /// only Standard Webhooks signatures (timestamp + id, replay-checked) are accepted.
    pub require_timestamped_signatures: bool,
    /// `ADMIN_TOKEN`: bearer token for the admin endpoints; without it they all answer 401.
    pub admin_token: Option<String>,
    /// `BODY_LIMIT_BYTES`: largest accepted request body.
    pub body_limit_bytes: usize,
    /// `BODY_TIMEOUT_MS`: longest time to receive a whole request body (408 after).
    pub body_timeout_ms: u64,
    /// `RATE_LIMIT_MAX_REQUESTS`: requests per client IP per window on `POST /events` (0 = off).
    pub rate_limit_max_requests: u32,
    /// `RATE_LIMIT_WINDOW_MS`: the rate-limit window.
    pub rate_limit_window_ms: u64,
    /// `TRUSTED_PROXIES`: addresses or CIDR blocks (comma-separated) of load balancers whose
    /// `X-Forwarded-For` names the client; from any other peer the header is ignored.
    pub trusted_proxies: String,
    /// `REDIS_URL`: the queue.
    pub redis_url: Option<String>,
    /// `REDIS_TIMEOUT_MS`: limit of one Redis round trip; past it ingestion answers 503.
    pub redis_timeout_ms: u64,
    /// `REDIS_CLUSTER`: `REDIS_URL` names a Redis Cluster (implied by several comma-separated
    /// seed URLs).
    pub redis_cluster: bool,
    /// `REDIS_MIN_REPLICAS_ACK`: replicas that must hold an appended event before the producer
    /// gets 202 (`WAIT`; 0 = the master's write is enough).
    pub redis_min_replicas_ack: u32,
    /// `QUEUE_PREFIX`: Redis key prefix (hash tag), to share one Redis between deployments.
    pub queue_prefix: String,
    /// `QUEUE_PARTITIONS`: streams the Redis queue is spread over (each its own hash tag, so
    /// that a cluster spreads them over its shards).
    pub queue_partitions: usize,
    /// `QUEUE_MAX_DEPTH`: ready + delayed events beyond which ingestion answers 503 (0 = off).
    pub queue_max_depth: u64,
    /// `DLQ_MAX_DEPTH`: dead letters beyond which ingestion answers 503 `dlq_full` (0 = off).
    pub dlq_max_depth: u64,
    /// `MONGO_URL`: the state store (and the live `orders` / `shipments`).
    pub mongo_url: Option<String>,
    /// `MONGO_DATABASE`: database when `MONGO_URL` names none.
    pub mongo_database: String,
    /// `EVENT_TTL_DAYS`: expire event records after this many days (0 = keep).
    pub event_ttl_days: u64,
    /// `WORKER_ID`: this gateway's consumer name (default: host name and port).
    pub worker_id: Option<String>,
    /// `WORKERS`: run the worker pool in this process (`false`: an ingest-only gateway).
    pub workers: bool,
    /// `WORKER_RATE_LIMIT`: deliveries started per second at most (0 = off).
    pub worker_rate_limit: u32,
    /// `VISIBILITY_TIMEOUT_MS`: an unfinished delivery is reclaimed after this long. Must exceed
    /// the lease.
    pub visibility_timeout_ms: u64,
    /// `LEASE_MS`: how long a claim keeps other deliveries of the event off it (default: plugin
    /// timeout + 20 s).
    pub lease_ms: Option<u64>,
    /// `SHUTDOWN_GRACE_MS`: how long shutdown waits for routes in flight.
    pub shutdown_grace_ms: u64,
    /// `BACKEND_RETRY_MS`: delay before a delivery is retried after a state-store failure.
    pub backend_retry_ms: u64,
    /// `HOST_FAILURE_MAX_DEFER_MS`: how long an event may be deferred by failures of the host
    /// (no plugin for its type, instance pool exhausted, live state or memory unavailable)
    /// before it is dead-lettered with kind `host`.
    pub host_failure_max_defer_ms: u64,
    /// `DELIVERY_CONCURRENCY`: deliveries in flight at most, all destinations together.
    pub delivery_concurrency: u32,
    /// `DELIVERY_MAX_ATTEMPTS`: attempts of one delivery before it is dead-lettered (backoff as
    /// `RETRY_*`).
    pub delivery_max_attempts: u32,
    /// `DELIVERY_RETRY_AFTER_MAX_MS`: the longest `Retry-After` of a destination honoured.
    pub delivery_retry_after_max_ms: u64,
    /// `DELIVERY_MAX_WAIT_MS`: the longest a delivery waits behind an open circuit (or a busy
    /// destination) before it is dead-lettered.
    pub delivery_max_wait_ms: u64,
    /// `DELIVERY_MAX_DEPTH`: deliveries waiting in the lane (ready and delayed) past which
    /// ingestion answers 503 with `Retry-After`, so that a slow destination cannot grow the
    /// backlog without bound (0 = no limit).
    pub delivery_max_depth: u64,
    /// `DELIVERY_CIRCUIT_FAILURES`: consecutive failures that open a destination's circuit.
    pub delivery_circuit_failures: u32,
    /// `DELIVERY_CIRCUIT_COOLDOWN_MS`, `DELIVERY_CIRCUIT_MAX_COOLDOWN_MS`: how long an open
    /// circuit waits before a probe, doubling while the destination stays down.
    pub delivery_circuit_cooldown_ms: u64,
    pub delivery_circuit_max_cooldown_ms: u64,
    /// `MAX_RETRY_ATTEMPTS`: attempts in all before an event is dead-lettered.
    pub max_retry_attempts: u32,
    /// `RETRY_BASE_MS`, `RETRY_FACTOR`, `RETRY_CAP_MS`, `RETRY_JITTER`: the backoff schedule.
    pub retry_base_ms: u64,
    pub retry_factor: f64,
    pub retry_cap_ms: u64,
    pub retry_jitter: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_host: "0.0.0.0".into(),
            port: 3000,
            plugins_dir: PathBuf::from("data/plugins"),
            data_dir: PathBuf::from("data"),
            queue_concurrency: 2048,
            plugin_timeout_ms: 10_000,
            plugin_memory_mb: 64,
            plugin_memory_total_mb: 4096,
            context_lookups_max: 16,
            ordering_max_waiting: 10_000,
            side_calls_max: 64,
            shadow_sample_rate: 1.0,
            rollback_window_ms: 300_000,
            rollback_min_calls: 20,
            rollback_max_failure_rate: 0.5,
            rollback_count_route_errors: false,
            log_format: None,
            otel_exporter_otlp_endpoint: None,
            otel_exporter_otlp_protocol: "http/protobuf".into(),
            otel_service_name: "switchyard".into(),
            otel_traces_sampler_arg: 1.0,
            hmac_secret: String::new(),
            signature_tolerance_secs: 300,
            require_timestamped_signatures: false,
            admin_token: None,
            body_limit_bytes: 1 << 20,
            body_timeout_ms: 10_000,
            rate_limit_max_requests: 1000,
            rate_limit_window_ms: 1000,
            trusted_proxies: String::new(),
            redis_url: None,
            redis_timeout_ms: 2000,
            redis_cluster: false,
            redis_min_replicas_ack: 0,
            queue_prefix: "switchyard".into(),
            queue_partitions: 1,
            queue_max_depth: 100_000,
            dlq_max_depth: 0,
            mongo_url: None,
            mongo_database: "switchyard".into(),
            event_ttl_days: 0,
            worker_id: None,
            workers: true,
            worker_rate_limit: 0,
            visibility_timeout_ms: 60_000,
            lease_ms: None,
            shutdown_grace_ms: 15_000,
            backend_retry_ms: 1000,
            host_failure_max_defer_ms: 24 * 3600 * 1000,
            delivery_concurrency: 256,
            delivery_max_attempts: 8,
            delivery_retry_after_max_ms: 300_000,
            delivery_max_wait_ms: 24 * 3600 * 1000,
            delivery_max_depth: 100_000,
            delivery_circuit_failures: 5,
            delivery_circuit_cooldown_ms: 1_000,
            delivery_circuit_max_cooldown_ms: 60_000,
            max_retry_attempts: 5,
            retry_base_ms: 1000,
            retry_factor: 2.0,
            retry_cap_ms: 60_000,
            retry_jitter: 0.2,
        }
    }
}

const ENV_KEYS: &[&str] = &[
    "host",
    "port",
    "plugins_dir",
    "data_dir",
    "queue_concurrency",
    "plugin_timeout_ms",
    "plugin_memory_mb",
    "plugin_memory_total_mb",
    "context_lookups_max",
    "ordering_max_waiting",
    "side_calls_max",
    "shadow_sample_rate",
    "rollback_window_ms",
    "rollback_min_calls",
    "rollback_max_failure_rate",
    "rollback_count_route_errors",
    "log_format",
    "otel_exporter_otlp_endpoint",
    "otel_exporter_otlp_protocol",
    "otel_service_name",
    "otel_traces_sampler_arg",
    "hmac_secret",
    "signature_tolerance_secs",
    "require_timestamped_signatures",
    "admin_token",
    "body_limit_bytes",
    "body_timeout_ms",
    "rate_limit_max_requests",
    "rate_limit_window_ms",
    "trusted_proxies",
    "redis_url",
    "redis_timeout_ms",
    "redis_cluster",
    "redis_min_replicas_ack",
    "queue_prefix",
    "queue_partitions",
    "queue_max_depth",
    "dlq_max_depth",
    "mongo_url",
    "mongo_database",
    "event_ttl_days",
    "worker_id",
    "workers",
    "worker_rate_limit",
    "visibility_timeout_ms",
    "lease_ms",
    "shutdown_grace_ms",
    "backend_retry_ms",
    "host_failure_max_defer_ms",
    "delivery_concurrency",
    "delivery_max_attempts",
    "delivery_retry_after_max_ms",
    "delivery_max_wait_ms",
    "delivery_max_depth",
    "delivery_circuit_failures",
    "delivery_circuit_cooldown_ms",
    "delivery_circuit_max_cooldown_ms",
    "max_retry_attempts",
    "retry_base_ms",
    "retry_factor",
    "retry_cap_ms",
    "retry_jitter",
];

impl Config {
    /// The OTLP endpoint, if traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` set, not empty).
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.otel_exporter_otlp_endpoint
            .as_deref()
            .filter(|e| !e.trim().is_empty())
    }

    /// Defaults → `SWITCHYARD_CONFIG` file (if set) → environment; then validated.
    pub fn load() -> anyhow::Result<Self> {
        let config = Self::read()?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as [`Config::load`] reads and checks it, for the tools that use a part
    /// of it (`plugin test`: the plugin limits) on a machine where no signing secret is set.
    pub fn load_for_tools() -> anyhow::Result<Self> {
        let config = Self::read()?;
        let mut checked = config.clone();
        if checked.hmac_secret.is_empty() {
            checked.hmac_secret = "a-signing-secret-the-tools-do-not-use".into();
        }
        checked.validate()?;
        Ok(config)
    }

    /// Defaults → `SWITCHYARD_CONFIG` file (if set) → environment, unchecked.
    fn read() -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Ok(path) = std::env::var("SWITCHYARD_CONFIG") {
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment
            .merge(
                Env::raw().filter(|k| ENV_KEYS.contains(&k.as_str().to_ascii_lowercase().as_str())),
            )
            .extract()?)
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
        self.backend()?;
        anyhow::ensure!(
            (1..=1024).contains(&self.queue_partitions),
            "QUEUE_PARTITIONS must be between 1 and 1024"
        );
        // Partition k's hash tag is `{prefix.k}`: a prefix with a dot (or a brace) could be
        // another deployment's partition.
        anyhow::ensure!(
            !self.queue_prefix.is_empty()
                && self
                    .queue_prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-:".contains(c)),
            "QUEUE_PREFIX must be letters, digits, `_`, `-` or `:` (got {:?})",
            self.queue_prefix
        );
        anyhow::ensure!(
            self.max_retry_attempts >= 1,
            "MAX_RETRY_ATTEMPTS must be at least 1"
        );
        anyhow::ensure!(self.retry_factor >= 1.0, "RETRY_FACTOR must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.retry_jitter),
            "RETRY_JITTER must be between 0 and 1"
        );
        anyhow::ensure!(
            self.body_limit_bytes >= 64,
            "BODY_LIMIT_BYTES must be at least 64"
        );
        anyhow::ensure!(
            self.visibility_timeout_ms > self.lease().as_millis() as u64,
            "VISIBILITY_TIMEOUT_MS must exceed the lease (LEASE_MS, default PLUGIN_TIMEOUT_MS + 20000)"
        );
        anyhow::ensure!(
            self.lease().as_millis() as u64 > self.plugin_timeout_ms,
            "LEASE_MS must exceed PLUGIN_TIMEOUT_MS"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.side_calls_max),
            "SIDE_CALLS_MAX must be between 1 and 4096"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.rollback_max_failure_rate),
            "ROLLBACK_MAX_FAILURE_RATE must be between 0 and 1"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.shadow_sample_rate),
            "SHADOW_SAMPLE_RATE must be between 0 and 1"
        );
        anyhow::ensure!(
            ["http/protobuf", "http/json"].contains(&self.otel_exporter_otlp_protocol.as_str()),
            "OTEL_EXPORTER_OTLP_PROTOCOL must be `http/protobuf` or `http/json` (gRPC is not built in)"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.otel_traces_sampler_arg),
            "OTEL_TRACES_SAMPLER_ARG must be between 0 and 1"
        );
        if let Some(endpoint) = self.otlp_endpoint() {
            let ok = url::Url::parse(endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            anyhow::ensure!(
                ok,
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL, e.g. http://localhost:4318"
            );
        }
        if let Some(f) = &self.log_format {
            anyhow::ensure!(
                f == "json" || f == "pretty",
                "LOG_FORMAT must be `json` or `pretty`"
            );
        }
        anyhow::ensure!(
            self.plugin_memory_total_mb >= self.plugin_memory_mb,
            "PLUGIN_MEMORY_TOTAL_MB must be at least PLUGIN_MEMORY_MB"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.context_lookups_max),
            "CONTEXT_LOOKUPS_MAX must be between 1 and 10000"
        );
        anyhow::ensure!(
            self.ordering_max_waiting >= 1,
            "ORDERING_MAX_WAITING must be at least 1"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.delivery_concurrency),
            "DELIVERY_CONCURRENCY must be between 1 and 10000"
        );
        anyhow::ensure!(
            self.delivery_max_attempts >= 1,
            "DELIVERY_MAX_ATTEMPTS must be at least 1"
        );
        anyhow::ensure!(
            self.delivery_circuit_failures >= 1,
            "DELIVERY_CIRCUIT_FAILURES must be at least 1"
        );
        anyhow::ensure!(
            self.delivery_circuit_cooldown_ms >= 1
                && self.delivery_circuit_max_cooldown_ms >= self.delivery_circuit_cooldown_ms
                && self.delivery_circuit_max_cooldown_ms <= MAX_CIRCUIT_COOLDOWN_MS,
            "DELIVERY_CIRCUIT_COOLDOWN_MS must be at least 1 and at most DELIVERY_CIRCUIT_MAX_COOLDOWN_MS, which is at most {MAX_CIRCUIT_COOLDOWN_MS} (a day)"
        );
        self.trusted_proxy_nets()?;
        for (n, secret) in self.secrets().iter().enumerate() {
            check_secret("HMAC_SECRET", n, self.secrets().len(), secret)?;
        }
        if let Some(token) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            check_secret("ADMIN_TOKEN", 0, 1, token)?;
        }
        Ok(())
    }

    /// The networks whose `X-Forwarded-For` is trusted (`TRUSTED_PROXIES`).
    pub fn trusted_proxy_nets(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "TRUSTED_PROXIES: {s:?} is neither an IP address nor a CIDR block"
                        )
                    })
            })
            .collect()
    }

    /// True when the embedded store is the backend (no Redis, no MongoDB configured).
    pub fn embedded(&self) -> bool {
        matches!(self.backend(), Ok(Backend::Embedded { .. }))
    }

    /// The backend these settings choose: Redis + MongoDB, or the embedded store.
    pub fn backend(&self) -> anyhow::Result<Backend> {
        let redis = self.redis_url.clone().map(|url| RedisQueueConfig {
            url,
            prefix: self.queue_prefix.clone(),
            lane: Lane::Events,
            max_depth: self.queue_max_depth,
            dlq_max_depth: self.dlq_max_depth,
            command_timeout: Duration::from_millis(self.redis_timeout_ms),
            cluster: self.redis_cluster,
            partitions: self.queue_partitions,
            min_replicas_ack: self.redis_min_replicas_ack,
        });
        let mongo = self.mongo_url.clone().map(|url| MongoConfig {
            url,
            database: self.mongo_database.clone(),
            timeout: Duration::from_secs(5),
            ttl: self.event_ttl(),
        });
        let limits = Limits {
            max_depth: self.queue_max_depth,
            dlq_max_depth: self.dlq_max_depth,
        };
        Backend::from_urls(
            redis,
            mongo,
            self.data_dir.clone(),
            limits,
            self.event_ttl(),
        )
        .map_err(anyhow::Error::msg)
    }

    /// The active HMAC secrets.
    pub fn secrets(&self) -> Vec<String> {
        self.hmac_secret
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// How long event records are kept (`EVENT_TTL_DAYS`; `None` = forever).
    pub fn event_ttl(&self) -> Option<Duration> {
        (self.event_ttl_days > 0).then(|| Duration::from_secs(self.event_ttl_days * 86_400))
    }

    /// How long a claim holds an event.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.unwrap_or(self.plugin_timeout_ms + 20_000))
    }

    /// The retry schedule.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_retry_attempts,
            base: Duration::from_millis(self.retry_base_ms),
            factor: self.retry_factor,
            cap: Duration::from_millis(self.retry_cap_ms),
            jitter: self.retry_jitter,
        }
    }

    /// How the delivery pool works (`consumer`: this gateway's consumer name).
    pub fn delivery_settings(&self, consumer: String) -> switchyard_delivery::DeliverySettings {
        switchyard_delivery::DeliverySettings {
            consumer,
            concurrency: self.delivery_concurrency as usize,
            visibility_timeout: Duration::from_millis(self.visibility_timeout_ms),
            retry: RetryPolicy {
                max_attempts: self.delivery_max_attempts,
                ..self.retry_policy()
            },
            retry_after_max: Duration::from_millis(self.delivery_retry_after_max_ms),
            max_wait: Duration::from_millis(self.delivery_max_wait_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }

    /// When a destination's circuit opens, and for how long.
    pub fn breaker_settings(&self) -> switchyard_delivery::BreakerSettings {
        switchyard_delivery::BreakerSettings {
            failures: self.delivery_circuit_failures,
            cooldown: Duration::from_millis(self.delivery_circuit_cooldown_ms),
            max_cooldown: Duration::from_millis(self.delivery_circuit_max_cooldown_ms),
        }
    }

    /// The plugin sandbox limits these settings describe.
    pub fn plugin_limits(&self) -> switchyard_runtime::Limits {
        switchyard_runtime::Limits {
            call_timeout: Duration::from_millis(self.plugin_timeout_ms),
            memory_bytes: self.plugin_memory_mb << 20,
            memory_total_bytes: self.plugin_memory_total_mb << 20,
            context_lookups: self.context_lookups_max,
            max_concurrent_calls: self.queue_concurrency,
            side_calls: self.side_calls_max,
            ..switchyard_runtime::Limits::default()
        }
    }

    /// When a newly swapped plugin version is rolled back automatically.
    pub fn rollout_policy(&self) -> RolloutPolicy {
        RolloutPolicy {
            window: Duration::from_millis(self.rollback_window_ms),
            min_calls: self.rollback_min_calls,
            max_failure_rate: self.rollback_max_failure_rate,
            shadow_sample_rate: self.shadow_sample_rate,
            count_route_errors: self.rollback_count_route_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(secret: &str) -> Config {
        Config {
            hmac_secret: secret.into(),
            ..Config::default()
        }
    }

    fn refusal(config: &Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn placeholders_and_short_secrets_are_refused_with_what_to_set() {
        for placeholder in [
            "change-me",
            "CHANGE-ME",
            "secret",
            "Secret",
            "changeme",
            "test",
        ] {
            let e = refusal(&with_secret(placeholder));
            assert!(
                e.contains("placeholder") && e.contains("openssl rand"),
                "{e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = refusal(&with_secret("short-secret"));
        assert!(e.contains("12 bytes") && e.contains("HMAC_SECRET"), "{e}");
        // Every secret of a rotation list is checked, and the message says which one.
        let e = refusal(&with_secret("a-long-enough-secret-1,tiny"));
        assert!(e.contains("secret 2 of 2"), "{e}");
        assert!(
            with_secret("a-long-enough-secret-1,another-long-secret")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn tracing_settings_are_checked_and_an_empty_endpoint_is_off() {
        let base = with_secret("a-long-enough-secret-1");
        let with = |f: &dyn Fn(&mut Config)| {
            let mut c = base.clone();
            f(&mut c);
            c
        };
        let empty = with(&|c| c.otel_exporter_otlp_endpoint = Some(" ".into()));
        assert!(empty.validate().is_ok() && empty.otlp_endpoint().is_none());
        let on = with(&|c| c.otel_exporter_otlp_endpoint = Some("http://collector:4318".into()));
        assert!(on.validate().is_ok());
        assert_eq!(on.otlp_endpoint(), Some("http://collector:4318"));
        let e = refusal(&with(&|c| {
            c.otel_exporter_otlp_endpoint = Some("collector:4318".into())
        }));
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let e = refusal(&with(&|c| c.otel_exporter_otlp_protocol = "grpc".into()));
        assert!(e.contains("gRPC is not built in"), "{e}");
        let e = refusal(&with(&|c| c.otel_traces_sampler_arg = 1.5));
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn whsec_keys_are_measured_after_decoding() {
        use base64::Engine as _;
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        // 12 bytes encode to 16 characters: long as text, short as a key.
        let e = refusal(&with_secret(&format!("whsec_{}", b64(12))));
        assert!(e.contains("12 bytes"), "{e}");
        assert!(
            with_secret(&format!("whsec_{}", b64(24)))
                .validate()
                .is_ok()
        );
        assert!(refusal(&with_secret("whsec_%%%")).contains("not valid base64"));
    }

    #[test]
    fn a_prefix_cannot_name_another_deployment_s_partition() {
        let ok = with_secret("a-long-enough-secret-1");
        assert!(ok.validate().is_ok(), "the default prefix");
        for bad in ["team.1", "a{b}", ""] {
            let config = Config {
                queue_prefix: bad.into(),
                ..ok.clone()
            };
            assert!(refusal(&config).contains("QUEUE_PREFIX"), "{bad:?}");
        }
        let config = Config {
            queue_partitions: 0,
            ..ok.clone()
        };
        assert!(refusal(&config).contains("QUEUE_PARTITIONS"));
    }

    #[test]
    fn the_admin_token_follows_the_same_rule() {
        let config = Config {
            admin_token: Some("admin".into()),
            ..with_secret("a-long-enough-secret-1")
        };
        assert!(refusal(&config).contains("ADMIN_TOKEN"));
        // Unset (or empty) is allowed: the admin endpoints then answer 401.
        let config = Config {
            admin_token: Some(String::new()),
            ..with_secret("a-long-enough-secret-1")
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks() {
        let config = Config {
            trusted_proxies: "127.0.0.1, 10.0.0.0/8,::1".into(),
            ..Config::default()
        };
        assert_eq!(config.trusted_proxy_nets().unwrap().len(), 3);
        let config = Config {
            trusted_proxies: "lb.internal".into(),
            ..Config::default()
        };
        assert!(refusal(&config).contains("TRUSTED_PROXIES"));
    }
}
