//! The behaviour every [`Store`] backend must share, as test functions any backend's tests run.
//!
//! Each function takes a fresh, empty store and panics if the backend misbehaves. A backend's
//! test module runs them all with [`store_conformance_tests!`](crate::store_conformance_tests):
//!
//! ```no_run
//! use std::sync::Arc;
//! use tug_store::{Store, memory::MemoryStore};
//!
//! async fn fresh(watch_buffer: usize) -> (Arc<dyn Store>, ()) {
//!     (Arc::new(MemoryStore::with_watch_buffer(watch_buffer)), ())
//! }
//!
//! tug_store::store_conformance_tests!(fresh);
//! # fn main() {}
//! ```
//!
//! The factory gets the live-event buffer per watcher the store should have (the lag test asks
//! for a small one) and returns the store with a guard kept alive until the test ends, such as
//! the temporary directory holding its files. The crate using the macro needs `tokio` (with
//! `macros` and `rt-multi-thread`) as a dependency.
//!
//! This module is compiled in normal builds so that backends living in other crates (etcd) can
//! run the same suite.

mod kv;
mod list;
mod watch;

pub use kv::*;
pub use list::*;
pub use watch::*;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{EventKind, KeyValue, ListOptions, Revision, Store, StoreError, WatchEvent, WatchStream};

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
            fresh_store_is_empty_and_uncompacted,
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
            watch_progress_reports_cover_every_change_before_them,
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
    tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await.expect("timed out waiting for a watch event")
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
