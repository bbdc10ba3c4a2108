//! [`Plugins`]: the plugin versions in force, the routing entry point and shadowing. Reading,
//! compiling and canary-checking files live in `files`; promotion, rollback, dry runs and the
//! rollout status in `swap`.

mod files;
mod swap;

pub use swap::{CandidateStatus, PluginStatus, Resolved, RolloutError, Transition, Which};

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use switchyard_model::clock::now_ms;
use switchyard_model::routing::{Decision, PluginId, RouteRequest};

use crate::manifest::Manifest;
use crate::rollout::{Answer, DiffSample, HistoryEntry, RolloutPolicy, ShadowStats, Watch};
use crate::sandbox::{CallContext, Prepared, Sandbox};
use crate::version::short_version as short;
use crate::{LoadError, PluginError, SharedContext};

/// The result of one routing call.
#[derive(Debug, Clone)]
pub struct RouteOutcome {
    /// The plugin version that ran, if one was selected.
    pub plugin: Option<PluginId>,
    pub result: Result<Decision, PluginError>,
}

/// Public description of a loaded plugin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadedInfo {
    pub name: String,
    pub version: String,
    pub loaded_at_ms: u64,
    pub size_bytes: u64,
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// The contract version the component targets: `0.1` or `0.2`.
    pub contract: String,
}

/// A version that was refused, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub name: String,
    pub version: Option<String>,
    pub at_ms: u64,
    pub reason: String,
}

pub(super) struct Loaded {
    pub(super) info: LoadedInfo,
    pub(super) prepared: Prepared,
    /// The component itself, to rewrite the plugin's file on promotion or rollback.
    pub(super) bytes: Arc<[u8]>,
}

impl Loaded {
    /// The same compiled version, as found at `path` now.
    fn at(&self, path: &Path) -> Arc<Loaded> {
        Arc::new(Loaded {
            info: LoadedInfo {
                path: path.to_path_buf(),
                loaded_at_ms: now_ms(),
                ..self.info.clone()
            },
            prepared: self.prepared.clone(),
            bytes: self.bytes.clone(),
        })
    }
}

/// A version shadowing the active one, with its comparison counters.
pub(super) struct Candidate {
    pub(super) loaded: Arc<Loaded>,
    pub(super) stats: Arc<ShadowStats>,
}

#[derive(Default, Clone)]
pub(super) struct Snapshot {
    /// The active version of each plugin: it decides.
    pub(super) plugins: BTreeMap<String, Arc<Loaded>>,
    /// The version each plugin had before its last swap, still compiled.
    pub(super) previous: BTreeMap<String, Arc<Loaded>>,
    pub(super) candidates: BTreeMap<String, Arc<Candidate>>,
    /// Freshly swapped versions under watch for automatic rollback.
    pub(super) watches: BTreeMap<String, Arc<Watch>>,
    manifest: Manifest,
    /// How many manifests were loaded (each load counts, even an identical one).
    manifest_generation: u64,
    /// The default plugin, derived from the manifest and the loaded names at each swap.
    default: Option<String>,
}

impl Snapshot {
    fn derive_default(&mut self) {
        let names: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        self.default = self.manifest.default_plugin(&names).map(str::to_string);
    }

    /// The name of the plugin that routes `event_type`.
    fn name_for(&self, event_type: &str) -> Option<&str> {
        self.manifest
            .routed_to(event_type)
            .or(self.default.as_deref())
    }

    /// The loaded plugin that routes `event_type`.
    fn select(&self, event_type: &str) -> Option<&Arc<Loaded>> {
        self.name_for(event_type).and_then(|n| self.plugins.get(n))
    }
}

/// Compiled versions kept for reuse (a rollback, a promotion by rename, a re-deploy).
const COMPILED_CACHE: usize = 16;

/// The loaded plugins of one directory and the sandbox they run in. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

struct Inner {
    sandbox: Sandbox,
    dir: Option<PathBuf>,
    context: SharedContext,
    policy: RolloutPolicy,
    registry: ArcSwap<Snapshot>,
    /// Serialises loads and swaps so that two changes of one plugin cannot interleave.
    load_lock: tokio::sync::Mutex<()>,
    rejections: Mutex<BTreeMap<String, Rejection>>,
    history: Mutex<BTreeMap<String, VecDeque<HistoryEntry>>>,
    /// Versions rolled back automatically, per plugin: their file is not loaded again.
    blocked: Mutex<BTreeMap<String, Blocked>>,
    /// Recently compiled versions: (plugin, was it a candidate, version).
    compiled: Mutex<VecDeque<(String, bool, Arc<Loaded>)>>,
}

/// A version the watch rolled back, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Blocked {
    pub version: String,
    pub at_ms: u64,
    pub reason: String,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Suffix of a candidate's file stem: `<name>.next.wasm` shadows `<name>.wasm`.
pub const CANDIDATE_SUFFIX: &str = ".next";

/// The plugin name of a file (its stem, without `.next`) and whether it is a candidate.
pub(crate) fn file_role(path: &Path) -> Option<(String, bool)> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    match stem.strip_suffix(CANDIDATE_SUFFIX) {
        Some(name) if !name.is_empty() => Some((name.to_string(), true)),
        _ => Some((stem.to_string(), false)),
    }
}

/// The plugin name of a file: its stem, for `.wasm` files (`x.next.wasm` is a version of `x`).
pub fn plugin_name(path: &Path) -> Option<String> {
    file_role(path).map(|(name, _)| name)
}

impl Plugins {
    /// A host with no plugins loaded. `dir` is the plugins directory (for [`Self::load_dir`] and
    /// the watcher); `context` serves the plugins' `context` lookups.
    pub fn new(sandbox: Sandbox, dir: Option<PathBuf>, context: SharedContext) -> Self {
        Self::with_policy(sandbox, dir, context, RolloutPolicy::default())
    }

    /// Like [`Self::new`], with the automatic-rollback policy `policy`.
    pub fn with_policy(
        sandbox: Sandbox,
        dir: Option<PathBuf>,
        context: SharedContext,
        policy: RolloutPolicy,
    ) -> Self {
        Plugins {
            inner: Arc::new(Inner {
                sandbox,
                dir,
                context,
                policy,
                registry: ArcSwap::from_pointee(Snapshot::default()),
                load_lock: tokio::sync::Mutex::new(()),
                rejections: Mutex::new(BTreeMap::new()),
                history: Mutex::new(BTreeMap::new()),
                blocked: Mutex::new(BTreeMap::new()),
                compiled: Mutex::new(VecDeque::new()),
            }),
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// Applies `change` to a copy of the registry and publishes it. Callers hold `load_lock`.
    fn update(&self, change: impl Fn(&mut Snapshot)) {
        self.inner.registry.rcu(|r| {
            let mut next = Snapshot::clone(r);
            change(&mut next);
            next.derive_default();
            Arc::new(next)
        });
    }

    fn remember_history(&self, name: &str, entry: HistoryEntry) {
        let mut history = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        let list = history.entry(name.to_string()).or_default();
        if list.len() == crate::rollout::HISTORY {
            list.pop_front();
        }
        list.push_back(entry);
    }

    fn call_context(
        &self,
        name: &str,
        version: &str,
        request: &RouteRequest,
        config: Arc<BTreeMap<String, String>>,
        context: Option<SharedContext>,
    ) -> CallContext {
        CallContext {
            plugin: name.into(),
            version: version.into(),
            correlation_id: request.correlation_id.clone(),
            event_id: request.event_id.clone(),
            config,
            context: context.unwrap_or_else(|| self.inner.context.clone()),
            side: false,
        }
    }

    /// Records and logs why a version of `name` was refused; returns the reason.
    fn reject(&self, name: &str, version: Option<&str>, error: LoadError) -> LoadError {
        crate::metrics::plugin_reload(name, "rejected");
        let reason = error.to_string();
        tracing::warn!(plugin = name, version = version.map(short).unwrap_or("-"), %reason,
            "plugin version rejected; the previous version (if any) keeps serving");
        let rejection = Rejection {
            name: name.to_string(),
            version: version.map(str::to_string),
            at_ms: now_ms(),
            reason,
        };
        self.inner
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), rejection);
        error
    }

    /// Routes one event with the plugin its type maps to. When the plugin has a candidate, the
    /// candidate answers the same request afterwards in a side slot (or is skipped when none is
    /// free), and the answers are compared; when the active version is under watch, the call
    /// counts towards its failure rate.
    pub async fn route(&self, request: &RouteRequest) -> RouteOutcome {
        let registry = self.inner.registry.load_full();
        let Some(plugin) = registry.select(&request.event_type).cloned() else {
            return RouteOutcome {
                plugin: None,
                result: Err(PluginError::NoPlugin(request.event_type.clone())),
            };
        };
        let name = plugin.info.name.as_str();
        let config = registry.manifest.config_for(name);
        let shadow = registry
            .candidates
            .get(name)
            .filter(|c| c.loaded.info.version != plugin.info.version)
            .filter(|_| self.inner.policy.samples(&request.event_id))
            .cloned();
        let watch = registry
            .watches
            .get(name)
            .filter(|w| w.version == plugin.info.version)
            .cloned();
        drop(registry);
        let call = self.call_context(name, &plugin.info.version, request, config.clone(), None);
        let started = Instant::now();
        let result = self
            .inner
            .sandbox
            .call(&plugin.prepared, call, request)
            .await;
        let kind = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.kind());
        crate::metrics::plugin_call(
            name,
            &plugin.info.version,
            kind,
            started.elapsed().as_secs_f64(),
        );
        if let Some(reason) = watch.and_then(|w| w.record(&result)) {
            let (host, name, version) =
                (self.clone(), name.to_string(), plugin.info.version.clone());
            tokio::spawn(async move { host.auto_rollback(&name, &version, reason).await });
        }
        if let Some(candidate) = shadow {
            self.shadow(candidate, config, request, Answer::of(&result));
        }
        RouteOutcome {
            plugin: Some(PluginId {
                name: plugin.info.name.clone(),
                version: plugin.info.version.clone(),
            }),
            result,
        }
    }

    /// True when the plugin that routes `event_type` chooses ordering keys (`keyed-router`).
    pub fn is_keyed(&self, event_type: &str) -> bool {
        self.inner
            .registry
            .load()
            .select(event_type)
            .is_some_and(|p| p.prepared.is_keyed())
    }

    /// The ordering key the plugin that routes `request` chooses for it, as (plugin, key);
    /// `None` when it chooses none (or is a plain `router`).
    pub async fn ordering_key(
        &self,
        request: &RouteRequest,
    ) -> Result<Option<(String, String)>, PluginError> {
        let registry = self.inner.registry.load_full();
        let Some(plugin) = registry.select(&request.event_type).cloned() else {
            return Ok(None);
        };
        let name = plugin.info.name.as_str();
        let config = registry.manifest.config_for(name);
        drop(registry);
        let call = self.call_context(name, &plugin.info.version, request, config, None);
        let key = self
            .inner
            .sandbox
            .ordering_key(&plugin.prepared, call, request)
            .await?;
        Ok(key.map(|k| (name.to_string(), k)))
    }

    /// Runs `request` through the candidate in a side slot, after the live call, and counts how
    /// its answer compares with the active one. Never waits: without a free slot it is skipped.
    fn shadow(
        &self,
        candidate: Arc<Candidate>,
        config: Arc<BTreeMap<String, String>>,
        request: &RouteRequest,
        active: Answer,
    ) {
        let name = candidate.loaded.info.name.clone();
        let Some(slot) = self.inner.sandbox.try_side_slot() else {
            candidate.stats.skipped();
            crate::metrics::shadow(&name, "skipped");
            return;
        };
        let (host, request) = (self.clone(), request.clone());
        tokio::spawn(async move {
            let loaded = &candidate.loaded;
            let call = host.call_context(&name, &loaded.info.version, &request, config, None);
            let result = host
                .inner
                .sandbox
                .call_side(&slot, &loaded.prepared, call, &request)
                .await;
            drop(slot);
            // The host could not run the candidate (memory pressure, say): nothing to compare.
            if result.as_ref().is_err_and(PluginError::is_host_side) {
                candidate.stats.skipped();
                crate::metrics::shadow(&name, "skipped");
                return;
            }
            let differed = candidate.stats.compare(DiffSample {
                event_id: request.event_id.clone(),
                event_type: request.event_type.clone(),
                attempt: request.attempt,
                at_ms: now_ms(),
                active,
                candidate: Answer::of(&result),
            });
            crate::metrics::shadow(&name, if differed { "differed" } else { "agreed" });
            if differed {
                tracing::debug!(plugin = %name, event_id = %request.event_id, "shadow decision differs");
            }
        });
    }

    /// The loaded plugins (active versions), by name.
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

    /// The name of the plugin that routes `event_type` now, if any.
    pub fn plugin_for(&self, event_type: &str) -> Option<String> {
        self.inner
            .registry
            .load()
            .name_for(event_type)
            .map(str::to_string)
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

    /// The manifest's `[destinations]` table, with the number of manifests loaded so far (it
    /// changes when the manifest does).
    pub fn destinations(&self) -> (u64, Arc<toml::Table>) {
        let snapshot = self.inner.registry.load();
        (
            snapshot.manifest_generation,
            snapshot.manifest.destinations.clone(),
        )
    }

    /// True when at least one plugin is loaded and the default (if named) is among them.
    pub fn is_ready(&self) -> bool {
        !self.inner.registry.load().plugins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_files_are_versions_of_their_plugin() {
        let role = |p: &str| file_role(Path::new(p));
        assert_eq!(role("/d/router.wasm"), Some(("router".into(), false)));
        assert_eq!(role("/d/router.next.wasm"), Some(("router".into(), true)));
        assert_eq!(role("/d/.next.wasm"), Some((".next".into(), false)));
        assert_eq!(role("/d/router.next"), None);
        assert_eq!(role("/d/.router.wasm.swap"), None);
        assert_eq!(plugin_name(Path::new("a.next.wasm")).as_deref(), Some("a"));
    }
}
