//! Upstream's `flowcontrol.Backoff` as the kubelet uses it for CrashLoopBackOff and image pull
//! back-off: per key, a delay starting at 10 s that doubles up to 5 minutes and is forgotten once
//! nothing happened for twice the maximum (so a container that ran 10 minutes starts afresh).
//! Times are passed in, which keeps the rules testable without clocks.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX)
    }
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, entries: HashMap::new() }
    }

    fn expired(&self, event: SystemTime, last_update: SystemTime) -> bool {
        since(event, last_update) > self.max * 2
    }

    /// The current delay of `key`.
    pub fn get(&self, key: &str) -> Duration {
        self.entries.get(key).map(|e| e.backoff).unwrap_or_default()
    }

    /// Whether `now` is still within the delay counted from `event` (a container's exit).
    pub fn is_in_backoff_since(&self, key: &str, event: SystemTime, now: SystemTime) -> bool {
        let Some(entry) = self.entries.get(key) else { return false };
        if self.expired(event, entry.last_update) {
            return false;
        }
        since(now, event) < entry.backoff
    }

    /// Whether `now` is still within the delay counted from the last [`Backoff::next`].
    pub fn is_in_backoff_since_update(&self, key: &str, now: SystemTime) -> bool {
        let Some(entry) = self.entries.get(key) else { return false };
        if self.expired(now, entry.last_update) {
            return false;
        }
        since(now, entry.last_update) < entry.backoff
    }

    /// Records an attempt: the first (or the first after a long quiet time) waits `initial`
    /// next time, each further one twice as long, up to `max`.
    pub fn next(&mut self, key: &str, now: SystemTime) {
        let backoff = match self.entries.get(key) {
            Some(e) if !self.expired(now, e.last_update) => (e.backoff * 2).min(self.max),
            _ => self.initial,
        };
        self.entries.insert(key.to_string(), Entry { backoff, last_update: now });
    }

    /// Forgets keys idle for longer than twice the maximum delay.
    pub fn gc(&mut self, now: SystemTime) {
        let max = self.max * 2;
        self.entries.retain(|_, e| since(now, e.last_update) <= max);
    }

    /// Forgets every key starting with `prefix` (a pod's keys, once the pod is gone).
    pub fn forget_prefix(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

/// Go's `time.Duration` string for whole seconds and minutes (`10s`, `2m40s`, `5m0s`), as the
/// CrashLoopBackOff message prints the delay.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 { format!("{secs}s") } else { format!("{}m{}s", secs / 60, secs % 60) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn crash_loop_delays_double_up_to_five_minutes() {
        let mut b = Backoff::default();
        let mut seen = Vec::new();
        let mut now = t(0);
        for _ in 0..7 {
            b.next("c", now);
            seen.push(b.get("c"));
            now += b.get("c");
        }
        let secs: Vec<u64> = seen.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn in_backoff_counts_from_the_exit() {
        let mut b = Backoff::default();
        assert!(!b.is_in_backoff_since("c", t(0), t(0)), "no entry: start at once");
        b.next("c", t(0));
        // The container ran 2 s and exited at t=2: wait until t=12.
        assert!(b.is_in_backoff_since("c", t(2), t(5)));
        assert!(b.is_in_backoff_since("c", t(2), t(11)));
        assert!(!b.is_in_backoff_since("c", t(2), t(12)));
    }

    #[test]
    fn ten_minutes_of_running_resets_the_delay() {
        let mut b = Backoff::default();
        b.next("c", t(0));
        b.next("c", t(20));
        assert_eq!(b.get("c"), Duration::from_secs(20));
        // Exited after running more than 10 minutes: not in back-off, and the next delay is 10 s.
        assert!(!b.is_in_backoff_since("c", t(20 + 601), t(20 + 601)));
        b.next("c", t(20 + 601));
        assert_eq!(b.get("c"), Duration::from_secs(10));
    }

    #[test]
    fn pull_backoff_counts_from_the_last_attempt() {
        let mut b = Backoff::default();
        b.next("img", t(0));
        assert!(b.is_in_backoff_since_update("img", t(9)));
        assert!(!b.is_in_backoff_since_update("img", t(10)));
        b.gc(t(10_000));
        assert_eq!(b.get("img"), Duration::ZERO);
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(160)), "2m40s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}
