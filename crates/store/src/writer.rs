//! The single writer thread and its bounded queue: group commit.
//!
//! Callers prepare their batch on their own thread and push it onto the
//! queue. The writer takes the first waiting batch, drains whatever else is
//! waiting up to a group size, writes the group in one transaction and
//! completes every batch's receipt only once that transaction has committed.
//! Many small batches arriving together thus share one fsync, and a receipt
//! never says durable before the data is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use custody_engine::{Evaluated, Receipt, RecordError, Reservation};
use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use crate::StoreError;
use crate::findings::StoredFinding;
use crate::postings::Postings;
use crate::query::StoredEvent;
use crate::raw::{PreparedEvent, insert_group};

/// What the live tail carries: the new events of one commit, in commit order.
pub type Committed = Arc<Vec<StoredEvent>>;

/// What the live tail of findings carries: the findings one commit opened.
pub type Opened = Arc<Vec<StoredFinding>>;

/// The live tails the writer publishes to after each commit.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) events: broadcast::Sender<Committed>,
    pub(crate) findings: broadcast::Sender<Opened>,
}

/// Counters of the writer, cheap to read at any time (e.g. for Prometheus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events accepted and not yet committed (or failed).
    pub queued_events: u64,
    /// New events committed since the store was opened; resubmitted ids are
    /// not counted.
    pub committed_events: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed and were rolled back.
    pub failed_commits: u64,
    /// Events in the last group written, committed or not.
    pub last_group_size: u64,
    /// Postings of committed events held in memory, not yet written to the
    /// postings table (rebuilt from the events after a crash).
    pub pending_postings: u64,
}

/// The queue and the writer thread that drains it, and the checkpointer
/// thread beside it.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    capacity: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

/// How long the checkpointer waits after a checkpoint before the next, so
/// that a busy writer's commits are copied a few megabytes at a time.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// What the callers and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    queued: AtomicU64,
    committed_events: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
    last_group_size: AtomicU64,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    closed: bool,
    /// Tests hold the writer back to fill the queue deterministically.
    #[cfg(test)]
    paused: bool,
}

struct Batch {
    events: Vec<PreparedEvent>,
    done: oneshot::Sender<Result<(), RecordError>>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    ///
    /// The checkpointer, on `checkpoints`, copies committed log pages into the
    /// database whenever the writer has committed, without blocking it
    /// (a passive checkpoint), so that work is off the writer's path.
    pub(crate) fn spawn(
        conn: Connection,
        checkpoints: Connection,
        postings: Postings,
        capacity: usize,
        max_group: usize,
        live: Live,
    ) -> Result<Writer, StoreError> {
        let (committed, commits) = std::sync::mpsc::sync_channel::<()>(1);
        let checkpointer = std::thread::Builder::new()
            .name("custody-store-checkpoint".into())
            .spawn(move || checkpoint(&checkpoints, &commits))
            .map_err(StoreError::Spawn)?;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            ready: Condvar::new(),
            queued: AtomicU64::new(0),
            committed_events: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            last_group_size: AtomicU64::new(0),
        });
        let thread = std::thread::Builder::new()
            .name("custody-store-writer".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, conn, postings, max_group.max(1), &live, &committed)
            })
            .map_err(StoreError::Spawn)?;
        Ok(Writer {
            shared,
            capacity,
            thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }

    /// Holds room for `events` in the queue, or refuses at once when they
    /// would overfill it. The room counts as queued until the reservation
    /// is dropped or filled by [`Writer::submit_reserved`].
    pub(crate) fn reserve(&self, events: usize) -> Result<Reservation, RecordError> {
        let size = events as u64;
        let queue = self.shared.lock();
        if queue.closed {
            return Err(RecordError::Closed);
        }
        // Under the lock, as in `submit`: no two callers take the last room.
        self.check_room(size)?;
        self.shared.queued.fetch_add(size, Ordering::SeqCst);
        drop(queue);
        let shared = Arc::clone(&self.shared);
        Ok(Reservation::new(size, move |size| {
            shared.queued.fetch_sub(size, Ordering::SeqCst);
        }))
    }

    /// Queues a batch into room `reservation` holds; a batch larger than
    /// the room takes the difference without a check, as it was counted
    /// when the room was taken.
    pub(crate) fn submit_reserved(
        &self,
        batch: Vec<Evaluated>,
        reservation: Reservation,
    ) -> Result<Receipt, RecordError> {
        let (done, receipt) = Receipt::channel();
        let events = prepare(batch)?;
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(RecordError::Closed);
        }
        if events.is_empty() {
            drop(queue);
            drop(reservation);
            let _ = done.send(Ok(()));
            return Ok(receipt);
        }
        let held = reservation.keep();
        let size = events.len() as u64;
        if size >= held {
            self.shared.queued.fetch_add(size - held, Ordering::SeqCst);
        } else {
            self.shared.queued.fetch_sub(held - size, Ordering::SeqCst);
        }
        queue.batches.push_back(Batch { events, done });
        drop(queue);
        self.shared.ready.notify_one();
        Ok(receipt)
    }

    /// Prepares a batch on the caller's thread and queues it, or refuses it
    /// at once when it would overfill the queue.
    pub(crate) fn submit(&self, batch: Vec<Evaluated>) -> Result<Receipt, RecordError> {
        let (done, receipt) = Receipt::channel();
        if batch.is_empty() {
            if self.shared.lock().closed {
                return Err(RecordError::Closed);
            }
            // Nothing to make durable; the send fails only if the receipt is
            // gone, and it is in hand.
            let _ = done.send(Ok(()));
            return Ok(receipt);
        }
        let size = batch.len() as u64;
        // Refuse early, before the work of serializing, when the queue is
        // visibly full; the check under the lock below is the one that counts.
        self.check_room(size)?;
        let events = prepare(batch)?;
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(RecordError::Closed);
        }
        // Callers add to the count only under the lock, so no two can both
        // take the last room; the writer only subtracts.
        self.check_room(size)?;
        self.shared.queued.fetch_add(size, Ordering::SeqCst);
        queue.batches.push_back(Batch { events, done });
        drop(queue);
        self.shared.ready.notify_one();
        Ok(receipt)
    }

    /// Stops accepting batches, lets the thread write what is queued, and
    /// waits for it. Idempotent; only the first call reports a panicked
    /// writer.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        {
            let mut queue = self.shared.lock();
            queue.closed = true;
            #[cfg(test)]
            {
                queue.paused = false;
            }
        }
        self.shared.ready.notify_all();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let joined = thread.map(JoinHandle::join);
        // The writer's end ends the checkpointer's channel, and so it.
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(checkpointer) = checkpointer {
            let _ = checkpointer.join();
        }
        match joined {
            // A panicked writer has already failed its receipts (see `Exit`).
            Some(Err(_)) => Err(StoreError::WriterPanicked),
            _ => Ok(()),
        }
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let shared = &self.shared;
        StoreStats {
            queued_events: shared.queued.load(Ordering::Relaxed),
            committed_events: shared.committed_events.load(Ordering::Relaxed),
            commits: shared.commits.load(Ordering::Relaxed),
            failed_commits: shared.failed_commits.load(Ordering::Relaxed),
            last_group_size: shared.last_group_size.load(Ordering::Relaxed),
            pending_postings: 0,
        }
    }

    /// Holds the writer back (or lets it go) so a test can fill the queue.
    #[cfg(test)]
    pub(crate) fn pause(&self, paused: bool) {
        self.shared.lock().paused = paused;
        self.shared.ready.notify_all();
    }

    /// Refuses a batch that would take the queue past its capacity. An empty
    /// queue takes any batch, so one larger than the capacity is not refused
    /// forever.
    fn check_room(&self, size: u64) -> Result<(), RecordError> {
        let queued = self.shared.queued.load(Ordering::SeqCst);
        let capacity = self.capacity as u64;
        if queued > 0 && queued + size > capacity {
            return Err(RecordError::QueueFull {
                queued: usize::try_from(queued).unwrap_or(usize::MAX),
                capacity: self.capacity,
            });
        }
        Ok(())
    }
}

/// Serializes a batch on the caller's thread.
fn prepare(batch: Vec<Evaluated>) -> Result<Vec<PreparedEvent>, RecordError> {
    batch
        .into_iter()
        .map(PreparedEvent::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| RecordError::Failed(error.to_string()))
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Nobody is left to tell; the receipts already say what happened.
        let _ = self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // No code panics while holding the lock; should one, the queue itself
        // is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the first batch, then takes the batches behind it while the
    /// group stays within `max_group` events. A batch is never split: it is
    /// durable whole or not at all. `None` once closed and drained.
    fn next_group(&self, max_group: usize) -> Option<Vec<Batch>> {
        let mut queue = self.lock();
        loop {
            #[cfg(test)]
            let paused = queue.paused;
            #[cfg(not(test))]
            let paused = false;
            if !paused && !queue.batches.is_empty() {
                break;
            }
            if queue.closed && queue.batches.is_empty() {
                return None;
            }
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let mut group: Vec<Batch> = queue.batches.pop_front().into_iter().collect();
        let mut size = group.iter().map(|batch| batch.events.len()).sum::<usize>();
        while let Some(batch) = queue.batches.front() {
            if size + batch.events.len() > max_group {
                break;
            }
            size += batch.events.len();
            group.extend(queue.batches.pop_front());
        }
        Some(group)
    }
}

/// The writer thread's loop.
fn run(
    shared: &Shared,
    mut conn: Connection,
    mut postings: Postings,
    max_group: usize,
    live: &Live,
    committed: &std::sync::mpsc::SyncSender<()>,
) {
    let _exit = Exit(shared);
    while let Some(group) = shared.next_group(max_group) {
        write(shared, &mut conn, &mut postings, group, live);
        // Full means a signal is already waiting; it covers this commit too.
        let _ = committed.try_send(());
    }
    // Closed and drained: write the postings still in memory so the next
    // start has nothing to rebuild. Should this fail, that start rebuilds
    // them from the events, which are all committed.
    let _ = postings.flush(&mut conn);
}

/// Writes one group in one transaction, then settles its receipts and
/// publishes what is new.
fn write(
    shared: &Shared,
    conn: &mut Connection,
    postings: &mut Postings,
    group: Vec<Batch>,
    live: &Live,
) {
    let size = group.iter().map(|batch| batch.events.len()).sum::<usize>() as u64;
    let mut opened = Vec::new();
    let result = insert_group(
        conn,
        postings,
        group.iter().flat_map(|batch| &batch.events),
        &mut opened,
    );
    shared.last_group_size.store(size, Ordering::Relaxed);
    shared.queued.fetch_sub(size, Ordering::SeqCst);
    let seqs = match result {
        Ok(seqs) => seqs,
        Err(error) => {
            shared.failed_commits.fetch_add(1, Ordering::Relaxed);
            let error = RecordError::Failed(error.to_string());
            for batch in group {
                // A receiver that is gone belongs to a client that gave up.
                let _ = batch.done.send(Err(error.clone()));
            }
            return;
        }
    };
    let new = seqs.iter().flatten().count() as u64;
    shared.commits.fetch_add(1, Ordering::Relaxed);
    shared.committed_events.fetch_add(new, Ordering::Relaxed);
    // Findings go out before the receipts settle, so a client that saw its
    // batch durable finds the batch's findings already in the tail.
    if !opened.is_empty() && live.findings.receiver_count() > 0 {
        // Bodies were serialized from findings a moment ago; one that does
        // not parse back would be a bug, and is left out of the tail only.
        let findings = opened
            .iter()
            .filter_map(|(seq, body)| crate::findings::opened(*seq, body).ok())
            .collect();
        let _ = live.findings.send(Arc::new(findings));
    }
    let publish = live.events.receiver_count() > 0;
    let mut committed = Vec::new();
    let mut seqs = seqs.into_iter();
    for Batch { events, done } in group {
        let _ = done.send(Ok(()));
        if publish {
            // `zip` polls `events` first, so it takes exactly this batch's
            // share of `seqs`.
            committed.extend(
                events
                    .into_iter()
                    .zip(&mut seqs)
                    .filter_map(|(event, seq)| {
                        Some(StoredEvent {
                            seq: seq?,
                            body: event.body,
                            decision: event.decision,
                        })
                    }),
            );
        }
    }
    if !committed.is_empty() {
        // Sending fails only when every subscriber has just gone.
        let _ = live.events.send(Arc::new(committed));
    }
}

/// Runs when the writer thread ends, even by a panic: from then on nothing
/// would drain the queue, so it refuses new batches and drops the waiting
/// ones, which resolves their receipts as closed rather than never.
struct Exit<'a>(&'a Shared);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.closed = true;
        let dropped: usize = queue
            .batches
            .drain(..)
            .map(|batch| batch.events.len())
            .sum();
        self.0.queued.fetch_sub(dropped as u64, Ordering::SeqCst);
    }
}

/// The checkpointer thread's loop: after each signal of new commits, a
/// passive checkpoint, then a pause to let more commits gather. It ends when
/// the writer thread does. A failed checkpoint is left for the next one, or
/// for the writer's own backstop (`wal_autocheckpoint`).
fn checkpoint(conn: &Connection, commits: &std::sync::mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        std::thread::sleep(CHECKPOINT_INTERVAL);
    }
}
