//! What `manage` decides for each node (upstream's `podsShouldBeOnNode` and
//! `getUnscheduledPodsWithoutNode`): create a daemon pod where one should run and none is,
//! delete failed and succeeded pods (failed ones with a per-node backoff, since a kubelet that
//! keeps rejecting the pod would otherwise make the two fight in a hot loop), delete extra
//! pods, and delete every pod on a node the DaemonSet no longer fits.
//!
//! The planning is pure; the writes happen in the controller.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::placement::Placement;
use super::util::REVISION_HASH_LABEL;
use crate::replicaset::ranking::{is_available, is_ready};

/// A DaemonSet's pods grouped by the node they are for.
pub type NodePods = BTreeMap<String, Vec<Arc<Pod>>>;

/// What to do on one node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub create: bool,
    pub delete: Vec<String>,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn is_scheduled(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
}

pub fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Upstream's `podByCreationTimestampAndPhase`: scheduled pods first, then the oldest, then by
/// name.
pub fn oldest_first(a: &Arc<Pod>, b: &Arc<Pod>) -> Ordering {
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    is_scheduled(b)
        .cmp(&is_scheduled(a))
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The plan for one node (upstream's `podsShouldBeOnNode`). `finished_may_go` is asked about
/// each failed or succeeded pod: whether it may be deleted now (it keeps the failed pods'
/// backoff and records the events).
#[allow(clippy::too_many_arguments)]
pub fn pods_should_be_on_node(
    placement: Placement,
    pods: Option<&Vec<Arc<Pod>>>,
    hash: &str,
    allows_surge: bool,
    min_ready_seconds: i32,
    now: Timestamp,
    mut finished_may_go: impl FnMut(&Pod) -> bool,
) -> NodePlan {
    let mut plan = NodePlan::default();
    match pods {
        None if placement.should_run => plan.create = true,
        // Upstream's switch goes on to this case only for a node that has pods.
        None => {}
        Some(pods) if placement.should_continue_running => {
            let mut running: Vec<Arc<Pod>> = Vec::new();
            for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                match phase(pod) {
                    "Failed" | "Succeeded" => {
                        if finished_may_go(pod) {
                            plan.delete.push(name(pod));
                        }
                    }
                    _ => running.push(pod.clone()),
                }
            }
            running.sort_by(oldest_first);
            if !allows_surge {
                // More than one: keep the oldest.
                plan.delete.extend(running.iter().skip(1).map(|p| name(p)));
                return plan;
            }
            if running.is_empty() {
                // Surging needs at least one pod that is not going away on the node.
                plan.create = placement.should_run;
                return plan;
            }
            // With surge, two pods may stay: the oldest of the current revision and the
            // oldest of an older one, until the new one is available (or the old one broke).
            let (mut oldest_new, mut oldest_old): (Option<&Arc<Pod>>, Option<&Arc<Pod>>) = (None, None);
            for pod in &running {
                let current = pod.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL)).map(String::as_str)
                    == Some(hash);
                let slot = if current { &mut oldest_new } else { &mut oldest_old };
                if slot.is_none() {
                    *slot = Some(pod);
                } else {
                    plan.delete.push(name(pod));
                }
            }
            if let (Some(new), Some(old)) = (oldest_new, oldest_old)
                && (!is_ready(old) || is_available(new, min_ready_seconds, now))
            {
                plan.delete.push(name(old));
            }
        }
        Some(pods) => {
            // The DaemonSet does not belong here (any more): every pod goes.
            plan.delete.extend(pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).map(|p| name(p)));
        }
    }
    plan
}

/// Unscheduled pods for nodes that do not exist (upstream's `getUnscheduledPodsWithoutNode`):
/// they can never be bound, and the pod garbage collector only removes bound ones.
pub fn unscheduled_pods_without_node(nodes: &HashSet<String>, node_pods: &NodePods) -> Vec<String> {
    node_pods
        .iter()
        .filter(|(node, _)| !nodes.contains(*node))
        .flat_map(|(_, pods)| pods.iter().filter(|p| !is_scheduled(p)).map(|p| name(p)))
        .collect()
}

/// The first delay before a failed pod on a node is replaced again (upstream's
/// `failedPodsBackoff`: 1 s doubling to 15 min).
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    last: Instant,
}

/// Per-key exponential backoff (client-go's `flowcontrol.Backoff`, without jitter): a key is in
/// backoff for its delay after each [`FailedPodBackoff::next`]; a key left alone for twice the
/// maximum starts over.
#[derive(Debug, Default)]
pub struct FailedPodBackoff {
    entries: Mutex<HashMap<String, Entry>>,
}

impl FailedPodBackoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(e: &Entry, now: Instant) -> bool {
        now.duration_since(e.last) > 2 * BACKOFF_MAX
    }

    /// The remaining wait when `key` is still backing off at `now`.
    pub fn in_backoff(&self, key: &str, now: Instant) -> Option<Duration> {
        let entries = self.lock();
        let e = entries.get(key).filter(|e| !Self::expired(e, now))?;
        let since = now.duration_since(e.last);
        (since < e.delay).then(|| e.delay - since)
    }

    /// Records another failure of `key` at `now`, doubling its delay.
    pub fn next(&self, key: &str, now: Instant) {
        let mut entries = self.lock();
        let delay = match entries.get(key) {
            Some(e) if !Self::expired(e, now) => (e.delay * 2).min(BACKOFF_MAX),
            _ => BACKOFF_INITIAL,
        };
        entries.insert(key.to_string(), Entry { delay, last: now });
    }

    /// Forgets keys that have been quiet long enough to start over anyway.
    pub fn gc(&self, now: Instant) {
        self.lock().retain(|_, e| !Self::expired(e, now));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    const RUN: Placement = Placement { should_run: true, should_continue_running: true };
    const STAY: Placement = Placement { should_run: false, should_continue_running: true };
    const GONE: Placement = Placement { should_run: false, should_continue_running: false };

    fn pod(name: &str, created: i64, phase: &str, hash: &str, ready: bool) -> Arc<Pod> {
        let ready = if ready { "True" } else { "False" };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {REVISION_HASH_LABEL: hash},
                             "creationTimestamp": Time(Timestamp::from_second(created).unwrap())},
                "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready,
                    "lastTransitionTime": Time(Timestamp::from_second(created).unwrap())}]},
            }))
            .unwrap(),
        )
    }

    fn plan(placement: Placement, pods: &[Arc<Pod>], surge: bool) -> NodePlan {
        let pods = pods.to_vec();
        let now = Timestamp::from_second(1000).unwrap();
        pods_should_be_on_node(placement, (!pods.is_empty()).then_some(&pods), "new", surge, 0, now, |_| true)
    }

    #[test]
    fn a_node_without_a_pod_gets_one_if_it_should_run() {
        assert_eq!(plan(RUN, &[], false), NodePlan { create: true, delete: vec![] });
        assert_eq!(plan(STAY, &[], false), NodePlan::default());
        assert_eq!(plan(GONE, &[], false), NodePlan::default());
    }

    #[test]
    fn a_node_that_no_longer_fits_loses_its_pods() {
        let pods = [pod("a", 1, "Running", "new", true), pod("b", 2, "Running", "old", true)];
        assert_eq!(plan(GONE, &pods, false).delete, ["a", "b"]);
    }

    #[test]
    fn finished_pods_are_deleted_and_failed_ones_only_out_of_backoff() {
        let pods = [pod("f", 1, "Failed", "new", false), pod("s", 2, "Succeeded", "new", false)];
        assert_eq!(plan(RUN, &pods, false).delete, ["f", "s"]);
        let now = Timestamp::from_second(1000).unwrap();
        let pods = pods.to_vec();
        let held = pods_should_be_on_node(RUN, Some(&pods), "new", false, 0, now, |p| phase(p) == "Succeeded");
        assert_eq!(held.delete, ["s"]);
        assert!(!held.create, "the next sync creates the replacement once the node is empty");
    }

    #[test]
    fn without_surge_only_the_oldest_pod_stays() {
        let pods = [pod("young", 5, "Running", "new", true), pod("old", 1, "Running", "old", true)];
        assert_eq!(plan(RUN, &pods, false).delete, ["young"]);
    }

    #[test]
    fn with_surge_the_old_pod_goes_once_the_new_one_is_available() {
        let old = pod("old", 1, "Running", "old", true);
        assert_eq!(
            plan(RUN, &[old.clone(), pod("new", 5, "Running", "new", false)], true).delete,
            Vec::<String>::new()
        );
        assert_eq!(plan(RUN, &[old.clone(), pod("new", 5, "Running", "new", true)], true).delete, ["old"]);
        // An old pod that is not ready goes at once.
        let broken = pod("old", 1, "Running", "old", false);
        assert_eq!(plan(RUN, &[broken, pod("new", 5, "Running", "new", false)], true).delete, ["old"]);
        // Extra pods of either kind go.
        let extra = [old, pod("old2", 2, "Running", "old", true), pod("new", 5, "Running", "new", false)];
        assert_eq!(plan(RUN, &extra, true).delete, ["old2"]);
    }

    #[test]
    fn with_surge_a_node_whose_pods_all_finished_gets_a_new_one() {
        let p = plan(RUN, &[pod("s", 1, "Succeeded", "new", false)], true);
        assert_eq!(p, NodePlan { create: true, delete: vec!["s".into()] });
    }

    #[test]
    fn unscheduled_pods_for_missing_nodes_are_collected() {
        let mut unbound = (*pod("u", 1, "Pending", "new", false)).clone();
        unbound.spec.as_mut().unwrap().node_name = None;
        let node_pods = NodePods::from([
            ("gone".to_string(), vec![Arc::new(unbound), pod("bound", 1, "Running", "new", true)]),
            ("here".to_string(), vec![pod("h", 1, "Running", "new", true)]),
        ]);
        let nodes = HashSet::from(["here".to_string()]);
        assert_eq!(unscheduled_pods_without_node(&nodes, &node_pods), ["u"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_pod_backoff_doubles_and_expires() {
        let b = FailedPodBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.in_backoff("k", t0), None);
        b.next("k", t0);
        assert_eq!(b.in_backoff("k", t0), Some(Duration::from_secs(1)));
        assert_eq!(b.in_backoff("k", t0 + Duration::from_secs(1)), None);
        let t1 = t0 + Duration::from_secs(2);
        b.next("k", t1);
        assert_eq!(b.in_backoff("k", t1 + Duration::from_millis(500)), Some(Duration::from_millis(1500)));
        let late = t1 + 2 * BACKOFF_MAX + Duration::from_secs(1);
        b.next("k", late);
        assert_eq!(b.in_backoff("k", late), Some(BACKOFF_INITIAL));
        b.gc(late + 3 * BACKOFF_MAX);
        assert_eq!(b.in_backoff("k", late), None);
    }
}
