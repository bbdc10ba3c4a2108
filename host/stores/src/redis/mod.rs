//! The queue on Redis Streams, on one node or a Redis Cluster, in one or more partitions.
//!
//! A queue of `QUEUE_PARTITIONS` partitions is that many streams, each with its retries, dead
//! letters and markers under a hash tag of its own ([`partition`]), so that on a cluster the
//! partitions spread over the shards; every script and transaction still touches one slot.
//!
//! - **Placement.** An event goes to partition `fnv1a(key) % QUEUE_PARTITIONS`, where `key` is
//!   the producer's `partitionKey` when the body has one, else the event id. Its retries,
//!   in-place progress and dead letter stay in that partition, and a replay returns it there.
//! - **Order.** Within a partition entries are fetched in the order they were appended, so
//!   events that share a partition key keep their order (what the keyed sequencer needs); events
//!   in different partitions have none between them.
//! - **Fairness.** A fetch shares its `max` over the partitions, starting at a rotating one;
//!   what a partition leaves unused goes to the others. With nothing ready anywhere it waits on
//!   one partition at a time, [`IDLE_SLICE`] each, so an idle queue answers a new event within
//!   about that long.
//! - **Depth.** `QUEUE_MAX_DEPTH` and `DLQ_MAX_DEPTH` are divided over the partitions
//!   (`ceil(limit / partitions)` each): each partition's append checks its own share in its own
//!   script, so a hot partition key is refused at its share while others still take events.
//! - **Changing the count.** The count every gateway has used is recorded in Redis
//!   (`{p}:partitions`, only ever raised). Producers append to the configured partitions;
//!   consumers read all the recorded ones, so lowering `QUEUE_PARTITIONS` strands nothing: the
//!   old partitions drain, and their retries and dead letters keep working.
//! - **Ids.** A delivery or dead letter of partition 0 keeps its stream id (`<ms>-<seq>`), so a
//!   single-partition queue looks as it always did; partition `k > 0` prefixes it (`k/<ms>-<seq>`).
//!   Dead letters are listed across partitions in time order, `(ms, seq, k)`.

mod conn;
mod partition;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{join_all, try_join_all};
use redis::Script;

use switchyard_model::event::Job;

use crate::queue::{
    DeadLetter, Delivery, Error, Lane, Queue, QueueStats, ReplayFilter, ReplayGuard,
};
use conn::{Conn, Conns, Seeds};
use partition::{Keys, Partition, Settings, unavailable};

/// How long an idle multi-partition fetch waits on one partition before looking at the others.
pub const IDLE_SLICE: Duration = Duration::from_millis(50);

/// Connections for appends that wait for replicas (`REDIS_MIN_REPLICAS_ACK`): each `WAIT` holds
/// its connection until the replicas answer, so appends to different shards and the appends of
/// concurrent producers go over several.
const APPEND_CONNECTIONS: usize = 8;

/// Raises the recorded partition count to ARGV[1] if it is lower; returns the recorded count.
const RECORD_PARTITIONS: &str = r#"
local now = tonumber(redis.call('GET', KEYS[1]) or '1')
local want = tonumber(ARGV[1])
if want > now then redis.call('SET', KEYS[1], want) return want end
return now
"#;

/// Settings of the Redis queue.
#[derive(Debug, Clone, Default)]
pub struct RedisQueueConfig {
    /// One node, or seed nodes of a cluster separated by commas.
    pub url: String,
    /// Key prefix (inside the hash tag).
    pub prefix: String,
    /// Which of the backend's two queues this is.
    pub lane: Lane,
    /// Refuse new events beyond this many ready + delayed (0 = no limit), over all partitions.
    pub max_depth: u64,
    /// Refuse new events while the dead-letter queue holds this many (0 = no limit).
    pub dlq_max_depth: u64,
    /// Limit of one command round trip; beyond it the queue counts as unavailable.
    pub command_timeout: Duration,
    /// `REDIS_CLUSTER`: use the cluster client even with a single seed URL.
    pub cluster: bool,
    /// `QUEUE_PARTITIONS` (0 counts as 1).
    pub partitions: usize,
    /// `REDIS_MIN_REPLICAS_ACK`: replicas that must hold an append before the producer gets 202.
    pub min_replicas_ack: u32,
}

impl RedisQueueConfig {
    /// The same Redis and prefix, for the deliveries lane: no depth limits (deliveries come
    /// from events already accepted and are never refused).
    pub fn for_deliveries(self) -> Self {
        RedisQueueConfig {
            lane: Lane::Deliveries,
            max_depth: 0,
            dlq_max_depth: 0,
            ..self
        }
    }
}

/// The queue on Redis: one or more partitions ([`partition`]).
#[derive(Clone)]
pub struct RedisQueue {
    /// Every partition consumers read: the recorded count, at least the configured one (grows
    /// when another gateway records more; see [`Queue::maintain`]).
    partitions: Arc<RwLock<Arc<Vec<Partition>>>>,
    /// What a partition added later is made of.
    conns: Conns,
    settings: Settings,
    prefix: String,
    lane: Lane,
    /// Partitions new events go to (`QUEUE_PARTITIONS`).
    producing: usize,
    /// Where the next fetch and reclaim start, so that no partition is always last.
    rotation: Arc<AtomicUsize>,
    /// What the start-up checks found (e.g. persistence off).
    warnings: Vec<String>,
    cluster: bool,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("partitions", &self.partitions().len())
            .field("producing", &self.producing)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// A partition and how many entries a fetch asks of it.
type Share = (usize, usize);

/// Stable 64-bit FNV-1a: the partition of a key must not change between builds or processes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `limit` shared by `parts` partitions (0 stays "no limit").
fn share(limit: u64, parts: usize) -> u64 {
    limit.div_ceil(parts.max(1) as u64)
}

/// A queue id as the gateway sees it: partition 0 keeps the stream id, others prefix theirs.
fn qualify(partition: usize, id: &str) -> String {
    match partition {
        0 => id.to_string(),
        k => format!("{k}/{id}"),
    }
}

/// The stream id just before `id` (`ms-seq`), for an inclusive start through an exclusive cursor.
fn before(id: (u64, u64)) -> Option<String> {
    match id {
        (0, 0) => None,
        (ms, 0) => Some(format!("{}-{}", ms - 1, u64::MAX)),
        (ms, seq) => Some(format!("{ms}-{}", seq - 1)),
    }
}

impl RedisQueue {
    /// Connects (two connections — commands, blocking reads — to the node or the cluster),
    /// records the partition count and creates every partition's consumer group if needed.
    pub async fn connect(config: RedisQueueConfig) -> Result<Self, Error> {
        let seeds = Seeds::parse(&config.url, config.cluster);
        let t = config.command_timeout;
        let cmd = seeds.connect(t, t).await.map_err(unavailable)?;
        let blocking = seeds
            .connect(t, t + Duration::from_secs(5))
            .await
            .map_err(unavailable)?;
        let mut appends = Vec::new();
        if config.min_replicas_ack > 0 {
            for _ in 0..APPEND_CONNECTIONS {
                appends.push(seeds.connect(t, t).await.map_err(unavailable)?);
            }
        }
        let conns = Conns {
            cmd: cmd.clone(),
            blocking,
            appends: Arc::new(appends),
            next_append: Default::default(),
        };
        let producing = config.partitions.max(1);
        let settings = Settings {
            max_depth: share(config.max_depth, producing),
            dlq_max_depth: share(config.dlq_max_depth, producing),
            min_replicas_ack: config.min_replicas_ack,
            replica_ack_timeout: t / 2,
        };
        let mut queue = RedisQueue {
            partitions: Default::default(),
            conns,
            settings,
            prefix: config.prefix.clone(),
            lane: config.lane,
            producing,
            rotation: Default::default(),
            warnings: Vec::new(),
            cluster: seeds.cluster,
        };
        let recorded: usize = Script::new(RECORD_PARTITIONS)
            .key(queue.count_key())
            .arg(producing)
            .invoke_async(&mut cmd.clone())
            .await
            .map_err(unavailable)?;
        let partitions = queue.open(0..recorded.max(producing)).await?;
        queue.partitions = Arc::new(RwLock::new(Arc::new(partitions)));
        let mut warnings = persistence_warnings(&cmd).await;
        if recorded > producing {
            warnings.push(format!(
                "QUEUE_PARTITIONS is {producing} but this queue has had {recorded}: new events go to the first {producing}, and every gateway keeps consuming all {recorded} (see README, Running at scale)"
            ));
        }
        for w in &warnings {
            tracing::warn!(warning = %w, "Redis set-up");
        }
        queue.warnings = warnings;
        Ok(queue)
    }

    /// Where the partition count every gateway has used is recorded.
    fn count_key(&self) -> String {
        format!("{}:partitions", Keys::new(&self.prefix, self.lane, 0).base)
    }

    /// Partitions `range` of this queue, their streams and consumer groups created if needed.
    async fn open(&self, range: std::ops::Range<usize>) -> Result<Vec<Partition>, Error> {
        let opened: Vec<Partition> = range
            .map(|k| {
                let keys = Keys::new(&self.prefix, self.lane, k);
                Partition::new(&self.conns, keys, &self.settings)
            })
            .collect();
        try_join_all(opened.iter().map(Partition::ensure_group)).await?;
        Ok(opened)
    }

    /// The partitions now (a snapshot: one may be added meanwhile).
    fn partitions(&self) -> Arc<Vec<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the recorded partition count and adds the partitions this process does not read
    /// yet (another gateway started with more): nothing it queued there is left unconsumed.
    async fn follow_recorded_count(&self) -> Result<(), Error> {
        let now = self.partitions();
        let recorded: Option<usize> = redis::cmd("GET")
            .arg(self.count_key())
            .query_async(&mut self.conns.cmd.clone())
            .await
            .map_err(unavailable)?;
        let recorded = recorded.unwrap_or(1);
        if recorded <= now.len() {
            return Ok(());
        }
        let mut all: Vec<Partition> = now.iter().cloned().collect();
        all.extend(self.open(now.len()..recorded).await?);
        tracing::warn!(
            partitions = recorded,
            "another gateway recorded more queue partitions: reading all {recorded}"
        );
        *self.partitions.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
        Ok(())
    }

    /// The partition a key's events go to (a `partitionKey`, else an event id).
    pub fn partition_of(&self, key: &str) -> usize {
        (fnv1a(key.as_bytes()) % self.producing as u64) as usize
    }

    /// The stream of partition `k` (for tests and tools that look at placement).
    pub fn ready_key(&self, k: usize) -> Option<String> {
        self.partitions().get(k).map(|p| p.keys.ready.clone())
    }

    /// How many partitions consumers read.
    pub fn partition_count(&self) -> usize {
        self.partitions().len()
    }

    /// The partition and stream id of a queue id.
    fn locate<'a>(&self, id: &'a str) -> Result<(usize, &'a str), Error> {
        let (k, stream) = match id.split_once('/') {
            Some((k, stream)) => (k.parse::<usize>().ok().filter(|k| *k > 0), stream),
            None => (Some(0), id),
        };
        match k {
            Some(k) if k < self.partitions().len() => Ok((k, stream)),
            _ => Err(Error::InvalidCursor(id.to_string())),
        }
    }

    /// A delivery as its partition knows it.
    fn local(&self, delivery: &Delivery) -> Result<(Partition, Delivery), Error> {
        let (k, id) = self.locate(&delivery.id)?;
        Ok((
            self.partitions()[k].clone(),
            Delivery {
                id: id.to_string(),
                job: delivery.job.clone(),
            },
        ))
    }

    fn qualified(k: usize, deliveries: Vec<Delivery>) -> impl Iterator<Item = Delivery> {
        deliveries.into_iter().map(move |d| Delivery {
            id: qualify(k, &d.id),
            job: d.job,
        })
    }

    /// Partition indices starting at the next one in rotation.
    fn rotated(&self) -> Vec<usize> {
        let n = self.partitions().len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| (start + i) % n).collect()
    }

    /// Reads without waiting, sharing `max` over the partitions; a partition that has fewer
    /// entries than its share leaves the rest to the others.
    async fn sweep(&self, consumer: &str, max: usize) -> Result<Vec<Delivery>, Error> {
        let parts = self.partitions();
        let mut active = self.rotated();
        let mut got = Vec::new();
        while got.len() < max && !active.is_empty() {
            let left = max - got.len();
            let (shares, unasked): (Vec<Share>, Vec<Share>) = active
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let extra = usize::from(i < left % active.len());
                    (*k, left / active.len() + extra)
                })
                .partition(|(_, n)| *n > 0);
            let reads = shares
                .iter()
                .map(|(k, n)| parts[*k].read(consumer, *n, None));
            let ks: Vec<usize> = shares.iter().map(|(k, _)| *k).collect();
            let replies = match healthy(join_all(reads).await, &ks, "fetch from") {
                Ok(replies) => replies,
                // What earlier rounds read is this consumer's now: hand it over.
                Err(e) if got.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch more from the queue partitions");
                    break;
                }
            };
            // Next round: the partitions not asked this time (more of them than entries left),
            // then those that gave all they were asked for (they may have more).
            active = unasked.into_iter().map(|(k, _)| k).collect();
            for ((k, n), reply) in shares.into_iter().zip(replies) {
                let Some(reply) = reply else { continue };
                if reply.len() == n {
                    active.push(k);
                }
                got.extend(Self::qualified(k, reply));
            }
        }
        Ok(got)
    }
}

/// The answers of the partitions that answered: one partition whose shard is failing over must
/// not stop the work on the others. An error only when none answered.
fn healthy<T>(
    replies: Vec<Result<T, Error>>,
    partitions: &[usize],
    what: &str,
) -> Result<Vec<Option<T>>, Error> {
    if let Some(Err(_)) = replies.first()
        && replies.iter().all(Result::is_err)
    {
        return Err(replies.into_iter().find_map(Result::err).expect("an error"));
    }
    Ok(replies
        .into_iter()
        .zip(partitions)
        .map(|(r, k)| match r {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(partition = *k, error = %e, "cannot {what} a queue partition; going on with the others");
                None
            }
        })
        .collect())
}

/// Reads Redis's persistence settings: without AOF, a restart of Redis loses acknowledged events.
async fn persistence_warnings(cmd: &Conn) -> Vec<String> {
    let mut c = cmd.clone();
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut c)
        .await;
    match reply.as_deref() {
        Ok([_, value]) if value == "yes" => Vec::new(),
        Ok([_, _]) => vec![
            "Redis persistence (appendonly) is off: a restart of Redis loses every queued event, acknowledged ones included; run it with --appendonly yes (and --appendfsync always for no loss at all)".to_string(),
        ],
        Ok(_) | Err(_) => vec![
            "cannot read Redis's persistence settings (CONFIG GET appendonly): make sure appendonly is on, or a restart of Redis loses acknowledged events".to_string(),
        ],
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, job: &Job, guard: Option<&ReplayGuard>) -> Result<(), Error> {
        let parts = self.partitions();
        let key = job.partition_key.as_deref().unwrap_or(&job.event_id);
        let k = self.partition_of(key);
        // A message id is checked where every request carrying it is checked: in the partition
        // of the id itself (whatever event or key a replayed body names).
        match guard.map(|g| (g, self.partition_of(&g.message_id))) {
            Some((g, at)) if at != k => {
                parts[at].guard_only(g).await?;
                parts[k].enqueue(job, None).await
            }
            _ => parts[k].enqueue(job, guard).await,
        }
    }

    async fn fetch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, Error> {
        if let [only] = self.partitions().as_slice() {
            return only.fetch(consumer, max, wait).await;
        }
        let deadline = Instant::now() + wait;
        loop {
            let got = self.sweep(consumer, max.max(1)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            let k = self.rotated()[0];
            let partition = self.partitions()[k].clone();
            match partition
                .read(consumer, max.max(1), Some(left.min(IDLE_SLICE)))
                .await
            {
                Ok(reply) if !reply.is_empty() => {
                    return Ok(Self::qualified(k, reply).collect());
                }
                Ok(_) => {}
                // The next sweep says whether the others answer; meanwhile do not spin.
                Err(e) => {
                    tracing::warn!(partition = k, error = %e, "cannot wait on a queue partition");
                    tokio::time::sleep(left.min(IDLE_SLICE)).await;
                }
            }
        }
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let mut got = Vec::new();
        let mut failed = None;
        for k in self.rotated() {
            if got.len() >= max.max(1) {
                break;
            }
            match self.partitions()[k]
                .reclaim(consumer, min_idle, max.max(1) - got.len())
                .await
            {
                Ok(reply) => got.extend(Self::qualified(k, reply)),
                Err(e) => {
                    tracing::warn!(partition = k, error = %e, "cannot reclaim from a queue partition; going on with the others");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if got.is_empty() => Err(e),
            _ => Ok(got),
        }
    }

    async fn touch(&self, consumer: &str, ids: &[String]) -> Result<(), Error> {
        let parts = self.partitions();
        let mut by_partition = vec![Vec::new(); parts.len()];
        for id in ids {
            let (k, stream) = self.locate(id)?;
            by_partition[k].push(stream.to_string());
        }
        let touches = by_partition
            .iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(k, ids)| parts[k].touch(consumer, ids));
        try_join_all(touches).await.map(drop)
    }

    async fn update(&self, delivery: &Delivery, job: &Job) -> Result<(), Error> {
        let (p, d) = self.local(delivery)?;
        p.update(&d, job).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let (p, d) = self.local(delivery)?;
        p.ack(&d).await
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        next: &Job,
        due_at_ms: u64,
    ) -> Result<(), Error> {
        let (p, d) = self.local(delivery)?;
        p.retry_later(&d, next, due_at_ms).await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error_kind: &str,
        error: &str,
    ) -> Result<(), Error> {
        let (p, d) = self.local(delivery)?;
        p.dead_letter(&d, error_kind, error).await
    }

    async fn promote_due(&self, now_ms: u64, max: usize) -> Result<usize, Error> {
        let parts = self.partitions();
        let moves = parts.iter().map(|p| p.promote_due(now_ms, max));
        let ks: Vec<usize> = (0..parts.len()).collect();
        Ok(healthy(join_all(moves).await, &ks, "promote retries in")?
            .into_iter()
            .flatten()
            .sum())
    }

    async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let parts = self.partitions();
        if let [only] = parts.as_slice() {
            return only.dead_letters(after, limit).await;
        }
        // The order is (ms, seq, partition): after the cursor (k, id), partitions up to k
        // continue after id, later ones from id itself. (Ids are per-shard clocks: a dead
        // letter added while an operator pages, in the cursor's millisecond or on a shard whose
        // clock is behind, can sort before the cursor and show only in a new listing.)
        let cursor = after.map(|a| self.locate(a)).transpose()?;
        if let Some((_, id)) = cursor
            && !partition::is_stream_id(id)
        {
            return Err(Error::InvalidCursor(id.to_string()));
        }
        let pages = parts.iter().enumerate().map(|(j, p)| {
            let start = cursor.map(|(k, id)| match j <= k {
                true => Some(id.to_string()),
                false => before(partition::stream_id(id)),
            });
            async move { p.dead_letters(start.flatten().as_deref(), limit).await }
        });
        let mut all: Vec<(usize, DeadLetter)> = try_join_all(pages)
            .await?
            .into_iter()
            .enumerate()
            .flat_map(|(k, page)| page.into_iter().map(move |l| (k, l)))
            .collect();
        all.sort_by_key(|(k, l)| (partition::stream_id(&l.id), *k));
        Ok(all
            .into_iter()
            .take(limit)
            .map(|(k, l)| DeadLetter {
                id: qualify(k, &l.id),
                ..l
            })
            .collect())
    }

    async fn replay(&self, filter: &ReplayFilter) -> Result<Vec<String>, Error> {
        let parts = self.partitions();
        // A partition that cannot be reached does not undo what the others moved: report
        // what was replayed (a second replay finds the rest).
        let replays = parts.iter().map(|p| p.replay(filter));
        let ks: Vec<usize> = (0..parts.len()).collect();
        Ok(
            healthy(join_all(replays).await, &ks, "replay dead letters of")?
                .into_iter()
                .flatten()
                .flatten()
                .collect(),
        )
    }

    async fn accepted_at(&self, event_id: &str) -> Result<Option<u64>, Error> {
        let parts = self.partitions();
        // The event's partition key is not known here: ask every partition.
        let reads = parts.iter().map(|p| p.accepted_at(event_id));
        Ok(try_join_all(reads).await?.into_iter().flatten().max())
    }

    async fn stats(&self) -> Result<QueueStats, Error> {
        let parts = self.partitions();
        let all = try_join_all(parts.iter().map(Partition::stats)).await?;
        Ok(all
            .into_iter()
            .fold(QueueStats::default(), |t, s| QueueStats {
                ready: t.ready + s.ready,
                in_flight: t.in_flight + s.in_flight,
                delayed: t.delayed + s.delayed,
                dead_lettered: t.dead_lettered + s.dead_lettered,
            }))
    }

    async fn ping(&self) -> Result<(), Error> {
        self.partitions()[0].ping().await
    }

    async fn maintain(&self, _now_ms: u64) -> Result<(), Error> {
        self.follow_recorded_count().await
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_hash_is_stable() {
        // Published FNV-1a 64 test vectors: a partition must not move between builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn limits_divide_over_partitions() {
        assert_eq!(share(0, 4), 0, "no limit stays no limit");
        assert_eq!(share(10_000, 1), 10_000);
        assert_eq!(share(10_000, 3), 3_334);
        assert_eq!(share(2, 4), 1);
    }

    #[test]
    fn a_cursor_just_before_an_id() {
        assert_eq!(before((5, 3)).as_deref(), Some("5-2"));
        assert_eq!(before((5, 0)).as_deref(), Some("4-18446744073709551615"));
        assert_eq!(before((0, 0)), None);
    }
}
