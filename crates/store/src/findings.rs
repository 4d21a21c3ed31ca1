//! Findings: written with the event that completed them, read back by
//! filters and cursor.
//!
//! A finding is stored in the transaction of its event, so a finding never
//! names an event the store does not hold. A repeat (a match within the
//! finding's de-duplication window) links its event to the open finding and
//! counts it; the finding's body is the finding as opened, and `last_seen`,
//! `repeats` and the linked events are kept beside it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use custody_engine::{FindingNote, Signal};
use custody_event::{EventId, Finding, FindingId, Severity};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};

use crate::StoreError;

/// The most findings one page may hold.
pub const MAX_FINDINGS: usize = 1000;

/// The most events a stored finding lists (its repeats beyond are counted).
pub const MAX_LINKED_EVENTS: usize = 1000;

/// A finding ready for the writer: opened, or repeated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PreparedFinding {
    Opens {
        id: [u8; 16],
        created_at: i64,
        last_seen: i64,
        rule: String,
        kind: &'static str,
        severity: i64,
        run: Option<String>,
        root: Option<String>,
        body: String,
        events: Vec<[u8; 16]>,
    },
    Repeats {
        id: [u8; 16],
        at: i64,
    },
}

/// The findings `signals` open or repeat, serialized.
pub(crate) fn prepare(
    signals: &[Signal],
    observed_at: DateTime<Utc>,
) -> serde_json::Result<Vec<PreparedFinding>> {
    signals
        .iter()
        .filter_map(|signal| signal.finding.as_ref())
        .map(|note| {
            Ok(match note {
                FindingNote::Opens(finding) => PreparedFinding::Opens {
                    id: *finding.id.as_bytes(),
                    created_at: finding.created_at.timestamp_micros(),
                    last_seen: finding.last_seen.timestamp_micros(),
                    rule: finding.analytic.id.clone(),
                    kind: finding.kind.as_str(),
                    severity: severity_code(finding.severity),
                    run: finding.chain.run_id().map(str::to_owned),
                    root: finding.chain.root_id().map(str::to_owned),
                    body: serde_json::to_string(finding)?,
                    events: finding.events.iter().map(|e| *e.as_bytes()).collect(),
                },
                FindingNote::Repeats(id) => PreparedFinding::Repeats {
                    id: *id.as_bytes(),
                    at: observed_at.timestamp_micros(),
                },
            })
        })
        .collect()
}

/// Sigma's levels in order; part of the schema.
fn severity_code(severity: Severity) -> i64 {
    match severity {
        Severity::Informational => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// Writes the findings of the event `event` inside the writer's
/// transaction, adding each new one's sequence number and body to `opened`.
pub(crate) fn insert(
    tx: &Transaction<'_>,
    event: &[u8; 16],
    findings: &[PreparedFinding],
    opened: &mut Vec<(i64, String)>,
) -> rusqlite::Result<()> {
    for finding in findings {
        match finding {
            PreparedFinding::Opens {
                id,
                created_at,
                last_seen,
                rule,
                kind,
                severity,
                run,
                root,
                body,
                events,
            } => {
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO findings (id, created_at, last_seen, rule, kind, severity, run, root, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(params![id, created_at, last_seen, rule, kind, severity, run, root, body])?;
                if inserted == 1 {
                    opened.push((tx.last_insert_rowid(), body.clone()));
                }
                let mut link = tx.prepare_cached(
                    "INSERT INTO finding_events (finding, event) VALUES (?1, ?2)
                     ON CONFLICT DO NOTHING",
                )?;
                for linked in events.iter().chain(std::iter::once(event)) {
                    link.execute(params![id, linked])?;
                }
            }
            PreparedFinding::Repeats { id, at } => {
                let updated = tx
                    .prepare_cached(
                        "UPDATE findings SET repeats = repeats + 1, last_seen = max(last_seen, ?2)
                         WHERE id = ?1",
                    )?
                    .execute(params![id, at])?;
                if updated == 1 {
                    tx.prepare_cached(
                        "INSERT INTO finding_events (finding, event) VALUES (?1, ?2)
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![id, event])?;
                }
            }
        }
    }
    Ok(())
}

/// A finding as stored: as opened, with its repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFinding {
    /// Its position in the order findings were stored.
    pub seq: i64,
    /// The finding; `last_seen` and `events` include its repeats (up to
    /// [`MAX_LINKED_EVENTS`] events when read one by one).
    pub finding: Finding,
    /// Matches linked to it within its de-duplication window.
    pub repeats: u64,
}

/// Which findings to return. Filters combine with AND; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindingQuery {
    /// Only findings of this rule (its id).
    pub rule: Option<String>,
    /// Only findings whose chain acts in this run.
    pub run: Option<String>,
    /// Only findings whose chain has this root.
    pub root: Option<String>,
    /// Only findings at least this severe.
    pub min_severity: Option<Severity>,
    /// The most findings to return, clamped to `1..=MAX_FINDINGS`.
    pub limit: usize,
    /// Where the previous page ended ([`FindingPage::next`]).
    pub cursor: Option<String>,
}

/// One page of findings.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingPage {
    /// The findings, newest first.
    pub findings: Vec<StoredFinding>,
    /// The cursor of the next page, if there may be one.
    pub next: Option<String>,
}

fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("f1:{seq}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, StoreError> {
    let invalid = |reason| StoreError::Cursor {
        cursor: cursor.to_owned(),
        reason,
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid("not base64url"))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("not a cursor"))?;
    text.strip_prefix("f1:")
        .ok_or_else(|| invalid("not a findings cursor"))?
        .parse()
        .map_err(|_| invalid("malformed position"))
}

const COLUMNS: &str = "seq, body, last_seen, repeats";

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, i64, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

/// A finding just opened, as the live tail carries it.
pub(crate) fn opened(seq: i64, body: &str) -> Result<StoredFinding, StoreError> {
    stored((seq, body.to_owned(), 0, 0))
}

fn stored(
    (seq, body, last_seen, repeats): (i64, String, i64, i64),
) -> Result<StoredFinding, StoreError> {
    let mut finding: Finding =
        serde_json::from_str(&body).map_err(|source| StoreError::CorruptFinding { seq, source })?;
    if let Some(at) = DateTime::from_timestamp_micros(last_seen) {
        finding.last_seen = finding.last_seen.max(at);
    }
    Ok(StoredFinding {
        seq,
        finding,
        repeats: u64::try_from(repeats).unwrap_or(0),
    })
}

/// A page of findings.
pub(crate) fn query(conn: &Connection, q: &FindingQuery) -> Result<FindingPage, StoreError> {
    let limit = q.limit.clamp(1, MAX_FINDINGS);
    let mut sql = format!("SELECT {COLUMNS} FROM findings WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    if let Some(cursor) = &q.cursor {
        sql.push_str(" AND seq < ?");
        values.push(Value::Integer(decode_cursor(cursor)?));
    }
    for (column, value) in [("rule", &q.rule), ("run", &q.run), ("root", &q.root)] {
        if let Some(value) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            values.push(Value::Text(value.clone()));
        }
    }
    if let Some(severity) = q.min_severity {
        sql.push_str(" AND severity >= ?");
        values.push(Value::Integer(severity_code(severity)));
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    values.push(Value::Integer(limit as i64 + 1));
    let read = read_error("reading findings");
    let mut statement = conn.prepare_cached(&sql).map_err(&read)?;
    let rows = statement
        .query_map(params_from_iter(values), row)
        .map_err(&read)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(&read)?;
    let more = rows.len() > limit;
    let findings = rows
        .into_iter()
        .take(limit)
        .map(stored)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if more {
        findings.last().map(|f| encode_cursor(f.seq))
    } else {
        None
    };
    Ok(FindingPage { findings, next })
}

/// One finding, with every event linked to it (up to [`MAX_LINKED_EVENTS`]).
pub(crate) fn get(conn: &Connection, id: FindingId) -> Result<Option<StoredFinding>, StoreError> {
    let read = read_error("reading a finding");
    let found = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM findings WHERE id = ?1"))
        .map_err(&read)?
        .query_row(params![id.as_bytes()], row)
        .optional()
        .map_err(&read)?;
    let Some(found) = found else {
        return Ok(None);
    };
    let mut finding = stored(found)?;
    let linked: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT finding_events.event FROM finding_events
             LEFT JOIN events ON events.id = finding_events.event
             WHERE finding_events.finding = ?1
             ORDER BY events.observed_at, events.seq LIMIT ?2",
        )
        .map_err(&read)?
        .query_map(params![id.as_bytes(), MAX_LINKED_EVENTS as i64], |row| {
            row.get(0)
        })
        .map_err(&read)?
        .collect::<rusqlite::Result<_>>()
        .map_err(&read)?;
    let events: Vec<EventId> = linked
        .into_iter()
        .filter_map(|bytes| <[u8; 16]>::try_from(bytes).ok())
        .map(|bytes| EventId(uuid::Uuid::from_bytes(bytes)))
        .collect();
    if !events.is_empty() {
        finding.finding.events = events;
    }
    Ok(Some(finding))
}

fn read_error(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite {
        context: context.to_owned(),
        source,
    }
}

/// The findings an event is linked to.
pub(crate) fn of_event(conn: &Connection, event: EventId) -> Result<Vec<FindingId>, StoreError> {
    let read = read_error("reading an event's findings");
    let ids: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT finding FROM finding_events WHERE event = ?1")
        .map_err(&read)?
        .query_map(params![event.as_bytes()], |row| row.get(0))
        .map_err(&read)?
        .collect::<rusqlite::Result<_>>()
        .map_err(&read)?;
    Ok(ids
        .into_iter()
        .filter_map(|bytes| <[u8; 16]>::try_from(bytes).ok())
        .map(|bytes| FindingId(uuid::Uuid::from_bytes(bytes)))
        .collect())
}
