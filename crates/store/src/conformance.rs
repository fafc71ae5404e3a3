//! The behaviour every [`Store`] backend must share, as test functions any backend's tests run.
//!
//! Each function takes a fresh, empty store and panics if the backend misbehaves. A backend's
//! test module runs them all with [`store_conformance_tests!`](crate::store_conformance_tests):
//!
//! ```ignore
//! async fn fresh(watch_buffer: usize) -> (Arc<dyn Store>, impl Sized) {
//!     (Arc::new(MemoryStore::with_watch_buffer(watch_buffer)), ())
//! }
//! tug_store::store_conformance_tests!(fresh);
//! ```
//!
//! The factory gets the live-event buffer per watcher the store should have (the lag test asks
//! for a small one) and returns the store with a guard kept alive until the test ends, such as
//! the temporary directory holding its files. The crate using the macro needs `tokio` (with
//! `macros` and `rt-multi-thread`) as a dependency.
//!
//! This module is compiled in normal builds so that backends living in other crates (etcd) can
//! run the same suite.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{
    EventKind, KeyValue, ListOptions, Revision, Store, StoreError, WatchEvent, WatchStream,
};

/// How long a test waits for an expected watch event before declaring it lost.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The watch buffer the lag test asks its store for.
pub const LAG_TEST_WATCH_BUFFER: usize = 16;

/// Expands to one `#[tokio::test]` per conformance function, each on a fresh store from
/// `$fresh`, an async function (or closure) taking the watch buffer size and returning
/// `(Arc<dyn Store>, guard)`.
#[doc(hidden)]
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:expr) => {
        $crate::store_conformance_tests!(@each $fresh;
            empty_store_is_at_revision_zero,
            create_then_get_returns_value_and_revisions,
            get_of_missing_key_returns_none,
            create_of_existing_key_fails_with_already_exists,
            every_successful_write_advances_the_revision_by_one,
            update_with_current_revision_replaces_value_and_keeps_create_revision,
            update_with_stale_revision_conflicts_and_carries_current_value,
            update_of_missing_key_fails_with_not_found,
            unguarded_delete_returns_last_value_at_deleting_revision,
            guarded_delete_with_stale_revision_conflicts_and_keeps_key,
            guarded_delete_with_current_revision_deletes,
            delete_of_missing_key_fails_with_not_found,
            recreated_key_gets_a_new_create_revision,
            values_round_trip_byte_for_byte,
            list_returns_keys_under_prefix_in_key_order,
            list_with_empty_prefix_returns_every_key,
            list_pages_with_limit_and_inclusive_start_key,
            list_at_old_revision_shows_the_state_then,
            list_at_future_revision_fails_with_future_revision,
            count_counts_live_keys_under_prefix,
            compaction_keeps_reads_at_and_after_the_compacted_revision,
            compaction_is_idempotent_and_refuses_old_or_future_revisions,
            watch_from_before_compacted_revision_fails_with_compacted,
            watch_from_compacted_revision_replays_later_changes_with_previous_values,
            watch_replays_history_after_revision_then_follows_live,
            watch_from_zero_reports_only_changes_after_it_starts,
            watch_from_future_revision_skips_changes_up_to_it,
            watch_reports_only_keys_under_its_prefix,
            watch_events_carry_the_previous_value,
            watch_started_during_concurrent_writes_has_no_gap_or_duplicate,
            several_watchers_each_receive_every_event,
            concurrent_creates_of_one_key_have_exactly_one_winner,
            hundred_concurrent_writers_are_acknowledged_with_distinct_revisions,
            failed_writes_in_a_concurrent_burst_do_not_affect_the_others,
            dropping_the_store_ends_watches_with_closed,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lagging_watcher_gets_lagged_error_then_resumes_from_history() {
            let buffer = $crate::conformance::LAG_TEST_WATCH_BUFFER;
            let (store, _guard) = ($fresh)(buffer).await;
            $crate::conformance::lagging_watcher_gets_lagged_error_then_resumes_from_history(
                store, buffer,
            )
            .await;
        }
    };
    (@each $fresh:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = ($fresh)($crate::DEFAULT_WATCH_BUFFER).await;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

fn val(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn next_item(stream: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("timed out waiting for a watch event")
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match next_item(stream).await {
        Some(Ok(event)) => event,
        Some(Err(error)) => panic!("watch failed: {error}"),
        None => panic!("watch ended unexpectedly"),
    }
}

fn assert_event(event: &WatchEvent, kind: EventKind, key: &str, value: &str, revision: Revision) {
    assert_eq!(event.kind, kind, "kind of {event:?}");
    assert_eq!(event.kv.key, key, "key of {event:?}");
    assert_eq!(event.kv.value, val(value), "value of {event:?}");
    assert_eq!(event.revision(), revision, "revision of {event:?}");
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

fn at(revision: Revision) -> ListOptions {
    ListOptions { revision: Some(revision), ..ListOptions::default() }
}

/// The history several tests read: returns the revisions of its five writes.
/// r1 create /h/a=a1, r2 create /h/b=b1, r3 update /h/a=a2, r4 delete /h/b, r5 create /h/c=c1.
async fn write_history(store: &dyn Store) -> [Revision; 5] {
    let r1 = store.create("/h/a", val("a1")).await.unwrap();
    let r2 = store.create("/h/b", val("b1")).await.unwrap();
    let r3 = store.update("/h/a", val("a2"), r1).await.unwrap();
    let r4 = store.delete("/h/b", None).await.unwrap().mod_revision;
    let r5 = store.create("/h/c", val("c1")).await.unwrap();
    [r1, r2, r3, r4, r5]
}

pub async fn empty_store_is_at_revision_zero(store: Arc<dyn Store>) {
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.compacted_revision().await.unwrap(), 0);
    let all = store.list("", ListOptions::default()).await.unwrap();
    assert!(all.items.is_empty());
    assert_eq!(all.revision, 0);
}

pub async fn create_then_get_returns_value_and_revisions(store: Arc<dyn Store>) {
    let rev = store.create("/registry/pods/default/a", val("one")).await.unwrap();
    assert_eq!(rev, 1, "the first write is revision 1");
    let kv = store.get("/registry/pods/default/a").await.unwrap().expect("created key");
    assert_eq!(
        kv,
        KeyValue {
            key: "/registry/pods/default/a".into(),
            value: val("one"),
            create_revision: rev,
            mod_revision: rev,
        }
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
    let r1 = store.create("/a", val("1")).await.unwrap();
    let r2 = store.update("/a", val("2"), r1).await.unwrap();
    assert!(store.update("/a", val("3"), r1).await.is_err());
    assert!(store.create("/a", val("3")).await.is_err());
    assert!(store.delete("/missing", None).await.is_err());
    let r3 = store.delete("/a", Some(r2)).await.unwrap().mod_revision;
    let r4 = store.create("/b", val("1")).await.unwrap();
    assert_eq!([r1, r2, r3, r4], [1, 2, 3, 4]);
    assert_eq!(store.current_revision().await.unwrap(), 4);
}

pub async fn update_with_current_revision_replaces_value_and_keeps_create_revision(
    store: Arc<dyn Store>,
) {
    let created = store.create("/a", val("1")).await.unwrap();
    store.create("/other", val("x")).await.unwrap();
    let updated = store.update("/a", val("2"), created).await.unwrap();
    assert!(updated > created);
    let kv = store.get("/a").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.create_revision, kv.mod_revision), (val("2"), created, updated));
}

pub async fn update_with_stale_revision_conflicts_and_carries_current_value(
    store: Arc<dyn Store>,
) {
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
    match store.update("/a", val("1"), 1).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/a"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(store.current_revision().await.unwrap(), 0);
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

pub async fn list_returns_keys_under_prefix_in_key_order(store: Arc<dyn Store>) {
    for key in [
        "/registry/pods/ns2/a",
        "/registry/podtemplates/ns1/x",
        "/registry/pods/ns1/b",
        "/registry/pods",
        "/registry/podsx",
        "/registry/pods/ns1/a",
    ] {
        store.create(key, val(key)).await.unwrap();
    }
    let current = store.current_revision().await.unwrap();
    let pods = store.list("/registry/pods/", ListOptions::default()).await.unwrap();
    assert_eq!(
        keys(&pods.items),
        ["/registry/pods/ns1/a", "/registry/pods/ns1/b", "/registry/pods/ns2/a"]
    );
    assert_eq!(pods.items[0].value, val("/registry/pods/ns1/a"));
    assert_eq!((pods.revision, pods.more, pods.remaining), (current, false, 0));
    let ns1 = store.list("/registry/pods/ns1/", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&ns1.items), ["/registry/pods/ns1/a", "/registry/pods/ns1/b"]);
    let without_slash = store.list("/registry/pod", ListOptions::default()).await.unwrap();
    assert_eq!(without_slash.items.len(), 6, "a plain string prefix matches every neighbour");
}

pub async fn list_with_empty_prefix_returns_every_key(store: Arc<dyn Store>) {
    for key in ["b", "/a", "\u{10FFFF}", "a"] {
        store.create(key, val(key)).await.unwrap();
    }
    let all = store.list("", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&all.items), ["/a", "a", "b", "\u{10FFFF}"]);
    assert_eq!(store.count("").await.unwrap(), 4);
}

pub async fn list_pages_with_limit_and_inclusive_start_key(store: Arc<dyn Store>) {
    for name in ["a", "b", "c", "d", "e"] {
        store.create(&format!("/p/{name}"), val(name)).await.unwrap();
    }
    store.create("/q/a", val("outside")).await.unwrap();
    let page = |limit: usize, start: Option<&str>| ListOptions {
        limit,
        start_key: start.map(str::to_owned),
        revision: None,
    };

    let first = store.list("/p/", page(2, None)).await.unwrap();
    assert_eq!(keys(&first.items), ["/p/a", "/p/b"]);
    assert_eq!((first.more, first.remaining), (true, 3));

    // Continue after the last key the way the API server does: the key plus a NUL.
    let second = store.list("/p/", page(2, Some("/p/b\0"))).await.unwrap();
    assert_eq!(keys(&second.items), ["/p/c", "/p/d"]);
    assert_eq!((second.more, second.remaining), (true, 1));
    assert_eq!(second.revision, first.revision);

    let last = store.list("/p/", page(2, Some("/p/e"))).await.unwrap();
    assert_eq!(keys(&last.items), ["/p/e"], "start_key is inclusive");
    assert_eq!((last.more, last.remaining), (false, 0));

    let exact = store.list("/p/", page(5, None)).await.unwrap();
    assert_eq!((exact.items.len(), exact.more, exact.remaining), (5, false, 0));

    let before_prefix = store.list("/p/", page(0, Some("/a"))).await.unwrap();
    assert_eq!(before_prefix.items.len(), 5, "a start key before the prefix starts at the prefix");
    let past_prefix = store.list("/p/", page(0, Some("/p0"))).await.unwrap();
    assert!(past_prefix.items.is_empty());
}

pub async fn list_at_old_revision_shows_the_state_then(store: Arc<dyn Store>) {
    let [r1, r2, r3, r4, r5] = write_history(store.as_ref()).await;
    let state = |items: &[KeyValue]| -> Vec<(String, Bytes, Revision, Revision)> {
        items
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone(), kv.create_revision, kv.mod_revision))
            .collect()
    };

    let at_r2 = store.list("/h/", at(r2)).await.unwrap();
    assert_eq!(at_r2.revision, r2);
    assert_eq!(
        state(&at_r2.items),
        [("/h/a".into(), val("a1"), r1, r1), ("/h/b".into(), val("b1"), r2, r2)]
    );
    let at_r3 = store.list("/h/", at(r3)).await.unwrap();
    assert_eq!(
        state(&at_r3.items),
        [("/h/a".into(), val("a2"), r1, r3), ("/h/b".into(), val("b1"), r2, r2)]
    );
    let at_r4 = store.list("/h/", at(r4)).await.unwrap();
    assert_eq!(keys(&at_r4.items), ["/h/a"]);
    let at_r5 = store.list("/h/", at(r5)).await.unwrap();
    assert_eq!(keys(&at_r5.items), ["/h/a", "/h/c"]);
    assert_eq!(store.list("/h/", at(0)).await.unwrap().revision, r5, "revision 0 means latest");

    let paged =
        store.list("/h/", ListOptions { limit: 1, start_key: None, revision: Some(r2) }).await;
    let paged = paged.unwrap();
    assert_eq!(keys(&paged.items), ["/h/a"]);
    assert_eq!((paged.more, paged.remaining), (true, 1));
    let rest = ListOptions { limit: 1, start_key: Some("/h/a\0".into()), revision: Some(r2) };
    let rest = store.list("/h/", rest).await.unwrap();
    assert_eq!(keys(&rest.items), ["/h/b"]);
    assert_eq!((rest.more, rest.remaining), (false, 0));
}

pub async fn list_at_future_revision_fails_with_future_revision(store: Arc<dyn Store>) {
    let rev = store.create("/a", val("1")).await.unwrap();
    match store.list("/", at(rev + 1)).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (rev + 1, rev));
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

pub async fn count_counts_live_keys_under_prefix(store: Arc<dyn Store>) {
    for key in ["/c/a", "/c/b", "/c/c", "/cc/a", "/d/a"] {
        store.create(key, val(key)).await.unwrap();
    }
    store.delete("/c/b", None).await.unwrap();
    assert_eq!(store.count("/c/").await.unwrap(), 2);
    assert_eq!(store.count("/c").await.unwrap(), 3);
    assert_eq!(store.count("/none/").await.unwrap(), 0);
}

pub async fn compaction_keeps_reads_at_and_after_the_compacted_revision(store: Arc<dyn Store>) {
    let [_, r2, r3, r4, r5] = write_history(store.as_ref()).await;
    let mut before = Vec::new();
    for rev in [r3, r4, r5] {
        before.push(store.list("/h/", at(rev)).await.unwrap().items);
    }
    store.compact(r3).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), r3);
    for (rev, expected) in [r3, r4, r5].into_iter().zip(before) {
        assert_eq!(store.list("/h/", at(rev)).await.unwrap().items, expected, "at {rev}");
    }
    match store.list("/h/", at(r2)).await {
        Err(StoreError::Compacted { requested, compacted }) => {
            assert_eq!((requested, compacted), (r2, r3));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert_eq!(store.get("/h/a").await.unwrap().unwrap().value, val("a2"));

    // Compacting past a deletion forgets the key entirely, and later writes still work.
    store.compact(r5).await.unwrap();
    assert_eq!(keys(&store.list("/h/", at(r5)).await.unwrap().items), ["/h/a", "/h/c"]);
    let r6 = store.create("/h/b", val("b2")).await.unwrap();
    assert_eq!(store.get("/h/b").await.unwrap().unwrap().create_revision, r6);
}

pub async fn compaction_is_idempotent_and_refuses_old_or_future_revisions(store: Arc<dyn Store>) {
    let [_, r2, r3, ..] = write_history(store.as_ref()).await;
    let current = store.current_revision().await.unwrap();
    store.compact(r3).await.unwrap();
    store.compact(r3).await.expect("compacting again at the same revision does nothing");
    assert!(matches!(store.compact(r2).await, Err(StoreError::Compacted { .. })));
    assert!(matches!(store.compact(current + 1).await, Err(StoreError::FutureRevision { .. })));
    assert_eq!(store.compacted_revision().await.unwrap(), r3);
    assert_eq!(store.current_revision().await.unwrap(), current, "compaction is not a write");
}

pub async fn watch_from_before_compacted_revision_fails_with_compacted(store: Arc<dyn Store>) {
    let [r1, _, r3, ..] = write_history(store.as_ref()).await;
    store.compact(r3).await.unwrap();
    match store.watch("/h/", r1).await {
        Err(StoreError::Compacted { requested, compacted }) => {
            assert_eq!((requested, compacted), (r1, r3));
        }
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    assert!(store.watch("/h/", 0).await.is_ok(), "watching from now is always possible");
}

pub async fn watch_from_compacted_revision_replays_later_changes_with_previous_values(
    store: Arc<dyn Store>,
) {
    let [_, _, r3, r4, r5] = write_history(store.as_ref()).await;
    let r6 = store.update("/h/a", val("a3"), r3).await.unwrap();
    store.compact(r3).await.unwrap();
    let mut watch = store.watch("/h/", r3).await.unwrap();

    let deleted = next_event(&mut watch).await;
    assert_event(&deleted, EventKind::Delete, "/h/b", "b1", r4);
    assert_eq!(deleted.prev.as_ref().map(|p| p.value.clone()), Some(val("b1")));
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/c", "c1", r5);
    let updated = next_event(&mut watch).await;
    assert_event(&updated, EventKind::Put, "/h/a", "a3", r6);
    let prev = updated.prev.expect("an update reports the value it replaced");
    assert_eq!((prev.value, prev.mod_revision), (val("a2"), r3));
}

pub async fn watch_replays_history_after_revision_then_follows_live(store: Arc<dyn Store>) {
    let [r1, r2, r3, r4, r5] = write_history(store.as_ref()).await;
    let mut watch = store.watch("/h/", r1).await.unwrap();
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/b", "b1", r2);
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/a", "a2", r3);
    assert_event(&next_event(&mut watch).await, EventKind::Delete, "/h/b", "b1", r4);
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/c", "c1", r5);
    let r6 = store.create("/h/d", val("d1")).await.unwrap();
    let r7 = store.update("/h/d", val("d2"), r6).await.unwrap();
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/d", "d1", r6);
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/d", "d2", r7);
}

pub async fn watch_from_zero_reports_only_changes_after_it_starts(store: Arc<dyn Store>) {
    write_history(store.as_ref()).await;
    let mut watch = store.watch("/h/", 0).await.unwrap();
    let rev = store.create("/h/new", val("n")).await.unwrap();
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/h/new", "n", rev);
}

pub async fn watch_from_future_revision_skips_changes_up_to_it(store: Arc<dyn Store>) {
    let now = store.create("/f/0", val("0")).await.unwrap();
    let mut watch = store.watch("/f/", now + 2).await.unwrap();
    for i in 1..=3 {
        store.create(&format!("/f/{i}"), val("x")).await.unwrap();
    }
    assert_event(&next_event(&mut watch).await, EventKind::Put, "/f/3", "x", now + 3);
}

pub async fn watch_reports_only_keys_under_its_prefix(store: Arc<dyn Store>) {
    let start = store.create("/registry/pods/ns/old", val("old")).await.unwrap();
    let mut live = store.watch("/registry/pods/", 0).await.unwrap();
    store.create("/registry/podtemplates/ns/x", val("t")).await.unwrap();
    store.create("/registry/pods", val("bare")).await.unwrap();
    store.create("/registry/podsx/y", val("near")).await.unwrap();
    let rev = store.create("/registry/pods/ns/a", val("pod")).await.unwrap();
    assert_event(&next_event(&mut live).await, EventKind::Put, "/registry/pods/ns/a", "pod", rev);

    let mut replayed = store.watch("/registry/pods/", start).await.unwrap();
    assert_event(&next_event(&mut replayed).await, EventKind::Put, "/registry/pods/ns/a", "pod", rev);

    let mut wide = store.watch("/registry/pod", start).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_event(&mut wide).await.kv.key);
    }
    assert_eq!(
        seen,
        ["/registry/podtemplates/ns/x", "/registry/pods", "/registry/podsx/y", "/registry/pods/ns/a"],
        "a prefix without a trailing slash matches every neighbour"
    );
}

pub async fn watch_events_carry_the_previous_value(store: Arc<dyn Store>) {
    // Revision 1 goes elsewhere: a watch from `created - 1` must not mean "from now" (0).
    store.create("/before", val("x")).await.unwrap();
    let mut live = store.watch("/e/", 0).await.unwrap();
    let created = store.create("/e/a", val("1")).await.unwrap();
    let updated = store.update("/e/a", val("2"), created).await.unwrap();
    let deleted = store.delete("/e/a", Some(updated)).await.unwrap().mod_revision;
    let mut replayed = store.watch("/e/", created - 1).await.unwrap();

    for (how, watch) in [("live", &mut live), ("replayed", &mut replayed)] {
        let create = next_event(watch).await;
        assert_event(&create, EventKind::Put, "/e/a", "1", created);
        assert_eq!(create.prev, None, "{how}: a create has no previous value");

        let update = next_event(watch).await;
        assert_event(&update, EventKind::Put, "/e/a", "2", updated);
        assert_eq!(update.kv.create_revision, created);
        let prev = update.prev.expect("update has a previous value");
        assert_eq!((prev.value, prev.mod_revision), (val("1"), created), "{how}");

        let delete = next_event(watch).await;
        assert_event(&delete, EventKind::Delete, "/e/a", "2", deleted);
        assert_eq!(delete.kv.create_revision, created, "{how}");
        let prev = delete.prev.expect("delete has a previous value");
        assert_eq!((prev.value, prev.mod_revision), (val("2"), updated), "{how}");
    }
}

pub async fn watch_started_during_concurrent_writes_has_no_gap_or_duplicate(
    store: Arc<dyn Store>,
) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    store.create(&format!("/w/{w}/{i}"), val("v")).await.unwrap();
                }
            })
        })
        .collect();

    // Start watchers while the writes are under way, each from a little in the past, so
    // each one joins a replay to the live feed at a different moment.
    let mut watches = Vec::new();
    for step in 1..=5 {
        loop {
            let now = store.current_revision().await.unwrap();
            if now >= (step * 30) as Revision || now >= (WRITERS * PER_WRITER) as Revision {
                break;
            }
            tokio::task::yield_now().await;
        }
        let after = (store.current_revision().await.unwrap() - 7).max(0);
        watches.push((after, store.watch("/w/", after).await.unwrap()));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let last = store.current_revision().await.unwrap();
    assert_eq!(last, (WRITERS * PER_WRITER) as Revision);

    for (after, mut watch) in watches {
        let mut seen = Vec::new();
        while seen.last().copied().unwrap_or(after) < last {
            seen.push(next_event(&mut watch).await.revision());
        }
        let expected: Vec<Revision> = (after + 1..=last).collect();
        assert_eq!(seen, expected, "watch from {after}");
    }
}

pub async fn several_watchers_each_receive_every_event(store: Arc<dyn Store>) {
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(store.watch("/s/", 0).await.unwrap());
    }
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(store.create(&format!("/s/{i}"), val("x")).await.unwrap());
    }
    for mut watch in watches {
        for &rev in &revisions {
            assert_eq!(next_event(&mut watch).await.revision(), rev);
        }
    }
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

pub async fn hundred_concurrent_writers_are_acknowledged_with_distinct_revisions(
    store: Arc<dyn Store>,
) {
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
    let expected: BTreeSet<Revision> = (1..=100).collect();
    assert_eq!(revisions, expected);
    assert_eq!(store.count("/many/").await.unwrap(), 100);
    assert_eq!(store.current_revision().await.unwrap(), 100);
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

pub async fn dropping_the_store_ends_watches_with_closed(store: Arc<dyn Store>) {
    let mut watch = store.watch("/", 0).await.unwrap();
    let rev = store.create("/a", val("1")).await.unwrap();
    drop(store);
    assert_eq!(next_event(&mut watch).await.revision(), rev, "events before the drop arrive");
    assert!(matches!(next_item(&mut watch).await, Some(Err(StoreError::Closed))));
    assert!(next_item(&mut watch).await.is_none());
}

/// Run on a store built with a watch buffer of `watch_buffer` events.
pub async fn lagging_watcher_gets_lagged_error_then_resumes_from_history(
    store: Arc<dyn Store>,
    watch_buffer: usize,
) {
    // Start past revision 0, which a watch would read as "from now".
    let start = store.create("/before", val("x")).await.unwrap();
    let mut slow = store.watch("/lag/", 0).await.unwrap();
    let total = watch_buffer * 2 + 5;
    for i in 0..total {
        store.create(&format!("/lag/{i:04}"), val("v")).await.unwrap();
    }
    let mut items = Vec::new();
    while let Some(item) = next_item(&mut slow).await {
        items.push(item);
    }
    match items.last() {
        Some(Err(StoreError::WatcherLagged { missed })) => assert!(*missed > 0),
        other => panic!("expected the stream to end with WatcherLagged, got {other:?}"),
    }
    assert!(items[..items.len() - 1].iter().all(Result::is_ok), "only the last item fails");

    // The remedy: watch again from the last revision seen, which replays from history.
    let resume_from = items.iter().rev().find_map(|i| i.as_ref().ok()).map_or(start, |e| e.revision());
    let mut resumed = store.watch("/lag/", resume_from).await.unwrap();
    let last = store.current_revision().await.unwrap();
    let mut next = resume_from + 1;
    while next <= last {
        assert_eq!(next_event(&mut resumed).await.revision(), next);
        next += 1;
    }
}
