//! The HTTP API: ingestion, event status, admin, health.
//!
//! Every error is JSON (`error::ApiError`), including the rejections of axum's extractors
//! (`extract`). Admin handlers take [`auth::RequireAdmin`] first: it runs before the body is read.

pub mod admin;
pub mod auth;
pub mod client;
pub mod deliveries;
pub mod error;
pub mod extract;
pub mod ingest;
pub mod openapi;
pub mod rollout;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::{Router, body::Body};
use tower_governor::GovernorLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use switchyard_model::trace;
use switchyard_runtime::Plugins;
use switchyard_stores::queue::Queue;
use switchyard_stores::state::StateStore;

use crate::worker::WorkerStats;

/// Header carrying the correlation id, in requests and responses.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Ingestion settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub verifier: signature::Verifier,
    /// Largest request body (ingestion and admin JSON bodies).
    pub body_limit: usize,
    /// Longest time to receive a whole body (ingestion and admin bodies).
    pub body_timeout: Duration,
    /// Longest wait for the queue append before answering 503.
    pub enqueue_timeout: Duration,
    /// Requests per client per window (0 = no limit).
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Load balancers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: client::TrustedProxies,
    /// `DELIVERY_MAX_DEPTH` (0 = none): new events are refused while the deliveries backlog is
    /// at it.
    pub delivery_max_depth: u64,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub plugins: Plugins,
    pub queue: Arc<dyn Queue>,
    pub state: Arc<dyn StateStore>,
    pub ingest: Arc<IngestSettings>,
    pub admin_token: Option<Arc<str>>,
    pub worker_stats: Arc<WorkerStats>,
    /// `DLQ_MAX_DEPTH` (0 = none), shown by `/ready`.
    pub dlq_max_depth: u64,
    /// The deliveries lane (its dead letters, its depths).
    pub deliveries: Arc<dyn Queue>,
    pub destinations: Arc<switchyard_delivery::Destinations>,
    pub delivery_stats: Arc<switchyard_delivery::DeliveryStats>,
}

/// The API's routes, each registered with its OpenAPI description (`openapi`), on top of `doc`.
/// Only `routes!` adds a route: one that is not described cannot be added. `ingest` gives the
/// rate limit of `POST /events` (none for the description alone).
pub(crate) fn api_routes(
    doc: utoipa::openapi::OpenApi,
    ingest: Option<&IngestSettings>,
) -> OpenApiRouter<AppState> {
    let mut events = OpenApiRouter::new().routes(routes!(ingest::ingest));
    if let Some(settings) = ingest.filter(|s| s.rate_limit > 0) {
        let config = client::rate_limit(
            settings.rate_limit,
            settings.rate_window,
            settings.trusted_proxies.clone(),
        );
        events = events.layer(GovernorLayer {
            config: Arc::new(config),
        });
    }
    OpenApiRouter::with_openapi(doc)
        .merge(events)
        .routes(routes!(admin::stats))
        .routes(routes!(admin::failed))
        .routes(routes!(admin::replay))
        .routes(routes!(admin::event))
        .routes(routes!(deliveries::destinations))
        .routes(routes!(deliveries::failed))
        .routes(routes!(deliveries::replay))
        .routes(routes!(admin::put_context))
        .routes(routes!(admin::health))
        .routes(routes!(admin::ready))
        .routes(routes!(plugins))
        .routes(routes!(rollout::status))
        .routes(routes!(rollout::stage, rollout::withdraw))
        .routes(routes!(rollout::promote))
        .routes(routes!(rollout::rollback))
        .routes(routes!(rollout::dry_run))
        .routes(routes!(rollout::what_if))
        .routes(routes!(metrics))
        .routes(routes!(openapi::openapi_json))
}

/// The span of one request: a server span (`METHOD route`) under the caller's `traceparent`, if
/// it sent one and traces are exported.
fn request_span(req: &Request<Body>) -> tracing::Span {
    let headers = req.headers();
    let id = headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path(),
        correlation_id = %id, trace_id = tracing::field::Empty,
        otel.name = tracing::field::Empty, otel.kind = tracing::field::Empty);
    if trace::enabled() {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(req.uri().path(), |p| p.as_str());
        span.record("otel.name", format!("{} {route}", req.method()));
        span.record("otel.kind", "server");
        let w3c: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), headers.get(k)?.to_str().ok()?.to_string())))
            .collect();
        trace::set_parent(&span, trace::extract(&w3c));
        trace::record_trace_id(&span);
    }
    span
}

/// The gateway's routes and middleware.
pub fn router(state: AppState) -> Router {
    let correlation = HeaderName::from_static(CORRELATION_HEADER);
    let (routes, _) =
        api_routes(utoipa::openapi::OpenApi::default(), Some(&state.ingest)).split_for_parts();
    routes
        .fallback(|| async { error::ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(state)
        // Bodies are read by `extract::read_limited`, with their own limits and deadline.
        .layer(DefaultBodyLimit::disable())
        .layer(PropagateRequestIdLayer::new(correlation.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(correlation, MakeRequestUuid))
}

/// The plugins at a glance (`GET /plugins`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PluginsOverview {
    /// The active versions.
    plugins: Vec<switchyard_runtime::registry::LoadedInfo>,
    /// Event type → plugin (the manifest's `[routes]`).
    routes: std::collections::BTreeMap<String, String>,
    /// The plugin for types not in `routes`.
    default: Option<String>,
    /// Versions refused lately, and why.
    rejections: Vec<switchyard_runtime::registry::Rejection>,
    /// Each plugin's versions and shadow counts (the sampled decisions are in
    /// `GET /plugins/{name}`, behind the token).
    rollout: Vec<switchyard_runtime::registry::PluginStatus>,
}

/// `GET /plugins`: loaded plugins, the type mapping, rejections and rollout counts.
#[utoipa::path(
    get,
    path = "/plugins", operation_id = "listPlugins",
    tag = "plugins",
    responses((status = 200, description = "The plugins.", body = PluginsOverview))
)]
async fn plugins(State(s): State<AppState>) -> Json<PluginsOverview> {
    let (routes, default) = s.plugins.mapping();
    Json(PluginsOverview {
        plugins: s.plugins.loaded(),
        routes,
        default,
        rejections: s.plugins.rejections(),
        rollout: s
            .plugins
            .status()
            .into_iter()
            .map(|mut p| {
                if let Some(c) = &mut p.candidate {
                    c.shadow.samples.clear();
                }
                p
            })
            .collect(),
    })
}

/// `GET /metrics`: Prometheus text format. Queue depths are read at scrape time.
#[utoipa::path(
    get,
    path = "/metrics", operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", content_type = "text/plain", body = String))
)]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    for (prefix, lane) in [("", &s.queue), ("deliveries_", &s.deliveries)] {
        match tokio::time::timeout(Duration::from_secs(2), lane.stats()).await {
            Ok(Ok(stats)) => crate::metrics::queue_depths(prefix, &stats),
            Ok(Err(e)) => tracing::warn!(error = %e, "queue depths unavailable for /metrics"),
            Err(_) => tracing::warn!("queue depths timed out for /metrics"),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::handle().render(),
    )
}
