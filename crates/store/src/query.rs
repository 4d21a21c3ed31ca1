//! Reading events back: filters, order and cursor pagination.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use custody_engine::Decision;
use custody_event::{EventKind, RuntimeEvent};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::StoreError;

/// The most events one page may hold.
pub const MAX_LIMIT: usize = 1000;

/// Which events to return, and in what order. Filters combine with AND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events observed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events observed before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only events of one of these kinds; every kind when empty.
    pub kinds: Vec<EventKind>,
    /// Only events whose current actor has this id.
    pub actor: Option<String>,
    /// Only events whose chain has this root id.
    pub root: Option<String>,
    /// Only events whose current actor acts in this run.
    pub run: Option<String>,
    /// Only events whose target names this identifier (a resource, tool,
    /// target principal, server or system).
    pub target: Option<String>,
    /// The most events to return, clamped to `1..=MAX_LIMIT`.
    pub limit: usize,
    /// The order of the events.
    pub order: Order,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl Default for EventQuery {
    /// Every event, newest first, 100 at a time.
    fn default() -> Self {
        EventQuery {
            since: None,
            until: None,
            kinds: Vec::new(),
            actor: None,
            root: None,
            run: None,
            target: None,
            limit: 100,
            order: Order::Newest,
            cursor: None,
        }
    }
}

/// The order of a page: by observation time, ties broken by arrival.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Most recently observed first.
    #[default]
    Newest,
    /// Earliest observed first.
    Oldest,
}

/// A position in the `(observed_at, seq)` order: the last event of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) observed_at: i64,
    pub(crate) seq: i64,
}

impl Cursor {
    /// The opaque, URL-safe form handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.observed_at, self.seq))
    }

    /// Reads a cursor produced by [`Cursor::encode`].
    pub fn decode(cursor: &str) -> Result<Cursor, StoreError> {
        let invalid = |reason| StoreError::Cursor {
            cursor: cursor.to_owned(),
            reason,
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| invalid("not base64url"))?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("not a cursor"))?;
        let mut parts = text.split(':');
        if parts.next() != Some("v1") {
            return Err(invalid("not a version 1 cursor"));
        }
        let mut number = || -> Result<i64, StoreError> {
            parts
                .next()
                .and_then(|part| part.parse().ok())
                .ok_or_else(|| invalid("malformed position"))
        };
        let (observed_at, seq) = (number()?, number()?);
        if parts.next().is_some() {
            return Err(invalid("malformed position"));
        }
        Ok(Cursor { observed_at, seq })
    }
}

/// One page of events.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The events, in the query's order.
    pub events: Vec<StoredEvent>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<Cursor>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its position in the store, in commit order.
    pub seq: i64,
    /// The event's JSON, exactly as serialized when it was recorded.
    pub body: String,
    /// The decision's JSON; `None` for the default allow with no reasons.
    pub decision: Option<String>,
}

impl StoredEvent {
    /// Parses the event.
    pub fn event(&self) -> Result<RuntimeEvent, StoreError> {
        serde_json::from_str(&self.body).map_err(|source| StoreError::Parse {
            seq: self.seq,
            source,
        })
    }

    /// Parses the decision.
    pub fn decision(&self) -> Result<Decision, StoreError> {
        self.decision
            .as_deref()
            .map_or(Ok(Decision::allow()), |json| {
                serde_json::from_str(json).map_err(|source| StoreError::Parse {
                    seq: self.seq,
                    source,
                })
            })
    }
}

/// Runs a query on a read connection.
pub(crate) fn query(conn: &Connection, q: &EventQuery) -> Result<EventPage, StoreError> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let Some((sql, values)) = sql(conn, q, limit).map_err(StoreError::sqlite("querying events"))?
    else {
        // A filter names an identifier no event ever had.
        return Ok(EventPage {
            events: Vec::new(),
            next: None,
        });
    };
    let mut statement = conn
        .prepare_cached(&sql)
        .map_err(StoreError::sqlite("querying events"))?;
    let rows = statement
        .query_map(params_from_iter(values), |row| {
            let event = StoredEvent {
                seq: row.get(0)?,
                body: row.get(1)?,
                decision: row.get(2)?,
            };
            Ok((event, row.get::<_, i64>(3)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(StoreError::sqlite("querying events"))?;
    // One row past the limit was asked for: its presence says whether a next
    // page exists without a second query.
    let more = rows.len() > limit;
    let mut events = Vec::with_capacity(rows.len().min(limit));
    let mut next = None;
    for (event, observed_at) in rows.into_iter().take(limit) {
        next = Some(Cursor {
            observed_at,
            seq: event.seq,
        });
        events.push(event);
    }
    Ok(EventPage {
        events,
        next: next.filter(|_| more),
    })
}

/// The interned id of an identifier, if any event ever named it.
fn key_id(conn: &Connection, value: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM keys WHERE value = ?1")?
        .query_row([value], |row| row.get(0))
        .optional()
}

/// Reads one event by id.
pub(crate) fn get(conn: &Connection, id: &[u8; 16]) -> rusqlite::Result<Option<StoredEvent>> {
    conn.prepare_cached("SELECT seq, body, decision FROM events WHERE id = ?1")?
        .query_row([id], |row| {
            Ok(StoredEvent {
                seq: row.get(0)?,
                body: row.get(1)?,
                decision: row.get(2)?,
            })
        })
        .optional()
}

/// Runs a `SELECT count(*)`.
pub(crate) fn count(conn: &Connection, sql: &str) -> rusqlite::Result<u64> {
    let count: i64 = conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?;
    // A count is never negative.
    Ok(u64::try_from(count).unwrap_or_default())
}

/// The SQL and parameters of a query, fetching `limit + 1` rows.
///
/// A target filter drives the query from `event_targets`, whose primary key
/// is already in `(target, observed_at, seq)` order; every other filter has
/// an index on `(column, observed_at)`, which ends in `seq` because `seq` is
/// the rowid. Either way the order comes from the index, without a sort.
///
/// Identifiers are looked up in `keys` first; `None` when one is unknown, as
/// then nothing can match.
pub(crate) fn sql(
    conn: &Connection,
    q: &EventQuery,
    limit: usize,
) -> rusqlite::Result<Option<(String, Vec<Value>)>> {
    let mut sql = String::from("SELECT e.seq, e.body, e.decision, ");
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let (time, seq) = match &q.target {
        Some(target) => {
            let Some(target) = key_id(conn, target)? else {
                return Ok(None);
            };
            sql.push_str("t.observed_at FROM event_targets t JOIN events e ON e.seq = t.seq");
            conditions.push("t.target = ?".into());
            values.push(Value::Integer(target));
            ("t.observed_at", "t.seq")
        }
        None => {
            sql.push_str("e.observed_at FROM events e");
            ("e.observed_at", "e.seq")
        }
    };
    for (column, value) in [
        ("e.actor", &q.actor),
        ("e.chain_root", &q.root),
        ("e.run_id", &q.run),
    ] {
        if let Some(value) = value {
            let Some(key) = key_id(conn, value)? else {
                return Ok(None);
            };
            conditions.push(format!("{column} = ?"));
            values.push(Value::Integer(key));
        }
    }
    if !q.kinds.is_empty() {
        let marks = vec!["?"; q.kinds.len()].join(", ");
        conditions.push(format!("e.kind IN ({marks})"));
        values.extend(
            q.kinds
                .iter()
                .map(|kind| Value::Integer(crate::schema::kind_code(*kind))),
        );
    }
    if let Some(since) = q.since {
        conditions.push(format!("{time} >= ?"));
        values.push(Value::Integer(since.timestamp_micros()));
    }
    if let Some(until) = q.until {
        conditions.push(format!("{time} < ?"));
        values.push(Value::Integer(until.timestamp_micros()));
    }
    let (direction, past) = match q.order {
        Order::Newest => ("DESC", "<"),
        Order::Oldest => ("ASC", ">"),
    };
    if let Some(cursor) = q.cursor {
        // `(time, seq) past (cursor)`, spelt so that the time bound alone is
        // an index range.
        conditions.push(format!(
            "{time} {past}= ? AND ({time} {past} ? OR {seq} {past} ?)"
        ));
        values.extend([
            Value::Integer(cursor.observed_at),
            Value::Integer(cursor.observed_at),
            Value::Integer(cursor.seq),
        ]);
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(
        " ORDER BY {time} {direction}, {seq} {direction} LIMIT ?"
    ));
    values.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    Ok(Some((sql, values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor {
            observed_at: 1_764_064_800_000_000,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        let negative = Cursor {
            observed_at: -5,
            seq: 1,
        };
        assert_eq!(Cursor::decode(&negative.encode()).unwrap(), negative);
    }

    #[test]
    fn bad_cursors_are_refused_with_a_reason() {
        fn check(cursor: &str, expected: &str) {
            let error = Cursor::decode(cursor).unwrap_err().to_string();
            assert_eq!(error, format!("invalid cursor `{cursor}`: {expected}"));
        }
        let b64 = |text: &str| URL_SAFE_NO_PAD.encode(text);
        check("", "not a version 1 cursor");
        check("not base64!", "not base64url");
        check(&URL_SAFE_NO_PAD.encode([0xff, 0xfe]), "not a cursor");
        check(&b64("v2:1:2"), "not a version 1 cursor");
        check(&b64("v1:1"), "malformed position");
        check(&b64("v1:x:2"), "malformed position");
        check(&b64("v1:1:2:3"), "malformed position");
        check(&b64("v1:1:"), "malformed position");
    }
}
