//! Real plugins built from `plugins/`, scratch plugin directories, and a plugin host over one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchyard_model::routing::RouteRequest;
use switchyard_runtime::manifest::MANIFEST_FILE;
use switchyard_runtime::{Limits, Plugins, Sandbox, SharedContext};

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
    pub async fn host(&self, limits: Limits, context: SharedContext) -> Plugins {
        let host = Plugins::new(
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
    Arc::new(switchyard_runtime::NoContext)
}
