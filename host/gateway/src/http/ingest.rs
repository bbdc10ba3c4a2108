//! `POST /events`: verify, validate, append to the queue once, answer 202.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::read_limited;
use super::signature::Verified;
use super::{AppState, CORRELATION_HEADER};
use switchyard_model::event::{IncomingEvent, Job, is_printable_id};
use switchyard_model::trace;
use switchyard_stores::queue::{self, ReplayGuard};
use tracing::Instrument;

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

/// The answer to an accepted event: it is durably queued.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always `true`.
    pub accepted: bool,
    pub event_id: String,
    /// The producer's `x-correlation-id`, or the one the gateway made.
    pub correlation_id: String,
    pub message: String,
    /// Time spent in the gateway, ms.
    pub latency_ms: f64,
}

/// `POST /events`: verify the signature, validate the event, queue it durably, answer 202.
#[utoipa::path(
    post,
    path = "/events", operation_id = "ingestEvent",
    tag = "ingestion",
    request_body(content = super::openapi::EventSubmission, content_type = "application/json"),
    params(("x-correlation-id" = Option<String>, Header, description = "Your id for this request (1 to 128 printable characters); one is made if absent.")),
    security(("hmacSignature" = []), ("standardWebhooks" = [])),
    responses(
        (status = 202, description = "Durably queued; routed asynchronously (`GET /events/{eventId}`). A duplicate `eventId` is accepted and processed once.", body = Accepted,
            headers(("x-correlation-id" = String, description = "The request's correlation id (the one sent, or a new one)."))),
        super::openapi::IngestErrors,
    )
)]
pub async fn ingest(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let client = s.ingest.trusted_proxies.client(peer.ip(), &headers);
    let correlation = match correlation_id(&headers) {
        Ok(c) => c,
        Err(e) => {
            let response = reject(e, None, client);
            crate::metrics::ingest(response.status().as_u16(), started.elapsed().as_secs_f64());
            return response;
        }
    };
    // With traces exported, the checks and the append are an `ingest` span, whose context the
    // job carries through the queue.
    let span = if trace::enabled() {
        let span = tracing::info_span!("ingest", correlation_id = %correlation,
            trace_id = tracing::field::Empty, event_id = tracing::field::Empty);
        trace::record_trace_id(&span);
        span
    } else {
        tracing::Span::none()
    };
    let accepted = accept(&s, &headers, body, &correlation, started).instrument(span);
    let response = match accepted.await {
        Ok(r) => r,
        Err(e) => reject(e.with_correlation(&correlation), Some(&correlation), client),
    };
    crate::metrics::ingest(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

fn reject(e: ApiError, correlation: Option<&str>, client: IpAddr) -> Response {
    tracing::info!(
        correlation_id = correlation.unwrap_or("-"),
        %client,
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
    let body = read_limited(body, headers, s.ingest.body_limit, s.ingest.body_timeout).await?;
    let now_ms = switchyard_model::clock::now_ms();
    let verified = s
        .ingest
        .verifier
        .verify(headers, &body, now_ms / 1000)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string()))?;
    let event = IncomingEvent::parse(&body)
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    tracing::Span::current().record("event_id", event.event_id.as_str());
    // A signed message id is remembered with its body's digest by the queue (shared by every
    // gateway on it), in the same round trip as the append.
    let guard = match verified {
        Verified::Webhook { message_id } => Some(ReplayGuard {
            message_id,
            digest: hex::encode(Sha256::digest(&body)),
            ttl: s.ingest.verifier.replay_window(),
        }),
        Verified::Hmac => None,
    };
    let job = Job {
        event_id: event.event_id,
        event_type: event.event_type,
        correlation_id: correlation.to_string(),
        payload: event.payload,
        received_at_ms: now_ms,
        attempt: 1,
        replays: 0,
        partition_key: event.partition_key,
        trace: trace::carry(&tracing::Span::current(), now_ms),
        ..Job::default()
    };
    // The deliveries already waiting for their destinations bound what is taken in: past
    // DELIVERY_MAX_DEPTH the producer is asked to come back (a slow destination must not grow
    // the lane without bound).
    let max = s.ingest.delivery_max_depth;
    let backlog = s.delivery_stats.backlog.load(Ordering::Relaxed);
    if max > 0 && backlog >= max {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "delivery_backlog_full",
            format!(
                "{backlog} deliveries are waiting for their destinations (DELIVERY_MAX_DEPTH {max}); retry later"
            ),
        )
        .retry_after(5));
    }
    // A bounded wait: a producer gets 503 rather than a hang when the queue is slow or gone.
    // (If the append lands after the deadline, the producer's retry is a counted duplicate.)
    tokio::time::timeout(
        s.ingest.enqueue_timeout,
        s.queue.enqueue(&job, guard.as_ref()),
    )
    .await
    .unwrap_or_else(|_| {
        Err(queue::Error::Unavailable(
            "no answer within the enqueue deadline".into(),
        ))
    })?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        correlation_id = correlation,
        event_id = %job.event_id,
        event_type = %job.event_type,
        latency_ms,
        "event accepted"
    );
    let body = Accepted {
        accepted: true,
        event_id: job.event_id,
        correlation_id: correlation.to_string(),
        message: "Event queued for processing".to_string(),
        latency_ms: (latency_ms * 100.0).round() / 100.0,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(correlation) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    Ok(response)
}
