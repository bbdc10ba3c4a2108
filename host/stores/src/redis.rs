//! The queue on Redis Streams.
//!
//! Key layout (every key shares the hash tag `{<prefix>}`, so each script touches one slot and
//! the layout works on Redis Cluster). The deliveries lane has the same keys under
//! `{p}:deliveries:` (`{p}:deliveries:ready`, …).
//!
//! | key                    | type       | holds                                                   |
//! |------------------------|------------|---------------------------------------------------------|
//! | `{p}:ready`            | stream     | events to route, field `job` (JSON); group `workers`    |
//! | `{p}:delayed`          | sorted set | retries: member = job JSON, score = due time (ms)       |
//! | `{p}:dlq`              | stream     | dead letters: `job`, `error`, `kind`, `failedAt`        |
//! | `{p}:ev:<eventId>`     | string     | receive time of a queued, unfinished event (7-day TTL)  |
//! | `{p}:wh:<messageId>`   | string     | body digest of a signed message id (replay window TTL)  |
//! | `{p}:now:<entryId>`    | string     | the job as it is now, for an entry retried in place     |
//!
//! A fetched entry stays in the group's pending list until it is acked (XACK + XDEL in one
//! MULTI), moved to `delayed`, or dead-lettered; an entry left pending (its consumer died) is
//! reclaimed with XAUTOCLAIM after the visibility timeout, while a consumer that still works on
//! an entry keeps it with [`Queue::touch`] (XCLAIM … JUSTID resets its idle time). The replay
//! check, the depth checks and the append happen in one script, so ingestion is one round trip.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Script, Value};

use switchyard_model::clock::now_ms;
use switchyard_model::event::Job;

use crate::queue::{
    DeadLetter, Delivery, Error, Lane, Queue, QueueStats, ReplayFilter, ReplayGuard,
};

const GROUP: &str = "workers";
const ACCEPTED_TTL_SECS: u64 = 7 * 24 * 3600;

/// KEYS: ready, delayed, accepted marker, dlq, [message id]. ARGV: job, max depth, receive
/// time, marker TTL, DLQ max depth, [body digest, message id TTL].
const ENQUEUE: &str = r#"
if KEYS[5] then
  local seen = redis.call('GET', KEYS[5])
  if seen and seen ~= ARGV[6] then return redis.error_reply('REPLAYED message id seen with another body') end
end
local limit = tonumber(ARGV[2])
if limit > 0 then
  local depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
  if depth >= limit then return redis.error_reply('FULL ' .. depth) end
end
local dlq_limit = tonumber(ARGV[5])
if dlq_limit > 0 then
  local dead = redis.call('XLEN', KEYS[4])
  if dead >= dlq_limit then return redis.error_reply('DLQFULL ' .. dead) end
end
if KEYS[5] then redis.call('SET', KEYS[5], ARGV[6], 'EX', ARGV[7], 'NX') end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
"#;

const PROMOTE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', 'job', job)
  redis.call('ZREM', KEYS[2], job)
end
return #due
"#;

const REPLAY_ONE: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
  return 1
end
return 0
"#;

/// Settings of the Redis queue.
#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    pub url: String,
    /// Key prefix (inside the hash tag).
    pub prefix: String,
    /// Which of the backend's two queues this is.
    pub lane: Lane,
    /// Refuse new events beyond this many ready + delayed (0 = no limit).
    pub max_depth: u64,
    /// Refuse new events while the dead-letter queue holds this many (0 = no limit).
    pub dlq_max_depth: u64,
    /// Limit of one command round trip; beyond it the queue counts as unavailable.
    pub command_timeout: Duration,
}

/// The queue on Redis.
#[derive(Clone)]
pub struct RedisQueue {
    cmd: ConnectionManager,
    blocking: ConnectionManager,
    keys: Keys,
    max_depth: u64,
    dlq_max_depth: u64,
    enqueue: Script,
    promote: Script,
    replay_one: Script,
    /// Where the next XAUTOCLAIM pass starts (`0-0` after a full sweep).
    reclaim_cursor: std::sync::Arc<std::sync::Mutex<String>>,
    /// What the start-up checks found (e.g. persistence off).
    warnings: Vec<String>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
    /// `{p}` for the events lane, `{p}:deliveries` for the deliveries lane (one hash tag).
    base: String,
    ready: String,
    delayed: String,
    dlq: String,
}

impl Keys {
    fn new(prefix: &str, lane: Lane) -> Self {
        let base = match lane {
            Lane::Events => format!("{{{prefix}}}"),
            Lane::Deliveries => format!("{{{prefix}}}:deliveries"),
        };
        Keys {
            prefix: prefix.to_string(),
            ready: format!("{base}:ready"),
            delayed: format!("{base}:delayed"),
            dlq: format!("{base}:dlq"),
            base,
        }
    }
    fn accepted(&self, event_id: &str) -> String {
        format!("{}:ev:{event_id}", self.base)
    }
    fn message(&self, message_id: &str) -> String {
        format!("{}:wh:{message_id}", self.base)
    }
    fn progress(&self, entry_id: &str) -> String {
        format!("{}:now:{entry_id}", self.base)
    }
}

/// True for a stream entry id (`<ms>-<seq>`), the only cursor this queue hands out.
fn is_stream_id(id: &str) -> bool {
    let number = |s: &str| {
        s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok()
    };
    id.split_once('-')
        .is_some_and(|(ms, seq)| number(ms) && number(seq))
}

/// A stream entry id (`ms-seq`) as a comparable pair.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(e.to_string())
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

impl RedisQueue {
    /// Connects (two connections: one for commands, one for blocking reads) and creates the
    /// consumer group if needed.
    pub async fn connect(config: RedisQueueConfig) -> Result<Self, Error> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(config.command_timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let cmd = ConnectionManager::new_with_config(
            client.clone(),
            base.clone().set_response_timeout(config.command_timeout),
        )
        .await
        .map_err(unavailable)?;
        let blocking = ConnectionManager::new_with_config(
            client,
            base.set_response_timeout(config.command_timeout + Duration::from_secs(5)),
        )
        .await
        .map_err(unavailable)?;
        let mut queue = RedisQueue {
            cmd,
            blocking,
            keys: Keys::new(&config.prefix, config.lane),
            max_depth: config.max_depth,
            dlq_max_depth: config.dlq_max_depth,
            enqueue: Script::new(ENQUEUE),
            promote: Script::new(PROMOTE),
            replay_one: Script::new(REPLAY_ONE),
            reclaim_cursor: Default::default(),
            warnings: Vec::new(),
        };
        queue.ensure_group().await?;
        queue.warnings = queue.persistence_warnings().await;
        for w in &queue.warnings {
            tracing::warn!(warning = %w, "Redis set-up");
        }
        Ok(queue)
    }

    /// Reads Redis's persistence settings: without AOF, a restart of Redis loses acknowledged
    /// events.
    async fn persistence_warnings(&self) -> Vec<String> {
        let mut c = self.cmd.clone();
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

    async fn ensure_group(&self) -> Result<(), Error> {
        let mut c = self.cmd.clone();
        let r: redis::RedisResult<()> =
            c.xgroup_create_mkstream(&self.keys.ready, GROUP, "0").await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn decode(&self, entry: &StreamId) -> Result<Delivery, Error> {
        let raw: String = entry.get("job").ok_or_else(|| Error::Corrupt {
            id: entry.id.clone(),
            reason: "no job field".into(),
        })?;
        let job = serde_json::from_str(&raw).map_err(|e| Error::Corrupt {
            id: entry.id.clone(),
            reason: e.to_string(),
        })?;
        Ok(Delivery {
            id: entry.id.clone(),
            job,
        })
    }

    fn decode_all(&self, entries: &[StreamId]) -> Vec<Delivery> {
        entries
            .iter()
            .filter_map(|e| match self.decode(e) {
                Ok(d) => Some(d),
                Err(err) => {
                    tracing::error!(error = %err, "undecodable queue entry left pending for inspection");
                    None
                }
            })
            .collect()
    }

    /// Finishes a delivery inside an atomic pipeline that `extra` may add commands to.
    async fn finish(
        &self,
        delivery: &Delivery,
        extra: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        extra(&mut pipe);
        pipe.xack(&self.keys.ready, GROUP, &[&delivery.id]).ignore();
        pipe.xdel(&self.keys.ready, &[&delivery.id]).ignore();
        pipe.del(self.keys.progress(&delivery.id)).ignore();
        let mut c = self.cmd.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, job: &Job, guard: Option<&ReplayGuard>) -> Result<(), Error> {
        let json = serde_json::to_string(job).map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut c = self.cmd.clone();
        let mut call = self.enqueue.prepare_invoke();
        call.key(&self.keys.ready)
            .key(&self.keys.delayed)
            .key(self.keys.accepted(&job.event_id))
            .key(&self.keys.dlq)
            .arg(json)
            .arg(self.max_depth)
            .arg(job.received_at_ms)
            .arg(ACCEPTED_TTL_SECS)
            .arg(self.dlq_max_depth);
        if let Some(g) = guard {
            call.key(self.keys.message(&g.message_id))
                .arg(&g.digest)
                .arg(g.ttl.as_secs().max(1));
        }
        let r: redis::RedisResult<String> = call.invoke_async(&mut c).await;
        let depth = |e: &redis::RedisError| {
            e.detail()
                .and_then(|d| d.trim().parse().ok())
                .unwrap_or_default()
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("FULL") => Err(Error::Full(depth(&e))),
            Err(e) if e.code() == Some("DLQFULL") => Err(Error::DlqFull(depth(&e))),
            Err(e) if e.code() == Some("REPLAYED") => Err(Error::Replayed),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn fetch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, Error> {
        let opts = StreamReadOptions::default()
            .group(GROUP, consumer)
            .count(max.max(1))
            .block(wait.as_millis() as usize);
        let mut c = self.blocking.clone();
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            c.xread_options(&[&self.keys.ready], &[">"], &opts).await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::error!(
                    stream = %self.keys.ready,
                    "the consumer group is gone: Redis lost its data (restarted without persistence, or flushed); events queued before that are lost. Recreating the group"
                );
                metrics::counter!("switchyard_queue_group_recreated_total").increment(1);
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            r => r.map_err(unavailable)?,
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .iter()
                    .flat_map(|k| self.decode_all(&k.ids))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let mut c = self.cmd.clone();
        let opts = StreamAutoClaimOptions::default().count(max.max(1));
        // Each pass goes on where the last one stopped, so a long pending list is swept once
        // per cycle rather than its head re-read every pass.
        let start = self
            .reclaim_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let start = if start.is_empty() {
            "0-0".to_string()
        } else {
            start
        };
        let reply: StreamAutoClaimReply = c
            .xautoclaim_options(
                &self.keys.ready,
                GROUP,
                consumer,
                min_idle.as_millis() as u64,
                start,
                opts,
            )
            .await
            .map_err(unavailable)?;
        *self
            .reclaim_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reply.next_stream_id.clone();
        let mut deliveries = self.decode_all(&reply.claimed);
        if deliveries.is_empty() {
            return Ok(deliveries);
        }
        // An entry retried in place carries its progress in a key of its own.
        let keys: Vec<String> = deliveries
            .iter()
            .map(|d| self.keys.progress(&d.id))
            .collect();
        let now: Vec<Option<String>> = c.mget(keys).await.map_err(unavailable)?;
        for (d, job) in deliveries.iter_mut().zip(now) {
            if let Some(job) = job.and_then(|j| serde_json::from_str(&j).ok()) {
                d.job = job;
            }
        }
        Ok(deliveries)
    }

    async fn update(&self, delivery: &Delivery, job: &Job) -> Result<(), Error> {
        let json = serde_json::to_string(job).map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut c = self.cmd.clone();
        c.set_ex::<_, _, ()>(self.keys.progress(&delivery.id), json, ACCEPTED_TTL_SECS)
            .await
            .map_err(unavailable)
    }

    async fn touch(&self, consumer: &str, ids: &[String]) -> Result<(), Error> {
        for chunk in ids.chunks(500) {
            let mut c = self.cmd.clone();
            redis::cmd("XCLAIM")
                .arg(&self.keys.ready)
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID")
                .query_async::<Value>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let accepted = self.keys.accepted(&delivery.job.event_id);
        self.finish(delivery, |p| {
            p.del(accepted).ignore();
        })
        .await
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        next: &Job,
        due_at_ms: u64,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(next).map_err(|e| Error::Unavailable(e.to_string()))?;
        let delayed = self.keys.delayed.clone();
        self.finish(delivery, |p| {
            p.zadd(delayed, json, due_at_ms).ignore();
        })
        .await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error_kind: &str,
        error: &str,
    ) -> Result<(), Error> {
        let json =
            serde_json::to_string(&delivery.job).map_err(|e| Error::Unavailable(e.to_string()))?;
        let (dlq, accepted) = (
            self.keys.dlq.clone(),
            self.keys.accepted(&delivery.job.event_id),
        );
        let failed_at = now_ms().to_string();
        self.finish(delivery, |p| {
            p.xadd(
                dlq,
                "*",
                &[
                    ("job", json.as_str()),
                    ("error", error),
                    ("kind", error_kind),
                    ("failedAt", &failed_at),
                ],
            )
            .ignore();
            p.del(accepted).ignore();
        })
        .await
    }

    async fn promote_due(&self, now_ms: u64, max: usize) -> Result<usize, Error> {
        let mut c = self.cmd.clone();
        self.promote
            .key(&self.keys.ready)
            .key(&self.keys.delayed)
            .arg(now_ms)
            .arg(max)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        if let Some(a) = after
            && !is_stream_id(a)
        {
            return Err(Error::InvalidCursor(a.to_string()));
        }
        let start = after.map(|a| format!("({a}")).unwrap_or_else(|| "-".into());
        let mut c = self.cmd.clone();
        let reply: redis::streams::StreamRangeReply = c
            .xrange_count(&self.keys.dlq, start, "+", limit)
            .await
            .map_err(unavailable)?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|e| {
                let job: Job = serde_json::from_str(&e.get::<String>("job")?).ok()?;
                Some(DeadLetter {
                    id: e.id.clone(),
                    job,
                    error: e.get("error").unwrap_or_default(),
                    error_kind: e.get("kind").unwrap_or_default(),
                    failed_at_ms: e
                        .get::<String>("failedAt")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect())
    }

    async fn replay(&self, filter: &ReplayFilter) -> Result<Vec<String>, Error> {
        // Only what is in the DLQ now: entries that fail again during the replay are dead-lettered
        // with newer ids and must not be chased.
        let mut c = self.cmd.clone();
        let newest: redis::streams::StreamRangeReply = c
            .xrevrange_count(&self.keys.dlq, "+", "-", 1)
            .await
            .map_err(unavailable)?;
        let Some(end) = newest.ids.first().map(|e| stream_id(&e.id)) else {
            return Ok(Vec::new());
        };
        let mut replayed = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.dead_letters(cursor.as_deref(), 200).await?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.id.clone());
            let in_scope = page.iter().filter(|l| stream_id(&l.id) <= end);
            for letter in in_scope.filter(|l| filter.matches(&l.job)) {
                let job = letter.job.replayed();
                let json =
                    serde_json::to_string(&job).map_err(|e| Error::Unavailable(e.to_string()))?;
                let mut c = self.cmd.clone();
                let moved: i64 = self
                    .replay_one
                    .key(&self.keys.dlq)
                    .key(&self.keys.ready)
                    .key(self.keys.accepted(&job.event_id))
                    .arg(&letter.id)
                    .arg(json)
                    .arg(now_ms())
                    .arg(ACCEPTED_TTL_SECS)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                if moved == 1 {
                    replayed.push(job.event_id);
                }
            }
            if stream_id(&last.id) >= end {
                break;
            }
        }
        Ok(replayed)
    }

    async fn accepted_at(&self, event_id: &str) -> Result<Option<u64>, Error> {
        let mut c = self.cmd.clone();
        c.get(self.keys.accepted(event_id))
            .await
            .map_err(unavailable)
    }

    async fn stats(&self) -> Result<QueueStats, Error> {
        let mut c = self.cmd.clone();
        let (len, pending, delayed, dlq): (u64, Value, u64, u64) = redis::pipe()
            .xlen(&self.keys.ready)
            .cmd("XPENDING")
            .arg(&self.keys.ready)
            .arg(GROUP)
            .zcard(&self.keys.delayed)
            .xlen(&self.keys.dlq)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let in_flight = match pending {
            Value::Array(items) => items
                .first()
                .and_then(|v| redis::from_redis_value::<u64>(v).ok())
                .unwrap_or(0),
            _ => 0,
        };
        Ok(QueueStats {
            ready: len.saturating_sub(in_flight),
            in_flight,
            delayed,
            dead_lettered: dlq,
        })
    }

    async fn ping(&self) -> Result<(), Error> {
        let mut c = self.cmd.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_stream_ids_are_cursors() {
        for ok in ["0-0", "1700000000000-12", "18446744073709551615-0"] {
            assert!(super::is_stream_id(ok), "{ok}");
        }
        for bad in [
            "abc",
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "1 -2",
            "00000000000000000000001-1",
        ] {
            assert!(!super::is_stream_id(bad), "{bad}");
        }
    }
}
