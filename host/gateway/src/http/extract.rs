//! Extractors whose rejections are the API's JSON errors (axum's own answer in plain text), and
//! the one way a request body is read: bounded in size and in time.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// An axum extractor whose rejection becomes a 400 with `code` and axum's explanation.
macro_rules! json_rejection {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $code:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<T>(pub T);

        impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for $name<T> {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                $inner::<T>::from_request_parts(parts, state)
                    .await
                    .map(|$inner(v)| $name(v))
                    .map_err(|e| ApiError::bad_request($code, e.body_text()))
            }
        }
    };
}

json_rejection!(
    /// Query parameters; a malformed one is a 400 `invalid_query`.
    ApiQuery,
    Query,
    "invalid_query"
);
json_rejection!(
    /// Path parameters; a malformed one is a 400 `invalid_path`.
    ApiPath,
    Path,
    "invalid_path"
);

/// A request body of at most `BODY_LIMIT_BYTES`, received within `BODY_TIMEOUT_MS` (the limits
/// of ingestion). Take it last: the admin check before it runs first.
#[derive(Debug)]
pub struct LimitedBody(pub Bytes);

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, ApiError> {
        read_request(req, s.ingest.body_limit, s)
            .await
            .map(LimitedBody)
    }
}

/// Largest component accepted by `PUT /plugins/{name}/candidate`.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;

/// An uploaded component: up to [`MAX_COMPONENT_BYTES`], within `BODY_TIMEOUT_MS`.
#[derive(Debug)]
pub struct ComponentBody(pub Bytes);

impl FromRequest<AppState> for ComponentBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, ApiError> {
        read_request(req, MAX_COMPONENT_BYTES, s)
            .await
            .map(ComponentBody)
    }
}

/// The body of `req`, up to `limit` bytes, within the body deadline.
async fn read_request(req: Request, limit: usize, s: &AppState) -> Result<Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    read_limited(body, &parts.headers, limit, s.ingest.body_timeout).await
}

/// Reads a whole body: 413 as soon as it is known to exceed `limit` (from `Content-Length`, or
/// while streaming), 408 when it does not arrive within `deadline` in total (slow clients cannot
/// hold a connection open by trickling bytes).
pub async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: Duration,
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
        Ok(Err(_)) => Err(ApiError::bad_request(
            "bad_body",
            "the request body could not be read",
        )),
    }
}

/// Parses a JSON body into `T` (an empty body reads as `{}`); 400 `invalid_body` otherwise.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}
