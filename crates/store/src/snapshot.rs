//! Snapshots of a whole datastore, for backup and restore (`tug datastore snapshot save`,
//! `tug server --cluster-reset --cluster-reset-restore-path`).
//!
//! A snapshot is always a Tugboat SQLite store file, whatever the backend it was taken from:
//! from SQLite it is a consistent copy of the live file (`VACUUM INTO`, which reads one
//! snapshot while the server keeps writing), keeping every revision; from etcd it is every key
//! as of one revision, written into a new file. So one file format restores into either
//! backend, and a snapshot can move a cluster from SQLite to etcd or back.
//!
//! Restoring replaces what the target holds: keys the snapshot lacks are deleted, the others
//! written with the snapshot's values. On etcd the keys get new revisions, so clients' watches
//! from before the restore must list again, as after upstream's etcd restore.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{ListOptions, Revision, Store, StoreError};

/// Keys copied per page, bounding the memory a copy holds at once.
const PAGE: usize = 500;

/// Writes a consistent copy of the SQLite store at `db` to `dest`, which must not exist. Safe
/// while a server writes to `db`. Blocking: call it from a blocking thread.
pub fn save_sqlite(db: &Path, dest: &Path) -> Result<(), StoreError> {
    let label = db.display().to_string();
    let err = |source| StoreError::Sqlite { path: label.clone(), source };
    if dest.exists() {
        return Err(StoreError::Config { reason: format!("{} already exists", dest.display()) });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
    let dest =
        dest.to_str().ok_or_else(|| StoreError::Config { reason: format!("{} is not UTF-8", dest.display()) })?;
    conn.execute("VACUUM INTO ?1", [dest]).map_err(err)?;
    Ok(())
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Keys written to the target.
    pub keys: usize,
    /// Keys of the target deleted because the source lacks them.
    pub deleted: usize,
    /// The source revision the copy reflects.
    pub revision: Revision,
}

/// Makes `to` hold exactly what `from` held at one revision: every key of `from` (as of the
/// revision its first page is read at) is written to `to`, and keys of `to` that `from` lacks
/// are deleted.
pub async fn replace_contents(from: &dyn Store, to: &dyn Store) -> Result<Copied, StoreError> {
    let mut copied = Copied { keys: 0, deleted: 0, revision: 0 };
    let mut start_key = None;
    let mut wanted = std::collections::BTreeSet::new();
    loop {
        let page = from
            .list("", ListOptions { limit: PAGE, start_key: start_key.take(), revision: Some(copied.revision) })
            .await?;
        copied.revision = page.revision;
        for kv in &page.items {
            wanted.insert(kv.key.clone());
            match to.get(&kv.key).await? {
                Some(current) if current.value == kv.value => {}
                Some(current) => {
                    to.update(&kv.key, kv.value.clone(), current.mod_revision).await?;
                }
                None => {
                    to.create(&kv.key, kv.value.clone()).await?;
                }
            }
            copied.keys += 1;
        }
        match page.items.last() {
            Some(last) if page.more => start_key = Some(format!("{}\0", last.key)),
            _ => break,
        }
    }
    let mut start_key = None;
    loop {
        let page = to.list("", ListOptions { limit: PAGE, start_key: start_key.take(), revision: None }).await?;
        for kv in &page.items {
            if !wanted.contains(&kv.key) {
                match to.delete(&kv.key, None).await {
                    Ok(_) | Err(StoreError::NotFound { .. }) => copied.deleted += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        match page.items.last() {
            Some(last) if page.more => start_key = Some(format!("{}\0", last.key)),
            _ => break,
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::sqlite::SqliteStore;

    fn val(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[tokio::test]
    async fn replacing_contents_makes_the_target_equal_to_the_source() {
        let (from, to) = (MemoryStore::new(), MemoryStore::new());
        for i in 0..1200 {
            from.create(&format!("/registry/k/{i:04}"), val(&format!("v{i}"))).await.unwrap();
        }
        to.create("/registry/k/0001", val("stale")).await.unwrap();
        to.create("/registry/k/0002", val("v2")).await.unwrap();
        to.create("/registry/gone", val("x")).await.unwrap();
        let copied = replace_contents(&from, &to).await.unwrap();
        assert_eq!((copied.keys, copied.deleted, copied.revision), (1200, 1, 1200));
        let all = to.list("", ListOptions::default()).await.unwrap().items;
        assert_eq!(all.len(), 1200);
        assert!(all.iter().all(|kv| kv.value == val(&format!("v{}", kv.key[12..].parse::<u32>().unwrap()))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sqlite_snapshot_is_a_store_with_everything_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = SqliteStore::open(&db).unwrap();
        for i in 0..10 {
            store.create(&format!("/a/{i}"), val("x")).await.unwrap();
        }
        let dest = dir.path().join("snap.db");
        let (db2, dest2) = (db.clone(), dest.clone());
        tokio::task::spawn_blocking(move || save_sqlite(&db2, &dest2)).await.unwrap().unwrap();
        store.create("/a/after", val("y")).await.unwrap();
        assert!(matches!(save_sqlite(&db, &dest), Err(StoreError::Config { .. })), "never overwrites");

        let snapshot = SqliteStore::open(&dest).unwrap();
        let keys = snapshot.list("/a/", ListOptions::default()).await.unwrap();
        assert_eq!(keys.items.len(), 10);
        assert_eq!(snapshot.current_revision().await.unwrap(), 10, "revisions are kept");
    }
}
