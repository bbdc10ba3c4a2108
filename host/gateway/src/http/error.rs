//! API errors: a status, a stable code, a message safe to show, and the correlation id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::openapi::{ErrorBody, ErrorDetail};

/// An error answer. Internals never reach the body; they go to the log with the correlation id.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub correlation_id: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            correlation_id: None,
            retry_after_secs: None,
        }
    }

    pub fn with_correlation(mut self, id: &str) -> Self {
        self.correlation_id = Some(id.to_string());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 503 for a backend that cannot be reached; the detail is logged, not returned.
    pub fn unavailable(what: &str, detail: &dyn std::fmt::Display) -> Self {
        tracing::warn!(backend = what, error = %detail, "backend unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unavailable; retry later"),
        )
        .retry_after(5)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
            correlation_id: self.correlation_id,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl ApiError {
    /// 400 with a stable code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with a message that says what to send.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl From<switchyard_stores::queue::Error> for ApiError {
    fn from(e: switchyard_stores::queue::Error) -> Self {
        use switchyard_stores::queue::Error as Q;
        match e {
            Q::Full(depth) => {
                tracing::warn!(depth, "queue full: shedding load");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_full",
                    "the queue is full; retry later",
                )
                .retry_after(5)
            }
            Q::DlqFull(depth) => {
                tracing::error!(
                    depth,
                    "dead-letter queue at DLQ_MAX_DEPTH: refusing new events until it is drained"
                );
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "dlq_full",
                    "the dead-letter queue is full; retry later",
                )
                .retry_after(30)
            }
            Q::Replayed => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "this webhook-id was already used with another body (replayed request)",
            ),
            Q::InvalidCursor(c) => ApiError::bad_request(
                "invalid_cursor",
                format!("cursor {c:?} is not a position of this queue"),
            ),
            other @ (Q::Unavailable(_) | Q::Corrupt { .. }) => {
                ApiError::unavailable("the queue", &other)
            }
        }
    }
}

impl From<switchyard_stores::state::Error> for ApiError {
    fn from(e: switchyard_stores::state::Error) -> Self {
        match e {
            switchyard_stores::state::Error::Invalid(reason) => {
                ApiError::bad_request("invalid_document", reason)
            }
            other @ switchyard_stores::state::Error::Unavailable(_) => {
                ApiError::unavailable("the state store", &other)
            }
        }
    }
}

impl From<switchyard_runtime::LoadError> for ApiError {
    fn from(e: switchyard_runtime::LoadError) -> Self {
        use switchyard_runtime::LoadError as L;
        let (status, code) = match &e {
            // The component itself: its message says which check it failed.
            L::NotAComponent(_) | L::UnknownImports(_) | L::WrongInterface(_) | L::Canary(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "rejected")
            }
            L::NotAPlugin(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            L::SameAsActive => (StatusCode::CONFLICT, "same_as_active"),
            L::Refused { .. } => (StatusCode::CONFLICT, "refused"),
            L::Io(_) | L::Manifest(_) | L::Panicked(_) => {
                // The detail (paths, panics) goes to the log, not to the caller.
                tracing::error!(error = %e, "cannot stage the candidate");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage",
                    "the gateway could not store the component; see its log",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}
