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
pub mod rollout;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Router, body::Body};
use serde_json::json;
use tower_governor::GovernorLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

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

/// The gateway's routes and middleware.
pub fn router(state: AppState) -> Router {
    let correlation = HeaderName::from_static(CORRELATION_HEADER);
    let mut ingest = Router::new().route("/events", post(ingest::ingest));
    if state.ingest.rate_limit > 0 {
        let config = client::rate_limit(
            state.ingest.rate_limit,
            state.ingest.rate_window,
            state.ingest.trusted_proxies.clone(),
        );
        ingest = ingest.layer(GovernorLayer {
            config: Arc::new(config),
        });
    }
    Router::new()
        .merge(ingest)
        .route("/events/stats", get(admin::stats))
        .route("/events/failed", get(admin::failed))
        .route("/events/dlq/replay", post(admin::replay))
        .route("/events/{event_id}", get(admin::event))
        .route("/destinations", get(deliveries::destinations))
        .route("/deliveries/failed", get(deliveries::failed))
        .route("/deliveries/dlq/replay", post(deliveries::replay))
        .route("/context/{kind}/{id}", axum::routing::put(admin::put_context))
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}", get(rollout::status))
        .route(
            "/plugins/{name}/candidate",
            axum::routing::put(rollout::stage).delete(rollout::withdraw),
        )
        .route("/plugins/{name}/promote", post(rollout::promote))
        .route("/plugins/{name}/rollback", post(rollout::rollback))
        .route("/plugins/{name}/dry-run", post(rollout::dry_run))
        .route("/plugins/{name}/what-if", post(rollout::what_if))
        .route("/metrics", get(metrics))
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
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            let id = req.headers().get(CORRELATION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), correlation_id = %id)
        }))
        .layer(SetRequestIdLayer::new(correlation, MakeRequestUuid))
}

async fn plugins(State(s): State<AppState>) -> impl IntoResponse {
    let (routes, default) = s.plugins.mapping();
    Json(json!({
        "plugins": s.plugins.loaded(),
        "routes": routes,
        "default": default,
        "rejections": s.plugins.rejections(),
        // Counts only: the sampled decisions are behind the token, in `GET /plugins/{name}`.
        "rollout": s.plugins.status().into_iter().map(|mut p| {
            if let Some(c) = &mut p.candidate {
                c.shadow.samples.clear();
            }
            p
        }).collect::<Vec<_>>(),
    }))
}

/// `GET /metrics`: Prometheus text format. Queue depths are read at scrape time.
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
