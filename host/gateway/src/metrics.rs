//! Prometheus metrics (`GET /metrics`), recorded with the `metrics` facade and rendered by
//! `metrics-exporter-prometheus`. This module installs the recorder and records the gateway's
//! own series; the plugin runtime and the stores record theirs through the same facade.
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `switchyard_ingest_requests_total` | counter | `status` | here |
//! | `switchyard_ingest_duration_seconds` | histogram | `status` | here |
//! | `switchyard_queue_depth` | gauge | `queue` = ready, in_flight, delayed, dead_letter; deliveries_ready, deliveries_in_flight, deliveries_delayed, deliveries_dead_letter | here (at scrape) |
//! | `switchyard_events_total` | counter | `event_type`, `outcome` = routed, retried, dead_lettered, duplicate, deferred | here |
//! | `switchyard_rate_limit_clients` | gauge | — | `http::client` |
//! | `switchyard_plugin_call_duration_seconds` | histogram | `plugin`, `version`, `result` = ok or an error kind | the runtime |
//! | `switchyard_plugin_reloads_total` | counter | `plugin`, `result` = loaded, rejected, candidate | the runtime |
//! | `switchyard_plugin_swaps_total` | counter | `plugin`, `action` = loaded, promoted, rolled_back, auto_rolled_back | the runtime |
//! | `switchyard_shadow_calls_total` | counter | `plugin`, `result` = agreed, differed, skipped | the runtime |
//! | `switchyard_queue_group_recreated_total` | counter | — | the Redis queue |
//! | `switchyard_deliveries_total` | counter | `destination`, `outcome` = delivered, retried, deferred, dead_lettered | the delivery pool |
//! | `switchyard_delivery_duration_seconds` | histogram | `destination` | the delivery pool |
//! | `switchyard_destination_circuit_state` | gauge | `destination` (0 closed, 1 half-open, 2 open) | the delivery pool |
//!
//! Event types come from producers: past [`MAX_EVENT_TYPES`] distinct values they are counted as
//! `_other`, so a hostile producer cannot blow up the series count.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Distinct `event_type` label values before the rest count as `_other`.
pub const MAX_EVENT_TYPES: usize = 100;

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder (installed once; later calls return the same handle).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("valid buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (embedding application); ours still renders what it saw.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The label value for a producer-supplied event type.
pub fn event_type_label(event_type: &str) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if seen.contains(event_type) {
        return event_type.to_string();
    }
    if seen.len() < MAX_EVENT_TYPES {
        seen.insert(event_type.to_string());
        return event_type.to_string();
    }
    "_other".to_string()
}

/// Counts one finished delivery.
pub fn event(event_type: &str, outcome: &'static str) {
    metrics::counter!("switchyard_events_total", "event_type" => event_type_label(event_type), "outcome" => outcome)
        .increment(1);
}

/// Records one ingestion answer.
pub fn ingest(status: u16, seconds: f64) {
    let status = status.to_string();
    metrics::counter!("switchyard_ingest_requests_total", "status" => status.clone()).increment(1);
    metrics::histogram!("switchyard_ingest_duration_seconds", "status" => status).record(seconds);
}

/// Sets the queue depth gauges of a lane: the events lane's `queue` labels are bare (`ready`),
/// the deliveries lane's carry `prefix` (`deliveries_ready`).
pub fn queue_depths(prefix: &str, stats: &switchyard_stores::queue::QueueStats) {
    for (queue, value) in [
        ("ready", stats.ready),
        ("in_flight", stats.in_flight),
        ("delayed", stats.delayed),
        ("dead_letter", stats.dead_lettered),
    ] {
        metrics::gauge!("switchyard_queue_depth", "queue" => format!("{prefix}{queue}"))
            .set(value as f64);
    }
}
