//! Safe rollout of plugin versions: the candidate shadowing the active version, the history of
//! swaps, and the watch that rolls a freshly swapped version back when it fails too often.
//!
//! Per plugin name the host keeps the *active* version (it decides), an optional *candidate*
//! (`<name>.next.wasm`, or staged by an admin call) that runs on a copy of live traffic in side
//! slots and is only compared, and the *previous* version, still compiled, for an instant
//! rollback. Promotion and rollback are swaps of these; the `.wasm` files are rewritten to match,
//! so a restart serves what was serving before it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use switchyard_model::routing::Decision;

use crate::PluginError;

/// When a freshly swapped version is rolled back automatically.
#[derive(Debug, Clone)]
pub struct RolloutPolicy {
    /// How long after a swap the new version is watched.
    pub window: Duration,
    /// Calls needed in the window before the failure rate is judged.
    pub min_calls: u64,
    /// Failed calls / calls above which the version is rolled back (≥ 1 turns the watch off).
    pub max_failure_rate: f64,
    /// Fraction of live events a candidate shadows (by event id, so every attempt of an event
    /// is shadowed or none is).
    pub shadow_sample_rate: f64,
    /// Count the plugin's own `transient` / `permanent` answers as failures (by default only
    /// traps, timeouts, exhausted limits and invalid output count).
    pub count_route_errors: bool,
}

impl RolloutPolicy {
    /// Whether the candidate shadows the calls for `event_id`.
    pub fn samples(&self, event_id: &str) -> bool {
        use std::hash::{Hash, Hasher};
        if self.shadow_sample_rate >= 1.0 {
            return true;
        }
        let mut h = std::hash::DefaultHasher::new();
        event_id.hash(&mut h);
        (h.finish() as f64 / u64::MAX as f64) < self.shadow_sample_rate
    }
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            window: Duration::from_secs(300),
            min_calls: 20,
            max_failure_rate: 0.5,
            shadow_sample_rate: 1.0,
            count_route_errors: false,
        }
    }
}

/// Shadow differences kept per candidate, newest last.
const SAMPLES: usize = 50;
/// Swaps kept in a plugin's history.
pub(crate) const HISTORY: usize = 50;

/// The answer of one call, as compared and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    pub fn of(result: &Result<Decision, PluginError>) -> Self {
        match result {
            Ok(d) => Answer {
                decision: Some(d.clone()),
                error_kind: None,
                error: None,
            },
            Err(e) => Answer {
                decision: None,
                error_kind: Some(e.kind().to_string()),
                error: Some(e.to_string()),
            },
        }
    }

    /// True when both answers have the same effect on the event: the same destinations, payload
    /// and metadata (the `reason` is an explanation, not an effect), or the same kind of
    /// failure. A 0.1 decision is one destination with the payload unchanged, so it compares
    /// with a 0.2 one as such.
    pub fn same_effect(&self, other: &Answer) -> bool {
        match (&self.decision, &other.decision) {
            (Some(a), Some(b)) => {
                a.destinations().eq(b.destinations())
                    && a.payload == b.payload
                    && a.metadata == b.metadata
            }
            (None, None) => self.error_kind == other.error_kind,
            _ => false,
        }
    }
}

/// One shadow comparison that disagreed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiffSample {
    pub event_id: String,
    pub event_type: String,
    pub attempt: u32,
    pub at_ms: u64,
    pub active: Answer,
    pub candidate: Answer,
}

/// Counters of a candidate's shadow calls.
#[derive(Debug, Default)]
pub struct ShadowStats {
    compared: AtomicU64,
    agreed: AtomicU64,
    differed: AtomicU64,
    skipped: AtomicU64,
    samples: Mutex<VecDeque<DiffSample>>,
}

/// A snapshot of [`ShadowStats`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSnapshot {
    /// Live calls the candidate also answered.
    pub compared: u64,
    pub agreed: u64,
    pub differed: u64,
    /// Live calls not shadowed because the side budget was in use.
    pub skipped: u64,
    /// The latest differences, oldest first.
    pub samples: Vec<DiffSample>,
}

impl ShadowStats {
    pub(crate) fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one comparison; `true` when the answers differed.
    pub(crate) fn compare(&self, sample: DiffSample) -> bool {
        self.compared.fetch_add(1, Ordering::Relaxed);
        if sample.active.same_effect(&sample.candidate) {
            self.agreed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.differed.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
        true
    }

    pub fn snapshot(&self) -> ShadowSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShadowSnapshot {
            compared: get(&self.compared),
            agreed: get(&self.agreed),
            differed: get(&self.differed),
            skipped: get(&self.skipped),
            samples: self
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// What happened to a plugin name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new version became active (file written).
    Loaded,
    /// The candidate became active (admin call, or `<name>.next.wasm` renamed onto `<name>.wasm`).
    Promoted,
    /// The previous version became active again (admin call, or its file restored).
    RolledBack,
    /// The watch rolled a failing version back.
    AutoRolledBack,
    /// A candidate was staged for shadowing.
    CandidateLoaded,
    /// The candidate was withdrawn (file removed, or admin call).
    CandidateRemoved,
    /// The plugin was unloaded (file removed).
    Unloaded,
}

/// One entry of a plugin's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub action: Action,
    /// The version this entry is about (the one made active, staged, or removed).
    pub version: String,
    /// The version that was active before, for swaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    pub at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Is `e` the version's own fault (`Some(true)`), an answer that is no failure (`Some(false)`),
/// or not about the version at all (`None`: failures of the host such as an unreachable state
/// store or an exhausted pool are not counted)? A plugin's `transient` / `permanent` answers are
/// answers: they count as failures only when `count_route_errors` is set.
fn counts_against_version(e: &PluginError, count_route_errors: bool) -> Option<bool> {
    if e.is_host_side() {
        None
    } else if e.is_route_error() {
        Some(count_route_errors)
    } else {
        Some(true)
    }
}

/// The failure rate of a freshly swapped version during its watch window.
#[derive(Debug)]
pub struct Watch {
    pub version: String,
    started: Instant,
    pub started_at_ms: u64,
    window: Duration,
    min_calls: u64,
    max_failure_rate: f64,
    count_route_errors: bool,
    calls: AtomicU64,
    failures: AtomicU64,
    fired: AtomicBool,
}

/// A snapshot of a [`Watch`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchSnapshot {
    pub version: String,
    pub until_ms: u64,
    pub calls: u64,
    pub failures: u64,
    pub active: bool,
}

impl Watch {
    pub(crate) fn new(version: String, policy: &RolloutPolicy, now_ms: u64) -> Option<Self> {
        (policy.max_failure_rate < 1.0 && !policy.window.is_zero()).then(|| Watch {
            version,
            started: Instant::now(),
            started_at_ms: now_ms,
            window: policy.window,
            min_calls: policy.min_calls.max(1),
            max_failure_rate: policy.max_failure_rate,
            count_route_errors: policy.count_route_errors,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            fired: AtomicBool::new(false),
        })
    }

    /// Counts one call; returns why the version must be rolled back, once, when its failure rate
    /// crosses the threshold inside the window.
    pub(crate) fn record(&self, result: &Result<Decision, PluginError>) -> Option<String> {
        if self.started.elapsed() > self.window || self.fired.load(Ordering::Relaxed) {
            return None;
        }
        let failed = match result {
            Ok(_) => false,
            Err(e) => counts_against_version(e, self.count_route_errors)?,
        };
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = self
            .failures
            .fetch_add(u64::from(failed), Ordering::Relaxed)
            + u64::from(failed);
        let rate = failures as f64 / calls as f64;
        if calls >= self.min_calls
            && rate > self.max_failure_rate
            && !self.fired.swap(true, Ordering::Relaxed)
        {
            return Some(format!(
                "{failures} of {calls} calls failed ({:.0} %) within {} s of the swap; threshold {:.0} %",
                rate * 100.0,
                self.started.elapsed().as_secs(),
                self.max_failure_rate * 100.0
            ));
        }
        None
    }

    pub fn snapshot(&self) -> WatchSnapshot {
        WatchSnapshot {
            version: self.version.clone(),
            until_ms: self
                .started_at_ms
                .saturating_add(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)),
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            active: self.started.elapsed() <= self.window && !self.fired.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(destination: &str, reason: &str) -> Result<Decision, PluginError> {
        Ok(Decision::to(destination, reason))
    }

    #[test]
    fn answers_compare_by_effect() {
        let a = Answer::of(&decision("x", "because"));
        assert!(a.same_effect(&Answer::of(&decision("x", "other words"))));
        assert!(!a.same_effect(&Answer::of(&decision("y", "because"))));
        let trap = Answer::of(&Err(PluginError::Trap("boom".into())));
        assert!(!a.same_effect(&trap));
        assert!(trap.same_effect(&Answer::of(&Err(PluginError::Trap("other".into())))));
        assert!(!trap.same_effect(&Answer::of(&Err(PluginError::Transient("t".into())))));
    }

    #[test]
    fn a_one_destination_answer_of_either_contract_compares_the_same() {
        let v1 = Answer::of(&decision("orders", "0.1"));
        let v2 = Answer::of(&Ok(Decision {
            also: vec![],
            ..Decision::to("orders", "0.2")
        }));
        assert!(v1.same_effect(&v2));
        let fan_out = Answer::of(&Ok(Decision {
            also: vec!["audit".into()],
            ..Decision::to("orders", "0.2")
        }));
        assert!(!v1.same_effect(&fan_out));
        let reshaped = Answer::of(&Ok(Decision {
            payload: Some("{}".into()),
            ..Decision::to("orders", "0.2")
        }));
        assert!(!v1.same_effect(&reshaped));
    }

    #[test]
    fn watch_fires_once_past_the_threshold_and_ignores_host_failures() {
        let policy = RolloutPolicy {
            window: Duration::from_secs(60),
            min_calls: 4,
            max_failure_rate: 0.5,
            ..RolloutPolicy::default()
        };
        let w = Watch::new("v".into(), &policy, 0).unwrap();
        let trap = Err(PluginError::Trap("t".into()));
        let host = Err(PluginError::ContextUnavailable("down".into()));
        assert_eq!(w.record(&trap), None); // 1/1 but below min_calls
        assert_eq!(w.record(&host), None); // not counted
        assert_eq!(w.record(&decision("x", "")), None); // 1/2
        assert_eq!(w.record(&trap), None); // 2/3
        assert!(w.record(&trap).is_some()); // 3/4 = 75 % > 50 %
        assert_eq!(w.record(&trap), None); // fires once
        let s = w.snapshot();
        assert_eq!((s.calls, s.failures, s.active), (4, 3, false));
    }

    #[test]
    fn shadow_sampling_is_a_stable_fraction_of_event_ids() {
        let policy = |rate| RolloutPolicy {
            shadow_sample_rate: rate,
            ..RolloutPolicy::default()
        };
        let ids: Vec<String> = (0..10_000).map(|i| format!("evt-{i}")).collect();
        let sampled = ids.iter().filter(|id| policy(0.25).samples(id)).count();
        assert!((2_200..2_800).contains(&sampled), "{sampled}");
        assert!(ids.iter().all(|id| policy(1.0).samples(id)));
        assert!(!ids.iter().any(|id| policy(0.0).samples(id)));
        assert_eq!(policy(0.25).samples("x"), policy(0.25).samples("x"));
    }

    #[test]
    fn route_errors_are_answers_unless_counting_them_is_asked_for() {
        let policy = RolloutPolicy {
            window: Duration::from_secs(60),
            min_calls: 4,
            max_failure_rate: 0.5,
            ..RolloutPolicy::default()
        };
        let permanent = Err(PluginError::Permanent("not ours".into()));
        let transient = Err(PluginError::Transient("later".into()));
        let w = Watch::new("v".into(), &policy, 0).unwrap();
        for _ in 0..10 {
            assert_eq!(w.record(&permanent), None);
            assert_eq!(w.record(&transient), None);
        }
        let s = w.snapshot();
        assert_eq!((s.calls, s.failures, s.active), (20, 0, true));
        // Memory pressure is the host's state, not the version's.
        assert_eq!(w.record(&Err(PluginError::MemoryPressure(1))), None);
        assert_eq!(w.snapshot().calls, 20);
        let counting = RolloutPolicy {
            count_route_errors: true,
            ..policy
        };
        let w = Watch::new("v".into(), &counting, 0).unwrap();
        let fired = (0..4).filter_map(|_| w.record(&permanent)).count();
        assert_eq!(fired, 1);
    }

    #[test]
    fn watch_is_off_at_rate_one() {
        let policy = RolloutPolicy {
            max_failure_rate: 1.0,
            ..RolloutPolicy::default()
        };
        assert!(Watch::new("v".into(), &policy, 0).is_none());
    }
}
