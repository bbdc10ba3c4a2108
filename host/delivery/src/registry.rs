//! The destinations in force: each declared destination with its client, its concurrency slots,
//! its rate limit, its circuit and its recent outcomes. Rebuilt when the manifest changes; a
//! destination whose settings did not change keeps its circuit and counters.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::circuit::{Breaker, BreakerSettings, BreakerSnapshot};
use crate::destination::{self, Destination};

/// Outcomes kept per destination for its recent success rate.
const RECENT: usize = 100;

/// A destination in force.
pub struct Live {
    pub config: Destination,
    pub client: reqwest::Client,
    /// `max_in_flight` permits.
    pub slots: Arc<Semaphore>,
    pub limiter: Option<DefaultDirectRateLimiter>,
    pub breaker: Breaker,
    in_flight: AtomicU64,
    /// The latest outcomes, `true` for delivered.
    recent: Mutex<VecDeque<bool>>,
}

impl Live {
    fn new(config: Destination, breaker: BreakerSettings) -> Result<Self, String> {
        let client = crate::send::client(&config)
            .map_err(|e| format!("destinations.{}: cannot build its client: {e}", config.name))?;
        Ok(Live {
            client,
            slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            limiter: NonZeroU32::new(config.rate_per_sec)
                .map(|r| RateLimiter::direct(Quota::per_second(r))),
            breaker: Breaker::new(breaker),
            in_flight: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            config,
        })
    }

    /// Counts a delivery attempt under way while the guard lives.
    pub fn sending(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Remembers an attempt's outcome (for the recent success rate).
    pub fn remember(&self, delivered: bool) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(delivered);
    }

    fn status(&self, now: Instant) -> DestinationStatus {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let delivered = recent.iter().filter(|d| **d).count() as u64;
        let attempts = recent.len() as u64;
        DestinationStatus {
            name: self.config.name.clone(),
            url: self.config.shown_url(),
            circuit: self.breaker.snapshot(now),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.config.max_in_flight,
            rate_per_sec: self.config.rate_per_sec,
            allow_private: self.config.allow_private,
            recent_attempts: attempts,
            recent_delivered: delivered,
            recent_success_rate: (attempts > 0).then(|| delivered as f64 / attempts as f64),
        }
    }
}

/// A delivery attempt under way (see [`Live::sending`]).
pub struct InFlight<'a>(&'a Live);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A destination as `GET /destinations` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStatus {
    pub name: String,
    /// Without user info or query.
    pub url: String,
    pub circuit: BreakerSnapshot,
    pub in_flight: u64,
    pub max_in_flight: u32,
    pub rate_per_sec: u32,
    pub allow_private: bool,
    /// Of the latest attempts (at most 100): how many, how many delivered, the rate.
    pub recent_attempts: u64,
    pub recent_delivered: u64,
    pub recent_success_rate: Option<f64>,
}

/// The destinations in force. Cheap to share.
pub struct Destinations {
    current: ArcSwap<BTreeMap<String, Arc<Live>>>,
    /// The manifest generation applied last.
    applied: Mutex<Option<u64>>,
    /// Why the latest manifest's destinations were not applied (`None` once one is).
    rejected: Mutex<Option<String>>,
    breaker: BreakerSettings,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations")
            .field("names", &self.current.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Destinations {
    pub fn new(breaker: BreakerSettings) -> Self {
        Destinations {
            current: ArcSwap::from_pointee(BTreeMap::new()),
            applied: Mutex::new(None),
            rejected: Mutex::new(None),
            breaker,
        }
    }

    /// Applies the manifest's `[destinations]` table of `generation`, unless applied already.
    /// A table that does not parse leaves the destinations in force as they are; the error says
    /// why (without any secret).
    pub fn apply(&self, generation: u64, table: &toml::Table) -> Result<(), String> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if *applied == Some(generation) {
            return Ok(());
        }
        *applied = Some(generation);
        let next = self.build(table);
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = next.as_ref().err().cloned();
        let next = next?;
        let old = self.current.load_full();
        for name in next.keys().filter(|n| !old.contains_key(*n)) {
            tracing::info!(destination = %name, "destination declared");
        }
        for name in old.keys().filter(|n| !next.contains_key(*n)) {
            tracing::info!(destination = %name, "destination removed");
        }
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// The destinations `table` declares, reusing those whose settings did not change (with
    /// their circuits and counters; a new secret takes effect at once).
    fn build(&self, table: &toml::Table) -> Result<BTreeMap<String, Arc<Live>>, String> {
        let parsed = destination::parse(table, |k| std::env::var(k).ok())?;
        let old = self.current.load();
        let mut next = BTreeMap::new();
        for (name, config) in parsed {
            let unchanged = old.get(&name).filter(|l| l.config == config).cloned();
            let live = match unchanged {
                Some(l) => l,
                None => Arc::new(Live::new(config, self.breaker)?),
            };
            next.insert(name, live);
        }
        Ok(next)
    }

    /// Why the manifest's latest `[destinations]` were refused (the previous ones stay in force).
    pub fn rejected(&self) -> Option<String> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Live>> {
        self.current.load().get(name).cloned()
    }

    /// True when the manifest declares `name`.
    pub fn is_declared(&self, name: &str) -> bool {
        self.current.load().contains_key(name)
    }

    /// Every destination's state, by name.
    pub fn status(&self) -> Vec<DestinationStatus> {
        let now = Instant::now();
        self.current
            .load()
            .values()
            .map(|l| l.status(now))
            .collect()
    }

    /// Publishes each destination's circuit state (`switchyard_destination_circuit_state`).
    pub fn publish_circuits(&self) {
        for l in self.current.load().values() {
            metrics::gauge!("switchyard_destination_circuit_state", "destination" => l.config.name.clone())
                .set(l.breaker.level());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const KEY: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn destinations() -> Destinations {
        Destinations::new(BreakerSettings {
            failures: 1,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(1),
        })
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn a_bad_table_keeps_the_destinations_in_force_and_says_why() {
        let d = destinations();
        let good = table(&format!(
            "[a]\nurl = \"https://a.example/\"\nsecret = \"{KEY}\"\n"
        ));
        d.apply(1, &good).unwrap();
        assert!(d.is_declared("a") && d.rejected().is_none());
        // An unchanged destination keeps its circuit across a reload.
        d.get("a").unwrap().breaker.failure(Instant::now());
        d.apply(2, &good).unwrap();
        assert_eq!(
            d.get("a").unwrap().breaker.snapshot(Instant::now()).state,
            "open"
        );

        let bad = table("[b]\nurl = \"https://b.example/\"\nsecret = \"whsec_c2hvcnQ=\"\n");
        let error = d.apply(3, &bad).unwrap_err();
        assert!(
            error.contains("destinations.b") && !error.contains("c2hvcnQ"),
            "{error}"
        );
        assert!(
            d.is_declared("a") && !d.is_declared("b"),
            "the previous ones stay"
        );
        assert_eq!(d.rejected(), Some(error));
        d.apply(4, &table("")).unwrap();
        assert!(!d.is_declared("a") && d.rejected().is_none());
    }
}
