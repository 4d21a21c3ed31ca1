//! The database file: connection settings and the schema's migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::StoreError;
use crate::store::Durability;

/// How long a connection waits for another one's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The migrations, in order: step `i` takes the database to version `i + 1`.
/// Steps are only ever appended; a released step is never edited.
pub(crate) const MIGRATIONS: &[&str] = &[
    // Version 1. `seq` is the rowid, so every secondary index ends in it and
    // serves the `(observed_at, seq)` order of queries without a sort.
    //
    // The identifiers an event names (its actor, chain root, run and
    // targets) are indexed by the postings table, written by the writer in
    // sorted runs of one segment row per identifier (see `postings.rs`),
    // rather than by b-tree indexes whose entries would land on random
    // leaves. Identifiers are stored as their 64-bit hash (`identifier_hash`),
    // computed by the callers' threads: no table maps them, so a new
    // identifier costs no write of its own. Queries check every match
    // against the event itself, so a collision costs time, never a wrong
    // answer. `kind` holds `kind_code`'s numbers, which are part of this
    // schema and never renumbered.
    //
    // `meta.postings_through` is the last sequence number whose postings are
    // all in the table.
    "CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        id          BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
        observed_at INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        kind        INTEGER NOT NULL,
        actor       INTEGER NOT NULL,
        chain_root  INTEGER,
        run_id      INTEGER,
        verdict     TEXT    NOT NULL,
        body        TEXT    NOT NULL,
        decision    TEXT
    ) STRICT;
    CREATE INDEX events_time ON events (observed_at);
    CREATE INDEX events_kind ON events (kind, observed_at);

    CREATE TABLE postings (
        field    INTEGER NOT NULL,
        key      INTEGER NOT NULL,
        run      INTEGER NOT NULL,
        first_at INTEGER NOT NULL,
        last_at  INTEGER NOT NULL,
        entries  BLOB    NOT NULL,
        PRIMARY KEY (field, key, run)
    ) STRICT;
    CREATE INDEX postings_run ON postings (run);

    CREATE TABLE meta (
        name  TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT;
    INSERT INTO meta (name, value) VALUES ('postings_through', 0);

    CREATE TABLE tokens (
        id         TEXT    PRIMARY KEY,
        name       TEXT,
        role       TEXT    NOT NULL,
        hash       BLOB    NOT NULL UNIQUE CHECK (length(hash) = 32),
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;",
    // Version 2. How each event's chain is known (`attribution_code`), so
    // the events nothing explains can be listed. An index led by a column
    // of four values grows at four points, each in time order: appends,
    // not random inserts. Events stored before it get theirs from their
    // bodies.
    "ALTER TABLE events ADD COLUMN attribution INTEGER;
    UPDATE events SET attribution = CASE json_extract(body, '$.attribution.method')
        WHEN 'authenticated' THEN 1
        WHEN 'bound' THEN 2
        WHEN 'correlated' THEN 3
        ELSE 4
    END;
    CREATE INDEX events_attribution ON events (attribution, observed_at);",
    // Version 3: findings, each written with the event that completed it.
    // `finding_events` links a finding to every event it rests on (its
    // repeats included); `severity` holds Sigma's levels as 1..=5.
    "CREATE TABLE findings (
        seq        INTEGER PRIMARY KEY,
        id         BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
        created_at INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        rule       TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        severity   INTEGER NOT NULL,
        run        TEXT,
        root       TEXT,
        repeats    INTEGER NOT NULL DEFAULT 0,
        body       TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX findings_rule ON findings (rule, seq);
    CREATE INDEX findings_run ON findings (run, seq);
    CREATE INDEX findings_root ON findings (root, seq);
    CREATE TABLE finding_events (
        finding BLOB NOT NULL,
        event   BLOB NOT NULL,
        PRIMARY KEY (finding, event)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX finding_events_event ON finding_events (event);",
    // Version 4: state the detections keep across restarts (learned
    // baselines), as JSON by name (`baseline:<agent type>`).
    "CREATE TABLE detection_state (
        name       TEXT    PRIMARY KEY,
        body       TEXT    NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;",
    // Version 5: what playbooks did (or, in monitor mode, would have
    // done), each written with the event that triggered it; containment
    // applied or lifted by hand has no event. `response` is what a
    // responder sent and got back, set when it finished.
    "CREATE TABLE actions (
        seq        INTEGER PRIMARY KEY,
        id         TEXT    NOT NULL UNIQUE,
        at         INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        playbook   TEXT    NOT NULL,
        action     TEXT    NOT NULL,
        target     TEXT    NOT NULL,
        monitor    INTEGER NOT NULL,
        outcome    TEXT    NOT NULL,
        event      BLOB,
        body       TEXT    NOT NULL,
        response   TEXT
    ) STRICT;
    CREATE INDEX actions_playbook ON actions (playbook, seq);
    CREATE INDEX actions_target ON actions (target, seq);",
];

/// The hash an identifier is stored and indexed under: the first 64 bits of
/// its XXH3, a specified algorithm, so every build of every version computes
/// the same. Part of the schema.
pub(crate) fn identifier_hash(identifier: &str) -> i64 {
    i64::from_ne_bytes(xxhash_rust::xxh3::xxh3_64(identifier.as_bytes()).to_ne_bytes())
}

/// The number `events.kind` stores for each kind. Part of the schema:
/// numbers are only ever added.
pub(crate) fn kind_code(kind: custody_event::EventKind) -> i64 {
    use custody_event::EventKind;
    match kind {
        EventKind::ToolCall => 1,
        EventKind::McpRequest => 2,
        EventKind::DataAccess => 3,
        EventKind::AgentSpawn => 4,
        EventKind::CredentialUse => 5,
        EventKind::Authentication => 6,
        EventKind::PrivilegeChange => 7,
        EventKind::Other => 8,
    }
}

/// The number an attribution method is stored as; part of the schema,
/// never renumbered.
pub(crate) fn attribution_code(method: custody_event::AttributionMethod) -> i64 {
    use custody_event::AttributionMethod;
    match method {
        AttributionMethod::Authenticated => 1,
        AttributionMethod::Bound => 2,
        AttributionMethod::Correlated => 3,
        AttributionMethod::Unattributed => 4,
    }
}

/// The newest schema version this build knows.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens a read-write connection with the store's settings and brings the
/// schema up to date.
pub(crate) fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let mut conn = connect(path, durability)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Opens a read-write connection with the store's settings, without
/// migrating: for short-lived writers once the store is open.
pub(crate) fn connect(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // 16 KiB pages take about four events' bodies each and hold four times
    // the index entries of the 4 KiB default, so a group of inserts writes
    // fewer, fuller pages. It only takes effect on a new, empty database,
    // which is why it comes before WAL mode is set.
    conn.pragma_update(None, "page_size", 16 * 1024)
        .map_err(open_error)?;
    // WAL lets readers run beside the writer, and a commit is one append
    // (and, with `synchronous=FULL`, one fsync) of the log.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::JournalMode {
            path: path.to_owned(),
            mode,
        });
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_error)?;
    // A large group grows the log; truncate it back after checkpoints rather
    // than keep its high-water mark on disk.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(open_error)?;
    // Every event touches half a dozen index leaves spread over the file. With
    // SQLite's default 2 MiB page cache a group of a thousand events spills
    // dirty pages mid-transaction and re-reads index pages it just wrote;
    // 128 MiB keeps the hot leaves of every index in memory.
    conn.pragma_update(None, "cache_size", -128 * 1024)
        .map_err(open_error)?;
    // The store's checkpointer thread copies the log into the database in the
    // background (see `writer.rs`). This is the backstop: a connection that
    // commits past 256 MiB of log (16384 pages of 16 KiB) checkpoints what is
    // left itself, after which the log starts over from its beginning.
    conn.pragma_update(None, "wal_autocheckpoint", 4 * 1024)
        .map_err(open_error)?;
    conn.pragma_update(None, "temp_store", "memory")
        .map_err(open_error)?;
    Ok(conn)
}

/// Opens a read-only connection to a database the store has already set up.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // Queries come in a few dozen shapes (one per combination of filters);
    // keep them all prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Applies the missing migrations in one immediate transaction, so two
/// processes opening the same new database cannot both migrate it, and a
/// failure leaves the previous version whole.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_error)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error)?;
    if found > VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: VERSION,
        });
    }
    for (version, step) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let migrate_error = |source| StoreError::Migrate {
            path: path.to_owned(),
            version,
            source,
        };
        tx.execute_batch(step).map_err(migrate_error)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migrate_error)?;
    }
    tx.commit().map_err(open_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custody.db");
        for _ in 0..3 {
            drop(open(&path, Durability::Full).unwrap());
            assert_eq!(user_version(&path), VERSION);
        }
        let conn = open(&path, Durability::Full).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tables,
            [
                "actions",
                "detection_state",
                "events",
                "finding_events",
                "findings",
                "meta",
                "postings",
                "tokens"
            ]
        );
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn connections_follow_the_durability_option() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custody.db");
        let check = |durability, expected: [i64; 3]| {
            let conn = open(&path, durability).unwrap();
            let pragma = |name| {
                conn.pragma_query_value(None, name, |row| row.get(0))
                    .unwrap()
            };
            let found: [i64; 3] = [
                pragma("synchronous"),
                pragma("busy_timeout"),
                pragma("foreign_keys"),
            ];
            assert_eq!(found, expected, "{durability:?}");
        };
        check(Durability::Full, [2, 5000, 1]);
        check(Durability::Normal, [1, 5000, 1]);
    }

    #[test]
    fn version_2_takes_each_stored_event_s_attribution_from_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custody.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            for (seq, method) in [(1, "bound"), (2, "unattributed"), (3, "authenticated")] {
                let body = format!(r#"{{"attribution":{{"method":"{method}"}}}}"#);
                tx.execute(
                    "INSERT INTO events (seq, id, observed_at, received_at, kind, actor, verdict, body)
                     VALUES (?1, randomblob(16), ?1, ?1, 1, 7, 'allow', ?2)",
                    rusqlite::params![seq, body],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let conn = open(&path, Durability::Full).unwrap();
        assert_eq!(user_version(&path), VERSION);
        let codes: Vec<i64> = conn
            .prepare("SELECT attribution FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(codes, [2, 4, 1]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custody.db");
        drop(open(&path, Durability::Full).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let error = open(&path, Durability::Full).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "database `{}` has schema version {}, this build knows up to {VERSION}",
                path.display(),
                VERSION + 1
            )
        );
        // Refusing must not have touched the database.
        assert_eq!(user_version(&path), VERSION + 1);
    }
}
