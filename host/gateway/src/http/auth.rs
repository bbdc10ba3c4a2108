//! The admin token as extractors. Axum runs request-part extractors before the body extractor,
//! so a handler that takes [`RequireAdmin`] answers an anonymous request with 401 without reading
//! a byte of its body.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// What a request's `Authorization` header says about it.
enum Token {
    /// No header at all.
    Absent,
    Valid,
    Invalid,
}

fn token(s: &AppState, parts: &Parts) -> Result<Token, ApiError> {
    let Some(expected) = s.admin_token.as_deref() else {
        return Err(ApiError::unauthorized(
            "the admin API is disabled: set ADMIN_TOKEN on the gateway and send `Authorization: Bearer <token>`",
        ));
    };
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(Token::Absent);
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests, so neither the length nor the content leaks through timing.
    let ok: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    Ok(if ok { Token::Valid } else { Token::Invalid })
}

fn invalid() -> ApiError {
    ApiError::unauthorized("a valid `Authorization: Bearer <ADMIN_TOKEN>` header is required")
}

/// Admits only requests carrying the admin token (401 otherwise, and always 401 when the gateway
/// has no `ADMIN_TOKEN`).
#[derive(Debug, Clone, Copy)]
pub struct RequireAdmin;

impl FromRequestParts<AppState> for RequireAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        match token(s, parts)? {
            Token::Valid => Ok(RequireAdmin),
            Token::Absent | Token::Invalid => Err(invalid()),
        }
    }
}

/// Whether a request may see admin detail: `true` with the admin token, `false` without an
/// `Authorization` header (or without an `ADMIN_TOKEN` on the gateway); a wrong token is a 401.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAdmin(pub bool);

impl FromRequestParts<AppState> for MaybeAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeAdmin(false));
        }
        match token(s, parts)? {
            Token::Valid => Ok(MaybeAdmin(true)),
            Token::Absent | Token::Invalid => Err(invalid()),
        }
    }
}
