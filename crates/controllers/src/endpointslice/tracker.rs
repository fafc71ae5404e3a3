//! Upstream's `EndpointSliceTracker`: the EndpointSlices a controller wrote or deleted, per
//! service, so that a sync can tell that its informer cache has not caught up with its own
//! writes yet (and retry later rather than act on the old state, e.g. create a slice twice).
//!
//! Upstream compares generations; the API server here bumps no generation on EndpointSlices
//! (they have no spec), so the tracker compares resource versions, which are revisions of the
//! store, as numbers; an unparsable version is never called stale.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::discovery::v1::EndpointSlice;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expected {
    /// Written at this resource version.
    Version(u64),
    /// Deleted.
    Gone,
}

/// The tracker of one controller; services by `namespace/name`.
#[derive(Default)]
pub struct Tracker {
    by_service: Mutex<HashMap<String, HashMap<String, Expected>>>,
}

fn version(slice: &EndpointSlice) -> Option<u64> {
    slice.metadata.resource_version.as_deref()?.parse().ok()
}

impl Tracker {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, HashMap<String, Expected>>) -> T) -> T {
        f(&mut self.by_service.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a slice of `service` as written by us (the object the API server returned).
    pub fn update(&self, service: &str, slice: &EndpointSlice) {
        let (Some(uid), Some(v)) = (slice.metadata.uid.clone(), version(slice)) else { return };
        self.with(|m| m.entry(service.to_string()).or_default().insert(uid, Expected::Version(v)));
    }

    /// Records a slice of `service` as deleted by us.
    pub fn expect_deletion(&self, service: &str, slice: &EndpointSlice) {
        let Some(uid) = slice.metadata.uid.clone() else { return };
        self.with(|m| m.entry(service.to_string()).or_default().insert(uid, Expected::Gone));
    }

    /// The informer saw a slice go: it needs no more tracking.
    pub fn deleted(&self, service: &str, slice: &EndpointSlice) {
        let Some(uid) = slice.metadata.uid.as_deref() else { return };
        self.with(|m| {
            if let Some(s) = m.get_mut(service) {
                s.remove(uid);
            }
        });
    }

    /// Whether a change the informer saw is worth a sync: not when it is our own last write.
    pub fn should_sync(&self, service: &str, slice: &EndpointSlice) -> bool {
        let Some(uid) = slice.metadata.uid.as_deref() else { return true };
        self.with(|m| match m.get(service).and_then(|s| s.get(uid)) {
            Some(Expected::Version(v)) => version(slice) != Some(*v),
            _ => true,
        })
    }

    /// Forgets a service.
    pub fn delete_service(&self, service: &str) {
        self.with(|m| m.remove(service));
    }

    /// Whether `slices` (the cache's slices of `service`) are older than what we wrote: a
    /// slice older than our write, one we deleted still there, or one we wrote missing.
    pub fn stale(&self, service: &str, slices: &[&EndpointSlice]) -> bool {
        self.with(|m| {
            let Some(expected) = m.get(service) else { return false };
            let mut seen = 0;
            for slice in slices {
                let Some(e) = slice.metadata.uid.as_deref().and_then(|u| expected.get(u)) else { continue };
                match e {
                    Expected::Gone => return true,
                    Expected::Version(v) => {
                        if version(slice).is_some_and(|have| have < *v) {
                            return true;
                        }
                        seen += 1;
                    }
                }
            }
            seen < expected.values().filter(|e| **e != Expected::Gone).count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(uid: &str, rv: &str) -> EndpointSlice {
        let mut s = EndpointSlice::default();
        s.metadata.uid = Some(uid.into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[test]
    fn a_cache_behind_our_writes_is_stale() {
        let t = Tracker::default();
        assert!(!t.stale("ns/s", &[&slice("a", "1")]));
        t.update("ns/s", &slice("a", "5"));
        assert!(t.stale("ns/s", &[&slice("a", "4")]), "older version");
        assert!(t.stale("ns/s", &[]), "written slice missing");
        assert!(!t.stale("ns/s", &[&slice("a", "5")]));
        assert!(!t.should_sync("ns/s", &slice("a", "5")), "our own write");
        assert!(t.should_sync("ns/s", &slice("a", "6")));
        assert!(!t.stale("ns/s", &[&slice("a", "6")]), "someone else wrote it since");
        t.expect_deletion("ns/s", &slice("a", "6"));
        assert!(t.stale("ns/s", &[&slice("a", "6")]), "deleted slice still there");
        assert!(!t.stale("ns/s", &[]));
        t.deleted("ns/s", &slice("a", "6"));
        t.delete_service("ns/s");
        assert!(!t.stale("ns/s", &[&slice("b", "1")]));
    }
}
