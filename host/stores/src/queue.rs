//! The durable queue: ready events, delayed retries and the dead-letter queue.
//!
//! A [`Delivery`] stays owned by the consumer that fetched it until it is acked, moved to the
//! delayed set, or dead-lettered; one left unfinished (crash) is handed out again by
//! [`Queue::reclaim`] once it has been idle for the visibility timeout.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use switchyard_model::event::Job;

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The depth limit is reached: shed load.
    #[error("queue is full ({0} events)")]
    Full(u64),
    /// The dead-letter queue holds `DLQ_MAX_DEPTH` entries: refuse new events until it drains.
    #[error("dead-letter queue is full ({0} entries)")]
    DlqFull(u64),
    /// A Standard Webhooks message id seen within the replay window, with another body.
    #[error("message id reused with a different body")]
    Replayed,
    /// A pagination cursor that is not a position of this queue.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    /// The backend cannot be reached or answered an error.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// An entry that cannot be decoded (should not happen; logged and dead-lettered).
    #[error("corrupt queue entry {id}: {reason}")]
    Corrupt { id: String, reason: String },
}

/// What ingestion asks the queue to remember about a signed message, so that a captured request
/// cannot be replayed with another body: its Standard Webhooks id and the digest of its body,
/// for `ttl` (the whole window in which its timestamp is accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayGuard {
    pub message_id: String,
    /// SHA-256 of the body, hex.
    pub digest: String,
    pub ttl: Duration,
}

/// One fetched event, owned by its consumer until finished.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Backend id of this queue entry.
    pub id: String,
    pub job: Job,
}

/// What the dead-letter queue keeps about an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Backend id of the dead-letter entry (the pagination cursor).
    pub id: String,
    pub job: Job,
    pub error: String,
    pub error_kind: String,
    pub failed_at_ms: u64,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayFilter {
    /// Only these event ids.
    pub event_ids: Option<Vec<String>>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only deliveries to this destination (the deliveries lane).
    pub destination: Option<String>,
}

impl ReplayFilter {
    pub fn matches(&self, job: &Job) -> bool {
        self.event_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&job.event_id))
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| *t == job.event_type)
            && self.destination.as_ref().is_none_or(|d| {
                job.delivery
                    .as_ref()
                    .is_some_and(|target| target.destination == *d)
            })
    }
}

/// The two queues of a backend: events to route, and deliveries of routed events to send. Each
/// has its own ready entries, retries and dead letters; deliveries are never refused for depth
/// (they come from events already accepted), and their dead letters do not count against
/// `DLQ_MAX_DEPTH`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lane {
    #[default]
    Events,
    Deliveries,
}

/// Bounds every queue backend enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Ready + delayed (+ in flight, where the backend knows) events beyond which an enqueue is
    /// refused (0 = no bound).
    pub max_depth: u64,
    /// Dead letters at which an enqueue is refused (0 = no bound).
    pub dlq_max_depth: u64,
}

/// Queue depths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Waiting to be fetched.
    pub ready: u64,
    /// Fetched by a consumer and not finished yet.
    pub in_flight: u64,
    /// Waiting for a retry time.
    pub delayed: u64,
    pub dead_lettered: u64,
}

/// The queue operations the gateway needs; every multi-step move is atomic.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Appends an event durably (one round trip), or refuses when full, when the dead-letter
    /// queue is full, when `guard`'s message id was seen with another body, or when unreachable.
    async fn enqueue(&self, job: &Job, guard: Option<&ReplayGuard>) -> Result<(), Error>;
    /// Up to `max` new entries for `consumer`, waiting up to `wait` for the first.
    async fn fetch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, Error>;
    /// Entries other consumers fetched and left idle longer than `min_idle`, now owned by
    /// `consumer`.
    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, Error>;
    /// Tells the queue that `consumer` is still working on these deliveries (by id): they are
    /// not handed to anyone by [`Queue::reclaim`] for another visibility timeout.
    async fn touch(&self, consumer: &str, ids: &[String]) -> Result<(), Error>;
    /// Records that a delivery still in flight now carries `job` (an in-place retry's next
    /// attempt): if its consumer dies, whoever reclaims the entry gets `job`, not the original.
    async fn update(&self, delivery: &Delivery, job: &Job) -> Result<(), Error>;
    /// Finishes a delivery.
    async fn ack(&self, delivery: &Delivery) -> Result<(), Error>;
    /// Finishes a delivery and schedules `next` at `due_at_ms` (atomic).
    async fn retry_later(
        &self,
        delivery: &Delivery,
        next: &Job,
        due_at_ms: u64,
    ) -> Result<(), Error>;
    /// Finishes a delivery and moves it to the dead-letter queue with its error (atomic).
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error_kind: &str,
        error: &str,
    ) -> Result<(), Error>;
    /// Moves retries due at `now_ms` to the ready queue; returns how many moved.
    async fn promote_due(&self, now_ms: u64, max: usize) -> Result<usize, Error>;
    /// Dead letters, oldest first, after the cursor `after` (exclusive).
    async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error>;
    /// Moves matching dead letters back to the ready queue as fresh first attempts. Each entry
    /// moves at most once, however many replays run at the same time. Returns the event ids.
    async fn replay(&self, filter: &ReplayFilter) -> Result<Vec<String>, Error>;
    /// When an event accepted but not yet finished was received, if it is still queued.
    async fn accepted_at(&self, event_id: &str) -> Result<Option<u64>, Error>;
    async fn stats(&self) -> Result<QueueStats, Error>;
    async fn ping(&self) -> Result<(), Error>;
    /// Housekeeping (expired replay guards); called every few seconds.
    async fn maintain(&self, _now_ms: u64) -> Result<(), Error> {
        Ok(())
    }
    /// What an operator should know about the backend's set-up (e.g. persistence off).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}
