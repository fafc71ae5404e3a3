//! The Deployment's status (upstream's `progress.go` and `calculateStatus` of `sync.go`):
//! replica counts summed over its ReplicaSets, the Available condition, and the Progressing
//! condition that tracks the rollout against `progressDeadlineSeconds`, and the ReplicaFailure
//! condition copied from its ReplicaSets.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;

use super::deployment_util::{self as util, rs_replicas, rs_status};
use super::rolling::Sets;
use super::{Error, Manager, key_of};

const PROGRESSING: &str = "Progressing";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
/// A ReplicaSet's failure to create or delete pods, carried over to its Deployment.
const REPLICA_FAILURE: &str = "ReplicaFailure";

pub(super) fn has_deadline(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.progress_deadline_seconds) != Some(i32::MAX)
}

fn deadline(d: &Deployment) -> i64 {
    i64::from(d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600))
}

pub(super) fn condition<'a>(d: &'a Deployment, type_: &str) -> Option<&'a DeploymentCondition> {
    find(d.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default(), type_)
}

fn find<'a>(conditions: &'a [DeploymentCondition], type_: &str) -> Option<&'a DeploymentCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub(super) fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Some(Time(Timestamp::now()));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

/// Upstream's `SetDeploymentCondition`: nothing changes for the same status and reason; the
/// transition time is kept while the status stays.
fn set(conditions: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = find(conditions, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conditions.retain(|x| x.type_ != c.type_);
    conditions.push(c);
}

/// The status the ReplicaSets give `d` (upstream's `calculateStatus`), with the conditions
/// the sync recorded on the way.
pub(super) fn calculate(d: &Deployment, sets: &Sets) -> DeploymentStatus {
    let all: Vec<_> = sets.new.iter().chain(sets.old.iter()).collect();
    let available: i32 = all.iter().map(|rs| rs_status(rs, |s| s.available_replicas)).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let old = d.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    if let Some(c) = &sets.condition {
        set(&mut conditions, c.clone());
    }
    check_paused(d, &mut conditions);
    let (_, max_unavailable) = util::fenceposts(d);
    let c = if available >= util::replicas(d) - max_unavailable {
        new_condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
    } else {
        new_condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    set(&mut conditions, c);
    let nonzero = |v: i32| (v != 0).then_some(v);
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(all.iter().map(|rs| rs_status(rs, |s| Some(s.replicas))).sum()),
        updated_replicas: nonzero(sets.new.as_ref().map(|n| rs_status(n, |s| Some(s.replicas))).unwrap_or(0)),
        ready_replicas: nonzero(all.iter().map(|rs| rs_status(rs, |s| s.ready_replicas)).sum()),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((total - available).max(0)),
        terminating_replicas: None,
        collision_count: old.collision_count,
        conditions: (!conditions.is_empty()).then_some(conditions),
    }
}

/// Upstream's `checkPausedConditions`: Progressing=Unknown while paused, and on resume.
fn check_paused(d: &Deployment, conditions: &mut Vec<DeploymentCondition>) {
    if !has_deadline(d) {
        return;
    }
    let cur = find(conditions, PROGRESSING).and_then(|c| c.reason.clone());
    if cur.as_deref() == Some(TIMED_OUT) {
        return;
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let paused_cond = cur.as_deref() == Some(PAUSED);
    if paused && !paused_cond {
        set(conditions, new_condition(PROGRESSING, "Unknown", PAUSED, "Deployment is paused".into()));
    } else if !paused && paused_cond {
        set(conditions, new_condition(PROGRESSING, "Unknown", "DeploymentResumed", "Deployment is resumed".into()));
    }
}

fn to_go_name(name: &str) -> String {
    format!("\"{name}\"")
}

/// Upstream's `syncRolloutStatus`: the counts plus the Progressing condition.
pub(super) async fn sync_rollout_status(m: &Manager, d: &Deployment, sets: &Sets) -> Result<Action, Error> {
    let mut status = calculate(d, sets);
    let mut conditions = status.conditions.take().unwrap_or_default();
    if !has_deadline(d) {
        conditions.retain(|c| c.type_ != PROGRESSING);
    }
    let current = find(&conditions, PROGRESSING).cloned();
    let complete_before = status.replicas == status.updated_replicas
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
    let subject = match &sets.new {
        Some(rs) => format!("ReplicaSet {}", to_go_name(&rs.name_any())),
        None => format!("Deployment {}", to_go_name(&d.name_any())),
    };
    if has_deadline(d) && !complete_before {
        if util::deployment_complete(d, &status) {
            let msg = format!("{subject} has successfully progressed.");
            set(&mut conditions, new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, msg));
        } else if util::deployment_progressing(d, &status) {
            let mut c = new_condition(PROGRESSING, "True", "ReplicaSetUpdated", format!("{subject} is progressing."));
            if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
                c.last_transition_time = cur.last_transition_time.clone();
            }
            conditions.retain(|x| x.type_ != PROGRESSING);
            conditions.push(c);
        } else if timed_out(d, current.as_ref()) {
            let msg = format!("{subject} has timed out progressing.");
            set(&mut conditions, new_condition(PROGRESSING, "False", TIMED_OUT, msg));
        }
    }
    match replica_failure(sets) {
        Some(c) => set(&mut conditions, c),
        None => conditions.retain(|c| c.type_ != REPLICA_FAILURE),
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    let requeue = requeue_stuck(d, &status);
    if d.status.as_ref() != Some(&status) {
        write_status(m, d, status).await?;
    }
    Ok(requeue)
}

/// Upstream's `getReplicaFailures`: the ReplicaFailure condition of the new ReplicaSet, else
/// of the first old one that has one, as a Deployment condition (upstream's
/// `ReplicaSetToDeploymentCondition`, both times from the set's transition time).
fn replica_failure(sets: &Sets) -> Option<DeploymentCondition> {
    sets.new.iter().chain(sets.old.iter()).find_map(|rs| {
        let c = rs.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == REPLICA_FAILURE)?;
        Some(DeploymentCondition {
            type_: REPLICA_FAILURE.into(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time.clone(),
        })
    })
}

/// Upstream's `DeploymentTimedOut`.
fn timed_out(d: &Deployment, c: Option<&DeploymentCondition>) -> bool {
    let Some(c) = c else { return false };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => {
            let Some(from) = c.last_update_time.as_ref() else { return false };
            Timestamp::now().as_second() > from.0.as_second() + deadline(d)
        }
    }
}

/// When to look again at a rollout that may miss its deadline (upstream's
/// `requeueStuckDeployment`).
fn requeue_stuck(d: &Deployment, status: &DeploymentStatus) -> Action {
    let c = find(status.conditions.as_deref().unwrap_or_default(), PROGRESSING);
    let Some(c) = c else { return Action::await_change() };
    if !has_deadline(d) || util::deployment_complete(d, status) || c.reason.as_deref() == Some(TIMED_OUT) {
        return Action::await_change();
    }
    let Some(from) = c.last_update_time.as_ref() else { return Action::await_change() };
    let after = from.0.as_second() + deadline(d) - Timestamp::now().as_second();
    Action::requeue(Duration::from_secs(after.clamp(1, i64::from(i32::MAX)) as u64))
}

/// Upstream's `syncDeploymentStatus`: the counts and the Available condition only.
pub(super) async fn sync_status(m: &Manager, d: &Deployment, sets: &Sets) -> Result<Action, Error> {
    let status = calculate(d, sets);
    if d.status.as_ref() != Some(&status) {
        write_status(m, d, status).await?;
    }
    Ok(Action::await_change())
}

pub(super) async fn write_status(m: &Manager, d: &Deployment, status: DeploymentStatus) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(m.client.clone(), &d.namespace().unwrap_or_default());
    let mut copy = d.clone();
    copy.status = Some(status);
    match api.replace_status(&d.name_any(), &PostParams::default(), &copy).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Deployment { key: key_of(d), source }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn rs(name: &str, failure: Option<(&str, &str)>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(ReplicaSetStatus {
                conditions: failure.map(|(reason, message)| {
                    vec![ReplicaSetCondition {
                        type_: REPLICA_FAILURE.into(),
                        status: "True".into(),
                        reason: Some(reason.into()),
                        message: Some(message.into()),
                        last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_new_sets_replica_failure_wins_over_an_old_sets() {
        let sets = Sets {
            new: Some(rs("new", Some(("FailedCreate", "pods \"new-x\" is forbidden: exceeded quota")))),
            old: vec![rs("old", Some(("FailedDelete", "old")))],
            condition: None,
        };
        let c = replica_failure(&sets).unwrap();
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("ReplicaFailure", "True"));
        assert_eq!(c.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(c.message.as_deref(), Some("pods \"new-x\" is forbidden: exceeded quota"));
        assert_eq!(c.last_update_time, c.last_transition_time);
    }

    #[test]
    fn an_old_sets_replica_failure_is_reported_when_the_new_one_has_none() {
        let sets =
            Sets { new: Some(rs("new", None)), old: vec![rs("old", Some(("FailedDelete", "m")))], condition: None };
        assert_eq!(replica_failure(&sets).unwrap().reason.as_deref(), Some("FailedDelete"));
    }

    #[test]
    fn no_replica_failure_without_a_failing_set() {
        let sets = Sets { new: Some(rs("new", None)), old: vec![rs("old", None)], condition: None };
        assert!(replica_failure(&sets).is_none());
    }
}
