//! The state store as the plugins' read-only live state (their `context` import).

use switchyard_stores::state::StateStore;

/// Adapts a state store to the plugin `context` import.
pub struct StoreContext(pub std::sync::Arc<dyn StateStore>);

impl switchyard_runtime::Context for StoreContext {
    fn lookup<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move { self.0.lookup(kind, id).await.map_err(|e| e.to_string()) })
    }
}
