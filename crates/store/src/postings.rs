//! The postings index: for each identifier an event names (its actor, chain
//! root, run and targets), the events that name it, in `(observed_at, seq)`
//! order.
//!
//! Identifiers are many (every resource, every run), so an ordinary index
//! takes each event's entries on random b-tree leaves, and once an index
//! outgrows what one group commit touches, every event dirties whole pages
//! of its own, each written to the log and again at checkpoint. Instead the
//! writer keeps the newest postings in memory ([`Pending`], which readers
//! consult beside the table) and writes them to the `postings` table in
//! sorted runs: a run is frozen once memory holds
//! [`StoreOptions::max_pending_postings`] postings, and is written in key order over the next few group commits, so each leaf is
//! touched once per run rather than once per event.
//!
//! *Durability:* postings are derived data. The `events` rows are the truth,
//! committed with each group as ever; `meta.postings_through` names the last
//! sequence number whose postings are all in the table, and on opening the
//! writer rebuilds the postings of every later event from its row (see
//! `Postings::recover`). A crash thus costs a rebuild, never an event.
//!
//! *Reads* take the in-memory entries first and the SQLite snapshot after:
//! entries leave memory only after the transaction that wrote them to the
//! table has committed, so every posting is in one or the other, and a
//! posting seen in both is kept once.
//!
//! [`StoreOptions::max_pending_postings`]: crate::StoreOptions::max_pending_postings

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// A frozen run is written in at most this many group commits (more when the
/// groups are large, see [`Postings::write_chunk`]).
const CHUNKS_PER_RUN: usize = 8;

/// The field of an event a posting indexes. The numbers are stored: part of
/// the schema, never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Field {
    Actor = 1,
    Root = 2,
    Run = 3,
    Target = 4,
}

/// One posting list's name: a field and an interned identifier.
pub(crate) type List = (i64, i64);

/// One event in a posting list: `(observed_at, seq)`.
pub(crate) type Entry = (i64, i64);

/// A posting as the table orders it: `(field, key, observed_at, seq)`.
pub(crate) type Posting = (i64, i64, i64, i64);

type Lists = HashMap<List, Vec<Entry>>;

/// The postings not yet in the table, shared by the writer and the readers.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    lists: RwLock<PendingLists>,
}

#[derive(Debug, Default)]
struct PendingLists {
    /// Postings of events committed since the last freeze.
    active: Lists,
    /// How many postings `active` holds.
    active_len: usize,
    /// The run being written out, whole until its last chunk has committed.
    frozen: Arc<Lists>,
}

impl Pending {
    /// The entries of `list` in memory, in `(observed_at, seq)` order, each
    /// once; `keep` filters them before sorting.
    pub(crate) fn entries(&self, list: List, keep: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let lists = self.read();
        let mut entries: Vec<Entry> = [&lists.active, lists.frozen.as_ref()]
            .into_iter()
            .filter_map(|lists| lists.get(&list))
            .flatten()
            .copied()
            .filter(|entry| keep(entry))
            .collect();
        drop(lists);
        entries.sort_unstable();
        entries.dedup();
        entries
    }

    /// How many postings wait in memory, frozen or not.
    pub(crate) fn len(&self) -> usize {
        let lists = self.read();
        lists.active_len + lists.frozen.values().map(Vec::len).sum::<usize>()
    }

    fn read(&self) -> RwLockReadGuard<'_, PendingLists> {
        // Nothing panics while holding the lock; the maps stay consistent.
        self.lists.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, PendingLists> {
        self.lists.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer's side of the index: what is pending, and the frozen run it is
/// writing out.
#[derive(Debug)]
pub(crate) struct Postings {
    pending: Arc<Pending>,
    /// The frozen run, sorted in table order.
    run: Vec<Posting>,
    /// How much of `run` is committed to the table.
    written: usize,
    /// The highest sequence number in `run`.
    run_through: i64,
    /// The highest sequence number committed.
    last_seq: i64,
    /// How many postings `active` gathers before it is frozen into a run.
    freeze_at: usize,
}

impl Postings {
    /// Brings the table up to date with every committed event, rebuilding
    /// the postings of events a crash left out of it, and starts with nothing
    /// pending. Identifiers are resolved with `intern`.
    pub(crate) fn recover(
        conn: &mut Connection,
        pending: Arc<Pending>,
        freeze_at: usize,
        mut intern: impl FnMut(&Transaction<'_>, &str) -> rusqlite::Result<i64>,
    ) -> rusqlite::Result<Postings> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let through = through(&tx)?;
        let mut rebuilt: Vec<Posting> = Vec::new();
        let mut last_seq = through;
        {
            let mut statement = tx.prepare(
                "SELECT seq, observed_at, actor, chain_root, run_id, body
                 FROM events WHERE seq > ?1 ORDER BY seq",
            )?;
            let mut rows = statement.query([through])?;
            while let Some(row) = rows.next()? {
                let (seq, observed_at): (i64, i64) = (row.get(0)?, row.get(1)?);
                last_seq = seq;
                let columns = [
                    (Field::Actor, row.get::<_, Option<i64>>(2)?),
                    (Field::Root, row.get(3)?),
                    (Field::Run, row.get(4)?),
                ];
                for (field, key) in columns {
                    if let Some(key) = key {
                        rebuilt.push((field as i64, key, observed_at, seq));
                    }
                }
                // Targets live only in the body. A body that no longer parses
                // keeps its event, found by time, kind, actor, root and run.
                let body: String = row.get(5)?;
                if let Ok(event) = serde_json::from_str::<custody_event::RuntimeEvent>(&body) {
                    for target in distinct_targets(&event) {
                        let key = intern(&tx, target)?;
                        rebuilt.push((Field::Target as i64, key, observed_at, seq));
                    }
                }
            }
        }
        if last_seq > through {
            rebuilt.sort_unstable();
            insert(&tx, &rebuilt)?;
            set_through(&tx, last_seq)?;
        }
        tx.commit()?;
        Ok(Postings {
            pending,
            run: Vec::new(),
            written: 0,
            run_through: 0,
            last_seq,
            freeze_at: freeze_at.max(1),
        })
    }

    /// Inside a group's transaction: writes the next chunk of the frozen run,
    /// at least twice the `fresh` postings the group adds so the run always
    /// drains faster than memory fills, and returns where the run now ends.
    /// The position counts only once [`Postings::committed`] is told.
    pub(crate) fn write_chunk(&self, tx: &Transaction<'_>, fresh: usize) -> rusqlite::Result<usize> {
        if self.written >= self.run.len() {
            return Ok(self.written);
        }
        let chunk = (self.run.len().div_ceil(CHUNKS_PER_RUN)).max(2 * fresh);
        let end = self.written.saturating_add(chunk).min(self.run.len());
        insert(tx, self.run.get(self.written..end).unwrap_or_default())?;
        if end == self.run.len() {
            set_through(tx, self.run_through)?;
        }
        Ok(end)
    }

    /// After a group's commit: makes its `fresh` postings visible, records
    /// how far the run was written, and freezes a new run once enough
    /// postings wait.
    pub(crate) fn committed(&mut self, fresh: Vec<Posting>, written: usize, last_seq: i64) {
        self.last_seq = self.last_seq.max(last_seq);
        self.written = written;
        let run_done = self.written >= self.run.len();
        let mut lists = self.pending.write();
        if run_done && !self.run.is_empty() {
            self.run = Vec::new();
            self.written = 0;
            lists.frozen = Arc::default();
        }
        lists.active_len += fresh.len();
        for (field, key, observed_at, seq) in fresh {
            lists
                .active
                .entry((field, key))
                .or_default()
                .push((observed_at, seq));
        }
        if self.run.is_empty() && lists.active_len >= self.freeze_at {
            let active = std::mem::take(&mut lists.active);
            lists.active_len = 0;
            self.run = flatten(&active);
            self.written = 0;
            self.run_through = self.last_seq;
            lists.frozen = Arc::new(active);
        }
    }

    /// Writes everything pending to the table in one transaction, as a
    /// clean shutdown does, so the next start has nothing to rebuild.
    pub(crate) fn flush(&mut self, conn: &mut Connection) -> rusqlite::Result<()> {
        let mut rest: Vec<Posting> = self.run.get(self.written..).unwrap_or_default().to_vec();
        rest.extend(flatten(&self.pending.read().active));
        rest.sort_unstable();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        insert(&tx, &rest)?;
        set_through(&tx, self.last_seq)?;
        tx.commit()?;
        self.run = Vec::new();
        self.written = 0;
        let mut lists = self.pending.write();
        *lists = PendingLists::default();
        Ok(())
    }
}

/// The distinct identifiers an event's target names, in order.
pub(crate) fn distinct_targets(event: &custody_event::RuntimeEvent) -> Vec<&str> {
    let mut targets: Vec<&str> = Vec::new();
    for key in event.target.keys() {
        if !targets.contains(&key) {
            targets.push(key);
        }
    }
    targets
}

/// Every posting of `lists`, in table order.
fn flatten(lists: &Lists) -> Vec<Posting> {
    let mut postings: Vec<Posting> = lists
        .iter()
        .flat_map(|(&(field, key), entries)| {
            entries
                .iter()
                .map(move |&(observed_at, seq)| (field, key, observed_at, seq))
        })
        .collect();
    postings.sort_unstable();
    postings
}

/// Inserts sorted postings; one already there (written before a crash, or
/// by an earlier chunk) is skipped.
fn insert(tx: &Transaction<'_>, postings: &[Posting]) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(
        "INSERT OR IGNORE INTO postings (field, key, observed_at, seq) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for &(field, key, observed_at, seq) in postings {
        statement.execute(params![field, key, observed_at, seq])?;
    }
    Ok(())
}

/// The last sequence number whose postings are all in the table.
fn through(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    Ok(tx
        .query_row(
            "SELECT value FROM meta WHERE name = 'postings_through'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

fn set_through(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (name, value) VALUES ('postings_through', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([seq])?;
    Ok(())
}
