//! Who may do what, and what bad input gets: the admin API closed without a token and checked
//! before any body is read, event status redacted for anonymous callers, JSON errors for every
//! malformed request, per-client rate limits behind trusted proxies, and captured Standard
//! Webhooks requests that cannot be replayed with another body.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::*;

const FAST: &str =
    "default = \"default-router\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n";

fn fast_dir() -> PluginDir {
    let dir = PluginDir::new(Some(FAST));
    dir.install("default-router", "default-router");
    dir
}

async fn anonymous(c: &Client, method: reqwest::Method, path: &str) -> Answer {
    c.admin(method, path, Some(b"{}".to_vec()), None).await
}

#[tokio::test]
async fn without_an_admin_token_every_admin_endpoint_is_closed_and_status_is_redacted() {
    let dir = fast_dir();
    let mut config = gateway_config(dir.path());
    config.admin_token = None;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    use reqwest::Method as M;
    let admin = [
        (M::GET, "/events/stats"),
        (M::GET, "/events/failed"),
        (M::POST, "/events/dlq/replay"),
        (M::PUT, "/context/order/o-1"),
        (M::GET, "/plugins/default-router"),
        (M::PUT, "/plugins/default-router/candidate"),
        (M::DELETE, "/plugins/default-router/candidate"),
        (M::POST, "/plugins/default-router/promote"),
        (M::POST, "/plugins/default-router/rollback"),
        (M::POST, "/plugins/default-router/dry-run"),
        (M::POST, "/plugins/default-router/what-if"),
    ];
    for (method, path) in admin {
        for token in [None, Some(TEST_ADMIN_TOKEN)] {
            let a = c
                .admin(method.clone(), path, Some(b"{}".to_vec()), token)
                .await;
            assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
            assert_eq!(a.body["error"]["code"], "unauthorized");
            let message = a.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("set ADMIN_TOKEN"), "{path}: {message}");
        }
    }
    for open in ["/health", "/ready", "/plugins", "/metrics"] {
        assert_eq!(
            c.admin(M::GET, open, None, None).await.status,
            200,
            "{open}"
        );
    }
    // The summary names versions and the mapping.
    let plugins = c.admin(M::GET, "/plugins", None, None).await.body;
    assert!(plugins["plugins"][0]["version"].is_string());

    // Event status: the state and timestamps, nothing else.
    assert_eq!(
        c.send(&json!({"eventId": "r-1", "type": "ORDER_CREATED", "payload": {"secret": "s3"}}))
            .await
            .status,
        202
    );
    let t = Instant::now();
    let record = loop {
        let a = c.admin(M::GET, "/events/r-1", None, None).await;
        if a.body["state"] == "ROUTED" {
            break a.body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "not routed: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["eventId", "receivedAtMs", "state", "updatedAtMs"],
        "{record}"
    );
    // A token the gateway does not have is refused rather than ignored.
    let a = c
        .admin(M::GET, "/events/r-1", None, Some("a-guess-at-the-token"))
        .await;
    assert_eq!(a.status, 401);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_token_event_status_is_whole_and_without_it_redacted() {
    let dir = fast_dir();
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    c.send(&json!({"eventId": "w-1", "type": "ORDER_CREATED", "payload": {}}))
        .await;
    let full = &c.wait_final(&["w-1".into()], Duration::from_secs(20)).await[0];
    assert_eq!(full["decision"]["destination"], "orders", "{full}");
    assert!(full["history"].is_array());
    let public = anonymous(&c, reqwest::Method::GET, "/events/w-1")
        .await
        .body;
    assert_eq!(public["state"], "ROUTED");
    for hidden in [
        "decision",
        "history",
        "plugin",
        "error",
        "correlationId",
        "type",
    ] {
        assert!(public.get(hidden).is_none(), "{hidden} shown: {public}");
    }
    gw.stop().await.unwrap();
}

/// Sends request headers announcing `declared` body bytes and only `sent` of them, then waits up
/// to `wait` for the status line.
fn partial_request(
    url: &str,
    head: &str,
    declared: usize,
    sent: usize,
    wait: Duration,
) -> Option<String> {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nContent-Length: {declared}\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(&vec![b'x'; sent]).unwrap();
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_are_refused_before_their_body_is_read_and_bodies_have_a_deadline() {
    let dir = fast_dir();
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.body_timeout_ms = 1_000;
    let gw = Gateway::start(config).await;
    let url = gw.url.clone();
    // 32 MiB announced, 10 bytes sent, no token: the answer comes at once.
    let answer = tokio::task::spawn_blocking(move || {
        partial_request(
            &url,
            "PUT /plugins/default-router/candidate HTTP/1.1",
            32 << 20,
            10,
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap()
    .expect("no answer: the body was waited for");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // With the token, a body that trickles in is cut off at BODY_TIMEOUT_MS (408), as on ingest.
    let url = gw.url.clone();
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        let head = format!(
            "POST /events/dlq/replay HTTP/1.1\r\nAuthorization: Bearer {TEST_ADMIN_TOKEN}\r\nContent-Type: application/json"
        );
        partial_request(&url, &head, 1000, 2, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .expect("no answer within 5 s: admin bodies have no deadline");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.stop().await.unwrap();
}

/// Malformed requests on one gateway: JSON 400s, never a 503 or plain text.
async fn bad_admin_input_is_a_json_400(gw: &Gateway) {
    let c = gw.client();
    use reqwest::Method as M;
    let token = Some(TEST_ADMIN_TOKEN);
    let cases: Vec<(M, &str, Option<Vec<u8>>, &str)> = vec![
        (M::GET, "/events/failed?cursor=abc", None, "invalid_cursor"),
        (M::GET, "/events/failed?limit=abc", None, "invalid_query"),
        (M::GET, "/events/failed?limit=-1", None, "invalid_query"),
        (
            M::PUT,
            "/context/order/o-1",
            Some(br#"{"region": "eu", "$where": "1"}"#.to_vec()),
            "invalid_document",
        ),
        (
            M::PUT,
            "/context/order/o-1",
            Some(br#"{"region": "eu", "n": 9223372036854775808}"#.to_vec()),
            "invalid_document",
        ),
        (
            M::PUT,
            "/context/order/o-1",
            Some(
                format!(
                    r#"{{"region": "eu", "deep": {}1{}}}"#,
                    r#"{"a":"#.repeat(60),
                    "}".repeat(60)
                )
                .into_bytes(),
            ),
            "invalid_document",
        ),
        (
            M::POST,
            "/events/dlq/replay",
            Some(b"[1,2]".to_vec()),
            "invalid_filter",
        ),
        // A destination filters deliveries: on the events' dead letters it would match nothing.
        (
            M::POST,
            "/events/dlq/replay",
            Some(br#"{"destination": "orders"}"#.to_vec()),
            "invalid_filter",
        ),
        (
            M::POST,
            "/plugins/default-router/dry-run",
            Some(b"{".to_vec()),
            "invalid_body",
        ),
    ];
    for (method, path, body, code) in cases {
        let a = c.admin(method.clone(), path, body, token).await;
        assert_eq!(a.status, 400, "{method} {path}: {}", a.body);
        assert_eq!(a.body["error"]["code"], code, "{method} {path}: {}", a.body);
    }
    let a = c.admin(M::PATCH, "/events/stats", None, token).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // Nothing was stored: the order is still unknown.
    let a = c
        .post_admin(
            "/plugins/default-router/dry-run",
            json!({"event": {"type": "ORDER_CREATED", "payload": {"orderId": "o-1"}}}),
        )
        .await;
    assert_eq!(
        a.body["result"]["decision"]["destination"], "orders",
        "{}",
        a.body
    );
}

#[tokio::test]
async fn bad_admin_input_is_a_json_400_on_redis_and_secantus() {
    let dir = fast_dir();
    let gw = Gateway::start(gateway_config(dir.path())).await;
    bad_admin_input_is_a_json_400(&gw).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn bad_admin_input_is_a_json_400_on_embedded() {
    let dir = fast_dir();
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    bad_admin_input_is_a_json_400(&gw).await;
    gw.stop().await.unwrap();
}

fn event(id: &str) -> serde_json::Value {
    json!({"eventId": id, "type": "ORDER_CREATED", "payload": {}})
}

/// Sends an event as if forwarded for `xff`; returns the status.
async fn send_from(c: &Client, xff: &str, id: &str) -> u16 {
    let body = serde_json::to_vec(&event(id)).unwrap();
    let sig = switchyard_model::signing::sign_hex(TEST_SECRET.as_bytes(), &body);
    let headers = [
        ("content-type", "application/json".to_string()),
        ("x-hmac-signature", sig),
        ("x-forwarded-for", xff.to_string()),
    ];
    c.post_raw(body, &headers).await.status
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit_and_idle_ones_are_forgotten() {
    let dir = fast_dir();
    let mut config = gateway_config(dir.path());
    config.rate_limit_max_requests = 2;
    config.rate_limit_window_ms = 1_000;
    config.trusted_proxies = "127.0.0.1".into();
    let gw = Gateway::start(config.clone()).await;
    let c = gw.client();
    let send_as = |client: &'static str, id: String| {
        let c = c.clone();
        async move { send_from(&c, &format!("{client}, 127.0.0.1"), &id).await }
    };
    let mut first = Vec::new();
    for i in 0..3 {
        first.push(send_as("203.0.113.1", unique(&format!("a{i}"))).await);
    }
    assert_eq!(first, [202, 202, 429]);
    assert_eq!(
        send_as("203.0.113.2", unique("b")).await,
        202,
        "another client"
    );

    // Many clients for a while (the limiter is pruned every window), then quiet: it forgets
    // them, so it does not grow forever.
    let busy_until = Instant::now() + Duration::from_millis(2_500);
    let mut i = 0u32;
    let mut most = 0.0f64;
    while Instant::now() < busy_until {
        for _ in 0..10 {
            send_from(&c, &format!("192.0.2.{}, 127.0.0.1", i % 200), &unique("n")).await;
            i += 1;
        }
        let tracked = metric(&metrics(&c).await, "switchyard_rate_limit_clients");
        most = most.max(tracked.unwrap_or(0.0));
    }
    assert!(
        most >= 10.0,
        "the limiter never tracked the clients: {most}"
    );
    let t = Instant::now();
    loop {
        let tracked = metric(&metrics(&c).await, "switchyard_rate_limit_clients");
        if tracked == Some(0.0) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "tracked clients: {tracked:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.stop().await.unwrap();

    // Without TRUSTED_PROXIES the header is the client's to forge: it is ignored.
    config.trusted_proxies = String::new();
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let mut statuses = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        statuses.push(send_from(&c, client, &unique("x")).await);
    }
    assert_eq!(statuses, [202, 202, 429]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_captured_webhook_cannot_be_replayed_with_another_body_across_gateways() {
    let dir = fast_dir();
    let config = gateway_config(dir.path());
    // Two gateways on one Redis: the seen ids live in the queue backend, not in a process.
    let a = Gateway::start(config.clone()).await;
    let b = Gateway::start(config).await;
    let id = unique("msg");
    let now = now_secs();
    let original = event(&unique("e"));
    assert_eq!(
        a.client().send_webhook(&original, &id, now).await.status,
        202
    );
    // The producer's own retry of the same message is fine (the event is deduplicated later).
    assert_eq!(
        b.client().send_webhook(&original, &id, now).await.status,
        202
    );
    let forged = b
        .client()
        .send_webhook(&event(&unique("evil")), &id, now)
        .await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    assert_eq!(forged.body["error"]["code"], "invalid_signature");
    assert!(
        forged.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replayed")
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn webhook_replays_are_refused_and_plain_hmac_can_be_switched_off_on_embedded() {
    let dir = fast_dir();
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path(), data.path());
    config.require_timestamped_signatures = true;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let now = now_secs();
    assert_eq!(
        c.send_webhook(&event("wh-a"), "msg-a", now).await.status,
        202
    );
    let forged = c.send_webhook(&event("wh-b"), "msg-a", now).await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    let plain = c.send(&event("plain-1")).await;
    assert_eq!(plain.status, 401, "{}", plain.body);
    assert!(
        plain.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only Standard Webhooks"),
        "{}",
        plain.body
    );
    c.wait_final(&["wh-a".into()], Duration::from_secs(20))
        .await;
    assert_eq!(
        c.get("/events/wh-b").await.status,
        404,
        "the forged event was not queued"
    );
    gw.stop().await.unwrap();
}

/// `switchyard sign` prints headers the gateway accepts for the exact bytes given, under both
/// schemes; the Standard Webhooks ones also pass the independent `standardwebhooks` check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_sign_prints_headers_the_gateway_accepts() {
    let dir = PluginDir::default_router(0, 0.0);
    let data = tempfile::tempdir().unwrap();
    let key = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let config = switchyard_gateway::Config {
        hmac_secret: key.into(),
        ..embedded_config(dir.path(), data.path())
    };
    let gw = Gateway::start(config).await;
    let c = gw.client();
    for (n, scheme) in ["webhook", "hmac"].into_iter().enumerate() {
        // Not the compact form a JSON library would print: the signature is over these bytes.
        let body = format!(
            "{{ \"eventId\": \"signed-{n}\", \"type\": \"ORDER_CREATED\",\n  \"payload\": {{}} }}"
        );
        let file = data.path().join(format!("event-{n}.json"));
        std::fs::write(&file, &body).unwrap();
        let out = std::process::Command::new(switchyard_bin())
            .args(["sign", "--scheme", scheme])
            .arg(&file)
            .env("HMAC_SECRET", key)
            .output()
            .expect("run switchyard sign");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        for line in text.lines() {
            let (name, value) = line.split_once(": ").expect("Name: value");
            headers.insert(
                reqwest::header::HeaderName::try_from(name).unwrap(),
                value.parse().unwrap(),
            );
        }
        if scheme == "webhook" {
            assert_eq!(headers.len(), 3, "{text}");
            standardwebhooks::Webhook::new(key)
                .unwrap()
                .verify(body.as_bytes(), &headers)
                .expect("an independent implementation accepts the signature");
        } else {
            assert_eq!(headers.len(), 1, "{text}");
        }
        let r = c
            .http
            .post(format!("{}/events", c.base))
            .header("content-type", "application/json")
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{scheme}: {}", r.text().await.unwrap());
        // One byte different: refused.
        let r = c
            .http
            .post(format!("{}/events", c.base))
            .header("content-type", "application/json")
            .headers(headers)
            .body(body.replace("signed", "signeD"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{scheme}");
    }
    gw.stop().await.unwrap();
}
