//! An event's record in the state store, as operators see it: its lifecycle state, the history
//! of its attempts, its decision, and why it waits when it waits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::routing::{Decision, PluginId};

/// Lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// One attempt in an event's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// An event's record, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The deliveries the event owes, by destination: written with the routed outcome (the
    /// outbox), then updated by each delivery attempt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deliveries: BTreeMap<String, DeliveryStatus>,
    /// The ingest that routed the event ([`crate::event::Job::ingest_token`]; the queue entry's
    /// id for records routed by earlier versions): tells that ingest's redelivery after a crash
    /// or a lost answer from a producer's resend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_by: Option<String>,
    pub received_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Which finished events a what-if replay reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateCounts {
    pub pending: u64,
    pub routed: u64,
    pub failed: u64,
}

/// Where one delivery of an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryState {
    /// Owed: not delivered yet (waiting, being sent, or retrying).
    Pending,
    Delivered,
    /// Given up: in the deliveries dead-letter queue.
    Failed,
}

/// One destination's delivery of an event, as the record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    pub state: DeliveryState,
    /// The Standard Webhooks message id, the same for every attempt.
    pub webhook_id: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    pub updated_at_ms: u64,
}

impl DeliveryStatus {
    /// A delivery owed, not tried yet.
    pub fn owed(webhook_id: String, now_ms: u64) -> Self {
        DeliveryStatus {
            state: DeliveryState::Pending,
            webhook_id,
            attempts: 0,
            last_status: None,
            last_error: None,
            delivered_at_ms: None,
            next_attempt_at_ms: None,
            updated_at_ms: now_ms,
        }
    }
}
