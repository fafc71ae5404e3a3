//! The rollout strategies (upstream's `sync.go`, `rolling.go` and `recreate.go`): finding or
//! creating the new ReplicaSet, scaling it up and the old ones down, and the paused and
//! deleting cases that only keep the status.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;

use super::deployment_util::{self as util, HASH_LABEL, rs_replicas, rs_status};
use super::progress;
use super::{Error, Manager, key_of};

/// The ReplicaSets of a Deployment split into the new one (matching its template) and the
/// others, with a Progressing condition to record if the new one was just found or made.
pub(super) struct Sets {
    pub new: Option<ReplicaSet>,
    pub old: Vec<ReplicaSet>,
    pub condition: Option<DeploymentCondition>,
}

impl Sets {
    fn all(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.new.iter().chain(self.old.iter())
    }
}

fn template(d: &Deployment) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default()
}

fn by_creation(sets: &mut [ReplicaSet]) {
    sets.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
}

/// Upstream's `getAllReplicaSetsAndSyncRevision`: the new ReplicaSet (created when `create`
/// and missing), its revision and replica annotations brought up to date, and the old ones.
pub(super) async fn sets(m: &Manager, d: &Deployment, mut all: Vec<ReplicaSet>, create: bool) -> Result<Sets, Error> {
    by_creation(&mut all);
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = util::compute_hash(&template(d), collision);
    let name = util::replica_set_name(&d.name_any(), &hash);
    let pos = all.iter().position(|rs| {
        rs.name_any() == name
            || rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| util::equal_ignore_hash(t, &template(d)))
    });
    let existing = pos.map(|i| all.remove(i));
    let old = all;
    let max_old = old.iter().map(|rs| util::revision(rs.metadata.annotations.as_ref())).max().unwrap_or(0);
    let new_revision = max_old + 1;
    let ns = d.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(m.client.clone(), &ns);
    let has_deadline = progress::has_deadline(d);

    if let Some(rs) = existing {
        let annotations = util::replica_set_annotations(d, rs.metadata.annotations.as_ref(), new_revision);
        let rs =
            if rs.metadata.annotations.as_ref() != Some(&annotations) {
                let mut copy = rs.clone();
                copy.metadata.annotations = Some(annotations);
                api.replace(&rs.name_any(), &PostParams::default(), &copy).await.map_err(|source| {
                    Error::ReplicaSet { key: key_of(d), rs: rs.name_any(), action: "annotating", source }
                })?
            } else {
                rs
            };
        m.sync_deployment_revision(d, util::revision(rs.metadata.annotations.as_ref())).await?;
        let condition = (has_deadline && progress::condition(d, "Progressing").is_none()).then(|| {
            progress::new_condition(
                "Progressing",
                "True",
                "FoundNewReplicaSet",
                format!("Found new replica set \"{}\"", rs.name_any()),
            )
        });
        return Ok(Sets { new: Some(rs), old, condition });
    }
    if !create {
        return Ok(Sets { new: None, old, condition: None });
    }

    let mut tmpl = template(d);
    tmpl.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = d.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let labels = tmpl.metadata.as_ref().and_then(|m| m.labels.clone());
    let sets = Sets { new: None, old, condition: None };
    let replicas = new_rs_replicas(d, &sets, 0);
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels,
            annotations: Some(util::replica_set_annotations(d, None, new_revision)),
            owner_references: Some(vec![super::claim::controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
            selector,
            template: Some(tmpl),
        }),
        status: None,
    };
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            if replicas > 0 {
                m.recorder.record(
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
            }
            m.sync_deployment_revision(d, new_revision).await?;
            let condition = has_deadline.then(|| {
                progress::new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{name}\""),
                )
            });
            Ok(Sets { new: Some(created), old: sets.old, condition })
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Someone else's set (or one of ours with another template) has the name: move the
            // hash on with the collision count and try again.
            let theirs = api.get_opt(&name).await.ok().flatten();
            let ours_same = theirs.as_ref().is_some_and(|t| {
                t.owner_references()
                    .iter()
                    .any(|r| Some(&r.uid) == d.metadata.uid.as_ref() && r.controller == Some(true))
                    && t.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| util::equal_ignore_hash(t, &template(d)))
            });
            if ours_same {
                // The cache is behind: the next sync sees it.
                return Err(Error::Collision { key: key_of(d), count: collision.unwrap_or(0) });
            }
            let count = collision.unwrap_or(0).wrapping_add(1);
            let mut status = d.status.clone().unwrap_or_default();
            status.collision_count = Some(count);
            progress::write_status(m, d, status).await?;
            Err(Error::Collision { key: key_of(d), count })
        }
        Err(source) => Err(Error::ReplicaSet { key: key_of(d), rs: name, action: "creating", source }),
    }
}

/// How many replicas the new ReplicaSet should have now (upstream's `NewRSNewReplicas`).
fn new_rs_replicas(d: &Deployment, sets: &Sets, new_current: i32) -> i32 {
    let want = util::replicas(d);
    if util::is_recreate(d) {
        return want;
    }
    let (surge, _) = util::fenceposts(d);
    let current: i32 = sets.old.iter().map(rs_replicas).sum::<i32>() + new_current;
    let max_total = want + surge;
    if current >= max_total {
        return new_current;
    }
    new_current + (max_total - current).min(want - new_current).max(0)
}

/// Upstream's `rolloutRolling`.
pub(super) async fn rollout_rolling(m: &Manager, d: &Deployment, all: Vec<ReplicaSet>) -> Result<Action, Error> {
    let mut sets = sets(m, d, all, true).await?;
    // Scale up the new set within the surge.
    if let Some(new) = sets.new.clone() {
        let want = util::replicas(d);
        let cur = rs_replicas(&new);
        let to = if cur > want { want } else { new_rs_replicas(d, &sets, cur) };
        if to != cur {
            sets.new = Some(m.scale(d, &new, to).await?);
            return progress::sync_rollout_status(m, d, &sets).await;
        }
    }
    if reconcile_old(m, d, &mut sets).await? {
        return progress::sync_rollout_status(m, d, &sets).await;
    }
    let status = progress::calculate(d, &sets);
    if util::deployment_complete(d, &status) {
        m.cleanup(d, &sets.old).await?;
    }
    progress::sync_rollout_status(m, d, &sets).await
}

/// Scales old ReplicaSets down as far as availability allows (upstream's
/// `reconcileOldReplicaSets`); whether anything was scaled.
async fn reconcile_old(m: &Manager, d: &Deployment, sets: &mut Sets) -> Result<bool, Error> {
    let old_count: i32 = sets.old.iter().map(rs_replicas).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let all_count: i32 = sets.all().map(rs_replicas).sum();
    let (_, max_unavailable) = util::fenceposts(d);
    let min_available = util::replicas(d) - max_unavailable;
    let new_unavailable =
        sets.new.as_ref().map(|n| rs_replicas(n) - rs_status(n, |s| s.available_replicas)).unwrap_or(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    by_creation(&mut sets.old);
    // First the old sets' unhealthy replicas, which cost no availability.
    let mut cleaned = 0;
    for i in 0..sets.old.len() {
        if cleaned >= max_scaled_down {
            break;
        }
        let rs = &sets.old[i];
        let cur = rs_replicas(rs);
        let unhealthy = cur - rs_status(rs, |s| s.available_replicas);
        if cur == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(max_scaled_down - cleaned);
        sets.old[i] = m.scale(d, rs, cur - down).await?;
        cleaned += down;
    }
    // Then available replicas, keeping the minimum available.
    let available: i32 = sets.all().map(|rs| rs_status(rs, |s| s.available_replicas)).sum();
    let mut scaled = 0;
    if available > min_available {
        let total = (available - min_available).min(max_scaled_down - cleaned);
        for i in 0..sets.old.len() {
            if scaled >= total {
                break;
            }
            let rs = &sets.old[i];
            let cur = rs_replicas(rs);
            if cur == 0 {
                continue;
            }
            let down = cur.min(total - scaled);
            sets.old[i] = m.scale(d, rs, cur - down).await?;
            scaled += down;
        }
    }
    Ok(cleaned + scaled > 0)
}

/// Upstream's `rolloutRecreate`: every old replica gone before the new set scales up.
pub(super) async fn rollout_recreate(m: &Manager, d: &Deployment, all: Vec<ReplicaSet>) -> Result<Action, Error> {
    let mut sets = sets(m, d, all, false).await?;
    let mut scaled_down = false;
    for i in 0..sets.old.len() {
        if rs_replicas(&sets.old[i]) != 0 {
            let rs = sets.old[i].clone();
            sets.old[i] = m.scale(d, &rs, 0).await?;
            scaled_down = true;
        }
    }
    if scaled_down {
        return progress::sync_rollout_status(m, d, &sets).await;
    }
    // Wait until the old sets' pods are gone (their status reports the pods they still have).
    let old_running = sets
        .old
        .iter()
        .any(|rs| rs_status(rs, |s| Some(s.replicas)) > 0 || rs_status(rs, |s| s.terminating_replicas) > 0);
    if old_running {
        let action = progress::sync_rollout_status(m, d, &sets).await?;
        let _ = action;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if sets.new.is_none() {
        let old = std::mem::take(&mut sets.old);
        sets = self::sets(m, d, old, true).await?;
    }
    if let Some(new) = sets.new.clone() {
        sets.new = Some(m.scale(d, &new, util::replicas(d)).await?);
    }
    let status = progress::calculate(d, &sets);
    if util::deployment_complete(d, &status) {
        m.cleanup(d, &sets.old).await?;
    }
    progress::sync_rollout_status(m, d, &sets).await
}

/// A Deployment being deleted: status only.
pub(super) async fn sync_status_only(m: &Manager, d: &Deployment, all: Vec<ReplicaSet>) -> Result<Action, Error> {
    let mut all = all;
    by_creation(&mut all);
    let hash_match = |rs: &ReplicaSet| {
        rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| util::equal_ignore_hash(t, &template(d)))
    };
    let pos = all.iter().position(hash_match);
    let new = pos.map(|i| all.remove(i));
    progress::sync_status(m, d, &Sets { new, old: all, condition: None }).await
}

/// Whether `d`'s replicas changed since its active ReplicaSets were last scaled for it
/// (upstream's `isScalingEvent`: a `desired-replicas` annotation differs).
pub(super) fn is_scaling_event(d: &Deployment, all: &[ReplicaSet]) -> bool {
    let want = util::replicas(d).to_string();
    all.iter().filter(|rs| rs_replicas(rs) > 0).any(|rs| {
        rs.metadata.annotations.as_ref().and_then(|a| a.get(util::DESIRED_REPLICAS)).is_some_and(|v| *v != want)
    })
}

/// A scale of the Deployment without a new template (upstream's `sync`): scale, clean up
/// history when paused, write the status.
pub(super) async fn sync_scaled(m: &Manager, d: &Deployment, all: Vec<ReplicaSet>) -> Result<Action, Error> {
    let mut sets = sets(m, d, all, false).await?;
    scale(m, d, &mut sets).await?;
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        m.cleanup(d, &sets.old).await?;
    }
    progress::sync_status(m, d, &sets).await
}

/// The one active ReplicaSet, or with none active the new (else the newest) one; `None`
/// when several are active (upstream's `FindActiveOrLatest`).
fn active_or_latest(sets: &Sets) -> Option<ReplicaSet> {
    let mut old = sets.old.clone();
    by_creation(&mut old);
    let active: Vec<&ReplicaSet> = sets.new.iter().chain(old.iter()).filter(|rs| rs_replicas(rs) > 0).collect();
    match active.as_slice() {
        [] => sets.new.clone().or_else(|| old.last().cloned()),
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// How much of `to_add` a ReplicaSet takes: its share by its `max-replicas` annotation,
/// within what is left (upstream's `GetProportion` and `getReplicaSetFraction`).
pub(super) fn proportion(
    rs_size: i32,
    annotated_max: Option<i32>,
    d_size: i32,
    surge: i32,
    status_replicas: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if rs_size == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if d_size == 0 {
        -rs_size
    } else {
        let allowed = i64::from(d_size + surge);
        let annotated = i64::from(annotated_max.unwrap_or(status_replicas));
        if annotated == 0 {
            0
        } else {
            // round(rs_size * allowed / annotated), halves away from zero.
            let num = i64::from(rs_size) * allowed;
            let rounded = (2 * num + annotated).div_euclid(2 * annotated);
            (rounded - i64::from(rs_size)) as i32
        }
    };
    let left = to_add - added;
    if to_add > 0 { fraction.min(left) } else { fraction.max(left) }
}

/// Upstream's `scale`: one active set takes the Deployment's replicas; a saturated new set
/// lets the old ones go to zero; otherwise a rolling update spreads the change over the
/// active sets in proportion to their size.
async fn scale(m: &Manager, d: &Deployment, sets: &mut Sets) -> Result<(), Error> {
    let want = util::replicas(d);
    if let Some(rs) = active_or_latest(sets) {
        if rs_replicas(&rs) != want || annotation(&rs, util::DESIRED_REPLICAS) != Some(want) {
            let scaled = m.scale(d, &rs, want).await?;
            replace(sets, scaled);
        }
        return Ok(());
    }
    let saturated = sets.new.as_ref().is_some_and(|n| {
        rs_replicas(n) == want
            && annotation(n, util::DESIRED_REPLICAS) == Some(want)
            && rs_status(n, |s| s.available_replicas) == want
    });
    if saturated {
        for i in 0..sets.old.len() {
            if rs_replicas(&sets.old[i]) > 0 {
                let rs = sets.old[i].clone();
                sets.old[i] = m.scale(d, &rs, 0).await?;
            }
        }
        return Ok(());
    }
    if util::is_recreate(d) {
        return Ok(());
    }
    let mut active: Vec<ReplicaSet> = sets.all().filter(|rs| rs_replicas(rs) > 0).cloned().collect();
    let current: i32 = active.iter().map(rs_replicas).sum();
    let (surge, _) = util::fenceposts(d);
    let allowed = if want > 0 { want + surge } else { 0 };
    let to_add = allowed - current;
    // Largest first; among equals the newer when adding, the older when removing.
    active.sort_by(|a, b| {
        let (ta, tb) =
            (a.metadata.creation_timestamp.as_ref().map(|t| t.0), b.metadata.creation_timestamp.as_ref().map(|t| t.0));
        rs_replicas(b).cmp(&rs_replicas(a)).then(if to_add > 0 { tb.cmp(&ta) } else { ta.cmp(&tb) })
    });
    let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut added = 0;
    let mut sizes = Vec::with_capacity(active.len());
    for rs in &active {
        let p = proportion(
            rs_replicas(rs),
            annotation(rs, util::MAX_REPLICAS),
            want,
            surge,
            status_replicas,
            to_add,
            added,
        );
        sizes.push(rs_replicas(rs) + p);
        added += p;
    }
    if let Some(first) = sizes.first_mut() {
        *first = (*first + to_add - added).max(0);
    }
    for (rs, size) in active.iter().zip(sizes) {
        let scaled = m.scale(d, rs, size).await?;
        replace(sets, scaled);
    }
    Ok(())
}

fn annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// Puts an updated ReplicaSet in place of its older copy.
fn replace(sets: &mut Sets, rs: ReplicaSet) {
    let uid = rs.metadata.uid.clone();
    if let Some(n) = sets.new.as_mut().filter(|n| n.metadata.uid == uid) {
        *n = rs;
    } else if let Some(o) = sets.old.iter_mut().find(|o| o.metadata.uid == uid) {
        *o = rs;
    }
}

#[cfg(test)]
mod tests {
    use super::proportion;

    #[test]
    fn scaling_up_mid_rollout_is_shared_by_size() {
        // 10 replicas (surge 3, max 13) split 8 old / 5 new, scaled to 20 (surge 5, max 25):
        // the old set takes round(8 * 25 / 13) - 8 = 7, the new one the rest.
        assert_eq!(proportion(8, Some(13), 20, 5, 13, 12, 0), 7);
        assert_eq!(proportion(5, Some(13), 20, 5, 13, 12, 7), 5);
    }

    #[test]
    fn scaling_down_takes_at_most_what_is_asked() {
        assert_eq!(proportion(6, Some(12), 5, 1, 12, -6, 0), -3);
        assert_eq!(proportion(6, Some(12), 5, 1, 12, -6, -5), -1);
        assert_eq!(proportion(6, Some(12), 0, 0, 12, -12, 0), -6);
        assert_eq!(proportion(0, Some(12), 5, 1, 12, -6, 0), 0);
    }
}
