//! The gateway binary killed mid-load, and shut down gracefully: every acknowledged event ends
//! final, none is routed twice, none stays pending.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::{GatewayProcess, PluginDir, assert_final_once, gateway_config};

fn crash_config(dir: &std::path::Path) -> switchyard_gateway::Config {
    let mut config = gateway_config(dir);
    config.plugin_timeout_ms = 3_000;
    config.lease_ms = Some(4_000);
    config.visibility_timeout_ms = 5_000;
    config
}

async fn send_all(c: &switchyard_tests::Client, ids: &[String]) {
    let sends: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = c.clone();
            let e = json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}});
            tokio::spawn(async move { c.send(&e).await.status })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), 202);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_in_a_row_under_load_loses_nothing() {
    let dir = PluginDir::default_router(1500, 0.1);
    let log = dir.path().join("gateway.log");
    let mut config = crash_config(dir.path());
    config.worker_id = Some("crash-0".into());
    let mut gw = GatewayProcess::start(&config, &log).await;
    let ids: Vec<String> = (0..200).map(|i| format!("crash-{i}")).collect();
    send_all(&gw.client(), &ids).await;
    // Routes are in flight (1.5 s each) when the process dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = gw.client().get("/events/stats").await.body;
    assert!(
        stats["inFlight"].as_u64().is_some_and(|n| n > 0),
        "nothing in flight at the kill: {stats}"
    );
    for round in 1..=3 {
        gw.kill9();
        config.worker_id = Some(format!("crash-{round}"));
        gw = GatewayProcess::start(&config, &log).await;
        if round < 3 {
            // Let it reclaim and start routing, then kill it mid-work too.
            tokio::time::sleep(Duration::from_millis(5_500)).await;
        }
    }
    let c = gw.client();
    let records = c.wait_final(&ids, Duration::from_secs(120)).await;
    assert_final_once(&records);
    assert!(
        records.iter().filter(|r| r["state"] == "ROUTED").count() >= 190,
        "retries succeed"
    );
    let stats = c.wait_idle(Duration::from_secs(30)).await;
    assert_eq!(stats["pending"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_routes_and_leaves_the_rest_queued() {
    let dir = PluginDir::default_router(800, 0.0);
    let log = dir.path().join("gateway.log");
    let mut config = crash_config(dir.path());
    config.queue_concurrency = 20;
    config.worker_id = Some("term-1".into());
    let mut first = GatewayProcess::start(&config, &log).await;
    let ids: Vec<String> = (0..100).map(|i| format!("term-{i}")).collect();
    send_all(&first.client(), &ids).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = first.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("draining workers") && text.contains("workers stopped"),
        "{text}"
    );

    // Whatever was in flight finished; the rest is still queued, not lost.
    config.worker_id = Some("term-2".into());
    let second = GatewayProcess::start(&config, &log).await;
    let records = second
        .client()
        .wait_final(&ids, Duration::from_secs(60))
        .await;
    assert_final_once(&records);
    assert!(records.iter().all(|r| r["state"] == "ROUTED"));
}
