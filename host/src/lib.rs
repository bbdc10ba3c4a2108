//! Switchyard: an event gateway whose routing logic is a hot-swappable WebAssembly component.
//!
//! `main.rs` parses the command line and calls [`run`]; tests call the same [`run`] on
//! `127.0.0.1:0`.

pub mod bench;
mod bundled;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod event;
pub mod http;
pub mod load;
pub mod metrics;
pub mod ordering;
pub mod plugin;
pub mod queue;
pub mod retry;
pub mod state;
pub mod telemetry;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use plugin::{PluginHost, Sandbox};
use queue::Queue;
use state::StateStore;

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
    let (queue, state, backend) = open_backends(&config).await?;
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
    let context = Arc::new(state::StoreContext(state.clone()));
    let plugins = PluginHost::with_policy(
        sandbox,
        Some(config.plugins_dir.clone()),
        context,
        config.rollout_policy(),
    );
    plugins.load_dir().await?;
    let loaded: Vec<String> = plugins
        .loaded()
        .iter()
        .map(|p| format!("{}@{}", p.name, plugin::short_version(&p.version)))
        .collect();
    let watcher = plugin::watch::spawn(plugins.clone(), shutdown.clone())?;

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
        let now = worker::now_ms();
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

/// The queue and state store the configuration names: Redis + MongoDB, or the embedded store.
async fn open_backends(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Queue>, Arc<dyn StateStore>, String)> {
    if config.embedded() {
        let db = embedded::EmbeddedDb::open(&config.data_dir)?;
        let queue = queue::embedded::EmbeddedQueue::open(
            db.clone(),
            config.queue_max_depth,
            config.dlq_max_depth,
        )?;
        let backend = format!(
            "embedded ({})",
            config.data_dir.join(embedded::DB_FILE).display()
        );
        return Ok((
            Arc::new(queue),
            Arc::new(state::embedded::EmbeddedState::new(db, config.event_ttl())),
            backend,
        ));
    }
    let (Some(redis_url), Some(mongo_url)) = (config.redis_url.clone(), config.mongo_url.clone())
    else {
        anyhow::bail!("set both REDIS_URL and MONGO_URL, or neither");
    };
    let queue = queue::redis::RedisQueue::connect(queue::redis::RedisQueueConfig {
        url: redis_url,
        prefix: config.queue_prefix.clone(),
        max_depth: config.queue_max_depth,
        dlq_max_depth: config.dlq_max_depth,
        command_timeout: Duration::from_millis(config.redis_timeout_ms),
    })
    .await
    .context("cannot connect to Redis (REDIS_URL)")?;
    let state = state::mongo::MongoStore::connect(state::mongo::MongoConfig {
        url: mongo_url,
        database: config.mongo_database.clone(),
        timeout: Duration::from_secs(5),
        ttl: config.event_ttl(),
    })
    .await
    .context("cannot connect to MongoDB (MONGO_URL)")?;
    Ok((
        Arc::new(queue),
        Arc::new(state),
        "redis+mongodb".to_string(),
    ))
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
