//! Reading events back: filters, order and cursor pagination.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use custody_engine::Decision;
use custody_event::{AttributionMethod, EventKind, RuntimeEvent};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::StoreError;
use crate::postings::{Entry, Field, List, Named, Pending, Stream};
use crate::schema::identifier_hash;

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
    /// Only events attributed by one of these methods; any when empty.
    pub attributions: Vec<AttributionMethod>,
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
            attributions: Vec::new(),
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

/// Runs a query on a read connection, over the postings table and the
/// postings still in memory.
pub(crate) fn query(
    conn: &Connection,
    pending: &Pending,
    q: &EventQuery,
) -> Result<EventPage, StoreError> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let failed = StoreError::sqlite("querying events");
    let plan = plan(q, limit);
    let rows = match plan.list {
        None => rows(conn, &plan.sql, &plan.values),
        Some(list) => {
            // Memory first, then the snapshot: a posting leaves memory only
            // once the table has it (see `postings.rs`).
            let memory = pending.entries(list, |entry| plan.admits(entry));
            (|| {
                let tx = conn.unchecked_transaction()?;
                let stream = Stream::new(
                    &tx,
                    list,
                    memory,
                    plan.order,
                    |entry| plan.admits(entry),
                    |first, last| plan.overlaps(first, last),
                )?;
                let rows = fetch(&tx, &plan, stream, limit + 1)?;
                tx.commit()?;
                Ok(rows)
            })()
        }
    }
    .map_err(failed)?;
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

/// An event and its observation time, in a page's order.
type Row = (StoredEvent, i64);

fn rows(conn: &Connection, sql: &str, values: &[Value]) -> rusqlite::Result<Vec<Row>> {
    conn.prepare_cached(sql)?
        .query_map(params_from_iter(values), |row| {
            let event = StoredEvent {
                seq: row.get(0)?,
                body: row.get(1)?,
                decision: row.get(2)?,
            };
            Ok((event, row.get::<_, i64>(3)?))
        })?
        .collect()
}

/// Reads the events of a posting list in the page's order, keeping those
/// the other filters pass, until `want` are found.
fn fetch<F: Fn(Entry) -> bool>(
    conn: &Connection,
    plan: &Plan,
    mut stream: Stream<'_, F>,
    want: usize,
) -> rusqlite::Result<Vec<Row>> {
    // Events read per statement: a page's worth when no other filter
    // applies, more when some will be filtered out.
    let chunk = if plan.filters.is_empty() {
        want
    } else {
        want.max(256)
    };
    let mut found = Vec::new();
    let mut seqs: Vec<i64> = Vec::with_capacity(chunk);
    loop {
        seqs.clear();
        while seqs.len() < chunk {
            match stream.next_entry()? {
                Some((_, seq)) => seqs.push(seq),
                None => break,
            }
        }
        if seqs.is_empty() {
            return Ok(found);
        }
        // A list of integers always serializes.
        let listed = serde_json::to_string(&seqs).unwrap_or_else(|_| "[]".into());
        let values: Vec<Value> = std::iter::once(Value::Text(listed))
            .chain(plan.filter_values.iter().cloned())
            .collect();
        let mut by_seq: std::collections::HashMap<i64, Row> = rows(conn, &plan.fetch_sql, &values)?
            .into_iter()
            .map(|row| (row.0.seq, row))
            .collect();
        for seq in &seqs {
            if let Some(row) = by_seq.remove(seq)
                && plan.names_all(&row.0.body)
            {
                found.push(row);
                if found.len() >= want {
                    return Ok(found);
                }
            }
        }
        if seqs.len() < chunk {
            return Ok(found);
        }
    }
}

/// Up to `limit` events after `after`, by sequence number.
pub(crate) fn scan(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    conn.prepare_cached(
        "SELECT seq, body, decision FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?
    .query_map(
        params_from_iter([after, i64::try_from(limit).unwrap_or(i64::MAX)]),
        |row| {
            Ok(StoredEvent {
                seq: row.get(0)?,
                body: row.get(1)?,
                decision: row.get(2)?,
            })
        },
    )?
    .collect()
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

/// How a query runs: the SQL over the events when no posting list drives
/// it, or the list and the SQL that reads and filters its events.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Without a list: the query, fetching `limit + 1` rows in the page's
    /// order.
    pub(crate) sql: String,
    pub(crate) values: Vec<Value>,
    /// The posting list that drives the query, if a filter names one.
    pub(crate) list: Option<List>,
    /// With a list: reads the events whose sequence numbers the first
    /// parameter lists (a JSON array), keeping those `filters` pass; the
    /// remaining parameters are `filter_values`.
    pub(crate) fetch_sql: String,
    filters: Vec<String>,
    filter_values: Vec<Value>,
    /// The identifiers the filters name, which a matching event's body must
    /// name exactly: the columns and postings hold only their hashes.
    exact: Vec<(Field, String)>,
    since: Option<i64>,
    until: Option<i64>,
    cursor: Option<Cursor>,
    order: Order,
}

impl Plan {
    /// The parameters of `fetch_sql` after the first.
    #[cfg(test)]
    pub(crate) fn filter_values(&self) -> &[Value] {
        &self.filter_values
    }

    /// Whether a stored event names every identifier the filters name; an
    /// event whose body no longer parses cannot be shown to.
    fn names_all(&self, body: &str) -> bool {
        if self.exact.is_empty() {
            return true;
        }
        let Ok(named) = serde_json::from_str::<Named>(body) else {
            return false;
        };
        self.exact.iter().all(|(field, value)| match field {
            Field::Actor => named.actor.current.id == *value,
            Field::Root => named
                .actor
                .root
                .as_ref()
                .is_some_and(|root| root.id == *value),
            Field::Run => named.actor.current.run_id.as_ref() == Some(value),
            Field::Target => named.target.keys().any(|key| key == value),
        })
    }

    /// Whether a posting's `(observed_at, seq)` lies in the page's range.
    fn admits(&self, (observed_at, seq): Entry) -> bool {
        self.overlaps(observed_at, observed_at)
            && self.cursor.is_none_or(|cursor| {
                let past = (observed_at, seq);
                let at = (cursor.observed_at, cursor.seq);
                match self.order {
                    Order::Newest => past < at,
                    Order::Oldest => past > at,
                }
            })
    }

    /// Whether observation times `first..=last` meet the page's range.
    fn overlaps(&self, first: i64, last: i64) -> bool {
        self.since.is_none_or(|since| last >= since)
            && self.until.is_none_or(|until| first < until)
            && self.cursor.is_none_or(|cursor| match self.order {
                Order::Newest => first <= cursor.observed_at,
                Order::Oldest => last >= cursor.observed_at,
            })
    }
}

/// Plans a query fetching `limit + 1` rows.
///
/// A target, run, actor or root filter (the first given, in that order)
/// drives the query from its posting list (see `postings.rs`), and the
/// other filters check the event's columns as its events are read by
/// sequence number. Without one, the time index, or the kind index, which
/// end in `seq` because `seq` is the rowid, give the order without a sort.
///
/// Identifiers are filtered on by their hash, and every event found is
/// checked to name them exactly, so a hash collision costs time, never a
/// wrong answer.
pub(crate) fn plan(q: &EventQuery, limit: usize) -> Plan {
    let named = [
        (Field::Target, &q.target, None),
        (Field::Run, &q.run, Some("e.run_id")),
        (Field::Actor, &q.actor, Some("e.actor")),
        (Field::Root, &q.root, Some("e.chain_root")),
    ];
    let mut list: Option<List> = None;
    let mut filters: Vec<String> = Vec::new();
    let mut filter_values: Vec<Value> = Vec::new();
    let mut exact: Vec<(Field, String)> = Vec::new();
    for (field, value, column) in named {
        let Some(value) = value else { continue };
        exact.push((field, value.clone()));
        let key = identifier_hash(value);
        match (list, column) {
            (None, _) => list = Some((field as i64, key)),
            (Some(_), Some(column)) => {
                filters.push(format!("{column} = ?"));
                filter_values.push(Value::Integer(key));
            }
            // Only a target has no column, and it is always the first.
            (Some(_), None) => {}
        }
    }
    if !q.kinds.is_empty() {
        let marks = vec!["?"; q.kinds.len()].join(", ");
        filters.push(format!("e.kind IN ({marks})"));
        filter_values.extend(
            q.kinds
                .iter()
                .map(|kind| Value::Integer(crate::schema::kind_code(*kind))),
        );
    }
    if !q.attributions.is_empty() {
        let marks = vec!["?"; q.attributions.len()].join(", ");
        filters.push(format!("e.attribution IN ({marks})"));
        filter_values.extend(
            q.attributions
                .iter()
                .map(|method| Value::Integer(crate::schema::attribution_code(*method))),
        );
    }
    // CROSS JOIN keeps the listed sequence numbers as the outer loop: each
    // is one rowid lookup, and no index on a filtered column is scanned.
    let mut fetch_sql = String::from(
        "SELECT e.seq, e.body, e.decision, e.observed_at \
         FROM json_each(?) AS j CROSS JOIN events e ON e.seq = j.value",
    );
    if !filters.is_empty() {
        fetch_sql.push_str(" WHERE ");
        fetch_sql.push_str(&filters.join(" AND "));
    }

    let mut sql = String::from("SELECT e.seq, e.body, e.decision, e.observed_at FROM events e");
    let mut conditions = filters.clone();
    let mut values: Vec<Value> = filter_values.clone();
    let since = q.since.map(|since| since.timestamp_micros());
    let until = q.until.map(|until| until.timestamp_micros());
    if let Some(since) = since {
        conditions.push("e.observed_at >= ?".into());
        values.push(Value::Integer(since));
    }
    if let Some(until) = until {
        conditions.push("e.observed_at < ?".into());
        values.push(Value::Integer(until));
    }
    let (direction, past) = match q.order {
        Order::Newest => ("DESC", "<"),
        Order::Oldest => ("ASC", ">"),
    };
    if let Some(cursor) = q.cursor {
        // `(time, seq) past (cursor)`, spelt so that the time bound alone is
        // an index range.
        conditions.push(format!(
            "e.observed_at {past}= ? AND (e.observed_at {past} ? OR e.seq {past} ?)"
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
        " ORDER BY e.observed_at {direction}, e.seq {direction} LIMIT ?"
    ));
    values.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    Plan {
        sql,
        values,
        list,
        fetch_sql,
        filters,
        filter_values,
        exact,
        since,
        until,
        cursor: q.cursor,
        order: q.order,
    }
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
