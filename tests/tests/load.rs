//! Smoke runs of the load generator (`switchyard load`) against a real gateway, so it cannot rot.

use switchyard_tests::{
    DESTINATION_SECRET, Gateway, PluginDir, TEST_ADMIN_TOKEN, TEST_SECRET, embedded_config,
    free_port, gateway_config,
};
use switchyard_tools::load::LoadOptions;
use switchyard_tools::sign::Scheme;

fn options(url: &str) -> LoadOptions {
    LoadOptions {
        url: url.to_string(),
        secret: TEST_SECRET.into(),
        scheme: Scheme::Hmac,
        requests: 100,
        duration: 60,
        concurrency: 100,
        rate: 0,
        repeat_every: 0,
        event_type: "ORDER_CREATED".into(),
        wait: true,
        wait_timeout: 60,
        admin_token: Some(TEST_ADMIN_TOKEN.into()),
        allow_remote: false,
        progress: false,
        receive: None,
        receive_secret: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_are_accepted_and_drained_with_retries() {
    let dir = PluginDir::default_router(200, 0.1);
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let report = switchyard_tools::load::run(options(&gw.url)).await.unwrap();
    assert_eq!(report.sent, 100);
    assert_eq!(
        report.statuses.get("202"),
        Some(&100),
        "{:?}",
        report.statuses
    );
    assert_eq!(report.statuses.len(), 1);
    assert_eq!(report.accepted_events, 100);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99);
    let drain = report.drain.unwrap();
    assert_eq!(drain.routed, 100);
    assert_eq!(drain.failed, 0);
    assert!(drain.retries > 0, "10 % transient failures are retried");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn webhook_signatures_and_repeated_ids_count_duplicates() {
    let dir = PluginDir::default_router(0, 0.0);
    let gw = Gateway::start(gateway_config(dir.path())).await;
    let mut o = options(&gw.url);
    o.scheme = Scheme::Webhook;
    o.requests = 50;
    o.concurrency = 5;
    o.repeat_every = 10;
    let report = switchyard_tools::load::run(o).await.unwrap();
    assert_eq!(
        report.statuses.get("202"),
        Some(&50),
        "{:?}",
        report.statuses
    );
    assert_eq!(report.accepted_events, 10);
    let drain = report.drain.unwrap();
    assert_eq!(drain.routed, 10);
    assert_eq!(drain.duplicates, 40);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_counts_every_delivery_and_checks_its_signature() {
    let port = free_port();
    let manifest = format!(
        "default = \"default-router\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n\
         [destinations.orders]\nurl = \"http://127.0.0.1:{port}/orders\"\n\
         secret = \"{DESTINATION_SECRET}\"\nallow_private = true\n"
    );
    let dir = PluginDir::new(Some(&manifest));
    dir.install("default-router", "default-router");
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let mut o = options(&gw.url);
    o.wait = false;
    o.requests = 200;
    o.concurrency = 20;
    o.receive = Some(port);
    o.receive_secret = Some(DESTINATION_SECRET.into());
    let report = switchyard_tools::load::run(o).await.unwrap();
    assert_eq!(report.accepted_events, 200);
    let d = report.delivered.unwrap();
    assert_eq!(d.events, 200);
    assert_eq!((d.bad_signatures, d.unmatched), (0, 0));
    assert!(d.secs > 0.0 && d.deliveries_per_sec > 0.0);
    let l = &d.ingest_to_receiver_ms;
    assert!(l.p50 > 0.0 && l.p99 >= l.p50 && l.max >= l.p99, "{l:?}");

    gw.stop().await.unwrap();
}

#[tokio::test]
async fn refuses_targets_off_this_machine() {
    let mut o = options("http://192.0.2.1:3000");
    o.wait = false;
    let err = switchyard_tools::load::run(o).await.unwrap_err();
    assert!(err.to_string().contains("not on this machine"), "{err}");
}
