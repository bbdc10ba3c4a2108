//! One partition of the queue: a Redis stream with its retries, dead letters and markers, all
//! under one hash tag (so every script and transaction touches one slot). [`super::RedisQueue`]
//! spreads the queue over one or more of them.
//!
//! Key layout of partition `k` of prefix `p` (hash tag `{p}` for partition 0 — the layout of an
//! unpartitioned queue — and `{p.k}` for the others). The deliveries lane has the same keys under
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
//! check, the depth checks and the append happen in one script, so ingestion is one round trip
//! (two with `REDIS_MIN_REPLICAS_ACK`: the script and `WAIT`, pipelined).

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Script, Value};

use switchyard_model::clock::now_ms;
use switchyard_model::event::Job;

use super::conn::Conns;
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

/// The replay check of [`ENQUEUE`] alone, for a message id whose partition is not its event's.
/// KEYS: message id. ARGV: body digest, message id TTL.
const GUARD: &str = r#"
local seen = redis.call('GET', KEYS[1])
if seen and seen ~= ARGV[1] then return redis.error_reply('REPLAYED message id seen with another body') end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX')
return 1
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

/// One partition of the queue on Redis.
#[derive(Clone)]
pub(super) struct Partition {
    conns: Conns,
    pub(super) keys: Keys,
    max_depth: u64,
    dlq_max_depth: u64,
    /// Replicas that must confirm an append before it counts (0: the master's word is enough).
    min_replicas_ack: u32,
    /// How long to wait for them (`WAIT`'s timeout: half the command timeout, so that its
    /// answer comes back before the command times out).
    replica_ack_timeout: Duration,
    enqueue: Script,
    guard: Script,
    promote: Script,
    replay_one: Script,
    /// Where the next XAUTOCLAIM pass starts (`0-0` after a full sweep).
    reclaim_cursor: std::sync::Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("base", &self.keys.base)
            .finish_non_exhaustive()
    }
}

/// The settings every partition of a queue shares.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// Per partition.
    pub max_depth: u64,
    /// Per partition.
    pub dlq_max_depth: u64,
    pub min_replicas_ack: u32,
    pub replica_ack_timeout: Duration,
}

#[derive(Clone, Debug)]
pub(super) struct Keys {
    /// `{p}` (or `{p.k}`) for the events lane, the same `:deliveries` for the deliveries lane
    /// (one hash tag).
    pub(super) base: String,
    pub(super) ready: String,
    delayed: String,
    dlq: String,
}

impl Keys {
    /// The keys of partition `index` of `prefix`'s `lane`.
    pub(super) fn new(prefix: &str, lane: Lane, index: usize) -> Self {
        let tag = match index {
            0 => format!("{{{prefix}}}"),
            k => format!("{{{prefix}.{k}}}"),
        };
        let base = match lane {
            Lane::Events => tag,
            Lane::Deliveries => format!("{tag}:deliveries"),
        };
        Keys {
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
pub(super) fn is_stream_id(id: &str) -> bool {
    let number = |s: &str| {
        s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok()
    };
    id.split_once('-')
        .is_some_and(|(ms, seq)| number(ms) && number(seq))
}

/// A stream entry id (`ms-seq`) as a comparable pair.
pub(super) fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Why a replicated write did not count.
enum ReplicatedError {
    Redis(redis::RedisError),
    /// Written on the master, confirmed by fewer replicas than asked.
    Unconfirmed {
        acked: u32,
    },
}

pub(super) fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(e.to_string())
}

impl Partition {
    /// Partition `keys` over the given connections (`blocking` serves reads that wait).
    pub(super) fn new(conns: &Conns, keys: Keys, settings: &Settings) -> Self {
        Partition {
            conns: conns.clone(),
            keys,
            max_depth: settings.max_depth,
            dlq_max_depth: settings.dlq_max_depth,
            min_replicas_ack: settings.min_replicas_ack,
            replica_ack_timeout: settings.replica_ack_timeout,
            enqueue: Script::new(ENQUEUE),
            guard: Script::new(GUARD),
            promote: Script::new(PROMOTE),
            replay_one: Script::new(REPLAY_ONE),
            reclaim_cursor: Default::default(),
        }
    }

    /// Up to `max` new entries for `consumer`; with `block`, waiting up to that long for the
    /// first (on the blocking connection), without, answering at once.
    pub(super) async fn read(
        &self,
        consumer: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, Error> {
        let mut opts = StreamReadOptions::default()
            .group(GROUP, consumer)
            .count(max.max(1));
        let mut c = match block {
            // BLOCK 0 would wait for ever: a zero wait is a read that does not block.
            Some(wait) if !wait.is_zero() => {
                opts = opts.block(wait.as_millis().max(1) as usize);
                self.conns.blocking.clone()
            }
            _ => self.conns.cmd.clone(),
        };
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

    /// Checks and records a signed message id (the replay check of an enqueue, alone).
    pub(super) async fn guard_only(&self, guard: &ReplayGuard) -> Result<(), Error> {
        let mut c = self.conns.cmd.clone();
        let r: redis::RedisResult<i64> = self
            .guard
            .key(self.keys.message(&guard.message_id))
            .arg(&guard.digest)
            .arg(guard.ttl.as_secs().max(1))
            .invoke_async(&mut c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("REPLAYED") => Err(Error::Replayed),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Runs the enqueue script; with `REDIS_MIN_REPLICAS_ACK`, pipelined with a `WAIT` on the
    /// same node, so that it counts only once that many replicas hold it.
    async fn with_replicas(&self, keys: &[String], args: &[String]) -> Result<(), ReplicatedError> {
        if self.min_replicas_ack == 0 {
            let mut call = self.enqueue.prepare_invoke();
            keys.iter().for_each(|k| {
                call.key(k);
            });
            args.iter().for_each(|a| {
                call.arg(a);
            });
            return call
                .invoke_async::<Value>(&mut self.conns.cmd.clone())
                .await
                .map(drop)
                .map_err(ReplicatedError::Redis);
        }
        // EVAL rather than EVALSHA: a pipeline cannot load a missing script half-way.
        let mut c = self.conns.append();
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(ENQUEUE)
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .ignore();
        pipe.cmd("WAIT")
            .arg(self.min_replicas_ack)
            .arg(self.replica_ack_timeout.as_millis() as u64);
        let (acked,): (u32,) = pipe
            .query_async(&mut c)
            .await
            .map_err(ReplicatedError::Redis)?;
        if acked < self.min_replicas_ack {
            metrics::counter!("switchyard_queue_unreplicated_appends_total").increment(1);
            return Err(ReplicatedError::Unconfirmed { acked });
        }
        Ok(())
    }

    /// Creates the stream and its consumer group if they do not exist.
    pub(super) async fn ensure_group(&self) -> Result<(), Error> {
        let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }
}

#[async_trait]
impl Queue for Partition {
    async fn enqueue(&self, job: &Job, guard: Option<&ReplayGuard>) -> Result<(), Error> {
        let json = serde_json::to_string(job).map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut keys = vec![
            self.keys.ready.clone(),
            self.keys.delayed.clone(),
            self.keys.accepted(&job.event_id),
            self.keys.dlq.clone(),
        ];
        let mut args = vec![
            json,
            self.max_depth.to_string(),
            job.received_at_ms.to_string(),
            ACCEPTED_TTL_SECS.to_string(),
            self.dlq_max_depth.to_string(),
        ];
        if let Some(g) = guard {
            keys.push(self.keys.message(&g.message_id));
            args.push(g.digest.clone());
            args.push(g.ttl.as_secs().max(1).to_string());
        }
        let r = self.with_replicas(&keys, &args).await;
        let depth = |e: &redis::RedisError| {
            e.detail()
                .and_then(|d| d.trim().parse().ok())
                .unwrap_or_default()
        };
        match r {
            Ok(()) => Ok(()),
            Err(ReplicatedError::Redis(e)) if e.code() == Some("FULL") => {
                Err(Error::Full(depth(&e)))
            }
            Err(ReplicatedError::Redis(e)) if e.code() == Some("DLQFULL") => {
                Err(Error::DlqFull(depth(&e)))
            }
            Err(ReplicatedError::Redis(e)) if e.code() == Some("REPLAYED") => Err(Error::Replayed),
            Err(ReplicatedError::Redis(e)) => Err(unavailable(e)),
            Err(ReplicatedError::Unconfirmed { acked }) => Err(Error::Unavailable(format!(
                "the append reached {acked} of the {} replicas REDIS_MIN_REPLICAS_ACK asks for within {} ms; not acknowledged (it may still be routed: resend it, the event id keeps it once)",
                self.min_replicas_ack,
                self.replica_ack_timeout.as_millis()
            ))),
        }
    }

    async fn fetch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, Error> {
        self.read(consumer, max, Some(wait)).await
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
        c.set_ex::<_, _, ()>(self.keys.progress(&delivery.id), json, ACCEPTED_TTL_SECS)
            .await
            .map_err(unavailable)
    }

    async fn touch(&self, consumer: &str, ids: &[String]) -> Result<(), Error> {
        for chunk in ids.chunks(500) {
            let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
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
                let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
        c.get(self.keys.accepted(event_id))
            .await
            .map_err(unavailable)
    }

    async fn stats(&self) -> Result<QueueStats, Error> {
        let mut c = self.conns.cmd.clone();
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
        let mut c = self.conns.cmd.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
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
