//! A compiled plugin's exports, whichever contract version it targets: preparing a component as
//! `switchyard:router@0.2` or `@0.1` (a component of either keeps working), calling `route` and
//! `ordering-key` on a fresh instance, and turning the answer into the model's [`Decision`].

use switchyard_model::routing::{Decision, RouteRequest};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::imports::CallState;
use crate::bindings::{v1, v2};
use crate::{LoadError, PluginError};

/// A compiled, type-checked plugin, ready to be instantiated per call.
#[derive(Clone)]
pub(crate) enum Prepared {
    V1 {
        pre: v1::RouterPre<CallState>,
        /// Set when the component targets `keyed-router` (it exports `ordering-key`).
        keyed: Option<v1::keyed::KeyedRouterPre<CallState>>,
    },
    V2 {
        pre: v2::RouterPre<CallState>,
        keyed: Option<v2::keyed::KeyedRouterPre<CallState>>,
    },
}

impl Prepared {
    /// The exports of `pre`: contract 0.2 if it has them, else 0.1.
    pub(super) fn new(pre: InstancePre<CallState>) -> Result<Self, LoadError> {
        if let Ok(router) = v2::RouterPre::new(pre.clone()) {
            return Ok(Prepared::V2 {
                keyed: v2::keyed::KeyedRouterPre::new(pre).ok(),
                pre: router,
            });
        }
        let keyed = v1::keyed::KeyedRouterPre::new(pre.clone()).ok();
        let router =
            v1::RouterPre::new(pre).map_err(|e| LoadError::WrongInterface(format!("{e:#}")))?;
        Ok(Prepared::V1 { pre: router, keyed })
    }

    /// True when the plugin chooses ordering keys.
    pub(crate) fn is_keyed(&self) -> bool {
        match self {
            Prepared::V1 { keyed, .. } => keyed.is_some(),
            Prepared::V2 { keyed, .. } => keyed.is_some(),
        }
    }

    /// The contract version the plugin targets.
    pub(crate) fn contract(&self) -> &'static str {
        match self {
            Prepared::V1 { .. } => "0.1",
            Prepared::V2 { .. } => "0.2",
        }
    }
}

/// How a call went wrong before the plugin could answer.
pub(super) enum Failure {
    Instantiate(String),
    Guest(wasmtime::Error),
}

fn instantiate(e: wasmtime::Error) -> Failure {
    Failure::Instantiate(format!("{e:#}"))
}

/// The event as each contract version's `event` record.
macro_rules! event_of {
    ($v:ident, $r:expr) => {
        $v::switchyard::router::types::Event {
            event_id: $r.event_id.clone(),
            event_type: $r.event_type.clone(),
            correlation_id: $r.correlation_id.clone(),
            payload: $r.payload.clone(),
            received_at_ms: $r.received_at_ms,
            attempt: $r.attempt,
        }
    };
}

/// A decision or route error, as answered, before the host's checks.
pub(super) type Answered = Result<Decision, PluginError>;

/// Calls `route` on a fresh instance.
pub(super) async fn route(
    plugin: &Prepared,
    store: &mut Store<CallState>,
    request: &RouteRequest,
) -> Result<Answered, Failure> {
    // The same calls on each version's generated types; `$decision` converts its decision.
    macro_rules! route {
        ($pre:expr, $v:ident, $decision:expr) => {{
            use $v::switchyard::router::types::RouteError;
            let router = $pre
                .instantiate_async(&mut *store)
                .await
                .map_err(instantiate)?;
            let answer = router
                .call_route(&mut *store, &event_of!($v, request))
                .await
                .map_err(Failure::Guest)?;
            Ok(match answer {
                Ok(d) => Ok($decision(d)),
                Err(RouteError::Transient(m)) => Err(PluginError::Transient(super::clip(m))),
                Err(RouteError::Permanent(m)) => Err(PluginError::Permanent(super::clip(m))),
            })
        }};
    }
    match plugin {
        Prepared::V1 { pre, .. } => {
            route!(pre, v1, |d: v1::switchyard::router::types::Decision| {
                Decision {
                    metadata: d.metadata.into_iter().collect(),
                    ..Decision::to(d.destination, d.reason)
                }
            })
        }
        // A 0.2 decision's first destination is the record's `destination`, the others `also`.
        Prepared::V2 { pre, .. } => {
            route!(pre, v2, |d: v2::switchyard::router::types::Decision| {
                let mut destinations = d.destinations.into_iter();
                Decision {
                    destination: destinations.next().unwrap_or_default(),
                    also: destinations.collect(),
                    payload: d.payload,
                    reason: d.reason,
                    metadata: d.metadata.into_iter().collect(),
                }
            })
        }
    }
}

/// Calls `ordering-key` on a fresh instance (`None` for a plain `router`).
pub(super) async fn ordering_key(
    plugin: &Prepared,
    store: &mut Store<CallState>,
    request: &RouteRequest,
) -> Result<Option<String>, Failure> {
    // The same calls on each version's generated types.
    macro_rules! key {
        ($keyed:expr, $v:ident) => {{
            let router = $keyed
                .instantiate_async(&mut *store)
                .await
                .map_err(instantiate)?;
            router
                .call_ordering_key(&mut *store, &event_of!($v, request))
                .await
                .map_err(Failure::Guest)
        }};
    }
    match plugin {
        Prepared::V1 {
            keyed: Some(keyed), ..
        } => key!(keyed, v1),
        Prepared::V2 {
            keyed: Some(keyed), ..
        } => key!(keyed, v2),
        _ => Ok(None),
    }
}
