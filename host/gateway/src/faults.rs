//! Fault points for fault-injection tests. With the `fault-injection` feature (the test suite
//! builds the binary with it; a release build has none), `SWITCHYARD_CRASH_AT=<point>` makes the
//! process abort at that point, like a `kill -9` at the worst moment, and
//! `SWITCHYARD_LOSE_ANSWER=<point>` makes a write that was applied look failed to its caller,
//! like a connection dropped after MongoDB applied an update.

/// Aborts the process here if `SWITCHYARD_CRASH_AT` names `point`.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("SWITCHYARD_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
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
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    AT.get_or_init(|| std::env::var("SWITCHYARD_LOSE_ANSWER").ok())
        .as_deref()
        == Some(point)
}

/// Without the `fault-injection` feature: never.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn answer_lost(_point: &str) -> bool {
    false
}
