//! The event as producers send it, and as it travels through the queue.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest accepted `eventId`, `type` and correlation id, in characters.
pub const MAX_ID_LEN: usize = 128;

/// An event in the queue: what was accepted, plus its delivery attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub correlation_id: String,
    /// The `payload` object, as the producer sent it (JSON text).
    pub payload: String,
    pub received_at_ms: u64,
    /// 1 for the first delivery attempt.
    pub attempt: u32,
    /// How many times an operator replayed it from the dead-letter queue.
    #[serde(default)]
    pub replays: u32,
    /// Set while failures of the host (not of the event) keep deferring it, without spending
    /// attempts. Jobs queued before this field existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferral>,
    /// Set on a delivery job (the deliveries lane): where the routed event goes. `payload` is
    /// then the body to send, and `attempt` the delivery attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryTarget>,
    /// The producer's `partitionKey`: on a partitioned queue, events that share it share a
    /// partition (and so keep their order). Jobs queued before this field existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// The trace this job continues (set only when the gateway exports traces). Jobs queued
    /// before this field existed, or without tracing, read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceContext>,
}

/// The destination of a delivery job, and the Standard Webhooks message id it is sent with: the
/// same for every attempt, so that a receiver can drop the repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryTarget {
    pub destination: String,
    pub webhook_id: String,
}

/// Consecutive deferrals of an event by failures of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deferral {
    /// When the first of them happened (ms since the Unix epoch).
    pub since_ms: u64,
    /// How many in a row.
    pub count: u32,
}

impl Job {
    /// The same event for its next attempt (a finished attempt ends a run of deferrals).
    pub fn next_attempt(&self) -> Job {
        Job {
            attempt: self.attempt + 1,
            deferred: None,
            ..self.clone()
        }
    }

    /// Names the ingest this job came from: the same through the retries, deferrals, reclaims
    /// and replays of its queue entry (which may move it to a new queue id), different for
    /// another request carrying the same event id (another correlation id, or a later time).
    pub fn ingest_token(&self) -> String {
        format!("{}@{}", self.correlation_id, self.received_at_ms)
    }

    /// The event as an operator's replay from the dead-letter queue sends it again: a fresh
    /// first attempt, with no deferral run behind it.
    pub fn replayed(&self) -> Job {
        Job {
            attempt: 1,
            replays: self.replays + 1,
            deferred: None,
            ..self.clone()
        }
    }

    /// The same attempt, deferred once more by a failure of the host at `now_ms`.
    pub fn deferred_at(&self, now_ms: u64) -> Job {
        let d = self.deferred.unwrap_or(Deferral {
            since_ms: now_ms,
            count: 0,
        });
        Job {
            deferred: Some(Deferral {
                count: d.count.saturating_add(1),
                ..d
            }),
            ..self.clone()
        }
    }

    /// The routing request a plugin sees for this attempt.
    pub fn route_request(&self) -> crate::routing::RouteRequest {
        crate::routing::RouteRequest {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            correlation_id: self.correlation_id.clone(),
            payload: self.payload.clone(),
            received_at_ms: self.received_at_ms,
            attempt: self.attempt,
        }
    }
}

/// A producer's event body, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub event_id: String,
    pub event_type: String,
    /// The payload object re-serialised compactly.
    pub payload: String,
    /// `partitionKey`, when given: events that share it keep their order on a partitioned queue.
    pub partition_key: Option<String>,
}

/// Why a body is not an acceptable event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body must be a JSON object")]
    NotObject,
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{0}` must be a string")]
    NotString(&'static str),
    #[error("`{0}` must be 1 to 128 printable characters")]
    BadId(&'static str),
    #[error("`payload` must be a JSON object")]
    PayloadNotObject,
}

/// True for 1..=128 characters, none of them control characters.
pub fn is_printable_id(s: &str) -> bool {
    let n = s.chars().count();
    (1..=MAX_ID_LEN).contains(&n) && !s.chars().any(char::is_control) && !s.trim().is_empty()
}

impl IncomingEvent {
    /// Parses and validates `{"eventId": string, "type": string, "payload": object}` with an
    /// optional `"partitionKey": string`. Other top-level fields are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, ShapeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ShapeError::Json(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(ShapeError::NotObject);
        };
        let text =
            |obj: &mut serde_json::Map<String, Value>, key: &'static str| match obj.remove(key) {
                None | Some(Value::Null) => Err(ShapeError::Missing(key)),
                Some(Value::String(s)) if is_printable_id(&s) => Ok(s),
                Some(Value::String(_)) => Err(ShapeError::BadId(key)),
                Some(_) => Err(ShapeError::NotString(key)),
            };
        let event_id = text(&mut obj, "eventId")?;
        let event_type = text(&mut obj, "type")?;
        let payload = match obj.remove("payload") {
            None | Some(Value::Null) => return Err(ShapeError::Missing("payload")),
            Some(p @ Value::Object(_)) => p.to_string(),
            Some(_) => return Err(ShapeError::PayloadNotObject),
        };
        let partition_key = match obj.get("partitionKey") {
            None | Some(Value::Null) => None,
            Some(_) => Some(text(&mut obj, "partitionKey")?),
        };
        Ok(IncomingEvent {
            event_id,
            event_type,
            payload,
            partition_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_queued_before_trace_contexts_existed_still_parses() {
        let old = r#"{"eventId":"e-1","type":"T","correlationId":"c","payload":"{}","receivedAtMs":5,"attempt":2}"#;
        let job: Job = serde_json::from_str(old).unwrap();
        assert_eq!(
            (job.event_id.as_str(), job.attempt, job.trace),
            ("e-1", 2, None)
        );
        let traced = Job {
            trace: Some(crate::trace::TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                queued_at_ms: 7,
            }),
            ..job
        };
        let text = serde_json::to_string(&traced).unwrap();
        assert!(
            text.contains(r#""trace":{"traceparent":"00-4bf9"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), traced);
    }

    #[test]
    fn accepts_the_seed_shape() {
        let e = IncomingEvent::parse(
            br#"{"eventId":"u-1","type":"ORDER_CREATED","payload":{"orderId":"1"},"x":1}"#,
        )
        .unwrap();
        assert_eq!(e.event_id, "u-1");
        assert_eq!(e.event_type, "ORDER_CREATED");
        assert_eq!(e.payload, r#"{"orderId":"1"}"#);
        assert_eq!(e.partition_key, None);
        let keyed = IncomingEvent::parse(
            br#"{"eventId":"u-2","type":"T","payload":{},"partitionKey":"order-12345"}"#,
        )
        .unwrap();
        assert_eq!(keyed.partition_key.as_deref(), Some("order-12345"));
    }

    #[test]
    fn rejects_bad_shapes() {
        let cases: &[(&[u8], ShapeError)] = &[
            (b"{", ShapeError::Json(String::new())),
            (b"[]", ShapeError::NotObject),
            (
                br#"{"type":"T","payload":{}}"#,
                ShapeError::Missing("eventId"),
            ),
            (
                br#"{"eventId":5,"type":"T","payload":{}}"#,
                ShapeError::NotString("eventId"),
            ),
            (
                br#"{"eventId":"","type":"T","payload":{}}"#,
                ShapeError::BadId("eventId"),
            ),
            (
                br#"{"eventId":"a\nb","type":"T","payload":{}}"#,
                ShapeError::BadId("eventId"),
            ),
            (
                br#"{"eventId":"a","type":"T"}"#,
                ShapeError::Missing("payload"),
            ),
            (
                br#"{"eventId":"a","type":"T","payload":[1]}"#,
                ShapeError::PayloadNotObject,
            ),
            (
                br#"{"eventId":"a","payload":{}}"#,
                ShapeError::Missing("type"),
            ),
            (
                br#"{"eventId":"a","type":"T","payload":{},"partitionKey":7}"#,
                ShapeError::NotString("partitionKey"),
            ),
            (
                br#"{"eventId":"a","type":"T","payload":{},"partitionKey":""}"#,
                ShapeError::BadId("partitionKey"),
            ),
        ];
        for (body, expected) in cases {
            let got = IncomingEvent::parse(body).unwrap_err();
            match (expected, &got) {
                (ShapeError::Json(_), ShapeError::Json(_)) => {}
                _ => assert_eq!(&got, expected, "{}", String::from_utf8_lossy(body)),
            }
        }
        let long = format!(
            r#"{{"eventId":"{}","type":"T","payload":{{}}}}"#,
            "x".repeat(129)
        );
        assert_eq!(
            IncomingEvent::parse(long.as_bytes()).unwrap_err(),
            ShapeError::BadId("eventId")
        );
    }
}
