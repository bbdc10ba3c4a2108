//! One contract for the queue and the state store, run against both implementations: Redis +
//! SecantusDB (real servers) and the embedded store (redb in a temp dir).

use std::sync::Arc;
use std::time::Duration;

use switchyard::event::Job;
use switchyard::plugin::{Decision, PluginId};
use switchyard::queue::{Queue, ReplayFilter};
use switchyard::state::{Attempt, Claim, EventState, Finish, StateStore};
use switchyard_tests::{mongo_url, redis_url, unique};

struct Backend {
    queue: Arc<dyn Queue>,
    state: Arc<dyn StateStore>,
    _dir: Option<tempfile::TempDir>,
}

async fn redis_mongo(max_depth: u64) -> Backend {
    let name = unique("contract");
    let queue =
        switchyard::queue::redis::RedisQueue::connect(switchyard::queue::redis::RedisQueueConfig {
            url: redis_url(),
            prefix: name.clone(),
            max_depth,
            command_timeout: Duration::from_secs(2),
        })
        .await
        .unwrap();
    let state =
        switchyard::state::mongo::MongoStore::connect(switchyard::state::mongo::MongoConfig {
            url: mongo_url(),
            database: name,
            timeout: Duration::from_secs(5),
            ttl: None,
        })
        .await
        .unwrap();
    Backend {
        queue: Arc::new(queue),
        state: Arc::new(state),
        _dir: None,
    }
}

fn embedded(max_depth: u64) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let db = switchyard::embedded::EmbeddedDb::open(dir.path()).unwrap();
    let queue = switchyard::queue::embedded::EmbeddedQueue::open(db.clone(), max_depth).unwrap();
    let state = switchyard::state::embedded::EmbeddedState::new(db);
    Backend {
        queue: Arc::new(queue),
        state: Arc::new(state),
        _dir: Some(dir),
    }
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
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
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
    Finish::Routed {
        decision: Decision {
            destination: "d".into(),
            reason: "r".into(),
            metadata: Default::default(),
        },
        plugin: PluginId {
            name: "p".into(),
            version: "v".into(),
        },
        attempt: attempt(n, "routed"),
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_redis_and_secantus {
            $( #[tokio::test] async fn $name() { super::$name(super::redis_mongo(0).await).await } )*
        }
        mod on_embedded {
            $( #[tokio::test] async fn $name() { super::$name(super::embedded(0)).await } )*
        }
    };
}

contract!(
    enqueue_fetch_ack,
    retries_come_back_in_due_order,
    unfinished_deliveries_are_reclaimed_after_the_visibility_timeout,
    dead_letters_list_and_replay_exactly_once,
    claim_is_idempotent,
    state_transitions_keep_history_and_counts,
    an_expired_lease_can_be_taken_over,
    context_documents_round_trip,
);

#[tokio::test]
async fn depth_limit_on_redis_and_secantus() {
    depth_limit(redis_mongo(2).await).await
}

#[tokio::test]
async fn depth_limit_on_embedded() {
    depth_limit(embedded(2)).await
}

async fn enqueue_fetch_ack(b: Backend) {
    for i in 0..3 {
        b.queue.enqueue(&job(&format!("e{i}"), "T")).await.unwrap();
    }
    assert!(b.queue.accepted_at("e0").await.unwrap().is_some());
    let got = b
        .queue
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
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

async fn depth_limit(b: Backend) {
    b.queue.enqueue(&job("a", "T")).await.unwrap();
    b.queue.enqueue(&job("b", "T")).await.unwrap();
    assert!(matches!(
        b.queue.enqueue(&job("c", "T")).await,
        Err(switchyard::queue::Error::Full(_))
    ));
}

async fn retries_come_back_in_due_order(b: Backend) {
    for id in ["late", "soon", "due"] {
        b.queue.enqueue(&job(id, "T")).await.unwrap();
    }
    let got = b
        .queue
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
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
    let first = b
        .queue
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].job.event_id, "due");
    assert_eq!(
        first[0].job.attempt, 2,
        "the retry carries the next attempt number"
    );
    assert_eq!(b.queue.promote_due(t + 700, 100).await.unwrap(), 2);
    let rest: Vec<String> = b
        .queue
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.job.event_id)
        .collect();
    assert_eq!(rest, ["soon", "late"], "promoted in due order");
    assert_eq!(b.queue.stats().await.unwrap().delayed, 0);
}

async fn unfinished_deliveries_are_reclaimed_after_the_visibility_timeout(b: Backend) {
    b.queue.enqueue(&job("r1", "T")).await.unwrap();
    let got = b
        .queue
        .fetch("dead-consumer", 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        b.queue
            .reclaim("c2", Duration::from_millis(300), 10)
            .await
            .unwrap()
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

async fn dead_letters_list_and_replay_exactly_once(b: Backend) {
    for (id, ty) in [("x1", "X"), ("y1", "Y"), ("x2", "X")] {
        b.queue.enqueue(&job(id, ty)).await.unwrap();
    }
    let got = b
        .queue
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
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
    let back = b
        .queue
        .fetch("c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
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

async fn claim_is_idempotent(b: Backend) {
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

async fn state_transitions_keep_history_and_counts(b: Backend) {
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

async fn an_expired_lease_can_be_taken_over(b: Backend) {
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

async fn context_documents_round_trip(b: Backend) {
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
