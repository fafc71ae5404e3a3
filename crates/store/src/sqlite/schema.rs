//! Opening the database file: refusing damaged or foreign files, setting durability, creating
//! the tables of a new store and reading back where an existing one left off.
//!
//! Tables:
//! - `kv`: the current value of every live key, so latest reads never touch history.
//! - `log`: one row per write, keyed by revision: the key, its new value (NULL for a deletion),
//!   its create revision and `prev_rev`, the revision of the version it replaced. Reads at an old
//!   revision pick each key's newest row at or below it through the `(key, rev)` index; watch
//!   replays scan it by revision and find previous values by joining on `prev_rev`.
//! - `meta`: a single row with the current and compacted revisions, written in the same
//!   transaction as the changes, so both survive a restart even when the newest write was a
//!   deletion that left no key behind.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction};

use crate::{Revision, StoreError};

/// Marks a file as a Tugboat store ("TUGB"), so a foreign SQLite file is refused, not adopted.
const APPLICATION_ID: i32 = 0x5455_4742;
/// The layout below; bumped (with a migration) whenever it changes.
const SCHEMA_VERSION: i32 = 1;

/// How long a connection waits for a lock held by another connection before failing. Only
/// WAL recovery and checkpoints take such locks, and briefly.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const CREATE_TABLES: &str = "
    CREATE TABLE kv (
        key TEXT NOT NULL PRIMARY KEY,
        value BLOB NOT NULL,
        create_rev INTEGER NOT NULL,
        mod_rev INTEGER NOT NULL
    );
    CREATE TABLE log (
        rev INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        value BLOB,
        create_rev INTEGER NOT NULL,
        prev_rev INTEGER,
        deleted INTEGER NOT NULL
    );
    CREATE INDEX log_by_key ON log (key, rev);
    CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        compacted INTEGER NOT NULL
    );
    INSERT INTO meta (id, revision, compacted) VALUES (1, 0, 0);
";

/// Where an opened store stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub(super) revision: Revision,
    pub(super) compacted: Revision,
}

/// Maps an error from SQLite about the file at `label`; damage becomes [`StoreError::Corrupt`].
pub(super) fn sqlite_error(label: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: label.to_owned(), reason: source.to_string() }
        }
        _ => StoreError::Sqlite { path: label.to_owned(), source },
    }
}

/// Opens (creating if absent) the store's file for writing and checks it can be trusted.
pub(super) fn open_writer(path: &Path, label: &str) -> Result<(Connection, Meta), StoreError> {
    let err = sqlite_error(label);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(&err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    keep_plans(&conn).map_err(&err)?;

    // Check before anything writes: a damaged file must stop the server, not be built upon.
    quick_check(&conn, label)?;
    let fresh = identify(&conn, label)?;

    // Durability: every commit waits for the WAL to reach the disk, so an acknowledged write
    // survives a crash or power loss. WAL lets readers proceed while the writer commits.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0)).map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: label.to_owned(),
            reason: format!("cannot switch to write-ahead logging (journal mode is {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(&err)?;

    if fresh {
        let tx = conn.transaction().map_err(&err)?;
        create_schema(&tx).map_err(&err)?;
        tx.commit().map_err(&err)?;
    }
    let meta = conn
        .query_row("SELECT revision, compacted FROM meta WHERE id = 1", [], |row| {
            Ok(Meta { revision: row.get(0)?, compacted: row.get(1)? })
        })
        .map_err(&err)?;
    Ok((conn, meta))
}

/// Opens a read-only connection to a store that the writer has already opened and checked.
pub(super) fn open_reader(path: &Path, label: &str) -> Result<Connection, StoreError> {
    let err = sqlite_error(label);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(&err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    keep_plans(&conn).map_err(&err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee. Without it, SQLite (3.50 and later)
/// plans `LIMIT ?` with the value bound, and so compiles a cached statement again whenever a
/// new value is bound to it: every list with another limit than the last paid a full parse
/// and plan. The store's queries have one good plan whatever the values.
fn keep_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map(drop)
}

/// Runs SQLite's structural check of every page; anything but "ok" refuses the file.
fn quick_check(conn: &Connection, label: &str) -> Result<(), StoreError> {
    let err = sqlite_error(label);
    let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(&err)?;
    let findings: Vec<String> =
        stmt.query_map([], |row| row.get(0)).map_err(&err)?.collect::<Result<_, _>>().map_err(&err)?;
    match findings.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(StoreError::Corrupt {
            path: label.to_owned(),
            reason: format!("integrity check failed: {}", findings.join("; ")),
        }),
    }
}

/// Tells a new empty file (`true`) from an existing Tugboat store (`false`); refuses the rest.
fn identify(conn: &Connection, label: &str) -> Result<bool, StoreError> {
    let err = sqlite_error(label);
    let application_id: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0)).map_err(&err)?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(&err)?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0)).map_err(&err)?;
    let refuse = |reason: String| Err(StoreError::Corrupt { path: label.to_owned(), reason });
    match (application_id, objects) {
        (0, 0) => Ok(true),
        (APPLICATION_ID, _) if version == SCHEMA_VERSION => Ok(false),
        (APPLICATION_ID, _) => {
            refuse(format!("schema version {version} is not the supported version {SCHEMA_VERSION}"))
        }
        _ => refuse(format!("not a Tugboat store (application id {application_id:#x}, {objects} schema objects)")),
    }
}

fn create_schema(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(CREATE_TABLES)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}
