//! The receiver behind `switchyard load --receive PORT`: a webhook endpoint on this machine that
//! the gateway delivers the run's events to (declare it as a destination, `allow_private = true`).
//! It matches each delivery to the request that ingested it by the envelope's `eventId`, and
//! measures deliveries per second (events ÷ (last receipt − first ingest)) and the latency from
//! the start of an ingest request to the first receipt of its delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::latency::Latency;

/// What the receiver measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// Events of this run received at least once.
    pub events: u64,
    /// Receipts beyond the first of an event (redeliveries).
    pub repeats: u64,
    /// Requests that were not a delivery of this run's events.
    pub unmatched: u64,
    /// Receipts whose signature did not verify with `--receive-secret` (none checked without it).
    pub bad_signatures: u64,
    /// From the first ingest request to the last first receipt.
    pub secs: f64,
    pub deliveries_per_sec: f64,
    /// Start of the ingest request to the first receipt of its delivery.
    pub ingest_to_receiver_ms: Latency,
}

/// Times in microseconds since the run's start, plus one (0: not yet).
pub(crate) struct Receipts {
    start: Instant,
    prefix: String,
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    first_receipts: AtomicU64,
    repeats: AtomicU64,
    unmatched: AtomicU64,
    bad_signatures: AtomicU64,
    secret: Option<Vec<u8>>,
}

impl Receipts {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }

    /// Notes that the ingest request of event `n` starts now (the first time only).
    pub(crate) fn sending(&self, n: u64) {
        if let Some(at) = self.sent.get(n as usize) {
            let _ = at.compare_exchange(0, self.micros(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn receive(&self, headers: &HeaderMap, body: &[u8]) {
        if let Some(secret) = &self.secret
            && !verifies(secret, headers, body)
        {
            self.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
        let n = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v["eventId"]
                    .as_str()
                    .and_then(|id| id.strip_prefix(&self.prefix))
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .filter(|n| *n < self.received.len());
        let Some(n) = n else {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let first = self.received[n]
            .compare_exchange(0, self.micros(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if first {
            self.first_receipts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.repeats.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events received at least once.
    pub(crate) fn events(&self) -> u64 {
        self.first_receipts.load(Ordering::Relaxed)
    }

    pub(crate) fn report(&self) -> Delivered {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
        let (mut first_sent, mut last_received) = (u64::MAX, 0);
        for (sent, received) in self.sent.iter().zip(&self.received) {
            let (s, r) = (
                sent.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed),
            );
            if s != 0 {
                first_sent = first_sent.min(s);
            }
            if s != 0 && r != 0 {
                last_received = last_received.max(r);
                let _ = hist.record(r.saturating_sub(s).max(1));
            }
        }
        let secs = last_received.saturating_sub(first_sent) as f64 / 1e6;
        Delivered {
            events: self.events(),
            repeats: self.repeats.load(Ordering::Relaxed),
            unmatched: self.unmatched.load(Ordering::Relaxed),
            bad_signatures: self.bad_signatures.load(Ordering::Relaxed),
            secs,
            deliveries_per_sec: self.events() as f64 / secs.max(1e-9),
            ingest_to_receiver_ms: Latency::of_micros(&hist),
        }
    }
}

/// Whether one of the `webhook-signature` values is the Standard Webhooks signature of `body`.
fn verifies(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<u64>().ok()),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let expected = switchyard_model::signing::sign_webhook(secret, id, ts, body);
    signatures.split(' ').any(|s| s == expected)
}

/// The bytes of a `whsec_` key.
fn key_bytes(secret: &str) -> anyhow::Result<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("--receive-secret is not a whsec_<base64> key")
}

/// A running receiver (stops when dropped).
pub(crate) struct Receiver {
    pub(crate) receipts: Arc<Receipts>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the receiver on `127.0.0.1:port` for `requests` events named `<prefix><n>`.
pub(crate) async fn start(
    port: u16,
    secret: Option<&str>,
    prefix: String,
    requests: u64,
) -> anyhow::Result<Receiver> {
    let requests = usize::try_from(requests).context("--requests is too large")?;
    let receipts = Arc::new(Receipts {
        start: Instant::now(),
        prefix,
        sent: (0..requests).map(|_| AtomicU64::new(0)).collect(),
        received: (0..requests).map(|_| AtomicU64::new(0)).collect(),
        first_receipts: AtomicU64::new(0),
        repeats: AtomicU64::new(0),
        unmatched: AtomicU64::new(0),
        bad_signatures: AtomicU64::new(0),
        secret: secret.map(key_bytes).transpose()?,
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port} for --receive"))?;
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(receipts.clone());
    let stop = serve(listener, app);
    Ok(Receiver { receipts, stop })
}

/// Serves `app` on `listener` in a task of its own until the returned token is cancelled.
pub fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> CancellationToken {
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(until.cancelled_owned())
            .await;
    });
    stop
}

async fn receive(
    State(receipts): State<Arc<Receipts>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    receipts.receive(&headers, &body);
    StatusCode::NO_CONTENT
}

/// Waits until `events` events were received, or `timeout`.
pub(crate) async fn wait_for(receipts: &Receipts, events: u64, timeout: Duration, progress: bool) {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    while receipts.events() < events && Instant::now() < deadline {
        if progress && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("[receive] {} of {events} delivered", receipts.events());
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_matched_to_its_ingest_and_checked() {
        let secret = b"0123456789abcdef0123".to_vec();
        let r = Receipts {
            start: Instant::now(),
            prefix: "run-".into(),
            sent: (0..3).map(|_| AtomicU64::new(0)).collect(),
            received: (0..3).map(|_| AtomicU64::new(0)).collect(),
            first_receipts: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            secret: Some(secret.clone()),
        };
        r.sending(1);
        let body = br#"{"eventId":"run-1","type":"T"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", "1700000000".parse().unwrap());
        let signature = switchyard_model::signing::sign_webhook(&secret, "msg_1", 1700000000, body);
        headers.insert(
            "webhook-signature",
            format!("v1,bogus {signature}").parse().unwrap(),
        );
        r.receive(&headers, body);
        r.receive(&headers, body);
        r.receive(&headers, br#"{"eventId":"other-1"}"#);
        r.receive(&HeaderMap::new(), br#"{"eventId":"run-9"}"#);
        let report = r.report();
        assert_eq!(report.events, 1);
        assert_eq!(report.repeats, 1);
        assert_eq!(
            report.unmatched, 2,
            "another run's event, and one past --requests"
        );
        assert_eq!(
            report.bad_signatures, 2,
            "the two without a valid signature"
        );
    }
}
