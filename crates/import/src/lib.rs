//! Importers: records of external audit logs turned into Custody events.
//!
//! Every format is a [`Source`] in a folder of its own (`cloudtrail/`,
//! `okta/`, `github/`), held to one contract (`SPEC.md`): each record becomes
//! one [`NewEvent`] or one [`RecordError`] saying where and why; events keep
//! the raw record, carry the source's type and the record's own time, have an
//! id derived from the record's id, and never claim attribution. [`import`]
//! splits the input into records ([`shape`]) and applies the contract's
//! common parts, so a source only maps one record; [`contract::check`] checks
//! the whole contract and is run by every source's tests.
//!
//! *Invariant:* this crate does no IO and never panics on input: it takes
//! bytes (decompressed by the caller) and returns values.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod cloudtrail;
pub mod contract;
mod fields;
pub mod github;
pub mod okta;
pub mod shape;
#[cfg(test)]
mod testing;

use chrono::{DateTime, Utc};
use custody_event::{EventId, NewEvent, RawRecord, SourceKind};
use serde_json::value::RawValue;
use uuid::Uuid;

pub use cloudtrail::CloudTrail;
pub use fields::Fields;
pub use github::GitHub;
pub use okta::Okta;
pub use shape::Position;
use shape::Split;

/// Attribute set on an event whose record gave no readable time, so its
/// `observed_at` is the time of the import.
pub const ATTR_TIME_MISSING: &str = "import.time_missing";

/// One format of records.
pub trait Source {
    /// The format, written into every event's `source.type`.
    const KIND: SourceKind;
    /// The top-level key of an object that wraps a file's records
    /// (`Records` in CloudTrail), if the format has one.
    const WRAPPER: Option<&'static str>;
    /// The namespace of the events' ids: fixed forever, or re-imports would
    /// store records twice.
    const NAMESPACE: Uuid;

    /// The record's own unique id, if it has one.
    fn record_id<'r>(&self, record: Fields<'r>) -> Option<&'r str>;

    /// When the record says the action happened, if it says.
    fn observed_at(&self, record: Fields<'_>) -> Option<DateTime<Utc>>;

    /// Maps one record whose action happened at `observed_at`. The common
    /// parts (id, raw, source type) are filled by [`import`].
    fn map(&self, record: Fields<'_>, observed_at: DateTime<Utc>) -> Result<NewEvent, FieldError>;
}

/// Why a record could not be mapped, and which field of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "record" } else { path.as_str() })]
pub struct FieldError {
    /// The field at fault, e.g. `userIdentity.type`; empty for the record as
    /// a whole.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error about the field at `path`.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why one record of an input was not imported, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {} (line {}): {error}", position.index, position.line)]
pub struct RecordError {
    /// Where the record is in the input.
    pub position: Position,
    /// What is wrong with it.
    pub error: FieldError,
}

/// One record of an input, imported or not.
pub type Imported = Result<(Position, NewEvent), RecordError>;

/// Imports every record of `input` (any shape `shape::split` reads), in
/// order. `imported_at` is the time of the import, used only for records
/// that give none.
pub fn import<S: Source>(source: &S, input: &[u8], imported_at: DateTime<Utc>) -> Vec<Imported> {
    shape::split(input, S::WRAPPER)
        .into_iter()
        .map(|(position, record)| {
            let record = record.map_err(|error| RecordError { position, error })?;
            import_one(source, record, imported_at)
                .map(|event| (position, event))
                .map_err(|error| RecordError { position, error })
        })
        .collect()
}

/// As [`import`], mapping the records on up to `threads` threads and passing
/// each result through `then` on the thread that mapped it (a caller that
/// serializes the events does it there too). Results keep the input's order.
pub fn import_parallel<S, T, F>(
    source: &S,
    input: &[u8],
    imported_at: DateTime<Utc>,
    threads: usize,
    then: F,
) -> Vec<T>
where
    S: Source + Sync,
    T: Send,
    F: Fn(Imported) -> T + Sync,
{
    let records = shape::split(input, S::WRAPPER);
    let one = |(position, record): Split<'_>| {
        then(
            record
                .and_then(|record| import_one(source, record, imported_at))
                .map(|event| (position, event))
                .map_err(|error| RecordError { position, error }),
        )
    };
    // Below a few hundred records a thread costs more than it saves.
    let threads = threads.clamp(1, records.len() / 256 + 1);
    if threads == 1 {
        return records.into_iter().map(one).collect();
    }
    let size = records.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Split<'_>>> = Vec::with_capacity(threads);
    let mut rest = records.into_iter();
    loop {
        let chunk: Vec<Split<'_>> = rest.by_ref().take(size).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let one = &one;
    std::thread::scope(|scope| {
        let mut chunks = chunks.into_iter();
        // The first chunk is mapped on this thread.
        let first = chunks.next();
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(one).collect::<Vec<T>>()))
            .collect();
        let mut out: Vec<T> = first
            .map(|chunk| chunk.into_iter().map(one).collect())
            .unwrap_or_default();
        for other in others {
            match other.join() {
                Ok(mapped) => out.extend(mapped),
                // Mapping never panics (the crate's invariant); were it to,
                // the panic goes on.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Maps one raw record and fills the parts of the event every source shares.
fn import_one<S: Source>(
    source: &S,
    raw: &RawValue,
    imported_at: DateTime<Utc>,
) -> Result<NewEvent, FieldError> {
    let record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw.get())
        .map_err(|error| {
            let message = if raw.get().starts_with('{') {
                // Well-formed (the splitter checked), so not UTF-8 clean:
                // an unpaired surrogate escape.
                format!("unreadable record: {error}")
            } else {
                "a record is a JSON object".to_owned()
            };
            FieldError::at("", message)
        })?;
    let fields = Fields::new(&record);
    let observed_at = source.observed_at(fields);
    let mut event = source.map(fields, observed_at.unwrap_or(imported_at))?;
    if observed_at.is_none() {
        event
            .attributes
            .insert(ATTR_TIME_MISSING.to_owned(), serde_json::Value::Bool(true));
    }
    let record_id = source.record_id(fields).map(str::to_owned);
    let name = record_id.as_deref().unwrap_or(raw.get());
    event.id = Some(EventId(Uuid::new_v5(&S::NAMESPACE, name.as_bytes())));
    event.source.kind = S::KIND;
    event.source.record_id = record_id;
    event.raw = Some(
        serde_json::from_str::<RawRecord>(raw.get())
            .map_err(|error| FieldError::at("", format!("unreadable record: {error}")))?,
    );
    event.attribution = None;
    custody_event::validate(&event).map_err(|error| {
        FieldError::at("", format!("the record maps to an invalid event: {error}"))
    })?;
    Ok(event)
}

#[cfg(test)]
mod parallel_tests {
    use super::*;

    #[test]
    fn parallel_import_keeps_every_record_in_order() {
        let record = |n: usize| {
            if n == 700 {
                // Refused: not an object.
                "1".to_owned()
            } else {
                format!(
                    r#"{{"eventName":"GetObject","eventSource":"s3.amazonaws.com","eventTime":"2026-11-25T10:00:00Z","eventID":"e{n}","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::1:user/u{n}","accountId":"1"}}}}"#
                )
            }
        };
        let records: Vec<String> = (0..1000).map(record).collect();
        let input = format!("{{\"Records\": [\n{}\n]}}", records.join(",\n"));
        let now = Utc::now();
        let show = |item: Imported| match item {
            Ok((at, event)) => format!("{at:?} {}", serde_json::to_string(&event).unwrap()),
            Err(error) => format!("error {error}"),
        };
        let one: Vec<String> = import(&CloudTrail, input.as_bytes(), now)
            .into_iter()
            .map(show)
            .collect();
        for threads in [1, 2, 3, 8] {
            let many = import_parallel(&CloudTrail, input.as_bytes(), now, threads, show);
            assert_eq!(many, one, "{threads} threads");
        }
        assert_eq!(one.len(), 1000);
        assert!(
            one[700].starts_with("error record 700 (line 702)"),
            "{}",
            one[700]
        );
    }
}
