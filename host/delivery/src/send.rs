//! One delivery attempt: a signed POST (Standard Webhooks) through the destination's guarded
//! client, and what its answer means.
//!
//! 2xx is delivered. 408, 425, 429, 5xx, a timeout and a connection failure are transient
//! (`Retry-After` honoured, capped). A redirect is not followed: it fails for good, with its
//! `Location`. Any other 4xx fails for good, and so does a refusal by the SSRF guard.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use switchyard_model::clock::now_ms;
use switchyard_model::signing::sign_webhook;

use crate::destination::Destination;
use crate::guard::{self, GuardedResolver};

/// Bytes of a failed answer's body kept for the dead letter and the record.
const EXCERPT: usize = 512;

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    /// Worth another attempt; `retry_after` is the destination's own hint, if it gave one.
    Transient {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Permanent {
        status: Option<u16>,
        error: String,
    },
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status } => Some(*status),
            Outcome::Transient { status, .. } | Outcome::Permanent { status, .. } => *status,
        }
    }
}

/// The HTTP client of one destination: its addresses checked by the guard, no redirects, no
/// proxy, its timeout, a pool as large as its concurrency.
pub fn client(d: &Destination) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            allow_private: d.allow_private,
        }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(d.timeout)
        .pool_max_idle_per_host(d.max_in_flight as usize)
        .build()
}

/// The request of one attempt, for `client`: what a receiver verifies.
pub struct Request<'a> {
    pub webhook_id: &'a str,
    pub correlation_id: &'a str,
    pub body: &'a str,
    /// W3C trace headers (`traceparent`, …) of the delivery's span; empty without tracing.
    pub trace: std::collections::HashMap<String, String>,
}

/// Sends one attempt and judges the answer.
pub async fn send(client: &reqwest::Client, d: &Destination, r: &Request<'_>) -> Outcome {
    if let Err(refused) = guard::check_literal(&d.url, d.allow_private) {
        return Outcome::Permanent {
            status: None,
            error: refused.to_string(),
        };
    }
    let ts = now_ms() / 1000;
    let signature = sign_webhook(&d.secret, r.webhook_id, ts, r.body.as_bytes());
    let mut request = client
        .post(d.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", r.webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .header("x-correlation-id", r.correlation_id);
    for (k, v) in &d.headers {
        request = request.header(k, v);
    }
    for (k, v) in &r.trace {
        request = request.header(k, v);
    }
    match request.body(r.body.to_string()).send().await {
        Ok(response) => judge(response).await,
        Err(e) => failed(&e),
    }
}

async fn judge(mut response: reqwest::Response) -> Outcome {
    let status = response.status();
    let code = Some(status.as_u16());
    if status.is_success() {
        // Read (a bounded part of) the body so that the connection can be reused.
        let _ = excerpt(&mut response).await;
        return Outcome::Delivered {
            status: status.as_u16(),
        };
    }
    let retry_after = retry_after(response.headers().get(RETRY_AFTER));
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = excerpt(&mut response).await;
    let said = |what: &str| {
        if body.is_empty() {
            format!("{what}: HTTP {}", status.as_u16())
        } else {
            format!("{what}: HTTP {}: {body}", status.as_u16())
        }
    };
    if status.is_redirection() {
        let to = location.as_deref().unwrap_or("(no Location)");
        return Outcome::Permanent {
            status: code,
            error: format!("redirect not followed: HTTP {} to {to}", status.as_u16()),
        };
    }
    let transient = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY | StatusCode::TOO_MANY_REQUESTS
    ) || status.is_server_error();
    if transient {
        Outcome::Transient {
            status: code,
            error: said("the destination failed"),
            retry_after,
        }
    } else {
        Outcome::Permanent {
            status: code,
            error: said("the destination refused the delivery"),
        }
    }
}

fn failed(e: &reqwest::Error) -> Outcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<guard::Refused>() {
            return Outcome::Permanent {
                status: None,
                error: refused.to_string(),
            };
        }
        source = s.source();
    }
    let error = if e.is_timeout() {
        "no answer within the destination's timeout".to_string()
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        format!("request failed: {}", root_cause(e))
    };
    Outcome::Transient {
        status: None,
        error,
        retry_after: None,
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Up to [`EXCERPT`] bytes of the body, as text.
async fn excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(EXCERPT);
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let v = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(retry_after(Some(&v("7"))), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let got = retry_after(Some(&v(&httpdate::fmt_http_date(later)))).unwrap();
        assert!((110..=120).contains(&got.as_secs()), "{got:?}");
        assert_eq!(retry_after(Some(&v("soon"))), None);
        assert_eq!(retry_after(None), None);
    }
}
