//! Mirror pods (upstream's `pkg/kubelet/pod/mirror_client.go` and the mirror handling of
//! `syncPod` / `HandlePodCleanups`): each static pod gets a copy in the API, so that kubectl and
//! controllers see it. The copy carries `kubernetes.io/config.mirror` (the static pod's hash)
//! and a controller reference to the Node. A mirror that is outdated (another hash) or being
//! deleted is removed at once and made again; deleting it therefore never stops the static pod.
//! Mirrors without a static pod (its manifest removed while the agent was away) are deleted.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};

use super::file::{CONFIG_HASH, CONFIG_MIRROR, annotation};

/// Static pods and mirror pods, each by `namespace/name`.
pub type ByFullName = HashMap<String, Arc<Pod>>;

pub fn full_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What reconciling does for one full name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorAction {
    /// Create the mirror of this static pod (by its UID).
    Create { static_uid: String },
    /// Delete this mirror pod (by its UID); with `recreate`, make it again afterwards.
    Delete { full_name: String, mirror_uid: String, recreate: Option<String> },
}

/// Whether `mirror` mirrors `pod` as it is now.
pub fn is_mirror_of(mirror: &Pod, pod: &Pod) -> bool {
    annotation(mirror, CONFIG_MIRROR).is_some_and(|h| Some(h) == annotation(pod, CONFIG_HASH))
}

/// What to do to make the mirrors match the static pods.
pub fn plan(statics: &ByFullName, mirrors: &ByFullName) -> Vec<MirrorAction> {
    let mut actions = Vec::new();
    let mut names: Vec<&String> = statics.keys().chain(mirrors.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let pod = statics.get(name);
        let mirror = mirrors.get(name);
        match (pod, mirror) {
            (Some(pod), None) => {
                actions.push(MirrorAction::Create { static_uid: pod.metadata.uid.clone().unwrap_or_default() })
            }
            (pod, Some(mirror)) => {
                let current =
                    pod.is_some_and(|p| is_mirror_of(mirror, p)) && mirror.metadata.deletion_timestamp.is_none();
                if !current {
                    actions.push(MirrorAction::Delete {
                        full_name: name.clone(),
                        mirror_uid: mirror.metadata.uid.clone().unwrap_or_default(),
                        recreate: pod.map(|p| p.metadata.uid.clone().unwrap_or_default()),
                    });
                }
            }
            (None, None) => {}
        }
    }
    actions
}

/// Creates and deletes mirror pods through the API.
#[derive(Clone)]
pub struct MirrorClient {
    client: kube::Client,
    node_name: String,
}

impl std::fmt::Debug for MirrorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorClient").field("node_name", &self.node_name).finish_non_exhaustive()
    }
}

impl MirrorClient {
    pub fn new(client: kube::Client, node_name: String) -> Self {
        MirrorClient { client, node_name }
    }

    /// Carries out `actions`; failures are logged and retried at the next reconcile.
    pub async fn apply(&self, actions: &[MirrorAction], statics: &HashMap<String, Arc<Pod>>) {
        for action in actions {
            match action {
                MirrorAction::Create { static_uid } => {
                    if let Some(pod) = statics.get(static_uid) {
                        self.create(pod).await;
                    }
                }
                MirrorAction::Delete { full_name, mirror_uid, recreate } => {
                    if self.delete(full_name, mirror_uid).await
                        && let Some(pod) = recreate.as_ref().and_then(|uid| statics.get(uid))
                    {
                        self.create(pod).await;
                    }
                }
            }
        }
    }

    async fn create(&self, pod: &Pod) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = match nodes.get(&self.node_name).await {
            Ok(node) => node,
            Err(error) => {
                tracing::debug!(%error, "no mirror pod yet: this node is not readable");
                return;
            }
        };
        if node.metadata.deletion_timestamp.is_some() {
            return;
        }
        let mut mirror = pod.clone();
        let hash = annotation(pod, CONFIG_HASH).unwrap_or_default().to_string();
        mirror.metadata.annotations.get_or_insert_with(Default::default).insert(CONFIG_MIRROR.into(), hash);
        mirror.metadata.uid = None;
        mirror.metadata.resource_version = None;
        mirror.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node_name.clone(),
            uid: node.metadata.uid.unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        let namespace = mirror.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => tracing::info!(pod = %full_name(pod), "mirror pod created"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(error) => tracing::warn!(%error, pod = %full_name(pod), "creating the mirror pod"),
        }
    }

    /// Deletes one mirror pod at once; true when it is gone.
    async fn delete(&self, full_name: &str, uid: &str) -> bool {
        let Some((namespace, name)) = full_name.split_once('/') else { return false };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                tracing::info!(pod = %full_name, "outdated or orphaned mirror pod deleted");
                true
            }
            Err(kube::Error::Api(s)) if s.code == 404 => true,
            Err(error) => {
                tracing::warn!(%error, pod = %full_name, "deleting a mirror pod");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, uid: &str, annotations: &[(&str, &str)]) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn by_name(pods: &[Arc<Pod>]) -> ByFullName {
        pods.iter().map(|p| (full_name(p), p.clone())).collect()
    }

    #[test]
    fn a_static_pod_without_a_mirror_gets_one() {
        let statics = by_name(&[pod("web-n", "h1", &[(CONFIG_HASH, "h1")])]);
        assert_eq!(plan(&statics, &ByFullName::new()), [MirrorAction::Create { static_uid: "h1".into() }]);
    }

    #[test]
    fn a_current_mirror_is_left_alone() {
        let statics = by_name(&[pod("web-n", "h1", &[(CONFIG_HASH, "h1")])]);
        let mirrors = by_name(&[pod("web-n", "m1", &[(CONFIG_MIRROR, "h1")])]);
        assert!(plan(&statics, &mirrors).is_empty());
    }

    #[test]
    fn an_outdated_or_deleted_mirror_is_replaced_and_an_orphan_removed() {
        let statics = by_name(&[pod("web-n", "h2", &[(CONFIG_HASH, "h2")])]);
        let outdated = by_name(&[pod("web-n", "m1", &[(CONFIG_MIRROR, "h1")])]);
        assert_eq!(
            plan(&statics, &outdated),
            [MirrorAction::Delete {
                full_name: "default/web-n".into(),
                mirror_uid: "m1".into(),
                recreate: Some("h2".into())
            }]
        );
        let mut deleted = (*pod("web-n", "m2", &[(CONFIG_MIRROR, "h2")])).clone();
        deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let deleted = by_name(&[Arc::new(deleted)]);
        assert_eq!(
            plan(&statics, &deleted),
            [MirrorAction::Delete {
                full_name: "default/web-n".into(),
                mirror_uid: "m2".into(),
                recreate: Some("h2".into())
            }]
        );
        let orphan = by_name(&[pod("gone-n", "m3", &[(CONFIG_MIRROR, "h9")])]);
        assert!(plan(&statics, &orphan).contains(&MirrorAction::Delete {
            full_name: "default/gone-n".into(),
            mirror_uid: "m3".into(),
            recreate: None
        }));
    }
}
