//! The HTTP API.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::plugin::PluginHost;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub plugins: PluginHost,
}

/// The gateway's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/plugins", get(plugins))
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let ok = s.plugins.is_ready();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ok, "checks": { "plugins": ok } })),
    )
}

async fn plugins(State(s): State<AppState>) -> impl IntoResponse {
    let (routes, default) = s.plugins.mapping();
    Json(json!({
        "plugins": s.plugins.loaded(),
        "routes": routes,
        "default": default,
        "rejections": s.plugins.rejections(),
    }))
}
