//! An example plugin that routes by payload content instead of event type.
//!
//! A payload with a `carrier` goes to `carrier:<name>` (lane from `express`); one with only a
//! `region` goes to `region:<name>`; when it names a `shipmentId` whose live shipment has a
//! carrier, that carrier wins. A payload with neither, or with fields of the wrong type, can never
//! be routed: that is a `permanent` error, and the host dead-letters it at once.

/// Generated bindings for the `router` world; nothing hand-written here.
#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({ world: "router", path: "../../wit/v0.1" });
}

use bindings::Guest;
use bindings::switchyard::router::types::{Decision, Event, RouteError};

use bindings::switchyard::router::context;
use serde_json::Value;

struct ContentRouter;

impl Guest for ContentRouter {
    fn route(ev: Event) -> Result<Decision, RouteError> {
        if ev.event_type == "switchyard.canary" {
            return Ok(Decision {
                destination: "canary".into(),
                reason: "canary".into(),
                metadata: vec![],
            });
        }
        let payload: Value = serde_json::from_str(&ev.payload)
            .map_err(|e| RouteError::Permanent(format!("payload is not JSON: {e}")))?;
        let obj = payload
            .as_object()
            .ok_or_else(|| RouteError::Permanent("payload is not an object".into()))?;
        let carrier = text_field(obj, "carrier")?;
        let region = text_field(obj, "region")?;
        let express = match obj.get("express") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(RouteError::Permanent("`express` must be a boolean".into())),
        };
        let live_carrier = text_field(obj, "shipmentId")?
            .and_then(|id| context::lookup("shipment", &id))
            .and_then(|doc| serde_json::from_str::<Value>(&doc).ok())
            .and_then(|s| s.get("carrier").and_then(Value::as_str).map(str::to_owned));
        let lane = if express { "express" } else { "standard" };
        let metadata = vec![("lane".to_string(), lane.to_string())];
        if let Some(c) = live_carrier {
            return Ok(Decision {
                destination: format!("carrier:{}", c.to_lowercase()),
                reason: "carrier of the live shipment".into(),
                metadata,
            });
        }
        match (carrier, region) {
            (Some(c), _) => Ok(Decision {
                destination: format!("carrier:{}", c.to_lowercase()),
                reason: "carrier named in the payload".into(),
                metadata,
            }),
            (None, Some(r)) => Ok(Decision {
                destination: format!("region:{}", r.to_lowercase()),
                reason: "region named in the payload".into(),
                metadata,
            }),
            (None, None) => Err(RouteError::Permanent(
                "payload names neither `carrier` nor `region`".into(),
            )),
        }
    }
}

/// A non-empty string field, absent, or a permanent error for any other type.
fn text_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, RouteError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(RouteError::Permanent(format!(
            "`{key}` must be a non-empty string"
        ))),
    }
}

bindings::export!(ContentRouter with_types_in bindings);
