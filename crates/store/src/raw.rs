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

use std::path::Path;
use std::sync::Arc;

use custody_engine::{Decision, Evaluated};
use custody_event::RuntimeEvent;
use rusqlite::{Connection, TransactionBehavior, params};

use crate::StoreError;
use crate::findings::PreparedFinding;
use crate::postings::{Field, Identifiers, Pending, Posting, Postings};
use crate::store::StoreOptions;

/// An event serialized and split into the columns it is stored under, its
/// identifiers hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedEvent {
    id: [u8; 16],
    observed_at: i64,
    received_at: i64,
    kind: i64,
    attribution: i64,
    actor: i64,
    chain_root: Option<i64>,
    run_id: Option<i64>,
    verdict: &'static str,
    targets: Vec<i64>,
    pub(crate) body: String,
    pub(crate) decision: Option<String>,
    pub(crate) findings: Vec<PreparedFinding>,
    pub(crate) actions: Vec<crate::actions::PreparedAction>,
}

impl PreparedEvent {
    /// Serializes an evaluated event and extracts its index columns.
    ///
    /// Of the signals, the findings they open or repeat are stored, and
    /// the actions playbooks took, in the event's transaction.
    pub fn new(evaluated: Evaluated) -> Result<PreparedEvent, StoreError> {
        let Evaluated {
            event,
            decision,
            signals,
            actions,
        } = evaluated;
        let serialize_error = |source| StoreError::Serialize {
            id: event.id,
            source,
        };
        let body = to_json(&event).map_err(serialize_error)?;
        let findings = if signals.is_empty() {
            Vec::new()
        } else {
            crate::findings::prepare(&signals, event.observed_at).map_err(serialize_error)?
        };
        let actions = if actions.is_empty() {
            Vec::new()
        } else {
            crate::actions::prepare(&actions).map_err(serialize_error)?
        };
        // The default allow is by far the most common decision; storing it as
        // NULL keeps it out of every row.
        let decision_json = if decision == Decision::allow() {
            None
        } else {
            Some(serde_json::to_string(&decision).map_err(serialize_error)?)
        };
        let named = Identifiers::of(&event.actor, &event.target);
        let RuntimeEvent {
            id,
            kind,
            observed_at,
            received_at,
            attribution,
            ..
        } = event;
        Ok(PreparedEvent {
            id: *id.as_bytes(),
            observed_at: observed_at.timestamp_micros(),
            received_at: received_at.timestamp_micros(),
            kind: crate::schema::kind_code(kind),
            attribution: crate::schema::attribution_code(attribution.method),
            actor: named.actor,
            chain_root: named.root,
            run_id: named.run,
            verdict: decision.verdict.as_str(),
            targets: named.targets,
            body,
            decision: decision_json,
            findings,
            actions,
        })
    }
}

/// Serializes into a buffer sized by the previous event this thread
/// serialized, so it is rarely grown (a growing `String` would be
/// reallocated and copied several times on the way to an event's size).
fn to_json(event: &RuntimeEvent) -> serde_json::Result<String> {
    thread_local! {
        static LAST_SIZE: std::cell::Cell<usize> = const { std::cell::Cell::new(1024) };
    }
    let hint = LAST_SIZE.get();
    let mut buffer = Vec::with_capacity(hint + hint / 4);
    serde_json::to_writer(&mut buffer, event)?;
    LAST_SIZE.set(buffer.len().min(64 * 1024));
    // serde_json writes only UTF-8; this check is the fast, validating kind.
    String::from_utf8(buffer).map_err(|error| {
        serde::ser::Error::custom(format!("serialized event is not UTF-8: {error}"))
    })
}

/// A database opened for direct inserts, with the writer's postings index.
pub struct Raw {
    conn: Connection,
    postings: Postings,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

/// Opens (creating and migrating if needed) the database at `path` with the
/// store's settings, for direct inserts; of `options`, only `durability` and
/// `max_pending_postings` apply.
pub fn open(path: &Path, options: &StoreOptions) -> Result<Raw, StoreError> {
    let mut conn = crate::schema::open(path, options.durability)?;
    let postings = recover(&mut conn, Arc::default(), options.max_pending_postings)?;
    Ok(Raw { conn, postings })
}

impl Raw {
    /// Inserts `events` in one transaction and returns how many were new (an
    /// event whose id is already stored is skipped).
    pub fn insert(&mut self, events: &[PreparedEvent]) -> Result<usize, StoreError> {
        let seqs = insert_group(&mut self.conn, &mut self.postings, events, &mut Vec::new())
            .map_err(StoreError::sqlite("inserting events"))?;
        Ok(seqs.iter().flatten().count())
    }

    /// Writes what the postings index holds in memory to the table, as the
    /// store does when it closes.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.postings
            .flush(&mut self.conn)
            .map_err(StoreError::sqlite("writing postings"))
    }
}

/// Rebuilds what a crash left out of the postings table and starts afresh
/// with `pending` as the shared in-memory postings.
pub(crate) fn recover(
    conn: &mut Connection,
    pending: Arc<Pending>,
    freeze_at: usize,
) -> Result<Postings, StoreError> {
    Postings::recover(conn, pending, freeze_at)
        .map_err(StoreError::sqlite("rebuilding the postings index"))
}

/// Inserts `events` in one immediate transaction, with the next chunk of the
/// postings index's frozen run, and returns, for each event, its sequence
/// number, or `None` when its id was already stored. The findings opened
/// are added to `opened` (sequence number, body). On error the
/// transaction is rolled back when it drops: nothing of the group remains,
/// and no posting is published.
pub(crate) fn insert_group<'a>(
    conn: &mut Connection,
    postings: &mut Postings,
    events: impl IntoIterator<Item = &'a PreparedEvent>,
    opened: &mut Vec<(i64, String)>,
) -> rusqlite::Result<Vec<Option<i64>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut seqs = Vec::new();
    let mut fresh: Vec<Posting> = Vec::new();
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT INTO events
                 (id, observed_at, received_at, kind, actor, chain_root, run_id, verdict, body, decision, attribution)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (id) DO NOTHING",
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
                event.attribution,
            ])?;
            let seq = (inserted == 1).then(|| tx.last_insert_rowid());
            // A resubmitted event's findings were stored with it the first
            // time.
            if seq.is_some() && !event.findings.is_empty() {
                crate::findings::insert(&tx, &event.id, &event.findings, opened)?;
            }
            if seq.is_some() && !event.actions.is_empty() {
                crate::actions::insert(&tx, Some(&event.id), event.received_at, &event.actions)?;
            }
            if let Some(seq) = seq {
                let at = event.observed_at;
                fresh.push((Field::Actor as i64, event.actor, at, seq));
                fresh.extend(
                    event
                        .chain_root
                        .map(|root| (Field::Root as i64, root, at, seq)),
                );
                fresh.extend(event.run_id.map(|run| (Field::Run as i64, run, at, seq)));
                fresh.extend(
                    event
                        .targets
                        .iter()
                        .map(|&target| (Field::Target as i64, target, at, seq)),
                );
            }
            seqs.push(seq);
        }
    }
    let written = postings.write_chunk(&tx, fresh.len())?;
    tx.commit()?;
    let last = seqs.iter().flatten().max().copied().unwrap_or(0);
    postings.committed(fresh, written, last);
    Ok(seqs)
}
