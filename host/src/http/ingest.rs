//! `POST /events`: verify, validate, append to the queue once, answer 202.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::{AppState, CORRELATION_HEADER};
use crate::event::{IncomingEvent, Job, is_printable_id};
use crate::queue;

/// The correlation id of a request: the producer's (validated) or the one the request-id layer
/// generated.
pub fn correlation_id(headers: &HeaderMap) -> Result<String, ApiError> {
    let mut values = headers.get_all(CORRELATION_HEADER).iter();
    let value = values.next().and_then(|v| v.to_str().ok()).unwrap_or("");
    if values.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "x-correlation-id is given more than once",
        ));
    }
    if !is_printable_id(value) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "x-correlation-id must be 1 to 128 printable characters",
        ));
    }
    Ok(value.to_string())
}

fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    match (values.next().and_then(|v| v.to_str().ok()), values.next()) {
        (Some(ct), None) => {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        }
        _ => false,
    }
}

pub async fn ingest(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let correlation = match correlation_id(&headers) {
        Ok(c) => c,
        Err(e) => {
            let response = reject(e, None);
            crate::metrics::ingest(response.status().as_u16(), started.elapsed().as_secs_f64());
            return response;
        }
    };
    let response = match accept(&s, &headers, body, &correlation, started).await {
        Ok(r) => r,
        Err(e) => reject(e.with_correlation(&correlation), Some(&correlation)),
    };
    crate::metrics::ingest(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

fn reject(e: ApiError, correlation: Option<&str>) -> Response {
    tracing::info!(
        correlation_id = correlation.unwrap_or("-"),
        status = e.status.as_u16(),
        code = e.code,
        reason = %e.message,
        "event refused"
    );
    e.into_response()
}

async fn accept(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    correlation: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ));
    }
    let body = read_body(body, headers, s.ingest.body_limit, s.ingest.body_timeout).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    s.ingest
        .verifier
        .verify(headers, &body, now.as_secs())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string()))?;
    let event = IncomingEvent::parse(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", e.to_string()))?;
    let job = Job {
        event_id: event.event_id,
        event_type: event.event_type,
        correlation_id: correlation.to_string(),
        payload: event.payload,
        received_at_ms: now.as_millis() as u64,
        attempt: 1,
        replays: 0,
    };
    // A bounded wait: a producer gets 503 rather than a hang when the queue is slow or gone.
    // (If the append lands after the deadline, the producer's retry is a counted duplicate.)
    let appended = tokio::time::timeout(s.ingest.enqueue_timeout, s.queue.enqueue(&job))
        .await
        .unwrap_or_else(|_| {
            Err(queue::Error::Unavailable(
                "no answer within the enqueue deadline".into(),
            ))
        });
    appended.map_err(|e| match e {
        queue::Error::Full(depth) => {
            tracing::warn!(
                correlation_id = correlation,
                depth,
                "queue full: shedding load"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the queue is full; retry later",
            )
            .retry_after(5)
        }
        other => ApiError::unavailable("the queue", &other),
    })?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        correlation_id = correlation,
        event_id = %job.event_id,
        event_type = %job.event_type,
        latency_ms,
        "event accepted"
    );
    let body = json!({
        "accepted": true,
        "eventId": job.event_id,
        "correlationId": correlation,
        "message": "Event queued for processing",
        "latencyMs": (latency_ms * 100.0).round() / 100.0,
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(correlation) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    Ok(response)
}

/// Reads the whole body: 413 as soon as it is known to exceed `limit` (from `Content-Length`, or
/// while streaming), 408 when it does not arrive within `deadline` in total (slow clients cannot
/// hold a connection open by trickling bytes).
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {} ms", deadline.as_millis()),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e))
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the request body could not be read",
        )),
    }
}
