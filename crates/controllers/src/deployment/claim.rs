//! Claiming ReplicaSets (upstream's `getReplicaSetsForDeployment` with `ClaimReplicaSets` of
//! `pkg/controller/controller_ref_manager.go`): a Deployment owns the ReplicaSets that carry
//! its controller reference and match its selector; it adopts matching orphans (once a live
//! read shows the Deployment is still there and not being deleted) and releases owned
//! ReplicaSets whose labels stopped matching, by deleting its controller reference.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::debug;

use super::{Error, Manager, key_of};
use crate::replicaset::controller_of;

/// What claiming does with one ReplicaSet (upstream's `ClaimObject` decision).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// Ours and matching.
    Own,
    /// Another controller's, or an orphan we may not take.
    Ignore,
    /// Ours but no longer matching: drop our controller reference.
    Release,
    /// A matching orphan: put our controller reference on it.
    Adopt,
}

/// The decision for `meta` given the owner's uid, whether the owner is being deleted (it
/// then neither adopts nor releases), and whether the labels match the owner's selector.
pub(super) fn classify(meta: &ObjectMeta, owner_uid: &str, owner_deleting: bool, matches: bool) -> Claim {
    match controller_of(meta) {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Own,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || meta.deletion_timestamp.is_some() => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// The strategic merge patch that adopts `rs` for `d`; the object's uid makes it apply only
/// to the ReplicaSet that was looked at, and merging by uid keeps other owner references.
fn adopt_patch(d: &Deployment, rs: &ReplicaSet) -> Value {
    json!({"metadata": {"ownerReferences": [controller_ref(d)], "uid": rs.metadata.uid}})
}

/// The controller reference a Deployment puts on its ReplicaSets (upstream's
/// `NewControllerRef`, which also blocks the owner's foreground deletion).
pub(super) fn controller_ref(d: &Deployment) -> OwnerReference {
    OwnerReference { block_owner_deletion: Some(true), ..d.controller_owner_ref(&()).unwrap_or_default() }
}

/// The strategic merge patch that deletes the owner reference of `owner_uid` from `rs`
/// (upstream's `GenerateDeleteOwnerRefStrategicMergeBytes`).
fn release_patch(owner_uid: &str, rs: &ReplicaSet) -> Value {
    json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": rs.metadata.uid}})
}

impl Manager {
    /// Upstream's `RecheckDeletionTimestamp`: adoption goes ahead only if an uncached read
    /// shows the same Deployment, not being deleted (the cache may lag a delete).
    async fn may_adopt(&self, d: &Deployment) -> Result<(), Error> {
        let key = key_of(d);
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let fresh = api.get_opt(&d.name_any()).await.map_err(|source| Error::Recheck { key: key.clone(), source })?;
        match fresh {
            Some(f) if f.metadata.uid == d.metadata.uid && f.metadata.deletion_timestamp.is_none() => Ok(()),
            _ => Err(Error::CannotAdopt { key }),
        }
    }

    /// The ReplicaSets `d` owns after adopting matching orphans and releasing owned sets that
    /// stopped matching.
    pub(super) async fn claim_replica_sets(
        &self,
        d: &Deployment,
        selector: &Selector,
    ) -> Result<Vec<ReplicaSet>, Error> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let deleting = d.metadata.deletion_timestamp.is_some();
        let api = self.rs_api(&ns);
        let mut owned = Vec::new();
        let mut rechecked = false;
        for rs in self.replica_sets.state_filter(|rs| rs.namespace().as_deref() == Some(&ns)) {
            let adopting = match classify(&rs.metadata, &uid, deleting, selector.matches(rs.labels())) {
                Claim::Own => {
                    owned.push((*rs).clone());
                    continue;
                }
                Claim::Ignore => continue,
                Claim::Adopt => true,
                Claim::Release => false,
            };
            if adopting && !rechecked {
                self.may_adopt(d).await?;
                rechecked = true;
            }
            let patch = if adopting { adopt_patch(d, &rs) } else { release_patch(&uid, &rs) };
            let action = if adopting { "adopting" } else { "releasing" };
            debug!(key = %key_of(d), rs = %rs.name_any(), action, "claiming replica set");
            match api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
                Ok(adopted) if adopting => owned.push(adopted),
                Ok(_) => {}
                // Gone, or (releasing) the reference is already gone or the set is being deleted.
                Err(kube::Error::Api(s)) if s.code == 404 || (!adopting && s.code == 422) => {}
                Err(source) => return Err(Error::ReplicaSet { key: key_of(d), rs: rs.name_any(), action, source }),
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn meta(controller: Option<&str>, deleting: bool) -> ObjectMeta {
        ObjectMeta {
            owner_references: controller.map(|uid| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "web".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn owned_matching_sets_are_kept_and_other_controllers_sets_ignored() {
        assert_eq!(classify(&meta(Some("d1"), false), "d1", false, true), Claim::Own);
        assert_eq!(classify(&meta(Some("other"), false), "d1", false, true), Claim::Ignore);
        assert_eq!(classify(&meta(Some("other"), false), "d1", false, false), Claim::Ignore);
    }

    #[test]
    fn owned_sets_that_stopped_matching_are_released_unless_the_deployment_is_deleted() {
        assert_eq!(classify(&meta(Some("d1"), false), "d1", false, false), Claim::Release);
        assert_eq!(classify(&meta(Some("d1"), false), "d1", true, false), Claim::Ignore);
        // Still matching while being deleted: still ours (its status is reported).
        assert_eq!(classify(&meta(Some("d1"), false), "d1", true, true), Claim::Own);
    }

    #[test]
    fn only_live_matching_orphans_of_a_live_deployment_are_adopted() {
        assert_eq!(classify(&meta(None, false), "d1", false, true), Claim::Adopt);
        assert_eq!(classify(&meta(None, false), "d1", false, false), Claim::Ignore);
        assert_eq!(classify(&meta(None, true), "d1", false, true), Claim::Ignore);
        assert_eq!(classify(&meta(None, false), "d1", true, true), Claim::Ignore);
    }

    #[test]
    fn the_release_patch_deletes_only_our_reference_of_that_exact_set() {
        let rs =
            ReplicaSet { metadata: ObjectMeta { uid: Some("rs1".into()), ..Default::default() }, ..Default::default() };
        assert_eq!(
            release_patch("d1", &rs),
            json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": "d1"}], "uid": "rs1"}})
        );
    }
}
