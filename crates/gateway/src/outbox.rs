//! The record layer's way out: finished calls queue here and a task hands
//! them to a [`Recorder`] (for `custody wrap`, the server's collector),
//! retrying while it is unreachable.
//!
//! The outbox is also what makes the gateway fail closed on recording: it
//! is the engine's [`Record`] stage, whose `reserve` refuses while the
//! last delivery failed or the queue is full, so the engine hands back a
//! refused receipt and the call is denied before it is forwarded.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use custody_engine::{Evaluated, Receipt, Record, RecordError, Reservation};
use custody_event::NewEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The most events handed to the recorder at once.
const BATCH: usize = 256;
/// The longest wait between two attempts to deliver.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a small batch waits for more events before it is delivered:
/// calls are recorded after they are answered, so this delays no call, and
/// it turns a commit per call into a commit per few milliseconds of calls.
const LINGER: Duration = Duration::from_millis(2);

/// A recorder's answer in progress.
pub type Recording<'a> = Pin<Box<dyn Future<Output = Result<(), RecordFailure>> + Send + 'a>>;

/// Where finished calls are recorded.
pub trait Recorder: Send + Sync + 'static {
    /// Records `events`, durably, or says why not.
    fn record<'a>(&'a self, events: &'a [NewEvent]) -> Recording<'a>;
}

/// Why events were not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordFailure {
    /// The recorder will not take them from this session again: its
    /// credential was refused (an agent token revoked or expired). They
    /// are not retried.
    #[error("the recorder refused this session's credential: {0}")]
    Refused(String),
    /// The recorder could not be reached or failed; they are retried.
    #[error("the recorder is unavailable: {0}")]
    Unavailable(String),
}

/// The queue of events on their way to the recorder.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: mpsc::Sender<NewEvent>,
    failure: Arc<Mutex<Option<RecordFailure>>>,
}

impl Outbox {
    /// An outbox holding at most `capacity` events, delivering to
    /// `recorder` from a task of its own.
    pub fn start(recorder: Arc<dyn Recorder>, capacity: usize) -> (Outbox, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(deliver(recorder, receiver, failure.clone()));
        (Outbox { queue, failure }, task)
    }

    /// Queues a finished call's event. When the queue is full the event
    /// is lost, and said so on the log: `reserve` has been refusing new
    /// calls since it filled, so only calls already in flight can meet it.
    pub fn submit(&self, event: NewEvent) {
        if let Err(error) = self.queue.try_send(event) {
            let id = match &error {
                mpsc::error::TrySendError::Full(event)
                | mpsc::error::TrySendError::Closed(event) => event.id,
            };
            tracing::error!(event = ?id, "the outbox is full or closed: an event is lost");
        }
    }

    /// Why the last delivery failed, if it did.
    pub fn failure(&self) -> Option<RecordFailure> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Record for Outbox {
    /// The inline engine decides on a call before it has an outcome; its
    /// event is queued once the outcome is known (see `submit`). So this
    /// keeps nothing: the room `reserve` checked is what mattered.
    fn record(&self, _batch: Vec<Evaluated>) -> Result<Receipt, RecordError> {
        let (done, receipt) = Receipt::channel();
        let _ = done.send(Ok(()));
        Ok(receipt)
    }

    fn reserve(&self, events: usize) -> Result<Reservation, RecordError> {
        if let Some(failure) = self.failure() {
            return Err(RecordError::Failed(failure.to_string()));
        }
        if self.queue.capacity() < events {
            return Err(RecordError::QueueFull {
                queued: self.queue.max_capacity() - self.queue.capacity(),
                capacity: self.queue.max_capacity(),
            });
        }
        Ok(Reservation::nothing())
    }
}

async fn deliver(
    recorder: Arc<dyn Recorder>,
    mut receiver: mpsc::Receiver<NewEvent>,
    failure: Arc<Mutex<Option<RecordFailure>>>,
) {
    let set = |now: Option<RecordFailure>| {
        *failure.lock().unwrap_or_else(PoisonError::into_inner) = now;
    };
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, receiver.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match recorder.record(&batch).await {
                Ok(()) => {
                    set(None);
                    break;
                }
                Err(RecordFailure::Refused(why)) => {
                    tracing::error!(events = batch.len(), %why, "events refused by the recorder are lost");
                    set(Some(RecordFailure::Refused(why)));
                    break;
                }
                Err(unavailable) => {
                    tracing::warn!(error = %unavailable, "recording failed; retrying");
                    set(Some(unavailable));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        batch.clear();
    }
}
