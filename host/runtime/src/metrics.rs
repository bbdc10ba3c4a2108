//! The runtime's metrics, recorded through the `metrics` facade (the embedder installs the
//! recorder and renders them).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `switchyard_plugin_call_duration_seconds` | histogram | `plugin`, `version`, `result` = ok or an error kind |
//! | `switchyard_plugin_reloads_total` | counter | `plugin`, `result` = loaded, rejected, candidate |
//! | `switchyard_plugin_swaps_total` | counter | `plugin`, `action` = loaded, promoted, rolled_back, auto_rolled_back |
//! | `switchyard_shadow_calls_total` | counter | `plugin`, `result` = agreed, differed, skipped |

use crate::version::short_version;

/// Records one plugin call.
pub(crate) fn plugin_call(plugin: &str, version: &str, result: &'static str, seconds: f64) {
    metrics::histogram!(
        "switchyard_plugin_call_duration_seconds",
        "plugin" => plugin.to_string(),
        "version" => short_version(version).to_string(),
        "result" => result
    )
    .record(seconds);
}

/// Records a plugin load, a staged candidate or a rejection.
pub(crate) fn plugin_reload(plugin: &str, result: &'static str) {
    metrics::counter!("switchyard_plugin_reloads_total", "plugin" => plugin.to_string(), "result" => result).increment(1);
}

/// Counts one shadow comparison (`agreed`, `differed`) or a skipped one (`skipped`).
pub(crate) fn shadow(plugin: &str, result: &'static str) {
    metrics::counter!("switchyard_shadow_calls_total", "plugin" => plugin.to_string(), "result" => result).increment(1);
}

/// Counts one swap of a plugin's active version.
pub(crate) fn plugin_swap(plugin: &str, action: &'static str) {
    metrics::counter!("switchyard_plugin_swaps_total", "plugin" => plugin.to_string(), "action" => action).increment(1);
}
