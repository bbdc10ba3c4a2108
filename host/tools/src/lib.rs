//! Switchyard's tools beside the gateway: the load generator behind `switchyard load` and the
//! benchmarks behind `switchyard bench`. A crate of their own, so that the gateway does not
//! depend on what only they use (an HTTP client, histograms).
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`load`] | signed load against a running gateway, the drain wait, the report |
//! | [`receive`] | the receiver `load --receive` runs: deliveries/s, ingest-to-receiver latency |
//! | [`latency`] | latency summaries of the reports |
//! | [`bench`] | the plugin host's call cost and reload time; signature verification cost |
//! | [`sign`] | the signing schemes and the signature headers for a body (`switchyard sign`, `load`) |

pub mod bench;
pub mod latency;
pub mod load;
pub mod receive;
pub mod sign;
