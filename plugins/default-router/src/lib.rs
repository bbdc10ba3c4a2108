//! The default routing plugin: a stand-in for a slow routing service.
//!
//! It waits `delay_ms` (config, default 2000) like a remote call would, then picks a destination
//! from the event type and, when the payload names an `orderId`, from the live order (its
//! `region`). A configurable fraction of calls (`failure_rate`, default 0.1) fails transiently so
//! that retries are visible. Which calls fail is a hash of (eventId, attempt): reproducible, and a
//! retry of a failed call usually succeeds.

/// Generated bindings for the `router` world; nothing hand-written here.
#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({ world: "router", path: "../../wit/v0.1" });
}

use bindings::Guest;
use bindings::switchyard::router::types::{Decision, Event, RouteError};

use bindings::switchyard::router::{config, context, log};
use serde_json::Value;

struct DefaultRouter;

const CANARY: &str = "switchyard.canary";

impl Guest for DefaultRouter {
    fn route(ev: Event) -> Result<Decision, RouteError> {
        if ev.event_type == CANARY {
            return Ok(decision("canary", "canary call", vec![]));
        }
        let delay_ms = config_num("delay_ms", 2000.0).max(0.0) as u64;
        let failure_rate = config_num("failure_rate", 0.1).clamp(0.0, 1.0);
        if delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        }
        if unit_hash(&ev.event_id, ev.attempt) < failure_rate {
            log::write(
                log::Level::Warn,
                "simulated transient failure of the routing service",
            );
            return Err(RouteError::Transient(
                "routing service unavailable (simulated)".into(),
            ));
        }
        let payload: Value = serde_json::from_str(&ev.payload)
            .map_err(|e| RouteError::Permanent(format!("payload is not JSON: {e}")))?;
        let service = service_for(&ev.event_type);
        let order_id = payload.get("orderId").and_then(id_text);
        let region = order_id
            .as_deref()
            .and_then(|id| context::lookup("order", id))
            .and_then(|doc| serde_json::from_str::<Value>(&doc).ok())
            .and_then(|order| {
                order
                    .get("region")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let mut metadata = vec![("service".to_string(), service.to_string())];
        if let Some(id) = &order_id {
            metadata.push(("orderId".into(), id.clone()));
        }
        Ok(match region {
            Some(region) => {
                metadata.push(("region".into(), region.clone()));
                decision(
                    &format!("{service}-{region}"),
                    &format!("{} for an order in region {region}", ev.event_type),
                    metadata,
                )
            }
            None => decision(
                service,
                &format!("{} by event type", ev.event_type),
                metadata,
            ),
        })
    }
}

fn decision(destination: &str, reason: &str, metadata: Vec<(String, String)>) -> Decision {
    Decision {
        destination: destination.into(),
        reason: reason.into(),
        metadata,
    }
}

/// The service that handles a family of event types.
fn service_for(event_type: &str) -> &'static str {
    let t = event_type.to_ascii_uppercase();
    if t.starts_with("ORDER") {
        "orders"
    } else if t.starts_with("SHIPMENT") || t.starts_with("DELIVERY") {
        "shipping"
    } else if t.starts_with("PAYMENT") || t.starts_with("REFUND") {
        "billing"
    } else {
        "general"
    }
}

/// An id given as a JSON string or number.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn config_num(key: &str, default: f64) -> f64 {
    config::get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// FNV-1a of (event id, attempt), mapped to [0, 1).
fn unit_hash(event_id: &str, attempt: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event_id.bytes().chain(attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

bindings::export!(DefaultRouter with_types_in bindings);
