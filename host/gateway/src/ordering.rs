//! Per-key ordering of deliveries, for plugins that choose ordering keys (`keyed-router`).
//!
//! Every delivery routed by such a plugin takes a ticket when it is dispatched, in queue order.
//! Once its key is known it may proceed only when every earlier ticket's key is known too, and
//! its key is free: events with one key are then routed one at a time, in ticket (queue) order,
//! while other keys run in parallel. The [`Turn`] on a key lasts until the event is done with
//! in this process: a failed attempt is retried *in place* by the worker (its queue entry stays
//! in flight), so the key stays taken through the retry without the queue having to hand the
//! event back — which is what lets the worker pause fetching when too many deliveries wait.
//!
//! The order is kept by this process, in memory: run a single worker gateway (others
//! `WORKERS=false`) when ordering must hold across the whole queue. It is not kept across a
//! restart of that gateway.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a waiter sleeps before it looks at the state again (a safety net: a change wakes the
/// one waiter it concerns at once).
const RECHECK: Duration = Duration::from_secs(1);

/// The sequencer of one worker pool. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sequencer {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Tickets whose key is not known yet.
    unresolved: BTreeSet<u64>,
    keys: HashMap<String, Key>,
    /// The wake-up of each ticket waiting in [`Sequencer::enter`] (`notify_one` keeps a permit,
    /// so a wake-up sent before the waiter sleeps is not lost).
    wake: HashMap<u64, Arc<Notify>>,
    /// Waiting tickets blocked by an earlier unresolved ticket.
    behind: BTreeSet<u64>,
}

#[derive(Default)]
struct Key {
    /// The ticket whose turn it is.
    holder: Option<u64>,
    /// Tickets waiting for this key.
    waiting: BTreeSet<u64>,
}

impl State {
    fn wake(&self, ticket: u64) {
        if let Some(w) = self.wake.get(&ticket) {
            w.notify_one();
        }
    }

    /// Wakes the first ticket waiting for `key`: only it may take the key next.
    fn wake_key(&self, key: &str) {
        if let Some(&first) = self.keys.get(key).and_then(|k| k.waiting.first()) {
            self.wake(first);
        }
    }

    /// Marks `ticket` resolved and wakes the waiters no earlier ticket holds back any more.
    fn resolve(&mut self, ticket: u64) {
        self.unresolved.remove(&ticket);
        let low = self.unresolved.first().copied().unwrap_or(u64::MAX);
        let free: Vec<u64> = self.behind.range(..low).copied().collect();
        for n in free {
            self.behind.remove(&n);
            self.wake(n);
        }
    }

    /// Drops `key`'s entry once nobody holds or waits for it.
    fn forget_if_unused(&mut self, key: &str) {
        if self
            .keys
            .get(key)
            .is_some_and(|k| k.holder.is_none() && k.waiting.is_empty())
        {
            self.keys.remove(key);
        }
    }
}

/// A delivery's place in line; resolves itself if dropped before [`Sequencer::enter`].
pub struct Ticket {
    n: u64,
    seq: Sequencer,
    resolved: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.resolved {
            self.seq.lock().resolve(self.n);
        }
    }
}

/// A ticket waiting in [`Sequencer::enter`]; leaves the line cleanly however the wait ends.
struct InLine<'a> {
    seq: &'a Sequencer,
    n: u64,
    key: Option<&'a str>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut state = self.seq.lock();
        state.wake.remove(&self.n);
        state.behind.remove(&self.n);
        if let Some(k) = self.key
            && let Some(entry) = state.keys.get_mut(k)
            && entry.waiting.remove(&self.n)
        {
            state.forget_if_unused(k);
            state.wake_key(k);
        }
    }
}

/// The right to route events of a key; the next event of the key goes when it is dropped.
pub struct Turn {
    key: String,
    n: u64,
    seq: Sequencer,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self.seq.lock();
        if let Some(k) = state.keys.get_mut(&self.key)
            && k.holder == Some(self.n)
        {
            k.holder = None;
        }
        state.forget_if_unused(&self.key);
        state.wake_key(&self.key);
    }
}

impl Sequencer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next ticket. Call in queue order.
    pub fn register(&self) -> Ticket {
        let mut state = self.lock();
        let n = state.next_ticket;
        state.next_ticket += 1;
        state.unresolved.insert(n);
        Ticket {
            n,
            seq: self.clone(),
            resolved: false,
        }
    }

    /// Waits for the turn of `ticket`, whose key is now known. `None` for `key` passes as soon as
    /// every earlier ticket is resolved (and gets no turn). `park` runs once if the wait is for
    /// the key, so that the caller can give back its worker slot meanwhile. Returns `None` when
    /// `stop` is cancelled.
    pub async fn enter(
        &self,
        mut ticket: Ticket,
        key: Option<String>,
        stop: &CancellationToken,
        park: impl FnOnce(),
    ) -> Option<Option<Turn>> {
        let n = ticket.n;
        let wake = Arc::new(Notify::new());
        {
            let mut state = self.lock();
            state.wake.insert(n, wake.clone());
            if let Some(k) = &key {
                state.keys.entry(k.clone()).or_default().waiting.insert(n);
            }
            state.resolve(n);
            ticket.resolved = true;
        }
        let _line = InLine {
            seq: self,
            n,
            key: key.as_deref(),
        };
        let mut park = Some(park);
        loop {
            if let Some(turn) = self.step(n, key.as_deref(), &mut park) {
                return Some(turn);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(Instant::now() + RECHECK) => {}
            }
        }
    }

    /// `Some` when ticket `n` may go now.
    fn step(
        &self,
        n: u64,
        key: Option<&str>,
        park: &mut Option<impl FnOnce()>,
    ) -> Option<Option<Turn>> {
        let mut state = self.lock();
        if state.unresolved.first().is_some_and(|&u| u < n) {
            state.behind.insert(n);
            return None;
        }
        let Some(k) = key else {
            return Some(None);
        };
        let entry = state.keys.entry(k.to_string()).or_default();
        if entry.holder.is_some() || entry.waiting.first() != Some(&n) {
            if let Some(p) = park.take() {
                p();
            }
            return None;
        }
        entry.waiting.remove(&n);
        entry.holder = Some(n);
        Some(Some(Turn {
            key: k.to_string(),
            n,
            seq: self.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn key(k: &str) -> Option<String> {
        Some(k.to_string())
    }

    #[tokio::test]
    async fn one_key_goes_in_ticket_order_and_other_keys_in_parallel() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let (t1, t2, t3) = (seq.register(), seq.register(), seq.register());
        // The second event's key is known first; it still waits for the first ticket.
        let (s2, stop2) = (seq.clone(), stop.clone());
        let second = tokio::spawn(async move { s2.enter(t2, key("a"), &stop2, || {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        let first = seq.enter(t1, key("a"), &stop, || {}).await;
        let first = first.unwrap().unwrap();
        // Another key is not held up by `a`.
        let third = seq.enter(t3, key("b"), &stop, || {}).await;
        assert!(third.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "e2 must wait for e1");
        drop(first);
        let turn = second.await.unwrap().unwrap().unwrap();
        assert_eq!(turn.key, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_woken_at_once_not_by_polling() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq.enter(t1, key("a"), &stop, || {}).await;
        let (s, stop2, t2) = (seq.clone(), stop.clone(), seq.register());
        let second = tokio::spawn(async move { s.enter(t2, key("a"), &stop2, || {}).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let released = Instant::now();
        drop(first);
        drop(second.await.unwrap());
        assert!(
            released.elapsed() < RECHECK / 2,
            "woken by the recheck, not by the release"
        );

        // Behind an unresolved ticket: woken when it resolves.
        let t3 = seq.register();
        let (s, stop4, t4) = (seq.clone(), stop.clone(), seq.register());
        let fourth = tokio::spawn(async move { s.enter(t4, None, &stop4, || {}).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let resolved = Instant::now();
        drop(t3);
        assert!(fourth.await.unwrap().unwrap().is_none());
        assert!(
            resolved.elapsed() < RECHECK / 2,
            "woken by the recheck, not by the resolution"
        );
        let state = seq.lock();
        assert!(state.keys.is_empty() && state.wake.is_empty() && state.behind.is_empty());
    }

    #[tokio::test]
    async fn a_turn_kept_through_retries_holds_the_key_and_parks_the_waiters() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        // The holder keeps its turn while it retries in place.
        let holder = seq.enter(t1, key("a"), &stop, || {}).await.unwrap();
        let t2 = seq.register();
        let (s, stop2) = (seq.clone(), stop.clone());
        let parked = Arc::new(AtomicBool::new(false));
        let p = parked.clone();
        let second = tokio::spawn(async move {
            let park = move || p.store(true, Ordering::SeqCst);
            s.enter(t2, key("a"), &stop2, park).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            parked.load(Ordering::SeqCst),
            "the waiter gave back its slot"
        );
        assert!(!second.is_finished());
        drop(holder);
        assert!(second.await.unwrap().unwrap().is_some());
        let state = seq.lock();
        assert!(state.keys.is_empty());
    }

    #[tokio::test]
    async fn unkeyed_dropped_and_stopped_tickets_do_not_block_or_leak() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let t2 = seq.register();
        drop(t1);
        assert!(seq.enter(t2, None, &stop, || {}).await.unwrap().is_none());
        let t3 = seq.register();
        let held = seq.enter(t3, key("a"), &stop, || {}).await;
        let stopped = CancellationToken::new();
        stopped.cancel();
        let t4 = seq.register();
        assert!(seq.enter(t4, key("a"), &stopped, || {}).await.is_none());
        drop(held);
        let state = seq.lock();
        assert!(state.keys.is_empty() && state.unresolved.is_empty());
        assert!(state.wake.is_empty() && state.behind.is_empty());
    }
}
