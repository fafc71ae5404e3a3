//! Watches: replay, live feed, prefixes, previous values, lag and shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::{EVENT_TIMEOUT, assert_event, next_event, next_item, val, write_history};
use crate::{EventKind, ProgressWatchStream, Revision, Store, StoreError, WatchItem};

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

pub async fn watch_from_compacted_revision_replays_later_changes_with_previous_values(store: Arc<dyn Store>) {
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

pub async fn watch_started_during_concurrent_writes_has_no_gap_or_duplicate(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let base = store.current_revision().await.unwrap();
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
            if now >= base + (step * 30) as Revision || now >= base + (WRITERS * PER_WRITER) as Revision {
                break;
            }
            tokio::task::yield_now().await;
        }
        let after = (store.current_revision().await.unwrap() - 7).max(base);
        watches.push((after, store.watch("/w/", after).await.unwrap()));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let last = store.current_revision().await.unwrap();
    assert_eq!(last, base + (WRITERS * PER_WRITER) as Revision);

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

pub async fn dropping_the_store_ends_watches_with_closed(store: Arc<dyn Store>) {
    let mut watch = store.watch("/", 0).await.unwrap();
    let rev = store.create("/a", val("1")).await.unwrap();
    drop(store);
    assert_eq!(next_event(&mut watch).await.revision(), rev, "events before the drop arrive");
    assert!(matches!(next_item(&mut watch).await, Some(Err(StoreError::Closed))));
    assert!(next_item(&mut watch).await.is_none());
}

/// Run on a store built with a watch buffer of `watch_buffer` events.
pub async fn lagging_watcher_gets_lagged_error_then_resumes_from_history(store: Arc<dyn Store>, watch_buffer: usize) {
    // Start past revision 0, which a watch would read as "from now".
    let start = store.create("/before", val("x")).await.unwrap();
    let mut slow = store.watch("/lag/", 0).await.unwrap();
    let total = watch_buffer * 2 + 5;
    for i in 0..total {
        store.create(&format!("/lag/{i:04}"), val("v")).await.unwrap();
    }
    // A backend that buffers live events per watcher must end a watcher that fell further
    // behind than the buffer with `WatcherLagged`; one whose feed is flow-controlled end to end
    // (etcd) never lags and must deliver every event instead. Either way nothing is lost.
    let last = store.current_revision().await.unwrap();
    let mut items = Vec::new();
    while items.last().is_none_or(|i: &Result<_, _>| i.as_ref().is_ok_and(|e: &crate::WatchEvent| e.revision() < last))
    {
        match next_item(&mut slow).await {
            Some(item) => items.push(item),
            None => break,
        }
    }
    let lagged = match items.last() {
        Some(Err(StoreError::WatcherLagged { missed })) => {
            assert!(*missed > 0);
            true
        }
        Some(Ok(event)) if event.revision() == last => false,
        other => panic!("expected the stream to end with WatcherLagged or deliver every event, got {other:?}"),
    };
    assert!(items[..items.len() - 1].iter().all(Result::is_ok), "only the last item fails");
    let delivered: Vec<Revision> = items.iter().filter_map(|i| i.as_ref().ok()).map(|e| e.revision()).collect();
    let expected_prefix: Vec<Revision> = (start + 1..).take(delivered.len()).collect();
    assert_eq!(delivered, expected_prefix, "delivered events are in order without gaps");
    if !lagged {
        assert_eq!(delivered.len(), total);
        return;
    }

    // The remedy: watch again from the last revision seen, which replays from history.
    let resume_from = delivered.last().copied().unwrap_or(start);
    let mut resumed = store.watch("/lag/", resume_from).await.unwrap();
    let mut next = resume_from + 1;
    while next <= last {
        assert_eq!(next_event(&mut resumed).await.revision(), next);
        next += 1;
    }
}

async fn next_progress_item(stream: &mut ProgressWatchStream) -> WatchItem {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await.expect("timed out waiting for a watch item") {
        Some(Ok(item)) => item,
        Some(Err(error)) => panic!("watch failed: {error}"),
        None => panic!("watch ended unexpectedly"),
    }
}

pub async fn watch_progress_reports_cover_every_change_before_them(store: Arc<dyn Store>) {
    let start = store.create("/p/a/0", val("0")).await.unwrap();
    let every = Some(Duration::from_millis(50));
    let mut watch = store.watch_with_progress("/p/a/", start, every).await.unwrap();
    if !store.reports_watch_progress() {
        // A store that cannot report progress reports the changes and nothing else.
        store.create("/p/b/0", val("b")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let revision = store.create("/p/a/1", val("a")).await.unwrap();
        match next_progress_item(&mut watch).await {
            WatchItem::Event(event) => assert_event(&event, EventKind::Put, "/p/a/1", "a", revision),
            WatchItem::Progress(revision) => panic!("progress to {revision} from a store that reports none"),
        }
        let quiet = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
        assert!(quiet.is_err(), "nothing more is reported: {quiet:?}");
        return;
    }

    // Changes under another prefix only: the watch reports progress past them and no change.
    let mut elsewhere = 0;
    for i in 0..3 {
        elsewhere = store.create(&format!("/p/b/{i}"), val("b")).await.unwrap();
    }
    loop {
        match next_progress_item(&mut watch).await {
            WatchItem::Progress(revision) if revision >= elsewhere => break,
            WatchItem::Progress(revision) => assert!(revision > start, "progress to {revision}, not past the start"),
            WatchItem::Event(event) => panic!("a change under another prefix was reported: {event:?}"),
        }
    }

    // Interleaved writes, with pauses for reports in between: every report comes after every
    // change at or before its revision, and none is reported twice or lost.
    let mut written = Vec::new();
    let mut newest = 0;
    for i in 1..=20 {
        written.push(store.create(&format!("/p/a/{i}"), val("a")).await.unwrap());
        newest = store.create(&format!("/p/b/x{i}"), val("b")).await.unwrap();
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    }
    let mut seen = Vec::new();
    let mut reports = 0;
    loop {
        match next_progress_item(&mut watch).await {
            WatchItem::Event(event) => seen.push(event.revision()),
            WatchItem::Progress(revision) => {
                reports += 1;
                let due: Vec<Revision> = written.iter().copied().filter(|r| *r <= revision).collect();
                assert_eq!(seen, due, "progress to {revision} reported before the changes up to it");
                if revision >= newest {
                    break;
                }
            }
        }
    }
    assert_eq!(seen, written);
    assert!(reports >= 1);

    // A plain watch never reports progress: its first item is the next change.
    let mut plain = store.watch("/p/a/", newest).await.unwrap();
    store.create("/p/b/last", val("b")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revision = store.create("/p/a/last", val("a")).await.unwrap();
    assert_event(&next_event(&mut plain).await, EventKind::Put, "/p/a/last", "a", revision);
}
