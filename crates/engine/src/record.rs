//! The record stage: handing processed events to durable storage.

use std::fmt;

use tokio::sync::oneshot;

use crate::pipeline::Evaluated;

/// Durable storage of processed events. The store implements it.
///
/// `record` must not block on IO: it queues the batch and returns a
/// [`Receipt`] that resolves once the whole batch is durable, or refuses at
/// once when the queue is full so the source can apply backpressure.
pub trait Record: Send + Sync {
    /// Queues a batch; every event in it becomes durable together or not at
    /// all.
    fn record(&self, batch: Vec<Evaluated>) -> Result<Receipt, RecordError>;

    /// Holds room for a batch of `events` before its events go through the
    /// stages, so a batch that attribution has learned from and the graph
    /// has counted is never then refused for want of room (and counted
    /// again when its source retries). A recorder without a bounded queue
    /// holds nothing, as this default does.
    fn reserve(&self, events: usize) -> Result<Reservation, RecordError> {
        let _ = events;
        Ok(Reservation::nothing())
    }

    /// [`Record::record`] into room held by `reservation`.
    fn record_reserved(
        &self,
        batch: Vec<Evaluated>,
        reservation: Reservation,
    ) -> Result<Receipt, RecordError> {
        drop(reservation);
        self.record(batch)
    }
}

/// Room held in a recorder's queue by [`Record::reserve`]: given back when
/// dropped, unless the recorder [`Reservation::keep`]s it for the batch it
/// records.
pub struct Reservation {
    events: u64,
    release: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl Reservation {
    /// Room for `events`, handed back through `release` unless kept.
    pub fn new(events: u64, release: impl FnOnce(u64) + Send + Sync + 'static) -> Reservation {
        Reservation {
            events,
            release: Some(Box::new(release)),
        }
    }

    /// Holds no room.
    pub fn nothing() -> Reservation {
        Reservation {
            events: 0,
            release: None,
        }
    }

    /// Takes the room for good (the batch now fills it) and says how much
    /// it was.
    pub fn keep(mut self) -> u64 {
        self.release = None;
        self.events
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(self.events);
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Why a batch was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The write queue holds as many events as it may; try again later.
    #[error("the write queue is full ({queued} events queued, capacity {capacity})")]
    QueueFull {
        /// Events waiting when the batch was refused.
        queued: usize,
        /// The queue's capacity in events.
        capacity: usize,
    },
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// Writing failed; nothing of the batch is stored.
    #[error("writing to the store failed: {0}")]
    Failed(String),
}

/// Resolves once a recorded batch is durable.
pub struct Receipt(oneshot::Receiver<Result<(), RecordError>>);

impl Receipt {
    /// A receipt and the sender the store completes it with.
    pub fn channel() -> (oneshot::Sender<Result<(), RecordError>>, Receipt) {
        let (sender, receiver) = oneshot::channel();
        (sender, Receipt(receiver))
    }

    /// Waits until the batch is durable.
    pub async fn durable(self) -> Result<(), RecordError> {
        self.0.await.unwrap_or(Err(RecordError::Closed))
    }

    /// Waits, blocking the thread, until the batch is durable. Not for use
    /// inside an async runtime.
    pub fn blocking_durable(self) -> Result<(), RecordError> {
        self.0.blocking_recv().unwrap_or(Err(RecordError::Closed))
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receipt")
    }
}
