//! The embedded default backend: one SQLite file in WAL mode.
//!
//! - Writes go to one writer thread ([`writer`]) that commits whatever is queued as one
//!   transaction, fsynced before anyone is answered (`synchronous=FULL`).
//! - Reads run on a small pool of read-only connections on blocking threads ([`reader`]), each
//!   in its own snapshot; WAL lets them proceed while the writer commits.
//! - Watches subscribe to the writer's live feed first, then replay history from the `log`
//!   table in chunks, then follow the feed (see `crate::watch`).
//!
//! The file layout is described in [`schema`]. One process should open a file at a time; the
//! binary guards its data directory.

mod reader;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::vec;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, stream};
use tokio::sync::oneshot;

use crate::watch::{self, EventSender};
use crate::{
    DEFAULT_WATCH_BUFFER, KeyValue, ListOptions, ListResult, ProgressWatchStream, Revision, Store, StoreError,
    WatchEvent, rules,
};
use reader::ReadPool;
use writer::{Committed, Request, WriterHandle, WriterSetup};

/// How many history rows a watch replay reads per query, bounding the memory a replay from far
/// back holds at once.
const REPLAY_CHUNK: usize = 256;

/// Tuning for [`SqliteStore::open_with`]; the defaults suit a small control plane.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Read-only connections, so at most this many reads run at once.
    pub readers: usize,
    /// Live events buffered per watcher before it gets [`StoreError::WatcherLagged`].
    pub watch_buffer: usize,
    /// The most writes committed in one transaction.
    pub max_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { readers: 4, watch_buffer: DEFAULT_WATCH_BUFFER, max_batch: 512 }
    }
}

/// The SQLite backend. Dropping it finishes the writes in hand and closes the database.
pub struct SqliteStore {
    readers: Arc<ReadPool>,
    writer: Option<WriterHandle>,
    events: EventSender,
    committed: Arc<Committed>,
}

impl SqliteStore {
    /// Opens the store at `path`, creating it if the file does not exist, with default options.
    ///
    /// Fails with [`StoreError::Corrupt`] if the file is damaged (every page is checked, which
    /// takes a moment on a large store) or is not a Tugboat store. Blocks while it checks: call
    /// it before serving, or from a blocking thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Like [`SqliteStore::open`], with explicit options.
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let label = path.display().to_string();
        let (conn, meta) = schema::open_writer(path, &label)?;
        tracing::info!(
            path = %label,
            revision = meta.revision,
            compacted = meta.compacted,
            "opened sqlite store"
        );
        let committed = Arc::new(Committed::default());
        committed.revision.store(meta.revision, Ordering::Release);
        committed.compacted.store(meta.compacted, Ordering::Release);
        let events = watch::EventHub::new(options.watch_buffer);
        let writer = WriterHandle::spawn(WriterSetup {
            conn,
            label: label.clone(),
            revision: meta.revision,
            compacted: meta.compacted,
            committed: Arc::clone(&committed),
            events: events.clone(),
            max_batch: options.max_batch,
        })?;
        let readers = Arc::new(ReadPool::new(PathBuf::from(path), label, options.readers));
        Ok(SqliteStore { readers, writer: Some(writer), events, committed })
    }

    /// Hands `request` to the writer and waits until it is durable (or refused).
    async fn write<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer.as_ref().ok_or(StoreError::Closed)?.send(request(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Readers first, so the writer's connection is the last and closing it checkpoints.
        self.readers.close();
        if let Some(writer) = self.writer.take() {
            writer.stop();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.readers.read(move |snapshot| snapshot.get(&key)).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_owned();
        self.readers.read(move |snapshot| snapshot.list(&prefix, &opts)).await
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let prefix = prefix.to_owned();
        self.readers.read(move |snapshot| snapshot.count(&prefix)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        let key = key.to_owned();
        self.write(|reply| Request::Create { key, value, reply }).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision, StoreError> {
        let key = key.to_owned();
        self.write(|reply| Request::Update { key, value, expected, reply }).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let key = key.to_owned();
        self.write(|reply| Request::Delete { key, expected, reply }).await
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        after: Revision,
        progress_every: Option<Duration>,
    ) -> Result<ProgressWatchStream, StoreError> {
        // Subscribe before reading: whatever commits after the snapshot below is then
        // certainly in the subscription.
        let live = self.events.subscribe(prefix);
        let owned = prefix.to_owned();
        let (snapshot, first) = self
            .readers
            .read(move |snapshot| {
                rules::watch_start(after, snapshot.compacted)?;
                let first = if after == 0 || after >= snapshot.revision {
                    Vec::new()
                } else {
                    snapshot.replay(&owned, after, snapshot.revision, REPLAY_CHUNK)?
                };
                Ok((snapshot.revision, first))
            })
            .await?;
        let replay = Replay {
            readers: Arc::clone(&self.readers),
            prefix: prefix.to_owned(),
            exhausted: first.len() < REPLAY_CHUNK,
            cursor: first.last().map_or(snapshot, WatchEvent::revision),
            upto: snapshot,
            buffered: first.into_iter(),
        };
        Ok(watch::follow(
            replay.into_stream(),
            &self.events,
            live,
            prefix.to_owned(),
            after.max(snapshot),
            progress_every,
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write(|reply| Request::Compact { revision, reply }).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.committed.revision.load(Ordering::Acquire))
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.committed.compacted.load(Ordering::Acquire))
    }
}

/// A watch's replay of history up to the revision it started at, read a chunk at a time.
struct Replay {
    readers: Arc<ReadPool>,
    prefix: String,
    buffered: vec::IntoIter<WatchEvent>,
    /// Rows up to here have been read.
    cursor: Revision,
    /// The revision the watch started at; later changes come from the live feed.
    upto: Revision,
    exhausted: bool,
}

impl Replay {
    fn into_stream(self) -> impl Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static {
        stream::unfold(self, |mut replay| async move {
            if let Some(event) = replay.buffered.next() {
                return Some((Ok(event), replay));
            }
            if replay.exhausted {
                return None;
            }
            match replay.next_chunk().await {
                Ok(chunk) => {
                    replay.exhausted = chunk.len() < REPLAY_CHUNK;
                    replay.cursor = chunk.last().map_or(replay.upto, WatchEvent::revision);
                    replay.buffered = chunk.into_iter();
                    let event = replay.buffered.next()?;
                    Some((Ok(event), replay))
                }
                Err(error) => {
                    replay.exhausted = true;
                    Some((Err(error), replay))
                }
            }
        })
    }

    async fn next_chunk(&self) -> Result<Vec<WatchEvent>, StoreError> {
        let (prefix, cursor, upto) = (self.prefix.clone(), self.cursor, self.upto);
        self.readers
            .read(move |snapshot| {
                // A compaction since the watch started may have removed rows still to replay.
                if snapshot.compacted > cursor {
                    return Err(StoreError::Compacted { requested: cursor, compacted: snapshot.compacted });
                }
                snapshot.replay(&prefix, cursor, upto, REPLAY_CHUNK)
            })
            .await
    }
}
