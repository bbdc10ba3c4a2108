//! What a delivery sends: the message id of an event's delivery to a destination (the same for
//! every attempt, and for a redelivery after a crash), and the body.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::routing::Decision;

/// The Standard Webhooks `webhook-id` of `event_id`'s delivery to `destination`: derived from
/// both, so that it is stable across attempts, replays and restarts.
pub fn webhook_id(event_id: &str, destination: &str) -> String {
    let digest = Sha256::new()
        .chain_update(event_id.as_bytes())
        .chain_update([0u8])
        .chain_update(destination.as_bytes())
        .finalize();
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// The body delivered for a routed event: the plugin's transformed payload when it gave one,
/// else the envelope `{"eventId", "type", "payload", "correlationId", "decision"}`.
pub fn body(
    event_id: &str,
    event_type: &str,
    correlation_id: &str,
    payload: &str,
    decision: &Decision,
) -> String {
    if let Some(transformed) = &decision.payload {
        return transformed.clone();
    }
    let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    json!({
        "eventId": event_id,
        "type": event_type,
        "payload": payload,
        "correlationId": correlation_id,
        "decision": decision,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_event_and_destination() {
        assert_eq!(webhook_id("e1", "orders"), webhook_id("e1", "orders"));
        assert_ne!(webhook_id("e1", "orders"), webhook_id("e1", "audit"));
        assert_ne!(webhook_id("e1", "orders"), webhook_id("e2", "orders"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(webhook_id("ab", "c"), webhook_id("a", "bc"));
        assert!(webhook_id("e", "d").starts_with("msg_"));
    }

    #[test]
    fn the_envelope_or_the_transformed_payload() {
        let d = Decision::to("orders", "by type");
        let sent: Value = serde_json::from_str(&body("e1", "T", "c1", r#"{"a":1}"#, &d)).unwrap();
        assert_eq!(sent["eventId"], "e1");
        assert_eq!(sent["payload"]["a"], 1);
        assert_eq!(sent["decision"]["destination"], "orders");
        let transformed = Decision {
            payload: Some(r#"{"order":7}"#.into()),
            ..d
        };
        assert_eq!(body("e1", "T", "c1", "{}", &transformed), r#"{"order":7}"#);
    }
}
