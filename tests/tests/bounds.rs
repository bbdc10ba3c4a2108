//! Limits that hold under pressure and failures put where they belong: keyed deliveries waiting
//! in memory are bounded, plugin memory has a total budget, lookups have a cap, the dead-letter
//! queue has a limit with a signal, failures of the host spend no attempts, a plugin's own
//! answers do not roll it back, and Redis losing data is said out loud.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::*;

fn chaos_dir(routes: &str) -> PluginDir {
    let dir = PluginDir::new(Some(&format!(
        "default = \"default-router\"\n[routes]\n{routes}\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n"
    )));
    dir.install("default-router", "default-router");
    dir.install("chaos", "chaos");
    dir
}

async fn send_all(c: &Client, events: &[Value]) {
    for e in events {
        let a = c.send(e).await;
        assert_eq!(a.status, 202, "{e}: {}", a.body);
    }
}

/// Many events of one key behind a holder in backoff: at most `ORDERING_MAX_WAITING` of them are
/// held in memory, the rest stay in the queue, and all are routed in order.
async fn a_hot_key_holds_a_bounded_number_in_memory(mut config: switchyard_gateway::Config) {
    config.ordering_max_waiting = 8;
    config.retry_base_ms = 1_500;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let run = unique("hot");
    let ids: Vec<String> = (0..60).map(|i| format!("{run}-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(seq, id)| {
            json!({"eventId": id, "type": "ORDER_UPDATED",
                   "payload": {"key": "hot", "seq": seq, "sleepMs": 5, "failOnce": seq == 0}})
        })
        .collect();
    send_all(&c, &events).await;
    let (mut most_waiting, mut paused_with_a_backlog) = (0, false);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let s = c.get("/events/stats").await.body;
        let waiting = s["workers"]["waiting"].as_u64().expect("workers.waiting");
        most_waiting = most_waiting.max(waiting);
        paused_with_a_backlog |= waiting >= 8 && s["ready"].as_u64().unwrap_or(0) > 0;
        if s["routed"].as_u64() == Some(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The holder retrying in place counts too: the limit plus the holder.
    assert!(
        most_waiting <= 9,
        "{most_waiting} keyed deliveries waited in memory"
    );
    assert!(
        paused_with_a_backlog,
        "fetching never paused with events left in the queue"
    );
    let records = c.wait_final(&ids, Duration::from_secs(30)).await;
    assert_final_once(&records);
    let routed_at: Vec<u64> = records
        .iter()
        .map(|r| {
            assert_eq!(r["state"], "ROUTED", "{r}");
            r["history"].as_array().unwrap().last().unwrap()["atMs"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        routed_at.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {routed_at:?}"
    );
    assert_eq!(
        records[0]["attempts"], 2,
        "the holder was retried: {}",
        records[0]
    );
    gw.stop().await.unwrap();
}

fn keyed_dir() -> PluginDir {
    let dir = PluginDir::new(Some("default = \"keyed\"\n"));
    dir.install("keyed", "keyed");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_holds_a_bounded_number_in_memory_on_redis_and_secantus() {
    let dir = keyed_dir();
    a_hot_key_holds_a_bounded_number_in_memory(gateway_config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_holds_a_bounded_number_in_memory_on_embedded() {
    let dir = keyed_dir();
    let data = tempfile::tempdir().unwrap();
    a_hot_key_holds_a_bounded_number_in_memory(embedded_config(dir.path(), data.path())).await;
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_memory_has_a_total_budget_and_pressure_spends_no_attempts() {
    const BUDGET_MB: u64 = 256;
    let dir = chaos_dir("fill = \"chaos\"");
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.plugin_memory_mb = 64;
    config.plugin_memory_total_mb = BUDGET_MB;
    config.queue_concurrency = 64;
    config.max_retry_attempts = 1;
    let log = data.path().join("gateway.log");
    let gw = GatewayProcess::start(&config, &log).await;
    let c = gw.client();
    let idle = peak_rss_mb(gw.child.id());
    // 24 calls of 40 MiB each, written page by page, all at once: 960 MiB without a budget.
    let ids: Vec<String> = (0..24).map(|i| format!("fill-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"eventId": id, "type": "fill", "payload": {"mb": 40, "ms": 1000}}))
        .collect();
    send_all(&c, &events).await;
    let records = c.wait_final(&ids, Duration::from_secs(90)).await;
    let peak = peak_rss_mb(gw.child.id());
    for r in &records {
        assert_eq!(r["state"], "ROUTED", "{r}");
        assert_eq!(r["decision"]["destination"], "filled:40");
        assert_eq!(r["attempts"], 1, "memory pressure spent an attempt: {r}");
    }
    let stats = c.get("/events/stats").await.body;
    assert!(
        stats["workers"]["deferred"].as_u64().unwrap() > 0,
        "the budget never deferred a call: {stats}"
    );
    // The gateway's own memory (idle peak) plus the plugins' budget, with room for the
    // allocator and the events in flight.
    let ceiling = idle + BUDGET_MB as f64 + 64.0;
    eprintln!("peak RSS {peak:.0} MiB, idle {idle:.0} MiB, ceiling {ceiling:.0} MiB; {stats}");
    assert!(
        peak < ceiling,
        "peak RSS {peak:.0} MiB (idle {idle:.0}) over {ceiling:.0} MiB"
    );
}

#[tokio::test]
async fn context_lookups_per_call_are_capped() {
    let dir = chaos_dir("lookups = \"chaos\"");
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.context_lookups_max = 5;
    config.max_retry_attempts = 1;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    send_all(
        &c,
        &[
            json!({"eventId": "l-5", "type": "lookups", "payload": {"n": 5}}),
            json!({"eventId": "l-6", "type": "lookups", "payload": {"n": 6}}),
        ],
    )
    .await;
    let r = c
        .wait_final(&["l-5".into(), "l-6".into()], Duration::from_secs(20))
        .await;
    assert_eq!(r[0]["decision"]["destination"], "looked-up:5", "{}", r[0]);
    assert_eq!(r[1]["state"], "FAILED", "{}", r[1]);
    assert_eq!(
        r[1]["history"][0]["errorKind"], "limit_exceeded",
        "{}",
        r[1]
    );
    assert!(
        r[1]["error"]
            .as_str()
            .unwrap()
            .contains("CONTEXT_LOOKUPS_MAX"),
        "{}",
        r[1]
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn mongodb_lookups_are_point_reads_by_id() {
    let dir = chaos_dir("lookup = \"chaos\"");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let orders = gw
        .database()
        .await
        .collection::<mongodb::bson::Document>("orders");
    orders
        .insert_one(mongodb::bson::doc! { "_id": "o-1", "region": "eu" })
        .await
        .unwrap();
    // Found by another field only: not a point read on `_id`, so not looked up.
    orders
        .insert_one(mongodb::bson::doc! { "orderId": "o-2", "region": "us" })
        .await
        .unwrap();
    let c = gw.client();
    send_all(
        &c,
        &[
            json!({"eventId": "by-id", "type": "lookup", "payload": {"kind": "order", "id": "o-1"}}),
            json!({"eventId": "by-field", "type": "lookup", "payload": {"kind": "order", "id": "o-2"}}),
        ],
    )
    .await;
    let r = c
        .wait_final(
            &["by-id".into(), "by-field".into()],
            Duration::from_secs(20),
        )
        .await;
    let found: Value = serde_json::from_str(r[0]["decision"]["destination"].as_str().unwrap())
        .unwrap_or_else(|_| panic!("{}", r[0]));
    assert_eq!(found["region"], "eu");
    assert_eq!(r[1]["decision"]["destination"], "<none>");
    gw.stop().await.unwrap();
}

/// Two permanent failures fill a dead-letter queue limited to 2: ingestion then refuses with
/// 503 `dlq_full`, and `/ready` and `/metrics` show the depth.
async fn a_full_dead_letter_queue_refuses_new_events(mut config: switchyard_gateway::Config) {
    config.dlq_max_depth = 2;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let run = unique("dl");
    let ids = [format!("{run}-1"), format!("{run}-2")];
    for id in &ids {
        assert_eq!(
            c.send(&json!({"eventId": id, "type": "permanent", "payload": {}}))
                .await
                .status,
            202
        );
    }
    c.wait_final(&ids, Duration::from_secs(20)).await;
    let t = Instant::now();
    let refused = loop {
        let a = c
            .send(&json!({"eventId": format!("{run}-3"), "type": "ORDER_CREATED", "payload": {}}))
            .await;
        if a.status != 202 {
            break a;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "dlq_full");
    assert!(refused.headers.contains_key("retry-after"));
    let ready = c.get("/ready").await.body;
    assert_eq!(ready["deadLetters"], 2, "{ready}");
    assert!(
        ready["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("DLQ_MAX_DEPTH")),
        "{ready}"
    );
    let text = metrics(&c).await;
    assert_eq!(
        metric(&text, "switchyard_queue_depth{queue=\"dead_letter\"}"),
        Some(2.0)
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_dead_letter_queue_refuses_new_events_on_redis_and_secantus() {
    let dir = chaos_dir("permanent = \"chaos\"");
    a_full_dead_letter_queue_refuses_new_events(gateway_config(dir.path())).await;
}

#[tokio::test]
async fn a_full_dead_letter_queue_refuses_new_events_on_embedded() {
    let dir = chaos_dir("permanent = \"chaos\"");
    let data = tempfile::tempdir().unwrap();
    a_full_dead_letter_queue_refuses_new_events(embedded_config(dir.path(), data.path())).await;
}

/// Events whose plugin is missing wait without spending attempts, are routed once it arrives,
/// and are dead-lettered with kind `host` after `HOST_FAILURE_MAX_DEFER_MS`.
async fn host_failures_defer_without_spending_attempts(config: switchyard_gateway::Config) {
    let mut patient = config.clone();
    patient.max_retry_attempts = 2;
    let gw = Gateway::start(patient).await;
    let c = gw.client();
    let run = unique("orphan");
    let ids: Vec<String> = (0..3).map(|i| format!("{run}-{i}")).collect();
    for id in &ids {
        c.send(&json!({"eventId": id, "type": "orphan", "payload": {}}))
            .await;
    }
    // Long past the point where two attempts of 200 ms backoff would have dead-lettered them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let r = c.get(&format!("/events/{id}")).await.body;
        assert_eq!(r["state"], "ROUTING_PENDING", "{r}");
        assert_eq!(r["attempts"], 0, "{r}");
        assert_eq!(r["deferred"]["errorKind"], "no_plugin", "{r}");
        assert!(r["deferred"]["count"].as_u64().unwrap() >= 2, "{r}");
    }
    // The plugin arrives (a slow redeploy finishing): every event is routed on its first attempt.
    let from = repo_root().join("plugins/dist/fixtures/chaos.wasm");
    let tmp = config.plugins_dir.join(".missing.partial");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, config.plugins_dir.join("missing.wasm")).unwrap();
    for r in c.wait_final(&ids, Duration::from_secs(20)).await {
        assert_eq!(r["state"], "ROUTED", "{r}");
        assert_eq!(r["decision"]["destination"], "chaos:orphan");
        assert_eq!(
            (
                r["attempts"].as_u64(),
                r["history"].as_array().unwrap().len()
            ),
            (Some(1), 1)
        );
        assert!(r.get("deferred").is_none(), "{r}");
    }
    gw.stop().await.unwrap();
    std::fs::remove_file(config.plugins_dir.join("missing.wasm")).unwrap();

    // With a short limit, the wait ends in the dead-letter queue, with kind `host`.
    let mut impatient = config;
    impatient.host_failure_max_defer_ms = 1_000;
    let gw = Gateway::start(impatient).await;
    let c = gw.client();
    let id = unique("orphan-late");
    c.send(&json!({"eventId": id, "type": "orphan", "payload": {}}))
        .await;
    let r = &c
        .wait_final(std::slice::from_ref(&id), Duration::from_secs(20))
        .await[0];
    assert_eq!(r["state"], "FAILED", "{r}");
    assert_eq!(r["history"][0]["errorKind"], "host", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    let dlq = c.get("/events/failed").await.body;
    let entry = dlq["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["eventId"] == id.as_str())
        .unwrap_or_else(|| panic!("not in the DLQ: {dlq}"));
    assert_eq!(entry["errorKind"], "host");
    assert!(
        entry["error"].as_str().unwrap().contains("no plugin"),
        "{entry}"
    );
    gw.stop().await.unwrap();
}

fn orphan_dir() -> PluginDir {
    let dir = PluginDir::new(Some(
        "default = \"default-router\"\n[routes]\norphan = \"missing\"\n\
         [config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n",
    ));
    dir.install("default-router", "default-router");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_failures_defer_without_spending_attempts_on_redis_and_secantus() {
    let dir = orphan_dir();
    host_failures_defer_without_spending_attempts(gateway_config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_failures_defer_without_spending_attempts_on_embedded() {
    let dir = orphan_dir();
    let data = tempfile::tempdir().unwrap();
    host_failures_defer_without_spending_attempts(embedded_config(dir.path(), data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rejecting_events_is_not_rolled_back_for_its_answers() {
    let dir = PluginDir::new(Some("default = \"p\"\n"));
    dir.install("p", "noop");
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.max_retry_attempts = 1;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    // A new version that answers `permanent` to everything of this type: answers, not failures.
    dir.install("p", "chaos");
    let chaos = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(plugin("chaos")).unwrap(),
        ))
    };
    let t = Instant::now();
    while c.get("/plugins/p").await.body["active"]["version"] != chaos.as_str() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new version never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = (0..30).map(|i| format!("rej-{i}")).collect();
    for id in &ids {
        c.send(&json!({"eventId": id, "type": "permanent", "payload": {}}))
            .await;
    }
    for r in c.wait_final(&ids, Duration::from_secs(20)).await {
        assert_eq!(r["state"], "FAILED");
    }
    let status = c.get("/plugins/p").await.body;
    assert_eq!(
        status["active"]["version"],
        chaos.as_str(),
        "rolled back: {status}"
    );
    assert_eq!(status["watch"]["failures"], 0, "{status}");
    assert!(status["watch"]["calls"].as_u64().unwrap() >= 30, "{status}");
    assert!(status["blocked"].is_null(), "{status}");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_persistence_is_flagged_and_its_data_loss_counted() {
    let fast =
        "default = \"default-router\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n";
    let dir = PluginDir::new(Some(fast));
    dir.install("default-router", "default-router");
    let durable = RedisServer::start_with(true);
    let mut config = gateway_config(dir.path());
    config.redis_url = Some(durable.url());
    let gw = Gateway::start(config.clone()).await;
    let ready = gw.client().get("/ready").await.body;
    assert_eq!(ready["warnings"], json!([]), "{ready}");
    gw.stop().await.unwrap();

    let volatile = RedisServer::start_with(false);
    config.redis_url = Some(volatile.url());
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let ready = c.get("/ready").await.body;
    let warnings = ready["warnings"].to_string();
    assert!(
        warnings.contains("appendonly") && warnings.contains("loses"),
        "{ready}"
    );
    // Redis loses its data (a restart without persistence, or a flush): said and counted.
    let redis = redis::Client::open(volatile.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let t = Instant::now();
    while metric(&metrics(&c).await, "switchyard_queue_group_recreated_total").unwrap_or(0.0) < 1.0
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the lost group was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The queue works again.
    let id = unique("after-flush");
    assert_eq!(
        c.send(&json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}}))
            .await
            .status,
        202
    );
    assert_eq!(
        c.wait_final(&[id], Duration::from_secs(20)).await[0]["state"],
        "ROUTED"
    );
    gw.stop().await.unwrap();
}
