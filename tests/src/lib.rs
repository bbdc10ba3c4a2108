//! Harness for the end-to-end tests: the real plugins built from `plugins/`, scratch plugin
//! directories, the real servers `scripts/test.sh` started (Redis, SecantusDB), gateways in this
//! process or as the binary, and a client that signs like a producer.
//!
//! A test that needs a server and does not find it fails: run the suite with `scripts/test.sh`.
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`plugins`] | built plugins, plugin directories, a plugin host, routing requests |
//! | [`servers`] | the run's Redis and SecantusDB; private servers to stop and restart; free ports |
//! | [`gateway`] | test configurations; [`Gateway`] in this process; [`GatewayProcess`], the binary |
//! | [`client`] | [`Client`]: signed ingestion, admin calls, waiting for events; metrics |
//! | [`receiver`] | [`Receiver`]: a webhook receiver that verifies signatures independently |
//! | [`collector`] | [`Collector`]: an OTLP/HTTP endpoint that keeps the spans exported to it |
//! | [`assertions`] | checks shared by the tests |

pub mod assertions;
pub mod client;
pub mod collector;
pub mod gateway;
pub mod plugins;
pub mod receiver;
pub mod servers;

pub use assertions::*;
pub use client::*;
pub use collector::*;
pub use gateway::*;
pub use plugins::*;
pub use receiver::*;
pub use servers::*;
