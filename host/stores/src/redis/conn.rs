//! A connection to one Redis node or to a Redis Cluster, behind one type.
//!
//! `REDIS_URL` names one node (`redis://host:6379`), or several seed nodes of a cluster separated
//! by commas (`redis://a:7000,redis://b:7001`; a seed without a scheme takes the first one's).
//! Several seeds, or `REDIS_CLUSTER=true`, select the cluster client: it learns the slot map,
//! follows `MOVED`/`ASK`, and refreshes the map after a failover.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// One node (reconnecting on failure) or a whole cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Cluster(Arc<Healing>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(h) => Box::pin(async move {
                let r = h.current().req_packed_command(cmd).await;
                h.observe(&r);
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(h) => Box::pin(async move {
                let r = h
                    .current()
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                h.observe(&r);
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Transport failures within [`FAILURE_WINDOW`] after which a cluster connection is rebuilt.
const REBUILD_AFTER_FAILURES: u32 = 3;
/// The window the failures are counted in. Successes do not reset it: on a cluster the
/// healthy shards answer all the time while the requests to a dead one keep failing.
const FAILURE_WINDOW: Duration = Duration::from_secs(5);
/// At most one rebuild per this long.
const REBUILD_EVERY: Duration = Duration::from_secs(5);

/// A cluster connection that starts afresh from the seed nodes when requests keep failing on
/// the transport (a node killed, a failover): the cluster client refreshes its slot map on
/// `MOVED`, but a connection whose node died can keep failing long after a replica took over;
/// a new connection asks the live seeds for the current map.
pub(crate) struct Healing {
    client: ClusterClient,
    connection: Mutex<ClusterConnection>,
    /// Transport failures since `window_start`.
    failures: Mutex<(u32, Instant)>,
    rebuilding: AtomicBool,
    last_rebuild: Mutex<Instant>,
}

impl Healing {
    fn current(&self) -> ClusterConnection {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts transport failures; at [`REBUILD_AFTER_FAILURES`] within [`FAILURE_WINDOW`],
    /// rebuilds the connection in the background (the failing request still fails: its caller
    /// retries).
    fn observe<T>(self: &Arc<Self>, r: &RedisResult<T>) {
        let Err(e) = r else { return };
        if !transport(e) {
            return;
        }
        let due = {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if f.1.elapsed() > FAILURE_WINDOW {
                *f = (0, Instant::now());
            }
            f.0 += 1;
            f.0 >= REBUILD_AFTER_FAILURES
        };
        if due {
            self.rebuild();
        }
    }

    fn rebuild(self: &Arc<Self>) {
        {
            let mut last = self.last_rebuild.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < REBUILD_EVERY || self.rebuilding.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Instant::now();
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match this.client.get_async_connection().await {
                Ok(fresh) => {
                    *this.connection.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                    *this.failures.lock().unwrap_or_else(|p| p.into_inner()) = (0, Instant::now());
                    tracing::warn!(
                        "Redis Cluster requests kept failing: reconnected from the seed nodes"
                    );
                    metrics::counter!("switchyard_redis_cluster_reconnects_total").increment(1);
                }
                Err(e) => tracing::warn!(error = %e, "cannot reconnect to the Redis Cluster yet"),
            }
            this.rebuilding.store(false, Ordering::Release);
        });
    }
}

/// A failure of the connection or of the cluster's topology, not an answer to the command.
fn transport(e: &RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterDown | ErrorKind::MasterDown | ErrorKind::ClusterConnectionNotFound
        )
}

/// The connections a queue's partitions share.
#[derive(Clone)]
pub(crate) struct Conns {
    /// Commands that answer at once.
    pub cmd: Conn,
    /// Reads that wait (`XREADGROUP … BLOCK`): they hold their connection while they wait.
    pub blocking: Conn,
    /// Appends followed by `WAIT` (`REDIS_MIN_REPLICAS_ACK`), which also holds its connection
    /// until the replicas answer: a few connections of their own, so that neither the other
    /// commands nor every append queue behind one slow `WAIT`. Empty without replica acks.
    pub appends: Arc<Vec<Conn>>,
    pub next_append: Arc<AtomicUsize>,
}

impl Conns {
    /// The connection for the next replicated append.
    pub fn append(&self) -> Conn {
        match self.appends.len() {
            0 => self.cmd.clone(),
            n => self.appends[self.next_append.fetch_add(1, Ordering::Relaxed) % n].clone(),
        }
    }
}

/// Where to connect: the nodes named by `REDIS_URL`, and whether they form a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seeds {
    pub urls: Vec<String>,
    pub cluster: bool,
}

impl Seeds {
    /// Splits `REDIS_URL` into seed URLs; several of them, or `cluster`, mean a cluster.
    pub fn parse(url: &str, cluster: bool) -> Seeds {
        let mut urls: Vec<String> = Vec::new();
        for part in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match (part.contains("://"), urls.first()) {
                (false, Some(first)) => {
                    let scheme = &first[..first.find("://").map_or(0, |i| i + 3)];
                    urls.push(format!("{scheme}{part}"));
                }
                _ => urls.push(part.to_string()),
            }
        }
        let cluster = cluster || urls.len() > 1;
        Seeds { urls, cluster }
    }

    /// A connection whose answers may take up to `response_timeout`.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> redis::RedisResult<Conn> {
        if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout)
                // Retries (after MOVED, or while a failover elects a new master) stay within a
                // few seconds: past them the caller answers "unavailable" (503 on ingest).
                .retries(4)
                .min_retry_wait(50)
                .max_retry_wait(1000)
                .build()?;
            let connection = client.get_async_connection().await?;
            return Ok(Conn::Cluster(Arc::new(Healing {
                client,
                connection: Mutex::new(connection),
                failures: Mutex::new((0, Instant::now())),
                rebuilding: Default::default(),
                last_rebuild: Mutex::new(Instant::now()),
            })));
        }
        let url = self.urls.first().map(String::as_str).unwrap_or_default();
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000)
            .set_response_timeout(response_timeout);
        Ok(Conn::Node(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Seeds;

    #[test]
    fn one_url_is_one_node_and_several_are_a_cluster() {
        let one = Seeds::parse("redis://127.0.0.1:6379", false);
        assert_eq!(one.urls, ["redis://127.0.0.1:6379"]);
        assert!(!one.cluster);
        assert!(Seeds::parse("redis://127.0.0.1:7000", true).cluster);
        let seeds = Seeds::parse("rediss://u:p@a:7000, b:7001,redis://c:7002", false);
        assert_eq!(
            seeds.urls,
            ["rediss://u:p@a:7000", "rediss://b:7001", "redis://c:7002"]
        );
        assert!(seeds.cluster);
    }
}
