//! The store's one error type.

use std::io;
use std::path::PathBuf;

use custody_event::EventId;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's directory could not be created.
    #[error("creating store directory `{path}`: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The database could not be opened or configured.
    #[error("opening database `{path}`: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The database refused write-ahead logging, on which durability and
    /// concurrent reads rest.
    #[error("database `{path}` uses journal mode `{mode}`, the store needs `wal`")]
    JournalMode {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// A migration step failed; the database keeps its previous version.
    #[error("migrating database `{path}` to schema version {version}: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version the failed step leads to.
        version: i64,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer build.
    #[error("database `{path}` has schema version {found}, this build knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version in the database.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// The writer thread could not be started.
    #[error("starting the store's writer thread: {0}")]
    Spawn(#[source] io::Error),
    /// The writer thread died; what it had not committed was failed or
    /// refused, never acknowledged.
    #[error("the store's writer thread panicked")]
    WriterPanicked,
    /// A read or a token write failed.
    #[error("{context}: {source}")]
    Sqlite {
        /// What the store was doing, e.g. "querying events".
        context: String,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// A stored or submitted record does not serialize or parse.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which record.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event or decision could not be serialized for storage.
    #[error("serializing event {id}: {source}")]
    Serialize {
        /// The event's id.
        id: EventId,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A stored event or decision no longer parses.
    #[error("parsing stored event {seq}: {source}")]
    Parse {
        /// The event's sequence number.
        seq: i64,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A stored finding no longer parses.
    #[error("parsing stored finding {seq}: {source}")]
    CorruptFinding {
        /// The finding's sequence number.
        seq: i64,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A pagination cursor is not one the store issued.
    #[error("invalid cursor `{cursor}`: {reason}")]
    Cursor {
        /// The cursor as given.
        cursor: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl StoreError {
    /// Wraps a SQLite error with what the store was doing.
    pub(crate) fn sqlite(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Sqlite { context, source }
    }

    /// Wraps a SQLite error with what the store was doing, for errors met
    /// at several steps.
    pub(crate) fn sqlite_at(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            context: context.to_owned(),
            source,
        }
    }
}
