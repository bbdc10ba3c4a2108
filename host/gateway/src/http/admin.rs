//! Event status, queue statistics, the dead-letter queue and its replay, health and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{MaybeAdmin, RequireAdmin};
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, LimitedBody, json_body};
use switchyard_delivery::pool::DeliverySnapshot;
use switchyard_model::event::is_printable_id;
use switchyard_model::record::{EventRecord, EventState, StateCounts};
use switchyard_stores::queue::{Queue, QueueStats, ReplayFilter};

use crate::worker::WorkerSnapshot;

/// Longest wait for a backend in an admin endpoint before answering 503.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `fut` within [`ADMIN_TIMEOUT`], as an API result.
async fn bounded<T, E: Into<ApiError>>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(ADMIN_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ApiError::unavailable(what, &"no answer in time")),
    }
}

/// `GET /health`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process serves.
    status: &'static str,
}

/// `GET /health`: liveness (the process answers).
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations",
    responses((status = 200, description = "The gateway is up.", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /ready`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    ready: bool,
    checks: ReadinessChecks,
    /// Entries in the dead-letter queue (`null` when the queue did not answer).
    dead_letters: Option<u64>,
    /// `DLQ_MAX_DEPTH` (0: no limit).
    dlq_max_depth: u64,
    /// What the operator should know about the set-up.
    warnings: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessChecks {
    queue: bool,
    state_store: bool,
    plugins: bool,
}

/// `GET /ready`: 200 when the backends answer and a plugin is loaded. The body also says how
/// deep the dead-letter queue is and what the operator should know about the set-up.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "operations", responses(
    (status = 200, description = "Ready: the queue and the state store answer and a plugin is loaded.", body = Readiness),
    (status = 503, description = "Not ready (the checks say what is missing).", body = Readiness,
        headers(("retry-after" = u64, description = "Seconds to wait before asking again."))),
))]
pub async fn ready(State(s): State<AppState>) -> Response {
    let (queue, state, stats) = tokio::join!(
        tokio::time::timeout(ADMIN_TIMEOUT, s.queue.ping()),
        tokio::time::timeout(ADMIN_TIMEOUT, s.state.ping()),
        // Depths are shown, not judged: a queue that answers is ready.
        tokio::time::timeout(ADMIN_TIMEOUT, s.queue.stats())
    );
    let queue = matches!(queue, Ok(Ok(())));
    let state = matches!(state, Ok(Ok(())));
    let plugins = s.plugins.is_ready();
    let ok = queue && state && plugins;
    let mut warnings = s.queue.warnings();
    let dead_letters = stats.ok().and_then(Result::ok).map(|q| q.dead_lettered);
    if s.dlq_max_depth > 0
        && let Some(n) = dead_letters
        && n >= s.dlq_max_depth
    {
        warnings.push(format!(
            "the dead-letter queue holds {n} entries (DLQ_MAX_DEPTH {}): new events are refused with 503 dlq_full until it is replayed or drained",
            s.dlq_max_depth
        ));
    }
    let body = Readiness {
        ready: ok,
        checks: ReadinessChecks {
            queue,
            state_store: state,
            plugins,
        },
        dead_letters,
        dlq_max_depth: s.dlq_max_depth,
        warnings,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, Json(body)).into_response();
    if !ok {
        response.headers_mut().insert(header::RETRY_AFTER, 5.into());
    }
    response
}

/// An event accepted but not picked up by a worker yet.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueuedEvent {
    event_id: String,
    /// `ROUTING_PENDING`.
    state: EventState,
    /// `true`: still in the queue.
    queued: bool,
    attempts: u32,
    #[schema(value_type = Vec<Object>, max_items = 0)]
    history: Vec<Value>,
    received_at_ms: u64,
    updated_at_ms: u64,
}

/// What anyone who knows an event's id may read: its state and timestamps.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicEvent {
    event_id: String,
    state: EventState,
    received_at_ms: u64,
    updated_at_ms: u64,
    /// Present (`true`) while the event waits in the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    queued: Option<bool>,
}

/// `GET /events/{eventId}`: the record (admin token), a queued event, or the public view.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventAnswer {
    Record(Box<EventRecord>),
    Queued(QueuedEvent),
    Public(PublicEvent),
}

/// `GET /events/{eventId}`: the whole record with the admin token; without one, only the state
/// and timestamps (no payload, decision, error text or history).
#[utoipa::path(get, path = "/events/{eventId}", operation_id = "getEvent", tag = "events",
    params(("eventId" = String, Path, description = "The event's `eventId`.", example = "evt-1001")),
    security((), ("adminToken" = [])),
    responses(
        (status = 200, description = "The event: its whole record with the admin token, its state and timestamps without.", body = EventAnswer),
        super::openapi::EventErrors,
    ))]
pub async fn event(
    MaybeAdmin(admin): MaybeAdmin,
    State(s): State<AppState>,
    ApiPath(event_id): ApiPath<String>,
) -> Result<Json<EventAnswer>, ApiError> {
    let answer = match bounded("the state store", s.state.get(&event_id)).await? {
        Some(record) if admin => EventAnswer::Record(Box::new(record)),
        Some(r) => EventAnswer::Public(PublicEvent {
            event_id: r.event_id,
            state: r.state,
            received_at_ms: r.received_at_ms,
            updated_at_ms: r.updated_at_ms,
            queued: None,
        }),
        // Accepted but not picked up by a worker yet.
        None => match bounded("the queue", s.queue.accepted_at(&event_id)).await? {
            Some(received) if admin => EventAnswer::Queued(QueuedEvent {
                event_id,
                state: EventState::RoutingPending,
                queued: true,
                attempts: 0,
                history: Vec::new(),
                received_at_ms: received,
                updated_at_ms: received,
            }),
            Some(received) => EventAnswer::Public(PublicEvent {
                event_id,
                state: EventState::RoutingPending,
                received_at_ms: received,
                updated_at_ms: received,
                queued: Some(true),
            }),
            None => return Err(ApiError::not_found("not_found", "no event with this id")),
        },
    };
    Ok(Json(answer))
}

/// `GET /events/stats`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// The events queue.
    #[serde(flatten)]
    queue: QueueStats,
    /// Records per state in the state store.
    #[serde(flatten)]
    states: StateCounts,
    /// This gateway's worker counters since it started.
    workers: WorkerSnapshot,
    deliveries: DeliveryLane,
}

/// The deliveries lane and this gateway's delivery pool.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryLane {
    #[serde(flatten)]
    lane: QueueStats,
    pool: DeliverySnapshot,
}

/// `GET /events/stats`: queue depths, records per state, worker and delivery counters.
#[utoipa::path(get, path = "/events/stats", operation_id = "getStats", tag = "events",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The statistics.", body = Stats),
        super::openapi::ReadErrors,
    ))]
pub async fn stats(_: RequireAdmin, State(s): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let (queue, deliveries, states) = tokio::join!(
        bounded("the queue", s.queue.stats()),
        bounded("the queue", s.deliveries.stats()),
        bounded("the state store", s.state.counts())
    );
    Ok(Json(Stats {
        queue: queue?,
        states: states?,
        workers: s.worker_stats.snapshot(),
        deliveries: DeliveryLane {
            lane: deliveries?,
            pool: s.delivery_stats.snapshot(),
        },
    }))
}

/// A page of dead letters: `?limit=&cursor=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Entries per page, 1 to 500 (default 50; outside the range, the nearest bound).
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One dead letter.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its position in the dead-letter queue (a cursor).
    id: String,
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    correlation_id: String,
    /// The event's payload (a delivery's: the payload it delivers).
    payload: Value,
    attempts: u32,
    /// Times it was replayed before.
    replays: u32,
    error: String,
    /// `transient`, `permanent`, `trap`, `timeout`, `http_status`, …
    error_kind: String,
    failed_at_ms: u64,
    received_at_ms: u64,
    /// The destination (deliveries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    /// The Standard Webhooks message id (deliveries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_id: Option<String>,
}

/// A page of dead letters, oldest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    items: Vec<DeadLetter>,
    /// The cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// `GET /events/failed`: the dead-letter queue, oldest first.
#[utoipa::path(get, path = "/events/failed", operation_id = "listDeadLetters", tag = "events",
    params(Page),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        super::openapi::PageErrors,
    ))]
pub async fn failed(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    dead_letters(&*s.queue, page).await
}

/// A page of a lane's dead letters, oldest first.
pub(super) async fn dead_letters(
    queue: &dyn Queue,
    page: Page,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let items = bounded(
        "the queue",
        queue.dead_letters(page.cursor.as_deref(), limit),
    )
    .await?;
    let next = if items.len() == limit {
        items.last().map(|l| l.id.clone())
    } else {
        None
    };
    let items: Vec<_> = items
        .into_iter()
        .map(|l| {
            let (destination, webhook_id) = match l.job.delivery {
                Some(target) => (Some(target.destination), Some(target.webhook_id)),
                None => (None, None),
            };
            DeadLetter {
                id: l.id,
                payload: serde_json::from_str::<Value>(&l.job.payload).unwrap_or_default(),
                event_id: l.job.event_id,
                event_type: l.job.event_type,
                correlation_id: l.job.correlation_id,
                attempts: l.job.attempt,
                replays: l.job.replays,
                error: l.error,
                error_kind: l.error_kind,
                failed_at_ms: l.failed_at_ms,
                received_at_ms: l.job.received_at_ms,
                destination,
                webhook_id,
            }
        })
        .collect();
    Ok(Json(DeadLetterPage {
        items,
        next_cursor: next,
    }))
}

/// What a replay did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// How many dead letters went back to the queue.
    replayed: usize,
    event_ids: Vec<String>,
}

/// `POST /events/dlq/replay`: puts dead letters back in the queue (all, or those matching
/// `eventIds` and/or `type`), with their attempts reset.
#[utoipa::path(post, path = "/events/dlq/replay", operation_id = "replayDeadLetters", tag = "events",
    request_body(content = ReplayFilter, description = "Which dead letters (an empty object or body: all).", content_type = "application/json",
        example = json!({"type": "ORDER_CREATED"})),
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
    replay_lane(&*s.queue, &body, false).await
}

/// Replays a lane's dead letters matching the filter in `body`; a `destination` filter only
/// where the lane holds deliveries (elsewhere it would silently match nothing).
pub(super) async fn replay_lane(
    queue: &dyn Queue,
    body: &[u8],
    deliveries: bool,
) -> Result<Json<Replayed>, ApiError> {
    let filter: ReplayFilter = json_body(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_filter",
            format!(
                "body must be {{\"eventIds\": [..]}}, {{\"type\": ..}} and/or {{\"destination\": ..}}: {}",
                e.message
            ),
        )
    })?;
    if filter.destination.is_some() && !deliveries {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "a destination filters deliveries: use POST /deliveries/dlq/replay",
        ));
    }
    let ids = queue.replay(&filter).await?;
    tracing::info!(replayed = ids.len(), filter = ?filter, "dead-letter queue replayed");
    Ok(Json(Replayed {
        replayed: ids.len(),
        event_ids: ids,
    }))
}

/// Deepest nesting of a live document (MongoDB refuses documents nested past 100 levels).
const MAX_DOCUMENT_DEPTH: usize = 32;

/// Why `doc` cannot be stored as a live document on every backend: a key that starts with `$`
/// or holds a NUL, an integer outside the signed 64-bit range, or nesting past
/// [`MAX_DOCUMENT_DEPTH`].
fn check_document(doc: &Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DOCUMENT_DEPTH {
        return Err(format!("nested deeper than {MAX_DOCUMENT_DEPTH} levels"));
    }
    match doc {
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.starts_with('$') || k.contains('\0') {
                return Err(format!("key {k:?} starts with `$` or holds NUL"));
            }
            check_document(v, depth + 1)
        }),
        Value::Array(items) => items.iter().try_for_each(|v| check_document(v, depth + 1)),
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => {
            Err(format!("integer {n} is outside the signed 64-bit range"))
        }
        _ => Ok(()),
    }
}

/// `PUT /context/{kind}/{id}`: creates or replaces a live `order` / `shipment` document that
/// plugins read through `context.lookup` (admin token required).
#[utoipa::path(put, path = "/context/{kind}/{id}", operation_id = "putContext", tag = "context",
    params(
        ("kind" = String, Path, description = "`order` or `shipment`.", pattern = "^(order|shipment)$", example = "order"),
        ("id" = String, Path, description = "The document's id (1 to 128 printable characters).", example = "12345"),
    ),
    request_body(content = Object, description = "The document: a JSON object (no key starting with `$` or holding NUL, integers within 64 bits, nested at most 32 levels).", content_type = "application/json",
        example = json!({"orderId": "12345", "status": "PAID", "carrier": "dhl"})),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Stored; lookups see it from now on."),
        super::openapi::ContextErrors,
    ))]
pub async fn put_context(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    if kind != "order" && kind != "shipment" {
        return Err(ApiError::not_found(
            "not_found",
            "kind must be `order` or `shipment`",
        ));
    }
    if !is_printable_id(&id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            "id must be 1 to 128 printable characters",
        ));
    }
    let doc: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::bad_request("invalid_document", "body must be a JSON object"))?;
    check_document(&doc, 0).map_err(|e| ApiError::bad_request("invalid_document", e))?;
    bounded(
        "the state store",
        s.state.put_context(&kind, &id, &doc.to_string()),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_every_backend_can_store() {
        assert!(check_document(&json!({"a": {"b": [1, -2, 1.5, "x", null]}}), 0).is_ok());
        for bad in [
            json!({"$where": 1}),
            json!({"a": {"$set": 1}}),
            json!({"a\u{0}b": 1}),
            json!({"n": 9_223_372_036_854_775_808_u64}),
        ] {
            assert!(check_document(&bad, 0).is_err(), "{bad}");
        }
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "d": deep });
        }
        assert!(check_document(&deep, 0).unwrap_err().contains("nested"));
    }
}
