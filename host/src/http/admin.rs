//! Event status, queue statistics, the dead-letter queue and its replay, health and readiness.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::queue::ReplayFilter;

/// Longest wait for a backend in an admin endpoint before answering 503.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks the bearer token. With no `ADMIN_TOKEN` configured, `required_always` endpoints are
/// refused and the others are open.
pub(super) fn authorize(
    s: &AppState,
    headers: &HeaderMap,
    required_always: bool,
) -> Result<(), ApiError> {
    let Some(expected) = s.admin_token.as_deref() else {
        return if required_always {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "set ADMIN_TOKEN to enable this endpoint",
            ))
        } else {
            Ok(())
        };
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests, so neither the length nor the content leaks through timing.
    let ok: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ))
    }
}

pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(s): State<AppState>) -> Response {
    let (queue, state) = tokio::join!(s.queue.ping(), s.state.ping());
    let plugins = s.plugins.is_ready();
    let ok = queue.is_ok() && state.is_ok() && plugins;
    let body = json!({
        "ready": ok,
        "checks": { "queue": queue.is_ok(), "stateStore": state.is_ok(), "plugins": plugins },
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

pub async fn event(
    State(s): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(record) = s
        .state
        .get(&event_id)
        .await
        .map_err(|e| ApiError::unavailable("the state store", &e))?
    {
        return Ok(Json(record).into_response());
    }
    // Accepted but not picked up by a worker yet.
    if let Some(received) = s
        .queue
        .accepted_at(&event_id)
        .await
        .map_err(|e| ApiError::unavailable("the queue", &e))?
    {
        return Ok(Json(json!({
            "eventId": event_id,
            "state": "ROUTING_PENDING",
            "queued": true,
            "attempts": 0,
            "history": [],
            "receivedAtMs": received,
        }))
        .into_response());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no event with this id",
    ))
}

pub async fn stats(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, false)?;
    let (queue, states) = tokio::join!(
        tokio::time::timeout(ADMIN_TIMEOUT, s.queue.stats()),
        tokio::time::timeout(ADMIN_TIMEOUT, s.state.counts())
    );
    let queue = queue
        .map_err(|e| ApiError::unavailable("the queue", &e))?
        .map_err(|e| ApiError::unavailable("the queue", &e))?;
    let states = states
        .map_err(|e| ApiError::unavailable("the state store", &e))?
        .map_err(|e| ApiError::unavailable("the state store", &e))?;
    Ok(Json(json!({
        "ready": queue.ready,
        "inFlight": queue.in_flight,
        "delayed": queue.delayed,
        "deadLettered": queue.dead_lettered,
        "pending": states.pending,
        "routed": states.routed,
        "failed": states.failed,
        "workers": s.worker_stats.snapshot(),
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn failed(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, false)?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let items = s
        .queue
        .dead_letters(page.cursor.as_deref(), limit)
        .await
        .map_err(|e| ApiError::unavailable("the queue", &e))?;
    let next = if items.len() == limit {
        items.last().map(|l| l.id.clone())
    } else {
        None
    };
    let items: Vec<_> = items
        .into_iter()
        .map(|l| {
            json!({
                "id": l.id,
                "eventId": l.job.event_id,
                "type": l.job.event_type,
                "correlationId": l.job.correlation_id,
                "payload": serde_json::from_str::<serde_json::Value>(&l.job.payload).unwrap_or_default(),
                "attempts": l.job.attempt,
                "replays": l.job.replays,
                "error": l.error,
                "errorKind": l.error_kind,
                "failedAtMs": l.failed_at_ms,
                "receivedAtMs": l.job.received_at_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "nextCursor": next })).into_response())
}

pub async fn replay(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, true)?;
    let filter: ReplayFilter = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayFilter::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_filter",
                format!("body must be {{\"eventIds\": [..]}} and/or {{\"type\": ..}}: {e}"),
            )
        })?
    };
    let ids = s
        .queue
        .replay(&filter)
        .await
        .map_err(|e| ApiError::unavailable("the queue", &e))?;
    tracing::info!(replayed = ids.len(), filter = ?filter, "dead-letter queue replayed");
    Ok(Json(json!({ "replayed": ids.len(), "eventIds": ids })).into_response())
}

/// `PUT /context/{kind}/{id}`: creates or replaces a live `order` / `shipment` document that
/// plugins read through `context.lookup` (admin token required).
pub async fn put_context(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, true)?;
    if kind != "order" && kind != "shipment" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "kind must be `order` or `shipment`",
        ));
    }
    if !crate::event::is_printable_id(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "id must be 1 to 128 printable characters",
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_document",
                "body must be a JSON object",
            )
        })?;
    s.state
        .put_context(&kind, &id, &doc.to_string())
        .await
        .map_err(|e| ApiError::unavailable("the state store", &e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
