//! Switchyard's plugin runtime: WebAssembly routing plugins, sandboxed, versioned and swapped
//! live. It knows nothing of HTTP, queues or workers: the embedder hands it routing requests
//! ([`switchyard_model::routing::RouteRequest`]) and live state ([`Context`]), and gets
//! decisions or a typed [`PluginError`] back.
//!
//! Plugins are WASI 0.2 components of the `router` (or `keyed-router`) world in `wit/`. Each
//! call runs in a fresh `Store` instantiated from a cached, type-checked `InstancePre`, under a
//! wall-clock timeout, epoch interruption (so a busy loop cannot hold a thread), a memory cap and
//! a shared memory budget, with WASI denying files, sockets, environment and arguments.
//! [`Plugins`] keeps the versions of a plugins directory, maps event types to them through the
//! directory's manifest (`switchyard.toml`), and swaps versions atomically: in-flight calls keep
//! the version they started with.
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`sandbox`] | the engine, the linker and one call: limits, memory budget, the host imports |
//! | `bindings` | the code `wasmtime::component::bindgen!` generates from `wit/` (nothing hand-written) |
//! | [`registry`] | [`Plugins`]: the versions in force, routing, shadowing; `registry/files` reads, compiles and canary-checks files, `registry/swap` promotes, rolls back and dry-runs |
//! | [`rollout`] | shadow comparison, swap history, the watch that rolls a failing version back |
//! | [`manifest`] | `switchyard.toml`: event type → plugin, and each plugin's configuration |
//! | [`watch`] | live reload of the plugins directory |
//! | [`context`] | the live state a plugin may read |
//! | [`error`] | [`PluginError`] (a call), [`LoadError`] (a version) |
//! | [`version`] | a version's id (SHA-256 of the file) |
//! | `metrics` | the runtime's metrics, through the `metrics` facade |

mod bindings;
pub mod context;
pub mod error;
pub mod manifest;
mod metrics;
pub mod registry;
pub mod rollout;
pub mod sandbox;
pub mod version;
pub mod watch;

pub use context::{Context, NoContext, SharedContext, StaticContext};
pub use error::{LoadError, PluginError};
pub use registry::Plugins;
pub use sandbox::{Limits, Sandbox};

/// The event type the host sends once to every newly loaded version before it serves.
pub const CANARY_EVENT_TYPE: &str = "switchyard.canary";
