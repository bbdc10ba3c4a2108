//! Per-key ordering of deliveries, for plugins that choose ordering keys (`keyed-router`).
//!
//! Every delivery routed by such a plugin takes a ticket when it is dispatched, in queue order.
//! Once its key is known it may proceed only when every earlier ticket's key is known too, and
//! its key is free: events with one key are then routed one at a time, in ticket (queue) order,
//! while other keys run in parallel. An event whose attempt failed keeps holding its key while it
//! waits for its retry, so the events after it wait too. When the hold runs past the retry's due
//! time (plus a margin), the next waiter asks the queue whether the holder is still queued: if
//! so the hold is extended, if not (finished elsewhere) the key moves on.
//!
//! The order is kept by this process, in memory: run a single worker gateway (others
//! `WORKERS=false`) when ordering must hold across the whole queue. It is not kept across a
//! restart of that gateway.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a waiter sleeps before it looks at the state again (a safety net: a change wakes the
/// one waiter it concerns at once).
const RECHECK: Duration = Duration::from_secs(1);
/// How long a hold is extended when its holder is found still queued.
const EXTEND: Duration = Duration::from_secs(10);
/// Holds expired this long with nobody waiting are dropped (their holder went elsewhere).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Tickets between two sweeps for forgotten holds.
const SWEEP_EVERY: u64 = 1024;

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
    /// Event id → the key it holds.
    held: HashMap<String, String>,
    /// The wake-up of each ticket waiting in [`Sequencer::enter`] (`notify_one` keeps a permit,
    /// so a wake-up sent before the waiter sleeps is not lost).
    wake: HashMap<u64, Arc<Notify>>,
    /// Waiting tickets blocked by an earlier unresolved ticket.
    behind: BTreeSet<u64>,
}

#[derive(Default)]
struct Key {
    holder: Option<Holder>,
    /// Tickets waiting for this key.
    waiting: BTreeSet<u64>,
}

struct Holder {
    event_id: String,
    /// Set while the holder waits for a retry: past it, waiters check that it is still queued.
    until: Option<Instant>,
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

    /// Drops the hold of `event_id` (if any) and the key's entry once nobody uses it.
    fn release(&mut self, event_id: &str) {
        let Some(key) = self.held.remove(event_id) else {
            return;
        };
        if let Some(k) = self.keys.get_mut(&key) {
            if k.holder.as_ref().is_some_and(|h| h.event_id == event_id) {
                k.holder = None;
            }
            if k.holder.is_none() && k.waiting.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.wake_key(&key);
    }

    /// Forgets holds long expired with nobody waiting for them.
    fn sweep(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .keys
            .values()
            .filter(|k| k.waiting.is_empty())
            .filter_map(|k| k.holder.as_ref())
            .filter(|h| h.until.is_some_and(|u| u + FORGET_AFTER <= now))
            .map(|h| h.event_id.clone())
            .collect();
        for event_id in stale {
            self.release(&event_id);
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
            if entry.holder.is_none() && entry.waiting.is_empty() {
                state.keys.remove(k);
            } else {
                state.wake_key(k);
            }
        }
    }
}

/// The right to route an event with its key; released when dropped unless held for a retry.
pub struct Turn {
    event_id: String,
    seq: Sequencer,
    done: bool,
}

impl Turn {
    /// The event finished (routed, dead-lettered, or found done): the next one may go.
    pub fn release(mut self) {
        self.done = true;
        self.seq.settle(&self.event_id, None);
    }

    /// The event comes back for another attempt at about `until`: keep the key until then.
    pub fn hold(mut self, until: Instant) {
        self.done = true;
        self.seq.settle(&self.event_id, Some(until));
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.done {
            self.seq.settle(&self.event_id, None);
        }
    }
}

/// What a waiter does next.
enum Step {
    Go(Option<Turn>),
    Wait(Instant),
    /// The hold of this event ran out: is it still queued?
    Check(String),
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
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            state.sweep(Instant::now());
        }
        Ticket {
            n,
            seq: self.clone(),
            resolved: false,
        }
    }

    /// After an attempt of `event_id` (with or without a turn): releases the key it holds, or
    /// keeps it until about `until` when the event comes back for another attempt.
    pub fn settle(&self, event_id: &str, until: Option<Instant>) {
        let mut state = self.lock();
        let Some(key) = state.held.get(event_id).cloned() else {
            return;
        };
        match until {
            Some(u) => {
                if let Some(h) = state
                    .keys
                    .get_mut(&key)
                    .and_then(|k| k.holder.as_mut())
                    .filter(|h| h.event_id == event_id)
                {
                    h.until = Some(u);
                }
                // The first waiter learns when the hold runs out.
                state.wake_key(&key);
            }
            None => state.release(event_id),
        }
    }

    /// Waits for the turn of `ticket`, whose key is now known. `None` for `key` passes as soon as
    /// every earlier ticket is resolved. `park` runs once if the wait is for the key (so the
    /// caller can give back its worker slot meanwhile); `still_queued` tells whether a holder
    /// whose hold ran out is still in the queue. Returns `None` when `stop` is cancelled.
    pub async fn enter<F, Fut>(
        &self,
        mut ticket: Ticket,
        key: Option<String>,
        event_id: &str,
        stop: &CancellationToken,
        park: impl FnOnce(),
        still_queued: F,
    ) -> Option<Option<Turn>>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = bool>,
    {
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
            let wake_at = match self.step(n, key.as_deref(), event_id, &mut park) {
                Step::Go(turn) => return Some(turn),
                Step::Wait(at) => at,
                Step::Check(holder) => {
                    let queued = tokio::select! {
                        _ = stop.cancelled() => return None,
                        q = still_queued(holder.clone()) => q,
                    };
                    let mut state = self.lock();
                    if queued {
                        let k = state.held.get(&holder).cloned();
                        if let Some(h) = k
                            .and_then(|k| state.keys.get_mut(&k))
                            .and_then(|k| k.holder.as_mut())
                            .filter(|h| h.event_id == holder)
                        {
                            h.until = Some(Instant::now() + EXTEND);
                        }
                    } else {
                        tracing::warn!(ordering_key = key.as_deref().unwrap_or(""), %holder,
                            "ordering key released: its holder is no longer queued here");
                        state.release(&holder);
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    fn step(
        &self,
        n: u64,
        key: Option<&str>,
        event_id: &str,
        park: &mut Option<impl FnOnce()>,
    ) -> Step {
        let mut state = self.lock();
        let now = Instant::now();
        if state.unresolved.first().is_some_and(|&u| u < n) {
            state.behind.insert(n);
            return Step::Wait(now + RECHECK);
        }
        let Some(k) = key else {
            return Step::Go(None);
        };
        let entry = state.keys.entry(k.to_string()).or_default();
        let first = entry.waiting.first() == Some(&n);
        match &entry.holder {
            // The holder's own retry takes its key back at once.
            Some(h) if h.event_id == event_id && h.until.is_some() => {}
            None if first => {}
            Some(h) if first && h.until.is_some_and(|u| u <= now) => {
                return Step::Check(h.event_id.clone());
            }
            holder => {
                let at = holder
                    .as_ref()
                    .and_then(|h| h.until)
                    .map_or(now + RECHECK, |u| u.min(now + RECHECK));
                if let Some(p) = park.take() {
                    p();
                }
                return Step::Wait(at);
            }
        }
        entry.waiting.remove(&n);
        entry.holder = Some(Holder {
            event_id: event_id.to_string(),
            until: None,
        });
        // An event that held another key (its key changed) gives that one up.
        if let Some(old) = state.held.insert(event_id.to_string(), k.to_string())
            && old != k
        {
            state.held.insert(event_id.to_string(), old);
            state.release(event_id);
            state.held.insert(event_id.to_string(), k.to_string());
        }
        Step::Go(Some(Turn {
            event_id: event_id.to_string(),
            seq: self.clone(),
            done: false,
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

    async fn gone(_: String) -> bool {
        false
    }

    async fn queued(_: String) -> bool {
        true
    }

    #[tokio::test]
    async fn one_key_goes_in_ticket_order_and_other_keys_in_parallel() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let (t1, t2, t3) = (seq.register(), seq.register(), seq.register());
        // The second event's key is known first; it still waits for the first ticket.
        let (s2, stop2) = (seq.clone(), stop.clone());
        let second =
            tokio::spawn(async move { s2.enter(t2, key("a"), "e2", &stop2, || {}, gone).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        let first = seq.enter(t1, key("a"), "e1", &stop, || {}, gone).await;
        let first = first.unwrap().unwrap();
        // Another key is not held up by `a`.
        let third = seq.enter(t3, key("b"), "e3", &stop, || {}, gone).await;
        assert!(third.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "e2 must wait for e1");
        first.release();
        let turn = second.await.unwrap().unwrap().unwrap();
        assert_eq!(turn.event_id, "e2");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_woken_at_once_not_by_polling() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq.enter(t1, key("a"), "e1", &stop, || {}, gone).await;
        let (s, stop2, t2) = (seq.clone(), stop.clone(), seq.register());
        let second =
            tokio::spawn(async move { s.enter(t2, key("a"), "e2", &stop2, || {}, gone).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let released = Instant::now();
        first.unwrap().unwrap().release();
        second.await.unwrap().unwrap().unwrap().release();
        assert!(
            released.elapsed() < RECHECK / 2,
            "woken by the recheck, not by the release"
        );

        // Behind an unresolved ticket: woken when it resolves.
        let t3 = seq.register();
        let (s, stop4, t4) = (seq.clone(), stop.clone(), seq.register());
        let fourth =
            tokio::spawn(async move { s.enter(t4, None, "e4", &stop4, || {}, gone).await });
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
    async fn a_retrying_holder_keeps_its_key_and_gets_it_back() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq.enter(t1, key("a"), "e1", &stop, || {}, gone).await;
        first
            .unwrap()
            .unwrap()
            .hold(Instant::now() + Duration::from_secs(30));
        let t2 = seq.register();
        let (s, stop2) = (seq.clone(), stop.clone());
        let parked = Arc::new(AtomicBool::new(false));
        let p = parked.clone();
        let second = tokio::spawn(async move {
            let park = move || p.store(true, Ordering::SeqCst);
            s.enter(t2, key("a"), "e2", &stop2, park, gone).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(parked.load(Ordering::SeqCst));
        // The retry of e1 comes back with a later ticket and takes its key at once.
        let t3 = seq.register();
        let retry = seq.enter(t3, key("a"), "e1", &stop, || {}, gone).await;
        assert!(!second.is_finished());
        retry.unwrap().unwrap().release();
        assert_eq!(second.await.unwrap().unwrap().unwrap().event_id, "e2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_hold_is_extended_while_the_holder_is_queued_and_released_when_it_is_not() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq.enter(t1, key("a"), "e1", &stop, || {}, gone).await;
        first
            .unwrap()
            .unwrap()
            .hold(Instant::now() + Duration::from_secs(5));
        // Still queued (a backlog ahead of its retry): e2 keeps waiting past the hold.
        let t2 = seq.register();
        let waiting = seq.enter(t2, key("a"), "e2", &stop, || {}, queued);
        let waited = tokio::time::timeout(Duration::from_secs(60), waiting).await;
        assert!(waited.is_err(), "e2 overtook a holder that is still queued");
        // Gone from the queue (finished elsewhere): the key moves on.
        let t3 = seq.register();
        let started = Instant::now();
        let turn = seq.enter(t3, key("a"), "e3", &stop, || {}, gone).await;
        assert_eq!(turn.unwrap().unwrap().event_id, "e3");
        assert!(started.elapsed() <= EXTEND + RECHECK);
    }

    #[tokio::test]
    async fn settling_without_a_turn_releases_the_key_and_leaves_nothing_behind() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq.enter(t1, key("a"), "e1", &stop, || {}, gone).await;
        first
            .unwrap()
            .unwrap()
            .hold(Instant::now() + Duration::from_secs(30));
        // e1's next attempt had no turn (its key call failed) and then finished.
        seq.settle("e1", None);
        let t2 = seq.register();
        assert!(
            seq.enter(t2, key("a"), "e2", &stop, || {}, gone)
                .await
                .unwrap()
                .is_some()
        );
        let state = seq.lock();
        assert!(state.keys.is_empty() && state.held.is_empty());
    }

    #[tokio::test]
    async fn unkeyed_dropped_and_stopped_tickets_do_not_block_or_leak() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let t2 = seq.register();
        drop(t1);
        assert!(
            seq.enter(t2, None, "e2", &stop, || {}, gone)
                .await
                .unwrap()
                .is_none()
        );
        let t3 = seq.register();
        let held = seq.enter(t3, key("a"), "e3", &stop, || {}, gone).await;
        let stopped = CancellationToken::new();
        stopped.cancel();
        let t4 = seq.register();
        assert!(
            seq.enter(t4, key("a"), "e4", &stopped, || {}, gone)
                .await
                .is_none()
        );
        held.unwrap().unwrap().release();
        let state = seq.lock();
        assert!(state.keys.is_empty() && state.held.is_empty() && state.unresolved.is_empty());
        assert!(state.wake.is_empty() && state.behind.is_empty());
    }
}
