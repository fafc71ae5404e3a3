//! Rolling updates and revisions (upstream's `pkg/controller/daemon/update.go`).
//!
//! A rolling update replaces old pods node by node within the strategy's budgets: without
//! surge, old pods are deleted while at most `maxUnavailable` nodes lack an available pod (the
//! manage step then creates the new pod); with surge, a new pod is started next to the old one
//! on at most `maxSurge` nodes at a time, and the old one deleted once the new one is
//! available. Old pods that are not available are replaced at once in both modes.
//!
//! Each state of the pod template is a ControllerRevision (via [`crate::history`]) whose data is
//! a strategic merge patch replacing `spec.template` (what `kubectl rollout undo` applies) and
//! whose `controller-revision-hash` label the pods carry.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::manage::{NodePods, name};
use super::util::{REVISION_HASH_LABEL, is_pod_updated};
use crate::replicaset::ranking::is_available;

/// The pod of the current revision and the old one on a node.
type NewAndOld<'a> = (Option<&'a Arc<Pod>>, Option<&'a Arc<Pod>>);

/// The new and old pod on a node (upstream's `findUpdatedPodsOnNode`), ignoring pods being
/// deleted; `None` when there is more than one of either (the manage step cleans that up).
fn updated_pods_on_node<'a>(pods: &'a [Arc<Pod>], hash: &str, generation: Option<i64>) -> Option<NewAndOld<'a>> {
    let (mut new, mut old) = (None, None);
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let slot = if is_pod_updated(pod, hash, generation) { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod);
    }
    Some((new, old))
}

/// What a rolling update step does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpdatePlan {
    /// Old pods to delete.
    pub delete: Vec<String>,
    /// Nodes to start a new pod on next to the old one (surge only).
    pub create: Vec<String>,
}

/// One step of a rolling update (upstream's `rollingUpdate`). `node_pods` has an entry (maybe
/// empty) for every node that should run the daemon; `should_run` says whether a node does.
#[allow(clippy::too_many_arguments)]
pub fn rolling_update(
    node_pods: &NodePods,
    hash: &str,
    generation: Option<i64>,
    max_surge: i32,
    max_unavailable: i32,
    min_ready_seconds: i32,
    now: Timestamp,
    should_run: impl Fn(&str) -> bool,
) -> UpdatePlan {
    let available = |p: &Pod| is_available(p, min_ready_seconds, now);
    let mut plan = UpdatePlan::default();
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for pods in node_pods.values() {
            match updated_pods_on_node(pods, hash, generation) {
                // Left to the manage step, and unavailable meanwhile.
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !available(old) {
                        // Not serving anyway: replace it at once.
                        plan.delete.push(name(old));
                    } else if unavailable < max_unavailable {
                        candidates.push(name(old));
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        plan.delete.extend(candidates.into_iter().take(room));
        return plan;
    }
    let mut surging = 0;
    let mut candidates = Vec::new();
    for (node, pods) in node_pods {
        match updated_pods_on_node(pods, hash, generation) {
            None => surging += 1,
            // Nothing old here: the manage step handles the node.
            Some((_, None)) => {}
            Some((None, Some(old))) => {
                if !available(old) {
                    // Not serving anyway: replace it at once, or just remove it from a node
                    // that no longer takes new daemon pods.
                    if should_run(node) {
                        plan.create.push(node.clone());
                    } else {
                        plan.delete.push(name(old));
                    }
                } else if surging < max_surge {
                    candidates.push(node.clone());
                }
            }
            Some((Some(new), Some(old))) => {
                if available(new) {
                    plan.delete.push(name(old));
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
    plan.create.extend(candidates.into_iter().take(room));
    plan
}

/// The revision data of a DaemonSet (upstream's `getPatch`): a strategic merge patch that puts
/// its template back, `{"spec": {"template": {..., "$patch": "replace"}}}`.
pub fn revision_data(ds: &DaemonSet) -> Value {
    let template = ds.spec.as_ref().map(|s| &s.template);
    let mut template = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Value::Object(t) = &mut template {
        t.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// Whether a revision holds the DaemonSet's current template (upstream's `Match`).
pub fn matches(ds: &DaemonSet, revision: &ControllerRevision) -> bool {
    revision.data.as_ref().is_some_and(|d| d.0 == revision_data(ds))
}

/// The old revisions to delete beyond `limit` (upstream's `cleanupHistory`): lowest revision
/// first, never one that a live pod still runs.
pub fn revisions_to_clean(old: &[ControllerRevision], limit: i32, node_pods: &NodePods) -> Vec<ControllerRevision> {
    let excess = old.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return Vec::new();
    }
    let live: HashSet<&str> = node_pods
        .values()
        .flatten()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_HASH_LABEL).map(String::as_str))
        .collect();
    let mut sorted = old.to_vec();
    crate::history::sort_controller_revisions(&mut sorted);
    sorted
        .into_iter()
        .filter(|r| {
            let hash = r.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL));
            !hash.is_some_and(|h| live.contains(h.as_str()))
        })
        .take(excess as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

    use super::*;

    fn pod(name: &str, hash: &str, ready: bool) -> Arc<Pod> {
        let status = if ready { "True" } else { "False" };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {REVISION_HASH_LABEL: hash},
                             "creationTimestamp": Time(Timestamp::from_second(1).unwrap())},
                "spec": {"nodeName": "n", "containers": []},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status,
                    "lastTransitionTime": Time(Timestamp::from_second(1).unwrap())}]},
            }))
            .unwrap(),
        )
    }

    fn nodes(entries: Vec<(&str, Vec<Arc<Pod>>)>) -> NodePods {
        entries.into_iter().map(|(n, p)| (n.to_string(), p)).collect()
    }

    fn step(node_pods: &NodePods, surge: i32, unavailable: i32) -> UpdatePlan {
        rolling_update(node_pods, "new", None, surge, unavailable, 0, Timestamp::from_second(100).unwrap(), |_| true)
    }

    #[test]
    fn without_surge_old_pods_go_within_max_unavailable() {
        let np = nodes(vec![
            ("a", vec![pod("a-old", "old", true)]),
            ("b", vec![pod("b-old", "old", true)]),
            ("c", vec![pod("c-old", "old", true)]),
        ]);
        assert_eq!(step(&np, 0, 1).delete, ["a-old"]);
        assert_eq!(step(&np, 0, 2).delete, ["a-old", "b-old"]);
    }

    #[test]
    fn nodes_being_replaced_use_up_the_unavailable_budget() {
        let np =
            nodes(vec![("a", vec![]), ("b", vec![pod("b-new", "new", false)]), ("c", vec![pod("c-old", "old", true)])]);
        assert_eq!(step(&np, 0, 2), UpdatePlan::default());
        assert_eq!(step(&np, 0, 3).delete, ["c-old"]);
    }

    #[test]
    fn unavailable_old_pods_are_replaced_regardless_of_the_budget() {
        let np =
            nodes(vec![("a", vec![]), ("b", vec![pod("b-old", "old", false)]), ("c", vec![pod("c-old", "old", true)])]);
        assert_eq!(step(&np, 0, 1).delete, ["b-old"]);
    }

    #[test]
    fn with_surge_new_pods_start_beside_old_ones_within_max_surge() {
        let np = nodes(vec![
            ("a", vec![pod("a-old", "old", true)]),
            ("b", vec![pod("b-old", "old", true)]),
            ("c", vec![pod("c-old", "old", true)]),
        ]);
        assert_eq!(step(&np, 2, 0), UpdatePlan { delete: vec![], create: vec!["a".into(), "b".into()] });
    }

    #[test]
    fn with_surge_old_pods_go_once_their_replacement_is_available() {
        let np = nodes(vec![
            ("a", vec![pod("a-old", "old", true), pod("a-new", "new", true)]),
            ("b", vec![pod("b-old", "old", true), pod("b-new", "new", false)]),
            ("c", vec![pod("c-old", "old", true)]),
        ]);
        // b is still surging, which uses the budget of 1: c waits.
        assert_eq!(step(&np, 1, 0), UpdatePlan { delete: vec!["a-old".into()], create: vec![] });
        assert_eq!(step(&np, 2, 0), UpdatePlan { delete: vec!["a-old".into()], create: vec!["c".into()] });
    }

    #[test]
    fn with_surge_a_broken_old_pod_on_a_node_that_no_longer_fits_is_removed_not_replaced() {
        let np = nodes(vec![("a", vec![pod("a-old", "old", false)])]);
        let plan = rolling_update(&np, "new", None, 1, 0, 0, Timestamp::from_second(100).unwrap(), |_| false);
        assert_eq!(plan, UpdatePlan { delete: vec!["a-old".into()], create: vec![] });
    }

    #[test]
    fn revision_data_replaces_the_template() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}},
        }))
        .unwrap();
        let data = revision_data(&ds);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data["spec"]["template"]["metadata"]["labels"]["a"], "b");
        let rev = ControllerRevision { data: Some(RawExtension(data)), ..Default::default() };
        assert!(matches(&ds, &rev));
        let mut changed = ds.clone();
        changed
            .spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert!(!matches(&changed, &rev));
    }

    #[test]
    fn cleanup_keeps_the_limit_and_revisions_pods_still_run() {
        let rev = |name: &str, n: i64, hash: &str| ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(REVISION_HASH_LABEL.to_string(), hash.to_string())].into()),
                ..Default::default()
            },
            revision: n,
            data: None,
        };
        let old = [rev("r3", 3, "h3"), rev("r1", 1, "h1"), rev("r2", 2, "h2"), rev("r4", 4, "h4")];
        let np = nodes(vec![("a", vec![pod("p", "h1", true)])]);
        let gone: Vec<_> = revisions_to_clean(&old, 2, &np).into_iter().map(|r| r.metadata.name.unwrap()).collect();
        assert_eq!(gone, ["r2", "r3"]);
        assert!(revisions_to_clean(&old, 10, &np).is_empty());
    }
}
