//! Backend faults under load: MongoDB going away and coming back, a slow plugin with a bounded
//! worker pool, a burst beyond capacity. (Redis going away: `pipeline.rs`; gateway kill -9:
//! `crash.rs`, `embedded.rs`.)

use std::time::Duration;

use serde_json::json;
use switchyard_tests::{Gateway, MongoServer, PluginDir, gateway_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_outage_mid_load_loses_nothing_and_fails_nothing() {
    let mut mongo = MongoServer::start();
    let dir = PluginDir::default_router(300, 0.0);
    let mut config = gateway_config(dir.path());
    config.mongo_url = Some(mongo.url());
    config.plugin_timeout_ms = 1_000;
    config.lease_ms = Some(2_000);
    config.visibility_timeout_ms = 5_000;
    config.backend_retry_ms = 300;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let ids: Vec<String> = (0..60).map(|i| format!("mo-{i}")).collect();
    for id in &ids[..30] {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
                .await
                .status,
            202
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    mongo.stop();
    // Ingestion does not touch MongoDB: still 202 during the outage.
    for id in &ids[30..] {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
                .await
                .status,
            202
        );
    }
    let ready = c
        .http
        .get(format!("{}/ready", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_secs(3)).await;
    mongo.restart();
    let records = c.wait_final(&ids, Duration::from_secs(90)).await;
    for r in &records {
        assert_eq!(
            r["state"], "ROUTED",
            "the outage alone must not fail an event: {r}"
        );
        assert_eq!(switchyard_tests::routed_count(r), 1, "{r}");
        assert!(
            r["history"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["outcome"] != "failed")
        );
    }
    let stats = c.wait_idle(Duration::from_secs(30)).await;
    assert_eq!(stats["deadLettered"], 0);
    assert!(
        stats["workers"]["deferred"].as_u64().unwrap() > 0,
        "the outage was felt and deferred: {stats}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_keeps_the_worker_pool_bounded_and_ingestion_open() {
    let dir = PluginDir::default_router(1000, 0.0);
    let data = tempfile::tempdir().unwrap();
    let mut config = switchyard_tests::embedded_config(dir.path(), data.path());
    config.queue_concurrency = 8;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let ids: Vec<String> = (0..80).map(|i| format!("slow-{i}")).collect();
    let mut max_in_progress = 0;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
                .await
                .status,
            202
        );
        if i % 10 == 0 {
            let s = c.get("/events/stats").await.body;
            max_in_progress = max_in_progress.max(s["workers"]["inProgress"].as_u64().unwrap());
        }
    }
    // All 80 accepted while at most 8 routes ran: ingestion never waits for routing.
    let s = c.get("/events/stats").await.body;
    assert!(s["ready"].as_u64().unwrap() > 0, "a backlog exists: {s}");
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let s = c.get("/events/stats").await.body;
        max_in_progress = max_in_progress.max(s["workers"]["inProgress"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        max_in_progress <= 8,
        "the pool grew past its bound: {max_in_progress}"
    );
    assert!(max_in_progress >= 4, "the pool was used: {max_in_progress}");
    c.wait_final(&ids, Duration::from_secs(60)).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_burst_beyond_capacity_is_shed_and_nothing_accepted_is_lost() {
    let dir = PluginDir::default_router(200, 0.0);
    let data = tempfile::tempdir().unwrap();
    let mut config = switchyard_tests::embedded_config(dir.path(), data.path());
    config.queue_concurrency = 4;
    config.queue_max_depth = 50;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let sends: Vec<_> = (0..400)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let id = format!("burst-{i}");
                let a = c
                    .send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
                    .await;
                (id, a.status, a.headers.contains_key("retry-after"))
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut shed = 0;
    for s in sends {
        let (id, status, retry_after) = s.await.unwrap();
        match status {
            202 => accepted.push(id),
            503 => {
                assert!(retry_after);
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0, "the depth limit shed part of the burst");
    assert!(accepted.len() >= 50, "{}", accepted.len());
    let records = c.wait_final(&accepted, Duration::from_secs(60)).await;
    assert!(records.iter().all(|r| r["state"] == "ROUTED"));
    gw.stop().await.unwrap();
}
