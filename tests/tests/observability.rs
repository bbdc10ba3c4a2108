//! Metrics match what was sent; one event's journey can be followed in the JSON logs by its
//! correlation id.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::{
    Gateway, GatewayProcess, PluginDir, TEST_SECRET, embedded_config, gateway_config,
};

/// Prometheus text → "name{labels}" → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of the series of `name` whose labels contain every `labels` pair.
fn sum(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) || k.as_str() == name)
        .filter(|(k, _)| {
            labels
                .iter()
                .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(c: &switchyard_tests::Client) -> BTreeMap<String, f64> {
    let r = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    parse(&r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_what_was_sent() {
    let dir = PluginDir::new(Some("default = \"chaos\"\n"));
    dir.install("chaos", "chaos");
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    let before = scrape(&c).await;

    let mut ids = Vec::new();
    for i in 0..7 {
        let id = format!("m-ok-{i}");
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "metrics-ok", "payload": {}}))
                .await
                .status,
            202
        );
        ids.push(id);
    }
    for i in 0..3 {
        let id = format!("m-bad-{i}");
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "permanent", "payload": {}}))
                .await
                .status,
            202
        );
        ids.push(id);
    }
    for _ in 0..4 {
        let a = c
            .post_raw(
                b"{}".to_vec(),
                &[
                    ("content-type", "application/json".into()),
                    ("x-hmac-signature", "00".repeat(32)),
                ],
            )
            .await;
        assert_eq!(a.status, 401);
    }
    c.wait_final(&ids, Duration::from_secs(20)).await;
    c.wait_idle(Duration::from_secs(10)).await;
    let after = scrape(&c).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sum(&after, name, labels) - sum(&before, name, labels)
    };

    assert_eq!(
        delta("switchyard_ingest_requests_total", &[("status", "202")]),
        10.0
    );
    assert_eq!(
        delta("switchyard_ingest_requests_total", &[("status", "401")]),
        4.0
    );
    assert_eq!(
        delta(
            "switchyard_ingest_duration_seconds_count",
            &[("status", "202")]
        ),
        10.0
    );
    assert_eq!(
        delta(
            "switchyard_events_total",
            &[("event_type", "metrics-ok"), ("outcome", "routed")]
        ),
        7.0
    );
    assert_eq!(
        delta(
            "switchyard_events_total",
            &[("event_type", "permanent"), ("outcome", "dead_lettered")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "switchyard_plugin_call_duration_seconds_count",
            &[("plugin", "chaos"), ("result", "ok")]
        ),
        7.0
    );
    assert_eq!(
        delta(
            "switchyard_plugin_call_duration_seconds_count",
            &[("plugin", "chaos"), ("result", "permanent")]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &after,
            "switchyard_queue_depth",
            &[("queue", "dead_letter")]
        ),
        3.0
    );
    assert_eq!(
        sum(&after, "switchyard_queue_depth", &[("queue", "ready")]),
        0.0
    );
    assert!(
        sum(
            &after,
            "switchyard_plugin_reloads_total",
            &[("plugin", "chaos"), ("result", "loaded")]
        ) >= 1.0
    );

    // A rejected version is counted too.
    std::fs::write(dir.file("chaos"), b"not wasm").unwrap();
    let t = std::time::Instant::now();
    while sum(
        &scrape(&c).await,
        "switchyard_plugin_reloads_total",
        &[("plugin", "chaos"), ("result", "rejected")],
    ) < 1.0
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "rejection not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn one_events_journey_is_in_the_json_logs_under_its_correlation_id() {
    let dir = PluginDir::new(Some(
        "default = \"default-router\"\n[routes]\nlog = \"chaos\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n",
    ));
    dir.install("default-router", "default-router");
    dir.install("chaos", "chaos");
    let log = dir.path().join("gateway.log");
    let gw = GatewayProcess::start(&gateway_config(dir.path()), &log).await;
    let c = gw.client();
    for (id, ty, corr) in [
        ("j-1", "ORDER_CREATED", "journey-7f3a"),
        ("j-2", "log", "journey-guest"),
    ] {
        let body = serde_json::to_vec(&json!({"eventId": id, "type": ty, "payload": {"lines": 1}}))
            .unwrap();
        let sig = switchyard_model::signing::sign_hex(TEST_SECRET.as_bytes(), &body);
        let a = c
            .post_raw(
                body,
                &[
                    ("content-type", "application/json".into()),
                    ("x-hmac-signature", sig),
                    ("x-correlation-id", corr.into()),
                ],
            )
            .await;
        assert_eq!(a.status, 202);
    }
    c.wait_final(&["j-1".into(), "j-2".into()], Duration::from_secs(20))
        .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let journey = |corr: &str| -> Vec<Value> {
        text.lines()
            .filter(|l| l.contains(corr))
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .collect()
    };
    let lines = journey("journey-7f3a");
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.contains(&"event accepted"), "{messages:?}");
    let routed = lines
        .iter()
        .find(|l| l["message"] == "event routed")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(routed["span"]["event_id"], "j-1");
    assert_eq!(routed["span"]["attempt"], 1);
    assert_eq!(routed["span"]["correlation_id"], "journey-7f3a");
    assert_eq!(routed["span"]["plugin_version"], routed["plugin_version"]);
    assert_eq!(routed["destination"], "orders");
    assert_eq!(routed["plugin_version"].as_str().unwrap().len(), 12);
    // The plugin's own log line carries the correlation id too.
    let guest = journey("journey-guest");
    assert!(
        guest
            .iter()
            .any(|l| l["target"] == "switchyard::plugin::guest" && l["message"] == "chaos line 0"),
        "{guest:?}"
    );
}
