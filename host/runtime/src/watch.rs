//! Live reload: watches the plugins directory and hands settled changes to the host.
//!
//! `notify` reports our own reads too (`Access(Open)`, `Close(Read)`), so only creations, data
//! and name changes, removals and `Close(Write)` count. A path is reloaded once it has been quiet
//! for [`DEBOUNCE`], so a file copied in several writes is compiled once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Plugins;

/// Quiet time after the last change of a file before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

/// Starts watching the host's plugins directory; runs until `stop` is cancelled.
pub fn spawn(
    host: Plugins,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let dir = host
        .dir()
        .ok_or_else(|| anyhow::anyhow!("the plugin host has no directory to watch"))?
        .to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if relevant(&event.kind) => {
                for p in event.paths {
                    let _ = tx.send(p);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "plugin directory watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching plugins directory for changes");

    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropped (and the OS watch removed) when the task ends
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            let next = pending.values().min().copied();
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = rx.recv() => match changed {
                    Some(path) => { pending.insert(path, Instant::now() + DEBOUNCE); }
                    None => break,
                },
                _ = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {
                    let now = Instant::now();
                    let due: Vec<PathBuf> = pending.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
                    for path in due {
                        pending.remove(&path);
                        host.reload_path(&path).await;
                    }
                }
            }
        }
    }))
}
