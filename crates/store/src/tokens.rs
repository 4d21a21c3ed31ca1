//! API tokens: stored by the hash of their secret, never the secret itself.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// A token to store. Generating the secret and hashing it is the caller's
/// job; the store only ever sees the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The token's public id.
    pub id: String,
    /// A label for people.
    pub name: Option<String>,
    /// The role the token grants.
    pub role: String,
    /// The hash of the token's secret.
    pub hash: [u8; 32],
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's public id.
    pub id: String,
    /// A label for people.
    pub name: Option<String>,
    /// The role the token grants.
    pub role: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked token must be refused.
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, role, created_at, revoked_at";

pub(crate) fn insert(conn: &Connection, token: &NewToken) -> rusqlite::Result<TokenRecord> {
    let created_at = now();
    conn.execute(
        "INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![token.id, token.name, token.role, token.hash, created_at],
    )?;
    Ok(TokenRecord {
        id: token.id.clone(),
        name: token.name.clone(),
        role: token.role.clone(),
        created_at: time(created_at),
        revoked_at: None,
    })
}

pub(crate) fn by_hash(conn: &Connection, hash: &[u8; 32]) -> rusqlite::Result<Option<TokenRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE hash = ?1"))?
        .query_row([hash], record)
        .optional()
}

pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<TokenRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"
    ))?
    .query_map([], record)?
    .collect()
}

/// Revokes a token that is not yet revoked; false when there is none.
pub(crate) fn revoke(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        params![now(), id],
    )?;
    Ok(changed == 1)
}

fn record(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        created_at: time(row.get(3)?),
        revoked_at: row.get::<_, Option<i64>>(4)?.map(time),
    })
}

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

/// Unix microseconds as a time; every value the store writes is in range.
fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
