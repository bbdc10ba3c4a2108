//! The registry of loaded plugins and the routing entry point.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{MANIFEST_FILE, Manifest};
use super::sandbox::{CallContext, Prepared, Sandbox, short};
use super::{CANARY_EVENT_TYPE, Decision, PluginError, RouteRequest, SharedContext};

/// Which plugin version handled a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginId {
    pub name: String,
    /// sha256 of the `.wasm` file, hex.
    pub version: String,
}

/// The result of one routing call.
#[derive(Debug, Clone)]
pub struct RouteOutcome {
    /// The plugin version that ran, if one was selected.
    pub plugin: Option<PluginId>,
    pub result: Result<Decision, PluginError>,
}

/// Public description of a loaded plugin.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedInfo {
    pub name: String,
    pub version: String,
    pub loaded_at_ms: u64,
    pub size_bytes: u64,
    pub path: PathBuf,
}

/// A version that was refused, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub name: String,
    pub version: Option<String>,
    pub at_ms: u64,
    pub reason: String,
}

struct Loaded {
    info: LoadedInfo,
    prepared: Prepared,
}

#[derive(Default)]
struct Registry {
    plugins: BTreeMap<String, Arc<Loaded>>,
    manifest: Manifest,
    /// The default plugin, derived from the manifest and the loaded names at each swap.
    default: Option<String>,
}

impl Registry {
    fn new(plugins: BTreeMap<String, Arc<Loaded>>, manifest: Manifest) -> Arc<Self> {
        let names: Vec<&str> = plugins.keys().map(String::as_str).collect();
        let default = manifest.default_plugin(&names).map(str::to_string);
        Arc::new(Registry {
            plugins,
            manifest,
            default,
        })
    }

    /// The loaded plugin that routes `event_type`.
    fn select(&self, event_type: &str) -> Option<&Arc<Loaded>> {
        self.manifest
            .routed_to(event_type)
            .or(self.default.as_deref())
            .and_then(|n| self.plugins.get(n))
    }
}

/// The loaded plugins of one directory and the sandbox they run in. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    sandbox: Sandbox,
    dir: Option<PathBuf>,
    context: SharedContext,
    registry: ArcSwap<Registry>,
    /// Serialises loads so that two reloads of one file cannot interleave their swaps.
    load_lock: tokio::sync::Mutex<()>,
    rejections: Mutex<BTreeMap<String, Rejection>>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The plugin name of a file: its stem, for `.wasm` files.
pub(crate) fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    Some(path.file_stem()?.to_str()?.to_string())
}

impl PluginHost {
    /// A host with no plugins loaded. `dir` is the plugins directory (for [`Self::load_dir`] and
    /// the watcher); `context` serves the plugins' `context` lookups.
    pub fn new(sandbox: Sandbox, dir: Option<PathBuf>, context: SharedContext) -> Self {
        PluginHost {
            inner: Arc::new(Inner {
                sandbox,
                dir,
                context,
                registry: ArcSwap::from_pointee(Registry::default()),
                load_lock: tokio::sync::Mutex::new(()),
                rejections: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// Loads the manifest and every `.wasm` file of the plugins directory. Files that fail are
    /// rejected (logged, listed in [`Self::rejections`]); the others serve.
    pub async fn load_dir(&self) -> anyhow::Result<()> {
        let Some(dir) = self.inner.dir.clone() else {
            return Ok(());
        };
        self.reload_manifest().await;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("cannot read plugins directory {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| plugin_name(p).is_some())
            .collect();
        files.sort();
        for f in files {
            let _ = self.load_file(&f).await;
        }
        Ok(())
    }

    /// Re-reads `switchyard.toml`. A manifest that does not parse is rejected; the previous one
    /// stays in force.
    pub async fn reload_manifest(&self) {
        let Some(dir) = &self.inner.dir else { return };
        let path = dir.join(MANIFEST_FILE);
        let manifest = match std::fs::read_to_string(&path) {
            Ok(text) => match Manifest::parse(&text) {
                Ok(m) => m,
                Err(reason) => {
                    self.reject(MANIFEST_FILE, None, format!("invalid manifest: {reason}"));
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => {
                self.reject(MANIFEST_FILE, None, format!("cannot read manifest: {e}"));
                return;
            }
        };
        let _guard = self.inner.load_lock.lock().await;
        self.inner
            .registry
            .rcu(|r| Registry::new(r.plugins.clone(), manifest.clone()));
        tracing::info!(path = %path.display(), "plugin manifest loaded");
    }

    /// Reacts to a change of `path` inside the plugins directory: (re)loads a `.wasm` file,
    /// unloads a removed one, re-reads the manifest.
    pub async fn reload_path(&self, path: &Path) {
        if path.file_name().is_some_and(|n| n == MANIFEST_FILE) {
            self.reload_manifest().await;
            return;
        }
        let Some(name) = plugin_name(path) else {
            return;
        };
        if path.exists() {
            let _ = self.load_file(path).await;
        } else {
            self.unload(&name).await;
        }
    }

    /// Removes a plugin. Calls already running finish on it.
    pub async fn unload(&self, name: &str) {
        let _guard = self.inner.load_lock.lock().await;
        if self.inner.registry.load().plugins.contains_key(name) {
            self.inner.registry.rcu(|r| {
                let mut plugins = r.plugins.clone();
                plugins.remove(name);
                Registry::new(plugins, r.manifest.clone())
            });
            tracing::info!(plugin = name, "plugin unloaded (file removed)");
        }
    }

    /// Compiles, type-checks and canary-calls one `.wasm` file, then swaps it in under its file
    /// stem. On any failure the previous version (if any) keeps serving and the reason is
    /// returned, logged and recorded.
    pub async fn load_file(&self, path: &Path) -> Result<LoadedInfo, String> {
        let name =
            plugin_name(path).ok_or_else(|| format!("{} is not a .wasm file", path.display()))?;
        let started = Instant::now();
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) => {
                return Err(self.reject(
                    &name,
                    None,
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        let version = hex::encode(Sha256::digest(&bytes));
        let _guard = self.inner.load_lock.lock().await;
        if let Some(current) = self.inner.registry.load().plugins.get(&name)
            && current.info.version == version
        {
            return Ok(current.info.clone());
        }
        let sandbox = self.inner.sandbox.clone();
        let prepared = match tokio::task::spawn_blocking(move || sandbox.prepare(&bytes)).await {
            Ok(Ok(p)) => p,
            Ok(Err(reason)) => return Err(self.reject(&name, Some(&version), reason)),
            Err(e) => {
                return Err(self.reject(
                    &name,
                    Some(&version),
                    format!("compilation panicked: {e}"),
                ));
            }
        };
        let config = self.inner.registry.load().manifest.config_for(&name);
        if let Err(e) = self.canary(&name, &version, &prepared, config).await {
            return Err(self.reject(&name, Some(&version), format!("canary call failed: {e}")));
        }
        let info = LoadedInfo {
            name: name.clone(),
            version: version.clone(),
            loaded_at_ms: now_ms(),
            size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            path: path.to_path_buf(),
        };
        let loaded = Arc::new(Loaded {
            info: info.clone(),
            prepared,
        });
        let previous = self
            .inner
            .registry
            .load()
            .plugins
            .get(&name)
            .map(|p| p.info.version.clone());
        self.inner.registry.rcu(|r| {
            let mut plugins = r.plugins.clone();
            plugins.insert(name.clone(), loaded.clone());
            Registry::new(plugins, r.manifest.clone())
        });
        self.inner
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        crate::metrics::plugin_reload(&name, "loaded");
        tracing::info!(
            plugin = %name, version = short(&version),
            previous = previous.as_deref().map(short).unwrap_or("-"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        Ok(info)
    }

    async fn canary(
        &self,
        name: &str,
        version: &str,
        prepared: &Prepared,
        config: Arc<BTreeMap<String, String>>,
    ) -> Result<(), PluginError> {
        let request = RouteRequest {
            event_id: format!("canary-{}", short(version)),
            event_type: CANARY_EVENT_TYPE.into(),
            correlation_id: format!("canary-{}", short(version)),
            payload: "{}".into(),
            received_at_ms: now_ms(),
            attempt: 1,
        };
        let call = self.call_context(name, version, &request, config);
        match self.inner.sandbox.call(prepared, call, &request).await {
            Ok(_) | Err(PluginError::Transient(_) | PluginError::Permanent(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn call_context(
        &self,
        name: &str,
        version: &str,
        request: &RouteRequest,
        config: Arc<BTreeMap<String, String>>,
    ) -> CallContext {
        CallContext {
            plugin: name.into(),
            version: version.into(),
            correlation_id: request.correlation_id.clone(),
            event_id: request.event_id.clone(),
            config,
            context: self.inner.context.clone(),
        }
    }

    fn reject(&self, name: &str, version: Option<&str>, reason: String) -> String {
        crate::metrics::plugin_reload(name, "rejected");
        tracing::warn!(plugin = name, version = version.map(short).unwrap_or("-"), %reason,
            "plugin version rejected; the previous version (if any) keeps serving");
        let rejection = Rejection {
            name: name.to_string(),
            version: version.map(str::to_string),
            at_ms: now_ms(),
            reason: reason.clone(),
        };
        self.inner
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), rejection);
        reason
    }

    /// Routes one event with the plugin its type maps to.
    pub async fn route(&self, request: &RouteRequest) -> RouteOutcome {
        let registry = self.inner.registry.load_full();
        let Some(plugin) = registry.select(&request.event_type).cloned() else {
            return RouteOutcome {
                plugin: None,
                result: Err(PluginError::NoPlugin(request.event_type.clone())),
            };
        };
        let config = registry.manifest.config_for(&plugin.info.name);
        drop(registry);
        let call = self.call_context(&plugin.info.name, &plugin.info.version, request, config);
        let started = Instant::now();
        let result = self
            .inner
            .sandbox
            .call(&plugin.prepared, call, request)
            .await;
        let kind = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.kind());
        crate::metrics::plugin_call(
            &plugin.info.name,
            &plugin.info.version,
            kind,
            started.elapsed().as_secs_f64(),
        );
        RouteOutcome {
            plugin: Some(PluginId {
                name: plugin.info.name.clone(),
                version: plugin.info.version.clone(),
            }),
            result,
        }
    }

    /// The loaded plugins, by name.
    pub fn loaded(&self) -> Vec<LoadedInfo> {
        self.inner
            .registry
            .load()
            .plugins
            .values()
            .map(|p| p.info.clone())
            .collect()
    }

    /// The version currently serving `name`.
    pub fn version_of(&self, name: &str) -> Option<String> {
        self.inner
            .registry
            .load()
            .plugins
            .get(name)
            .map(|p| p.info.version.clone())
    }

    /// The last rejection per plugin name (cleared when a version of it loads).
    pub fn rejections(&self) -> Vec<Rejection> {
        self.inner
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The event-type mapping in force: exact types, prefixes (with `*`) and the default.
    pub fn mapping(&self) -> (BTreeMap<String, String>, Option<String>) {
        let registry = self.inner.registry.load();
        let mut routes = registry.manifest.exact.clone();
        for (prefix, plugin) in &registry.manifest.prefixes {
            routes.insert(format!("{prefix}*"), plugin.clone());
        }
        (routes, registry.default.clone())
    }

    /// True when at least one plugin is loaded and the default (if named) is among them.
    pub fn is_ready(&self) -> bool {
        !self.inner.registry.load().plugins.is_empty()
    }
}
