//! Safe plugin rollout, end to end on real servers and real components: a candidate shadowing
//! live traffic, promotion and rollback under load, automatic rollback of a failing version,
//! dry runs and what-if replays. `rollout-v2` disagrees with `rollout-v1` on a known subset:
//! `region: "eu"` goes elsewhere, `explode: true` traps (see plugins/fixtures/rollout-v1).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchyard_tests::*;

const MANIFEST: &str = "default = \"router\"\n";

fn version_of(source: &str) -> String {
    hex::encode(Sha256::digest(std::fs::read(plugin(source)).unwrap()))
}

fn sha_of_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Polls `GET /plugins/{name}` until `ready` holds; returns the status.
async fn wait_plugin(c: &Client, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let t = std::time::Instant::now();
    loop {
        let a = c.get(&format!("/plugins/{name}")).await;
        if a.status == 200 && ready(&a.body) {
            return a.body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "plugin {name} never reached the expected state: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event(id: &str, event_type: &str, payload: Value) -> Value {
    json!({ "eventId": id, "type": event_type, "payload": payload })
}

async fn send_all(c: &Client, events: &[Value]) -> Vec<String> {
    let mut ids = Vec::new();
    for e in events {
        let a = c.send(e).await;
        assert_eq!(a.status, 202, "{}", a.body);
        ids.push(e["eventId"].as_str().unwrap().to_string());
    }
    ids
}

/// Dry runs and replays move nothing: every queue and state count is as it was.
fn assert_counts_unchanged(before: &Value, after: &Value) {
    for k in [
        "ready",
        "inFlight",
        "delayed",
        "deadLettered",
        "pending",
        "routed",
        "failed",
    ] {
        assert_eq!(before[k], after[k], "{k}");
    }
}

fn actions(status: &Value) -> Vec<String> {
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_counts_the_known_disagreements_and_never_decides() {
    let (v1, v2) = (version_of("rollout-v1"), version_of("rollout-v2"));
    let dir = PluginDir::new(Some(MANIFEST));
    dir.install("router", "rollout-v1");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    dir.install("router.next", "rollout-v2");
    wait_plugin(&c, "router", |p| p["candidate"]["version"] == v2.as_str()).await;

    let run = unique("shadow");
    let mut events = Vec::new();
    let mut differing = BTreeSet::new();
    for i in 0..40 {
        let id = format!("{run}-{i}");
        let payload = match i % 8 {
            0 | 1 => json!({ "region": "eu" }),
            2 => json!({ "region": "us", "explode": true }),
            _ => json!({ "region": "us" }),
        };
        if i % 8 <= 2 {
            differing.insert(id.clone());
        }
        events.push(event(&id, "ORDER_CREATED", payload));
    }
    let ids = send_all(&c, &events).await;
    let records = c.wait_final(&ids, Duration::from_secs(60)).await;
    assert_final_once(&records);
    for (e, r) in events.iter().zip(&records) {
        // Only the active version decides.
        assert_eq!(r["state"], "ROUTED", "{r}");
        assert_eq!(r["plugin"]["version"], v1.as_str());
        let region = e["payload"]["region"].as_str().unwrap();
        assert_eq!(r["decision"]["destination"], format!("region:{region}"));
    }

    let status = wait_plugin(&c, "router", |p| p["candidate"]["shadow"]["compared"] == 40).await;
    let shadow = &status["candidate"]["shadow"];
    assert_eq!(shadow["agreed"], 25, "{shadow}");
    assert_eq!(shadow["differed"], 15, "{shadow}");
    assert_eq!(shadow["skipped"], 0, "{shadow}");
    let samples = shadow["samples"].as_array().unwrap();
    let sampled: BTreeSet<String> = samples
        .iter()
        .map(|s| s["eventId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sampled, differing);
    for s in samples {
        match s["active"]["decision"]["destination"].as_str().unwrap() {
            "region:eu" => {
                assert_eq!(
                    s["candidate"]["decision"]["destination"],
                    "region:eu-central"
                )
            }
            _ => assert_eq!(s["candidate"]["errorKind"], "trap", "{s}"),
        }
    }
    // The overview shows the counts; the sampled decisions need the admin token.
    let overview = reqwest::get(format!("{}/plugins", gw.url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let router = overview["rollout"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .unwrap();
    assert_eq!(router["candidate"]["shadow"]["differed"], 15);
    assert_eq!(router["candidate"]["shadow"]["samples"], json!([]));
    let anonymous = c.admin(Method::GET, "/plugins/router", None, None).await;
    assert_eq!(anonymous.status, 401);
    let metrics = reqwest::get(format!("{}/metrics", gw.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The metrics registry is shared by the gateways of this test binary: at least ours count.
    let differed: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("switchyard_shadow_calls_total{plugin=\"router\",result=\"differed\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(differed >= 15, "{metrics}");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_and_rollback_under_load_lose_no_event() {
    let (v1, v2) = (version_of("rollout-v1"), version_of("rollout-v2"));
    let dir = PluginDir::new(Some(MANIFEST));
    dir.install("router", "rollout-v1");
    dir.install("router.next", "rollout-v2");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    let status = wait_plugin(&c, "router", |p| p["candidate"]["version"] == v2.as_str()).await;
    assert_eq!(status["active"]["version"], v1.as_str());

    // Eight producers send 50 events each while the versions change under them.
    let run = unique("swap");
    let senders: Vec<_> = (0..8)
        .map(|p| {
            let (c, run) = (c.clone(), run.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50 {
                    let id = format!("{run}-{p}-{i}");
                    let a = c
                        .send(&event(&id, "ORDER_CREATED", json!({ "region": "eu" })))
                        .await;
                    assert_eq!(a.status, 202, "{}", a.body);
                    ids.push(id);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ids
            })
        })
        .collect();

    let pause = || tokio::time::sleep(Duration::from_millis(150));
    pause().await;
    let no_token = c
        .admin(Method::POST, "/plugins/router/promote", None, None)
        .await;
    assert_eq!(no_token.status, 401);
    let promoted = c.post_admin("/plugins/router/promote", json!({})).await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    assert_eq!(promoted.body["version"], v2.as_str());
    assert_eq!(promoted.body["replaced"], v1.as_str());
    assert_eq!(promoted.body["persisted"], true);
    // The directory says what serves: the candidate's file became the plugin's file.
    assert_eq!(sha_of_file(&dir.file("router")), v2);
    assert!(!dir.file("router.next").exists());
    let again = c.post_admin("/plugins/router/promote", json!({})).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["error"]["code"], "no_candidate");

    pause().await;
    let back = c.post_admin("/plugins/router/rollback", json!({})).await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(back.body["version"], v1.as_str());
    assert_eq!(sha_of_file(&dir.file("router")), v1);
    pause().await;
    let forth = c.post_admin("/plugins/router/rollback", json!({})).await;
    assert_eq!(forth.status, 200, "{}", forth.body);
    assert_eq!(forth.body["version"], v2.as_str());
    pause().await;
    // Rolling back by restoring the previous file: the warm version serves again at once.
    dir.install("router", "rollout-v1");
    wait_plugin(&c, "router", |p| p["active"]["version"] == v1.as_str()).await;

    let mut ids = Vec::new();
    for s in senders {
        ids.extend(s.await.unwrap());
    }
    let records = c.wait_final(&ids, Duration::from_secs(60)).await;
    assert_final_once(&records);
    let mut used = BTreeSet::new();
    for r in &records {
        assert_eq!(r["state"], "ROUTED", "{r}");
        let version = r["plugin"]["version"].as_str().unwrap();
        let expected = if version == v1 {
            "region:eu"
        } else {
            "region:eu-central"
        };
        assert_eq!(r["decision"]["destination"], expected, "{r}");
        used.insert(version.to_string());
    }
    assert_eq!(used, BTreeSet::from([v1.clone(), v2.clone()]));
    let stats = c.wait_idle(Duration::from_secs(10)).await;
    assert_eq!(stats["failed"], 0);
    assert_eq!(stats["routed"], 400);

    let status = c.get("/plugins/router").await.body;
    assert_eq!(
        actions(&status),
        [
            "loaded",
            "candidate_loaded",
            "promoted",
            "rolled_back",
            "rolled_back",
            "rolled_back"
        ]
    );
    assert_eq!(status["previous"]["version"], v2.as_str());

    // Promotion by renaming the candidate's file onto the plugin's.
    dir.install("router.next", "rollout-v2");
    wait_plugin(&c, "router", |p| p["candidate"]["version"] == v2.as_str()).await;
    std::fs::rename(dir.file("router.next"), dir.file("router")).unwrap();
    let status = wait_plugin(&c, "router", |p| {
        p["active"]["version"] == v2.as_str() && p["candidate"].is_null()
    })
    .await;
    assert_eq!(actions(&status).last().unwrap(), "promoted", "{status}");
    assert_eq!(status["previous"]["version"], v1.as_str());
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_is_rolled_back_automatically_without_a_failed_event() {
    let (v1, v2) = (version_of("rollout-v1"), version_of("rollout-v2"));
    let dir = PluginDir::new(Some(MANIFEST));
    dir.install("router", "rollout-v1");
    let config = switchyard_gateway::Config {
        rollback_min_calls: 5,
        rollback_max_failure_rate: 0.5,
        rollback_window_ms: 60_000,
        ..gateway_config(dir.path())
    };
    let gw = Gateway::start(config.clone()).await;
    let c = gw.client();
    // A new build with a bug, deployed by writing its file.
    dir.install("router", "rollout-v2");
    let status = wait_plugin(&c, "router", |p| p["active"]["version"] == v2.as_str()).await;
    assert_eq!(status["watch"]["version"], v2.as_str());
    assert_eq!(status["watch"]["active"], true);

    let run = unique("auto");
    let events: Vec<Value> = (0..20)
        .map(|i| {
            event(
                &format!("{run}-{i}"),
                "ORDER_CREATED",
                json!({ "region": "us", "explode": true }),
            )
        })
        .collect();
    let ids = send_all(&c, &events).await;
    let records = c.wait_final(&ids, Duration::from_secs(60)).await;
    assert_final_once(&records);
    let mut trapped = 0;
    for r in &records {
        assert_eq!(r["state"], "ROUTED", "{r}");
        assert_eq!(r["plugin"]["version"], v1.as_str());
        trapped += r["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["errorKind"] == "trap" && a["plugin"]["version"] == v2.as_str())
            .count();
    }
    assert!(
        trapped >= 5,
        "the failing version was called {trapped} times"
    );

    let status = c.get("/plugins/router").await.body;
    assert_eq!(status["active"]["version"], v1.as_str());
    assert_eq!(status["blocked"]["version"], v2.as_str());
    assert!(
        status["blocked"]["reason"]
            .as_str()
            .unwrap()
            .contains("calls failed"),
        "{status}"
    );
    assert_eq!(actions(&status).last().unwrap(), "auto_rolled_back");
    assert_eq!(sha_of_file(&dir.file("router")), v1);

    // The bad build is not loaded again from its file...
    dir.install("router", "rollout-v2");
    let t = std::time::Instant::now();
    loop {
        let plugins = c.get("/plugins").await.body;
        let rejected = plugins["rejections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "router" && r["version"] == v2.as_str());
        if rejected {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{plugins}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c.get("/plugins/router").await.body["active"]["version"],
        v1.as_str()
    );
    // ...its file is set aside and the serving version put back, so a restart serves v1 too.
    assert_eq!(sha_of_file(&dir.file("router")), v1);
    assert_eq!(sha_of_file(&dir.path().join("router.wasm.refused")), v2);
    gw.stop().await.unwrap();
    let gw = Gateway::start(config).await;
    let c = gw.client();
    assert_eq!(
        c.get("/plugins/router").await.body["active"]["version"],
        v1.as_str()
    );
    // ...but an operator may stage it through the API and promote it on purpose.
    let bytes = std::fs::read(plugin("rollout-v2")).unwrap();
    let staged = c
        .admin(
            Method::PUT,
            "/plugins/router/candidate",
            Some(bytes),
            Some(TEST_ADMIN_TOKEN),
        )
        .await;
    assert_eq!(staged.status, 201, "{}", staged.body);
    let promoted = c.post_admin("/plugins/router/promote", json!({})).await;
    assert_eq!(promoted.body["version"], v2.as_str(), "{}", promoted.body);
    let status = c.get("/plugins/router").await.body;
    assert_eq!(status["blocked"], Value::Null);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_answer_with_the_chosen_version_and_change_nothing() {
    let v2 = version_of("rollout-v2");
    let dir = PluginDir::new(Some(
        "default = \"router\"\n[routes]\n\"SHIPMENT_*\" = \"content-router\"\n",
    ));
    dir.install("router", "rollout-v1");
    dir.install("router.next", "rollout-v2");
    dir.install("content-router", "content-router");
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let c = gw.client();
    wait_plugin(&c, "router", |p| p["candidate"]["version"] == v2.as_str()).await;
    let before = c.wait_idle(Duration::from_secs(10)).await;

    // A refused upload leaves the candidate that is shadowing alone.
    let refused = c
        .admin(
            Method::PUT,
            "/plugins/router/candidate",
            Some(b"not a component".to_vec()),
            Some(TEST_ADMIN_TOKEN),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "rejected");
    assert_eq!(sha_of_file(&dir.file("router.next")), v2);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the watcher's debounce
    let status = c.get("/plugins/router").await.body;
    assert_eq!(status["candidate"]["version"], v2.as_str(), "{status}");

    let dry = |name: &str, body: Value| {
        let (c, path) = (c.clone(), format!("/plugins/{name}/dry-run"));
        async move { c.post_admin(&path, body).await }
    };
    let eu = json!({ "type": "ORDER_CREATED", "payload": { "region": "eu" } });
    let a = dry("router", json!({ "event": eu })).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["role"], "active");
    assert_eq!(a.body["result"]["decision"]["destination"], "region:eu");
    let a = dry("router", json!({ "event": eu, "version": "candidate" })).await;
    assert_eq!(
        a.body["result"]["decision"]["destination"],
        "region:eu-central"
    );
    assert_eq!(a.body["plugin"]["version"], v2.as_str());
    let a = dry("router", json!({ "event": eu, "version": &v2[..12] })).await;
    assert_eq!(a.body["role"], "candidate");
    let boom = json!({ "type": "ORDER_CREATED", "payload": { "explode": true } });
    let a = dry("router", json!({ "event": boom, "version": "candidate" })).await;
    assert_eq!(a.body["result"]["errorKind"], "trap", "{}", a.body);
    let a = dry("router", json!({ "event": eu, "version": "previous" })).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("no_previous_version"))
    );
    let a = dry("nothing", json!({ "event": eu })).await;
    assert_eq!(a.status, 404);
    let a = dry("router", json!({ "event": { "type": "" } })).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (400, Some("invalid_event"))
    );
    let a = dry("router", json!({ "evnt": eu })).await;
    assert_eq!(a.status, 400);
    let a = c
        .admin(
            Method::POST,
            "/plugins/router/dry-run",
            Some(json!({ "event": eu }).to_string().into_bytes()),
            None,
        )
        .await;
    assert_eq!(a.status, 401);

    // The context of a dry run: given in the request, or the live (read-only) state.
    let ship = |id: &str| json!({ "type": "SHIPMENT_DELAYED", "payload": { "shipmentId": id } });
    let a = dry(
        "content-router",
        json!({ "event": ship("S1"), "context": { "shipment": { "S1": { "carrier": "DHL" } } } }),
    )
    .await;
    assert_eq!(
        a.body["result"]["decision"]["destination"], "carrier:dhl",
        "{}",
        a.body
    );
    let a = dry("content-router", json!({ "event": ship("S1") })).await;
    assert_eq!(a.body["result"]["errorKind"], "permanent", "{}", a.body);
    let put = c
        .admin(
            Method::PUT,
            "/context/shipment/S2",
            Some(br#"{"carrier":"UPS"}"#.to_vec()),
            Some(TEST_ADMIN_TOKEN),
        )
        .await;
    assert_eq!(put.status, 204);
    let a = dry("content-router", json!({ "event": ship("S2") })).await;
    assert_eq!(
        a.body["result"]["decision"]["destination"], "carrier:ups",
        "{}",
        a.body
    );

    // Nothing was queued, claimed or recorded.
    let event_id = a.body["eventId"].as_str().unwrap().to_string();
    assert_eq!(c.get(&format!("/events/{event_id}")).await.status, 404);
    assert_counts_unchanged(&before, &c.get("/events/stats").await.body);
    gw.stop().await.unwrap();
}

/// Routes a known mix with v1, stages v2, and checks what-if replays of several slices.
async fn what_if_reports_the_expected_diffs(config: switchyard_gateway::Config, dir: &PluginDir) {
    let v2 = version_of("rollout-v2");
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let run = unique("whatif");
    let mut events = Vec::new();
    for i in 0..30 {
        let id = format!("{run}-{i}");
        let (event_type, payload) = match i % 10 {
            0..=2 => ("ORDER_CREATED", json!({ "region": "eu" })),
            3 => ("ORDER_CREATED", json!({ "region": "us", "reject": true })),
            4 => ("ORDER_UPDATED", json!({ "region": "us", "explode": true })),
            _ => ("ORDER_CREATED", json!({ "region": "us" })),
        };
        events.push(event(&id, event_type, payload));
    }
    let ids = send_all(&c, &events).await;
    let records = c.wait_final(&ids, Duration::from_secs(60)).await;
    assert_eq!(records.iter().filter(|r| r["state"] == "FAILED").count(), 3);
    dir.install("router.next", "rollout-v2");
    wait_plugin(&c, "router", |p| p["candidate"]["version"] == v2.as_str()).await;
    let before = c.wait_idle(Duration::from_secs(10)).await;
    let sample_before = c.get(&format!("/events/{}", ids[0])).await.body;

    let what_if = |body: Value| {
        let c = c.clone();
        async move {
            let a = c.post_admin("/plugins/router/what-if", body).await;
            assert_eq!(a.status, 200, "{}", a.body);
            a.body
        }
    };
    let r = what_if(json!({})).await;
    assert_eq!(r["plugin"]["version"], v2.as_str());
    assert_eq!(
        (r["examined"].as_u64(), r["replayed"].as_u64()),
        (Some(30), Some(30)),
        "{r}"
    );
    assert_eq!(r["same"], 18, "{r}");
    assert_eq!(r["changed"], 12, "{r}");
    assert_eq!(r["changes"], json!({ "decisionChanged": 9, "nowFails": 3 }));
    let diffs: BTreeSet<String> = r["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["eventId"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = (0..30)
        .filter(|i| matches!(i % 10, 0..=2 | 4))
        .map(|i| format!("{run}-{i}"))
        .collect();
    assert_eq!(diffs, expected);
    for d in r["diffs"].as_array().unwrap() {
        if d["change"] == "decisionChanged" {
            assert_eq!(d["before"]["decision"]["destination"], "region:eu");
            assert_eq!(d["after"]["decision"]["destination"], "region:eu-central");
        } else {
            assert_eq!(d["after"]["errorKind"], "trap", "{d}");
        }
    }

    let r = what_if(json!({ "version": "active" })).await;
    assert_eq!(
        (r["same"].as_u64(), r["changed"].as_u64()),
        (Some(30), Some(0)),
        "{r}"
    );
    let r = what_if(json!({ "filter": { "state": "FAILED" } })).await;
    assert_eq!(
        (r["examined"].as_u64(), r["changed"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    let r = what_if(json!({ "filter": { "type": "ORDER_UPDATED" } })).await;
    assert_eq!(r["examined"], 3, "{r}");
    assert_eq!(r["changes"], json!({ "nowFails": 3 }));
    let r = what_if(json!({ "source": "dlq" })).await;
    assert_eq!(
        (r["examined"].as_u64(), r["same"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    let r = what_if(json!({ "limit": 5, "samples": 1 })).await;
    assert_eq!(r["examined"], 5, "{r}");
    assert_eq!(r["diffs"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["complete"], true);
    let far_future = json!({ "filter": { "fromMs": 32_503_680_000_000u64 } });
    assert_eq!(what_if(far_future).await["examined"], 0);

    let bad = c
        .post_admin(
            "/plugins/router/what-if",
            json!({ "filter": { "state": "ROUTING_PENDING" } }),
        )
        .await;
    assert_eq!(bad.status, 400);
    let bad = c
        .post_admin("/plugins/router/what-if", json!({ "source": "x" }))
        .await;
    assert_eq!(bad.status, 400);
    let unauthorized = c
        .admin(Method::POST, "/plugins/router/what-if", None, None)
        .await;
    assert_eq!(unauthorized.status, 401);

    // Replays are dry runs: no record, queue or counter moved.
    assert_counts_unchanged(&before, &c.get("/events/stats").await.body);
    assert_eq!(
        c.get(&format!("/events/{}", ids[0])).await.body,
        sample_before
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_replay_on_redis_and_mongodb() {
    let dir = PluginDir::new(Some(MANIFEST));
    dir.install("router", "rollout-v1");
    let config = gateway_config(dir.path());
    what_if_reports_the_expected_diffs(config, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_replay_on_the_embedded_store() {
    let dir = PluginDir::new(Some(MANIFEST));
    dir.install("router", "rollout-v1");
    let data = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path(), data.path());
    what_if_reports_the_expected_diffs(config, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_sampling_compares_only_the_chosen_events() {
    let v2 = version_of("rollout-v2");
    let dir = PluginDir::new(Some(MANIFEST));
    dir.install("router", "rollout-v1");
    dir.install("router.next", "rollout-v2");
    let config = switchyard_gateway::Config {
        shadow_sample_rate: 0.5,
        ..gateway_config(dir.path())
    };
    let policy = config.rollout_policy();
    let gw = Gateway::start(config).await;
    let c = gw.client();
    wait_plugin(&c, "router", |p| p["candidate"]["version"] == v2.as_str()).await;
    let run = unique("sampled");
    let events: Vec<Value> = (0..40)
        .map(|i| {
            event(
                &format!("{run}-{i}"),
                "ORDER_CREATED",
                json!({ "region": "eu" }),
            )
        })
        .collect();
    let ids = send_all(&c, &events).await;
    let expected = ids.iter().filter(|id| policy.samples(id)).count() as u64;
    assert!((5..=35).contains(&expected), "{expected}");
    c.wait_final(&ids, Duration::from_secs(60)).await;
    wait_plugin(&c, "router", |p| {
        p["candidate"]["shadow"]["compared"] == expected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shadow = c.get("/plugins/router").await.body["candidate"]["shadow"].clone();
    // Every sampled event differs (eu), and no other event was shadowed.
    assert_eq!(shadow["compared"], expected, "{shadow}");
    assert_eq!(shadow["differed"], expected, "{shadow}");
    assert_eq!(shadow["skipped"], 0);
    gw.stop().await.unwrap();
}
