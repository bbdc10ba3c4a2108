//! Switchyard's delivery: a routed event reaches the destination(s) its plugin chose, signed
//! (Standard Webhooks), retried per destination, circuit-broken when a destination is down, and
//! never lost (the deliveries an event owes are in its record before they are queued, and each
//! is a job of the queue's deliveries lane until it is delivered or dead-lettered).
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`destination`] | `[destinations.<name>]` of the plugins manifest, parsed and checked (secrets never shown) |
//! | [`registry`] | the destinations in force, each with its client, slots, rate limit, circuit and recent outcomes |
//! | [`pool`] | the delivery pool: the deliveries lane consumed, each delivery sent and settled |
//! | [`send`] | one attempt: the signed request, and what its answer means |
//! | [`circuit`] | the circuit breaker per destination |
//! | [`guard`] | the SSRF guard: the addresses a destination may not reach, checked after DNS |

pub mod circuit;
pub mod destination;
pub mod guard;
pub mod pool;
pub mod registry;
pub mod send;

pub use circuit::BreakerSettings;
pub use pool::{DeliveryPool, DeliverySettings, DeliveryStats};
pub use registry::Destinations;
