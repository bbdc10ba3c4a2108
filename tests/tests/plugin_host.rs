//! The plugin host against real components built from `plugins/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_runtime::{Limits, PluginError, StaticContext};
use switchyard_tests::{PluginDir, no_context, plugin, request, test_limits};

const FAST_DEFAULT: &str = "[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n";

fn orders() -> Arc<StaticContext> {
    let mut docs = BTreeMap::new();
    docs.insert(
        ("order".into(), "12345".into()),
        json!({"id": "12345", "region": "eu"}).to_string(),
    );
    docs.insert(
        ("shipment".into(), "S1".into()),
        json!({"id": "S1", "carrier": "DHL"}).to_string(),
    );
    Arc::new(StaticContext(docs))
}

#[tokio::test]
async fn default_plugin_decides_from_event_type_and_live_order() {
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    dir.install("default-router", "default-router");
    let host = dir.host(test_limits(), orders()).await;

    let out = host
        .route(&request("e1", "ORDER_CREATED", json!({"orderId": "12345"})))
        .await;
    let d = out.result.expect("routed");
    assert_eq!(d.destination, "orders-eu");
    assert_eq!(d.metadata.get("region").map(String::as_str), Some("eu"));
    let id = out.plugin.expect("plugin id");
    assert_eq!(id.name, "default-router");
    assert_eq!(Some(id.version), host.version_of("default-router"));

    // No live order: the event type alone decides.
    let d = host
        .route(&request(
            "e2",
            "SHIPMENT_DELAYED",
            json!({"orderId": "999"}),
        ))
        .await
        .result
        .unwrap();
    assert_eq!(d.destination, "shipping");
}

#[tokio::test]
async fn default_plugin_sleeps_the_configured_delay() {
    let dir = PluginDir::default_router(300, 0.0);
    let host = dir.host(test_limits(), no_context()).await;
    let t = Instant::now();
    host.route(&request("e1", "ORDER_CREATED", json!({})))
        .await
        .result
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "returned after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn transient_and_permanent_errors_are_typed() {
    let dir = PluginDir::new(Some(
        "[config.default-router]\ndelay_ms = 0\nfailure_rate = 1.0\n[routes]\n\"SHIP*\" = \"content-router\"\n",
    ));
    dir.install("default-router", "default-router");
    dir.install("content-router", "content-router");
    let host = dir.host(test_limits(), no_context()).await;

    let err = host
        .route(&request("e1", "ORDER_CREATED", json!({})))
        .await
        .result
        .unwrap_err();
    assert!(matches!(err, PluginError::Transient(_)), "{err:?}");
    assert!(err.is_retryable());

    let err = host
        .route(&request("e2", "SHIPMENT", json!({"carrier": 42})))
        .await
        .result
        .unwrap_err();
    assert!(
        matches!(err, PluginError::Permanent(ref m) if m.contains("carrier")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = host
        .route(&request("e3", "SHIPMENT", json!({"weight": 3})))
        .await
        .result
        .unwrap_err();
    assert!(matches!(err, PluginError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn default_plugin_fails_about_the_configured_fraction() {
    let dir = PluginDir::default_router(0, 0.1);
    let host = dir.host(test_limits(), no_context()).await;
    let mut failed = 0;
    for i in 0..400 {
        if host
            .route(&request(&format!("ev-{i}"), "ORDER_CREATED", json!({})))
            .await
            .result
            .is_err()
        {
            failed += 1;
        }
    }
    assert!(
        (20..=60).contains(&failed),
        "{failed} of 400 failed with failure_rate 0.1"
    );
}

#[tokio::test]
async fn content_router_routes_by_payload_and_live_shipment() {
    let dir = PluginDir::new(None);
    dir.install("content-router", "content-router");
    let host = dir.host(test_limits(), orders()).await;
    let route = |p| {
        let host = host.clone();
        async move { host.route(&request("e", "ANY", p)).await.result }
    };
    assert_eq!(
        route(json!({"carrier": "UPS", "express": true}))
            .await
            .unwrap()
            .destination,
        "carrier:ups"
    );
    assert_eq!(
        route(json!({"region": "APAC"})).await.unwrap().destination,
        "region:apac"
    );
    assert_eq!(
        route(json!({"shipmentId": "S1", "region": "x"}))
            .await
            .unwrap()
            .destination,
        "carrier:dhl"
    );
    assert!(matches!(
        route(json!({"express": "yes", "carrier": "UPS"})).await,
        Err(PluginError::Permanent(_))
    ));
}

#[tokio::test]
async fn plugin_config_and_context_reach_the_guest() {
    let dir = PluginDir::new(Some("[config.chaos]\ngreeting = \"hello\"\n"));
    dir.install("chaos", "chaos");
    let host = dir.host(test_limits(), orders()).await;
    let d = host
        .route(&request("e", "config", json!({"key": "greeting"})))
        .await
        .result
        .unwrap();
    assert_eq!(d.destination, "hello");
    let d = host
        .route(&request("e", "config", json!({"key": "missing"})))
        .await
        .result
        .unwrap();
    assert_eq!(d.destination, "<none>");
    let d = host
        .route(&request(
            "e",
            "lookup",
            json!({"kind": "order", "id": "12345"}),
        ))
        .await
        .result
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&d.destination).unwrap()["region"],
        "eu"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_guest_is_stopped_at_its_limit_while_other_calls_proceed() {
    let dir = PluginDir::new(None);
    dir.install("chaos", "chaos");
    let limits = Limits {
        call_timeout: Duration::from_millis(3000),
        ..test_limits()
    };
    let host = dir.host(limits, no_context()).await;

    let looping: Vec<_> = (0..4)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (
                    host.route(&request(&format!("loop-{i}"), "loop", json!({})))
                        .await
                        .result,
                    t.elapsed(),
                )
            })
        })
        .collect();
    // While four guests spin (more than this machine has cores), other calls still complete.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    for i in 0..20 {
        let d = host
            .route(&request(&format!("ok-{i}"), "ping", json!({})))
            .await
            .result
            .unwrap();
        assert_eq!(d.destination, "chaos:ping");
    }
    // They completed while the guests were still spinning (nothing waited for the loops).
    assert!(
        looping.iter().all(|l| !l.is_finished()),
        "the looping calls ended before the other calls were served ({:?})",
        t.elapsed()
    );
    for l in looping {
        let (result, elapsed) = l.await.unwrap();
        assert_eq!(result.unwrap_err(), PluginError::Timeout(3000));
        assert!(
            elapsed < Duration::from_millis(4500),
            "loop stopped after {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn guest_past_the_memory_cap_fails_cleanly() {
    let dir = PluginDir::new(None);
    dir.install("chaos", "chaos");
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..test_limits()
    };
    let host = dir.host(limits, no_context()).await;
    let err = host
        .route(&request("m", "alloc", json!({"mb": 64})))
        .await
        .result
        .unwrap_err();
    assert_eq!(err, PluginError::MemoryExceeded(16 << 20));
    assert!(err.is_retryable());
    // Under the cap it works, and the host keeps serving.
    let d = host
        .route(&request("m2", "alloc", json!({"mb": 4})))
        .await
        .result
        .unwrap();
    assert_eq!(d.destination, "allocated:4");
}

#[tokio::test]
async fn traps_and_stack_overflow_are_reported_as_traps() {
    let dir = PluginDir::new(None);
    dir.install("chaos", "chaos");
    let host = dir.host(test_limits(), no_context()).await;
    match host.route(&request("t", "trap", json!({}))).await.result {
        Err(PluginError::Trap(m)) => assert!(m.contains("panics on purpose"), "{m}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    match host.route(&request("s", "stack", json!({}))).await.result {
        // Rust's shadow stack lives in linear memory: overflowing it is an out-of-bounds trap.
        Err(PluginError::Trap(m)) => assert!(m.contains("out of bounds"), "{m}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
    match host
        .route(&request("h", "huge", json!({"mb": 1})))
        .await
        .result
    {
        Err(PluginError::InvalidDecision(m)) => assert!(m.contains("exceeds"), "{m}"),
        other => panic!("expected an invalid decision, got {other:?}"),
    }
}

#[tokio::test]
async fn guest_cannot_open_files_sockets_or_see_the_environment() {
    let dir = PluginDir::new(None);
    dir.install("chaos", "chaos");
    let host = dir.host(test_limits(), no_context()).await;
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();

    for path in [secret.to_str().unwrap(), "/etc/passwd", "secret.txt"] {
        let d = host
            .route(&request("f", "open-file", json!({"path": path})))
            .await
            .result
            .unwrap();
        assert!(
            d.destination.starts_with("denied:"),
            "{path}: {}",
            d.destination
        );
    }
    let d = host
        .route(&request("s", "socket", json!({"addr": addr})))
        .await
        .result
        .unwrap();
    assert!(d.destination.starts_with("denied:"), "{}", d.destination);
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the guest reached the host's socket"
    );
    let d = host
        .route(&request("e", "env", json!({})))
        .await
        .result
        .unwrap();
    assert_eq!(d.destination, "env:0 args:0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sleeping_guests_run_concurrently() {
    let dir = PluginDir::new(None);
    dir.install("chaos", "chaos");
    let limits = Limits {
        max_concurrent_calls: 1000,
        ..test_limits()
    };
    let host = dir.host(limits, no_context()).await;
    let t = Instant::now();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move {
                host.route(&request(&format!("s{i}"), "sleep", json!({"ms": 2000})))
                    .await
                    .result
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().destination, "slept");
    }
    let elapsed = t.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "1000 concurrent 2 s calls took {elapsed:?}"
    );
}

#[tokio::test]
async fn event_types_map_to_plugins_and_the_manifest_reloads() {
    let dir = PluginDir::new(Some(&format!(
        "default = \"default-router\"\n[routes]\n\"SHIPMENT_*\" = \"content-router\"\nPING = \"chaos\"\n{FAST_DEFAULT}"
    )));
    dir.install("default-router", "default-router");
    dir.install("content-router", "content-router");
    dir.install("chaos", "chaos");
    let host = dir.host(test_limits(), no_context()).await;
    let name = |t: &'static str, p: serde_json::Value| {
        let host = host.clone();
        async move { host.route(&request("e", t, p)).await.plugin.unwrap().name }
    };
    assert_eq!(
        name("SHIPMENT_CREATED", json!({"carrier": "x"})).await,
        "content-router"
    );
    assert_eq!(name("PING", json!({})).await, "chaos");
    assert_eq!(name("ORDER_CREATED", json!({})).await, "default-router");

    std::fs::write(dir.path().join("switchyard.toml"), "default = \"chaos\"\n").unwrap();
    host.reload_path(&dir.path().join("switchyard.toml")).await;
    assert_eq!(name("SHIPMENT_CREATED", json!({})).await, "chaos");
    assert_eq!(host.mapping().1.as_deref(), Some("chaos"));

    // A manifest that does not parse is rejected and the previous one stays.
    std::fs::write(dir.path().join("switchyard.toml"), "default = [").unwrap();
    host.reload_path(&dir.path().join("switchyard.toml")).await;
    assert_eq!(name("ORDER_CREATED", json!({})).await, "chaos");
    assert!(
        host.rejections()
            .iter()
            .any(|r| r.name == "switchyard.toml")
    );
}

#[tokio::test]
async fn corrupt_and_wrong_interface_files_are_rejected_and_the_old_version_serves() {
    let dir = PluginDir::new(Some(FAST_DEFAULT));
    let target = dir.install("default-router", "default-router");
    let host = dir.host(test_limits(), no_context()).await;
    let good = host.version_of("default-router").unwrap();

    let bytes = std::fs::read(plugin("default-router")).unwrap();
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    let reason = host.load_file(&target).await.unwrap_err().to_string();
    assert!(
        reason.contains("not a valid WebAssembly component"),
        "{reason}"
    );
    assert_eq!(
        host.version_of("default-router").as_deref(),
        Some(good.as_str())
    );
    assert!(
        host.route(&request("e", "ORDER_CREATED", json!({})))
            .await
            .result
            .is_ok()
    );

    std::fs::copy(plugin("wrong-world"), &target).unwrap();
    let reason = host.load_file(&target).await.unwrap_err().to_string();
    assert!(reason.contains("route"), "{reason}");
    assert_eq!(
        host.version_of("default-router").as_deref(),
        Some(good.as_str())
    );
    let rejection = host
        .rejections()
        .into_iter()
        .find(|r| r.name == "default-router")
        .unwrap();
    assert!(rejection.reason.contains("route"));
    assert!(
        host.route(&request("e", "ORDER_CREATED", json!({})))
            .await
            .result
            .is_ok()
    );
}

#[tokio::test]
async fn canary_that_traps_is_rejected_and_the_old_version_serves() {
    let dir = PluginDir::new(None);
    let target = dir.install("chaos", "noop");
    let host = dir.host(test_limits(), no_context()).await;
    let good = host.version_of("chaos").unwrap();

    // The chaos fixture traps on the canary call when its config says so.
    std::fs::write(
        dir.path().join("switchyard.toml"),
        "[config.chaos]\ncanary = \"trap\"\n",
    )
    .unwrap();
    host.reload_manifest().await;
    std::fs::copy(plugin("chaos"), &target).unwrap();
    let reason = host.load_file(&target).await.unwrap_err().to_string();
    assert!(
        reason.contains("canary") && reason.contains("traps on the canary"),
        "{reason}"
    );
    assert_eq!(host.version_of("chaos").as_deref(), Some(good.as_str()));
    assert_eq!(
        host.route(&request("e", "X", json!({})))
            .await
            .result
            .unwrap()
            .destination,
        "noop"
    );

    // With the canary answering, the same file loads.
    std::fs::write(dir.path().join("switchyard.toml"), "").unwrap();
    host.reload_manifest().await;
    host.load_file(&target).await.unwrap();
    assert_eq!(
        host.route(&request("e", "X", json!({})))
            .await
            .result
            .unwrap()
            .destination,
        "chaos:X"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_continuous_calls_has_no_failed_call() {
    let dir = PluginDir::new(Some("default = \"live\"\n"));
    dir.install("live", "noop");
    let host = dir.host(test_limits(), no_context()).await;
    let stop = tokio_util_token();
    let watcher = switchyard_runtime::watch::spawn(host.clone(), stop.clone()).unwrap();

    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed, seen_chaos) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (host, running, ok, failed, seen_chaos) = (
                host.clone(),
                running.clone(),
                ok.clone(),
                failed.clone(),
                seen_chaos.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    match host
                        .route(&request(&format!("w{w}-{i}"), "SWAP", json!({})))
                        .await
                        .result
                    {
                        Ok(d) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if d.destination == "chaos:SWAP" {
                                seen_chaos.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let versions = [
        ("chaos", "chaos:SWAP"),
        ("noop", "noop"),
        ("chaos", "chaos:SWAP"),
        ("noop", "noop"),
    ];
    for (source, destination) in versions {
        let expected = sha256_hex(&plugin(source));
        dir.install("live", source);
        let t = Instant::now();
        while host.version_of("live").as_deref() != Some(expected.as_str()) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "swap to {source} not served after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let d = host
            .route(&request("probe", "SWAP", json!({})))
            .await
            .result
            .unwrap();
        assert_eq!(d.destination, destination);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    stop.cancel();
    watcher.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed calls during swaps"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too few calls to mean anything"
    );
    assert!(seen_chaos.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn removing_a_file_unloads_the_plugin() {
    let dir = PluginDir::new(None);
    let target = dir.install("chaos", "chaos");
    let host = dir.host(test_limits(), no_context()).await;
    assert!(host.version_of("chaos").is_some());
    std::fs::remove_file(&target).unwrap();
    host.reload_path(&target).await;
    assert_eq!(host.version_of("chaos"), None);
    assert!(matches!(
        host.route(&request("e", "X", json!({}))).await.result,
        Err(PluginError::NoPlugin(_))
    ));
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn tokio_util_token() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

#[tokio::test]
async fn a_component_importing_what_the_host_does_not_provide_is_rejected() {
    let dir = PluginDir::new(None);
    let target = dir.install("greedy", "bad-import");
    let host = dir.host(test_limits(), no_context()).await;
    assert_eq!(host.version_of("greedy"), None);
    let reason = host.load_file(&target).await.unwrap_err().to_string();
    assert!(
        reason.contains("does not provide") && reason.contains("vault"),
        "{reason}"
    );
}
