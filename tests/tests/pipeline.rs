//! The durable pipeline end to end: real redis-server, real SecantusDB, real plugins.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::{
    Gateway, GatewayProcess, PluginDir, RedisServer, TEST_SECRET, gateway_config, plugin,
    routed_count,
};

const FAST_DEFAULT: &str =
    "default = \"default-router\"\n[config.default-router]\ndelay_ms = 50\nfailure_rate = 0\n";

/// A hostile-input case: what, body, headers, expected status, expected error code.
type Case = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn accepted_event_is_routed_with_the_plugins_decision_and_live_order() {
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    gw.database()
        .await
        .collection::<mongodb::bson::Document>("orders")
        .insert_one(mongodb::bson::doc! { "_id": "12345", "region": "eu", "status": "paid" })
        .await
        .unwrap();
    let c = gw.client();

    let body =
        json!({"eventId": "evt-1", "type": "ORDER_CREATED", "payload": {"orderId": "12345"}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let sig = switchyard_model::signing::sign_hex(TEST_SECRET.as_bytes(), &bytes);
    let a = c
        .post_raw(
            bytes,
            &[
                ("content-type", "application/json".into()),
                ("x-hmac-signature", format!("sha256={sig}")),
                ("x-correlation-id", "corr-abc".into()),
            ],
        )
        .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(a.body["accepted"], true);
    assert_eq!(a.body["eventId"], "evt-1");
    assert_eq!(a.body["correlationId"], "corr-abc");
    assert_eq!(a.body["message"], "Event queued for processing");
    assert!(a.body["latencyMs"].as_f64().unwrap() >= 0.0);
    assert_eq!(a.headers["x-correlation-id"], "corr-abc");

    let record = &c
        .wait_final(&["evt-1".into()], Duration::from_secs(20))
        .await[0];
    assert_eq!(record["state"], "ROUTED");
    assert_eq!(
        record["decision"]["destination"], "orders-eu",
        "the live order's region feeds the decision"
    );
    assert_eq!(record["correlationId"], "corr-abc");
    assert_eq!(record["plugin"]["name"], "default-router");
    use sha2::Digest;
    let version = hex::encode(sha2::Sha256::digest(
        std::fs::read(plugin("default-router")).unwrap(),
    ));
    assert_eq!(record["plugin"]["version"], version);
    assert_eq!(record["attempts"], 1);
    assert_eq!(routed_count(record), 1);

    // A correlation id is generated when the producer sends none.
    let a = c
        .send(&json!({"eventId": "evt-2", "type": "ORDER_CREATED", "payload": {}}))
        .await;
    assert_eq!(a.status, 202);
    let generated = a.body["correlationId"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a uuid: {generated}");
    assert_eq!(a.headers["x-correlation-id"].to_str().unwrap(), generated);

    assert_eq!(c.get("/events/nope").await.status, 404);
    // Admin endpoints refuse a missing or wrong token.
    for path in ["/events/stats", "/events/failed"] {
        let r = c
            .http
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = c
            .http
            .get(format!("{}{path}", c.base))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    let r = c
        .http
        .post(format!("{}/events/dlq/replay", c.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_its_status_and_nothing_is_queued() {
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let mut config = gateway_config(dir.path());
    config.body_limit_bytes = 4096;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let json_ct = ("content-type", "application/json".to_string());
    let signed = |body: &[u8]| switchyard_model::signing::sign_hex(TEST_SECRET.as_bytes(), body);

    // (what, body, headers, expected status, expected error code)
    let mut cases: Vec<Case> = vec![
        (
            "invalid JSON",
            b"{not json".to_vec(),
            vec![json_ct.clone(), ("x-hmac-signature", signed(b"{not json"))],
            400,
            "invalid_event",
        ),
        (
            "wrong types",
            br#"{"eventId":1,"type":"T","payload":{}}"#.to_vec(),
            vec![
                json_ct.clone(),
                (
                    "x-hmac-signature",
                    signed(br#"{"eventId":1,"type":"T","payload":{}}"#),
                ),
            ],
            400,
            "invalid_event",
        ),
        (
            "payload not an object",
            br#"{"eventId":"a","type":"T","payload":3}"#.to_vec(),
            vec![
                json_ct.clone(),
                (
                    "x-hmac-signature",
                    signed(br#"{"eventId":"a","type":"T","payload":3}"#),
                ),
            ],
            400,
            "invalid_event",
        ),
        (
            "missing signature",
            br#"{"eventId":"a","type":"T","payload":{}}"#.to_vec(),
            vec![json_ct.clone()],
            401,
            "invalid_signature",
        ),
        (
            "wrong secret",
            br#"{"eventId":"a","type":"T","payload":{}}"#.to_vec(),
            vec![
                json_ct.clone(),
                (
                    "x-hmac-signature",
                    switchyard_model::signing::sign_hex(
                        b"wrong",
                        br#"{"eventId":"a","type":"T","payload":{}}"#,
                    ),
                ),
            ],
            401,
            "invalid_signature",
        ),
        (
            "bad hex",
            b"{}".to_vec(),
            vec![json_ct.clone(), ("x-hmac-signature", "xyz".into())],
            401,
            "invalid_signature",
        ),
        (
            "stale webhook timestamp",
            b"{}".to_vec(),
            vec![
                json_ct.clone(),
                ("webhook-id", "m1".into()),
                ("webhook-timestamp", "1000".into()),
                (
                    "webhook-signature",
                    switchyard_model::signing::sign_webhook(
                        TEST_SECRET.as_bytes(),
                        "m1",
                        1000,
                        b"{}",
                    ),
                ),
            ],
            401,
            "invalid_signature",
        ),
        (
            "wrong content type",
            br#"{"eventId":"a","type":"T","payload":{}}"#.to_vec(),
            vec![
                ("content-type", "text/plain".into()),
                (
                    "x-hmac-signature",
                    signed(br#"{"eventId":"a","type":"T","payload":{}}"#),
                ),
            ],
            415,
            "unsupported_media_type",
        ),
        (
            "body over the limit",
            vec![b' '; 10_000],
            vec![
                json_ct.clone(),
                ("x-hmac-signature", signed(&[b' '; 10_000])),
            ],
            413,
            "payload_too_large",
        ),
        (
            "bad correlation id",
            b"{}".to_vec(),
            vec![json_ct.clone(), ("x-correlation-id", "x".repeat(200))],
            400,
            "invalid_header",
        ),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let huge = vec![b' '; 10 << 20];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let event = br#"{"eventId":"a","type":"T","payload":{}}"#.to_vec();
    let future = now + 3600;
    cases.extend([
        (
            "10 MB body",
            huge.clone(),
            vec![json_ct.clone(), ("x-hmac-signature", signed(&huge))],
            413,
            "payload_too_large",
        ),
        (
            "deeply nested JSON",
            deep.clone(),
            vec![json_ct.clone(), ("x-hmac-signature", signed(&deep))],
            413,
            "payload_too_large",
        ),
        (
            "empty body",
            Vec::new(),
            vec![json_ct.clone(), ("x-hmac-signature", signed(b""))],
            400,
            "invalid_event",
        ),
        (
            "duplicated signature header",
            event.clone(),
            vec![
                json_ct.clone(),
                ("x-hmac-signature", signed(&event)),
                ("x-hmac-signature", signed(&event)),
            ],
            401,
            "invalid_signature",
        ),
        (
            "future webhook timestamp",
            event.clone(),
            vec![
                json_ct.clone(),
                ("webhook-id", "m2".into()),
                ("webhook-timestamp", future.to_string()),
                (
                    "webhook-signature",
                    switchyard_model::signing::sign_webhook(
                        TEST_SECRET.as_bytes(),
                        "m2",
                        future,
                        &event,
                    ),
                ),
            ],
            401,
            "invalid_signature",
        ),
        (
            "bad base64 webhook signature",
            event.clone(),
            vec![
                json_ct.clone(),
                ("webhook-id", "m3".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", "v1,!!!not-base64".into()),
            ],
            401,
            "invalid_signature",
        ),
        (
            "missing content type",
            event.clone(),
            vec![("x-hmac-signature", signed(&event))],
            415,
            "unsupported_media_type",
        ),
    ]);
    // Nesting deep enough to hit the JSON parser's recursion limit, within the body limit.
    let nested = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000)).into_bytes();
    cases.push((
        "nested JSON past the parser's depth limit",
        nested.clone(),
        vec![json_ct.clone(), ("x-hmac-signature", signed(&nested))],
        400,
        "invalid_event",
    ));
    for (name, body, headers, status, code) in cases {
        let a = c.post_raw(body, &headers).await;
        assert_eq!(a.status, status, "{name}: {:?}", a.body);
        assert_eq!(a.body["error"]["code"], code, "{name}: {:?}", a.body);
        assert!(a.body["error"]["message"].is_string(), "{name}");
    }

    // A valid Standard Webhooks request is accepted.
    let body = br#"{"eventId":"wh-1","type":"ORDER_CREATED","payload":{}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let a = c
        .post_raw(
            body.to_vec(),
            &[
                json_ct.clone(),
                ("webhook-id", "msg-1".into()),
                ("webhook-timestamp", now.to_string()),
                (
                    "webhook-signature",
                    switchyard_model::signing::sign_webhook(
                        TEST_SECRET.as_bytes(),
                        "msg-1",
                        now,
                        body,
                    ),
                ),
            ],
        )
        .await;
    assert_eq!(a.status, 202, "{:?}", a.body);

    c.wait_final(&["wh-1".into()], Duration::from_secs(20))
        .await;
    let stats = c.wait_idle(Duration::from_secs(10)).await;
    assert_eq!(
        stats["routed"], 1,
        "only the valid event was queued: {stats}"
    );
    assert_eq!(stats["deadLettered"], 0);
    assert_eq!(c.get("/health").await.status, 200);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limit_and_queue_depth_shed_load_with_retry_after() {
    let dir = PluginDir::default_router(3000, 0.0);
    let mut config = gateway_config(dir.path());
    config.rate_limit_max_requests = 5;
    config.rate_limit_window_ms = 60_000;
    config.queue_max_depth = 3;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let mut statuses = Vec::new();
    for i in 0..7 {
        let a = c
            .send(&json!({"eventId": format!("rl-{i}"), "type": "ORDER_CREATED", "payload": {}}))
            .await;
        if a.status != 202 {
            assert!(
                a.headers.contains_key("retry-after"),
                "{} without Retry-After",
                a.status
            );
            assert!(a.body["error"]["code"].is_string());
        }
        statuses.push(a.status);
    }
    // Three fit in the queue, the next two are shed by depth, then the per-client limit bites.
    assert_eq!(statuses, [202, 202, 202, 503, 503, 429, 429]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn same_event_sent_fifty_times_concurrently_is_routed_once() {
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    let event = json!({"eventId": "dup-1", "type": "ORDER_CREATED", "payload": {"n": 1}});
    let sends: Vec<_> = (0..50)
        .map(|_| {
            let (c, e) = (c.clone(), event.clone());
            tokio::spawn(async move { c.send(&e).await.status })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), 202);
    }
    c.wait_final(&["dup-1".into()], Duration::from_secs(20))
        .await;
    c.wait_idle(Duration::from_secs(30)).await;
    let record = c.get("/events/dup-1").await.body;
    assert_eq!(record["state"], "ROUTED");
    assert_eq!(
        record["history"].as_array().unwrap().len(),
        1,
        "routing ran once: {record}"
    );
    assert_eq!(
        record["duplicates"], 49,
        "every other delivery is counted: {record}"
    );

    // Sent again later by its producer: still not routed again.
    assert_eq!(c.send(&event).await.status, 202);
    c.wait_idle(Duration::from_secs(10)).await;
    let record = c.get("/events/dup-1").await.body;
    assert_eq!(record["history"].as_array().unwrap().len(), 1);
    assert_eq!(record["duplicates"], 50);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn transient_failures_are_retried_with_growing_delays_then_routed() {
    let dir = PluginDir::new(Some("default = \"chaos\"\n"));
    dir.install("chaos", "chaos");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    assert_eq!(
        c.send(&json!({"eventId": "flaky-1", "type": "flaky", "payload": {"failures": 3}}))
            .await
            .status,
        202
    );
    let record = &c
        .wait_final(&["flaky-1".into()], Duration::from_secs(20))
        .await[0];
    assert_eq!(record["state"], "ROUTED", "{record}");
    assert_eq!(record["decision"]["destination"], "flaky:4");
    let history = record["history"].as_array().unwrap();
    let outcomes: Vec<&str> = history
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "routed"]);
    assert!(
        history
            .iter()
            .take(3)
            .all(|h| h["errorKind"] == "transient")
    );
    // Scheduled delays: base 200 ms, factor 2, jitter 20 %.
    let delays: Vec<u64> = history
        .iter()
        .take(3)
        .map(|h| h["nextAttemptAtMs"].as_u64().unwrap() - h["atMs"].as_u64().unwrap())
        .collect();
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "delays grow: {delays:?}"
    );
    assert!(
        (150..=210).contains(&delays[0])
            && (310..=410).contains(&delays[1])
            && (630..=810).contains(&delays[2]),
        "{delays:?}"
    );
    // Attempts really were that far apart.
    let at: Vec<u64> = history
        .iter()
        .map(|h| h["atMs"].as_u64().unwrap())
        .collect();
    assert!(
        at[3] - at[0] >= delays.iter().sum::<u64>(),
        "{at:?} {delays:?}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn permanent_errors_and_exhausted_retries_are_dead_lettered_with_context() {
    let dir = PluginDir::new(Some("default = \"chaos\"\n"));
    dir.install("chaos", "chaos");
    let mut config = gateway_config(dir.path());
    config.max_retry_attempts = 3;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    c.send(&json!({"eventId": "perm-1", "type": "permanent", "payload": {"orderId": "7"}}))
        .await;
    c.send(&json!({"eventId": "tran-1", "type": "transient", "payload": {"orderId": "8"}}))
        .await;
    let records = c
        .wait_final(&["perm-1".into(), "tran-1".into()], Duration::from_secs(20))
        .await;
    assert_eq!(records[0]["state"], "FAILED");
    assert_eq!(records[0]["attempts"], 1, "permanent: no retry");
    assert_eq!(records[1]["state"], "FAILED");
    assert_eq!(
        records[1]["attempts"], 3,
        "transient: retried up to MAX_RETRY_ATTEMPTS"
    );
    assert!(records[1]["error"].as_str().unwrap().contains("try again"));
    c.wait_idle(Duration::from_secs(10)).await;

    let dlq = c.get("/events/failed").await;
    assert_eq!(dlq.status, 200);
    let items = dlq.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let perm = items.iter().find(|i| i["eventId"] == "perm-1").unwrap();
    assert_eq!(perm["payload"], json!({"orderId": "7"}));
    assert_eq!(perm["errorKind"], "permanent");
    assert_eq!(perm["attempts"], 1);
    assert!(perm["correlationId"].is_string());
    assert!(perm["error"].as_str().unwrap().contains("never"));
    let tran = items.iter().find(|i| i["eventId"] == "tran-1").unwrap();
    assert_eq!(tran["attempts"], 3);
    assert_eq!(tran["errorKind"], "transient");

    let stats = c.get("/events/stats").await.body;
    assert_eq!(stats["deadLettered"], 2);
    assert_eq!(stats["failed"], 2);

    // Pagination.
    let first = c.get("/events/failed?limit=1").await.body;
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let cursor = first["nextCursor"].as_str().unwrap();
    let second = c
        .get(&format!("/events/failed?limit=1&cursor={cursor}"))
        .await
        .body;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(first["items"][0]["eventId"], second["items"][0]["eventId"]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn dlq_replay_all_and_filtered_processes_each_once() {
    let dir = PluginDir::new(Some("default = \"live\"\n"));
    dir.install("live", "chaos");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    let mut all = Vec::new();
    for (prefix, ty) in [("a", "permanent"), ("b", "permanent")] {
        for id in ids(prefix, 3) {
            c.send(&json!({"eventId": id, "type": ty, "payload": {"group": prefix}}))
                .await;
            all.push(id);
        }
    }
    // Mark the groups apart by type after the fact: a's are `permanent`, b's too, so filter by ids.
    c.wait_final(&all, Duration::from_secs(20)).await;
    c.wait_idle(Duration::from_secs(10)).await;
    assert_eq!(c.get("/events/stats").await.body["deadLettered"], 6);

    // The team fixes the plugin (hot swap), then replays.
    let fixed = sha256_hex(&plugin("noop"));
    dir.install("live", "noop");
    let t = std::time::Instant::now();
    while c.get("/plugins").await.body["plugins"][0]["version"] != fixed.as_str() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "fixed plugin not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Replay needs the token.
    let r = c
        .http
        .post(format!("{}/events/dlq/replay", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = c
        .post_admin(
            "/events/dlq/replay",
            json!({"eventIds": ["a-0", "a-1", "a-2"]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["replayed"], 3);
    c.wait_idle(Duration::from_secs(20)).await;
    for id in ids("a", 3) {
        let rec = c.get(&format!("/events/{id}")).await.body;
        assert_eq!(rec["state"], "ROUTED", "{rec}");
        assert_eq!(routed_count(&rec), 1);
        assert_eq!(
            rec["history"].as_array().unwrap().len(),
            2,
            "history kept: failed, then routed"
        );
    }
    assert_eq!(c.get("/events/stats").await.body["deadLettered"], 3);

    // Replay all, twice at once: each entry leaves the DLQ exactly once.
    let (r1, r2) = tokio::join!(
        c.post_admin("/events/dlq/replay", json!({})),
        c.post_admin("/events/dlq/replay", json!({}))
    );
    assert_eq!(
        r1.body["replayed"].as_u64().unwrap() + r2.body["replayed"].as_u64().unwrap(),
        3
    );
    c.wait_idle(Duration::from_secs(20)).await;
    for id in &all {
        let rec = c.get(&format!("/events/{id}")).await.body;
        assert_eq!(rec["state"], "ROUTED", "{rec}");
        assert_eq!(routed_count(&rec), 1, "processed once: {rec}");
    }
    let stats = c.get("/events/stats").await.body;
    assert_eq!(stats["deadLettered"], 0);
    assert_eq!(stats["routed"], 6);
    let again = c.post_admin("/events/dlq/replay", json!({})).await;
    assert_eq!(again.body["replayed"], 0, "a second replay replays nothing");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn replay_filters_by_event_type() {
    let dir = PluginDir::new(Some("default = \"chaos\"\n"));
    dir.install("chaos", "chaos");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    c.send(&json!({"eventId": "p-1", "type": "permanent", "payload": {}}))
        .await;
    c.send(&json!({"eventId": "t-1", "type": "trap", "payload": {}}))
        .await;
    c.send(&json!({"eventId": "p-2", "type": "permanent", "payload": {}}))
        .await;
    let mut config_attempts = 0;
    loop {
        let s = c.get("/events/stats").await.body;
        if s["deadLettered"] == 3 {
            break;
        }
        config_attempts += 1;
        assert!(config_attempts < 300, "dead letters did not arrive: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c
        .post_admin("/events/dlq/replay", json!({"type": "trap"}))
        .await;
    assert_eq!(r.body["eventIds"], json!(["t-1"]));
    let r = c
        .post_admin("/events/dlq/replay", json!({"type": "nothing-like-it"}))
        .await;
    assert_eq!(r.body["replayed"], 0);
    let bad = c.post_admin("/events/dlq/replay", json!({"typo": 1})).await;
    assert_eq!(bad.status, 400);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_redis_route_each_event_once() {
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let log = dir.path().join("gateways.log");
    let mut a = gateway_config(dir.path());
    a.worker_id = Some("gw-a".into());
    let mut b = a.clone();
    b.worker_id = Some("gw-b".into());
    let (pa, pb) = (
        GatewayProcess::start(&a, &log).await,
        GatewayProcess::start(&b, &log).await,
    );
    let (ca, cb) = (pa.client(), pb.client());
    let all = ids("two", 300);
    let sends: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            let e = json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}});
            tokio::spawn(async move { c.send(&e).await.status })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), 202);
    }
    let records = ca.wait_final(&all, Duration::from_secs(60)).await;
    for r in &records {
        assert_eq!(r["state"], "ROUTED");
        assert_eq!(
            r["history"].as_array().unwrap().len(),
            1,
            "routed once: {r}"
        );
    }
    let (sa, sb) = (
        ca.get("/events/stats").await.body,
        cb.get("/events/stats").await.body,
    );
    let (ra, rb) = (
        sa["workers"]["routed"].as_u64().unwrap(),
        sb["workers"]["routed"].as_u64().unwrap(),
    );
    assert_eq!(ra + rb, 300, "{sa} {sb}");
    assert!(ra > 0 && rb > 0, "both gateways worked: {ra} {rb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_with_retry_after_and_recovery_keeps_acknowledged_events() {
    let mut redis = RedisServer::start();
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let mut config = gateway_config(dir.path());
    config.redis_url = Some(redis.url());
    config.redis_timeout_ms = 500;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    // Accepted before the outage, with the workers not yet done (50 ms routes): persisted by AOF.
    let before = ids("before", 20);
    for id in &before {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
                .await
                .status,
            202
        );
    }
    redis.stop();
    let t = std::time::Instant::now();
    let a = c
        .send(&json!({"eventId": "during-1", "type": "ORDER_CREATED", "payload": {}}))
        .await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        t.elapsed()
    );
    assert_eq!(a.body["error"]["code"], "unavailable");
    assert!(a.headers.contains_key("retry-after"));
    assert!(
        !a.body.to_string().contains("redis://"),
        "no internals in the body: {}",
        a.body
    );
    let ready = c
        .http
        .get(format!("{}/ready", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        c.http
            .get(format!("{}/health", c.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    redis.restart();
    let t = std::time::Instant::now();
    loop {
        let a = c
            .send(&json!({"eventId": "after-1", "type": "ORDER_CREATED", "payload": {}}))
            .await;
        if a.status == 202 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ingestion did not recover: {:?}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all = before.clone();
    all.push("after-1".into());
    let records = c.wait_final(&all, Duration::from_secs(60)).await;
    assert!(
        records.iter().all(|r| r["state"] == "ROUTED"),
        "nothing acknowledged was lost"
    );
    assert_eq!(
        c.get("/events/during-1").await.status,
        404,
        "the refused event was not stored"
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_all_accepted_and_processed_with_retries() {
    // The seed's proof: 100 concurrent signed requests → 100 × 202, all processed, retries
    // visible. The default plugin as shipped: 2 s routing, 10 % transient failures.
    let dir = PluginDir::new(Some("default = \"default-router\"\n"));
    dir.install("default-router", "default-router");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    let all = ids("hundred", 100);
    let sends: Vec<_> = all
        .iter()
        .map(|id| {
            let c = c.clone();
            let e = json!({"eventId": id, "type": "ORDER_CREATED", "payload": {"orderId": "1"}});
            tokio::spawn(async move { c.send(&e).await })
        })
        .collect();
    for s in sends {
        let a = s.await.unwrap();
        assert_eq!(a.status, 202, "{:?}", a.body);
        assert!(a.body["latencyMs"].as_f64().unwrap() < 150.0);
    }
    let records = c.wait_final(&all, Duration::from_secs(60)).await;
    assert!(records.iter().all(|r| r["state"] == "ROUTED"));
    let retries: usize = records
        .iter()
        .map(|r| {
            r["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["outcome"] == "retry")
                .count()
        })
        .sum();
    assert!(
        retries > 0,
        "10 % of first attempts fail transiently and are retried"
    );
    let stats = c.get("/events/stats").await.body;
    assert_eq!(
        stats["workers"]["retried"].as_u64().unwrap() as usize,
        retries
    );
    gw.stop().await.unwrap();
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn a_slow_body_is_cut_off_with_408_and_the_gateway_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let mut config = gateway_config(dir.path());
    config.body_timeout_ms = 500;
    let gw = Gateway::start(config).await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nx-hmac-signature: {}\r\ncontent-length: 100\r\n\r\n",
        "00".repeat(32)
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        let mut answer = Vec::new();
        for _ in 0..100 {
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&answer).to_string()
    });
    // Meanwhile, others are served.
    let c = gw.client();
    assert_eq!(
        c.send(&json!({"eventId": "while-slow", "type": "ORDER_CREATED", "payload": {}}))
            .await
            .status,
        202
    );
    let answer = trickle.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        c.http
            .get(format!("{}/health", c.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    c.wait_final(&["while-slow".into()], Duration::from_secs(20))
        .await;
    gw.stop().await.unwrap();
}
