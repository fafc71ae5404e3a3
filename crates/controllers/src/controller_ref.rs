//! Controller references (upstream's `pkg/controller/controller_ref_manager.go`), shared by
//! every workload controller: who controls an object, what claiming does with one object, the
//! live re-read that must allow an adoption, and the patch that releases an object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The owner reference marked as controller, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// What claiming does with one object (upstream's `ClaimObject` decision).
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours and matching.
    Own,
    /// Another controller's, or something we may not take or let go of now.
    Ignore,
    /// Ours but no longer matching: drop our controller reference.
    Release,
    /// A matching live orphan: put our controller reference on it.
    Adopt,
}

/// The decision for an object with `meta`, given the owner's uid, whether the owner is being
/// deleted (it then neither adopts nor releases), and whether the object's labels match the
/// owner's selector.
pub fn classify(meta: &ObjectMeta, owner_uid: &str, owner_deleting: bool, matches: bool) -> Claim {
    match controller_of(meta) {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Own,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || meta.deletion_timestamp.is_some() => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// Upstream's `RecheckDeletionTimestamp`: adoption may go ahead only if an uncached read shows
/// the same owner (uid), not being deleted (the cache may lag a delete).
pub async fn can_adopt<K>(client: &Client, owner: &K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    let fresh = api.get_opt(&owner.name_any()).await?;
    Ok(fresh.is_some_and(|f| f.meta().uid == owner.meta().uid && f.meta().deletion_timestamp.is_none()))
}

/// The strategic merge patch that deletes `owner_uid`'s reference from the object with
/// `object_uid` (upstream's `GenerateDeleteOwnerRefStrategicMergeBytes`); the object's uid makes
/// it apply only to the object that was looked at.
pub fn release_patch(owner_uid: &str, object_uid: Option<&str>) -> Value {
    json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": object_uid}})
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
    fn owned_matching_objects_are_kept_and_other_controllers_objects_ignored() {
        assert_eq!(classify(&meta(Some("d1"), false), "d1", false, true), Claim::Own);
        assert_eq!(classify(&meta(Some("other"), false), "d1", false, true), Claim::Ignore);
        assert_eq!(classify(&meta(Some("other"), false), "d1", false, false), Claim::Ignore);
    }

    #[test]
    fn owned_objects_that_stopped_matching_are_released_unless_the_owner_is_deleted() {
        assert_eq!(classify(&meta(Some("d1"), false), "d1", false, false), Claim::Release);
        assert_eq!(classify(&meta(Some("d1"), false), "d1", true, false), Claim::Ignore);
        // Still matching while the owner is being deleted: still ours (its status is reported).
        assert_eq!(classify(&meta(Some("d1"), false), "d1", true, true), Claim::Own);
    }

    #[test]
    fn only_live_matching_orphans_of_a_live_owner_are_adopted() {
        assert_eq!(classify(&meta(None, false), "d1", false, true), Claim::Adopt);
        assert_eq!(classify(&meta(None, false), "d1", false, false), Claim::Ignore);
        assert_eq!(classify(&meta(None, true), "d1", false, true), Claim::Ignore);
        assert_eq!(classify(&meta(None, false), "d1", true, true), Claim::Ignore);
    }

    #[test]
    fn the_release_patch_deletes_only_our_reference_of_that_exact_object() {
        assert_eq!(
            release_patch("d1", Some("rs1")),
            json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": "d1"}], "uid": "rs1"}})
        );
    }
}
