//! Delivery end to end: a routed event reaches a real HTTP receiver (on loopback, checking every
//! signature with the independent `standardwebhooks` crate), once per destination, retried,
//! dead-lettered and replayed, circuit-broken, guarded against SSRF, and never lost to a crash.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::*;

/// A `[destinations.<name>]` table pointing at `url`.
fn destination(name: &str, url: &str, allow_private: bool) -> String {
    format!(
        "[destinations.{name}]\nurl = \"{url}\"\nsecret = \"{DESTINATION_SECRET}\"\ntimeout_ms = 2000\nallow_private = {allow_private}\n"
    )
}

/// A plugins directory routing everything with `plugin`, with `destinations`.
fn plugins_with(plugin: &str, destinations: &[String]) -> PluginDir {
    let mut manifest = format!(
        "default = \"{plugin}\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n"
    );
    for d in destinations {
        manifest.push_str(d);
    }
    let dir = PluginDir::new(Some(&manifest));
    let source = match plugin {
        "fanout" => "fanout",
        _ => "default-router",
    };
    dir.install(plugin, source);
    dir
}

/// Fast retries and a circuit that opens after three failures, for tests.
fn fast(mut config: switchyard_gateway::Config) -> switchyard_gateway::Config {
    config.delivery_circuit_failures = 3;
    config.delivery_circuit_cooldown_ms = 300;
    config.delivery_circuit_max_cooldown_ms = 1_000;
    config
}

/// Polls the event until `check` holds on its record.
async fn wait_record(c: &Client, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let r = c.get(&format!("/events/{id}")).await.body;
        if check(&r) {
            return r;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{id}: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delivered(r: &Value, destination: &str) -> bool {
    r["deliveries"][destination]["state"] == "DELIVERED"
}

/// Fan-out to two destinations: each gets the event once, signed with the message id the record
/// shows; one gets the envelope, the other (told so by the plugin) a reshaped payload.
async fn each_destination_gets_its_delivery_once(config: switchyard_gateway::Config) {
    let receiver = Receiver::start().await;
    let dir = plugins_with(
        "fanout",
        &[
            destination("orders", &receiver.url("orders"), true),
            destination("audit", &receiver.url("audit"), true),
        ],
    );
    let gw = Gateway::start(fast(switchyard_gateway::Config {
        plugins_dir: dir.path().to_path_buf(),
        ..config
    }))
    .await;
    let c = gw.client();
    let id = unique("fan");
    let payload = json!({"orderId": "o-7", "destinations": ["orders", "audit", "nowhere"]});
    assert_eq!(
        c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": payload}))
            .await
            .status,
        202
    );
    let orders = receiver
        .wait_for("orders", 1, Duration::from_secs(20))
        .await;
    let audit = receiver.wait_for("audit", 1, Duration::from_secs(20)).await;
    let r = wait_record(&c, &id, |r| delivered(r, "orders") && delivered(r, "audit")).await;
    // Once each (no retry was needed), verified by the independent implementation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received("orders").len(), 1);
    assert_eq!(receiver.received("audit").len(), 1);
    for (got, name) in [(&orders[0], "orders"), (&audit[0], "audit")] {
        assert!(got.verified, "{name}: signature not valid");
        assert_eq!(got.webhook_id, r["deliveries"][name]["webhookId"], "{r}");
        assert_eq!(got.correlation_id, r["correlationId"]);
        assert_eq!(r["deliveries"][name]["attempts"], 1);
        assert_eq!(r["deliveries"][name]["lastStatus"], 204);
    }
    assert_ne!(orders[0].webhook_id, audit[0].webhook_id);
    assert_eq!(orders[0].body["eventId"], id.as_str(), "the envelope");
    assert_eq!(orders[0].body["payload"]["orderId"], "o-7");
    assert_eq!(orders[0].body["decision"]["destination"], "orders");
    // (The fixture reshapes only when asked; both got the envelope here.)
    assert_eq!(audit[0].body["type"], "ORDER_CREATED");
    // A destination the manifest does not declare is recorded in the decision, not delivered.
    assert!(r["deliveries"].get("nowhere").is_none(), "{r}");
    assert_eq!(r["decision"]["also"], json!(["audit", "nowhere"]));

    // A producer's resend of the routed event (a new request, the same event id) is a
    // duplicate: nothing is routed or delivered again.
    assert_eq!(
        c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": payload}))
            .await
            .status,
        202
    );
    let r = wait_record(&c, &id, |r| r["duplicates"] == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received("orders").len(), 1);
    assert_eq!(receiver.received("audit").len(), 1);
    assert_eq!(
        r["history"].as_array().unwrap().len(),
        1,
        "routed once: {r}"
    );

    // The plugin's reshaped payload is delivered as it is.
    let id = unique("reshaped");
    let payload = json!({"orderId": "o-8", "destinations": ["audit"], "reshape": true});
    c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": payload}))
        .await;
    let audit = receiver.wait_for("audit", 2, Duration::from_secs(20)).await;
    assert_eq!(audit[1].body, json!({"order": "o-8", "from": id}));
    assert!(audit[1].verified);

    // Per destination metrics (the recorder is shared by this process's gateways: at least).
    let text = metrics(&c).await;
    let at_least = |series: &str, n: f64| {
        let got = metric(&text, series);
        assert!(got.is_some_and(|v| v >= n), "{series}: {got:?}");
    };
    at_least(
        r#"switchyard_deliveries_total{destination="audit",outcome="delivered"}"#,
        2.0,
    );
    at_least(
        r#"switchyard_delivery_duration_seconds_count{destination="orders"}"#,
        1.0,
    );
    assert!(
        text.contains(r#"switchyard_queue_depth{queue="deliveries_dead_letter"}"#),
        "the deliveries lane's depths"
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_gets_its_delivery_once_on_redis_and_secantus() {
    let dir = PluginDir::new(None);
    each_destination_gets_its_delivery_once(gateway_config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_gets_its_delivery_once_on_embedded() {
    let (dir, data) = (PluginDir::new(None), tempfile::tempdir().unwrap());
    each_destination_gets_its_delivery_once(embedded_config(dir.path(), data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_the_third_attempt_and_a_400_is_dead_lettered_then_replayed()
{
    let receiver = Receiver::start().await;
    receiver.on(
        "flaky",
        Behaviour::FailFirst {
            times: 2,
            status: 500,
        },
    );
    receiver.on("strict", Behaviour::Status(400));
    let dir = plugins_with(
        "fanout",
        &[
            destination("flaky", &receiver.url("flaky"), true),
            destination("strict", &receiver.url("strict"), true),
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(fast(embedded_config(dir.path(), data.path()))).await;
    let c = gw.client();
    c.send(&json!({"eventId": "f-1", "type": "T", "payload": {"destinations": ["flaky"]}}))
        .await;
    c.send(&json!({"eventId": "s-1", "type": "T", "payload": {"destinations": ["strict"]}}))
        .await;
    let flaky = receiver.wait_for("flaky", 3, Duration::from_secs(20)).await;
    assert!(
        flaky
            .iter()
            .all(|r| r.verified && r.webhook_id == flaky[0].webhook_id)
    );
    let r = wait_record(&c, "f-1", |r| delivered(r, "flaky")).await;
    assert_eq!(r["deliveries"]["flaky"]["attempts"], 3, "{r}");

    // A 400 fails for good at once: one request, a delivery dead letter, the event still ROUTED.
    let r = wait_record(&c, "s-1", |r| {
        r["deliveries"]["strict"]["state"] == "FAILED"
    })
    .await;
    assert_eq!(r["state"], "ROUTED");
    assert_eq!(r["deliveries"]["strict"]["attempts"], 1);
    assert_eq!(r["deliveries"]["strict"]["lastStatus"], 400);
    assert_eq!(receiver.received("strict").len(), 1);
    let dlq = c.get("/deliveries/failed").await.body;
    let item = &dlq["items"][0];
    assert_eq!(
        (item["eventId"].as_str(), item["destination"].as_str()),
        (Some("s-1"), Some("strict"))
    );
    assert!(item["error"].as_str().unwrap().contains("400"), "{item}");
    assert_eq!(
        c.get("/events/failed").await.body["items"],
        json!([]),
        "not a routing failure"
    );

    // Replay re-sends the delivery only: same message id, no new routing attempt.
    receiver.on("strict", Behaviour::Status(204));
    let replay = c
        .post_admin("/deliveries/dlq/replay", json!({"destination": "strict"}))
        .await;
    assert_eq!(replay.body["replayed"], 1, "{}", replay.body);
    let strict = receiver
        .wait_for("strict", 2, Duration::from_secs(20))
        .await;
    assert_eq!(strict[1].webhook_id, strict[0].webhook_id);
    let r = wait_record(&c, "s-1", |r| delivered(r, "strict")).await;
    assert_eq!(
        r["history"].as_array().unwrap().len(),
        1,
        "routed once: {r}"
    );
    gw.stop().await.unwrap();
}

/// A destination that keeps failing grows the deliveries backlog; past `DELIVERY_MAX_DEPTH`
/// new events are refused (503, Retry-After) and nothing already accepted is lost: when the
/// destination recovers every accepted event is delivered and ingestion opens again.
async fn a_deliveries_backlog_sheds_new_events_and_loses_none(config: switchyard_gateway::Config) {
    let receiver = Receiver::start().await;
    receiver.on("stuck", Behaviour::Status(503));
    let dir = plugins_with(
        "fanout",
        &[destination("stuck", &receiver.url("stuck"), true)],
    );
    let mut config = fast(switchyard_gateway::Config {
        plugins_dir: dir.path().to_path_buf(),
        ..config
    });
    config.delivery_max_depth = 3;
    config.delivery_max_attempts = 100;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let event =
        |id: &str| json!({"eventId": id, "type": "T", "payload": {"destinations": ["stuck"]}});
    let mut accepted = Vec::new();
    let mut refused = None;
    // Bounded: the backlog is measured each second, so the limit bites within a few seconds.
    for i in 0..100 {
        let id = unique(&format!("backlog-{i}"));
        let a = c.send(&event(&id)).await;
        match a.status {
            202 => accepted.push(id),
            503 => {
                refused = Some((id, a));
                break;
            }
            s => panic!("unexpected status {s}: {}", a.body),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (refused_id, answer) = refused.expect("never refused past DELIVERY_MAX_DEPTH");
    assert!(
        accepted.len() >= 3,
        "refused before the backlog reached 3: {accepted:?}"
    );
    assert_eq!(
        answer.body["error"]["code"], "delivery_backlog_full",
        "{}",
        answer.body
    );
    assert_eq!(answer.headers["retry-after"], "5");
    assert_eq!(
        c.get(&format!("/events/{refused_id}")).await.status,
        404,
        "not taken in"
    );
    let stats = c.get("/events/stats").await.body;
    assert!(
        stats["deliveries"]["pool"]["backlog"].as_u64().unwrap() >= 3,
        "{stats}"
    );

    // The destination recovers: every accepted event is delivered, and ingestion opens again.
    receiver.on("stuck", Behaviour::Status(204));
    for id in &accepted {
        wait_record(&c, id, |r| delivered(r, "stuck")).await;
    }
    let t = Instant::now();
    loop {
        let id = unique("after-backlog");
        if c.send(&event(&id)).await.status == 202 {
            wait_record(&c, &id, |r| delivered(r, "stuck")).await;
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "ingestion did not reopen"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get("/deliveries/failed").await.body["items"], json!([]));
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliveries_backlog_sheds_new_events_and_loses_none_on_embedded() {
    let (dir, data) = (PluginDir::new(None), tempfile::tempdir().unwrap());
    a_deliveries_backlog_sheds_new_events_and_loses_none(embedded_config(dir.path(), data.path()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliveries_backlog_sheds_new_events_and_loses_none_on_redis_and_secantus() {
    let dir = PluginDir::new(None);
    a_deliveries_backlog_sheds_new_events_and_loses_none(gateway_config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_is_down_opens_its_circuit_loses_nothing_and_does_not_delay_another() {
    let receiver = Receiver::start().await;
    let dir = plugins_with(
        "fanout",
        &[
            destination("up", &receiver.url("up"), true),
            // Another port of the same receiver process, stopped: connections are refused.
            destination(
                "down",
                &format!("http://127.0.0.1:{}/down", free_port()),
                true,
            ),
        ],
    );
    let down_port = {
        let manifest = std::fs::read_to_string(dir.path().join("switchyard.toml")).unwrap();
        let at = manifest.rfind("127.0.0.1:").unwrap() + "127.0.0.1:".len();
        manifest[at..]
            .split('/')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = fast(embedded_config(dir.path(), data.path()));
    // The first failure opens the circuit, and a delivery has two attempts: the outage below
    // sees five or more failed probes, which would exhaust them if waiting spent attempts.
    config.delivery_circuit_failures = 1;
    config.delivery_max_attempts = 2;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let ids: Vec<String> = (0..10).map(|i| format!("cb-{i}")).collect();
    for id in &ids {
        let payload = json!({"destinations": ["down", "up"]});
        c.send(&json!({"eventId": id, "type": "T", "payload": payload}))
            .await;
    }
    // The healthy destination is not held up by the one that is down: all ten reach it while
    // the other is still down (it comes back only further below).
    receiver.wait_for("up", 10, Duration::from_secs(20)).await;
    // The circuit of the one that is down opens.
    let t = Instant::now();
    loop {
        let d = c.get("/destinations").await.body;
        let down = d["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "down")
            .cloned()
            .unwrap();
        if down["circuit"]["state"] != "closed" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "circuit never opened: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down for longer than its two attempts' backoff would last; then it comes back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let back = Receiver::start_on(down_port).await;
    back.wait_for("down", 10, Duration::from_secs(30)).await;
    for id in &ids {
        let r = wait_record(&c, id, |r| delivered(r, "down") && delivered(r, "up")).await;
        assert!(
            r["deliveries"]["down"]["attempts"].as_u64().unwrap() <= 2,
            "waiting behind the open circuit spent attempts: {r}"
        );
    }
    assert_eq!(c.get("/deliveries/failed").await.body["items"], json!([]));
    let text = metrics(&c).await;
    assert!(
        metric(
            &text,
            r#"switchyard_deliveries_total{destination="down",outcome="deferred"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "waits behind the circuit are counted"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_0_1_plugin_still_routes_and_its_destination_is_delivered() {
    let receiver = Receiver::start().await;
    let dir = plugins_with(
        "default-router",
        &[destination("orders", &receiver.url("orders"), true)],
    );
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    let plugins = c.get("/plugins").await.body;
    assert_eq!(plugins["plugins"][0]["contract"], "0.1", "{plugins}");
    c.send(&json!({"eventId": "v1-1", "type": "ORDER_CREATED", "payload": {}}))
        .await;
    let got = receiver
        .wait_for("orders", 1, Duration::from_secs(20))
        .await;
    assert!(got[0].verified);
    assert_eq!(got[0].body["decision"]["destination"], "orders");
    wait_record(&c, "v1-1", |r| delivered(r, "orders")).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn loopback_is_refused_without_allow_private_and_redirects_are_not_followed() {
    let receiver = Receiver::start().await;
    receiver.on("moved", Behaviour::Redirect);
    let port = receiver.port;
    let dir = plugins_with(
        "fanout",
        &[
            destination("v4", &format!("http://127.0.0.1:{port}/v4"), false),
            destination("named", &format!("http://localhost:{port}/named"), false),
            destination("v6", &format!("http://[::1]:{port}/v6"), false),
            destination("moved", &receiver.url("moved"), true),
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    let all = ["v4", "named", "v6", "moved"];
    c.send(&json!({"eventId": "ssrf", "type": "T", "payload": {"destinations": all}}))
        .await;
    let r = wait_record(&c, "ssrf", |r| {
        all.iter().all(|d| r["deliveries"][d]["state"] == "FAILED")
    })
    .await;
    for d in ["v4", "named", "v6"] {
        let error = r["deliveries"][d]["lastError"].as_str().unwrap();
        assert!(
            error.contains("SSRF") && error.contains("loopback"),
            "{d}: {error}"
        );
        assert!(receiver.received(d).is_empty(), "{d} was reached");
        assert_eq!(r["deliveries"][d]["attempts"], 1, "refused at once");
    }
    let error = r["deliveries"]["moved"]["lastError"].as_str().unwrap();
    assert!(
        error.contains("redirect") && error.contains("/redirected"),
        "{error}"
    );
    assert_eq!(receiver.received("moved").len(), 1);
    assert!(
        receiver.received("redirected").is_empty(),
        "the redirect was followed"
    );
    let dlq = c.get("/deliveries/failed").await.body;
    let moved = dlq["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["destination"] == "moved")
        .unwrap();
    assert!(
        moved["error"].as_str().unwrap().contains("/redirected"),
        "the Location is kept"
    );
    gw.stop().await.unwrap();
}

/// kill -9 mid-delivery, and a crash between the routed commit and queueing the deliveries: both
/// end delivered after a restart, with the same message id.
async fn a_crash_delivers_after_restart(base: switchyard_gateway::Config) {
    let receiver = Receiver::start().await;
    receiver.on("slow", Behaviour::Slow(Duration::from_secs(30)));
    let dir = plugins_with(
        "fanout",
        &[
            destination("slow", &receiver.url("slow"), true),
            destination("orders", &receiver.url("orders"), true),
        ],
    );
    let config = switchyard_gateway::Config {
        plugins_dir: dir.path().to_path_buf(),
        // On Redis a new process reclaims a dead one's entries after this long (which must
        // exceed the claim's lease, which must exceed a routing call's limit).
        visibility_timeout_ms: 2_000,
        lease_ms: Some(1_500),
        plugin_timeout_ms: 1_000,
        ..base
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");

    // kill -9 while the receiver is still answering.
    let mut gw = GatewayProcess::start(&config, &log).await;
    gw.client()
        .send(&json!({"eventId": "mid", "type": "T", "payload": {"destinations": ["slow"]}}))
        .await;
    let first = receiver.wait_for("slow", 1, Duration::from_secs(20)).await;
    gw.kill9();
    receiver.on("slow", Behaviour::Status(204));
    let gw = GatewayProcess::start(&config, &log).await;
    let again = receiver.wait_for("slow", 2, Duration::from_secs(30)).await;
    assert_eq!(
        again[1].webhook_id, first[0].webhook_id,
        "the receiver can drop the repeat"
    );
    assert!(again[1].verified);
    wait_record(&gw.client(), "mid", |r| delivered(r, "slow")).await;
    drop(gw);

    // A crash between recording the routed outcome and queueing its deliveries (the outbox).
    let crashing = GatewayProcess::start_with_env(
        &config,
        &log,
        &[("SWITCHYARD_CRASH_AT", "after-routed-commit")],
    )
    .await;
    let _ = crashing
        .client()
        .try_send(
            &json!({"eventId": "outbox", "type": "T", "payload": {"destinations": ["orders"]}}),
        )
        .await;
    crashing.wait_exit(Duration::from_secs(20));
    assert!(
        receiver.received("orders").is_empty(),
        "delivered before the crash"
    );
    let gw = GatewayProcess::start(&config, &log).await;
    let got = receiver
        .wait_for("orders", 1, Duration::from_secs(30))
        .await;
    let r = wait_record(&gw.client(), "outbox", |r| delivered(r, "orders")).await;
    assert_eq!(got[0].webhook_id, r["deliveries"]["orders"]["webhookId"]);
    assert_eq!(
        r["history"].as_array().unwrap().len(),
        1,
        "routed once: {r}"
    );
    drop(gw);

    // The routed outcome's write is applied but its answer is lost (as when a connection drops
    // after MongoDB applied the update): the entry comes back under a new queue id, finds the
    // event routed by its own ingest, and sends what the outbox owes.
    let losing = GatewayProcess::start_with_env(
        &config,
        &log,
        &[("SWITCHYARD_LOSE_ANSWER", "routed-commit")],
    )
    .await;
    losing
        .client()
        .send(&json!({"eventId": "lost-answer", "type": "T", "payload": {"destinations": ["orders"]}}))
        .await;
    let r = wait_record(&losing.client(), "lost-answer", |r| delivered(r, "orders")).await;
    // By its message id: the first event's delivery may arrive again first (its gateway was
    // killed right after delivering it, before the queue heard so: at least once, same id).
    let id = r["deliveries"]["orders"]["webhookId"].as_str().unwrap();
    let got: Vec<Received> = receiver
        .received("orders")
        .into_iter()
        .filter(|g| g.webhook_id == id)
        .collect();
    assert!(!got.is_empty(), "lost-answer's delivery not received");
    assert!(got.iter().all(|g| g.verified));
    assert_eq!(
        r["history"].as_array().unwrap().len(),
        1,
        "routed once: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_delivers_after_restart_with_the_same_id_on_embedded() {
    let (dir, data) = (PluginDir::new(None), tempfile::tempdir().unwrap());
    a_crash_delivers_after_restart(embedded_config(dir.path(), data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_delivers_after_restart_with_the_same_id_on_redis_and_secantus() {
    let dir = PluginDir::new(None);
    a_crash_delivers_after_restart(gateway_config(dir.path())).await;
}
