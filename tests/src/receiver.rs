//! A real HTTP receiver for delivery tests, on a loopback port: it checks every request's
//! signature with an independent Standard Webhooks implementation (the `standardwebhooks`
//! crate), records what it received, and answers as each path is told to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

/// A `whsec_` signing key for test destinations (32 random-looking bytes).
pub const DESTINATION_SECRET: &str = "whsec_c3dpdGNoeWFyZC10ZXN0LWRlc3RpbmF0aW9uLWtleS0wMQ==";

/// How a path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// This status, every time.
    Status(u16),
    /// `status` for the first `times` requests of each message id, then 204.
    FailFirst { times: u32, status: u16 },
    /// A redirect to `/redirected`.
    Redirect,
    /// 204 after this long.
    Slow(Duration),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub webhook_id: String,
    pub correlation_id: String,
    pub body: serde_json::Value,
    /// The signature verified with the destination's key (by `standardwebhooks`).
    pub verified: bool,
    /// The W3C `traceparent` header ("" without one).
    pub traceparent: String,
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<HashMap<String, Behaviour>>,
    received: Mutex<Vec<Received>>,
    /// Requests per (path, message id), for `FailFirst`.
    seen: Mutex<HashMap<(String, String), u32>>,
}

/// The receiver (stopped when dropped).
pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start() -> Receiver {
        Self::serve(0, Arc::default()).await
    }

    async fn serve(port: u16, shared: Arc<Shared>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(shared.clone());
        let stop = switchyard_tools::receive::serve(listener, app);
        Receiver { port, shared, stop }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Makes `path` answer as `behaviour` (204 when told nothing).
    pub fn on(&self, path: &str, behaviour: Behaviour) {
        self.shared
            .behaviour
            .lock()
            .unwrap()
            .insert(path.trim_start_matches('/').to_string(), behaviour);
    }

    /// What `path` received so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        let path = path.trim_start_matches('/');
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` received at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let t = Instant::now();
        loop {
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                t.elapsed() < timeout,
                "{path}: {} of {n} requests after {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening (connections are refused) until [`Self::restart`].
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Listens again on the same port, with what it received so far.
    pub async fn restart(self) -> Receiver {
        self.stop.cancel();
        let (port, shared) = (self.port, self.shared.clone());
        Self::serve_when_free(port, shared).await
    }

    /// Starts on `port` (one that was free, or just released), with nothing received.
    pub async fn start_on(port: u16) -> Receiver {
        Self::serve_when_free(port, Arc::default()).await
    }

    async fn serve_when_free(port: u16, shared: Arc<Shared>) -> Receiver {
        // A port just released may take a moment before it can be bound again.
        for _ in 0..100 {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self::serve(port, shared).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verified = standardwebhooks::Webhook::new(DESTINATION_SECRET)
        .expect("a valid key")
        .verify(&body, &headers)
        .is_ok();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let webhook_id = header("webhook-id");
    shared.received.lock().unwrap().push(Received {
        path: path.clone(),
        webhook_id: webhook_id.clone(),
        correlation_id: header("x-correlation-id"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        verified,
        traceparent: header("traceparent"),
        at: Instant::now(),
    });
    let seen = {
        let mut seen = shared.seen.lock().unwrap();
        let n = seen.entry((path.clone(), webhook_id)).or_default();
        *n += 1;
        *n
    };
    let behaviour = shared.behaviour.lock().unwrap().get(&path).copied();
    let status = |code: u16| StatusCode::from_u16(code).unwrap();
    match behaviour {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(Behaviour::Status(code)) => (status(code), "told to answer this").into_response(),
        Some(Behaviour::FailFirst {
            times,
            status: code,
        }) if seen <= times => (status(code), "failing on purpose").into_response(),
        Some(Behaviour::FailFirst { .. }) => StatusCode::NO_CONTENT.into_response(),
        Some(Behaviour::Redirect) => {
            (StatusCode::FOUND, [("location", "/redirected")]).into_response()
        }
        Some(Behaviour::Slow(wait)) => {
            tokio::time::sleep(wait).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}
