//! What the collector's watches decode: an object's metadata, only the fields ownership needs.
//!
//! The watches ask for `PartialObjectMetadata`, as upstream's metadata informers do, but the
//! collector reads only names, owner references, the deletion timestamp and finalizers (and the
//! watch itself the resourceVersion). Decoding the rest (managedFields above all, whose entries
//! hold a whole field set each, then labels, annotations, timestamps) cost more than everything
//! the collector did with an event, once per write of every object in the cluster.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::core::{DynamicResourceScope, Resource};
use kube::discovery::ApiResource;
use serde::{Deserialize, Deserializer};

/// An object of any kind as the collector watches it.
#[derive(Clone, Debug, Default)]
pub(super) struct OwnershipMeta {
    pub metadata: ObjectMeta,
}

impl Resource for OwnershipMeta {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    /// Lists and watches ask the server for metadata only.
    fn metadata_api() -> bool {
        true
    }
}

impl<'de> Deserialize<'de> for OwnershipMeta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Fields not named here are skipped unread.
        #[derive(Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: Metadata,
        }

        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Metadata {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            deletion_timestamp: Option<Time>,
            finalizers: Option<Vec<String>>,
        }

        let Object { metadata: m } = Object::deserialize(deserializer)?;
        Ok(OwnershipMeta {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                owner_references: m.owner_references,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers,
                ..ObjectMeta::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_ownership_needs_and_skips_the_rest() {
        let wire = serde_json::json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": "web-1",
                "namespace": "default",
                "uid": "u-1",
                "resourceVersion": "42",
                "labels": {"app": "web"},
                "creationTimestamp": "2026-11-28T12:00:00Z",
                "deletionTimestamp": "2026-11-28T12:05:00Z",
                "finalizers": ["foregroundDeletion"],
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u-0",
                    "controller": true, "blockOwnerDeletion": true
                }],
                "managedFields": [{
                    "manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                    "time": "2026-11-28T12:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}
                }]
            }
        });
        let meta = serde_json::from_value::<OwnershipMeta>(wire).unwrap().metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref(), meta.uid.as_deref(), meta.resource_version.as_deref()),
            (Some("web-1"), Some("default"), Some("u-1"), Some("42"))
        );
        let owners = meta.owner_references.unwrap();
        assert_eq!(
            (owners[0].uid.as_str(), owners[0].kind.as_str(), owners[0].controller),
            ("u-0", "ReplicaSet", Some(true))
        );
        assert!(meta.deletion_timestamp.is_some());
        assert_eq!(meta.finalizers, Some(vec!["foregroundDeletion".to_string()]));
        assert!(meta.managed_fields.is_none() && meta.labels.is_none() && meta.creation_timestamp.is_none());
    }

    #[test]
    fn an_object_without_metadata_decodes_as_empty() {
        let meta = serde_json::from_str::<OwnershipMeta>("{}").unwrap().metadata;
        assert_eq!(meta, ObjectMeta::default());
    }
}
