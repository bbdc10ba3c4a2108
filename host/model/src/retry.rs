//! The retry schedule, as data: exponential backoff with jitter, and the attempt limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When to retry a failed attempt, and when to give up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included) before an event is dead-lettered.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Growth of the delay per further failure.
    pub factor: f64,
    /// Longest delay.
    pub cap: Duration,
    /// Fraction of each delay that is random (0 = none): the delay is drawn from
    /// `[d × (1 − jitter), d]`, which spreads retries of a burst and keeps them growing.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(1000),
            factor: 2.0,
            cap: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `failed_attempt + 1`, or `None` when `failed_attempt` was the
    /// last one allowed. `unit` is a random number in `[0, 1)`.
    pub fn delay_after(&self, failed_attempt: u32, unit: f64) -> Option<Duration> {
        if failed_attempt >= self.max_attempts {
            return None;
        }
        let exp = self
            .factor
            .powi(failed_attempt.saturating_sub(1).min(64) as i32);
        let full = (self.base.as_secs_f64() * exp).min(self.cap.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        Some(Duration::from_secs_f64(full * (1.0 - jitter)))
    }

    /// [`Self::delay_after`] with a fresh random number.
    pub fn next_delay(&self, failed_attempt: u32) -> Option<Duration> {
        self.delay_after(failed_attempt, rand::random::<f64>())
    }
}

/// `wait` plus a random share of up to `fraction` of it: spreads the moment many waiters come
/// back (deliveries behind one circuit, all due when it half-opens).
pub fn spread(wait: Duration, fraction: f64) -> Duration {
    wait + wait.mul_f64(fraction.clamp(0.0, 1.0) * rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_then_gives_up() {
        let p = RetryPolicy {
            max_attempts: 8,
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let delays: Vec<u64> = (1..8)
            .map(|a| p.delay_after(a, 0.5).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000, 32000, 60000]);
        assert_eq!(p.delay_after(8, 0.5), None);
    }

    #[test]
    fn jitter_stays_in_range_and_delays_still_grow() {
        let p = RetryPolicy::default();
        for attempt in 1..4 {
            let low = p.delay_after(attempt, 0.999).unwrap();
            let high = p.delay_after(attempt, 0.0).unwrap();
            let next_low = p.delay_after(attempt + 1, 0.999).unwrap();
            assert!(
                low <= high && high < next_low,
                "attempt {attempt}: {low:?} {high:?} {next_low:?}"
            );
            assert!(low.as_secs_f64() >= high.as_secs_f64() * 0.8 - 1e-9);
        }
        assert_eq!(p.delay_after(5, 0.0), None, "5 attempts by default");
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_in_paused_time() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let start = tokio::time::Instant::now();
        let mut attempt = 1;
        while let Some(d) = p.delay_after(attempt, 0.0) {
            tokio::time::sleep(d).await;
            attempt += 1;
        }
        assert_eq!(attempt, 5);
        assert_eq!(start.elapsed(), Duration::from_secs(1 + 2 + 4 + 8));
    }
}
