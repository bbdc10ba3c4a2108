//! An OpenTelemetry collector for tests: an OTLP/HTTP endpoint (`POST /v1/traces`, protobuf) on
//! a free loopback port that decodes every export with the OpenTelemetry project's own message
//! definitions (`opentelemetry-proto`) and keeps the spans.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// One span as exported.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub name: String,
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attribute values as text (numbers and booleans printed).
    pub attributes: BTreeMap<String, String>,
    /// The exporting process's `service.name`.
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The collector (stopped when dropped).
pub struct Collector {
    pub port: u16,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    stop: CancellationToken,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(spans.clone());
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Collector { port, spans, stop }
    }

    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ExportedSpan> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits until trace `trace_id` holds spans with every name of `names` (with repeats);
    /// panics with what it holds after `timeout`.
    pub async fn wait_for(
        &self,
        trace_id: &str,
        names: &[&str],
        timeout: Duration,
    ) -> Vec<ExportedSpan> {
        let t = Instant::now();
        loop {
            let spans = self.trace(trace_id);
            let mut missing: Vec<&str> = names.to_vec();
            for s in &spans {
                if let Some(i) = missing.iter().position(|n| *n == s.name) {
                    missing.remove(i);
                }
            }
            if missing.is_empty() {
                return spans;
            }
            let got: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            assert!(
                t.elapsed() < timeout,
                "trace {trace_id}: missing {missing:?}; got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn export(State(spans): State<Arc<Mutex<Vec<ExportedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut out = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| text(v.value.as_ref()))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(ExportedSpan {
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                            (kv.key.clone(), text(v))
                        })
                        .collect(),
                    service: service.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    StatusCode::OK
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}
