//! How a routing call fails, as one typed error: the plugin's own answers, its failures, and the
//! host's (which spend no attempt).

use serde::{Deserialize, Serialize};

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

/// Why a plugin version was not loaded. The previous version (if any) keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The path is not a `.wasm` file.
    #[error("{0} is not a .wasm file")]
    NotAPlugin(String),
    /// The file could not be read, or the staged file not written.
    #[error("{0}")]
    Io(String),
    /// The manifest (`switchyard.toml`) does not parse or cannot be read.
    #[error("{0}")]
    Manifest(String),
    /// The bytes are not a WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    NotAComponent(String),
    /// The component imports something the host does not provide.
    #[error("imports something the host does not provide: {0}")]
    UnknownImports(String),
    /// The component does not export the router interface.
    #[error("does not export the switchyard:router `route` function: {0}")]
    WrongInterface(String),
    /// The version's canary call failed.
    #[error("canary call failed: {0}")]
    Canary(PluginError),
    /// Staging the version already active as its candidate.
    #[error("the candidate is the version already active; nothing to compare")]
    SameAsActive,
    /// A version the watch rolled back, deployed again without staging it.
    #[error(
        "this version was rolled back automatically ({reason}); its file was set aside as `{name}.wasm.refused`; deploy another build, or stage it as `{name}.next.wasm` and promote it"
    )]
    Refused { name: String, reason: String },
    /// Compilation panicked (a bug in the compiler, reported rather than crashing the host).
    #[error("compilation panicked: {0}")]
    Panicked(String),
}
