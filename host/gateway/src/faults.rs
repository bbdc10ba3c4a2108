//! Fault points for fault-injection tests. With the `fault-injection` feature (the test suite
//! builds the binary with it; a release build has none), `SWITCHYARD_CRASH_AT=<point>` makes the
//! process abort at that point, like a `kill -9` at the worst moment, and
//! `SWITCHYARD_LOSE_ANSWER=<point>` makes a write that was applied look failed to its caller,
//! like a connection dropped after MongoDB applied an update.

#[cfg(feature = "fault-injection")]
use std::sync::OnceLock;

/// True if the environment variable `var` (read once, into `cell`) names `point`.
#[cfg(feature = "fault-injection")]
fn names(cell: &'static OnceLock<Option<String>>, var: &str, point: &str) -> bool {
    cell.get_or_init(|| std::env::var(var).ok()).as_deref() == Some(point)
}

/// Aborts the process here if `SWITCHYARD_CRASH_AT` names `point`.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if names(&AT, "SWITCHYARD_CRASH_AT", point) {
        eprintln!("SWITCHYARD_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

/// Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: &str) {}

/// True if `SWITCHYARD_LOSE_ANSWER` names `point`: the caller then acts as if the write it has
/// just made had failed.
#[cfg(feature = "fault-injection")]
pub fn answer_lost(point: &str) -> bool {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    names(&AT, "SWITCHYARD_LOSE_ANSWER", point)
}

/// Without the `fault-injection` feature: never.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn answer_lost(_point: &str) -> bool {
    false
}
