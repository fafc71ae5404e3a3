//! Expectations (upstream's `ControllerExpectations` and `UIDTrackingControllerExpectations` in
//! `pkg/controller/controller_utils.go`): the pod creations and deletions a controller has asked
//! for and not yet seen in its informer cache.
//!
//! A controller that acted on a key records what it expects; its event handlers lower the
//! counts as the cache catches up; its sync changes nothing while expectations are pending, so a
//! slow cache never makes it create or delete twice. Expectations expire after
//! [`EXPECTATIONS_TIMEOUT`], so a lost watch event delays a controller but never wedges it.
//! Deletions are tracked by pod key, so each one is counted once whether it is seen as a
//! deletion timestamp or as the final delete.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long expectations are trusted before a sync goes ahead anyway (upstream's
/// `ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Expectation {
    add: i64,
    del: i64,
    set_at: Instant,
    /// The keys (`namespace/name`) of the pods whose deletion is awaited.
    deleting: HashSet<String>,
}

impl Expectation {
    fn fulfilled(&self) -> bool {
        self.add <= 0 && self.del <= 0
    }
}

/// Creations and deletions in flight, per controller key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Expectations {
    by_key: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the controller of `key` may act: nothing is awaited, everything awaited was
    /// seen, or the expectations are too old to trust.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            Some(e) => e.fulfilled() || e.set_at.elapsed() > EXPECTATIONS_TIMEOUT,
            None => true,
        }
    }

    /// Records that `count` pods are being created for `key` (replacing earlier expectations).
    pub fn expect_creations(&self, key: &str, count: usize) {
        self.lock().insert(
            key.to_string(),
            Expectation { add: count as i64, del: 0, set_at: Instant::now(), deleting: HashSet::new() },
        );
    }

    /// Records that the pods `pod_keys` are being deleted for `key` (replacing earlier
    /// expectations).
    pub fn expect_deletions(&self, key: &str, pod_keys: impl IntoIterator<Item = String>) {
        let deleting: HashSet<String> = pod_keys.into_iter().collect();
        self.lock().insert(
            key.to_string(),
            Expectation { add: 0, del: deleting.len() as i64, set_at: Instant::now(), deleting },
        );
    }

    /// A pod of `key` appeared in the cache (or a create it expected was given up).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.add -= 1;
        }
    }

    /// The pod `pod_key` of `key` is going or gone (or its deletion was given up); counted
    /// once per pod, and only for pods whose deletion was expected.
    pub fn deletion_observed(&self, key: &str, pod_key: &str) {
        if let Some(e) = self.lock().get_mut(key)
            && e.deleting.remove(pod_key)
        {
            e.del -= 1;
        }
    }

    /// Forgets `key`, so a namesake created later starts clean.
    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The creations and deletions still awaited for `key`.
    pub fn pending(&self, key: &str) -> Option<(i64, i64)> {
        self.lock().get(key).map(|e| (e.add, e.del))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_satisfied() {
        assert!(Expectations::new().satisfied("ns/rs"));
    }

    #[test]
    fn creations_hold_the_key_until_each_is_observed() {
        let e = Expectations::new();
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        assert_eq!(e.pending("ns/rs"), Some((0, 0)));
    }

    #[test]
    fn a_deletion_counts_once_and_only_for_expected_pods() {
        let e = Expectations::new();
        e.expect_deletions("ns/rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("ns/rs", "ns/a");
        // Seen again (a deletion timestamp, then the delete): no double count.
        e.deletion_observed("ns/rs", "ns/a");
        e.deletion_observed("ns/rs", "ns/other");
        assert_eq!(e.pending("ns/rs"), Some((0, 1)));
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn observations_for_unknown_keys_are_ignored() {
        let e = Expectations::new();
        e.creation_observed("ns/rs");
        e.deletion_observed("ns/rs", "ns/a");
        assert_eq!(e.pending("ns/rs"), None);
    }

    #[test]
    fn deleting_expectations_frees_the_key() {
        let e = Expectations::new();
        e.expect_creations("ns/rs", 3);
        e.delete("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }

    #[tokio::test(start_paused = true)]
    async fn expectations_expire() {
        let e = Expectations::new();
        e.expect_creations("ns/rs", 1);
        tokio::time::advance(EXPECTATIONS_TIMEOUT - Duration::from_secs(1)).await;
        assert!(!e.satisfied("ns/rs"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(e.satisfied("ns/rs"));
    }
}
