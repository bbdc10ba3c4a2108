//! Switchyard: an event gateway whose routing logic is a hot-swappable WebAssembly component.
//!
//! `main.rs` parses the command line and calls [`run`]; tests call the same [`run`] on
//! `127.0.0.1:0`.

pub mod bench;
pub mod cli;
pub mod config;
pub mod http;
pub mod plugin;
pub mod telemetry;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use plugin::{NoContext, PluginHost, Sandbox};

/// Runs the gateway on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(config.plugin_limits())?;
    let plugins = PluginHost::new(
        sandbox,
        Some(config.plugins_dir.clone()),
        Arc::new(NoContext),
    );
    plugins.load_dir().await?;
    let loaded: Vec<String> = plugins.loaded().iter().map(|p| p.name.clone()).collect();
    let watcher = plugin::watch::spawn(plugins.clone(), shutdown.clone())?;
    tracing::info!(
        addr = %listener.local_addr()?,
        plugins_dir = %config.plugins_dir.display(),
        plugins = ?loaded,
        "switchyard listening"
    );
    let app = http::router(http::AppState { plugins });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    let _ = watcher.await;
    tracing::info!("switchyard stopped");
    Ok(())
}
