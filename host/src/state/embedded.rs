//! The state store on the embedded store: `events` (event id → record), `counters` (records per
//! state), `context` (live `order` / `shipment` documents). Claims and finishes run inside the
//! single writer's transactions, so each is atomic.

use std::collections::BinaryHeap;
use std::time::Duration;

use async_trait::async_trait;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    Claim, Error, EventRecord, EventState, Finish, ScanFilter, StateCounts, StateStore, StoredEvent,
};
use crate::embedded::{CONTEXT, COUNTERS, EVENTS, EmbeddedDb};
use crate::event::Job;

const HISTORY_LIMIT: usize = 100;

/// A record with its lease and the payload (for what-if replays).
#[derive(Serialize, Deserialize)]
struct Stored {
    record: EventRecord,
    lease_owner: Option<String>,
    lease_until_ms: u64,
    #[serde(default)]
    payload: Option<String>,
}

fn storage(e: crate::embedded::Error) -> Error {
    Error::Unavailable(e.0)
}

type E = crate::embedded::Error;

fn load(txn: &WriteTransaction, id: &str) -> Result<Option<Stored>, E> {
    let events = txn.open_table(EVENTS).map_err(E::from)?;
    let found = events.get(id).map_err(E::from)?;
    found
        .map(|v| serde_json::from_slice(v.value()).map_err(E::from))
        .transpose()
}

fn save(txn: &WriteTransaction, stored: &Stored) -> Result<(), E> {
    let bytes = serde_json::to_vec(stored).map_err(E::from)?;
    txn.open_table(EVENTS)
        .map_err(E::from)?
        .insert(stored.record.event_id.as_str(), bytes.as_slice())
        .map_err(E::from)?;
    Ok(())
}

/// Moves one record from state `from` (if any) to `to` in the counters.
fn count(txn: &WriteTransaction, from: Option<EventState>, to: EventState) -> Result<(), E> {
    if from == Some(to) {
        return Ok(());
    }
    let mut counters = txn.open_table(COUNTERS).map_err(E::from)?;
    if let Some(f) = from {
        let n = counters
            .get(f.as_str())
            .map_err(E::from)?
            .map(|v| v.value())
            .unwrap_or(0);
        counters
            .insert(f.as_str(), n.saturating_sub(1))
            .map_err(E::from)?;
    }
    let n = counters
        .get(to.as_str())
        .map_err(E::from)?
        .map(|v| v.value())
        .unwrap_or(0);
    counters.insert(to.as_str(), n + 1).map_err(E::from)?;
    Ok(())
}

/// A scanned event ordered by time of receipt, then id.
struct Oldest(StoredEvent);

impl Oldest {
    fn key(&self) -> (u64, &str) {
        (self.0.record.received_at_ms, &self.0.record.event_id)
    }
}

impl PartialEq for Oldest {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Oldest {}

impl PartialOrd for Oldest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Oldest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The embedded state store.
#[derive(Clone, Debug)]
pub struct EmbeddedState {
    db: EmbeddedDb,
}

impl EmbeddedState {
    pub fn new(db: EmbeddedDb) -> Self {
        EmbeddedState { db }
    }
}

#[async_trait]
impl StateStore for EmbeddedState {
    async fn claim(&self, job: &Job, owner: &str, lease: Duration) -> Result<Claim, Error> {
        let (job, owner) = (job.clone(), owner.to_string());
        self.db
            .write(move |txn| {
                let now = crate::worker::now_ms();
                let lease_until_ms = now + lease.as_millis() as u64;
                let Some(mut stored) = load(txn, &job.event_id)? else {
                    let record = EventRecord {
                        event_id: job.event_id.clone(),
                        event_type: job.event_type.clone(),
                        state: EventState::RoutingPending,
                        correlation_id: job.correlation_id.clone(),
                        attempts: 0,
                        history: Vec::new(),
                        decision: None,
                        plugin: None,
                        error: None,
                        duplicates: 0,
                        received_at_ms: job.received_at_ms,
                        updated_at_ms: now,
                    };
                    save(
                        txn,
                        &Stored {
                            record,
                            lease_owner: Some(owner),
                            lease_until_ms,
                            payload: Some(job.payload.clone()),
                        },
                    )?;
                    count(txn, None, EventState::RoutingPending)?;
                    return Ok(Claim::Claimed);
                };
                if stored.record.state == EventState::Routed {
                    stored.record.duplicates += 1;
                    save(txn, &stored)?;
                    return Ok(Claim::AlreadyRouted);
                }
                if stored.lease_until_ms < now
                    || stored.lease_owner.as_deref() == Some(owner.as_str())
                {
                    count(txn, Some(stored.record.state), EventState::RoutingPending)?;
                    stored.record.state = EventState::RoutingPending;
                    stored.record.correlation_id = job.correlation_id.clone();
                    stored.record.updated_at_ms = now;
                    stored.lease_owner = Some(owner);
                    stored.lease_until_ms = lease_until_ms;
                    save(txn, &stored)?;
                    return Ok(Claim::Claimed);
                }
                Ok(Claim::Busy)
            })
            .await
            .map_err(storage)
    }

    async fn finish(&self, event_id: &str, owner: &str, finish: Finish) -> Result<bool, Error> {
        let (event_id, owner) = (event_id.to_string(), owner.to_string());
        self.db
            .write(move |txn| {
                let Some(mut stored) = load(txn, &event_id)? else {
                    return Ok(false);
                };
                if stored.lease_owner.as_deref() != Some(owner.as_str()) {
                    return Ok(false);
                }
                let r = &mut stored.record;
                let before = r.state;
                let attempt = match finish {
                    Finish::Routed {
                        decision,
                        plugin,
                        attempt,
                    } => {
                        r.state = EventState::Routed;
                        r.decision = Some(decision);
                        r.plugin = Some(plugin);
                        r.error = None;
                        attempt
                    }
                    Finish::Retry { attempt } => {
                        r.state = EventState::RoutingPending;
                        r.error = attempt.error.clone();
                        attempt
                    }
                    Finish::Failed { error, attempt } => {
                        r.state = EventState::Failed;
                        r.error = Some(error);
                        attempt
                    }
                };
                r.attempts = attempt.attempt;
                r.updated_at_ms = crate::worker::now_ms();
                r.history.push(attempt);
                if r.history.len() > HISTORY_LIMIT {
                    let cut = r.history.len() - HISTORY_LIMIT;
                    r.history.drain(..cut);
                }
                let after = r.state;
                stored.lease_owner = None;
                stored.lease_until_ms = 0;
                save(txn, &stored)?;
                count(txn, Some(before), after)?;
                Ok(true)
            })
            .await
            .map_err(storage)
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventRecord>, Error> {
        self.db
            .read(|txn| {
                let events = txn.open_table(EVENTS).map_err(E::from)?;
                let found = events.get(event_id).map_err(E::from)?;
                found
                    .map(|v| {
                        serde_json::from_slice::<Stored>(v.value())
                            .map(|s| s.record)
                            .map_err(E::from)
                    })
                    .transpose()
            })
            .map_err(storage)
    }

    async fn counts(&self) -> Result<StateCounts, Error> {
        self.db
            .read(|txn| {
                let counters = txn.open_table(COUNTERS).map_err(E::from)?;
                let get = |s: EventState| -> Result<u64, E> {
                    Ok(counters
                        .get(s.as_str())
                        .map_err(E::from)?
                        .map(|v| v.value())
                        .unwrap_or(0))
                };
                Ok(StateCounts {
                    pending: get(EventState::RoutingPending)?,
                    routed: get(EventState::Routed)?,
                    failed: get(EventState::Failed)?,
                })
            })
            .map_err(storage)
    }

    async fn scan(&self, filter: &ScanFilter, limit: usize) -> Result<Vec<StoredEvent>, Error> {
        // A full pass over the events table, off the async runtime.
        let (db, filter) = (self.db.clone(), filter.clone());
        let scan = move || {
            db.read(|txn| {
                let events = txn.open_table(EVENTS).map_err(E::from)?;
                // The `limit` oldest matches, in a max-heap of that size: memory stays bounded
                // by the limit, not the store.
                let mut oldest: BinaryHeap<Oldest> = BinaryHeap::with_capacity(limit + 1);
                for row in events.iter().map_err(E::from)? {
                    let (_, value) = row.map_err(E::from)?;
                    let stored: Stored = serde_json::from_slice(value.value()).map_err(E::from)?;
                    if let Some(payload) = stored.payload
                        && filter.matches(&stored.record)
                    {
                        oldest.push(Oldest(StoredEvent {
                            record: stored.record,
                            payload,
                        }));
                        if oldest.len() > limit {
                            oldest.pop();
                        }
                    }
                }
                Ok(oldest.into_sorted_vec().into_iter().map(|o| o.0).collect())
            })
        };
        tokio::task::spawn_blocking(scan)
            .await
            .map_err(|e| Error::Unavailable(format!("scan panicked: {e}")))?
            .map_err(storage)
    }

    async fn lookup(&self, kind: &str, id: &str) -> Result<Option<String>, Error> {
        self.db
            .read(|txn| {
                let context = txn.open_table(CONTEXT).map_err(E::from)?;
                let found = context.get((kind, id)).map_err(E::from)?;
                Ok(found.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
            })
            .map_err(storage)
    }

    async fn put_context(&self, kind: &str, id: &str, document: &str) -> Result<(), Error> {
        let (kind, id, doc) = (kind.to_string(), id.to_string(), document.to_string());
        self.db
            .write(move |txn| {
                let mut context = txn.open_table(CONTEXT).map_err(E::from)?;
                context
                    .insert((kind.as_str(), id.as_str()), doc.as_bytes())
                    .map_err(E::from)?;
                Ok(())
            })
            .await
            .map_err(storage)
    }

    async fn ping(&self) -> Result<(), Error> {
        self.db.read(|_| Ok(())).map_err(storage)
    }
}
