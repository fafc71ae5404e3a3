//! The delay before a failed Job's pods are replaced (upstream's `backoff_utils.go`): 10 s after
//! the first failure since the last success, doubling with each further one, at most six
//! minutes.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// The delay after the first failure (upstream's `DefaultJobPodFailureBackOff`).
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest delay (upstream's `MaxJobPodFailureBackOff`).
pub const MAX: Duration = Duration::from_secs(6 * 60);

/// Failures of one Job since its last success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub failures: u32,
    pub last_failure: Option<Timestamp>,
}

impl Record {
    /// The record after a sync saw `succeeded` new successes and new failures finishing at
    /// `failed_at` (a success, upstream compares finish times; here it simply starts over).
    pub fn observe(self, succeeded: usize, failed_at: &[Timestamp]) -> Self {
        let mut r = if succeeded > 0 { Record::default() } else { self };
        for t in failed_at {
            r.failures += 1;
            r.last_failure = Some(r.last_failure.map_or(*t, |l| l.max(*t)));
        }
        r
    }

    /// How long to wait at `now` before creating pods again.
    pub fn remaining(&self, now: Timestamp) -> Duration {
        let Some(last) = self.last_failure else { return Duration::ZERO };
        let delay = delay(self.failures);
        let elapsed = now.duration_since(last);
        let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
        delay.saturating_sub(elapsed)
    }
}

/// The delay after `failures` consecutive failures.
pub fn delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    INITIAL.saturating_mul(1u32 << (failures - 1).min(16)).min(MAX)
}

/// When a pod finished: its containers' latest termination, else `now`.
pub fn finish_time(pod: &Pod, now: Timestamp) -> Timestamp {
    let status = pod.status.as_ref();
    let all = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .chain(status.and_then(|s| s.init_container_statuses.as_ref()))
        .flatten();
    all.filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0)).max().unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_delay_doubles_from_ten_seconds_up_to_six_minutes() {
        assert_eq!(delay(0), Duration::ZERO);
        assert_eq!(delay(1), Duration::from_secs(10));
        assert_eq!(delay(2), Duration::from_secs(20));
        assert_eq!(delay(4), Duration::from_secs(80));
        assert_eq!(delay(6), Duration::from_secs(320));
        assert_eq!(delay(7), MAX);
        assert_eq!(delay(100), MAX);
    }

    #[test]
    fn remaining_time_counts_from_the_last_failure() {
        let r = Record::default().observe(0, &[ts("2024-01-01T00:00:00Z"), ts("2024-01-01T00:00:05Z")]);
        assert_eq!(r.failures, 2);
        assert_eq!(r.remaining(ts("2024-01-01T00:00:15Z")), Duration::from_secs(10));
        assert_eq!(r.remaining(ts("2024-01-01T00:01:00Z")), Duration::ZERO);
    }

    #[test]
    fn a_success_resets_the_record() {
        let r = Record::default().observe(0, &[ts("2024-01-01T00:00:00Z")]);
        let r = r.observe(1, &[]);
        assert_eq!(r, Record::default());
        assert_eq!(r.remaining(ts("2024-01-01T00:00:01Z")), Duration::ZERO);
    }
}
