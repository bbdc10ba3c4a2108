//! The backend choice, in one enum, and what opening it gives: a queue and a state store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::queue::{Lane, Limits, Queue};
use crate::state::StateStore;

/// Where the queue and the event state live.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Redis Streams for the queue, MongoDB for the state: production, and several gateways.
    Networked {
        redis: crate::redis::RedisQueueConfig,
        mongo: crate::mongo::MongoConfig,
    },
    /// One redb file in `dir`: the whole gateway as a single binary.
    Embedded {
        dir: PathBuf,
        limits: Limits,
        /// Finished records older than this are deleted (`None`: kept).
        ttl: Option<Duration>,
    },
    /// In this process's memory: nothing survives it. For tests.
    Memory { limits: Limits },
}

impl Backend {
    /// The production backends when both URLs are given, the embedded store (in `data_dir`) when
    /// neither is; one without the other is a configuration error.
    pub fn from_urls(
        redis: Option<crate::redis::RedisQueueConfig>,
        mongo: Option<crate::mongo::MongoConfig>,
        data_dir: PathBuf,
        limits: Limits,
        ttl: Option<Duration>,
    ) -> Result<Backend, String> {
        match (redis, mongo) {
            (Some(redis), Some(mongo)) => Ok(Backend::Networked { redis, mongo }),
            (None, None) => Ok(Backend::Embedded {
                dir: data_dir,
                limits,
                ttl,
            }),
            _ => Err(
                "set both REDIS_URL and MONGO_URL (production backends) or neither (embedded store in DATA_DIR)"
                    .into(),
            ),
        }
    }

    /// Opens the backend: connects, or opens the file.
    pub async fn open(self) -> anyhow::Result<Stores> {
        match self {
            Backend::Networked { redis, mongo } => {
                let deliveries = redis.clone().for_deliveries();
                let queue = crate::redis::RedisQueue::connect(redis)
                    .await
                    .context("cannot connect to Redis (REDIS_URL)")?;
                let deliveries = crate::redis::RedisQueue::connect(deliveries)
                    .await
                    .context("cannot connect to Redis (REDIS_URL)")?;
                let state = crate::mongo::MongoStore::connect(mongo)
                    .await
                    .context("cannot connect to MongoDB (MONGO_URL)")?;
                Ok(Stores {
                    queue: Arc::new(queue),
                    deliveries: Arc::new(deliveries),
                    state: Arc::new(state),
                    name: "redis+mongodb".into(),
                })
            }
            Backend::Embedded { dir, limits, ttl } => {
                let db = crate::embedded::EmbeddedDb::open(&dir)?;
                let queue = crate::embedded::queue::EmbeddedQueue::open(
                    db.clone(),
                    Lane::Events,
                    limits.max_depth,
                    limits.dlq_max_depth,
                )?;
                let deliveries = crate::embedded::queue::EmbeddedQueue::open(
                    db.clone(),
                    Lane::Deliveries,
                    0,
                    0,
                )?;
                Ok(Stores {
                    queue: Arc::new(queue),
                    deliveries: Arc::new(deliveries),
                    state: Arc::new(crate::embedded::state::EmbeddedState::new(db, ttl)),
                    name: format!(
                        "embedded ({})",
                        dir.join(crate::embedded::DB_FILE).display()
                    ),
                })
            }
            Backend::Memory { limits } => {
                let store = Arc::new(crate::memory::MemoryStore::new(limits));
                let deliveries = Arc::new(crate::memory::MemoryStore::new(Limits::default()));
                Ok(Stores {
                    queue: store.clone(),
                    deliveries,
                    state: store,
                    name: "memory".into(),
                })
            }
        }
    }
}

/// An opened backend.
#[derive(Clone)]
pub struct Stores {
    /// Events to route.
    pub queue: Arc<dyn Queue>,
    /// Deliveries of routed events to send (see [`Lane`]).
    pub deliveries: Arc<dyn Queue>,
    pub state: Arc<dyn StateStore>,
    /// What it is, for the start-up log.
    pub name: String,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("name", &self.name).finish()
    }
}
