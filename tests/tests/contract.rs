//! The queue and state-store contract (`switchyard_stores::contract`) on the real backends:
//! Redis + SecantusDB (real servers), a Redis Cluster (three masters, one replica each) with the
//! queue in four partitions + SecantusDB, and the embedded store (redb in a temp dir). One row
//! each; the in-memory backend's row is in `host/stores/src/memory.rs`.

use std::time::Duration;

use switchyard_stores::backend::Backend;
use switchyard_stores::mongo::MongoConfig;
use switchyard_stores::queue::{Lane, Limits};
use switchyard_stores::redis::RedisQueueConfig;
use switchyard_stores::{Stores, contract_suite};
use switchyard_tests::{mongo_url, redis_cluster_url, redis_url, unique};

/// Partitions of the cluster row's queue.
const PARTITIONS: usize = 4;

async fn redis_mongo(limits: Limits) -> Stores {
    networked(redis_url(), 1, limits).await
}

/// The suite's jobs share one partition key, so its promises are those of one partition; the
/// depth limits given are per partition (`QUEUE_MAX_DEPTH` is divided over the partitions).
async fn cluster_mongo(limits: Limits) -> Stores {
    let per_partition = |n: u64| n * PARTITIONS as u64;
    let limits = Limits {
        max_depth: per_partition(limits.max_depth),
        dlq_max_depth: per_partition(limits.dlq_max_depth),
    };
    networked(redis_cluster_url(), PARTITIONS, limits).await
}

async fn networked(url: String, partitions: usize, limits: Limits) -> Stores {
    let name = unique("contract");
    let backend = Backend::Networked {
        redis: RedisQueueConfig {
            url,
            prefix: name.clone(),
            lane: Lane::Events,
            max_depth: limits.max_depth,
            dlq_max_depth: limits.dlq_max_depth,
            command_timeout: Duration::from_secs(2),
            partitions,
            ..RedisQueueConfig::default()
        },
        mongo: MongoConfig {
            url: mongo_url(),
            database: name,
            timeout: Duration::from_secs(5),
            ttl: None,
        },
    };
    backend.open().await.expect("Redis and SecantusDB")
}

async fn embedded(limits: Limits) -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Embedded {
        dir: dir.path().to_path_buf(),
        limits,
        ttl: None,
    };
    let stores = backend.open().await.expect("embedded store");
    // The open database keeps its (now unlinked) file: the directory can go at once.
    drop(dir);
    stores
}

contract_suite!(on_redis_and_secantus, redis_mongo);
contract_suite!(on_redis_cluster_and_secantus, cluster_mongo);
contract_suite!(on_embedded, embedded);
