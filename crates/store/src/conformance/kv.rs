//! Single-key reads and writes, alone and under concurrency.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use super::val;
use crate::{KeyValue, ListOptions, Revision, Store, StoreError};

pub async fn fresh_store_is_empty_and_uncompacted(store: Arc<dyn Store>) {
    // Where the count starts is the backend's (0 embedded, 1 on a fresh etcd).
    let base = store.current_revision().await.unwrap();
    assert!((0..=1).contains(&base), "a fresh store is at revision {base}");
    assert_eq!(store.compacted_revision().await.unwrap(), 0);
    let all = store.list("", ListOptions::default()).await.unwrap();
    assert!(all.items.is_empty());
    assert_eq!(all.revision, base);
}

pub async fn create_then_get_returns_value_and_revisions(store: Arc<dyn Store>) {
    let base = store.current_revision().await.unwrap();
    let rev = store.create("/registry/pods/default/a", val("one")).await.unwrap();
    assert_eq!(rev, base + 1, "a write advances the revision by one");
    let kv = store.get("/registry/pods/default/a").await.unwrap().expect("created key");
    assert_eq!(
        kv,
        KeyValue { key: "/registry/pods/default/a".into(), value: val("one"), create_revision: rev, mod_revision: rev }
    );
    assert_eq!(store.current_revision().await.unwrap(), rev);
}

pub async fn get_of_missing_key_returns_none(store: Arc<dyn Store>) {
    store.create("/a", val("x")).await.unwrap();
    assert_eq!(store.get("/b").await.unwrap(), None);
    assert_eq!(store.get("/a/").await.unwrap(), None, "a prefix of a key is not the key");
}

pub async fn create_of_existing_key_fails_with_already_exists(store: Arc<dyn Store>) {
    let rev = store.create("/a", val("first")).await.unwrap();
    match store.create("/a", val("second")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/a"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, val("first"));
    assert_eq!(store.current_revision().await.unwrap(), rev, "a failed write has no revision");
}

pub async fn every_successful_write_advances_the_revision_by_one(store: Arc<dyn Store>) {
    let base = store.current_revision().await.unwrap();
    let r1 = store.create("/a", val("1")).await.unwrap();
    let r2 = store.update("/a", val("2"), r1).await.unwrap();
    assert!(store.update("/a", val("3"), r1).await.is_err());
    assert!(store.create("/a", val("3")).await.is_err());
    assert!(store.delete("/missing", None).await.is_err());
    let r3 = store.delete("/a", Some(r2)).await.unwrap().mod_revision;
    let r4 = store.create("/b", val("1")).await.unwrap();
    assert_eq!([r1, r2, r3, r4], [base + 1, base + 2, base + 3, base + 4]);
    assert_eq!(store.current_revision().await.unwrap(), base + 4);
}

pub async fn update_with_current_revision_replaces_value_and_keeps_create_revision(store: Arc<dyn Store>) {
    let created = store.create("/a", val("1")).await.unwrap();
    store.create("/other", val("x")).await.unwrap();
    let updated = store.update("/a", val("2"), created).await.unwrap();
    assert!(updated > created);
    let kv = store.get("/a").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.create_revision, kv.mod_revision), (val("2"), created, updated));
}

pub async fn update_with_stale_revision_conflicts_and_carries_current_value(store: Arc<dyn Store>) {
    let created = store.create("/a", val("1")).await.unwrap();
    let updated = store.update("/a", val("2"), created).await.unwrap();
    match store.update("/a", val("3"), created).await {
        Err(StoreError::Conflict { key, expected, current }) => {
            assert_eq!(key, "/a");
            assert_eq!(expected, created);
            assert_eq!(current.value, val("2"));
            assert_eq!(current.mod_revision, updated);
            assert_eq!(current.create_revision, created);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, val("2"));
}

pub async fn update_of_missing_key_fails_with_not_found(store: Arc<dyn Store>) {
    let base = store.current_revision().await.unwrap();
    match store.update("/a", val("1"), 1).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/a"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(store.current_revision().await.unwrap(), base);
}

pub async fn unguarded_delete_returns_last_value_at_deleting_revision(store: Arc<dyn Store>) {
    let created = store.create("/a", val("1")).await.unwrap();
    let updated = store.update("/a", val("2"), created).await.unwrap();
    let deleted = store.delete("/a", None).await.unwrap();
    assert_eq!(deleted.key, "/a");
    assert_eq!(deleted.value, val("2"));
    assert_eq!(deleted.create_revision, created);
    assert_eq!(deleted.mod_revision, updated + 1);
    assert_eq!(store.current_revision().await.unwrap(), updated + 1);
    assert_eq!(store.get("/a").await.unwrap(), None);
}

pub async fn guarded_delete_with_stale_revision_conflicts_and_keeps_key(store: Arc<dyn Store>) {
    let created = store.create("/a", val("1")).await.unwrap();
    let updated = store.update("/a", val("2"), created).await.unwrap();
    match store.delete("/a", Some(created)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current.mod_revision, updated),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(store.get("/a").await.unwrap().is_some());
}

pub async fn guarded_delete_with_current_revision_deletes(store: Arc<dyn Store>) {
    let created = store.create("/a", val("1")).await.unwrap();
    let deleted = store.delete("/a", Some(created)).await.unwrap();
    assert_eq!(deleted.value, val("1"));
    assert_eq!(store.get("/a").await.unwrap(), None);
}

pub async fn delete_of_missing_key_fails_with_not_found(store: Arc<dyn Store>) {
    store.create("/a", val("1")).await.unwrap();
    store.delete("/a", None).await.unwrap();
    match store.delete("/a", None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/a"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(store.delete("/never", Some(1)).await, Err(StoreError::NotFound { .. })));
}

pub async fn recreated_key_gets_a_new_create_revision(store: Arc<dyn Store>) {
    let first = store.create("/a", val("1")).await.unwrap();
    store.delete("/a", None).await.unwrap();
    let second = store.create("/a", val("2")).await.unwrap();
    assert!(second > first);
    let kv = store.get("/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (second, second));
}

pub async fn values_round_trip_byte_for_byte(store: Arc<dyn Store>) {
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cases = [
        ("/empty", Bytes::new()),
        ("/binary", Bytes::from(binary)),
        ("/large", Bytes::from(large)),
        ("/unicode/ключ/🚢", val("värde ✓")),
    ];
    for (key, value) in &cases {
        store.create(key, value.clone()).await.unwrap();
    }
    for (key, value) in &cases {
        assert_eq!(&store.get(key).await.unwrap().expect("stored").value, value, "value of {key}");
    }
    let listed = store.list("/", ListOptions::default()).await.unwrap();
    assert_eq!(listed.items.len(), cases.len());
}

pub async fn concurrent_creates_of_one_key_have_exactly_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create("/race", val(&i.to_string())).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(rev) => winners.push(rev),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    assert_eq!(store.current_revision().await.unwrap(), winners[0]);
}

pub async fn hundred_concurrent_writers_are_acknowledged_with_distinct_revisions(store: Arc<dyn Store>) {
    let base = store.current_revision().await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create(&format!("/many/{i:03}"), val("v")).await })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    for task in tasks {
        assert!(revisions.insert(task.await.unwrap().unwrap()), "revisions are distinct");
    }
    let expected: BTreeSet<Revision> = (base + 1..=base + 100).collect();
    assert_eq!(revisions, expected);
    assert_eq!(store.count("/many/").await.unwrap(), 100);
    assert_eq!(store.current_revision().await.unwrap(), base + 100);
}

pub async fn failed_writes_in_a_concurrent_burst_do_not_affect_the_others(store: Arc<dyn Store>) {
    let base = store.create("/burst/shared", val("0")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (s1, s2, s3) = (Arc::clone(&store), Arc::clone(&store), Arc::clone(&store));
        tasks.push(tokio::spawn(async move {
            ("update", s1.update("/burst/shared", val(&i.to_string()), base).await.map(|_| ()))
        }));
        tasks.push(tokio::spawn(async move {
            ("create", s2.create(&format!("/burst/new/{i}"), val("n")).await.map(|_| ()))
        }));
        tasks.push(tokio::spawn(async move {
            ("delete", s3.delete(&format!("/burst/missing/{i}"), None).await.map(|_| ()))
        }));
    }
    let (mut updated, mut conflicts, mut created, mut not_found) = (0, 0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            ("update", Ok(())) => updated += 1,
            ("update", Err(StoreError::Conflict { .. })) => conflicts += 1,
            ("create", Ok(())) => created += 1,
            ("delete", Err(StoreError::NotFound { .. })) => not_found += 1,
            (op, result) => panic!("unexpected {op} result {result:?}"),
        }
    }
    assert_eq!((updated, conflicts, created, not_found), (1, 9, 10, 10));
    assert_eq!(store.count("/burst/new/").await.unwrap(), 10);
    assert_eq!(store.current_revision().await.unwrap(), base + 11);
}
