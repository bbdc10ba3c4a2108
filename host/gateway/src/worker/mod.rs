//! The worker pool: fetches deliveries, claims each event, routes it through its plugin, and
//! settles it (routed, retried with backoff, deferred, or dead-lettered: [`settle`]).
//! Concurrency is a semaphore of `concurrency` permits held while a delivery runs; routing never
//! holds an OS thread. Beside it run the loops of [`Consumer`]: due retries moved to ready,
//! deliveries of dead consumers reclaimed, and the deliveries this process still works on kept
//! alive. A routed event's deliveries go to the deliveries lane (see `switchyard-delivery`).
//!
//! Keyed deliveries (see [`crate::ordering`]) that wait for their key, or retry in place while
//! holding it, give back their permit but stay in memory: at most `ordering_max_waiting` of
//! them, beyond which fetching pauses until some go on.

mod settle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use switchyard_delivery::Destinations;
use switchyard_model::clock::now_ms;
use switchyard_model::retry::RetryPolicy;
use switchyard_model::trace;
use switchyard_runtime::{PluginError, Plugins};
use switchyard_stores::Stores;
use switchyard_stores::consumer::Consumer;
use switchyard_stores::queue::{Delivery, Queue};
use switchyard_stores::state::StateStore;

use crate::ordering::{Sequencer, Ticket};
use settle::Next;

/// Worker pool settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// This process's consumer name (unique among the gateways sharing a queue).
    pub consumer: String,
    pub concurrency: usize,
    /// How long a delivery may stay unfinished before another consumer reclaims it.
    pub visibility_timeout: Duration,
    /// How long a claim keeps other deliveries of the same event off it.
    pub lease: Duration,
    /// Optional limit of deliveries started per second.
    pub rate_limit: Option<u32>,
    /// How long shutdown waits for routes in flight.
    pub shutdown_grace: Duration,
    /// Delay before a delivery is tried again after the state store failed (and the first
    /// delay after a failure of the host, doubling for each one in a row).
    pub backend_retry_delay: Duration,
    pub retry: RetryPolicy,
    /// Keyed deliveries held in memory while they wait for their key (or retry in place).
    pub ordering_max_waiting: usize,
    /// How long failures of the host may defer an event before it is dead-lettered (`host`).
    pub host_failure_max_defer: Duration,
}

impl WorkerSettings {
    /// Delays between deferrals by failures of the host: from the backend retry delay, doubling,
    /// up to the retry cap, with the retry jitter; never exhausted (the time limit is
    /// [`Self::host_failure_max_defer`]).
    fn defer_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: u32::MAX,
            base: self.backend_retry_delay,
            factor: 2.0,
            cap: self.retry.cap.max(self.backend_retry_delay),
            jitter: self.retry.jitter,
        }
    }
}

/// Counters of this process's worker pool.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub in_progress: AtomicU64,
    pub routed: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub duplicates: AtomicU64,
    pub deferred: AtomicU64,
    /// Keyed deliveries in memory without a worker slot: waiting for their key, or for their
    /// in-place retry (bounded by `ORDERING_MAX_WAITING`).
    pub waiting: AtomicU64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSnapshot {
    pub in_progress: u64,
    pub routed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub deferred: u64,
    pub waiting: u64,
}

impl WorkerStats {
    pub fn snapshot(&self) -> WorkerSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerSnapshot {
            in_progress: get(&self.in_progress),
            routed: get(&self.routed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            duplicates: get(&self.duplicates),
            deferred: get(&self.deferred),
            waiting: get(&self.waiting),
        }
    }
}

/// The worker pool.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn Queue>,
    /// The lane a routed event's deliveries go to.
    deliveries: Arc<dyn Queue>,
    /// The destinations the manifest declares (the outbox names only those).
    destinations: Arc<Destinations>,
    /// The loops beside the fetch loop, and the entries being worked on.
    consumer: Consumer,
    state: Arc<dyn StateStore>,
    plugins: Plugins,
    settings: WorkerSettings,
    stats: Arc<WorkerStats>,
    permits: Arc<Semaphore>,
    limiter: Option<DefaultDirectRateLimiter>,
    tracker: TaskTracker,
    /// Wakes the fetch loop when a waiting keyed delivery goes on.
    waiting_changed: tokio::sync::Notify,
    /// Per-key order for plugins that choose ordering keys.
    sequencer: Sequencer,
    /// Cancelled when the pool stops: deliveries waiting for their key stay queued.
    stopping: CancellationToken,
}

/// A keyed delivery in memory that is not routing: from its dispatch until its turn, and while
/// it waits for an in-place retry. Counted while it lives.
struct Waiting<'a>(&'a Inner);

impl<'a> Waiting<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.stats.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(inner)
    }

    /// Takes over a count made at dispatch (synchronously, so that the fetch loop sees it
    /// before it fetches again).
    fn adopt(inner: &'a Inner) -> Self {
        Waiting(inner)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.waiting_changed.notify_waiters();
    }
}

/// How often a paused fetch loop looks again even without a wake-up.
const PAUSE_RECHECK: Duration = Duration::from_millis(500);
/// Tries of an ordering-key call failing on the host's side before the attempt counts as
/// failed (and is deferred through the queue).
const KEY_HOST_RETRIES: u32 = 5;

/// What the worker pool works with.
pub struct WorkerParts {
    pub stores: Stores,
    pub plugins: Plugins,
    pub destinations: Arc<Destinations>,
}

impl Workers {
    pub fn new(parts: WorkerParts, settings: WorkerSettings, stats: Arc<WorkerStats>) -> Self {
        let WorkerParts {
            stores,
            plugins,
            destinations,
        } = parts;
        let limiter = settings
            .rate_limit
            .and_then(std::num::NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        Workers {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
                consumer: Consumer::new(
                    stores.queue.clone(),
                    settings.consumer.clone(),
                    settings.visibility_timeout,
                ),
                queue: stores.queue,
                deliveries: stores.deliveries,
                destinations,
                state: stores.state,
                plugins,
                settings,
                stats,
                limiter,
                tracker: TaskTracker::new(),
                waiting_changed: tokio::sync::Notify::new(),
                sequencer: Sequencer::default(),
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// Runs the pool until `stop` is cancelled, then waits up to the grace period for routes in
    /// flight. Deliveries not finished by then stay pending in the queue and are reclaimed.
    pub async fn run(self, stop: CancellationToken) {
        let inner = &self.inner;
        tracing::info!(consumer = %inner.settings.consumer, concurrency = inner.settings.concurrency, "workers started");
        let consumer = &inner.consumer;
        let room = || {
            let waiting = inner.stats.waiting.load(Ordering::Relaxed) as usize;
            let room = inner.settings.ordering_max_waiting.saturating_sub(waiting);
            inner.permits.available_permits().min(room)
        };
        tokio::join!(
            self.fetch_loop(&stop),
            consumer.promote_loop(&stop),
            consumer.reclaim_loop(&stop, room, |ds| self.dispatch(ds, None)),
            consumer.keepalive_loop(&stop)
        );
        inner.stopping.cancel();
        inner.tracker.close();
        let in_flight = inner.tracker.len();
        if tokio::time::timeout(inner.settings.shutdown_grace, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = inner.tracker.len(),
                "shutdown grace period over: unfinished deliveries stay queued and will be reclaimed"
            );
        } else {
            tracing::info!(drained = in_flight, "workers stopped");
        }
    }

    async fn fetch_loop(&self, stop: &CancellationToken) {
        let inner = &self.inner;
        let max_waiting = inner.settings.ordering_max_waiting.max(1);
        while !stop.is_cancelled() {
            // Too many keyed deliveries wait in memory: pause until some go on. (Those that hold
            // a key retry in place, so none of them needs a fetch to go on.)
            loop {
                let changed = inner.waiting_changed.notified();
                if (inner.stats.waiting.load(Ordering::Relaxed) as usize) < max_waiting {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = changed => {}
                    _ = tokio::time::sleep(PAUSE_RECHECK) => {}
                }
            }
            let room = || {
                let waiting = inner.stats.waiting.load(Ordering::Relaxed) as usize;
                max_waiting.saturating_sub(waiting).max(1)
            };
            let Some((first, deliveries)) = inner.consumer.fetch(stop, &inner.permits, room).await
            else {
                return;
            };
            self.dispatch(deliveries, first).await;
        }
    }

    async fn dispatch(&self, deliveries: Vec<Delivery>, mut first: Option<OwnedSemaphorePermit>) {
        for d in deliveries {
            if !self.inner.consumer.start(&d.id) {
                tracing::debug!(id = %d.id, "reclaimed entry is still being routed here; not started twice");
                continue;
            }
            let Some(permit) = Consumer::permit(&mut first, &self.inner.permits).await else {
                return;
            };
            if let Some(limiter) = &self.inner.limiter {
                limiter.until_ready().await;
            }
            // Tickets are taken here, in queue order, for events whose plugin orders by key.
            let ticket = self
                .inner
                .plugins
                .is_keyed(&d.job.event_type)
                .then(|| self.inner.sequencer.register());
            let span = tracing::info_span!(
                "event",
                otel.name = tracing::field::Empty,
                event_id = %d.job.event_id,
                correlation_id = %d.job.correlation_id,
                event_type = %d.job.event_type,
                attempt = d.job.attempt,
                plugin_version = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
            );
            trace::name(&span, Some("attempt"), "internal");
            trace::continue_job(&span, d.job.trace.as_ref(), "events");
            trace::record_trace_id(&span);
            let inner = self.inner.clone();
            inner.stats.in_progress.fetch_add(1, Ordering::Relaxed);
            if ticket.is_some() {
                inner.stats.waiting.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.tracker.spawn(
                async move {
                    let id = d.id.clone();
                    inner.deliver(d, permit, ticket).await;
                    inner.consumer.done(&id);
                    inner.stats.in_progress.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(span),
            );
        }
    }
}

impl Inner {
    /// Runs one delivery. For a plugin with ordering keys, first waits for the event's turn on its
    /// key (without a worker slot while it waits); an event holding a key retries in place, so
    /// the key stays taken and the queue entry in flight until the event is done with.
    async fn deliver(&self, d: Delivery, permit: OwnedSemaphorePermit, ticket: Option<Ticket>) {
        let mut permit = Some(permit);
        let mut key_error = None;
        let mut turn = None;
        if let Some(ticket) = ticket {
            let waiting = Waiting::adopt(self);
            match self.ordering_key(&d).await {
                Ok(key) => {
                    let key = key.map(|(plugin, key)| format!("{plugin}/{key}"));
                    let entered = self
                        .sequencer
                        .enter(ticket, key, &self.stopping, || {
                            permit.take();
                        })
                        .await;
                    drop(waiting);
                    let Some(entered) = entered else {
                        tracing::info!(
                            "shutting down: the delivery waiting for its ordering key stays queued"
                        );
                        return;
                    };
                    turn = entered;
                }
                Err(e) => {
                    drop((ticket, waiting));
                    key_error = Some(e);
                }
            }
        }
        let mut d = d;
        loop {
            let slot = match permit.take() {
                Some(p) => p,
                None => match self.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let next = self.process(&d, key_error.take(), turn.is_some()).await;
            drop(slot);
            let Next::Again { job, due_ms } = next else {
                break;
            };
            // In place: without a slot, keep the turn and the queue entry until due; the entry
            // records the next attempt, so that a crash meanwhile does not undo it.
            let _waiting = Waiting::new(self);
            if let Err(e) = self.queue.update(&d, &job).await {
                tracing::warn!(error = %e, "cannot record the in-place retry in the queue");
            }
            let wait = Duration::from_millis(due_ms.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopping.cancelled() => {
                    // Shutting down: hand the event back to the queue for whoever runs next.
                    if let Err(e) = self.queue.retry_later(&d, &job, due_ms).await {
                        tracing::warn!(error = %e, "queue unavailable: the delivery stays pending and will be reclaimed");
                    }
                    return;
                }
            }
            d = Delivery {
                id: d.id.clone(),
                job: *job,
            };
        }
        drop(turn);
    }

    /// The event's ordering key. A failure of the host (pool or memory exhausted) is tried again
    /// a few times while the delivery keeps its ticket, so that the event keeps its place in
    /// line; a failure of the plugin is the attempt's failure.
    async fn ordering_key(&self, d: &Delivery) -> Result<Option<(String, String)>, PluginError> {
        let policy = self.settings.defer_policy();
        let mut tries = 0;
        loop {
            match self.plugins.ordering_key(&d.job.route_request()).await {
                Err(e) if e.is_host_side() && tries < KEY_HOST_RETRIES => {
                    tries += 1;
                    let wait = policy
                        .delay_after(tries, rand::random())
                        .unwrap_or_default();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "the host could not compute the ordering key; trying again in line");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stopping.cancelled() => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }
}
