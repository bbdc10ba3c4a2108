//! The event state store: one record per `eventId`, the idempotent claim, the lifecycle
//! `ROUTING_PENDING → ROUTED | FAILED` with its history, and read-only live context. The records
//! themselves are [`switchyard_model::record`]'s.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_model::event::Job;
use switchyard_model::record::{
    Attempt, Deferred, DeliveryStatus, EventRecord, ScanFilter, StateCounts, StoredEvent,
};
use switchyard_model::routing::{Decision, PluginId};

/// State-store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses what it was given (e.g. a document it cannot represent).
    #[error("invalid input for the state store: {0}")]
    Invalid(String),
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

/// How a claimed delivery ended.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Routed; `deliveries` is the outbox (what the event owes each declared destination),
    /// written in the same atomic write, and `routed_by` the ingest that routed it
    /// (`Job::ingest_token`).
    Routed {
        decision: Decision,
        plugin: PluginId,
        attempt: Attempt,
        deliveries: BTreeMap<String, DeliveryStatus>,
        routed_by: String,
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
    /// Records where `event_id`'s delivery to `destination` stands. A delivered delivery stays
    /// as it is (whatever a late copy of it reports afterwards). `false` when nothing was
    /// written: the event has no such delivery (expired, or never owed), or it was delivered.
    async fn record_delivery(
        &self,
        event_id: &str,
        destination: &str,
        status: &DeliveryStatus,
    ) -> Result<bool, Error>;
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
