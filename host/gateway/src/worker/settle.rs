//! One delivery of one event: claim it in the state store, route it through its plugin, then
//! settle the outcome — record it, count it, log it, and finish the queue entry — in one place.
//!
//! What comes back for another try (a retry, or a deferral that spends no attempt) either goes
//! back to the queue, or — for a keyed event that holds its ordering key — is returned to the
//! caller, which retries it in place (see [`super::Inner::deliver`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchyard_model::clock::now_ms;
use switchyard_model::delivery;
use switchyard_model::event::{DeliveryTarget, Job};
use switchyard_model::record::{Attempt, Deferred, DeliveryState, DeliveryStatus};
use switchyard_model::routing::Decision;
use switchyard_model::trace;
use switchyard_runtime::PluginError;
use switchyard_runtime::registry::RouteOutcome;
use switchyard_runtime::version::short_version;
use switchyard_stores::queue::Delivery;
use switchyard_stores::state::{Claim, Finish};
use tracing::Instrument;

use super::Inner;

/// A span for one step of an attempt (under the attempt's span) when traces are exported; a
/// disabled span otherwise. Log lines inside it keep the event's fields and gain the trace id.
fn step_span(name: &'static str, job: &Job) -> tracing::Span {
    if !trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "step",
        otel.name = name,
        event_id = %job.event_id,
        correlation_id = %job.correlation_id,
        attempt = job.attempt,
        trace_id = tracing::field::Empty,
        plugin.name = tracing::field::Empty,
        plugin.version = tracing::field::Empty,
    );
    trace::record_trace_id(&span);
    span
}

/// What happens next to a delivery.
pub(super) enum Next {
    /// This delivery is done with (finished in the queue, or left to another delivery).
    Done,
    /// The event comes back for another try with `job` at `due_ms`; the caller keeps the queue
    /// entry (only returned when asked to retry in place).
    Again { job: Box<Job>, due_ms: u64 },
}

/// How an attempt ended: what to record, and what to do with the queue entry then.
struct Verdict {
    finish: Finish,
    then: Then,
}

enum Then {
    /// Routed: ack.
    Ack,
    /// Failed for good: dead-letter with this kind and error.
    DeadLetter { kind: &'static str, error: String },
    /// Retry `next` at `due_ms` (an attempt was spent).
    Retry {
        error: PluginError,
        next: Job,
        due_ms: u64,
    },
    /// A failure of the host: try `next` again at `due_ms`, no attempt spent.
    Defer {
        error: PluginError,
        next: Job,
        due_ms: u64,
    },
}

impl Inner {
    /// Claims, routes and settles one delivery. With `in_place`, an event that comes back is
    /// returned (the queue entry stays in flight) instead of being handed back to the queue.
    pub(super) async fn process(
        &self,
        d: &Delivery,
        key_error: Option<PluginError>,
        in_place: bool,
    ) -> Next {
        let job = &d.job;
        // The lease owner is this attempt alone: a reclaimed copy of the same queue entry (same
        // id) elsewhere cannot take over a lease that is still live.
        let owner = format!("{}/{}", d.id, uuid::Uuid::new_v4().simple());
        let claim = self.state.claim(job, &owner, self.settings.lease);
        match claim.instrument(step_span("claim", job)).await {
            Err(e) => return self.come_back(d, job.clone(), &e, in_place).await,
            Ok(Claim::AlreadyRouted) => {
                match self.resend_owed(d).await {
                    Ok(true) => return Next::Done,
                    Ok(false) => {}
                    // Whether this entry still owes deliveries is unknown: it must not be
                    // acknowledged as a duplicate before that is known.
                    Err(e) => return self.come_back(d, job.clone(), &e, in_place).await,
                }
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "duplicate");
                tracing::info!("duplicate delivery of a routed event: not routed again");
                self.finish_queue(self.queue.ack(d).await);
                return Next::Done;
            }
            // Another delivery holds the event. Keep this one until that one finishes (it then
            // reads as a duplicate) or its lease runs out (then this one routes it).
            Ok(Claim::Busy) => {
                let busy = "the event is being routed by another delivery";
                return self.come_back(d, job.clone(), &busy, in_place).await;
            }
            Ok(Claim::Claimed) => {}
        }
        let started = Instant::now();
        let outcome = match key_error {
            // The ordering-key call failed: this attempt failed like a failed route.
            Some(e) => RouteOutcome {
                plugin: None,
                result: Err(e),
            },
            None => {
                let span = step_span("plugin call", job);
                let outcome = self
                    .plugins
                    .route(&job.route_request())
                    .instrument(span.clone())
                    .await;
                if let Some(plugin) = &outcome.plugin {
                    span.record("plugin.name", plugin.name.as_str());
                    span.record("plugin.version", short_version(&plugin.version));
                }
                outcome
            }
        };
        let verdict = self.verdict(job, outcome, started);
        self.settle(d, &owner, verdict, in_place).await
    }

    /// Judges an attempt's outcome: routed, retried, failed for good, or deferred.
    fn verdict(&self, job: &Job, outcome: RouteOutcome, started: Instant) -> Verdict {
        let now = now_ms();
        let mut attempt = Attempt {
            attempt: job.attempt,
            at_ms: now,
            outcome: String::new(),
            plugin: outcome.plugin.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            error_kind: None,
            error: None,
            destination: None,
            next_attempt_at_ms: None,
        };
        let err = match outcome.result {
            Ok(decision) => {
                attempt.outcome = "routed".into();
                attempt.destination = Some(decision.destination.clone());
                let plugin = outcome.plugin.expect("a decision comes from a plugin");
                let finish = Finish::Routed {
                    deliveries: self.outbox(&job.event_id, &decision, now),
                    decision,
                    plugin,
                    attempt,
                    routed_by: job.ingest_token(),
                };
                return Verdict {
                    finish,
                    then: Then::Ack,
                };
            }
            Err(e) => e,
        };
        attempt.error_kind = Some(err.kind().to_string());
        attempt.error = Some(err.to_string());
        if err.is_host_side() {
            let next = job.deferred_at(now);
            let run = next.deferred.unwrap_or_default();
            let waited = Duration::from_millis(now.saturating_sub(run.since_ms));
            if waited < self.settings.host_failure_max_defer {
                let delay = self
                    .settings
                    .defer_policy()
                    .delay_after(run.count, rand::random());
                let due_ms = now + delay.unwrap_or_default().as_millis() as u64;
                let finish = Finish::Deferred(Deferred {
                    since_ms: run.since_ms,
                    count: run.count,
                    error_kind: err.kind().to_string(),
                    error: err.to_string(),
                    next_attempt_at_ms: due_ms,
                });
                let then = Then::Defer {
                    error: err,
                    next,
                    due_ms,
                };
                return Verdict { finish, then };
            }
            let error = format!(
                "deferred for {} s by failures of the host (HOST_FAILURE_MAX_DEFER_MS); the last: {err}",
                waited.as_secs()
            );
            attempt.outcome = "failed".into();
            attempt.error_kind = Some("host".into());
            attempt.error = Some(error.clone());
            return failed(attempt, "host", error);
        }
        let delay = err
            .is_retryable()
            .then(|| self.settings.retry.next_delay(job.attempt))
            .flatten();
        let Some(delay) = delay else {
            attempt.outcome = "failed".into();
            let (kind, error) = (err.kind(), err.to_string());
            return failed(attempt, kind, error);
        };
        let due_ms = now + delay.as_millis() as u64;
        attempt.outcome = "retry".into();
        attempt.next_attempt_at_ms = Some(due_ms);
        Verdict {
            finish: Finish::Retry { attempt },
            then: Then::Retry {
                error: err,
                next: job.next_attempt(),
                due_ms,
            },
        }
    }

    /// Records the verdict, counts and logs it, and finishes the queue entry (or hands the event
    /// back for later).
    async fn settle(&self, d: &Delivery, owner: &str, verdict: Verdict, in_place: bool) -> Next {
        let job = &d.job;
        let plugin_version = match &verdict.finish {
            Finish::Routed { plugin, .. } => Some(plugin.version.clone()),
            Finish::Retry { attempt } | Finish::Failed { attempt, .. } => {
                attempt.plugin.as_ref().map(|p| p.version.clone())
            }
            Finish::Deferred(_) => None,
        }
        .map(|v| short_version(&v).to_string());
        let (destination, routed) = match &verdict.finish {
            Finish::Routed {
                decision,
                deliveries,
                ..
            } => (
                decision.destination.clone(),
                Some((decision.clone(), deliveries.clone())),
            ),
            _ => (String::new(), None),
        };
        match self
            .state
            .finish(&job.event_id, owner, verdict.finish)
            .await
        {
            Ok(true) if crate::faults::answer_lost("routed-commit") => {
                let lost = "fault injected: the answer to the routed outcome's write was lost";
                return self.come_back(d, job.clone(), &lost, in_place).await;
            }
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("lease lost to another delivery; leaving the event to it");
                self.finish_queue(self.queue.ack(d).await);
                return Next::Done;
            }
            Err(e) => return self.come_back(d, job.clone(), &e, in_place).await,
        }
        if let Some(v) = &plugin_version {
            tracing::Span::current().record("plugin_version", v.as_str());
        }
        match verdict.then {
            Then::Ack => {
                self.stats.routed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "routed");
                tracing::info!(destination, plugin_version, "event routed");
                crate::faults::crash_point("after-routed-commit");
                if let Some((decision, owed)) = routed
                    && !self.send_deliveries(d, &decision, &owed).await
                {
                    // The outbox has them: the entry stays pending, and its redelivery sends them.
                    return Next::Done;
                }
                self.finish_queue(self.queue.ack(d).await);
                Next::Done
            }
            Then::DeadLetter { kind, error } => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "dead_lettered");
                tracing::error!(%error, kind, plugin_version, attempts = job.attempt,
                    "routing failed for good; dead-lettered");
                self.finish_queue(self.queue.dead_letter(d, kind, &error).await);
                Next::Done
            }
            Then::Retry {
                error,
                next,
                due_ms,
            } => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "retried");
                tracing::warn!(%error, kind = error.kind(), plugin_version,
                    retry_in_ms = due_ms.saturating_sub(now_ms()), "routing failed; retry scheduled");
                self.later(d, next, due_ms, in_place).await
            }
            Then::Defer {
                error,
                next,
                due_ms,
            } => {
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                crate::metrics::event(&job.event_type, "deferred");
                let deferrals = next.deferred.map(|r| r.count).unwrap_or_default();
                tracing::warn!(%error, kind = error.kind(), deferrals,
                    retry_in_ms = due_ms.saturating_sub(now_ms()),
                    "the host could not route the event; deferred without spending an attempt");
                self.later(d, next, due_ms, in_place).await
            }
        }
    }

    /// Puts the delivery back for later without spending an attempt or recording anything (the
    /// state store failed, or another delivery holds the event).
    async fn come_back(
        &self,
        d: &Delivery,
        job: Job,
        reason: &(dyn std::fmt::Display + Sync),
        in_place: bool,
    ) -> Next {
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        crate::metrics::event(&d.job.event_type, "deferred");
        let delay = self.settings.backend_retry_delay;
        tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64,
            "delivery deferred; the event stays queued");
        self.later(d, job, now_ms() + delay.as_millis() as u64, in_place)
            .await
    }

    /// The event comes back at `due_ms` as `job`: returned to retry in place, or handed back to
    /// the queue.
    async fn later(&self, d: &Delivery, mut job: Job, due_ms: u64, in_place: bool) -> Next {
        // The next attempt's trace continues from this one (its wait is a `queue` span under
        // it); without tracing, nothing is carried.
        job.trace = trace::carry(&tracing::Span::current(), now_ms());
        if in_place {
            return Next::Again {
                job: Box::new(job),
                due_ms,
            };
        }
        if let Err(e) = self.queue.retry_later(d, &job, due_ms).await {
            tracing::warn!(error = %e, "queue unavailable too; the delivery stays pending and will be reclaimed");
        }
        Next::Done
    }

    /// What a routed event owes: one delivery per destination of its decision that the
    /// manifest declares (each once), with the message id it is sent with.
    fn outbox(
        &self,
        event_id: &str,
        decision: &Decision,
        now: u64,
    ) -> BTreeMap<String, DeliveryStatus> {
        // The destinations follow the manifest on a timer; catch up with the manifest that
        // routed this event first.
        crate::sync_destinations(&self.plugins, &self.destinations);
        decision
            .destinations()
            .filter(|name| self.destinations.is_declared(name))
            .map(|name| {
                let id = delivery::webhook_id(event_id, name);
                (name.to_string(), DeliveryStatus::owed(id, now))
            })
            .collect()
    }

    /// Puts a routed event's deliveries `owed` (by destination, as the outbox holds them) in the
    /// deliveries lane. `false` (logged) when the queue refused one: the caller leaves the entry
    /// pending, so that its redelivery sends them.
    async fn send_deliveries(
        &self,
        d: &Delivery,
        decision: &Decision,
        owed: &BTreeMap<String, DeliveryStatus>,
    ) -> bool {
        let job = &d.job;
        let body = delivery::body(
            &job.event_id,
            &job.event_type,
            &job.correlation_id,
            &job.payload,
            decision,
        );
        let trace = trace::carry(&tracing::Span::current(), now_ms());
        for (destination, status) in owed {
            let delivery = Job {
                trace: trace.clone(),
                payload: body.clone(),
                attempt: 1,
                replays: 0,
                deferred: None,
                delivery: Some(DeliveryTarget {
                    destination: destination.clone(),
                    webhook_id: status.webhook_id.clone(),
                }),
                ..job.clone()
            };
            if let Err(e) = self.deliveries.enqueue(&delivery, None).await {
                tracing::warn!(error = %e, destination = %destination,
                    "cannot queue the delivery; it is in the outbox and goes when the event is redelivered");
                return false;
            }
        }
        true
    }

    /// For an event routed already: if this very ingest routed it (the gateway stopped between
    /// recording the outcome and queueing its deliveries, or the answer to that write was lost
    /// and the entry came back under a new queue id), queues the deliveries the outbox still
    /// owes and finishes the entry. `false` for any other duplicate; an error when the record
    /// cannot be read (then nobody knows yet).
    async fn resend_owed(&self, d: &Delivery) -> Result<bool, switchyard_stores::state::Error> {
        let Some(record) = self.state.get(&d.job.event_id).await? else {
            return Ok(false);
        };
        let Some(decision) = record.decision.as_ref() else {
            return Ok(false);
        };
        // Records routed before the token existed name the queue entry.
        let by = record.routed_by.as_deref();
        if by != Some(d.job.ingest_token().as_str()) && by != Some(d.id.as_str()) {
            return Ok(false);
        }
        let owed: BTreeMap<String, DeliveryStatus> = record
            .deliveries
            .iter()
            .filter(|(_, s)| s.state == DeliveryState::Pending && s.attempts == 0)
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect();
        if !owed.is_empty() {
            if !self.send_deliveries(d, decision, &owed).await {
                return Ok(true);
            }
            tracing::info!(
                deliveries = owed.len(),
                "routed before the gateway stopped: its owed deliveries are queued now"
            );
        }
        self.finish_queue(self.queue.ack(d).await);
        Ok(true)
    }

    pub(super) fn finish_queue(&self, r: Result<(), switchyard_stores::queue::Error>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot finish the delivery in the queue; it will be reclaimed and found done");
        }
    }
}

/// A failed-for-good verdict.
fn failed(attempt: Attempt, kind: &'static str, error: String) -> Verdict {
    Verdict {
        finish: Finish::Failed {
            error: error.clone(),
            attempt,
        },
        then: Then::DeadLetter { kind, error },
    }
}
