//! A keyed work queue (a small client-go `util/workqueue`): a key added while it waits is queued
//! once, a key added while a worker has it is queued again only when that worker is done, so no
//! key is ever synced twice at once; failed keys come back after a per-key exponential backoff.
//!
//! The service-keyed controllers use it rather than kube-runtime's applier because their sync
//! must also run for keys whose object is gone (the cleanup of a deleted Service's Endpoints).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::replicaset::backoff;

/// Consecutive failures of a key after which they are logged as warnings.
const WARN_AFTER_FAILURES: u32 = 5;
/// Retries of a failing key before it is dropped (upstream's `maxRetries`).
const MAX_RETRIES: u32 = 15;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    /// Keys waiting in `queue` or to be queued again once their worker is done.
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// The queue; cheap to clone.
#[derive(Clone, Default)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

impl WorkQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is queued already.
    pub fn add(&self, key: String) {
        let mut s = self.lock();
        if !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: String, delay: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` again after its backoff, one step longer than the last, and returns how many
    /// times in a row it failed; after [`MAX_RETRIES`] it is forgotten instead (`None`), as
    /// upstream's controllers drop a key until an event brings it back.
    fn add_rate_limited(&self, key: String) -> Option<u32> {
        let failures = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        if failures > MAX_RETRIES {
            self.forget(&key);
            return None;
        }
        self.add_after(key, backoff(failures));
        Some(failures)
    }

    /// Forgets the failures of `key`.
    fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// The next key, which the caller now holds until [`Self::done`].
    async fn get(&self) -> String {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.queue.is_empty() {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Runs `workers` workers calling `sync` for each key until `shutdown`: a key whose sync
    /// fails is retried with backoff (at most [`MAX_RETRIES`] times), one that succeeds has its
    /// failures forgotten.
    pub async fn run_workers<F, Fut, E>(&self, workers: usize, shutdown: CancellationToken, sync: F)
    where
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::error::Error,
    {
        let one = |sync: F| {
            let (q, shutdown) = (self.clone(), shutdown.clone());
            async move {
                loop {
                    let key = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        key = q.get() => key,
                    };
                    match sync(key.clone()).await {
                        Ok(()) => q.forget(&key),
                        Err(e) => {
                            let source = std::error::Error::source(&e).map(|s| s.to_string());
                            match q.add_rate_limited(key.clone()) {
                                Some(failures) if failures < WARN_AFTER_FAILURES => {
                                    // Conflicts and caches a moment behind are routine.
                                    tracing::debug!(%key, failures, error = %e, ?source, "sync failed; retrying");
                                }
                                Some(failures) => {
                                    tracing::warn!(%key, failures, error = %e, ?source, "sync failed; retrying");
                                }
                                None => {
                                    tracing::warn!(%key, error = %e, ?source, "sync failed too often; dropping the key until it changes");
                                }
                            }
                        }
                    }
                    q.done(&key);
                }
            }
        };
        futures::future::join_all((0..workers).map(|_| one(sync.clone()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_twice_is_queued_once() {
        let q = WorkQueue::default();
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.get().await, "a");
        assert_eq!(q.get().await, "b");
        assert!(q.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_processed_comes_back_after_done() {
        let q = WorkQueue::default();
        q.add("a".into());
        let key = q.get().await;
        q.add("a".into());
        assert!(q.lock().queue.is_empty(), "never handed to a second worker while held");
        q.done(&key);
        assert_eq!(q.get().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_failing_too_often_is_dropped() {
        let q = WorkQueue::default();
        for n in 1..=MAX_RETRIES {
            assert_eq!(q.add_rate_limited("a".into()), Some(n));
        }
        assert_eq!(q.add_rate_limited("a".into()), None);
        assert!(!q.lock().failures.contains_key("a"));
    }
}
