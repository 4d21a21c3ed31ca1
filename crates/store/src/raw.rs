//! The benchmark baseline: preparing events and inserting them straight into
//! a connection, with exactly the statements the writer thread uses.
//!
//! The store itself goes through the same two steps: [`PreparedEvent::new`]
//! runs on the caller's thread inside [`Record::record`], and the writer
//! thread calls the same transaction code as [`Raw::insert`], postings
//! index included. A benchmark that
//! compares this module with the full ingestion path therefore measures the
//! path's overhead, not a different way of writing.
//!
//! [`Record::record`]: custody_engine::Record::record

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use custody_engine::{Decision, Evaluated};
use custody_event::RuntimeEvent;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::StoreError;
use crate::postings::{Field, Pending, Posting, Postings};
use crate::store::StoreOptions;

/// An event serialized and split into the columns it is stored under.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedEvent {
    id: [u8; 16],
    observed_at: i64,
    received_at: i64,
    kind: i64,
    actor: String,
    chain_root: Option<String>,
    run_id: Option<String>,
    verdict: &'static str,
    targets: Vec<String>,
    pub(crate) body: String,
    pub(crate) decision: Option<String>,
}

impl PreparedEvent {
    /// Serializes an evaluated event and extracts its index columns.
    ///
    /// Signals and actions are not stored: the decision carries what they
    /// led to.
    pub fn new(evaluated: Evaluated) -> Result<PreparedEvent, StoreError> {
        let Evaluated {
            event, decision, ..
        } = evaluated;
        let serialize_error = |source| StoreError::Serialize {
            id: event.id,
            source,
        };
        let body = to_json(&event).map_err(serialize_error)?;
        // The default allow is by far the most common decision; storing it as
        // NULL keeps it out of every row.
        let decision_json = if decision == Decision::allow() {
            None
        } else {
            Some(serde_json::to_string(&decision).map_err(serialize_error)?)
        };
        let targets: Vec<String> = crate::postings::distinct_targets(&event)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let RuntimeEvent {
            id,
            kind,
            observed_at,
            received_at,
            actor,
            ..
        } = event;
        Ok(PreparedEvent {
            id: *id.as_bytes(),
            observed_at: observed_at.timestamp_micros(),
            received_at: received_at.timestamp_micros(),
            kind: crate::schema::kind_code(kind),
            chain_root: actor.root.map(|root| root.id),
            actor: actor.current.id,
            run_id: actor.current.run_id,
            verdict: decision.verdict.as_str(),
            targets,
            body,
            decision: decision_json,
        })
    }
}

/// A database opened for direct inserts, with the writer's state: the
/// interned identifiers and the postings index.
pub struct Raw {
    conn: Connection,
    index: Index,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

/// Serializes into a buffer kept per thread, then copies the result out
/// once, exactly sized: a growing `String` would be reallocated and copied
/// several times on the way to an event's size.
fn to_json(event: &RuntimeEvent) -> serde_json::Result<String> {
    /// A buffer grown past this by a large event is let go afterwards.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        let written = serde_json::to_writer(&mut *buffer, event);
        // serde_json writes only valid UTF-8.
        let json = written.map(|()| String::from_utf8_lossy(buffer).into_owned());
        if buffer.capacity() > KEEP {
            *buffer = Vec::new();
        }
        json
    })
}

/// Opens (creating and migrating if needed) the database at `path` with the
/// store's settings, for direct inserts; of `options`, only `durability` and
/// `max_pending_postings` apply.
pub fn open(path: &Path, options: &StoreOptions) -> Result<Raw, StoreError> {
    let mut conn = crate::schema::open(path, options.durability)?;
    let index = Index::recover(&mut conn, Arc::default(), options.max_pending_postings)?;
    Ok(Raw { conn, index })
}

impl Raw {
    /// Inserts `events` in one transaction and returns how many were new (an
    /// event whose id is already stored is skipped).
    pub fn insert(&mut self, events: &[PreparedEvent]) -> Result<usize, StoreError> {
        let seqs = insert_group(&mut self.conn, &mut self.index, events)
            .map_err(StoreError::sqlite("inserting events"))?;
        Ok(seqs.iter().flatten().count())
    }

    /// Writes what the postings index holds in memory to the table, as the
    /// store does when it closes.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.index
            .postings
            .flush(&mut self.conn)
            .map_err(StoreError::sqlite("writing postings"))
    }
}

/// The writer's memory of the database: interned identifiers and the
/// postings index.
#[derive(Debug)]
pub(crate) struct Index {
    keys: Keys,
    pub(crate) postings: Postings,
}

impl Index {
    /// Rebuilds what a crash left out of the postings table and starts
    /// afresh with `pending` as the shared in-memory postings.
    pub(crate) fn recover(
        conn: &mut Connection,
        pending: Arc<Pending>,
        freeze_at: usize,
    ) -> Result<Index, StoreError> {
        let mut keys = Keys::default();
        // What recovery interns commits with it; a failed recovery fails the
        // open, and the cache goes with it.
        let mut added = Vec::new();
        let postings = Postings::recover(conn, pending, freeze_at, |tx, value| {
            keys.intern(tx, value, &mut added)
        })
        .map_err(StoreError::sqlite("rebuilding the postings index"))?;
        Ok(Index { keys, postings })
    }
}

/// The interned identifiers the writer has seen: identifier -> `keys.id`.
///
/// Bounded: past `MAX_CACHED_KEYS` entries it starts afresh, and misses are
/// looked up in the `keys` table.
#[derive(Debug, Default)]
struct Keys {
    cached: HashMap<String, i64, foldhash::fast::RandomState>,
}

/// Most identifiers [`Keys`] holds in memory.
const MAX_CACHED_KEYS: usize = 1 << 20;

impl Keys {
    /// The id of `value` in `keys`, adding it when new. Ids added by this
    /// transaction are listed in `added` so they can be forgotten if it rolls
    /// back.
    fn intern(
        &mut self,
        tx: &Transaction<'_>,
        value: &str,
        added: &mut Vec<String>,
    ) -> rusqlite::Result<i64> {
        if let Some(id) = self.cached.get(value) {
            return Ok(*id);
        }
        let found: Option<i64> = tx
            .prepare_cached("SELECT id FROM keys WHERE value = ?1")?
            .query_row([value], |row| row.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                tx.prepare_cached("INSERT INTO keys (value) VALUES (?1)")?
                    .execute([value])?;
                added.push(value.to_owned());
                tx.last_insert_rowid()
            }
        };
        if self.cached.len() >= MAX_CACHED_KEYS {
            self.cached.clear();
        }
        self.cached.insert(value.to_owned(), id);
        Ok(id)
    }

    fn forget(&mut self, added: &[String]) {
        for value in added {
            self.cached.remove(value);
        }
    }
}

/// Inserts `events` in one immediate transaction, with the next chunk of the
/// postings index's frozen run, and returns, for each event, its sequence
/// number, or `None` when its id was already stored. On error the
/// transaction is rolled back when it drops: nothing of the group remains,
/// identifiers it interned are forgotten, and no posting is published.
pub(crate) fn insert_group<'a>(
    conn: &mut Connection,
    index: &mut Index,
    events: impl IntoIterator<Item = &'a PreparedEvent>,
) -> rusqlite::Result<Vec<Option<i64>>> {
    let mut added = Vec::new();
    let result = insert_interned(conn, index, events, &mut added);
    match result {
        Ok((seqs, fresh, written)) => {
            let last = seqs.iter().flatten().max().copied().unwrap_or(0);
            index.postings.committed(fresh, written, last);
            Ok(seqs)
        }
        Err(error) => {
            index.keys.forget(&added);
            Err(error)
        }
    }
}

/// The group's sequence numbers, its new postings, and where the frozen run
/// is written up to.
type Inserted = (Vec<Option<i64>>, Vec<Posting>, usize);

fn insert_interned<'a>(
    conn: &mut Connection,
    index: &mut Index,
    events: impl IntoIterator<Item = &'a PreparedEvent>,
    added: &mut Vec<String>,
) -> rusqlite::Result<Inserted> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let keys = &mut index.keys;
    let mut seqs = Vec::new();
    let mut fresh: Vec<Posting> = Vec::new();
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT INTO events
                 (id, observed_at, received_at, kind, actor, chain_root, run_id, verdict, body, decision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO NOTHING",
        )?;
        for event in events {
            let actor = keys.intern(&tx, &event.actor, added)?;
            let root = event
                .chain_root
                .as_deref()
                .map(|root| keys.intern(&tx, root, added))
                .transpose()?;
            let run = event
                .run_id
                .as_deref()
                .map(|run| keys.intern(&tx, run, added))
                .transpose()?;
            let inserted = insert_event.execute(params![
                event.id,
                event.observed_at,
                event.received_at,
                event.kind,
                actor,
                root,
                run,
                event.verdict,
                event.body,
                event.decision,
            ])?;
            let seq = (inserted == 1).then(|| tx.last_insert_rowid());
            if let Some(seq) = seq {
                let at = event.observed_at;
                fresh.push((Field::Actor as i64, actor, at, seq));
                fresh.extend(root.map(|root| (Field::Root as i64, root, at, seq)));
                fresh.extend(run.map(|run| (Field::Run as i64, run, at, seq)));
                for target in &event.targets {
                    let target = keys.intern(&tx, target, added)?;
                    fresh.push((Field::Target as i64, target, at, seq));
                }
            }
            seqs.push(seq);
        }
    }
    let written = index.postings.write_chunk(&tx, fresh.len())?;
    tx.commit()?;
    Ok((seqs, fresh, written))
}
