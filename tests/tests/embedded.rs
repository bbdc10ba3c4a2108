//! The whole gateway on the embedded store: no Redis, no MongoDB.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::{
    Gateway, GatewayProcess, PluginDir, TEST_ADMIN_TOKEN, assert_final_once, embedded_config,
    free_port, switchyard_bin,
};

#[tokio::test]
async fn routes_retries_dead_letters_and_replays_with_live_context() {
    let dir = PluginDir::new(Some(
        "default = \"default-router\"\n[routes]\nflaky = \"chaos\"\npermanent = \"chaos\"\n\
         [config.default-router]\ndelay_ms = 20\nfailure_rate = 0\n",
    ));
    dir.install("default-router", "default-router");
    dir.install("chaos", "chaos");
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    let r = c
        .http
        .put(format!("{}/context/order/77", c.base))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&json!({"region": "apac"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    assert_eq!(
        c.send(&json!({"eventId": "o1", "type": "ORDER_CREATED", "payload": {"orderId": "77"}}))
            .await
            .status,
        202
    );
    assert_eq!(
        c.send(&json!({"eventId": "f1", "type": "flaky", "payload": {"failures": 2}}))
            .await
            .status,
        202
    );
    assert_eq!(
        c.send(&json!({"eventId": "p1", "type": "permanent", "payload": {}}))
            .await
            .status,
        202
    );
    let records = c
        .wait_final(
            &["o1".into(), "f1".into(), "p1".into()],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(records[0]["decision"]["destination"], "orders-apac");
    assert_eq!(records[1]["state"], "ROUTED");
    assert_eq!(records[1]["history"].as_array().unwrap().len(), 3);
    assert_eq!(records[2]["state"], "FAILED");
    c.wait_idle(Duration::from_secs(10)).await;
    let dlq = c.get("/events/failed").await.body;
    assert_eq!(dlq["items"][0]["eventId"], "p1");

    // Fix the routing (map `permanent` to the default plugin), replay, routed once.
    std::fs::write(
        dir.path().join("switchyard.toml"),
        "default = \"default-router\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n",
    )
    .unwrap();
    let t = std::time::Instant::now();
    while c.get("/plugins").await.body["routes"]
        .as_object()
        .is_some_and(|r| !r.is_empty())
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "manifest not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.post_admin("/events/dlq/replay", json!({})).await;
    assert_eq!(r.body["eventIds"], json!(["p1"]));
    c.wait_idle(Duration::from_secs(10)).await;
    let p1 = c.get("/events/p1").await.body;
    assert_eq!(p1["state"], "ROUTED", "{p1}");
    let stats = c.get("/events/stats").await.body;
    assert_eq!(
        (
            stats["routed"].as_u64(),
            stats["failed"].as_u64(),
            stats["deadLettered"].as_u64()
        ),
        (Some(3), Some(0), Some(0))
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_then_restart_every_acknowledged_event_ends_final() {
    let dir = PluginDir::default_router(1000, 0.1);
    let data = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let config = embedded_config(dir.path(), data.path());
    let ids: Vec<String> = (0..300).map(|i| format!("emb-{i}")).collect();
    let mut first = GatewayProcess::start(&config, &log).await;
    let c = first.client();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sends: Vec<_> = ids
        .iter()
        .map(|id| {
            let (c, accepted) = (c.clone(), accepted.clone());
            let e = json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}});
            tokio::spawn(async move {
                let status = c.try_send(&e).await.map(|a| a.status);
                if status == Some(202) {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                status
            })
        })
        .collect();
    // Kill while requests are still arriving and routes are in flight: as soon as some were
    // acknowledged (a fixed delay found none on a loaded machine).
    let t = std::time::Instant::now();
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < 10 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no event acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill9();
    let mut acknowledged = Vec::new();
    for (id, s) in ids.iter().zip(sends) {
        if s.await.unwrap() == Some(202) {
            acknowledged.push(id.clone());
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "nothing was acknowledged before the kill"
    );

    let second = GatewayProcess::start(&config, &log).await;
    let records = second
        .client()
        .wait_final(&acknowledged, Duration::from_secs(90))
        .await;
    assert_final_once(&records);
    let stats = second.client().wait_idle(Duration::from_secs(30)).await;
    assert_eq!(stats["pending"], 0, "{stats}");
}

#[tokio::test]
async fn a_second_process_on_the_same_data_directory_fails_fast() {
    let dir = PluginDir::new(None);
    dir.install("default-router", "default-router");
    let data = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let config = embedded_config(dir.path(), data.path());
    let _first = GatewayProcess::start(&config, &log).await;
    let t = std::time::Instant::now();
    let out = std::process::Command::new(switchyard_bin())
        .arg("serve")
        .env_clear()
        .envs(switchyard_tests::gateway_env(&config, free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another switchyard process"),
        "{stderr}"
    );
}

#[tokio::test]
async fn runs_with_nothing_configured_and_says_where_and_how() {
    // The README's run command on a fresh checkout: no Redis, no MongoDB, no secret, no plugins.
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = std::process::Command::new(switchyard_bin())
        .current_dir(cwd.path())
        .env_clear()
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let t = std::time::Instant::now();
    let ready = loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
        {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status(), 200);
    let secret = std::fs::read_to_string(cwd.path().join("data/hmac-secret")).unwrap();
    let body = br#"{"eventId":"fresh-1","type":"ORDER_CREATED","payload":{}}"#;
    let r = client
        .post(format!("http://127.0.0.1:{port}/events"))
        .header("content-type", "application/json")
        .header(
            "x-hmac-signature",
            switchyard_model::signing::sign_hex(secret.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let listening = log
        .lines()
        .find(|l| l.contains("switchyard listening"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        listening.contains(&format!("127.0.0.1:{port}")),
        "{listening}"
    );
    assert!(listening.contains("embedded"), "{listening}");
    assert!(
        listening.contains("default-router") && listening.contains("content-router"),
        "{listening}"
    );
    assert!(
        log.contains("data/hmac-secret"),
        "says where the generated secret is"
    );
}
