//! The live state a plugin may read through its `context` import, as a trait the embedder
//! implements (the gateway: its state store), with an empty and an in-memory implementation.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

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
