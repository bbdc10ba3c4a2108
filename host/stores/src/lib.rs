//! Switchyard's queue and state store: the two traits the gateway programs against, every backend
//! that implements them, and the one place where a backend is chosen.
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`queue`] | the [`queue::Queue`] trait and its types (deliveries, dead letters, replay) |
//! | [`state`] | the [`state::StateStore`] trait: the idempotent claim, finishing, live context |
//! | [`backend`] | [`Backend`], the choice of backend, opened into [`Stores`] |
//! | [`consumer`] | the loops a consumer of a lane runs (promote, reclaim, keep-alive) |
//! | [`redis`] | the queue on Redis Streams |
//! | [`mongo`] | the state store on MongoDB |
//! | [`embedded`] | both on one redb file: the database and its writer; `embedded/queue`, `embedded/state` |
//! | [`memory`] | both in memory: nothing survives the process (fast unit tests) |
//! | `contract` | the suite every backend passes (feature `contract`; [`contract_suite!`]) |
//!
//! **Adding a backend** is one module implementing the traits, one variant of [`Backend`] (and
//! its arm in [`Backend::open`]), and one row of the contract suite:
//! `switchyard_stores::contract_suite!(on_mine, open_mine);` — the in-memory backend was added
//! exactly that way (its row is at the end of `memory.rs`).

pub mod backend;
pub mod consumer;
pub mod embedded;
pub mod memory;
pub mod mongo;
pub mod queue;
pub mod redis;
pub mod state;

#[cfg(any(test, feature = "contract"))]
pub mod contract;

pub use backend::{Backend, Stores};
