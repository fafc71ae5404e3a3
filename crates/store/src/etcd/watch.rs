//! Watches on etcd that survive a dropped stream.
//!
//! A [`Follower`] owns one etcd watch stream and remembers the revision after the last change it
//! delivered. When the stream fails (a member restarts, the connection drops, a leader changes)
//! it opens a new one from that revision, so the caller sees no gap and no duplicate; it gives up
//! only when the revision was compacted meanwhile (`Compacted`, the caller must relist) or when
//! etcd stays unreachable for [`RESUME_PATIENCE`] (`Unavailable`).
//!
//! etcd's own flow control bounds what a slow reader holds, so these watches never end with
//! `WatcherLagged`: a watcher that falls behind is served from etcd's history.
//!
//! Progress reports come from etcd itself: a progress request on the stream makes etcd answer,
//! once it has sent this watch every change up to its current revision, with an empty response
//! carrying that revision.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use futures::stream;
use tokio::time::{Instant, Sleep};

use super::{Shared, etcd_error, key_value, prefix_range};
use crate::{EventKind, KeyValue, ProgressWatchStream, Revision, StoreError, WatchEvent, WatchItem};

/// How long a watch keeps trying to reopen its stream before it fails as unavailable.
const RESUME_PATIENCE: Duration = Duration::from_secs(60);

/// How long a watch whose store was dropped waits for the writes that store acknowledged.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// Opens a watch of `prefix` after `after` (0: from now) and returns once etcd has created it,
/// so that every write acknowledged after this returns is reported.
pub(super) async fn start(
    client: Client,
    shared: Arc<Shared>,
    prefix: &str,
    after: Revision,
    progress_every: Option<Duration>,
) -> Result<ProgressWatchStream, StoreError> {
    let mut follower = Follower {
        client,
        shared,
        prefix: prefix.to_string(),
        next: if after > 0 { after + 1 } else { 0 },
        stream: None,
        pending: VecDeque::new(),
        progress: progress_every.map(|every| (every, Box::pin(tokio::time::sleep(every)))),
        closing: false,
        done: false,
    };
    match follower.open().await {
        Ok(()) => {}
        // From a known revision, the watch can wait for etcd to come back: it reopens with the
        // patience of a broken stream when first polled. "From now" needs etcd to say when now is.
        Err(StoreError::Unavailable { .. }) if after > 0 => {}
        Err(error) => return Err(error),
    }
    Ok(Box::pin(stream::unfold(follower, |mut follower| async move {
        let item = follower.next_item().await?;
        Some((item, follower))
    })))
}

struct Follower {
    client: Client,
    shared: Arc<Shared>,
    prefix: String,
    /// The first revision not yet delivered (0 until the first stream says where "now" is).
    next: Revision,
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<WatchItem>,
    /// How often to ask etcd for progress, and when next.
    progress: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The store was dropped: once `pending` is delivered, the stream ends with `Closed`.
    closing: bool,
    done: bool,
}

impl Follower {
    /// Opens an etcd watch from `next` and waits until etcd confirms it.
    async fn open(&mut self) -> Result<(), StoreError> {
        let (key, end) = prefix_range(&self.prefix);
        let mut options = WatchOptions::new().with_range(end).with_prev_key();
        if self.next > 0 {
            options = options.with_start_revision(self.next);
        }
        let mut stream =
            self.client.watch_client().watch(key, Some(options)).await.map_err(|e| etcd_error("watch", e))?;
        loop {
            match stream.message().await.map_err(|e| etcd_error("watch", e))? {
                Some(response) if response.created() => {
                    if response.canceled() {
                        return Err(self.cancelled(&response));
                    }
                    if self.next == 0 {
                        self.next = response.header().map_or(0, |h| h.revision()) + 1;
                    }
                    self.stream = Some(stream);
                    return Ok(());
                }
                Some(_) => continue,
                None => {
                    return Err(StoreError::Unavailable { reason: "etcd closed the watch before creating it".into() });
                }
            }
        }
    }

    /// The error a cancelled watch response stands for.
    fn cancelled(&self, response: &WatchResponse) -> StoreError {
        if response.compact_revision() > 0 {
            return StoreError::Compacted { requested: self.next - 1, compacted: response.compact_revision() };
        }
        StoreError::Unavailable { reason: format!("etcd cancelled the watch: {}", response.cancel_reason()) }
    }

    async fn next_item(&mut self) -> Option<Result<WatchItem, StoreError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            if self.closing {
                self.done = true;
                return Some(Err(StoreError::Closed));
            }
            if self.stream.is_none()
                && let Err(error) = self.reopen().await
            {
                self.done = true;
                return Some(Err(error));
            }
            let stopped = self.shared.stopped.clone();
            let stream = self.stream.as_mut()?;
            let progress_due = async {
                match &mut self.progress {
                    Some((every, timer)) => {
                        timer.as_mut().await;
                        timer.as_mut().reset(Instant::now() + *every);
                    }
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                biased;
                message = stream.message() => message,
                () = progress_due => {
                    // The answer comes on the stream; a stream too broken to ask is reopened.
                    if stream.request_progress().await.is_err() {
                        self.stream = None;
                    }
                    continue;
                }
                () = stopped.cancelled() => {
                    if let Err(error) = self.drain().await {
                        self.done = true;
                        return Some(Err(error));
                    }
                    self.closing = true;
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    if let Err(error) = self.take(&response) {
                        self.done = true;
                        return Some(Err(error));
                    }
                }
                // The stream broke: reopen from `next` on the next turn.
                Ok(None) | Err(_) => {
                    tracing::debug!(prefix = %self.prefix, next = self.next, "etcd watch stream ended; resuming");
                    self.stream = None;
                }
            }
        }
    }

    /// Queues the events of one response, dropping any a resumed stream repeats; an empty
    /// response is etcd's answer to a progress request, reported only by a watch that asked
    /// for progress (the store's shutdown `drain` asks too, on etcd versions whose answers may
    /// overtake events).
    fn take(&mut self, response: &WatchResponse) -> Result<(), StoreError> {
        if response.canceled() || response.compact_revision() > 0 {
            return Err(self.cancelled(response));
        }
        if response.events().is_empty() && !response.created() {
            let revision = response.header().map_or(0, |h| h.revision());
            if self.progress.is_some() && revision >= self.next && self.next > 0 {
                self.next = revision + 1;
                self.pending.push_back(WatchItem::Progress(revision));
            }
            return Ok(());
        }
        let mut newest = None;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let kv = key_value(kv)?;
            if kv.mod_revision < self.next {
                continue;
            }
            newest = Some(kv.mod_revision);
            let prev = event.prev_kv().map(key_value).transpose()?;
            let event = match event.event_type() {
                EventType::Put => WatchEvent { kind: EventKind::Put, kv, prev },
                // etcd's delete event carries only the key; the store reports the last value.
                EventType::Delete => {
                    let last = prev.clone().unwrap_or_else(|| KeyValue { create_revision: 0, ..kv.clone() });
                    WatchEvent { kind: EventKind::Delete, kv: KeyValue { mod_revision: kv.mod_revision, ..last }, prev }
                }
            };
            self.pending.push_back(WatchItem::Event(event));
        }
        if let Some(newest) = newest {
            self.next = newest + 1;
        }
        Ok(())
    }

    /// Reopens a broken stream from `next`, retrying with backoff while etcd is unreachable.
    async fn reopen(&mut self) -> Result<(), StoreError> {
        let deadline = Instant::now() + RESUME_PATIENCE;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.open().await {
                Ok(()) => return Ok(()),
                Err(error @ StoreError::Compacted { .. }) => return Err(error),
                Err(error) if Instant::now() + delay > deadline => return Err(error),
                Err(error) => {
                    tracing::debug!(prefix = %self.prefix, %error, "reopening an etcd watch");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shared.stopped.cancelled() => return Err(StoreError::Closed),
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// After the store was dropped: receives the changes up to the last write the store
    /// acknowledged, which etcd may not have streamed yet. A progress request makes etcd answer
    /// with its current revision once everything before it has been sent.
    async fn drain(&mut self) -> Result<(), StoreError> {
        let target = self.shared.last_write.load(Ordering::Acquire);
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        if self.next > target {
            return Ok(());
        }
        stream.request_progress().await.map_err(|e| etcd_error("watch progress", e))?;
        let deadline = Instant::now() + DRAIN_PATIENCE;
        while self.next <= target {
            let Some(stream) = self.stream.as_mut() else { break };
            let response = match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(response))) => response,
                _ => break,
            };
            let progress = response.events().is_empty() && response.header().map_or(0, |h| h.revision()) >= target;
            self.take(&response)?;
            if progress {
                break;
            }
        }
        Ok(())
    }
}
