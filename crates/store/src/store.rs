//! The store handle: opening, recording, reading and tokens.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use custody_engine::{ActionRecord, Evaluated, Receipt, Record, RecordError, Reservation};
use custody_event::{EventId, FindingId};
use rusqlite::Connection;
use tokio::sync::broadcast;

use crate::actions::{ActionCount, ActionQuery, StoredAction};
use crate::findings::{FindingPage, FindingQuery, StoredFinding};
use crate::postings::Pending;
use crate::query::{self, EventPage, EventQuery, StoredEvent};
use crate::raw;
use crate::tokens::{self, NewToken, TokenRecord};
use crate::writer::{Committed, Live, Opened, StoreStats, Writer};
use crate::{StoreError, schema};

/// The database file's name inside the store's directory.
pub const DATABASE_FILE: &str = "custody.db";

/// How many commit notifications the live tail buffers for a slow
/// subscriber before it starts skipping.
const LIVE_CAPACITY: usize = 4096;

/// How hard a commit works to survive a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is synced to disk before it is acknowledged: an
    /// acknowledged event survives a power loss (`synchronous=FULL`).
    #[default]
    Full,
    /// Commits reach the operating system but are synced only at
    /// checkpoints: an acknowledged event survives the process being killed,
    /// not a power loss (`synchronous=NORMAL`).
    Normal,
}

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// How hard a commit works to survive a crash.
    pub durability: Durability,
    /// The most events accepted and not yet committed; beyond it, recording
    /// is refused with [`RecordError::QueueFull`]. A single batch larger than
    /// this is always refused, so callers must cap their batch size below it.
    pub queue_capacity: usize,
    /// The most events the writer puts in one transaction, unless a single
    /// batch is larger (batches are never split).
    pub max_group_events: usize,
    /// How many idle read connections to keep.
    pub readers: usize,
    /// How many postings (one per identifier an event names: actor, chain
    /// root, run, each target) the writer gathers in memory before writing
    /// them to the postings table as one sorted run. More means fewer,
    /// better-packed writes and more memory: about 60 bytes each while
    /// pending, and up to twice that while a run is written out. After a
    /// crash, the next open rebuilds them from the events.
    pub max_pending_postings: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Full,
            queue_capacity: 200_000,
            max_group_events: 50_000,
            readers: 4,
            max_pending_postings: 600_000,
        }
    }
}

/// The embedded event store. Cheap to clone: clones share one database, one
/// writer thread and one pool of read connections.
///
/// Writes go through [`Record::record`], which never blocks; reads and token
/// operations block on SQLite and belong on a blocking thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    live: Live,
    /// Postings committed but not yet in the postings table.
    pending: Arc<Pending>,
}

impl Store {
    /// Opens the store in `dir`, creating the directory and the database as
    /// needed and migrating the schema, and starts the writer thread.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DATABASE_FILE);
        let mut conn = schema::open(&path, options.durability)?;
        let pending = Arc::new(Pending::default());
        let postings = raw::recover(&mut conn, pending.clone(), options.max_pending_postings)?;
        let live = Live {
            events: broadcast::channel(LIVE_CAPACITY).0,
            findings: broadcast::channel(LIVE_CAPACITY).0,
        };
        let checkpoints = schema::connect(&path, options.durability)?;
        let writer = Writer::spawn(
            conn,
            checkpoints,
            postings,
            options.queue_capacity,
            options.max_group_events,
            live.clone(),
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                options,
                writer,
                readers: Mutex::default(),
                live,
                pending,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stops accepting events, commits everything queued, and waits for the
    /// writer thread. Every clone then refuses [`Record::record`] with
    /// [`RecordError::Closed`]; reads keep working. Dropping the last clone
    /// does the same, silently.
    pub fn close(self) -> Result<(), StoreError> {
        self.inner.writer.close()
    }

    /// The live tail: every commit's new events, in commit order. A
    /// subscriber more than a few thousand commits behind misses some and is
    /// told so by [`broadcast::error::RecvError::Lagged`].
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.inner.live.events.subscribe()
    }

    /// The live tail of findings: each commit's new findings.
    pub fn subscribe_findings(&self) -> broadcast::Receiver<Opened> {
        self.inner.live.findings.subscribe()
    }

    /// The writer's counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            pending_postings: self.inner.pending.len() as u64,
            ..self.inner.writer.stats()
        }
    }

    /// A page of findings matching `q`, newest first.
    pub fn findings(&self, q: &FindingQuery) -> Result<FindingPage, StoreError> {
        self.read(|conn| crate::findings::query(conn, q))
    }

    /// One finding, with every event linked to it.
    pub fn finding(&self, id: FindingId) -> Result<Option<StoredFinding>, StoreError> {
        self.read(|conn| crate::findings::get(conn, id))
    }

    /// The findings `event` is linked to.
    pub fn findings_of_event(&self, event: EventId) -> Result<Vec<FindingId>, StoreError> {
        self.read(|conn| crate::findings::of_event(conn, event))
    }

    /// A page of events matching `q`.
    pub fn query(&self, q: &EventQuery) -> Result<EventPage, StoreError> {
        self.read(|conn| query::query(conn, &self.inner.pending, q))
    }

    /// The event with this id, if stored.
    pub fn get(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.read(|conn| {
            query::get(conn, id.as_bytes())
                .map_err(StoreError::sqlite(format!("reading event {id}")))
        })
    }

    /// Up to `limit` events stored after sequence number `after`, in commit
    /// order: for replaying the store, page by page.
    pub fn scan(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(|conn| {
            query::scan(conn, after, limit).map_err(StoreError::sqlite("scanning events"))
        })
    }

    /// The number of stored events. It walks an index: for frequent polling
    /// prefer [`Store::stats`].
    pub fn count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            query::count(conn, "SELECT count(*) FROM events")
                .map_err(StoreError::sqlite("counting events"))
        })
    }

    /// Keeps detection state by name (inserted or replaced), all in one
    /// transaction.
    pub fn put_state(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        let mut conn = self.token_writer()?;
        let write = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT INTO detection_state (name, body, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                )?;
                let now = chrono::Utc::now().timestamp_micros();
                for (name, body) in entries {
                    put.execute(rusqlite::params![name, body, now])?;
                }
            }
            tx.commit()
        };
        write(&mut conn).map_err(StoreError::sqlite("keeping detection state"))
    }

    /// The detection state whose names start with `prefix`, by name.
    pub fn states(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn| {
            let read = || -> rusqlite::Result<Vec<(String, String)>> {
                conn.prepare_cached(
                    "SELECT name, body FROM detection_state
                     WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
                )?
                .query_map([prefix], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
            };
            read().map_err(StoreError::sqlite("reading detection state"))
        })
    }

    /// Stores an action taken without an event (containment applied or
    /// lifted through the API).
    pub fn insert_action(&self, action: &ActionRecord) -> Result<(), StoreError> {
        crate::actions::insert_alone(&mut self.token_writer()?, action)
    }

    /// Sets the outcome of the action `id` once carried out, with what a
    /// responder sent and got back; whether the action was stored.
    pub fn update_action(
        &self,
        id: &str,
        outcome: &str,
        detail: &str,
        response: Option<&serde_json::Value>,
    ) -> Result<bool, StoreError> {
        crate::actions::update(&self.token_writer()?, id, outcome, detail, response)
    }

    /// Actions matching `q`, newest first.
    pub fn actions(&self, q: &ActionQuery) -> Result<Vec<StoredAction>, StoreError> {
        self.read(|conn| crate::actions::query(conn, q))
    }

    /// How many actions each playbook took, by mode and outcome.
    pub fn action_counts(&self) -> Result<Vec<ActionCount>, StoreError> {
        self.read(crate::actions::counts)
    }

    /// Forgets the detection state `name`; whether there was any.
    pub fn delete_state(&self, name: &str) -> Result<bool, StoreError> {
        self.token_writer()?
            .execute("DELETE FROM detection_state WHERE name = ?1", [name])
            .map(|deleted| deleted > 0)
            .map_err(StoreError::sqlite("forgetting detection state"))
    }

    /// Stores a token, stamped with the current time.
    pub fn insert_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError> {
        tokens::insert(&self.token_writer()?, token)
            .map_err(StoreError::sqlite(format!("storing token `{}`", token.id)))
    }

    /// The token whose secret has this hash, revoked or not: the caller
    /// refuses a revoked one.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|conn| {
            tokens::by_hash(conn, hash).map_err(StoreError::sqlite("looking up a token"))
        })
    }

    /// Every token, revoked ones included, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|conn| tokens::list(conn).map_err(StoreError::sqlite("listing tokens")))
    }

    /// Revokes a token; false when no such token is active.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        tokens::revoke(&self.token_writer()?, id)
            .map_err(StoreError::sqlite(format!("revoking token `{id}`")))
    }

    /// The number of tokens not revoked.
    pub fn token_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            query::count(conn, "SELECT count(*) FROM tokens WHERE revoked_at IS NULL")
                .map_err(StoreError::sqlite("counting tokens"))
        })
    }

    /// Holds the writer back (or lets it go) so a test can fill the queue.
    #[cfg(test)]
    pub(crate) fn pause_writer(&self, paused: bool) {
        self.inner.writer.pause(paused);
    }

    /// Runs `f` on a pooled read connection, opening one when none is idle,
    /// so a burst of readers never waits on the pool.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.lock_readers().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => schema::open_reader(&self.inner.path)?,
        };
        let result = f(&conn);
        let mut readers = self.lock_readers();
        if readers.len() < self.inner.options.readers {
            readers.push(conn);
        }
        result
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A short-lived connection for token writes, which are rare and must not
    /// queue behind a large group of events.
    fn token_writer(&self) -> Result<Connection, StoreError> {
        schema::connect(&self.inner.path, self.inner.options.durability)
    }
}

impl Record for Store {
    /// Serializes the batch on the calling thread and queues it for the
    /// writer; never blocks on IO.
    fn record(&self, batch: Vec<Evaluated>) -> Result<Receipt, RecordError> {
        self.inner.writer.submit(batch)
    }

    /// Holds room in the write queue; refused at once when it is full.
    fn reserve(&self, events: usize) -> Result<Reservation, RecordError> {
        self.inner.writer.reserve(events)
    }

    fn record_reserved(
        &self,
        batch: Vec<Evaluated>,
        reservation: Reservation,
    ) -> Result<Receipt, RecordError> {
        self.inner.writer.submit_reserved(batch, reservation)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
