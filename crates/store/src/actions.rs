//! Actions playbooks took (or, in monitor mode, would have taken), and
//! containment applied or lifted by hand.
//!
//! An action a playbook takes on an event is written in that event's
//! transaction, so an action is never stored without what triggered it.
//! One carried out later (a responder calling an identity provider) is
//! stored as `queued` and updated by id with its outcome and the record of
//! what was sent. Containment applied through the API has no event.

use custody_engine::ActionRecord;
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// The most actions one page may hold.
pub const MAX_ACTIONS: usize = 1000;

/// An action as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAction {
    /// Its position in the order actions were stored.
    pub seq: i64,
    /// When it was stored (RFC 3339).
    pub at: chrono::DateTime<chrono::Utc>,
    /// When its outcome last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The event that triggered it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The action.
    #[serde(flatten)]
    pub action: ActionRecord,
    /// What a responder sent and got back, when one carried it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<serde_json::Value>,
}

/// Which actions to return. Filters combine with AND; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionQuery {
    /// Only this playbook's.
    pub playbook: Option<String>,
    /// Only actions on this target (`run:run-7`).
    pub target: Option<String>,
    /// Only monitor-mode ones (`true`) or only enforced ones (`false`).
    pub monitor: Option<bool>,
    /// The most to return, clamped to `1..=MAX_ACTIONS`.
    pub limit: usize,
    /// Return only actions stored before this sequence number.
    pub before: Option<i64>,
}

/// How many actions a playbook took, by mode and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCount {
    /// The playbook.
    pub playbook: String,
    /// Whether these were monitor mode's "would have" actions.
    pub monitor: bool,
    /// The outcome.
    pub outcome: String,
    /// How many.
    pub count: u64,
}

/// An action ready for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedAction {
    id: String,
    playbook: String,
    action: String,
    target: String,
    monitor: bool,
    outcome: String,
    body: String,
}

/// `actions` serialized for the writer.
pub(crate) fn prepare(actions: &[ActionRecord]) -> serde_json::Result<Vec<PreparedAction>> {
    actions
        .iter()
        .map(|action| {
            Ok(PreparedAction {
                id: action.id.clone(),
                playbook: action.playbook.clone(),
                action: action.action.clone(),
                target: action.target.clone(),
                monitor: action.monitor,
                outcome: action.outcome.clone(),
                body: serde_json::to_string(action)?,
            })
        })
        .collect()
}

/// Writes the actions of the event `event` inside the writer's transaction.
pub(crate) fn insert(
    tx: &Transaction<'_>,
    event: Option<&[u8; 16]>,
    at: i64,
    actions: &[PreparedAction],
) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO actions (id, at, updated_at, playbook, action, target, monitor, outcome, event, body)
         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO NOTHING",
    )?;
    for action in actions {
        statement.execute(params![
            action.id,
            at,
            action.playbook,
            action.action,
            action.target,
            action.monitor,
            action.outcome,
            event.map(|id| id.as_slice()),
            action.body,
        ])?;
    }
    Ok(())
}

/// Stores `action`, with no event, in a transaction of its own.
pub(crate) fn insert_alone(conn: &mut Connection, action: &ActionRecord) -> Result<(), StoreError> {
    let prepared = prepare(std::slice::from_ref(action)).map_err(|source| StoreError::Invalid {
        what: "action".into(),
        reason: source.to_string(),
    })?;
    let now = chrono::Utc::now().timestamp_micros();
    let write = |conn: &mut Connection| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        insert(&tx, None, now, &prepared)?;
        tx.commit()
    };
    write(conn).map_err(StoreError::sqlite(format!("storing action {}", action.id)))
}

/// Sets the outcome of the action `id`, and what a responder sent and got
/// back; whether the action was known.
pub(crate) fn update(
    conn: &Connection,
    id: &str,
    outcome: &str,
    detail: &str,
    response: Option<&serde_json::Value>,
) -> Result<bool, StoreError> {
    let context = format!("updating action {id}");
    let sqlite = StoreError::sqlite_at(&context);
    let body: Option<String> = conn
        .query_row("SELECT body FROM actions WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()
        .map_err(&sqlite)?;
    let Some(body) = body else {
        return Ok(false);
    };
    let mut action: ActionRecord =
        serde_json::from_str(&body).map_err(|source| StoreError::Invalid {
            what: format!("stored action {id}"),
            reason: source.to_string(),
        })?;
    action.outcome = outcome.to_owned();
    action.detail = detail.to_owned();
    let body = serde_json::to_string(&action).map_err(|source| StoreError::Invalid {
        what: format!("action {id}"),
        reason: source.to_string(),
    })?;
    let response = response.map(ToString::to_string);
    conn.execute(
        "UPDATE actions SET outcome = ?2, body = ?3, response = coalesce(?4, response), updated_at = ?5
         WHERE id = ?1",
        params![id, outcome, body, response, chrono::Utc::now().timestamp_micros()],
    )
    .map_err(sqlite)?;
    Ok(true)
}

fn micros(at: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(at).unwrap_or_default()
}

/// A row of `actions`: seq, at, updated_at, event, body, response.
type ActionRow = (i64, i64, i64, Option<Vec<u8>>, String, Option<String>);

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

/// A page of actions matching `q`, newest first.
pub(crate) fn query(conn: &Connection, q: &ActionQuery) -> Result<Vec<StoredAction>, StoreError> {
    let limit = q.limit.clamp(1, MAX_ACTIONS);
    let sqlite = StoreError::sqlite_at("reading actions");
    let mut statement = conn
        .prepare_cached(
            "SELECT seq, at, updated_at, event, body, response FROM actions
             WHERE (?1 IS NULL OR playbook = ?1)
               AND (?2 IS NULL OR target = ?2)
               AND (?3 IS NULL OR monitor = ?3)
               AND (?4 IS NULL OR seq < ?4)
             ORDER BY seq DESC LIMIT ?5",
        )
        .map_err(&sqlite)?;
    let rows = statement
        .query_map(
            params![
                q.playbook,
                q.target,
                q.monitor,
                q.before,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            row,
        )
        .map_err(&sqlite)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(&sqlite)?;
    rows.into_iter()
        .map(|(seq, at, updated_at, event, body, response)| {
            let action: ActionRecord =
                serde_json::from_str(&body).map_err(|source| StoreError::Invalid {
                    what: format!("stored action {seq}"),
                    reason: source.to_string(),
                })?;
            let event = event
                .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
                .map(|bytes| uuid::Uuid::from_bytes(bytes).to_string());
            let response = response.and_then(|text| serde_json::from_str(&text).ok());
            Ok(StoredAction {
                seq,
                at: micros(at),
                updated_at: micros(updated_at),
                event,
                action,
                response,
            })
        })
        .collect()
}

/// How many actions each playbook took, by mode and outcome.
pub(crate) fn counts(conn: &Connection) -> Result<Vec<ActionCount>, StoreError> {
    let sqlite = StoreError::sqlite_at("counting actions");
    conn.prepare_cached(
        "SELECT playbook, monitor, outcome, count(*) FROM actions
         GROUP BY playbook, monitor, outcome ORDER BY playbook, monitor, outcome",
    )
    .map_err(&sqlite)?
    .query_map([], |row| {
        Ok(ActionCount {
            playbook: row.get(0)?,
            monitor: row.get(1)?,
            outcome: row.get(2)?,
            count: row.get::<_, i64>(3)?.try_into().unwrap_or(0),
        })
    })
    .map_err(&sqlite)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(sqlite)
}
