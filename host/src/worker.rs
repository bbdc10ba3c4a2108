//! The worker pool: fetches deliveries, claims each event, routes it through its plugin, and
//! finishes it (routed, retried with backoff, or dead-lettered). Concurrency is a semaphore of
//! `concurrency` permits held for a whole delivery; routing never holds an OS thread. Beside it
//! run the promoter (due retries → ready) and the reclaimer (deliveries of dead consumers).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ordering::{Sequencer, Ticket};
use crate::plugin::PluginHost;
use crate::queue::{Delivery, Queue};
use crate::retry::RetryPolicy;
use crate::state::{Attempt, Claim, Finish, StateStore};

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
    /// Delay before a delivery is tried again after the state store failed.
    pub backend_retry_delay: Duration,
    pub retry: RetryPolicy,
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
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSnapshot {
    pub in_progress: u64,
    pub routed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub deferred: u64,
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
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The worker pool.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn Queue>,
    state: Arc<dyn StateStore>,
    plugins: PluginHost,
    settings: WorkerSettings,
    stats: Arc<WorkerStats>,
    permits: Arc<Semaphore>,
    limiter: Option<DefaultDirectRateLimiter>,
    tracker: TaskTracker,
    /// Queue entries this process is working on (a reclaim must not start them twice).
    active: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per-key order for plugins that choose ordering keys.
    sequencer: Sequencer,
    /// Cancelled when the pool stops: deliveries waiting for their key stay queued.
    stopping: CancellationToken,
}

/// How recording an outcome ended.
enum Recorded {
    /// The outcome is stored.
    Done,
    /// Another delivery holds the event now.
    Lost,
    /// Put back for a later try at this time (ms since the epoch).
    Deferred(u64),
}

const FETCH_WAIT: Duration = Duration::from_millis(500);
const FETCH_BATCH: usize = 256;
const PROMOTE_EVERY: Duration = Duration::from_millis(100);
const BACKEND_PAUSE: Duration = Duration::from_millis(500);

impl Workers {
    pub fn new(
        queue: Arc<dyn Queue>,
        state: Arc<dyn StateStore>,
        plugins: PluginHost,
        settings: WorkerSettings,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let limiter = settings
            .rate_limit
            .and_then(std::num::NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        Workers {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
                queue,
                state,
                plugins,
                settings,
                stats,
                limiter,
                tracker: TaskTracker::new(),
                active: Default::default(),
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
        tokio::join!(
            self.fetch_loop(&stop),
            self.promote_loop(&stop),
            self.reclaim_loop(&stop)
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
        while !stop.is_cancelled() {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                p = inner.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let max = (1 + inner.permits.available_permits()).min(FETCH_BATCH);
            match inner
                .queue
                .fetch(&inner.settings.consumer, max, FETCH_WAIT)
                .await
            {
                Ok(deliveries) => self.dispatch(deliveries, Some(first)).await,
                Err(e) => {
                    drop(first);
                    tracing::warn!(error = %e, "cannot fetch from the queue; retrying");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(BACKEND_PAUSE) => {} }
                }
            }
        }
    }

    async fn promote_loop(&self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            match self.inner.queue.promote_due(now_ms(), 1000).await {
                Ok(n) if n > 0 => tracing::debug!(promoted = n, "due retries moved to ready"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot promote due retries"),
            }
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(PROMOTE_EVERY) => {} }
        }
    }

    async fn reclaim_loop(&self, stop: &CancellationToken) {
        let inner = &self.inner;
        let every = (inner.settings.visibility_timeout / 4).max(Duration::from_millis(250));
        while !stop.is_cancelled() {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(every) => {} }
            let max = inner.permits.available_permits().min(FETCH_BATCH);
            if max == 0 {
                continue;
            }
            match inner
                .queue
                .reclaim(
                    &inner.settings.consumer,
                    inner.settings.visibility_timeout,
                    max,
                )
                .await
            {
                Ok(ds) if !ds.is_empty() => {
                    tracing::warn!(
                        count = ds.len(),
                        "reclaimed deliveries left unfinished by a consumer"
                    );
                    self.dispatch(ds, None).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reclaim idle deliveries"),
            }
        }
    }

    async fn dispatch(&self, deliveries: Vec<Delivery>, mut first: Option<OwnedSemaphorePermit>) {
        for d in deliveries {
            if !self
                .inner
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d.id.clone())
            {
                tracing::debug!(id = %d.id, "reclaimed entry is still being routed here; not started twice");
                continue;
            }
            let permit = match first.take() {
                Some(p) => p,
                None => match self.inner.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
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
                event_id = %d.job.event_id,
                correlation_id = %d.job.correlation_id,
                event_type = %d.job.event_type,
                attempt = d.job.attempt,
                plugin_version = tracing::field::Empty,
            );
            let inner = self.inner.clone();
            inner.stats.in_progress.fetch_add(1, Ordering::Relaxed);
            self.inner.tracker.spawn(
                async move {
                    let id = d.id.clone();
                    inner.deliver(d, permit, ticket).await;
                    inner
                        .active
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    inner.stats.in_progress.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(span),
            );
        }
    }
}

impl Inner {
    /// Processes one delivery; for a plugin with ordering keys, first waits for the event's turn
    /// on its key (without holding a worker slot while it waits).
    async fn deliver(&self, d: Delivery, permit: OwnedSemaphorePermit, ticket: Option<Ticket>) {
        let mut permit = Some(permit);
        let mut key_error = None;
        let mut turn = None;
        if let Some(ticket) = ticket {
            match self.plugins.ordering_key(&d.job.route_request()).await {
                Ok(key) => {
                    let key = key.map(|(plugin, key)| format!("{plugin}/{key}"));
                    let entered = self
                        .sequencer
                        .enter(
                            ticket,
                            key,
                            &d.job.event_id,
                            &self.stopping,
                            || {
                                permit.take();
                            },
                            |holder| async move {
                                // Unknown (queue unreachable) counts as still queued: wait.
                                self.queue
                                    .accepted_at(&holder)
                                    .await
                                    .map_or(true, |at| at.is_some())
                            },
                        )
                        .await;
                    let Some(entered) = entered else {
                        tracing::info!(
                            "shutting down: the delivery waiting for its ordering key stays queued"
                        );
                        return;
                    };
                    turn = entered;
                    if permit.is_none() {
                        match self.permits.clone().acquire_owned().await {
                            Ok(p) => permit = Some(p),
                            Err(_) => return,
                        }
                    }
                }
                Err(e) => {
                    drop(ticket);
                    key_error = Some(e);
                }
            }
        }
        let comes_back = self.process(&d, key_error).await;
        let until = comes_back.map(|due_ms| {
            let wait = Duration::from_millis(due_ms.saturating_sub(now_ms()));
            tokio::time::Instant::now() + wait + self.settings.visibility_timeout
        });
        match (turn, until) {
            (Some(turn), Some(until)) => turn.hold(until),
            (Some(turn), None) => turn.release(),
            // No turn this time (its key call failed, or its plugin changed): a key the event
            // still holds from an earlier attempt is settled all the same.
            (None, until) => self.sequencer.settle(&d.job.event_id, until),
        }
        drop(permit);
    }

    /// Claims, routes and finishes one delivery. Returns when the event comes back for another
    /// try (ms since the epoch), or `None` when this delivery is done with it.
    async fn process(
        &self,
        d: &Delivery,
        key_error: Option<crate::plugin::PluginError>,
    ) -> Option<u64> {
        let job = &d.job;
        // The lease owner is this attempt alone: a reclaimed copy of the same queue entry (same
        // id) elsewhere cannot take over a lease that is still live.
        let owner = format!("{}/{}", d.id, uuid::Uuid::new_v4().simple());
        let claim = match self.state.claim(job, &owner, self.settings.lease).await {
            Ok(c) => c,
            Err(e) => return Some(self.defer(d, &e).await),
        };
        match claim {
            Claim::Claimed => {}
            Claim::AlreadyRouted => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "duplicate");
                tracing::info!("duplicate delivery of a routed event: not routed again");
                self.finish_queue(self.queue.ack(d).await);
                return None;
            }
            Claim::Busy => {
                // Another delivery holds the event. Keep this one until that one finishes (it
                // then reads as a duplicate) or its lease runs out (then this one routes it).
                return Some(
                    self.defer(d, &"the event is being routed by another delivery")
                        .await,
                );
            }
        }

        let started = Instant::now();
        let outcome = match key_error {
            // The ordering-key call failed: this attempt failed like a failed route.
            Some(e) => crate::plugin::RouteOutcome {
                plugin: None,
                result: Err(e),
            },
            None => self.plugins.route(&job.route_request()).await,
        };
        let mut attempt = Attempt {
            attempt: job.attempt,
            at_ms: now_ms(),
            outcome: String::new(),
            plugin: outcome.plugin.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            error_kind: None,
            error: None,
            destination: None,
            next_attempt_at_ms: None,
        };
        let plugin_version = outcome
            .plugin
            .as_ref()
            .map(|p| crate::plugin::short_version(&p.version).to_string());
        if let Some(v) = &plugin_version {
            tracing::Span::current().record("plugin_version", v.as_str());
        }
        match outcome.result {
            Ok(decision) => {
                attempt.outcome = "routed".into();
                attempt.destination = Some(decision.destination.clone());
                let destination = decision.destination.clone();
                let plugin = outcome
                    .plugin
                    .clone()
                    .expect("a decision comes from a plugin");
                match self
                    .record(
                        d,
                        &owner,
                        Finish::Routed {
                            decision,
                            plugin,
                            attempt,
                        },
                    )
                    .await
                {
                    Recorded::Done => {}
                    Recorded::Lost => return None,
                    Recorded::Deferred(due) => return Some(due),
                }
                self.stats.routed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "routed");
                tracing::info!(
                    destination,
                    plugin_version,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "event routed"
                );
                self.finish_queue(self.queue.ack(d).await);
                None
            }
            Err(err) => {
                attempt.error_kind = Some(err.kind().to_string());
                attempt.error = Some(err.to_string());
                let delay = if err.is_retryable() {
                    self.settings.retry.next_delay(job.attempt)
                } else {
                    None
                };
                if let Some(delay) = delay {
                    let due = now_ms() + delay.as_millis() as u64;
                    attempt.outcome = "retry".into();
                    attempt.next_attempt_at_ms = Some(due);
                    match self.record(d, &owner, Finish::Retry { attempt }).await {
                        Recorded::Done => {}
                        Recorded::Lost => return None,
                        Recorded::Deferred(due) => return Some(due),
                    }
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::event(&job.event_type, "retried");
                    tracing::warn!(error = %err, kind = err.kind(), plugin_version, retry_in_ms = delay.as_millis() as u64, "routing failed; retry scheduled");
                    self.finish_queue(self.queue.retry_later(d, &job.next_attempt(), due).await);
                    Some(due)
                } else {
                    attempt.outcome = "failed".into();
                    let error = err.to_string();
                    match self
                        .record(
                            d,
                            &owner,
                            Finish::Failed {
                                error: error.clone(),
                                attempt,
                            },
                        )
                        .await
                    {
                        Recorded::Done => {}
                        Recorded::Lost => return None,
                        Recorded::Deferred(due) => return Some(due),
                    }
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::event(&job.event_type, "dead_lettered");
                    tracing::error!(error = %err, kind = err.kind(), plugin_version, attempts = job.attempt, "routing failed for good; dead-lettered");
                    self.finish_queue(self.queue.dead_letter(d, err.kind(), &error).await);
                    None
                }
            }
        }
    }

    /// Writes the outcome; anything but `Done` means the delivery must not be finished in the
    /// queue by us.
    async fn record(&self, d: &Delivery, owner: &str, finish: Finish) -> Recorded {
        match self.state.finish(&d.job.event_id, owner, finish).await {
            Ok(true) => Recorded::Done,
            Ok(false) => {
                tracing::warn!("lease lost to another delivery; leaving the event to it");
                self.finish_queue(self.queue.ack(d).await);
                Recorded::Lost
            }
            Err(e) => Recorded::Deferred(self.defer(d, &e).await),
        }
    }

    /// Puts the delivery back for later without spending an attempt (the state store failed,
    /// or another delivery holds the event).
    async fn defer(&self, d: &Delivery, reason: &(dyn std::fmt::Display + Sync)) -> u64 {
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        crate::metrics::event(&d.job.event_type, "deferred");
        let due = now_ms() + self.settings.backend_retry_delay.as_millis() as u64;
        tracing::warn!(%reason, retry_in_ms = self.settings.backend_retry_delay.as_millis() as u64,
            "delivery deferred; the event stays queued");
        if let Err(e) = self.queue.retry_later(d, &d.job, due).await {
            tracing::warn!(error = %e, "queue unavailable too; the delivery stays pending and will be reclaimed");
        }
        due
    }

    fn finish_queue(&self, r: Result<(), crate::queue::Error>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot finish the delivery in the queue; it will be reclaimed and found done");
        }
    }
}
