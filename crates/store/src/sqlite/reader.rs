//! Reads: a small pool of read-only connections used from blocking threads, and the queries
//! that run on them.
//!
//! Every read runs in its own transaction. Under WAL that pins one committed state for all of
//! its statements, so a list and its `remaining` count, or a replay chunk and the revisions it
//! is checked against, always agree with each other.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{Connection, Transaction, params};
use tokio::sync::Semaphore;

use super::schema::{open_reader, sqlite_error};
use crate::{EventKind, KeyValue, ListOptions, ListResult, Revision, StoreError, WatchEvent, rules};

/// Read-only connections shared by all reads; at most `size` reads run at once.
pub(super) struct ReadPool {
    path: PathBuf,
    label: String,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    closed: AtomicBool,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, label: String, size: usize) -> Self {
        Self {
            path,
            label,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `read` on a consistent snapshot, on a blocking thread so SQLite never stalls the
    /// async runtime. Waiting for a free connection is async, so a burst of reads queues
    /// without tying up blocking threads.
    pub(super) async fn read<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshot<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = match pool.take_idle() {
                Some(conn) => conn,
                None => open_reader(&pool.path, &pool.label)?,
            };
            let result = Snapshot::begin(&mut conn, &pool.label).and_then(|snapshot| read(&snapshot));
            pool.put_back(conn);
            result
        });
        match task.await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Closes the idle connections and any returned later, so the writer is the last
    /// connection and its close checkpoints the WAL into the main file.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn put_back(&self, conn: Connection) {
        if !self.closed.load(Ordering::Acquire) {
            self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        }
    }
}

/// One read transaction and the store's revisions as of it.
pub(super) struct Snapshot<'c> {
    tx: Transaction<'c>,
    label: &'c str,
    pub(super) revision: Revision,
    pub(super) compacted: Revision,
}

impl<'c> Snapshot<'c> {
    fn begin(conn: &'c mut Connection, label: &'c str) -> Result<Self, StoreError> {
        let err = sqlite_error(label);
        let tx = conn.transaction().map_err(&err)?;
        // The first read of a deferred transaction fixes the snapshot the later ones see.
        let (revision, compacted) = tx
            .prepare_cached("SELECT revision, compacted FROM meta WHERE id = 1")
            .and_then(|mut stmt| stmt.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
            .map_err(&err)?;
        Ok(Self { tx, label, revision, compacted })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        sqlite_error(self.label)
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut stmt =
            self.tx.prepare_cached("SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1").map_err(self.err())?;
        let mut rows = stmt.query([key]).map_err(self.err())?;
        let Some(row) = rows.next().map_err(self.err())? else {
            return Ok(None);
        };
        let value: Vec<u8> = row.get(0).map_err(self.err())?;
        Ok(Some(KeyValue {
            key: key.to_owned(),
            value: Bytes::from(value),
            create_revision: row.get(1).map_err(self.err())?,
            mod_revision: row.get(2).map_err(self.err())?,
        }))
    }

    pub(super) fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let count: i64 = self
            .tx
            .prepare_cached("SELECT count(*) FROM kv WHERE key >= ?1 AND key < ?2")
            .and_then(|mut stmt| stmt.query_row(params![prefix, prefix_end(prefix)], |r| r.get(0)))
            .map_err(self.err())?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    pub(super) fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError> {
        let revision = rules::read_revision(opts.revision, self.revision, self.compacted)?;
        let start = match opts.start_key.as_deref() {
            Some(start) if start > prefix => start,
            _ => prefix,
        };
        let end = prefix_end(prefix);
        // SQLite reads a negative LIMIT as "no limit".
        let limit = if opts.limit == 0 { -1 } else { i64::try_from(opts.limit).unwrap_or(i64::MAX) };
        let latest = revision == self.revision;

        let (items_sql, remaining_sql) = if latest {
            (
                "SELECT key, value, create_rev, mod_rev FROM kv
                 WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
                "SELECT count(*) FROM kv WHERE key > ?1 AND key < ?2",
            )
        } else {
            // Each key's newest row at or below the revision; SQLite fills the bare columns
            // from the row holding MAX(rev). A deletion there means the key was absent.
            (
                "SELECT key, value, create_rev, rev FROM (
                     SELECT key, value, create_rev, deleted, MAX(rev) AS rev FROM log
                     WHERE key >= ?1 AND key < ?2 AND rev <= ?4 GROUP BY key
                 ) WHERE deleted = 0 ORDER BY key LIMIT ?3",
                "SELECT count(*) FROM (
                     SELECT deleted, MAX(rev) FROM log
                     WHERE key > ?1 AND key < ?2 AND rev <= ?3 GROUP BY key
                 ) WHERE deleted = 0",
            )
        };

        let mut stmt = self.tx.prepare_cached(items_sql).map_err(self.err())?;
        let rows = if latest {
            stmt.query(params![start, end, limit])
        } else {
            stmt.query(params![start, end, limit, revision])
        };
        let mut rows = rows.map_err(self.err())?;
        let mut items = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            items.push(key_value(row).map_err(self.err())?);
        }
        drop(rows);

        let remaining = match items.last() {
            Some(last) if opts.limit > 0 && items.len() == opts.limit => {
                let mut stmt = self.tx.prepare_cached(remaining_sql).map_err(self.err())?;
                let count: i64 = if latest {
                    stmt.query_row(params![last.key, end], |r| r.get(0))
                } else {
                    stmt.query_row(params![last.key, end, revision], |r| r.get(0))
                }
                .map_err(self.err())?;
                usize::try_from(count).unwrap_or(0)
            }
            _ => 0,
        };
        Ok(ListResult { items, revision, more: remaining > 0, remaining })
    }

    /// Up to `limit` changes under `prefix` with revisions in `(after, upto]`, in order.
    pub(super) fn replay(
        &self,
        prefix: &str,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        // The unary `+` keeps SQLite off the key index: walking the log in revision order costs
        // only the history after `after` and needs no sort, where a key-index plan would sort
        // every matching row for each chunk.
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT l.rev, l.key, l.value, l.create_rev, l.deleted,
                        p.rev, p.value, p.create_rev
                 FROM log AS l LEFT JOIN log AS p ON p.rev = l.prev_rev
                 WHERE l.rev > ?1 AND l.rev <= ?2 AND +l.key >= ?3 AND +l.key < ?4
                 ORDER BY l.rev LIMIT ?5",
            )
            .map_err(self.err())?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![after, upto, prefix, prefix_end(prefix), limit]).map_err(self.err())?;
        let mut events = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            let row = LogRow::read(row).map_err(self.err())?;
            events.push(row.into_event(self.label)?);
        }
        Ok(events)
    }
}

fn key_value(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    let value: Vec<u8> = row.get(1)?;
    Ok(KeyValue {
        key: row.get(0)?,
        value: Bytes::from(value),
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
    })
}

/// One history row joined with the version it replaced.
struct LogRow {
    revision: Revision,
    key: String,
    value: Option<Vec<u8>>,
    create_revision: Revision,
    deleted: bool,
    prev_revision: Option<Revision>,
    prev_value: Option<Vec<u8>>,
    prev_create_revision: Option<Revision>,
}

impl LogRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            revision: row.get(0)?,
            key: row.get(1)?,
            value: row.get(2)?,
            create_revision: row.get(3)?,
            deleted: row.get(4)?,
            prev_revision: row.get(5)?,
            prev_value: row.get(6)?,
            prev_create_revision: row.get(7)?,
        })
    }

    fn into_event(self, label: &str) -> Result<WatchEvent, StoreError> {
        let prev = match (self.prev_revision, self.prev_value, self.prev_create_revision) {
            (Some(mod_revision), Some(value), Some(create_revision)) => {
                Some(KeyValue { key: self.key.clone(), value: Bytes::from(value), create_revision, mod_revision })
            }
            _ => None,
        };
        let broken = |what: &str| StoreError::Corrupt {
            path: label.to_owned(),
            reason: format!("history row {} for key {} has no {what}", self.revision, self.key),
        };
        if self.deleted {
            // A deletion reports the value it removed, which lives in the replaced version.
            let removed = prev.clone().ok_or_else(|| broken("previous version"))?;
            let kv = KeyValue { mod_revision: self.revision, ..removed };
            return Ok(WatchEvent { kind: EventKind::Delete, kv, prev });
        }
        let value = self.value.ok_or_else(|| broken("value"))?;
        let kv = KeyValue {
            key: self.key,
            value: Bytes::from(value),
            create_revision: self.create_revision,
            mod_revision: self.revision,
        };
        Ok(WatchEvent { kind: EventKind::Put, kv, prev })
    }
}

/// The exclusive upper bound of the keys that start with `prefix`, so range queries can use the
/// key index. SQLite compares text bytewise and UTF-8 preserves code point order, so the bound
/// is `prefix` with its last character advanced by one. With no such character (an empty
/// prefix, or one of only `char::MAX`) there is no text bound, and an empty blob serves: SQLite
/// orders every text value before every blob.
fn prefix_end(prefix: &str) -> Value {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Value::Text(chars.into_iter().collect());
        }
    }
    Value::Blob(Vec::new())
}

#[cfg(test)]
mod tests {
    use rusqlite::types::Value;

    use super::prefix_end;

    #[test]
    fn prefix_end_advances_the_last_character() {
        assert_eq!(prefix_end("/registry/pods/"), Value::Text("/registry/pods0".into()));
        assert_eq!(prefix_end("a\u{D7FF}"), Value::Text("a\u{E000}".into()));
        assert_eq!(prefix_end("a\u{10FFFF}"), Value::Text("b".into()));
    }

    #[test]
    fn prefix_end_of_empty_prefix_sorts_after_all_text() {
        assert_eq!(prefix_end(""), Value::Blob(Vec::new()));
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let after: bool = conn
            .query_row("SELECT ?1 < ?2", rusqlite::params!["\u{10FFFF}\u{10FFFF}", prefix_end("")], |r| r.get(0))
            .unwrap();
        assert!(after);
    }
}
