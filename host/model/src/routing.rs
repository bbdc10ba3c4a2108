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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The (first) destination.
    pub destination: String,
    /// Every destination, in order, when the plugin named more than one (contract 0.2; empty
    /// otherwise). See [`Decision::destinations`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// What to deliver instead of the event's envelope, as JSON text (contract 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Decision {
    /// A decision for one destination, the event's payload unchanged (contract 0.1).
    pub fn to(destination: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision {
            destination: destination.into(),
            also: Vec::new(),
            payload: None,
            reason: reason.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// Every destination, the first one first.
    pub fn destinations(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.destination.as_str()).chain(self.also.iter().map(String::as_str))
    }
}

/// Which plugin version handled a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginId {
    pub name: String,
    /// sha256 of the `.wasm` file, hex.
    pub version: String,
}
