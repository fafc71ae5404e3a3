//! The scheduling queue (upstream's `PriorityQueue` in `internal/queue`): pods wait in
//! `active` to be scheduled, in `backoff` after a failure (1 s doubling per attempt up to
//! 10 s), or in `unschedulable` until a cluster event that might make them fit (a node added
//! or changed, an assigned pod deleted) moves them back; any pod left unschedulable for
//! 5 minutes is moved back regardless. Active pods pop by priority (higher first), then in
//! the order they became active, as upstream's default `PrioritySort`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a pod may sit unschedulable before it is retried without an event.
pub const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A pod's queue key: `namespace/name`.
pub type PodKey = String;

#[derive(Debug, Default)]
struct PodInfo {
    attempts: u32,
    /// `spec.priority`.
    priority: i32,
    /// When the pod last failed (its backoff runs from here).
    failed_at: Option<Instant>,
    /// The plugins that rejected it in its last attempt (for queueing hints).
    unschedulable_plugins: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (higher priority first, arrival) -> pod.
    active: BTreeMap<(Reverse<i32>, u64), PodKey>,
    /// Ready time (and a sequence number for uniqueness) -> pod.
    backoff: BTreeMap<(Instant, u64), PodKey>,
    /// Pod -> when it became unschedulable.
    unschedulable: HashMap<PodKey, Instant>,
    in_flight: HashSet<PodKey>,
    infos: HashMap<PodKey, PodInfo>,
    seq: u64,
    scheduling_cycle: u64,
    /// The cycle at which the last move request happened: a pod whose attempt started before
    /// it goes to backoff rather than unschedulable, since the event may have helped it.
    move_request_cycle: u64,
}

impl Inner {
    fn queued(&self, key: &str) -> bool {
        self.active.values().any(|k| k == key)
            || self.backoff.values().any(|k| k == key)
            || self.unschedulable.contains_key(key)
            || self.in_flight.contains(key)
    }

    fn backoff_expiry(&self, key: &str) -> Option<Instant> {
        let info = self.infos.get(key)?;
        let failed = info.failed_at?;
        Some(failed + backoff_duration(info.attempts))
    }

    fn requeue_after_backoff(&mut self, key: PodKey, now: Instant) {
        let ready = self.backoff_expiry(&key).unwrap_or(now);
        if ready <= now {
            self.push_active(key);
        } else {
            self.seq += 1;
            self.backoff.insert((ready, self.seq), key);
        }
    }

    fn push_active(&mut self, key: PodKey) {
        let priority = self.infos.get(&key).map_or(0, |i| i.priority);
        self.seq += 1;
        self.active.insert((Reverse(priority), self.seq), key);
    }

    fn remove_everywhere(&mut self, key: &str) {
        self.active.retain(|_, k| k != key);
        self.backoff.retain(|_, k| k != key);
        self.unschedulable.remove(key);
    }
}

/// The backoff after `attempts` failed attempts: 1 s, 2 s, 4 s, 8 s, then 10 s.
pub fn backoff_duration(attempts: u32) -> Duration {
    let mut d = INITIAL_BACKOFF;
    for _ in 1..attempts {
        d = d.saturating_mul(2);
        if d >= MAX_BACKOFF {
            return MAX_BACKOFF;
        }
    }
    d
}

/// The queue; shared between the event handlers and the scheduling loop.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    ready: Notify,
}

impl SchedulingQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new pending pod: to `active`, unless it is already queued somewhere.
    pub fn add(&self, key: &str, priority: i32) {
        let mut q = self.lock();
        if q.queued(key) {
            return;
        }
        q.infos.entry(key.to_string()).or_default().priority = priority;
        q.push_active(key.to_string());
        drop(q);
        self.ready.notify_one();
    }

    /// The pod's spec or labels changed: an unschedulable pod gets another try (after its
    /// backoff); an unknown one is added.
    pub fn update(&self, key: &str, priority: i32) {
        let mut q = self.lock();
        let queued = q.queued(key);
        q.infos.entry(key.to_string()).or_default().priority = priority;
        if q.unschedulable.remove(key).is_some() {
            q.requeue_after_backoff(key.to_string(), Instant::now());
        } else if q.in_flight.contains(key) {
            // The attempt under way saw the old pod: if it fails, retry after the backoff.
            q.move_request_cycle = q.scheduling_cycle;
        } else if !queued {
            q.push_active(key.to_string());
        }
        drop(q);
        self.ready.notify_one();
    }

    /// The pod was deleted or bound elsewhere: forget it.
    pub fn delete(&self, key: &str) {
        let mut q = self.lock();
        q.remove_everywhere(key);
        q.in_flight.remove(key);
        q.infos.remove(key);
    }

    /// Waits for an active pod and takes it; returns its key and the scheduling cycle.
    pub async fn pop(&self) -> (PodKey, u64) {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.lock();
                if let Some((_, key)) = q.active.pop_first() {
                    q.scheduling_cycle += 1;
                    let cycle = q.scheduling_cycle;
                    q.infos.entry(key.clone()).or_default().attempts += 1;
                    q.in_flight.insert(key.clone());
                    return (key, cycle);
                }
            }
            notified.await;
        }
    }

    /// The pod was scheduled (or dropped): it leaves the queue.
    pub fn done(&self, key: &str) {
        let mut q = self.lock();
        q.in_flight.remove(key);
        q.infos.remove(key);
    }

    /// The attempt started at `cycle` found no node: the pod waits for an event, or backs off
    /// at once if an event came during the attempt.
    pub fn add_unschedulable(&self, key: &str, cycle: u64) {
        self.add_unschedulable_by(key, cycle, Vec::new());
    }

    /// [`add_unschedulable`](Self::add_unschedulable), remembering which plugins rejected the
    /// pod so that [`move_if`](Self::move_if) can ask their queueing hints.
    pub fn add_unschedulable_by(&self, key: &str, cycle: u64, plugins: Vec<&'static str>) {
        let now = Instant::now();
        let mut q = self.lock();
        if !q.in_flight.remove(key) {
            return; // deleted meanwhile
        }
        let info = q.infos.entry(key.to_string()).or_default();
        info.failed_at = Some(now);
        info.unschedulable_plugins = plugins;
        if q.move_request_cycle >= cycle {
            q.requeue_after_backoff(key.to_string(), now);
        } else {
            q.unschedulable.insert(key.to_string(), now);
        }
        drop(q);
        self.ready.notify_one();
    }

    /// The attempt failed with an error: the pod backs off.
    pub fn add_backoff(&self, key: &str) {
        let now = Instant::now();
        let mut q = self.lock();
        if !q.in_flight.remove(key) {
            return;
        }
        q.infos.entry(key.to_string()).or_default().failed_at = Some(now);
        q.requeue_after_backoff(key.to_string(), now);
        drop(q);
        self.ready.notify_one();
    }

    /// A cluster event that may make unschedulable pods fit: all of them move to active, or to
    /// backoff while their backoff lasts.
    pub fn move_all_to_active_or_backoff(&self, event: &str) {
        let now = Instant::now();
        let mut q = self.lock();
        let keys: Vec<PodKey> = q.unschedulable.drain().map(|(k, _)| k).collect();
        tracing::debug!(event, pods = keys.len(), "moving unschedulable pods");
        for key in keys {
            q.requeue_after_backoff(key, now);
        }
        q.move_request_cycle = q.scheduling_cycle;
        drop(q);
        self.ready.notify_one();
    }

    /// A cluster event that helps only some unschedulable pods (upstream's queueing hints):
    /// a pod moves if `helps(key, plugins that rejected it)` says so; the others keep waiting.
    pub fn move_if(&self, event: &str, helps: impl Fn(&str, &[&'static str]) -> bool) {
        let now = Instant::now();
        let mut q = self.lock();
        let keys: Vec<PodKey> = q
            .unschedulable
            .keys()
            .filter(|k| helps(k, q.infos.get(*k).map_or(&[][..], |i| &i.unschedulable_plugins)))
            .cloned()
            .collect();
        tracing::debug!(event, pods = keys.len(), "moving unschedulable pods the event may help");
        for key in keys {
            q.unschedulable.remove(&key);
            q.requeue_after_backoff(key, now);
        }
        q.move_request_cycle = q.scheduling_cycle;
        drop(q);
        self.ready.notify_one();
    }

    /// Moves pods whose backoff is over to active (upstream runs this every second).
    pub fn flush_backoff_completed(&self) {
        let now = Instant::now();
        let mut q = self.lock();
        let mut moved = false;
        while let Some(entry) = q.backoff.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            q.push_active(key);
            moved = true;
        }
        drop(q);
        if moved {
            self.ready.notify_one();
        }
    }

    /// Moves pods unschedulable for longer than [`UNSCHEDULABLE_TIMEOUT`] back (upstream runs
    /// this every 30 seconds).
    pub fn flush_unschedulable_left_over(&self) {
        let now = Instant::now();
        let mut q = self.lock();
        let old: Vec<PodKey> = q
            .unschedulable
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= UNSCHEDULABLE_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &old {
            q.unschedulable.remove(key);
            q.requeue_after_backoff(key.clone(), now);
        }
        drop(q);
        if !old.is_empty() {
            self.ready.notify_one();
        }
    }

    /// Pool sizes (active, backoff, unschedulable), for tests and logs.
    pub fn lens(&self) -> (usize, usize, usize) {
        let q = self.lock();
        (q.active.len(), q.backoff.len(), q.unschedulable.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pop_now(q: &SchedulingQueue) -> Option<(PodKey, u64)> {
        tokio::time::timeout(Duration::from_millis(1), q.pop()).await.ok()
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_ten() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff_duration(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn pods_pop_in_order_once() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        q.add("ns/b", 0);
        q.add("ns/a", 0);
        assert_eq!(pop_now(&q).await.unwrap().0, "ns/a");
        q.add("ns/a", 0); // in flight: not added again
        assert_eq!(pop_now(&q).await.unwrap().0, "ns/b");
        assert!(pop_now(&q).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_pods_pop_first() {
        let q = SchedulingQueue::new();
        q.add("ns/low", 0);
        q.add("ns/high", 1000);
        q.add("ns/low2", 0);
        let order: Vec<PodKey> =
            [pop_now(&q).await, pop_now(&q).await, pop_now(&q).await].into_iter().map(|p| p.unwrap().0).collect();
        assert_eq!(order, vec!["ns/high", "ns/low", "ns/low2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_wait_for_an_event_not_for_time() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        let (key, cycle) = pop_now(&q).await.unwrap();
        q.add_unschedulable(&key, cycle);
        assert_eq!(q.lens(), (0, 0, 1));
        tokio::time::advance(Duration::from_secs(60)).await;
        q.flush_backoff_completed();
        assert!(pop_now(&q).await.is_none());
        // The backoff (1 s) is long over: the event moves it straight to active.
        q.move_all_to_active_or_backoff("NodeAdd");
        assert_eq!(pop_now(&q).await.unwrap().0, "ns/a");
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_during_backoff_moves_the_pod_to_backoff_first() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        let (key, cycle) = pop_now(&q).await.unwrap();
        q.add_unschedulable(&key, cycle);
        q.move_all_to_active_or_backoff("NodeAdd");
        assert_eq!(q.lens(), (0, 1, 0));
        tokio::time::advance(Duration::from_millis(1100)).await;
        q.flush_backoff_completed();
        assert_eq!(pop_now(&q).await.unwrap().0, "ns/a");
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_during_the_attempt_sends_the_pod_to_backoff() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        let (key, cycle) = pop_now(&q).await.unwrap();
        q.move_all_to_active_or_backoff("NodeAdd");
        q.add_unschedulable(&key, cycle);
        assert_eq!(q.lens(), (0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_during_the_attempt_sends_the_pod_to_backoff() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        let (key, cycle) = pop_now(&q).await.unwrap();
        q.update("ns/a", 0);
        q.add_unschedulable(&key, cycle);
        assert_eq!(q.lens(), (0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_longer_each_attempt() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        for expected in [1u64, 2, 4] {
            let (key, _) = pop_now(&q).await.unwrap();
            q.add_backoff(&key);
            tokio::time::advance(Duration::from_millis(expected * 1000 - 100)).await;
            q.flush_backoff_completed();
            assert!(pop_now(&q).await.is_none(), "still backing off after {expected}s");
            tokio::time::advance(Duration::from_millis(200)).await;
            q.flush_backoff_completed();
            assert_eq!(q.lens().0, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_hints_move_only_the_pods_an_event_may_help() {
        let q = SchedulingQueue::new();
        q.add("ns/ports", 0);
        q.add("ns/cpu", 0);
        let (a, ca) = pop_now(&q).await.unwrap();
        let (b, cb) = pop_now(&q).await.unwrap();
        q.add_unschedulable_by(&a, ca, vec!["NodePorts"]);
        q.add_unschedulable_by(&b, cb, vec!["NodeResourcesFit"]);
        tokio::time::advance(Duration::from_secs(2)).await;
        q.move_if("AssignedPodDelete", |_, plugins| plugins != ["NodePorts"]);
        assert_eq!(q.lens(), (1, 0, 1));
        assert_eq!(pop_now(&q).await.unwrap().0, "ns/cpu");
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_are_retried_after_five_minutes() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        let (key, cycle) = pop_now(&q).await.unwrap();
        q.add_unschedulable(&key, cycle);
        tokio::time::advance(Duration::from_secs(299)).await;
        q.flush_unschedulable_left_over();
        assert_eq!(q.lens(), (0, 0, 1));
        tokio::time::advance(Duration::from_secs(2)).await;
        q.flush_unschedulable_left_over();
        assert_eq!(q.lens(), (1, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn updates_retry_unschedulable_pods_and_deletes_forget_them() {
        let q = SchedulingQueue::new();
        q.add("ns/a", 0);
        let (key, cycle) = pop_now(&q).await.unwrap();
        q.add_unschedulable(&key, cycle);
        tokio::time::advance(Duration::from_secs(2)).await;
        q.update("ns/a", 0);
        assert_eq!(q.lens(), (1, 0, 0));
        q.delete("ns/a");
        assert_eq!(q.lens(), (0, 0, 0));
    }
}
