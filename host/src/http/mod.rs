//! The HTTP API: ingestion, event status, admin, health.

pub mod admin;
pub mod error;
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
use tower_governor::governor::GovernorConfigBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::plugin::PluginHost;
use crate::queue::Queue;
use crate::state::StateStore;
use crate::worker::WorkerStats;

/// Header carrying the correlation id, in requests and responses.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Ingestion settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub verifier: signature::Verifier,
    pub body_limit: usize,
    /// Longest time to receive a whole body.
    pub body_timeout: Duration,
    /// Longest wait for the queue append before answering 503.
    pub enqueue_timeout: Duration,
    /// Requests per client IP per window (0 = no limit).
    pub rate_limit: u32,
    pub rate_window: Duration,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub plugins: PluginHost,
    pub queue: Arc<dyn Queue>,
    pub state: Arc<dyn StateStore>,
    pub ingest: Arc<IngestSettings>,
    pub admin_token: Option<Arc<str>>,
    pub worker_stats: Arc<WorkerStats>,
}

/// The gateway's routes and middleware.
pub fn router(state: AppState) -> Router {
    let correlation = HeaderName::from_static(CORRELATION_HEADER);
    let mut ingest = Router::new()
        .route("/events", post(ingest::ingest))
        // The handler reads the body itself, with its own limit and deadline.
        .layer(DefaultBodyLimit::disable());
    if state.ingest.rate_limit > 0 {
        let per_request = state.ingest.rate_window / state.ingest.rate_limit;
        let config = GovernorConfigBuilder::default()
            .period(per_request.max(Duration::from_nanos(1)))
            .burst_size(state.ingest.rate_limit)
            .error_handler(|e| {
                let wait = match &e {
                    tower_governor::GovernorError::TooManyRequests { wait_time, .. } => *wait_time,
                    _ => 1,
                };
                error::ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests",
                )
                .retry_after(wait.max(1))
                .into_response()
            })
            .finish()
            .expect("valid rate limit");
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
        .route("/context/{kind}/{id}", axum::routing::put(admin::put_context))
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}", get(rollout::status))
        .route(
            "/plugins/{name}/candidate",
            axum::routing::put(rollout::stage)
                .delete(rollout::withdraw)
                .layer(DefaultBodyLimit::max(rollout::MAX_COMPONENT_BYTES)),
        )
        .route("/plugins/{name}/promote", post(rollout::promote))
        .route("/plugins/{name}/rollback", post(rollout::rollback))
        .route("/plugins/{name}/dry-run", post(rollout::dry_run))
        .route("/plugins/{name}/what-if", post(rollout::what_if))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error::ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
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
    match tokio::time::timeout(Duration::from_secs(2), s.queue.stats()).await {
        Ok(Ok(stats)) => crate::metrics::queue_depths(&stats),
        Ok(Err(e)) => tracing::warn!(error = %e, "queue depths unavailable for /metrics"),
        Err(_) => tracing::warn!("queue depths timed out for /metrics"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::handle().render(),
    )
}
