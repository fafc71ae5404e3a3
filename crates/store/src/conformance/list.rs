//! Lists, counts, reads at old revisions and compaction.

use std::sync::Arc;

use bytes::Bytes;

use super::{at, keys, val, write_history};
use crate::{KeyValue, ListOptions, Revision, Store, StoreError};

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
    assert_eq!(keys(&pods.items), ["/registry/pods/ns1/a", "/registry/pods/ns1/b", "/registry/pods/ns2/a"]);
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
    let page =
        |limit: usize, start: Option<&str>| ListOptions { limit, start_key: start.map(str::to_owned), revision: None };

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
        items.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.create_revision, kv.mod_revision)).collect()
    };

    let at_r2 = store.list("/h/", at(r2)).await.unwrap();
    assert_eq!(at_r2.revision, r2);
    assert_eq!(state(&at_r2.items), [("/h/a".into(), val("a1"), r1, r1), ("/h/b".into(), val("b1"), r2, r2)]);
    let at_r3 = store.list("/h/", at(r3)).await.unwrap();
    assert_eq!(state(&at_r3.items), [("/h/a".into(), val("a2"), r1, r3), ("/h/b".into(), val("b1"), r2, r2)]);
    let at_r4 = store.list("/h/", at(r4)).await.unwrap();
    assert_eq!(keys(&at_r4.items), ["/h/a"]);
    let at_r5 = store.list("/h/", at(r5)).await.unwrap();
    assert_eq!(keys(&at_r5.items), ["/h/a", "/h/c"]);
    assert_eq!(store.list("/h/", at(0)).await.unwrap().revision, r5, "revision 0 means latest");

    let paged = store.list("/h/", ListOptions { limit: 1, start_key: None, revision: Some(r2) }).await;
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
