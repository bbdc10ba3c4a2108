//! Delivery's admin endpoints: the destinations in force with their circuits, and the
//! deliveries dead-letter queue with its replay (which sends the delivery again, without routing
//! the event again).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::admin::{Page, dead_letters, replay_lane};
use super::auth::RequireAdmin;
use super::error::ApiError;
use super::extract::{ApiQuery, LimitedBody};

/// `GET /destinations`: each declared destination with its circuit state, deliveries under way
/// and recent success rate; `rejected` says why the manifest's latest `[destinations]` were not
/// applied, if they were not.
pub async fn destinations(_: RequireAdmin, State(s): State<AppState>) -> Response {
    Json(json!({
        "destinations": s.destinations.status(),
        "rejected": s.destinations.rejected(),
    }))
    .into_response()
}

/// `GET /deliveries/failed?limit=&cursor=`: the deliveries dead-letter queue, oldest first.
pub async fn failed(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, ApiError> {
    dead_letters(&*s.deliveries, page).await
}

/// `POST /deliveries/dlq/replay`: sends dead-lettered deliveries again (all, or those matching
/// `eventIds`, `type`, `destination`).
pub async fn replay(
    _: RequireAdmin,
    State(s): State<AppState>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    replay_lane(&*s.deliveries, &body, true).await
}
