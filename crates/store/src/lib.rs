//! Custody's embedded store: one SQLite database holding events, their
//! decisions and the API's tokens.
//!
//! Durability is the invariant everything here serves: an event whose
//! [`Receipt`](custody_engine::Receipt) says durable has been committed (and,
//! with [`Durability::Full`], synced), and a crash at any moment leaves
//! nothing half-written visible, because every batch is written inside one
//! SQLite transaction.
//!
//! - Writes: [`Store`] implements [`custody_engine::Record`]. Callers
//!   serialize their batch on their own thread and queue it; one writer
//!   thread commits whatever is queued as a group (see `writer.rs`) and only
//!   then completes the receipts, then publishes the new events on
//!   [`Store::subscribe`].
//! - Reads: [`Store::query`], [`Store::get`] and the token methods use a small
//!   pool of read-only connections, which WAL lets run beside the writer.
//! - [`raw`]: the same insert code, callable directly, as the benchmark
//!   baseline.
//!
//! *Invariant:* only the writer thread writes events; tokens are written
//! through short-lived connections of their own.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod actions;
mod error;
mod findings;
mod postings;
mod query;
pub mod raw;
mod schema;
mod store;
mod tokens;
mod writer;

#[cfg(test)]
mod tests;

pub use actions::{ActionCount, ActionQuery, MAX_ACTIONS, StoredAction};
pub use error::StoreError;
pub use findings::{FindingPage, FindingQuery, MAX_FINDINGS, MAX_LINKED_EVENTS, StoredFinding};
pub use query::{Cursor, EventPage, EventQuery, MAX_LIMIT, Order, StoredEvent};
pub use store::{DATABASE_FILE, Durability, Store, StoreOptions};
pub use tokens::{NewToken, TokenRecord};
pub use writer::{Committed, Opened, StoreStats};
