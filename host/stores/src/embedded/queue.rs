//! The queue on the embedded store.
//!
//! Durable part (redb, see [`super`]): `jobs` holds every queued entry (ready or being
//! routed), `delayed` the retries by due time, `dlq` the dead letters. The split between ready
//! and in flight lives in memory: only this process can open the store, so after a restart every
//! entry still in `jobs` is simply ready again (a delivery that had finished is then recognised
//! by the state store and acked).

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};
use tokio::sync::Notify;

use switchyard_model::clock::now_ms;
use switchyard_model::event::Job;

use super::{DELIVERY_TABLES, EVENT_TABLES, EmbeddedDb, LaneTables, MESSAGE_EXPIRY, MESSAGE_IDS};
use crate::queue::{
    DeadLetter, Delivery, Error, Lane, Queue, QueueStats, ReplayFilter, ReplayGuard,
};

type E = super::Error;

fn storage(e: E) -> Error {
    Error::Unavailable(e.0)
}

fn id_of(seq: u64) -> String {
    format!("{seq:020}")
}

fn seq_of(id: &str) -> Result<u64, Error> {
    id.parse().map_err(|_| Error::Corrupt {
        id: id.to_string(),
        reason: "not an embedded queue id".into(),
    })
}

/// A dead-letter cursor: one of the ids this queue hands out (20 digits).
fn cursor_of(id: &str) -> Result<u64, Error> {
    Some(id)
        .filter(|id| id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::InvalidCursor(id.to_string()))
}

/// Checks `guard`'s message id and remembers it (the first body's digest, until it expires).
/// `false` when the id was seen with another body within its window.
fn remember_message(
    txn: &redb::WriteTransaction,
    guard: &ReplayGuard,
    now_ms: u64,
) -> Result<bool, E> {
    let mut ids = txn.open_table(MESSAGE_IDS)?;
    let seen = ids.get(guard.message_id.as_str())?.map(|v| {
        let (expires, digest) = v.value();
        (expires, digest.to_string())
    });
    match seen {
        Some((expires, digest)) if expires > now_ms => Ok(digest == guard.digest),
        _ => {
            let expires = now_ms + guard.ttl.as_millis() as u64;
            ids.insert(guard.message_id.as_str(), (expires, guard.digest.as_str()))?;
            txn.open_table(MESSAGE_EXPIRY)?
                .insert((expires, guard.message_id.as_str()), ())?;
            Ok(true)
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, E> {
    serde_json::to_vec(v).map_err(E::from)
}

/// Removes a finished queue entry and, when given, its event's "accepted" marker.
fn finish_entry(
    txn: &redb::WriteTransaction,
    t: &LaneTables,
    seq: u64,
    event_id: Option<&str>,
) -> Result<(), E> {
    txn.open_table(t.jobs)?.remove(seq)?;
    if let Some(id) = event_id {
        txn.open_table(t.accepted)?.remove(id)?;
    }
    Ok(())
}

/// What the dead-letter table stores.
#[derive(serde::Serialize, serde::Deserialize)]
struct Letter {
    job: Job,
    error: String,
    kind: String,
    failed_at_ms: u64,
}

#[derive(Default)]
struct Mem {
    ready: VecDeque<Delivery>,
    in_flight: HashMap<u64, (Instant, Delivery)>,
}

/// The in-memory ready list, shared with the writer thread so that entries committed by a
/// caller that stopped waiting still become ready.
struct ReadySet {
    mem: Mutex<Mem>,
    arrived: Notify,
}

impl ReadySet {
    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        let mut mem = self.mem();
        let before = mem.ready.len();
        mem.ready.extend(deliveries);
        if mem.ready.len() > before {
            drop(mem);
            self.arrived.notify_waiters();
            self.arrived.notify_one();
        }
    }
}

/// The embedded queue.
pub struct EmbeddedQueue {
    db: EmbeddedDb,
    ready: Arc<ReadySet>,
    /// Next sequence number; shared with write closures, which run on the writer thread.
    seq: Arc<AtomicU64>,
    delayed: AtomicU64,
    /// Entries in the dead-letter table.
    dead: Arc<AtomicU64>,
    /// Where the next reclaim pass starts (a sequence number; 0 after a full sweep).
    reclaim_from: AtomicU64,
    /// This lane's tables.
    tables: LaneTables,
    max_depth: u64,
    dlq_max_depth: u64,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl EmbeddedQueue {
    /// Loads the queue from the store: every entry in `jobs` is ready. `max_depth` and
    /// `dlq_max_depth` bound ready + delayed entries and dead letters (0 = no bound).
    pub fn open(
        db: EmbeddedDb,
        lane: Lane,
        max_depth: u64,
        dlq_max_depth: u64,
    ) -> Result<Self, Error> {
        let t = match lane {
            Lane::Events => EVENT_TABLES,
            Lane::Deliveries => DELIVERY_TABLES,
        };
        let (ready, delayed, dead, max_seq) = db
            .read(|txn| {
                let jobs = txn.open_table(t.jobs)?;
                let mut ready = VecDeque::new();
                for row in jobs.iter()? {
                    let (k, v) = row?;
                    match serde_json::from_slice::<Job>(v.value()) {
                        Ok(job) => ready.push_back(Delivery { id: id_of(k.value()), job }),
                        Err(err) => tracing::error!(seq = k.value(), error = %err, "undecodable queue entry skipped"),
                    }
                }
                let delayed_t = txn.open_table(t.delayed)?;
                let dlq = txn.open_table(t.dlq)?;
                let last_job = jobs.last()?.map(|(k, _)| k.value()).unwrap_or(0);
                let last_dlq = dlq.last()?.map(|(k, _)| k.value()).unwrap_or(0);
                let mut last_delayed = 0;
                for row in delayed_t.iter()? {
                    let (k, _) = row?;
                    last_delayed = last_delayed.max(k.value().1);
                }
                Ok((
                    ready,
                    delayed_t.len()?,
                    dlq.len()?,
                    last_job.max(last_dlq).max(last_delayed),
                ))
            })
            .map_err(storage)?;
        if !ready.is_empty() {
            tracing::info!(
                entries = ready.len(),
                "embedded queue: entries left from the last run are ready again"
            );
        }
        Ok(EmbeddedQueue {
            db,
            ready: Arc::new(ReadySet {
                mem: Mutex::new(Mem {
                    ready,
                    in_flight: HashMap::new(),
                }),
                arrived: Notify::new(),
            }),
            seq: Arc::new(AtomicU64::new(max_seq + 1)),
            delayed: AtomicU64::new(delayed),
            dead: Arc::new(AtomicU64::new(dead)),
            reclaim_from: AtomicU64::new(0),
            tables: t,
            max_depth,
            dlq_max_depth,
        })
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.ready.mem()
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn take_ready(&self, max: usize) -> Vec<Delivery> {
        let mut mem = self.mem();
        let n = max.min(mem.ready.len());
        let taken: Vec<Delivery> = mem.ready.drain(..n).collect();
        let now = Instant::now();
        for d in &taken {
            if let Ok(seq) = d.id.parse() {
                mem.in_flight.insert(seq, (now, d.clone()));
            }
        }
        taken
    }

    fn done(&self, delivery: &Delivery) {
        if let Ok(seq) = delivery.id.parse::<u64>() {
            self.mem().in_flight.remove(&seq);
        }
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn enqueue(&self, job: &Job, guard: Option<&ReplayGuard>) -> Result<(), Error> {
        let t = self.tables;
        if self.max_depth > 0 {
            let depth = {
                let mem = self.mem();
                (mem.ready.len() + mem.in_flight.len()) as u64
            } + self.delayed.load(Ordering::Relaxed);
            if depth >= self.max_depth {
                return Err(Error::Full(depth));
            }
        }
        let dead = self.dead.load(Ordering::Relaxed);
        if self.dlq_max_depth > 0 && dead >= self.dlq_max_depth {
            return Err(Error::DlqFull(dead));
        }
        let seq = self.next_seq();
        let bytes = json(job).map_err(storage)?;
        let (event_id, received) = (job.event_id.clone(), job.received_at_ms);
        let (ready, delivery) = (
            self.ready.clone(),
            Delivery {
                id: id_of(seq),
                job: job.clone(),
            },
        );
        let guard = guard.cloned();
        let appended = self
            .db
            .write_then(
                move |txn| {
                    if let Some(g) = &guard
                        && !remember_message(txn, g, now_ms())?
                    {
                        return Ok(false);
                    }
                    txn.open_table(t.jobs)?.insert(seq, bytes.as_slice())?;
                    txn.open_table(t.accepted)?
                        .insert(event_id.as_str(), received)?;
                    Ok(true)
                },
                move |appended| {
                    if *appended {
                        ready.push([delivery])
                    }
                },
            )
            .await
            .map_err(storage)?;
        if appended {
            Ok(())
        } else {
            Err(Error::Replayed)
        }
    }

    async fn fetch(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready.arrived.notified();
            let got = self.take_ready(max.max(1));
            if !got.is_empty() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn reclaim(
        &self,
        _consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let mut mem = self.mem();
        let now = Instant::now();
        let mut out = Vec::new();
        // In entry order from where the last pass stopped, as a Redis consumer group's
        // XAUTOCLAIM cursor goes: each pass goes on rather than re-reading the head.
        let mut entries: Vec<_> = mem.in_flight.iter_mut().collect();
        entries.sort_by_key(|(seq, _)| **seq);
        let from = self.reclaim_from.load(Ordering::Relaxed);
        let start = entries.partition_point(|(seq, _)| **seq < from);
        let mut next_from = 0;
        for (seq, (fetched, d)) in entries.into_iter().skip(start) {
            if out.len() >= max {
                next_from = *seq;
                break;
            }
            if now.duration_since(*fetched) >= min_idle {
                *fetched = now;
                out.push(d.clone());
            }
        }
        self.reclaim_from.store(next_from, Ordering::Relaxed);
        Ok(out)
    }

    async fn touch(&self, _consumer: &str, ids: &[String]) -> Result<(), Error> {
        let mut mem = self.mem();
        let now = Instant::now();
        for seq in ids.iter().filter_map(|id| id.parse::<u64>().ok()) {
            if let Some((fetched, _)) = mem.in_flight.get_mut(&seq) {
                *fetched = now;
            }
        }
        Ok(())
    }

    async fn update(&self, delivery: &Delivery, job: &Job) -> Result<(), Error> {
        let t = self.tables;
        let seq = seq_of(&delivery.id)?;
        let bytes = json(job).map_err(storage)?;
        self.db
            .write(move |txn| {
                let mut jobs = txn.open_table(t.jobs)?;
                // Only while the entry is queued: a finished one stays finished.
                if jobs.get(seq)?.is_some() {
                    jobs.insert(seq, bytes.as_slice())?;
                }
                Ok(())
            })
            .await
            .map_err(storage)?;
        if let Some((_, d)) = self.mem().in_flight.get_mut(&seq) {
            d.job = job.clone();
        }
        Ok(())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let t = self.tables;
        let seq = seq_of(&delivery.id)?;
        let event_id = delivery.job.event_id.clone();
        self.db
            .write(move |txn| finish_entry(txn, &t, seq, Some(&event_id)))
            .await
            .map_err(storage)?;
        self.done(delivery);
        Ok(())
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        next: &Job,
        due_at_ms: u64,
    ) -> Result<(), Error> {
        let t = self.tables;
        let seq = seq_of(&delivery.id)?;
        let new_seq = self.next_seq();
        let bytes = json(next).map_err(storage)?;
        self.db
            .write(move |txn| {
                finish_entry(txn, &t, seq, None)?;
                txn.open_table(t.delayed)?
                    .insert((due_at_ms, new_seq), bytes.as_slice())?;
                Ok(())
            })
            .await
            .map_err(storage)?;
        self.delayed.fetch_add(1, Ordering::Relaxed);
        self.done(delivery);
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error_kind: &str,
        error: &str,
    ) -> Result<(), Error> {
        let t = self.tables;
        let seq = seq_of(&delivery.id)?;
        let new_seq = self.next_seq();
        let letter = Letter {
            job: delivery.job.clone(),
            error: error.to_string(),
            kind: error_kind.to_string(),
            failed_at_ms: now_ms(),
        };
        let bytes = json(&letter).map_err(storage)?;
        let event_id = delivery.job.event_id.clone();
        let dead = self.dead.clone();
        self.db
            .write_then(
                move |txn| {
                    finish_entry(txn, &t, seq, Some(&event_id))?;
                    txn.open_table(t.dlq)?.insert(new_seq, bytes.as_slice())?;
                    Ok(())
                },
                // Counted with the commit, on the writer thread, as replays uncount.
                move |_| {
                    dead.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await
            .map_err(storage)?;
        self.done(delivery);
        Ok(())
    }

    async fn promote_due(&self, now_ms: u64, max: usize) -> Result<usize, Error> {
        let t = self.tables;
        if self.delayed.load(Ordering::Relaxed) == 0 {
            return Ok(0);
        }
        let (seq, ready) = (self.seq.clone(), self.ready.clone());
        let moved = self
            .db
            .write_then(
                move |txn| {
                    let mut delayed = txn.open_table(t.delayed)?;
                    let mut jobs = txn.open_table(t.jobs)?;
                    let mut due = Vec::new();
                    for row in delayed.range(..(now_ms + 1, 0))? {
                        if due.len() >= max {
                            break;
                        }
                        let (k, v) = row?;
                        due.push((k.value(), v.value().to_vec()));
                    }
                    let mut moved = Vec::new();
                    for (key, bytes) in due {
                        let s = seq.fetch_add(1, Ordering::Relaxed);
                        delayed.remove(key)?;
                        jobs.insert(s, bytes.as_slice())?;
                        if let Ok(job) = serde_json::from_slice::<Job>(&bytes) {
                            moved.push(Delivery { id: id_of(s), job });
                        }
                    }
                    Ok(moved)
                },
                move |moved: &Vec<Delivery>| ready.push(moved.iter().cloned()),
            )
            .await
            .map_err(storage)?;
        let n = moved.len();
        self.delayed.fetch_sub(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let t = self.tables;
        let start = match after {
            Some(a) => Bound::Excluded(cursor_of(a)?),
            None => Bound::Unbounded,
        };
        self.db
            .read(|txn| {
                let dlq = txn.open_table(t.dlq)?;
                let mut out = Vec::new();
                for row in dlq.range::<u64>((start, Bound::Unbounded))?.take(limit) {
                    let (k, v) = row?;
                    if let Ok(l) = serde_json::from_slice::<Letter>(v.value()) {
                        out.push(DeadLetter {
                            id: id_of(k.value()),
                            job: l.job,
                            error: l.error,
                            error_kind: l.kind,
                            failed_at_ms: l.failed_at_ms,
                        });
                    }
                }
                Ok(out)
            })
            .map_err(storage)
    }

    async fn replay(&self, filter: &ReplayFilter) -> Result<Vec<String>, Error> {
        let t = self.tables;
        let filter = filter.clone();
        let (seq, ready, dead) = (self.seq.clone(), self.ready.clone(), self.dead.clone());
        let (ids, _moved) = self
            .db
            .write_then(
                move |txn| {
                    let mut dlq = txn.open_table(t.dlq)?;
                    let mut jobs = txn.open_table(t.jobs)?;
                    let mut accepted = txn.open_table(t.accepted)?;
                    let mut matching = Vec::new();
                    for row in dlq.iter()? {
                        let (k, v) = row?;
                        if let Ok(l) = serde_json::from_slice::<Letter>(v.value())
                            && filter.matches(&l.job)
                        {
                            matching.push((k.value(), l.job));
                        }
                    }
                    let mut moved = Vec::new();
                    for (key, job) in matching {
                        dlq.remove(key)?;
                        let job = job.replayed();
                        let s = seq.fetch_add(1, Ordering::Relaxed);
                        jobs.insert(s, json(&job)?.as_slice())?;
                        accepted.insert(job.event_id.as_str(), now_ms())?;
                        moved.push(Delivery { id: id_of(s), job });
                    }
                    Ok(moved
                        .iter()
                        .map(|d| d.job.event_id.clone())
                        .collect::<Vec<_>>())
                    .map(|ids| (ids, moved))
                },
                move |(_, moved): &(Vec<String>, Vec<Delivery>)| {
                    dead.fetch_sub(moved.len() as u64, Ordering::Relaxed);
                    ready.push(moved.iter().cloned())
                },
            )
            .await
            .map_err(storage)?;
        Ok(ids)
    }

    async fn accepted_at(&self, event_id: &str) -> Result<Option<u64>, Error> {
        let t = self.tables;
        self.db
            .read(|txn| {
                Ok(txn
                    .open_table(t.accepted)?
                    .get(event_id)?
                    .map(|v| v.value()))
            })
            .map_err(storage)
    }

    async fn stats(&self) -> Result<QueueStats, Error> {
        let (ready, in_flight) = {
            let mem = self.mem();
            (mem.ready.len() as u64, mem.in_flight.len() as u64)
        };
        Ok(QueueStats {
            ready,
            in_flight,
            delayed: self.delayed.load(Ordering::Relaxed),
            dead_lettered: self.dead.load(Ordering::Relaxed),
        })
    }

    async fn ping(&self) -> Result<(), Error> {
        self.db.read(|_| Ok(())).map_err(storage)
    }

    /// Forgets signed message ids whose replay window has passed.
    async fn maintain(&self, now_ms: u64) -> Result<(), Error> {
        let expired = self
            .db
            .read(|txn| {
                let by_expiry = txn.open_table(MESSAGE_EXPIRY)?;
                let mut out = Vec::new();
                for row in by_expiry.range(..(now_ms, ""))?.take(10_000) {
                    let (k, _) = row?;
                    let (at, id) = k.value();
                    out.push((at, id.to_string()));
                }
                Ok(out)
            })
            .map_err(storage)?;
        if expired.is_empty() {
            return Ok(());
        }
        self.db
            .write(move |txn| {
                let mut by_expiry = txn.open_table(MESSAGE_EXPIRY)?;
                let mut ids = txn.open_table(MESSAGE_IDS)?;
                for (at, id) in &expired {
                    by_expiry.remove((*at, id.as_str()))?;
                    // The id may have been remembered again since, with a later expiry.
                    let current = ids.get(id.as_str())?.map(|v| v.value().0);
                    if current.is_some_and(|expires| expires <= now_ms) {
                        ids.remove(id.as_str())?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(storage)
    }
}
