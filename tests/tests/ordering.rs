//! Per-key ordering, end to end on Redis + SecantusDB with the `keyed` fixture (a
//! `keyed-router` plugin whose ordering key is the payload's `key`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::*;

/// (start, finish) in ms of the attempt that routed `record`.
fn routed_interval(record: &Value) -> (u64, u64) {
    let a = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["outcome"] == "routed")
        .unwrap_or_else(|| panic!("not routed: {record}"));
    let finish = a["atMs"].as_u64().unwrap();
    (finish - a["durationMs"].as_u64().unwrap(), finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_routed_in_order_through_retries_while_keys_run_in_parallel() {
    let dir = PluginDir::new(Some("default = \"keyed\"\n"));
    dir.install("keyed", "keyed");
    keys_in_order(gateway_config(dir.path()), false).await;
}

/// The same on a Redis Cluster with the queue in eight partitions: the order survives
/// partitioning for events that share a `partitionKey` (here the ordering key itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_partitioned_cluster_queue_events_sharing_a_partition_key_keep_their_order() {
    let dir = PluginDir::new(Some("default = \"keyed\"\n"));
    dir.install("keyed", "keyed");
    let config = switchyard_gateway::Config {
        redis_url: Some(redis_cluster_url()),
        queue_partitions: 8,
        ..gateway_config(dir.path())
    };
    keys_in_order(config, true).await;
}

/// Four keys × eight events (two per key failing once) and unkeyed events: each key routed one
/// at a time in the order received, keys in parallel. With `partition_keys`, each event carries
/// its ordering key as its `partitionKey`.
async fn keys_in_order(config: switchyard_gateway::Config, partition_keys: bool) {
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let run = unique("ordered");
    let keys = ["k0", "k1", "k2", "k3"];
    let mut ids: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut unkeyed = Vec::new();
    for seq in 0..8u64 {
        for key in keys {
            let id = format!("{run}-{key}-{seq}");
            // Two events of each key fail their first attempt: the ones after them must wait
            // through the retry.
            let payload =
                json!({ "key": key, "seq": seq, "sleepMs": 40, "failOnce": seq == 2 || seq == 5 });
            let mut event = json!({ "eventId": id, "type": "ORDER_UPDATED", "payload": payload });
            if partition_keys {
                event["partitionKey"] = json!(key);
            }
            let a = c.send(&event).await;
            assert_eq!(a.status, 202, "{}", a.body);
            ids.insert((key.to_string(), seq), id);
        }
        let id = format!("{run}-free-{seq}");
        let payload = json!({ "seq": seq, "sleepMs": 40 });
        let a = c
            .send(&json!({ "eventId": id, "type": "ORDER_UPDATED", "payload": payload }))
            .await;
        assert_eq!(a.status, 202);
        unkeyed.push(id);
    }
    let all: Vec<String> = ids
        .values()
        .cloned()
        .chain(unkeyed.iter().cloned())
        .collect();
    let records = c.wait_final(&all, Duration::from_secs(60)).await;
    assert_final_once(&records);
    let by_id: BTreeMap<String, Value> = all.iter().cloned().zip(records).collect();
    for r in by_id.values() {
        assert_eq!(r["state"], "ROUTED", "{r}");
    }

    let mut intervals = Vec::new();
    for key in keys {
        let mut previous: Option<(u64, u64)> = None;
        for seq in 0..8u64 {
            let r = &by_id[&ids[&(key.to_string(), seq)]];
            assert_eq!(r["decision"]["destination"], format!("ordered:{key}"));
            assert_eq!(r["decision"]["metadata"]["seq"], seq.to_string());
            let expected_attempts = if seq == 2 || seq == 5 { 2 } else { 1 };
            assert_eq!(r["attempts"], expected_attempts, "{r}");
            let (start, finish) = routed_interval(r);
            if let Some((_, prev_finish)) = previous {
                // One at a time, in the order received: no attempt of this event, failed or
                // not, began before the previous one was routed (ms timestamps: 2 ms rounding).
                for a in r["history"].as_array().unwrap() {
                    let began = a["atMs"].as_u64().unwrap() - a["durationMs"].as_u64().unwrap();
                    assert!(
                        began + 2 >= prev_finish,
                        "{key}: seq {seq} began an attempt at {began}, before seq {} was routed at {prev_finish}",
                        seq - 1
                    );
                }
            }
            previous = Some((start, finish));
            intervals.push((key, start, finish));
        }
    }
    // Different keys ran at the same time.
    let overlapping = intervals.iter().any(|(k1, s1, f1)| {
        intervals
            .iter()
            .any(|(k2, s2, f2)| k1 != k2 && s1.max(s2) + 20 <= *f1.min(f2))
    });
    assert!(
        overlapping,
        "keys were routed one after another: {intervals:?}"
    );

    // A dry run shows the key a version would choose.
    let event = json!({ "type": "ORDER_UPDATED", "payload": { "key": "k9", "seq": 1 } });
    let dry = c
        .post_admin("/plugins/keyed/dry-run", json!({ "event": event }))
        .await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.body["orderingKey"], "k9");
    assert_eq!(dry.body["result"]["decision"]["destination"], "ordered:k9");
    gw.stop().await.unwrap();
}

/// The first event of a key that fails, seen retried (its in-place retry recorded).
async fn wait_for_retry(c: &Client, id: &str) {
    let t = std::time::Instant::now();
    loop {
        let r = c.get(&format!("/events/{id}")).await.body;
        if r["history"][0]["outcome"] == "retry" {
            // Give the in-place retry a moment to record its progress on the queue entry.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no retry: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_retry_keeps_its_attempt_number_through_a_crash_and_a_shutdown() {
    let dir = PluginDir::new(Some("default = \"keyed\"\n"));
    dir.install("keyed", "keyed");
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.retry_base_ms = 5_000;
    config.retry_cap_ms = 5_000;
    config.shutdown_grace_ms = 500;
    let log = data.path().join("gateway.log");
    let event = |id: &str| {
        json!({"eventId": id, "type": "ORDER_UPDATED",
               "payload": {"key": id, "seq": 0, "failOnce": true}})
    };
    let mut gw = GatewayProcess::start(&config, &log).await;
    assert_eq!(gw.client().send(&event("crash")).await.status, 202);
    wait_for_retry(&gw.client(), "crash").await;
    gw.kill9();
    let mut gw = GatewayProcess::start(&config, &log).await;
    assert_eq!(gw.client().send(&event("stop")).await.status, 202);
    wait_for_retry(&gw.client(), "stop").await;
    assert!(gw.terminate().success());
    let gw = GatewayProcess::start(&config, &log).await;
    let records = gw
        .client()
        .wait_final(&["crash".into(), "stop".into()], Duration::from_secs(30))
        .await;
    for r in &records {
        // The fixture fails attempt 1 only: had attempt 1 been run again, it would fail again.
        let outcomes: Vec<(u64, &str)> = r["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["attempt"].as_u64().unwrap(),
                    a["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(outcomes, [(1, "retry"), (2, "routed")], "{r}");
        assert_eq!(r["attempts"], 2);
    }
}
