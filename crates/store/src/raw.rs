//! The benchmark baseline: preparing events and inserting them straight into
//! a connection, with exactly the statements the writer thread uses.
//!
//! The store itself goes through the same two steps: [`PreparedEvent::new`]
//! runs on the caller's thread inside [`Record::record`], and the writer
//! thread calls the same transaction code as [`insert`]. A benchmark that
//! compares this module with the full ingestion path therefore measures the
//! path's overhead, not a different way of writing.
//!
//! [`Record::record`]: custody_engine::Record::record

use std::path::Path;

use custody_engine::{Decision, Evaluated};
use custody_event::RuntimeEvent;
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::StoreError;
use crate::store::Durability;

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
        let body = serde_json::to_string(&event).map_err(serialize_error)?;
        // The default allow is by far the most common decision; storing it as
        // NULL keeps it out of every row.
        let decision_json = if decision == Decision::allow() {
            None
        } else {
            Some(serde_json::to_string(&decision).map_err(serialize_error)?)
        };
        let mut targets: Vec<String> = Vec::new();
        for key in event.target.keys() {
            if !targets.iter().any(|target| target == key) {
                targets.push(key.to_owned());
            }
        }
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

/// Opens (creating and migrating if needed) the database at `path` with the
/// store's settings, for use with [`insert`].
pub fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    crate::schema::open(path, durability)
}

/// Inserts `events` in one transaction and returns how many were new (an
/// event whose id is already stored is skipped). `keys` remembers interned
/// identifiers from one call to the next, as the writer thread's does.
pub fn insert(
    conn: &mut Connection,
    keys: &mut Keys,
    events: &[PreparedEvent],
) -> Result<usize, StoreError> {
    let seqs = insert_group(conn, keys, events).map_err(StoreError::sqlite("inserting events"))?;
    Ok(seqs.iter().flatten().count())
}

/// The interned identifiers the writer has seen: identifier -> `keys.id`.
///
/// Bounded: past `MAX_CACHED_KEYS` entries it starts afresh, and misses are
/// looked up in the `keys` table.
#[derive(Debug, Default)]
pub struct Keys {
    cached: HashMap<String, i64>,
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

/// Inserts `events` in one immediate transaction and returns, for each, its
/// sequence number, or `None` when its id was already stored. On error the
/// transaction is rolled back when it drops: nothing of the group remains,
/// and identifiers it interned are forgotten.
pub(crate) fn insert_group<'a>(
    conn: &mut Connection,
    keys: &mut Keys,
    events: impl IntoIterator<Item = &'a PreparedEvent>,
) -> rusqlite::Result<Vec<Option<i64>>> {
    let mut added = Vec::new();
    let result = insert_interned(conn, keys, events, &mut added);
    if result.is_err() {
        keys.forget(&added);
    }
    result
}

fn insert_interned<'a>(
    conn: &mut Connection,
    keys: &mut Keys,
    events: impl IntoIterator<Item = &'a PreparedEvent>,
    added: &mut Vec<String>,
) -> rusqlite::Result<Vec<Option<i64>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut seqs = Vec::new();
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT INTO events
                 (id, observed_at, received_at, kind, actor, chain_root, run_id, verdict, body, decision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO NOTHING",
        )?;
        let mut insert_target = tx.prepare_cached(
            "INSERT INTO event_targets (target, observed_at, seq) VALUES (?1, ?2, ?3)",
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
                for target in &event.targets {
                    let target = keys.intern(&tx, target, added)?;
                    insert_target.execute(params![target, event.observed_at, seq])?;
                }
            }
            seqs.push(seq);
        }
    }
    tx.commit()?;
    Ok(seqs)
}
