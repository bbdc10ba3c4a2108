//! Per-key ordering of deliveries, for plugins that choose ordering keys (`keyed-router`).
//!
//! Every delivery routed by such a plugin takes a ticket when it is dispatched, in queue order.
//! Once its key is known it may proceed only when every earlier ticket's key is known too, and
//! its key is free: events with one key are then routed one at a time, in ticket (queue) order,
//! while other keys run in parallel. An event whose attempt failed keeps holding its key while it
//! waits for its retry, so the events after it wait too; if it has not come back by the time
//! given (it may have been taken by another gateway), the key is released.
//!
//! The order is kept by this process: run a single worker gateway (others `WORKERS=false`) when
//! ordering must hold across the whole queue.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a waiter sleeps before it looks at the state again.
const RECHECK: Duration = Duration::from_secs(1);

/// The sequencer of one worker pool. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sequencer {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Tickets whose key is not known yet.
    unresolved: BTreeSet<u64>,
    keys: HashMap<String, Key>,
}

#[derive(Default)]
struct Key {
    holder: Option<Holder>,
    /// Tickets waiting for this key.
    waiting: BTreeSet<u64>,
}

struct Holder {
    event_id: String,
    /// Set while the holder waits for a retry: the key is released if it is not back by then.
    until: Option<Instant>,
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
            self.seq.lock().unresolved.remove(&self.n);
            self.seq.inner.changed.notify_waiters();
        }
    }
}

/// The right to route an event with a key; released when dropped unless held for a retry.
pub struct Turn {
    key: String,
    event_id: String,
    seq: Sequencer,
    done: bool,
}

impl Turn {
    /// The event finished (routed, dead-lettered, or found done): the next one may go.
    pub fn release(mut self) {
        self.done = true;
        self.seq.release(&self.key, &self.event_id);
    }

    /// The event comes back for another attempt at about `until`: keep the key until then.
    pub fn hold(mut self, until: Instant) {
        self.done = true;
        let mut state = self.seq.lock();
        if let Some(h) = state
            .keys
            .get_mut(&self.key)
            .and_then(|k| k.holder.as_mut())
            .filter(|h| h.event_id == self.event_id)
        {
            h.until = Some(until);
        }
        drop(state);
        self.seq.inner.changed.notify_waiters();
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.done {
            self.seq.release(&self.key, &self.event_id);
        }
    }
}

impl Sequencer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
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

    fn release(&self, key: &str, event_id: &str) {
        let mut state = self.lock();
        if let Some(k) = state.keys.get_mut(key) {
            if k.holder.as_ref().is_some_and(|h| h.event_id == event_id) {
                k.holder = None;
            }
            if k.holder.is_none() && k.waiting.is_empty() {
                state.keys.remove(key);
            }
        }
        drop(state);
        self.inner.changed.notify_waiters();
    }

    /// Waits for the turn of `ticket`, whose key is now known. `None` for `key` passes as soon as
    /// every earlier ticket is resolved. `park` runs once if the wait is for the key (so the
    /// caller can give back its worker slot meanwhile). Returns `None` when `stop` is cancelled.
    pub async fn enter(
        &self,
        mut ticket: Ticket,
        key: Option<String>,
        event_id: &str,
        stop: &CancellationToken,
        park: impl FnOnce(),
    ) -> Option<Option<Turn>> {
        let n = ticket.n;
        {
            let mut state = self.lock();
            state.unresolved.remove(&n);
            if let Some(k) = &key {
                state.keys.entry(k.clone()).or_default().waiting.insert(n);
            }
            ticket.resolved = true;
        }
        self.inner.changed.notify_waiters();
        let mut park = Some(park);
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut state = self.lock();
                let earlier_pending = state.unresolved.first().is_some_and(|&u| u < n);
                match &key {
                    _ if earlier_pending => Instant::now() + RECHECK,
                    None => return Some(None),
                    Some(k) => {
                        let entry = state.keys.entry(k.clone()).or_default();
                        let now = Instant::now();
                        let first = entry.waiting.first() == Some(&n);
                        let free = match &entry.holder {
                            None => first,
                            Some(h) if h.event_id == event_id => true,
                            Some(h) => first && h.until.is_some_and(|u| u <= now),
                        };
                        if free {
                            if let Some(h) = &entry.holder
                                && h.event_id != event_id
                            {
                                tracing::warn!(ordering_key = %k, holder = %h.event_id,
                                    "ordering key released: its holder did not come back for its retry in time");
                            }
                            entry.waiting.remove(&n);
                            entry.holder = Some(Holder {
                                event_id: event_id.to_string(),
                                until: None,
                            });
                            return Some(Some(Turn {
                                key: k.clone(),
                                event_id: event_id.to_string(),
                                seq: self.clone(),
                                done: false,
                            }));
                        }
                        if let Some(p) = park.take() {
                            p();
                        }
                        match entry.holder.as_ref().and_then(|h| h.until) {
                            Some(u) => u.min(now + RECHECK),
                            None => now + RECHECK,
                        }
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    if let Some(k) = &key {
                        let mut state = self.lock();
                        if let Some(entry) = state.keys.get_mut(k) {
                            entry.waiting.remove(&n);
                        }
                    }
                    return None;
                }
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Option<String> {
        Some(k.to_string())
    }

    #[tokio::test]
    async fn one_key_goes_in_ticket_order_and_other_keys_in_parallel() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let (t1, t2, t3) = (seq.register(), seq.register(), seq.register());
        // The second event's key is known first; it still waits for the first ticket.
        let s2 = seq.clone();
        let stop2 = stop.clone();
        let second = tokio::spawn(async move { s2.enter(t2, key("a"), "e2", &stop2, || {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        let first = seq
            .enter(t1, key("a"), "e1", &stop, || {})
            .await
            .unwrap()
            .unwrap();
        // Another key is not held up by `a`.
        let third = seq.enter(t3, key("b"), "e3", &stop, || {}).await.unwrap();
        assert!(third.is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "e2 must wait for e1");
        first.release();
        let turn = second.await.unwrap().unwrap().unwrap();
        assert_eq!(turn.event_id, "e2");
    }

    #[tokio::test]
    async fn a_retrying_holder_keeps_its_key_and_gets_it_back() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq
            .enter(t1, key("a"), "e1", &stop, || {})
            .await
            .unwrap()
            .unwrap();
        first.hold(Instant::now() + Duration::from_secs(30));
        let t2 = seq.register();
        let (s, stop2) = (seq.clone(), stop.clone());
        let parked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = parked.clone();
        let second = tokio::spawn(async move {
            s.enter(t2, key("a"), "e2", &stop2, move || {
                p.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(parked.load(std::sync::atomic::Ordering::SeqCst));
        // The retry of e1 comes back with a later ticket and takes its key at once.
        let t3 = seq.register();
        let retry = seq
            .enter(t3, key("a"), "e1", &stop, || {})
            .await
            .unwrap()
            .unwrap();
        assert!(!second.is_finished());
        retry.release();
        assert_eq!(second.await.unwrap().unwrap().unwrap().event_id, "e2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_does_not_come_back_releases_its_key() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let first = seq
            .enter(t1, key("a"), "e1", &stop, || {})
            .await
            .unwrap()
            .unwrap();
        first.hold(Instant::now() + Duration::from_secs(5));
        let t2 = seq.register();
        let started = Instant::now();
        let turn = seq
            .enter(t2, key("a"), "e2", &stop, || {})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(turn.event_id, "e2");
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn unkeyed_and_dropped_tickets_do_not_block() {
        let seq = Sequencer::default();
        let stop = CancellationToken::new();
        let t1 = seq.register();
        let t2 = seq.register();
        drop(t1);
        assert!(
            seq.enter(t2, None, "e2", &stop, || {})
                .await
                .unwrap()
                .is_none()
        );
        let t3 = seq.register();
        let stopped = CancellationToken::new();
        stopped.cancel();
        let held = seq
            .enter(t3, key("a"), "e3", &stop, || {})
            .await
            .unwrap()
            .unwrap();
        let t4 = seq.register();
        assert!(
            seq.enter(t4, key("a"), "e4", &stopped, || {})
                .await
                .is_none()
        );
        held.release();
        assert!(seq.lock().keys.is_empty());
    }
}
