//! The in-memory backend: the queue and the state store in this process's memory, behind one
//! lock. Nothing survives the process, so it is never chosen by configuration; it exists for fast
//! tests of what sits on top of the stores (and shows what a backend must do: it passes the same
//! contract suite as the others, see the end of this file).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchyard_model::clock::now_ms;
use switchyard_model::event::Job;
use switchyard_model::record::{
    DeliveryState, DeliveryStatus, EventRecord, EventState, ScanFilter, StateCounts, StoredEvent,
};
use tokio::sync::Notify;

use crate::queue::{
    self, DeadLetter, Delivery, Limits, Queue, QueueStats, ReplayFilter, ReplayGuard,
};
use crate::state::{self, Claim, Finish, StateStore};

/// Attempts kept in an event's history (the newest).
const HISTORY_LIMIT: usize = 100;

/// A queued entry: ready, or in flight with its consumer since a time.
struct Entry {
    job: Job,
    taken: Option<(String, Instant)>,
}

/// A record with its lease and payload.
struct Stored {
    record: EventRecord,
    lease_owner: Option<String>,
    lease_until_ms: u64,
    payload: String,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    ready: VecDeque<u64>,
    delayed: BTreeMap<(u64, u64), Job>,
    dlq: BTreeMap<u64, DeadLetter>,
    accepted: HashMap<String, u64>,
    messages: HashMap<String, (u64, String)>,
    reclaim_from: u64,
    records: HashMap<String, Stored>,
    context: HashMap<(String, String), String>,
}

impl Inner {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Removes a finished entry (and, when `done`, its event's "accepted" marker).
    fn finish(&mut self, d: &Delivery, done: bool) -> Result<(), queue::Error> {
        let seq = seq_of(&d.id)?;
        self.entries.remove(&seq);
        if done {
            self.accepted.remove(&d.job.event_id);
        }
        Ok(())
    }

    fn push_ready(&mut self, job: Job) -> u64 {
        let seq = self.seq();
        self.accepted
            .entry(job.event_id.clone())
            .or_insert(job.received_at_ms);
        self.entries.insert(seq, Entry { job, taken: None });
        self.ready.push_back(seq);
        seq
    }
}

fn id_of(seq: u64) -> String {
    format!("{seq:020}")
}

fn seq_of(id: &str) -> Result<u64, queue::Error> {
    Some(id)
        .filter(|id| id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| queue::Error::InvalidCursor(id.to_string()))
}

/// The queue and the state store, in memory.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    arrived: Notify,
    limits: Limits,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new(limits: Limits) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            arrived: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Queue for MemoryStore {
    async fn enqueue(&self, job: &Job, guard: Option<&ReplayGuard>) -> Result<(), queue::Error> {
        let mut m = self.lock();
        let now = now_ms();
        if let Some(g) = guard
            && let Some((expires, digest)) = m.messages.get(&g.message_id)
            && *expires > now
            && *digest != g.digest
        {
            return Err(queue::Error::Replayed);
        }
        let depth = (m.entries.len() + m.delayed.len()) as u64;
        if self.limits.max_depth > 0 && depth >= self.limits.max_depth {
            return Err(queue::Error::Full(depth));
        }
        let dead = m.dlq.len() as u64;
        if self.limits.dlq_max_depth > 0 && dead >= self.limits.dlq_max_depth {
            return Err(queue::Error::DlqFull(dead));
        }
        if let Some(g) = guard {
            let fresh = m.messages.get(&g.message_id).is_none_or(|(e, _)| *e <= now);
            if fresh {
                let expires = now + g.ttl.as_millis() as u64;
                m.messages
                    .insert(g.message_id.clone(), (expires, g.digest.clone()));
            }
        }
        m.push_ready(job.clone());
        drop(m);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn fetch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, queue::Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            {
                let mut m = self.lock();
                let now = Instant::now();
                let mut out = Vec::new();
                while out.len() < max.max(1) {
                    let Some(seq) = m.ready.pop_front() else {
                        break;
                    };
                    if let Some(e) = m.entries.get_mut(&seq) {
                        e.taken = Some((consumer.to_string(), now));
                        out.push(Delivery {
                            id: id_of(seq),
                            job: e.job.clone(),
                        });
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, queue::Error> {
        let mut m = self.lock();
        let now = Instant::now();
        let from = m.reclaim_from;
        let mut out = Vec::new();
        let mut next_from = 0;
        for (seq, e) in m.entries.range_mut(from..) {
            let Some((owner, taken)) = &mut e.taken else {
                continue;
            };
            if out.len() >= max {
                next_from = *seq;
                break;
            }
            if now.duration_since(*taken) >= min_idle {
                *owner = consumer.to_string();
                *taken = now;
                out.push(Delivery {
                    id: id_of(*seq),
                    job: e.job.clone(),
                });
            }
        }
        m.reclaim_from = next_from;
        Ok(out)
    }

    async fn touch(&self, _consumer: &str, ids: &[String]) -> Result<(), queue::Error> {
        let mut m = self.lock();
        let now = Instant::now();
        for seq in ids.iter().filter_map(|id| seq_of(id).ok()) {
            if let Some((_, taken)) = m.entries.get_mut(&seq).and_then(|e| e.taken.as_mut()) {
                *taken = now;
            }
        }
        Ok(())
    }

    async fn update(&self, delivery: &Delivery, job: &Job) -> Result<(), queue::Error> {
        let seq = seq_of(&delivery.id)?;
        if let Some(e) = self.lock().entries.get_mut(&seq) {
            e.job = job.clone();
        }
        Ok(())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), queue::Error> {
        self.lock().finish(delivery, true)
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        next: &Job,
        due_at_ms: u64,
    ) -> Result<(), queue::Error> {
        let mut m = self.lock();
        m.finish(delivery, false)?;
        let seq = m.seq();
        m.delayed.insert((due_at_ms, seq), next.clone());
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error_kind: &str,
        error: &str,
    ) -> Result<(), queue::Error> {
        let mut m = self.lock();
        m.finish(delivery, true)?;
        let seq = m.seq();
        let letter = DeadLetter {
            id: id_of(seq),
            job: delivery.job.clone(),
            error: error.into(),
            error_kind: error_kind.into(),
            failed_at_ms: now_ms(),
        };
        m.dlq.insert(seq, letter);
        Ok(())
    }

    async fn promote_due(&self, now_ms: u64, max: usize) -> Result<usize, queue::Error> {
        let mut m = self.lock();
        let due: Vec<(u64, u64)> = m
            .delayed
            .range(..(now_ms + 1, 0))
            .take(max)
            .map(|(k, _)| *k)
            .collect();
        for key in &due {
            if let Some(job) = m.delayed.remove(key) {
                m.push_ready(job);
            }
        }
        drop(m);
        if !due.is_empty() {
            self.arrived.notify_waiters();
        }
        Ok(due.len())
    }

    async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, queue::Error> {
        let from = match after {
            Some(a) => seq_of(a)? + 1,
            None => 0,
        };
        Ok(self
            .lock()
            .dlq
            .range(from..)
            .take(limit)
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn replay(&self, filter: &ReplayFilter) -> Result<Vec<String>, queue::Error> {
        let mut m = self.lock();
        let matching: Vec<u64> = m
            .dlq
            .iter()
            .filter(|(_, l)| filter.matches(&l.job))
            .map(|(k, _)| *k)
            .collect();
        let mut ids = Vec::new();
        for key in matching {
            if let Some(letter) = m.dlq.remove(&key) {
                let job = letter.job.replayed();
                ids.push(job.event_id.clone());
                m.accepted.insert(job.event_id.clone(), now_ms());
                m.push_ready(job);
            }
        }
        drop(m);
        self.arrived.notify_waiters();
        Ok(ids)
    }

    async fn accepted_at(&self, event_id: &str) -> Result<Option<u64>, queue::Error> {
        Ok(self.lock().accepted.get(event_id).copied())
    }

    async fn stats(&self) -> Result<QueueStats, queue::Error> {
        let m = self.lock();
        let in_flight = m.entries.values().filter(|e| e.taken.is_some()).count() as u64;
        Ok(QueueStats {
            ready: m.ready.len() as u64,
            in_flight,
            delayed: m.delayed.len() as u64,
            dead_lettered: m.dlq.len() as u64,
        })
    }

    async fn ping(&self) -> Result<(), queue::Error> {
        Ok(())
    }

    async fn maintain(&self, now_ms: u64) -> Result<(), queue::Error> {
        self.lock()
            .messages
            .retain(|_, (expires, _)| *expires > now_ms);
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn claim(&self, job: &Job, owner: &str, lease: Duration) -> Result<Claim, state::Error> {
        let mut m = self.lock();
        let now = now_ms();
        let lease_until_ms = now + lease.as_millis() as u64;
        let Some(stored) = m.records.get_mut(&job.event_id) else {
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
            let stored = Stored {
                record,
                lease_owner: Some(owner.into()),
                lease_until_ms,
                payload: job.payload.clone(),
            };
            m.records.insert(job.event_id.clone(), stored);
            return Ok(Claim::Claimed);
        };
        if stored.record.state == EventState::Routed {
            stored.record.duplicates += 1;
            return Ok(Claim::AlreadyRouted);
        }
        if stored.lease_until_ms < now || stored.lease_owner.as_deref() == Some(owner) {
            stored.record.state = EventState::RoutingPending;
            stored.record.correlation_id = job.correlation_id.clone();
            stored.record.updated_at_ms = now;
            stored.lease_owner = Some(owner.into());
            stored.lease_until_ms = lease_until_ms;
            return Ok(Claim::Claimed);
        }
        Ok(Claim::Busy)
    }

    async fn finish(
        &self,
        event_id: &str,
        owner: &str,
        finish: Finish,
    ) -> Result<bool, state::Error> {
        let mut m = self.lock();
        let Some(stored) = m.records.get_mut(event_id) else {
            return Ok(false);
        };
        if stored.lease_owner.as_deref() != Some(owner) {
            return Ok(false);
        }
        stored.lease_owner = None;
        stored.lease_until_ms = 0;
        let r = &mut stored.record;
        r.updated_at_ms = now_ms();
        let attempt = match finish {
            Finish::Deferred(deferred) => {
                r.state = EventState::RoutingPending;
                r.deferred = Some(deferred);
                return Ok(true);
            }
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
        };
        r.deferred = None;
        r.attempts = attempt.attempt;
        r.history.push(attempt);
        if r.history.len() > HISTORY_LIMIT {
            let cut = r.history.len() - HISTORY_LIMIT;
            r.history.drain(..cut);
        }
        Ok(true)
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventRecord>, state::Error> {
        Ok(self.lock().records.get(event_id).map(|s| s.record.clone()))
    }

    async fn counts(&self) -> Result<StateCounts, state::Error> {
        let mut c = StateCounts::default();
        for s in self.lock().records.values() {
            match s.record.state {
                EventState::RoutingPending => c.pending += 1,
                EventState::Routed => c.routed += 1,
                EventState::Failed => c.failed += 1,
            }
        }
        Ok(c)
    }

    async fn scan(
        &self,
        filter: &ScanFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, state::Error> {
        let m = self.lock();
        let mut found: Vec<StoredEvent> = m
            .records
            .values()
            .filter(|s| filter.matches(&s.record))
            .map(|s| StoredEvent {
                record: s.record.clone(),
                payload: s.payload.clone(),
            })
            .collect();
        found.sort_by(|a, b| {
            (a.record.received_at_ms, &a.record.event_id)
                .cmp(&(b.record.received_at_ms, &b.record.event_id))
        });
        found.truncate(limit);
        Ok(found)
    }

    async fn record_delivery(
        &self,
        event_id: &str,
        destination: &str,
        status: &DeliveryStatus,
    ) -> Result<bool, state::Error> {
        let mut m = self.lock();
        let slot = m
            .records
            .get_mut(event_id)
            .and_then(|s| s.record.deliveries.get_mut(destination));
        Ok(match slot {
            Some(slot) if slot.state != DeliveryState::Delivered => {
                *slot = status.clone();
                true
            }
            _ => false,
        })
    }

    async fn lookup(&self, kind: &str, id: &str) -> Result<Option<String>, state::Error> {
        Ok(self
            .lock()
            .context
            .get(&(kind.to_string(), id.to_string()))
            .cloned())
    }

    async fn put_context(&self, kind: &str, id: &str, document: &str) -> Result<(), state::Error> {
        self.lock()
            .context
            .insert((kind.into(), id.into()), document.into());
        Ok(())
    }

    async fn ping(&self) -> Result<(), state::Error> {
        Ok(())
    }
}

/// The contract suite's row for this backend.
#[cfg(test)]
async fn open(limits: Limits) -> crate::Stores {
    crate::Backend::Memory { limits }
        .open()
        .await
        .expect("memory backend")
}

#[cfg(test)]
crate::contract_suite!(contract, open);
