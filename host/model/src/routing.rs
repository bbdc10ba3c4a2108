//! What a routing plugin is asked and what it answers: the request for one attempt of an event,
//! the decision, and which plugin version made it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// Which plugin version handled a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginId {
    pub name: String,
    /// sha256 of the `.wasm` file, hex.
    pub version: String,
}
