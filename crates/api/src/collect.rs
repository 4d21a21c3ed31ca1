//! The collectors: JSON events (`POST /v1/events`) and audit-log records
//! (`POST /v1/ingest/cloudtrail`, `/v1/ingest/okta`, `/v1/ingest/github`).
//!
//! A body of events is a JSON array, one JSON object, or NDJSON (one event a
//! line); a body of records is any shape its importer reads
//! (`custody_import::shape`). Either may be gzip-compressed. Every item is
//! decoded on its own so a bad item costs only itself: the answer lists the
//! id of each accepted item and, for each refused one, its index, the field
//! at fault and why. The answer is sent only once the accepted items are
//! durable.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use custody_event::{DecodeError, EventId, NewEvent};
use custody_import::Source;
use flate2::read::MultiGzDecoder;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

/// The answer to a batch.
#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    /// How many items were accepted.
    pub accepted: usize,
    /// How many items were refused.
    pub rejected: usize,
    /// One entry per item, in order: the event id, or null if refused.
    pub ids: Vec<Option<EventId>>,
    /// Why each refused item was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ItemError>,
}

/// Why one item of a batch was refused.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ItemError {
    /// The item's position in the batch, from 0.
    pub index: usize,
    /// The item's line in an NDJSON body, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The field at fault, e.g. `actor.current.id`; empty for the item as a
    /// whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

pub(crate) async fn post_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Role::Ingest)?;
    let started = std::time::Instant::now();
    let body = read_body(&state, &headers, body).await?;
    let items = split(&headers, &body)?;
    if items.is_empty() {
        return Err(ApiError::BadRequest("the body holds no events".into()));
    }
    let mut batch = Batch::default();
    for (index, item) in items.into_iter().enumerate() {
        match item.decode() {
            Ok(event) => batch.accept(index, event),
            Err((line, error)) => batch.refuse(ItemError {
                index,
                line,
                path: error.path,
                message: error.message,
            }),
        }
    }
    submit(&state, &caller, started, batch).await
}

/// `POST /v1/ingest/{format}`: the records of an audit log, in any shape
/// the format's importer reads (`custody_import::shape`), each mapped to an
/// event by `S`. A record that cannot be read or mapped is refused with its
/// index, line, field and reason, like an event of `POST /v1/events`.
pub(crate) async fn post_import<S: Source + Default>(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Role::Ingest)?;
    let started = std::time::Instant::now();
    let body = read_body(&state, &headers, body).await?;
    let imported = custody_import::import(&S::default(), &body, Utc::now());
    if imported.is_empty() {
        return Err(ApiError::BadRequest("the body holds no records".into()));
    }
    let mut batch = Batch::default();
    for item in imported {
        match item {
            Ok((at, event)) => batch.accept(at.index, event),
            Err(refused) => batch.refuse(ItemError {
                index: refused.position.index,
                line: Some(refused.position.line),
                path: refused.error.path,
                message: refused.error.message,
            }),
        }
    }
    submit(&state, &caller, started, batch).await
}

/// Reads a request body under the collector's limits, decompressed.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_body_bytes;
    if let Some(length) = content_length(headers)
        && length > limit
    {
        return Err(ApiError::TooLarge {
            what: "the request body",
            limit,
        });
    }
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge {
            what: "the request body",
            limit,
        })?;
    decompress(headers, body, state.limits.max_decompressed_bytes)
}

/// The items of one request: the events accepted, each with its position,
/// and why the others were refused.
#[derive(Default)]
struct Batch {
    events: Vec<NewEvent>,
    positions: Vec<usize>,
    errors: Vec<ItemError>,
}

impl Batch {
    fn accept(&mut self, index: usize, event: NewEvent) {
        self.events.push(event);
        self.positions.push(index);
    }

    fn refuse(&mut self, error: ItemError) {
        self.errors.push(error);
    }
}

/// Sends the accepted events of a batch through the engine and answers once
/// they are durable.
async fn submit(
    state: &AppState,
    caller: &Caller,
    started: std::time::Instant,
    batch: Batch,
) -> Result<Response, ApiError> {
    let Batch {
        events,
        positions,
        errors,
    } = batch;
    let total = positions.len() + errors.len();
    if events.is_empty() {
        state.metrics.events_rejected.inc_by(errors.len() as u64);
        return Err(ApiError::AllRejected(
            serde_json::to_value(&errors).unwrap_or_default(),
        ));
    }

    let accepted = events.len();
    let stored = ingest(state, caller, started, events, errors.len()).await?;

    // Positions are the items' indexes: they may skip (a record refused
    // before it could be counted), so the answer has room for the largest.
    let total = total.max(positions.last().map_or(0, |last| last + 1));
    let mut ids = vec![None; total];
    for (position, id) in positions.into_iter().zip(stored) {
        if let Some(slot) = ids.get_mut(position) {
            *slot = Some(id);
        }
    }
    let answer = BatchAnswer {
        accepted,
        rejected: errors.len(),
        ids,
        errors,
    };
    Ok(axum::Json(answer).into_response())
}

/// Sends accepted events through the engine, as the caller's token vouches
/// for them, and returns their ids once they are durable; counts them, and
/// the `rejected` items of their request, once answered.
pub(crate) async fn ingest(
    state: &AppState,
    caller: &Caller,
    started: std::time::Instant,
    events: Vec<NewEvent>,
    rejected: usize,
) -> Result<Vec<EventId>, ApiError> {
    let accepted = events.len();
    // An agent token vouches for the events: they are its holder's own.
    let provenance = match &caller.agent {
        Some(chain) => custody_engine::Provenance::Authenticated {
            token: caller.token_id.clone(),
            chain: chain.clone(),
        },
        None => custody_engine::Provenance::Reported,
    };
    let ingested = state
        .engine
        .ingest_batch_as(events, Utc::now(), &provenance)
        .inspect_err(|error| {
            if matches!(error, custody_engine::RecordError::QueueFull { .. }) {
                state.metrics.throttled_batches.inc();
            }
        })?;
    ingested.receipt.durable().await?;
    // Counted only once the batch is answered: items of a batch refused with
    // 429 come back with the client's retry.
    state.metrics.events_accepted.inc_by(accepted as u64);
    state.metrics.events_rejected.inc_by(rejected as u64);
    state
        .metrics
        .ack_latency
        .observe(started.elapsed().as_secs_f64());
    Ok(ingested.ids)
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Undoes `Content-Encoding: gzip`, refusing bodies that decompress beyond
/// `limit` (a small gzip can expand a thousandfold).
fn decompress(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            let read = MultiGzDecoder::new(body.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|error| {
                    ApiError::BadRequest(format!("the gzip body cannot be decompressed: {error}"))
                })?;
            if read > limit {
                return Err(ApiError::TooLarge {
                    what: "the decompressed request body",
                    limit,
                });
            }
            Ok(Bytes::from(out))
        }
        other => Err(ApiError::Unsupported(format!(
            "content encoding \"{other}\" is not supported, send identity or gzip"
        ))),
    }
}

/// One item of a batch, not yet decoded.
enum Item<'a> {
    /// An element of a JSON array.
    Element(&'a RawValue),
    /// A line of NDJSON, with its number from 1.
    Line(&'a [u8], usize),
    /// The whole body, one object.
    Whole(&'a [u8]),
}

impl Item<'_> {
    fn decode(&self) -> Result<NewEvent, (Option<usize>, DecodeError)> {
        match self {
            Item::Element(raw) => {
                custody_event::decode(raw.get().as_bytes()).map_err(|e| (None, e))
            }
            Item::Line(bytes, line) => custody_event::decode(bytes).map_err(|e| (Some(*line), e)),
            Item::Whole(bytes) => custody_event::decode(bytes).map_err(|e| (None, e)),
        }
    }
}

/// Splits a body into items: a JSON array by its elements, a body sent as
/// `application/json` as one object, anything else by lines (NDJSON).
fn split<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<Vec<Item<'a>>, ApiError> {
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Ok(Vec::new());
    };
    if body.get(first) == Some(&b'[') {
        let elements: Vec<&RawValue> = serde_json::from_slice(body).map_err(|error| {
            ApiError::BadRequest(format!("the body is not a valid JSON array: {error}"))
        })?;
        return Ok(elements.into_iter().map(Item::Element).collect());
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media_type.as_deref() == Some("application/json") {
        return Ok(vec![Item::Whole(body)]);
    }
    let mut items = Vec::new();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (number, end) in ends.enumerate() {
        let line = body.get(start..end).unwrap_or_default();
        start = end + 1;
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            items.push(Item::Line(line, number + 1));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    fn shapes(content_type: &str, body: &str) -> Vec<String> {
        split(&headers(content_type), body.as_bytes())
            .unwrap()
            .iter()
            .map(|item| match item {
                Item::Element(raw) => format!("element {}", raw.get()),
                Item::Line(bytes, line) => {
                    format!("line {line} {}", String::from_utf8_lossy(bytes))
                }
                Item::Whole(bytes) => format!("whole {}", String::from_utf8_lossy(bytes).trim()),
            })
            .collect()
    }

    #[test]
    fn bodies_split_into_items() {
        assert_eq!(
            shapes("application/json", " [{\"a\":1}, {\"b\":2}]"),
            ["element {\"a\":1}", "element {\"b\":2}"]
        );
        assert_eq!(
            shapes("application/json", "{\n\"a\": 1\n}"),
            ["whole {\n\"a\": 1\n}"]
        );
        assert_eq!(
            shapes("application/x-ndjson", "{\"a\":1}\n\n{\"b\":2}\n"),
            ["line 1 {\"a\":1}", "line 3 {\"b\":2}"]
        );
        assert_eq!(
            shapes("text/plain", "{x\n{\"b\":2}"),
            ["line 1 {x", "line 2 {\"b\":2}"]
        );
        assert!(shapes("application/json", "  \n ").is_empty());
        assert!(split(&headers("application/json"), b"[{}, ").is_err());
    }

    #[test]
    fn gzip_bombs_are_refused() {
        use flate2::Compression;
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&vec![b' '; 1 << 20]).unwrap();
        let compressed = Bytes::from(encoder.finish().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(
            decompress(&headers, compressed.clone(), 1 << 20)
                .unwrap()
                .len(),
            1 << 20
        );
        let error = decompress(&headers, compressed, 1000).unwrap_err();
        assert!(
            matches!(error, ApiError::TooLarge { limit: 1000, .. }),
            "{error}"
        );
        let error = decompress(
            &headers,
            Bytes::from_static(b"\x1f\x8b\x08\x00garbage"),
            1000,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("cannot be decompressed"),
            "{error}"
        );
    }
}
