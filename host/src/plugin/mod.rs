//! The WebAssembly plugin host.
//!
//! Plugins are WASI 0.2 components of the `router` world (`wit/router.wit`). Each call runs in a
//! fresh `Store` instantiated from a cached, type-checked `InstancePre`, under a wall-clock
//! timeout, epoch interruption (so a busy loop cannot hold a thread) and a memory cap, with WASI
//! denying files, sockets, environment and arguments. Every failure comes back as a typed
//! [`PluginError`]; [`PluginError::is_retryable`] is the retry policy.
//!
//! [`PluginHost`] keeps the loaded plugins of a directory, maps event types to them through the
//! directory's manifest (`switchyard.toml`), and swaps versions atomically: in-flight calls keep
//! the version they started with. [`watch`] reloads on file changes.

mod bindings;
mod host;
mod manifest;
pub mod rollout;
mod sandbox;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use host::{
    Blocked, CANDIDATE_SUFFIX, LoadedInfo, PluginHost, PluginId, PluginStatus, Rejection, Resolved,
    RolloutError, RouteOutcome, Which,
};
pub use rollout::{Answer, RolloutPolicy};

/// The plugin name a `.wasm` file would load under (its file stem).
pub fn name_of_file(path: &std::path::Path) -> anyhow::Result<String> {
    host::plugin_name(path).ok_or_else(|| anyhow::anyhow!("{} is not a .wasm file", path.display()))
}
pub use manifest::{MANIFEST_FILE, Manifest};
pub use sandbox::{Limits, Sandbox};

/// The first 12 hex digits of a version id, for logs.
pub fn short_version(version: &str) -> &str {
    sandbox::short(version)
}

/// The event type the host sends once to every newly loaded version before it serves.
pub const CANARY_EVENT_TYPE: &str = "switchyard.canary";

/// One delivery attempt of an event, as handed to a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRequest {
    pub event_id: String,
    pub event_type: String,
    pub correlation_id: String,
    /// The event's payload object as JSON text.
    pub payload: String,
    pub received_at_ms: u64,
    pub attempt: u32,
}

/// A plugin's routing decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub destination: String,
    pub reason: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Why a routing call did not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum PluginError {
    /// The plugin answered `route-error::transient`.
    #[error("plugin reported a transient error: {0}")]
    Transient(String),
    /// The plugin answered `route-error::permanent`.
    #[error("plugin reported a permanent error: {0}")]
    Permanent(String),
    /// The call exceeded its wall-clock limit and was stopped.
    #[error("plugin call exceeded its time limit of {0} ms")]
    Timeout(u64),
    /// The guest trapped (panic, unreachable, stack overflow, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The guest tried to grow its memory past the cap.
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryExceeded(u64),
    /// The guest answered with a decision the host does not accept (empty or oversized).
    #[error("plugin returned an invalid decision: {0}")]
    InvalidDecision(String),
    /// No plugin is loaded for this event type (and no default).
    #[error("no plugin loaded for event type {0:?}")]
    NoPlugin(String),
    /// Live state could not be read during the call (the store is unreachable).
    #[error("live state unavailable to the plugin: {0}")]
    ContextUnavailable(String),
    /// The host could not instantiate the plugin (e.g. the instance pool is exhausted).
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
    /// The plugins together use `PLUGIN_MEMORY_TOTAL_MB`: this call's growth was refused. The
    /// host's state, not the event's or the version's fault.
    #[error("plugin memory budget of {0} bytes in use by other calls; the call is deferred")]
    MemoryPressure(u64),
    /// The plugin broke a per-call limit other than time and memory (e.g. too many lookups).
    #[error("plugin exceeded a limit: {0}")]
    LimitExceeded(String),
}

impl PluginError {
    /// The retry policy: everything but an explicit `permanent` answer is worth another attempt
    /// (a fixed plugin version may be deployed meanwhile); attempts are bounded by the caller.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PluginError::Permanent(_))
    }

    /// A failure of the host, not of the event or of the plugin's answer: no plugin for the
    /// type, the instance pool or the memory budget exhausted, live state unreachable. Such an
    /// attempt is deferred without being spent.
    pub fn is_host_side(&self) -> bool {
        matches!(
            self,
            PluginError::NoPlugin(_)
                | PluginError::ContextUnavailable(_)
                | PluginError::Instantiate(_)
                | PluginError::MemoryPressure(_)
        )
    }

    /// The plugin's own answer (`transient` or `permanent`), as opposed to a failure.
    pub fn is_route_error(&self) -> bool {
        matches!(self, PluginError::Transient(_) | PluginError::Permanent(_))
    }

    /// A short stable name of the failure class, for metrics and event history.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Transient(_) => "transient",
            PluginError::Permanent(_) => "permanent",
            PluginError::Timeout(_) => "timeout",
            PluginError::Trap(_) => "trap",
            PluginError::MemoryExceeded(_) => "memory_exceeded",
            PluginError::InvalidDecision(_) => "invalid_decision",
            PluginError::NoPlugin(_) => "no_plugin",
            PluginError::ContextUnavailable(_) => "context_unavailable",
            PluginError::Instantiate(_) => "instantiate",
            PluginError::MemoryPressure(_) => "memory_pressure",
            PluginError::LimitExceeded(_) => "limit_exceeded",
        }
    }
}

/// Read-only live state a plugin may look up through the `context` import.
pub trait Context: Send + Sync + 'static {
    /// The document of `kind` with `id` as JSON text, or `None`. An `Err` (the store cannot be
    /// reached) fails the routing call as [`PluginError::ContextUnavailable`], so the event is
    /// retried rather than routed on missing data.
    fn lookup<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;
}

/// A context with nothing in it.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoContext;

impl Context for NoContext {
    fn lookup<'a>(
        &'a self,
        _kind: &'a str,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async { Ok(None) })
    }
}

/// A context served from memory: `(kind, id)` → JSON, with an optional per-kind fallback
/// (`(kind, "*")`) that answers for any id. Used by `switchyard plugin run` and tests.
#[derive(Debug, Default, Clone)]
pub struct StaticContext(pub BTreeMap<(String, String), String>);

impl Context for StaticContext {
    fn lookup<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        let hit = self
            .0
            .get(&(kind.to_string(), id.to_string()))
            .or_else(|| self.0.get(&(kind.to_string(), "*".to_string())))
            .cloned();
        Box::pin(async move { Ok(hit) })
    }
}

/// Shared handle to a context.
pub type SharedContext = Arc<dyn Context>;
