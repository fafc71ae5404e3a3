//! The shared suite on a real etcd (one fresh member per test), plus what only a remote
//! backend must do: resume watches across a member restart, keep acknowledged writes through a
//! crash, and fail promptly instead of hanging when etcd is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tempfile::TempDir;

use super::local::LocalEtcd;
use super::{EtcdConfig, EtcdStore};
use crate::{EventKind, Store, StoreError};

/// A fresh single-member etcd and a store on it. Without an etcd binary the test is skipped
/// with a message, except under `CI=true`, where that is a failure.
struct Fixture {
    etcd: LocalEtcd,
    _dir: TempDir,
}

async fn start_etcd() -> Option<Fixture> {
    if !LocalEtcd::available() {
        let ci = matches!(std::env::var("CI").as_deref(), Ok("true" | "1"));
        assert!(!ci, "etcd is not installed (Debian's etcd-server); CI=true requires it");
        eprintln!("skipped: no etcd binary (install etcd-server or set TUG_ETCD_BIN)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().to_path_buf();
    let etcd = tokio::task::spawn_blocking(move || LocalEtcd::start(&path)).await.unwrap().expect("start etcd");
    Some(Fixture { etcd, _dir: dir })
}

async fn connect(etcd: &LocalEtcd) -> EtcdStore {
    let config = EtcdConfig { endpoints: vec![etcd.endpoint()], ..EtcdConfig::default() };
    EtcdStore::connect(&config).await.expect("connect to etcd")
}

/// The conformance factory. etcd's watches never lag, so the buffer size does not apply. A
/// missing etcd yields a memory store only where skipping is allowed (never under CI), so the
/// suite still runs as a whole.
async fn fresh(_watch_buffer: usize) -> (Arc<dyn Store>, Option<Fixture>) {
    match start_etcd().await {
        Some(fixture) => (Arc::new(connect(&fixture.etcd).await), Some(fixture)),
        None => (Arc::new(crate::memory::MemoryStore::new()), None),
    }
}

crate::store_conformance_tests!(fresh);

fn val(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[test]
fn endpoints_are_http_or_https_urls_without_a_path() {
    assert_eq!(
        EtcdConfig::parse_endpoints("http://10.0.0.1:2379, https://b:2379").unwrap(),
        ["http://10.0.0.1:2379", "https://b:2379"]
    );
    assert!(EtcdConfig::parse_endpoints("").is_err());
    assert!(EtcdConfig::parse_endpoints("10.0.0.1:2379").is_err());
    assert!(EtcdConfig::parse_endpoints("http://a:2379/registry").is_err());
}

#[test]
fn prefix_ends_increment_the_last_byte_that_can_be() {
    assert_eq!(super::prefix_end(b"/registry/pods/"), b"/registry/pods0");
    assert_eq!(super::prefix_end(b"a\xff"), b"b");
    assert_eq!(super::prefix_end(b"\xff\xff"), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_are_etcds_own() {
    let Some(fixture) = start_etcd().await else { return };
    let store = connect(&fixture.etcd).await;
    // A fresh etcd is at revision 1; the first write is 2, as etcdctl would show it.
    assert_eq!(store.current_revision().await.unwrap(), 1);
    assert_eq!(store.create("/registry/a", val("1")).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_the_member_restarts_without_gap_or_duplicate() {
    let Some(mut fixture) = start_etcd().await else { return };
    let store = connect(&fixture.etcd).await;
    let first = store.create("/r/1", val("a")).await.unwrap();
    let mut watch = store.watch("/r/", first - 1).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision(), first);

    let etcd = &mut fixture.etcd;
    tokio::task::block_in_place(|| etcd.restart()).expect("restart etcd");
    // Writes while the watch's stream is down are replayed when it reconnects.
    let mut written = Vec::new();
    for i in 2..=5 {
        written.push(write_retrying(&store, &format!("/r/{i}")).await);
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("event in time");
        let event = event.expect("stream continues").expect("no error");
        assert_eq!(event.kind, EventKind::Put);
        seen.push(event.revision());
    }
    assert_eq!(seen, written);
}

/// A create, retried while the restarted member is still electing itself.
async fn write_retrying(store: &EtcdStore, key: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.create(key, val("v")).await {
            Ok(revision) => return revision,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("create {key}: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_kill_of_the_member() {
    let Some(mut fixture) = start_etcd().await else { return };
    let store = connect(&fixture.etcd).await;
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        acknowledged.push((format!("/k/{i:02}"), store.create(&format!("/k/{i:02}"), val("v")).await.unwrap()));
    }
    let etcd = &mut fixture.etcd;
    etcd.kill();
    tokio::task::block_in_place(|| etcd.restart()).expect("restart etcd");
    let list = loop {
        match store.list("/k/", crate::ListOptions::default()).await {
            Ok(list) => break list,
            Err(StoreError::Unavailable { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("list after restart: {error}"),
        }
    };
    let found: Vec<_> = list.items.iter().map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
    assert_eq!(found, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_as_unavailable_within_the_timeout_when_etcd_is_gone() {
    let Some(mut fixture) = start_etcd().await else { return };
    let store = connect(&fixture.etcd).await;
    store.create("/a", val("1")).await.unwrap();
    fixture.etcd.kill();
    let started = Instant::now();
    match store.create("/b", val("2")).await {
        Err(StoreError::Unavailable { reason }) => assert!(reason.contains("etcd"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() <= super::REQUEST_TIMEOUT + Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn progress_is_trusted_from_the_etcd_versions_that_answer_it_in_order() {
    for (version, trusted) in [
        ("3.4.23", false),
        ("3.4.30", false),
        ("3.4.31", true),
        ("3.5.12", false),
        ("3.5.13", true),
        ("3.5.21", true),
        ("3.6.0", true),
        ("v3.6.4", true),
        ("4.0.0", true),
        ("3.3.27", false),
        ("3.5.13-rc.0", true),
        ("", false),
        ("garbage", false),
    ] {
        assert_eq!(super::answers_progress_in_order(version), trusted, "{version}");
    }
}
