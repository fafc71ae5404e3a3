//! One StatefulSet's update (upstream's `pkg/controller/statefulset/stateful_set_control.go`):
//! find or make the current and update revisions, then walk the replicas in ordinal order
//! (create missing pods, recreate failed ones, restore identity and storage), delete the pods
//! beyond the wanted ordinals from the highest down, and roll pods whose revision is not the
//! update revision from the highest ordinal down to the partition. With `OrderedReady` every
//! step waits for the pods before it to be running, ready and available; with `Parallel` the
//! steps do not wait. Afterwards the status is written and old revisions are pruned.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{debug, info};

use super::stateful_pod_control::{PodControlError, StatefulPodControl};
use super::stateful_set_utils::{self as utils};
use crate::history::{self, History, HistoryError};

/// Why one set's update failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("writing pods or claims")]
    Pods(#[from] PodControlError),
    #[error("writing controller revisions")]
    History(#[from] HistoryError),
}

/// The revisions a set is at and moving to.
pub struct Revisions {
    pub current: ControllerRevision,
    pub update: ControllerRevision,
    pub collision_count: i32,
}

/// The set's revision for its present template (upstream's `newRevision`), numbered
/// `revision`, carrying the set's annotations as upstream's do.
pub fn new_revision(set: &StatefulSet, revision: i64, collision_count: i32) -> ControllerRevision {
    let labels = set.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone());
    let mut cr = history::new_controller_revision(
        set,
        utils::controller_ref(set),
        &labels.unwrap_or_default(),
        utils::revision_data(set),
        revision,
        Some(collision_count),
    );
    cr.metadata.annotations = set.metadata.annotations.clone();
    cr
}

/// What becomes of the revision a set's present template makes.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateChoice {
    /// The newest revision already holds it.
    Latest,
    /// An older revision (index in the sorted list) holds it: a rollback, renumbered newest.
    Renumber(usize),
    /// No revision holds it yet.
    Create,
}

/// Upstream's choice in `getStatefulSetRevisions`, over revisions sorted oldest first.
pub fn choose_update_revision(sorted: &[ControllerRevision], candidate: &ControllerRevision) -> UpdateChoice {
    match sorted.iter().rposition(|r| history::equal_revision(r, candidate)) {
        Some(i) if i + 1 == sorted.len() => UpdateChoice::Latest,
        Some(i) => UpdateChoice::Renumber(i),
        None => UpdateChoice::Create,
    }
}

/// Finds or creates the update revision and finds the current one (upstream's
/// `getStatefulSetRevisions`). A template equal to the newest revision reuses it; equal to an
/// older one (a rollback) renumbers that one as the newest; otherwise a new one is created.
pub async fn get_revisions(
    history: &History,
    set: &StatefulSet,
    revisions: &mut [ControllerRevision],
) -> Result<Revisions, ControlError> {
    history::sort_controller_revisions(revisions);
    let mut collision_count = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let candidate = new_revision(set, history::next_revision(revisions), collision_count);
    let update = match choose_update_revision(revisions, &candidate) {
        UpdateChoice::Latest => revisions[revisions.len() - 1].clone(),
        UpdateChoice::Renumber(i) => history.update_controller_revision(&revisions[i], candidate.revision).await?,
        UpdateChoice::Create => {
            let ns = set.namespace().unwrap_or_default();
            history.create_controller_revision(&ns, &candidate, &mut collision_count).await?
        }
    };
    let current_name = set.status.as_ref().and_then(|s| s.current_revision.as_deref());
    let current = revisions
        .iter()
        .find(|r| current_name.is_some_and(|n| r.metadata.name.as_deref() == Some(n)))
        .cloned()
        .unwrap_or_else(|| update.clone());
    Ok(Revisions { current, update, collision_count })
}

/// The pods in the wanted ordinal range by slot, and the others with a valid ordinal
/// (condemned), highest ordinal first.
pub fn split_pods(set: &StatefulSet, pods: &[Arc<Pod>]) -> (Vec<Option<Arc<Pod>>>, Vec<Arc<Pod>>) {
    let start = utils::start_ordinal(set);
    let mut replicas = vec![None; utils::replicas(set).max(0) as usize];
    let mut condemned = Vec::new();
    for pod in pods {
        let Some(ord) = utils::ordinal(pod) else { continue };
        if utils::in_ordinal_range(pod, set) {
            replicas[(ord - start) as usize] = Some(pod.clone());
        } else if ord >= 0 {
            condemned.push(pod.clone());
        }
    }
    condemned.sort_by_key(|p| std::cmp::Reverse(utils::ordinal(p)));
    (replicas, condemned)
}

/// The counts of a set's status from its pods (upstream's `updateStatus` over the pods).
pub fn count_status(
    pods: &[Arc<Pod>],
    current_revision: &str,
    update_revision: &str,
    min_ready_seconds: i32,
    now: Timestamp,
) -> StatefulSetStatus {
    let mut s = StatefulSetStatus {
        current_revision: Some(current_revision.into()),
        update_revision: Some(update_revision.into()),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for pod in pods {
        if utils::is_created(pod) {
            s.replicas += 1;
        }
        if utils::is_running_and_ready(pod) {
            ready += 1;
            if utils::is_running_and_available(pod, min_ready_seconds, now) {
                available += 1;
            }
        }
        if utils::is_created(pod) && !utils::is_terminating(pod) {
            let rev = utils::pod_revision(pod);
            if rev == current_revision {
                current += 1;
            }
            if rev == update_revision {
                updated += 1;
            }
        }
    }
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(available);
    s.current_replicas = Some(current);
    s.updated_replicas = Some(updated);
    s
}

/// Whether, in `OrderedReady` mode, a pod keeps the pods after it waiting: going away, or not
/// yet running, ready and available.
pub fn blocks_successors(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    utils::is_terminating(pod)
        || !utils::is_running_and_ready(pod)
        || !utils::is_running_and_available(pod, min_ready_seconds, now)
}

/// The slots a rolling update deletes now (upstream's
/// `updateStatefulSetAfterInvariantEstablished`): nothing while `max_unavailable` pods are
/// unhealthy; otherwise, from the highest slot down to the partition, the pods not at the
/// update revision and not already going, up to the unavailability budget left.
pub fn rolling_update_targets(
    replicas: &[Option<Arc<Pod>>],
    update_revision: &str,
    partition: i32,
    max_unavailable: i32,
) -> Vec<usize> {
    let unavailable = replicas.iter().filter(|p| p.as_ref().is_none_or(|p| !utils::is_healthy(p))).count() as i32;
    if unavailable >= max_unavailable {
        return Vec::new();
    }
    let budget = (max_unavailable - unavailable) as usize;
    let min = partition.max(0) as usize;
    (min..replicas.len())
        .rev()
        .filter(|&i| {
            replicas[i].as_ref().is_some_and(|p| utils::pod_revision(p) != update_revision && !utils::is_terminating(p))
        })
        .take(budget)
        .collect()
}

/// Upstream's `completeRollingUpdate`: once every pod is updated and ready, the update
/// revision becomes the current one.
pub fn complete_rolling_update(set: &StatefulSet, status: &mut StatefulSetStatus) {
    if utils::is_on_delete(set) {
        return;
    }
    if status.updated_replicas == Some(status.replicas) && status.ready_replicas == Some(status.replicas) {
        status.current_replicas = status.updated_replicas;
        status.current_revision = status.update_revision.clone();
    }
}

/// Creates, recreates, fixes and deletes the set's pods one step of the way, returning the
/// status they make (upstream's `updateStatefulSet`).
pub async fn update_stateful_set(
    control: &StatefulPodControl,
    set: &StatefulSet,
    revisions: &Revisions,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Result<StatefulSetStatus, ControlError> {
    let current_set = utils::apply_revision(set, revisions.current.data.as_ref().map(|d| &d.0));
    let update_set = utils::apply_revision(set, revisions.update.data.as_ref().map(|d| &d.0));
    let (current_rev, update_rev) = (revisions.current.name_any(), revisions.update.name_any());
    let min_ready = utils::min_ready_seconds(set);
    let mut status = count_status(pods, &current_rev, &update_rev, min_ready, now);
    status.observed_generation = set.metadata.generation;
    status.collision_count = Some(revisions.collision_count);

    if set.metadata.deletion_timestamp.is_some() {
        return Ok(status);
    }
    let (mut replicas, condemned) = split_pods(set, pods);
    let start = utils::start_ordinal(set);
    let monotonic = !utils::allows_burst(set);
    let first_unhealthy: Option<String> =
        replicas.iter().flatten().chain(condemned.iter().rev()).find(|p| !utils::is_healthy(p)).map(|p| p.name_any());

    // Replicas, lowest ordinal first.
    for (i, slot) in replicas.iter_mut().enumerate() {
        let ord = start + i as i32;
        let new = || Arc::new(utils::new_versioned_pod(&current_set, &update_set, &current_rev, &update_rev, ord));
        let pod = match slot {
            Some(p) if utils::is_failed(p) || utils::is_succeeded(p) => {
                // Finished pods are replaced: delete this one, then create it anew once the
                // deletion is seen.
                if !utils::is_terminating(p) {
                    let (reason, what) = if utils::is_failed(p) {
                        ("RecreatingFailedPod", "failed")
                    } else {
                        ("RecreatingTerminatedPod", "terminated")
                    };
                    info!(pod = %p.name_any(), reason, "recreating finished pod");
                    let msg = format!(
                        "StatefulSet {}/{} is recreating {what} Pod {}",
                        set.namespace().unwrap_or_default(),
                        set.name_any(),
                        p.name_any()
                    );
                    control.recorder.record(set, crate::events::WARNING, reason, msg);
                    control.delete_pod(set, p).await?;
                }
                if monotonic {
                    return Ok(status);
                }
                continue;
            }
            Some(p) => p.clone(),
            None => {
                let pod = new();
                if control.claim_is_stale(set, &pod) {
                    // The claim still belongs to a deleted pod of this name; wait for it to go.
                    debug!(pod = %pod.name_any(), "waiting for a stale claim to be deleted");
                    return Ok(status);
                }
                control.create_pod(set, &pod).await?;
                status.replicas += 1;
                let rev = utils::pod_revision(&pod);
                if rev == current_rev {
                    *status.current_replicas.get_or_insert(0) += 1;
                }
                if rev == update_rev {
                    *status.updated_replicas.get_or_insert(0) += 1;
                }
                *slot = Some(pod);
                if monotonic {
                    return Ok(status);
                }
                continue;
            }
        };
        if utils::is_pending(&pod) {
            // Claims deleted under a pending pod are made again so that it can start.
            control.create_missing_claims(set, &pod).await?;
        }
        if monotonic && blocks_successors(&pod, min_ready, now) {
            return Ok(status);
        }
        if utils::identity_matches(set, &pod)
            && utils::storage_matches(set, &pod)
            && control.claims_match_retention_policy(set, &pod)
        {
            continue;
        }
        control.update_pod(&update_set, &pod).await?;
    }

    // Claims of pods about to be scaled away are handed to the pods when they go with them.
    for pod in &condemned {
        if !control.claims_match_retention_policy(&update_set, pod) {
            control.update_claims_for_retention(&update_set, pod).await?;
        }
    }

    // Pods beyond the wanted ordinals, highest first.
    for pod in &condemned {
        if utils::is_terminating(pod) {
            if monotonic {
                return Ok(status);
            }
            continue;
        }
        let is_first_unhealthy = first_unhealthy.as_deref() == Some(pod.name_any().as_str());
        if monotonic && blocks_successors(pod, min_ready, now) && !is_first_unhealthy {
            return Ok(status);
        }
        info!(pod = %pod.name_any(), "scaling down: deleting pod");
        control.delete_pod(set, pod).await?;
        let rev = utils::pod_revision(pod);
        if rev == current_rev {
            *status.current_replicas.get_or_insert(0) -= 1;
        }
        if rev == update_rev {
            *status.updated_replicas.get_or_insert(0) -= 1;
        }
        if monotonic {
            return Ok(status);
        }
    }

    // Pods are updated only by deleting them, by hand with OnDelete.
    if utils::is_on_delete(set) {
        return Ok(status);
    }
    let partition = utils::partition(set).unwrap_or(0);
    for i in rolling_update_targets(&replicas, &update_rev, partition, utils::max_unavailable(set)) {
        let Some(pod) = &replicas[i] else { continue };
        info!(pod = %pod.name_any(), revision = %update_rev, "rolling update: deleting pod");
        control.delete_pod(set, pod).await?;
        *status.current_replicas.get_or_insert(0) -= 1;
    }
    Ok(status)
}

/// The revisions beyond `spec.revisionHistoryLimit` that no pod and neither the current nor
/// the update revision use, oldest first (upstream's `truncateHistory`).
pub fn revisions_to_prune<'a>(
    set: &StatefulSet,
    pods: &[Arc<Pod>],
    sorted_revisions: &'a [ControllerRevision],
    current: &str,
    update: &str,
) -> Vec<&'a ControllerRevision> {
    let mut live: HashSet<&str> = pods.iter().map(|p| utils::pod_revision(p)).collect();
    live.insert(current);
    live.insert(update);
    let old: Vec<&ControllerRevision> =
        sorted_revisions.iter().filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or(""))).collect();
    let limit = set.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
    let excess = old.len().saturating_sub(limit);
    old.into_iter().take(excess).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::history::CONTROLLER_REVISION_HASH_LABEL;

    fn pod(name: &str, rev: &str, phase: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(CONTROLLER_REVISION_HASH_LABEL.to_string(), rev.to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(Timestamp::from_second(0).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn set(replicas: i32) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.name = Some("web".into());
        s.spec = Some(k8s_openapi::api::apps::v1::StatefulSetSpec { replicas: Some(replicas), ..Default::default() });
        s
    }

    #[test]
    fn pods_split_into_slots_and_condemned_highest_first() {
        let pods = vec![
            pod("web-0", "a", "Running", true),
            pod("web-3", "a", "Running", true),
            pod("web-4", "a", "Running", true),
            pod("web-1", "a", "Running", true),
            pod("other", "a", "Running", true),
        ];
        let (replicas, condemned) = split_pods(&set(3), &pods);
        let slots: Vec<_> = replicas.iter().map(|p| p.as_ref().map(|p| p.name_any())).collect();
        assert_eq!(slots, [Some("web-0".into()), Some("web-1".into()), None]);
        let names: Vec<_> = condemned.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["web-4", "web-3"]);
    }

    #[test]
    fn status_counts_ready_current_and_updated_pods() {
        let now = Timestamp::from_second(100).unwrap();
        let pods = vec![
            pod("web-0", "a", "Running", true),
            pod("web-1", "b", "Running", false),
            pod("web-2", "b", "Pending", false),
        ];
        let s = count_status(&pods, "a", "b", 0, now);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.current_replicas, Some(1));
        assert_eq!(s.updated_replicas, Some(2));
        // Ready for 100 s is not yet available with minReadySeconds 200.
        assert_eq!(count_status(&pods, "a", "b", 200, now).available_replicas, Some(0));
    }

    #[test]
    fn a_pod_not_ready_or_going_blocks_the_next_ordinals() {
        let now = Timestamp::from_second(100).unwrap();
        assert!(!blocks_successors(&pod("web-0", "a", "Running", true), 0, now));
        assert!(blocks_successors(&pod("web-0", "a", "Running", false), 0, now));
        assert!(blocks_successors(&pod("web-0", "a", "Pending", false), 0, now));
        assert!(blocks_successors(&pod("web-0", "a", "Running", true), 500, now));
        let mut going = (*pod("web-0", "a", "Running", true)).clone();
        going.metadata.deletion_timestamp = Some(Time(now));
        assert!(blocks_successors(&going, 0, now));
    }

    #[test]
    fn rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
        let replicas: Vec<_> = (0..4).map(|i| Some(pod(&format!("web-{i}"), "old", "Running", true))).collect();
        assert_eq!(rolling_update_targets(&replicas, "new", 0, 1), [3]);
        assert_eq!(rolling_update_targets(&replicas, "new", 0, 2), [3, 2]);
        assert_eq!(rolling_update_targets(&replicas, "new", 3, 2), [3]);
        assert!(rolling_update_targets(&replicas, "new", 4, 1).is_empty());
        // Updated pods are skipped.
        let mut r = replicas.clone();
        r[3] = Some(pod("web-3", "new", "Running", true));
        assert_eq!(rolling_update_targets(&r, "new", 0, 1), [2]);
        // An unhealthy pod uses up the budget: wait for it.
        r[3] = Some(pod("web-3", "new", "Running", false));
        assert!(rolling_update_targets(&r, "new", 0, 1).is_empty());
        assert_eq!(rolling_update_targets(&r, "new", 0, 2), [2]);
    }

    #[test]
    fn a_finished_rolling_update_makes_the_update_revision_current() {
        let s = set(2);
        let mut st = StatefulSetStatus {
            replicas: 2,
            ready_replicas: Some(2),
            updated_replicas: Some(2),
            current_replicas: Some(0),
            current_revision: Some("a".into()),
            update_revision: Some("b".into()),
            ..Default::default()
        };
        complete_rolling_update(&s, &mut st);
        assert_eq!(st.current_revision.as_deref(), Some("b"));
        assert_eq!(st.current_replicas, Some(2));
        st.current_revision = Some("a".into());
        st.ready_replicas = Some(1);
        complete_rolling_update(&s, &mut st);
        assert_eq!(st.current_revision.as_deref(), Some("a"));
    }

    #[test]
    fn an_equal_older_revision_is_renumbered_and_an_equal_newest_reused() {
        let mut s = set(1);
        s.metadata.uid = Some("u".into());
        let with_image = |image: &str| {
            let mut s = s.clone();
            s.spec.as_mut().unwrap().template.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            });
            s
        };
        let (v1, v2, v3) = (with_image("a:1"), with_image("a:2"), with_image("a:3"));
        let revs = vec![new_revision(&v1, 1, 0), new_revision(&v2, 2, 0)];
        assert_eq!(choose_update_revision(&revs, &new_revision(&v2, 3, 0)), UpdateChoice::Latest);
        assert_eq!(choose_update_revision(&revs, &new_revision(&v1, 3, 0)), UpdateChoice::Renumber(0));
        assert_eq!(choose_update_revision(&revs, &new_revision(&v3, 3, 0)), UpdateChoice::Create);
        assert_eq!(choose_update_revision(&[], &new_revision(&v3, 1, 0)), UpdateChoice::Create);
        // The revision's name and pods' label come from the template's hash.
        assert_ne!(revs[0].metadata.name, revs[1].metadata.name);
        assert!(revs[0].metadata.name.as_deref().unwrap().starts_with("web-"));
    }

    #[test]
    fn history_keeps_live_revisions_and_the_limit() {
        let mut s = set(1);
        s.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let rev = |n: &str, r: i64| ControllerRevision {
            metadata: ObjectMeta { name: Some(n.into()), ..Default::default() },
            revision: r,
            data: None,
        };
        let revs = vec![rev("r1", 1), rev("r2", 2), rev("r3", 3), rev("r4", 4), rev("r5", 5)];
        let pods = vec![pod("web-0", "r2", "Running", true)];
        let pruned: Vec<_> = revisions_to_prune(&s, &pods, &revs, "r4", "r5").iter().map(|r| r.name_any()).collect();
        // Old and unused: r1, r3; one may stay (the newest of them).
        assert_eq!(pruned, ["r1"]);
    }
}
