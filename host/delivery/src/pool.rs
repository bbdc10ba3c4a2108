//! The delivery pool: consumes the deliveries lane and sends each delivery to its destination.
//!
//! A delivery waits, without spending an attempt, while its destination's circuit is open, its
//! destination has `max_in_flight` deliveries under way, or its destination is not declared
//! (removed from the manifest, or the manifest is being rewritten) — up to
//! `DELIVERY_MAX_WAIT_MS` in all, then it is dead-lettered: other destinations are not slowed. A half-open probe that
//! fails spends no attempt either: it found the destination still down. A transient failure is
//! retried with backoff (the destination's `Retry-After` when longer, capped) up to
//! `DELIVERY_MAX_ATTEMPTS`; a permanent one, or the last attempt, goes to the deliveries
//! dead-letter queue, from which a replay sends the delivery again (the event is not routed
//! again). Each step is written to the event's record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use switchyard_model::clock::now_ms;
use switchyard_model::event::{DeliveryTarget, Job};
use switchyard_model::record::{DeliveryState, DeliveryStatus};
use switchyard_model::retry::{RetryPolicy, spread};
use switchyard_model::trace;
use switchyard_stores::consumer::Consumer;
use switchyard_stores::queue::{Delivery, Queue};
use switchyard_stores::state::StateStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::circuit::Permit;
use crate::registry::{Destinations, Live};
use crate::send::{self, Outcome};

/// How the pool works.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// This process's consumer name on the deliveries lane.
    pub consumer: String,
    /// Deliveries in flight at most (all destinations).
    pub concurrency: usize,
    pub visibility_timeout: Duration,
    /// The backoff between attempts, and the attempts in all (`DELIVERY_MAX_ATTEMPTS`).
    pub retry: RetryPolicy,
    /// The longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// The longest a delivery waits (circuit open, destination busy) before it is dead-lettered.
    pub max_wait: Duration,
    pub shutdown_grace: Duration,
}

/// Counters of this process's delivery pool.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub in_progress: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub deferred: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Deliveries waiting in the lane (ready and delayed, every gateway's), as last measured
    /// (each second); what `DELIVERY_MAX_DEPTH` is held against.
    pub backlog: AtomicU64,
}

/// A snapshot of [`DeliveryStats`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySnapshot {
    pub in_progress: u64,
    pub delivered: u64,
    pub retried: u64,
    pub deferred: u64,
    pub dead_lettered: u64,
    pub backlog: u64,
}

impl DeliveryStats {
    pub fn snapshot(&self) -> DeliverySnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DeliverySnapshot {
            in_progress: get(&self.in_progress),
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            deferred: get(&self.deferred),
            dead_lettered: get(&self.dead_lettered),
            backlog: get(&self.backlog),
        }
    }
}

/// How long a delivery waits in memory for a slot of its destination before it waits in the
/// queue instead.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// How long a delivery whose destination is not declared waits before it looks again (doubling
/// up to 32 times this).
const UNDECLARED_WAIT: Duration = Duration::from_secs(5);

/// The delivery pool.
#[derive(Clone)]
pub struct DeliveryPool {
    inner: Arc<Inner>,
}

struct Inner {
    consumer: Consumer,
    state: Arc<dyn StateStore>,
    destinations: Arc<Destinations>,
    settings: DeliverySettings,
    stats: Arc<DeliveryStats>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl DeliveryPool {
    pub fn new(
        deliveries: Arc<dyn Queue>,
        state: Arc<dyn StateStore>,
        destinations: Arc<Destinations>,
        settings: DeliverySettings,
        stats: Arc<DeliveryStats>,
    ) -> Self {
        DeliveryPool {
            inner: Arc::new(Inner {
                consumer: Consumer::new(
                    deliveries,
                    settings.consumer.clone(),
                    settings.visibility_timeout,
                ),
                permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
                state,
                destinations,
                settings,
                stats,
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Runs until `stop`, then waits up to the grace period for deliveries under way; the others
    /// stay queued.
    pub async fn run(self, stop: CancellationToken) {
        let inner = &self.inner;
        let consumer = &inner.consumer;
        tracing::info!(
            concurrency = inner.settings.concurrency,
            "delivery pool started"
        );
        let room = || inner.permits.available_permits();
        tokio::join!(
            self.fetch_loop(&stop),
            consumer.promote_loop(&stop),
            consumer.reclaim_loop(&stop, room, |ds| self.dispatch(ds, None)),
            consumer.keepalive_loop(&stop),
            self.publish_loop(&stop),
        );
        inner.tracker.close();
        if tokio::time::timeout(inner.settings.shutdown_grace, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = inner.tracker.len(),
                "shutdown grace period over: unfinished deliveries stay queued"
            );
        }
    }

    async fn fetch_loop(&self, stop: &CancellationToken) {
        let inner = &self.inner;
        while !stop.is_cancelled() {
            let Some((first, ds)) = inner
                .consumer
                .fetch(stop, &inner.permits, || usize::MAX)
                .await
            else {
                return;
            };
            self.dispatch(ds, first).await;
        }
    }

    /// Publishes the circuits' states every second.
    async fn publish_loop(&self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            self.inner.destinations.publish_circuits();
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
        }
    }

    async fn dispatch(&self, deliveries: Vec<Delivery>, mut first: Option<OwnedSemaphorePermit>) {
        for d in deliveries {
            if !self.inner.consumer.start(&d.id) {
                continue;
            }
            let Some(permit) = Consumer::permit(&mut first, &self.inner.permits).await else {
                return;
            };
            let span = tracing::info_span!(
                "delivery",
                event_id = %d.job.event_id,
                correlation_id = %d.job.correlation_id,
                destination = d.job.delivery.as_ref().map(|t| t.destination.as_str()).unwrap_or("-"),
                attempt = d.job.attempt,
                trace_id = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
            );
            trace::name(&span, None, "client");
            trace::continue_job(&span, d.job.trace.as_ref(), "deliveries");
            trace::record_trace_id(&span);
            let inner = self.inner.clone();
            inner.stats.in_progress.fetch_add(1, Ordering::Relaxed);
            self.inner.tracker.spawn(
                async move {
                    let id = d.id.clone();
                    inner.deliver(d).await;
                    drop(permit);
                    inner.consumer.done(&id);
                    inner.stats.in_progress.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(span),
            );
        }
    }
}

impl Inner {
    fn queue(&self) -> &dyn Queue {
        &*self.consumer.queue
    }

    async fn deliver(&self, d: Delivery) {
        let Some(target) = d.job.delivery.clone() else {
            tracing::error!("an entry of the deliveries lane without a destination");
            self.finish(
                self.queue()
                    .dead_letter(&d, "delivery", "not a delivery")
                    .await,
            );
            return;
        };
        let Some(dest) = self.destinations.get(&target.destination) else {
            // Declared when the event was routed; an operator editing the manifest may put it
            // back (or have taken it out by mistake): wait for it rather than give up at once.
            let waits = d.job.deferred.map_or(0, |r| r.count).min(5);
            let why = "the destination is not declared in the manifest";
            self.wait(&d, &target, UNDECLARED_WAIT * 2u32.pow(waits), why)
                .await;
            return;
        };
        let now = Instant::now();
        let probe = match dest.breaker.permit(now) {
            Permit::Go => false,
            Permit::Probe => true,
            Permit::Wait(until) => {
                let why = "the destination's circuit is open";
                let wait = spread(until.saturating_duration_since(now), 0.25);
                self.wait(&d, &target, wait, why).await;
                return;
            }
        };
        let Some(slot) = self.slot(&dest).await else {
            if probe {
                dest.breaker.probe_done();
            }
            // Waiting longer each time, so that a backlog of a slow destination does not churn.
            let waits = d.job.deferred.map_or(0, |r| r.count).min(5);
            let why = "the destination has max_in_flight deliveries under way";
            self.wait(&d, &target, SLOT_WAIT * 2u32.pow(waits), why)
                .await;
            return;
        };
        if let Some(limiter) = &dest.limiter {
            limiter.until_ready().await;
        }
        let started = Instant::now();
        let outcome = {
            let _sending = dest.sending();
            let request = send::Request {
                webhook_id: &target.webhook_id,
                correlation_id: &d.job.correlation_id,
                body: &d.job.payload,
                trace: trace::headers(&tracing::Span::current()),
            };
            send::send(&dest.client, &dest.config, &request).await
        };
        drop(slot);
        let name = target.destination.clone();
        metrics::histogram!("switchyard_delivery_duration_seconds", "destination" => name.clone())
            .record(started.elapsed().as_secs_f64());
        dest.remember(matches!(outcome, Outcome::Delivered { .. }));
        self.settle(&d, &target, &dest, outcome, probe).await;
    }

    /// A slot of `dest`, waiting a little for one.
    async fn slot(&self, dest: &Live) -> Option<OwnedSemaphorePermit> {
        match dest.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => tokio::time::timeout(SLOT_WAIT, dest.slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        }
    }

    async fn settle(
        &self,
        d: &Delivery,
        target: &DeliveryTarget,
        dest: &Live,
        outcome: Outcome,
        probe: bool,
    ) {
        let job = &d.job;
        let name = target.destination.as_str();
        let status = |state, error: Option<String>, next: Option<u64>| DeliveryStatus {
            state,
            webhook_id: target.webhook_id.clone(),
            attempts: job.attempt,
            last_status: outcome.status(),
            last_error: error,
            delivered_at_ms: (state == DeliveryState::Delivered).then(now_ms),
            next_attempt_at_ms: next,
            updated_at_ms: now_ms(),
        };
        match &outcome {
            Outcome::Delivered { status: code } => {
                dest.breaker.success();
                self.record(job, target, status(DeliveryState::Delivered, None, None))
                    .await;
                self.count(name, "delivered", &self.stats.delivered);
                tracing::info!(destination = name, status = code, "delivered");
                self.finish(self.queue().ack(d).await);
            }
            Outcome::Transient {
                error, retry_after, ..
            } => {
                let now = Instant::now();
                if dest.breaker.failure(now) && !probe {
                    tracing::warn!(
                        destination = name,
                        "circuit opened: the destination is failing"
                    );
                }
                if probe {
                    // The destination is still down: that is its failure, not this delivery's.
                    // The delivery waits for the next probe like the others, its attempt unspent.
                    let until = dest.breaker.open_until().unwrap_or(now);
                    let wait = until.saturating_duration_since(now);
                    let due = now_ms() + wait.as_millis() as u64;
                    let unspent = DeliveryStatus {
                        attempts: job.attempt.saturating_sub(1),
                        ..status(DeliveryState::Pending, Some(error.clone()), Some(due))
                    };
                    self.record(job, target, unspent).await;
                    tracing::info!(destination = name, %error, reopens_in_ms = wait.as_millis() as u64,
                        "probe failed: the circuit stays open");
                    self.wait(d, target, wait, "the destination's circuit is open")
                        .await;
                    return;
                }
                let Some(backoff) = self.settings.retry.next_delay(job.attempt) else {
                    let error = format!("{error} (after {} attempts)", job.attempt);
                    self.fail(d, target, outcome.status(), error).await;
                    return;
                };
                let hint = retry_after.map(|r| r.min(self.settings.retry_after_max));
                let delay = hint.map_or(backoff, |h| h.max(backoff));
                let due = now_ms() + delay.as_millis() as u64;
                let next = Job {
                    attempt: job.attempt + 1,
                    deferred: None,
                    // The retry's wait is a `queue` span under this attempt.
                    trace: trace::carry(&tracing::Span::current(), now_ms()),
                    ..job.clone()
                };
                self.record(
                    job,
                    target,
                    status(DeliveryState::Pending, Some(error.clone()), Some(due)),
                )
                .await;
                self.count(name, "retried", &self.stats.retried);
                tracing::warn!(destination = name, %error, retry_in_ms = delay.as_millis() as u64,
                    "delivery failed; retry scheduled");
                self.finish(self.queue().retry_later(d, &next, due).await);
            }
            Outcome::Permanent { error, .. } => {
                if probe {
                    dest.breaker.probe_done();
                }
                self.fail(d, target, outcome.status(), error.clone()).await;
            }
        }
    }

    /// The delivery waits `wait` in the queue without spending an attempt, or — past
    /// `max_wait` in all — goes to the dead-letter queue.
    async fn wait(&self, d: &Delivery, target: &DeliveryTarget, wait: Duration, why: &str) {
        let now = now_ms();
        let mut next = d.job.deferred_at(now);
        // The next try waits in a `queue` span of its own, under this one.
        next.trace = trace::carry(&tracing::Span::current(), now);
        let since = next.deferred.map_or(now, |r| r.since_ms);
        if now.saturating_sub(since) >= self.settings.max_wait.as_millis() as u64 {
            let error = format!(
                "waited {} s without being sent (DELIVERY_MAX_WAIT_MS): {why}",
                (now - since) / 1000
            );
            self.fail(d, target, None, error).await;
            return;
        }
        self.count(&target.destination, "deferred", &self.stats.deferred);
        tracing::debug!(
            reason = why,
            wait_ms = wait.as_millis() as u64,
            "delivery waits"
        );
        self.finish(
            self.queue()
                .retry_later(d, &next, now + wait.as_millis().max(1) as u64)
                .await,
        );
    }

    /// The delivery failed for good: recorded, counted, dead-lettered.
    async fn fail(&self, d: &Delivery, target: &DeliveryTarget, code: Option<u16>, error: String) {
        let status = DeliveryStatus {
            state: DeliveryState::Failed,
            webhook_id: target.webhook_id.clone(),
            attempts: d.job.attempt,
            last_status: code,
            last_error: Some(error.clone()),
            delivered_at_ms: None,
            next_attempt_at_ms: None,
            updated_at_ms: now_ms(),
        };
        self.record(&d.job, target, status).await;
        self.count(
            &target.destination,
            "dead_lettered",
            &self.stats.dead_lettered,
        );
        tracing::error!(destination = %target.destination, %error, attempts = d.job.attempt,
            "delivery failed for good; dead-lettered");
        let error = format!("{}: {error}", target.destination);
        self.finish(self.queue().dead_letter(d, "delivery", &error).await);
    }

    /// Writes where the delivery stands on the event's record (best effort: the delivery itself
    /// does not wait for the state store).
    async fn record(&self, job: &Job, target: &DeliveryTarget, status: DeliveryStatus) {
        let r = self
            .state
            .record_delivery(&job.event_id, &target.destination, &status)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record the delivery on the event");
        }
    }

    fn count(&self, destination: &str, outcome: &'static str, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchyard_deliveries_total", "destination" => destination.to_string(), "outcome" => outcome)
            .increment(1);
    }

    fn finish(&self, r: Result<(), switchyard_stores::queue::Error>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot finish the delivery in the queue; it will be reclaimed");
        }
    }
}
