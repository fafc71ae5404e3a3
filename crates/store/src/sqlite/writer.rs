//! The single writer: one thread owns the write connection and commits writes in groups.
//!
//! A commit costs one fsync, whatever it holds, so the writer takes every request that is
//! waiting when it wakes, applies them in one transaction and commits once (group commit).
//! Each request is still checked on its own against the state its predecessors in the group
//! left, inside its own savepoint, so one failing request never undoes another. Only after the
//! commit is durable are the callers answered and then the changes published to watchers, in
//! revision order; if the commit fails, every request of the group fails and nothing is
//! published.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::schema::sqlite_error;
use crate::watch::EventSender;
use crate::{EventKind, KeyValue, Revision, StoreError, WatchEvent, rules};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write waiting for the writer, with where to send its answer.
pub(super) enum Request {
    Create { key: String, value: Bytes, reply: Reply<Revision> },
    Update { key: String, value: Bytes, expected: Revision, reply: Reply<Revision> },
    Delete { key: String, expected: Option<Revision>, reply: Reply<KeyValue> },
    Compact { revision: Revision, reply: Reply<()> },
}

impl Request {
    fn fail(self, error: StoreError) {
        // A caller that stopped waiting no longer needs the answer.
        match self {
            Request::Create { reply, .. } | Request::Update { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::Delete { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::Compact { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The revisions the writer has made durable, readable without asking it.
#[derive(Debug, Default)]
pub(super) struct Committed {
    pub(super) revision: AtomicI64,
    pub(super) compacted: AtomicI64,
}

/// The store's handle on the writer thread.
pub(super) struct WriterHandle {
    requests: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

/// Everything the writer thread starts with.
pub(super) struct WriterSetup {
    pub(super) conn: Connection,
    pub(super) label: String,
    pub(super) revision: Revision,
    pub(super) compacted: Revision,
    pub(super) committed: Arc<Committed>,
    pub(super) events: EventSender,
    pub(super) max_batch: usize,
}

impl WriterHandle {
    pub(super) fn spawn(setup: WriterSetup) -> Result<Self, StoreError> {
        let (requests, inbox) = mpsc::channel();
        let label = setup.label.clone();
        let writer = Writer {
            conn: setup.conn,
            label: setup.label,
            revision: setup.revision,
            compacted: setup.compacted,
            committed: setup.committed,
            events: setup.events,
            max_batch: setup.max_batch.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("tug-store-writer".into())
            .spawn(move || writer.run(inbox))
            .map_err(|source| StoreError::WriterThread { path: label, source })?;
        Ok(Self { requests, thread })
    }

    pub(super) fn send(&self, request: Request) -> Result<(), StoreError> {
        self.requests.send(request).map_err(|_| StoreError::Closed)
    }

    /// Lets the writer finish the group in hand, then waits for it to close the database.
    pub(super) fn stop(self) {
        drop(self.requests);
        if self.thread.join().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

struct Writer {
    conn: Connection,
    label: String,
    /// The newest committed revision and compaction; a group works on copies until it commits.
    revision: Revision,
    compacted: Revision,
    committed: Arc<Committed>,
    events: EventSender,
    max_batch: usize,
}

/// What applying one request produced, kept aside until the group commits.
enum Answer {
    Revision(Reply<Revision>, Result<Revision, StoreError>),
    Deleted(Reply<KeyValue>, Result<KeyValue, StoreError>),
    Compacted(Reply<()>, Result<(), StoreError>),
}

impl Answer {
    fn send(self) {
        // A caller that stopped waiting no longer needs the answer.
        match self {
            Answer::Revision(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Deleted(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Compacted(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }

    fn failed_with(self, error: StoreError) -> Answer {
        match self {
            Answer::Revision(reply, _) => Answer::Revision(reply, Err(error)),
            Answer::Deleted(reply, _) => Answer::Deleted(reply, Err(error)),
            Answer::Compacted(reply, _) => Answer::Compacted(reply, Err(error)),
        }
    }
}

/// A request's effect, applied to the group's state once its savepoint is released.
struct Applied<T> {
    answer: T,
    event: Option<WatchEvent>,
    compacted: Option<Revision>,
}

impl<T> Applied<T> {
    fn answer(answer: T) -> Self {
        Self { answer, event: None, compacted: None }
    }
}

/// The state of a group being applied: revisions as its requests so far leave them.
struct Group {
    revision: Revision,
    compacted: Revision,
    events: Vec<WatchEvent>,
}

impl Writer {
    fn run(mut self, inbox: mpsc::Receiver<Request>) {
        while let Ok(first) = inbox.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match inbox.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.write_group(batch);
        }
        // The store is gone. Fold the WAL back into the main file so the database is one
        // self-contained file at rest; a reader still open (a lingering watch) may keep part of
        // it, which is harmless.
        if let Err(error) = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
            tracing::warn!(path = %self.label, %error, "checkpoint at close failed");
        }
    }

    fn write_group(&mut self, batch: Vec<Request>) {
        let size = batch.len();
        let mut group = Group { revision: self.revision, compacted: self.compacted, events: Vec::new() };
        let mut tx = match self.conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(source) => {
                let source = Arc::new(source);
                for request in batch {
                    request.fail(commit_failed(&self.label, &source));
                }
                return;
            }
        };
        let answers: Vec<Answer> = batch.into_iter().map(|r| apply(&mut tx, &self.label, &mut group, r)).collect();

        let changed = group.revision != self.revision || group.compacted != self.compacted;
        let committed = if changed {
            tx.execute(
                "UPDATE meta SET revision = ?1, compacted = ?2 WHERE id = 1",
                params![group.revision, group.compacted],
            )
            .and_then(|_| tx.commit())
        } else {
            // Nothing succeeded; ending the empty transaction writes nothing.
            tx.commit()
        };

        if let Err(source) = committed {
            tracing::error!(path = %self.label, error = %source, size, "store commit failed");
            let source = Arc::new(source);
            for answer in answers {
                answer.failed_with(commit_failed(&self.label, &source)).send();
            }
            return;
        }
        tracing::trace!(size, revision = group.revision, "store group committed");

        self.revision = group.revision;
        self.compacted = group.compacted;
        // Publish the revisions before the events: a watcher that reads the current revision
        // as "now" must not find it older than an event it already missed.
        self.committed.revision.store(self.revision, Ordering::Release);
        self.committed.compacted.store(self.compacted, Ordering::Release);
        // Answer before publishing: waking the watchers queues their work on the same
        // runtime, and a caller's response should not wait behind it. A watch that starts from
        // the answered revision is not affected, as it skips changes up to where it starts.
        for answer in answers {
            answer.send();
        }
        for event in group.events {
            // No receivers is not an error: nobody is watching.
            self.events.send(Arc::new(event));
        }
    }
}

fn commit_failed(label: &str, source: &Arc<rusqlite::Error>) -> StoreError {
    StoreError::CommitFailed { path: label.to_owned(), source: Arc::clone(source) }
}

/// Applies one request inside its own savepoint, so its failure undoes only its own changes.
fn apply(tx: &mut Transaction<'_>, label: &str, group: &mut Group, request: Request) -> Answer {
    let next = group.revision + 1;
    match request {
        Request::Create { key, value, reply } => {
            let result = isolated(tx, label, group, |conn| create(conn, next, key, value));
            Answer::Revision(reply, result)
        }
        Request::Update { key, value, expected, reply } => {
            let result = isolated(tx, label, group, |conn| update(conn, next, key, value, expected));
            Answer::Revision(reply, result)
        }
        Request::Delete { key, expected, reply } => {
            let result = isolated(tx, label, group, |conn| delete(conn, next, key, expected));
            Answer::Deleted(reply, result)
        }
        Request::Compact { revision, reply } => {
            let (current, compacted) = (group.revision, group.compacted);
            let result = isolated(tx, label, group, |conn| compact(conn, current, compacted, revision));
            Answer::Compacted(reply, result)
        }
    }
}

/// A failure inside one request: a broken rule for the caller, or SQLite failing.
enum OpError {
    Rule(StoreError),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for OpError {
    fn from(source: rusqlite::Error) -> Self {
        OpError::Sqlite(source)
    }
}

impl From<StoreError> for OpError {
    fn from(error: StoreError) -> Self {
        OpError::Rule(error)
    }
}

fn isolated<T>(
    tx: &mut Transaction<'_>,
    label: &str,
    group: &mut Group,
    op: impl FnOnce(&Connection) -> Result<Applied<T>, OpError>,
) -> Result<T, StoreError> {
    let err = sqlite_error(label);
    let savepoint = tx.savepoint().map_err(&err)?;
    // Dropping the savepoint on error rolls back whatever the request had written.
    let applied = op(&savepoint).map_err(|e| match e {
        OpError::Rule(error) => error,
        OpError::Sqlite(source) => err(source),
    })?;
    savepoint.commit().map_err(&err)?;
    if let Some(event) = applied.event {
        group.revision = event.revision();
        group.events.push(event);
    }
    if let Some(compacted) = applied.compacted {
        group.compacted = compacted;
    }
    Ok(applied.answer)
}

fn current(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    conn.prepare_cached("SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1")?
        .query_row([key], |row| {
            let value: Vec<u8> = row.get(0)?;
            Ok(KeyValue {
                key: key.to_owned(),
                value: Bytes::from(value),
                create_revision: row.get(1)?,
                mod_revision: row.get(2)?,
            })
        })
        .optional()
}

fn append_log(
    conn: &Connection,
    revision: Revision,
    key: &str,
    value: Option<&[u8]>,
    create_revision: Revision,
    prev_revision: Option<Revision>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO log (rev, key, value, create_rev, prev_rev, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![revision, key, value, create_revision, prev_revision, value.is_none()])?;
    Ok(())
}

fn create(conn: &Connection, revision: Revision, key: String, value: Bytes) -> Result<Applied<Revision>, OpError> {
    if current(conn, &key)?.is_some() {
        return Err(StoreError::AlreadyExists { key }.into());
    }
    conn.prepare_cached("INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)")?
        .execute(params![key, &value[..], revision])?;
    append_log(conn, revision, &key, Some(&value), revision, None)?;
    let kv = KeyValue { key, value, create_revision: revision, mod_revision: revision };
    let event = WatchEvent { kind: EventKind::Put, kv, prev: None };
    Ok(Applied { answer: revision, event: Some(event), compacted: None })
}

fn update(
    conn: &Connection,
    revision: Revision,
    key: String,
    value: Bytes,
    expected: Revision,
) -> Result<Applied<Revision>, OpError> {
    let found = current(conn, &key)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
    let prev = rules::check_expected(found, Some(expected))?;
    conn.prepare_cached("UPDATE kv SET value = ?2, mod_rev = ?3 WHERE key = ?1")?.execute(params![
        key,
        &value[..],
        revision
    ])?;
    append_log(conn, revision, &key, Some(&value), prev.create_revision, Some(prev.mod_revision))?;
    let kv = KeyValue { key, value, create_revision: prev.create_revision, mod_revision: revision };
    let event = WatchEvent { kind: EventKind::Put, kv, prev: Some(prev) };
    Ok(Applied { answer: revision, event: Some(event), compacted: None })
}

fn delete(
    conn: &Connection,
    revision: Revision,
    key: String,
    expected: Option<Revision>,
) -> Result<Applied<KeyValue>, OpError> {
    let found = current(conn, &key)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
    let prev = rules::check_expected(found, expected)?;
    conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute([&key])?;
    append_log(conn, revision, &key, None, prev.create_revision, Some(prev.mod_revision))?;
    let deleted = KeyValue { mod_revision: revision, ..prev.clone() };
    let event = WatchEvent { kind: EventKind::Delete, kv: deleted.clone(), prev: Some(prev) };
    Ok(Applied { answer: deleted, event: Some(event), compacted: None })
}

/// Deletes the history no read at `target` or later can need.
///
/// A row at or below `target` is needed only if it is its key's newest version there and not a
/// deletion. Every version that was replaced is some later row's `prev_rev`, so looking only at
/// the rows written since the last compaction finds all the newly obsolete ones, and the work
/// stays proportional to the writes since then rather than to the whole history.
fn compact(
    conn: &Connection,
    current: Revision,
    compacted: Revision,
    target: Revision,
) -> Result<Applied<()>, OpError> {
    if !rules::compaction_needed(target, current, compacted)? {
        return Ok(Applied::answer(()));
    }
    conn.prepare_cached(
        "DELETE FROM log WHERE rev IN (
             SELECT prev_rev FROM log
             WHERE rev > ?1 AND rev <= ?2 AND prev_rev IS NOT NULL)",
    )?
    .execute(params![compacted, target])?;
    conn.prepare_cached("DELETE FROM log WHERE rev > ?1 AND rev <= ?2 AND deleted = 1")?
        .execute(params![compacted, target])?;
    Ok(Applied { answer: (), event: None, compacted: Some(target) })
}
