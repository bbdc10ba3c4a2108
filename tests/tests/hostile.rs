//! Hostile plugins in the running gateway: each misbehaviour is contained, classified, recorded
//! in the event's history and in the metrics, and ordinary events keep flowing.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::{Gateway, PluginDir, embedded_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_classified_and_recorded() {
    let dir = PluginDir::new(Some(
        "default = \"default-router\"\n[routes]\nloop = \"chaos\"\nalloc = \"chaos\"\nstack = \"chaos\"\n\
         trap = \"chaos\"\nhuge = \"chaos\"\nopen-file = \"chaos\"\nsocket = \"chaos\"\nenv = \"chaos\"\n\
         garbage-metadata = \"chaos\"\n\
         [config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n",
    ));
    dir.install("default-router", "default-router");
    dir.install("chaos", "chaos");
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.max_retry_attempts = 2;
    config.plugin_timeout_ms = 1_000;
    config.lease_ms = Some(5_000);
    config.plugin_memory_mb = 32;
    let gw = Gateway::start(config).await;
    let c = gw.client();

    let hostile = [
        ("h-loop", "loop", json!({}), "timeout"),
        ("h-alloc", "alloc", json!({"mb": 256}), "memory_exceeded"),
        ("h-stack", "stack", json!({}), "trap"),
        ("h-trap", "trap", json!({}), "trap"),
        ("h-huge", "huge", json!({"mb": 2}), "invalid_decision"),
    ];
    for (id, ty, payload, _) in &hostile {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": ty, "payload": payload}))
                .await
                .status,
            202
        );
    }
    for (id, ty, payload) in [
        ("h-file", "open-file", json!({"path": "/etc/passwd"})),
        ("h-socket", "socket", json!({"addr": "127.0.0.1:22"})),
        ("h-env", "env", json!({})),
        ("h-garbage", "garbage-metadata", json!({})),
    ] {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": ty, "payload": payload}))
                .await
                .status,
            202
        );
    }
    // Ordinary traffic at the same time: all of it is routed while the hostile events are
    // still being retried (their first attempts alone take up to the 1 s limit).
    let ordinary: Vec<String> = (0..50).map(|i| format!("ok-{i}")).collect();
    for id in &ordinary {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
                .await
                .status,
            202
        );
    }
    let routed = c.wait_final(&ordinary, Duration::from_secs(30)).await;
    assert!(routed.iter().all(|r| r["state"] == "ROUTED"));
    let loop_record = c.get("/events/h-loop").await.body;
    assert_ne!(
        loop_record["state"], "FAILED",
        "ordinary events did not wait for the hostile ones"
    );

    let ids: Vec<String> = hostile.iter().map(|h| h.0.to_string()).collect();
    let records = c.wait_final(&ids, Duration::from_secs(60)).await;
    for ((id, _, _, kind), r) in hostile.iter().zip(&records) {
        assert_eq!(r["state"], "FAILED", "{id}: {r}");
        let history = r["history"].as_array().unwrap();
        assert_eq!(
            history.len(),
            2,
            "{id}: retried once, then dead-lettered: {r}"
        );
        assert!(
            history.iter().all(|h| h["errorKind"] == *kind),
            "{id}: expected {kind}: {r}"
        );
        assert_eq!(history[0]["outcome"], "retry");
        assert_eq!(history[1]["outcome"], "failed");
    }
    let contained = c
        .wait_final(
            &["h-file".into(), "h-socket".into(), "h-env".into()],
            Duration::from_secs(10),
        )
        .await;
    assert!(
        contained[0]["decision"]["destination"]
            .as_str()
            .unwrap()
            .starts_with("denied:")
    );
    assert!(
        contained[1]["decision"]["destination"]
            .as_str()
            .unwrap()
            .starts_with("denied:")
    );
    assert_eq!(contained[2]["decision"]["destination"], "env:0 args:0");
    // Metadata that is not JSON is stored as the strings it is.
    let garbage = &c
        .wait_final(&["h-garbage".into()], Duration::from_secs(10))
        .await[0];
    assert_eq!(garbage["state"], "ROUTED");
    assert_eq!(
        garbage["decision"]["metadata"]["json"],
        "{\"unterminated: [1, 2"
    );
    assert_eq!(
        garbage["decision"]["metadata"]["odd"],
        "\u{0}\u{ffff}\u{1F4A5}"
    );

    let dlq = c.get("/events/failed?limit=50").await.body;
    let kinds: Vec<(String, String)> = dlq["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["eventId"].as_str().unwrap().to_string(),
                i["errorKind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, _, _, kind) in &hostile {
        assert!(
            kinds.contains(&(id.to_string(), kind.to_string())),
            "{id} {kind} in {kinds:?}"
        );
    }
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["timeout", "memory_exceeded", "trap", "invalid_decision"] {
        assert!(
            metrics.lines().any(
                |l| l.starts_with("switchyard_plugin_call_duration_seconds_count")
                    && l.contains("plugin=\"chaos\"")
                    && l.contains(&format!("result=\"{kind}\""))
            ),
            "no {kind} series in /metrics"
        );
    }
    assert_eq!(c.get("/health").await.status, 200);
    gw.stop().await.unwrap();
}
