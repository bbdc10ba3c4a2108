//! Switchyard's data, shared by every other crate and depending on none of them.
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`event`] | the event a producer sends ([`event::IncomingEvent`]) and the [`event::Job`] the queue carries |
//! | [`routing`] | what a plugin is asked ([`routing::RouteRequest`]) and answers ([`routing::Decision`]), and which version answered ([`routing::PluginId`]) |
//! | [`record`] | an event's record: lifecycle state, attempts, deferral |
//! | [`retry`] | the backoff schedule, as data |
//! | [`clock`] | the one clock (`now_ms`) |

pub mod clock;
pub mod event;
pub mod record;
pub mod retry;
pub mod routing;
