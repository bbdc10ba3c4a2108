//! Plugin memory: each instance's cap, and the budget all instances share, charged on actual
//! growth (creation included) and refunded when the instance goes.

use std::sync::Arc;

/// Linear memory charged by every live instance, against [`Limits::memory_total_bytes`](super::Limits::memory_total_bytes). Calls
/// beside live traffic (shadow comparisons, dry runs) may hold at most a quarter of it, so that
/// they never push live routing into memory pressure.
#[derive(Debug)]
pub(super) struct MemoryBudget {
    pub(super) total: u64,
    pub(super) used: std::sync::atomic::AtomicU64,
    pub(super) side_used: std::sync::atomic::AtomicU64,
}

impl MemoryBudget {
    pub(super) fn new(total: u64) -> Self {
        MemoryBudget {
            total,
            used: Default::default(),
            side_used: Default::default(),
        }
    }

    fn side_total(&self) -> u64 {
        self.total / 4
    }

    /// Charges `bytes` if they fit under the total (and, for a side call, under its share).
    fn charge(&self, bytes: u64, side: bool) -> bool {
        use std::sync::atomic::Ordering;
        let fits = |counter: &std::sync::atomic::AtomicU64, limit: u64| {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(bytes).filter(|n| *n <= limit)
                })
                .is_ok()
        };
        if side && !fits(&self.side_used, self.side_total()) {
            return false;
        }
        if fits(&self.used, self.total) {
            return true;
        }
        if side {
            self.side_used.fetch_sub(bytes, Ordering::AcqRel);
        }
        false
    }

    fn refund(&self, bytes: u64, side: bool) {
        use std::sync::atomic::Ordering;
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if side {
            self.side_used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Caps one instance's linear memory and charges its actual growth (creation included) to the
/// shared budget; remembers which limit refused a growth, so that the resulting failure is
/// reported as [`PluginError::MemoryExceeded`](crate::PluginError::MemoryExceeded) (the plugin's) or
/// [`PluginError::MemoryPressure`](crate::PluginError::MemoryPressure) (the host's) rather than as a generic trap. Nothing waits:
/// a refused growth fails the call at once. The charge is refunded when the store is dropped.
pub(super) struct MemoryLimiter {
    pub(super) cap: u64,
    pub(super) exceeded: bool,
    /// A call beside live traffic: charged to the side share too.
    pub(super) side: bool,
    pub(super) budget: Arc<MemoryBudget>,
    pub(super) charged: u64,
    /// The last growth charged, refunded if the growth then fails.
    pub(super) last_charge: u64,
    pub(super) pressure: bool,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.refund(self.charged, self.side);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64;
        if !self.budget.charge(growth, self.side) {
            self.pressure = true;
            return Ok(false);
        }
        self.charged += growth;
        self.last_charge = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.budget.refund(self.last_charge, self.side);
        self.charged -= self.last_charge;
        self.last_charge = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod budget_tests {
    use super::MemoryBudget;

    #[test]
    fn side_calls_hold_at_most_a_quarter_and_refunds_balance() {
        let b = MemoryBudget {
            total: 100,
            used: Default::default(),
            side_used: Default::default(),
        };
        assert!(b.charge(25, true));
        assert!(!b.charge(1, true), "the side share is full");
        assert!(b.charge(75, false), "live calls get the rest");
        assert!(!b.charge(1, false), "the whole budget is in use");
        b.refund(25, true);
        assert!(
            !b.charge(30, true),
            "a side growth past its share is refused"
        );
        assert!(b.charge(25, true));
        b.refund(25, true);
        b.refund(75, false);
        let used = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((used(&b.used), used(&b.side_used)), (0, 0));
    }
}
