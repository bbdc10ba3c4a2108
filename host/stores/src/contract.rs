//! The contract every queue and state backend keeps, as plain async functions over an opened
//! backend ([`Stores`]), and [`contract_suite!`](crate::contract_suite) to run them all as
//! tests for one backend: one row per backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_model::event::DeliveryTarget;
use switchyard_model::event::Job;
use switchyard_model::record::{Attempt, DeliveryState, DeliveryStatus, EventState};
use switchyard_model::routing::{Decision, PluginId};

use crate::Stores;
use crate::queue::{Delivery, Queue, ReplayFilter};
use crate::state::{Claim, Finish};

/// Runs the whole contract suite as `#[tokio::test]`s in a module named `$module`, each on a
/// fresh backend from `$open(limits).await`: an async fn, in scope where the macro is used, that
/// takes [`Limits`](crate::queue::Limits) and returns [`Stores`].
#[macro_export]
macro_rules! contract_suite {
    ($module:ident, $open:ident) => {
        mod $module {
            use $crate::queue::Limits;
            use $crate::contract as c;
            $crate::contract_suite!(@tests $open; the_outbox_is_written_with_the_routed_outcome, the_deliveries_lane_is_a_queue_of_its_own, enqueue_fetch_ack, retries_come_back_in_due_order, unfinished_deliveries_are_reclaimed_after_the_visibility_timeout, dead_letters_list_and_replay_exactly_once, claim_is_idempotent, state_transitions_keep_history_and_counts, an_expired_lease_can_be_taken_over, context_documents_round_trip, a_message_id_reused_with_another_body_is_refused, cursors_that_are_not_positions_are_invalid, touched_deliveries_are_not_reclaimed, a_deferral_keeps_attempts_and_history_and_frees_the_lease, reclaim_passes_go_on_where_the_last_one_stopped, a_reclaimed_entry_carries_its_in_place_progress, a_replay_starts_the_event_afresh);
            #[tokio::test]
            async fn depth_limit() {
                let limits = Limits { max_depth: 2, ..Limits::default() };
                c::depth_limit(super::$open(limits).await).await
            }
            #[tokio::test]
            async fn dlq_limit() {
                let limits = Limits { dlq_max_depth: 2, ..Limits::default() };
                c::dlq_limit(super::$open(limits).await).await
            }
        }
    };
    (@tests $open:ident; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                c::$name(super::$open(Limits::default()).await).await
            }
        )*
    };
}

/// Enqueue without a signed message id (an `x-hmac-signature` request).
trait EnqueuePlain {
    async fn enqueue_plain(&self, job: &Job) -> Result<(), crate::queue::Error>;
}

impl EnqueuePlain for Arc<dyn Queue> {
    async fn enqueue_plain(&self, job: &Job) -> Result<(), crate::queue::Error> {
        self.enqueue(job, None).await
    }
}

/// A name unique to this process and call (message ids, event ids that must not collide).
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn job(id: &str, ty: &str) -> Job {
    Job {
        event_id: id.into(),
        event_type: ty.into(),
        correlation_id: format!("c-{id}"),
        payload: format!(r#"{{"id":"{id}"}}"#),
        received_at_ms: now(),
        attempt: 1,
        replays: 0,
        deferred: None,
        delivery: None,
        // One key for every job of the suite: on a partitioned queue the promises below (FIFO
        // included) are those of one partition, which is what events sharing a key get.
        partition_key: Some("contract".into()),
        // Carried through every move of the queue like the rest of the job.
        trace: Some(switchyard_model::trace::TraceContext {
            traceparent: format!("00-{:032x}-00f067aa0ba902b7-01", id.len() + 1),
            queued_at_ms: 1,
        }),
    }
}

fn now() -> u64 {
    switchyard_model::clock::now_ms()
}

fn attempt(n: u32, outcome: &str) -> Attempt {
    Attempt {
        attempt: n,
        at_ms: now(),
        outcome: outcome.into(),
        plugin: None,
        duration_ms: 1,
        error_kind: None,
        error: Some("e".into()),
        destination: None,
        next_attempt_at_ms: None,
    }
}

fn routed(n: u32) -> Finish {
    routed_with(n, BTreeMap::new())
}

fn routed_with(n: u32, deliveries: BTreeMap<String, DeliveryStatus>) -> Finish {
    Finish::Routed {
        decision: Decision::to("d", "r"),
        plugin: PluginId {
            name: "p".into(),
            version: "v".into(),
        },
        attempt: attempt(n, "routed"),
        deliveries,
        routed_by: "entry-1".into(),
    }
}

pub async fn enqueue_fetch_ack(b: Stores) {
    for i in 0..3 {
        b.queue
            .enqueue_plain(&job(&format!("e{i}"), "T"))
            .await
            .unwrap();
    }
    assert!(b.queue.accepted_at("e0").await.unwrap().is_some());
    let got = fetched(&b, "c1", 10).await;
    let ids: Vec<&str> = got.iter().map(|d| d.job.event_id.as_str()).collect();
    assert_eq!(ids, ["e0", "e1", "e2"], "FIFO");
    let s = b.queue.stats().await.unwrap();
    assert_eq!((s.ready, s.in_flight), (0, 3));
    assert!(
        b.queue
            .fetch("c1", 10, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    for d in &got {
        b.queue.ack(d).await.unwrap();
    }
    let s = b.queue.stats().await.unwrap();
    assert_eq!(
        (s.ready, s.in_flight, s.delayed, s.dead_lettered),
        (0, 0, 0, 0)
    );
    assert_eq!(b.queue.accepted_at("e0").await.unwrap(), None);
}

pub async fn depth_limit(b: Stores) {
    b.queue.enqueue_plain(&job("a", "T")).await.unwrap();
    b.queue.enqueue_plain(&job("b", "T")).await.unwrap();
    assert!(matches!(
        b.queue.enqueue_plain(&job("c", "T")).await,
        Err(crate::queue::Error::Full(_))
    ));
}

pub async fn retries_come_back_in_due_order(b: Stores) {
    for id in ["late", "soon", "due"] {
        b.queue.enqueue_plain(&job(id, "T")).await.unwrap();
    }
    let got = fetched(&b, "c1", 10).await;
    let t = now();
    let due_at = |id: &str| match id {
        "late" => t + 600,
        "soon" => t + 300,
        _ => t - 1,
    };
    for d in &got {
        b.queue
            .retry_later(d, &d.job.next_attempt(), due_at(&d.job.event_id))
            .await
            .unwrap();
    }
    assert_eq!(b.queue.stats().await.unwrap().delayed, 3);
    assert_eq!(b.queue.promote_due(t, 100).await.unwrap(), 1);
    let first = fetched(&b, "c1", 10).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].job.event_id, "due");
    assert_eq!(
        first[0].job.attempt, 2,
        "the retry carries the next attempt number"
    );
    assert_eq!(b.queue.promote_due(t + 700, 100).await.unwrap(), 2);
    let rest: Vec<String> = fetched(&b, "c1", 10)
        .await
        .into_iter()
        .map(|d| d.job.event_id)
        .collect();
    assert_eq!(rest, ["soon", "late"], "promoted in due order");
    assert_eq!(b.queue.stats().await.unwrap().delayed, 0);
}

pub async fn unfinished_deliveries_are_reclaimed_after_the_visibility_timeout(b: Stores) {
    b.queue.enqueue_plain(&job("r1", "T")).await.unwrap();
    let got = fetched(&b, "dead-consumer", 1).await;
    assert_eq!(got.len(), 1);
    assert!(
        reclaimed(&b, "c2", Duration::from_millis(300), 10)
            .await
            .is_empty(),
        "not idle long enough"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = b
        .queue
        .reclaim("c2", Duration::from_millis(300), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].job, got[0].job);
    b.queue.ack(&again[0]).await.unwrap();
    assert_eq!(b.queue.stats().await.unwrap().in_flight, 0);
}

pub async fn dead_letters_list_and_replay_exactly_once(b: Stores) {
    for (id, ty) in [("x1", "X"), ("y1", "Y"), ("x2", "X")] {
        b.queue.enqueue_plain(&job(id, ty)).await.unwrap();
    }
    let got = fetched(&b, "c1", 10).await;
    for d in &got {
        b.queue
            .dead_letter(d, "permanent", &format!("bad {}", d.job.event_id))
            .await
            .unwrap();
    }
    assert_eq!(b.queue.stats().await.unwrap().dead_lettered, 3);
    let page1 = b.queue.dead_letters(None, 2).await.unwrap();
    assert_eq!(page1.len(), 2);
    let page2 = b.queue.dead_letters(Some(&page1[1].id), 2).await.unwrap();
    assert_eq!(page2.len(), 1);
    let listed: Vec<&str> = page1
        .iter()
        .chain(&page2)
        .map(|l| l.job.event_id.as_str())
        .collect();
    assert_eq!(listed, ["x1", "y1", "x2"]);
    assert_eq!(page1[0].error, "bad x1");
    assert_eq!(page1[0].error_kind, "permanent");
    assert_eq!(page1[0].job.payload, r#"{"id":"x1"}"#);

    let filter = ReplayFilter {
        event_type: Some("X".into()),
        ..Default::default()
    };
    let (r1, r2) = tokio::join!(b.queue.replay(&filter), b.queue.replay(&filter));
    let mut replayed = [r1.unwrap(), r2.unwrap()].concat();
    replayed.sort();
    assert_eq!(replayed, ["x1", "x2"], "each entry leaves the DLQ once");
    assert!(b.queue.replay(&filter).await.unwrap().is_empty());
    assert_eq!(b.queue.stats().await.unwrap().dead_lettered, 1);
    let back = fetched(&b, "c1", 10).await;
    assert_eq!(back.len(), 2);
    assert!(
        back.iter()
            .all(|d| d.job.attempt == 1 && d.job.replays == 1)
    );
    let by_id = ReplayFilter {
        event_ids: Some(vec!["y1".into()]),
        ..Default::default()
    };
    assert_eq!(b.queue.replay(&by_id).await.unwrap(), ["y1"]);
    assert_eq!(b.queue.stats().await.unwrap().dead_lettered, 0);
}

pub async fn claim_is_idempotent(b: Stores) {
    let j = job("idem", "T");
    let lease = Duration::from_secs(30);
    assert_eq!(
        b.state.claim(&j, "d1", lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(b.state.claim(&j, "d2", lease).await.unwrap(), Claim::Busy);
    assert!(
        !b.state.finish("idem", "d2", routed(1)).await.unwrap(),
        "only the lease holder finishes"
    );
    assert!(b.state.finish("idem", "d1", routed(1)).await.unwrap());
    assert_eq!(
        b.state.claim(&j, "d3", lease).await.unwrap(),
        Claim::AlreadyRouted
    );
    assert_eq!(
        b.state.claim(&j.next_attempt(), "d4", lease).await.unwrap(),
        Claim::AlreadyRouted
    );
    let r = b.state.get("idem").await.unwrap().unwrap();
    assert_eq!(r.state, EventState::Routed);
    assert_eq!(r.duplicates, 2);
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.decision.unwrap().destination, "d");
    assert_eq!(r.correlation_id, "c-idem");
    assert!(b.state.get("missing").await.unwrap().is_none());
}

pub async fn state_transitions_keep_history_and_counts(b: Stores) {
    let lease = Duration::from_secs(30);
    let j = job("life", "T");
    assert_eq!(
        b.state.claim(&j, "d1", lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(b.state.counts().await.unwrap().pending, 1);
    assert!(
        b.state
            .finish(
                "life",
                "d1",
                Finish::Retry {
                    attempt: attempt(1, "retry")
                }
            )
            .await
            .unwrap()
    );
    let r = b.state.get("life").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (EventState::RoutingPending, 1));
    assert_eq!(
        b.state.claim(&j.next_attempt(), "d2", lease).await.unwrap(),
        Claim::Claimed
    );
    let failed = Finish::Failed {
        error: "gave up".into(),
        attempt: attempt(2, "failed"),
    };
    assert!(b.state.finish("life", "d2", failed).await.unwrap());
    let r = b.state.get("life").await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.error.as_deref()),
        (EventState::Failed, 2, Some("gave up"))
    );
    let c = b.state.counts().await.unwrap();
    assert_eq!((c.pending, c.routed, c.failed), (0, 0, 1));
    // The producer sends it again: a new chance, history kept.
    assert_eq!(
        b.state.claim(&j, "d3", lease).await.unwrap(),
        Claim::Claimed
    );
    assert!(b.state.finish("life", "d3", routed(1)).await.unwrap());
    let r = b.state.get("life").await.unwrap().unwrap();
    assert_eq!(r.state, EventState::Routed);
    let outcomes: Vec<&str> = r.history.iter().map(|h| h.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "failed", "routed"]);
    let c = b.state.counts().await.unwrap();
    assert_eq!((c.pending, c.routed, c.failed), (0, 1, 0));
}

pub async fn an_expired_lease_can_be_taken_over(b: Stores) {
    let j = job("lease", "T");
    assert_eq!(
        b.state
            .claim(&j, "d1", Duration::from_millis(200))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        b.state
            .claim(&j, "d2", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Busy
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        b.state
            .claim(&j, "d2", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert!(
        !b.state.finish("lease", "d1", routed(1)).await.unwrap(),
        "the old holder lost it"
    );
    assert!(b.state.finish("lease", "d2", routed(1)).await.unwrap());
}

pub async fn context_documents_round_trip(b: Stores) {
    b.state
        .put_context("order", "o-1", r#"{"region":"eu","total":3}"#)
        .await
        .unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&b.state.lookup("order", "o-1").await.unwrap().unwrap()).unwrap();
    assert_eq!(doc["region"], "eu");
    assert_eq!(doc["total"], 3);
    assert!(b.state.lookup("order", "o-2").await.unwrap().is_none());
    assert!(b.state.lookup("shipment", "o-1").await.unwrap().is_none());
    assert!(b.state.lookup("secrets", "o-1").await.unwrap().is_none());
}

/// Up to `max` new deliveries for `consumer`, waiting 100 ms for the first.
async fn fetched(b: &Stores, consumer: &str, max: usize) -> Vec<Delivery> {
    b.queue
        .fetch(consumer, max, Duration::from_millis(100))
        .await
        .unwrap()
}

/// What `consumer` reclaims of deliveries idle for `idle`.
async fn reclaimed(b: &Stores, consumer: &str, idle: Duration, max: usize) -> Vec<Delivery> {
    b.queue.reclaim(consumer, idle, max).await.unwrap()
}

fn guard(id: &str, body: &str) -> crate::queue::ReplayGuard {
    use sha2::Digest;
    crate::queue::ReplayGuard {
        message_id: id.into(),
        digest: hex::encode(sha2::Sha256::digest(body.as_bytes())),
        ttl: Duration::from_secs(600),
    }
}

pub async fn a_message_id_reused_with_another_body_is_refused(b: Stores) {
    let first = guard(&unique("msg"), "body one");
    b.queue
        .enqueue(&job("m1", "T"), Some(&first))
        .await
        .unwrap();
    // The same message again (a producer's retry) is accepted: it is the same event.
    b.queue
        .enqueue(&job("m1", "T"), Some(&first))
        .await
        .unwrap();
    let forged = crate::queue::ReplayGuard {
        digest: guard("x", "another body").digest,
        ..first.clone()
    };
    let r = b.queue.enqueue(&job("m2", "T"), Some(&forged)).await;
    assert!(matches!(r, Err(crate::queue::Error::Replayed)), "{r:?}");
    let queued = fetched(&b, "c1", 10).await;
    let ids: Vec<&str> = queued.iter().map(|d| d.job.event_id.as_str()).collect();
    assert_eq!(ids, ["m1", "m1"], "the forged one was not queued");
}

pub async fn dlq_limit(b: Stores) {
    for id in ["d1", "d2"] {
        b.queue.enqueue_plain(&job(id, "T")).await.unwrap();
    }
    for d in fetched(&b, "c1", 10).await {
        b.queue.dead_letter(&d, "permanent", "no").await.unwrap();
    }
    assert!(matches!(
        b.queue.enqueue_plain(&job("d3", "T")).await,
        Err(crate::queue::Error::DlqFull(2))
    ));
    // Replaying makes room again.
    let one = ReplayFilter {
        event_ids: Some(vec!["d1".into()]),
        ..Default::default()
    };
    assert_eq!(b.queue.replay(&one).await.unwrap(), ["d1"]);
    b.queue.enqueue_plain(&job("d3", "T")).await.unwrap();
}

pub async fn cursors_that_are_not_positions_are_invalid(b: Stores) {
    for bad in ["abc", "-", "12-x", ""] {
        assert!(
            matches!(
                b.queue.dead_letters(Some(bad), 10).await,
                Err(crate::queue::Error::InvalidCursor(_))
            ),
            "{bad:?}"
        );
    }
    assert!(b.queue.dead_letters(None, 10).await.unwrap().is_empty());
}

pub async fn touched_deliveries_are_not_reclaimed(b: Stores) {
    b.queue.enqueue_plain(&job("t1", "T")).await.unwrap();
    let got = fetched(&b, "c1", 1).await;
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    b.queue.touch("c1", &[got[0].id.clone()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        reclaimed(&b, "c2", Duration::from_millis(300), 10)
            .await
            .is_empty(),
        "touched 150 ms ago: still its consumer's"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        reclaimed(&b, "c2", Duration::from_millis(300), 10)
            .await
            .len(),
        1,
        "idle again past the visibility timeout"
    );
}

pub async fn a_deferral_keeps_attempts_and_history_and_frees_the_lease(b: Stores) {
    let lease = Duration::from_secs(30);
    let j = job("defer", "T");
    assert_eq!(
        b.state.claim(&j, "d1", lease).await.unwrap(),
        Claim::Claimed
    );
    let deferred = switchyard_model::record::Deferred {
        since_ms: now(),
        count: 1,
        error_kind: "no_plugin".into(),
        error: "no plugin loaded for event type \"T\"".into(),
        next_attempt_at_ms: now() + 1000,
    };
    assert!(
        b.state
            .finish("defer", "d1", Finish::Deferred(deferred.clone()))
            .await
            .unwrap()
    );
    let r = b.state.get("defer").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (EventState::RoutingPending, 0));
    assert!(r.history.is_empty(), "no attempt was spent");
    assert_eq!(r.deferred.as_ref(), Some(&deferred));
    // The lease is free at once: the next try (another owner) claims it.
    assert_eq!(
        b.state.claim(&j, "d2", lease).await.unwrap(),
        Claim::Claimed
    );
    assert!(b.state.finish("defer", "d2", routed(1)).await.unwrap());
    let r = b.state.get("defer").await.unwrap().unwrap();
    assert_eq!(r.state, EventState::Routed);
    assert_eq!(r.deferred, None, "routing clears the deferral");
    let c = b.state.counts().await.unwrap();
    assert_eq!((c.pending, c.routed), (0, 1));
}

pub async fn reclaim_passes_go_on_where_the_last_one_stopped(b: Stores) {
    for i in 0..5 {
        b.queue
            .enqueue_plain(&job(&format!("p{i}"), "T"))
            .await
            .unwrap();
    }
    let fetched = fetched(&b, "dead", 10).await;
    assert_eq!(fetched.len(), 5);
    let mut seen = Vec::new();
    let mut passes = Vec::new();
    for _ in 0..4 {
        let pass = reclaimed(&b, "c2", Duration::ZERO, 2).await;
        passes.push(pass.len());
        seen.extend(pass.into_iter().map(|d| d.job.event_id));
    }
    // Passes of two go on where the last one stopped; the one that reaches the end is short,
    // and the next sweep starts over at the head.
    assert_eq!(passes, [2, 2, 1, 2]);
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p0", "p1"]);
}

pub async fn a_reclaimed_entry_carries_its_in_place_progress(b: Stores) {
    b.queue.enqueue_plain(&job("ip", "T")).await.unwrap();
    let got = fetched(&b, "dead", 1).await;
    let progressed = got[0].job.next_attempt().next_attempt().deferred_at(now());
    b.queue.update(&got[0], &progressed).await.unwrap();
    let again = reclaimed(&b, "c2", Duration::ZERO, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].job, progressed,
        "the consumer died: its progress is not lost"
    );
    b.queue.ack(&again[0]).await.unwrap();
    // Finished: nothing left to reclaim, and a late update does not bring it back.
    b.queue.update(&again[0], &progressed).await.unwrap();
    assert!(reclaimed(&b, "c2", Duration::ZERO, 10).await.is_empty());
    assert_eq!(b.queue.stats().await.unwrap().in_flight, 0);
}

pub async fn a_replay_starts_the_event_afresh(b: Stores) {
    let mut deferred = job("fresh", "T");
    deferred.attempt = 3;
    deferred = deferred.deferred_at(now() - 90_000_000);
    b.queue.enqueue_plain(&deferred).await.unwrap();
    let got = fetched(&b, "c1", 1).await;
    b.queue
        .dead_letter(&got[0], "host", "waited too long")
        .await
        .unwrap();
    assert_eq!(
        b.queue.replay(&ReplayFilter::default()).await.unwrap(),
        ["fresh"]
    );
    let back = fetched(&b, "c1", 1).await;
    assert_eq!(
        (
            back[0].job.attempt,
            back[0].job.replays,
            back[0].job.deferred
        ),
        (1, 1, None),
        "no old deferral clock: a replay is a fresh first attempt"
    );
}

pub async fn the_outbox_is_written_with_the_routed_outcome(b: Stores) {
    let lease = Duration::from_secs(30);
    let j = job("out", "T");
    assert_eq!(
        b.state.claim(&j, "d1", lease).await.unwrap(),
        Claim::Claimed
    );
    let owed = DeliveryStatus::owed("msg_1".into(), now());
    let outbox = BTreeMap::from([("orders".to_string(), owed.clone())]);
    assert!(
        b.state
            .finish("out", "d1", routed_with(1, outbox))
            .await
            .unwrap()
    );
    let r = b.state.get("out").await.unwrap().unwrap();
    assert_eq!(r.state, EventState::Routed);
    assert_eq!(
        r.deliveries["orders"], owed,
        "owed in the same write as ROUTED"
    );
    assert_eq!(r.routed_by.as_deref(), Some("entry-1"));
    let delivered = DeliveryStatus {
        state: DeliveryState::Delivered,
        attempts: 1,
        last_status: Some(204),
        delivered_at_ms: Some(now()),
        ..owed
    };
    assert!(
        b.state
            .record_delivery("out", "orders", &delivered)
            .await
            .unwrap()
    );
    let r = b.state.get("out").await.unwrap().unwrap();
    assert_eq!(r.deliveries["orders"], delivered);
    // A late copy of the delivery (reclaimed, or queued twice) failing afterwards does not
    // overwrite what the receiver already got.
    let late = DeliveryStatus {
        state: DeliveryState::Failed,
        attempts: 2,
        last_status: Some(400),
        last_error: Some("a late copy".into()),
        delivered_at_ms: None,
        ..delivered.clone()
    };
    assert!(
        !b.state
            .record_delivery("out", "orders", &late)
            .await
            .unwrap(),
        "a delivered delivery stays delivered"
    );
    let r = b.state.get("out").await.unwrap().unwrap();
    assert_eq!(r.deliveries["orders"], delivered);
    assert!(
        !b.state
            .record_delivery("out", "audit", &delivered)
            .await
            .unwrap(),
        "not owed"
    );
    assert!(
        !b.state
            .record_delivery("none", "orders", &delivered)
            .await
            .unwrap()
    );
}

pub async fn the_deliveries_lane_is_a_queue_of_its_own(b: Stores) {
    let mut delivery = job("dl", "T");
    delivery.delivery = Some(DeliveryTarget {
        destination: "orders".into(),
        webhook_id: "msg_dl".into(),
    });
    b.deliveries.enqueue(&delivery, None).await.unwrap();
    assert_eq!(
        b.queue.stats().await.unwrap().ready,
        0,
        "not in the events lane"
    );
    assert!(fetched(&b, "c1", 10).await.is_empty());
    let got = b
        .deliveries
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.delivery, delivery.delivery);
    b.deliveries
        .dead_letter(&got[0], "delivery", "400")
        .await
        .unwrap();
    assert_eq!(b.deliveries.stats().await.unwrap().dead_lettered, 1);
    assert_eq!(b.queue.stats().await.unwrap().dead_lettered, 0);
    let replayed = b.deliveries.replay(&ReplayFilter::default()).await.unwrap();
    assert_eq!(replayed, ["dl"]);
    let again = b
        .deliveries
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(
        again[0].job.delivery, delivery.delivery,
        "a replay re-sends the delivery"
    );
}
