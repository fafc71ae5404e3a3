//! The part of a watch every backend shares: joining a replay of history to the live feed.
//!
//! Backends publish each committed change once, in revision order, on an [`EventHub`]; each
//! watcher filters its feed by its prefix. To join replay and live feed without a gap, a
//! backend subscribes *before* it reads the replay at some snapshot revision; every change
//! after the snapshot is then certainly in the subscription, and changes at or before it (which
//! the replay already holds, or which the watcher asked not to see) are dropped by revision.
//!
//! The hub also remembers the newest revision it published, which gives a watcher its progress
//! reports: once a watcher has drained every change its channel held, it has seen every change
//! under its prefix up to the revision the hub had published before the draining began.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Instant, Sleep};

use crate::{ProgressWatchStream, Revision, StoreError, WatchEvent, WatchItem};

/// The live feed a backend publishes committed changes on.
pub(crate) type EventSender = Arc<EventHub>;
pub(crate) type EventReceiver = broadcast::Receiver<Arc<WatchEvent>>;

/// The most events a resource's channel holds for a watcher: about a second of pod creates at
/// the rate the scheduler benchmark drives.
pub(crate) const BUCKET_CAPACITY: usize = 1024;

/// Fans committed changes out to watchers by resource: one [`tokio::sync::broadcast`] channel
/// per *bucket*, a key's first three `/`-ended segments (`/registry/pods/`), so that a change
/// wakes only the watchers of its own resource. An API server has dozens of watches open on
/// other resources, and waking each of them for every change (to find it under another
/// prefix) cost more than serving the watchers the change was for. A watcher whose prefix is
/// shorter than a bucket gets every change.
///
/// The catch-all channel holds `capacity` events, each bucket's at most [`BUCKET_CAPACITY`]
/// (a channel allocates all its slots up front, and an API server watches some sixty
/// resources); a watcher that falls further behind on its own resource's changes gets
/// [`StoreError::WatcherLagged`], and an API watch client then resumes from its last
/// resourceVersion, replayed from the store's history.
pub(crate) struct EventHub {
    capacity: usize,
    buckets: RwLock<HashMap<String, broadcast::Sender<Arc<WatchEvent>>>>,
    everything: broadcast::Sender<Arc<WatchEvent>>,
    /// The revision of the newest change published, stored after it is in every channel.
    published: AtomicI64,
}

impl EventHub {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        let everything = broadcast::channel(capacity).0;
        Arc::new(EventHub {
            capacity: capacity.min(BUCKET_CAPACITY),
            buckets: RwLock::default(),
            everything,
            published: AtomicI64::new(0),
        })
    }

    /// Publishes a committed change to the watchers it may concern. Nobody watching is fine.
    /// Changes must be published one at a time, in revision order (each backend has one writer).
    pub(crate) fn send(&self, event: Arc<WatchEvent>) {
        let revision = event.revision();
        if self.everything.receiver_count() > 0 {
            let _ = self.everything.send(Arc::clone(&event));
        }
        if let Some(bucket) = bucket(&event.kv.key) {
            let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
            if let Some(channel) = buckets.get(bucket) {
                let _ = channel.send(event);
            }
        }
        // Release: a watcher that reads this revision finds the change in its channel.
        self.published.store(revision, Ordering::Release);
    }

    /// The revision of the newest change published.
    fn published(&self) -> Revision {
        self.published.load(Ordering::Acquire)
    }

    /// A feed that holds at least every change under `prefix` published from now on.
    pub(crate) fn subscribe(&self, prefix: &str) -> EventReceiver {
        let Some(bucket) = bucket(prefix) else { return self.everything.subscribe() };
        if let Some(channel) = self.buckets.read().unwrap_or_else(|e| e.into_inner()).get(bucket) {
            return channel.subscribe();
        }
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        buckets.entry(bucket.to_owned()).or_insert_with(|| broadcast::channel(self.capacity).0).subscribe()
    }
}

/// The bucket of a key or prefix: up to and including its third `/` (`/registry/pods/` of
/// `/registry/pods/default/web`), if it has three. Every key under a prefix that has a bucket
/// shares the prefix's bucket, since the prefix holds all three.
fn bucket(key: &str) -> Option<&str> {
    let (third, _) = key.match_indices('/').nth(2)?;
    Some(&key[..=third])
}

/// Builds a watch from a replay of history and a subscription taken before the replay was read.
///
/// Live events at or below `cutoff` (the revision the replay was read at, or the watcher's
/// `after` if that is newer) are dropped, so nothing is reported twice. The stream ends after
/// its first error: a watcher cannot trust anything after a hole in its feed. With
/// `progress_every`, the live part reports progress (see [`Live`]).
pub(crate) fn follow<R>(
    replay: R,
    hub: &Arc<EventHub>,
    live: EventReceiver,
    prefix: String,
    cutoff: Revision,
    progress_every: Option<Duration>,
) -> ProgressWatchStream
where
    R: Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static,
{
    let live = Live {
        hub: Arc::downgrade(hub),
        live,
        prefix,
        reported: cutoff,
        progress: progress_every.map(|every| (every, Box::pin(tokio::time::sleep(every)))),
        draining_to: None,
    };
    let live = stream::unfold(Some(live), |live| async move {
        let mut live = live?;
        let item = live.next_item().await;
        let more = item.is_ok();
        Some((item, more.then_some(live)))
    });
    let events = Box::pin(replay.map(|event| event.map(WatchItem::Event)).chain(live));
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

/// The live part of a watch: the changes under `prefix` newer than the last revision reported.
/// It fails with `WatcherLagged` if the subscription overflowed and with `Closed` once the
/// store is gone.
///
/// With progress reports, every `every` it notes the hub's newest published revision, drains
/// its channel (reporting the changes in it) and then reports progress to the noted revision,
/// if that is newer than anything reported: every change up to it was in the channel by then.
struct Live {
    /// Weak: the channels close, ending the watch, when the store (and so the hub) is dropped.
    hub: Weak<EventHub>,
    live: EventReceiver,
    prefix: String,
    /// The newest revision reported, as a change or as progress (at first the cutoff).
    reported: Revision,
    progress: Option<(Duration, Pin<Box<Sleep>>)>,
    /// While draining for a progress report: the revision it will report.
    draining_to: Option<Revision>,
}

impl Live {
    async fn next_item(&mut self) -> Result<WatchItem, StoreError> {
        loop {
            if let Some(target) = self.draining_to {
                match self.live.try_recv() {
                    Ok(event) => {
                        if let Some(event) = self.take(&event) {
                            return Ok(WatchItem::Event(event));
                        }
                    }
                    Err(TryRecvError::Empty) => {
                        self.draining_to = None;
                        if let Some((every, timer)) = &mut self.progress {
                            timer.as_mut().reset(Instant::now() + *every);
                        }
                        if target > self.reported {
                            self.reported = target;
                            return Ok(WatchItem::Progress(target));
                        }
                    }
                    Err(TryRecvError::Lagged(missed)) => return Err(StoreError::WatcherLagged { missed }),
                    Err(TryRecvError::Closed) => return Err(StoreError::Closed),
                }
                continue;
            }
            let received = match &mut self.progress {
                None => self.live.recv().await,
                Some((_, timer)) => tokio::select! {
                    received = self.live.recv() => received,
                    () = timer.as_mut() => {
                        self.draining_to = Some(self.hub.upgrade().map_or(0, |hub| hub.published()));
                        continue;
                    }
                },
            };
            match received {
                Ok(event) => {
                    if let Some(event) = self.take(&event) {
                        return Ok(WatchItem::Event(event));
                    }
                }
                Err(RecvError::Lagged(missed)) => return Err(StoreError::WatcherLagged { missed }),
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }

    /// The change to report for a published one, if it is news under this watch's prefix.
    fn take(&mut self, event: &WatchEvent) -> Option<WatchEvent> {
        if event.revision() <= self.reported || !event.kv.key.starts_with(&self.prefix) {
            return None;
        }
        self.reported = event.revision();
        Some(event.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, KeyValue};

    fn event(key: &str, revision: Revision) -> Arc<WatchEvent> {
        let kv =
            KeyValue { key: key.into(), value: bytes::Bytes::new(), create_revision: revision, mod_revision: revision };
        Arc::new(WatchEvent { kind: EventKind::Put, kv, prev: None })
    }

    #[test]
    fn a_bucket_is_the_first_three_segments() {
        assert_eq!(bucket("/registry/pods/default/web"), Some("/registry/pods/"));
        assert_eq!(bucket("/registry/pods/"), Some("/registry/pods/"));
        assert_eq!(bucket("/registry/pods"), None);
        assert_eq!(bucket("/registry/"), None);
        assert_eq!(bucket(""), None);
    }

    #[test]
    fn watchers_get_their_resources_changes_and_short_prefixes_get_all() {
        let hub = EventHub::new(16);
        let mut pods = hub.subscribe("/registry/pods/default/");
        let mut config_maps = hub.subscribe("/registry/configmaps/");
        let mut everything = hub.subscribe("/registry/");
        hub.send(event("/registry/pods/default/web", 1));
        hub.send(event("/registry/pods/other/db", 2));
        hub.send(event("/registry/short", 3));
        // The pods watcher filters the other namespace out itself (see `live_events`).
        assert_eq!(pods.try_recv().unwrap().revision(), 1);
        assert_eq!(pods.try_recv().unwrap().revision(), 2);
        assert!(pods.try_recv().is_err());
        assert!(config_maps.try_recv().is_err(), "not woken for other resources");
        let all: Vec<Revision> = std::iter::from_fn(|| everything.try_recv().ok()).map(|e| e.revision()).collect();
        assert_eq!(all, [1, 2, 3]);
    }

    #[test]
    fn a_watcher_that_falls_behind_on_its_own_resource_lags() {
        let hub = EventHub::new(2);
        let mut pods = hub.subscribe("/registry/pods/");
        for revision in 1..=3 {
            hub.send(event("/registry/pods/a/b", revision));
        }
        assert!(matches!(pods.try_recv(), Err(broadcast::error::TryRecvError::Lagged(1))));
        // Other resources' changes do not count against it.
        let mut config_maps = hub.subscribe("/registry/configmaps/");
        for revision in 4..=10 {
            hub.send(event("/registry/pods/a/b", revision));
        }
        hub.send(event("/registry/configmaps/a/b", 11));
        assert_eq!(config_maps.try_recv().unwrap().revision(), 11);
    }
}
