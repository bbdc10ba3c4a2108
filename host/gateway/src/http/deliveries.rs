//! Delivery's admin endpoints: the destinations in force with their circuits, and the
//! deliveries dead-letter queue with its replay (which sends the delivery again, without routing
//! the event again).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::admin::{DeadLetterPage, Page, Replayed, dead_letters, replay_lane};
use super::auth::RequireAdmin;
use super::error::ApiError;
use super::extract::{ApiQuery, LimitedBody};
use switchyard_delivery::registry::DestinationStatus;
use switchyard_stores::queue::ReplayFilter;

/// `GET /destinations`: each declared destination with its circuit state, deliveries under way
/// and recent success rate; `rejected` says why the manifest's latest `[destinations]` were not
/// applied, if they were not.
#[utoipa::path(get, path = "/destinations", operation_id = "listDestinations", tag = "deliveries",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The destinations.", body = DestinationsView),
        (status = 401, response = super::openapi::Unauthorized),
    ))]
pub async fn destinations(_: RequireAdmin, State(s): State<AppState>) -> Json<DestinationsView> {
    Json(DestinationsView {
        destinations: s.destinations.status(),
        rejected: s.destinations.rejected(),
    })
}

/// `GET /destinations`'s answer.
#[derive(Serialize, ToSchema)]
pub struct DestinationsView {
    destinations: Vec<DestinationStatus>,
    /// Why the manifest's latest `[destinations]` were not applied (`null`: they were).
    rejected: Option<String>,
}

/// `GET /deliveries/failed?limit=&cursor=`: the deliveries dead-letter queue, oldest first.
#[utoipa::path(get, path = "/deliveries/failed", operation_id = "listFailedDeliveries", tag = "deliveries",
    params(Page),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "A page of dead-lettered deliveries.", body = DeadLetterPage),
        super::openapi::PageErrors,
    ))]
pub async fn failed(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    dead_letters(&*s.deliveries, page).await
}

/// `POST /deliveries/dlq/replay`: sends dead-lettered deliveries again (all, or those matching
/// `eventIds`, `type`, `destination`).
#[utoipa::path(post, path = "/deliveries/dlq/replay", operation_id = "replayFailedDeliveries", tag = "deliveries",
    request_body(content = ReplayFilter, description = "Which deliveries (an empty object or body: all).", content_type = "application/json",
        example = json!({"destination": "orders"})),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Replayed.", body = Replayed),
        super::openapi::BodyErrors,
    ))]
pub async fn replay(
    _: RequireAdmin,
    State(s): State<AppState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Replayed>, ApiError> {
    replay_lane(&*s.deliveries, &body, true).await
}
