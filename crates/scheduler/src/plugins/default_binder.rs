//! DefaultBinder: binds the pod to its node through the `pods/binding` subresource.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::framework::{BindPlugin, CycleState, Plugin, Status};

pub const NAME: &str = "DefaultBinder";

pub struct DefaultBinder {
    client: Client,
}

impl DefaultBinder {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Plugin for DefaultBinder {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// The Binding object upstream's binder posts.
pub fn binding(pod: &Pod, node: &str) -> Binding {
    Binding {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.name_any()),
            namespace: pod.namespace(),
            uid: pod.uid(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    }
}

#[async_trait::async_trait]
impl BindPlugin for DefaultBinder {
    async fn bind(&self, _: &CycleState, pod: &Pod, node: &str) -> Status {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let result: Result<serde_json::Value, _> =
            api.create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding(pod, node)).await;
        match result {
            Ok(_) => Status::success(),
            Err(e) => Status::error(format!("binding pod {} to node {node}: {e}", pod.name_any())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::pod;
    use serde_json::json;

    #[test]
    fn binding_targets_the_node_and_carries_the_pod_uid() {
        let b = serde_json::to_value(binding(&pod(json!({})), "n1")).unwrap();
        assert_eq!(b["target"], json!({"apiVersion": "v1", "kind": "Node", "name": "n1"}));
        assert_eq!(b["metadata"]["uid"], "u1");
        assert_eq!(b["metadata"]["name"], "p");
    }
}
