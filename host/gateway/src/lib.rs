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
//! | [`http`] | the router and handlers: ingestion, event status, admin, rollout; auth, bodies, errors, signatures, client addresses; the OpenAPI description |
//! | [`worker`] | the worker pool; `worker/settle`: one delivery's claim → route → settle |
//! | [`ordering`] | per-key ordering of deliveries |
//! | [`live_state`] | the state store as the plugins' read-only `context` |
//! | [`metrics`] | the Prometheus recorder and the gateway's series |
//! | [`logs`] | the log subscriber (JSON or compact), with the span exporter when traces are on |
//! | [`telemetry`] | OpenTelemetry: the OTLP span exporter, the spans of an event |
//! | `faults` | crash points for fault-injection tests (the `fault-injection` feature) |
//! | `bundled` | the plugins built into the binary, installed into an empty plugins directory |

mod bundled;
pub mod config;
mod faults;
pub mod http;
pub mod live_state;
pub mod logs;
pub mod metrics;
pub mod ordering;
pub mod telemetry;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use switchyard_delivery::{DeliveryPool, DeliveryStats, Destinations};
use switchyard_runtime::version::short_version;
use switchyard_runtime::{Plugins, Sandbox};
use switchyard_stores::Stores;
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
    let (queue, state, backend) = (
        stores.queue.clone(),
        stores.state.clone(),
        stores.name.clone(),
    );
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
    let destinations = Arc::new(Destinations::new(config.breaker_settings()));
    sync_destinations(&plugins, &destinations);
    let destinations_task = tokio::spawn(keep_destinations(
        plugins.clone(),
        destinations.clone(),
        shutdown.clone(),
    ));
    let workers = worker::Workers::new(
        worker::WorkerParts {
            stores: stores.clone(),
            plugins: plugins.clone(),
            destinations: destinations.clone(),
        },
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
    let delivery_stats = Arc::new(DeliveryStats::default());
    let delivery = DeliveryPool::new(
        stores.deliveries.clone(),
        state.clone(),
        destinations.clone(),
        config.delivery_settings(consumer.clone()),
        delivery_stats.clone(),
    );
    let workers_stop = CancellationToken::new();
    let workers_task = config
        .workers
        .then(|| tokio::spawn(workers.run(workers_stop.clone())));
    let delivery_task = config
        .workers
        .then(|| tokio::spawn(delivery.run(workers_stop.clone())));

    let verifier = http::signature::Verifier::new(
        &secrets,
        Duration::from_secs(config.signature_tolerance_secs),
    )
    .map_err(anyhow::Error::msg)?
    .timestamped_only(config.require_timestamped_signatures);
    let housekeeping = tokio::spawn(housekeeping(stores.clone(), shutdown.clone()));
    let backlog = tokio::spawn(measure_backlog(
        stores.deliveries.clone(),
        delivery_stats.clone(),
        shutdown.clone(),
    ));
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
            delivery_max_depth: config.delivery_max_depth,
        }),
        admin_token: admin_token.map(Arc::from),
        worker_stats,
        deliveries: stores.deliveries.clone(),
        destinations,
        delivery_stats,
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
    for task in [workers_task, delivery_task].into_iter().flatten() {
        let _ = task.await;
    }
    shutdown.cancel();
    let _ = watcher.await;
    let _ = housekeeping.await;
    let _ = backlog.await;
    let _ = destinations_task.await;
    tracing::info!("switchyard stopped");
    Ok(())
}

/// How often the stores do their housekeeping (expired replay guards and records).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// Runs the stores' housekeeping until `stop` is cancelled.
async fn housekeeping(stores: Stores, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
        }
        let now = switchyard_model::clock::now_ms();
        for (lane, queue) in [
            ("events", &stores.queue),
            ("deliveries", &stores.deliveries),
        ] {
            if let Err(e) = queue.maintain(now).await {
                tracing::warn!(error = %e, lane, "queue housekeeping failed; retrying later");
            }
        }
        if let Err(e) = stores.state.maintain(now).await {
            tracing::warn!(error = %e, "state store housekeeping failed; retrying later");
        }
    }
}

/// How often the deliveries backlog is measured for `DELIVERY_MAX_DEPTH`.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Measures the deliveries lane's backlog (ready and delayed) until `stop`; ingestion holds it
/// against `DELIVERY_MAX_DEPTH`. A failed measure keeps the last one.
async fn measure_backlog(
    deliveries: Arc<dyn switchyard_stores::queue::Queue>,
    stats: Arc<DeliveryStats>,
    stop: CancellationToken,
) {
    loop {
        match deliveries.stats().await {
            Ok(q) => stats
                .backlog
                .store(q.ready + q.delayed, std::sync::atomic::Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "cannot measure the deliveries backlog"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}

/// How often the destinations follow the manifest.
const DESTINATIONS_EVERY: Duration = Duration::from_millis(200);

/// Applies the manifest's `[destinations]` if it changed (a generation compare when it did
/// not); a table that does not parse leaves the destinations in force and is logged (once per
/// manifest). The workers call it too, before writing an outbox, so that a destination added in
/// the same manifest edit as the routing that uses it is owed from the first event.
pub(crate) fn sync_destinations(plugins: &Plugins, destinations: &Destinations) {
    let (generation, table) = plugins.destinations();
    if let Err(e) = destinations.apply(generation, &table) {
        tracing::error!(error = %e, "destinations not applied: the previous ones stay in force");
    }
}

/// Keeps the destinations in step with the manifest until `stop`.
async fn keep_destinations(
    plugins: Plugins,
    destinations: Arc<Destinations>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DESTINATIONS_EVERY) => {}
        }
        sync_destinations(&plugins, &destinations);
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
