//! Claiming ReplicaSets (upstream's `getReplicaSetsForDeployment` with `ClaimReplicaSets` of
//! `pkg/controller/controller_ref_manager.go`): a Deployment owns the ReplicaSets that carry
//! its controller reference and match its selector; it adopts matching orphans (once a live
//! read shows the Deployment is still there and not being deleted) and releases owned
//! ReplicaSets whose labels stopped matching, by deleting its controller reference.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::debug;

use super::{Error, Manager, key_of};
use crate::controller_ref::{Claim, can_adopt, classify, release_patch};

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

impl Manager {
    /// Adoption goes ahead only after a live read allows it ([`can_adopt`]).
    async fn may_adopt(&self, d: &Deployment) -> Result<(), Error> {
        let key = key_of(d);
        match can_adopt(&self.client, d).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::CannotAdopt { key }),
            Err(source) => Err(Error::Recheck { key, source }),
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
            let patch = if adopting { adopt_patch(d, &rs) } else { release_patch(&uid, rs.metadata.uid.as_deref()) };
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
