//! Switchyard's data, shared by every other crate and depending on none of them (its one
//! piece of behaviour beyond data: carrying a trace through the queue, `trace`).
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`event`] | the event a producer sends ([`event::IncomingEvent`]) and the [`event::Job`] the queue carries |
//! | [`routing`] | what a plugin is asked ([`routing::RouteRequest`]) and answers ([`routing::Decision`]), and which version answered ([`routing::PluginId`]) |
//! | [`record`] | an event's record: lifecycle state, attempts, deferral, deliveries |
//! | [`delivery`] | what a delivery sends: its message id and body |
//! | [`retry`] | the backoff schedule, as data |
//! | [`signing`] | request signatures: hex HMAC and Standard Webhooks |
//! | [`trace`] | the trace context a job carries through the queue, and how a worker continues it |
//! | [`clock`] | the one clock (`now_ms`) |

pub mod clock;
pub mod delivery;
pub mod event;
pub mod record;
pub mod retry;
pub mod routing;
pub mod signing;
pub mod trace;
