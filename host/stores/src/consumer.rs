//! Consuming a queue lane: one turn of a pool's fetch loop (a permit, then a batch), what every
//! consumer runs beside it — due retries moved to ready (promote), deliveries that a dead
//! consumer left taken over (reclaim), this consumer's long-held deliveries kept from being
//! reclaimed (keep-alive) — and the set of deliveries it is working on, so that a reclaim never
//! starts one twice.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_model::clock::now_ms;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::queue::{Delivery, Queue};

/// Deliveries a reclaim pass takes at most.
const RECLAIM_BATCH: usize = 256;
/// How often due retries are moved to ready.
const PROMOTE_EVERY: Duration = Duration::from_millis(100);
/// Deliveries a fetch takes at most.
const FETCH_BATCH: usize = 256;
/// How long a fetch waits for deliveries to arrive.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// The pause after a fetch failed.
const BACKEND_PAUSE: Duration = Duration::from_millis(500);

/// One consumer of one lane.
pub struct Consumer {
    pub queue: Arc<dyn Queue>,
    /// The consumer's name (unique among the gateways sharing the queue).
    pub name: String,
    /// An unfinished delivery is reclaimed after this long without being touched.
    pub visibility_timeout: Duration,
    /// Deliveries being worked on, with when each was last touched.
    active: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .finish()
    }
}

impl Consumer {
    pub fn new(queue: Arc<dyn Queue>, name: String, visibility_timeout: Duration) -> Self {
        Consumer {
            queue,
            name,
            visibility_timeout,
            active: Mutex::new(HashMap::new()),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `id` as worked on; `false` when it already is (a reclaimed copy of an entry this
    /// consumer is still working on: not to be started twice).
    pub fn start(&self, id: &str) -> bool {
        match self.active().entry(id.to_string()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Instant::now());
                true
            }
        }
    }

    /// `id` is done with.
    pub fn done(&self, id: &str) {
        self.active().remove(id);
    }

    /// One turn of a pool's fetch loop: waits for a permit of `permits` (the first delivery's),
    /// then fetches up to one more than the permits still free, at most `cap()` (asked once the
    /// permit is held). `None` when `stop` fires or `permits` is closed. A failed fetch is logged
    /// and paused on, and gives back the permit and no deliveries.
    pub async fn fetch(
        &self,
        stop: &CancellationToken,
        permits: &Arc<Semaphore>,
        cap: impl Fn() -> usize,
    ) -> Option<(Option<OwnedSemaphorePermit>, Vec<Delivery>)> {
        let first = tokio::select! {
            _ = stop.cancelled() => return None,
            p = permits.clone().acquire_owned() => p.ok()?,
        };
        let max = (1 + permits.available_permits())
            .min(FETCH_BATCH)
            .min(cap());
        match self.queue.fetch(&self.name, max, FETCH_WAIT).await {
            Ok(deliveries) => Some((Some(first), deliveries)),
            Err(e) => {
                drop(first);
                tracing::warn!(error = %e, "cannot fetch deliveries from the queue; retrying");
                tokio::select! {
                    _ = stop.cancelled() => None,
                    _ = tokio::time::sleep(BACKEND_PAUSE) => Some((None, Vec::new())),
                }
            }
        }
    }

    /// The permit for the next delivery of a batch: the one [`Consumer::fetch`] took for the
    /// first, then a new one from `permits`. `None` when `permits` is closed.
    pub async fn permit(
        first: &mut Option<OwnedSemaphorePermit>,
        permits: &Arc<Semaphore>,
    ) -> Option<OwnedSemaphorePermit> {
        match first.take() {
            Some(p) => Some(p),
            None => permits.clone().acquire_owned().await.ok(),
        }
    }

    /// Moves due retries to ready until `stop`.
    pub async fn promote_loop(&self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            match self.queue.promote_due(now_ms(), 1000).await {
                Ok(n) if n > 0 => tracing::debug!(promoted = n, "due retries moved to ready"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot promote due retries"),
            }
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(PROMOTE_EVERY) => {} }
        }
    }

    /// Every quarter visibility timeout, takes over up to `room()` deliveries idle past the
    /// visibility timeout and hands them to `dispatch`, until `stop`.
    pub async fn reclaim_loop<F, Fut>(
        &self,
        stop: &CancellationToken,
        room: impl Fn() -> usize,
        dispatch: F,
    ) where
        F: Fn(Vec<Delivery>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let every = (self.visibility_timeout / 4).max(Duration::from_millis(250));
        while !stop.is_cancelled() {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(every) => {} }
            let max = room().min(RECLAIM_BATCH);
            if max == 0 {
                continue;
            }
            match self
                .queue
                .reclaim(&self.name, self.visibility_timeout, max)
                .await
            {
                Ok(ds) if !ds.is_empty() => {
                    tracing::warn!(
                        count = ds.len(),
                        "reclaimed deliveries left unfinished by a consumer"
                    );
                    dispatch(ds).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reclaim idle deliveries"),
            }
        }
    }

    /// Touches the deliveries this consumer has held for a while, so that the queue does not hand
    /// them to another consumer, until `stop`.
    pub async fn keepalive_loop(&self, stop: &CancellationToken) {
        let every = (self.visibility_timeout / 3).max(Duration::from_millis(250));
        while !stop.is_cancelled() {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(every) => {} }
            let now = Instant::now();
            let due: Vec<String> = self
                .active()
                .iter_mut()
                .filter(|(_, touched)| now.duration_since(**touched) >= every)
                .map(|(id, touched)| {
                    *touched = now;
                    id.clone()
                })
                .collect();
            if due.is_empty() {
                continue;
            }
            if let Err(e) = self.queue.touch(&self.name, &due).await {
                tracing::warn!(error = %e, count = due.len(), "cannot keep deliveries in flight");
            }
        }
    }
}
