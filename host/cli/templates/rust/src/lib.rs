//! `{{name}}`: a Switchyard routing plugin (contract `switchyard:router@0.2.0`, `wit/router.wit`).
//!
//! - build:  `switchyard plugin build`        (cargo build --target wasm32-wasip2 --release)
//! - test:   `switchyard plugin test`         (the cases in `cases.toml`)
//! - deploy: copy `{{name}}.wasm` into the gateway's `PLUGINS_DIR`, and route event types to
//!   `{{name}}` in its `switchyard.toml` (`[routes]`); both reload live.
//!
//! Each call runs in a fresh sandbox: nothing kept in memory survives between calls. What the
//! plugin may know comes through its imports: `context` (live orders and shipments), `config`
//! (the manifest's `[config.{{name}}]`) and `log`.

/// Generated bindings for the `router` world; nothing hand-written here.
#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({ world: "router", path: "wit" });
}

use bindings::Guest;
use bindings::switchyard::router::types::{Decision, Event, RouteError};
use bindings::switchyard::router::{config, context, log};
use serde_json::Value;

struct Router;

impl Guest for Router {
    fn route(ev: Event) -> Result<Decision, RouteError> {
        // The host calls once with this type after loading a new version: answer at once.
        if ev.event_type == "switchyard.canary" {
            return Ok(decision(&["canary"], "canary", vec![]));
        }
        // A payload that is not what this plugin expects cannot be routed by retrying it:
        // `Permanent` dead-letters the event at once.
        let payload: Value = serde_json::from_str(&ev.payload)
            .map_err(|e| RouteError::Permanent(format!("payload is not JSON: {e}")))?;
        match ev.event_type.as_str() {
            "ORDER_CREATED" | "ORDER_UPDATED" => {
                let id = payload
                    .get("orderId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        RouteError::Permanent("the payload names no `orderId`".into())
                    })?;
                // Live state: the order as the gateway's state store has it now.
                let Some(order) = context::lookup("order", id)
                    .and_then(|doc| serde_json::from_str::<Value>(&doc).ok())
                else {
                    // Not there yet: `Transient` makes the host retry with backoff.
                    return Err(RouteError::Transient(format!(
                        "order {id} is not in the live state yet"
                    )));
                };
                // Configuration: the operator tunes it in the manifest, without a rebuild.
                let threshold = config::get("priority_threshold")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(1000.0);
                let total = order.get("total").and_then(Value::as_f64).unwrap_or(0.0);
                let lane = if total >= threshold {
                    "priority"
                } else {
                    "standard"
                };
                log::write(
                    log::Level::Info,
                    &format!("order {id} goes in the {lane} lane"),
                );
                Ok(decision(
                    &["orders"],
                    "an order, by its total",
                    vec![("lane", lane)],
                ))
            }
            // Several destinations: each one the manifest declares gets the event.
            "PAYMENT_FAILED" => Ok(decision(&["billing", "audit"], "a failed payment", vec![])),
            other => Err(RouteError::Permanent(format!(
                "no route for event type {other}"
            ))),
        }
    }
}

fn decision(destinations: &[&str], reason: &str, metadata: Vec<(&str, &str)>) -> Decision {
    Decision {
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
        // `Some(json)` would deliver that instead of the event's envelope.
        payload: None,
        reason: reason.into(),
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
    }
}

bindings::export!(Router with_types_in bindings);
