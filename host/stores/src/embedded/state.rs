//! The state store on the embedded store: `events` (event id → record), `counters` (records per
//! state), `context` (live `order` / `shipment` documents), and `events_by_receipt` (the same
//! records by time of receipt, so that `EVENT_TTL_DAYS` expires finished records without a
//! scan). Claims and finishes run inside the single writer's transactions, so each is atomic.

use std::collections::BinaryHeap;
use std::time::Duration;

use async_trait::async_trait;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use switchyard_model::clock::now_ms;
use switchyard_model::event::Job;
use switchyard_model::record::{
    DeliveryState, DeliveryStatus, EventRecord, EventState, ScanFilter, StateCounts, StoredEvent,
};

use super::{CONTEXT, COUNTERS, EVENTS, EVENTS_BY_RECEIPT, EmbeddedDb};
use crate::state::{Claim, Error, Finish, StateStore};

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

fn storage(e: super::Error) -> Error {
    Error::Unavailable(e.0)
}

type E = super::Error;

fn load(txn: &WriteTransaction, id: &str) -> Result<Option<Stored>, E> {
    let events = txn.open_table(EVENTS)?;
    let found = events.get(id)?;
    found
        .map(|v| serde_json::from_slice(v.value()).map_err(E::from))
        .transpose()
}

fn save(txn: &WriteTransaction, stored: &Stored) -> Result<(), E> {
    let bytes = serde_json::to_vec(stored)?;
    txn.open_table(EVENTS)?
        .insert(stored.record.event_id.as_str(), bytes.as_slice())?;
    Ok(())
}

/// Moves one record from state `from` (if any) to `to` (if any) in the counters.
fn count(
    txn: &WriteTransaction,
    from: Option<EventState>,
    to: Option<EventState>,
) -> Result<(), E> {
    if from == to {
        return Ok(());
    }
    let mut counters = txn.open_table(COUNTERS)?;
    let mut add = |state: EventState, up: bool| -> Result<(), E> {
        let n = counters
            .get(state.as_str())?
            .map(|v| v.value())
            .unwrap_or(0);
        let n = if up { n + 1 } else { n.saturating_sub(1) };
        counters.insert(state.as_str(), n)?;
        Ok(())
    };
    if let Some(f) = from {
        add(f, false)?;
    }
    if let Some(t) = to {
        add(t, true)?;
    }
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
    /// Finished records older than this (by time of receipt) are deleted (`EVENT_TTL_DAYS`).
    ttl: Option<Duration>,
    /// Set once records written before `events_by_receipt` existed are indexed too.
    indexed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Where the next expiry pass starts (after the last one's batch), or the beginning.
    expire_from: std::sync::Arc<std::sync::Mutex<Option<(u64, String)>>>,
}

/// Records expired per housekeeping pass at most (the next pass goes on).
const EXPIRE_BATCH: usize = 5_000;

impl EmbeddedState {
    /// The state store on `db`, keeping records for `ttl` after their receipt (`None`: forever).
    pub fn new(db: EmbeddedDb, ttl: Option<Duration>) -> Self {
        EmbeddedState {
            db,
            ttl,
            indexed: Default::default(),
            expire_from: Default::default(),
        }
    }

    /// Indexes by receipt the records a store written before the index existed holds: once,
    /// [`EXPIRE_BATCH`] records per transaction so that other writes go on in between.
    async fn index_older_records(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if self.indexed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let last = self
                .db
                .write(move |txn| {
                    let events = txn.open_table(EVENTS)?;
                    let mut by_receipt = txn.open_table(EVENTS_BY_RECEIPT)?;
                    let rows = match &from {
                        Some(f) => events.range::<&str>((
                            std::ops::Bound::Excluded(f.as_str()),
                            std::ops::Bound::Unbounded,
                        )),
                        None => events.range::<&str>(..),
                    }?;
                    let mut last = None;
                    for row in rows.take(EXPIRE_BATCH) {
                        let (k, v) = row?;
                        if let Ok(stored) = serde_json::from_slice::<Stored>(v.value()) {
                            by_receipt.insert((stored.record.received_at_ms, k.value()), ())?;
                        }
                        last = Some(k.value().to_string());
                    }
                    Ok(last)
                })
                .await
                .map_err(storage)?;
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
        self.indexed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl StateStore for EmbeddedState {
    async fn claim(&self, job: &Job, owner: &str, lease: Duration) -> Result<Claim, Error> {
        let (job, owner) = (job.clone(), owner.to_string());
        self.db
            .write(move |txn| {
                let now = now_ms();
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
                        deferred: None,
                        deliveries: Default::default(),
                        routed_by: None,
                        received_at_ms: job.received_at_ms,
                        updated_at_ms: now,
                    };
                    txn.open_table(EVENTS_BY_RECEIPT)?
                        .insert((job.received_at_ms, job.event_id.as_str()), ())?;
                    save(
                        txn,
                        &Stored {
                            record,
                            lease_owner: Some(owner),
                            lease_until_ms,
                            payload: Some(job.payload.clone()),
                        },
                    )?;
                    count(txn, None, Some(EventState::RoutingPending))?;
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
                    count(
                        txn,
                        Some(stored.record.state),
                        Some(EventState::RoutingPending),
                    )?;
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
                if let Finish::Deferred(deferred) = finish {
                    r.state = EventState::RoutingPending;
                    r.deferred = Some(deferred);
                    r.updated_at_ms = now_ms();
                    stored.lease_owner = None;
                    stored.lease_until_ms = 0;
                    save(txn, &stored)?;
                    count(txn, Some(before), Some(EventState::RoutingPending))?;
                    return Ok(true);
                }
                r.deferred = None;
                let attempt = match finish {
                    Finish::Routed {
                        decision,
                        plugin,
                        attempt,
                        deliveries,
                        routed_by,
                    } => {
                        r.state = EventState::Routed;
                        r.decision = Some(decision);
                        r.plugin = Some(plugin);
                        r.error = None;
                        r.deliveries = deliveries;
                        r.routed_by = Some(routed_by);
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
                    Finish::Deferred(_) => unreachable!("handled above"),
                };
                r.attempts = attempt.attempt;
                r.updated_at_ms = now_ms();
                r.history.push(attempt);
                if r.history.len() > HISTORY_LIMIT {
                    let cut = r.history.len() - HISTORY_LIMIT;
                    r.history.drain(..cut);
                }
                let after = r.state;
                stored.lease_owner = None;
                stored.lease_until_ms = 0;
                save(txn, &stored)?;
                count(txn, Some(before), Some(after))?;
                Ok(true)
            })
            .await
            .map_err(storage)
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventRecord>, Error> {
        self.db
            .read(|txn| {
                let events = txn.open_table(EVENTS)?;
                let found = events.get(event_id)?;
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
                let counters = txn.open_table(COUNTERS)?;
                let get = |s: EventState| -> Result<u64, E> {
                    Ok(counters.get(s.as_str())?.map(|v| v.value()).unwrap_or(0))
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
                let events = txn.open_table(EVENTS)?;
                // The `limit` oldest matches, in a max-heap of that size: memory stays bounded
                // by the limit, not the store.
                let mut oldest: BinaryHeap<Oldest> = BinaryHeap::with_capacity(limit + 1);
                for row in events.iter()? {
                    let (_, value) = row?;
                    let stored: Stored = serde_json::from_slice(value.value())?;
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

    async fn record_delivery(
        &self,
        event_id: &str,
        destination: &str,
        status: &DeliveryStatus,
    ) -> Result<bool, Error> {
        let (event_id, destination, status) = (
            event_id.to_string(),
            destination.to_string(),
            status.clone(),
        );
        self.db
            .write(move |txn| {
                let Some(mut stored) = load(txn, &event_id)? else {
                    return Ok(false);
                };
                let Some(slot) = stored.record.deliveries.get_mut(&destination) else {
                    return Ok(false);
                };
                if slot.state == DeliveryState::Delivered {
                    return Ok(false);
                }
                *slot = status;
                save(txn, &stored)?;
                Ok(true)
            })
            .await
            .map_err(storage)
    }

    async fn lookup(&self, kind: &str, id: &str) -> Result<Option<String>, Error> {
        self.db
            .read(|txn| {
                let context = txn.open_table(CONTEXT)?;
                let found = context.get((kind, id))?;
                Ok(found.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
            })
            .map_err(storage)
    }

    async fn put_context(&self, kind: &str, id: &str, document: &str) -> Result<(), Error> {
        let (kind, id, doc) = (kind.to_string(), id.to_string(), document.to_string());
        self.db
            .write(move |txn| {
                let mut context = txn.open_table(CONTEXT)?;
                context.insert((kind.as_str(), id.as_str()), doc.as_bytes())?;
                Ok(())
            })
            .await
            .map_err(storage)
    }

    async fn ping(&self) -> Result<(), Error> {
        self.db.read(|_| Ok(())).map_err(storage)
    }

    /// Deletes finished records received more than the TTL ago (pending ones stay: they are
    /// still being routed, and are looked at again by a later pass).
    async fn maintain(&self, now_ms: u64) -> Result<(), Error> {
        let Some(ttl) = self.ttl else {
            return Ok(());
        };
        self.index_older_records().await?;
        let cutoff = now_ms.saturating_sub(ttl.as_millis() as u64);
        // Pending records past the cutoff stay (they are being routed) and are skipped: each
        // pass goes on after the last one's position, so they never hold the others up.
        let from = self
            .expire_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let next = self
            .db
            .write(move |txn| {
                let mut by_receipt = txn.open_table(EVENTS_BY_RECEIPT)?;
                let start = match &from {
                    Some((at, id)) => std::ops::Bound::Excluded((*at, id.as_str())),
                    None => std::ops::Bound::Unbounded,
                };
                let old: Vec<(u64, String)> = by_receipt
                    .range((start, std::ops::Bound::Excluded((cutoff, ""))))?
                    .take(EXPIRE_BATCH)
                    .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_string())))
                    .collect::<Result<_, _>>()?;
                let next = (old.len() == EXPIRE_BATCH)
                    .then(|| old.last().cloned())
                    .flatten();
                let mut events = txn.open_table(EVENTS)?;
                let mut expired: Vec<EventState> = Vec::new();
                for (at, id) in old {
                    let state = events
                        .get(id.as_str())?
                        .and_then(|v| serde_json::from_slice::<Stored>(v.value()).ok())
                        .map(|s| s.record.state);
                    match state {
                        Some(EventState::RoutingPending) => continue,
                        Some(s) => {
                            events.remove(id.as_str())?;
                            expired.push(s);
                        }
                        None => {}
                    }
                    by_receipt.remove((at, id.as_str()))?;
                }
                drop(events);
                drop(by_receipt);
                for state in expired {
                    count(txn, Some(state), None)?;
                }
                Ok(next)
            })
            .await
            .map_err(storage)?;
        *self.expire_from.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::record::Attempt;
    use switchyard_model::routing::{Decision, PluginId};

    fn job(id: &str, received_at_ms: u64) -> Job {
        Job {
            event_id: id.into(),
            event_type: "T".into(),
            correlation_id: "c".into(),
            payload: "{}".into(),
            received_at_ms,
            attempt: 1,
            ..Job::default()
        }
    }

    fn routed() -> Finish {
        Finish::Routed {
            decision: Decision::to("d", ""),
            plugin: PluginId {
                name: "p".into(),
                version: "v".into(),
            },
            attempt: Attempt {
                attempt: 1,
                at_ms: 0,
                outcome: "routed".into(),
                plugin: None,
                duration_ms: 0,
                error_kind: None,
                error: None,
                destination: None,
                next_attempt_at_ms: None,
            },
            deliveries: Default::default(),
            routed_by: "1-0".into(),
        }
    }

    #[tokio::test]
    async fn event_ttl_expires_finished_records_and_keeps_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let day = 86_400_000;
        let store = EmbeddedState::new(db, Some(Duration::from_millis(day)));
        let now = now_ms();
        let lease = Duration::from_secs(30);
        for (id, received) in [
            ("old", now - 2 * day),
            ("old-pending", now - 2 * day),
            ("new", now),
        ] {
            assert_eq!(
                store.claim(&job(id, received), id, lease).await.unwrap(),
                Claim::Claimed
            );
        }
        assert!(store.finish("old", "old", routed()).await.unwrap());
        assert!(store.finish("new", "new", routed()).await.unwrap());
        store.maintain(now).await.unwrap();
        assert!(store.get("old").await.unwrap().is_none(), "expired");
        assert!(store.get("new").await.unwrap().is_some());
        assert!(
            store.get("old-pending").await.unwrap().is_some(),
            "still being routed: kept"
        );
        let c = store.counts().await.unwrap();
        assert_eq!((c.pending, c.routed, c.failed), (1, 1, 0));
        // Once it is finished, a later pass expires it too.
        assert!(
            store
                .finish("old-pending", "old-pending", routed())
                .await
                .unwrap()
        );
        store.maintain(now).await.unwrap();
        assert!(store.get("old-pending").await.unwrap().is_none());
        assert_eq!(store.counts().await.unwrap().routed, 1);
    }
}
