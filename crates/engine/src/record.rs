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
