//! OpenTelemetry traces end to end: the gateway binary, on Redis and SecantusDB, exports its
//! spans over OTLP/HTTP to a collector started by the test; an event sent with a `traceparent`
//! is one trace from the request through the queue, every attempt (a retry included) and its
//! delivery, whose request carries the trace on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use switchyard_tests::*;

/// The one span of `spans` named `name` whose attribute `key` is `value` (any, with `key` "").
fn one<'a>(spans: &'a [ExportedSpan], name: &str, key: &str, value: &str) -> &'a ExportedSpan {
    let found: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| {
            s.name == name
                && (key.is_empty() || s.attributes.get(key).map(String::as_str) == Some(value))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {key}={value}: {spans:#?}");
    found[0]
}

/// Every span of `spans` named `name` whose parent is `parent`.
fn children<'a>(
    spans: &'a [ExportedSpan],
    parent: &ExportedSpan,
    name: &str,
) -> Vec<&'a ExportedSpan> {
    spans
        .iter()
        .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
        .collect()
}

/// POSTs `event` signed, with a `traceparent` naming trace `trace_id` and span `parent`.
async fn send_traced(c: &Client, event: &serde_json::Value, trace_id: &str, parent: &str) {
    let body = serde_json::to_vec(event).unwrap();
    let a = c
        .post_raw(
            body.clone(),
            &[
                ("content-type", "application/json".into()),
                (
                    "x-hmac-signature",
                    switchyard_model::signing::sign_hex(TEST_SECRET.as_bytes(), &body),
                ),
                ("traceparent", format!("00-{trace_id}-{parent}-01")),
            ],
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
}

#[tokio::test]
async fn an_event_is_one_trace_from_its_request_through_a_retry_to_its_delivery() {
    let collector = Collector::start().await;
    let receiver = Receiver::start().await;
    let manifest = format!(
        "default = \"fanout\"\n[routes]\nflaky = \"chaos\"\n[destinations.orders]\nurl = \"{}\"\nsecret = \"{DESTINATION_SECRET}\"\nallow_private = true\n",
        receiver.url("orders")
    );
    let dir = PluginDir::new(Some(&manifest));
    dir.install("fanout", "fanout");
    dir.install("chaos", "chaos");
    let mut config = gateway_config(dir.path());
    config.otel_exporter_otlp_endpoint = Some(collector.endpoint());
    config.otel_service_name = "switchyard-under-test".into();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");
    // Batches every 100 ms (the SDK reads its batch settings from the environment).
    let gw =
        GatewayProcess::start_with_env(&config, &log, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    let c = gw.client();

    // A: fails its first attempt (transient), routed by the second.
    let (trace_a, caller_a) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let a = unique("traced-retry");
    send_traced(
        &c,
        &json!({"eventId": a, "type": "flaky", "payload": {"failures": 1}}),
        trace_a,
        caller_a,
    )
    .await;
    // B: routed to `orders` and delivered there.
    let (trace_b, caller_b) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let b = unique("traced-delivery");
    let payload = json!({"orderId": "o-1", "destinations": ["orders"]});
    send_traced(
        &c,
        &json!({"eventId": b, "type": "ORDER_CREATED", "payload": payload}),
        trace_b,
        caller_b,
    )
    .await;
    let records = c
        .wait_final(&[a.clone(), b.clone()], Duration::from_secs(30))
        .await;
    assert_eq!(records[0]["state"], "ROUTED");
    assert_eq!(records[0]["attempts"], 2, "{}", records[0]);
    let delivered = receiver
        .wait_for("orders", 1, Duration::from_secs(30))
        .await;

    // A: POST /events → ingest → queue → attempt 1 (claim, plugin call) → queue → attempt 2
    // (claim, plugin call), all one trace under the caller's span.
    let names = [
        "POST /events",
        "ingest",
        "queue",
        "queue",
        "attempt",
        "attempt",
        "claim",
        "claim",
        "plugin call",
        "plugin call",
    ];
    let spans = collector
        .wait_for(trace_a, &names, Duration::from_secs(30))
        .await;
    assert!(
        spans.iter().all(|s| s.service == "switchyard-under-test"),
        "{spans:#?}"
    );
    let request = one(&spans, "POST /events", "", "");
    assert_eq!(
        request.parent_span_id, caller_a,
        "the request continues the caller's span"
    );
    let ingest = one(&spans, "ingest", "", "");
    assert_eq!(ingest.parent_span_id, request.span_id);
    let first = one(&spans, "attempt", "attempt", "1");
    let second = one(&spans, "attempt", "attempt", "2");
    for (attempt, waited_under) in [(first, ingest), (second, first)] {
        let queue = spans
            .iter()
            .find(|s| s.span_id == attempt.parent_span_id)
            .expect("attempt's parent");
        assert_eq!(
            queue.name, "queue",
            "an attempt follows its wait in the queue"
        );
        assert_eq!(
            queue.parent_span_id, waited_under.span_id,
            "the wait follows what queued it"
        );
        assert!(queue.start_ns <= queue.end_ns && queue.end_ns <= attempt.start_ns + 1_000_000);
        assert_eq!(children(&spans, attempt, "claim").len(), 1);
        let call = children(&spans, attempt, "plugin call");
        assert_eq!(call.len(), 1, "{spans:#?}");
        assert_eq!(
            call[0].attributes.get("plugin.name").map(String::as_str),
            Some("chaos")
        );
        assert!(
            call[0]
                .attributes
                .get("plugin.version")
                .is_some_and(|v| !v.is_empty())
        );
    }
    // The retry's wait is at least the backoff (RETRY_BASE_MS 200, with jitter).
    let retry_wait = spans
        .iter()
        .find(|s| s.span_id == second.parent_span_id)
        .unwrap();
    assert!(
        retry_wait.end_ns - retry_wait.start_ns >= 100_000_000,
        "{retry_wait:?}"
    );

    // B: the delivery waits in the deliveries lane under the attempt that routed the event, and
    // its request carries the delivery's span as `traceparent`.
    let names = ["POST /events", "ingest", "attempt", "delivery"];
    let spans = collector
        .wait_for(trace_b, &names, Duration::from_secs(30))
        .await;
    let attempt = one(&spans, "attempt", "", "");
    let delivery = one(&spans, "delivery", "", "");
    let wait = spans
        .iter()
        .find(|s| s.span_id == delivery.parent_span_id)
        .expect("delivery's parent");
    assert_eq!(
        (wait.name.as_str(), wait.parent_span_id.as_str()),
        ("queue", attempt.span_id.as_str())
    );
    assert_eq!(
        delivered[0].traceparent,
        format!("00-{trace_b}-{}-01", delivery.span_id)
    );

    // Log lines keep their correlation id and gain the trace id.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let routed: BTreeMap<&str, &serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["event_id"] == a.as_str())
        .map(|l| {
            (
                l["span"]["trace_id"].as_str().unwrap_or(""),
                &l["span"]["correlation_id"],
            )
        })
        .collect();
    assert_eq!(
        routed.keys().copied().collect::<Vec<_>>(),
        vec![trace_a],
        "{routed:?}"
    );
    assert!(
        routed[trace_a]
            .as_str()
            .is_some_and(|c| !c.is_empty() && c != "-")
    );
}

#[tokio::test]
async fn without_an_endpoint_a_traceparent_is_accepted_and_nothing_is_traced() {
    // The same binary, tracing off: a `traceparent` is accepted, the event routed, and the log
    // lines are what they were (no trace id, no OpenTelemetry span names).
    let dir = PluginDir::default_router(0, 0.0);
    let config = gateway_config(dir.path());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");
    let gw = GatewayProcess::start(&config, &log).await;
    let c = gw.client();
    let id = unique("untraced");
    send_traced(
        &c,
        &json!({"eventId": id, "type": "T", "payload": {}}),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    .await;
    let records = c
        .wait_final(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(records[0]["state"], "ROUTED");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&id), "the event's lines are in the log");
    for field in ["trace_id", "otel."] {
        assert!(
            !text.contains(field),
            "no {field} in the logs without tracing"
        );
    }
}

#[tokio::test]
async fn an_unreachable_collector_is_logged_and_costs_no_event() {
    // Nothing listens on the endpoint: spans are lost, said so in the log; events are not.
    let dir = PluginDir::default_router(0, 0.0);
    let mut config = gateway_config(dir.path());
    config.otel_exporter_otlp_endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");
    let gw =
        GatewayProcess::start_with_env(&config, &log, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    let c = gw.client();
    let ids: Vec<String> = (0..20).map(|_| unique("lost-spans")).collect();
    for id in &ids {
        let a = c
            .send(&json!({"eventId": id, "type": "T", "payload": {}}))
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
    }
    let records = c.wait_final(&ids, Duration::from_secs(30)).await;
    assert!(records.iter().all(|r| r["state"] == "ROUTED"));
    let t = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("BatchSpanProcessor.ExportError") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no export error logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
