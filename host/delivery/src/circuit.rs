//! A circuit breaker per destination. After `failures` consecutive failed deliveries the circuit
//! opens: deliveries to the destination wait (spending no attempts) for a cool-down that doubles
//! each time the destination is found still down, up to a maximum. When the cool-down is over,
//! one delivery goes as a probe (half-open): success closes the circuit, failure opens it again.
//! A failed probe is the destination's failure, not the delivery's: the pool does not count it
//! as one of the delivery's attempts (only failures while the circuit is closed do).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// The first cool-down.
    pub cooldown: Duration,
    /// The longest cool-down.
    pub max_cooldown: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration, probing: bool },
}

/// What a delivery may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send.
    Go,
    /// Send: it is the probe that decides whether the circuit closes.
    Probe,
    /// Do not send before this time.
    Wait(Instant),
}

/// One destination's circuit.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    mode: Mutex<Mode>,
}

/// A circuit as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    /// `closed`, `open` or `half_open`.
    #[schema(value_type = String, pattern = "^(closed|open|half_open)$")]
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Milliseconds until it lets a probe through (open only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            mode: Mutex::new(Mode::Closed { failures: 0 }),
        }
    }

    fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a delivery may go at `now`.
    pub fn permit(&self, now: Instant) -> Permit {
        let mut mode = self.mode();
        match *mode {
            Mode::Closed { .. } => Permit::Go,
            Mode::Open { until, cooldown } if now >= until => {
                *mode = Mode::HalfOpen {
                    cooldown,
                    probing: true,
                };
                Permit::Probe
            }
            Mode::Open { until, .. } => Permit::Wait(until),
            Mode::HalfOpen {
                cooldown,
                probing: false,
            } => {
                *mode = Mode::HalfOpen {
                    cooldown,
                    probing: true,
                };
                Permit::Probe
            }
            // One probe at a time; the others look again after the cooldown (at least a
            // second): a probe may take the destination's whole timeout, and each look is a
            // write to the queue.
            Mode::HalfOpen { cooldown, .. } => {
                Permit::Wait(now + cooldown.max(Duration::from_secs(1)))
            }
        }
    }

    /// A delivery got through: the circuit closes.
    pub fn success(&self) {
        *self.mode() = Mode::Closed { failures: 0 };
    }

    /// A delivery failed in a way that says the destination is down (a transient failure).
    /// Returns true when this opened the circuit.
    pub fn failure(&self, now: Instant) -> bool {
        let s = self.settings;
        let mut mode = self.mode();
        let open = |cooldown: Duration| Mode::Open {
            until: now + cooldown,
            cooldown,
        };
        match *mode {
            Mode::Closed { failures } if failures + 1 >= s.failures => {
                *mode = open(s.cooldown);
                true
            }
            Mode::Closed { failures } => {
                *mode = Mode::Closed {
                    failures: failures + 1,
                };
                false
            }
            // The probe failed: still down, wait longer.
            Mode::HalfOpen { cooldown, .. } => {
                *mode = open((cooldown * 2).min(s.max_cooldown));
                true
            }
            // A delivery that started before the circuit opened: nothing new.
            Mode::Open { .. } => false,
        }
    }

    /// A probe ended without saying anything about the destination (e.g. a permanent answer
    /// about that event): let another one go.
    pub fn probe_done(&self) {
        let mut mode = self.mode();
        if let Mode::HalfOpen { cooldown, .. } = *mode {
            *mode = Mode::HalfOpen {
                cooldown,
                probing: false,
            };
        }
    }

    /// When an open circuit lets the next probe through (`None` unless open).
    pub fn open_until(&self) -> Option<Instant> {
        match *self.mode() {
            Mode::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// The circuit's state, as a number for the metrics gauge: 0 closed, 1 half-open, 2 open.
    pub fn level(&self) -> f64 {
        match *self.mode() {
            Mode::Closed { .. } => 0.0,
            Mode::HalfOpen { .. } => 1.0,
            Mode::Open { .. } => 2.0,
        }
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        match *self.mode() {
            Mode::Closed { failures } => BreakerSnapshot {
                state: "closed",
                consecutive_failures: failures,
                opens_in_ms: None,
                cooldown_ms: None,
            },
            Mode::Open { until, cooldown } => BreakerSnapshot {
                state: "open",
                consecutive_failures: self.settings.failures,
                opens_in_ms: Some(until.saturating_duration_since(now).as_millis() as u64),
                cooldown_ms: Some(cooldown.as_millis() as u64),
            },
            Mode::HalfOpen { cooldown, .. } => BreakerSnapshot {
                state: "half_open",
                consecutive_failures: self.settings.failures,
                opens_in_ms: None,
                cooldown_ms: Some(cooldown.as_millis() as u64),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(3),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_with_growing_cooldowns() {
        let b = breaker();
        let t0 = Instant::now();
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0) && !b.failure(t0), "two after a success");
        assert!(b.failure(t0), "the third in a row opens it");
        assert_eq!(b.permit(t0), Permit::Wait(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.permit(t1), Permit::Probe);
        assert!(
            matches!(b.permit(t1), Permit::Wait(_)),
            "one probe at a time"
        );
        // The probe fails: open again, for twice as long, then three times the first (capped).
        assert!(b.failure(t1));
        assert_eq!(b.open_until(), Some(t1 + Duration::from_secs(2)));
        assert_eq!(b.permit(t1), Permit::Wait(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(b.permit(t2), Permit::Probe);
        b.failure(t2);
        assert_eq!(b.permit(t2), Permit::Wait(t2 + Duration::from_secs(3)));
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(b.permit(t3), Permit::Probe);
        b.success();
        assert_eq!(b.permit(t3), Permit::Go);
        assert_eq!(b.snapshot(t3).state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_says_nothing_lets_the_next_one_go() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.permit(t1), Permit::Probe);
        b.probe_done();
        assert_eq!(b.permit(t1), Permit::Probe);
    }
}
