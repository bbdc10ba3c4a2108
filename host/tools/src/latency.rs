//! Latency summaries of the tools' reports.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency summary, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// The summary of a histogram of microseconds.
    pub fn of_micros(hist: &Histogram<u64>) -> Latency {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: hist.max() as f64 / 1000.0,
        }
    }
}

/// `p50 1.00  p90 2.00  p99 3.00  max 4.00`, as the reports print it.
impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}
