//! Event status, queue statistics, the dead-letter queue and its replay, health and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{MaybeAdmin, RequireAdmin};
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, LimitedBody, json_body};
use switchyard_model::event::is_printable_id;
use switchyard_stores::queue::{Queue, ReplayFilter};

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

pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: 200 when the backends answer and a plugin is loaded. The body also says how
/// deep the dead-letter queue is and what the operator should know about the set-up.
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
    let body = json!({
        "ready": ok,
        "checks": { "queue": queue, "stateStore": state, "plugins": plugins },
        "deadLetters": dead_letters,
        "dlqMaxDepth": s.dlq_max_depth,
        "warnings": warnings,
    });
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

/// Fields of an event record anyone who knows the id may read: its state and timestamps.
const PUBLIC_FIELDS: &[&str] = &["eventId", "state", "receivedAtMs", "updatedAtMs", "queued"];

/// `GET /events/{eventId}`: the whole record with the admin token; without one, only the state
/// and timestamps (no payload, decision, error text or history).
pub async fn event(
    MaybeAdmin(admin): MaybeAdmin,
    State(s): State<AppState>,
    ApiPath(event_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let record = match bounded("the state store", s.state.get(&event_id)).await? {
        Some(record) => serde_json::to_value(record).unwrap_or_default(),
        // Accepted but not picked up by a worker yet.
        None => match bounded("the queue", s.queue.accepted_at(&event_id)).await? {
            Some(received) => json!({
                "eventId": event_id,
                "state": "ROUTING_PENDING",
                "queued": true,
                "attempts": 0,
                "history": [],
                "receivedAtMs": received,
                "updatedAtMs": received,
            }),
            None => {
                return Err(ApiError::not_found("not_found", "no event with this id"));
            }
        },
    };
    if admin {
        return Ok(Json(record).into_response());
    }
    let public: serde_json::Map<String, Value> = PUBLIC_FIELDS
        .iter()
        .filter_map(|k| record.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    Ok(Json(public).into_response())
}

pub async fn stats(_: RequireAdmin, State(s): State<AppState>) -> Result<Response, ApiError> {
    let (queue, deliveries, states) = tokio::join!(
        bounded("the queue", s.queue.stats()),
        bounded("the queue", s.deliveries.stats()),
        bounded("the state store", s.state.counts())
    );
    let (queue, deliveries, states) = (queue?, deliveries?, states?);
    Ok(Json(json!({
        "ready": queue.ready,
        "inFlight": queue.in_flight,
        "delayed": queue.delayed,
        "deadLettered": queue.dead_lettered,
        "pending": states.pending,
        "routed": states.routed,
        "failed": states.failed,
        "workers": s.worker_stats.snapshot(),
        "deliveries": {
            "ready": deliveries.ready,
            "inFlight": deliveries.in_flight,
            "delayed": deliveries.delayed,
            "deadLettered": deliveries.dead_lettered,
            "pool": s.delivery_stats.snapshot(),
        },
    }))
    .into_response())
}

/// A page of dead letters: `?limit=&cursor=`.
#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn failed(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, ApiError> {
    dead_letters(&*s.queue, page).await
}

/// A page of a lane's dead letters, oldest first.
pub(super) async fn dead_letters(queue: &dyn Queue, page: Page) -> Result<Response, ApiError> {
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
            let mut item = json!({
                "id": l.id,
                "eventId": l.job.event_id,
                "type": l.job.event_type,
                "correlationId": l.job.correlation_id,
                "payload": serde_json::from_str::<Value>(&l.job.payload).unwrap_or_default(),
                "attempts": l.job.attempt,
                "replays": l.job.replays,
                "error": l.error,
                "errorKind": l.error_kind,
                "failedAtMs": l.failed_at_ms,
                "receivedAtMs": l.job.received_at_ms,
            });
            if let Some(target) = &l.job.delivery {
                item["destination"] = json!(target.destination);
                item["webhookId"] = json!(target.webhook_id);
            }
            item
        })
        .collect();
    Ok(Json(json!({ "items": items, "nextCursor": next })).into_response())
}

pub async fn replay(
    _: RequireAdmin,
    State(s): State<AppState>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    replay_lane(&*s.queue, &body, false).await
}

/// Replays a lane's dead letters matching the filter in `body`; a `destination` filter only
/// where the lane holds deliveries (elsewhere it would silently match nothing).
pub(super) async fn replay_lane(
    queue: &dyn Queue,
    body: &[u8],
    deliveries: bool,
) -> Result<Response, ApiError> {
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
    Ok(Json(json!({ "replayed": ids.len(), "eventIds": ids })).into_response())
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
