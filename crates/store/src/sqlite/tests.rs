//! The shared suite on SQLite, plus what only a durable backend must do: keep everything across
//! a restart and refuse a damaged file.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;

use super::{SqliteOptions, SqliteStore};
use crate::{ListOptions, Store, StoreError, WatchEvent, WatchStream};

async fn fresh(watch_buffer: usize) -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = SqliteOptions { watch_buffer, ..SqliteOptions::default() };
    let store = SqliteStore::open_with(&db_path(&dir), options).expect("open a new store");
    (Arc::new(store), dir)
}

crate::store_conformance_tests!(fresh);

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("state.db")
}

fn val(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn next_item(watch: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    let next = futures::StreamExt::next(watch);
    tokio::time::timeout(Duration::from_secs(20), next).await.expect("watch item in time")
}

fn expect_corrupt(path: &Path) -> String {
    match SqliteStore::open(path) {
        Err(StoreError::Corrupt { reason, .. }) => reason,
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a damaged file was opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_store_keeps_data_revisions_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let (kept, compacted_at, last);
    {
        let store = SqliteStore::open(&path).unwrap();
        kept = store.create("/k/kept", val("1")).await.unwrap();
        let gone = store.create("/k/gone", val("x")).await.unwrap();
        compacted_at = store.update("/k/kept", val("2"), kept).await.unwrap();
        store.compact(compacted_at).await.unwrap();
        // The newest write is a deletion: the revision must survive without a key holding it.
        last = store.delete("/k/gone", Some(gone)).await.unwrap().mod_revision;
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), last);
    assert_eq!(store.compacted_revision().await.unwrap(), compacted_at);
    let kv = store.get("/k/kept").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.create_revision, kv.mod_revision), (val("2"), kept, compacted_at));
    assert_eq!(store.get("/k/gone").await.unwrap(), None);

    let old = ListOptions { revision: Some(compacted_at), ..ListOptions::default() };
    let at_compaction = store.list("/k/", old).await.unwrap();
    assert_eq!(at_compaction.items.len(), 2, "both keys existed at the compacted revision");
    let older = ListOptions { revision: Some(kept), ..ListOptions::default() };
    assert!(matches!(store.list("/k/", older).await, Err(StoreError::Compacted { .. })));

    let mut watch = store.watch("/k/", compacted_at).await.unwrap();
    let replayed = next_item(&mut watch).await.unwrap().unwrap();
    assert_eq!((replayed.revision(), replayed.kv.key.as_str()), (last, "/k/gone"));
    assert_eq!(store.create("/k/new", val("n")).await.unwrap(), last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_folds_the_log_into_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = SqliteStore::open(&path).unwrap();
        store.create("/a", val("1")).await.unwrap();
        store.get("/a").await.unwrap();
    }
    let wal = dir.path().join("state.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the write-ahead log is checkpointed and truncated on close");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, val("1"));
}

#[test]
fn file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let junk: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &junk).unwrap();
    expect_corrupt(&path);
    assert_eq!(std::fs::read(&path).unwrap(), junk, "the refused file is left untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_with_damaged_pages_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = SqliteStore::open(&path).unwrap();
        let value = Bytes::from(vec![7u8; 1024]);
        for i in 0..300 {
            store.create(&format!("/d/{i:04}"), value.clone()).await.unwrap();
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 16 * 4096, "the store spans many pages ({len} bytes)");
    // Overwrite a few pages in the middle, past the header, with bytes no page starts with.
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(4 * 4096)).unwrap();
    file.write_all(&vec![0xA5; 3 * 4096]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let reason = expect_corrupt(&path);
    assert!(reason.contains("integrity check failed"), "reason: {reason}");
}

#[test]
fn foreign_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT);").unwrap();
    drop(other);
    let reason = expect_corrupt(&path);
    assert!(reason.contains("not a Tugboat store"), "reason: {reason}");
}

#[test]
fn missing_directory_fails_with_a_sqlite_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent").join("state.db");
    match SqliteStore::open(&path) {
        Err(error @ StoreError::Sqlite { .. }) => {
            assert!(error.to_string().contains("absent"), "message: {error}");
        }
        Err(other) => panic!("expected a sqlite error, got {other:?}"),
        Ok(_) => panic!("opened a store in a missing directory"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replay_longer_than_one_chunk_is_complete_and_ordered() {
    let (store, _dir) = fresh(crate::DEFAULT_WATCH_BUFFER).await;
    let total = super::REPLAY_CHUNK * 2 + 17;
    let writes: Vec<_> = (0..total)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create(&format!("/r/{i:05}"), val("v")).await })
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    // Interleave keys outside the prefix so chunks mix matching and skipped rows.
    store.create("/other", val("x")).await.unwrap();
    let last = store.create("/r/last", val("v")).await.unwrap();

    let mut watch = store.watch("/r/", 1).await.unwrap();
    let mut expected: Vec<i64> = (2..=total as i64).collect();
    expected.push(last);
    for rev in expected {
        let event = next_item(&mut watch).await.unwrap().unwrap();
        assert_eq!(event.revision(), rev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_long_replay_fails_the_watch_instead_of_skipping() {
    let (store, _dir) = fresh(crate::DEFAULT_WATCH_BUFFER).await;
    let mut rev = store.create("/c/key", val("0")).await.unwrap();
    for i in 1..=(super::REPLAY_CHUNK * 2) {
        rev = store.update("/c/key", val(&i.to_string()), rev).await.unwrap();
    }
    let mut watch = store.watch("/c/", 1).await.unwrap();
    // The first chunk was read when the watch started; compact past it before the next.
    store.compact(rev).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = next_item(&mut watch).await {
        items.push(item);
    }
    assert_eq!(items.len(), super::REPLAY_CHUNK + 1, "one chunk, then the error, then the end");
    assert!(matches!(items.last(), Some(Err(StoreError::Compacted { .. }))));
}

#[tokio::test]
async fn a_cached_statement_is_not_compiled_again_for_new_values() {
    let (store, dir) = fresh(crate::DEFAULT_WATCH_BUFFER).await;
    store.create("/p/a", val("1")).await.unwrap();
    let conn = super::schema::open_reader(&db_path(&dir), "test").unwrap();
    let sql = "SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3";
    for limit in [1_i64, 2, -1, 5] {
        let mut stmt = conn.prepare_cached(sql).unwrap();
        let keys: Vec<String> = stmt
            .query_map(rusqlite::params!["/p/", "/p0", limit], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(keys, ["/p/a"]);
        let recompiled = stmt.get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(recompiled, 0, "recompiled after binding limit {limit}");
    }
}
