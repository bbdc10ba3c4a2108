//! Switchyard's gateway: the configuration, [`run`], the worker pool, per-key ordering, the HTTP
//! API, metrics and logs. The plugin runtime (`switchyard-runtime`) and the stores
//! (`switchyard-stores`) are crates of their own; this one puts them to work.
//!
//! The `switchyard` binary parses its command line and calls [`run`]; tests call the same
//! [`run`] on `127.0.0.1:0`.
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | every setting: defaults, file, environment; validation; the backend choice |
//! | [`http`] | the router and handlers: ingestion, event status, admin, rollout; auth, bodies, errors, signatures, client addresses |
//! | [`worker`] | the worker pool; `worker/settle`: one delivery's claim → route → settle |
//! | [`ordering`] | per-key ordering of deliveries |
//! | [`live_state`] | the state store as the plugins' read-only `context` |
//! | [`metrics`] | the Prometheus recorder and the gateway's series |
//! | [`logs`] | the log subscriber (JSON or compact) |
//! | `bundled` | the plugins built into the binary, installed into an empty plugins directory |

mod bundled;
pub mod config;
pub mod http;
pub mod live_state;
pub mod logs;
pub mod metrics;
pub mod ordering;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use switchyard_runtime::version::short_version;
use switchyard_runtime::{Plugins, Sandbox};
use switchyard_stores::queue::Queue;
use switchyard_stores::state::StateStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs the gateway on `listener` until `shutdown` is cancelled: stops accepting, drains routes
/// in flight within the grace period, and leaves the rest queued.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    metrics::handle();
    let addr = listener.local_addr()?;
    let stores = config.backend()?.open().await?;
    let (queue, state, backend) = (stores.queue, stores.state, stores.name);
    let secrets = match config.secrets() {
        s if !s.is_empty() => s,
        _ if config.embedded() => vec![generated_secret(&config.data_dir, "hmac-secret")?],
        _ => anyhow::bail!("HMAC_SECRET is required (the producers' signing secret)"),
    };
    let admin_token = match config.admin_token.clone().filter(|t| !t.is_empty()) {
        Some(t) => Some(t),
        None if config.embedded() => Some(generated_secret(&config.data_dir, "admin-token")?),
        None => None,
    };
    if bundled::install_if_empty(&config.plugins_dir).with_context(|| {
        format!(
            "cannot prepare plugins directory {}",
            config.plugins_dir.display()
        )
    })? {
        tracing::info!(dir = %config.plugins_dir.display(), "plugins directory was empty: installed the bundled plugins");
    }

    let sandbox = Sandbox::new(config.plugin_limits())?;
    let context = Arc::new(live_state::StoreContext(state.clone()));
    let plugins = Plugins::with_policy(
        sandbox,
        Some(config.plugins_dir.clone()),
        context,
        config.rollout_policy(),
    );
    plugins.load_dir().await?;
    let loaded: Vec<String> = plugins
        .loaded()
        .iter()
        .map(|p| format!("{}@{}", p.name, short_version(&p.version)))
        .collect();
    let watcher = switchyard_runtime::watch::spawn(plugins.clone(), shutdown.clone())?;

    let worker_stats = Arc::new(worker::WorkerStats::default());
    let consumer = config
        .worker_id
        .clone()
        .unwrap_or_else(|| default_worker_id(addr));
    let workers = worker::Workers::new(
        queue.clone(),
        state.clone(),
        plugins.clone(),
        worker::WorkerSettings {
            consumer: consumer.clone(),
            concurrency: config.queue_concurrency as usize,
            visibility_timeout: Duration::from_millis(config.visibility_timeout_ms),
            lease: config.lease(),
            rate_limit: (config.worker_rate_limit > 0).then_some(config.worker_rate_limit),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            backend_retry_delay: Duration::from_millis(config.backend_retry_ms),
            retry: config.retry_policy(),
            ordering_max_waiting: config.ordering_max_waiting as usize,
            host_failure_max_defer: Duration::from_millis(config.host_failure_max_defer_ms),
        },
        worker_stats.clone(),
    );
    let workers_stop = CancellationToken::new();
    let workers_task = config
        .workers
        .then(|| tokio::spawn(workers.run(workers_stop.clone())));

    let verifier = http::signature::Verifier::new(
        &secrets,
        Duration::from_secs(config.signature_tolerance_secs),
    )
    .map_err(anyhow::Error::msg)?
    .timestamped_only(config.require_timestamped_signatures);
    let housekeeping = tokio::spawn(housekeeping(queue.clone(), state.clone(), shutdown.clone()));
    let app = http::router(http::AppState {
        plugins,
        queue,
        state,
        ingest: Arc::new(http::IngestSettings {
            verifier,
            body_limit: config.body_limit_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            enqueue_timeout: Duration::from_millis(config.redis_timeout_ms),
            rate_limit: config.rate_limit_max_requests,
            rate_window: Duration::from_millis(config.rate_limit_window_ms),
            trusted_proxies: http::client::TrustedProxies::new(config.trusted_proxy_nets()?),
        }),
        admin_token: admin_token.map(Arc::from),
        worker_stats,
        dlq_max_depth: config.dlq_max_depth,
    });
    tracing::info!(
        %addr,
        backend,
        consumer = %consumer,
        workers = config.workers,
        plugins_dir = %config.plugins_dir.display(),
        plugins = ?loaded,
        "switchyard listening"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
    .await?;
    tracing::info!("stopped accepting requests; draining workers");
    workers_stop.cancel();
    if let Some(task) = workers_task {
        let _ = task.await;
    }
    shutdown.cancel();
    let _ = watcher.await;
    let _ = housekeeping.await;
    tracing::info!("switchyard stopped");
    Ok(())
}

/// How often the stores do their housekeeping (expired replay guards and records).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// Runs the stores' housekeeping until `stop` is cancelled.
async fn housekeeping(queue: Arc<dyn Queue>, state: Arc<dyn StateStore>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
        }
        let now = switchyard_model::clock::now_ms();
        if let Err(e) = queue.maintain(now).await {
            tracing::warn!(error = %e, "queue housekeeping failed; retrying later");
        }
        if let Err(e) = state.maintain(now).await {
            tracing::warn!(error = %e, "state store housekeeping failed; retrying later");
        }
    }
}

fn default_worker_id(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "switchyard".to_string()
    } else {
        host
    };
    format!("{host}:{}", addr.port())
}

/// A secret kept in `dir/name`, generated (random, 0600) on first use.
fn generated_secret(dir: &std::path::Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_string());
    }
    std::fs::create_dir_all(dir)?;
    let secret = hex::encode(rand::random::<[u8; 24]>());
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(&path)?.write_all(secret.as_bytes())?;
    tracing::warn!(path = %path.display(), "generated {name} (set it in the environment to choose your own)");
    Ok(secret)
}
