//! The event state store: one record per `eventId`, the idempotent claim, the lifecycle
//! `ROUTING_PENDING → ROUTED | FAILED` with its history, and read-only live context.

pub mod embedded;
pub mod mongo;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::Job;
use crate::plugin::{Decision, PluginId};

/// State-store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses what it was given (e.g. a document it cannot represent).
    #[error("invalid input for the state store: {0}")]
    Invalid(String),
}

/// Lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventState {
    RoutingPending,
    Routed,
    Failed,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::RoutingPending => "ROUTING_PENDING",
            EventState::Routed => "ROUTED",
            EventState::Failed => "FAILED",
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This delivery owns the event until it finishes or the lease expires: route it.
    Claimed,
    /// The event was routed already: this delivery is a duplicate (counted on the event).
    AlreadyRouted,
    /// Another delivery holds a live lease on it: try again later.
    Busy,
}

/// One attempt in an event's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub at_ms: u64,
    /// `routed`, `retry` or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginId>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
}

/// Why an event is waiting without spending attempts: failures of the host, not of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deferred {
    /// Since when (the first deferral of this run), ms since the Unix epoch.
    pub since_ms: u64,
    /// Deferrals in a row.
    pub count: u32,
    pub error_kind: String,
    pub error: String,
    pub next_attempt_at_ms: u64,
}

/// How a claimed delivery ended.
#[derive(Debug, Clone)]
pub enum Finish {
    Routed {
        decision: Decision,
        plugin: PluginId,
        attempt: Attempt,
    },
    Retry {
        attempt: Attempt,
    },
    Failed {
        error: String,
        attempt: Attempt,
    },
    /// The attempt could not run for a reason of the host's (no plugin, pool or memory
    /// exhausted, live state unavailable): the event stays pending, its attempts and history
    /// unchanged, the lease released, and the reason shown on the record.
    Deferred(Deferred),
}

/// An event's record, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub state: EventState,
    pub correlation_id: String,
    pub attempts: u32,
    pub history: Vec<Attempt>,
    #[serde(default)]
    pub decision: Option<Decision>,
    #[serde(default)]
    pub plugin: Option<PluginId>,
    #[serde(default)]
    pub error: Option<String>,
    /// Deliveries of this event that found it routed or in progress and were dropped.
    #[serde(default)]
    pub duplicates: u64,
    /// Set while failures of the host keep deferring the event (cleared by the next attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferred>,
    pub received_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Which finished events a what-if replay reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScanFilter {
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only events received at or after this time (ms since the Unix epoch).
    pub from_ms: Option<u64>,
    /// Only events received before this time.
    pub to_ms: Option<u64>,
    /// `ROUTED` or `FAILED`; both when absent.
    pub state: Option<EventState>,
}

impl ScanFilter {
    pub fn matches(&self, record: &EventRecord) -> bool {
        let state_ok = match self.state {
            Some(s) => record.state == s,
            None => record.state != EventState::RoutingPending,
        };
        state_ok && self.matches_event(&record.event_type, record.received_at_ms)
    }

    /// The type and time-of-receipt part of the filter (all a dead letter can be filtered by).
    pub fn matches_event(&self, event_type: &str, received_at_ms: u64) -> bool {
        self.event_type.as_deref().is_none_or(|t| t == event_type)
            && self.from_ms.is_none_or(|f| received_at_ms >= f)
            && self.to_ms.is_none_or(|t| received_at_ms < t)
    }
}

/// A finished event with the payload it was routed with.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub record: EventRecord,
    pub payload: String,
}

/// Records per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateCounts {
    pub pending: u64,
    pub routed: u64,
    pub failed: u64,
}

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Takes ownership of `job`'s event for `owner` (a delivery id) for `lease`: inserts the
    /// record, or claims an existing one that is not routed and not leased by someone else.
    async fn claim(&self, job: &Job, owner: &str, lease: Duration) -> Result<Claim, Error>;
    /// Records how the claimed attempt ended. `false` when `owner` no longer holds the lease.
    async fn finish(&self, event_id: &str, owner: &str, finish: Finish) -> Result<bool, Error>;
    async fn get(&self, event_id: &str) -> Result<Option<EventRecord>, Error>;
    async fn counts(&self) -> Result<StateCounts, Error>;
    /// Up to `limit` finished events matching `filter`, oldest received first, with their
    /// payloads (for what-if replays). Records stored without a payload are left out.
    async fn scan(&self, filter: &ScanFilter, limit: usize) -> Result<Vec<StoredEvent>, Error>;
    /// Live `order` / `shipment` documents for plugins, as JSON text.
    async fn lookup(&self, kind: &str, id: &str) -> Result<Option<String>, Error>;
    /// Creates or replaces a live document (`PUT /context/{kind}/{id}`).
    async fn put_context(&self, kind: &str, id: &str, document: &str) -> Result<(), Error>;
    async fn ping(&self) -> Result<(), Error>;
    /// Housekeeping (expiring old records where the store does not do it itself); called every
    /// few seconds.
    async fn maintain(&self, _now_ms: u64) -> Result<(), Error> {
        Ok(())
    }
}

/// Adapts a state store to the plugin `context` import.
pub struct StoreContext(pub std::sync::Arc<dyn StateStore>);

impl crate::plugin::Context for StoreContext {
    fn lookup<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move { self.0.lookup(kind, id).await.map_err(|e| e.to_string()) })
    }
}
