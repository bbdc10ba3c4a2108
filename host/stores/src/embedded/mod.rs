//! The embedded backend: one `redb` file in the data directory holds the queue ([`queue`]) and
//! the event state ([`state`]), so the whole gateway runs as a single binary with no Redis or
//! MongoDB. This module is the database and its single writer.
//!
//! Why redb: pure Rust, ACID with copy-on-write B-trees (a crash leaves the last committed
//! state), an exclusive file lock (a second process fails instead of corrupting), and steady
//! maintenance. Every write goes through one writer thread that batches whatever is pending into
//! a single transaction and one fsync (group commit): callers get their answer only after the
//! commit is durable, and concurrency turns into throughput.

pub mod queue;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

/// Queue entries (ready and in flight): sequence → job JSON.
pub(crate) const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// Delayed retries: (due ms, sequence) → job JSON.
pub(crate) const DELAYED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("delayed");
/// Dead letters: sequence → dead-letter JSON.
pub(crate) const DLQ: TableDefinition<u64, &[u8]> = TableDefinition::new("dlq");
/// Receive time of queued, unfinished events: event id → ms.
pub(crate) const ACCEPTED: TableDefinition<&str, u64> = TableDefinition::new("accepted");
/// The queue tables of one lane.
#[derive(Clone, Copy)]
pub(crate) struct LaneTables {
    pub(crate) jobs: TableDefinition<'static, u64, &'static [u8]>,
    pub(crate) delayed: TableDefinition<'static, (u64, u64), &'static [u8]>,
    pub(crate) dlq: TableDefinition<'static, u64, &'static [u8]>,
    pub(crate) accepted: TableDefinition<'static, &'static str, u64>,
}

/// The events lane's tables (named as before lanes existed).
pub(crate) const EVENT_TABLES: LaneTables = LaneTables {
    jobs: JOBS,
    delayed: DELAYED,
    dlq: DLQ,
    accepted: ACCEPTED,
};

/// The deliveries lane's tables.
pub(crate) const DELIVERY_TABLES: LaneTables = LaneTables {
    jobs: TableDefinition::new("delivery_jobs"),
    delayed: TableDefinition::new("delivery_delayed"),
    dlq: TableDefinition::new("delivery_dlq"),
    accepted: TableDefinition::new("delivery_accepted"),
};

/// Event records: event id → record JSON.
pub(crate) const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
/// Counters (records per state).
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Live state for plugins: (kind, id) → JSON.
pub(crate) const CONTEXT: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("context");
/// Signed message ids seen by ingestion: message id → (expires ms, body digest).
pub(crate) const MESSAGE_IDS: TableDefinition<&str, (u64, &str)> =
    TableDefinition::new("message_ids");
/// The same ids by expiry, for pruning: (expires ms, message id) → ().
pub(crate) const MESSAGE_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("message_expiry");
/// Event records by time of receipt, for `EVENT_TTL_DAYS`: (received ms, event id) → ().
pub(crate) const EVENTS_BY_RECEIPT: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("events_by_receipt");

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "switchyard.redb";
/// Largest number of operations committed together.
const MAX_BATCH: usize = 4096;

/// Storage failures, safe to log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("embedded store: {0}")]
pub struct Error(pub String);

/// Each redb error (and a JSON one) converts, so that storage code uses `?`.
macro_rules! from_errors {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error(e.to_string())
            }
        })*
    };
}

from_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error,
);

type Done = Box<dyn FnOnce(Result<(), Error>) + Send>;
type Op = Box<dyn FnOnce(&WriteTransaction) -> Done + Send>;

/// The opened database and its writer thread. Cheap to clone; the last clone dropped stops the
/// writer and closes the file before the drop returns, so the directory can be opened again
/// at once (by a restart in the same process, say).
#[derive(Clone)]
pub struct EmbeddedDb {
    db: Arc<Database>,
    writer: Arc<Writer>,
    path: PathBuf,
}

/// The writer thread's inbox and handle.
struct Writer {
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedDb {
    /// Opens (or creates) the database in `dir`. Fails at once, with a clear message, when
    /// another process has it open.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
                "data directory {} is in use by another switchyard process (or another open of it); \
                 stop it or choose another DATA_DIR",
                dir.display()
            ),
            Err(e) => anyhow::bail!("cannot open {}: {e}", path.display()),
        };
        let txn = db.begin_write()?;
        txn.open_table(EVENTS)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(CONTEXT)?;
        txn.open_table(MESSAGE_IDS)?;
        for lane in [EVENT_TABLES, DELIVERY_TABLES] {
            txn.open_table(lane.jobs)?;
            txn.open_table(lane.delayed)?;
            txn.open_table(lane.dlq)?;
            txn.open_table(lane.accepted)?;
        }
        txn.open_table(MESSAGE_EXPIRY)?;
        txn.open_table(EVENTS_BY_RECEIPT)?;
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Op>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("embedded-writer".into())
            .spawn(move || writer(writer_db, rx))?;
        Ok(EmbeddedDb {
            db,
            writer: Arc::new(Writer {
                ops: Some(tx),
                thread: Some(thread),
            }),
            path,
        })
    }

    fn send(&self, op: Op) -> Result<(), Error> {
        self.writer
            .ops
            .as_ref()
            .and_then(|ops| ops.send(op).ok())
            .ok_or_else(|| Error("the writer has stopped".into()))
    }

    /// Runs `f` in the next write transaction; resolves once that transaction is durably
    /// committed. `f` must check before it writes: its writes commit with the batch.
    pub async fn write<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |txn| {
            let result = f(txn);
            Box::new(move |commit: Result<(), Error>| {
                let _ = tx.send(commit.and(result));
            })
        });
        self.send(op)?;
        rx.await
            .map_err(|_| Error("the write was not committed (storage failure)".into()))?
    }

    /// Like [`Self::write`], and runs `then` on the committed result right after the commit, on
    /// the writer thread: it happens even if the caller stops waiting (cancellation-safe
    /// bookkeeping of in-memory state).
    pub async fn write_then<R, F, T>(&self, f: F, then: T) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, Error> + Send + 'static,
        T: FnOnce(&R) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |txn| {
            let result = f(txn);
            Box::new(move |commit: Result<(), Error>| {
                let out = commit.and(result);
                if let Ok(r) = &out {
                    then(r);
                }
                let _ = tx.send(out);
            })
        });
        self.send(op)?;
        rx.await
            .map_err(|_| Error("the write was not committed (storage failure)".into()))?
    }

    /// Runs `f` on a read snapshot.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }
}

fn writer(db: Arc<Database>, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "embedded store: cannot begin a write transaction");
                continue; // dropping the ops fails their callers
            }
        };
        let mut done: Vec<Done> = Vec::with_capacity(batch.len());
        let mut panicked = false;
        for op in batch {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&txn))) {
                Ok(d) => done.push(d),
                Err(_) => panicked = true, // its caller sees the write fail
            }
        }
        if panicked {
            tracing::error!("embedded store: a write panicked; the whole batch is aborted");
            drop(txn);
            for d in done {
                d(Err(Error("the batch was aborted".into())));
            }
            continue;
        }
        let committed = txn.commit().map_err(|e| {
            tracing::error!(error = %e, "embedded store: commit failed");
            Error::from(e)
        });
        for d in done {
            d(committed.clone());
        }
    }
}
