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
use rusqlite::{Connection, TransactionBehavior, params};

use crate::StoreError;
use crate::store::Durability;

/// An event serialized and split into the columns it is stored under.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedEvent {
    id: [u8; 16],
    observed_at: i64,
    received_at: i64,
    kind: &'static str,
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
            kind: kind.as_str(),
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
/// event whose id is already stored is skipped).
pub fn insert(conn: &mut Connection, events: &[PreparedEvent]) -> Result<usize, StoreError> {
    let seqs = insert_group(conn, events).map_err(StoreError::sqlite("inserting events"))?;
    Ok(seqs.iter().flatten().count())
}

/// Inserts `events` in one immediate transaction and returns, for each, its
/// sequence number, or `None` when its id was already stored. On error the
/// transaction is rolled back when it drops: nothing of the group remains.
pub(crate) fn insert_group<'a>(
    conn: &mut Connection,
    events: impl IntoIterator<Item = &'a PreparedEvent>,
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
            let inserted = insert_event.execute(params![
                event.id,
                event.observed_at,
                event.received_at,
                event.kind,
                event.actor,
                event.chain_root,
                event.run_id,
                event.verdict,
                event.body,
                event.decision,
            ])?;
            let seq = (inserted == 1).then(|| tx.last_insert_rowid());
            if let Some(seq) = seq {
                for target in &event.targets {
                    insert_target.execute(params![target, event.observed_at, seq])?;
                }
            }
            seqs.push(seq);
        }
    }
    tx.commit()?;
    Ok(seqs)
}
