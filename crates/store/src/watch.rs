//! The part of a watch every backend shares: joining a replay of history to the live feed.
//!
//! Backends publish each committed change once, in revision order, on a
//! [`tokio::sync::broadcast`] channel; each watcher filters that feed by its prefix. To join
//! replay and live feed without a gap, a backend subscribes *before* it reads the replay at some
//! snapshot revision; every change after the snapshot is then certainly in the subscription, and
//! changes at or before it (which the replay already holds, or which the watcher asked not to
//! see) are dropped by revision.

use std::sync::Arc;

use futures::{Stream, StreamExt, stream};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{Revision, StoreError, WatchEvent, WatchStream};

/// The live feed a backend publishes committed changes on.
pub(crate) type EventSender = broadcast::Sender<Arc<WatchEvent>>;
pub(crate) type EventReceiver = broadcast::Receiver<Arc<WatchEvent>>;

/// Builds a watch from a replay of history and a subscription taken before the replay was read.
///
/// Live events at or below `cutoff` (the revision the replay was read at, or the watcher's
/// `after` if that is newer) are dropped, so nothing is reported twice. The stream ends after
/// its first error: a watcher cannot trust anything after a hole in its feed.
pub(crate) fn follow<R>(replay: R, live: EventReceiver, prefix: String, cutoff: Revision) -> WatchStream
where
    R: Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static,
{
    let events = Box::pin(replay.chain(live_events(live, prefix, cutoff)));
    // Checked before polling on: after a replay error the chain would move on to the live feed.
    Box::pin(stream::unfold((events, false), |(mut events, failed)| async move {
        if failed {
            return None;
        }
        let item = events.next().await?;
        let failed = item.is_err();
        Some((item, (events, failed)))
    }))
}

/// Live events under `prefix` newer than `cutoff`; ends with `WatcherLagged` if the subscription
/// overflowed and with `Closed` once the store is gone.
fn live_events(
    live: EventReceiver,
    prefix: String,
    cutoff: Revision,
) -> impl Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static {
    stream::unfold(Some((live, prefix)), move |state| async move {
        let (mut live, prefix) = state?;
        loop {
            match live.recv().await {
                Ok(event) => {
                    if event.revision() > cutoff && event.kv.key.starts_with(&prefix) {
                        let event = WatchEvent::clone(&event);
                        return Some((Ok(event), Some((live, prefix))));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    return Some((Err(StoreError::WatcherLagged { missed }), None));
                }
                Err(RecvError::Closed) => return Some((Err(StoreError::Closed), None)),
            }
        }
    })
}
