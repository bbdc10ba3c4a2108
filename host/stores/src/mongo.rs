//! The state store on MongoDB.
//!
//! Collection `events`, one document per `eventId` (unique index). The claim is an insert on
//! first delivery — the duplicate-key error *is* the idempotency answer — or a conditional update
//! of a record that is not `ROUTED` and whose lease expired. The happy path is two round trips:
//! claim, then finish. Plugins read `orders` and `shipments` through [`StateStore::lookup`], by
//! `_id` only: every lookup is a point read on the index every collection has, which also works
//! for a database user that may only read them.
//! Write concern and retryable writes come from the connection string (`w=majority`,
//! `retryWrites=true` on a replica set).

use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use switchyard_model::event::Job;
use switchyard_model::record::{
    Attempt, DeliveryState, DeliveryStatus, EventRecord, ScanFilter, StateCounts, StoredEvent,
};

use crate::state::{Claim, Error, Finish, StateStore};

const PENDING: &str = "ROUTING_PENDING";
const ROUTED: &str = "ROUTED";
const FAILED: &str = "FAILED";
/// Attempts kept in an event's history (the newest).
const HISTORY_LIMIT: i32 = 100;

/// Settings of the MongoDB state store.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    pub url: String,
    /// Database name when the URL names none.
    pub database: String,
    /// Server selection and connect timeout.
    pub timeout: Duration,
    /// Expire event records this long after creation (TTL index); `None` keeps them.
    pub ttl: Option<Duration>,
}

/// The state store on MongoDB.
#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    events: Collection<Document>,
}

fn unavailable(e: mongodb::error::Error) -> Error {
    Error::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    switchyard_model::clock::now_ms() as i64
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(m) => m.write_errors.iter().flatten().any(|w| w.code == 11000),
        _ => e.to_string().contains("E11000"),
    }
}

fn to_bson<T: serde::Serialize>(v: &T) -> Result<Bson, Error> {
    bson::to_bson(v).map_err(|e| Error::Unavailable(format!("cannot encode: {e}")))
}

impl MongoStore {
    /// Connects and creates the indexes.
    pub async fn connect(config: MongoConfig) -> Result<Self, Error> {
        let mut options = ClientOptions::parse(&config.url)
            .await
            .map_err(unavailable)?;
        options.server_selection_timeout = Some(config.timeout);
        options.connect_timeout = Some(config.timeout);
        options.app_name = Some("switchyard".into());
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database(&config.database));
        let events = db.collection::<Document>("events");
        let unique = IndexModel::builder()
            .keys(doc! { "eventId": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("eventId_unique".to_string())
                    .build(),
            )
            .build();
        events.create_index(unique).await.map_err(unavailable)?;
        // What-if replays read finished events by state and time of receipt.
        let by_receipt = IndexModel::builder()
            .keys(doc! { "state": 1, "receivedAtMs": 1 })
            .build();
        events.create_index(by_receipt).await.map_err(unavailable)?;
        if let Some(ttl) = config.ttl {
            let expire = IndexModel::builder()
                .keys(doc! { "createdAt": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(ttl)
                        .name("createdAt_ttl".to_string())
                        .build(),
                )
                .build();
            events.create_index(expire).await.map_err(unavailable)?;
        }
        Ok(MongoStore { db, events })
    }

    /// The database (tests seed `orders` / `shipments` through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Why a claim found the event taken: routed already (a duplicate, counted) or leased.
    async fn taken(&self, event_id: &str) -> Result<Claim, Error> {
        let r = self
            .events
            .update_one(
                doc! { "eventId": event_id, "state": ROUTED },
                doc! { "$inc": { "duplicates": 1_i64 } },
            )
            .await
            .map_err(unavailable)?;
        Ok(if r.matched_count == 1 {
            Claim::AlreadyRouted
        } else {
            Claim::Busy
        })
    }

    async fn insert(&self, job: &Job, owner: &str, lease_until: i64) -> Result<bool, Error> {
        let now = now_ms();
        let record = doc! {
            "eventId": &job.event_id,
            "type": &job.event_type,
            "correlationId": &job.correlation_id,
            "payload": &job.payload,
            "state": PENDING,
            "attempts": 0_i32,
            "history": [],
            "duplicates": 0_i64,
            "receivedAtMs": job.received_at_ms as i64,
            "updatedAtMs": now,
            "createdAt": bson::DateTime::from_millis(now),
            "leaseOwner": owner,
            "leaseUntilMs": lease_until,
        };
        match self.events.insert_one(record).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl StateStore for MongoStore {
    async fn claim(&self, job: &Job, owner: &str, lease: Duration) -> Result<Claim, Error> {
        let now = now_ms();
        let lease_until = now + lease.as_millis() as i64;
        let first_delivery = job.attempt == 1 && job.replays == 0;
        if first_delivery && self.insert(job, owner, lease_until).await? {
            return Ok(Claim::Claimed);
        }
        let filter = doc! {
            "eventId": &job.event_id,
            "state": { "$ne": ROUTED },
            "$or": [ { "leaseUntilMs": { "$lt": now } }, { "leaseOwner": owner } ],
        };
        let update = doc! { "$set": {
            "state": PENDING,
            "leaseOwner": owner,
            "leaseUntilMs": lease_until,
            "updatedAtMs": now,
            "correlationId": &job.correlation_id,
        } };
        let r = self
            .events
            .update_one(filter, update)
            .await
            .map_err(unavailable)?;
        if r.matched_count == 1 {
            return Ok(Claim::Claimed);
        }
        let exists = self
            .events
            .find_one(doc! { "eventId": &job.event_id })
            .projection(doc! { "state": 1 })
            .await;
        match exists.map_err(unavailable)? {
            // A retry whose record is gone (e.g. expired): start it again.
            None if self.insert(job, owner, lease_until).await? => Ok(Claim::Claimed),
            _ => self.taken(&job.event_id).await,
        }
    }

    async fn finish(&self, event_id: &str, owner: &str, finish: Finish) -> Result<bool, Error> {
        let now = now_ms();
        if let Finish::Deferred(deferred) = &finish {
            let update = doc! { "$set": {
                "state": PENDING,
                "deferred": to_bson(deferred)?,
                "updatedAtMs": now,
                "leaseOwner": Bson::Null,
                "leaseUntilMs": 0_i64,
            } };
            let r = self
                .events
                .update_one(doc! { "eventId": event_id, "leaseOwner": owner }, update)
                .await
                .map_err(unavailable)?;
            return Ok(r.matched_count == 1);
        }
        let (state, attempt, mut set) = match &finish {
            Finish::Routed {
                decision,
                plugin,
                attempt,
                deliveries,
                routed_by,
            } => (
                ROUTED,
                attempt,
                doc! {
                    "decision": to_bson(decision)?,
                    "plugin": to_bson(plugin)?,
                    "routedAtMs": now,
                    "error": Bson::Null,
                    // The outbox: in the same document, so in the same atomic write.
                    "deliveries": to_bson(deliveries)?,
                    "routedBy": routed_by,
                },
            ),
            Finish::Retry { attempt } => {
                (PENDING, attempt, doc! { "error": attempt.error.clone() })
            }
            Finish::Failed { error, attempt } => {
                (FAILED, attempt, doc! { "error": error, "failedAtMs": now })
            }
            Finish::Deferred(_) => unreachable!("handled above"),
        };
        set.insert("deferred", Bson::Null);
        set.insert("state", state);
        set.insert("attempts", attempt.attempt as i64);
        set.insert("updatedAtMs", now);
        set.insert("leaseOwner", Bson::Null);
        set.insert("leaseUntilMs", 0_i64);
        let update = doc! {
            "$set": set,
            "$push": { "history": { "$each": [to_bson::<Attempt>(attempt)?], "$slice": -HISTORY_LIMIT } },
        };
        let r = self
            .events
            .update_one(doc! { "eventId": event_id, "leaseOwner": owner }, update)
            .await
            .map_err(unavailable)?;
        Ok(r.matched_count == 1)
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventRecord>, Error> {
        let found = self
            .events
            .find_one(doc! { "eventId": event_id })
            .await
            .map_err(unavailable)?;
        found
            .map(|d| {
                bson::from_document(d)
                    .map_err(|e| Error::Unavailable(format!("cannot decode event record: {e}")))
            })
            .transpose()
    }

    async fn counts(&self) -> Result<StateCounts, Error> {
        use futures::TryStreamExt;
        let mut cursor = self
            .events
            .aggregate([doc! { "$group": { "_id": "$state", "n": { "$sum": 1 } } }])
            .await
            .map_err(unavailable)?;
        let mut counts = StateCounts::default();
        while let Some(row) = cursor.try_next().await.map_err(unavailable)? {
            let n = match row.get("n") {
                Some(Bson::Int32(n)) => *n as u64,
                Some(Bson::Int64(n)) => *n as u64,
                Some(Bson::Double(n)) => *n as u64,
                _ => 0,
            };
            match row.get_str("_id") {
                Ok(PENDING) => counts.pending = n,
                Ok(ROUTED) => counts.routed = n,
                Ok(FAILED) => counts.failed = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn scan(&self, filter: &ScanFilter, limit: usize) -> Result<Vec<StoredEvent>, Error> {
        use futures::TryStreamExt;
        let mut query = doc! {
            "state": match filter.state {
                Some(s) => Bson::from(s.as_str()),
                None => Bson::from(doc! { "$in": [ROUTED, FAILED] }),
            },
            "payload": { "$exists": true },
        };
        if let Some(t) = &filter.event_type {
            query.insert("type", t);
        }
        let mut received = Document::new();
        if let Some(f) = filter.from_ms {
            received.insert("$gte", f as i64);
        }
        if let Some(t) = filter.to_ms {
            received.insert("$lt", t as i64);
        }
        if !received.is_empty() {
            query.insert("receivedAtMs", received);
        }
        let mut cursor = self
            .events
            .find(query)
            .sort(doc! { "receivedAtMs": 1, "eventId": 1 })
            .limit(limit as i64)
            .await
            .map_err(unavailable)?;
        let mut found = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(unavailable)? {
            let payload = d.get_str("payload").unwrap_or("{}").to_string();
            let record: EventRecord = bson::from_document(d)
                .map_err(|e| Error::Unavailable(format!("cannot decode event record: {e}")))?;
            found.push(StoredEvent { record, payload });
        }
        Ok(found)
    }

    async fn record_delivery(
        &self,
        event_id: &str,
        destination: &str,
        status: &DeliveryStatus,
    ) -> Result<bool, Error> {
        if destination.contains(['.', '\0']) || destination.starts_with('$') {
            return Err(Error::Invalid(format!("destination name {destination:?}")));
        }
        let field = format!("deliveries.{destination}");
        let state = format!("{field}.state");
        let r = self
            .events
            .update_one(
                doc! {
                    "eventId": event_id,
                    &field: { "$exists": true },
                    &state: { "$ne": to_bson(&DeliveryState::Delivered)? },
                },
                doc! { "$set": { &field: to_bson(status)? } },
            )
            .await
            .map_err(unavailable)?;
        Ok(r.matched_count == 1)
    }

    async fn lookup(&self, kind: &str, id: &str) -> Result<Option<String>, Error> {
        let collection = match kind {
            "order" => "orders",
            "shipment" => "shipments",
            _ => return Ok(None),
        };
        let found = self
            .db
            .collection::<Document>(collection)
            .find_one(doc! { "_id": id })
            .await
            .map_err(unavailable)?;
        Ok(found.map(|d| Bson::Document(d).into_relaxed_extjson().to_string()))
    }

    async fn put_context(&self, kind: &str, id: &str, document: &str) -> Result<(), Error> {
        let collection = match kind {
            "order" => "orders",
            "shipment" => "shipments",
            other => return Err(Error::Invalid(format!("unknown context kind {other}"))),
        };
        let value: serde_json::Value =
            serde_json::from_str(document).map_err(|e| Error::Invalid(format!("not JSON: {e}")))?;
        let mut doc = bson::to_document(&value)
            .map_err(|e| Error::Invalid(format!("not a document MongoDB can store: {e}")))?;
        doc.insert("_id", id);
        self.db
            .collection::<Document>(collection)
            .replace_one(doc! { "_id": id }, doc)
            .upsert(true)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), Error> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
