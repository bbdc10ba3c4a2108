//! Promotion and rollback (by admin call or automatically), dry runs of a chosen version, and
//! the rollout status of each plugin.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{Blocked, CANDIDATE_SUFFIX, Loaded, LoadedInfo, Plugins};
use crate::version::short_version as short;
use switchyard_model::clock::now_ms;
use switchyard_model::routing::{PluginId, RouteRequest};

use crate::rollout::{Action, Answer, HistoryEntry, ShadowSnapshot, WatchSnapshot};
use crate::version::version_of;
use crate::{LoadError, PluginError, SharedContext};

/// Why a rollout operation could not be done.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("no plugin named {0:?} is loaded")]
    NoSuchPlugin(String),
    #[error("plugin {0:?} has no candidate: write `{0}.next.wasm` into the plugins directory")]
    NoCandidate(String),
    #[error("plugin {0:?} has no previous version to roll back to")]
    NoPrevious(String),
    #[error("plugin {0:?} has no loaded version matching {1:?}")]
    NoSuchVersion(String, String),
    #[error("plugin {0:?} changed meanwhile: {1}")]
    Changed(String, String),
}

/// Which version of a plugin a dry run or what-if replay uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Active,
    Candidate,
    Previous,
    /// A version id, or a prefix of at least 8 hex digits of one.
    Version(String),
}

impl Which {
    /// `active`, `candidate`, `previous`, or a version id (prefix); absent means `active`.
    pub fn parse(s: Option<&str>) -> Self {
        match s.unwrap_or("active") {
            "active" => Which::Active,
            "candidate" | "next" => Which::Candidate,
            "previous" => Which::Previous,
            v => Which::Version(v.to_ascii_lowercase()),
        }
    }
}

/// A version picked for dry runs.
#[derive(Clone)]
pub struct Resolved {
    loaded: Arc<Loaded>,
    /// `active`, `candidate` or `previous`.
    pub role: &'static str,
}

impl Resolved {
    pub fn id(&self) -> PluginId {
        PluginId {
            name: self.loaded.info.name.clone(),
            version: self.loaded.info.version.clone(),
        }
    }
}

/// A plugin's active, candidate and previous versions, watch, block and history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub name: String,
    pub active: Option<LoadedInfo>,
    pub candidate: Option<CandidateStatus>,
    pub previous: Option<LoadedInfo>,
    pub watch: Option<WatchSnapshot>,
    pub blocked: Option<Blocked>,
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateStatus {
    #[serde(flatten)]
    pub info: LoadedInfo,
    pub shadow: ShadowSnapshot,
}

/// The outcome of a promotion or rollback.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub plugin: String,
    pub version: String,
    pub replaced: String,
    /// False when the plugin's file could not be rewritten: the swap holds until a restart.
    pub persisted: bool,
}

impl Plugins {
    /// Makes the candidate of `name` active. The version it replaces stays warm as the previous
    /// one; `<name>.wasm` is rewritten with the candidate and `<name>.next.wasm` removed, so the
    /// directory says what serves.
    pub async fn promote(&self, name: &str) -> Result<Transition, RolloutError> {
        let _guard = self.inner.load_lock.lock().await;
        let registry = self.inner.registry.load_full();
        let candidate = registry
            .candidates
            .get(name)
            .cloned()
            .ok_or_else(|| RolloutError::NoCandidate(name.to_string()))?;
        let replaced = registry
            .plugins
            .get(name)
            .map(|p| p.info.version.clone())
            .unwrap_or_default();
        let version = candidate.loaded.info.version.clone();
        if replaced == version {
            return Err(RolloutError::Changed(
                name.to_string(),
                "the candidate is already the active version".into(),
            ));
        }
        self.unblock(name);
        let loaded = candidate.loaded.at(&self.file_of(name));
        self.remember_compiled(name, false, &loaded);
        self.activate(name, loaded, Action::Promoted, Some("admin call".into()));
        let persisted = self
            .persist(name, &candidate.loaded.bytes, Some(&version))
            .await;
        Ok(Transition {
            plugin: name.to_string(),
            version,
            replaced,
            persisted,
        })
    }

    /// Makes the previous version of `name` active again (an admin call). Rolling back twice
    /// returns to where it started.
    pub async fn rollback(&self, name: &str) -> Result<Transition, RolloutError> {
        self.swap_back(name, None, Action::RolledBack, "admin call".into())
            .await
    }

    /// Compiles and canary-checks `bytes` and, only if they pass, writes them as
    /// `<name>.next.wasm` and stages them as the candidate (`PUT /plugins/{name}/candidate`).
    pub async fn stage_candidate(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<LoadedInfo, LoadError> {
        let Some(dir) = self.inner.dir.clone() else {
            return Err(LoadError::Io("the plugin host has no directory".into()));
        };
        let version = version_of(&bytes);
        let _guard = self.inner.load_lock.lock().await;
        let registry = self.inner.registry.load_full();
        if registry
            .plugins
            .get(name)
            .is_some_and(|a| a.info.version == version)
        {
            return Err(LoadError::SameAsActive);
        }
        if let Some(c) = registry.candidates.get(name)
            && c.loaded.info.version == version
        {
            return Ok(c.loaded.info.clone());
        }
        let prepared = match self.compiled(name, &version) {
            Some((warm, _)) => warm.prepared.clone(),
            None => self.compile(name, &version, bytes.clone()).await?,
        };
        let path = dir.join(format!("{name}{CANDIDATE_SUFFIX}.wasm"));
        let tmp = dir.join(format!(
            ".{name}{CANDIDATE_SUFFIX}.{}.upload",
            uuid::Uuid::new_v4().simple()
        ));
        let written = async {
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(LoadError::Io(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        let loaded = self.new_version(name, &path, prepared, bytes);
        self.remember_compiled(name, true, &loaded);
        let info = loaded.info.clone();
        self.stage(name, loaded);
        Ok(info)
    }

    /// Rolls `name` back from `version` because of `reason`, unless it changed meanwhile; the
    /// failing version's file is not loaded again.
    pub(super) async fn auto_rollback(&self, name: &str, version: &str, reason: String) {
        if let Err(e) = self
            .swap_back(name, Some(version), Action::AutoRolledBack, reason.clone())
            .await
        {
            tracing::warn!(plugin = name, version = short(version), error = %e,
                %reason, "automatic rollback not done");
        }
    }

    async fn swap_back(
        &self,
        name: &str,
        expected: Option<&str>,
        action: Action,
        reason: String,
    ) -> Result<Transition, RolloutError> {
        let _guard = self.inner.load_lock.lock().await;
        let registry = self.inner.registry.load_full();
        let current = registry
            .plugins
            .get(name)
            .cloned()
            .ok_or_else(|| RolloutError::NoSuchPlugin(name.to_string()))?;
        if let Some(v) = expected
            && current.info.version != v
        {
            return Err(RolloutError::Changed(
                name.to_string(),
                format!("{} is no longer active", short(v)),
            ));
        }
        let previous = registry
            .previous
            .get(name)
            .cloned()
            .ok_or_else(|| RolloutError::NoPrevious(name.to_string()))?;
        {
            // Under the lock, so that no reload of the failing build's file can slip in between.
            let mut blocked = self.inner.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if action == Action::AutoRolledBack {
                blocked.insert(
                    name.to_string(),
                    Blocked {
                        version: current.info.version.clone(),
                        at_ms: now_ms(),
                        reason: reason.clone(),
                    },
                );
            } else if blocked
                .get(name)
                .is_some_and(|b| b.version == previous.info.version)
            {
                // Rolling back onto a refused build by hand is a decision to use it.
                blocked.remove(name);
            }
        }
        let loaded = previous.at(&self.file_of(name));
        self.activate(name, loaded, action, Some(reason));
        let persisted = self.persist(name, &previous.bytes, None).await;
        Ok(Transition {
            plugin: name.to_string(),
            version: previous.info.version.clone(),
            replaced: current.info.version.clone(),
            persisted,
        })
    }

    fn file_of(&self, name: &str) -> std::path::PathBuf {
        self.inner
            .dir
            .as_deref()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join(format!("{name}.wasm"))
    }

    /// Writes `bytes` as `<name>.wasm` (temporary file, then rename) and removes the candidate's
    /// file when it still holds `promoted` (a newer candidate written meanwhile stays). The
    /// watcher then finds the active version already serving.
    async fn persist(&self, name: &str, bytes: &[u8], promoted: Option<&str>) -> bool {
        let Some(dir) = self.inner.dir.clone() else {
            return false;
        };
        let tmp = dir.join(format!(".{name}.wasm.swap"));
        let result = async {
            tokio::fs::write(&tmp, bytes).await?;
            tokio::fs::rename(&tmp, self.file_of(name)).await?;
            if let Some(version) = promoted {
                let next = dir.join(format!("{name}{CANDIDATE_SUFFIX}.wasm"));
                let same = match tokio::fs::read(&next).await {
                    Ok(b) => version_of(&b) == version,
                    Err(_) => false,
                };
                if same {
                    tokio::fs::remove_file(&next).await?;
                }
            }
            std::io::Result::Ok(())
        }
        .await;
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(plugin = name, error = %e,
                    "cannot rewrite the plugin's file: the swap holds until the gateway restarts");
                false
            }
        }
    }

    /// Picks a loaded version of `name`.
    pub fn resolve(&self, name: &str, which: &Which) -> Result<Resolved, RolloutError> {
        let registry = self.inner.registry.load();
        let active = registry.plugins.get(name);
        let candidate = registry.candidates.get(name).map(|c| &c.loaded);
        let previous = registry.previous.get(name);
        if active.is_none() && candidate.is_none() {
            return Err(RolloutError::NoSuchPlugin(name.to_string()));
        }
        let pick = |l: Option<&Arc<Loaded>>, role| {
            l.map(|l| Resolved {
                loaded: l.clone(),
                role,
            })
        };
        match which {
            Which::Active => pick(active, "active")
                .ok_or_else(|| RolloutError::NoSuchVersion(name.into(), "active".into())),
            Which::Candidate => {
                pick(candidate, "candidate").ok_or_else(|| RolloutError::NoCandidate(name.into()))
            }
            Which::Previous => {
                pick(previous, "previous").ok_or_else(|| RolloutError::NoPrevious(name.into()))
            }
            Which::Version(v) => [
                pick(active, "active"),
                pick(candidate, "candidate"),
                pick(previous, "previous"),
            ]
            .into_iter()
            .flatten()
            .find(|r| v.len() >= 8 && r.loaded.info.version.starts_with(v.as_str()))
            .ok_or_else(|| RolloutError::NoSuchVersion(name.into(), v.clone())),
        }
    }

    /// The call context of a chosen version for `request`, with its plugin's configuration.
    fn version_call(
        &self,
        version: &Resolved,
        request: &RouteRequest,
        context: Option<SharedContext>,
    ) -> crate::sandbox::CallContext {
        let info = &version.loaded.info;
        let config = self.inner.registry.load().manifest.config_for(&info.name);
        self.call_context(&info.name, &info.version, request, config, context)
    }

    /// The ordering key a chosen version gives `request` (`None` for a plain `router`), computed
    /// in a side slot.
    pub async fn dry_run_key(
        &self,
        version: &Resolved,
        request: &RouteRequest,
    ) -> Result<Option<String>, PluginError> {
        let loaded = &version.loaded;
        if !loaded.prepared.is_keyed() {
            return Ok(None);
        }
        let call = self.version_call(version, request, None);
        let slot = self.inner.sandbox.side_slot().await?;
        self.inner
            .sandbox
            .ordering_key_side(&slot, &loaded.prepared, call, request)
            .await
    }

    /// Runs `request` through a chosen version in a side slot, with no effect on any event:
    /// lookups go to `context` when given, else to the live (read-only) state.
    pub async fn dry_run(
        &self,
        version: &Resolved,
        request: &RouteRequest,
        context: Option<SharedContext>,
    ) -> (Answer, u64) {
        let loaded = &version.loaded;
        let call = self.version_call(version, request, context);
        let started = Instant::now();
        let result = match self.inner.sandbox.side_slot().await {
            Ok(slot) => {
                self.inner
                    .sandbox
                    .call_side(&slot, &loaded.prepared, call, request)
                    .await
            }
            Err(e) => Err(e),
        };
        (Answer::of(&result), started.elapsed().as_millis() as u64)
    }

    /// The rollout status of every plugin name known (active or candidate).
    pub fn status(&self) -> Vec<PluginStatus> {
        let registry = self.inner.registry.load();
        let names: std::collections::BTreeSet<&String> = registry
            .plugins
            .keys()
            .chain(registry.candidates.keys())
            .collect();
        let history = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = self.inner.blocked.lock().unwrap_or_else(|p| p.into_inner());
        names
            .into_iter()
            .map(|name| PluginStatus {
                name: name.clone(),
                active: registry.plugins.get(name).map(|l| l.info.clone()),
                candidate: registry.candidates.get(name).map(|c| CandidateStatus {
                    info: c.loaded.info.clone(),
                    shadow: c.stats.snapshot(),
                }),
                previous: registry.previous.get(name).map(|l| l.info.clone()),
                watch: registry.watches.get(name).map(|w| w.snapshot()),
                blocked: blocked.get(name).cloned(),
                history: history
                    .get(name)
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect()
    }
}
