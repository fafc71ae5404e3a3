//! NodeName: a pod that names its node (`spec.nodeName`) fits only there.

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{Code, CycleState, FilterPlugin, NodeInfo, Plugin, Status};

pub const NAME: &str = "NodeName";
/// Upstream's reason.
pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl FilterPlugin for NodeName {
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) {
            Some(wanted) if wanted != node.name() => Status::new(Code::UnschedulableAndUnresolvable, REASON),
            _ => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{plain_node, pod};
    use serde_json::json;

    #[test]
    fn only_the_named_node_fits() {
        let p = pod(json!({"nodeName": "a"}));
        assert!(NodeName.filter(&CycleState::new(), &p, &plain_node("a")).is_success());
        assert_eq!(NodeName.filter(&CycleState::new(), &p, &plain_node("b")).code, Code::UnschedulableAndUnresolvable);
        assert!(NodeName.filter(&CycleState::new(), &pod(json!({})), &plain_node("b")).is_success());
    }
}
