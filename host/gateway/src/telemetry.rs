//! OpenTelemetry traces, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set: spans go to an OTLP/HTTP
//! collector (protobuf or JSON) in batches, from a background thread, so that a slow or absent
//! collector costs a request nothing (a full batch queue drops spans, never requests).
//!
//! The spans of one event, under the producer's `traceparent` when it sent one: the HTTP request,
//! `ingest` (verify, validate, queue), then per attempt `queue` (the wait, from when it was
//! queued to when a worker fetched it), `attempt` with `claim` and `plugin call` inside; a retry
//! waits in a `queue` span under the attempt it follows; each delivery waits in a `queue` span
//! and is sent in a `delivery` span, whose request carries `traceparent`. How a job carries the
//! context is in `switchyard_model::trace`.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::Config;

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// The collector's base URL; traces go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    pub json: bool,
    pub service_name: String,
    /// The fraction of new traces recorded.
    pub ratio: f64,
}

impl Otlp {
    /// The export settings of `config`, if tracing is on.
    pub fn from_config(config: &Config) -> Option<Otlp> {
        config.otlp_endpoint().map(|e| Otlp {
            endpoint: e.trim_end_matches('/').to_string(),
            json: config.otel_exporter_otlp_protocol == "http/json",
            service_name: config.otel_service_name.clone(),
            ratio: config.otel_traces_sampler_arg,
        })
    }
}

/// Sends the exporter's requests with the gateway's HTTP client, on the gateway's runtime (the
/// batch processor's thread has none).
#[derive(Debug)]
struct Exporter {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let send = async move {
            let response = http.execute(request).await?;
            let mut answer = Response::builder().status(response.status().as_u16());
            for (name, value) in response.headers() {
                answer = answer.header(name.as_str(), value.as_bytes());
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(answer.body(body)?)
        };
        self.runtime.spawn(send).await?
    }
}

/// Installs the tracer provider and the W3C propagator globally and returns the provider (shut
/// it down to flush) with the tracer for the `tracing` layer. Call it on the gateway's runtime.
pub fn start(otlp: &Otlp) -> anyhow::Result<(SdkTracerProvider, opentelemetry_sdk::trace::Tracer)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Exporter {
            http,
            runtime: tokio::runtime::Handle::try_current()?,
        })
        .with_protocol(if otlp.json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        })
        .with_endpoint(format!("{}/v1/traces", otlp.endpoint))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(otlp.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("switchyard");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    switchyard_model::trace::enable();
    Ok((provider, tracer))
}
