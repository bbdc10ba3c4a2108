//! Loading plugin files: the directory at start-up, single files on change, the manifest;
//! compilation and the canary call; staging candidates and activating versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::{
    CANDIDATE_SUFFIX, COMPILED_CACHE, Candidate, Loaded, LoadedInfo, Plugins, file_role,
    plugin_name,
};
use switchyard_model::clock::now_ms;
use switchyard_model::routing::RouteRequest;

use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::rollout::{Action, HistoryEntry, ShadowStats, Watch};
use crate::sandbox::Prepared;
use crate::version::{short_version as short, version_of};
use crate::{CANARY_EVENT_TYPE, LoadError, PluginError};

impl Plugins {
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
        // Active versions first, then the candidates that shadow them.
        files.sort_by_key(|p| (file_role(p).is_some_and(|(_, c)| c), p.clone()));
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
                    let reason = format!("invalid manifest: {reason}");
                    self.reject(MANIFEST_FILE, None, LoadError::Manifest(reason));
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => {
                let reason = format!("cannot read manifest: {e}");
                self.reject(MANIFEST_FILE, None, LoadError::Manifest(reason));
                return;
            }
        };
        let _guard = self.inner.load_lock.lock().await;
        self.update(|r| {
            r.manifest = manifest.clone();
            r.manifest_generation += 1;
        });
        tracing::info!(path = %path.display(), "plugin manifest loaded");
    }

    /// Reacts to a change of `path` inside the plugins directory: (re)loads a `.wasm` file,
    /// unloads a removed one, re-reads the manifest.
    pub async fn reload_path(&self, path: &Path) {
        if path.file_name().is_some_and(|n| n == MANIFEST_FILE) {
            self.reload_manifest().await;
            return;
        }
        let Some((name, candidate)) = file_role(path) else {
            return;
        };
        if path.exists() {
            let _ = self.load_file(path).await;
        } else if candidate {
            self.withdraw_candidate(&name, "file removed", false).await;
        } else {
            self.unload(&name).await;
        }
    }

    /// Removes a plugin (active and previous versions). Calls already running finish on it.
    pub async fn unload(&self, name: &str) {
        let _guard = self.inner.load_lock.lock().await;
        let Some(current) = self.inner.registry.load().plugins.get(name).cloned() else {
            return;
        };
        self.update(|r| {
            r.plugins.remove(name);
            r.previous.remove(name);
            r.watches.remove(name);
        });
        self.remember_history(
            name,
            HistoryEntry {
                action: Action::Unloaded,
                version: current.info.version.clone(),
                replaced: None,
                at_ms: now_ms(),
                reason: Some("file removed".into()),
            },
        );
        tracing::info!(plugin = name, "plugin unloaded (file removed)");
    }

    /// Stops shadowing `name` with its candidate; with `remove_file`, also deletes
    /// `<name>.next.wasm` if it still holds that candidate.
    pub async fn withdraw_candidate(
        &self,
        name: &str,
        reason: &str,
        remove_file: bool,
    ) -> Option<String> {
        let _guard = self.inner.load_lock.lock().await;
        let candidate = self.inner.registry.load().candidates.get(name).cloned()?;
        if remove_file && let Some(dir) = &self.inner.dir {
            let next = dir.join(format!("{name}{CANDIDATE_SUFFIX}.wasm"));
            if let Ok(b) = tokio::fs::read(&next).await
                && version_of(&b) == candidate.loaded.info.version
            {
                let _ = tokio::fs::remove_file(&next).await;
            }
        }
        self.update(|r| {
            r.candidates.remove(name);
        });
        let version = candidate.loaded.info.version.clone();
        self.remember_history(
            name,
            HistoryEntry {
                action: Action::CandidateRemoved,
                version: version.clone(),
                replaced: None,
                at_ms: now_ms(),
                reason: Some(reason.to_string()),
            },
        );
        tracing::info!(
            plugin = name,
            version = short(&version),
            reason,
            "candidate withdrawn"
        );
        Some(version)
    }

    /// A compiled copy of `name`@`version` if one is at hand, and whether it was a candidate.
    pub(super) fn compiled(&self, name: &str, version: &str) -> Option<(Arc<Loaded>, bool)> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(n, _, l)| n == name && l.info.version == version)
            .map(|(_, was_candidate, l)| (l.clone(), *was_candidate))
    }

    pub(super) fn remember_compiled(&self, name: &str, was_candidate: bool, loaded: &Arc<Loaded>) {
        let mut cache = self
            .inner
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.retain(|(n, _, l)| !(n == name && l.info.version == loaded.info.version));
        if cache.len() == COMPILED_CACHE {
            cache.pop_front();
        }
        cache.push_back((name.to_string(), was_candidate, loaded.clone()));
    }

    /// Compiles, type-checks and canary-calls one `.wasm` file, then swaps it in under its file
    /// stem (`<name>.next.wasm` is staged as `<name>`'s candidate instead). A version compiled
    /// recently (the previous one, the candidate) is reused at once. On any failure the previous
    /// version (if any) keeps serving and the reason is returned, logged and recorded.
    pub async fn load_file(&self, path: &Path) -> Result<LoadedInfo, LoadError> {
        let (name, candidate) =
            file_role(path).ok_or_else(|| LoadError::NotAPlugin(path.display().to_string()))?;
        let started = Instant::now();
        // Read under the lock: a promotion or rollback rewriting this file meanwhile must not be
        // overtaken by what the file held before it.
        let _guard = self.inner.load_lock.lock().await;
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            let e = LoadError::Io(format!("cannot read {}: {e}", path.display()));
            self.reject(&name, None, e)
        })?;
        let version = version_of(&bytes);
        let snapshot = self.inner.registry.load_full();
        if let Some(serving) = self
            .check_file(&name, candidate, &version, path, &bytes, &snapshot)
            .await?
        {
            return Ok(serving);
        }
        let (loaded, was_candidate) = match self.compiled(&name, &version) {
            Some((warm, was_candidate)) => (warm.at(path), was_candidate),
            None => {
                let prepared = self.compile(&name, &version, bytes.clone()).await?;
                (self.new_version(&name, path, prepared, bytes), false)
            }
        };
        // The flag means "staged as a candidate since it was last active".
        self.remember_compiled(&name, candidate, &loaded);
        self.inner
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        let info = loaded.info.clone();
        if candidate {
            self.stage(&name, loaded);
        } else {
            let restored = snapshot
                .previous
                .get(&name)
                .is_some_and(|p| p.info.version == version);
            let (action, reason) = match (was_candidate, restored) {
                (true, _) => (
                    Action::Promoted,
                    "the candidate's file became the active one",
                ),
                (false, true) => (
                    Action::RolledBack,
                    "the previous version's file was restored",
                ),
                (false, false) => (Action::Loaded, "file written"),
            };
            self.activate(&name, loaded, action, Some(reason.to_string()));
        }
        tracing::debug!(
            plugin = %name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin file handled"
        );
        Ok(info)
    }

    /// Whether the file at `path` (version `version` of `name`) needs loading: `Some` when that
    /// version serves in that role already, an error when it must be refused (the candidate is
    /// the active version; a version rolled back automatically, deployed again by copying).
    async fn check_file(
        &self,
        name: &str,
        candidate: bool,
        version: &str,
        path: &Path,
        bytes: &[u8],
        snapshot: &super::Snapshot,
    ) -> Result<Option<LoadedInfo>, LoadError> {
        let active = snapshot
            .plugins
            .get(name)
            .filter(|a| a.info.version == version);
        if candidate {
            if let Some(c) = snapshot.candidates.get(name)
                && c.loaded.info.version == version
            {
                return Ok(Some(c.loaded.info.clone()));
            }
            if active.is_some() {
                return Err(self.reject(name, Some(version), LoadError::SameAsActive));
            }
            return Ok(None);
        }
        if let Some(current) = active {
            return Ok(Some(current.info.clone()));
        }
        let blocked = self
            .inner
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|b| b.version == version)
            .cloned();
        let Some(blocked) = blocked else {
            return Ok(None);
        };
        if self.compiled(name, version).is_some_and(|(_, c)| c) {
            // Renamed from `<name>.next.wasm`: a promotion on purpose.
            self.unblock(name);
            return Ok(None);
        }
        self.set_aside(name, path, bytes, snapshot).await;
        let refused = LoadError::Refused {
            name: name.to_string(),
            reason: blocked.reason,
        };
        Err(self.reject(name, Some(version), refused))
    }

    /// A freshly compiled version of `name` from `path`.
    pub(super) fn new_version(
        &self,
        name: &str,
        path: &Path,
        prepared: Prepared,
        bytes: Vec<u8>,
    ) -> Arc<Loaded> {
        Arc::new(Loaded {
            info: LoadedInfo {
                name: name.to_string(),
                version: version_of(&bytes),
                loaded_at_ms: now_ms(),
                size_bytes: bytes.len() as u64,
                path: path.to_path_buf(),
                contract: prepared.contract().to_string(),
            },
            prepared,
            bytes: bytes.into(),
        })
    }

    pub(super) fn unblock(&self, name: &str) {
        self.inner
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Keeps a refused build's bytes as `<name>.wasm.refused` and puts the active version's bytes
    /// back in `<name>.wasm`, so that the directory (and a restart) serves what serves now.
    async fn set_aside(&self, name: &str, path: &Path, bytes: &[u8], registry: &super::Snapshot) {
        let Some(active) = registry.plugins.get(name) else {
            return;
        };
        let aside = path.with_extension("wasm.refused");
        let restore = async {
            tokio::fs::write(&aside, bytes).await?;
            let tmp = path.with_extension("wasm.restore");
            tokio::fs::write(&tmp, &active.bytes).await?;
            tokio::fs::rename(&tmp, path).await
        };
        if let Err(e) = restore.await {
            tracing::warn!(plugin = name, error = %e, "cannot set the refused build aside");
        }
    }

    /// Compiles and canary-calls a new version off the async runtime.
    pub(super) async fn compile(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
    ) -> Result<Prepared, LoadError> {
        let sandbox = self.inner.sandbox.clone();
        let prepared = tokio::task::spawn_blocking(move || sandbox.prepare(&bytes))
            .await
            .unwrap_or_else(|e| Err(LoadError::Panicked(e.to_string())))
            .map_err(|e| self.reject(name, Some(version), e))?;
        let config = self.inner.registry.load().manifest.config_for(name);
        self.canary(name, version, &prepared, config)
            .await
            .map_err(|e| self.reject(name, Some(version), LoadError::Canary(e)))?;
        Ok(prepared)
    }

    /// Stages `loaded` as the candidate of `name`, with fresh comparison counters.
    pub(super) fn stage(&self, name: &str, loaded: Arc<Loaded>) {
        let version = loaded.info.version.clone();
        let candidate = Arc::new(Candidate {
            loaded,
            stats: Arc::new(ShadowStats::default()),
        });
        self.update(|r| {
            r.candidates.insert(name.to_string(), candidate.clone());
        });
        self.remember_history(
            name,
            HistoryEntry {
                action: Action::CandidateLoaded,
                version: version.clone(),
                replaced: None,
                at_ms: now_ms(),
                reason: None,
            },
        );
        crate::metrics::plugin_reload(name, "candidate");
        tracing::info!(
            plugin = name,
            version = short(&version),
            "candidate loaded: shadowing live traffic"
        );
    }

    /// Makes `loaded` the active version of `name`; the one it replaces becomes the previous
    /// version. Callers hold `load_lock`.
    pub(super) fn activate(
        &self,
        name: &str,
        loaded: Arc<Loaded>,
        action: Action,
        reason: Option<String>,
    ) {
        let registry = self.inner.registry.load();
        let replaced = registry.plugins.get(name).cloned();
        let version = loaded.info.version.clone();
        // A new version with something to go back to is watched; going back is not.
        let watch = match (&replaced, action) {
            (Some(_), Action::Loaded | Action::Promoted) => {
                Watch::new(version.clone(), &self.inner.policy, now_ms()).map(Arc::new)
            }
            _ => None,
        };
        self.update(|r| {
            r.plugins.insert(name.to_string(), loaded.clone());
            if let Some(old) = &replaced {
                r.previous.insert(name.to_string(), old.clone());
            }
            if r.candidates
                .get(name)
                .is_some_and(|c| c.loaded.info.version == version)
            {
                r.candidates.remove(name);
            }
            match &watch {
                Some(w) => r.watches.insert(name.to_string(), w.clone()),
                None => r.watches.remove(name),
            };
        });
        let replaced = replaced.map(|r| r.info.version.clone());
        self.remember_history(
            name,
            HistoryEntry {
                action,
                version: version.clone(),
                replaced: replaced.clone(),
                at_ms: now_ms(),
                reason: reason.clone(),
            },
        );
        let action_name = match action {
            Action::Promoted => "promoted",
            Action::RolledBack => "rolled_back",
            Action::AutoRolledBack => "auto_rolled_back",
            _ => "loaded",
        };
        crate::metrics::plugin_reload(name, "loaded");
        crate::metrics::plugin_swap(name, action_name);
        let previous = replaced.as_deref().map(short).unwrap_or("-");
        if action == Action::AutoRolledBack {
            tracing::warn!(plugin = %name, version = short(&version), replaced = previous,
                reason = reason.as_deref().unwrap_or(""), "plugin rolled back automatically");
        } else {
            tracing::info!(plugin = %name, version = short(&version), previous, action = action_name,
                reason = reason.as_deref().unwrap_or(""), "plugin version active");
        }
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
        let call = self.call_context(name, version, &request, config, None);
        match self.inner.sandbox.call(prepared, call, &request).await {
            Ok(_) | Err(PluginError::Transient(_) | PluginError::Permanent(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
