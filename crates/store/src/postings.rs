//! The postings index: for each identifier an event names (its actor, chain
//! root, run and targets), the events that name it, in `(observed_at, seq)`
//! order.
//!
//! Identifiers are many (every resource, every run), so an ordinary index
//! takes each event's entries on random b-tree leaves: once it outgrows what
//! one group commit touches, every event dirties whole pages of its own,
//! each written to the log and again at checkpoint, and every entry costs a
//! b-tree insert. Instead the writer gathers postings in memory
//! ([`Pending`], which readers consult beside the table). Once
//! [`StoreOptions::max_pending_postings`] are gathered they are frozen into
//! a *run*, written over the next few group commits as one *segment* row per
//! posting list: the list's entries of that run, sorted, packed in a blob. A
//! run of a hundred thousand events is then some tens of thousands of rows,
//! not half a million b-tree inserts.
//!
//! *Durability:* postings are derived data. The `events` rows are the truth,
//! committed with each group as ever; `meta.postings_through` names the last
//! sequence number whose postings are all in the table, and on opening the
//! writer deletes segments of a run cut short and rebuilds the postings of
//! every later event from its row (`Postings::recover`). A crash thus costs
//! a rebuild, never an event.
//!
//! *Reads* take the in-memory entries first and the SQLite snapshot after:
//! entries leave memory only after the transaction that wrote them to the
//! table has committed, so every posting is in one or the other, and a
//! posting seen in both is kept once. [`Stream`] merges a list's segments
//! and memory lazily, in either order, loading a segment only when the page
//! reaches its time range.
//!
//! [`StoreOptions::max_pending_postings`]: crate::StoreOptions::max_pending_postings

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use custody_event::{Actor, Target};

use crate::query::Order;
use crate::schema::identifier_hash;

/// A frozen run is written in at most this many group commits (more when the
/// groups are large, see [`Postings::write_chunk`]).
const CHUNKS_PER_RUN: usize = 8;

/// Bytes of one entry in a segment: `observed_at` then `seq`, each an `i64`,
/// little-endian.
const ENTRY_BYTES: usize = 16;

/// The field of an event a posting indexes. The numbers are stored: part of
/// the schema, never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Field {
    Actor = 1,
    Root = 2,
    Run = 3,
    Target = 4,
}

/// One posting list's name: a field and an identifier's hash.
pub(crate) type List = (i64, i64);

/// One event in a posting list: `(observed_at, seq)`.
pub(crate) type Entry = (i64, i64);

/// A posting: `(field, key, observed_at, seq)`, the key an identifier's
/// hash.
pub(crate) type Posting = (i64, i64, i64, i64);

type Lists = HashMap<List, Vec<Entry>, foldhash::fast::RandomState>;

/// The postings not yet in the table, shared by the writer and the readers.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    lists: RwLock<PendingLists>,
}

#[derive(Debug, Default)]
struct PendingLists {
    /// Postings of events committed since the last freeze, in commit order.
    active: Lists,
    /// How many postings `active` holds.
    active_len: usize,
    /// The run being written out, whole until its last chunk has committed.
    frozen: Arc<Lists>,
}

impl Pending {
    /// The entries of `list` in memory that `keep` admits, in no order.
    pub(crate) fn entries(&self, list: List, keep: impl Fn(Entry) -> bool) -> Vec<Entry> {
        let lists = self.read();
        [&lists.active, lists.frozen.as_ref()]
            .into_iter()
            .filter_map(|lists| lists.get(&list))
            .flatten()
            .copied()
            .filter(|entry| keep(*entry))
            .collect()
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
    /// The frozen run's lists, in table order, with their entries.
    run: Arc<Lists>,
    order: Vec<List>,
    /// How many of `order` are committed to the table.
    written: usize,
    /// The highest sequence number in the run: the segments' `run` column.
    run_through: i64,
    /// The highest sequence number committed.
    last_seq: i64,
    /// How many postings `active` gathers before it is frozen into a run.
    freeze_at: usize,
}

impl Postings {
    /// Brings the table up to date with every committed event: deletes the
    /// segments of a run a crash cut short and rebuilds the postings of every
    /// event after `meta.postings_through` from its row, in runs of
    /// `freeze_at`.
    pub(crate) fn recover(
        conn: &mut Connection,
        pending: Arc<Pending>,
        freeze_at: usize,
    ) -> rusqlite::Result<Postings> {
        let freeze_at = freeze_at.max(1);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let through = through(&tx)?;
        tx.execute("DELETE FROM postings WHERE run > ?1", [through])?;
        let mut lists = Lists::default();
        let mut gathered = 0;
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
                let mut add = |field: Field, key: i64| {
                    lists
                        .entry((field as i64, key))
                        .or_default()
                        .push((observed_at, seq));
                    gathered += 1;
                };
                add(Field::Actor, row.get(2)?);
                if let Some(root) = row.get(3)? {
                    add(Field::Root, root);
                }
                if let Some(run) = row.get(4)? {
                    add(Field::Run, run);
                }
                // Targets live only in the body. A body that no longer parses
                // keeps its event, found by time, kind, actor, root and run.
                let body: String = row.get(5)?;
                if let Ok(event) = serde_json::from_str::<Named>(&body) {
                    for target in Identifiers::of(&event.actor, &event.target).targets {
                        add(Field::Target, target);
                    }
                }
                if gathered >= freeze_at {
                    write_segments(&tx, &lists, &sorted_lists(&lists), seq)?;
                    set_through(&tx, seq)?;
                    lists.clear();
                    gathered = 0;
                }
            }
        }
        if !lists.is_empty() {
            write_segments(&tx, &lists, &sorted_lists(&lists), last_seq)?;
        }
        set_through(&tx, last_seq)?;
        tx.commit()?;
        Ok(Postings {
            pending,
            run: Arc::default(),
            order: Vec::new(),
            written: 0,
            run_through: 0,
            last_seq,
            freeze_at,
        })
    }

    /// Inside a group's transaction: writes the next lists of the frozen run,
    /// at least twice the `fresh` postings the group adds so the run always
    /// drains faster than memory fills, and returns how many lists of the run
    /// are then written. The position counts only once
    /// [`Postings::committed`] is told.
    pub(crate) fn write_chunk(
        &self,
        tx: &Transaction<'_>,
        fresh: usize,
    ) -> rusqlite::Result<usize> {
        if self.written >= self.order.len() {
            return Ok(self.written);
        }
        let total: usize = self.run.values().map(Vec::len).sum();
        let want = total.div_ceil(CHUNKS_PER_RUN).max(2 * fresh);
        let mut end = self.written;
        let mut entries = 0;
        while entries < want {
            let Some(list) = self.order.get(end) else {
                break;
            };
            entries += self.run.get(list).map_or(0, Vec::len);
            end += 1;
        }
        let chunk = self.order.get(self.written..end).unwrap_or_default();
        write_segments(tx, &self.run, chunk, self.run_through)?;
        if end == self.order.len() {
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
        let mut lists = self.pending.write();
        if !self.order.is_empty() && self.written >= self.order.len() {
            self.order = Vec::new();
            self.run = Arc::default();
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
        if self.order.is_empty() && lists.active_len >= self.freeze_at {
            let run = Arc::new(std::mem::take(&mut lists.active));
            lists.active_len = 0;
            lists.frozen = run.clone();
            self.order = sorted_lists(&run);
            self.run = run;
            self.written = 0;
            self.run_through = self.last_seq;
        }
    }

    /// Writes everything pending to the table in one transaction, as a
    /// clean shutdown does, so the next start has nothing to rebuild.
    pub(crate) fn flush(&mut self, conn: &mut Connection) -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rest = self.order.get(self.written..).unwrap_or_default();
        write_segments(&tx, &self.run, rest, self.run_through)?;
        let active = std::mem::take(&mut self.pending.write().active);
        write_segments(&tx, &active, &sorted_lists(&active), self.last_seq)?;
        set_through(&tx, self.last_seq)?;
        tx.commit()?;
        self.order = Vec::new();
        self.run = Arc::default();
        self.written = 0;
        *self.pending.write() = PendingLists::default();
        Ok(())
    }
}

/// The identifiers an event names, hashed as the events' columns and the
/// postings index hold them (see `schema::identifier_hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identifiers {
    pub(crate) actor: i64,
    pub(crate) root: Option<i64>,
    pub(crate) run: Option<i64>,
    /// Each distinct identifier the target names, once.
    pub(crate) targets: Vec<i64>,
}

impl Identifiers {
    pub(crate) fn of(actor: &Actor, target: &Target) -> Identifiers {
        let mut targets: Vec<i64> = Vec::new();
        for key in target.keys().map(identifier_hash) {
            if !targets.contains(&key) {
                targets.push(key);
            }
        }
        Identifiers {
            actor: identifier_hash(&actor.current.id),
            root: actor.root.as_ref().map(|root| identifier_hash(&root.id)),
            run: actor.current.run_id.as_deref().map(identifier_hash),
            targets,
        }
    }
}

/// The part of a stored event that names identifiers: what rebuilding and
/// checking postings read of a body.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Named {
    pub(crate) actor: Actor,
    #[serde(default)]
    pub(crate) target: Target,
}

/// The lists of `lists`, in table order.
fn sorted_lists(lists: &Lists) -> Vec<List> {
    let mut order: Vec<List> = lists.keys().copied().collect();
    order.sort_unstable();
    order
}

/// Writes one segment per list of `chunk`, tagged with `run`.
fn write_segments(
    tx: &Transaction<'_>,
    lists: &Lists,
    chunk: &[List],
    run: i64,
) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO postings (field, key, run, first_at, last_at, entries)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut blob: Vec<u8> = Vec::new();
    for &(field, key) in chunk {
        entries.clear();
        entries.extend(lists.get(&(field, key)).into_iter().flatten());
        entries.sort_unstable();
        entries.dedup();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            continue;
        };
        blob.clear();
        for (observed_at, seq) in &entries {
            blob.extend_from_slice(&observed_at.to_le_bytes());
            blob.extend_from_slice(&seq.to_le_bytes());
        }
        statement.execute(params![field, key, run, first.0, last.0, blob])?;
    }
    Ok(())
}

/// The entries a segment's blob holds; a torn trailing entry is dropped.
fn decode(blob: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    blob.chunks_exact(ENTRY_BYTES).map(|entry| {
        let (observed_at, seq) = entry.split_at(ENTRY_BYTES / 2);
        let number = |bytes: &[u8]| i64::from_le_bytes(bytes.try_into().unwrap_or_default());
        (number(observed_at), number(seq))
    })
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

/// The SQL listing a posting list's segments.
pub(crate) const SEGMENTS_SQL: &str =
    "SELECT rowid, first_at, last_at FROM postings WHERE field = ?1 AND key = ?2";

/// A posting list's entries in a page's order, from its segments in the
/// table and its entries in memory, each once.
///
/// Entries are compared by a *stream key*, ascending: `(observed_at, seq)`
/// oldest first, or both bitwise negated newest first. A segment is loaded
/// only once the smallest entry loaded so far is not before the segment's
/// earliest possible stream key, so a page of recent events reads only the
/// recent segments.
pub(crate) struct Stream<'c, F> {
    conn: &'c Connection,
    order: Order,
    admits: F,
    /// Segments not yet loaded, by their earliest possible stream key,
    /// last first (so the next is popped off the end).
    segments: Vec<(i64, i64)>,
    loaded: BinaryHeap<Reverse<Entry>>,
    last: Option<Entry>,
}

impl<F> std::fmt::Debug for Stream<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("order", &self.order)
            .field("segments", &self.segments.len())
            .field("loaded", &self.loaded.len())
            .finish_non_exhaustive()
    }
}

impl<'c, F: Fn(Entry) -> bool> Stream<'c, F> {
    /// Starts a stream over `list`: `memory` are its entries in memory, read
    /// before the snapshot `conn` is in; `overlaps(first_at, last_at)` says
    /// whether a segment can hold an admitted entry.
    pub(crate) fn new(
        conn: &'c Connection,
        list: List,
        memory: Vec<Entry>,
        order: Order,
        admits: F,
        overlaps: impl Fn(i64, i64) -> bool,
    ) -> rusqlite::Result<Stream<'c, F>> {
        let mut segments: Vec<(i64, i64)> = conn
            .prepare_cached(SEGMENTS_SQL)?
            .query_map([list.0, list.1], |row| {
                Ok((row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?))
            })?
            .filter_map(|segment| match segment {
                Ok((rowid, first_at, last_at)) => overlaps(first_at, last_at).then(|| {
                    let head = match order {
                        Order::Oldest => first_at,
                        Order::Newest => !last_at,
                    };
                    Ok((head, rowid))
                }),
                Err(error) => Some(Err(error)),
            })
            .collect::<rusqlite::Result<_>>()?;
        segments.sort_unstable_by(|a, b| b.cmp(a));
        let mut stream = Stream {
            conn,
            order,
            admits,
            segments,
            loaded: BinaryHeap::new(),
            last: None,
        };
        for entry in memory {
            let key = stream.key(entry);
            stream.loaded.push(Reverse(key));
        }
        Ok(stream)
    }

    /// The next entry in the page's order.
    pub(crate) fn next_entry(&mut self) -> rusqlite::Result<Option<Entry>> {
        loop {
            if let Some(&(head, rowid)) = self.segments.last() {
                let reached = self
                    .loaded
                    .peek()
                    .is_none_or(|Reverse(smallest)| head <= smallest.0);
                if reached {
                    self.segments.pop();
                    self.load(rowid)?;
                    continue;
                }
            }
            let Some(Reverse(key)) = self.loaded.pop() else {
                return Ok(None);
            };
            if self.last == Some(key) {
                continue;
            }
            self.last = Some(key);
            return Ok(Some(self.key(key)));
        }
    }

    fn load(&mut self, rowid: i64) -> rusqlite::Result<()> {
        let blob: Vec<u8> = self
            .conn
            .prepare_cached("SELECT entries FROM postings WHERE rowid = ?1")?
            .query_row([rowid], |row| row.get(0))?;
        for entry in decode(&blob) {
            if (self.admits)(entry) {
                let key = self.key(entry);
                self.loaded.push(Reverse(key));
            }
        }
        Ok(())
    }

    /// An entry's stream key, and back: the mapping is its own inverse.
    fn key(&self, (observed_at, seq): Entry) -> Entry {
        match self.order {
            Order::Oldest => (observed_at, seq),
            Order::Newest => (!observed_at, !seq),
        }
    }
}
